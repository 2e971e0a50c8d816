//! Pixels to the model's input tensor: resize to 224x224 and normalise to
//! [-1, 1], channels first (NCHW).
//!
//! The whole picture is stretched to 224x224 without keeping its aspect
//! ratio, as Keras' `load_img(target_size=...)` does, so nothing is cropped
//! away. The resize is a bilinear (triangle) convolution whose support
//! grows with the scale factor, so downscaling is antialiased; it matches
//! Pillow's `Image.resize(..., Image.BILINEAR)`, which retrieves better than
//! bicubic or Lanczos with the default model on the thumbnail-to-photo test.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// Side of the square input the model takes, in pixels.
pub const INPUT_SIDE: u32 = 224;

/// Number of f32 values of one preprocessed image (3 x 224 x 224).
pub const TENSOR_LEN: usize = 3 * (INPUT_SIDE as usize) * (INPUT_SIDE as usize);

/// The preprocessing, as recorded in the database with the model identity;
/// changing any step here must change this text.
pub const PREPROCESSING_DESCRIPTION: &str =
    "rgb8 exif-oriented, alpha over white, stretch to 224x224 bilinear, (p-127.5)/127.5, nchw";

#[derive(Debug, thiserror::Error)]
#[error("cannot resize a {width}x{height} image: {message}")]
pub struct PreprocessError {
    width: u32,
    height: u32,
    message: String,
}

/// Resizes `pixels` to 224x224 and writes the normalised NCHW tensor into
/// `out`, which must hold exactly [`TENSOR_LEN`] values.
pub fn fill_tensor(pixels: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
    assert_eq!(out.len(), TENSOR_LEN, "output slice must hold one image");
    let resized = resize_to_input(pixels)?;
    let plane = (INPUT_SIDE * INPUT_SIDE) as usize;
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (index, rgb) in resized.buffer().chunks_exact(3).enumerate() {
        red[index] = normalize(rgb[0]);
        green[index] = normalize(rgb[1]);
        blue[index] = normalize(rgb[2]);
    }
    Ok(())
}

/// Maps a pixel value from [0, 255] to [-1, 1].
fn normalize(value: u8) -> f32 {
    (f32::from(value) - 127.5) / 127.5
}

fn resize_to_input(pixels: &RgbImage) -> Result<Image<'static>, PreprocessError> {
    let error = |message: String| PreprocessError {
        width: pixels.width(),
        height: pixels.height(),
        message,
    };
    let mut resized = Image::new(INPUT_SIDE, INPUT_SIDE, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(pixels, &mut resized, &options)
        .map_err(|e| error(e.to_string()))?;
    Ok(resized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn tensor_of(pixels: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; TENSOR_LEN];
        fill_tensor(pixels, &mut out).unwrap();
        out
    }

    #[test]
    fn uniform_image_maps_to_exact_values() {
        let pixels = RgbImage::from_pixel(5, 3, Rgb([255, 0, 102]));
        let tensor = tensor_of(&pixels);
        let plane = TENSOR_LEN / 3;
        assert!(tensor[..plane].iter().all(|&v| v == 1.0));
        assert!(tensor[plane..2 * plane].iter().all(|&v| v == -1.0));
        let expected_blue = (102.0 - 127.5) / 127.5;
        assert!(tensor[2 * plane..].iter().all(|&v| v == expected_blue));
    }

    #[test]
    fn layout_is_channels_first() {
        // Left half red, right half blue: after the stretch, column 0 is
        // red and column 223 is blue in every row.
        let pixels = RgbImage::from_fn(8, 8, |x, _| {
            if x < 4 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let tensor = tensor_of(&pixels);
        let side = INPUT_SIDE as usize;
        let plane = side * side;
        for row in [0, 100, 223] {
            let left = row * side;
            let right = row * side + side - 1;
            assert_eq!(tensor[left], 1.0, "red plane, left edge, row {row}");
            assert_eq!(
                tensor[2 * plane + left],
                -1.0,
                "blue plane, left edge, row {row}"
            );
            assert_eq!(tensor[right], -1.0, "red plane, right edge, row {row}");
            assert_eq!(
                tensor[2 * plane + right],
                1.0,
                "blue plane, right edge, row {row}"
            );
            assert_eq!(tensor[plane + left], -1.0, "green plane, row {row}");
        }
    }

    #[test]
    fn one_pixel_image_fills_whole_input() {
        let pixels = RgbImage::from_pixel(1, 1, Rgb([0, 255, 51]));
        let tensor = tensor_of(&pixels);
        let plane = TENSOR_LEN / 3;
        assert_eq!(tensor[0], -1.0);
        assert_eq!(tensor[plane - 1], -1.0);
        assert_eq!(tensor[plane], 1.0);
        assert_eq!(tensor[TENSOR_LEN - 1], (51.0 - 127.5) / 127.5);
    }

    #[test]
    fn downscale_is_antialiased() {
        // A one-pixel checkerboard averages to mid grey when downscaled
        // with an antialiasing filter; point sampling would keep 0 or 255.
        let pixels = RgbImage::from_fn(896, 896, |x, y| {
            if (x + y) % 2 == 0 {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        let tensor = tensor_of(&pixels);
        let centre = 112 * INPUT_SIDE as usize + 112;
        assert!(
            tensor[centre].abs() < 0.02,
            "centre value {}",
            tensor[centre]
        );
    }
}

//! Pixels to the model's input tensor: resize to the model's input size and
//! normalise each channel, in the layout and channel order the model takes.
//!
//! The whole picture is stretched to the input size without keeping its
//! aspect ratio, as Keras' `load_img(target_size=...)` does, so nothing is
//! cropped away. The resize is a bilinear (triangle) convolution whose
//! support grows with the scale factor, so downscaling is antialiased; it
//! matches Pillow's `Image.resize(..., Image.BILINEAR)`, which retrieves
//! better than bicubic or Lanczos with the default model on the
//! thumbnail-to-photo test.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// Side of the square input of the built-in model, in pixels.
pub const INPUT_SIDE: u32 = 224;

/// Order of the tensor's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// [N, channels, height, width], as PyTorch and ONNX models take.
    Nchw,
    /// [N, height, width, channels], as TensorFlow models take.
    Nhwc,
}

impl Layout {
    /// Returns the layout's name as options and preprocessing files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }
}

/// Order of the three colour channels in the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    /// Blue first, as Caffe and OpenCV models take.
    Bgr,
}

/// Settings that turn images into a model's input tensor: size, layout,
/// channel order and per-channel normalisation `value = (pixel - mean) / std`, with pixel
/// values, means and standard deviations in the 0-255 range.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub channel_order: ChannelOrder,
    /// Means in tensor channel order (blue first for BGR).
    pub mean: [f32; 3],
    /// Standard deviations in tensor channel order; all non-zero.
    pub std: [f32; 3],
}

impl Default for Preprocessing {
    /// Returns the built-in model's input: 224x224 RGB, NCHW, (p - 127.5) / 127.5,
    /// which maps pixels to [-1, 1] as Keras' MobileNetV2 expects.
    fn default() -> Preprocessing {
        Preprocessing {
            width: INPUT_SIDE,
            height: INPUT_SIDE,
            layout: Layout::Nchw,
            channel_order: ChannelOrder::Rgb,
            mean: [127.5; 3],
            std: [127.5; 3],
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resize a {width}x{height} image: {message}")]
pub struct PreprocessError {
    width: u32,
    height: u32,
    message: String,
}

impl Preprocessing {
    /// Number of f32 values of one preprocessed image.
    pub fn tensor_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    /// Shape of the input tensor for a batch of `count` images.
    pub fn input_shape(&self, count: usize) -> [usize; 4] {
        let (height, width) = (self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nchw => [count, 3, height, width],
            Layout::Nhwc => [count, height, width, 3],
        }
    }

    /// Returns the preprocessing as recorded in the database with the model
    /// identity, so that vectors made with different preprocessing are
    /// never mixed. The built-in model's text has not changed since the
    /// first release, so existing databases stay valid.
    pub fn describe(&self) -> String {
        let normalisation = if self.mean.iter().all(|&m| m == self.mean[0])
            && self.std.iter().all(|&s| s == self.std[0])
        {
            format!("(p-{})/{}", self.mean[0], self.std[0])
        } else {
            format!(
                "(p-[{},{},{}])/[{},{},{}]",
                self.mean[0], self.mean[1], self.mean[2], self.std[0], self.std[1], self.std[2]
            )
        };
        let order = match self.channel_order {
            ChannelOrder::Rgb => "",
            ChannelOrder::Bgr => "bgr, ",
        };
        let layout = self.layout.name();
        format!(
            "rgb8 exif-oriented, alpha over white, stretch to {}x{} bilinear, {normalisation}, {order}{layout}",
            self.width, self.height
        )
    }

    /// Resizes `pixels` to the input size and writes the normalised tensor
    /// of one image into `out`, which must hold exactly
    /// [`Preprocessing::tensor_len`] values.
    pub fn fill_tensor(&self, pixels: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        assert_eq!(
            out.len(),
            self.tensor_len(),
            "output slice must hold one image"
        );
        let resized = self.resize(pixels)?;
        // One lookup table per tensor channel: 256 values each, computed
        // with the same f32 arithmetic for every pixel.
        let source_channel = match self.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let tables: [[f32; 256]; 3] = std::array::from_fn(|channel| {
            std::array::from_fn(|value| (value as f32 - self.mean[channel]) / self.std[channel])
        });
        let pixels = resized.buffer().chunks_exact(3);
        match self.layout {
            Layout::Nchw => {
                let plane = self.tensor_len() / 3;
                for (index, rgb) in pixels.enumerate() {
                    for channel in 0..3 {
                        let value = rgb[source_channel[channel]];
                        out[channel * plane + index] = tables[channel][usize::from(value)];
                    }
                }
            }
            Layout::Nhwc => {
                for (slot, rgb) in out.chunks_exact_mut(3).zip(pixels) {
                    for channel in 0..3 {
                        let value = rgb[source_channel[channel]];
                        slot[channel] = tables[channel][usize::from(value)];
                    }
                }
            }
        }
        Ok(())
    }

    fn resize(&self, pixels: &RgbImage) -> Result<Image<'static>, PreprocessError> {
        let error = |message: String| PreprocessError {
            width: pixels.width(),
            height: pixels.height(),
            message,
        };
        let mut resized = Image::new(self.width, self.height, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new()
            .resize(pixels, &mut resized, &options)
            .map_err(|e| error(e.to_string()))?;
        Ok(resized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn tensor_of(spec: &Preprocessing, pixels: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; spec.tensor_len()];
        spec.fill_tensor(pixels, &mut out).unwrap();
        out
    }

    #[test]
    fn uniform_image_maps_to_exact_values() {
        let pixels = RgbImage::from_pixel(5, 3, Rgb([255, 0, 102]));
        let tensor = tensor_of(&Preprocessing::default(), &pixels);
        let plane = tensor.len() / 3;
        assert!(tensor[..plane].iter().all(|&v| v == 1.0));
        assert!(tensor[plane..2 * plane].iter().all(|&v| v == -1.0));
        let expected_blue = (102.0 - 127.5) / 127.5;
        assert!(tensor[2 * plane..].iter().all(|&v| v == expected_blue));
    }

    #[test]
    fn default_description_is_unchanged() {
        assert_eq!(
            Preprocessing::default().describe(),
            "rgb8 exif-oriented, alpha over white, stretch to 224x224 bilinear, \
             (p-127.5)/127.5, nchw"
        );
    }

    #[test]
    fn description_names_every_setting() {
        let spec = Preprocessing {
            width: 299,
            height: 256,
            layout: Layout::Nhwc,
            channel_order: ChannelOrder::Bgr,
            mean: [103.94, 116.78, 123.68],
            std: [1.0, 1.0, 1.0],
        };
        assert_eq!(
            spec.describe(),
            "rgb8 exif-oriented, alpha over white, stretch to 299x256 bilinear, \
             (p-[103.94,116.78,123.68])/[1,1,1], bgr, nhwc"
        );
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
        let tensor = tensor_of(&Preprocessing::default(), &pixels);
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
    fn channels_last_bgr_with_mean_and_std() {
        // Top half (10, 20, 30), bottom half (200, 150, 100), on a 4x2
        // target: NHWC puts the three values of a pixel next to each other,
        // blue first.
        let spec = Preprocessing {
            width: 4,
            height: 2,
            layout: Layout::Nhwc,
            channel_order: ChannelOrder::Bgr,
            mean: [100.0, 50.0, 0.0],
            std: [2.0, 4.0, 10.0],
        };
        let pixels = RgbImage::from_fn(4, 2, |_, y| {
            if y == 0 {
                Rgb([10, 20, 30])
            } else {
                Rgb([200, 150, 100])
            }
        });
        let tensor = tensor_of(&spec, &pixels);
        assert_eq!(spec.input_shape(5), [5, 2, 4, 3]);
        assert_eq!(tensor.len(), 24);
        let top = [(30.0 - 100.0) / 2.0, (20.0 - 50.0) / 4.0, 10.0 / 10.0];
        let bottom = [(100.0 - 100.0) / 2.0, (150.0 - 50.0) / 4.0, 200.0 / 10.0];
        for (index, pixel) in tensor.chunks_exact(3).enumerate() {
            let expected = if index < 4 { top } else { bottom };
            assert_eq!(pixel, expected, "pixel {index}");
        }
    }

    #[test]
    fn non_square_input_is_width_by_height() {
        let spec = Preprocessing {
            width: 3,
            height: 2,
            ..Preprocessing::default()
        };
        assert_eq!(spec.input_shape(1), [1, 3, 2, 3]);
        // Columns 0..3 of the source: red, green, blue; they stay columns.
        let pixels = RgbImage::from_fn(3, 5, |x, _| {
            let mut rgb = [0, 0, 0];
            rgb[x as usize] = 255;
            Rgb(rgb)
        });
        let tensor = tensor_of(&spec, &pixels);
        let red_plane = &tensor[..6];
        assert_eq!(red_plane, [1.0, -1.0, -1.0, 1.0, -1.0, -1.0]);
    }

    #[test]
    fn one_pixel_image_fills_whole_input() {
        let pixels = RgbImage::from_pixel(1, 1, Rgb([0, 255, 51]));
        let tensor = tensor_of(&Preprocessing::default(), &pixels);
        let plane = tensor.len() / 3;
        assert_eq!(tensor[0], -1.0);
        assert_eq!(tensor[plane - 1], -1.0);
        assert_eq!(tensor[plane], 1.0);
        assert_eq!(tensor[tensor.len() - 1], (51.0 - 127.5) / 127.5);
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
        let tensor = tensor_of(&Preprocessing::default(), &pixels);
        let centre = 112 * INPUT_SIDE as usize + 112;
        assert!(
            tensor[centre].abs() < 0.02,
            "centre value {}",
            tensor[centre]
        );
    }
}

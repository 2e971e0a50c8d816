//! Pixel-level comparison of two pictures at matched resolution: the check
//! that separates an edited copy (re-encoded, resized, a thumbnail, converted,
//! rotated by EXIF, brightened) from a different shot of the same scene.
//!
//! Both pictures are reduced to grey at the smaller one's size (at most
//! [`SIGNATURE_SIDE`] pixels on the long side), blurred so that resampling
//! and sharpening differences matter less, and compared after a
//! least-squares gain and offset fit, which absorbs brightness and contrast
//! changes. The score is the mean absolute residual in 0-255 grey levels,
//! minimised over shifts of up to [`MAX_SHIFT`] pixels to absorb small
//! crops and misalignment. On the sample photos, re-encoded, resized and
//! converted copies score under 1, camera thumbnails against their photos up
//! to about 4.4, and burst frames of a static scene 1.5 and up, because the
//! parts that moved differ.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// Long side of the grey picture kept per image, in pixels.
pub const SIGNATURE_SIDE: u32 = 128;

/// Largest shift tried in each direction, in pixels at matched resolution.
const MAX_SHIFT: i32 = 2;

/// Passes of the 3x3 blur, about a Gaussian of sigma 1 pixel; fewer passes
/// leave camera thumbnails (sharpened when made) further from their photos.
const BLUR_PASSES: usize = 2;

/// Pixels left out along each edge, so shifted pictures always overlap.
const BORDER: usize = MAX_SHIFT as usize + 1;

/// A grey version of an image, at most [`SIGNATURE_SIDE`] on the long side,
/// with a hash of the full-resolution pixels.
#[derive(Debug, Clone)]
pub struct Signature {
    pub width: u32,
    pub height: u32,
    pub grey: Vec<u8>,
    /// Whether the image was smaller than [`SIGNATURE_SIDE`] on its long
    /// side, so the signature is at its full resolution.
    pub small: bool,
    /// BLAKE3 of the full-resolution RGB pixels and their size: equal for
    /// images with the same decoded pixels.
    pub pixel_hash: [u8; 32],
}

impl Signature {
    /// Makes the signature of decoded, upright pixels.
    pub fn of(pixels: &RgbImage) -> Signature {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&pixels.width().to_le_bytes());
        hasher.update(&pixels.height().to_le_bytes());
        hasher.update(pixels.as_raw());
        let (width, height) = fit_within(pixels.width(), pixels.height(), SIGNATURE_SIDE);
        let rgb = resize_rgb(pixels, width, height);
        let grey = rgb
            .chunks_exact(3)
            .map(|p| {
                let luma =
                    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                luma.round().clamp(0.0, 255.0) as u8
            })
            .collect();
        Signature {
            width,
            height,
            grey,
            small: pixels.width().max(pixels.height()) < SIGNATURE_SIDE,
            pixel_hash: *hasher.finalize().as_bytes(),
        }
    }
}

impl Signature {
    /// Returns the signature of the picture mirrored left to right. Its
    /// pixel hash is the original's, since it is only compared by pixels.
    pub fn mirrored(&self) -> Signature {
        let width = self.width as usize;
        let grey = self
            .grey
            .chunks_exact(width.max(1))
            .flat_map(|row| row.iter().rev().copied())
            .collect();
        Signature {
            grey,
            ..self.clone()
        }
    }
}

/// Scales `width` x `height` down to fit `side` on the long side, keeping
/// the aspect ratio; smaller images keep their size.
fn fit_within(width: u32, height: u32, side: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= side {
        return (width.max(1), height.max(1));
    }
    let scale = f64::from(side) / f64::from(long);
    let scaled = |value: u32| ((f64::from(value) * scale).round() as u32).max(1);
    (scaled(width), scaled(height))
}

fn resize_rgb(pixels: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let mut resized = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    // fit_within returns sides of at least 1 and decoded images are never
    // empty, so the resize cannot fail.
    Resizer::new()
        .resize(pixels, &mut resized, &options)
        .expect("resizing to a non-empty size");
    resized.into_vec()
}

pub(super) fn resize_grey(
    grey: &[u8],
    width: u32,
    height: u32,
    to_width: u32,
    to_height: u32,
) -> Vec<f32> {
    if (width, height) == (to_width, to_height) {
        return grey.iter().map(|&v| f32::from(v)).collect();
    }
    let source = Image::from_vec_u8(width, height, grey.to_vec(), PixelType::U8)
        .expect("signature buffer matches its size");
    let mut resized = Image::new(to_width, to_height, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&source, &mut resized, &options)
        .expect("resizing to a non-empty size");
    resized.buffer().iter().map(|&v| f32::from(v)).collect()
}

/// Blurs with the 3x3 kernel [1 2 1]^T [1 2 1] / 16, repeating edge pixels.
pub(super) fn blur(values: &[f32], width: usize, height: usize) -> Vec<f32> {
    let mut rows = vec![0.0; values.len()];
    for y in 0..height {
        let row = &values[y * width..(y + 1) * width];
        for x in 0..width {
            let left = row[x.saturating_sub(1)];
            let right = row[(x + 1).min(width - 1)];
            rows[y * width + x] = (left + 2.0 * row[x] + right) / 4.0;
        }
    }
    let mut out = vec![0.0; values.len()];
    for y in 0..height {
        let up = y.saturating_sub(1);
        let down = (y + 1).min(height - 1);
        for x in 0..width {
            out[y * width + x] =
                (rows[up * width + x] + 2.0 * rows[y * width + x] + rows[down * width + x]) / 4.0;
        }
    }
    out
}

/// Compares two signatures and returns the mean absolute residual in grey
/// levels (lower is more alike), or `None` when the matched size is too
/// small to compare (under 16 pixels on a side).
pub fn residual(first: &Signature, second: &Signature) -> Option<f32> {
    // The smaller picture sets the resolution; the larger one is brought
    // down to it.
    let (width, height) = if u64::from(first.width) * u64::from(first.height)
        <= u64::from(second.width) * u64::from(second.height)
    {
        (first.width, first.height)
    } else {
        (second.width, second.height)
    };
    if width < 16 || height < 16 {
        return None;
    }
    let (w, h) = (width as usize, height as usize);
    let mut a = resize_grey(&first.grey, first.width, first.height, width, height);
    let mut b = resize_grey(&second.grey, second.width, second.height, width, height);
    for _ in 0..BLUR_PASSES {
        a = blur(&a, w, h);
        b = blur(&b, w, h);
    }

    // A gain and offset fit turns any flat picture into any other, so
    // pictures without detail are left to their embeddings.
    if contrast(&a) < MIN_CONTRAST || contrast(&b) < MIN_CONTRAST {
        return None;
    }

    let mut best = f32::INFINITY;
    for dy in -MAX_SHIFT..=MAX_SHIFT {
        for dx in -MAX_SHIFT..=MAX_SHIFT {
            best = best.min(shifted_residual(&a, &b, w, h, dx, dy));
        }
    }
    Some(best)
}

/// Standard deviation, in grey levels, below which a picture counts as
/// flat (one colour, or nearly). By estimate, it sits above the noise of a
/// JPEG of one colour and below the detail of a photo, even of fog.
const MIN_CONTRAST: f32 = 2.0;

/// Returns the standard deviation of `values`.
fn contrast(values: &[f32]) -> f32 {
    let count = values.len().max(1) as f32;
    let mean = values.iter().sum::<f32>() / count;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / count).sqrt()
}

/// Mean absolute residual of `b` shifted by (dx, dy) against `a` after the
/// least-squares fit b = gain * a + offset, over the interior of `a`.
fn shifted_residual(a: &[f32], b: &[f32], w: usize, h: usize, dx: i32, dy: i32) -> f32 {
    let pairs = || {
        (BORDER..h - BORDER).flat_map(move |y| {
            (BORDER..w - BORDER).map(move |x| {
                let bx = (x as i32 + dx) as usize;
                let by = (y as i32 + dy) as usize;
                (a[y * w + x], b[by * w + bx])
            })
        })
    };
    let count = ((w - 2 * BORDER) * (h - 2 * BORDER)) as f32;
    let (gain, mean_a, mean_b) = gain_fit(pairs());
    let total: f32 = pairs()
        .map(|(va, vb)| (vb - (gain * (va - mean_a) + mean_b)).abs())
        .sum();
    total / count
}

/// Returns the least-squares fit b = gain * (a - mean a) + mean b over
/// the (a, b) pairs as (gain, mean a, mean b). The iterator is walked
/// twice.
pub(super) fn gain_fit(pairs: impl Iterator<Item = (f32, f32)> + Clone) -> (f32, f32, f32) {
    let (count, sum_a, sum_b) = pairs
        .clone()
        .fold((0usize, 0.0, 0.0), |(n, sa, sb), (va, vb)| {
            (n + 1, sa + va, sb + vb)
        });
    let count = count.max(1) as f32;
    let (mean_a, mean_b) = (sum_a / count, sum_b / count);
    let (covariance, variance) = pairs.fold((0.0, 0.0), |(c, v), (va, vb)| {
        let da = va - mean_a;
        (c + da * (vb - mean_b), v + da * da)
    });
    // A flat picture has no contrast to fit, so it is compared as it is.
    let gain = if variance > 1e-3 {
        covariance / variance
    } else {
        1.0
    };
    (gain, mean_a, mean_b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Makes a picture with structure at several scales: gradients and a few
    /// blocks, deterministic for a given seed.
    fn scene(width: u32, height: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let u = x * 640 / width;
            let v = y * 480 / height;
            let block = ((u / 80 + v / 60 + seed) % 3) as u8 * 60;
            let wave = (((u as f32 / 23.0).sin() + (v as f32 / 17.0).cos()) * 40.0 + 100.0) as u8;
            Rgb([wave.saturating_add(block), wave, 255 - block])
        })
    }

    #[test]
    fn resized_copy_scores_low() {
        let photo = scene(640, 480, 0);
        let thumbnail = image::imageops::thumbnail(&photo, 120, 90);
        let score = residual(&Signature::of(&photo), &Signature::of(&thumbnail)).unwrap();
        assert!(score < 2.0, "residual {score}");
    }

    #[test]
    fn brightness_and_contrast_are_absorbed() {
        let photo = scene(320, 240, 1);
        let mut brighter = photo.clone();
        for pixel in brighter.pixels_mut() {
            for channel in pixel.0.iter_mut() {
                *channel = (f32::from(*channel) * 0.8 + 30.0) as u8;
            }
        }
        let score = residual(&Signature::of(&photo), &Signature::of(&brighter)).unwrap();
        assert!(score < 1.5, "residual {score}");
    }

    #[test]
    fn different_scene_scores_high() {
        let score = residual(
            &Signature::of(&scene(320, 240, 0)),
            &Signature::of(&scene(320, 240, 1)),
        )
        .unwrap();
        assert!(score > 10.0, "residual {score}");
    }

    #[test]
    fn moved_object_raises_score() {
        let photo = scene(320, 240, 2);
        let mut moved = photo.clone();
        for y in 100..140 {
            for x in 60..100 {
                moved.put_pixel(x, y, Rgb([250, 250, 250]));
            }
        }
        let copy = residual(&Signature::of(&photo), &Signature::of(&photo)).unwrap();
        let burst = residual(&Signature::of(&photo), &Signature::of(&moved)).unwrap();
        assert!(copy < 0.01, "identical pictures: {copy}");
        assert!(burst > 3.0, "moved object: {burst}");
    }

    #[test]
    fn pixel_hash_follows_pixels() {
        let photo = scene(64, 48, 3);
        let mut changed = photo.clone();
        changed.put_pixel(5, 5, Rgb([0, 0, 1]));
        assert_eq!(
            Signature::of(&photo).pixel_hash,
            Signature::of(&photo.clone()).pixel_hash
        );
        assert_ne!(
            Signature::of(&photo).pixel_hash,
            Signature::of(&changed).pixel_hash
        );
    }

    #[test]
    fn flat_pictures_are_not_compared() {
        let flat = |colour: [u8; 3]| Signature::of(&RgbImage::from_pixel(640, 480, Rgb(colour)));
        // Without the contrast check, red against blue scores 0.
        assert!(residual(&flat([200, 0, 0]), &flat([0, 0, 200])).is_none());
        assert!(residual(&flat([0, 0, 0]), &Signature::of(&scene(640, 480, 0))).is_none());
        assert!(residual(&Signature::of(&scene(640, 480, 0)), &flat([9, 9, 9])).is_none());
    }

    #[test]
    fn tiny_pictures_are_not_compared() {
        let tiny = Signature::of(&scene(12, 9, 0));
        assert!(residual(&tiny, &Signature::of(&scene(640, 480, 0))).is_none());
    }

    #[test]
    fn signature_keeps_aspect_within_side() {
        let signature = Signature::of(&scene(640, 480, 0));
        assert_eq!((signature.width, signature.height), (128, 96));
        assert_eq!(signature.grey.len(), 128 * 96);
        let small = Signature::of(&scene(90, 120, 0));
        assert_eq!((small.width, small.height), (90, 120));
    }
}

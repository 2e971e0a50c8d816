//! File bytes to oriented 8-bit RGB pixels.
//!
//! The format is sniffed from the content, so a PNG named `.jpg` decodes as
//! a PNG. The EXIF orientation (all eight values) is applied. Grey, palette,
//! 16-bit, CMYK and alpha images become 8-bit RGB; alpha is composited over
//! white. GIF and other animated formats give their first frame.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Default cap on decoded pixels (width x height), checked from the header
/// before the pixel buffer is allocated.
pub const DEFAULT_MAX_PIXELS: u64 = 200_000_000;

/// Decoding limits.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Largest width x height accepted; larger images are rejected before
    /// their pixels are allocated.
    pub max_pixels: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// A decoded picture, upright, as 8-bit RGB.
#[derive(Debug)]
pub struct DecodedImage {
    pub pixels: RgbImage,
    /// Format name sniffed from the content, lowercase (`jpeg`, `png`, ...).
    pub format: String,
    /// Set when the EXIF data could not be read; the picture is then used
    /// as stored, without rotation.
    pub orientation_warning: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a supported image (PNG, JPEG, WebP, GIF, BMP or TIFF)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error(
        "{}: image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} (--max-pixels)",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("{}: cannot decode: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

impl DecodeError {
    /// The file the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::Io { path, .. }
            | DecodeError::UnknownFormat { path }
            | DecodeError::TooLarge { path, .. }
            | DecodeError::Image { path, .. } => path,
        }
    }

    /// The reason without the path, for reports that print the path
    /// themselves.
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        full.strip_prefix(&prefix)
            .map(str::to_string)
            .unwrap_or(full)
    }
}

/// Decodes the image file at `path` into upright 8-bit RGB.
pub fn decode_file(path: &Path, options: &DecodeOptions) -> Result<DecodedImage, DecodeError> {
    let io_error = |source| DecodeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(io_error)?;
    let Some(format) = reader.format() else {
        return Err(DecodeError::UnknownFormat {
            path: path.to_path_buf(),
        });
    };
    decode_reader(path, reader, format, options)
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    path: &Path,
    reader: ImageReader<R>,
    format: ImageFormat,
    options: &DecodeOptions,
) -> Result<DecodedImage, DecodeError> {
    let image_error = |source| DecodeError::Image {
        path: path.to_path_buf(),
        source,
    };
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > options.max_pixels {
        return Err(DecodeError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            max_pixels: options.max_pixels,
        });
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(options.max_pixels.saturating_mul(16).max(64 << 20));
    decoder.set_limits(limits).map_err(image_error)?;
    let (orientation, orientation_warning) = match decoder.orientation() {
        Ok(orientation) => (orientation, None),
        Err(error) => (
            Orientation::NoTransforms,
            Some(format!(
                "cannot read EXIF orientation, using the image as stored: {error}"
            )),
        ),
    };
    let mut image = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    Ok(DecodedImage {
        pixels: to_rgb8(image),
        format: format_name(format),
        orientation_warning,
    })
}

/// Converts any colour type to 8-bit RGB, compositing alpha over white.
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut rgb = RgbImage::new(width, height);
    for (target, source) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(source[3]);
        for channel in 0..3 {
            let value = u32::from(source[channel]);
            // Rounded integer blend: value * a + 255 * (255 - a), over 255.
            target[channel] = ((value * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        }
    }
    rgb
}

fn format_name(format: ImageFormat) -> String {
    format
        .extensions_str()
        .first()
        .map(|ext| match *ext {
            "jpg" => "jpeg",
            "tif" => "tiff",
            other => other,
        })
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests;

//! File bytes to oriented 8-bit RGB pixels.
//!
//! The format is sniffed from the content, so a PNG named `.jpg` decodes as
//! a PNG. The EXIF orientation (all eight values) is applied; malformed EXIF
//! data or an invalid orientation value gives a warning and the picture as
//! stored. Grey, palette, 16-bit, CMYK and alpha images become 8-bit RGB;
//! alpha is composited over white. Animated GIF, PNG and WebP files give
//! their first frame and are flagged as animated.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::gif::GifDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use image::{
    AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage,
};

/// Default cap on decoded pixels (width x height), checked from the header
/// before the pixel buffer is allocated. 100 megapixels is above the largest
/// camera sensors in common use. A 16-bit RGBA picture of that size and its
/// 8-bit copy take 100 M x (8 + 4) bytes = 1.2 GB.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Largest bytes per pixel of any decoded colour type (16-bit RGBA). The
/// decoder's allocations are capped at `max_pixels` times this, which also
/// bounds frames larger than the size a header announces.
const MAX_DECODED_BYTES_PER_PIXEL: u64 = 8;

/// Pictures above this many pixels are decoded one at a time across all
/// threads, so that parallel decoding of several huge files cannot multiply
/// the peak memory.
const LARGE_PICTURE_PIXELS: u64 = 20_000_000;

static LARGE_PICTURE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Compressed bytes allowed per pixel of the cap: a file larger than
/// `max_pixels` times this is rejected before it is read, because no
/// supported format needs that much (16-bit RGBA is 8 bytes per pixel).
const MAX_FILE_BYTES_PER_PIXEL: u64 = 8;

/// Files up to this size are always read, whatever the pixel cap.
const MIN_FILE_BYTES_LIMIT: u64 = 64 << 20;

/// Decoding limits and the resolution needed.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Largest width x height accepted; larger images are rejected before
    /// their pixels are allocated.
    pub max_pixels: u64,
    /// Smallest short side, in pixels, that a JPEG may be reduced to while
    /// it is decoded (by 1/2, 1/4 or 1/8, in the DCT domain, which costs a
    /// fraction of a full decode). `None` decodes at full size.
    pub reduce_to: Option<u32>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            reduce_to: None,
        }
    }
}

impl DecodeOptions {
    /// Options that let JPEGs be reduced to twice `side` on their short
    /// side: enough margin that a picture later resized to `side` looks as
    /// if it had been decoded at full size.
    pub fn for_side(max_pixels: u64, side: u32) -> DecodeOptions {
        DecodeOptions {
            max_pixels,
            reduce_to: Some(side.saturating_mul(2)),
        }
    }
}

/// A decoded picture, upright, as 8-bit RGB.
#[derive(Debug)]
pub struct DecodedImage {
    /// The pixels, reduced when [`DecodeOptions::reduce_to`] allowed it.
    pub pixels: RgbImage,
    /// Upright size of the picture at full resolution.
    pub width: u32,
    pub height: u32,
    /// Format name sniffed from the content, lowercase (`jpeg`, `png`, ...).
    pub format: String,
    /// More than one frame; the first was decoded.
    pub animated: bool,
    /// Problems that did not stop decoding: malformed EXIF data or an
    /// invalid orientation (the picture is then used as stored), or a
    /// truncated file (what is there was decoded).
    pub warnings: Vec<String>,
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
    #[error(
        "{}: file is {size} bytes, over the limit of {limit} bytes for the pixel cap (--max-pixels)",
        path.display()
    )]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: cannot decode: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

impl DecodeError {
    /// Returns the file the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::Io { path, .. }
            | DecodeError::UnknownFormat { path }
            | DecodeError::TooLarge { path, .. }
            | DecodeError::FileTooLarge { path, .. }
            | DecodeError::Image { path, .. } => path,
        }
    }

    /// Returns the reason without the path, for reports that print the path
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
    let bytes = read_file(path, options)?;
    decode_bytes(path, &bytes, options)
}

/// Reads the file at `path` whole, refusing files over
/// [`file_size_limit`] before reading them.
pub fn read_file(path: &Path, options: &DecodeOptions) -> Result<Vec<u8>, DecodeError> {
    let io_error = |source| DecodeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::files::open_regular(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    let limit = file_size_limit(options);
    if size > limit {
        return Err(DecodeError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io_error)?;
    Ok(bytes)
}

/// Returns the largest file size, in bytes, that is read for decoding.
pub fn file_size_limit(options: &DecodeOptions) -> u64 {
    options
        .max_pixels
        .saturating_mul(MAX_FILE_BYTES_PER_PIXEL)
        .max(MIN_FILE_BYTES_LIMIT)
}

/// Decodes an image held in memory; `path` is only used in messages.
pub fn decode_bytes(
    path: &Path,
    bytes: &[u8],
    options: &DecodeOptions,
) -> Result<DecodedImage, DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DecodeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let Some(format) = reader.format() else {
        return Err(DecodeError::UnknownFormat {
            path: path.to_path_buf(),
        });
    };
    let mut decoded = decode_reader(path, reader, format, options, bytes)?;
    decoded.animated = is_animated(format, bytes);
    if format == ImageFormat::Jpeg && !has_end_after_last_scan(bytes) {
        let warning = "JPEG end marker missing after the last scan: the file is probably \
                       truncated, and only what is there was decoded";
        decoded.warnings.push(warning.to_string());
    }
    Ok(decoded)
}

/// Returns whether an end-of-image marker (FF D9) follows the last
/// start-of-scan marker (FF DA). Inside scan data a 0xFF byte is always
/// followed by 0x00 or a restart marker, so these two byte pairs are
/// markers wherever they appear after the headers; an EXIF thumbnail's own
/// markers come before the main image's first scan.
fn has_end_after_last_scan(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|pair| pair == [0xFF, 0xDA]);
    let last_end = bytes.windows(2).rposition(|pair| pair == [0xFF, 0xD9]);
    match (last_scan, last_end) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    path: &Path,
    reader: ImageReader<R>,
    format: ImageFormat,
    options: &DecodeOptions,
    bytes: &[u8],
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
    limits.max_alloc = Some(
        options
            .max_pixels
            .saturating_mul(MAX_DECODED_BYTES_PER_PIXEL)
            .max(1 << 20),
    );
    decoder.set_limits(limits).map_err(image_error)?;
    let (orientation, orientation_warning) = read_orientation(&mut decoder);
    let reduced = match (format, options.reduce_to) {
        (ImageFormat::Jpeg, Some(short_side)) => {
            decode_jpeg_reduced(bytes, width, height, short_side)
        }
        _ => None,
    };
    let mut image = match reduced {
        Some(image) => image,
        None => {
            let _one_at_a_time = (pixels > LARGE_PICTURE_PIXELS)
                .then(|| LARGE_PICTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner()));
            DynamicImage::from_decoder(decoder).map_err(image_error)?
        }
    };
    image.apply_orientation(orientation);
    let swaps_sides = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (width, height) = if swaps_sides {
        (height, width)
    } else {
        (width, height)
    };
    Ok(DecodedImage {
        pixels: to_rgb8(image),
        width,
        height,
        format: format_name(format),
        animated: false,
        warnings: orientation_warning.into_iter().collect(),
    })
}

/// Decodes a JPEG reduced by the largest of 1/8, 1/4 or 1/2 that keeps its
/// short side at least `short_side`, as stored (before EXIF orientation).
/// Returns `None` when no reduction applies, for CMYK files, and when this
/// decoder fails, so the full decode runs and reports the error.
fn decode_jpeg_reduced(
    bytes: &[u8],
    width: u32,
    height: u32,
    short_side: u32,
) -> Option<DynamicImage> {
    let short = width.min(height);
    let divisor = [8, 4, 2]
        .into_iter()
        .find(|&divisor| short / divisor >= short_side)?;
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().ok()?;
    // The decoder picks the smallest scale whose output covers the
    // requested size.
    let request = |side: u32| u16::try_from(side.div_ceil(divisor)).ok();
    let (scaled_width, scaled_height) = decoder.scale(request(width)?, request(height)?).ok()?;
    let data = decoder.decode().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u32::from(scaled_width), u32::from(scaled_height));
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            image::RgbImage::from_raw(w, h, data).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(w, h, data).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::L16 | jpeg_decoder::PixelFormat::CMYK32 => None,
    }
}

/// Returns the orientation to apply, and a warning when EXIF data is
/// present but unusable.
fn read_orientation<D: ImageDecoder>(decoder: &mut D) -> (Orientation, Option<String>) {
    let exif = match decoder.exif_metadata() {
        Ok(exif) => exif,
        Err(error) => {
            let warning = format!("cannot read EXIF data, orientation ignored: {error}");
            return (Orientation::NoTransforms, Some(warning));
        }
    };
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    if orientation != Orientation::NoTransforms {
        return (orientation, None);
    }
    let warning = exif.and_then(|chunk| exif_problem(&chunk));
    (orientation, warning)
}

/// Describes what is wrong with an EXIF block that yielded no orientation:
/// malformed data or an orientation value outside 1 to 8. `None` when the
/// block is fine and simply has no orientation, or orientation 1.
fn exif_problem(chunk: &[u8]) -> Option<String> {
    let exif = match exif::Reader::new().read_raw(chunk.to_vec()) {
        Ok(exif) => exif,
        Err(error) => return Some(format!("malformed EXIF data, orientation ignored: {error}")),
    };
    let field = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?;
    match field.value.get_uint(0) {
        Some(1..=8) => None,
        Some(value) => Some(format!("invalid EXIF orientation {value}, ignored")),
        None => Some("EXIF orientation is not a number, ignored".to_string()),
    }
}

/// Returns whether a GIF, PNG or WebP file has more than one frame.
fn is_animated(format: ImageFormat, bytes: &[u8]) -> bool {
    match format {
        ImageFormat::Gif => GifDecoder::new(Cursor::new(bytes))
            .map(|decoder| decoder.into_frames().take(2).count() > 1)
            .unwrap_or(false),
        ImageFormat::Png => PngDecoder::new(Cursor::new(bytes))
            .and_then(|decoder| decoder.is_apng())
            .unwrap_or(false),
        ImageFormat::WebP => WebPDecoder::new(Cursor::new(bytes))
            .map(|decoder| decoder.has_animation())
            .unwrap_or(false),
        _ => false,
    }
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

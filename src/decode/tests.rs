use std::io::Cursor;
use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb};

use super::*;

/// Writes `bytes` to a file named `name` in a new temporary folder.
fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn decode_bytes(name: &str, bytes: &[u8]) -> DecodedImage {
    let (_dir, path) = write_temp(name, bytes);
    decode_file(&path, &DecodeOptions::default()).unwrap()
}

fn encode_png(
    width: u32,
    height: u32,
    color: ExtendedColorType,
    data: &[u8],
    exif: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = PngEncoder::new(Cursor::new(&mut bytes));
    if let Some(exif) = exif {
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder.write_image(data, width, height, color).unwrap();
    bytes
}

/// A big-endian TIFF header with one IFD entry: Orientation (0x0112),
/// type SHORT, count 1.
fn exif_with_orientation(orientation: u16) -> Vec<u8> {
    let mut exif = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    exif.extend_from_slice(&1u16.to_be_bytes());
    exif.extend_from_slice(&0x0112u16.to_be_bytes());
    exif.extend_from_slice(&3u16.to_be_bytes());
    exif.extend_from_slice(&1u32.to_be_bytes());
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(&0u32.to_be_bytes());
    exif
}

/// Pixel of the 3x2 test picture at (x, y): red encodes x, green encodes y.
fn marker(x: u32, y: u32) -> [u8; 3] {
    [(x * 100) as u8, (y * 100) as u8, 7]
}

#[test]
fn exif_orientation_all_eight_values() {
    let (width, height) = (3u32, 2u32);
    let mut data = Vec::new();
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&marker(x, y));
        }
    }
    // For each EXIF value: the displayed size and, for a displayed pixel
    // (x, y), the stored pixel it shows.
    type Source = fn(u32, u32) -> (u32, u32);
    let cases: [(u16, (u32, u32), Source); 8] = [
        (1, (3, 2), |x, y| (x, y)),
        (2, (3, 2), |x, y| (2 - x, y)),
        (3, (3, 2), |x, y| (2 - x, 1 - y)),
        (4, (3, 2), |x, y| (x, 1 - y)),
        (5, (2, 3), |x, y| (y, x)),
        (6, (2, 3), |x, y| (y, 1 - x)),
        (7, (2, 3), |x, y| (2 - y, 1 - x)),
        (8, (2, 3), |x, y| (2 - y, x)),
    ];
    for (orientation, (out_width, out_height), source) in cases {
        let png = encode_png(
            width,
            height,
            ExtendedColorType::Rgb8,
            &data,
            Some(exif_with_orientation(orientation)),
        );
        let decoded = decode_bytes("oriented.png", &png);
        assert_eq!(
            decoded.pixels.dimensions(),
            (out_width, out_height),
            "size for orientation {orientation}"
        );
        for y in 0..out_height {
            for x in 0..out_width {
                let (sx, sy) = source(x, y);
                assert_eq!(
                    decoded.pixels.get_pixel(x, y).0,
                    marker(sx, sy),
                    "orientation {orientation}, displayed pixel ({x}, {y})"
                );
            }
        }
    }
}

#[test]
fn grey_becomes_equal_rgb_channels() {
    let png = encode_png(2, 1, ExtendedColorType::L8, &[0, 200], None);
    let decoded = decode_bytes("grey.png", &png);
    assert_eq!(decoded.pixels.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(decoded.pixels.get_pixel(1, 0).0, [200, 200, 200]);
    assert_eq!(decoded.format, "png");
}

#[test]
fn grey_alpha_is_composited_over_white() {
    // (value, alpha): opaque keeps the value, transparent is white, and
    // half alpha blends: (100 * 128 + 255 * 127 + 127) / 255 = 177.
    let png = encode_png(
        3,
        1,
        ExtendedColorType::La8,
        &[100, 255, 100, 0, 100, 128],
        None,
    );
    let decoded = decode_bytes("grey_alpha.png", &png);
    assert_eq!(decoded.pixels.get_pixel(0, 0).0, [100, 100, 100]);
    assert_eq!(decoded.pixels.get_pixel(1, 0).0, [255, 255, 255]);
    assert_eq!(decoded.pixels.get_pixel(2, 0).0, [177, 177, 177]);
}

#[test]
fn sixteen_bit_scales_to_eight_bit() {
    // 16-bit big-endian samples: 0xFFFF -> 255, 0x8080 -> 128, 0 -> 0.
    let samples: [u16; 3] = [0xFFFF, 0x8080, 0x0000];
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_ne_bytes()).collect();
    let png = encode_png(1, 1, ExtendedColorType::Rgb16, &data, None);
    let decoded = decode_bytes("deep.png", &png);
    assert_eq!(decoded.pixels.get_pixel(0, 0).0, [255, 128, 0]);
}

#[test]
fn palette_with_transparency_becomes_rgb() {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 2, 1);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![10u8, 20, 30, 200, 0, 0]);
        encoder.set_trns(vec![255u8, 0]);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0, 1]).unwrap();
    }
    let decoded = decode_bytes("palette.png", &bytes);
    assert_eq!(decoded.pixels.get_pixel(0, 0).0, [10, 20, 30]);
    assert_eq!(decoded.pixels.get_pixel(1, 0).0, [255, 255, 255]);
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    // Pure red in CMYK is C=0, M=255, Y=255, K=0.
    let (width, height) = (16u16, 16u16);
    let cmyk: Vec<u8> = [0u8, 255, 255, 0].repeat(usize::from(width) * usize::from(height));
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 100)
        .encode(&cmyk, width, height, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let decoded = decode_bytes("cmyk.jpg", &bytes);
    let [red, green, blue] = decoded.pixels.get_pixel(8, 8).0;
    assert!(red >= 250, "red {red}");
    assert!(green <= 5, "green {green}");
    assert!(blue <= 5, "blue {blue}");
    assert_eq!(decoded.format, "jpeg");
}

#[test]
fn content_decides_format_not_extension() {
    let png = encode_png(1, 1, ExtendedColorType::Rgb8, &[1, 2, 3], None);
    let decoded = decode_bytes("really_a_png.jpg", &png);
    assert_eq!(decoded.format, "png");
    assert_eq!(decoded.pixels.get_pixel(0, 0).0, [1, 2, 3]);
}

#[test]
fn text_file_is_unknown_format() {
    let (_dir, path) = write_temp("notes.jpg", b"just some text, not an image\n");
    let error = decode_file(&path, &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(error, DecodeError::UnknownFormat { .. }),
        "{error}"
    );
    assert_eq!(error.path(), path.as_path());
}

#[test]
fn pixel_cap_rejects_before_decoding() {
    let png = encode_png(4, 4, ExtendedColorType::Rgb8, &[0; 48], None);
    let (_dir, path) = write_temp("big.png", &png);
    let error = decode_file(
        &path,
        &DecodeOptions {
            max_pixels: 15,
            reduce_to: None,
        },
    )
    .unwrap_err();
    assert!(
        matches!(error, DecodeError::TooLarge { pixels: 16, .. }),
        "{error}"
    );
    assert!(
        error.reason().contains("--max-pixels"),
        "{}",
        error.reason()
    );
}

#[test]
fn missing_file_names_the_path() {
    let error =
        decode_file(Path::new("/nonexistent/x.jpg"), &DecodeOptions::default()).unwrap_err();
    assert!(
        error.to_string().starts_with("/nonexistent/x.jpg: "),
        "{error}"
    );
}

#[test]
fn to_rgb8_keeps_opaque_rgb() {
    let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb([9, 8, 7])));
    assert_eq!(to_rgb8(image).get_pixel(0, 0).0, [9, 8, 7]);
}

/// Encodes a smooth test picture as a JPEG of quality 90, with an EXIF
/// orientation when given.
fn encode_jpeg(width: u16, height: u16, orientation: Option<u16>) -> Vec<u8> {
    let data: Vec<u8> = (0..u32::from(height))
        .flat_map(|y| {
            (0..u32::from(width)).flat_map(move |x| {
                let block = if (x / 200 + y / 150) % 2 == 0 { 60 } else { 0 };
                [
                    (x * 255 / u32::from(width)) as u8,
                    (y * 255 / u32::from(height)) as u8 / 2 + block,
                    90,
                ]
            })
        })
        .collect();
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 90);
    if let Some(orientation) = orientation {
        let mut segment = b"Exif\0\0".to_vec();
        segment.extend_from_slice(&exif_with_orientation(orientation));
        encoder.add_app_segment(1, segment).unwrap();
    }
    encoder
        .encode(&data, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    bytes
}

#[test]
fn large_jpeg_is_reduced_with_margin() {
    let jpeg = encode_jpeg(1600, 1200, Some(6));
    let (_dir, path) = write_temp("large.jpg", &jpeg);
    let reduced = decode_file(&path, &DecodeOptions::for_side(DEFAULT_MAX_PIXELS, 224)).unwrap();
    // 1/2 keeps the short side at 600, at least 2 x 224; 1/4 would not.
    // Orientation 6 turns the stored 800x600 upright.
    assert_eq!(reduced.pixels.dimensions(), (600, 800));
    assert_eq!((reduced.width, reduced.height), (1200, 1600));

    let full = decode_file(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(full.pixels.dimensions(), (1200, 1600));
    assert_eq!((full.width, full.height), (1200, 1600));
    let halved = image::imageops::resize(
        &full.pixels,
        600,
        800,
        image::imageops::FilterType::Triangle,
    );
    let difference: f64 = halved
        .as_raw()
        .iter()
        .zip(reduced.pixels.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / halved.as_raw().len() as f64;
    assert!(difference < 2.0, "mean difference {difference}");
}

#[test]
fn small_jpeg_is_decoded_at_full_size() {
    let jpeg = encode_jpeg(640, 480, None);
    let (_dir, path) = write_temp("small.jpg", &jpeg);
    let decoded = decode_file(&path, &DecodeOptions::for_side(DEFAULT_MAX_PIXELS, 224)).unwrap();
    assert_eq!(decoded.pixels.dimensions(), (640, 480));
    assert_eq!((decoded.width, decoded.height), (640, 480));
}

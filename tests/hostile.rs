//! Hostile and unusual files, each made by the test: every one is either
//! indexed correctly or reported as `path: reason` and counted, and the
//! run goes on.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage};
use serde_json::Value;

fn photo(index: usize) -> PathBuf {
    common::photo_thumbnail_pairs()[index].0.clone()
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            90,
        ])
    })
}

/// Returns the JPEG without its APP1 (EXIF and XMP) segments.
fn without_app1(jpeg: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[..2], [0xFF, 0xD8]);
    let mut kept = vec![0xFF, 0xD8];
    let mut at = 2;
    // Segments up to the start of scan (SOS, 0xDA) carry a length.
    while jpeg[at] == 0xFF && jpeg[at + 1] != 0xDA {
        let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if jpeg[at + 1] != 0xE1 {
            kept.extend_from_slice(&jpeg[at..at + 2 + length]);
        }
        at += 2 + length;
    }
    kept.extend_from_slice(&jpeg[at..]);
    kept
}

/// Returns the JPEG with its own APP1 segments replaced by one containing
/// `payload`.
fn with_app1(jpeg: &[u8], payload: &[u8]) -> Vec<u8> {
    let jpeg = without_app1(jpeg);
    let length = u16::try_from(payload.len() + 2).unwrap();
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE1];
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&jpeg[2..]);
    bytes
}

/// EXIF block (with its `Exif\0\0` prefix) whose only tag is Orientation.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&value.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    exif
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let mut checked = kind.to_vec();
    checked.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&checked).to_be_bytes());
    chunk
}

/// Returns a PNG whose header claims `width` x `height` RGB pixels,
/// followed by a few bytes of compressed data. A decoder that trusted the
/// header would allocate the whole picture before finding the data short.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(png_chunk(b"IHDR", &header));
    bytes.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00]));
    bytes.extend(png_chunk(b"IEND", &[]));
    bytes
}

fn palette_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 4, 4);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(vec![200u8, 30, 30, 30, 30, 200]);
    encoder.set_trns(vec![255u8, 0]);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[0, 1, 0, 1].repeat(4)).unwrap();
    writer.finish().unwrap();
    bytes
}

fn animated_gif() -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        let frames = [Rgb([250u8, 0, 0]), Rgb([0, 0, 250])].map(|colour| {
            let rgba = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, colour)).to_rgba8();
            image::Frame::new(rgba)
        });
        encoder.encode_frames(frames).unwrap();
    }
    bytes
}

fn cmyk_jpeg() -> Vec<u8> {
    let mut bytes = Vec::new();
    let pixels = [0u8, 255, 255, 0].repeat(32 * 32);
    jpeg_encoder::Encoder::new(&mut bytes, 90)
        .encode(&pixels, 32, 32, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    bytes
}

fn progressive_jpeg(source: &Path) -> Vec<u8> {
    let rgb = image::open(source).unwrap().to_rgb8();
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 95);
    encoder.set_progressive(true);
    let (width, height) = (rgb.width() as u16, rgb.height() as u16);
    encoder
        .encode(rgb.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    bytes
}

/// One row of the images table.
#[derive(Debug, PartialEq)]
struct Row {
    width: u32,
    height: u32,
    format: String,
    animated: bool,
}

fn rows(database: &Path) -> BTreeMap<Vec<u8>, Row> {
    let connection = rusqlite::Connection::open(database).unwrap();
    let mut statement = connection
        .prepare("SELECT path, width, height, format, animated FROM images")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                Row {
                    width: row.get(1)?,
                    height: row.get(2)?,
                    format: row.get(3)?,
                    animated: row.get(4)?,
                },
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn row(width: u32, height: u32, format: &str, animated: bool) -> Row {
    Row {
        width,
        height,
        format: format.to_string(),
        animated,
    }
}

/// Reason of the failure reported for `path`, with its stage.
fn failure_of(summary: &Value, path: &Path) -> Option<(String, String)> {
    summary["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|failure| {
            (failure["path"] == path.to_str().unwrap()).then(|| {
                (
                    failure["stage"].as_str().unwrap().to_string(),
                    failure["reason"].as_str().unwrap().to_string(),
                )
            })
        })
}

#[test]
fn hostile_files_are_indexed_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    std::fs::create_dir(&album).unwrap();
    let database = dir.path().join("db.sqlite");
    let real = std::fs::read(photo(0)).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = album.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    let truncated = write("truncated.jpg", &real[..real.len() / 2]);
    let truncated_header = write("truncated_header.jpg", &real[..300]);
    let empty = write("empty.jpg", b"");
    let text = write("text.jpg", b"this is a text file\n");
    let png_named_jpg = write(
        "png_named.jpg",
        &encode(&gradient(64, 48).into(), ImageFormat::Png),
    );
    let cmyk = write("cmyk.jpg", &cmyk_jpeg());
    let progressive = write("progressive.jpg", &progressive_jpeg(&photo(1)));
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(20, 10, |x, _| Rgb([x as u16 * 3000, 40000, 1000]));
    let sixteen_bit = write(
        "sixteen.png",
        &encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png),
    );
    let grey_alpha: ImageBuffer<LumaA<u8>, Vec<u8>> =
        ImageBuffer::from_fn(12, 8, |x, _| LumaA([120, (x * 20) as u8]));
    let grey_alpha = write(
        "grey_alpha.png",
        &encode(&DynamicImage::ImageLumaA8(grey_alpha), ImageFormat::Png),
    );
    let palette = write("palette.png", &palette_png());
    let gif = write("animated.gif", &animated_gif());
    let webp_image = DynamicImage::ImageRgb8(gradient(30, 20));
    let webp = write("lossless.webp", &encode(&webp_image, ImageFormat::WebP));
    let bmp = write(
        "picture.bmp",
        &encode(&gradient(17, 9).into(), ImageFormat::Bmp),
    );
    let tiff = write(
        "picture.tiff",
        &encode(&gradient(21, 13).into(), ImageFormat::Tiff),
    );
    let one_pixel = write(
        "one_pixel.png",
        &encode(&gradient(1, 1).into(), ImageFormat::Png),
    );
    let strip = write(
        "strip.png",
        &encode(&gradient(10000, 10).into(), ImageFormat::Png),
    );
    let mut trailing_bytes = real.clone();
    trailing_bytes.extend_from_slice(b"trailing garbage after the end marker");
    let trailing = write("trailing.jpg", &trailing_bytes);
    let bad_exif = write(
        "bad_exif.jpg",
        &with_app1(&real, b"Exif\0\0this is not a TIFF header"),
    );
    let rotated = write("rotated.jpg", &with_app1(&real, &exif_orientation(6)));
    let bad_orientation = write(
        "bad_orientation.jpg",
        &with_app1(&real, &exif_orientation(9)),
    );
    let huge = write("huge_header.png", &png_header_only(20000, 20000));
    let grey: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(9, 9, |x, y| Luma([(x * y) as u8]));
    let grey = write(
        "grey.png",
        &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png),
    );
    let folder_named_jpg = album.join("folder.jpg");
    std::fs::create_dir(&folder_named_jpg).unwrap();
    let inside_folder = folder_named_jpg.join("inside.jpg");
    std::fs::copy(photo(2), &inside_folder).unwrap();
    let fifo = album.join("pipe.jpg");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink(&album, album.join("loop")).unwrap();
    let good = [album.join("good_a.jpg"), album.join("good_b.jpg")];
    std::fs::copy(photo(3), &good[0]).unwrap();
    std::fs::copy(photo(4), &good[1]).unwrap();

    let failures_file = dir.path().join("failures.jsonl");
    let result = common::run(
        &database,
        [
            "index".as_ref(),
            "--json".as_ref(),
            "--failures".as_ref(),
            failures_file.as_os_str(),
            album.as_os_str(),
        ],
    );
    assert_eq!(result.status, 3, "{}", result.stderr);
    let summary = result.json();

    // Reported, with the stage and a reason naming the problem.
    let expected_failures = [
        (&truncated_header, "decode", "cannot decode"),
        (&empty, "decode", "not a supported image"),
        (&text, "decode", "not a supported image"),
        (
            &huge,
            "decode",
            "20000x20000 = 400000000 pixels, over the limit of 100000000 (--max-pixels)",
        ),
    ];
    for (path, stage, reason) in &expected_failures {
        let (found_stage, found_reason) = failure_of(&summary, path)
            .unwrap_or_else(|| panic!("{} not reported: {summary}", path.display()));
        assert_eq!(&found_stage, stage, "{}", path.display());
        assert!(
            found_reason.contains(reason),
            "{}: {found_reason}",
            path.display()
        );
        assert!(
            result.stderr.contains(&format!("{}: ", path.display())),
            "{} missing from stderr",
            path.display()
        );
    }
    assert_eq!(summary["failed"], expected_failures.len());

    // The --failures file contains the same failures, one JSON object a line.
    let lines: Vec<Value> = std::fs::read_to_string(&failures_file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), expected_failures.len());
    for (path, stage, _) in &expected_failures {
        assert!(
            lines
                .iter()
                .any(|line| line["path"] == path.to_str().unwrap() && line["stage"] == *stage),
            "{} missing from {lines:?}",
            path.display()
        );
    }

    // Indexed, with the size after EXIF orientation, the sniffed format and
    // the animation flag.
    let stored = rows(&database);
    let key = |path: &Path| path.as_os_str().as_bytes().to_vec();
    let expected_rows = [
        (&truncated, row(640, 480, "jpeg", false)),
        (&png_named_jpg, row(64, 48, "png", false)),
        (&cmyk, row(32, 32, "jpeg", false)),
        (&progressive, row(640, 480, "jpeg", false)),
        (&sixteen_bit, row(20, 10, "png", false)),
        (&grey_alpha, row(12, 8, "png", false)),
        (&palette, row(4, 4, "png", false)),
        (&gif, row(16, 16, "gif", true)),
        (&webp, row(30, 20, "webp", false)),
        (&bmp, row(17, 9, "bmp", false)),
        (&tiff, row(21, 13, "tiff", false)),
        (&one_pixel, row(1, 1, "png", false)),
        (&strip, row(10000, 10, "png", false)),
        (&trailing, row(640, 480, "jpeg", false)),
        (&bad_exif, row(640, 480, "jpeg", false)),
        (&rotated, row(480, 640, "jpeg", false)),
        (&bad_orientation, row(640, 480, "jpeg", false)),
        (&grey, row(9, 9, "png", false)),
        (&inside_folder, row(640, 480, "jpeg", false)),
        (&good[0], row(640, 480, "jpeg", false)),
        (&good[1], row(640, 480, "jpeg", false)),
    ];
    for (path, expected) in &expected_rows {
        let found = stored
            .get(&key(path))
            .unwrap_or_else(|| panic!("{} not indexed; stderr: {}", path.display(), result.stderr));
        assert_eq!(found, expected, "{}", path.display());
    }
    assert_eq!(stored.len(), expected_rows.len(), "{:?}", stored.keys());
    assert_eq!(summary["indexed"], expected_rows.len());

    // A JPEG cut short is decoded as far as it goes, with a warning.
    assert!(
        result
            .stderr
            .contains("truncated.jpg: JPEG end marker missing"),
        "{}",
        result.stderr
    );
    assert!(
        !result.stderr.contains("trailing.jpg: JPEG end marker"),
        "{}",
        result.stderr
    );

    // Unusable EXIF data gives a warning and the picture as stored.
    assert!(
        result.stderr.contains("bad_exif.jpg: malformed EXIF data"),
        "{}",
        result.stderr
    );
    assert!(
        result
            .stderr
            .contains("bad_orientation.jpg: invalid EXIF orientation 9"),
        "{}",
        result.stderr
    );

    // Vectors belong to their own files despite the bad files around them:
    // each good photo, and the copy with trailing bytes, finds itself first.
    for (query, expected) in [
        (photo(3), &good[0]),
        (photo(4), &good[1]),
        (photo(0), &bad_exif),
    ] {
        let results = common::query(&database, &query, 3);
        assert!(
            results[..3].iter().any(|(path, _)| path == expected),
            "{}: {results:?}",
            query.display()
        );
        assert!((results[0].1 - 1.0).abs() < 1e-4, "{results:?}");
    }
}

#[test]
fn huge_header_is_rejected_by_small_cap_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    std::fs::write(&path, png_header_only(300, 300)).unwrap();
    let result = common::run(
        &dir.path().join("db.sqlite"),
        [
            "index".as_ref(),
            "--json".as_ref(),
            "--max-pixels".as_ref(),
            "89999".as_ref(),
            path.as_os_str(),
        ],
    );
    assert_eq!(result.status, 3, "{}", result.stderr);
    let (stage, reason) = failure_of(&result.json(), &path).unwrap();
    assert_eq!(stage, "decode");
    assert!(
        reason.contains("300x300 = 90000 pixels, over the limit of 89999"),
        "{reason}"
    );
}

#[test]
fn non_utf8_and_control_character_names() {
    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    std::fs::create_dir(&album).unwrap();
    let latin1 = album.join(OsStr::from_bytes(b"caf\xe9.jpg"));
    let escape = album.join("bell\x07 and \x1b[31mred\n.jpg");
    std::fs::copy(photo(5), &latin1).unwrap();
    std::fs::copy(photo(6), &escape).unwrap();
    let database = dir.path().join("db.sqlite");
    let (run, summary) = common::index(&database, &[&album]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(summary["indexed"], 2);

    let json = common::run(
        &database,
        [
            "query".as_ref(),
            photo(5).as_os_str(),
            "--json".as_ref(),
            "-k".as_ref(),
            "1".as_ref(),
        ],
    );
    let top = &json.json()["results"][0];
    let expected_hex: String = latin1
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(top["path_hex"], expected_hex.as_str());
    assert_eq!(top["path"], latin1.to_string_lossy().as_ref());

    let text = common::run(
        &database,
        [
            "query".as_ref(),
            photo(6).as_os_str(),
            "-k".as_ref(),
            "1".as_ref(),
        ],
    );
    assert_eq!(text.status, 0, "{}", text.stderr);
    assert!(
        !text.stdout.contains('\x1b'),
        "raw escape reached the terminal: {:?}",
        text.stdout
    );
    assert!(!text.stdout.contains('\x07'), "{:?}", text.stdout);
    assert!(
        text.stdout.contains("bell\\u{7} and \\u{1b}[31mred\\n.jpg"),
        "{:?}",
        text.stdout
    );
    assert_eq!(text.stdout.lines().count(), 1);
}

#[test]
fn symlinks_are_followed_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    std::fs::create_dir(&album).unwrap();
    std::fs::copy(photo(7), album.join("real.jpg")).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::copy(photo(8), outside.join("linked.jpg")).unwrap();
    std::os::unix::fs::symlink(&outside, album.join("link_to_outside")).unwrap();
    std::os::unix::fs::symlink(&album, album.join("loop")).unwrap();

    let plain_db = dir.path().join("plain.db");
    let (plain, summary) = common::index(&plain_db, &[&album]);
    assert_eq!(plain.status, 0, "{}", plain.stderr);
    assert_eq!(summary["indexed"], 1);

    let follow_db = dir.path().join("follow.db");
    let result = common::run(
        &follow_db,
        [
            "index".as_ref(),
            "--json".as_ref(),
            "--follow-links".as_ref(),
            album.as_os_str(),
        ],
    );
    // The loop is a warning, not a failure: nothing indexable was missed.
    assert_eq!(result.status, 0, "{}", result.stderr);
    let summary = result.json();
    assert_eq!(summary["indexed"], 2);
    assert_eq!(summary["failed"], 0);
    let warning = format!(
        "warning: {}: symbolic link loop",
        album.join("loop").display()
    );
    assert!(result.stderr.contains(&warning), "{}", result.stderr);
}

#[test]
fn fifo_named_as_root_is_reported_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.jpg");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let result = common::run(
        &dir.path().join("db.sqlite"),
        ["index".as_ref(), "--json".as_ref(), fifo.as_os_str()],
    );
    // The only path given cannot be indexed, so the run as a whole failed.
    assert_eq!(result.status, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("nothing was indexed"),
        "{}",
        result.stderr
    );
    let (stage, reason) = failure_of(&result.json(), &fifo).unwrap();
    assert_eq!(stage, "scan");
    assert_eq!(reason, "not a regular file or folder");
}

#[test]
fn unreadable_file_is_reported_unless_root() {
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked.jpg");
    std::fs::copy(photo(9), &locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let result = common::run(
        &dir.path().join("db.sqlite"),
        ["index".as_ref(), "--json".as_ref(), locked.as_os_str()],
    );
    let summary = result.json();
    if std::fs::read(&locked).is_ok() {
        // Running as root: permissions do not stop reading.
        assert_eq!(result.status, 0, "{}", result.stderr);
        assert_eq!(summary["indexed"], 1);
    } else {
        assert_eq!(result.status, 3, "{}", result.stderr);
        let (stage, reason) = failure_of(&summary, &locked).unwrap();
        assert_eq!(stage, "read");
        assert_eq!(reason, "cannot read: permission denied");
    }
}

#[test]
fn file_vanishing_after_scan_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vanishing.jpg");
    std::fs::copy(photo(10), &file).unwrap();
    let scan = imgsim::scan::scan_roots(&[dir.path().to_path_buf()], &Default::default());
    assert_eq!(scan.candidates.len(), 1);
    std::fs::remove_file(&file).unwrap();
    let plan =
        imgsim::plan::plan_run(&scan, &Default::default(), u64::MAX, &Default::default()).unwrap();
    assert!(plan.to_embed.is_empty());
    assert_eq!(plan.read_failures.len(), 1);
    assert_eq!(plan.read_failures[0].path, file);
    assert_eq!(
        plan.read_failures[0].reason,
        "cannot read: file disappeared after the scan"
    );
}

#[test]
fn file_replaced_by_fifo_after_scan_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swapped.jpg");
    std::fs::copy(photo(11), &file).unwrap();
    let scan = imgsim::scan::scan_roots(&[dir.path().to_path_buf()], &Default::default());
    std::fs::remove_file(&file).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap()
        .success());
    let plan =
        imgsim::plan::plan_run(&scan, &Default::default(), u64::MAX, &Default::default()).unwrap();
    assert_eq!(plan.read_failures.len(), 1);
    assert_eq!(
        plan.read_failures[0].reason,
        "cannot read: no longer a regular file"
    );
}

#[test]
fn fifo_as_query_or_hnsw_file_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let (run, _) = common::index(&database, &[photo(12), photo(13)]);
    assert_eq!(run.status, 0, "{}", run.stderr);

    let fifo = dir.path().join("query.jpg");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let result = common::run(&database, ["query".as_ref(), fifo.as_os_str()]);
    assert_eq!(result.status, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("not a regular file"),
        "{}",
        result.stderr
    );

    // The graph file, then the links file too, replaced by FIFOs, which
    // must never be opened for reading.
    for suffix in [".hnsw.graph", ".hnsw.links"] {
        let saved = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.to_string_lossy().ends_with(suffix))
            .unwrap();
        std::fs::remove_file(&saved).unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(&saved)
            .status()
            .unwrap()
            .success());
        let results = common::query(&database, &photo(12), 2);
        assert_eq!(results[0].0, photo(12), "{suffix}");
    }
}

#[test]
fn control_characters_in_error_paths_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let (run, _) = common::index(&database, &[photo(14)]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let missing = dir.path().join("gone\x1b[2J.jpg");
    let result = common::run(&database, ["query".as_ref(), missing.as_os_str()]);
    assert_eq!(result.status, 1);
    assert!(!result.stderr.contains('\x1b'), "{:?}", result.stderr);
    assert!(
        result.stderr.contains("gone\\u{1b}[2J.jpg"),
        "{:?}",
        result.stderr
    );
}

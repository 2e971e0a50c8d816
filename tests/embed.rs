//! `imgsim embed`: a (num_images, dimension) float32 array with its row
//! names, in input order, with failed files left out.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn photo(index: usize) -> PathBuf {
    common::photo_thumbnail_pairs()[index].0.clone()
}

/// Parses a version 1.0 `.npy` file of little-endian float32 into its
/// shape and values.
fn read_npy(path: &Path) -> ((usize, usize), Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let values: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), dims[0] * dims[1]);
    ((dims[0], dims[1]), values)
}

fn embed(args: &[&std::ffi::OsStr]) -> common::Run {
    std::process::Command::new(env!("CARGO_BIN_EXE_imgsim"))
        .arg("embed")
        .args(args)
        .output()
        .unwrap()
        .into()
}

fn norm(row: &[f32]) -> f32 {
    row.iter().map(|v| v * v).sum::<f32>().sqrt()
}

#[test]
fn npy_rows_follow_input_order_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(photo(1), folder.join("b.jpg")).unwrap();
    std::fs::copy(photo(2), folder.join("a.jpg")).unwrap();
    std::fs::write(folder.join("broken.jpg"), b"not an image").unwrap();
    let output = dir.path().join("features.npy");
    let result = embed(&[
        photo(0).as_os_str(),
        folder.as_os_str(),
        "-o".as_ref(),
        output.as_os_str(),
    ]);
    assert_eq!(result.status, 3, "{}", result.stderr);
    assert!(
        result.stderr.contains("broken.jpg: not a supported image"),
        "{}",
        result.stderr
    );

    let ((rows, dimension), values) = read_npy(&output);
    assert_eq!((rows, dimension), (3, 1280));
    let names: Vec<Value> = std::fs::read_to_string(dir.path().join("features.npy.rows.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let expected = [photo(0), folder.join("a.jpg"), folder.join("b.jpg")];
    assert_eq!(names.len(), 3);
    for (row, path) in expected.iter().enumerate() {
        assert_eq!(names[row]["row"], row);
        assert_eq!(
            names[row]["path"],
            path.canonicalize().unwrap().to_str().unwrap()
        );
    }
    for row in values.chunks_exact(dimension) {
        assert!((norm(row) - 1.0).abs() < 1e-5, "row norm {}", norm(row));
    }
    // Rows of different photos differ.
    let dot: f32 = values[1280 * 2..]
        .iter()
        .zip(&values[..1280])
        .map(|(a, b)| a * b)
        .sum();
    assert!(dot < 0.999, "different photos, similarity {dot}");
    assert!(!dir.path().join("features.npy.partial").exists());
}

#[test]
fn raw_output_is_the_pooled_activation() {
    let dir = tempfile::tempdir().unwrap();
    let normalized = dir.path().join("n.npy");
    let raw = dir.path().join("r.npy");
    let first = embed(&[photo(3).as_os_str(), "-o".as_ref(), normalized.as_os_str()]);
    assert_eq!(first.status, 0, "{}", first.stderr);
    let second = embed(&[
        photo(3).as_os_str(),
        "-o".as_ref(),
        raw.as_os_str(),
        "--normalize".as_ref(),
        "false".as_ref(),
    ]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    let (_, unit) = read_npy(&normalized);
    let (_, pooled) = read_npy(&raw);
    assert!(
        pooled.iter().all(|&v| v >= 0.0),
        "pooled ReLU6 outputs are never negative"
    );
    let length = norm(&pooled);
    assert!((length - 1.0).abs() > 0.1, "raw norm {length}");
    for (a, b) in unit.iter().zip(&pooled) {
        assert!((a - b / length).abs() < 1e-6);
    }
}

#[test]
fn csv_and_jsonl_carry_paths_inline() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("features.csv");
    let jsonl = dir.path().join("features.jsonl");
    for output in [&csv, &jsonl] {
        let result = embed(&[
            photo(4).as_os_str(),
            photo(5).as_os_str(),
            "-o".as_ref(),
            output.as_os_str(),
        ]);
        assert_eq!(result.status, 0, "{}", result.stderr);
    }
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let csv_lines: Vec<&str> = csv_text.lines().collect();
    assert_eq!(csv_lines.len(), 2);
    let fields: Vec<&str> = csv_lines[1].split(',').collect();
    assert_eq!(fields.len(), 1281);
    assert_eq!(fields[0], photo(5).to_str().unwrap());

    let json_lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(json_lines.len(), 2);
    assert_eq!(json_lines[0]["path"], photo(4).to_str().unwrap());
    assert_eq!(json_lines[0]["vector"].as_array().unwrap().len(), 1280);
    let first_csv: f64 = csv_lines[0].split(',').nth(1).unwrap().parse().unwrap();
    let first_json = json_lines[0]["vector"][0].as_f64().unwrap();
    assert!((first_csv - first_json).abs() < 1e-6);
}

/// Reads one array of an `.npz` archive as raw `.npy` bytes.
fn npz_entry(path: &Path, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut entry = archive.by_name(name).unwrap();
    assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    bytes
}

#[test]
fn npz_holds_features_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos é");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(photo(6), folder.join("b.jpg")).unwrap();
    std::fs::copy(photo(7), folder.join("a long name.jpg")).unwrap();
    std::fs::write(folder.join("c.jpg"), b"broken").unwrap();
    let npz = dir.path().join("features.npz");
    let npy = dir.path().join("features.npy");
    for output in [&npz, &npy] {
        let result = embed(&[folder.as_os_str(), "-o".as_ref(), output.as_os_str()]);
        assert_eq!(result.status, 3, "{}", result.stderr);
    }

    let features_path = dir.path().join("features_from_npz.npy");
    std::fs::write(&features_path, npz_entry(&npz, "features.npy")).unwrap();
    let (shape, features) = read_npy(&features_path);
    let (npy_shape, npy_values) = read_npy(&npy);
    assert_eq!(shape, (2, 1280));
    assert_eq!(shape, npy_shape);
    assert_eq!(features, npy_values);

    let paths = npz_entry(&npz, "paths.npy");
    let header_len = usize::from(u16::from_le_bytes([paths[8], paths[9]]));
    let header = std::str::from_utf8(&paths[10..10 + header_len]).unwrap();
    let expected = [folder.join("a long name.jpg"), folder.join("b.jpg")];
    let expected: Vec<String> = expected
        .iter()
        .map(|p| p.canonicalize().unwrap().to_str().unwrap().to_string())
        .collect();
    let width = expected.iter().map(|p| p.chars().count()).max().unwrap();
    assert!(
        header.starts_with(&format!(
            "{{'descr': '<U{width}', 'fortran_order': False, 'shape': (2,), }}"
        )),
        "{header}"
    );
    let body = &paths[10 + header_len..];
    assert_eq!(body.len(), 2 * width * 4);
    for (row, path) in expected.iter().enumerate() {
        let decoded: String = body[row * width * 4..(row + 1) * width * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .take_while(|&c| c != 0)
            .map(|c| char::from_u32(c).unwrap())
            .collect();
        assert_eq!(&decoded, path, "row {row}");
    }
    assert!(!dir.path().join("features.npz.partial").exists());
    assert!(!dir.path().join("features.npz.features.partial").exists());
    assert!(!dir.path().join("features.npz.paths.partial").exists());
}

/// Runs `imgsim embed` on `folder` into an `.npz` and returns the exit
/// status and the process's peak resident memory in KiB.
fn embed_peak_memory(folder: &Path, output: &Path) -> (i32, i64) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_imgsim"));
    command
        .args(["--threads", "2", "-q", "embed"])
        .arg(folder)
        .arg("-o")
        .arg(output);
    let (status, peak_kib, _) = common::run_with_peak_memory(command);
    (status, peak_kib)
}

#[test]
fn memory_does_not_grow_with_image_count() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = common::photo_thumbnail_pairs();
    let make_folder = |name: &str, count: usize| {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        for index in 0..count {
            let (photo, _) = &pairs[index % pairs.len()];
            std::fs::hard_link(photo, folder.join(format!("{index:04}.jpg"))).unwrap();
        }
        folder
    };
    let small = make_folder("small", 40);
    let large = make_folder("large", 400);

    let (status, small_peak) = embed_peak_memory(&small, &dir.path().join("small.npz"));
    assert_eq!(status, 0);
    let (status, large_peak) = embed_peak_memory(&large, &dir.path().join("large.npz"));
    assert_eq!(status, 0);
    let features = npz_entry(&dir.path().join("large.npz"), "features.npy");
    assert_eq!(features.len(), 128 + 400 * 1280 * 4);

    // Keeping every input tensor (600 KB each) or decoded photo (900 KB)
    // would add over 200 MB for the 360 extra images.
    let growth_mib = (large_peak - small_peak) / 1024;
    assert!(
        growth_mib < 40,
        "peak memory grew by {growth_mib} MiB: {small_peak} KiB for 40 images, \
         {large_peak} KiB for 400"
    );
}

#[test]
fn output_never_replaces_a_photo() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.jpg");
    std::fs::copy(photo(0), &image).unwrap();
    let disguised = dir.path().join("features.npy");
    std::fs::copy(photo(1), &disguised).unwrap();
    let second = dir.path().join("b.jpg");
    std::fs::copy(photo(2), &second).unwrap();
    // `imgsim embed -o *.jpg` expands to `-o a.jpg b.jpg`.
    for output in [&image, &disguised] {
        let before = std::fs::read(output).unwrap();
        let result = embed(&["-o".as_ref(), output.as_os_str(), second.as_os_str()]);
        assert_eq!(result.status, 1, "{}", result.stderr);
        assert!(result.stderr.contains("refusing to"), "{}", result.stderr);
        assert_eq!(std::fs::read(output).unwrap(), before);
    }
}

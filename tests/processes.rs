//! Real processes killed for real: SIGKILL in the middle of a run, Ctrl-C,
//! and two index runs on one database.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{index, photo_thumbnail_pairs, Run};

/// Makes `copies` files per photo, each with its own trailing bytes after
/// the JPEG end marker: different content for the fingerprint, the same
/// pixels for the decoder.
fn make_album(folder: &Path, copies: usize) -> usize {
    std::fs::create_dir_all(folder).unwrap();
    let photos: Vec<PathBuf> = photo_thumbnail_pairs()
        .into_iter()
        .map(|(photo, _)| photo)
        .collect();
    let mut count = 0;
    for copy in 0..copies {
        for photo in &photos {
            let mut bytes = std::fs::read(photo).unwrap();
            bytes.extend_from_slice(format!("copy {copy}").as_bytes());
            let name = format!("{copy:02}-{}", photo.file_name().unwrap().to_string_lossy());
            std::fs::write(folder.join(name), bytes).unwrap();
            count += 1;
        }
    }
    count
}

fn spawn_index(database: &Path, folder: &Path, extra: &[&str]) -> Child {
    common::imgsim(database)
        .args(["index", "--batch-size", "8", "--json", "--threads", "1"])
        .args(extra)
        .arg(folder)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Number of committed images, read the way a concurrent reader would.
fn committed(database: &Path) -> i64 {
    if !database.exists() {
        return 0;
    }
    let connection = rusqlite::Connection::open(database).unwrap();
    connection.busy_timeout(Duration::from_secs(10)).unwrap();
    connection
        .query_row("SELECT COUNT(*) FROM images", [], |row| row.get(0))
        .unwrap_or(0)
}

fn wait_for_commits(database: &Path, at_least: i64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(database) < at_least {
        assert!(
            child.try_wait().unwrap().is_none(),
            "index finished before the test could interrupt it"
        );
        assert!(Instant::now() < deadline, "no commits after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn integrity(database: &Path) -> String {
    let connection = rusqlite::Connection::open(database).unwrap();
    connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

/// Path (relative to `folder`) to vector, for every image.
fn vectors(database: &Path, folder: &Path) -> BTreeMap<PathBuf, Vec<f32>> {
    let connection = rusqlite::Connection::open(database).unwrap();
    let mut statement = connection
        .prepare("SELECT path, vector FROM images")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .unwrap();
    rows.map(|row| {
        let (path, bytes) = row.unwrap();
        let path = PathBuf::from(String::from_utf8(path).unwrap());
        let vector = bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
            .collect();
        (path.strip_prefix(folder).unwrap().to_path_buf(), vector)
    })
    .collect()
}

fn send_signal(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigkill_then_resume_matches_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    let total = make_album(&album, 8);
    assert_eq!(total, 232);

    let clean_db = dir.path().join("clean.db");
    let (clean, summary) = index(&clean_db, &[&album]);
    assert_eq!(clean.status, 0, "{}", clean.stderr);
    assert_eq!(summary["indexed"], 232);

    let killed_db = dir.path().join("killed.db");
    let mut child = spawn_index(&killed_db, &album, &[]);
    wait_for_commits(&killed_db, 16, &mut child);
    send_signal(&child, "-KILL");
    child.wait().unwrap();
    assert_eq!(integrity(&killed_db), "ok");
    let before_resume = committed(&killed_db);
    assert!(
        before_resume >= 16 && before_resume < 232,
        "{before_resume} committed"
    );
    assert_eq!(before_resume % 8, 0, "only whole batches are committed");

    let (resumed, summary) = index(&killed_db, &[&album]);
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    assert_eq!(summary["unchanged"], before_resume);
    assert_eq!(
        summary["decoded"],
        232 - before_resume,
        "committed images are not decoded again"
    );
    assert_eq!(summary["total_in_database"], 232);
    assert_eq!(integrity(&killed_db), "ok");

    let clean_vectors = vectors(&clean_db, &album);
    let resumed_vectors = vectors(&killed_db, &album);
    assert_eq!(
        clean_vectors.keys().collect::<Vec<_>>(),
        resumed_vectors.keys().collect::<Vec<_>>()
    );
    for (path, clean_vector) in &clean_vectors {
        let difference = clean_vector
            .iter()
            .zip(&resumed_vectors[path])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            difference < 1e-5,
            "{}: vectors differ by {difference}",
            path.display()
        );
    }
}

#[test]
fn ctrl_c_stops_after_batch_with_status_130() {
    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    let total = make_album(&album, 6) as i64;
    let database = dir.path().join("db.sqlite");
    let mut child = spawn_index(&database, &album, &[]);
    wait_for_commits(&database, 8, &mut child);
    send_signal(&child, "-INT");
    let output = child.wait_with_output().unwrap();
    let run = Run::from(output);
    assert_eq!(run.status, 130, "{}", run.stderr);
    let summary = run.json();
    assert_eq!(summary["interrupted"], true);
    let stopped_at = committed(&database);
    assert!(stopped_at < total, "the run stopped early");
    assert_eq!(summary["indexed"], stopped_at);
    assert_eq!(integrity(&database), "ok");

    let (resumed, summary) = index(&database, &[&album]);
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    assert_eq!(summary["decoded"], total - stopped_at);
    assert_eq!(summary["total_in_database"], total);
}

#[test]
fn second_index_run_is_busy_and_query_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    let total = make_album(&album, 8) as i64;
    let database = dir.path().join("db.sqlite");
    let photo = photo_thumbnail_pairs()[0].0.clone();

    let mut first = spawn_index(&database, &album, &[]);
    wait_for_commits(&database, 8, &mut first);

    let second = common::run(&database, ["index".as_ref(), album.as_os_str()]);
    assert_eq!(second.status, 4, "{}", second.stderr);
    assert!(
        second.stderr.contains("another `imgsim index` is running"),
        "{}",
        second.stderr
    );

    // A reader sees the last committed state while the writer runs.
    let reader = common::run(
        &database,
        ["query".as_ref(), photo.as_os_str(), "--json".as_ref()],
    );
    assert_eq!(reader.status, 0, "{}", reader.stderr);
    assert!(!reader.json()["results"].as_array().unwrap().is_empty());

    // --wait blocks until the first run ends, then finds nothing to do.
    let waiting = spawn_index(&database, &album, &["--wait"]);
    let first = Run::from(first.wait_with_output().unwrap());
    assert_eq!(first.status, 0, "{}", first.stderr);
    let waiting = Run::from(waiting.wait_with_output().unwrap());
    assert_eq!(waiting.status, 0, "{}", waiting.stderr);
    let summary = waiting.json();
    assert_eq!(summary["decoded"], 0);
    assert_eq!(summary["unchanged"], total);
    assert_eq!(integrity(&database), "ok");
}

/// Sends SIGINT `signals` times, 3 ms apart, `delay` after start.
fn interrupt_at(database: &Path, folder: &Path, delay: Duration, signals: usize) -> Output {
    let child = spawn_index(database, folder, &[]);
    std::thread::sleep(delay);
    for _ in 0..signals {
        send_signal(&child, "-INT");
        std::thread::sleep(Duration::from_millis(3));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn ctrl_c_during_start_up_stops_cleanly() {
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().unwrap();
    let album = dir.path().join("album");
    make_album(&album, 1);
    for delay_ms in [5, 10, 20, 30, 50, 80] {
        for signals in [1, 2] {
            let database = dir.path().join(format!("{delay_ms}-{signals}.db"));
            let output = interrupt_at(&database, &album, Duration::from_millis(delay_ms), signals);
            let case = format!("{signals} Ctrl-C at {delay_ms} ms");
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            // Before the handler is installed, SIGINT ends the process by
            // its default action, which is also a clean stop.
            let stopped =
                output.status.code() == Some(130) || output.status.signal() == Some(libc::SIGINT);
            assert!(stopped, "{case}: {:?}\n{stderr}", output.status);
            assert!(!stderr.contains("error"), "{case}: {stderr}");
            if signals == 1 && output.status.code() == Some(130) {
                let run = Run::from(output);
                assert_eq!(run.json()["interrupted"], true, "{case}");
            }
            if database.exists() {
                assert_eq!(integrity(&database), "ok", "{case}");
            }
        }
    }
}

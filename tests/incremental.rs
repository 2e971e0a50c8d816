//! Incremental re-indexing: moves, renames, copies, touches and deletions
//! are recognised without decoding, and rows under roots not scanned are
//! left alone.

mod common;

use std::path::{Path, PathBuf};

use common::{index, photo_thumbnail_pairs, query, run};
use serde_json::Value;

fn photos(count: usize) -> Vec<PathBuf> {
    photo_thumbnail_pairs()
        .into_iter()
        .take(count)
        .map(|(photo, _)| photo)
        .collect()
}

/// Copies the first `count` photos into `folder`.
fn fill(folder: &Path, count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(folder).unwrap();
    photos(count)
        .iter()
        .map(|photo| {
            let target = folder.join(photo.file_name().unwrap());
            std::fs::copy(photo, &target).unwrap();
            target
        })
        .collect()
}

fn counts(summary: &Value) -> [u64; 7] {
    [
        "added",
        "changed",
        "moved",
        "copied",
        "refreshed",
        "removed",
        "decoded",
    ]
    .map(|key| {
        summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing: {summary}"))
    })
}

#[test]
fn renamed_folder_keeps_vectors_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let root = dir.path().join("pictures");
    fill(&root.join("2019"), 6);
    let (first, summary) = index(&database, &[&root]);
    assert_eq!(first.status, 0, "{}", first.stderr);
    assert_eq!(counts(&summary), [6, 0, 0, 0, 0, 0, 6]);

    std::fs::rename(root.join("2019"), root.join("trip 2019")).unwrap();
    let (second, summary) = index(&database, &[&root]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    // added, changed, moved, copied, refreshed, removed, decoded
    assert_eq!(counts(&summary), [0, 0, 6, 0, 0, 0, 0]);
    assert_eq!(summary["total_in_database"], 6);

    let renamed = root
        .join("trip 2019")
        .join(photos(1)[0].file_name().unwrap());
    let results = query(&database, &photos(1)[0], 1);
    assert_eq!(results[0].0, renamed);
    assert!((results[0].1 - 1.0).abs() < 1e-4);
}

#[test]
fn folder_moved_out_of_scanned_root_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let old = dir.path().join("old");
    fill(&old, 4);
    let (first, _) = index(&database, &[&old]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    let new = dir.path().join("elsewhere");
    std::fs::rename(&old, &new).unwrap();
    let (second, summary) = index(&database, &[&new]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(counts(&summary), [0, 0, 4, 0, 0, 0, 0]);
    assert_eq!(summary["total_in_database"], 4);
}

#[test]
fn deleted_files_leave_database_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let root = dir.path().join("album");
    let files = fill(&root, 6);
    let (first, _) = index(&database, &[&root]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    std::fs::remove_file(&files[0]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let (second, summary) = index(&database, &[&root]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(counts(&summary), [0, 0, 0, 0, 0, 2, 0]);
    assert_eq!(summary["total_in_database"], 4);

    // The saved graph still contains the deleted images as tombstones, and
    // they never come back as results.
    let results = query(&database, &photos(1)[0], 10);
    assert_eq!(results.len(), 4);
    assert!(results
        .iter()
        .all(|(path, _)| path != &files[0] && path != &files[1]));
}

#[test]
fn roots_not_scanned_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let first_root = dir.path().join("first");
    let second_root = dir.path().join("second");
    fill(&first_root, 2);
    let second_files = fill(&second_root, 3);
    let (run_both, _) = index(&database, &[&first_root, &second_root]);
    assert_eq!(run_both.status, 0, "{}", run_both.stderr);

    // A drive that is not mounted this time: its files vanish, but its root
    // is not scanned, so its rows stay.
    std::fs::remove_file(&second_files[0]).unwrap();
    let (run_first, summary) = index(&database, &[&first_root]);
    assert_eq!(run_first.status, 0, "{}", run_first.stderr);
    assert_eq!(summary["removed"], 0);
    assert_eq!(summary["total_in_database"], 5);
}

#[test]
fn empty_root_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let mount = dir.path().join("mnt");
    let files = fill(&mount, 3);
    let (first, _) = index(&database, &[&mount]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    for file in &files {
        std::fs::remove_file(file).unwrap();
    }
    let (second, summary) = index(&database, &[&mount]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(summary["removed"], 0);
    assert_eq!(summary["total_in_database"], 3);
    assert!(
        second.stderr.contains("no images found"),
        "{}",
        second.stderr
    );
}

#[test]
fn touched_and_copied_files_are_not_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let root = dir.path().join("album");
    let files = fill(&root, 3);
    let (first, _) = index(&database, &[&root]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::fs::copy(&files[1], root.join("copy of second.jpg")).unwrap();
    let (second, summary) = index(&database, &[&root]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(counts(&summary), [0, 0, 0, 1, 1, 0, 0]);
    assert_eq!(summary["total_in_database"], 4);

    let results = query(&database, &files[1], 2);
    let paths: Vec<_> = results.iter().map(|(path, _)| path.clone()).collect();
    assert!(
        paths.contains(&root.join("copy of second.jpg")),
        "{paths:?}"
    );
    assert!(results
        .iter()
        .all(|(_, similarity)| (similarity - 1.0).abs() < 1e-4));
}

#[test]
fn dry_run_reports_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let root = dir.path().join("album");
    let files = fill(&root, 4);
    let (first, _) = index(&database, &[&root]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    std::fs::rename(&files[0], root.join("renamed.jpg")).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let new_photo = &photos(5)[4];
    std::fs::copy(new_photo, root.join("new.jpg")).unwrap();

    let dry = run(
        &database,
        [
            "index".as_ref(),
            "--dry-run".as_ref(),
            "--json".as_ref(),
            root.as_os_str(),
        ],
    );
    assert_eq!(dry.status, 0, "{}", dry.stderr);
    let summary = dry.json();
    assert_eq!(summary["dry_run"], true);
    assert_eq!(counts(&summary), [1, 0, 1, 0, 0, 1, 0]);
    let planned = &summary["planned"];
    assert_eq!(
        planned["added"][0]["path"],
        root.join("new.jpg").to_str().unwrap()
    );
    assert_eq!(
        planned["moved"][0]["from"]["path"],
        files[0].to_str().unwrap()
    );
    assert_eq!(
        planned["moved"][0]["to"]["path"],
        root.join("renamed.jpg").to_str().unwrap()
    );
    assert_eq!(planned["removed"][0]["path"], files[1].to_str().unwrap());

    // Nothing was written: the real run finds the same work to do.
    let (real, summary) = index(&database, &[&root]);
    assert_eq!(real.status, 0, "{}", real.stderr);
    assert_eq!(counts(&summary), [1, 0, 1, 0, 0, 1, 1]);
    assert_eq!(summary["total_in_database"], 4);

    let text = run(
        &database,
        ["index".as_ref(), "--dry-run".as_ref(), root.as_os_str()],
    );
    assert!(
        text.stdout
            .contains("dry run: would add 0, change 0, move 0, copy 0, remove 0; unchanged 4"),
        "{}",
        text.stdout
    );
}

#[test]
fn changed_file_that_fails_loses_its_old_vector() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let root = dir.path().join("album");
    let files = fill(&root, 2);
    let (first, _) = index(&database, &[&root]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    std::fs::write(&files[0], "overwritten with text").unwrap();
    let (second, summary) = index(&database, &[&root]);
    assert_eq!(second.status, 3, "{}", second.stderr);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["removed"], 1);
    assert_eq!(summary["added"], 0);
    assert_eq!(summary["total_in_database"], 1);
    let results = query(&database, &photos(1)[0], 5);
    assert!(
        results.iter().all(|(path, _)| path != &files[0]),
        "{results:?}"
    );
}

#[test]
fn dry_run_creates_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("album");
    fill(&root, 2);
    let database = dir.path().join("state").join("db.sqlite");
    let result = run(
        &database,
        [
            "index".as_ref(),
            "--dry-run".as_ref(),
            "--json".as_ref(),
            root.as_os_str(),
        ],
    );
    assert_eq!(result.status, 0, "{}", result.stderr);
    assert_eq!(result.json()["added"], 2);
    assert!(
        !dir.path().join("state").exists(),
        "the dry run created the database folder"
    );
}

#[test]
fn oversized_file_is_rejected_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let sparse = dir.path().join("sparse.jpg");
    let file = std::fs::File::create(&sparse).unwrap();
    file.set_len(200 << 20).unwrap();
    drop(file);
    let result = run(
        &database,
        [
            "index".as_ref(),
            "--json".as_ref(),
            "--max-pixels".as_ref(),
            "1000".as_ref(),
            sparse.as_os_str(),
        ],
    );
    assert_eq!(result.status, 3, "{}", result.stderr);
    let failure = &result.json()["failures"][0];
    assert_eq!(failure["stage"], "read");
    let reason = failure["reason"].as_str().unwrap();
    assert!(
        reason.contains("209715200 bytes, over the limit of 67108864 bytes"),
        "{reason}"
    );
}

#[test]
fn many_deletions_rebuild_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite");
    let root = dir.path().join("album");
    let files = fill(&root, 8);
    let (first, _) = index(&database, &[&root]);
    assert_eq!(first.status, 0, "{}", first.stderr);

    // One deletion of eight stays a tombstone: the graph keeps 8 points.
    std::fs::remove_file(&files[0]).unwrap();
    let (second, _) = index(&database, &[&root]);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(graph_points(&database), 8);

    // Three of eight (over a quarter) rebuild it from the 5 left.
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::remove_file(&files[2]).unwrap();
    let (third, _) = index(&database, &[&root]);
    assert_eq!(third.status, 0, "{}", third.stderr);
    assert_eq!(graph_points(&database), 5);
    assert_eq!(query(&database, &photos(4)[3], 10).len(), 5);
}

/// Number of points in the saved HNSW graph, deleted images included.
fn graph_points(database: &Path) -> i64 {
    let connection = rusqlite::Connection::open(database).unwrap();
    connection
        .query_row("SELECT point_count FROM ann_index", [], |row| row.get(0))
        .unwrap()
}

//! Edited copies and a corrupt file from the UKBench sample set.

mod common;

use common::{imagededup_dir, index, query};

#[test]
fn edited_copies_are_nearest_and_corrupt_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("ukbench.db");
    let (run, summary) = index(&database, &[imagededup_dir()]);

    // One corrupt file: the run finishes, indexes the other 18, reports the
    // file by name, and exits with the "some files failed" status.
    assert_eq!(run.status, 3, "{}", run.stderr);
    assert_eq!(summary["indexed"], 18);
    assert_eq!(summary["failed"], 1);
    let failure = &summary["failures"][0];
    let corrupt = imagededup_dir().join("ukbench09268_corrupt.jpg");
    assert_eq!(failure["path"], corrupt.to_str().unwrap());
    assert_eq!(failure["stage"], "decode");
    assert!(
        run.stderr.contains("ukbench09268_corrupt.jpg: "),
        "{}",
        run.stderr
    );

    let original = imagededup_dir().join("ukbench00120.jpg");
    let nearest: Vec<_> = query(&database, &original, 5)
        .into_iter()
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(nearest[0], "ukbench00120.jpg");
    for copy in [
        "ukbench00120_gray.jpg",
        "ukbench00120_resize.jpg",
        "ukbench00120_rotation.jpg",
    ] {
        assert!(
            nearest.iter().any(|name| name == copy),
            "{copy} not among {nearest:?}"
        );
    }
}

#[test]
fn byte_identical_copies_score_one() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("ukbench.db");
    let copies = [
        "ukbench09380.jpg",
        "ukbench09380_copy.bmp",
        "ukbench09380_copy.jpeg",
        "ukbench09380_copy.png",
    ];
    let paths: Vec<_> = copies
        .iter()
        .map(|name| imagededup_dir().join(name))
        .collect();
    let (run, summary) = index(&database, &paths);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(summary["indexed"], 4);
    // The same JPEG bytes under other extensions: the content decides the
    // format, so all four are decoded as JPEG and have one vector.
    let results = query(&database, &paths[0], 4);
    assert_eq!(results.len(), 4);
    for (path, similarity) in &results {
        assert!(
            (similarity - 1.0).abs() < 1e-4,
            "{}: {similarity}",
            path.display()
        );
    }
}

//! Retrieval quality of the whole pipeline on real photos.

mod common;

use common::{index, photo_thumbnail_pairs, query};

#[test]
fn thumbnails_find_their_photos() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("photos.db");
    let pairs = photo_thumbnail_pairs();
    assert_eq!(pairs.len(), 29);
    let photos: Vec<_> = pairs.iter().map(|(photo, _)| photo.clone()).collect();
    let (run, summary) = index(&database, &photos);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(summary["indexed"], 29);
    assert_eq!(summary["failed"], 0);

    // By embedding alone, 26 of the 29 photos come first (a plain Pillow +
    // onnxruntime pipeline with the same model does the same); the other
    // three are burst frames. Re-ranking at the thumbnail's resolution by
    // pixels puts every photo first.
    let mut misses = Vec::new();
    for (photo, thumbnail) in &pairs {
        let results = query(&database, thumbnail, 3);
        if results[0].0 != *photo {
            misses.push(format!(
                "{} -> {}",
                thumbnail.display(),
                results[0].0.display()
            ));
        }
    }
    assert!(
        misses.is_empty(),
        "{} of 29 missed: {misses:?}",
        misses.len()
    );
}

#[test]
fn indexed_photo_finds_itself_first() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("photos.db");
    let photos: Vec<_> = photo_thumbnail_pairs()
        .into_iter()
        .map(|(photo, _)| photo)
        .collect();
    let (run, _) = index(&database, &photos[..10]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    for photo in &photos[..10] {
        let results = query(&database, photo, 2);
        assert_eq!(&results[0].0, photo);
        assert!(
            (results[0].1 - 1.0).abs() < 1e-4,
            "self similarity {}",
            results[0].1
        );
        assert!(results[1].1 < results[0].1);
    }
}

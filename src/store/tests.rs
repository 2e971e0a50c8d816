use super::*;

fn identity(name: &str) -> ModelIdentity {
    ModelIdentity {
        name: name.to_string(),
        sha256: format!("{name}-sha"),
        dimension: 3,
        preprocessing: "test".to_string(),
    }
}

fn image(path: &str, vector: Vec<f32>) -> NewImage {
    NewImage {
        path: PathBuf::from(path),
        state: FileState {
            file_size: 10,
            modified_ns: 20,
        },
        fingerprint: Some([7; 32]),
        width: 4,
        height: 5,
        format: "png".to_string(),
        animated: false,
        vector,
    }
}

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("sub/test.db"), OpenMode::CreateIfMissing).unwrap();
    (dir, store)
}

#[test]
fn migrations_apply_to_empty_database() {
    let mut connection = Connection::open_in_memory().unwrap();
    let version = apply_migrations(&mut connection).unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let tables: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        [
            "ann_index",
            "counters",
            "images",
            "model",
            "sqlite_sequence"
        ]
    );
    // Applying again is a no-op.
    assert_eq!(apply_migrations(&mut connection).unwrap(), version);
}

#[test]
fn first_schema_rows_survive_migration() {
    let mut connection = Connection::open_in_memory().unwrap();
    let (_, first) = MIGRATIONS[0];
    connection.execute_batch(first).unwrap();
    connection.pragma_update(None, "user_version", 1).unwrap();
    connection
        .execute(
            "INSERT INTO images (id, path, file_size, modified_ns, width, height, format,
                                 vector, indexed_at)
             VALUES (5, x'2f612e706e67', 10, 20, 3, 4, 'png', x'0000803f', 0)",
            [],
        )
        .unwrap();
    apply_migrations(&mut connection).unwrap();
    let row: (i64, Vec<u8>, Option<Vec<u8>>, bool, Vec<u8>) = connection
        .query_row(
            "SELECT id, path, fingerprint, animated, vector FROM images",
            [],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(
        row,
        (5, b"/a.png".to_vec(), None, false, vec![0, 0, 0x80, 0x3f])
    );
}

#[test]
fn newer_schema_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    {
        let connection = Connection::open(&path).unwrap();
        connection.pragma_update(None, "user_version", 999).unwrap();
    }
    let error = Store::open(&path, OpenMode::CreateIfMissing).err().unwrap();
    assert!(
        matches!(error, StoreError::TooNew { found: 999, .. }),
        "{error}"
    );
}

#[test]
fn foreign_database_is_rejected_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch("CREATE TABLE images (name TEXT); PRAGMA user_version = 7;")
            .unwrap();
    }
    let error = Store::open(&path, OpenMode::CreateIfMissing).err().unwrap();
    assert!(matches!(error, StoreError::Foreign { .. }), "{error}");
    let connection = Connection::open(&path).unwrap();
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "the journal mode was changed");
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 7);
}

#[test]
fn missing_database_is_reported_for_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let error = Store::open(&path, OpenMode::MustExist).err().unwrap();
    assert!(error.to_string().contains("imgsim index"), "{error}");
    assert!(!path.exists());
}

#[test]
fn pragmas_are_set() {
    let (_dir, store) = open_temp();
    let mode: String = store
        .connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = store
        .connection
        .query_row("PRAGMA foreign_keys", [], |row| row.get(0))
        .unwrap();
    assert_eq!(foreign_keys, 1);
}

#[test]
fn vector_round_trips_exactly() {
    let (_dir, mut store) = open_temp();
    store.bind_model(&identity("m")).unwrap();
    let vector = vec![0.1f32, -2.5e-7, f32::MIN_POSITIVE];
    store
        .insert_images(&[image("/a.png", vector.clone())])
        .unwrap();
    let vectors = store.vector_snapshot(0, 3).unwrap().vectors;
    assert_eq!(vectors.len(), 1);
    assert_eq!(vectors[0].1, vector);
    assert_eq!(vector_to_bytes(&[1.0]), [0, 0, 0x80, 0x3f]);
}

#[test]
fn same_path_is_updated_not_duplicated() {
    let (_dir, mut store) = open_temp();
    store
        .insert_images(&[image("/a.png", vec![1.0, 0.0, 0.0])])
        .unwrap();
    let first = store.data_generation().unwrap();
    store
        .insert_images(&[image("/a.png", vec![0.0, 1.0, 0.0])])
        .unwrap();
    assert_eq!(store.image_count().unwrap(), 1);
    assert!(store.data_generation().unwrap() > first);
    let vectors = store.vector_snapshot(0, 3).unwrap().vectors;
    assert_eq!(vectors[0].1, [0.0, 1.0, 0.0]);
}

#[cfg(unix)]
#[test]
fn non_utf8_path_round_trips() {
    let (_dir, mut store) = open_temp();
    let raw = b"/photos/\xff\xfe.png";
    let path = crate::paths::path_from_bytes(raw);
    let mut new = image("/unused", vec![1.0, 0.0, 0.0]);
    new.path = path.clone();
    store.insert_images(&[new]).unwrap();
    let vectors = store.vector_snapshot(0, 3).unwrap().vectors;
    let records = store.images_by_ids(&[vectors[0].0]).unwrap();
    assert_eq!(
        crate::paths::path_to_bytes(&records[&vectors[0].0].path),
        raw
    );
    assert!(store.stored_files().unwrap().contains_key(raw.as_slice()));
}

#[test]
fn other_model_is_rejected() {
    let (_dir, mut store) = open_temp();
    store.bind_model(&identity("first")).unwrap();
    store.bind_model(&identity("first")).unwrap();
    let error = store.bind_model(&identity("second")).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::ModelMismatch { .. }));
    assert!(message.contains("first"), "{message}");
    assert!(message.contains("--model"), "{message}");
    assert!(message.contains("--db NEW.db"), "{message}");
    assert!(store.check_model(&identity("second")).is_err());
}

#[test]
fn wrong_vector_length_is_reported() {
    let (_dir, mut store) = open_temp();
    store
        .insert_images(&[image("/a.png", vec![1.0, 0.0])])
        .unwrap();
    let error = store.vector_snapshot(0, 3).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::CorruptVector {
                found: 8,
                expected: 12,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn ann_record_is_not_written_when_stale() {
    let (_dir, mut store) = open_temp();
    store
        .insert_images(&[image("/a.png", vec![1.0, 0.0, 0.0])])
        .unwrap();
    let generation = store.data_generation().unwrap();
    let record = AnnRecord {
        generation: generation - 1,
        basename: "old".to_string(),
        graph_size: 1,
        graph_digest: "g".to_string(),
        data_size: 2,
        data_digest: "d".to_string(),
        point_count: 1,
        max_image_id: 1,
        max_connections: 16,
        ef_construction: 100,
    };
    assert_eq!(store.replace_ann_record(&record).unwrap(), AnnSwap::Stale);
    assert_eq!(store.ann_record().unwrap(), None);
    let current = AnnRecord {
        generation,
        ..record.clone()
    };
    assert_eq!(
        store.replace_ann_record(&current).unwrap(),
        AnnSwap::Recorded {
            previous_basename: None
        }
    );
    let newer = AnnRecord {
        basename: "new".to_string(),
        ..current
    };
    assert_eq!(
        store.replace_ann_record(&newer).unwrap(),
        AnnSwap::Recorded {
            previous_basename: Some("old".to_string())
        }
    );
    assert_eq!(store.ann_record().unwrap(), Some(newer));
}

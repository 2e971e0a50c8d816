//! SQLite storage: the images, their vectors, the model that made them and
//! the saved HNSW file that matches them.
//!
//! SQLite is the source of truth. Every write happens inside a transaction,
//! so when [`Store::insert_images`] returns, its rows are durable as a unit
//! and a crash at any point leaves either all of them or none.

mod lock;
mod migrations;
mod vector;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

pub use lock::{lock_database, lock_path, IndexLock, LockError, Wait};
pub use migrations::{apply_migrations, MIGRATIONS};
pub use vector::{vector_from_bytes, vector_to_bytes};

use crate::model::ModelIdentity;
use crate::paths::{path_from_bytes, path_to_bytes};

/// How long a connection waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the storage layer, each naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: cannot create the database folder: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no database here; run `imgsim index DIR` first, or pass --db")]
    Missing { path: PathBuf },
    #[error(
        "{path}: database schema version {found} is newer than this imgsim supports \
         ({supported}); upgrade imgsim, or index into a new database with --db"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "{path}: the database holds vectors of model {stored_name} ({stored_dimension} \
         dimensions, sha256 {stored_sha256_short}...), but this run uses {name} ({dimension} \
         dimensions, sha256 {sha256_short}...){preprocessing_note}. Run with the model the \
         database was built with (--model and its preprocessing, or --precision), or index \
         into a new database with --db NEW.db"
    )]
    ModelMismatch {
        path: PathBuf,
        stored_name: String,
        stored_sha256_short: String,
        stored_dimension: usize,
        name: String,
        sha256_short: String,
        dimension: usize,
        /// Names both preprocessings when only they differ.
        preprocessing_note: String,
    },
    #[error(
        "{path}: not an imgsim database (it has tables of another program); \
         pass --db with a new file name"
    )]
    Foreign { path: PathBuf },
    #[error(
        "{path}: the database is read-only and its schema is older than this imgsim's; \
         run `imgsim index` once with write access to upgrade it"
    )]
    NeedsUpgrade { path: PathBuf },
    #[error("{path}: image {id} has a vector of {found} bytes, expected {expected}")]
    CorruptVector {
        path: PathBuf,
        id: i64,
        found: usize,
        expected: usize,
    },
}

impl StoreError {
    /// Returns whether the error comes from a database or folder that cannot
    /// be written, so that opening it read-only may still work.
    pub fn is_read_only(&self) -> bool {
        let StoreError::Sqlite { source, .. } = self else {
            return false;
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
        )
    }
}

/// Whether [`Store::open`] may create a missing database, and whether it
/// may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    CreateIfMissing,
    MustExist,
    /// An existing database opened for reading only, for a database or
    /// folder the user cannot write; its schema must be current.
    ReadOnly,
}

/// Size and modification time of a file when it was indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    pub file_size: u64,
    pub modified_ns: i64,
}

/// BLAKE3 hash of a file's whole content.
pub type Fingerprint = [u8; 32];

/// One embedded image, ready to be written.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub path: PathBuf,
    pub state: FileState,
    pub fingerprint: Option<Fingerprint>,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub animated: bool,
    pub vector: Vec<f32>,
}

/// The stored state of one indexed file, used to decide whether it needs
/// work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub id: i64,
    pub state: FileState,
    pub fingerprint: Option<Fingerprint>,
}

/// A change to existing rows that needs no decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file of row `id` now lives at `path`: its vector is kept. A row
    /// already at `path` is replaced.
    Move {
        id: i64,
        path: PathBuf,
        state: FileState,
    },
    /// `path` contains the same bytes as row `source_id`: a new row reuses that
    /// row's vector and metadata. A row already at `path` is replaced.
    Copy {
        source_id: i64,
        path: PathBuf,
        state: FileState,
        fingerprint: Fingerprint,
    },
    /// Row `id` has a new size or modification time but the same content.
    Refresh { id: i64, state: FileState },
    /// The file of row `id` is gone.
    Delete { id: i64 },
}

/// The rows a graph update needs, read in one transaction.
#[derive(Debug, Default)]
pub struct VectorSnapshot {
    /// The data generation the snapshot belongs to.
    pub generation: i64,
    /// Every image id in the database.
    pub live_ids: std::collections::HashSet<i64>,
    /// Vectors of the images with an id above the requested bound, by id.
    pub vectors: Vec<(i64, Vec<f32>)>,
}

/// One indexed image as stored, without its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: i64,
    pub path: PathBuf,
    pub file_size: u64,
    pub modified_ns: i64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub animated: bool,
}

/// The saved HNSW files that match one generation of the images table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnRecord {
    pub generation: i64,
    pub basename: String,
    pub graph_size: u64,
    pub graph_digest: String,
    pub data_size: u64,
    pub data_digest: String,
    /// Points in the graph, including those whose rows were deleted since.
    pub point_count: u64,
    /// The largest image id the graph covers; rows above it are newer.
    pub max_image_id: i64,
    pub max_connections: usize,
    pub ef_construction: usize,
}

/// Outcome of [`Store::replace_ann_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnSwap {
    /// The images changed while the graph was built; nothing was recorded.
    Stale,
    /// The record was written; the files of the previous one, if any, are
    /// no longer referenced.
    Recorded { previous_basename: Option<String> },
}

/// An open imgsim database.
pub struct Store {
    connection: Connection,
    path: PathBuf,
    read_only: bool,
}

impl Store {
    /// Opens the database at `path`, applying pending migrations.
    ///
    /// # Errors
    /// Fails when the file cannot be opened or created, is not an imgsim
    /// database, or was written by a newer imgsim.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Store, StoreError> {
        if mode != OpenMode::CreateIfMissing && !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        if mode == OpenMode::ReadOnly {
            return Store::open_read_only(path);
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let connection = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Store {
            connection,
            path: path.to_path_buf(),
            read_only: false,
        };
        store
            .connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| store.error(e))?;
        store.check_is_imgsim_database()?;
        store.configure()?;
        let found = apply_migrations(&mut store.connection).map_err(|error| match error {
            migrations::MigrationError::TooNew { found, supported } => StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            },
            migrations::MigrationError::Sqlite(source) => StoreError::Sqlite {
                path: path.to_path_buf(),
                source,
            },
        });
        found.map(|_| store)
    }

    /// Opens an empty database in memory, for planning without a file.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let error = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut connection = Connection::open_in_memory().map_err(error)?;
        apply_migrations(&mut connection).map_err(|e| match e {
            migrations::MigrationError::Sqlite(source) => error(source),
            migrations::MigrationError::TooNew { .. } => {
                unreachable!("a new database has version 0")
            }
        })?;
        Ok(Store {
            connection,
            path,
            read_only: false,
        })
    }

    fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let error = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let read_version = |connection: &Connection| {
            connection.busy_timeout(BUSY_TIMEOUT)?;
            connection.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        };
        let mut connection = Connection::open_with_flags(path, flags).map_err(error)?;
        let found = match read_version(&connection) {
            Ok(found) => found,
            // A WAL database needs its -shm file, which SQLite cannot create
            // in a folder the user cannot write. `immutable=1` reads the
            // file without it, and without seeing changes a writer makes
            // meanwhile, which only another account can be making here.
            Err(first)
                if matches!(
                    first.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
                ) =>
            {
                let uri = format!("file:{}?immutable=1", uri_path(path));
                connection = Connection::open_with_flags(&uri, flags).map_err(error)?;
                read_version(&connection).map_err(error)?
            }
            Err(other) => return Err(error(other)),
        };
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        if found < supported {
            return Err(StoreError::NeedsUpgrade {
                path: path.to_path_buf(),
            });
        }
        Ok(Store {
            connection,
            path: path.to_path_buf(),
            read_only: true,
        })
    }

    /// Returns whether the database was opened for reading only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Rejects, before anything is written, a file that is not an imgsim
    /// database: not SQLite at all, or SQLite with tables of another
    /// program. An empty database, or one with imgsim's `counters` table,
    /// passes.
    fn check_is_imgsim_database(&self) -> Result<(), StoreError> {
        let tables: Vec<String> = self
            .connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(|e| self.error(e))?;
        if tables.is_empty() || tables.iter().any(|name| name == "counters") {
            return Ok(());
        }
        Err(StoreError::Foreign {
            path: self.path.clone(),
        })
    }

    /// Sets the connection pragmas, which are not part of any migration
    /// because they apply to a connection rather than to the schema.
    fn configure(&mut self) -> Result<(), StoreError> {
        self.connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| self.error(e))
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Returns the database file this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `model` as the database's model, or checks that it is the
    /// one already recorded.
    ///
    /// # Errors
    /// [`StoreError::ModelMismatch`] when the database contains vectors of
    /// another model or preprocessing.
    pub fn bind_model(&mut self, model: &ModelIdentity) -> Result<(), StoreError> {
        match self.stored_model()? {
            Some(stored) => self.check_same_model(&stored, model),
            None => {
                self.connection
                    .execute(
                        "INSERT INTO model (id, name, sha256, dimension, preprocessing)
                         VALUES (1, ?1, ?2, ?3, ?4)",
                        params![
                            model.name,
                            model.sha256,
                            model.dimension as i64,
                            model.preprocessing
                        ],
                    )
                    .map_err(|e| self.error(e))?;
                Ok(())
            }
        }
    }

    /// Checks that `model` made the vectors in this database; a database
    /// without a recorded model (nothing indexed yet) accepts any model.
    pub fn check_model(&self, model: &ModelIdentity) -> Result<(), StoreError> {
        match self.stored_model()? {
            Some(stored) => self.check_same_model(&stored, model),
            None => Ok(()),
        }
    }

    fn check_same_model(
        &self,
        stored: &ModelIdentity,
        model: &ModelIdentity,
    ) -> Result<(), StoreError> {
        if stored == model {
            return Ok(());
        }
        let preprocessing_note = if stored.preprocessing == model.preprocessing {
            String::new()
        } else {
            format!(
                ", and the preprocessing differs (database: \"{}\", this run: \"{}\")",
                stored.preprocessing, model.preprocessing
            )
        };
        let short = |sha256: &str| sha256.chars().take(12).collect::<String>();
        Err(StoreError::ModelMismatch {
            path: self.path.clone(),
            stored_name: stored.name.clone(),
            stored_sha256_short: short(&stored.sha256),
            stored_dimension: stored.dimension,
            name: model.name.clone(),
            sha256_short: short(&model.sha256),
            dimension: model.dimension,
            preprocessing_note,
        })
    }

    /// Returns the model recorded in the database, if any image was ever
    /// indexed.
    pub fn stored_model(&self) -> Result<Option<ModelIdentity>, StoreError> {
        self.connection
            .query_row(
                "SELECT name, sha256, dimension, preprocessing FROM model WHERE id = 1",
                [],
                |row| {
                    Ok(ModelIdentity {
                        name: row.get(0)?,
                        sha256: row.get(1)?,
                        dimension: row.get::<_, i64>(2)? as usize,
                        preprocessing: row.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Returns what is stored for every indexed path, keyed by the path's
    /// raw bytes.
    pub fn stored_files(&self) -> Result<HashMap<Vec<u8>, StoredFile>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT path, id, file_size, modified_ns, fingerprint FROM images")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    StoredFile {
                        id: row.get(1)?,
                        state: FileState {
                            file_size: row.get::<_, i64>(2)? as u64,
                            modified_ns: row.get(3)?,
                        },
                        fingerprint: row
                            .get::<_, Option<Vec<u8>>>(4)?
                            .and_then(|bytes| bytes.try_into().ok()),
                    },
                ))
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// Writes a batch of embedded images in one transaction. A row already
    /// at the same path is deleted first, so a changed file gets a new id
    /// and its old id becomes a tombstone in any saved graph.
    ///
    /// When this returns `Ok`, the whole batch is committed; on error or a
    /// crash, none of it is.
    pub fn insert_images(&mut self, images: &[NewImage]) -> Result<(), StoreError> {
        let now = unix_seconds();
        self.in_transaction(|transaction| {
            for image in images {
                insert_image(transaction, image, now)?;
            }
            Ok(())
        })
    }

    /// Deletes the rows of `paths` in one transaction.
    pub fn delete_paths(&mut self, paths: &[PathBuf]) -> Result<(), StoreError> {
        self.in_transaction(|transaction| {
            for stale in paths {
                delete_path(transaction, &path_to_bytes(stale))?;
            }
            Ok(())
        })
    }

    /// Applies moves, copies, refreshes and deletions in one transaction.
    pub fn apply_changes(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let now = unix_seconds();
        self.in_transaction(|transaction| {
            for change in changes {
                apply_change(transaction, change, now)?;
            }
            Ok(())
        })
    }

    /// Runs `work` in one transaction and commits it when `work` succeeds;
    /// on an error nothing of it is kept.
    fn in_transaction<T>(
        &mut self,
        work: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let to_error = |source| StoreError::Sqlite { path, source };
        let result = self.connection.transaction().and_then(|transaction| {
            let value = work(&transaction)?;
            transaction.commit()?;
            Ok(value)
        });
        result.map_err(to_error)
    }

    /// Number of indexed images.
    pub fn image_count(&self) -> Result<u64, StoreError> {
        self.connection
            .query_row("SELECT COUNT(*) FROM images", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| self.error(e))
    }

    /// Returns the counter that triggers change with every insert, update
    /// or delete of an image row.
    pub fn data_generation(&self) -> Result<i64, StoreError> {
        read_generation(&self.connection).map_err(|e| self.error(e))
    }

    /// Reads every image id, and the vectors of images with an id above
    /// `after_id`, in one transaction, checking each vector's length against
    /// `dimension`.
    pub fn vector_snapshot(
        &mut self,
        after_id: i64,
        dimension: usize,
    ) -> Result<VectorSnapshot, StoreError> {
        let path = self.path.clone();
        let to_error = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(to_error)?;
        let mut snapshot = VectorSnapshot {
            generation: read_generation(&transaction).map_err(to_error)?,
            ..VectorSnapshot::default()
        };
        {
            let mut statement = transaction
                .prepare("SELECT id FROM images")
                .map_err(to_error)?;
            let ids = statement
                .query_map([], |row| row.get::<_, i64>(0))
                .map_err(to_error)?;
            for id in ids {
                snapshot.live_ids.insert(id.map_err(to_error)?);
            }
            let mut statement = transaction
                .prepare("SELECT id, vector FROM images WHERE id > ?1 ORDER BY id")
                .map_err(to_error)?;
            let mut rows = statement.query([after_id]).map_err(to_error)?;
            while let Some(row) = rows.next().map_err(to_error)? {
                let id: i64 = row.get(0).map_err(to_error)?;
                let bytes: Vec<u8> = row.get(1).map_err(to_error)?;
                let vector = checked_vector(&path, id, &bytes, dimension)?;
                snapshot.vectors.push((id, vector));
            }
        }
        transaction.commit().map_err(to_error)?;
        Ok(snapshot)
    }

    /// Looks up images by id; ids not found are left out.
    pub fn images_by_ids(&self, ids: &[i64]) -> Result<HashMap<i64, ImageRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT id, path, file_size, modified_ns, width, height, format, animated
                 FROM images WHERE id = ?1",
            )
            .map_err(|e| self.error(e))?;
        let mut records = HashMap::with_capacity(ids.len());
        for &id in ids {
            let record = statement
                .query_row([id], |row| {
                    Ok(ImageRecord {
                        id: row.get(0)?,
                        path: path_from_bytes(&row.get::<_, Vec<u8>>(1)?),
                        file_size: row.get::<_, i64>(2)? as u64,
                        modified_ns: row.get(3)?,
                        width: row.get(4)?,
                        height: row.get(5)?,
                        format: row.get(6)?,
                        animated: row.get(7)?,
                    })
                })
                .optional()
                .map_err(|e| self.error(e))?;
            if let Some(record) = record {
                records.insert(id, record);
            }
        }
        Ok(records)
    }

    /// Checks that the database accepts writes, by starting and rolling
    /// back a write transaction.
    pub fn check_writable(&mut self) -> Result<(), StoreError> {
        self.connection
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| self.error(e))
    }

    /// Returns every indexed image with its file fingerprint, in id order.
    pub fn all_images(&self) -> Result<Vec<(ImageRecord, Option<Fingerprint>)>, StoreError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, path, file_size, modified_ns, width, height, format, animated,
                        fingerprint
                 FROM images ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                let record = ImageRecord {
                    id: row.get(0)?,
                    path: path_from_bytes(&row.get::<_, Vec<u8>>(1)?),
                    file_size: row.get::<_, i64>(2)? as u64,
                    modified_ns: row.get(3)?,
                    width: row.get(4)?,
                    height: row.get(5)?,
                    format: row.get(6)?,
                    animated: row.get(7)?,
                };
                let fingerprint = row
                    .get::<_, Option<Vec<u8>>>(8)?
                    .and_then(|bytes| Fingerprint::try_from(bytes.as_slice()).ok());
                Ok((record, fingerprint))
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// Returns up to `limit` vectors of images with ids above `after_id`, in
    /// id order, so callers can walk all vectors in bounded memory.
    pub fn vectors_after(
        &self,
        after_id: i64,
        limit: usize,
        dimension: usize,
    ) -> Result<Vec<(i64, Vec<f32>)>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT id, vector FROM images WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(|e| self.error(e))?;
        let mut rows = statement
            .query(rusqlite::params![after_id, limit as i64])
            .map_err(|e| self.error(e))?;
        let mut vectors = Vec::with_capacity(limit.min(4096));
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let id: i64 = row.get(0).map_err(|e| self.error(e))?;
            let bytes: Vec<u8> = row.get(1).map_err(|e| self.error(e))?;
            vectors.push((id, checked_vector(&self.path, id, &bytes, dimension)?));
        }
        Ok(vectors)
    }

    /// Returns the vectors of the images `ids` that exist.
    pub fn vectors_by_ids(
        &self,
        ids: &[i64],
        dimension: usize,
    ) -> Result<HashMap<i64, Vec<f32>>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT vector FROM images WHERE id = ?1")
            .map_err(|e| self.error(e))?;
        let mut vectors = HashMap::with_capacity(ids.len());
        for &id in ids {
            let bytes: Option<Vec<u8>> = statement
                .query_row([id], |row| row.get(0))
                .optional()
                .map_err(|e| self.error(e))?;
            if let Some(bytes) = bytes {
                vectors.insert(id, checked_vector(&self.path, id, &bytes, dimension)?);
            }
        }
        Ok(vectors)
    }

    /// Returns the saved HNSW files recorded in the database, if any.
    pub fn ann_record(&self) -> Result<Option<AnnRecord>, StoreError> {
        self.connection
            .query_row(
                "SELECT generation, basename, graph_size, graph_digest, data_size, data_digest,
                        point_count, max_image_id, max_connections, ef_construction
                 FROM ann_index WHERE id = 1",
                [],
                |row| {
                    Ok(AnnRecord {
                        generation: row.get(0)?,
                        basename: row.get(1)?,
                        graph_size: row.get::<_, i64>(2)? as u64,
                        graph_digest: row.get(3)?,
                        data_size: row.get::<_, i64>(4)? as u64,
                        data_digest: row.get(5)?,
                        point_count: row.get::<_, i64>(6)? as u64,
                        max_image_id: row.get(7)?,
                        max_connections: row.get::<_, i64>(8)? as usize,
                        ef_construction: row.get::<_, i64>(9)? as usize,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Records `record` as the saved HNSW files, but only while the images
    /// are still at `record.generation`, because a graph built from older
    /// rows would be stale the moment it was recorded.
    pub fn replace_ann_record(&mut self, record: &AnnRecord) -> Result<AnnSwap, StoreError> {
        let path = self.path.clone();
        let to_error = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(to_error)?;
        let generation = read_generation(&transaction).map_err(to_error)?;
        if generation != record.generation {
            return Ok(AnnSwap::Stale);
        }
        let previous = transaction
            .query_row("SELECT basename FROM ann_index WHERE id = 1", [], |row| {
                row.get::<_, String>(0)
            })
            .optional()
            .map_err(to_error)?;
        transaction
            .execute(
                "INSERT OR REPLACE INTO ann_index
                   (id, generation, basename, graph_size, graph_digest, data_size, data_digest,
                    point_count, max_image_id, max_connections, ef_construction)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    record.generation,
                    record.basename,
                    record.graph_size as i64,
                    record.graph_digest,
                    record.data_size as i64,
                    record.data_digest,
                    record.point_count as i64,
                    record.max_image_id,
                    record.max_connections as i64,
                    record.ef_construction as i64,
                ],
            )
            .map_err(to_error)?;
        transaction.commit().map_err(to_error)?;
        Ok(AnnSwap::Recorded {
            previous_basename: previous,
        })
    }
}

fn read_generation(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row(
        "SELECT value FROM counters WHERE name = 'data_generation'",
        [],
        |row| row.get(0),
    )
}

fn insert_image(connection: &Connection, image: &NewImage, now: i64) -> rusqlite::Result<()> {
    let path = path_to_bytes(&image.path);
    delete_path(connection, &path)?;
    connection
        .prepare_cached(
            "INSERT INTO images (path, file_size, modified_ns, fingerprint, width, height,
                                 format, animated, vector, indexed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            path,
            image.state.file_size as i64,
            image.state.modified_ns,
            image.fingerprint.as_ref().map(|f| f.as_slice()),
            image.width,
            image.height,
            image.format,
            image.animated,
            vector_to_bytes(&image.vector),
            now,
        ])?;
    Ok(())
}

fn delete_path(connection: &Connection, path: &[u8]) -> rusqlite::Result<usize> {
    connection
        .prepare_cached("DELETE FROM images WHERE path = ?1")?
        .execute([path])
}

fn apply_change(connection: &Connection, change: &Change, now: i64) -> rusqlite::Result<()> {
    match change {
        Change::Move { id, path, state } => {
            let path = path_to_bytes(path);
            connection
                .prepare_cached("DELETE FROM images WHERE path = ?1 AND id != ?2")?
                .execute(params![path, id])?;
            connection
                .prepare_cached(
                    "UPDATE images SET path = ?1, file_size = ?2, modified_ns = ?3 WHERE id = ?4",
                )?
                .execute(params![path, state.file_size as i64, state.modified_ns, id])?;
        }
        Change::Copy {
            source_id,
            path,
            state,
            fingerprint,
        } => {
            let path = path_to_bytes(path);
            delete_path(connection, &path)?;
            connection
                .prepare_cached(
                    "INSERT INTO images (path, file_size, modified_ns, fingerprint, width, height,
                                         format, animated, vector, indexed_at)
                     SELECT ?1, ?2, ?3, ?4, width, height, format, animated, vector, ?5
                     FROM images WHERE id = ?6",
                )?
                .execute(params![
                    path,
                    state.file_size as i64,
                    state.modified_ns,
                    fingerprint.as_slice(),
                    now,
                    source_id
                ])?;
        }
        Change::Refresh { id, state } => {
            connection
                .prepare_cached("UPDATE images SET file_size = ?1, modified_ns = ?2 WHERE id = ?3")?
                .execute(params![state.file_size as i64, state.modified_ns, id])?;
        }
        Change::Delete { id } => {
            connection
                .prepare_cached("DELETE FROM images WHERE id = ?1")?
                .execute([id])?;
        }
    }
    Ok(())
}

/// Percent-encodes a path for an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut encoded = String::new();
    for &byte in path_to_bytes(&absolute).iter() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;

/// Decodes a stored vector, checking that it has `dimension` values.
fn checked_vector(
    database: &Path,
    id: i64,
    bytes: &[u8],
    dimension: usize,
) -> Result<Vec<f32>, StoreError> {
    vector_from_bytes(bytes)
        .filter(|v| v.len() == dimension)
        .ok_or_else(|| StoreError::CorruptVector {
            path: database.to_path_buf(),
            id,
            found: bytes.len(),
            expected: dimension * 4,
        })
}

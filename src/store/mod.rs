//! SQLite storage: the images, their vectors, the model that made them and
//! the saved HNSW file that matches them.
//!
//! SQLite is the source of truth. Every write happens inside a transaction,
//! so when [`Store::insert_images`] returns, its rows are durable as a unit
//! and a crash at any point leaves either all of them or none.

mod migrations;
mod vector;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

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
        "{path}: the database was built with model {stored_name} (sha256 {stored_sha256}, \
         {stored_dimension} dimensions, preprocessing \"{stored_preprocessing}\"), \
         but this run uses {name} (sha256 {sha256}, {dimension} dimensions, preprocessing \
         \"{preprocessing}\"); vectors of different models cannot be compared. \
         Re-index into a new database with `--db NEW.db`, or delete {path} and re-run `imgsim index`"
    )]
    ModelMismatch {
        path: PathBuf,
        stored_name: String,
        stored_sha256: String,
        stored_dimension: usize,
        stored_preprocessing: String,
        name: String,
        sha256: String,
        dimension: usize,
        preprocessing: String,
    },
    #[error("{path}: image {id} has a vector of {found} bytes, expected {expected}")]
    CorruptVector {
        path: PathBuf,
        id: i64,
        found: usize,
        expected: usize,
    },
}

/// Whether [`Store::open`] may create a missing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    CreateIfMissing,
    MustExist,
}

/// Size and modification time of a file when it was indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    pub file_size: u64,
    pub modified_ns: i64,
}

/// One embedded image, ready to be written.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub path: PathBuf,
    pub state: FileState,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub vector: Vec<f32>,
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
    pub point_count: u64,
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
}

impl Store {
    /// Opens the database at `path`, applying pending migrations.
    ///
    /// # Errors
    /// Fails when the file cannot be opened or created, is not an imgsim
    /// database, or was written by a newer imgsim.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Store, StoreError> {
        if mode == OpenMode::MustExist && !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
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
        };
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

    /// Sets the connection pragmas, which are not part of any migration
    /// because they apply to a connection rather than to the schema.
    fn configure(&mut self) -> Result<(), StoreError> {
        self.connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.error(e))?;
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

    /// The database file this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `model` as the database's model, or checks that it is the
    /// one already recorded.
    ///
    /// # Errors
    /// [`StoreError::ModelMismatch`] when the database holds vectors of
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
        Err(StoreError::ModelMismatch {
            path: self.path.clone(),
            stored_name: stored.name.clone(),
            stored_sha256: stored.sha256.clone(),
            stored_dimension: stored.dimension,
            stored_preprocessing: stored.preprocessing.clone(),
            name: model.name.clone(),
            sha256: model.sha256.clone(),
            dimension: model.dimension,
            preprocessing: model.preprocessing.clone(),
        })
    }

    /// The model recorded in the database, if any image was ever indexed.
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

    /// Returns the size and modification time recorded for every indexed
    /// path, keyed by the path's raw bytes.
    pub fn file_states(&self) -> Result<HashMap<Vec<u8>, FileState>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT path, file_size, modified_ns FROM images")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    FileState {
                        file_size: row.get::<_, i64>(1)? as u64,
                        modified_ns: row.get(2)?,
                    },
                ))
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// Inserts or replaces (by path) a batch of images in one transaction.
    ///
    /// When this returns `Ok`, the whole batch is committed; on error or a
    /// crash, none of it is.
    pub fn insert_images(&mut self, images: &[NewImage]) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let path = self.path.clone();
        let to_error = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(to_error)?;
        {
            let mut statement = transaction
                .prepare_cached(
                    "INSERT INTO images
                       (path, file_size, modified_ns, width, height, format, vector, indexed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (path) DO UPDATE SET
                       file_size = excluded.file_size,
                       modified_ns = excluded.modified_ns,
                       width = excluded.width,
                       height = excluded.height,
                       format = excluded.format,
                       vector = excluded.vector,
                       indexed_at = excluded.indexed_at",
                )
                .map_err(to_error)?;
            for image in images {
                statement
                    .execute(params![
                        path_to_bytes(&image.path),
                        image.state.file_size as i64,
                        image.state.modified_ns,
                        image.width,
                        image.height,
                        image.format,
                        vector_to_bytes(&image.vector),
                        now,
                    ])
                    .map_err(to_error)?;
            }
        }
        transaction.commit().map_err(to_error)
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

    /// The counter that changes with every insert, update or delete of an
    /// image row, maintained by triggers.
    pub fn data_generation(&self) -> Result<i64, StoreError> {
        self.connection
            .query_row(
                "SELECT value FROM counters WHERE name = 'data_generation'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.error(e))
    }

    /// Reads every image id with its vector, checking each vector's length
    /// against `dimension`, and returns them with the data generation they
    /// belong to (read in the same transaction).
    pub fn all_vectors(
        &mut self,
        dimension: usize,
    ) -> Result<(i64, Vec<(i64, Vec<f32>)>), StoreError> {
        let path = self.path.clone();
        let to_error = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(to_error)?;
        let generation: i64 = transaction
            .query_row(
                "SELECT value FROM counters WHERE name = 'data_generation'",
                [],
                |row| row.get(0),
            )
            .map_err(to_error)?;
        let mut vectors = Vec::new();
        {
            let mut statement = transaction
                .prepare("SELECT id, vector FROM images ORDER BY id")
                .map_err(to_error)?;
            let mut rows = statement.query([]).map_err(to_error)?;
            while let Some(row) = rows.next().map_err(to_error)? {
                let id: i64 = row.get(0).map_err(to_error)?;
                let bytes = row.get_ref(1).map_err(to_error)?.as_blob().map_err(|e| {
                    to_error(rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Blob,
                        Box::new(e),
                    ))
                })?;
                let vector = vector_from_bytes(bytes).filter(|v| v.len() == dimension);
                let Some(vector) = vector else {
                    return Err(StoreError::CorruptVector {
                        path: path.clone(),
                        id,
                        found: bytes.len(),
                        expected: dimension * 4,
                    });
                };
                vectors.push((id, vector));
            }
        }
        transaction.commit().map_err(to_error)?;
        Ok((generation, vectors))
    }

    /// Looks up images by id; ids not found are left out.
    pub fn images_by_ids(&self, ids: &[i64]) -> Result<HashMap<i64, ImageRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT id, path, file_size, modified_ns, width, height, format
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

    /// The saved HNSW files recorded in the database, if any.
    pub fn ann_record(&self) -> Result<Option<AnnRecord>, StoreError> {
        self.connection
            .query_row(
                "SELECT generation, basename, graph_size, graph_digest, data_size, data_digest,
                        point_count, max_connections, ef_construction
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
                        max_connections: row.get::<_, i64>(7)? as usize,
                        ef_construction: row.get::<_, i64>(8)? as usize,
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
        let generation: i64 = transaction
            .query_row(
                "SELECT value FROM counters WHERE name = 'data_generation'",
                [],
                |row| row.get(0),
            )
            .map_err(to_error)?;
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
                    point_count, max_connections, ef_construction)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.generation,
                    record.basename,
                    record.graph_size as i64,
                    record.graph_digest,
                    record.data_size as i64,
                    record.data_digest,
                    record.point_count as i64,
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

#[cfg(test)]
mod tests;

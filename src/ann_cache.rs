//! Keeping the saved HNSW files in step with SQLite.
//!
//! The database records which files hold the graph, the generation of the
//! images table they match, and the largest image id they cover. Image ids
//! are never reused, so bringing a saved graph up to date means inserting
//! the rows with larger ids. Rows deleted since stay in the graph as
//! tombstones that searches skip. When tombstones pass
//! [`MAX_TOMBSTONE_SHARE`] of the graph, or the saved files are missing,
//! truncated, foreign or built with other parameters, the graph is rebuilt
//! from SQLite with one log line, and saved for the next reader when it can.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::ann::{AnnError, AnnIndex, AnnParams, FrozenGraph, Neighbour, SavedFiles};
use crate::store::{AnnRecord, AnnSwap, Store, StoreError, VectorSnapshot};

/// Share of graph points whose images were deleted above which the graph is
/// rebuilt instead of updated; tombstones cost search time and memory.
pub const MAX_TOMBSTONE_SHARE: f64 = 0.25;

#[derive(Debug, thiserror::Error)]
pub enum AnnCacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ann(#[from] AnnError),
}

/// Origin of a graph: loaded as saved, updated, or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The saved files matched the database.
    Current,
    /// The saved graph was loaded and the newer images inserted.
    Updated { inserted: usize },
    /// The graph was built from all vectors in the database.
    Rebuilt { reason: String },
}

/// A graph in memory, or a saved one opened in place.
pub enum Graph {
    Built(AnnIndex),
    Frozen(FrozenGraph),
}

impl Graph {
    /// Number of points, deleted images included.
    pub fn len(&self) -> usize {
        match self {
            Graph::Built(index) => index.len(),
            Graph::Frozen(frozen) => frozen.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A graph that covers every image in the database, with the ids of the
/// images that still exist.
pub struct LiveIndex {
    pub index: Graph,
    pub live_ids: HashSet<i64>,
    pub freshness: Freshness,
}

impl LiveIndex {
    /// Returns whether `id` is an image that still exists, not a tombstone.
    pub fn is_live(&self, id: i64) -> bool {
        self.live_ids.contains(&id)
    }

    /// Returns up to `k` nearest images that still exist, most similar
    /// first.
    pub fn search(&self, query: &[f32], k: usize, ef_search: usize) -> Vec<Neighbour> {
        let keep = |id: i64| self.is_live(id);
        let has_tombstones = self.live_ids.len() < self.index.len();
        match &self.index {
            Graph::Built(index) => {
                index.search(query, k, ef_search, has_tombstones.then_some(&keep as _))
            }
            Graph::Frozen(frozen) => frozen.search(query, k, ef_search, &keep),
        }
    }
}

/// Returns the graph for the current images: the saved graph, brought up
/// to date when newer images exist, or a new one built from SQLite. A
/// graph that changed is saved for the next reader when possible.
pub fn load_current(
    store: &mut Store,
    dimension: usize,
    params: &AnnParams,
) -> Result<LiveIndex, AnnCacheError> {
    let dir = folder_of(store.path());
    let record = match usable_record(store, params)? {
        Ok(record) => record,
        Err(reason) => return rebuild(store, dimension, params, reason),
    };
    let snapshot = store.vector_snapshot(record.max_image_id, dimension)?;
    if too_many_tombstones(&record, &snapshot) {
        let point_count = record.point_count as usize + snapshot.vectors.len();
        let tombstones = point_count.saturating_sub(snapshot.live_ids.len());
        let reason = format!("{tombstones} of {point_count} graph points are deleted images");
        return rebuild(store, dimension, params, reason);
    }
    if snapshot.vectors.is_empty() {
        // Nothing to insert: search the saved files in place.
        match FrozenGraph::open(&dir, &record.basename, record.data_size) {
            Ok(frozen) => {
                return Ok(LiveIndex {
                    index: Graph::Frozen(frozen),
                    live_ids: snapshot.live_ids,
                    freshness: Freshness::Current,
                })
            }
            // Databases saved before links files existed land here once;
            // the save below writes one.
            Err(error) => tracing::debug!("loading the HNSW index with hnsw_rs: {error}"),
        }
    }
    let mut index = match AnnIndex::load(&dir, &record.basename, &saved_files(&record)) {
        Ok(index) => index,
        Err(error) => return rebuild(store, dimension, params, error.to_string()),
    };
    index.insert(&snapshot.vectors);
    let inserted = snapshot.vectors.len();
    tracing::debug!("inserted {inserted} new images into the saved HNSW index");
    let max_image_id = max_id(&snapshot).max(record.max_image_id);
    save_or_warn(store, &index, &snapshot, max_image_id, params);
    Ok(LiveIndex {
        index: Graph::Built(index),
        live_ids: snapshot.live_ids,
        freshness: Freshness::Updated { inserted },
    })
}

/// Returns whether the deleted images in the saved graph, counting the
/// images still to insert, pass [`MAX_TOMBSTONE_SHARE`].
fn too_many_tombstones(record: &AnnRecord, snapshot: &VectorSnapshot) -> bool {
    let point_count = record.point_count as usize + snapshot.vectors.len();
    let tombstones = point_count.saturating_sub(snapshot.live_ids.len());
    tombstones as f64 > MAX_TOMBSTONE_SHARE * point_count as f64
}

/// Returns the build parameters of the saved graph, or the defaults when
/// there is none.
pub fn saved_build_params(store: &Store) -> Result<AnnParams, StoreError> {
    let defaults = AnnParams::default();
    Ok(match store.ann_record()? {
        Some(record) => AnnParams {
            max_connections: record.max_connections,
            ef_construction: record.ef_construction,
            ..defaults
        },
        None => defaults,
    })
}

/// Brings the saved files up to date with the database without loading
/// the graph when they already match; used after an index run.
pub fn refresh(
    store: &mut Store,
    dimension: usize,
    params: &AnnParams,
) -> Result<Freshness, AnnCacheError> {
    if let Ok(record) = usable_record(store, params)? {
        let dir = folder_of(store.path());
        // Queries do not hash the data file, so the index run is where a
        // damaged file of the right size is found and replaced.
        if let Err(error) = crate::ann::check_saved(&dir, &record.basename, &saved_files(&record)) {
            return Ok(rebuild(store, dimension, params, error.to_string())?.freshness);
        }
        let current = record.generation == store.data_generation()?;
        if current && crate::ann::frozen::links_path(&dir, &record.basename).is_file() {
            remove_leftovers(&dir, &file_name_of(store.path()), &record.basename);
            return Ok(Freshness::Current);
        }
    }
    Ok(load_current(store, dimension, params)?.freshness)
}

/// Returns the recorded files when they were built with the same
/// parameters and still have the recorded sizes and digests, or the reason
/// they cannot be used.
fn usable_record(
    store: &Store,
    params: &AnnParams,
) -> Result<Result<AnnRecord, String>, StoreError> {
    let Some(record) = store.ann_record()? else {
        return Ok(Err("no saved HNSW index yet".to_string()));
    };
    if record.max_connections != params.max_connections
        || record.ef_construction != params.ef_construction
    {
        return Ok(Err(format!(
            "saved HNSW index was built with max connections {} and ef_construction {}, \
             this run asks for {} and {}",
            record.max_connections,
            record.ef_construction,
            params.max_connections,
            params.ef_construction
        )));
    }
    Ok(Ok(record))
}

fn rebuild(
    store: &mut Store,
    dimension: usize,
    params: &AnnParams,
    reason: String,
) -> Result<LiveIndex, AnnCacheError> {
    let started = std::time::Instant::now();
    let mut snapshot = store.vector_snapshot(0, dimension)?;
    let index = AnnIndex::build(&snapshot.vectors, params);
    let message = format!(
        "rebuilt HNSW index over {} images in {:.1} s ({reason})",
        snapshot.vectors.len(),
        started.elapsed().as_secs_f64()
    );
    if store.ann_record()?.is_some() {
        tracing::warn!("{message}");
    } else {
        tracing::info!("{message}");
    }
    let max_image_id = max_id(&snapshot);
    save_or_warn(store, &index, &snapshot, max_image_id, params);
    snapshot.vectors = Vec::new();
    Ok(LiveIndex {
        index: Graph::Built(index),
        live_ids: snapshot.live_ids,
        freshness: Freshness::Rebuilt { reason },
    })
}

fn max_id(snapshot: &VectorSnapshot) -> i64 {
    snapshot
        .vectors
        .iter()
        .map(|(id, _)| *id)
        .max()
        .unwrap_or(0)
}

fn save_or_warn(
    store: &mut Store,
    index: &AnnIndex,
    snapshot: &VectorSnapshot,
    max_image_id: i64,
    params: &AnnParams,
) {
    // hnsw_rs cannot write an empty graph, and an empty one costs nothing
    // to rebuild.
    if index.is_empty() {
        return;
    }
    if store.is_read_only() {
        tracing::debug!("the database is read-only; the HNSW index is kept in memory only");
        return;
    }
    if let Err(error) = save(store, index, snapshot.generation, max_image_id, params) {
        tracing::warn!("the HNSW index was not saved, the next command rebuilds it: {error}");
    }
}

fn save(
    store: &mut Store,
    index: &AnnIndex,
    generation: i64,
    max_image_id: i64,
    params: &AnnParams,
) -> Result<(), AnnCacheError> {
    let dir = folder_of(store.path());
    // The process id keeps two processes saving the same generation from
    // writing to the same file names.
    let basename = format!(
        "{}.ann-{generation}-{}",
        file_name_of(store.path()),
        std::process::id()
    );
    let saved = index.save(&dir, &basename)?;
    let record = AnnRecord {
        generation,
        basename: basename.clone(),
        graph_size: saved.graph_size,
        graph_digest: saved.graph_digest,
        data_size: saved.data_size,
        data_digest: saved.data_digest,
        point_count: index.len() as u64,
        max_image_id,
        max_connections: params.max_connections,
        ef_construction: params.ef_construction,
    };
    match store.replace_ann_record(&record)? {
        AnnSwap::Recorded { previous_basename } => {
            if let Some(previous) = previous_basename.filter(|p| *p != basename) {
                remove_saved(&dir, &previous);
            }
            remove_leftovers(&dir, &file_name_of(store.path()), &basename);
        }
        AnnSwap::Stale => {
            tracing::debug!("images changed while the HNSW index was built; not recording it");
            remove_saved(&dir, &basename);
        }
    }
    Ok(())
}

fn saved_files(record: &AnnRecord) -> SavedFiles {
    SavedFiles {
        graph_size: record.graph_size,
        graph_digest: record.graph_digest.clone(),
        data_size: record.data_size,
        data_digest: record.data_digest.clone(),
    }
}

fn remove_saved(dir: &Path, basename: &str) {
    for suffix in ["hnsw.graph", "hnsw.data", "hnsw.links"] {
        let path = dir.join(format!("{basename}.{suffix}"));
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove old HNSW file {}: {error}", path.display());
            }
        }
    }
}

/// Removes HNSW files and staging folders of this database left behind by
/// processes that were killed while saving: names of the form
/// `[.]<database>.ann-<generation>-<pid>...` whose process no longer runs,
/// other than `keep`.
fn remove_leftovers(dir: &Path, database_name: &str, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{database_name}.ann-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.trim_start_matches('.').strip_prefix(&prefix) else {
            continue;
        };
        if name.trim_start_matches('.').starts_with(keep) {
            continue;
        }
        let Some(pid) = rest
            .split(['.', '-'])
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_is_running(pid) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::debug!("removed leftover HNSW file {}", path.display()),
            Err(error) => tracing::debug!("cannot remove leftover {}: {error}", path.display()),
        }
    }
}

/// Returns whether a process with this id runs. Without `/proc` this cannot
/// be checked, so every process counts as running and nothing is removed.
fn process_is_running(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    !proc_root.join("self").exists() || proc_root.join(pid.to_string()).exists()
}

fn folder_of(database: &Path) -> PathBuf {
    match database.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name_of(database: &Path) -> String {
    database
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imgsim.db".to_string())
}

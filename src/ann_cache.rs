//! Keeping the saved HNSW files in step with SQLite.
//!
//! The database records which files hold the graph and which generation of
//! the images table they were built from. A reader that finds them missing,
//! stale, truncated or foreign rebuilds the graph from SQLite with one log
//! line, and saves it for the next reader when it can.

use std::path::{Path, PathBuf};

use crate::ann::{AnnError, AnnIndex, AnnParams, SavedFiles};
use crate::store::{AnnRecord, AnnSwap, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AnnCacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ann(#[from] AnnError),
}

/// Whether the saved files already matched, or why the graph was rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Current,
    Rebuilt { reason: String },
}

/// Returns the graph for the current images, loading the saved files when
/// they match and rebuilding (and saving) otherwise.
pub fn load_or_rebuild(
    store: &mut Store,
    dimension: usize,
    params: &AnnParams,
) -> Result<(AnnIndex, Freshness), AnnCacheError> {
    let dir = folder_of(store.path());
    let problem = match usable_record(store, params)? {
        Ok(record) => match AnnIndex::load(&dir, &record.basename, &saved_files(&record)) {
            Ok(index) => return Ok((index, Freshness::Current)),
            Err(error) => error.to_string(),
        },
        Err(reason) => reason,
    };
    let index = rebuild_and_save(store, dimension, params, &problem)?;
    Ok((index, Freshness::Rebuilt { reason: problem }))
}

/// Makes sure the saved files match the current images, rebuilding them
/// only when they do not; used after an index run, where the graph itself
/// is not needed.
pub fn refresh(
    store: &mut Store,
    dimension: usize,
    params: &AnnParams,
) -> Result<Freshness, AnnCacheError> {
    let dir = folder_of(store.path());
    let problem = match usable_record(store, params)? {
        Ok(record) => {
            match crate::ann::check_saved(&dir, &record.basename, &saved_files(&record)) {
                Ok(()) => return Ok(Freshness::Current),
                Err(error) => error.to_string(),
            }
        }
        Err(reason) => reason,
    };
    rebuild_and_save(store, dimension, params, &problem)?;
    Ok(Freshness::Rebuilt { reason: problem })
}

/// Returns the recorded files when they were built from the current
/// generation with the same parameters, or the reason they cannot be used.
fn usable_record(
    store: &Store,
    params: &AnnParams,
) -> Result<Result<AnnRecord, String>, StoreError> {
    let generation = store.data_generation()?;
    let Some(record) = store.ann_record()? else {
        return Ok(Err("no saved HNSW index yet".to_string()));
    };
    if record.generation != generation {
        return Ok(Err(format!(
            "saved HNSW index is from generation {}, the images are at {generation}",
            record.generation
        )));
    }
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

fn rebuild_and_save(
    store: &mut Store,
    dimension: usize,
    params: &AnnParams,
    reason: &str,
) -> Result<AnnIndex, AnnCacheError> {
    let started = std::time::Instant::now();
    let (generation, vectors) = store.all_vectors(dimension)?;
    let index = AnnIndex::build(&vectors, params);
    tracing::info!(
        "rebuilt HNSW index over {} images in {:.1} s ({reason})",
        vectors.len(),
        started.elapsed().as_secs_f64()
    );
    drop(vectors);
    if let Err(error) = save(store, &index, generation, params) {
        tracing::warn!("the rebuilt HNSW index was not saved, the next query rebuilds it: {error}");
    }
    Ok(index)
}

fn save(
    store: &mut Store,
    index: &AnnIndex,
    generation: i64,
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
        max_connections: params.max_connections,
        ef_construction: params.ef_construction,
    };
    match store.replace_ann_record(&record)? {
        AnnSwap::Recorded { previous_basename } => {
            if let Some(previous) = previous_basename.filter(|p| *p != basename) {
                remove_saved(&dir, &previous);
            }
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

/// Paths of the two files of the graph saved under `basename`.
pub fn saved_paths(database: &Path, basename: &str) -> [PathBuf; 2] {
    let dir = folder_of(database);
    ["hnsw.graph", "hnsw.data"].map(|suffix| dir.join(format!("{basename}.{suffix}")))
}

fn remove_saved(dir: &Path, basename: &str) {
    for suffix in ["hnsw.graph", "hnsw.data"] {
        let path = dir.join(format!("{basename}.{suffix}"));
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove old HNSW file {}: {error}", path.display());
            }
        }
    }
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

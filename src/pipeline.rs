//! The index run: scan, plan (see [`crate::plan`]), apply the changes that
//! need no decoding, then decode and preprocess in parallel, embed in
//! batches, and commit each batch to SQLite.
//!
//! Decoding runs on the rayon thread pool, one batch ahead of inference,
//! through a channel of two batches, so memory stays proportional to the
//! batch size, not to the collection. Each batch is committed in its own
//! transaction: a crash or Ctrl-C loses at most the batch in flight.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::decode::{decode_file, DecodeOptions};
use crate::model::{Embedder, ModelError};
use crate::plan::{plan_run, Plan, ToEmbed};
use crate::preprocess::Preprocessing;
use crate::scan::{scan_roots_until, ScanOptions};
use crate::store::{NewImage, Store, StoreError};

/// Default number of images per inference batch and per transaction.
pub const DEFAULT_BATCH_SIZE: usize = 16;

/// Batches decoded ahead of inference.
const BATCHES_IN_FLIGHT: usize = 2;

/// Settings of one index run.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    pub batch_size: usize,
    pub decode: DecodeOptions,
    pub scan: ScanOptions,
    /// Plan only: report what would change, write nothing.
    pub dry_run: bool,
}

/// The step at which a file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Scan,
    Read,
    Decode,
    Preprocess,
}

/// A file that could not be indexed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub path: PathBuf,
    pub stage: Stage,
    pub reason: String,
}

/// Outcome of one index run.
#[derive(Debug, Default)]
pub struct IndexReport {
    /// Candidate files found by the scan.
    pub scanned: usize,
    /// Roots that exist and could be examined; zero means nothing given on
    /// the command line could be indexed.
    pub readable_roots: usize,
    /// The run's decisions per file; in a dry run, the decisions it would
    /// carry out.
    pub plan: Plan,
    /// Files decoded (successfully or not) in this run.
    pub decoded: usize,
    /// Files decoded, embedded and committed in this run.
    pub indexed: usize,
    /// Of those, files whose path was indexed before with other content.
    pub indexed_changed: usize,
    /// Rows deleted because their file changed and can no longer be read
    /// or decoded, so the stored vector no longer matches it.
    pub stale_removed: usize,
    pub failures: Vec<Failure>,
    /// Set when the run stopped early on request.
    pub interrupted: bool,
    pub seconds: f64,
}

/// Receives progress of an index run, for progress bars and logs.
pub trait IndexObserver: Sync {
    /// Called once, with the number of files that need decoding.
    fn start(&self, to_process: usize);
    /// Called after each committed batch with the number of files it
    /// finished, including failed ones.
    fn advance(&self, files: usize);
    fn failed(&self, failure: &Failure);
    fn warning(&self, path: &std::path::Path, message: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One batch of decode results, with the paths whose old rows must go if
/// they failed: their stored vectors no longer match their content.
struct Batch {
    results: Vec<Result<Prepared, Failure>>,
    replaced_paths: std::collections::HashSet<PathBuf>,
}

/// A file decoded and preprocessed, ready for inference.
struct Prepared {
    item: ToEmbed,
    width: u32,
    height: u32,
    format: String,
    animated: bool,
    tensor: Vec<f32>,
}

/// Indexes every image under `roots` into `store`, stopping after the
/// current batch once `cancel` is set.
///
/// # Errors
/// Unreadable files are not errors: they are counted in
/// [`IndexReport::failures`]. Errors are failures of the database or the
/// model, after which the run cannot go on; batches committed before them
/// stay committed.
pub fn index_roots(
    store: &mut Store,
    embedder: &mut Embedder,
    roots: &[PathBuf],
    settings: &IndexSettings,
    observer: &dyn IndexObserver,
    cancel: &AtomicBool,
) -> Result<IndexReport, PipelineError> {
    let started = Instant::now();
    let mut report = IndexReport::default();
    let scan = scan_roots_until(roots, &settings.scan, cancel);
    if scan.interrupted {
        report.interrupted = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    for failure in &scan.failures {
        record_failure(
            &mut report,
            observer,
            &failure.path,
            Stage::Scan,
            &failure.reason,
        );
    }
    for (link, message) in &scan.loops {
        observer.warning(link, message);
    }
    report.scanned = scan.candidates.len();
    report.readable_roots = scan.readable_roots;
    let stored = store.stored_files()?;
    let max_file_bytes = crate::decode::file_size_limit(&settings.decode);
    let Some(mut plan) = plan_run(&scan, &stored, max_file_bytes, cancel) else {
        report.interrupted = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    drop(stored);
    for failure in std::mem::take(&mut plan.read_failures) {
        record_failure(
            &mut report,
            observer,
            &failure.path,
            Stage::Read,
            &failure.reason,
        );
        if let Some(id) = failure.previous_id {
            plan.changes.push(crate::store::Change::Delete { id });
            plan.removed.push(failure.path);
        }
    }
    for root in &plan.empty_roots {
        let message = "no images found; its indexed files are kept in case the drive is \
                       unmounted (delete them by indexing a folder inside it, or a new database)";
        observer.warning(root, message);
    }
    if settings.dry_run {
        report.plan = plan;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    store.apply_changes(&plan.changes)?;
    let to_embed = plan.to_embed.clone();
    report.plan = plan;
    observer.start(to_embed.len());
    embed_all(
        store,
        embedder,
        to_embed,
        settings,
        observer,
        cancel,
        &mut report,
    )?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn record_failure(
    report: &mut IndexReport,
    observer: &dyn IndexObserver,
    path: &std::path::Path,
    stage: Stage,
    reason: &str,
) {
    let failure = Failure {
        path: path.to_path_buf(),
        stage,
        reason: one_line(reason),
    };
    observer.failed(&failure);
    report.failures.push(failure);
}

/// Decodes one batch ahead on the rayon pool while the current batch runs
/// through the model and is committed.
fn embed_all(
    store: &mut Store,
    embedder: &mut Embedder,
    to_embed: Vec<ToEmbed>,
    settings: &IndexSettings,
    observer: &dyn IndexObserver,
    cancel: &AtomicBool,
    report: &mut IndexReport,
) -> Result<(), PipelineError> {
    let batch_size = settings.batch_size.max(1);
    let preprocessing = embedder.preprocessing().clone();
    let decode_options = DecodeOptions::for_side(
        settings.decode.max_pixels,
        preprocessing.width.min(preprocessing.height),
    );
    let decoded = AtomicUsize::new(0);
    let result = std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel::<Batch>(BATCHES_IN_FLIGHT);
        let decoded = &decoded;
        let preprocessing = &preprocessing;
        let decode_options = &decode_options;
        scope.spawn(move || {
            for chunk in to_embed.chunks(batch_size) {
                if cancel.load(Ordering::SeqCst) {
                    break;
                }
                decoded.fetch_add(chunk.len(), Ordering::Relaxed);
                let batch = Batch {
                    results: prepare_batch(chunk, decode_options, preprocessing, observer),
                    replaced_paths: chunk
                        .iter()
                        .filter(|item| item.replaces)
                        .map(|item| item.candidate.path.clone())
                        .collect(),
                };
                if sender.send(batch).is_err() {
                    break;
                }
            }
        });
        for batch in receiver {
            let finished = batch.results.len();
            commit_batch(store, embedder, batch, report, observer)?;
            observer.advance(finished);
            if cancel.load(Ordering::SeqCst) {
                report.interrupted = true;
                break;
            }
        }
        Ok::<(), PipelineError>(())
    });
    report.decoded = decoded.load(Ordering::Relaxed);
    result
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Returns the reason on one line, because decoders' messages may end in or
/// contain line breaks, which would split a `path: reason` line.
fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn prepare_batch(
    chunk: &[ToEmbed],
    options: &DecodeOptions,
    preprocessing: &Preprocessing,
    observer: &dyn IndexObserver,
) -> Vec<Result<Prepared, Failure>> {
    chunk
        .par_iter()
        .map(|item| prepare_one(item, options, preprocessing, observer))
        .collect()
}

fn prepare_one(
    item: &ToEmbed,
    options: &DecodeOptions,
    preprocessing: &Preprocessing,
    observer: &dyn IndexObserver,
) -> Result<Prepared, Failure> {
    let candidate = &item.candidate;
    let decode_failure = |reason: String| Failure {
        path: candidate.path.clone(),
        stage: Stage::Decode,
        reason: one_line(&reason),
    };
    // The image crate reports some allocation failures by panicking; one
    // such file must not end the run.
    let decoded = std::panic::catch_unwind(|| decode_file(&candidate.path, options))
        .map_err(|panic| decode_failure(format!("decoder failed: {}", panic_message(&panic))))?
        .map_err(|error| decode_failure(error.reason()))?;
    for warning in &decoded.warnings {
        observer.warning(&candidate.path, warning);
    }
    let mut tensor = vec![0.0; preprocessing.tensor_len()];
    preprocessing
        .fill_tensor(&decoded.pixels, &mut tensor)
        .map_err(|error| Failure {
            path: candidate.path.clone(),
            stage: Stage::Preprocess,
            reason: error.to_string(),
        })?;
    Ok(Prepared {
        item: item.clone(),
        width: decoded.width,
        height: decoded.height,
        format: decoded.format,
        animated: decoded.animated,
        tensor,
    })
}

/// Embeds the prepared files of one batch and commits them in one
/// transaction. Failed files are reported and left out; each vector stays
/// paired with the file it came from because rows and files are collected
/// together.
fn commit_batch(
    store: &mut Store,
    embedder: &mut Embedder,
    batch: Batch,
    report: &mut IndexReport,
    observer: &dyn IndexObserver,
) -> Result<(), PipelineError> {
    let mut prepared = Vec::with_capacity(batch.results.len());
    let mut stale = Vec::new();
    for item in batch.results {
        match item {
            Ok(item) => prepared.push(item),
            Err(failure) => {
                if batch.replaced_paths.contains(&failure.path) {
                    stale.push(failure.path.clone());
                }
                observer.failed(&failure);
                report.failures.push(failure);
            }
        }
    }
    if !stale.is_empty() {
        store.delete_paths(&stale)?;
        report.stale_removed += stale.len();
    }
    if prepared.is_empty() {
        return Ok(());
    }
    let mut tensors = Vec::with_capacity(prepared.len() * embedder.preprocessing().tensor_len());
    for item in &prepared {
        tensors.extend_from_slice(&item.tensor);
    }
    let vectors = embedder.embed(&tensors, prepared.len())?;
    let changed = prepared.iter().filter(|p| p.item.replaces).count();
    let images: Vec<NewImage> = prepared
        .into_iter()
        .zip(vectors)
        .map(|(prepared, vector)| NewImage {
            path: prepared.item.candidate.path,
            state: prepared.item.candidate.state,
            fingerprint: Some(prepared.item.fingerprint),
            width: prepared.width,
            height: prepared.height,
            format: prepared.format,
            animated: prepared.animated,
            vector,
        })
        .collect();
    store.insert_images(&images)?;
    report.indexed += images.len();
    report.indexed_changed += changed;
    Ok(())
}

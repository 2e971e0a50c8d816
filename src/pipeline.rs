//! The index run: scan, plan (see [`crate::plan`]), apply the changes that
//! need no decoding, then decode, preprocess and embed in batches, and
//! commit each batch to SQLite.
//!
//! One worker thread per core decodes and embeds whole batches with its own
//! one-thread model session. Each worker may have two finished batches
//! waiting, so memory stays proportional to the batch size times the
//! workers, not to the collection. This thread commits the batches in file
//! order, each in its own transaction: a crash or Ctrl-C loses at most the
//! batches in flight.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::Instant;

use serde::Serialize;

use crate::decode::{decode_bytes, read_file, DecodeError, DecodeOptions};
use crate::model::{Embedder, EmbedderSpec, ModelError};
use crate::plan::{plan_run, Plan, ToEmbed};
use crate::preprocess::Preprocessing;
use crate::scan::{scan_roots_until, ScanOptions};
use crate::store::{Fingerprint, NewImage, Store, StoreError};

/// Default number of images per inference batch and per transaction. On 2
/// cores, batches of 4 ran faster than batches of 8 or 16 and took less
/// than half the memory of 16 (BENCHMARKS.md).
pub const DEFAULT_BATCH_SIZE: usize = 4;

/// Embedded batches that each worker may have waiting for their commit.
const BATCHES_IN_FLIGHT: usize = 2;

/// Settings of one index run.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    pub batch_size: usize,
    /// Threads that each decode and embed whole batches.
    pub workers: usize,
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

/// A file decoded and preprocessed, whose input tensor is in the worker's
/// batch buffer, ready for inference.
struct Prepared {
    item: ToEmbed,
    /// BLAKE3 of the bytes decoded.
    fingerprint: Fingerprint,
    width: u32,
    height: u32,
    format: String,
    animated: bool,
}

/// Indexes every image under `roots` into `store`, stopping after the
/// current batch once `cancel` is set. `embedder`, a one-thread session,
/// serves the first worker thread; the others load their own sessions of
/// the same model.
///
/// # Errors
/// Unreadable files are not errors: they are counted in
/// [`IndexReport::failures`]. Errors are failures of the database or the
/// model, after which the run cannot go on; batches committed before them
/// stay committed.
pub fn index_roots(
    store: &mut Store,
    embedder: Embedder,
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

/// Runs `settings.workers` worker threads, at most one per batch, each
/// with its own one-thread session of the model. Worker `w` decodes and
/// embeds batches `w`, `w + workers`, and so on, while this thread commits
/// the finished batches in file order. Separate sessions keep a worker from waiting on another
/// core in the middle of an operator, as ONNX Runtime's intra-op threads
/// do when decoding takes a core from them.
fn embed_all(
    store: &mut Store,
    embedder: Embedder,
    to_embed: Vec<ToEmbed>,
    settings: &IndexSettings,
    observer: &dyn IndexObserver,
    cancel: &AtomicBool,
    report: &mut IndexReport,
) -> Result<(), PipelineError> {
    let batch_size = settings.batch_size.max(1);
    let batches: Vec<&[ToEmbed]> = to_embed.chunks(batch_size).collect();
    if batches.is_empty() {
        // Nothing to decode, so no worker needs to load a session.
        return Ok(());
    }
    let workers = settings.workers.clamp(1, batches.len());
    let spec = embedder.spec();
    let mut first = Some(embedder);
    let preprocessing = spec.preprocessing().clone();
    let decode_options = DecodeOptions::for_side(
        settings.decode.max_pixels,
        preprocessing.width.min(preprocessing.height),
    );
    let decoded = AtomicUsize::new(0);
    let result = std::thread::scope(|scope| {
        let mut receivers = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (sender, receiver) =
                sync_channel::<Result<Embedded, ModelError>>(BATCHES_IN_FLIGHT);
            receivers.push(receiver);
            let context = WorkerContext {
                batches: &batches,
                decode: &decode_options,
                preprocessing: &preprocessing,
                observer,
                cancel,
                decoded: &decoded,
                spec: &spec,
            };
            let loaded = first.take();
            scope.spawn(move || run_worker(&context, loaded, worker, workers, &sender));
        }
        let mut committed = 0;
        for index in 0..batches.len() {
            // A closed channel means that its worker stopped early, on
            // Ctrl-C or after sending an error.
            let Ok(embedded) = receivers[index % workers].recv() else {
                break;
            };
            let embedded = embedded?;
            let finished = embedded.files;
            commit_batch(store, embedded, report, observer)?;
            committed += 1;
            observer.advance(finished);
            if cancel.load(Ordering::SeqCst) {
                break;
            }
        }
        // Ctrl-C may arrive before the first batch is taken, and then no
        // batch is committed at all.
        report.interrupted = committed < batches.len();
        Ok::<(), PipelineError>(())
    });
    report.decoded = decoded.load(Ordering::Relaxed);
    result
}

/// State shared by the worker threads.
struct WorkerContext<'a> {
    batches: &'a [&'a [ToEmbed]],
    decode: &'a DecodeOptions,
    preprocessing: &'a Preprocessing,
    observer: &'a dyn IndexObserver,
    cancel: &'a AtomicBool,
    decoded: &'a AtomicUsize,
    /// The model, for workers that load their own session.
    spec: &'a EmbedderSpec,
}

/// Decodes and embeds every `workers`-th batch, starting at `worker`, and
/// sends each result on `sender`. Stops at Ctrl-C, when the receiver is
/// gone, or after sending a model error. The first worker gets the session
/// loaded for the run in `loaded`, and the others load their own from
/// `context.spec`, in parallel.
fn run_worker(
    context: &WorkerContext,
    loaded: Option<Embedder>,
    worker: usize,
    workers: usize,
    sender: &SyncSender<Result<Embedded, ModelError>>,
) {
    let loaded = match loaded {
        Some(embedder) => Ok(embedder),
        None => context.spec.load(1),
    };
    let mut embedder = match loaded {
        Ok(embedder) => embedder,
        Err(error) => {
            // The main thread reports the error. When it has stopped
            // already, only this line records it.
            tracing::debug!("index worker {worker}: cannot load the model: {error}");
            let _ = sender.send(Err(error));
            return;
        }
    };
    // Files are preprocessed straight into this buffer, one input tensor
    // after the other, and every batch reuses it. A fresh buffer per file
    // or batch cost measurable time in zeroing, copying and page faults.
    let tensor_len = context.preprocessing.tensor_len();
    let mut tensors: Vec<f32> = Vec::new();
    for batch in context.batches.iter().skip(worker).step_by(workers) {
        if context.cancel.load(Ordering::SeqCst) {
            break;
        }
        context.decoded.fetch_add(batch.len(), Ordering::Relaxed);
        tensors.resize(batch.len() * tensor_len, 0.0);
        let mut filled = 0;
        let mut results = Vec::with_capacity(batch.len());
        for item in batch.iter() {
            let slot = &mut tensors[filled * tensor_len..(filled + 1) * tensor_len];
            let result = prepare_one(
                item,
                context.decode,
                context.preprocessing,
                context.observer,
                slot,
            );
            filled += usize::from(result.is_ok());
            results.push(result);
        }
        let embedded = embed_batch(
            &mut embedder,
            batch,
            results,
            &tensors[..filled * tensor_len],
        );
        let failed = embedded.is_err();
        if sender.send(embedded).is_err() || failed {
            break;
        }
    }
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

/// Decodes one file and writes its input tensor into `tensor`, which is
/// left partly written when preprocessing fails.
fn prepare_one(
    item: &ToEmbed,
    options: &DecodeOptions,
    preprocessing: &Preprocessing,
    observer: &dyn IndexObserver,
    tensor: &mut [f32],
) -> Result<Prepared, Failure> {
    let candidate = &item.candidate;
    let decode_failure = |reason: String| Failure {
        path: candidate.path.clone(),
        stage: Stage::Decode,
        reason: one_line(&reason),
    };
    let bytes = read_file(&candidate.path, options).map_err(|error| {
        // Reported as the plan reports a file it cannot open, because the
        // plan opens but does not read files it leaves unhashed.
        let reason = match &error {
            DecodeError::Io { source, .. } => crate::plan::read_reason(source),
            _ => error.reason(),
        };
        Failure {
            path: candidate.path.clone(),
            stage: Stage::Read,
            reason,
        }
    })?;
    let fingerprint = match item.fingerprint {
        Some(fingerprint) => fingerprint,
        None => *blake3::hash(&bytes).as_bytes(),
    };
    // The image crate reports some allocation failures by panicking; one
    // such file must not end the run.
    let decoded = std::panic::catch_unwind(|| decode_bytes(&candidate.path, &bytes, options))
        .map_err(|panic| decode_failure(format!("decoder failed: {}", panic_message(&panic))))?
        .map_err(|error| decode_failure(error.reason()))?;
    for warning in &decoded.warnings {
        observer.warning(&candidate.path, warning);
    }
    preprocessing
        .fill_tensor(&decoded.pixels, tensor)
        .map_err(|error| Failure {
            path: candidate.path.clone(),
            stage: Stage::Preprocess,
            reason: error.to_string(),
        })?;
    Ok(Prepared {
        item: item.clone(),
        fingerprint,
        width: decoded.width,
        height: decoded.height,
        format: decoded.format,
        animated: decoded.animated,
    })
}

/// One batch after inference: the files to insert, with their vectors, and
/// the files that failed.
struct Embedded {
    /// Number of files in the batch, failed ones included.
    files: usize,
    images: Vec<NewImage>,
    /// Files indexed before with other content.
    changed: usize,
    failures: Vec<Failure>,
    /// Paths whose old rows must go because their new content failed: the
    /// stored vectors no longer match the files.
    stale: Vec<PathBuf>,
}

/// Embeds the prepared files of one batch, whose input tensors `tensors`
/// holds back to back in the order of `results`. Each vector stays paired
/// with the file it came from because rows and files are collected
/// together.
fn embed_batch(
    embedder: &mut Embedder,
    batch: &[ToEmbed],
    results: Vec<Result<Prepared, Failure>>,
    tensors: &[f32],
) -> Result<Embedded, ModelError> {
    let replaced: HashSet<&PathBuf> = batch
        .iter()
        .filter(|item| item.replaces)
        .map(|item| &item.candidate.path)
        .collect();
    let mut prepared = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    for item in results {
        match item {
            Ok(item) => prepared.push(item),
            Err(failure) => {
                if replaced.contains(&failure.path) {
                    stale.push(failure.path.clone());
                }
                failures.push(failure);
            }
        }
    }
    let vectors = embedder.embed(tensors, prepared.len())?;
    let changed = prepared.iter().filter(|p| p.item.replaces).count();
    let images = prepared
        .into_iter()
        .zip(vectors)
        .map(|(prepared, vector)| NewImage {
            path: prepared.item.candidate.path,
            state: prepared.item.candidate.state,
            fingerprint: Some(prepared.fingerprint),
            width: prepared.width,
            height: prepared.height,
            format: prepared.format,
            animated: prepared.animated,
            vector,
        })
        .collect();
    Ok(Embedded {
        files: batch.len(),
        images,
        changed,
        failures,
        stale,
    })
}

/// Commits one embedded batch in one transaction and reports its failed
/// files.
fn commit_batch(
    store: &mut Store,
    batch: Embedded,
    report: &mut IndexReport,
    observer: &dyn IndexObserver,
) -> Result<(), PipelineError> {
    for failure in batch.failures {
        observer.failed(&failure);
        report.failures.push(failure);
    }
    if !batch.stale.is_empty() {
        store.delete_paths(&batch.stale)?;
        report.stale_removed += batch.stale.len();
    }
    if batch.images.is_empty() {
        return Ok(());
    }
    store.insert_images(&batch.images)?;
    report.indexed += batch.images.len();
    report.indexed_changed += batch.changed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSource;

    /// Observer that sets the cancel flag when the decoding starts, as a
    /// Ctrl-C right after planning does.
    struct CancelAtStart<'a>(&'a AtomicBool);

    impl IndexObserver for CancelAtStart<'_> {
        fn start(&self, _to_process: usize) {
            self.0.store(true, Ordering::SeqCst);
        }
        fn advance(&self, _files: usize) {}
        fn failed(&self, _failure: &Failure) {}
        fn warning(&self, _path: &std::path::Path, _message: &str) {}
    }

    #[test]
    fn cancel_before_first_batch_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        for number in 0..3u8 {
            let picture = image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([x as u8 * 4, y as u8 * 5, number * 60])
            });
            picture
                .save(dir.path().join(format!("{number}.jpg")))
                .unwrap();
        }
        let mut store = Store::open_in_memory().unwrap();
        let embedder = Embedder::load(&ModelSource::Default, 1).unwrap();
        store.bind_model(embedder.identity()).unwrap();
        let settings = IndexSettings {
            batch_size: 1,
            workers: 2,
            decode: DecodeOptions::default(),
            scan: ScanOptions::default(),
            dry_run: false,
        };
        let cancel = AtomicBool::new(false);

        let report = index_roots(
            &mut store,
            embedder,
            &[dir.path().to_path_buf()],
            &settings,
            &CancelAtStart(&cancel),
            &cancel,
        )
        .unwrap();

        assert!(report.interrupted);
        assert_eq!(report.scanned, 3);
        assert_eq!(report.indexed, 0);
        assert_eq!(store.image_count().unwrap(), 0);
    }
}

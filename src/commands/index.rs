//! `imgsim index`: bring the database up to date with folders, then the
//! HNSW files with the database.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::Serialize;

use super::progress::TerminalProgress;
use crate::ann::AnnParams;
use crate::ann_cache::{self, Freshness};
use crate::cli::{GlobalArgs, IndexArgs};
use crate::decode::DecodeOptions;
use crate::exit::Status;
use crate::paths::{display_path, JsonPath};
use crate::pipeline::{index_roots, Failure, IndexObserver, IndexReport, IndexSettings, Stage};
use crate::scan::ScanOptions;
use crate::store::{lock_database, LockError, OpenMode, Store, Wait};

pub fn run(global: &GlobalArgs, args: &IndexArgs) -> anyhow::Result<Status> {
    let database = global.database_path()?;
    // A dry run takes no lock and creates nothing: it reads an existing
    // database, or plans against an empty one in memory.
    // `--wait 5 DIR` takes 5 as a folder and waits without limit, which a
    // cron job written that way would not expect.
    if let (Some(None), Some(first)) = (args.wait, args.paths.first()) {
        let text = first.to_string_lossy();
        if text.parse::<u64>().is_ok() && !first.exists() {
            eprintln!(
                "error: {text}: no such file or folder; to wait at most {text} seconds, \
                 write --wait={text}"
            );
            return Ok(Status::Usage);
        }
    }
    let _lock = if args.dry_run {
        None
    } else {
        let wait = match args.wait {
            None => Wait::No,
            Some(None) => Wait::Forever,
            Some(Some(seconds)) => Wait::AtMost(std::time::Duration::from_secs(seconds)),
        };
        match lock_database(&database, wait) {
            Ok(lock) => Some(lock),
            Err(error @ (LockError::Busy { .. } | LockError::TimedOut { .. })) => {
                eprintln!("error: {error}");
                return Ok(Status::Busy);
            }
            Err(error) => return Err(error.into()),
        }
    };
    // Opened before the database, so that an invalid path leaves no empty
    // database behind.
    let failure_log = match &args.failures {
        Some(path) => Some(FailureLog::create(path)?),
        None => None,
    };
    // Installed before the database is created, so that Ctrl-C during
    // start-up stops the run at its first check instead of killing the
    // process halfway through creating the schema.
    let cancel = install_interrupt_handler()?;
    super::configure_threads(global);
    // This one-thread session checks the model and the database, then
    // serves the first worker of the run.
    let embedder = super::load_embedder(global, 1)?;
    let identity = embedder.identity().clone();
    if cancel.load(Ordering::SeqCst) {
        // Ctrl-C came while the model loaded, so the run stops before it
        // creates or changes the database.
        let report = IndexReport {
            interrupted: true,
            ..IndexReport::default()
        };
        if let Some(log) = &failure_log {
            log.finish()?;
        }
        print_summary(&report, stored_image_count(&database), args)?;
        return Ok(exit_status(&report));
    }
    let mut store = if !args.dry_run {
        let mut store = Store::open(&database, OpenMode::CreateIfMissing)?;
        store.bind_model(&identity)?;
        store
    } else if database.exists() {
        let store = Store::open(&database, OpenMode::ReadOnly)?;
        store.check_model(&identity)?;
        store
    } else {
        Store::open_in_memory()?
    };

    let settings = IndexSettings {
        batch_size: args.batch_size,
        workers: global.thread_count(),
        decode: DecodeOptions {
            max_pixels: args.max_pixels,
            reduce_to: None,
        },
        scan: ScanOptions {
            follow_links: args.follow_links,
        },
        dry_run: args.dry_run,
    };
    let progress = TerminalProgress::new(global.quiet);
    let observer = Observer {
        progress: &progress,
        failure_log: failure_log.as_ref(),
    };
    let report = index_roots(
        &mut store,
        embedder,
        &args.paths,
        &settings,
        &observer,
        &cancel,
    );
    progress.finish();
    let report = report.with_context(|| format!("indexing into {} failed", database.display()))?;
    if let Some(log) = &failure_log {
        log.finish()?;
    }

    if !report.interrupted && !args.dry_run {
        let params = AnnParams {
            max_connections: args.hnsw.max_connections,
            ef_construction: args.hnsw.ef_construction,
            ..AnnParams::default()
        };
        let freshness = ann_cache::refresh(&mut store, identity.dimension, &params)?;
        if let Freshness::Rebuilt { reason } = freshness {
            tracing::debug!("HNSW index rebuilt: {reason}");
        }
    }
    let total = store.image_count()?;
    print_summary(&report, total, args)?;
    Ok(exit_status(&report))
}

/// Returns the number of images in the database at `path`, 0 when it does
/// not exist or cannot be read.
fn stored_image_count(path: &Path) -> u64 {
    if !path.exists() {
        return 0;
    }
    Store::open(path, OpenMode::ReadOnly)
        .and_then(|store| store.image_count())
        .unwrap_or(0)
}

fn exit_status(report: &IndexReport) -> Status {
    // An interrupted scan may stop before it has examined any root.
    if report.interrupted {
        Status::Interrupted
    } else if report.readable_roots == 0 {
        eprintln!("error: none of the given paths exists or can be read; nothing was indexed");
        Status::Error
    } else if !report.failures.is_empty() {
        Status::SomeFilesFailed
    } else {
        Status::Success
    }
}

/// Sets the returned flag on the first Ctrl-C so the run stops after the
/// current batch. A second Ctrl-C ends the process at once, which is safe
/// because every committed batch is durable.
fn install_interrupt_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // exit() would run ONNX Runtime's C++ static destructors under a
            // thread still loading a model, which crashed the process. SQLite
            // recovers from _exit as from a crash.
            // SAFETY: _exit ends the process and touches no Rust memory.
            unsafe { libc::_exit(i32::from(Status::Interrupted.code())) };
        }
        eprintln!("interrupted: stopping at the next safe point (Ctrl-C again to stop now)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(cancel)
}

/// Forwards progress to the terminal and failures to the `--failures` file.
struct Observer<'a> {
    progress: &'a TerminalProgress,
    failure_log: Option<&'a FailureLog>,
}

impl IndexObserver for Observer<'_> {
    fn start(&self, to_process: usize) {
        self.progress.start(to_process);
    }

    fn advance(&self, files: usize) {
        self.progress.advance(files);
    }

    fn failed(&self, failure: &Failure) {
        self.progress.failed(failure);
        if let Some(log) = self.failure_log {
            log.write(failure);
        }
    }

    fn warning(&self, path: &Path, message: &str) {
        self.progress.warning(path, message);
    }
}

/// The `--failures` file: one JSON object per line, written and flushed as
/// each failure happens, so it is complete up to the last failure even if
/// the run is killed.
struct FailureLog {
    writer: Mutex<BufWriter<File>>,
    path: std::path::PathBuf,
    error: Mutex<Option<std::io::Error>>,
}

#[derive(Serialize)]
struct FailureLine<'a> {
    #[serde(flatten)]
    path: JsonPath,
    stage: Stage,
    reason: &'a str,
}

impl FailureLog {
    fn create(path: &Path) -> anyhow::Result<FailureLog> {
        let file = File::create(path)
            .with_context(|| format!("{}: cannot create the failures file", path.display()))?;
        Ok(FailureLog {
            writer: Mutex::new(BufWriter::new(file)),
            path: path.to_path_buf(),
            error: Mutex::new(None),
        })
    }

    fn write(&self, failure: &Failure) {
        let line = FailureLine {
            path: JsonPath::new(&failure.path),
            stage: failure.stage,
            reason: &failure.reason,
        };
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let result = serde_json::to_writer(&mut *writer, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| writer.write_all(b"\n"))
            .and_then(|()| writer.flush());
        if let Err(error) = result {
            self.error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(error);
        }
    }

    /// Reports the first write error, if any.
    fn finish(&self) -> anyhow::Result<()> {
        match self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(error) => Err(error).with_context(|| {
                format!("{}: cannot write the failures file", self.path.display())
            }),
            None => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    dry_run: bool,
    scanned: usize,
    indexed: usize,
    added: usize,
    changed: usize,
    moved: usize,
    copied: usize,
    refreshed: usize,
    removed: usize,
    unchanged: usize,
    decoded: usize,
    failed: usize,
    interrupted: bool,
    seconds: f64,
    images_per_second: f64,
    total_in_database: u64,
    failures: Vec<FailureLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    planned: Option<JsonPlan>,
}

/// The paths behind each count of a dry run.
#[derive(Serialize)]
struct JsonPlan {
    added: Vec<JsonPath>,
    changed: Vec<JsonPath>,
    moved: Vec<JsonMove>,
    copied: Vec<JsonMove>,
    refreshed: Vec<JsonPath>,
    removed: Vec<JsonPath>,
}

#[derive(Serialize)]
struct JsonMove {
    from: JsonPath,
    to: JsonPath,
}

fn json_plan(report: &IndexReport) -> JsonPlan {
    let plan = &report.plan;
    let embed_paths = |replaces: bool| {
        plan.to_embed
            .iter()
            .filter(|item| item.replaces == replaces)
            .map(|item| JsonPath::new(&item.candidate.path))
            .collect()
    };
    let pairs = |pairs: &[(std::path::PathBuf, std::path::PathBuf)]| {
        pairs
            .iter()
            .map(|(from, to)| JsonMove {
                from: JsonPath::new(from),
                to: JsonPath::new(to),
            })
            .collect()
    };
    JsonPlan {
        added: embed_paths(false),
        changed: embed_paths(true),
        moved: pairs(&plan.moved),
        copied: pairs(&plan.copied),
        refreshed: plan.refreshed.iter().map(|p| JsonPath::new(p)).collect(),
        removed: plan.removed.iter().map(|p| JsonPath::new(p)).collect(),
    }
}

fn print_summary(report: &IndexReport, total: u64, args: &IndexArgs) -> anyhow::Result<()> {
    let plan = &report.plan;
    let images_per_second = if report.seconds > 0.0 {
        report.indexed as f64 / report.seconds
    } else {
        0.0
    };
    if args.json {
        let summary = JsonSummary {
            dry_run: args.dry_run,
            scanned: report.scanned,
            indexed: report.indexed,
            added: added(report, args.dry_run),
            changed: changed(report, args.dry_run),
            moved: plan.moved.len(),
            copied: plan.copied.len(),
            refreshed: plan.refreshed.len(),
            removed: plan.removed.len() + report.stale_removed,
            unchanged: plan.unchanged,
            decoded: report.decoded,
            failed: report.failures.len(),
            interrupted: report.interrupted,
            seconds: round3(report.seconds),
            images_per_second: round3(images_per_second),
            total_in_database: total,
            failures: report
                .failures
                .iter()
                .map(|failure| FailureLine {
                    path: JsonPath::new(&failure.path),
                    stage: failure.stage,
                    reason: &failure.reason,
                })
                .collect(),
            planned: args.dry_run.then(|| json_plan(report)),
        };
        outln!("{}", serde_json::to_string(&summary)?)?;
        return Ok(());
    }
    if args.dry_run {
        return print_dry_run(report);
    }
    if !report.failures.is_empty() {
        eprintln!(
            "{} could not be indexed:",
            count(report.failures.len(), "file", "files")
        );
        for failure in &report.failures {
            eprintln!("  {}: {}", display_path(&failure.path), failure.reason);
        }
    }
    let interrupted = if report.interrupted {
        "; interrupted"
    } else {
        ""
    };
    outln!(
        "indexed {} (added {}, changed {}), moved {}, copied {}, removed {}, unchanged {}, \
         failed {}{interrupted}; {:.1} s, {:.1} images/s; {} in the database",
        report.indexed,
        added(report, false),
        changed(report, false),
        plan.moved.len(),
        plan.copied.len(),
        plan.removed.len() + report.stale_removed,
        plan.unchanged + plan.refreshed.len(),
        report.failures.len(),
        report.seconds,
        images_per_second,
        count(total as usize, "image", "images")
    )?;
    Ok(())
}

fn print_dry_run(report: &IndexReport) -> anyhow::Result<()> {
    let plan = &report.plan;
    for item in &plan.to_embed {
        let verb = if item.replaces { "change" } else { "add" };
        outln!("{verb} {}", display_path(&item.candidate.path))?;
    }
    for (from, to) in &plan.moved {
        outln!("move {} -> {}", display_path(from), display_path(to))?;
    }
    for (from, to) in &plan.copied {
        outln!("copy {} -> {}", display_path(from), display_path(to))?;
    }
    for path in &plan.removed {
        outln!("remove {}", display_path(path))?;
    }
    for failure in &report.failures {
        eprintln!("{}: {}", display_path(&failure.path), failure.reason);
    }
    outln!(
        "dry run: would add {}, change {}, move {}, copy {}, remove {}; unchanged {}, failed {}",
        plan.added(),
        plan.changed(),
        plan.moved.len(),
        plan.copied.len(),
        plan.removed.len(),
        plan.unchanged + plan.refreshed.len(),
        report.failures.len()
    )?;
    Ok(())
}

/// Files added: embedded in a run, planned in a dry run.
fn added(report: &IndexReport, dry_run: bool) -> usize {
    if dry_run {
        report.plan.added()
    } else {
        report.indexed - report.indexed_changed
    }
}

/// Files whose new content replaced an old row: embedded in a run, planned
/// in a dry run.
fn changed(report: &IndexReport, dry_run: bool) -> usize {
    if dry_run {
        report.plan.changed()
    } else {
        report.indexed_changed
    }
}

/// "1 file", "2 files".
fn count(number: usize, singular: &str, plural: &str) -> String {
    format!("{number} {}", if number == 1 { singular } else { plural })
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_scan_exits_as_interrupted() {
        let report = IndexReport {
            interrupted: true,
            readable_roots: 0,
            ..IndexReport::default()
        };
        assert_eq!(exit_status(&report), Status::Interrupted);
    }

    #[test]
    fn no_readable_root_is_an_error() {
        let report = IndexReport::default();
        assert_eq!(exit_status(&report), Status::Error);
    }
}

//! `imgsim index`: index folders into the database and refresh the HNSW
//! files.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::progress::TerminalProgress;
use crate::ann::AnnParams;
use crate::ann_cache::{self, Freshness};
use crate::cli::{GlobalArgs, IndexArgs};
use crate::decode::DecodeOptions;
use crate::exit::Status;
use crate::paths::{display_path, non_utf8_hex};
use crate::pipeline::{index_roots, IndexReport, IndexSettings, Stage};
use crate::store::{OpenMode, Store};

pub fn run(global: &GlobalArgs, args: &IndexArgs) -> anyhow::Result<Status> {
    let database = global.database_path()?;
    super::configure_threads(global);
    let mut embedder = super::load_embedder(global)?;
    let mut store = Store::open(&database, OpenMode::CreateIfMissing)?;
    store.bind_model(embedder.identity())?;

    let cancel = install_interrupt_handler()?;
    let settings = IndexSettings {
        batch_size: args.batch_size,
        decode: DecodeOptions {
            max_pixels: args.max_pixels,
        },
    };
    let progress = TerminalProgress::new(global.quiet);
    let report = index_roots(
        &mut store,
        &mut embedder,
        &args.paths,
        &settings,
        &progress,
        &cancel,
    );
    progress.finish();
    let report = report.with_context(|| format!("indexing into {} failed", database.display()))?;

    if !report.interrupted {
        let params = AnnParams {
            max_connections: args.hnsw.max_connections,
            ef_construction: args.hnsw.ef_construction,
            ..AnnParams::default()
        };
        let freshness = ann_cache::refresh(&mut store, embedder.identity().dimension, &params)?;
        if let Freshness::Rebuilt { reason } = freshness {
            tracing::debug!("HNSW index rebuilt: {reason}");
        }
    }
    let total = store.image_count()?;
    print_summary(&report, total, args.json)?;
    Ok(exit_status(&report))
}

fn exit_status(report: &IndexReport) -> Status {
    if report.interrupted {
        Status::Interrupted
    } else if !report.failures.is_empty() {
        Status::SomeFilesFailed
    } else {
        Status::Success
    }
}

/// Sets the returned flag on the first Ctrl-C so the run stops after the
/// current batch; a second Ctrl-C ends the process at once, which is safe
/// because every committed batch is durable.
fn install_interrupt_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(Status::Interrupted.code()));
        }
        eprintln!("interrupted: stopping after the current batch (Ctrl-C again to stop now)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(cancel)
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    scanned: usize,
    indexed: usize,
    unchanged: usize,
    failed: usize,
    interrupted: bool,
    seconds: f64,
    images_per_second: f64,
    total_in_database: u64,
    failures: Vec<JsonFailure<'a>>,
}

#[derive(Serialize)]
struct JsonFailure<'a> {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    stage: Stage,
    reason: &'a str,
}

fn print_summary(report: &IndexReport, total: u64, json: bool) -> anyhow::Result<()> {
    let images_per_second = if report.seconds > 0.0 {
        report.indexed as f64 / report.seconds
    } else {
        0.0
    };
    if json {
        let summary = JsonSummary {
            scanned: report.scanned,
            indexed: report.indexed,
            unchanged: report.unchanged,
            failed: report.failures.len(),
            interrupted: report.interrupted,
            seconds: round3(report.seconds),
            images_per_second: round3(images_per_second),
            total_in_database: total,
            failures: report
                .failures
                .iter()
                .map(|failure| JsonFailure {
                    path: failure.path.to_string_lossy().into_owned(),
                    path_hex: non_utf8_hex(&failure.path),
                    stage: failure.stage,
                    reason: &failure.reason,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    if !report.failures.is_empty() {
        eprintln!("{} files could not be indexed:", report.failures.len());
        for failure in &report.failures {
            eprintln!("  {}: {}", display_path(&failure.path), failure.reason);
        }
    }
    println!(
        "indexed {}, unchanged {}, failed {}{} in {:.1} s ({:.1} images/s); {} images in the database",
        report.indexed,
        report.unchanged,
        report.failures.len(),
        if report.interrupted { ", interrupted" } else { "" },
        report.seconds,
        images_per_second,
        total
    );
    Ok(())
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

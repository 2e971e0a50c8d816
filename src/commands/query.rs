//! `imgsim query`: the indexed images most similar to one image file.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::ann::AnnParams;
use crate::ann_cache;
use crate::cli::{GlobalArgs, QueryArgs};
use crate::decode::{decode_file, DecodeOptions};
use crate::dupes;
use crate::dupes::html::{render_page, Card, Section};
use crate::dupes::pixels::{residual, Signature, SIGNATURE_SIDE};
use crate::exit::Status;
use crate::paths::{display_path, non_utf8_hex};
use crate::store::{ImageRecord, OpenMode, Store};

/// One ranked result.
#[derive(Debug, Serialize)]
pub struct QueryResult {
    pub rank: usize,
    pub similarity: f32,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub width: u32,
    pub height: u32,
    pub file_size: u64,
    pub format: String,
    pub animated: bool,
    /// Pixel difference at the query's resolution, for results re-ranked
    /// because the query is much smaller than they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_residual: Option<f32>,
    #[serde(skip)]
    pub raw_path: PathBuf,
}

#[derive(Debug, Serialize)]
struct QueryOutput<'a> {
    query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_hex: Option<String>,
    model: &'a str,
    results: &'a [QueryResult],
}

pub fn run(global: &GlobalArgs, args: &QueryArgs) -> anyhow::Result<Status> {
    if let Some(html) = &args.html {
        super::check_output_path(html)?;
    }
    let database = global.database_path()?;
    super::configure_threads(global);
    let mut store = match Store::open(&database, OpenMode::MustExist) {
        Err(error) if error.is_read_only() => {
            tracing::debug!("opening the database read-only: {error}");
            Store::open(&database, OpenMode::ReadOnly)?
        }
        result => result?,
    };
    let mut embedder = super::load_embedder(global, global.thread_count())?;
    store.check_model(embedder.identity())?;

    let input = embedder.preprocessing();
    let options = DecodeOptions::for_side(args.max_pixels, input.width.min(input.height));
    let decoded = decode_file(&args.image, &options)?;
    if !global.quiet {
        for warning in &decoded.warnings {
            eprintln!("warning: {}: {warning}", display_path(&args.image));
        }
    }
    let preprocessing = embedder.preprocessing();
    let mut tensor = vec![0.0; preprocessing.tensor_len()];
    preprocessing
        .fill_tensor(&decoded.pixels, &mut tensor)
        .with_context(|| format!("{}: cannot preprocess", display_path(&args.image)))?;
    let vector = embedder
        .embed(&tensor, 1)?
        .pop()
        .context("the model returned no vector")?;

    // A rebuild keeps the parameters the graph was last built with by
    // `index`, so a query never changes them.
    let params = AnnParams {
        ef_search: args.ef_search,
        ..ann_cache::saved_build_params(&store)?
    };
    let live = ann_cache::load_current(&mut store, embedder.identity().dimension, &params)?;
    let requested = args.k.max(RERANK_CANDIDATES);
    let neighbours = live.search(&vector, requested, params.ef_search.max(requested));
    // Freeing a large graph takes longer than the search; the process is
    // about to end, which frees it at once.
    std::mem::forget(live);
    let ids: Vec<i64> = neighbours.iter().map(|n| n.id).collect();
    let records = store.images_by_ids(&ids)?;
    let found: Vec<(f32, &ImageRecord)> = neighbours
        .iter()
        .filter_map(|n| records.get(&n.id).map(|record| (n.similarity, record)))
        .collect();
    let results: Vec<QueryResult> = rerank_small_query(&decoded.pixels, found, &options)
        .into_iter()
        .take(args.k)
        .enumerate()
        .map(|(position, (similarity, residual, record))| {
            let mut result = to_result(position + 1, similarity, record);
            result.pixel_residual = residual;
            result
        })
        .collect();

    if args.json {
        let query_path = std::path::absolute(&args.image).unwrap_or_else(|_| args.image.clone());
        let output = QueryOutput {
            query: query_path.to_string_lossy().into_owned(),
            query_hex: non_utf8_hex(&query_path),
            model: &embedder.identity().name,
            results: &results,
        };
        outln!("{}", serde_json::to_string_pretty(&output)?)?;
    } else if results.is_empty() {
        eprintln!(
            "no indexed images in {}; run `imgsim index DIR` first",
            database.display()
        );
    } else {
        for result in &results {
            outln!(
                "{:>3}  {:.4}  {}",
                result.rank,
                result.similarity,
                display_path(&result.raw_path)
            )?;
        }
    }
    if let Some(html) = &args.html {
        write_html(html, &args.image, &results, &options)?;
        if !global.quiet {
            eprintln!("wrote {}", display_path(html));
        }
    }
    Ok(Status::Success)
}

/// Candidates looked at when re-ranking: the true photo of a thumbnail is
/// within the first two by embedding on the sample photos.
const RERANK_CANDIDATES: usize = 20;

/// Re-ranks results when the query is much smaller than some of them (half
/// their long side or less): a thumbnail embeds differently from its photo,
/// so candidates whose pixels match the query at the query's resolution
/// come first, by pixel residual, and the rest keep their order. Returns
/// (similarity, residual, record) triples.
fn rerank_small_query<'a>(
    query: &image::RgbImage,
    found: Vec<(f32, &'a ImageRecord)>,
    options: &DecodeOptions,
) -> Vec<(f32, Option<f32>, &'a ImageRecord)> {
    use rayon::prelude::*;
    let query_side = query.width().max(query.height());
    let much_larger = |record: &ImageRecord| record.width.max(record.height) >= 2 * query_side;
    if !found.iter().any(|(_, record)| much_larger(record)) {
        return found.into_iter().map(|(s, r)| (s, None, r)).collect();
    }
    let query_signature = Signature::of(query);
    let options = DecodeOptions::for_side(options.max_pixels, SIGNATURE_SIDE);
    let limit = dupes::thumbnail_residual_limit(dupes::DEFAULT_MAX_RESIDUAL);
    let scored: Vec<(f32, Option<f32>, &ImageRecord)> = found
        .into_par_iter()
        .map(|(similarity, record)| {
            let residual = decode_file(&record.path, &options)
                .ok()
                .and_then(|decoded| residual(&query_signature, &Signature::of(&decoded.pixels)))
                .filter(|&r| r <= limit);
            (similarity, residual, record)
        })
        .collect();
    let (mut matched, rest): (Vec<_>, Vec<_>) =
        scored.into_iter().partition(|(_, r, _)| r.is_some());
    matched.sort_by(|a, b| {
        a.1.unwrap_or(f32::INFINITY)
            .total_cmp(&b.1.unwrap_or(f32::INFINITY))
    });
    matched.extend(rest);
    matched
}

fn write_html(
    path: &std::path::Path,
    query: &std::path::Path,
    results: &[QueryResult],
    options: &DecodeOptions,
) -> anyhow::Result<()> {
    let query_card = Card {
        path: std::path::absolute(query).unwrap_or_else(|_| query.to_path_buf()),
        badge: "query".to_string(),
        details: Vec::new(),
        attributes: vec![("query", "true".to_string())],
    };
    let cards = results
        .iter()
        .map(|result| Card {
            path: result.raw_path.clone(),
            badge: format!("#{}", result.rank),
            details: vec![
                format!("similarity {:.4}", result.similarity),
                format!(
                    "{}x{}, {} bytes, {}",
                    result.width, result.height, result.file_size, result.format
                ),
            ],
            attributes: vec![("rank", result.rank.to_string())],
        })
        .collect();
    let sections = [
        Section {
            title: "Query".to_string(),
            class: "query",
            attributes: Vec::new(),
            cards: vec![query_card],
        },
        Section {
            title: format!("{} most similar images", results.len()),
            class: "results",
            attributes: Vec::new(),
            cards,
        },
    ];
    let summary = format!("Results for {}", display_path(query));
    let page = render_page("Similar images", &summary, &sections, options);
    super::dupes::write_atomically(path, page.as_bytes())
}

fn to_result(rank: usize, similarity: f32, record: &ImageRecord) -> QueryResult {
    QueryResult {
        rank,
        similarity,
        path: record.path.to_string_lossy().into_owned(),
        path_hex: non_utf8_hex(&record.path),
        width: record.width,
        height: record.height,
        file_size: record.file_size,
        format: record.format.clone(),
        animated: record.animated,
        pixel_residual: None,
        raw_path: record.path.clone(),
    }
}

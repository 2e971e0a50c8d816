//! `imgsim query`: the indexed images most similar to one image file.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::ann::AnnParams;
use crate::ann_cache;
use crate::cli::{GlobalArgs, QueryArgs};
use crate::decode::{decode_file, DecodeOptions};
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
    let database = global.database_path()?;
    super::configure_threads(global);
    let mut store = match Store::open(&database, OpenMode::MustExist) {
        Err(error) if error.is_read_only() => {
            tracing::debug!("opening the database read-only: {error}");
            Store::open(&database, OpenMode::ReadOnly)?
        }
        result => result?,
    };
    let mut embedder = super::load_embedder(global)?;
    store.check_model(embedder.identity())?;

    let options = DecodeOptions {
        max_pixels: args.max_pixels,
    };
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
    let neighbours = live
        .index
        .search(&vector, args.k, params.ef_search, &|id| live.is_live(id));
    let ids: Vec<i64> = neighbours.iter().map(|n| n.id).collect();
    let records = store.images_by_ids(&ids)?;
    let results: Vec<QueryResult> = neighbours
        .iter()
        .filter_map(|n| records.get(&n.id).map(|record| (n.similarity, record)))
        .enumerate()
        .map(|(position, (similarity, record))| to_result(position + 1, similarity, record))
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
    Ok(Status::Success)
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
        raw_path: record.path.clone(),
    }
}

//! `imgsim embed`: feature vectors of images written to a file, one row per
//! image, streamed batch by batch so memory does not grow with the number
//! of images.

use std::path::Path;

use rayon::prelude::*;

use super::embed_output::{format_from_extension, RowWriter};
use crate::cli::{EmbedArgs, GlobalArgs};
use crate::decode::{decode_file, DecodeOptions};
use crate::exit::Status;
use crate::paths::display_path;
use crate::preprocess::Preprocessing;
use crate::scan::{scan_roots, ScanOptions};

pub fn run(global: &GlobalArgs, args: &EmbedArgs) -> anyhow::Result<Status> {
    super::check_output_path(&args.output)?;
    super::configure_threads(global);
    let mut embedder = super::load_embedder(global, global.thread_count())?;
    let dimension = embedder.identity().dimension;
    let format = args
        .format
        .unwrap_or_else(|| format_from_extension(&args.output));

    let scan = scan_roots(&args.paths, &ScanOptions::default());
    let mut failed = scan.failures.len();
    for failure in &scan.failures {
        eprintln!("{}: {}", display_path(&failure.path), failure.reason);
    }
    let preprocessing = embedder.preprocessing().clone();
    let options = DecodeOptions::for_side(
        args.max_pixels,
        preprocessing.width.min(preprocessing.height),
    );
    let mut writer = RowWriter::create(&args.output, format, dimension)?;
    for chunk in scan.candidates.chunks(args.batch_size.max(1)) {
        let prepared: Vec<_> = chunk
            .par_iter()
            .map(|candidate| prepare(&candidate.path, &options, &preprocessing))
            .collect();
        let mut paths = Vec::with_capacity(chunk.len());
        let mut tensors = Vec::with_capacity(chunk.len() * preprocessing.tensor_len());
        for (candidate, result) in chunk.iter().zip(prepared) {
            match result {
                Ok(tensor) => {
                    paths.push(candidate.path.clone());
                    tensors.extend_from_slice(&tensor);
                }
                Err(reason) => {
                    failed += 1;
                    eprintln!("{}: {reason}", display_path(&candidate.path));
                }
            }
        }
        let vectors = if args.normalize {
            embedder.embed(&tensors, paths.len())?
        } else {
            embedder.embed_raw(&tensors, paths.len())?
        };
        for (path, vector) in paths.iter().zip(&vectors) {
            writer.write_row(path, vector)?;
        }
    }
    let rows = writer.finish()?;
    eprintln!(
        "wrote {rows} rows of {dimension} values to {}; failed {failed}",
        display_path(&args.output)
    );
    Ok(if failed > 0 {
        Status::SomeFilesFailed
    } else {
        Status::Success
    })
}

fn prepare(
    path: &Path,
    options: &DecodeOptions,
    preprocessing: &Preprocessing,
) -> Result<Vec<f32>, String> {
    let decoded = decode_file(path, options).map_err(|error| {
        // Decoder messages may contain line breaks; a report line must not.
        error
            .reason()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })?;
    let mut tensor = vec![0.0; preprocessing.tensor_len()];
    preprocessing
        .fill_tensor(&decoded.pixels, &mut tensor)
        .map_err(|error| error.to_string())?;
    Ok(tensor)
}

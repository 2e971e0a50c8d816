//! `imgsim embed`: feature vectors of images written to a file, one row per
//! image, streamed batch by batch so memory does not grow with the number
//! of images.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::{EmbedArgs, EmbedFormat, GlobalArgs};
use crate::decode::{decode_file, DecodeOptions};
use crate::exit::Status;
use crate::paths::{display_path, JsonPath};
use crate::preprocess::Preprocessing;
use crate::scan::{scan_roots, ScanOptions};

pub fn run(global: &GlobalArgs, args: &EmbedArgs) -> anyhow::Result<Status> {
    super::configure_threads(global);
    let mut embedder = super::load_embedder(global)?;
    let dimension = embedder.identity().dimension;
    let format = args
        .format
        .unwrap_or_else(|| format_from_extension(&args.output));

    let scan = scan_roots(&args.paths, &ScanOptions::default());
    let mut failed = scan.failures.len();
    for failure in &scan.failures {
        eprintln!("{}: {}", display_path(&failure.path), failure.reason);
    }
    let options = DecodeOptions {
        max_pixels: args.max_pixels,
    };
    let preprocessing = embedder.preprocessing().clone();
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

fn format_from_extension(path: &Path) -> EmbedFormat {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => EmbedFormat::Csv,
        Some(ext) if ext.eq_ignore_ascii_case("jsonl") => EmbedFormat::Jsonl,
        _ => EmbedFormat::Npy,
    }
}

/// Bytes reserved for the `.npy` header, so it can be rewritten in place
/// with the final row count. The format recommends a multiple of 64.
const NPY_HEADER_LEN: usize = 128;

/// Writes rows as they come. Everything goes to `<output>.partial` files
/// that are renamed into place by [`RowWriter::finish`], so an interrupted
/// run never leaves a file that looks complete.
struct RowWriter {
    format: EmbedFormat,
    dimension: usize,
    rows: usize,
    output: PathBuf,
    data: BufWriter<File>,
    /// The `.rows.jsonl` file naming each row of an `.npy` output.
    row_names: Option<BufWriter<File>>,
}

#[derive(Serialize)]
struct RowName {
    row: usize,
    #[serde(flatten)]
    path: JsonPath,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    path: JsonPath,
    vector: &'a [f32],
}

impl RowWriter {
    fn create(output: &Path, format: EmbedFormat, dimension: usize) -> anyhow::Result<RowWriter> {
        let create = |path: &Path| {
            File::create(path)
                .map(BufWriter::new)
                .with_context(|| format!("{}: cannot create", path.display()))
        };
        let mut data = create(&partial(output))?;
        let row_names = match format {
            EmbedFormat::Npy => {
                data.write_all(&npy_header(0, dimension))?;
                Some(create(&partial(&rows_path(output)))?)
            }
            EmbedFormat::Csv | EmbedFormat::Jsonl => None,
        };
        Ok(RowWriter {
            format,
            dimension,
            rows: 0,
            output: output.to_path_buf(),
            data,
            row_names,
        })
    }

    fn write_row(&mut self, path: &Path, vector: &[f32]) -> anyhow::Result<()> {
        match self.format {
            EmbedFormat::Npy => {
                for value in vector {
                    self.data.write_all(&value.to_le_bytes())?;
                }
                if let Some(names) = &mut self.row_names {
                    let name = RowName {
                        row: self.rows,
                        path: JsonPath::new(path),
                    };
                    serde_json::to_writer(&mut *names, &name)?;
                    names.write_all(b"\n")?;
                }
            }
            EmbedFormat::Csv => {
                write!(self.data, "{}", csv_field(&path.to_string_lossy()))?;
                for value in vector {
                    write!(self.data, ",{value}")?;
                }
                writeln!(self.data)?;
            }
            EmbedFormat::Jsonl => {
                let row = JsonRow {
                    path: JsonPath::new(path),
                    vector,
                };
                serde_json::to_writer(&mut self.data, &row)?;
                self.data.write_all(b"\n")?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Completes the header, flushes, and renames the files into place;
    /// returns the number of rows.
    fn finish(mut self) -> anyhow::Result<usize> {
        if self.format == EmbedFormat::Npy {
            self.data.seek(SeekFrom::Start(0))?;
            self.data
                .write_all(&npy_header(self.rows, self.dimension))?;
        }
        let file = self.data.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        if let Some(names) = self.row_names {
            names
                .into_inner()
                .map_err(|error| error.into_error())?
                .sync_all()?;
            rename_into_place(&rows_path(&self.output))?;
        }
        rename_into_place(&self.output)?;
        Ok(self.rows)
    }
}

/// Returns the `.npy` version 1.0 header for a little-endian float32 array
/// of `rows` x `dimension`, padded with spaces to [`NPY_HEADER_LEN`] bytes.
fn npy_header(rows: usize, dimension: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dimension}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let text_len = NPY_HEADER_LEN - header.len() - 2;
    header.extend_from_slice(&(text_len as u16).to_le_bytes());
    let mut text = dict.into_bytes();
    text.resize(text_len - 1, b' ');
    text.push(b'\n');
    header.extend_from_slice(&text);
    header
}

fn rows_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".rows.jsonl");
    PathBuf::from(name)
}

fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

fn rename_into_place(path: &Path) -> anyhow::Result<()> {
    std::fs::rename(partial(path), path)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Quotes a CSV field when it contains a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_has_fixed_length_and_shape() {
        let header = npy_header(12345, 1280);
        assert_eq!(header.len(), NPY_HEADER_LEN);
        assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
        let text = String::from_utf8(header[10..].to_vec()).unwrap();
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (12345, 1280), }")
        );
        assert!(text.ends_with('\n'));
        assert_eq!(npy_header(0, 3).len(), npy_header(usize::MAX, 1280).len());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("/a/b.jpg"), "/a/b.jpg");
        assert_eq!(csv_field("/a,b \"c\".jpg"), "\"/a,b \"\"c\"\".jpg\"");
    }
}

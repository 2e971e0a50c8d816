//! Files `imgsim embed` writes, row by row as vectors arrive: `.npy` with a
//! `.rows.jsonl` naming the rows, `.npz` holding both arrays, CSV and JSON
//! lines.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::cli::EmbedFormat;
use crate::paths::JsonPath;

/// Returns the format an output file name implies: `.csv`, `.jsonl` and
/// `.npz` by extension, else `.npy`.
pub fn format_from_extension(path: &Path) -> EmbedFormat {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => EmbedFormat::Csv,
        Some(ext) if ext.eq_ignore_ascii_case("jsonl") => EmbedFormat::Jsonl,
        Some(ext) if ext.eq_ignore_ascii_case("npz") => EmbedFormat::Npz,
        _ => EmbedFormat::Npy,
    }
}

/// Bytes reserved for an `.npy` header, so it can be rewritten in place
/// with the final row count. The format recommends a multiple of 64.
const NPY_HEADER_LEN: usize = 128;

/// Names of the arrays in an `.npz` output, as `numpy.load` shows them.
const NPZ_FEATURES: &str = "features.npy";
const NPZ_PATHS: &str = "paths.npy";

/// Writes rows as they come. Everything goes to `.partial` files that are
/// renamed into place by [`RowWriter::finish`], so an interrupted run never
/// leaves a file that looks complete.
pub struct RowWriter {
    format: EmbedFormat,
    dimension: usize,
    rows: usize,
    output: PathBuf,
    /// The vectors: the output itself, or for `.npz` the features array
    /// that is copied into the archive at the end.
    data: BufWriter<File>,
    /// The row names: the `.rows.jsonl` file of an `.npy` output, or for
    /// `.npz` each path's code points, prefixed with their count.
    row_names: Option<BufWriter<File>>,
    /// Longest path of an `.npz` output, in code points.
    longest_path: usize,
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
    pub fn create(
        output: &Path,
        format: EmbedFormat,
        dimension: usize,
    ) -> anyhow::Result<RowWriter> {
        let mut data = create(&data_path(output, format))?;
        let row_names = match format {
            EmbedFormat::Npy | EmbedFormat::Npz => {
                data.write_all(&npy_header("<f4", &format!("({}, {dimension})", 0)))?;
                Some(create(&names_path(output, format))?)
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
            longest_path: 0,
        })
    }

    pub fn write_row(&mut self, path: &Path, vector: &[f32]) -> anyhow::Result<()> {
        match self.format {
            EmbedFormat::Npy | EmbedFormat::Npz => {
                for value in vector {
                    self.data.write_all(&value.to_le_bytes())?;
                }
                if let Some(names) = &mut self.row_names {
                    if self.format == EmbedFormat::Npy {
                        let name = RowName {
                            row: self.rows,
                            path: JsonPath::new(path),
                        };
                        serde_json::to_writer(&mut *names, &name)?;
                        names.write_all(b"\n")?;
                    } else {
                        let code_points = code_points(path.as_os_str().as_bytes());
                        self.longest_path = self.longest_path.max(code_points.len());
                        names.write_all(&(code_points.len() as u32).to_le_bytes())?;
                        for code_point in code_points {
                            names.write_all(&code_point.to_le_bytes())?;
                        }
                    }
                }
            }
            EmbedFormat::Csv => {
                write!(
                    self.data,
                    "{}",
                    csv_field(&crate::paths::display_path(path))
                )?;
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

    /// Completes the headers, flushes, and renames the files into place;
    /// returns the number of rows.
    pub fn finish(mut self) -> anyhow::Result<usize> {
        let shape = format!("({}, {})", self.rows, self.dimension);
        if matches!(self.format, EmbedFormat::Npy | EmbedFormat::Npz) {
            self.data.seek(SeekFrom::Start(0))?;
            self.data.write_all(&npy_header("<f4", &shape))?;
        }
        let file = self.data.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        let names = match self.row_names {
            Some(names) => Some(names.into_inner().map_err(|error| error.into_error())?),
            None => None,
        };
        match self.format {
            EmbedFormat::Npy => {
                names.context("row names are missing")?.sync_all()?;
                rename_into_place(&rows_path(&self.output))?;
                rename_into_place(&self.output)?;
            }
            EmbedFormat::Npz => {
                drop(names);
                write_npz(&self.output, self.rows, self.longest_path)?;
            }
            EmbedFormat::Csv | EmbedFormat::Jsonl => rename_into_place(&self.output)?,
        }
        Ok(self.rows)
    }
}

/// Assembles the `.npz` archive from the features array and the path list
/// written beside it, copying both in fixed-size pieces so memory does not
/// grow with the number of rows. Entries are stored uncompressed, as
/// `numpy.savez` does, and as ZIP64 so arrays may exceed 4 GiB.
fn write_npz(output: &Path, rows: usize, longest_path: usize) -> anyhow::Result<()> {
    let features_path = data_path(output, EmbedFormat::Npz);
    let names_path = names_path(output, EmbedFormat::Npz);
    let archive_path = partial(output);
    let archive = File::create(&archive_path)
        .with_context(|| format!("{}: cannot create", archive_path.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(archive));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);

    zip.start_file(NPZ_FEATURES, options)?;
    std::io::copy(&mut File::open(&features_path)?, &mut zip)?;

    // A fixed-width unicode array: each path's code points padded with
    // zeros to the longest path, as numpy stores '<U' strings.
    let width = longest_path.max(1);
    zip.start_file(NPZ_PATHS, options)?;
    zip.write_all(&npy_header(&format!("<U{width}"), &format!("({rows},)")))?;
    let mut names = BufReader::new(File::open(&names_path)?);
    let mut count = [0u8; 4];
    let mut row = Vec::with_capacity(width * 4);
    for _ in 0..rows {
        names.read_exact(&mut count)?;
        let length = u32::from_le_bytes(count) as usize;
        row.clear();
        row.resize(length * 4, 0);
        names.read_exact(&mut row)?;
        row.resize(width * 4, 0);
        zip.write_all(&row)?;
    }

    let archive = zip.finish()?;
    archive
        .into_inner()
        .map_err(|error| error.into_error())?
        .sync_all()?;
    std::fs::remove_file(&features_path)?;
    std::fs::remove_file(&names_path)?;
    rename_into_place(output)
}

/// Returns the code points of a path as Python's `os.fsdecode` gives them:
/// UTF-8 decoded, and each byte that is not valid UTF-8 mapped to a lone
/// surrogate U+DC80 to U+DCFF (PEP 383), so `os.fsencode` restores the
/// exact bytes.
fn code_points(bytes: &[u8]) -> Vec<u32> {
    let mut points = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        points.extend(chunk.valid().chars().map(u32::from));
        points.extend(chunk.invalid().iter().map(|&byte| 0xDC00 + u32::from(byte)));
    }
    points
}

/// Returns an `.npy` version 1.0 header for a little-endian array of type
/// `descr` and shape `shape` (a Python tuple), padded with spaces to
/// [`NPY_HEADER_LEN`] bytes.
fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let text_len = NPY_HEADER_LEN - header.len() - 2;
    header.extend_from_slice(&(text_len as u16).to_le_bytes());
    let mut text = dict.into_bytes();
    text.resize(text_len - 1, b' ');
    text.push(b'\n');
    header.extend_from_slice(&text);
    header
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    File::create(path)
        .map(BufWriter::new)
        .with_context(|| format!("{}: cannot create", path.display()))
}

/// Returns the file the vectors go to while rows are written.
fn data_path(output: &Path, format: EmbedFormat) -> PathBuf {
    match format {
        EmbedFormat::Npz => with_suffix(output, ".features.partial"),
        _ => partial(output),
    }
}

/// Returns the file the row names go to while rows are written.
fn names_path(output: &Path, format: EmbedFormat) -> PathBuf {
    match format {
        EmbedFormat::Npz => with_suffix(output, ".paths.partial"),
        _ => partial(&rows_path(output)),
    }
}

fn rows_path(output: &Path) -> PathBuf {
    with_suffix(output, ".rows.jsonl")
}

fn partial(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn rename_into_place(path: &Path) -> anyhow::Result<()> {
    std::fs::rename(partial(path), path)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Quotes a CSV field when it contains a comma, quote or line break.
pub(super) fn csv_field(text: &str) -> String {
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
        let header = npy_header("<f4", "(12345, 1280)");
        assert_eq!(header.len(), NPY_HEADER_LEN);
        assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
        let text = String::from_utf8(header[10..].to_vec()).unwrap();
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (12345, 1280), }")
        );
        assert!(text.ends_with('\n'));
        let longest = npy_header("<f4", &format!("({}, 1280)", usize::MAX));
        assert_eq!(npy_header("<f4", "(0, 3)").len(), longest.len());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("/a/b.jpg"), "/a/b.jpg");
        assert_eq!(csv_field("/a,b \"c\".jpg"), "\"/a,b \"\"c\"\".jpg\"");
    }

    #[test]
    fn code_points_escape_invalid_bytes() {
        assert_eq!(
            code_points("/é.jpg".as_bytes()),
            [0x2F, 0xE9, 0x2E, 0x6A, 0x70, 0x67]
        );
        assert_eq!(code_points(b"/a\xFFb"), [0x2F, 0x61, 0xDCFF, 0x62]);
    }
}

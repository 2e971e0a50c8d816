//! A saved HNSW graph opened for searching without rebuilding it in memory.
//!
//! hnsw_rs reloads a saved graph point by point, allocating every link;
//! at 100,000 vectors that takes seconds, and every query process would pay
//! it. So each save also writes `<basename>.hnsw.links`: the same links as
//! flat arrays of point numbers, read in one pass, with the vectors taken
//! in place from hnsw_rs's data file through a memory map. A search reads
//! only the vectors it visits.
//!
//! The links file also contains a one-byte code per vector component (see
//! [`CodeRanges`]). The beam search compares the query with these, a
//! quarter of the bytes of the vectors, and only the results it keeps are
//! scored again with the vectors themselves.
//!
//! The links file starts with a header and the BLAKE3 hash of its arrays,
//! and every number in it is checked before use, so a damaged file is an
//! error, never a crash. The codes are left out of the hash, which would
//! otherwise read all of them for each query: a damaged code can only
//! steer the search, never change a reported similarity. Before a vector is used, its record header in the data
//! file (marker, image id, length) is compared with what the links file
//! expects. A vector that fails is skipped, with one warning.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use hnsw_rs::hnsw::{Hnsw, Point};
use memmap2::Mmap;

#[cfg(target_arch = "x86_64")]
use super::sum_lanes;
use super::{dot, AnnError, Neighbour, UnitCosine};

const MAGIC: &[u8; 8] = b"IMGSIMLK";
const VERSION: u32 = 2;
/// Magic, version, dimension, point count, entry point, data file size,
/// body length, BLAKE3 hash of the body. The codes follow the body.
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4 + 8 + 8 + 32;
/// hnsw_rs's data file: a marker (u32) and the dimension (usize), then per
/// point a marker (u32), the image id (u64), the byte length (u64) and the
/// vector as native-endian f32.
const DATA_HEADER_LEN: u64 = 4 + 8;
const RECORD_HEADER_LEN: u64 = 4 + 8 + 8;

/// Path of the links file of the graph saved as `basename` in `dir`.
pub fn links_path(dir: &Path, basename: &str) -> PathBuf {
    dir.join(format!("{basename}.hnsw.links"))
}

/// Writes the links file for `hnsw`, whose data file hnsw_rs has just
/// written to `data_path`, and returns the data file's size and BLAKE3
/// digest, taken in the same read. Every vector in the data file is
/// compared with the graph's own, so a change in hnsw_rs's file layout
/// fails here, at save time, rather than giving wrong results later.
pub fn write_links(
    hnsw: &Hnsw<'static, f32, UnitCosine>,
    data_path: &Path,
    links: &Path,
) -> Result<(u64, String), AnnError> {
    let layout_error = |message: String| AnnError::Save {
        dir: data_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        message,
    };
    let points: Vec<Arc<Point<'static, f32>>> = hnsw.get_point_indexation().into_iter().collect();
    let position_of: HashMap<usize, usize> = points
        .iter()
        .enumerate()
        .map(|(position, point)| (point.get_origin_id(), position))
        .collect();
    let dimension = points.first().map_or(0, |p| p.get_v().len());
    let (records, data_size, data_digest) =
        read_data_records(data_path, dimension, &points, &position_of)
            .map_err(|message| layout_error(format!("{}: {message}", data_path.display())))?;
    if records.len() != points.len() {
        return Err(layout_error(format!(
            "the data file holds {} vectors, the graph {}",
            records.len(),
            points.len()
        )));
    }

    // Point numbers follow the order of the data file.
    let number_of: HashMap<usize, u32> = records
        .iter()
        .enumerate()
        .map(|(number, record)| (record.id as usize, number as u32))
        .collect();
    let mut first = vec![0u32];
    let mut bounds = vec![0u32];
    let mut neighbours: Vec<u32> = Vec::new();
    let mut entry = 0u32;
    let mut max_level = 0u8;
    for (number, record) in records.iter().enumerate() {
        let point = &points[position_of[&(record.id as usize)]];
        let level = point.get_point_id().0;
        if level > max_level || number == 0 {
            max_level = level;
            entry = number as u32;
        }
        let lists = point.get_neighborhood_id();
        for layer in 0..=level as usize {
            for neighbour in lists.get(layer).into_iter().flatten() {
                let Some(&other) = number_of.get(&neighbour.d_id) else {
                    return Err(layout_error(format!(
                        "point {} links to {}, which the data file lacks",
                        record.id, neighbour.d_id
                    )));
                };
                neighbours.push(other);
            }
            bounds.push(neighbours.len() as u32);
        }
        first.push(bounds.len() as u32 - 1);
    }

    let vector_of = |record: &DataRecord| points[position_of[&(record.id as usize)]].get_v();
    let ranges = CodeRanges::of(dimension, records.iter().map(vector_of));

    let mut body = Vec::with_capacity(
        records.len() * 16 + (first.len() + bounds.len() + neighbours.len()) * 4 + 16,
    );
    for record in &records {
        body.extend_from_slice(&record.id.to_le_bytes());
    }
    for record in &records {
        body.extend_from_slice(&record.offset.to_le_bytes());
    }
    let range_bits: Vec<u32> = ranges
        .low
        .iter()
        .chain(&ranges.step)
        .map(|value| value.to_bits())
        .collect();
    for array in [&first, &bounds, &neighbours, &range_bits] {
        body.extend_from_slice(&(array.len() as u64).to_le_bytes());
        for value in array.iter() {
            body.extend_from_slice(&value.to_le_bytes());
        }
    }

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(dimension as u32).to_le_bytes());
    header.extend_from_slice(&(records.len() as u64).to_le_bytes());
    header.extend_from_slice(&entry.to_le_bytes());
    header.extend_from_slice(&data_size.to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(blake3::hash(&body).as_bytes());

    let io_error = |source| AnnError::Io {
        path: links.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(links).map_err(io_error)?);
    out.write_all(&header).map_err(io_error)?;
    out.write_all(&body).map_err(io_error)?;
    let mut codes = vec![0u8; dimension];
    for record in &records {
        ranges.encode(vector_of(record), &mut codes);
        out.write_all(&codes).map_err(io_error)?;
    }
    let file = out
        .into_inner()
        .map_err(|error| io_error(error.into_error()))?;
    file.sync_all().map_err(io_error)?;
    Ok((data_size, data_digest))
}

struct DataRecord {
    id: i64,
    /// Byte offset of the vector in the data file.
    offset: u64,
}

/// Reads the record headers of hnsw_rs's data file, checking each vector
/// against the graph's copy. Returns the records with the file's size and
/// BLAKE3 digest.
fn read_data_records(
    path: &Path,
    dimension: usize,
    points: &[Arc<Point<'static, f32>>],
    position_of: &HashMap<usize, usize>,
) -> Result<(Vec<DataRecord>, u64, String), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut file_header = [0u8; DATA_HEADER_LEN as usize];
    reader
        .read_exact(&mut file_header)
        .map_err(|e| e.to_string())?;
    hasher.update(&file_header);
    let marker = &file_header[..4];
    let stored_dimension = u64::from_ne_bytes(file_header[4..12].try_into().expect("8 bytes"));
    if stored_dimension != dimension as u64 {
        return Err(format!(
            "dimension {stored_dimension}, expected {dimension}"
        ));
    }

    let vector_len = dimension * 4;
    let mut records = Vec::with_capacity(points.len());
    let mut offset = DATA_HEADER_LEN;
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    let mut vector = vec![0u8; vector_len];
    while offset < size {
        reader.read_exact(&mut header).map_err(|e| e.to_string())?;
        let id = u64::from_ne_bytes(header[4..12].try_into().expect("8 bytes"));
        let length = u64::from_ne_bytes(header[12..20].try_into().expect("8 bytes"));
        if &header[..4] != marker || length != vector_len as u64 {
            return Err(format!("unexpected record header at byte {offset}"));
        }
        reader.read_exact(&mut vector).map_err(|e| e.to_string())?;
        hasher.update(&header);
        hasher.update(&vector);

        let Some(&position) = position_of.get(&(id as usize)) else {
            return Err(format!("image {id} is not in the graph"));
        };
        let expected: &[u8] = bytemuck::cast_slice(points[position].get_v());
        if expected != vector.as_slice() {
            return Err(format!("the vector of image {id} differs from the graph's"));
        }
        records.push(DataRecord {
            id: id as i64,
            offset: offset + RECORD_HEADER_LEN,
        });
        offset += RECORD_HEADER_LEN + vector_len as u64;
    }
    Ok((records, size, hasher.finalize().to_hex().to_string()))
}

/// Returns the cosine distance of two unit vectors, kept within [0, 2]
/// against rounding, and 2 for a vector with NaN components. It is the
/// graph's own distance, so similarities match those of a graph searched
/// in memory to the last bit.
fn distance(query: &[f32], vector: &[f32]) -> f32 {
    let distance = 1.0 - dot(query, vector);
    if distance.is_nan() {
        2.0
    } else {
        distance.clamp(0.0, 2.0)
    }
}

/// Maps the saved file at `path` into memory.
fn map_saved_file(path: &Path) -> Result<Mmap, AnnError> {
    let io_error = |source| AnnError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::files::open_regular(path).map_err(io_error)?;
    // SAFETY: saved files are never changed in place. A save writes new
    // files under new names and removes the old ones, and a rewritten links
    // file is renamed over the old one, which leaves an existing mapping
    // intact.
    unsafe { Mmap::map(&file) }.map_err(io_error)
}

/// The links file's content, checked.
struct Links {
    dimension: usize,
    ids: Vec<i64>,
    offsets: Vec<u64>,
    /// `first[p]..first[p + 1]` are the indexes into `bounds` of point
    /// `p`'s link lists, one per layer from 0 up to its level.
    first: Vec<u32>,
    /// `bounds[i]..bounds[i + 1]` is link list `i` in `neighbours`.
    bounds: Vec<u32>,
    neighbours: Vec<u32>,
    ranges: CodeRanges,
    entry: u32,
}

/// A saved graph opened for searching.
pub struct FrozenGraph {
    links: Links,
    /// The links file, for its codes: one byte per component and point,
    /// in point order, from `codes_start`.
    links_file: Mmap,
    codes_start: usize,
    data: Mmap,
    data_marker: [u8; 4],
    data_path: PathBuf,
    warned: AtomicBool,
}

impl FrozenGraph {
    /// Opens the graph saved as `basename` in `dir`, whose data file must
    /// be `data_size` bytes long.
    pub fn open(dir: &Path, basename: &str, data_size: u64) -> Result<FrozenGraph, AnnError> {
        let links = links_path(dir, basename);
        let data_path = dir.join(format!("{basename}.hnsw.data"));
        let damaged = |path: &Path, reason: &str| AnnError::Mismatch {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let bytes = map_saved_file(&links)?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(damaged(&links, "not an imgsim links file"));
        }
        let mut header = Cursor::new(&bytes[8..HEADER_LEN]);
        if header.u32() != Some(VERSION) {
            return Err(damaged(&links, "unknown links file version"));
        }
        let dimension = header.u32().unwrap_or(0) as usize;
        let count = header.u64().unwrap_or(0) as usize;
        let entry = header.u32().unwrap_or(u32::MAX);
        let recorded_data_size = header.u64().unwrap_or(0);
        let body_len = header.u64().unwrap_or(u64::MAX);
        let codes_start = usize::try_from(body_len)
            .ok()
            .and_then(|len| HEADER_LEN.checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| damaged(&links, "truncated"))?;
        let body = &bytes[HEADER_LEN..codes_start];
        if blake3::hash(body).as_bytes() != &bytes[HEADER_LEN - 32..HEADER_LEN] {
            return Err(damaged(&links, "content hash differs"));
        }
        if recorded_data_size != data_size {
            return Err(damaged(&links, "belongs to another data file"));
        }
        let checked = Links::parse(body, dimension, count, entry, data_size)
            .ok_or_else(|| damaged(&links, "inconsistent content"))?;
        if count.checked_mul(dimension) != Some(bytes.len() - codes_start) {
            return Err(damaged(&links, "the codes do not match the point count"));
        }

        let data = map_saved_file(&data_path)?;
        if data.len() as u64 != data_size || data.len() < DATA_HEADER_LEN as usize {
            return Err(damaged(
                &data_path,
                "size differs from the database's record",
            ));
        }
        let mut data_marker = [0u8; 4];
        data_marker.copy_from_slice(&data[..4]);
        Ok(FrozenGraph {
            links: checked,
            links_file: bytes,
            codes_start,
            data,
            data_marker,
            data_path,
            warned: AtomicBool::new(false),
        })
    }

    /// Number of points in the graph, deleted images included.
    pub fn len(&self) -> usize {
        self.links.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.ids.is_empty()
    }

    fn level(&self, point: u32) -> usize {
        let point = point as usize;
        (self.links.first[point + 1] - self.links.first[point] - 1) as usize
    }

    /// Returns the links of `point` on `layer`, none when the point does
    /// not reach that layer.
    fn links(&self, point: u32, layer: usize) -> &[u32] {
        if layer > self.level(point) {
            return &[];
        }
        let list = self.links.first[point as usize] as usize + layer;
        &self.links.neighbours
            [self.links.bounds[list] as usize..self.links.bounds[list + 1] as usize]
    }

    /// Returns the vector of `point`, or `None` when its record header in
    /// the data file is not the one expected.
    fn vector(&self, point: u32) -> Option<&[f32]> {
        let offset = self.links.offsets[point as usize] as usize;
        let header = &self.data[offset - RECORD_HEADER_LEN as usize..offset];
        let id = u64::from_ne_bytes(header[4..12].try_into().ok()?);
        let length = u64::from_ne_bytes(header[12..20].try_into().ok()?);
        if header[..4] != self.data_marker
            || id as i64 != self.links.ids[point as usize]
            || length != self.links.dimension as u64 * 4
        {
            if !self.warned.swap(true, AtomicOrdering::Relaxed) {
                tracing::warn!(
                    "{}: damaged vector record for image {}; such images are left out of results \
                     until `imgsim index` rebuilds the graph",
                    self.data_path.display(),
                    self.links.ids[point as usize]
                );
            }
            return None;
        }
        bytemuck::try_cast_slice(&self.data[offset..offset + self.links.dimension * 4]).ok()
    }

    /// Returns the codes of `point`.
    fn codes(&self, point: u32) -> &[u8] {
        let start = self.codes_start + point as usize * self.links.dimension;
        &self.links_file[start..start + self.links.dimension]
    }

    /// Returns the distance between the query and `point` by its codes:
    /// close to the distance to its vector, at a quarter of the bytes read.
    fn coded_distance(&self, query: &CodedQuery, point: u32) -> f32 {
        1.0 - query.dot(self.codes(point))
    }

    /// Asks the processor to start loading the codes of every link of
    /// `point` on layer 0. The beam search scores them all next, and their
    /// loads then overlap instead of each waiting for memory in turn.
    fn prefetch_links(&self, point: u32) {
        #[cfg(target_arch = "x86_64")]
        for &next in self.links(point, 0) {
            let codes = self.codes(next);
            for line in codes.chunks(64) {
                // SAFETY: a prefetch is only a hint and the address lies
                // within the mapped links file.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch(line.as_ptr().cast::<i8>(), _MM_HINT_T0);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = point;
    }

    /// Walks greedily from the entry point down through the upper layers
    /// and returns the point reached on layer 1 with its distance.
    fn descend(&self, query: &CodedQuery) -> (u32, f32) {
        let mut current = self.links.entry;
        let mut current_distance = self.coded_distance(query, current);
        for layer in (1..=self.level(self.links.entry)).rev() {
            let mut moved = true;
            while moved {
                moved = false;
                for &next in self.links(current, layer) {
                    let distance = self.coded_distance(query, next);
                    if distance < current_distance {
                        current = next;
                        current_distance = distance;
                        moved = true;
                    }
                }
            }
        }
        (current, current_distance)
    }

    /// Returns up to `k` nearest ids with their similarity, most similar
    /// first, leaving out ids for which `keep` returns false. Deleted
    /// images are still walked through, so they do not cut paths through
    /// the graph.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef_search: usize,
        keep: &dyn Fn(i64) -> bool,
    ) -> Vec<Neighbour> {
        if self.is_empty() || k == 0 || query.len() != self.links.dimension {
            return Vec::new();
        }
        let ef = ef_search.max(k);
        let coded = CodedQuery::new(query, &self.links.ranges);
        let (current, current_distance) = self.descend(&coded);

        // Beam search on layer 0.
        let mut visited = vec![0u64; self.len().div_ceil(64)];
        let mut mark = |point: u32| {
            let (word, bit) = (point as usize / 64, point as usize % 64);
            let seen = visited[word] & (1 << bit) != 0;
            visited[word] |= 1 << bit;
            seen
        };
        mark(current);
        let mut candidates = BinaryHeap::new();
        let mut results: BinaryHeap<Scored> = BinaryHeap::new();
        candidates.push(Reverse(Scored(current_distance, current)));
        if keep(self.links.ids[current as usize]) {
            results.push(Scored(current_distance, current));
        }
        while let Some(Reverse(Scored(distance, point))) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|worst| distance > worst.0) {
                break;
            }
            self.prefetch_links(point);
            for &next in self.links(point, 0) {
                if mark(next) {
                    continue;
                }
                let next_distance = self.coded_distance(&coded, next);
                let worst = results.peek().map_or(f32::INFINITY, |worst| worst.0);
                if results.len() < ef || next_distance < worst {
                    candidates.push(Reverse(Scored(next_distance, next)));
                    if keep(self.links.ids[next as usize]) {
                        results.push(Scored(next_distance, next));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        // The codes only ranked the points, so the vectors give the scores.
        let mut found: Vec<Neighbour> = results
            .into_iter()
            .filter_map(|Scored(_, point)| {
                let vector = self.vector(point)?;
                Some(Neighbour {
                    id: self.links.ids[point as usize],
                    similarity: 1.0 - distance(query, vector),
                })
            })
            .collect();
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
        found.truncate(k);
        found
    }
}

impl Links {
    /// Reads and checks the arrays of the links file; `None` when any
    /// number is out of range.
    fn parse(
        body: &[u8],
        dimension: usize,
        count: usize,
        entry: u32,
        data_size: u64,
    ) -> Option<Links> {
        let mut cursor = Cursor::new(body);
        let ids: Vec<i64> = (0..count)
            .map(|_| cursor.u64().map(|v| v as i64))
            .collect::<Option<_>>()?;
        let offsets: Vec<u64> = (0..count).map(|_| cursor.u64()).collect::<Option<_>>()?;
        let first = cursor.u32_array()?;
        let bounds = cursor.u32_array()?;
        let neighbours = cursor.u32_array()?;
        let range_bits = cursor.u32_array()?;
        if !cursor.is_done()
            || dimension == 0
            || count == 0
            || entry as usize >= count
            || range_bits.len() != 2 * dimension
        {
            return None;
        }
        let values: Vec<f32> = range_bits.into_iter().map(f32::from_bits).collect();
        if values.iter().any(|value| !value.is_finite()) {
            return None;
        }
        let (low, step) = values.split_at(dimension);
        let ranges = CodeRanges {
            low: low.to_vec(),
            step: step.to_vec(),
        };

        let vector_len = dimension as u64 * 4;
        let offsets_fit = offsets.iter().all(|&offset| {
            offset >= DATA_HEADER_LEN + RECORD_HEADER_LEN
                && offset % 4 == 0
                && offset
                    .checked_add(vector_len)
                    .is_some_and(|end| end <= data_size)
        });
        let first_fits = first.len() == count + 1
            && first[0] == 0
            && first.windows(2).all(|w| w[0] < w[1])
            && first[count] as usize + 1 == bounds.len();
        let bounds_fit = bounds.first() == Some(&0)
            && bounds.windows(2).all(|w| w[0] <= w[1])
            && bounds.last().copied() == Some(neighbours.len() as u32);
        if !(offsets_fit && first_fits && bounds_fit) {
            return None;
        }

        let level = |point: usize| (first[point + 1] - first[point] - 1) as usize;
        // hnsw_rs sometimes links to a point whose own level is lower than
        // the layer of the link (the first point inserted, for one), so a
        // link only has to name an existing point.
        if neighbours.iter().any(|&n| n as usize >= count)
            || (0..count).any(|point| level(point) > level(entry as usize))
        {
            return None;
        }
        Some(Links {
            dimension,
            ids,
            offsets,
            first,
            bounds,
            neighbours,
            ranges,
            entry,
        })
    }
}

/// The range of each vector component that its one-byte code covers:
/// component `d` is about `low[d] + code * step[d]`, so the 256 codes span
/// the smallest to the largest value of that component over the graph.
struct CodeRanges {
    low: Vec<f32>,
    step: Vec<f32>,
}

impl CodeRanges {
    /// Returns the ranges that cover every component of `vectors`.
    fn of<'a>(dimension: usize, vectors: impl Iterator<Item = &'a [f32]>) -> CodeRanges {
        let mut low = vec![f32::INFINITY; dimension];
        let mut high = vec![f32::NEG_INFINITY; dimension];
        for vector in vectors {
            for ((low, high), &value) in low.iter_mut().zip(&mut high).zip(vector) {
                *low = low.min(value);
                *high = high.max(value);
            }
        }
        let (low, step) = low
            .into_iter()
            .zip(high)
            .map(|(low, high)| {
                if low.is_finite() && high > low {
                    (low, (high - low) / 255.0)
                } else {
                    // One value, or none: every code means it.
                    (if low.is_finite() { low } else { 0.0 }, 0.0)
                }
            })
            .unzip();
        CodeRanges { low, step }
    }

    /// Writes the nearest code of each component of `vector` to `codes`.
    fn encode(&self, vector: &[f32], codes: &mut [u8]) {
        for (((code, &value), &low), &step) in
            codes.iter_mut().zip(vector).zip(&self.low).zip(&self.step)
        {
            *code = if step > 0.0 {
                ((value - low) / step).round().clamp(0.0, 255.0) as u8
            } else {
                0
            };
        }
    }
}

/// A query prepared for scoring codes: its dot product with a vector
/// whose codes are `c` is `base + sum(weights[d] * c[d])`.
struct CodedQuery {
    base: f32,
    weights: Vec<f32>,
}

impl CodedQuery {
    fn new(query: &[f32], ranges: &CodeRanges) -> CodedQuery {
        CodedQuery {
            base: dot(query, &ranges.low),
            weights: query
                .iter()
                .zip(&ranges.step)
                .map(|(value, step)| value * step)
                .collect(),
        }
    }

    fn dot(&self, codes: &[u8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: both features were just detected on this processor.
                return self.base + unsafe { dot_codes_avx2_fma(&self.weights, codes) };
            }
        }
        self.base
            + self
                .weights
                .iter()
                .zip(codes)
                .map(|(weight, &code)| weight * f32::from(code))
                .sum::<f32>()
    }
}

/// Returns the dot product of `weights` with the codes widened to f32,
/// 32 codes a step in four 8-lane sums.
///
/// # Safety
/// The processor must support AVX2 and FMA; `weights` and `codes` must be
/// of equal length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_codes_avx2_fma(weights: &[f32], codes: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    const STEP: usize = 32;
    let n = weights.len();
    let whole = n - n % STEP;

    let mut sums = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < whole {
        let bytes = _mm256_loadu_si256(codes.as_ptr().add(i).cast::<__m256i>());
        let (low, high) = (
            _mm256_castsi256_si128(bytes),
            _mm256_extracti128_si256::<1>(bytes),
        );
        let quarters = [
            low,
            _mm_srli_si128::<8>(low),
            high,
            _mm_srli_si128::<8>(high),
        ];
        for (lane, sum) in sums.iter_mut().enumerate() {
            let widened = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(quarters[lane]));
            let weight = _mm256_loadu_ps(weights.as_ptr().add(i + lane * 8));
            *sum = _mm256_fmadd_ps(weight, widened, *sum);
        }
        i += STEP;
    }

    let tail: f32 = weights[whole..]
        .iter()
        .zip(&codes[whole..])
        .map(|(weight, &code)| weight * f32::from(code))
        .sum();
    sum_lanes(sums) + tail
}

/// A distance and a point number, ordered by distance.
#[derive(Clone, Copy)]
struct Scored(f32, u32);

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Reads little-endian numbers from a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes }
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }

    /// Reads a length (u64) followed by that many u32 values.
    fn u32_array(&mut self) -> Option<Vec<u32>> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len.checked_mul(4)? > self.bytes.len() {
            return None;
        }
        (0..len).map(|_| self.u32()).collect()
    }

    fn is_done(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ann::{AnnIndex, AnnParams};

    /// Unit vectors of 32 dimensions in loose clusters, from a fixed
    /// hash, so every run builds the same graph.
    fn vectors(count: i64) -> Vec<(i64, Vec<f32>)> {
        let noise = |id: i64, d: i64| {
            let mut z = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (d as u64) << 32;
            z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 32)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        (1..=count)
            .map(|id| {
                let cluster = (id % 17) as f32;
                let raw: Vec<f32> = (0..32)
                    .map(|d| (cluster * 1.7 + d as f32 * 0.9).sin() + 0.5 * noise(id, d))
                    .collect();
                (id, crate::model::l2_normalized(raw))
            })
            .collect()
    }

    fn exact_top(vectors: &[(i64, Vec<f32>)], query: &[f32], k: usize) -> Vec<i64> {
        let mut scored: Vec<(f32, i64)> =
            vectors.iter().map(|(id, v)| (dot(query, v), *id)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().take(k).map(|(_, id)| id).collect()
    }

    fn saved(count: i64) -> (tempfile::TempDir, Vec<(i64, Vec<f32>)>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let vectors = vectors(count);
        let index = AnnIndex::build(&vectors, &AnnParams::default());
        let saved = index.save(dir.path(), "g").unwrap();
        (dir, vectors, saved.data_size)
    }

    #[test]
    fn finds_what_an_exact_search_finds() {
        let (dir, vectors, data_size) = saved(600);
        let graph = FrozenGraph::open(dir.path(), "g", data_size).unwrap();
        assert_eq!(graph.len(), 600);
        let mut hits = 0;
        for (id, vector) in vectors.iter().step_by(7) {
            let found = graph.search(vector, 10, 64, &|_| true);
            assert_eq!(found[0].id, *id);
            assert!((found[0].similarity - 1.0).abs() < 1e-5);
            assert!(found.windows(2).all(|w| w[0].similarity >= w[1].similarity));
            let exact = exact_top(&vectors, vector, 10);
            hits += found.iter().filter(|n| exact.contains(&n.id)).count();
        }
        let queries = vectors.iter().step_by(7).count();
        let recall = hits as f64 / (queries * 10) as f64;
        assert!(recall >= 0.99, "recall@10 {recall}");
    }

    #[test]
    fn results_match_the_graph_in_memory() {
        let (dir, vectors, data_size) = saved(300);
        let frozen = FrozenGraph::open(dir.path(), "g", data_size).unwrap();
        let index = AnnIndex::build(&vectors, &AnnParams::default());
        for (_, vector) in vectors.iter().step_by(11) {
            let from_frozen: Vec<i64> = frozen
                .search(vector, 5, 128, &|_| true)
                .iter()
                .map(|n| n.id)
                .collect();
            let from_memory: Vec<i64> = index
                .search(vector, 5, 128, None)
                .iter()
                .map(|n| n.id)
                .collect();
            assert_eq!(from_frozen, from_memory);
        }
    }

    #[test]
    fn deleted_images_are_left_out_but_walked_through() {
        let (dir, vectors, data_size) = saved(400);
        let graph = FrozenGraph::open(dir.path(), "g", data_size).unwrap();
        // Delete every image of one cluster but the query itself.
        let query = &vectors[16];
        let keep = |id: i64| id % 17 != query.0 % 17 || id == query.0;
        let found = graph.search(&query.1, 5, 64, &keep);
        assert_eq!(found.len(), 5);
        assert_eq!(found[0].id, query.0);
        assert!(found.iter().all(|n| keep(n.id)), "{found:?}");
    }

    #[test]
    fn damaged_links_file_is_rejected() {
        let (dir, _, data_size) = saved(100);
        let path = links_path(dir.path(), "g");
        let mut bytes = std::fs::read(&path).unwrap();
        // A byte of the arrays, before the codes.
        bytes[HEADER_LEN + 100] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let error = FrozenGraph::open(dir.path(), "g", data_size).err().unwrap();
        assert!(
            error.to_string().contains("content hash differs"),
            "{error}"
        );
    }

    #[test]
    fn links_of_another_data_file_are_rejected() {
        let (dir, _, data_size) = saved(100);
        let error = FrozenGraph::open(dir.path(), "g", data_size + 5140)
            .err()
            .unwrap();
        assert!(error.to_string().contains("another data file"), "{error}");
        std::fs::remove_file(links_path(dir.path(), "g")).unwrap();
        assert!(FrozenGraph::open(dir.path(), "g", data_size).is_err());
    }

    #[test]
    fn truncated_data_file_is_rejected() {
        let (dir, _, data_size) = saved(100);
        let data = dir.path().join("g.hnsw.data");
        let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
        file.set_len(data_size - 100).unwrap();
        let error = FrozenGraph::open(dir.path(), "g", data_size).err().unwrap();
        assert!(error.to_string().contains("size differs"), "{error}");
    }

    #[test]
    fn damaged_vector_record_leaves_only_that_image_out() {
        let (dir, vectors, data_size) = saved(200);
        let graph = FrozenGraph::open(dir.path(), "g", data_size).unwrap();
        let victim = graph.links.ids[5];
        let offset = graph.links.offsets[5] - RECORD_HEADER_LEN + 4;
        drop(graph);
        let data = dir.path().join("g.hnsw.data");
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[offset as usize..offset as usize + 8].copy_from_slice(&999_999u64.to_ne_bytes());
        std::fs::write(&data, &bytes).unwrap();

        let graph = FrozenGraph::open(dir.path(), "g", data_size).unwrap();
        let victim_vector = &vectors.iter().find(|(id, _)| *id == victim).unwrap().1;
        let found = graph.search(victim_vector, 5, 64, &|_| true);
        assert_eq!(found.len(), 5);
        assert!(found.iter().all(|n| n.id != victim), "{found:?}");
        for (id, vector) in vectors.iter().filter(|(id, _)| *id != victim).step_by(9) {
            assert_eq!(graph.search(vector, 1, 64, &|_| true)[0].id, *id);
        }
    }

    #[test]
    fn codes_score_close_to_the_vectors() {
        let vectors = vectors(300);
        let ranges = CodeRanges::of(32, vectors.iter().map(|(_, v)| v.as_slice()));
        let mut codes = vec![0u8; 32];
        let mut worst = 0.0f32;
        for (_, query) in vectors.iter().step_by(13) {
            let coded = CodedQuery::new(query, &ranges);
            for (_, vector) in &vectors {
                ranges.encode(vector, &mut codes);
                worst = worst.max((coded.dot(&codes) - dot(query, vector)).abs());
            }
        }
        // Each component is off by at most half a step of its range.
        assert!(worst < 0.01, "largest error {worst}");
        assert!(worst > 0.0, "codes are not exact");
    }

    #[test]
    fn code_sums_agree_on_lengths() {
        for length in [1, 7, 31, 32, 33, 64, 100, 1280] {
            let weights: Vec<f32> = (0..length).map(|i| (i as f32 * 0.37).sin()).collect();
            let codes: Vec<u8> = (0..length).map(|i| (i * 97 % 256) as u8).collect();
            let coded = CodedQuery {
                base: 0.5,
                weights: weights.clone(),
            };
            let expected: f32 = 0.5
                + weights
                    .iter()
                    .zip(&codes)
                    .map(|(w, &c)| w * f32::from(c))
                    .sum::<f32>();
            let found = coded.dot(&codes);
            assert!(
                (found - expected).abs() < 1e-3 * expected.abs().max(1.0),
                "{length}: {found} {expected}"
            );
        }
    }

    #[test]
    fn constant_component_gets_one_code() {
        let vectors = [vec![0.5, -1.0, 2.0], vec![0.5, 1.0, 4.0]];
        let ranges = CodeRanges::of(3, vectors.iter().map(|v| v.as_slice()));
        let mut codes = [9u8; 3];
        ranges.encode(&vectors[1], &mut codes);
        assert_eq!(codes, [0, 255, 255]);
        ranges.encode(&vectors[0], &mut codes);
        assert_eq!(codes, [0, 0, 0]);
        let coded = CodedQuery::new(&[1.0, 1.0, 1.0], &ranges);
        assert!((coded.dot(&[0, 255, 255]) - 5.5).abs() < 1e-5);
    }

    #[test]
    fn damaged_codes_leave_similarities_exact() {
        let (dir, vectors, data_size) = saved(300);
        let path = links_path(dir.path(), "g");
        let mut bytes = std::fs::read(&path).unwrap();
        let codes_start = bytes.len() - 300 * 32;
        for (i, byte) in bytes[codes_start..].iter_mut().enumerate() {
            *byte = (i * 31 % 256) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let graph = FrozenGraph::open(dir.path(), "g", data_size).unwrap();
        let by_id: HashMap<i64, &Vec<f32>> = vectors.iter().map(|(id, v)| (*id, v)).collect();
        for (_, query) in vectors.iter().step_by(17) {
            let found = graph.search(query, 5, 64, &|_| true);
            assert_eq!(found.len(), 5);
            for neighbour in found {
                let exact = dot(query, by_id[&neighbour.id]);
                assert!(
                    (neighbour.similarity - exact).abs() < 1e-5,
                    "{neighbour:?} {exact}"
                );
            }
        }
    }
}

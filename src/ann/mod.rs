//! The HNSW graph over image vectors: build, search, save and load.
//!
//! Vectors are L2-normalised, so the distance is `1 - dot product`, which is
//! the cosine distance; similarity is reported as `1 - distance`. The graph
//! is a cache: [`crate::ann_cache`] rebuilds it from SQLite whenever the
//! saved files are missing, stale or damaged.

use std::fs::File;
use std::path::{Path, PathBuf};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::{HnswIo, ReloadOptions};

pub mod frozen;

pub use frozen::FrozenGraph;

/// Default number of links per node and layer (HNSW's `M`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 24;
/// Default candidate list size while building (HNSW's `ef_construction`).
pub const DEFAULT_EF_CONSTRUCTION: usize = 200;
/// Default candidate list size while searching (HNSW's `ef`); raised to
/// `k` when fewer.
pub const DEFAULT_EF_SEARCH: usize = 128;

/// hnsw_rs caps the number of layers at 16.
const MAX_LAYERS: usize = 16;

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnParams {
    pub max_connections: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

impl Default for AnnParams {
    fn default() -> Self {
        AnnParams {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            ef_search: DEFAULT_EF_SEARCH,
        }
    }
}

/// Cosine distance between unit vectors, `1 - a.b`, clamped to [0, 2] so
/// that rounding on near-identical vectors never yields a negative distance.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).clamp(0.0, 2.0)
    }
}

/// Returns the dot product of two vectors of equal length. On x86-64
/// processors where AVX2 and FMA are detected at run time, it takes the
/// fused multiply-add path, and the portable loop elsewhere.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors differ in length");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: both features were just detected on this processor.
            return unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Returns the dot product summed in eight independent partial sums, a
/// shape the compiler turns into SIMD code for any target.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Returns the dot product summed in four 8-lane registers, so that
/// consecutive fused multiply-adds do not wait on each other. Graph
/// building spends most of its time here. By estimate from the scale
/// bench, it is about twice as fast as the portable loop built for the
/// x86-64 baseline.
///
/// # Safety
/// The processor must support AVX2 and FMA; `a` and `b` must be of equal
/// length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    const STEP: usize = 32;
    let n = a.len();
    let whole = n - n % STEP;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut sums = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < whole {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + lane * 8));
            let y = _mm256_loadu_ps(pb.add(i + lane * 8));
            *sum = _mm256_fmadd_ps(x, y, *sum);
        }
        i += STEP;
    }
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
    sum_lanes(sums) + tail
}

/// Returns the sum of every lane of four 8-lane registers.
///
/// # Safety
/// The processor must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn sum_lanes(sums: [std::arch::x86_64::__m256; 4]) -> f32 {
    use std::arch::x86_64::*;
    let total = _mm256_add_ps(
        _mm256_add_ps(sums[0], sums[1]),
        _mm256_add_ps(sums[2], sums[3]),
    );
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), total);
    lanes.iter().sum()
}

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub id: i64,
    pub similarity: f32,
}

/// Sizes and digests of the two files of a saved graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFiles {
    pub graph_size: u64,
    pub graph_digest: String,
    pub data_size: u64,
    pub data_digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot save the HNSW graph: {message}", dir.display())]
    Save { dir: PathBuf, message: String },
    #[error("{}: saved HNSW file does not match the database ({reason})", path.display())]
    Mismatch { path: PathBuf, reason: String },
    #[error("{}: cannot load the HNSW graph: {message}", path.display())]
    Load { path: PathBuf, message: String },
}

/// An HNSW graph of image ids.
pub struct AnnIndex {
    hnsw: Hnsw<'static, f32, UnitCosine>,
}

impl AnnIndex {
    /// Builds a graph over `vectors` (id, unit vector), inserting in
    /// parallel.
    pub fn build(vectors: &[(i64, Vec<f32>)], params: &AnnParams) -> AnnIndex {
        let mut index = AnnIndex::with_capacity(vectors.len(), params);
        index.insert(vectors);
        index
    }

    /// Creates an empty graph sized for about `capacity` points, to be
    /// filled by [`AnnIndex::insert`] in as many steps as suits the caller.
    pub fn with_capacity(capacity: usize, params: &AnnParams) -> AnnIndex {
        let hnsw = Hnsw::new(
            params.max_connections,
            capacity.max(1),
            MAX_LAYERS,
            params.ef_construction,
            UnitCosine,
        );
        AnnIndex { hnsw }
    }

    /// Adds `vectors` (id, unit vector) to the graph, in parallel. Ids must
    /// not be in the graph already.
    pub fn insert(&mut self, vectors: &[(i64, Vec<f32>)]) {
        self.hnsw.set_searching_mode(false);
        let points: Vec<(&[f32], usize)> = vectors
            .iter()
            .map(|(id, vector)| (vector.as_slice(), *id as usize))
            .collect();
        self.hnsw.parallel_insert_slice(&points);
        self.hnsw.set_searching_mode(true);
    }

    /// Number of points in the graph.
    pub fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns up to `k` nearest ids with their similarity, most similar
    /// first, leaving out ids for which `keep` returns false (tombstones of
    /// deleted images). Without `keep`, hnsw_rs can end its search early,
    /// which halves the work.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef_search: usize,
        keep: Option<&dyn Fn(i64) -> bool>,
    ) -> Vec<Neighbour> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        let filter = keep.map(|keep| move |id: &usize| keep(*id as i64));
        let filter_ref = filter.as_ref().map(|f| f as &dyn hnsw_rs::filter::FilterT);
        let mut found: Vec<Neighbour> = self
            .hnsw
            .search_filter(query, k, ef_search.max(k), filter_ref)
            .into_iter()
            .map(|neighbour| Neighbour {
                id: neighbour.d_id as i64,
                similarity: 1.0 - neighbour.distance,
            })
            .collect();
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
        found
    }

    /// Writes the graph as `<basename>.hnsw.graph` and `<basename>.hnsw.data`
    /// in `dir`, atomically: each file is written under a temporary name,
    /// synced, and renamed, so a crash never leaves a partial file under
    /// the final name.
    pub fn save(&self, dir: &Path, basename: &str) -> Result<SavedFiles, AnnError> {
        let staging = dir.join(format!(".{basename}.staging"));
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AnnError::Io { path, source }
        };
        std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
        let result = self.save_via(&staging, dir, basename);
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    fn save_via(&self, staging: &Path, dir: &Path, basename: &str) -> Result<SavedFiles, AnnError> {
        let dumped = self
            .hnsw
            .file_dump(staging, "graph")
            .map_err(|error| AnnError::Save {
                dir: dir.to_path_buf(),
                message: error.to_string(),
            })?;
        let (data_size, data_digest) = frozen::write_links(
            &self.hnsw,
            &staging.join(format!("{dumped}.hnsw.data")),
            &frozen::links_path(staging, &dumped),
        )?;
        let mut graph_size_and_digest = None;
        for suffix in ["hnsw.graph", "hnsw.data", "hnsw.links"] {
            let from = staging.join(format!("{dumped}.{suffix}"));
            let to = dir.join(format!("{basename}.{suffix}"));
            let io_error = |path: &Path| {
                let path = path.to_path_buf();
                move |source| AnnError::Io { path, source }
            };
            File::open(&from)
                .and_then(|file| file.sync_all())
                .map_err(io_error(&from))?;
            // The data file was hashed while the links were written, and
            // the links file checks itself with the hash in its header.
            if suffix == "hnsw.graph" {
                graph_size_and_digest = Some(file_digest(&from)?);
            }
            std::fs::rename(&from, &to).map_err(io_error(&to))?;
        }
        sync_dir(dir);
        let (graph_size, graph_digest) = graph_size_and_digest.expect("the graph file is saved");
        Ok(SavedFiles {
            graph_size,
            graph_digest,
            data_size,
            data_digest,
        })
    }

    /// Writes the links file of the graph saved as `basename` in `dir`
    /// again, for a graph loaded from a save whose links file is missing
    /// or of an older version.
    pub fn rewrite_links(&self, dir: &Path, basename: &str) -> Result<(), AnnError> {
        // Written under another name and renamed, so that a reader never
        // opens half a file.
        let links = frozen::links_path(dir, basename);
        let written = dir.join(format!(".{basename}.hnsw.links.new"));
        frozen::write_links(
            &self.hnsw,
            &dir.join(format!("{basename}.hnsw.data")),
            &written,
        )?;
        std::fs::rename(&written, &links).map_err(|source| AnnError::Io {
            path: links.clone(),
            source,
        })
    }

    /// Loads the graph saved as `basename` in `dir` after checking that both
    /// files have the sizes and digests in `expected`, so a truncated,
    /// replaced or foreign file is never handed to the loader.
    ///
    /// At 100,000 vectors this load takes seconds, so searches that do not
    /// change the graph open it as a [`FrozenGraph`] instead.
    pub fn load(dir: &Path, basename: &str, expected: &SavedFiles) -> Result<AnnIndex, AnnError> {
        check_saved(dir, basename, expected)?;
        let graph = dir.join(format!("{basename}.hnsw.graph"));
        // hnsw_rs's loaded graph borrows its loader. The loader is small and
        // lives until the process ends, so it is leaked to give the graph a
        // 'static lifetime. hnsw_rs asserts on malformed input instead of
        // returning errors, which the digest check above rules out for
        // damaged files; a panic is still turned into an error here. The
        // vectors are memory-mapped rather than copied, so a query reads
        // only the pages its search visits. Saved files are never changed
        // in place (a save writes new files), so the mapping stays valid.
        let (dir_owned, basename_owned) = (dir.to_path_buf(), basename.to_string());
        let loaded = std::panic::catch_unwind(move || {
            let options = ReloadOptions::default().set_mmap(true);
            let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new_with_options(
                &dir_owned,
                &basename_owned,
                options,
            )));
            loader.load_hnsw::<f32, UnitCosine>()
        });
        let load_error = |message: String| AnnError::Load {
            path: graph.clone(),
            message,
        };
        let mut hnsw = match loaded {
            Ok(Ok(hnsw)) => hnsw,
            Ok(Err(error)) => return Err(load_error(error.to_string())),
            Err(_) => return Err(load_error("the loader panicked".to_string())),
        };
        hnsw.set_searching_mode(true);
        Ok(AnnIndex { hnsw })
    }
}

/// Checks that both files of the graph saved as `basename` in `dir` have
/// the sizes and digests in `expected`.
pub fn check_saved(dir: &Path, basename: &str, expected: &SavedFiles) -> Result<(), AnnError> {
    let graph = dir.join(format!("{basename}.hnsw.graph"));
    let data = dir.join(format!("{basename}.hnsw.data"));
    check_file(&graph, expected.graph_size, &expected.graph_digest)?;
    check_file(&data, expected.data_size, &expected.data_digest)
}

fn check_file(path: &Path, size: u64, digest: &str) -> Result<(), AnnError> {
    let mismatch = |reason: String| AnnError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    let (found_size, found_digest) = match file_digest(path) {
        Ok(found) => found,
        Err(AnnError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(mismatch("file is missing".to_string()))
        }
        Err(error) => return Err(error),
    };
    if found_size != size {
        return Err(mismatch(format!("{found_size} bytes, expected {size}")));
    }
    if found_digest != digest {
        return Err(mismatch("content digest differs".to_string()));
    }
    Ok(())
}

/// Returns the file's size and the BLAKE3 hash of its whole content, read
/// through [`crate::files::open_regular`] so a FIFO put in its place cannot
/// block. Damage anywhere in a file changes the digest; hnsw_rs aborts or
/// allocates without bound on some damaged files, so nothing is loaded
/// unchecked.
pub fn file_digest(path: &Path) -> Result<(u64, String), AnnError> {
    let io_error = |source| AnnError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::files::open_regular(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(io_error)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Syncs a folder so that renames inside it survive a power loss; failures
/// are ignored because some file systems do not support it.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        crate::model::l2_normalized(values.to_vec())
    }

    fn sample_vectors() -> Vec<(i64, Vec<f32>)> {
        (1..=200)
            .map(|id| {
                let angle = id as f32 * 0.05;
                (id, unit(&[angle.cos(), angle.sin(), 0.1 * (id % 7) as f32]))
            })
            .collect()
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..1283).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1283).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
        assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-3);
    }

    #[test]
    fn dot_paths_agree_on_lengths() {
        // Lengths around the 32-value step of the fused path, and the
        // model's 1280.
        for len in [0, 1, 7, 31, 32, 33, 63, 64, 65, 1279, 1280, 1281] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!(
                (f64::from(dot_portable(&a, &b)) - naive).abs() < 1e-3,
                "portable, length {len}"
            );
            assert!(
                (f64::from(dot(&a, &b)) - naive).abs() < 1e-3,
                "dispatched, length {len}"
            );
        }
    }

    #[test]
    fn distance_is_never_negative() {
        let v = unit(&[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]);
        assert_eq!(UnitCosine.eval(&v, &v), 0.0_f32.max(1.0 - dot(&v, &v)));
        assert!(UnitCosine.eval(&v, &v) >= 0.0);
    }

    #[test]
    fn search_finds_exact_match_first() {
        let vectors = sample_vectors();
        let index = AnnIndex::build(&vectors, &AnnParams::default());
        assert_eq!(index.len(), 200);
        let found = index.search(&vectors[41].1, 3, 64, None);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].id, 42);
        assert!((found[0].similarity - 1.0).abs() < 1e-5);
        assert!(found[1].similarity <= found[0].similarity);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = sample_vectors();
        let index = AnnIndex::build(&vectors, &AnnParams::default());
        let saved = index.save(dir.path(), "test.ann-1").unwrap();
        let loaded = AnnIndex::load(dir.path(), "test.ann-1", &saved).unwrap();
        assert_eq!(loaded.len(), 200);
        assert_eq!(loaded.search(&vectors[9].1, 1, 64, None)[0].id, 10);
        assert!(!dir.path().join(".test.ann-1.staging").exists());
    }

    #[test]
    fn tombstones_are_filtered_out() {
        let vectors = sample_vectors();
        let index = AnnIndex::build(&vectors, &AnnParams::default());
        let found = index.search(&vectors[41].1, 3, 64, Some(&|id| id != 42));
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|n| n.id != 42), "{found:?}");
    }

    #[test]
    fn loaded_graph_accepts_new_points() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = sample_vectors();
        let index = AnnIndex::build(&vectors[..150], &AnnParams::default());
        let saved = index.save(dir.path(), "grow").unwrap();
        let mut loaded = AnnIndex::load(dir.path(), "grow", &saved).unwrap();
        loaded.insert(&vectors[150..]);
        assert_eq!(loaded.len(), 200);
        for (id, vector) in &vectors[150..] {
            assert_eq!(loaded.search(vector, 1, 64, None)[0].id, *id);
        }
    }

    #[test]
    fn truncated_file_is_rejected_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let index = AnnIndex::build(&sample_vectors(), &AnnParams::default());
        let saved = index.save(dir.path(), "t").unwrap();
        let data = dir.path().join("t.hnsw.data");
        let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
        file.set_len(saved.data_size / 2).unwrap();
        let error = AnnIndex::load(dir.path(), "t", &saved).err().unwrap();
        assert!(matches!(error, AnnError::Mismatch { .. }), "{error}");
    }

    #[test]
    fn damage_in_the_middle_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let index = AnnIndex::build(&sample_vectors(), &AnnParams::default());
        let saved = index.save(dir.path(), "d").unwrap();
        let data = dir.path().join("d.hnsw.data");
        let mut bytes = std::fs::read(&data).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&data, bytes).unwrap();
        let error = AnnIndex::load(dir.path(), "d", &saved).err().unwrap();
        assert!(
            error.to_string().contains("content digest differs"),
            "{error}"
        );
    }

    #[test]
    fn missing_file_is_reported_as_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let index = AnnIndex::build(&sample_vectors(), &AnnParams::default());
        let saved = index.save(dir.path(), "m").unwrap();
        std::fs::remove_file(dir.path().join("m.hnsw.graph")).unwrap();
        let error = AnnIndex::load(dir.path(), "m", &saved).err().unwrap();
        assert!(error.to_string().contains("file is missing"), "{error}");
    }
}

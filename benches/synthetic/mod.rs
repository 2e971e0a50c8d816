//! Synthetic vectors shaped like the built-in model's embeddings, shared
//! by the HNSW benchmarks, and an exact search to measure recall against.

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use imgsim::ann::dot;

/// Dimension of the built-in model's embeddings.
pub const DIMENSION: usize = 1280;

/// SplitMix64, a small generator that keeps the vectors the same on every
/// run and platform without an extra dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a uniform sample in (0, 1].
    fn next_unit_interval(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Returns a standard normal sample (Box-Muller, one of the pair).
    fn next_normal(&mut self) -> f32 {
        let radius = (-2.0 * self.next_unit_interval().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.next_unit_interval();
        (radius * angle.cos()) as f32
    }
}

/// Dimension of the latent space that the synthetic embeddings are
/// projected from. NOTE: this is an assumption about the intrinsic
/// dimension of photo embeddings, not a measured value.
const LATENT_DIMENSION: usize = 32;
/// Mean number of vectors per cluster, like photos of one event.
const CLUSTER_SIZE: usize = 10;
/// Standard deviation of a point around its cluster centre in the latent
/// space, where centres have unit standard deviation.
const CLUSTER_SPREAD: f32 = 0.5;

/// Generator of vectors shaped like the built-in model's embeddings:
/// `scale * max(0, bias + projection * z)`, normalised to unit length,
/// where `z` is a point near one of the cluster centres in a
/// [`LATENT_DIMENSION`]-dimensional space.
///
/// The bias and scale per coordinate were chosen by hand to resemble the
/// model's vectors of the 58 photos in the test data. Those have 26% zero
/// coordinates, a median pairwise cosine similarity of 0.42 and a median
/// participation ratio (1 / sum of fourth powers) of 116.
/// [`print_statistics`] prints the same figures for the generated vectors.
struct SyntheticEmbeddings {
    /// Row-major [`DIMENSION`] x [`LATENT_DIMENSION`] matrix.
    projection: Vec<f32>,
    bias: Vec<f32>,
    scale: Vec<f32>,
    centres: Vec<Vec<f32>>,
    rng: SplitMix64,
}

impl SyntheticEmbeddings {
    /// Creates a generator with one cluster per [`CLUSTER_SIZE`] of
    /// `count` vectors.
    fn new(count: usize, seed: u64) -> SyntheticEmbeddings {
        let mut rng = SplitMix64(seed);
        let latent_scale = (LATENT_DIMENSION as f32).sqrt();
        let projection = (0..DIMENSION * LATENT_DIMENSION)
            .map(|_| rng.next_normal() / latent_scale)
            .collect();
        let bias = (0..DIMENSION)
            .map(|_| 0.4 + 0.2 * rng.next_normal())
            .collect();
        let scale = (0..DIMENSION)
            .map(|_| (0.5 * rng.next_normal()).exp())
            .collect();
        let centres = (0..count.div_ceil(CLUSTER_SIZE))
            .map(|_| (0..LATENT_DIMENSION).map(|_| rng.next_normal()).collect())
            .collect();
        SyntheticEmbeddings {
            projection,
            bias,
            scale,
            centres,
            rng,
        }
    }

    /// Returns a new unit vector from a cluster chosen at random.
    fn sample(&mut self) -> Vec<f32> {
        let cluster = (self.rng.next_u64() % self.centres.len() as u64) as usize;
        // Dividing by the norm of (1, spread) keeps each latent coordinate
        // at unit variance, whatever the spread.
        let normaliser = (1.0 + CLUSTER_SPREAD * CLUSTER_SPREAD).sqrt();
        let latent: Vec<f32> = self.centres[cluster]
            .iter()
            .map(|centre| (centre + CLUSTER_SPREAD * self.rng.next_normal()) / normaliser)
            .collect();
        let mut vector: Vec<f32> = self
            .projection
            .chunks_exact(LATENT_DIMENSION)
            .zip(self.bias.iter().zip(&self.scale))
            .map(|(row, (bias, scale))| scale * (bias + dot(row, &latent)).max(0.0))
            .collect();
        let norm = dot(&vector, &vector).sqrt();
        vector.iter_mut().for_each(|value| *value /= norm);
        vector
    }
}

/// Returns `count` vectors with ids 1..=count and `query_count` query
/// vectors from the same generator.
pub fn make_dataset(
    count: usize,
    seed: u64,
    query_count: usize,
) -> (Vec<(i64, Vec<f32>)>, Vec<Vec<f32>>) {
    let mut generator = SyntheticEmbeddings::new(count, seed);
    let vectors = (1..=count as i64)
        .map(|id| (id, generator.sample()))
        .collect();
    let queries = (0..query_count).map(|_| generator.sample()).collect();
    (vectors, queries)
}

/// The dataset of [`make_dataset`], made a part at a time so that a large
/// one need not fit in memory next to the graph built from it.
pub struct DatasetParts {
    generator: SyntheticEmbeddings,
    count: usize,
    next_id: usize,
}

impl DatasetParts {
    /// Returns the query vectors that [`make_dataset`] would return with the
    /// same arguments, and a source of the same `count` vectors in order.
    /// The queries come after the vectors in the generator's sequence, so
    /// the vectors are made once here and thrown away.
    pub fn new(count: usize, seed: u64, query_count: usize) -> (DatasetParts, Vec<Vec<f32>>) {
        let mut skipped = SyntheticEmbeddings::new(count, seed);
        for _ in 0..count {
            skipped.sample();
        }
        let queries = (0..query_count).map(|_| skipped.sample()).collect();
        let parts = DatasetParts {
            generator: SyntheticEmbeddings::new(count, seed),
            count,
            next_id: 1,
        };
        (parts, queries)
    }

    /// Returns the next at most `size` vectors, or `None` after the last.
    /// Number of vectors in all parts together.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn next_part(&mut self, size: usize) -> Option<Vec<(i64, Vec<f32>)>> {
        let remaining = self.count + 1 - self.next_id;
        if remaining == 0 {
            return None;
        }
        let part: Vec<(i64, Vec<f32>)> = (0..size.min(remaining))
            .map(|offset| ((self.next_id + offset) as i64, self.generator.sample()))
            .collect();
        self.next_id += part.len();
        Some(part)
    }
}

/// Prints the fraction of zero coordinates, the median pairwise cosine
/// similarity and the median participation ratio of the first 200 vectors,
/// to compare them with the model's real embeddings.
pub fn print_statistics(vectors: &[(i64, Vec<f32>)]) {
    let sample: Vec<&[f32]> = vectors
        .iter()
        .take(200)
        .map(|(_, v)| v.as_slice())
        .collect();
    let zeros = sample
        .iter()
        .flat_map(|v| v.iter())
        .filter(|&&x| x == 0.0)
        .count();
    let zero_fraction = zeros as f64 / (sample.len() * DIMENSION) as f64;
    let mut similarities: Vec<f32> = Vec::new();
    for (i, a) in sample.iter().enumerate() {
        for b in &sample[i + 1..] {
            similarities.push(dot(a, b));
        }
    }
    let mut participation: Vec<f32> = sample
        .iter()
        .map(|v| 1.0 / v.iter().map(|x| x.powi(4)).sum::<f32>())
        .collect();
    eprintln!(
        "{} synthetic vectors: {:.0}% zero coordinates, median cosine similarity {:.2}, median participation ratio {:.0}",
        vectors.len(),
        100.0 * zero_fraction,
        median(&mut similarities),
        median(&mut participation),
    );
}

fn median(values: &mut [f32]) -> f32 {
    values.sort_by(f32::total_cmp);
    values[values.len() / 2]
}

/// Returns the ids of the `k` vectors with the largest dot product with
/// `query`, found by scanning all of them.
pub fn exact_top_k(vectors: &[(i64, Vec<f32>)], query: &[f32], k: usize) -> Vec<i64> {
    let mut best = Vec::new();
    merge_exact_top_k(&mut best, vectors, query, k);
    best.into_iter().map(|(_, id)| id).collect()
}

/// Merges the `k` best (similarity, id) pairs of `vectors` for `query`
/// into `best`, which keeps the `k` best seen so far, most similar first.
pub fn merge_exact_top_k(
    best: &mut Vec<(f32, i64)>,
    vectors: &[(i64, Vec<f32>)],
    query: &[f32],
    k: usize,
) {
    best.extend(vectors.iter().map(|(id, vector)| (dot(query, vector), *id)));
    let by_similarity = |a: &(f32, i64), b: &(f32, i64)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if best.len() > k {
        best.select_nth_unstable_by(k, by_similarity);
        best.truncate(k);
    }
    best.sort_by(by_similarity);
}

//! HNSW at archive scale. The bench builds a graph of N synthetic
//! 1280-dimension embeddings (default 1,000,000) with the default
//! parameters and saves it. It then opens the saved files the way a query
//! process does, and prints recall@10 against an exact search and the
//! single-thread search time per query, for several `ef_search` values.
//!
//! Run with `cargo bench --bench ann_scale -- --vectors 1000000`. Other
//! options: `--queries Q` (default 200), `--ef-construction N` (default
//! the product's 200) and `--dir DIR` for the saved files (default a new
//! folder under `target/tmp`, removed at the end). With `--dir`, the exact
//! results are saved there too, and `--reuse` searches a graph saved by an
//! earlier run instead of building one, which lets changes to the search
//! be timed on one graph. `--relink` (with `--reuse`) first writes that
//! graph's links file again, for a graph saved by a version that wrote an
//! older links file. A million vectors need about 14 GB of memory
//! and 6 GB of disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use imgsim::ann::{file_digest, AnnIndex, AnnParams, FrozenGraph, SavedFiles};
use rayon::prelude::*;

mod synthetic;

use synthetic::{merge_exact_top_k, print_statistics, DatasetParts};

const K: usize = 10;
/// Vectors made and inserted at a time.
const PART_SIZE: usize = 50_000;
const EF_SEARCH: [usize; 5] = [16, 32, 64, 128, 256];

struct Options {
    vectors: usize,
    ef_construction: usize,
    queries: usize,
    dir: Option<PathBuf>,
    reuse: bool,
    relink: bool,
}

fn parse_options() -> Options {
    let mut options = Options {
        vectors: 1_000_000,
        ef_construction: AnnParams::default().ef_construction,
        queries: 200,
        dir: None,
        reuse: false,
        relink: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--vectors" => options.vectors = value().parse().expect("--vectors takes a number"),
            "--ef-construction" => {
                options.ef_construction = value().parse().expect("--ef-construction takes a number")
            }
            "--queries" => options.queries = value().parse().expect("--queries takes a number"),
            "--dir" => options.dir = Some(PathBuf::from(value())),
            "--reuse" => options.reuse = true,
            "--relink" => options.relink = true,
            // cargo bench passes --bench to every benchmark binary.
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    assert!(
        !options.reuse || options.dir.is_some(),
        "--reuse needs --dir, the folder of the earlier run"
    );
    assert!(
        !options.relink || options.reuse,
        "--relink needs --reuse and --dir"
    );
    options
}

/// Returns the path of the file in the bench folder that contains the data
/// file size of the saved graph and, per query, the ids of the exact top
/// `K`.
fn exact_path(dir: &Path) -> PathBuf {
    dir.join("scale.exact")
}

fn save_exact(dir: &Path, data_size: u64, exact: &[Vec<i64>]) {
    let mut text = format!("{data_size}\n");
    for ids in exact {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        text.push_str(&ids.join(" "));
        text.push('\n');
    }
    std::fs::write(exact_path(dir), text).expect("save the exact results");
}

fn load_exact(dir: &Path) -> (u64, Vec<Vec<i64>>) {
    let text = std::fs::read_to_string(exact_path(dir))
        .expect("read the exact results of an earlier run with the same --dir");
    let mut lines = text.lines();
    let data_size = lines
        .next()
        .and_then(|line| line.parse().ok())
        .expect("data size on the first line");
    let exact = lines
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("an image id"))
                .collect()
        })
        .collect();
    (data_size, exact)
}

/// Returns the median and the 95th percentile of `values`, in the same
/// unit.
fn median_and_p95(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let p95 = ((values.len() as f64 * 0.95).ceil() as usize).clamp(1, values.len()) - 1;
    (values[values.len() / 2], values[p95])
}

fn main() {
    let options = parse_options();
    let params = AnnParams {
        ef_construction: options.ef_construction,
        ..AnnParams::default()
    };
    let scratch = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).expect("create --dir");
            None
        }
        None => {
            let parent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
            std::fs::create_dir_all(&parent).expect("create target/tmp");
            Some(tempfile::tempdir_in(parent).expect("create a scratch folder"))
        }
    };
    let dir = options
        .dir
        .clone()
        .unwrap_or_else(|| scratch.as_ref().unwrap().path().to_path_buf());

    let started = Instant::now();
    let (parts, queries) =
        DatasetParts::new(options.vectors, options.vectors as u64, options.queries);
    println!(
        "made {} queries in {:.0} s",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    let (data_size, exact) = if options.reuse {
        let (data_size, exact) = load_exact(&dir);
        assert_eq!(
            exact.len(),
            queries.len(),
            "the earlier run had another --queries"
        );
        (data_size, exact)
    } else {
        let (data_size, exact) = build_and_save(parts, &queries, &params, &dir);
        if options.dir.is_some() {
            save_exact(&dir, data_size, &exact);
        }
        (data_size, exact)
    };
    let vector_count = options.vectors;

    if options.relink {
        // Links files of an older version cannot be opened, so the graph is
        // loaded and its links file written again.
        let started = Instant::now();
        let digest = |suffix: &str| {
            file_digest(&dir.join(format!("scale.{suffix}"))).expect("read a saved graph file")
        };
        let ((graph_size, graph_digest), (data_size, data_digest)) =
            (digest("hnsw.graph"), digest("hnsw.data"));
        let expected = SavedFiles {
            graph_size,
            graph_digest,
            data_size,
            data_digest,
        };
        AnnIndex::load(&dir, "scale", &expected)
            .and_then(|index| index.rewrite_links(&dir, "scale"))
            .expect("write the links file again");
        println!(
            "wrote the links file again in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let graph = FrozenGraph::open(&dir, "scale", data_size).expect("open the saved graph");
    println!(
        "opened the saved graph in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    for ef_search in EF_SEARCH {
        // A first pass brings the visited pages into memory, as repeated
        // queries on one archive do.
        for query in &queries {
            graph.search(query, K, ef_search, &|_| true);
        }
        let mut times = Vec::with_capacity(queries.len());
        let mut found = 0;
        for (query, expected) in queries.iter().zip(&exact) {
            let started = Instant::now();
            let neighbours = graph.search(query, K, ef_search, &|_| true);
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            found += neighbours
                .iter()
                .filter(|neighbour| expected.contains(&neighbour.id))
                .count();
        }
        let recall = found as f64 / (queries.len() * K) as f64;
        let (median, p95) = median_and_p95(&mut times);
        println!(
            "{vector_count} vectors, ef_search {ef_search}: recall@{K} {recall:.3}, search median {median:.2} ms, 95th percentile {p95:.2} ms"
        );
    }
    drop(scratch);
}

/// Builds the graph from `parts`, finding the exact top `K` of each query
/// on the way, saves it in `dir` and returns the size of its data file
/// with the exact results.
fn build_and_save(
    mut parts: DatasetParts,
    queries: &[Vec<f32>],
    params: &AnnParams,
    dir: &Path,
) -> (u64, Vec<Vec<i64>>) {
    // The vectors are made, searched exactly and inserted a part at a time,
    // so that only the graph contains all of them.
    let mut index = AnnIndex::with_capacity(parts.len(), params);
    let mut best: Vec<Vec<(f32, i64)>> = vec![Vec::new(); queries.len()];
    let mut exact_seconds = 0.0;
    let mut build_seconds = 0.0;
    let mut first_part = true;
    while let Some(part) = parts.next_part(PART_SIZE) {
        if first_part {
            print_statistics(&part);
            first_part = false;
        }
        let started = Instant::now();
        best.par_iter_mut()
            .zip(queries)
            .for_each(|(best, query)| merge_exact_top_k(best, &part, query, K));
        exact_seconds += started.elapsed().as_secs_f64();
        let started = Instant::now();
        index.insert(&part);
        build_seconds += started.elapsed().as_secs_f64();
        println!(
            "inserted {} vectors, {:.0} s so far",
            index.len(),
            build_seconds
        );
    }
    let exact: Vec<Vec<i64>> = best
        .into_iter()
        .map(|best| best.into_iter().map(|(_, id)| id).collect())
        .collect();
    println!(
        "built the graph (M {}, ef_construction {}) in {build_seconds:.0} s",
        params.max_connections, params.ef_construction,
    );
    println!(
        "exact search: {:.1} ms a query with {} threads",
        exact_seconds * 1000.0 / queries.len() as f64,
        rayon::current_num_threads()
    );
    let started = Instant::now();
    let saved = index.save(dir, "scale").expect("save the graph");
    println!(
        "saved it in {:.0} s: graph {} MiB, data {} MiB",
        started.elapsed().as_secs_f64(),
        saved.graph_size >> 20,
        saved.data_size >> 20
    );
    // The in-memory graph is not needed any more; freeing it keeps the
    // search timings free of memory pressure.
    drop(index);
    (saved.data_size, exact)
}

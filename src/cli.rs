//! Command-line options, parsed by clap and then resolved into checked
//! settings before any work starts.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

use crate::ann::{DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_MAX_CONNECTIONS};
use crate::decode::DEFAULT_MAX_PIXELS;
use crate::model::input::{InputSettings, InputSize, PerChannel};
use crate::pipeline::DEFAULT_BATCH_SIZE;
use crate::preprocess::{ChannelOrder, Layout};

/// Largest accepted --batch-size: about 2.5 GB of inference memory per
/// worker thread.
const MAX_BATCH_SIZE: i64 = 256;

/// Find visually similar photos in local folders.
#[derive(Debug, Parser)]
#[command(name = "imgsim", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Database file; the IMGSIM_DB environment variable sets it too
    /// [default: imgsim.db in the per-user data directory, e.g.
    /// ~/.local/share/imgsim/imgsim.db]
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// ONNX model file to use instead of the built-in MobileNetV2. Its
    /// preprocessing comes from the model input options and the file's
    /// .preprocess.toml sidecar. The IMGSIM_MODEL environment variable sets
    /// it too
    #[arg(long, global = true, value_name = "FILE")]
    pub model: Option<PathBuf>,

    /// Precision of the built-in model: float32, or int8 (about twice as
    /// fast; needs a processor with VNNI instructions). A database keeps the
    /// precision it was indexed with, so query and dupes need the same
    /// setting. The IMGSIM_PRECISION environment variable sets it too
    #[arg(long, global = true, value_enum, env = "IMGSIM_PRECISION", default_value_t = Precision::Float32)]
    pub precision: Precision,

    /// Tensor of the model to use as the embedding [default: the input of a
    /// global pooling layer that feeds a classifier, else the first output]
    #[arg(long, global = true, value_name = "NAME")]
    pub layer: Option<String>,

    /// Pooling of a 4-D feature map [N,C,H,W] over H and W: mean (global
    /// average pooling), max, gem (p = 3) or gem:P [default: mean]
    #[arg(long, global = true, value_name = "POOL")]
    pub pool: Option<crate::model::Pool>,

    /// Threads for inference and decoding. Index runs one worker thread
    /// each, with its own model session. More than the number of cores
    /// slows both down [default: number of CPU cores]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,

    /// Log more: -v for progress notes, -vv for debugging
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print no progress bar and no warnings, only errors and results
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(flatten)]
    pub input: InputArgs,
}

/// Settings that turn images into the model's input tensor. Unset values
/// come from the preprocessing file, then from the model's input shape,
/// then from the built-in model's preprocessing (224x224 RGB NCHW,
/// (p - 127.5) / 127.5).
#[derive(Debug, Args)]
#[command(next_help_heading = "Model input options")]
pub struct InputArgs {
    /// Preprocessing file (TOML; see README) [default: NAME.preprocess.toml
    /// next to the --model file NAME.onnx, when it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub preprocess: Option<PathBuf>,

    /// Input size in pixels, N or WIDTHxHEIGHT [default: from the model's
    /// input shape, else 224]
    #[arg(long, global = true, value_name = "SIZE")]
    pub input_size: Option<InputSize>,

    /// Tensor layout [default: where the model's input has 3 channels,
    /// else nchw]
    #[arg(long, global = true, value_enum)]
    pub layout: Option<Layout>,

    /// Channel order [default: rgb]
    #[arg(long, global = true, value_enum)]
    pub channels: Option<ChannelOrder>,

    /// Multiply pixels (0-255) by X, or X,Y,Z per channel, then add
    /// --offset
    #[arg(
        long,
        global = true,
        value_name = "X[,Y,Z]",
        allow_hyphen_values = true
    )]
    pub scale: Option<PerChannel>,

    /// Add X, or X,Y,Z per channel, after --scale
    #[arg(
        long,
        global = true,
        value_name = "X[,Y,Z]",
        allow_hyphen_values = true
    )]
    pub offset: Option<PerChannel>,

    /// Subtract X, or X,Y,Z per channel, from pixels scaled to 0-1, then
    /// divide by --std (torchvision's convention)
    #[arg(
        long,
        global = true,
        value_name = "X[,Y,Z]",
        allow_hyphen_values = true
    )]
    pub mean: Option<PerChannel>,

    /// Standard deviation, X or X,Y,Z per channel, in the 0-1 range
    #[arg(long, global = true, value_name = "X[,Y,Z]")]
    pub std: Option<PerChannel>,
}

impl InputArgs {
    /// Returns the settings given on the command line.
    pub fn settings(&self) -> InputSettings {
        InputSettings {
            size: self.input_size,
            layout: self.layout,
            channels: self.channels,
            scale: self.scale,
            offset: self.offset,
            mean: self.mean,
            std: self.std,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Index the images in folders (recursively) or files, skipping files
    /// whose size and modification time are unchanged since the last run
    Index(IndexArgs),
    /// Print the indexed images most similar to an image file
    Query(QueryArgs),
    /// Write the feature vectors of images to a file (.npy, .npz, .csv or
    /// .jsonl), one row per image, without using the database
    Embed(EmbedArgs),
    /// Find groups of duplicate images among the indexed ones
    Dupes(DupesArgs),
    /// Show a model's input, its preprocessing and the tensors that can
    /// serve as the embedding
    Model(ModelArgs),
}

#[derive(Debug, Args)]
pub struct DupesArgs {
    /// Also group similar images: the same scene in another shot, or copies
    /// edited too much for a pixel match (cropped, tilted, captioned)
    #[arg(long)]
    pub similar: bool,

    /// Cosine similarity at or above which images without a pixel match are
    /// similar
    #[arg(long, default_value_t = crate::dupes::DEFAULT_SIMILAR, value_name = "X",
          value_parser = parse_unit_interval)]
    pub similar_threshold: f32,

    /// Largest pixel difference of near-identical images: mean absolute
    /// difference in grey levels (0-255) at matched resolution
    #[arg(long, default_value_t = crate::dupes::DEFAULT_MAX_RESIDUAL, value_name = "X",
          value_parser = parse_non_negative)]
    pub max_residual: f32,

    /// Nearest neighbours examined per image
    #[arg(long, default_value_t = crate::dupes::DEFAULT_NEIGHBOURS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000).map(|n| n as usize))]
    pub neighbours: usize,

    /// HNSW candidate list size while searching (ef_search)
    #[arg(long, default_value_t = DEFAULT_EF_SEARCH, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100000).map(|n| n as usize))]
    pub ef_search: usize,

    /// File to keep in each group
    #[arg(long, value_enum, default_value_t = crate::dupes::KeepRule::Pixels)]
    pub keep: crate::dupes::KeepRule,

    /// Print the groups as one JSON object
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Print the groups as CSV, one line per file
    #[arg(long)]
    pub csv: bool,

    /// Write a self-contained HTML page showing the groups to FILE
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Move the files not kept into DIR, under their full original path;
    /// without --apply, only print what would be moved
    #[arg(long, value_name = "DIR")]
    pub move_to: Option<PathBuf>,

    /// Carry out --move-to, writing a log of every move into DIR
    #[arg(long, requires = "move_to")]
    pub apply: bool,

    /// Reject images with more pixels (width x height) than this when
    /// reading them for the pixel check
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "PIXELS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,
}

fn parse_unit_interval(text: &str) -> Result<f32, String> {
    let value: f32 = text
        .parse()
        .map_err(|_| format!("invalid number {text:?}"))?;
    if (-1.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside -1 to 1"))
    }
}

fn parse_non_negative(text: &str) -> Result<f32, String> {
    let value: f32 = text
        .parse()
        .map_err(|_| format!("invalid number {text:?}"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} must be 0 or more"))
    }
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// ONNX model file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Numeric precision of the built-in model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floating point weights and activations
    Float32,
    /// 8-bit integer weights and activations, calibrated on photos
    Int8,
}

/// File formats `embed` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedFormat {
    /// NumPy float32 array (num_images, dimension), with the paths of the
    /// rows in OUTPUT.rows.jsonl
    Npy,
    /// NumPy archive with two arrays: features (num_images, dimension)
    /// float32 and paths (num_images,) strings
    Npz,
    /// One line per image: the path, then the vector's values
    Csv,
    /// One JSON object per image: {"path": ..., "vector": [...]}
    Jsonl,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Folders (walked in file-name order) or image files, in row order
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// File to write
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Output format [default: from the output file's extension, else npy]
    #[arg(long, value_enum)]
    pub format: Option<EmbedFormat>,

    /// L2-normalise each vector, as the index does; false gives the model's
    /// raw output (for the built-in model, the globally average-pooled
    /// activations)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub normalize: bool,

    /// Images per inference batch
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_SIZE).map(|n| n as usize))]
    pub batch_size: usize,

    /// Reject images with more pixels (width x height) than this
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "PIXELS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Folders to walk, or image files
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Images per inference batch and per database transaction; each image
    /// of a batch takes about 10 MB of memory in each of the --threads
    /// workers during inference
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_SIZE).map(|n| n as usize))]
    pub batch_size: usize,

    /// Reject images with more pixels (width x height) than this, before
    /// decoding them
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "PIXELS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,

    #[command(flatten)]
    pub hnsw: HnswBuildArgs,

    /// Report what would be added, changed, moved, copied and removed, and
    /// change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Follow symbolic links to files and folders (loops are detected and
    /// reported)
    #[arg(long)]
    pub follow_links: bool,

    /// Write each file that could not be indexed to FILE as a JSON line
    /// (path, stage, reason)
    #[arg(long, value_name = "FILE")]
    pub failures: Option<PathBuf>,

    /// Wait for another index run on the same database to finish instead
    /// of exiting with status 4; with =SECONDS, wait at most that long,
    /// then exit with status 4
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true)]
    pub wait: Option<Option<u64>>,

    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct HnswBuildArgs {
    /// HNSW links per node and layer (M); more gives better recall, a
    /// larger index and slower builds
    #[arg(long = "hnsw-m", default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "M",
          value_parser = clap::value_parser!(u16).range(2..=256).map(|n| n as usize))]
    pub max_connections: usize,

    /// HNSW candidate list size while building (ef_construction)
    #[arg(long, default_value_t = DEFAULT_EF_CONSTRUCTION, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10000).map(|n| n as usize))]
    pub ef_construction: usize,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Image file to search for; it need not be indexed
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Number of results
    #[arg(short, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10000).map(|n| n as usize))]
    pub k: usize,

    /// HNSW candidate list size while searching (ef_search); raised to -k
    /// when smaller
    #[arg(long, default_value_t = DEFAULT_EF_SEARCH, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100000).map(|n| n as usize))]
    pub ef_search: usize,

    /// Reject images with more pixels (width x height) than this
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "PIXELS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,

    /// Print results as JSON (see README for the shape)
    #[arg(long)]
    pub json: bool,

    /// Write a self-contained HTML page showing the query and its results
    /// to FILE
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl GlobalArgs {
    /// Returns the database path: --db, then IMGSIM_DB, then the per-user
    /// default.
    pub fn database_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = option_or_env(&self.db, "IMGSIM_DB") {
            return Ok(path);
        }
        let data = dirs::data_dir().ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find the per-user data directory (is HOME set?); pass --db PATH"
            )
        })?;
        Ok(data.join("imgsim").join("imgsim.db"))
    }

    /// Returns the model file: --model, then IMGSIM_MODEL. `None` means the
    /// built-in model.
    pub fn model_path(&self) -> Option<PathBuf> {
        option_or_env(&self.model, "IMGSIM_MODEL")
    }

    /// Threads to use: --threads, or the number of available cores.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            Some(threads) => usize::from(threads),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Returns the option's value, else the environment variable's. Empty
/// values count as unset.
fn option_or_env(option: &Option<PathBuf>, variable: &str) -> Option<PathBuf> {
    option
        .clone()
        .or_else(|| std::env::var_os(variable).map(PathBuf::from))
        .filter(|path| !path.as_os_str().is_empty())
}

//! One function per subcommand; each returns the exit status.

/// Writes a line to stdout and returns the I/O error instead of panicking as
/// `println!` does, so a closed pipe (`imgsim query X | head -1`) ends the
/// command quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod dupes;
mod embed;
mod embed_output;
mod index;
mod model;
mod progress;
mod query;

use crate::cli::{Cli, Command, GlobalArgs, Precision};
use crate::exit::Status;
use crate::model::input::settings_for;
use crate::model::{Embedder, ModelSource, TapOptions};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    match &cli.command {
        Command::Index(args) => index::run(&cli.global, args),
        Command::Query(args) => query::run(&cli.global, args),
        Command::Embed(args) => embed::run(&cli.global, args),
        Command::Dupes(args) => dupes::run(&cli.global, args),
        Command::Model(args) => model::run(&cli.global, args),
    }
}

/// Loads the model that `global` names, with `threads` intra-op threads.
fn load_embedder(global: &GlobalArgs, threads: usize) -> anyhow::Result<Embedder> {
    let model = global.model_path();
    let source = match (&model, global.precision) {
        (Some(path), Precision::Float32) => ModelSource::File(path.clone()),
        (Some(path), Precision::Int8) => {
            return Err(crate::model::ModelError::Unavailable {
                name: crate::paths::display_path(path),
                message: "--precision int8 applies to the built-in model only. Quantize \
                          this model yourself and pass the int8 file with --model"
                    .to_string(),
            }
            .into())
        }
        (None, Precision::Float32) => ModelSource::Default,
        (None, Precision::Int8) => ModelSource::DefaultInt8,
    };
    let tap = TapOptions {
        layer: global.layer.clone(),
        pool: global.pool,
    };
    let (input, _) = settings_for(
        model.as_deref(),
        global.input.preprocess.as_deref(),
        &global.input.settings(),
    )?;
    let embedder = Embedder::load_with(&source, &tap, &input, threads)?;
    tracing::info!(
        "model {}, preprocessing: {}",
        embedder.identity().name,
        embedder.identity().preprocessing
    );
    Ok(embedder)
}

/// Sizes the global rayon pool used for decoding; called once, before any
/// parallel work.
fn configure_threads(global: &GlobalArgs) {
    let threads = global.thread_count();
    if let Err(error) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        tracing::debug!("rayon thread pool already configured: {error}");
    }
}

/// Rejects an output file that would replace a picture: a name with an
/// image extension, or an existing file whose content is an image. A
/// mistyped `-o *.jpg` or `--html photo.jpg` must never overwrite photos.
fn check_output_path(path: &std::path::Path) -> anyhow::Result<()> {
    let shown = crate::paths::display_path(path);
    if crate::scan::has_image_extension(path) {
        anyhow::bail!(
            "{shown}: refusing to write output to a file with an image extension; \
             choose another output name"
        );
    }
    let mut start = [0u8; 32];
    let looks_like_image = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut start))
        .ok()
        .is_some_and(|read| image::guess_format(&start[..read]).is_ok());
    if looks_like_image {
        anyhow::bail!("{shown}: refusing to overwrite an image file; choose another output name");
    }
    Ok(())
}

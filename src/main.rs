use std::process::ExitCode;

use clap::Parser;
use imgsim::cli::Cli;
use imgsim::exit::Status;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    match imgsim::commands::run(cli) {
        Ok(status) => status.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            Status::Error.into()
        }
    }
}

/// Logs go to stderr; `IMGSIM_LOG` (a tracing filter such as `debug`)
/// overrides the level chosen by -v and -q.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGSIM_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "imgsim={level},ort=error,hnsw_rs=error,anndists=error"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

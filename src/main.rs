use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use imgsim::cli::Cli;
use imgsim::exit::Status;

fn main() -> ExitCode {
    // Called before any thread starts, because it changes the process
    // environment.
    imgsim::model::runtime::turn_off_telemetry();
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    match imgsim::commands::run(cli) {
        Ok(status) => status.into(),
        Err(error) if is_broken_pipe(&error) => Status::Success.into(),
        Err(error) => {
            eprintln!("error: {}", escape_controls(&error_message(&error)));
            if is_usage_error(&error) {
                Status::Usage.into()
            } else {
                Status::Error.into()
            }
        }
    }
}

/// Returns whether the error comes from options that contradict each other,
/// the model or the processor, which exits with the usage status like
/// clap's own errors.
fn is_usage_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<imgsim::model::ModelError>(),
            Some(
                imgsim::model::ModelError::Settings { .. }
                    | imgsim::model::ModelError::Unavailable { .. }
            )
        )
    })
}

/// Returns whether the error is stdout closed by its reader, as in
/// `imgsim query X | head -1`, which ends the command normally.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Joins the error and its causes with ": ", leaving out causes whose text
/// the message already contains, since many errors quote their source.
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if message.contains(text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(text);
    }
    message
}

/// Escapes control characters, so that a file name quoted in a message
/// cannot move the cursor or recolour the terminal.
fn escape_controls(message: &str) -> String {
    message
        .chars()
        .map(|character| {
            if character.is_control() {
                character.escape_default().to_string()
            } else {
                character.to_string()
            }
        })
        .collect()
}

/// Logs go to stderr, coloured only on a terminal; `IMGSIM_LOG` (a tracing
/// filter such as `debug`) overrides the level chosen by -v and -q.
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
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

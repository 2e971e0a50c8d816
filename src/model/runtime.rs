//! Finding and loading the ONNX Runtime shared library.
//!
//! imgsim links ONNX Runtime at run time (`ort`'s `load-dynamic`), so a
//! missing or unsuitable library is a clear error instead of a failure at
//! program start. The library is searched for, in this order:
//!
//! 1. the file named by the `ORT_DYLIB_PATH` environment variable;
//! 2. `libonnxruntime.so.1.31.1` next to the `imgsim` executable;
//! 3. `libonnxruntime.so.1.31.1` in imgsim's per-user data directory
//!    (`$XDG_DATA_HOME/imgsim`, by default `~/.local/share/imgsim`), where
//!    `scripts/setup-onnxruntime.sh` installs it.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

/// File name of the ONNX Runtime library this build is made for.
pub const LIBRARY_FILE_NAME: &str = "libonnxruntime.so.1.31.1";

/// Environment variable naming the library file explicitly.
pub const LIBRARY_PATH_VARIABLE: &str = "ORT_DYLIB_PATH";

/// The command that installs the library where imgsim finds it.
pub const SETUP_COMMAND: &str = "scripts/setup-onnxruntime.sh";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found; looked for {searched}. \
         Install it by running `{SETUP_COMMAND}` from the imgsim source folder, \
         or set {LIBRARY_PATH_VARIABLE} to the path of {LIBRARY_FILE_NAME}"
    )]
    NotFound { searched: String },
    #[error(
        "{LIBRARY_PATH_VARIABLE} is set to {path}, but no such file exists; \
         fix the variable or unset it, then run `{SETUP_COMMAND}`"
    )]
    VariableTarget { path: PathBuf },
    #[error(
        "cannot load ONNX Runtime: {message}. imgsim needs ONNX Runtime 1.31 or newer; \
         install it by running `{SETUP_COMMAND}` from the imgsim source folder"
    )]
    Load { message: String },
    #[error("cannot start ONNX Runtime: {0}")]
    Environment(String),
}

/// Returns the library file to load, following the search order above.
pub fn locate_library() -> Result<PathBuf, RuntimeError> {
    if let Some(value) = std::env::var_os(LIBRARY_PATH_VARIABLE).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RuntimeError::VariableTarget { path })
        };
    }
    let candidates = library_candidates();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let searched = candidates
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    Err(RuntimeError::NotFound { searched })
}

fn library_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(folder) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
    {
        candidates.push(folder.join(LIBRARY_FILE_NAME));
    }
    if let Some(data) = dirs::data_dir() {
        candidates.push(data.join("imgsim").join(LIBRARY_FILE_NAME));
    }
    candidates
}

/// Environment variable that turns off ONNX Runtime's telemetry.
pub const TELEMETRY_VARIABLE: &str = "ORT_DISABLE_TELEMETRY";

/// Sets [`TELEMETRY_VARIABLE`] to 1 unless the user has set it to a
/// non-empty value.
///
/// Microsoft's builds of ONNX Runtime 1.31 for Linux collect telemetry
/// (the executable's path, the processor, the operating system) in
/// ~/.cache/Microsoft/DeveloperTools/.onnxruntime to send it to Microsoft.
/// Disabling it through the API still records one event when the
/// environment is created, and this variable records none. Changing the
/// process environment races with C code that reads it on other threads,
/// so the binary calls this first thing in `main`. [`environment`] calls it
/// again before loading the library, for programs that use the library
/// crate.
pub fn turn_off_telemetry() {
    if std::env::var_os(TELEMETRY_VARIABLE).is_none_or(|value| value.is_empty()) {
        std::env::set_var(TELEMETRY_VARIABLE, "1");
    }
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static ENVIRONMENT_INIT: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime once per process and returns its environment.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    // ONNX Runtime allows one environment per process, so concurrent first
    // calls are serialised.
    let _guard = ENVIRONMENT_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let library = locate_library()?;
    tracing::debug!("loading ONNX Runtime from {}", library.display());
    turn_off_telemetry();
    let builder = ort::init_from(&library).map_err(|error| RuntimeError::Load {
        message: error.to_string(),
    })?;
    let environment = builder
        .with_name("imgsim")
        .with_telemetry(false)
        .build()
        .map_err(|error| RuntimeError::Environment(error.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}

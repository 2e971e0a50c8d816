//! Helpers shared by the integration tests, which run the real `imgsim`
//! binary with the real model on real photos.
//!
//! The photos are read in place from the `shared/` folder that sits beside
//! the repository checkout (`../shared`); see `tests/README.md` for their
//! sources and licences.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Returns the folder of reference photos and models beside the checkout.
pub fn shared_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        dir.join("testdata").is_dir(),
        "test data not found at {}; the tests need the shared/ folder beside the checkout",
        dir.display()
    );
    // imgsim stores canonical paths, so the tests compare against them.
    dir.canonicalize().unwrap()
}

pub fn photos_dir() -> PathBuf {
    shared_dir().join("testdata/photos")
}

pub fn imagededup_dir() -> PathBuf {
    shared_dir().join("testdata/imagededup")
}

/// Returns the (photo, thumbnail) pairs listed in `photos/groups.json`,
/// photo first.
pub fn photo_thumbnail_pairs() -> Vec<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(photos_dir().join("groups.json")).unwrap();
    let groups: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut pairs: Vec<(PathBuf, PathBuf)> = groups
        .values()
        .map(|files| {
            let files = files.as_array().unwrap();
            assert_eq!(files.len(), 2, "each group is a photo and its thumbnail");
            let photo = photos_dir().join(files[0].as_str().unwrap());
            let thumbnail = photos_dir().join(files[1].as_str().unwrap());
            (photo, thumbnail)
        })
        .collect();
    pairs.sort();
    pairs
}

/// Result of one `imgsim` run.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Returns a command for the built binary with `--db database`.
pub fn imgsim(database: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgsim"));
    command.arg("--db").arg(database);
    command
        .env_remove("IMGSIM_DB")
        .env_remove("IMGSIM_MODEL")
        .env_remove("IMGSIM_PRECISION");
    command
}

/// Runs `imgsim --db database ARGS...` to completion.
pub fn run<I, S>(database: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    imgsim(database).args(args).output().unwrap().into()
}

/// Runs `imgsim index --json` over `paths` and returns the run and its
/// parsed summary.
pub fn index<P: AsRef<OsStr>>(database: &Path, paths: &[P]) -> (Run, serde_json::Value) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("index"), OsStr::new("--json")];
    args.extend(paths.iter().map(AsRef::as_ref));
    let run = run(database, args);
    let summary = run.json();
    (run, summary)
}

/// Runs `imgsim query IMAGE -k K --json` and returns the result paths with
/// their similarities, best first.
pub fn query(database: &Path, image: &Path, k: usize) -> Vec<(PathBuf, f64)> {
    query_with(database, &[], image, k)
}

/// Runs `imgsim OPTIONS... query IMAGE -k K --json` and returns the result
/// paths with their similarities, best first.
pub fn query_with(
    database: &Path,
    options: &[&str],
    image: &Path,
    k: usize,
) -> Vec<(PathBuf, f64)> {
    let mut args: Vec<&OsStr> = options.iter().map(OsStr::new).collect();
    let k = k.to_string();
    args.extend([
        OsStr::new("query"),
        image.as_os_str(),
        OsStr::new("-k"),
        OsStr::new(&k),
        OsStr::new("--json"),
    ]);
    let run = run(database, args);
    assert_eq!(run.status, 0, "query failed: {}", run.stderr);
    run.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| {
            (
                PathBuf::from(result["path"].as_str().unwrap()),
                result["similarity"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Runs `command` to its end and returns its exit status, its peak
/// resident memory in KiB and its standard output. Standard error is
/// discarded.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std cannot do
pub fn run_with_peak_memory(mut command: Command) -> (i32, i64, String) {
    let output_path = tempfile::NamedTempFile::new().unwrap();
    let child = command
        .stdout(std::fs::File::create(output_path.path()).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, and wait4 reaps the child spawned above,
    // whose `Child` handle is never waited on again.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        assert_eq!(pid, child.id() as libc::pid_t);
        usage
    };
    let stdout = std::fs::read_to_string(output_path.path()).unwrap();
    (libc::WEXITSTATUS(status), usage.ru_maxrss, stdout)
}

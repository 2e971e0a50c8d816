//! Finding candidate image files under the roots given on the command line.
//!
//! Roots are made canonical first, so `../photos`, `/home/me/photos` and a
//! symbolic link to that folder all store the same paths.
//! A root that is a file is always a candidate, whatever its name. Inside a
//! folder, files are candidates when their extension is one of the image
//! extensions below, in any case. The content is sniffed later, so a PNG
//! named `.jpg` is still decoded correctly. Only regular files are
//! candidates: FIFOs, sockets and devices are skipped without being opened.
//! Symbolic links are not followed unless requested. When they are, a link
//! that leads back to one of its own parent folders gets a warning and is
//! not entered. Entries are visited in file-name order, so runs are
//! reproducible.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use walkdir::WalkDir;

use crate::store::FileState;

/// Extensions of the formats imgsim decodes, lowercase.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "webp", "gif", "bmp", "dib", "tif", "tiff",
];

/// A file to consider for indexing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute path.
    pub path: PathBuf,
    pub state: FileState,
}

/// A path the scan could not read.
#[derive(Debug, Clone)]
pub struct ScanFailure {
    pub path: PathBuf,
    pub reason: String,
}

/// A folder root that was walked, with the number of candidates found in
/// it.
#[derive(Debug, Clone)]
pub struct WalkedRoot {
    pub path: PathBuf,
    pub candidates: usize,
}

/// Result of walking all roots.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub candidates: Vec<Candidate>,
    pub failures: Vec<ScanFailure>,
    /// Folder roots that were walked; files given as roots are not listed.
    pub walked_roots: Vec<WalkedRoot>,
    /// Roots, files or folders, that exist and could be examined.
    pub readable_roots: usize,
    /// Symbolic link loops seen with `follow_links`: (link, message). They
    /// are not failures, since nothing that could be indexed was missed.
    pub loops: Vec<(PathBuf, String)>,
    /// The walk stopped early because the run was cancelled; the result is
    /// incomplete and must not be used to find removed files.
    pub interrupted: bool,
}

/// How to walk.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Follow symbolic links to files and folders, with loop detection.
    pub follow_links: bool,
}

/// Walks `roots` and returns the candidate files, without duplicates, and
/// every path that could not be read.
pub fn scan_roots(roots: &[PathBuf], options: &ScanOptions) -> ScanResult {
    scan_roots_until(roots, options, &AtomicBool::new(false))
}

/// Walks `roots` like [`scan_roots`], stopping as soon as `cancel` is set,
/// so that Ctrl-C ends a walk over a large tree or a slow network share
/// at once. An interrupted result has `interrupted` set.
pub fn scan_roots_until(
    roots: &[PathBuf],
    options: &ScanOptions,
    cancel: &AtomicBool,
) -> ScanResult {
    let mut result = ScanResult::default();
    let mut seen = HashSet::new();
    for root in roots {
        scan_root(root, options, &mut result, &mut seen, cancel);
        if result.interrupted {
            break;
        }
    }
    result
}

fn scan_root(
    root: &Path,
    options: &ScanOptions,
    result: &mut ScanResult,
    seen: &mut HashSet<PathBuf>,
    cancel: &AtomicBool,
) {
    // The canonical path (absolute, without `..` or symbolic links) keeps
    // one file from being stored twice when it is reached by two spellings.
    let absolute = match std::fs::canonicalize(root) {
        Ok(path) => path,
        Err(error) => {
            result.failures.push(failure(root, &io_reason(&error)));
            return;
        }
    };
    let metadata = match std::fs::metadata(&absolute) {
        Ok(metadata) => metadata,
        Err(error) => {
            result.failures.push(failure(root, &io_reason(&error)));
            return;
        }
    };
    if metadata.is_file() {
        result.readable_roots += 1;
        push_candidate(&absolute, &metadata, result, seen);
        return;
    }
    if !metadata.is_dir() {
        result
            .failures
            .push(failure(root, "not a regular file or folder"));
        return;
    }
    result.readable_roots += 1;
    let before = result.candidates.len();
    // Folders that `imgsim dupes --move-to` filled hold the copies moved
    // aside; indexing them again would bring every duplicate back. They
    // are indexed only when named as a root.
    let walker = WalkDir::new(&absolute)
        .follow_links(options.follow_links)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            let moved_aside = entry.depth() > 0
                && entry.file_type().is_dir()
                && entry.path().join(MOVED_ASIDE_MARKER).exists();
            if moved_aside {
                tracing::info!(
                    "skipped {}: it holds duplicates moved aside by `imgsim dupes --move-to`",
                    crate::paths::display_path(entry.path())
                );
            }
            !moved_aside
        });
    for entry in walker {
        if cancel.load(Ordering::Relaxed) {
            result.interrupted = true;
            return;
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let path = error.path().unwrap_or(&absolute).to_path_buf();
                if let Some(ancestor) = error.loop_ancestor() {
                    let message = format!(
                        "symbolic link loop back to {}, not followed",
                        ancestor.display()
                    );
                    result.loops.push((path, message));
                    continue;
                }
                let reason = match error.io_error() {
                    Some(io) => io_reason(io),
                    None => error.to_string(),
                };
                result.failures.push(ScanFailure { path, reason });
                continue;
            }
        };
        if !entry.file_type().is_file() || !has_image_extension(entry.path()) {
            continue;
        }
        match entry.metadata() {
            Ok(metadata) => push_candidate(entry.path(), &metadata, result, seen),
            Err(error) => result.failures.push(ScanFailure {
                path: entry.path().to_path_buf(),
                reason: error.to_string(),
            }),
        }
    }
    result.walked_roots.push(WalkedRoot {
        path: absolute,
        candidates: result.candidates.len() - before,
    });
}

/// Name of the file that `imgsim dupes --move-to` writes into its folder,
/// so that walks below an indexed root leave the folder out.
pub const MOVED_ASIDE_MARKER: &str = ".imgsim-moved-aside";

fn push_candidate(
    path: &Path,
    metadata: &std::fs::Metadata,
    result: &mut ScanResult,
    seen: &mut HashSet<PathBuf>,
) {
    if !seen.insert(path.to_path_buf()) {
        return;
    }
    result.candidates.push(Candidate {
        path: path.to_path_buf(),
        state: file_state(metadata),
    });
}

/// Size and modification time (nanoseconds since the Unix epoch; negative
/// before it) of a file.
pub fn file_state(metadata: &std::fs::Metadata) -> FileState {
    let modified_ns = metadata
        .modified()
        .ok()
        .map(|time| match time.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i64,
            Err(before) => -(before.duration().as_nanos() as i64),
        })
        .unwrap_or(0);
    FileState {
        file_size: metadata.len(),
        modified_ns,
    }
}

/// Returns whether the file name ends in one of [`IMAGE_EXTENSIONS`].
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(ext))
        })
}

fn failure(path: &Path, reason: &str) -> ScanFailure {
    ScanFailure {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "not found".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_match_case_insensitively() {
        assert!(has_image_extension(Path::new("a/B.JPG")));
        assert!(has_image_extension(Path::new("a/b.Tiff")));
        assert!(!has_image_extension(Path::new("a/b.json")));
        assert!(!has_image_extension(Path::new("a/jpg")));
    }

    #[test]
    fn folders_are_walked_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.png", "a.jpg", "notes.txt", "sub/c.webp"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        let result = scan_roots(&[dir.path().to_path_buf()], &ScanOptions::default());
        let names: Vec<_> = result
            .candidates
            .iter()
            .map(|c| {
                let root = dir.path().canonicalize().unwrap();
                c.path.strip_prefix(root).unwrap().to_path_buf()
            })
            .collect();
        assert_eq!(
            names,
            [PathBuf::from("a.jpg"), "b.png".into(), "sub/c.webp".into()]
        );
        assert!(result.failures.is_empty());
    }

    #[test]
    fn file_root_is_candidate_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("photo.data");
        std::fs::write(&file, b"12345").unwrap();
        let spelled_differently = dir.path().join(".").join("photo.data");
        let result = scan_roots(
            &[file.clone(), spelled_differently],
            &ScanOptions::default(),
        );
        assert_eq!(result.candidates.len(), 1);
        assert_eq!(result.candidates[0].path, file.canonicalize().unwrap());
        assert_eq!(result.candidates[0].state.file_size, 5);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loop_is_reported_when_following() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("a.png"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path(), inner.join("back")).unwrap();

        let plain = scan_roots(&[dir.path().to_path_buf()], &ScanOptions::default());
        assert_eq!(plain.candidates.len(), 1);
        assert!(plain.failures.is_empty());

        let following = ScanOptions { follow_links: true };
        let followed = scan_roots(&[dir.path().to_path_buf()], &following);
        assert_eq!(followed.candidates.len(), 1);
        assert!(followed.failures.is_empty(), "{:?}", followed.failures);
        assert_eq!(followed.loops.len(), 1);
        assert!(followed.loops[0].1.contains("loop"), "{:?}", followed.loops);
    }

    #[cfg(unix)]
    #[test]
    fn fifo_is_not_a_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jpg");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let result = scan_roots(&[dir.path().to_path_buf()], &ScanOptions::default());
        assert!(result.candidates.is_empty());
        let direct = scan_roots(&[fifo], &ScanOptions::default());
        assert!(direct.candidates.is_empty());
        assert_eq!(direct.failures[0].reason, "not a regular file or folder");
    }

    #[test]
    fn missing_root_is_reported() {
        let result = scan_roots(
            &[PathBuf::from("/nonexistent/imgsim/root")],
            &ScanOptions::default(),
        );
        assert!(result.candidates.is_empty());
        assert_eq!(result.failures.len(), 1);
        assert_eq!(result.failures[0].reason, "not found");
    }

    #[test]
    fn cancelled_walk_stops_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.jpg", "b.png"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let roots = [dir.path().to_path_buf()];
        let cancelled = scan_roots_until(&roots, &ScanOptions::default(), &AtomicBool::new(true));
        assert!(cancelled.interrupted);
        assert!(cancelled.candidates.is_empty());
        let finished = scan_roots_until(&roots, &ScanOptions::default(), &AtomicBool::new(false));
        assert!(!finished.interrupted);
        assert_eq!(finished.candidates.len(), 2);
    }
}

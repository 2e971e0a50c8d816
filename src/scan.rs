//! Finding candidate image files under the roots given on the command line.
//!
//! A root that is a file is always a candidate, whatever its name. Inside a
//! folder, files are candidates when their extension is one of the image
//! extensions below (case-insensitive); the content is sniffed later, so a
//! PNG named `.jpg` is still decoded correctly. Symbolic links are not
//! followed, so a link loop cannot make the walk run forever. Entries are
//! visited in file-name order, so runs are reproducible.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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

/// Result of walking all roots.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub candidates: Vec<Candidate>,
    pub failures: Vec<ScanFailure>,
}

/// Walks `roots` and returns the candidate files, without duplicates, and
/// every path that could not be read.
pub fn scan_roots(roots: &[PathBuf]) -> ScanResult {
    let mut result = ScanResult::default();
    let mut seen = HashSet::new();
    for root in roots {
        scan_root(root, &mut result, &mut seen);
    }
    result
}

fn scan_root(root: &Path, result: &mut ScanResult, seen: &mut HashSet<PathBuf>) {
    let absolute = match std::path::absolute(root) {
        Ok(path) => path,
        Err(error) => {
            result.failures.push(failure(root, &error.to_string()));
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
        push_candidate(&absolute, &metadata, result, seen);
        return;
    }
    if !metadata.is_dir() {
        result
            .failures
            .push(failure(root, "not a regular file or folder"));
        return;
    }
    let walker = WalkDir::new(&absolute)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let path = error.path().unwrap_or(&absolute).to_path_buf();
                let reason = error
                    .io_error()
                    .map(io_reason)
                    .unwrap_or_else(|| error.to_string());
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
}

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

/// Whether the file name ends in one of [`IMAGE_EXTENSIONS`].
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
        let result = scan_roots(&[dir.path().to_path_buf()]);
        let names: Vec<_> = result
            .candidates
            .iter()
            .map(|c| c.path.strip_prefix(dir.path()).unwrap().to_path_buf())
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
        let result = scan_roots(&[file.clone(), file.clone()]);
        assert_eq!(result.candidates.len(), 1);
        assert_eq!(result.candidates[0].path, file);
        assert_eq!(result.candidates[0].state.file_size, 5);
    }

    #[test]
    fn missing_root_is_reported() {
        let result = scan_roots(&[PathBuf::from("/nonexistent/imgsim/root")]);
        assert!(result.candidates.is_empty());
        assert_eq!(result.failures.len(), 1);
        assert_eq!(result.failures[0].reason, "not found");
    }
}

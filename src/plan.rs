//! Deciding what an index run must do with each file, before any decoding.
//!
//! Files whose size and modification time match the database are
//! unchanged. Every other file is fingerprinted (BLAKE3 of its content) and
//! then, in this order of preference:
//! - same path, same content: only the size or time changed (refresh);
//! - same content as a row whose file is gone: a move or rename, which keeps
//!   that row's vector;
//! - same content as a row whose file still exists: a copy, which reuses
//!   that row's vector in a new row;
//! - otherwise the file is decoded and embedded (added, or changed when its
//!   path was indexed before).
//!
//! A file whose size differs from that of every stored row cannot have the
//! content of one. It is only opened here, to report unreadable files
//! before decoding starts. The index worker then fingerprints the bytes it
//! reads for decoding, so each new file is read once.
//!
//! A row is gone when its path lies under a folder root walked in this run
//! and the file no longer exists there. Rows under roots not walked this
//! time are left alone, since drives come and go. So is every row under a
//! root that yielded no images at all, which is what an unmounted drive's
//! empty mount point looks like.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::paths::{path_from_bytes, path_to_bytes};
use crate::scan::{Candidate, ScanResult, WalkedRoot};
use crate::store::{Change, Fingerprint, StoredFile};

/// A file that must be decoded and embedded.
#[derive(Debug, Clone)]
pub struct ToEmbed {
    pub candidate: Candidate,
    /// `None` when the plan did not need it: the file is fingerprinted when
    /// it is read for decoding.
    pub fingerprint: Option<Fingerprint>,
    /// Set when the path was indexed before with other content.
    pub replaces: bool,
}

/// A file that could not be fingerprinted.
#[derive(Debug, Clone)]
pub struct ReadFailure {
    pub path: PathBuf,
    pub reason: String,
    /// The row of the file's earlier content, which no longer matches it.
    pub previous_id: Option<i64>,
}

/// Everything an index run will do, with the paths behind each count.
#[derive(Debug, Default)]
pub struct Plan {
    pub to_embed: Vec<ToEmbed>,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// Files whose size or time changed but whose content did not.
    pub refreshed: Vec<PathBuf>,
    /// (old path, new path) of moved or renamed files.
    pub moved: Vec<(PathBuf, PathBuf)>,
    /// (source path, new path) of files with the same content as an
    /// indexed file.
    pub copied: Vec<(PathBuf, PathBuf)>,
    pub removed: Vec<PathBuf>,
    pub read_failures: Vec<ReadFailure>,
    /// Folder roots whose rows were kept although no image was found in
    /// them.
    pub empty_roots: Vec<PathBuf>,
}

impl Plan {
    pub fn added(&self) -> usize {
        self.to_embed.iter().filter(|item| !item.replaces).count()
    }

    pub fn changed(&self) -> usize {
        self.to_embed.iter().filter(|item| item.replaces).count()
    }
}

/// Returns the BLAKE3 hash of the file's content.
pub fn fingerprint_file(path: &Path) -> std::io::Result<Fingerprint> {
    let mut hasher = blake3::Hasher::new();
    let file = crate::files::open_regular(path)?;
    hasher.update_reader(file)?;
    Ok(*hasher.finalize().as_bytes())
}

/// Works out what to do with the scanned files, given what the database
/// contains (`stored`, keyed by raw path bytes). Returns `None` when
/// `cancel` is set while files are being fingerprinted, since a partial
/// plan could take a moved file for a deleted one.
pub fn plan_run(
    scan: &ScanResult,
    stored: &HashMap<Vec<u8>, StoredFile>,
    max_file_bytes: u64,
    cancel: &AtomicBool,
) -> Option<Plan> {
    let mut plan = Plan::default();
    let mut work = Vec::new();
    let mut seen = HashSet::with_capacity(scan.candidates.len());
    for candidate in &scan.candidates {
        let key = path_to_bytes(&candidate.path);
        let previous = stored.get(&key);
        seen.insert(key);
        if previous.is_some_and(|p| p.state == candidate.state) {
            plan.unchanged += 1;
        } else {
            work.push((candidate, previous));
        }
    }

    let stored_sizes: HashSet<u64> = stored
        .values()
        .filter(|row| row.fingerprint.is_some())
        .map(|row| row.state.file_size)
        .collect();
    let fingerprinted: Vec<std::io::Result<Option<Fingerprint>>> = work
        .par_iter()
        .map(|(candidate, _)| {
            if cancel.load(Ordering::SeqCst) {
                return Err(std::io::Error::from(ErrorKind::Interrupted));
            }
            let size = candidate.state.file_size;
            if size > max_file_bytes {
                // Rejected before reading: hashing a huge file costs as
                // much I/O as decoding it.
                let message = format!(
                    "file is {size} bytes, over the limit of {max_file_bytes} bytes for the \
                     pixel cap (--max-pixels)"
                );
                return Err(std::io::Error::new(ErrorKind::FileTooLarge, message));
            }
            if stored_sizes.contains(&size) {
                fingerprint_file(&candidate.path).map(Some)
            } else {
                crate::files::open_regular(&candidate.path).map(|_| None)
            }
        })
        .collect();
    if cancel.load(Ordering::SeqCst) {
        return None;
    }
    let (gone, empty_roots) = gone_rows(&scan.walked_roots, stored, &seen);
    plan.empty_roots = empty_roots;

    let mut gone_by_content: HashMap<Fingerprint, Vec<(i64, PathBuf)>> = HashMap::new();
    let mut gone_ids = HashSet::new();
    for (path, row) in &gone {
        gone_ids.insert(row.id);
        if let Some(fingerprint) = row.fingerprint {
            gone_by_content
                .entry(fingerprint)
                .or_default()
                .push((row.id, path.clone()));
        }
    }
    let mut present_by_content: HashMap<Fingerprint, (i64, PathBuf)> = HashMap::new();
    for (key, row) in stored {
        if let (Some(fingerprint), false) = (row.fingerprint, gone_ids.contains(&row.id)) {
            present_by_content
                .entry(fingerprint)
                .or_insert_with(|| (row.id, path_from_bytes(key)));
        }
    }

    let mut claimed = HashSet::new();
    for ((candidate, previous), fingerprint) in work.into_iter().zip(fingerprinted) {
        let fingerprint = match fingerprint {
            Ok(Some(fingerprint)) => fingerprint,
            Ok(None) => {
                plan.to_embed.push(ToEmbed {
                    candidate: candidate.clone(),
                    fingerprint: None,
                    replaces: previous.is_some(),
                });
                continue;
            }
            Err(error) => {
                plan.read_failures.push(ReadFailure {
                    path: candidate.path.clone(),
                    reason: read_reason(&error),
                    previous_id: previous.map(|p| p.id),
                });
                continue;
            }
        };
        let context = Matching {
            gone_by_content: &mut gone_by_content,
            present_by_content: &present_by_content,
            claimed: &mut claimed,
        };
        classify(candidate, previous, fingerprint, context, &mut plan);
    }

    for (path, row) in gone {
        if !claimed.contains(&row.id) {
            plan.changes.push(Change::Delete { id: row.id });
            plan.removed.push(path);
        }
    }
    Some(plan)
}

/// Rows that a file with known content can be matched against.
struct Matching<'a> {
    gone_by_content: &'a mut HashMap<Fingerprint, Vec<(i64, PathBuf)>>,
    present_by_content: &'a HashMap<Fingerprint, (i64, PathBuf)>,
    /// Rows already taken over by a move in this run.
    claimed: &'a mut HashSet<i64>,
}

fn classify(
    candidate: &Candidate,
    previous: Option<&StoredFile>,
    fingerprint: Fingerprint,
    matching: Matching<'_>,
    plan: &mut Plan,
) {
    let path = candidate.path.clone();
    let state = candidate.state;
    if let Some(previous) = previous.filter(|p| p.fingerprint == Some(fingerprint)) {
        plan.changes.push(Change::Refresh {
            id: previous.id,
            state,
        });
        plan.refreshed.push(path);
        return;
    }
    let gone_match = matching
        .gone_by_content
        .get_mut(&fingerprint)
        .and_then(|rows| rows.pop());
    if let Some((id, old_path)) = gone_match {
        matching.claimed.insert(id);
        plan.changes.push(Change::Move {
            id,
            path: path.clone(),
            state,
        });
        plan.moved.push((old_path, path));
        return;
    }
    let own_id = previous.map(|p| p.id);
    let present_match = matching
        .present_by_content
        .get(&fingerprint)
        .filter(|(id, _)| Some(*id) != own_id && !matching.claimed.contains(id));
    if let Some((id, source_path)) = present_match {
        if is_missing(source_path) {
            // Moved here from a folder that is not being scanned.
            matching.claimed.insert(*id);
            plan.changes.push(Change::Move {
                id: *id,
                path: path.clone(),
                state,
            });
            plan.moved.push((source_path.clone(), path));
        } else {
            plan.changes.push(Change::Copy {
                source_id: *id,
                path: path.clone(),
                state,
                fingerprint,
            });
            plan.copied.push((source_path.clone(), path));
        }
        return;
    }
    // NOTE: two new files with the same content in one run are both
    // decoded; copies are only matched against rows already stored.
    plan.to_embed.push(ToEmbed {
        candidate: candidate.clone(),
        fingerprint: Some(fingerprint),
        replaces: previous.is_some(),
    });
}

/// Rows under walked folder roots whose files no longer exist, and the
/// roots skipped because they yielded no images.
fn gone_rows(
    walked_roots: &[WalkedRoot],
    stored: &HashMap<Vec<u8>, StoredFile>,
    seen: &HashSet<Vec<u8>>,
) -> (Vec<(PathBuf, StoredFile)>, Vec<PathBuf>) {
    let mut empty_roots = Vec::new();
    let mut roots = Vec::new();
    for root in walked_roots {
        let has_rows = stored
            .keys()
            .any(|key| path_from_bytes(key).starts_with(&root.path));
        if root.candidates == 0 && has_rows {
            empty_roots.push(root.path.clone());
        } else {
            roots.push(root.path.clone());
        }
    }
    let mut gone: Vec<(PathBuf, StoredFile)> = stored
        .iter()
        .filter(|(key, _)| !seen.contains(*key))
        .map(|(key, row)| (path_from_bytes(key), row.clone()))
        .filter(|(path, _)| roots.iter().any(|root| path.starts_with(root)))
        .filter(|(path, _)| is_missing(path))
        .collect();
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    (gone, empty_roots)
}

/// Returns whether nothing exists at `path`. Other errors (permission
/// denied, an unreachable network share) count as present, so they never
/// cause a deletion.
fn is_missing(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(error) if error.kind() == ErrorKind::NotFound)
}

/// Returns the failure reason for a file that could not be read.
pub fn read_reason(error: &std::io::Error) -> String {
    match error.kind() {
        ErrorKind::NotFound => "cannot read: file disappeared after the scan".to_string(),
        ErrorKind::PermissionDenied => "cannot read: permission denied".to_string(),
        ErrorKind::InvalidInput => "cannot read: no longer a regular file".to_string(),
        ErrorKind::FileTooLarge => error.to_string(),
        _ => format!("cannot read: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan_roots, ScanOptions};

    #[test]
    fn cancelled_fingerprinting_gives_no_plan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"bytes").unwrap();
        let scan = scan_roots(&[dir.path().to_path_buf()], &ScanOptions::default());
        let cancel = AtomicBool::new(true);
        assert!(plan_run(&scan, &HashMap::new(), u64::MAX, &cancel).is_none());
    }

    #[test]
    fn new_file_of_new_size_is_hashed_later() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"bytes").unwrap();
        let scan = scan_roots(&[dir.path().to_path_buf()], &ScanOptions::default());
        let plan = plan_run(&scan, &HashMap::new(), u64::MAX, &AtomicBool::new(false)).unwrap();
        assert_eq!(plan.to_embed.len(), 1);
        assert_eq!(plan.added(), 1);
        assert_eq!(plan.to_embed[0].fingerprint, None);
    }

    #[test]
    fn new_file_of_stored_size_is_fingerprinted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"bytes").unwrap();
        let scan = scan_roots(&[dir.path().to_path_buf()], &ScanOptions::default());
        let other = StoredFile {
            id: 1,
            state: crate::store::FileState {
                file_size: 5,
                modified_ns: 0,
            },
            fingerprint: Some(*blake3::hash(b"other").as_bytes()),
        };
        let outside = dir.path().parent().unwrap().join("elsewhere.jpg");
        let stored = HashMap::from([(path_to_bytes(&outside), other)]);

        let plan = plan_run(&scan, &stored, u64::MAX, &AtomicBool::new(false)).unwrap();

        assert_eq!(plan.to_embed.len(), 1);
        assert_eq!(
            plan.to_embed[0].fingerprint,
            Some(*blake3::hash(b"bytes").as_bytes())
        );
    }
}

//! The lock that lets one `index` run at a time write to a database.
//!
//! The lock is an advisory lock (`flock`) on `<database>.lock` beside the
//! database, held for the whole run and released by the operating system
//! when the process ends, even on `kill -9`. Readers (`query`) take no lock:
//! SQLite's WAL mode lets them read the last committed state while an index
//! run writes.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{database}: another `imgsim index` is running on this database (lock {lock}); \
         wait for it to finish, or pass --wait to wait for it"
    )]
    Busy { database: PathBuf, lock: PathBuf },
    #[error("{path}: cannot lock: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a database, released on drop.
#[derive(Debug)]
pub struct IndexLock {
    _file: File,
}

/// Path of the lock file of `database`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    database.with_file_name(name)
}

/// Takes the exclusive lock of `database`, waiting for it when `wait` is
/// set and failing with [`LockError::Busy`] at once otherwise.
pub fn lock_database(database: &Path, wait: bool) -> Result<IndexLock, LockError> {
    let path = lock_path(database);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error)?;
    if wait {
        file.lock().map_err(io_error)?;
        return Ok(IndexLock { _file: file });
    }
    match file.try_lock() {
        Ok(()) => Ok(IndexLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(LockError::Busy {
            database: database.to_path_buf(),
            lock: path,
        }),
        Err(TryLockError::Error(source)) => Err(io_error(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("db.sqlite");
        let first = lock_database(&database, false).unwrap();
        let error = lock_database(&database, false).unwrap_err();
        assert!(matches!(error, LockError::Busy { .. }), "{error}");
        drop(first);
        assert!(lock_database(&database, false).is_ok());
        assert_eq!(lock_path(&database), dir.path().join("db.sqlite.lock"));
    }
}

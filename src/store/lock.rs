//! The lock that lets one `index` run at a time write to a database.
//!
//! The lock is an advisory lock (`flock`) on `<database>.lock` beside the
//! database, held for the whole run and released by the operating system
//! when the process ends, even on `kill -9`. Readers (`query`) take no lock:
//! SQLite's WAL mode lets them read the last committed state while an index
//! run writes.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Time to wait for a lock held by another run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once.
    No,
    /// Wait until the other run ends.
    Forever,
    /// Wait at most this long, then fail.
    AtMost(Duration),
}

/// Interval between attempts while waiting with a time limit.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{database}: another `imgsim index` is running on this database (lock {lock}); \
         wait for it to finish, or pass --wait to wait for it"
    )]
    Busy { database: PathBuf, lock: PathBuf },
    #[error(
        "{database}: timed out after {seconds} s waiting for another `imgsim index` on this \
         database to finish (lock {lock}); try again later, or pass a longer --wait=SECONDS"
    )]
    TimedOut {
        database: PathBuf,
        lock: PathBuf,
        seconds: u64,
    },
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

/// Takes the exclusive lock of `database`. When another run has it,
/// fails with [`LockError::Busy`] at once, waits for it, or fails with
/// [`LockError::TimedOut`] after the time limit, as `wait` requests.
pub fn lock_database(database: &Path, wait: Wait) -> Result<IndexLock, LockError> {
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
    // A limit too far away to represent as an instant is no limit.
    let wait = match wait {
        Wait::AtMost(limit) if Instant::now().checked_add(limit).is_none() => Wait::Forever,
        other => other,
    };
    let deadline = match wait {
        Wait::No => None,
        Wait::Forever => {
            file.lock().map_err(io_error)?;
            return Ok(IndexLock { _file: file });
        }
        Wait::AtMost(limit) => Some((Instant::now() + limit, limit)),
    };
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(IndexLock { _file: file }),
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
            Err(TryLockError::WouldBlock) => {}
        }
        let Some((deadline, limit)) = deadline else {
            return Err(LockError::Busy {
                database: database.to_path_buf(),
                lock: path,
            });
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::TimedOut {
                database: database.to_path_buf(),
                lock: path,
                seconds: limit.as_secs(),
            });
        }
        std::thread::sleep(RETRY_INTERVAL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("db.sqlite");
        let first = lock_database(&database, Wait::No).unwrap();
        let error = lock_database(&database, Wait::No).unwrap_err();
        assert!(matches!(error, LockError::Busy { .. }), "{error}");
        drop(first);
        assert!(lock_database(&database, Wait::No).is_ok());
        assert_eq!(lock_path(&database), dir.path().join("db.sqlite.lock"));
    }

    #[test]
    fn limited_wait_times_out_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("db.sqlite");
        let first = lock_database(&database, Wait::No).unwrap();

        let started = Instant::now();
        let error = lock_database(&database, Wait::AtMost(Duration::from_millis(300))).unwrap_err();
        assert!(matches!(error, LockError::TimedOut { .. }), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A lock released while the second run waits is taken by it.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = lock_database(&database, Wait::AtMost(Duration::from_secs(30)));
        releaser.join().unwrap();
        assert!(second.is_ok());
        drop(second);

        // A limit beyond what an instant can hold takes a free lock.
        assert!(lock_database(&database, Wait::AtMost(Duration::MAX)).is_ok());
    }
}

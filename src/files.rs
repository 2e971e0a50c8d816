//! Opening files for reading without ever blocking on a FIFO or device.
//!
//! A path can be replaced by a FIFO between the scan and the read, and
//! opening a FIFO for reading blocks until a writer appears. Files are
//! therefore opened with `O_NONBLOCK`, which has no effect on regular files,
//! and rejected unless the opened handle is a regular file.

use std::fs::File;
use std::io::{Error, ErrorKind};
use std::path::Path;

/// Opens `path` for reading, failing with [`ErrorKind::InvalidInput`] when
/// it is not a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn fifo_is_rejected_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = open_regular(&fifo).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn folder_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let error = open_regular(dir.path()).unwrap_err();
        assert!(
            matches!(
                error.kind(),
                ErrorKind::InvalidInput | ErrorKind::IsADirectory
            ),
            "{error}"
        );
    }

    #[test]
    fn regular_file_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(open_regular(&path).unwrap().metadata().unwrap().len(), 3);
    }
}

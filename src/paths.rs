//! Paths as raw bytes for storage and as text for people.
//!
//! The database stores a path's raw OS bytes, so names that are not valid
//! UTF-8 come back byte for byte. Terminal output shows them lossily with
//! control characters escaped, so a file name cannot rewrite the screen.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

#[cfg(unix)]
pub fn path_to_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(OsStr::from_bytes(bytes))
}

// NOTE: on platforms other than Unix, paths are stored as UTF-8 text, so a
// name that is not valid Unicode is stored lossily there.
#[cfg(not(unix))]
pub fn path_to_bytes(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Formats a path for a terminal: invalid UTF-8 becomes U+FFFD and control
/// characters are escaped as `\u{..}`.
pub fn display_path(path: &Path) -> String {
    let lossy = path.to_string_lossy();
    let mut shown = String::with_capacity(lossy.len());
    for character in lossy.chars() {
        if character.is_control() {
            shown.extend(character.escape_default());
        } else {
            shown.push(character);
        }
    }
    shown
}

/// Returns the path's raw bytes as lowercase hex when they are not valid
/// UTF-8, for machine-readable output that must round-trip exactly.
pub fn non_utf8_hex(path: &Path) -> Option<String> {
    if path.to_str().is_some() {
        return None;
    }
    let bytes = path_to_bytes(path);
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// A path in JSON output: `path` always, as UTF-8 with U+FFFD for invalid
/// bytes, and `path_hex` with the exact bytes when they are not UTF-8.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JsonPath {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
}

impl JsonPath {
    pub fn new(path: &Path) -> JsonPath {
        JsonPath {
            path: path.to_string_lossy().into_owned(),
            path_hex: non_utf8_hex(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn bytes_round_trip_non_utf8() {
        let raw = b"/photos/caf\xe9.jpg".to_vec();
        let path = path_from_bytes(&raw);
        assert_eq!(path_to_bytes(&path), raw);
        assert_eq!(
            non_utf8_hex(&path).as_deref(),
            Some("2f70686f746f732f636166e92e6a7067")
        );
        assert_eq!(display_path(&path), "/photos/caf\u{fffd}.jpg");
    }

    #[test]
    fn display_escapes_control_characters() {
        let path = Path::new("/photos/a\nb\u{1b}[2J.jpg");
        assert_eq!(display_path(path), "/photos/a\\nb\\u{1b}[2J.jpg");
    }

    #[test]
    fn utf8_path_has_no_hex() {
        assert_eq!(non_utf8_hex(Path::new("/photos/café.jpg")), None);
    }
}

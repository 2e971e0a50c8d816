//! Vectors as SQLite BLOBs: little-endian f32, four bytes per component.

/// Encodes a vector as little-endian f32 bytes.
pub fn vector_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// Decodes little-endian f32 bytes; `None` when the length is not a
/// multiple of four.
pub fn vector_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    let values = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    Some(values)
}

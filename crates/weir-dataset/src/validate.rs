//! Names and values that become path components are checked before anything is written.

use crate::DatasetError;

/// Longest name or value: one path component on common filesystems.
const MAX_BYTES: usize = 255;

/// Checks one dataset name, partition name (`is_key`: no `=` either) or partition value: not
/// empty, at most 255 bytes, no `/`, `\`, `..`, NUL or other control characters.
pub fn validate_component(what: &'static str, value: &str, is_key: bool) -> Result<(), DatasetError> {
    let bad = |why: &'static str| {
        Err(DatasetError::Invalid {
            what,
            value: value.to_string(),
            why,
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > MAX_BYTES {
        return bad("longer than 255 bytes");
    }
    if value.contains('\0') {
        return bad("contains NUL");
    }
    if value.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if value.contains('/') || value.contains('\\') {
        return bad("contains a path separator (`/` or `\\`)");
    }
    if value.contains("..") {
        return bad("contains `..`");
    }
    if value == "." {
        return bad("is `.`");
    }
    if is_key && value.contains('=') {
        return bad("contains `=`");
    }
    Ok(())
}

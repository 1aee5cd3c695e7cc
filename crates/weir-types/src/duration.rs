//! Human durations (`500ms`, `10s`, `1d`, `2h 30m`) as used in task options and the CLI.

use std::time::Duration;

/// A duration string that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration '{input}': {reason} (examples: 500ms, 10s, 5m, 1d)")]
pub struct InvalidDuration {
    pub input: String,
    pub reason: String,
}

/// Parses `500ms`, `10s`, `1d`, `2h 30m` and the like.
pub fn parse(input: &str) -> Result<Duration, InvalidDuration> {
    humantime::parse_duration(input.trim()).map_err(|e| InvalidDuration {
        input: input.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms_and_rejects_garbage() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse(" 2h 30m ").unwrap(), Duration::from_secs(9_000));
        let err = parse("soon").unwrap_err().to_string();
        assert!(err.contains("invalid duration 'soon'"), "{err}");
    }
}

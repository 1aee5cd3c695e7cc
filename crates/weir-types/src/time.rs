//! Wall-clock time for runs and cache expiry, with an offset tests can move.
//!
//! Expiry and timestamps go through [`now`] so a test can jump forward in time with
//! [`advance`] instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

static OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// Microseconds since the Unix epoch, as weir sees them (the system clock plus any test offset).
pub fn now_micros() -> i64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    real + OFFSET_MICROS.load(Ordering::Relaxed)
}

/// The current time as a timestamp.
pub fn now() -> Timestamp {
    from_micros(now_micros())
}

/// Converts stored microseconds to a timestamp (out-of-range values clamp to the epoch).
pub fn from_micros(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Moves weir's clock forward for the whole process. For tests of expiry; never needed in production.
pub fn advance(by: Duration) {
    OFFSET_MICROS.fetch_add(by.as_micros() as i64, Ordering::Relaxed);
}

/// Formats a duration in microseconds for tables: `3.01s`, `412ms`, `17µs`.
pub fn format_micros(us: i64) -> String {
    let us = us.max(0);
    if us >= 60_000_000 {
        let s = us / 1_000_000;
        format!("{}m{:02}s", s / 60, s % 60)
    } else if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{}ms", us / 1_000)
    } else {
        format!("{us}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_now_forward() {
        let before = now_micros();
        advance(Duration::from_secs(3600));
        let after = now_micros();
        assert!(after - before >= 3_600_000_000);
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_micros(17), "17µs");
        assert_eq!(format_micros(412_000), "412ms");
        assert_eq!(format_micros(3_010_000), "3.01s");
        assert_eq!(format_micros(125_000_000), "2m05s");
    }
}

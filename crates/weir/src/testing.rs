//! Helpers for testing flows: move weir's clock instead of sleeping.

use std::time::Duration;

/// Moves weir's clock forward for this process, so cache expiry can be tested without
/// waiting.
pub fn advance_clock(by: Duration) {
    weir_types::time::advance(by);
}

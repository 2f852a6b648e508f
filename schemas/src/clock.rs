//! The wall clock, in the units Canopy stores: one definition, so every crate stamps alike.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    // A clock before 1970 is a broken host; zero keeps every stamp ordered rather than panic.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Microseconds since the Unix epoch (votes, decisions, audit entries).
pub fn now_micros() -> i64 {
    since_epoch().as_micros() as i64
}

/// Milliseconds since the Unix epoch (sensor readings, windows).
pub fn now_millis() -> i64 {
    since_epoch().as_millis() as i64
}

/// Whole seconds since the Unix epoch (token lifetimes).
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

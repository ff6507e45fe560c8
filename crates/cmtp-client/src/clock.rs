//! Wall-clock helpers: the protocol crate never reads the clock, so the
//! client passes `now` in from here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-26T02:00:00Z`.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Parses an RFC 3339 time to unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(s)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_round_trip() {
        assert_eq!(super::rfc3339(1_795_658_400), "2026-11-26T02:00:00Z");
        assert_eq!(
            super::parse_rfc3339("2026-11-26T02:00:00Z"),
            Some(1_795_658_400)
        );
    }
}

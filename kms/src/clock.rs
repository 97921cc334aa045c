//! An injectable clock so expiry and rotation are testable (STYLE.md).

use std::sync::atomic::{AtomicI64, Ordering};

/// One clock for the KMS and its audit log, so a record's time is the decision's time
/// (tests move both with a [`ManualClock`]).
pub use strongroom_audit::{Clock, SystemClock};

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        Self(AtomicI64::new(start_ms))
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 UTC with milliseconds, as the KMS objects carry dates (protocol.md "Objects").
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parses an RFC 3339 date into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let s = rfc3339(1_767_323_045_123);
        assert_eq!(s, "2026-01-02T03:04:05.123Z");
        assert_eq!(parse_rfc3339(&s), Some(1_767_323_045_123));
        assert_eq!(
            parse_rfc3339("2026-01-02T03:04:05Z"),
            Some(1_767_323_045_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}

//! Closed vocabularies of the record schema. Adding a variant is a schema change that
//! old verifiers reject (they do not know the string), so document it in the ADR.

use serde::{Deserialize, Serialize};

/// Who made the decision the record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Kind {
    /// A KMS protocol request from a client, allowed or denied.
    #[serde(rename = "kms.decision")]
    KmsDecision,
    /// An administrator action (admin API, CLI).
    #[serde(rename = "admin")]
    Admin,
    /// A KMS-to-KMS request, either direction.
    #[serde(rename = "federation")]
    Federation,
    /// A machine account's key access.
    #[serde(rename = "machine")]
    Machine,
    /// The indexer bot's key access.
    #[serde(rename = "indexer")]
    Indexer,
}

/// The method or action. KMS methods keep the protocol's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    Create,
    Retrieve,
    Update,
    Delete,
    /// A method the KMS does not know (the client's text is not recorded).
    UnknownMethod,
    /// `strongroom init`.
    Init,
    Start,
    Stop,
    RotateKek,
    ConfigChange,
    GrantRole,
    RevokeRole,
    Backup,
    Restore,
    /// This KMS asked a peer for a key on behalf of its user.
    FederatedFetch,
    /// A peer asked this KMS for a key on behalf of the peer's user.
    FederatedRelease,
    /// The indexer fetched a key to index a message.
    Index,
    /// The indexer fetched a key to answer a search.
    Search,
}

/// What the decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    Allowed,
    Denied,
    /// The request could not be decided (internal error); nothing was released.
    Failed,
}

/// Why. Stable codes; [`Reason::text`] gives the human text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    Ok,
    BadRequest,
    Unauthenticated,
    TokenExpired,
    WrongAudience,
    Forbidden,
    NotMember,
    NotFound,
    Conflict,
    ChannelExpired,
    UnknownMethod,
    PeerNotAllowed,
    RateLimited,
    Unavailable,
    Internal,
}

impl Reason {
    /// Fixed human-readable text for the code.
    pub fn text(self) -> &'static str {
        match self {
            Reason::Ok => "allowed",
            Reason::BadRequest => "malformed request",
            Reason::Unauthenticated => "no valid bearer token",
            Reason::TokenExpired => "bearer token expired",
            Reason::WrongAudience => "token audience is not this KMS",
            Reason::Forbidden => "caller lacks the right for this object",
            Reason::NotMember => "caller is not a member of the resource",
            Reason::NotFound => "object does not exist",
            Reason::Conflict => "object state conflicts with the request",
            Reason::ChannelExpired => "ECDHE channel expired",
            Reason::UnknownMethod => "unknown method",
            Reason::PeerNotAllowed => "federation peer not allowed",
            Reason::RateLimited => "rate limited",
            Reason::Unavailable => "a dependency (HSM, store, audit log) is unavailable",
            Reason::Internal => "internal error",
        }
    }
}

/// `time` as RFC 3339 UTC with exactly three fractional digits and `Z`
/// (`2026-05-01T10:00:00.123Z`), years 0000-9999. Hand-written (Hinnant's civil-date
/// algorithms) because it runs for every record written and verified.
pub(crate) mod rfc3339_ms {
    use serde::{Deserialize, Deserializer, Serializer, de};

    const MS_PER_DAY: i64 = 86_400_000;
    /// 0000-01-01 and 10000-01-01 in days since 1970-01-01.
    const MIN_DAY: i64 = -719_528;
    const END_DAY: i64 = 2_932_897;

    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn days_in_month(y: i64, m: i64) -> i64 {
        match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    pub(crate) fn format(ms: i64) -> Option<String> {
        let day = ms.div_euclid(MS_PER_DAY);
        if !(MIN_DAY..END_DAY).contains(&day) {
            return None;
        }
        let in_day = ms.rem_euclid(MS_PER_DAY);
        let (y, mo, d) = civil_from_days(day);
        let (h, mi, s, frac) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1000 % 60,
            in_day % 1000,
        );
        Some(format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z"
        ))
    }

    pub(crate) fn parse(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() != 24
            || b.get(4) != Some(&b'-')
            || b.get(7) != Some(&b'-')
            || b.get(10) != Some(&b'T')
            || b.get(13) != Some(&b':')
            || b.get(16) != Some(&b':')
            || b.get(19) != Some(&b'.')
            || b.get(23) != Some(&b'Z')
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            b.get(from..to)?.iter().try_fold(0i64, |acc, c| {
                c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
            })
        };
        let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (h, mi, sec, frac) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 59
        {
            return None;
        }
        Some(days_from_civil(y, mo, d) * MS_PER_DAY + ((h * 60 + mi) * 60 + sec) * 1000 + frac)
    }

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` signature
    pub(crate) fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        let text =
            format(*ms).ok_or_else(|| serde::ser::Error::custom("time outside years 0-9999"))?;
        s.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = <&str>::deserialize(d)?;
        parse(s).ok_or_else(|| de::Error::custom("time is not RFC 3339 UTC with milliseconds"))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips_and_rejects_other_forms() {
            assert_eq!(
                super::format(0).as_deref(),
                Some("1970-01-01T00:00:00.000Z")
            );
            assert_eq!(
                super::format(1_777_629_600_123).as_deref(),
                Some("2026-05-01T10:00:00.123Z")
            );
            assert_eq!(
                super::format(951_782_400_000).as_deref(),
                Some("2000-02-29T00:00:00.000Z")
            );
            assert_eq!(
                super::format(-1).as_deref(),
                Some("1969-12-31T23:59:59.999Z")
            );
            // Every day of four centuries round-trips, and matches the `time` crate.
            for day in (-200_000..200_000).step_by(7) {
                let ms = day * 86_400_000 + 45_296_789;
                let text = super::format(ms).unwrap_or_default();
                assert_eq!(super::parse(&text), Some(ms), "{text}");
                let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                assert_eq!(
                    (i64::from(t.year()), t.month() as i64, i64::from(t.day())),
                    (
                        text[0..4].parse().unwrap_or(0),
                        text[5..7].parse().unwrap_or(0),
                        text[8..10].parse().unwrap_or(0)
                    )
                );
            }
            for bad in [
                "2026-05-01T10:00:00Z",
                "2026-05-01T10:00:00.123+01:00",
                "2026-02-30T10:00:00.123Z",
                "2026-13-01T10:00:00.123Z",
                "2026-05-01T24:00:00.123Z",
                "2026-05-01T10:00:60.123Z",
                "+026-05-01T10:00:00.123Z",
            ] {
                assert_eq!(super::parse(bad), None, "{bad}");
            }
            assert_eq!(super::format(253_402_300_800_000), None, "year 10000");
        }
    }
}

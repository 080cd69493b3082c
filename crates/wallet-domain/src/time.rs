//! Timestamps on the wire: RFC 3339 in UTC with millisecond precision.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time that names UTC (`Z` or `+00:00`).
pub fn parse_utc(text: &str) -> Option<DateTime<Utc>> {
    if text.len() > 40 {
        return None;
    }
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    (parsed.offset().local_minus_utc() == 0).then(|| parsed.with_timezone(&Utc))
}

pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_utc_times() {
        let at = parse_utc("2030-01-01T23:59:59.5Z").unwrap();
        assert_eq!(rfc3339(at), "2030-01-01T23:59:59.500Z");
        assert_eq!(
            parse_utc("2030-01-01T00:00:00+00:00").map(rfc3339).unwrap(),
            "2030-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn refuses_other_offsets_and_garbage() {
        assert_eq!(parse_utc("2030-01-01T00:00:00+02:00"), None);
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(parse_utc("2030-01-01"), None);
    }
}

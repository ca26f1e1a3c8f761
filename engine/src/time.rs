//! Time: ingest epochs, event timestamps and durations.
//!
//! Timely timestamps are *ingest epochs*: milliseconds of wall-clock time at which a
//! group of events was committed to the write-ahead log, strictly increasing. Event time
//! is data (a timestamp column) and never drives the dataflow's progress.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::{Error, Result};

/// An ingest epoch: the dataflow's logical time, in milliseconds since the Unix epoch.
pub type Epoch = u64;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, with milliseconds.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h`, `7d` or `1h30m` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64> {
    let bad = || Error::Config(format!("invalid duration {text:?}: expected e.g. 30s, 5m, 1h, 7d"));
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = number.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("7d").unwrap(), 604_800_000);
        assert!(parse_duration_ms("5 minutes").is_err());
        assert!(parse_duration_ms("m").is_err());
        assert!(parse_duration_ms("").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        let ms = parse_rfc3339_ms("2026-11-22T10:00:00.250Z").unwrap();
        assert_eq!(format_rfc3339_ms(ms), "2026-11-22T10:00:00.250Z");
        assert_eq!(parse_rfc3339_ms("2026-11-22T11:00:00+01:00"), parse_rfc3339_ms("2026-11-22T10:00:00Z"));
    }
}

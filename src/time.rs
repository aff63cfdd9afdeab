//! Time zones and instants: the DST-safe helpers every layer shares.
//!
//! Owns: parsing IANA zone names, the start of a local day (never `.single().unwrap()`: some zones
//! skip midnight, and 02:30 can be ambiguous), and the millisecond RFC 3339 rendering giosg uses
//! (`2019-01-01T00:00:00.000+02:00`), the UTC offset in force at an instant and where it changes,
//! and vendor durations as seconds ([`duration_secs`]: Thulium's `HH:MM:SS`, Comm100's
//! `hh:mm:ss.fffffff`).
//! Everything else asks here rather than calling chrono-tz ad hoc.

use chrono::{
    DateTime, Duration, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;

/// Seconds in a vendor duration: `HH:MM:SS` (Thulium; hours may exceed 23 and have more digits),
/// `hh:mm:ss.fffffff` (Comm100, .NET's TimeSpan: up to seven fraction digits), and .NET's day
/// form `d.hh:mm:ss[.fffffff]`. Minutes and seconds must be below 60; nothing may be negative.
pub fn duration_secs(text: &str) -> Result<f64, String> {
    let bad = || format!("`{text}` is not a duration like HH:MM:SS or hh:mm:ss.fffffff");
    let t = text.trim();
    let parts: Vec<&str> = t.split(':').collect();
    let [h, m, sec] = parts.as_slice() else { return Err(bad()) };
    let (days, hours) = match h.split_once('.') {
        Some((d, h)) => (d, h),
        None => ("0", *h),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = match sec.split_once('.') {
        Some((whole, fraction)) if digits(fraction) => (whole, fraction),
        Some(_) => return Err(bad()),
        None => (*sec, ""),
    };
    if !(digits(days) && digits(hours) && m.len() == 2 && digits(m) && whole.len() == 2 && digits(whole)) {
        return Err(bad());
    }
    let n = |s: &str| s.parse::<f64>().map_err(|_| bad());
    let (d, h, m, s) = (n(days)?, n(hours)?, n(m)?, n(whole)?);
    if m >= 60.0 || s >= 60.0 {
        return Err(bad());
    }
    let frac = if fraction.is_empty() { 0.0 } else { n(&format!("0.{fraction}"))? };
    Ok(((d * 24.0 + h) * 60.0 + m) * 60.0 + s + frac)
}

/// Parses an IANA time zone name such as `Europe/Helsinki`.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone `{name}` (expected an IANA name such as Europe/Helsinki)"))
}

/// The first instant of local date `date` in `tz`.
///
/// Where midnight is ambiguous the earlier instant wins; where the zone skips midnight (e.g.
/// America/Santiago on 2026-09-06) the day starts at the first local minute that exists.
pub fn local_day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    local_to_utc(tz, date.and_hms_opt(0, 0, 0).expect("midnight is a valid time"))
}

/// Maps a local wall-clock time to an instant: the earlier one when ambiguous, and the first
/// existing minute after it when it falls into a gap.
pub fn local_to_utc(tz: Tz, mut naive: NaiveDateTime) -> DateTime<Utc> {
    // Gaps are at most a day long (Pacific/Apia skipped 2011-12-30 whole); step by a minute until
    // the wall clock exists again.
    for _ in 0..=(24 * 60) {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(earlier, _) => return earlier.with_timezone(&Utc),
            LocalResult::None => naive += Duration::minutes(1),
        }
    }
    unreachable!("no zone has a gap longer than a day")
}

/// The local date of instant `t` in `tz`.
pub fn local_date(tz: Tz, t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// The UTC offset in force in `tz` at instant `t`.
pub fn utc_offset(tz: Tz, t: DateTime<Utc>) -> FixedOffset {
    tz.offset_from_utc_datetime(&t.naive_utc()).fix()
}

/// The first instant in `(after, until]` at which `tz`'s UTC offset differs from the one in force
/// at `after`, or `None` when it does not change.
///
/// Meant for spans of an hour or so: it compares the two ends and bisects between them, so two
/// changes that cancel each other out inside the span go unseen (no zone changes its offset twice
/// within hours).
pub fn first_offset_change(tz: Tz, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let before = utc_offset(tz, after);
    if until <= after || utc_offset(tz, until) == before {
        return None;
    }
    // Offsets change on whole seconds, so bisect over whole seconds: the offset at `lo` is
    // `before`, the offset at `hi` is not.
    let at = |secs: i64| DateTime::from_timestamp(secs, 0).expect("between two valid instants");
    let (mut lo, mut hi) = (after.timestamp(), until.timestamp());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if utc_offset(tz, at(mid)) == before {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(at(hi))
}

/// Renders `t` in `tz`'s offset at that instant with milliseconds, as giosg does:
/// `2024-03-31T00:00:00.000+02:00`.
pub fn format_ms_in(tz: Tz, t: DateTime<Utc>) -> String {
    t.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// Renders a UTC instant with milliseconds and a `Z`, as the dataset file stores times.
pub fn format_ms_utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde adapter: `DateTime<Utc>` as RFC 3339 with milliseconds and `Z`.
pub mod serde_ms_utc {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ms_utc(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time `{s}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_durations_become_seconds() {
        // Thulium (api-docs 004) and Comm100 (api-docs 003) examples.
        assert_eq!(duration_secs("00:00:48").unwrap(), 48.0);
        assert_eq!(duration_secs("01:02:03").unwrap(), 3723.0);
        assert_eq!(duration_secs("125:00:00").unwrap(), 450_000.0);
        assert!((duration_secs("06:53:57.0500000").unwrap() - 24_837.05).abs() < 1e-9);
        assert!((duration_secs("00:20:38.2649999").unwrap() - 1238.2649999).abs() < 1e-9);
        assert_eq!(duration_secs("1.02:00:00").unwrap(), 93_600.0);
        for bad in ["", "48", "00:48", "00:60:00", "00:00:60", "-01:00:00", "aa:bb:cc", "00:00:00.", "00:0:00"] {
            assert!(duration_secs(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn helsinki_dst_days_have_23_and_25_hours() {
        let tz: Tz = "Europe/Helsinki".parse().unwrap();
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let len = |a, b| (local_day_start(tz, b) - local_day_start(tz, a)).num_hours();
        assert_eq!(len(d(2024, 3, 31), d(2024, 4, 1)), 23);
        assert_eq!(len(d(2024, 10, 27), d(2024, 10, 28)), 25);
        assert_eq!(len(d(2024, 6, 1), d(2024, 6, 2)), 24);
    }

    #[test]
    fn santiago_day_without_midnight_starts_at_one() {
        let tz: Tz = "America/Santiago".parse().unwrap();
        let start = local_day_start(tz, NaiveDate::from_ymd_opt(2026, 9, 6).unwrap());
        assert_eq!(format_ms_in(tz, start), "2026-09-06T01:00:00.000-03:00");
    }

    #[test]
    fn apia_skipped_day_starts_when_the_next_one_does() {
        // Samoa jumped from 2011-12-29 23:59:59-10:00 to 2011-12-31 00:00:00+14:00.
        let tz: Tz = "Pacific/Apia".parse().unwrap();
        let d = |day| NaiveDate::from_ymd_opt(2011, 12, day).unwrap();
        assert_eq!(local_day_start(tz, d(30)), local_day_start(tz, d(31)));
        assert_eq!((local_day_start(tz, d(31)) - local_day_start(tz, d(29))).num_hours(), 24);
    }

    #[test]
    fn finds_the_instant_the_offset_changes() {
        let tz: Tz = "Europe/Helsinki".parse().unwrap();
        let utc = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 2024-10-27 04:00+03:00 becomes 03:00+02:00 at 01:00Z.
        let change = utc("2024-10-27T01:00:00Z");
        assert_eq!(utc_offset(tz, change).local_minus_utc(), 2 * 3600);
        assert_eq!(utc_offset(tz, change - Duration::seconds(1)).local_minus_utc(), 3 * 3600);
        let found = first_offset_change(tz, utc("2024-10-27T00:17:03.5Z"), utc("2024-10-27T01:40:00Z"));
        assert_eq!(found, Some(change));
        assert_eq!(first_offset_change(tz, change - Duration::hours(1), change), Some(change));
        assert_eq!(first_offset_change(tz, change, change + Duration::hours(1)), None);
        assert_eq!(first_offset_change(tz, utc("2024-06-01T00:00:00Z"), utc("2024-06-02T00:00:00Z")), None);
    }

    #[test]
    fn formats_with_zone_offset_and_millis() {
        let tz: Tz = "Europe/Helsinki".parse().unwrap();
        let t = local_day_start(tz, NaiveDate::from_ymd_opt(2019, 1, 1).unwrap());
        assert_eq!(format_ms_in(tz, t), "2019-01-01T00:00:00.000+02:00");
        assert_eq!(format_ms_utc(t), "2018-12-31T22:00:00.000Z");
    }

    #[test]
    fn unknown_zone_is_named() {
        assert!(parse_tz("Mars/Olympus").unwrap_err().contains("Mars/Olympus"));
    }
}

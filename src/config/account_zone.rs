//! Whether a job's windows fit the buckets of an account's zone (Thulium's chat summary).
//!
//! Owns: [`bucket_split`], the rule `validate` applies to `chat_summary` jobs. Thulium buckets
//! `series` on the account's wall clock (`sources.<name>.time_zone`), and `src/source/thulium.rs`
//! requires every bucket it reads back to lie inside the requested range, the job's windows
//! rendered in the account's zone. Both hold exactly when every window boundary of the job starts
//! a bucket of the account's zone: a job whose zone "splits the account's days" (a Helsinki day is
//! 23:00 .. 22:59:59 in Warsaw) fails every window at run time; this finds it from the files.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::{AggregateBy, WindowUnit};
use crate::time::{local_date, local_day_start};

/// Days checked from the job's start, and up to now: a year of both zones' offset changes.
const SPAN_DAYS: i64 = 400;

/// A window boundary of a job that falls inside a bucket of the account's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSplit {
    /// The boundary.
    pub at: DateTime<Utc>,
    /// Its wall clock in the job's zone.
    pub job_clock: NaiveDateTime,
    /// Its wall clock in the account's zone, inside one of its buckets.
    pub account_clock: NaiveDateTime,
    /// The bucket it splits: `day`, `hour` or `minute`.
    pub bucket: &'static str,
}

/// The first boundary of `window`s in `job_tz` (history from local date `start`) that does not
/// start an `aggregate_by` bucket on the wall clock of `account`, looking at the first
/// [`SPAN_DAYS`] days from `start` and the [`SPAN_DAYS`] days before `now`; `None` when they fit.
/// Week, month and year buckets (and hour_of_day's) are longer than a window: Thulium sends one
/// per request, so any window fits them, as long as it covers whole hours for hour_of_day.
pub fn bucket_split(
    window: WindowUnit,
    job_tz: Tz,
    account: Tz,
    aggregate_by: AggregateBy,
    start: NaiveDate,
    now: DateTime<Utc>,
) -> Option<BucketSplit> {
    let bucket = match aggregate_by {
        AggregateBy::Minute => "minute",
        AggregateBy::Hour | AggregateBy::HourOfDay => "hour",
        AggregateBy::Day => "day",
        AggregateBy::Week | AggregateBy::Month | AggregateBy::Year => return None,
    };
    if job_tz == account || window == WindowUnit::Snapshot {
        return None;
    }
    let starts_bucket = |t: DateTime<Utc>| {
        let clock = t.with_timezone(&account).naive_local();
        match bucket {
            "day" => local_day_start(account, local_date(account, t)) == t,
            "hour" => clock.minute() == 0 && clock.second() == 0,
            _ => clock.second() == 0,
        }
    };
    let split = |t: DateTime<Utc>| {
        (!starts_bucket(t)).then(|| BucketSplit {
            at: t,
            job_clock: t.with_timezone(&job_tz).naive_local(),
            account_clock: t.with_timezone(&account).naive_local(),
            bucket,
        })
    };
    let today = local_date(job_tz, now);
    let mut spans = vec![start];
    if today - Duration::days(SPAN_DAYS) > start {
        spans.push(today - Duration::days(SPAN_DAYS));
    }
    for first in spans {
        for day in first.iter_days().take(SPAN_DAYS as usize) {
            let day_start = local_day_start(job_tz, day);
            if let Some(s) = split(day_start) {
                return Some(s);
            }
            if window == WindowUnit::Hour {
                let next = local_day_start(job_tz, day.succ_opt()?);
                let mut t = day_start + Duration::hours(1);
                while t < next {
                    let clock = t.with_timezone(&job_tz).naive_local();
                    // Only the job's `HH:00` boundaries (a zone may shift by half an hour).
                    if clock.minute() == 0
                        && clock.second() == 0
                        && let Some(s) = split(t)
                    {
                        return Some(s);
                    }
                    t += Duration::hours(1);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America, Asia, Europe};

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2025-06-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn config_zone_rule_finds_days_split_by_another_zone() {
        let split = bucket_split(
            WindowUnit::Day,
            Europe::Helsinki,
            Europe::Warsaw,
            AggregateBy::Day,
            date("2024-01-01"),
            now(),
        )
        .expect("a Helsinki day starts at 23:00 in Warsaw");
        assert_eq!(split.bucket, "day");
        assert_eq!(split.job_clock, date("2024-01-01").and_hms_opt(0, 0, 0).unwrap());
        assert_eq!(split.account_clock, date("2023-12-31").and_hms_opt(23, 0, 0).unwrap());
        // thulium.rs's own example: a Stockholm day splits two Helsinki days; New York's too.
        for job in [Europe::Stockholm, America::New_York] {
            assert!(
                bucket_split(WindowUnit::Day, job, Europe::Helsinki, AggregateBy::Day, date("2024-01-01"), now())
                    .is_some()
            );
        }
    }

    #[test]
    fn config_zone_rule_accepts_what_fits() {
        let start = date("2024-01-01");
        // The same zone, and a zone with the same rules under another name.
        assert_eq!(
            bucket_split(WindowUnit::Day, Europe::Helsinki, Europe::Helsinki, AggregateBy::Day, start, now()),
            None
        );
        assert_eq!(bucket_split(WindowUnit::Day, Europe::Riga, Europe::Helsinki, AggregateBy::Day, start, now()), None);
        // Hours of zones a whole number of hours apart fit, all year round (both follow EU DST).
        for window in [WindowUnit::Hour, WindowUnit::Day] {
            assert_eq!(
                bucket_split(window, Europe::Stockholm, Europe::Helsinki, AggregateBy::Hour, start, now()),
                None
            );
        }
        // Buckets longer than a window fit any window.
        for agg in [AggregateBy::Week, AggregateBy::Month, AggregateBy::Year] {
            assert_eq!(bucket_split(WindowUnit::Day, America::New_York, Europe::Helsinki, agg, start, now()), None);
        }
        assert_eq!(
            bucket_split(WindowUnit::Hour, Asia::Kolkata, Europe::Helsinki, AggregateBy::Minute, start, now()),
            None
        );
    }

    #[test]
    fn config_zone_rule_finds_hours_split_by_half_hour_zones() {
        let split = bucket_split(
            WindowUnit::Hour,
            Asia::Kolkata,
            Europe::Helsinki,
            AggregateBy::Hour,
            date("2024-01-01"),
            now(),
        )
        .unwrap();
        assert_eq!((split.bucket, split.account_clock.minute()), ("hour", 30));
        let hod = bucket_split(
            WindowUnit::Day,
            Asia::Kolkata,
            Europe::Helsinki,
            AggregateBy::HourOfDay,
            date("2024-01-01"),
            now(),
        );
        assert!(hod.is_some(), "hour_of_day needs whole account hours");
    }
}

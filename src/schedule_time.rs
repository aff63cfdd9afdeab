//! When a job's schedule fires: six-field cron expressions (seconds first) on a zone's wall clock,
//! correct across DST changes.
//!
//! Owns [`Schedule`]: parsing a job's `schedule` and the next fire time after an instant. It answers
//! "when", never "what": what a run loads comes from the watermark (see [`crate::plan`]), so a tick
//! that is late, doubled or missed does no harm. To change how DST changes are treated, change
//! [`Schedule::next_after`] and its tests; croner only ever walks a plain wall clock here.
//!
//! Why chatetl drives its own ticks with croner rather than tokio-cron-scheduler: in its 0.15.1
//! source, `Job::new_async_tz` keeps only the zone's UTC offset at creation (`src/job/mod.rs:222-225`)
//! and every tick after the first is computed in that fixed offset (`src/scheduler.rs:183-192`), so
//! a 06:00 Europe/Helsinki job fires at 07:00 or 05:00 local after a DST change (its issues #87,
//! #107; proven by the `tokio_cron_scheduler_faults` tests below). It also starts a run while the
//! last is still going (`src/job/runner.rs:46-58`) and folds missed ticks into one late run
//! (`src/scheduler.rs:192`); a small loop over [`Schedule::next_after`] avoids all three.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

use crate::time::{first_offset_change, utc_offset};

/// A parsed job schedule: a six-field cron expression (seconds first) evaluated on the wall clock of `tz`.
///
/// Fields are second, minute, hour, day of month, month (1-12 or JAN-DEC) and day of week (0-7 or
/// SUN-SAT, 0 and 7 both Sunday). When both day fields are restricted a day matches if either does,
/// as in Vixie cron (tokio-cron-scheduler requires both); `+` before the day of week asks for both.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    /// The expression, matched against naive wall-clock times only: DST is handled here.
    cron: Cron,
    /// Second, minute and hour each hold a single value (croner's "fixed-time" job, e.g.
    /// `0 30 6 * * *`): such a schedule fires once when the zone repeats its wall-clock time.
    fixed_time: bool,
}

impl Schedule {
    /// Parses `expr`: exactly six fields, seconds first, to be evaluated in `tz`. A five-field
    /// crontab line is rejected with a message saying to add the seconds field; errors are
    /// lowercase phrases naming the expression.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if fields == 5 {
            return Err(format!(
                "cron expression `{expr}` has five fields: add the seconds field first (e.g. `0 {}`)",
                expr.trim()
            ));
        }
        if fields != 6 {
            return Err(format!(
                "cron expression `{expr}` has {fields} field(s): expected six, seconds first (e.g. `0 30 6 * * *`)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| format!("invalid cron expression `{expr}`: {}", lowercase_phrase(&e.to_string())))?;
        let fixed_time = cron.determine_job_type() == JobType::FixedTime;
        Ok(Schedule { expr: expr.to_string(), tz, cron, fixed_time })
    }

    /// The first fire time strictly after `after`, as a UTC instant, evaluated in the zone's local
    /// wall clock at each date (so 06:00 Europe/Helsinki is 04:00Z in summer and 05:00Z in winter).
    /// `None` if the expression never fires again (e.g. `0 0 0 30 2 *`).
    ///
    /// Across DST changes:
    /// - **Skipped times** (spring forward): a wall-clock time the expression matches that the zone
    ///   skips fires at the first instant after the gap, once however many skipped times match.
    ///   `0 30 3 * * *` fires at 04:00 Helsinki summer time on 2024-03-31; `0 30 * * * *` fires at
    ///   04:00 and 04:30 that morning. (croner alone drops skipped times for any expression that is
    ///   not fixed-time, so its zone-aware search is not used.)
    /// - **Repeated times** (fall back): a fixed-time expression (one value each for second,
    ///   minute and hour, like `0 30 3 * * *`) fires once, at the first occurrence. Any other
    ///   expression fires at every instant whose wall clock matches, both passes included, so
    ///   `0 0 * * * *` fires 25 times on 2024-10-27 in Helsinki (and 23 on 2024-03-31).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Cron times are whole seconds: start at the first one strictly after `after`.
        let mut from = after.trunc_subsecs(0).checked_add_signed(Duration::seconds(1))?;
        loop {
            // Walk the wall clock in the offset in force at `from` until the next match...
            let offset = offset_secs(self.tz, from);
            let wall = self.next_wall_time(from.naive_utc().checked_add_signed(offset)?)?;
            let at = wall.checked_sub_signed(offset)?.and_utc();
            // ...unless the offset changes before then: the wall clock jumps there.
            match next_offset_change(self.tz, from, at) {
                Some(change) => {
                    let new_offset = offset_secs(self.tz, change);
                    // The match lies in the wall-clock times the change skips.
                    if new_offset > offset && wall < change.naive_utc() + new_offset {
                        return Some(change);
                    }
                    from = change;
                }
                None if self.fixed_time && self.is_second_pass(wall, at) => {
                    from = at.checked_add_signed(Duration::seconds(1))?;
                }
                None => return Some(at),
            }
        }
    }

    /// The latest fire time at or before `t` (within 400 days), found by looking back twice as
    /// far each time from one minute: the tick a catch-up at `t` stands for.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut lookback = Duration::minutes(1);
        while lookback <= Duration::days(400) {
            let mut latest = self.next_after(t - lookback).filter(|f| *f <= t);
            if latest.is_some() {
                while let Some(n) = latest.and_then(|f| self.next_after(f)).filter(|n| *n <= t) {
                    latest = Some(n);
                }
                return latest;
            }
            lookback = lookback * 2;
        }
        None
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first wall-clock time at or after `wall` that the expression matches.
    fn next_wall_time(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&wall, true).ok()
    }

    /// Whether instant `at`, showing `wall`, is the second time the zone shows that wall clock.
    fn is_second_pass(&self, wall: NaiveDateTime, at: DateTime<Utc>) -> bool {
        matches!(self.tz.from_local_datetime(&wall), LocalResult::Ambiguous(_, later) if later == at)
    }
}

/// The UTC offset in force in `tz` at `t`, as a duration to add to UTC.
fn offset_secs(tz: Tz, t: DateTime<Utc>) -> Duration {
    Duration::seconds(utc_offset(tz, t).local_minus_utc().into())
}

/// The first instant in `(from, until]` at which `tz`'s offset differs from the one at `from`.
/// Scans an hour at a time, the span [`first_offset_change`] is made for.
fn next_offset_change(tz: Tz, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut lo = from;
    while lo < until {
        let hi = (lo + Duration::hours(1)).min(until);
        if let Some(change) = first_offset_change(tz, lo, hi) {
            return Some(change);
        }
        lo = hi;
    }
    None
}

/// croner's messages read `Invalid pattern: Pattern must ….`; ours are lowercase phrases.
fn lowercase_phrase(message: &str) -> String {
    let message = message.trim_end_matches('.');
    let mut chars = message.chars();
    chars.next().map(|first| first.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{format_ms_in, local_day_start};
    use chrono::{Datelike, NaiveDate, Timelike};

    #[test]
    fn the_last_fire_time_at_or_before_an_instant() {
        let utc = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let every_5s = Schedule::parse("*/5 * * * * *", chrono_tz::UTC).unwrap();
        assert_eq!(every_5s.last_at_or_before(utc("2024-03-01T10:00:07.5Z")), Some(utc("2024-03-01T10:00:05Z")));
        assert_eq!(every_5s.last_at_or_before(utc("2024-03-01T10:00:05Z")), Some(utc("2024-03-01T10:00:05Z")));
        let daily = Schedule::parse("0 30 3 * * *", chrono_tz::Europe::Helsinki).unwrap();
        assert_eq!(daily.last_at_or_before(utc("2024-03-01T00:00:00Z")), Some(utc("2024-02-29T01:30:00Z")));
    }

    const HELSINKI: Tz = Tz::Europe__Helsinki;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(expr: &str, tz: Tz) -> Schedule {
        Schedule::parse(expr, tz).unwrap()
    }

    /// Successive fire times in `[from, until)`.
    fn fires(s: &Schedule, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from - Duration::seconds(1);
        while let Some(next) = s.next_after(t).filter(|&next| next < until) {
            out.push(next);
            t = next;
        }
        out
    }

    fn helsinki_day(y: i32, m: u32, d: u32) -> (DateTime<Utc>, DateTime<Utc>) {
        let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
        (local_day_start(HELSINKI, date), local_day_start(HELSINKI, date.succ_opt().unwrap()))
    }

    #[test]
    fn six_in_the_morning_stays_six_across_both_helsinki_changes() {
        let s = schedule("0 0 6 * * *", HELSINKI);
        let expected = [
            ("2024-03-30T06:00:00.000+02:00", "2024-03-30T04:00:00Z"),
            ("2024-03-31T06:00:00.000+03:00", "2024-03-31T03:00:00Z"),
            ("2024-04-01T06:00:00.000+03:00", "2024-04-01T03:00:00Z"),
        ];
        let got = fires(&s, utc("2024-03-30T00:00:00Z"), utc("2024-04-02T00:00:00Z"));
        assert_eq!(got, expected.map(|(_, z)| utc(z)));
        assert_eq!(got.iter().map(|&t| format_ms_in(HELSINKI, t)).collect::<Vec<_>>(), expected.map(|(l, _)| l));

        let expected = [
            ("2024-10-26T06:00:00.000+03:00", "2024-10-26T03:00:00Z"),
            ("2024-10-27T06:00:00.000+02:00", "2024-10-27T04:00:00Z"),
            ("2024-10-28T06:00:00.000+02:00", "2024-10-28T04:00:00Z"),
        ];
        let got = fires(&s, utc("2024-10-26T00:00:00Z"), utc("2024-10-29T00:00:00Z"));
        assert_eq!(got, expected.map(|(_, z)| utc(z)));
        assert_eq!(got.iter().map(|&t| format_ms_in(HELSINKI, t)).collect::<Vec<_>>(), expected.map(|(l, _)| l));
    }

    #[test]
    fn hourly_fires_23_times_on_the_short_day_and_25_on_the_long_one() {
        let s = schedule("0 0 * * * *", HELSINKI);
        let count = |(from, until)| fires(&s, from, until).len();
        assert_eq!(count(helsinki_day(2024, 3, 31)), 23);
        assert_eq!(count(helsinki_day(2024, 10, 27)), 25);
        assert_eq!(count(helsinki_day(2024, 6, 1)), 24);

        // Spring: 02:00+02, then 04:00+03 (03:00 does not exist).
        let spring = fires(&s, utc("2024-03-30T23:30:00Z"), utc("2024-03-31T02:30:00Z"));
        assert_eq!(spring, ["2024-03-31T00:00:00Z", "2024-03-31T01:00:00Z", "2024-03-31T02:00:00Z"].map(utc));
        assert_eq!(format_ms_in(HELSINKI, spring[1]), "2024-03-31T04:00:00.000+03:00");
        // Autumn: 03:00 twice, an hour apart.
        let autumn = fires(&s, utc("2024-10-26T23:30:00Z"), utc("2024-10-27T01:30:00Z"));
        assert_eq!(
            autumn.iter().map(|&t| format_ms_in(HELSINKI, t)).collect::<Vec<_>>(),
            ["2024-10-27T03:00:00.000+03:00", "2024-10-27T03:00:00.000+02:00"]
        );
    }

    #[test]
    fn time_skipped_by_spring_forward_fires_when_the_gap_ends() {
        // 2024-03-31 03:00+02 became 04:00+03: 03:30 does not exist.
        let s = schedule("0 30 3 * * *", HELSINKI);
        let got = fires(&s, utc("2024-03-30T00:00:00Z"), utc("2024-04-02T00:00:00Z"));
        assert_eq!(
            got.iter().map(|&t| format_ms_in(HELSINKI, t)).collect::<Vec<_>>(),
            ["2024-03-30T03:30:00.000+02:00", "2024-03-31T04:00:00.000+03:00", "2024-04-01T03:30:00.000+03:00"]
        );
        assert_eq!(got[1], utc("2024-03-31T01:00:00Z"));
    }

    #[test]
    fn time_repeated_by_fall_back_fires_once_at_the_first_occurrence() {
        // 2024-10-27 04:00+03 became 03:00+02: 03:30 happens at 00:30Z and again at 01:30Z.
        let s = schedule("0 30 3 * * *", HELSINKI);
        let got = fires(&s, utc("2024-10-26T00:00:00Z"), utc("2024-10-29T00:00:00Z"));
        assert_eq!(
            got.iter().map(|&t| format_ms_in(HELSINKI, t)).collect::<Vec<_>>(),
            ["2024-10-26T03:30:00.000+03:00", "2024-10-27T03:30:00.000+03:00", "2024-10-28T03:30:00.000+02:00"]
        );
        assert_eq!(got[1], utc("2024-10-27T00:30:00Z"));
        // Asked between the two occurrences, it waits for the next day.
        assert_eq!(s.next_after(utc("2024-10-27T01:00:00Z")), Some(utc("2024-10-28T01:30:00Z")));
    }

    #[test]
    fn interval_expression_fires_a_skipped_time_when_the_gap_ends() {
        // Unlike croner's own zone-aware search, which drops 03:30 for a non-fixed-time expression.
        let s = schedule("0 30 * * * *", HELSINKI);
        let got = fires(&s, utc("2024-03-31T00:00:00Z"), utc("2024-03-31T02:00:00Z"));
        assert_eq!(
            got.iter().map(|&t| format_ms_in(HELSINKI, t)).collect::<Vec<_>>(),
            ["2024-03-31T02:30:00.000+02:00", "2024-03-31T04:00:00.000+03:00", "2024-03-31T04:30:00.000+03:00"]
        );
        let croner_own = s.cron.find_next_occurrence(&utc("2024-03-31T00:30:00Z").with_timezone(&HELSINKI), false);
        assert_eq!(format_ms_in(HELSINKI, croner_own.unwrap().with_timezone(&Utc)), "2024-03-31T04:30:00.000+03:00");
    }

    #[test]
    fn every_five_seconds() {
        let s = schedule("*/5 * * * * *", HELSINKI);
        assert_eq!(s.next_after(utc("2024-06-01T12:00:03Z")), Some(utc("2024-06-01T12:00:05Z")));
        assert_eq!(s.next_after(utc("2024-06-01T12:00:05Z")), Some(utc("2024-06-01T12:00:10Z")));
        assert_eq!(s.next_after(utc("2024-06-01T12:00:05.5Z")), Some(utc("2024-06-01T12:00:10Z")));
        assert_eq!(s.next_after(utc("2024-06-01T12:00:04.999Z")), Some(utc("2024-06-01T12:00:05Z")));
        // Straight through both changes, five seconds apart in real time.
        for change in ["2024-03-31T01:00:00Z", "2024-10-27T01:00:00Z"].map(utc) {
            let got = fires(&s, change - Duration::seconds(10), change + Duration::seconds(10));
            let expected: Vec<_> = (-2..2).map(|i| change + Duration::seconds(5 * i)).collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn either_day_field_matches_when_both_are_restricted() {
        // The 13th, and every Friday: 2024-09-06 (Fri), 2024-09-13 (Fri), 2024-10-13 (Sun).
        let s = schedule("0 0 12 13 * FRI", Tz::UTC);
        let got = fires(&s, utc("2024-09-01T00:00:00Z"), utc("2024-10-14T00:00:00Z"));
        let days: Vec<u32> = got.iter().map(|t| t.day()).collect();
        assert_eq!(days, [6, 13, 20, 27, 4, 11, 13]);
    }

    #[test]
    fn five_field_crontab_line_is_rejected() {
        let error = Schedule::parse("30 6 * * *", HELSINKI).unwrap_err();
        assert_eq!(
            error,
            "cron expression `30 6 * * *` has five fields: add the seconds field first (e.g. `0 30 6 * * *`)"
        );
    }

    #[test]
    fn bad_expressions_are_named_in_lowercase_errors() {
        for expr in ["0 61 * * * *", "0 0 6 * * * 2030", "@daily", "0 0 25 * * *", "x y z a b c"] {
            let error = Schedule::parse(expr, HELSINKI).unwrap_err();
            assert!(error.contains(&format!("`{expr}`")), "{error}");
            assert!(error.starts_with(|c: char| c.is_lowercase()), "{error}");
        }
    }

    #[test]
    fn expression_that_never_fires_again_gives_none() {
        let s = schedule("0 0 0 30 2 *", HELSINKI);
        assert_eq!(s.next_after(utc("2024-01-01T00:00:00Z")), None);
        assert_eq!(s.expr(), "0 0 0 30 2 *");
    }

    #[test]
    fn leap_day_waits_four_years() {
        let s = schedule("0 0 6 29 2 *", HELSINKI);
        assert_eq!(s.next_after(utc("2024-03-01T00:00:00Z")), Some(utc("2028-02-29T04:00:00Z")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const ZONES: [Tz; 4] = [Tz::Europe__Helsinki, Tz::America__New_York, Tz::Australia__Lord_Howe, Tz::UTC];
        /// 2020-01-01T00:00:00Z and 2030-12-31T00:00:00Z.
        const FROM_2020: i64 = 1_577_836_800;
        const TO_2030: i64 = 1_924_905_600;

        fn instant() -> impl Strategy<Value = DateTime<Utc>> {
            (FROM_2020..TO_2030, prop_oneof![Just(0u32), 0u32..1_000_000_000])
                .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap())
        }

        /// Expressions with lists, ranges and steps in the time fields, and a few fixed-time ones.
        fn expression() -> impl Strategy<Value = String> {
            let second = prop::sample::select(&["0", "30", "*/20", "0,45"][..]);
            let minute = prop::sample::select(&["0", "30", "*/15", "10,40", "0-5", "*"][..]);
            let hour = prop::sample::select(&["*", "2", "3", "1-3", "*/2", "2,3", "0"][..]);
            (second, minute, hour).prop_map(|(s, m, h)| format!("{s} {m} {h} * * *"))
        }

        /// `next_after`'s rules, second by second: `t` fires if its wall clock matches (for a
        /// fixed-time expression, not on its second pass), or if `t` ends a gap in which some
        /// wall-clock time matches.
        fn fires_at(s: &Schedule, t: DateTime<Utc>) -> bool {
            let wall = t.with_timezone(&s.tz).naive_local();
            if s.cron.is_time_matching(&wall).unwrap() && !(s.fixed_time && s.is_second_pass(wall, t)) {
                return true;
            }
            let (old, new) = (offset_secs(s.tz, t - Duration::seconds(1)), offset_secs(s.tz, t));
            new > old && s.next_wall_time(t.naive_utc() + old).is_some_and(|m| m < t.naive_utc() + new)
        }

        proptest! {
            #[test]
            fn daily_expression_fires_every_day_at_its_wall_clock_time(
                tz in prop::sample::select(&ZONES[..]),
                (hour, minute, second) in (0u32..24, 0u32..60, 0u32..60),
                start in instant(),
            ) {
                let s = schedule(&format!("{second} {minute} {hour} * * *"), tz);
                let mut previous = start;
                for i in 0..5 {
                    let next = s.next_after(previous).unwrap();
                    prop_assert!(next > previous, "{next} after {previous}");
                    if i > 0 {
                        // One fire a day: a day is 24 hours, give or take a DST change.
                        prop_assert!((next - previous - Duration::hours(24)).abs() <= Duration::hours(1));
                    }
                    // croner's own rules agree for a fixed-time expression.
                    let croner_own = s.cron.find_next_occurrence(&previous.with_timezone(&tz), false).unwrap();
                    prop_assert_eq!(croner_own.with_timezone(&Utc), next);

                    let local = next.with_timezone(&tz);
                    let wanted = local.date_naive().and_hms_opt(hour, minute, second).unwrap();
                    if tz.from_local_datetime(&wanted) == LocalResult::None {
                        // Skipped that day: fired as the gap ended.
                        prop_assert_ne!(utc_offset(tz, next - Duration::seconds(1)), utc_offset(tz, next));
                        prop_assert!(local.naive_local() > wanted);
                    } else {
                        prop_assert_eq!((local.hour(), local.minute(), local.second()), (hour, minute, second));
                    }
                    previous = next;
                }
            }

            #[test]
            fn next_after_agrees_with_a_second_by_second_search_around_dst_changes(
                tz in prop::sample::select(&ZONES[..3]),
                expr in expression(),
                start in instant(),
                lead_secs in 0i64..4 * 3600,
            ) {
                let s = schedule(&expr, tz);
                let change = next_offset_change(tz, start, start + Duration::days(366)).unwrap();
                let mut after = change - Duration::seconds(lead_secs) + Duration::milliseconds(250);
                let end = change + Duration::hours(4);
                for _ in 0..4 {
                    let first_second = after.trunc_subsecs(0) + Duration::seconds(1);
                    let expected = std::iter::successors(Some(first_second), |&t| Some(t + Duration::seconds(1)))
                        .take_while(|&t| t < end)
                        .find(|&t| fires_at(&s, t));
                    let Some(expected) = expected else {
                        prop_assert!(s.next_after(after).unwrap() >= end);
                        break;
                    };
                    prop_assert_eq!(s.next_after(after), Some(expected), "{} after {}", expr, after);
                    after = expected;
                }
            }
        }
    }
}

/// tokio-cron-scheduler, the scheduler the project brief names, at the version
/// `tokio-cron-scheduler = "0.15"` resolves to: 0.15.1, the newest (a dev-dependency only, default
/// features off). Paths and lines are in its crate source.
///
/// Where the zone goes:
/// - `Job::new_async_tz` (`src/job/mod.rs:208`; `Job::new_cron_job_async_tz` at `:322-335` calls
///   it) stores `time_offset_seconds = timezone.offset_from_utc_datetime(&Utc::now().naive_local())
///   .fix().local_minus_utc()` (`:222-225`): the zone's UTC offset at the moment the job is made.
///   The zone itself is not kept anywhere.
/// - Only the first tick is computed in the zone: `schedule.find_next_occurrence(&Utc::now()
///   .with_timezone(&timezone), false)` (`:239-241`). So `next_tick_for_job` looks right at first.
/// - Every later tick is computed by the scheduler loop when a tick fires, in the fixed offset:
///   `FixedOffset::east_opt(job.time_offset_seconds)`, `now.with_timezone(&fixed_offset)`,
///   `schedule.iter_after(now).next()` (`src/scheduler.rs:183-192`), with `now = Utc::now()` (`:86`).
///   It cannot be given an instant, so [`library_next_tick`] repeats those lines.
/// - `JobLocked::tick` (`src/job/mod.rs:624-700`) would compute it in UTC (`iter_after(now)` with
///   `now = Utc::now()`, `:625`, `:669`), but nothing in the crate calls it.
/// - Its cron engine is croner 3, which is DST-correct when given the zone: the fault is the offset.
///
/// Overlapping runs (no test; the source is plain): every 500 ms (`src/scheduler.rs:85`) the loop
/// sends an activation for each job whose `next_tick` has passed (`:116-172`), and the runner
/// spawns the job's future for every activation without looking for a run still going
/// (`src/job/runner.rs:46-58`). Holds at 0.15.1 (its issue #83): guard each job yourself.
///
/// Missed ticks (no test): the next tick is the first one after `now` (`src/scheduler.rs:185-192`),
/// so ticks missed while the loop was late collapse into one late run, and ticks while the process
/// was down are lost: the default `SimpleMetadataStore` is an in-memory map
/// (`src/simple/metadata_store.rs:15-26`) and a re-created job starts from `Utc::now()`
/// (`src/job/mod.rs:239-241`). `shutdown()` sets a flag and calls the shutdown handler
/// (`src/job_scheduler.rs:383-395`); runs already spawned (`src/job/runner.rs:53`) are not awaited.
/// Holds at 0.15.1.
#[cfg(test)]
mod tokio_cron_scheduler_faults {
    use super::*;
    use crate::time::format_ms_in;
    use chrono::{FixedOffset, NaiveTime, Offset};
    use tokio_cron_scheduler::job::job_data::JobStoredData;
    use tokio_cron_scheduler::{Job, JobScheduler};

    const HELSINKI: Tz = Tz::Europe__Helsinki;
    const SIX: &str = "0 0 6 * * *";

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn six_am() -> NaiveTime {
        NaiveTime::from_hms_opt(6, 0, 0).unwrap()
    }

    /// A 06:00 Helsinki job made with `Job::new_async_tz`, added to a scheduler, and the job's data
    /// as the scheduler stored it, with the instants just before and after it was made.
    async fn stored_helsinki_job() -> (JobScheduler, uuid::Uuid, JobStoredData, [DateTime<Utc>; 2]) {
        let mut scheduler = JobScheduler::new().await.unwrap();
        let before = Utc::now();
        let job = Job::new_async_tz(SIX, HELSINKI, |_, _| Box::pin(async {})).unwrap();
        let after = Utc::now();
        let id = scheduler.add(job).await.unwrap();
        let stored = scheduler.context().metadata_storage.write().await.get(id).await.unwrap().unwrap();
        // Make sure the scheduler answers from the same data.
        let next = scheduler.next_tick_for_job(id).await.unwrap();
        assert_eq!(next, stored.next_tick_utc());
        (scheduler, id, stored, [before, after])
    }

    /// The tick tokio-cron-scheduler 0.15.1 stores for a cron job that fired at `now`:
    /// `src/scheduler.rs:182-192` and `:205`, line for line, with `now` given instead of taken from
    /// `Utc::now()` (`:86`).
    fn library_next_tick(job: &JobStoredData, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let schedule = job.schedule();
        let fixed_offset = FixedOffset::east_opt(job.time_offset_seconds).unwrap_or(FixedOffset::east_opt(0).unwrap());
        let now = now.with_timezone(&fixed_offset);
        let next_tick = schedule.and_then(|s| s.iter_after(now).next());
        next_tick.map(|nt| nt.with_timezone(&Utc))
    }

    /// The job's data as if `Job::new_async_tz` had run at `created`: `src/job/mod.rs:222-225` and
    /// `:239-241` with `created` for `Utc::now()`. Everything else is the stored job's.
    fn as_if_created_at(stored: &JobStoredData, created: DateTime<Utc>) -> JobStoredData {
        let mut job = stored.clone();
        job.time_offset_seconds = HELSINKI.offset_from_utc_datetime(&created.naive_local()).fix().local_minus_utc();
        let first = job.schedule().unwrap().find_next_occurrence(&created.with_timezone(&HELSINKI), false).unwrap();
        job.set_next_tick(Some(first.with_timezone(&Utc)));
        job
    }

    /// Fires from the job's first tick until `until`, each next tick as the scheduler computes it
    /// when the previous one fires.
    fn library_fires(job: &JobStoredData, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut fires = vec![job.next_tick_utc().unwrap()];
        while let Some(next) = library_next_tick(job, *fires.last().unwrap()).filter(|&t| t < until) {
            fires.push(next);
        }
        fires
    }

    /// Holds at 0.15.1: `Job::new_async_tz` keeps the zone's UTC offset at the moment the job is
    /// made (`src/job/mod.rs:222-225`), not the zone; only the first tick is computed in the zone.
    #[tokio::test]
    async fn new_async_tz_keeps_the_offset_at_creation_not_the_zone() {
        let (_scheduler, _id, stored, [before, after]) = stored_helsinki_job().await;
        let offsets = [before, after].map(|t| utc_offset(HELSINKI, t).local_minus_utc());
        assert!(offsets.contains(&stored.time_offset_seconds), "{} not in {offsets:?}", stored.time_offset_seconds);

        // The first tick, what `next_tick_for_job` shows, is right: 06:00 local, the same as ours.
        let first = stored.next_tick_utc().unwrap();
        assert_eq!(first.with_timezone(&HELSINKI).time(), six_am());
        let ours = Schedule::parse(SIX, HELSINKI).unwrap();
        assert!([before, after].iter().any(|&t| ours.next_after(t) == Some(first)));
    }

    /// Holds at 0.15.1: after the first tick, every tick is computed in the offset the zone had when
    /// the job was made (`src/scheduler.rs:183-192`), so a 06:00 Europe/Helsinki job made in winter
    /// fires at 07:00 local all summer, and one made in summer fires at 05:00 local all winter.
    /// Our [`Schedule`] keeps 06:00 local on every day of the year.
    #[tokio::test]
    async fn later_ticks_are_an_hour_off_after_a_dst_change() {
        let (_scheduler, _id, stored, _) = stored_helsinki_job().await;
        let ours = Schedule::parse(SIX, HELSINKI).unwrap();
        let until = utc("2025-01-01T00:00:00Z");
        // Made in winter: off on 2024-03-31..=2024-10-26 (210 days of summer time). Made in summer: off
        // on 2024-10-27..=2024-12-31 (66 days of winter time).
        for (created, offset_hours, off_local_hour, off_days) in
            [("2024-01-15T12:00:00Z", 2, 7, 210), ("2024-07-15T12:00:00Z", 3, 5, 66)]
        {
            let created = utc(created);
            let job = as_if_created_at(&stored, created);
            assert_eq!(job.time_offset_seconds, offset_hours * 3600);
            let theirs = library_fires(&job, until);
            let mine: Vec<_> = std::iter::successors(ours.next_after(created), |&t| ours.next_after(t))
                .take_while(|&t| t < until)
                .collect();
            assert_eq!(theirs.len(), mine.len(), "one fire a day either way");

            let mut off = 0;
            for (&their, &my) in theirs.iter().zip(&mine) {
                // Ours: 06:00 local, always.
                assert_eq!(my.with_timezone(&HELSINKI).time(), six_am(), "{}", format_ms_in(HELSINKI, my));
                // Theirs: 06:00 in the creation-time offset, whatever Helsinki's offset that day.
                assert_eq!(
                    their.with_timezone(&FixedOffset::east_opt(job.time_offset_seconds).unwrap()).time(),
                    six_am()
                );
                if utc_offset(HELSINKI, their).local_minus_utc() == job.time_offset_seconds {
                    assert_eq!(their, my);
                } else {
                    assert_eq!(
                        their.with_timezone(&HELSINKI).time(),
                        NaiveTime::from_hms_opt(off_local_hour, 0, 0).unwrap()
                    );
                    assert_eq!((their - my).abs(), Duration::hours(1));
                    off += 1;
                }
            }
            assert_eq!(off, off_days, "days an hour off for a job made at {created}");
        }

        // The first days after each change, side by side (theirs made in winter, ours).
        let winter_made = library_fires(&as_if_created_at(&stored, utc("2024-03-29T12:00:00Z")), until);
        assert_eq!(format_ms_in(HELSINKI, winter_made[1]), "2024-03-31T07:00:00.000+03:00");
        assert_eq!(
            format_ms_in(HELSINKI, ours.next_after(utc("2024-03-31T00:00:00Z")).unwrap()),
            "2024-03-31T06:00:00.000+03:00"
        );
        let summer_made = library_fires(&as_if_created_at(&stored, utc("2024-10-25T12:00:00Z")), until);
        assert_eq!(format_ms_in(HELSINKI, summer_made[1]), "2024-10-27T05:00:00.000+02:00");
        assert_eq!(
            format_ms_in(HELSINKI, ours.next_after(utc("2024-10-27T00:00:00Z")).unwrap()),
            "2024-10-27T06:00:00.000+02:00"
        );
    }

    /// Its cron engine is not the fault: the job's own schedule (croner 3), evaluated in the zone,
    /// keeps 06:00 local all year and agrees with ours. The offset the scheduler substitutes for the
    /// zone is the whole fault, so chatetl drives croner itself.
    #[tokio::test]
    async fn its_cron_engine_given_the_zone_keeps_six_local() {
        let (_scheduler, _id, stored, _) = stored_helsinki_job().await;
        let ours = Schedule::parse(SIX, HELSINKI).unwrap();
        let start = utc("2024-01-01T00:00:00Z");
        let engine: Vec<_> = stored
            .schedule()
            .unwrap()
            .iter_after(start.with_timezone(&HELSINKI))
            .take(366)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        let mine: Vec<_> = std::iter::successors(ours.next_after(start), |&t| ours.next_after(t)).take(366).collect();
        assert_eq!(engine, mine);
    }
}

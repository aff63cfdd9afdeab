//! Planning: which windows a run loads and how they are grouped into requests. Pure functions: no
//! I/O and no clock (callers pass `now`).
//!
//! Owns [`Window`], a half-open `[start, end)` interval aligned to a job's IANA time zone, and
//! everything computed from windows: the windows overlapping a range ([`windows_overlapping`]),
//! the CLI's `--from`/`--to` range ([`parse_range`]), what a scheduled run catches up on
//! ([`incremental`]: complete windows from the watermark, plus lookback) and how consecutive
//! windows are grouped into requests ([`chunk`]).
//!
//! - A **day** window is `[local_day_start(d), local_day_start(d + 1))`: 23 or 25 hours on DST
//!   days, and starting at 01:00 where a zone skips midnight.
//! - An **hour** window follows the wall clock: a window starts wherever the local clock reads
//!   `HH:00` and wherever the UTC offset changes. A repeated autumn hour is therefore two windows
//!   (`03:00+03:00` and `03:00+02:00`), a skipped spring hour is none, hours in half-hour zones
//!   (Asia/Kolkata) start at local `:00`, and a 30-minute shift (Australia/Lord_Howe) leaves one
//!   30-minute window.
//!
//! - A **snapshot** window is the second starting at the tick that captured it: its start is the
//!   `captured_at` of the rows, so a retried tick replaces its own snapshot.
//!
//! Which jobs share requests is [`fusion`]'s.
//!
//! To add a window unit: a [`WindowUnit`] variant and its arms in [`window_containing`] and
//! [`Window::label`]; everything else is built on those two.

pub mod fusion;

use chrono::format::ParseErrorKind;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::WindowUnit;
use crate::time::{first_offset_change, format_ms_in, local_date, local_day_start, utc_offset};

/// A half-open interval [start, end) aligned to the job's zone: a local day or a wall-clock hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// Human label in zone `tz`: `2024-03-31` for a day window; `2024-10-27T03:00+03:00` for an
    /// hour window (offset included, so the repeated autumn hour has two distinct labels).
    pub fn label(&self, unit: WindowUnit, tz: Tz) -> String {
        match unit {
            WindowUnit::Day => self.local_date(tz).format("%Y-%m-%d").to_string(),
            WindowUnit::Hour => self.start.with_timezone(&tz).format("%Y-%m-%dT%H:%M%:z").to_string(),
            WindowUnit::Snapshot => self.start.with_timezone(&tz).format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        }
    }

    /// The local date of the start (for bucket_date / partition names).
    pub fn local_date(&self, tz: Tz) -> NaiveDate {
        local_date(tz, self.start)
    }
}

/// The window of `unit` containing instant `t`.
pub fn window_containing(unit: WindowUnit, tz: Tz, t: DateTime<Utc>) -> Window {
    match unit {
        WindowUnit::Day => day_containing(tz, t),
        WindowUnit::Hour => hour_containing(tz, t),
        WindowUnit::Snapshot => {
            let start = t.with_nanosecond(0).expect("0 is a valid nanosecond");
            Window { start, end: start + Duration::seconds(1) }
        }
    }
}

/// Every window overlapping the half-open range `[from, to)`, in order, contiguous. Empty when
/// `to <= from`.
pub fn windows_overlapping(unit: WindowUnit, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Window> {
    let mut windows = Vec::new();
    if to <= from {
        return windows;
    }
    let mut window = window_containing(unit, tz, from);
    loop {
        windows.push(window);
        if window.end >= to {
            return windows;
        }
        // A window's end is the next one's start.
        window = window_containing(unit, tz, window.end);
    }
}

/// A CLI range: `--from D --to D`, resolved to the half-open `[from, to)`.
///
/// Each side is either a date `YYYY-MM-DD` (a whole local day in `tz`; the `to` date is
/// inclusive, so `--from 2024-01-01 --to 2024-01-31` is all of January) or an RFC 3339 datetime
/// with an offset (taken as is, `to` exclusive). Mixed forms are allowed. Errors are lowercase
/// messages naming the bad value and the expected forms.
pub fn parse_range(from: &str, to: &str, tz: Tz) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let start = parse_bound(from, "--from", tz, false)?;
    let end = parse_bound(to, "--to", tz, true)?;
    if end <= start {
        return Err(format!(
            "empty range --from {from} --to {to}: it would start at {} and end at {} in {tz} \
             (expected --to on or after --from; a --to date is inclusive, a --to datetime exclusive)",
            format_ms_in(tz, start),
            format_ms_in(tz, end),
        ));
    }
    Ok((start, end))
}

/// A range checked against what a job can load at `now` ([`clamp_range`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Why the range was narrowed, for a note to the user (empty when it was not).
    pub notes: Vec<String>,
    /// Windows ending after this instant are incomplete (`include_partial`): loaded, never
    /// recorded as loaded.
    pub partial_after: DateTime<Utc>,
}

/// Clamps the half-open range `[from, to)` to what a job can load at `now`: from the local start
/// of its `history_start` to the end of its last complete window (`window.end + settle <= now`),
/// or, with `include_partial`, to the end of the window in progress. A range wholly outside is
/// refused with a message saying why (history not started yet, or no window of it complete yet).
#[allow(clippy::too_many_arguments, reason = "the planner's inputs are independent scalars; callers name them")]
pub fn clamp_range(
    unit: WindowUnit,
    tz: Tz,
    history_start: NaiveDate,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    settle: Duration,
    include_partial: bool,
) -> Result<CheckedRange, String> {
    let history = local_day_start(tz, history_start);
    let cutoff = now.checked_sub_signed(settle.max(Duration::zero())).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let first_incomplete = window_containing(unit, tz, cutoff.max(history));
    let upper =
        if include_partial && first_incomplete.start <= now { first_incomplete.end } else { first_incomplete.start };
    let shown = |t: DateTime<Utc>| format_ms_in(tz, t);
    let complete = |upper: DateTime<Utc>| {
        if include_partial {
            format!("the window in progress ends at {}", shown(upper))
        } else if settle > Duration::zero() {
            format!(
                "the last complete window ends at {} (a window is complete {} s after it ends: settle_secs)",
                shown(upper),
                settle.num_seconds()
            )
        } else {
            format!("the last complete window ends at {}", shown(upper))
        }
    };
    if to <= history {
        return Err(format!(
            "the range ends at {}, before the job's history starts ({history_start}, its `start`): nothing to load",
            shown(to)
        ));
    }
    if from >= upper {
        return Err(format!(
            "the range starts at {}, and {}: no window of the range is complete yet, so nothing can be loaded \
             (windows in the future would be recorded as loaded with no rows)",
            shown(from),
            complete(upper)
        ));
    }
    let mut notes = Vec::new();
    if from < history {
        notes.push(format!("starts at the job's `start` ({history_start}) instead of {}", shown(from)));
    }
    if to > upper {
        notes.push(format!("ends at {} instead of {}: {}", shown(upper), shown(to), complete(upper)));
    }
    Ok(CheckedRange { from: from.max(history), to: to.min(upper), notes, partial_after: cutoff })
}

/// What an incremental (scheduled) run loads.
///
/// The watermark is where the loaded history ends: every window before it is in the warehouse (a
/// watermark not on a window boundary is floored to its window's start). A window is complete
/// when `window.end + settle <= now`. The run loads every complete window from the watermark (or
/// from the local start of `history_start` when there is none) up to the last complete window,
/// plus the `lookback` most recent complete windows again even when they are before the
/// watermark, but never anything before history start. With `include_partial` it also loads the
/// first window that is not complete yet, if it has started (`start <= now`).
///
/// The result is sorted, contiguous and without duplicates; empty when nothing is due. A negative
/// `settle` counts as zero.
#[allow(clippy::too_many_arguments, reason = "the planner's inputs are independent scalars; callers name them")]
pub fn incremental(
    unit: WindowUnit,
    tz: Tz,
    history_start: NaiveDate,
    watermark: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lookback: u32,
    settle: Duration,
    include_partial: bool,
) -> Vec<Window> {
    let history = local_day_start(tz, history_start);
    // Windows ending at or before the cutoff are complete.
    let cutoff = now.checked_sub_signed(settle.max(Duration::zero())).unwrap_or(DateTime::<Utc>::MIN_UTC);
    // A local day start is always a window boundary, so nothing here starts before history.
    let first_incomplete = window_containing(unit, tz, cutoff.max(history));
    let complete_end = first_incomplete.start;

    let from_watermark = watermark.map_or(history, |w| window_containing(unit, tz, w).start.max(history));
    let mut from_lookback = complete_end;
    for _ in 0..lookback {
        if from_lookback <= history {
            break;
        }
        from_lookback = window_containing(unit, tz, from_lookback - Duration::nanoseconds(1)).start;
    }
    let from = from_watermark.min(from_lookback.max(history));

    let mut windows = windows_overlapping(unit, tz, from, complete_end);
    if include_partial && first_incomplete.start <= now {
        windows.push(first_incomplete);
    }
    windows
}

/// Groups windows into requests: runs of consecutive windows (`w[i].end == w[i + 1].start`), each
/// run split greedily into chunks of at most `max_per_request` windows (0 is treated as 1). Order
/// is preserved; a gap always starts a new chunk.
pub fn chunk(windows: &[Window], max_per_request: u32) -> Vec<Vec<Window>> {
    let max = usize::try_from(max_per_request.max(1)).unwrap_or(usize::MAX);
    let mut chunks: Vec<Vec<Window>> = Vec::new();
    for &window in windows {
        match chunks.last_mut() {
            Some(current) if current.len() < max && current.last().is_some_and(|last| last.end == window.start) => {
                current.push(window);
            }
            _ => chunks.push(vec![window]),
        }
    }
    chunks
}

/// The local day containing `t`: `[local_day_start(d), local_day_start(d + 1))`.
fn day_containing(tz: Tz, t: DateTime<Utc>) -> Window {
    // Usually the local date of `t`. Where a zone falls back across midnight, the repeated late
    // evening lies after the next day's start and belongs to that day; a skipped day (Pacific/Apia
    // 2011-12-30) starts and ends at the same instant and contains nothing.
    let mut date = local_date(tz, t);
    let mut start = local_day_start(tz, date);
    while t < start {
        date = date.pred_opt().expect("dates within chrono's range");
        start = local_day_start(tz, date);
    }
    loop {
        let next = date.succ_opt().expect("dates within chrono's range");
        let end = local_day_start(tz, next);
        if t < end {
            return Window { start, end };
        }
        (date, start) = (next, end);
    }
}

/// The wall-clock hour containing `t`: from the latest local `HH:00` or offset change at or before
/// `t` to the next one after it.
fn hour_containing(tz: Tz, t: DateTime<Utc>) -> Window {
    let offset = utc_offset(tz, t);
    let on_the_hour = (floor_to_hour(t.with_timezone(&offset).naive_local()) - offset).and_utc();
    // If the offset changed since the clock last read HH:00, the change starts this window.
    let start = first_offset_change(tz, on_the_hour, t).unwrap_or(on_the_hour);
    Window { start, end: hour_end(tz, start) }
}

/// The first hour-window boundary after `start`: the next local `HH:00`, or an offset change
/// before it.
fn hour_end(tz: Tz, start: DateTime<Utc>) -> DateTime<Utc> {
    let offset = utc_offset(tz, start);
    let next_hour = floor_to_hour(start.with_timezone(&offset).naive_local()) + Duration::hours(1);
    let on_the_hour = (next_hour - offset).and_utc();
    first_offset_change(tz, start, on_the_hour).unwrap_or(on_the_hour)
}

fn floor_to_hour(local: NaiveDateTime) -> NaiveDateTime {
    local.date().and_hms_opt(local.hour(), 0, 0).expect("an hour of a valid time is valid")
}

/// One side of a CLI range: a local date (a `to` date means the end of that day) or an RFC 3339
/// datetime.
fn parse_bound(value: &str, flag: &str, tz: Tz, is_end: bool) -> Result<DateTime<Utc>, String> {
    let expected = format!(
        "expected a date YYYY-MM-DD (a whole day in {tz}) or an RFC 3339 datetime with an offset, \
         such as 2024-01-01T00:00:00+02:00"
    );
    let text = value.trim();
    if looks_like_date(text) {
        let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format!("invalid {flag} date `{value}`: no such day; {expected}"))?;
        let day = if is_end { date.succ_opt().expect("a four-digit year has a next day") } else { date };
        return Ok(local_day_start(tz, day));
    }
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        // Past a date, say what is wrong with the time; otherwise chrono's reason means nothing.
        let reason = match text.get(..10) {
            Some(prefix) if looks_like_date(prefix) && e.kind() == ParseErrorKind::TooShort => {
                "the datetime is incomplete or has no offset (Z or +HH:MM); ".to_string()
            }
            Some(prefix) if looks_like_date(prefix) => format!("{e}; "),
            _ => String::new(),
        };
        format!("invalid {flag} value `{value}`: {reason}{expected}")
    })
}

/// `dddd-dd-dd`: the shape of a date, so that `2024-02-30` is reported as a bad date.
fn looks_like_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{local_to_utc, parse_tz};
    use WindowUnit::{Day, Hour, Snapshot};

    fn zone(name: &str) -> Tz {
        parse_tz(name).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn hours(w: &Window) -> f64 {
        (w.end - w.start).num_minutes() as f64 / 60.0
    }

    fn labels(windows: &[Window], unit: WindowUnit, tz: Tz) -> Vec<String> {
        windows.iter().map(|w| w.label(unit, tz)).collect()
    }

    #[test]
    fn a_range_is_clamped_to_history_start_and_the_last_complete_window() {
        let tz = zone("Europe/Helsinki");
        let start = date(2026, 11, 1);
        // 1 December 2026, 14:30 local: 30 November is the last complete day.
        let now = local_to_utc(tz, date(2026, 12, 1).and_hms_opt(14, 30, 0).unwrap());
        let day = |d: NaiveDate| local_day_start(tz, d);
        let zero = Duration::zero();
        let r = clamp_range(Day, tz, start, day(date(2026, 10, 20)), day(date(2026, 12, 6)), now, zero, false).unwrap();
        assert_eq!((r.from, r.to), (day(start), day(date(2026, 12, 1))));
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
        assert!(r.notes[1].contains("ends at 2026-12-01T00:00:00.000+02:00 instead of"), "{:?}", r.notes);
        // Within bounds: unchanged, no note.
        let r = clamp_range(Day, tz, start, day(date(2026, 11, 3)), day(date(2026, 11, 5)), now, zero, false).unwrap();
        assert_eq!((r.from, r.to, r.notes.len()), (day(date(2026, 11, 3)), day(date(2026, 11, 5)), 0));
        // Hours: up to the last complete hour; a settle delay pushes it back.
        let r = clamp_range(Hour, tz, start, day(date(2026, 12, 1)), day(date(2026, 12, 2)), now, zero, false).unwrap();
        assert_eq!(r.to, now - Duration::minutes(30));
        let settle = Duration::minutes(45);
        let r =
            clamp_range(Hour, tz, start, day(date(2026, 12, 1)), day(date(2026, 12, 2)), now, settle, false).unwrap();
        assert_eq!(r.to, now - Duration::minutes(90));
        assert!(r.notes[0].contains("settle_secs"), "{:?}", r.notes);
        // include_partial: up to the end of the window in progress; it stays incomplete.
        let r = clamp_range(Day, tz, start, day(date(2026, 11, 30)), day(date(2026, 12, 6)), now, zero, true).unwrap();
        assert_eq!(r.to, day(date(2026, 12, 2)));
        assert_eq!(r.partial_after, now);
    }

    #[test]
    fn a_range_wholly_outside_is_refused_with_the_reason() {
        let tz = zone("Europe/Helsinki");
        let now = local_to_utc(tz, date(2026, 12, 1).and_hms_opt(14, 30, 0).unwrap());
        let day = |d: NaiveDate| local_day_start(tz, d);
        let zero = Duration::zero();
        let future =
            clamp_range(Day, tz, date(2026, 1, 1), day(date(2030, 1, 1)), day(date(2030, 1, 3)), now, zero, false);
        let e = future.unwrap_err();
        assert!(e.contains("no window of the range is complete yet") && e.contains("2026-12-01"), "{e}");
        // Today alone is not complete either.
        let today =
            clamp_range(Day, tz, date(2026, 1, 1), day(date(2026, 12, 1)), day(date(2026, 12, 2)), now, zero, false);
        assert!(today.is_err());
        let past =
            clamp_range(Day, tz, date(2026, 1, 1), day(date(2025, 1, 1)), day(date(2025, 12, 31)), now, zero, false);
        let e = past.unwrap_err();
        assert!(e.contains("before the job's history starts (2026-01-01"), "{e}");
    }

    /// The windows of `unit` covering local dates `first..=last`.
    fn days(unit: WindowUnit, tz: Tz, first: NaiveDate, last: NaiveDate) -> Vec<Window> {
        windows_overlapping(unit, tz, local_day_start(tz, first), local_day_start(tz, last.succ_opt().unwrap()))
    }

    #[test]
    fn helsinki_spring_day_is_23_hours_and_autumn_day_25() {
        let tz = zone("Europe/Helsinki");
        let spring = days(Day, tz, date(2024, 3, 30), date(2024, 4, 1));
        assert_eq!(spring.iter().map(hours).collect::<Vec<_>>(), [24.0, 23.0, 24.0]);
        assert_eq!(labels(&spring, Day, tz), ["2024-03-30", "2024-03-31", "2024-04-01"]);
        assert_eq!(spring[1].start, utc("2024-03-30T22:00:00Z"));

        let autumn = days(Day, tz, date(2024, 10, 26), date(2024, 10, 28));
        assert_eq!(autumn.iter().map(hours).collect::<Vec<_>>(), [24.0, 25.0, 24.0]);
        assert_eq!(autumn[1].local_date(tz), date(2024, 10, 27));
        assert_eq!(autumn[1].end, utc("2024-10-27T22:00:00Z"));
    }

    #[test]
    fn santiago_day_without_midnight_starts_at_one_and_is_23_hours() {
        let tz = zone("America/Santiago");
        let w = window_containing(Day, tz, utc("2026-09-06T12:00:00-03:00"));
        assert_eq!(format_ms_in(tz, w.start), "2026-09-06T01:00:00.000-03:00");
        assert_eq!(hours(&w), 23.0);
        assert_eq!(w.label(Day, tz), "2026-09-06");
        let before = window_containing(Day, tz, w.start - Duration::nanoseconds(1));
        assert_eq!((before.label(Day, tz), before.end, hours(&before)), ("2026-09-05".to_string(), w.start, 24.0));
    }

    #[test]
    fn apia_skipped_day_has_no_window() {
        let tz = zone("Pacific/Apia");
        let windows = days(Day, tz, date(2011, 12, 29), date(2011, 12, 31));
        assert_eq!(labels(&windows, Day, tz), ["2011-12-29", "2011-12-31"]);
        assert_eq!(windows[0].end, windows[1].start);
    }

    #[test]
    fn helsinki_autumn_hour_three_happens_twice() {
        let tz = zone("Europe/Helsinki");
        let windows = days(Hour, tz, date(2024, 10, 27), date(2024, 10, 27));
        assert_eq!(windows.len(), 25);
        assert!(windows.iter().all(|w| hours(w) == 1.0));
        let labels = labels(&windows, Hour, tz);
        assert_eq!(
            labels[2..6],
            ["2024-10-27T02:00+03:00", "2024-10-27T03:00+03:00", "2024-10-27T03:00+02:00", "2024-10-27T04:00+02:00"]
        );
        assert_eq!(labels.iter().collect::<std::collections::HashSet<_>>().len(), 25);
        assert_eq!(windows[3].local_date(tz), date(2024, 10, 27));
        assert_eq!(windows[4].start, utc("2024-10-27T01:00:00Z"));
    }

    #[test]
    fn helsinki_spring_hour_three_does_not_exist() {
        let tz = zone("Europe/Helsinki");
        let windows = days(Hour, tz, date(2024, 3, 31), date(2024, 3, 31));
        assert_eq!(windows.len(), 23);
        assert!(windows.iter().all(|w| hours(w) == 1.0));
        let labels = labels(&windows, Hour, tz);
        assert_eq!(labels[1..4], ["2024-03-31T01:00+02:00", "2024-03-31T02:00+02:00", "2024-03-31T04:00+03:00"]);
        assert!(!labels.iter().any(|l| l.contains("T03:")));
    }

    #[test]
    fn kolkata_hours_start_at_local_hour() {
        let tz = zone("Asia/Kolkata");
        let w = window_containing(Hour, tz, utc("2024-05-01T10:47:12.5Z"));
        assert_eq!((w.start, w.end), (utc("2024-05-01T10:30:00Z"), utc("2024-05-01T11:30:00Z")));
        assert_eq!(w.label(Hour, tz), "2024-05-01T16:00+05:30");
        assert_eq!(days(Hour, tz, date(2024, 5, 1), date(2024, 5, 1)).len(), 24);
    }

    #[test]
    fn lord_howe_half_hour_shifts_leave_a_half_hour_window() {
        let tz = zone("Australia/Lord_Howe");
        // 2024-10-06 02:00+10:30 becomes 02:30+11:00.
        let spring = days(Hour, tz, date(2024, 10, 6), date(2024, 10, 6));
        assert_eq!(spring.len(), 24);
        assert_eq!(spring.iter().map(hours).sum::<f64>(), 23.5);
        assert_eq!(
            labels(&spring, Hour, tz)[1..4],
            ["2024-10-06T01:00+10:30", "2024-10-06T02:30+11:00", "2024-10-06T03:00+11:00"]
        );
        assert_eq!(hours(&spring[2]), 0.5);
        // 2024-04-07 02:00+11:00 becomes 01:30+10:30.
        let autumn = days(Hour, tz, date(2024, 4, 7), date(2024, 4, 7));
        assert_eq!(autumn.len(), 25);
        assert_eq!(autumn.iter().map(hours).sum::<f64>(), 24.5);
        assert_eq!(
            labels(&autumn, Hour, tz)[1..4],
            ["2024-04-07T01:00+11:00", "2024-04-07T01:30+10:30", "2024-04-07T02:00+10:30"]
        );
        assert_eq!(autumn.iter().map(hours).collect::<Vec<_>>()[1..3], [1.0, 0.5]);
    }

    #[test]
    fn chatham_changes_at_quarter_to_split_the_hour() {
        // Pacific/Chatham (+12:45/+13:45) changes at 02:45 standard time, off the local hour.
        let tz = zone("Pacific/Chatham");
        let spring = days(Hour, tz, date(2024, 9, 29), date(2024, 9, 29));
        assert_eq!(spring.len(), 24);
        assert_eq!(
            labels(&spring, Hour, tz)[2..5],
            ["2024-09-29T02:00+12:45", "2024-09-29T03:45+13:45", "2024-09-29T04:00+13:45"]
        );
        assert_eq!(spring[2..5].iter().map(hours).collect::<Vec<_>>(), [0.75, 0.25, 1.0]);
        let autumn = days(Hour, tz, date(2024, 4, 7), date(2024, 4, 7));
        assert_eq!(autumn.len(), 26);
        assert_eq!(
            labels(&autumn, Hour, tz)[2..6],
            ["2024-04-07T02:00+13:45", "2024-04-07T03:00+13:45", "2024-04-07T02:45+12:45", "2024-04-07T03:00+12:45"]
        );
        assert_eq!(autumn[2..6].iter().map(hours).collect::<Vec<_>>(), [1.0, 0.75, 0.25, 1.0]);
    }

    #[test]
    fn window_boundaries_belong_to_the_later_window() {
        let tz = zone("Europe/Helsinki");
        let w = window_containing(Day, tz, utc("2024-01-10T12:00:00Z"));
        assert_eq!(window_containing(Day, tz, w.start), w);
        assert_eq!(window_containing(Day, tz, w.end).start, w.end);
        assert_eq!(window_containing(Day, tz, w.end - Duration::nanoseconds(1)), w);
        assert_eq!(windows_overlapping(Day, tz, w.start, w.end), [w]);
        assert_eq!(windows_overlapping(Day, tz, w.end, w.end), []);
        assert_eq!(windows_overlapping(Day, tz, w.end - Duration::seconds(1), w.end + Duration::seconds(1)).len(), 2);
    }

    #[test]
    fn range_dates_are_whole_local_days_with_to_inclusive() {
        let tz = zone("Europe/Helsinki");
        let january = parse_range("2024-01-01", "2024-01-31", tz).unwrap();
        assert_eq!(january, (utc("2024-01-01T00:00:00+02:00"), utc("2024-02-01T00:00:00+02:00")));
        assert_eq!(windows_overlapping(Day, tz, january.0, january.1).len(), 31);
        let one_day = parse_range("2024-03-31", "2024-03-31", tz).unwrap();
        assert_eq!(one_day.1 - one_day.0, Duration::hours(23));
        assert_eq!(parse_range(" 2024-01-01 ", "2024-01-01", tz).unwrap().1, utc("2024-01-02T00:00:00+02:00"));
    }

    #[test]
    fn range_datetimes_are_half_open_and_forms_mix() {
        let tz = zone("Europe/Helsinki");
        let (from, to) = parse_range("2024-01-01T00:00:00Z", "2024-01-02T00:00:00+02:00", tz).unwrap();
        assert_eq!((from, to), (utc("2024-01-01T00:00:00Z"), utc("2024-01-01T22:00:00Z")));
        let mixed = parse_range("2024-01-01", "2024-01-01T06:30:00+02:00", tz).unwrap();
        assert_eq!(mixed, (utc("2023-12-31T22:00:00Z"), utc("2024-01-01T04:30:00Z")));
        let mixed = parse_range("2024-01-01T12:00:00.5Z", "2024-01-01", tz).unwrap();
        assert_eq!(mixed, (utc("2024-01-01T12:00:00.5Z"), utc("2024-01-01T22:00:00Z")));
    }

    #[test]
    fn range_errors_name_the_value_and_the_forms() {
        let tz = zone("Europe/Helsinki");
        for (from, to, bad) in [
            ("yesterday", "2024-01-01", "yesterday"),
            ("2024-01-01", "2024-02-30", "2024-02-30"),
            ("2024-01-01T00:00:00", "2024-01-02", "2024-01-01T00:00:00"),
            ("2024-01-01", "", "--to"),
            ("2024-01-01T25:00:00Z", "2024-01-02", "2024-01-01T25:00:00Z"),
        ] {
            let error = parse_range(from, to, tz).unwrap_err();
            assert!(error.contains(&format!("`{bad}`")) || error.contains(bad), "{error}");
            assert!(error.contains("YYYY-MM-DD") && error.contains("RFC 3339"), "{error}");
            assert!(error.starts_with(char::is_lowercase), "{error}");
        }
        for (from, to) in [
            ("2024-01-02", "2024-01-01"),
            ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
            ("2024-01-02", "2024-01-02T00:00:00+02:00"),
        ] {
            let error = parse_range(from, to, tz).unwrap_err();
            assert!(error.starts_with("empty range") && error.contains(from) && error.contains(to), "{error}");
        }
        let no_offset = parse_range("2024-01-01T00:00:00", "2024-01-02", tz).unwrap_err();
        assert!(no_offset.contains("no offset"), "{no_offset}");
        assert!(parse_range("2024-01-01", "2024-13-01", tz).unwrap_err().contains("no such day"));
    }

    /// Incremental runs of a Helsinki day job with history from 2024-01-01 and no settle.
    fn daily(watermark: Option<NaiveDate>, now: &str, lookback: u32) -> Vec<String> {
        let tz = zone("Europe/Helsinki");
        let watermark = watermark.map(|d| local_day_start(tz, d));
        let windows = incremental(Day, tz, date(2024, 1, 1), watermark, utc(now), lookback, Duration::zero(), false);
        labels(&windows, Day, tz)
    }

    #[test]
    fn incremental_without_watermark_loads_history_up_to_the_last_complete_day() {
        let loaded = daily(None, "2024-01-05T12:00:00+02:00", 0);
        assert_eq!(loaded, ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]);
        assert_eq!(daily(None, "2024-01-05T12:00:00+02:00", 30), loaded);
    }

    #[test]
    fn incremental_caught_up_loads_only_lookback() {
        let caught_up = Some(date(2024, 1, 5));
        assert!(daily(caught_up, "2024-01-05T12:00:00+02:00", 0).is_empty());
        assert_eq!(daily(caught_up, "2024-01-05T12:00:00+02:00", 2), ["2024-01-03", "2024-01-04"]);
        assert_eq!(daily(caught_up, "2024-01-06T00:00:00+02:00", 0), ["2024-01-05"]);
        assert_eq!(daily(caught_up, "2024-01-06T00:30:00+02:00", 2), ["2024-01-04", "2024-01-05"]);
        // Lookback never reaches before history start.
        assert_eq!(daily(Some(date(2024, 1, 2)), "2024-01-02T12:00:00+02:00", 5), ["2024-01-01"]);
    }

    #[test]
    fn incremental_catches_up_after_three_days_of_downtime() {
        let watermark = Some(date(2024, 1, 5));
        assert_eq!(daily(watermark, "2024-01-08T08:00:00+02:00", 0), ["2024-01-05", "2024-01-06", "2024-01-07"]);
        assert_eq!(daily(watermark, "2024-01-08T08:00:00+02:00", 2), ["2024-01-05", "2024-01-06", "2024-01-07"]);
        assert_eq!(
            daily(watermark, "2024-01-08T08:00:00+02:00", 4),
            ["2024-01-04", "2024-01-05", "2024-01-06", "2024-01-07"]
        );
    }

    #[test]
    fn incremental_floors_the_watermark_and_ignores_one_before_history() {
        let tz = zone("Europe/Helsinki");
        let run = |watermark: &str| {
            let windows = incremental(
                Day,
                tz,
                date(2024, 1, 1),
                Some(utc(watermark)),
                utc("2024-01-03T03:00:00+02:00"),
                0,
                Duration::zero(),
                false,
            );
            labels(&windows, Day, tz)
        };
        assert_eq!(run("2024-01-01T10:00:00+02:00"), ["2024-01-01", "2024-01-02"]);
        assert_eq!(run("2024-01-02T00:00:00+02:00"), ["2024-01-02"]);
        assert_eq!(run("2023-06-01T00:00:00Z"), ["2024-01-01", "2024-01-02"]);
        assert!(run("2024-02-01T00:00:00Z").is_empty());
    }

    #[test]
    fn incremental_waits_for_settle() {
        let tz = zone("Europe/Helsinki");
        let run = |now: &str, include_partial| {
            let watermark = Some(local_day_start(tz, date(2024, 1, 5)));
            let windows =
                incremental(Day, tz, date(2024, 1, 1), watermark, utc(now), 0, Duration::hours(2), include_partial);
            labels(&windows, Day, tz)
        };
        assert!(run("2024-01-06T01:00:00+02:00", false).is_empty());
        assert_eq!(run("2024-01-06T02:00:00+02:00", false), ["2024-01-05"]);
        // The first incomplete window is the settling one, not the one that just started.
        assert_eq!(run("2024-01-06T01:00:00+02:00", true), ["2024-01-05"]);
        assert_eq!(run("2024-01-06T02:00:00+02:00", true), ["2024-01-05", "2024-01-06"]);
    }

    #[test]
    fn incremental_with_partial_adds_the_current_window() {
        let tz = zone("Europe/Helsinki");
        let run = |watermark: Option<&str>, lookback| {
            let windows = incremental(
                Day,
                tz,
                date(2024, 1, 1),
                watermark.map(utc),
                utc("2024-01-05T12:00:00+02:00"),
                lookback,
                Duration::zero(),
                true,
            );
            labels(&windows, Day, tz)
        };
        assert_eq!(run(Some("2024-01-05T00:00:00+02:00"), 0), ["2024-01-05"]);
        assert_eq!(run(Some("2024-01-05T00:00:00+02:00"), 1), ["2024-01-04", "2024-01-05"]);
        assert_eq!(run(Some("2024-01-04T00:00:00+02:00"), 0), ["2024-01-04", "2024-01-05"]);
        assert_eq!(run(None, 0).len(), 5);
    }

    #[test]
    fn incremental_with_history_start_in_the_future_loads_nothing() {
        let tz = zone("Europe/Helsinki");
        let now = utc("2024-01-05T12:00:00+02:00");
        for unit in [Day, Hour] {
            for watermark in [None, Some(now - Duration::days(3)), Some(now + Duration::days(60))] {
                for include_partial in [false, true] {
                    let windows =
                        incremental(unit, tz, date(2024, 2, 1), watermark, now, 3, Duration::hours(1), include_partial);
                    assert!(windows.is_empty(), "{windows:?}");
                }
            }
        }
        // History starting today: only the partial window, once it has started.
        let today = incremental(
            Hour,
            tz,
            date(2024, 1, 5),
            None,
            utc("2024-01-05T00:30:00+02:00"),
            2,
            Duration::hours(1),
            true,
        );
        assert_eq!(labels(&today, Hour, tz), ["2024-01-05T00:00+02:00"]);
    }

    #[test]
    fn incremental_hours_catch_up_across_the_repeated_hour() {
        let tz = zone("Europe/Helsinki");
        let windows = incremental(
            Hour,
            tz,
            date(2024, 10, 1),
            Some(utc("2024-10-27T02:00:00+03:00")),
            utc("2024-10-27T05:10:00+02:00"),
            0,
            Duration::zero(),
            false,
        );
        assert_eq!(
            labels(&windows, Hour, tz),
            ["2024-10-27T02:00+03:00", "2024-10-27T03:00+03:00", "2024-10-27T03:00+02:00", "2024-10-27T04:00+02:00"]
        );
    }

    #[test]
    fn chunks_hold_31_days_per_request() {
        let tz = zone("Europe/Helsinki");
        let windows = days(Day, tz, date(2024, 1, 1), date(2024, 2, 29));
        let chunks = chunk(&windows, 31);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [31, 29]);
        assert_eq!(chunks[0].last().unwrap().label(Day, tz), "2024-01-31");
        assert_eq!(chunks[1][0].label(Day, tz), "2024-02-01");
        assert_eq!(chunk(&windows[..31], 31), [windows[..31].to_vec()]);
    }

    #[test]
    fn chunks_break_at_gaps_and_take_at_least_one_window() {
        let tz = zone("Europe/Helsinki");
        let windows = days(Day, tz, date(2024, 1, 1), date(2024, 1, 10));
        let with_gap: Vec<Window> = windows.iter().copied().filter(|w| w.label(Day, tz) != "2024-01-04").collect();
        let chunks = chunk(&with_gap, 31);
        assert_eq!(chunks, [windows[..3].to_vec(), windows[4..].to_vec()]);
        assert_eq!(chunk(&with_gap, 4).iter().map(Vec::len).collect::<Vec<_>>(), [3, 4, 2]);
        assert_eq!(chunk(&windows[..3], 0), [vec![windows[0]], vec![windows[1]], vec![windows[2]]]);
        assert!(chunk(&[], 31).is_empty());
        // Out of order is a gap too.
        assert_eq!(chunk(&[windows[1], windows[0]], 31).len(), 2);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The zones named in the brief, plus Pacific/Chatham whose offset changes off the hour.
        const ZONES: [&str; 7] = [
            "Europe/Helsinki",
            "America/Santiago",
            "Asia/Kolkata",
            "UTC",
            "Australia/Lord_Howe",
            "America/New_York",
            "Pacific/Chatham",
        ];
        /// 2020-01-01T00:00:00Z and 2030-01-01T00:00:00Z.
        const FROM_2020: i64 = 1_577_836_800;
        const TO_2030: i64 = 1_893_456_000;
        const DAY_SECS: i64 = 86_400;

        fn zone() -> impl Strategy<Value = Tz> {
            prop::sample::select(&ZONES[..]).prop_map(super::zone)
        }

        fn unit() -> impl Strategy<Value = WindowUnit> {
            prop_oneof![Just(Day), Just(Hour), Just(Snapshot)]
        }

        /// The units of history: snapshot jobs never plan incrementally (the runner captures one
        /// window at the tick).
        fn history_unit() -> impl Strategy<Value = WindowUnit> {
            prop_oneof![Just(Day), Just(Hour)]
        }

        fn instant() -> impl Strategy<Value = DateTime<Utc>> {
            (FROM_2020..TO_2030, prop_oneof![Just(0u32), 0u32..1_000_000_000])
                .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap())
        }

        /// Long enough for several DST changes, short enough to keep hour runs quick.
        fn max_span_secs(unit: WindowUnit) -> i64 {
            match unit {
                Day => 10 * 366 * DAY_SECS,
                Hour => 400 * DAY_SECS,
                Snapshot => 600,
            }
        }

        fn range() -> impl Strategy<Value = (WindowUnit, Tz, DateTime<Utc>, DateTime<Utc>)> {
            (unit(), zone(), instant()).prop_flat_map(|(unit, tz, from)| {
                (1..max_span_secs(unit)).prop_map(move |span| (unit, tz, from, from + Duration::seconds(span)))
            })
        }

        fn is_offset_change(tz: Tz, t: DateTime<Utc>) -> bool {
            utc_offset(tz, t - Duration::seconds(1)) != utc_offset(tz, t)
        }

        fn assert_contiguous(windows: &[Window]) {
            for pair in windows.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{pair:?}");
            }
        }

        proptest! {
            #[test]
            fn windows_tile_the_range((unit, tz, from, to) in range()) {
                let windows = windows_overlapping(unit, tz, from, to);
                prop_assert!(!windows.is_empty());
                prop_assert!(windows[0].start <= from && from < windows[0].end);
                let last = windows.last().unwrap();
                prop_assert!(last.start < to && to <= last.end);
                assert_contiguous(&windows);
                let mut seen = std::collections::HashSet::new();
                for w in &windows {
                    prop_assert!(w.start < w.end);
                    prop_assert_eq!(window_containing(unit, tz, w.start), *w);
                    prop_assert_eq!(window_containing(unit, tz, w.end - Duration::nanoseconds(1)), *w);
                    prop_assert!(seen.insert(w.label(unit, tz)), "duplicate label {}", w.label(unit, tz));
                    match unit {
                        Day => {
                            prop_assert_eq!(w.start, local_day_start(tz, w.local_date(tz)));
                            prop_assert_eq!(w.end, local_day_start(tz, w.local_date(tz).succ_opt().unwrap()));
                        }
                        Hour => {
                            // Lord_Howe shifts by 30 minutes; Chatham changes at :45.
                            let shortest = match tz {
                                Tz::Australia__Lord_Howe => Duration::minutes(30),
                                Tz::Pacific__Chatham => Duration::minutes(15),
                                _ => Duration::hours(1),
                            };
                            let length = w.end - w.start;
                            prop_assert!(shortest <= length && length <= Duration::hours(1), "{w:?}");
                            let local = w.start.with_timezone(&tz);
                            prop_assert!(local.minute() == 0 || is_offset_change(tz, w.start), "{w:?}");
                            prop_assert_eq!(local.second(), 0);
                        }
                        Snapshot => {
                            prop_assert_eq!(w.end - w.start, Duration::seconds(1));
                            prop_assert_eq!(w.start.nanosecond(), 0);
                        }
                    }
                }
            }

            #[test]
            fn window_containing_contains((unit, tz, t) in (unit(), zone(), instant())) {
                let w = window_containing(unit, tz, t);
                prop_assert!(w.start <= t && t < w.end, "{t} not in {w:?}");
                if unit == Day {
                    // Outside a repeated midnight hour, the local date of t names its day.
                    prop_assert!(w.local_date(tz) == local_date(tz, t) || w.end - w.start > Duration::hours(24));
                }
            }

            #[test]
            fn chunks_preserve_windows_and_respect_the_max(
                (unit, tz, from, _) in range(),
                keep in prop::collection::vec(prop::bool::weighted(0.85), 1..300),
                max in 0u32..40,
            ) {
                let all = windows_overlapping(unit, tz, from, from + Duration::days(20));
                let windows: Vec<Window> = all.iter().zip(&keep).filter(|(_, k)| **k).map(|(w, _)| *w).collect();
                let chunks = chunk(&windows, max);
                prop_assert_eq!(chunks.concat(), windows.clone());
                let max = max.max(1) as usize;
                for c in &chunks {
                    prop_assert!(!c.is_empty() && c.len() <= max);
                    assert_contiguous(c);
                }
                for pair in chunks.windows(2) {
                    let (previous, next) = (pair[0].last().unwrap(), pair[1][0]);
                    prop_assert!(pair[0].len() == max || previous.end != next.start, "needless split before {next:?}");
                }
            }

            #[test]
            fn incremental_loads_complete_windows_from_the_watermark(
                (unit, tz) in (history_unit(), zone()),
                history_days in 0i64..3650,
                now_minutes_after in -7 * 1440i64..60 * 1440,
                watermark_minutes_after in prop::option::of(-7 * 1440i64..62 * 1440),
                lookback in 0u32..6,
                settle_minutes in 0i64..3 * 1440,
                include_partial: bool,
            ) {
                let history_start = date(2020, 1, 1) + Duration::days(history_days);
                let history = local_day_start(tz, history_start);
                let now = history + Duration::minutes(now_minutes_after);
                let watermark = watermark_minutes_after.map(|m| history + Duration::minutes(m) + Duration::seconds(7));
                let settle = Duration::minutes(settle_minutes);
                let windows = incremental(unit, tz, history_start, watermark, now, lookback, settle, include_partial);
                let complete = |w: &Window| w.end + settle <= now;

                assert_contiguous(&windows);
                prop_assert!(windows.iter().all(|w| w.start >= history));
                prop_assert!(windows.iter().all(|w| window_containing(unit, tz, w.start) == *w));
                let (last, rest) = match windows.split_last() {
                    Some((last, rest)) => (Some(last), rest),
                    None => (None, &windows[..]),
                };
                prop_assert!(rest.iter().all(complete));
                if let Some(last) = last.filter(|w| !complete(w)) {
                    prop_assert!(include_partial && last.start <= now);
                    let previous_complete = last.start + settle <= now;
                    prop_assert!(last.start == history || previous_complete, "{last:?} is not the first incomplete window");
                }

                // Brute force: every complete window since history start, then the part due.
                let all_complete: Vec<Window> =
                    windows_overlapping(unit, tz, history, now).into_iter().filter(complete).collect();
                let floor = watermark.map_or(history, |w| window_containing(unit, tz, w).start);
                let from_watermark = all_complete.iter().position(|w| w.start >= floor).unwrap_or(all_complete.len());
                let from_lookback = all_complete.len().saturating_sub(lookback as usize);
                let due = &all_complete[from_watermark.min(from_lookback)..];
                let loaded_complete: Vec<Window> = windows.iter().copied().filter(complete).collect();
                prop_assert_eq!(&loaded_complete[..], due);
                if include_partial && history <= now {
                    prop_assert!(last.is_some_and(|w| !complete(w)), "the started window is missing");
                }
            }
        }

        #[test]
        fn local_to_utc_and_hour_windows_agree_on_existing_hours() {
            // Where the wall clock reads HH:00 exactly once, the hour window starts there.
            let tz = super::zone("Europe/Helsinki");
            let t = local_to_utc(tz, date(2024, 7, 1).and_hms_opt(13, 0, 0).unwrap());
            assert_eq!(window_containing(Hour, tz, t + Duration::minutes(59)).start, t);
        }
    }
}

//! The query engine giosg's reporting endpoints share in the simulator (chat_sessions and
//! events): Druid-style buckets in a zone, group_by with multi-value expansion, the
//! selector/bound/and/or/not filters, and count/sum/avg/hyperUnique, over any [`Record`].
//!
//! Owns: [`Record`] (what a dataset record exposes to a query: its time, its dimensions' values
//! and its numbers), [`Query`] (the parts of a request the engine evaluates) and [`evaluate`],
//! which renders the `{fields, data}` response ([`ReportResponse`]). Endpoint modules parse and
//! validate their request body with the simulator's own wire types (`simulator::wire::giosg`),
//! select the organization's records and call [`evaluate`]; the engine reads the parsed
//! [`Filter`] and [`Granularity`] as they are, with the defaults the wire module documents
//! (`ordering` lexicographic, `lowerStrict`/`upperStrict` false).
//!
//! Semantics (also in `docs/simulator.md`): the interval's ends are both inclusive; without
//! `group_by` every bucket of the interval is returned, empty ones with count 0, sums 0, averages
//! null and distinct counts 0 (Druid's timeseries; with `omit_empty_buckets` only buckets with
//! rows, as other servers answer); with `group_by` only groups with rows;
//! `granularity: all` has one bucket, labelled with the interval start; weeks start on Monday;
//! buckets are labelled with their start in the query zone's offset; hyperUnique is exact.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::wire::giosg::{
    AggregationType, Dimension, DimensionType, Filter, Granularity, Ordering, ReportResponse, ResponseField,
    SelectorValue,
};
use crate::time::{format_ms_in, local_date, local_day_start};

/// A dataset record a query can read.
pub trait Record {
    /// The instant the interval and buckets are measured against.
    fn time(&self) -> DateTime<Utc>;
    /// A dimension's values as strings: none for null or an empty list, several for a list.
    fn values(&self, dim: &str) -> Vec<String>;
    /// A numeric dimension's value (validated numeric before evaluation).
    fn number(&self, dim: &str) -> f64;
}

impl<R: Record> Record for &R {
    fn time(&self) -> DateTime<Utc> {
        (**self).time()
    }
    fn values(&self, dim: &str) -> Vec<String> {
        (**self).values(dim)
    }
    fn number(&self, dim: &str) -> f64 {
        (**self).number(dim)
    }
}

/// What the engine evaluates: a validated request's interval, buckets, groups, metrics and filter.
pub struct Query<'a> {
    pub start: DateTime<Utc>,
    /// Inclusive.
    pub end: DateTime<Utc>,
    pub tz: Tz,
    pub granularity: Granularity,
    pub group_by: &'a [String],
    /// (kind, field, response name) per output metric.
    pub metrics: Vec<(AggregationType, Option<&'a str>, String)>,
    pub filters: Option<&'a Filter>,
    /// The dimensions of the records, for rendering group values (numbers as numbers).
    pub dimensions: &'a [Dimension],
    /// Without `group_by`, leave out buckets with no rows (`Assumptions::omit_empty_buckets`)
    /// instead of answering them with count 0.
    pub omit_empty_buckets: bool,
}

/// Evaluates `q` over `rows` (already the organization's, sorted by time).
pub fn evaluate<R: Record>(q: &Query, rows: &[R]) -> ReportResponse {
    let (start, end, tz, g) = (q.start, q.end, q.tz, q.granularity);
    let lo = rows.partition_point(|r| r.time() < start);
    let hi = rows.partition_point(|r| r.time() <= end);
    let mut groups: BTreeMap<GroupKey, Vec<Acc>> = BTreeMap::new();
    let fresh = || q.metrics.iter().map(|(k, _, _)| Acc::new(*k)).collect::<Vec<_>>();
    for row in &rows[lo..hi.max(lo)] {
        if let Some(f) = q.filters
            && !matches(f, row)
        {
            continue;
        }
        let bucket = bucket_start(g, tz, start, row.time());
        for key in group_keys(q.group_by, row) {
            let accs = groups.entry((bucket, key)).or_insert_with(fresh);
            for (acc, (_, field, _)) in accs.iter_mut().zip(&q.metrics) {
                acc.add(row, *field);
            }
        }
    }
    if q.group_by.is_empty() && !q.omit_empty_buckets {
        for bucket in buckets(g, tz, start, end) {
            groups.entry((bucket, Vec::new())).or_insert_with(fresh);
        }
    }

    let mut fields = vec![ResponseField::dimension("start_time")];
    fields.extend(q.group_by.iter().map(ResponseField::dimension));
    fields.extend(q.metrics.iter().map(|(_, _, n)| ResponseField::metric(n)));
    let data = groups
        .into_iter()
        .map(|((bucket, key), accs)| {
            let label = if g == Granularity::All { start } else { bucket };
            let mut line = vec![Value::String(format_ms_in(tz, label))];
            line.extend(key.into_iter().zip(q.group_by).map(|(v, dim)| key_value(v, dim, q.dimensions)));
            line.extend(accs.into_iter().map(Acc::finish));
            line
        })
        .collect();
    ReportResponse { fields, data }
}

/// A result row's identity: bucket start and group values (`None` for null).
type GroupKey = (DateTime<Utc>, Vec<Option<String>>);

/// One metric being accumulated.
enum Acc {
    Count(u64),
    Sum(f64),
    Avg(f64, u64),
    Distinct(HashSet<String>),
}

impl Acc {
    fn new(kind: AggregationType) -> Acc {
        match kind {
            AggregationType::Count => Acc::Count(0),
            AggregationType::Sum => Acc::Sum(0.0),
            AggregationType::Avg => Acc::Avg(0.0, 0),
            AggregationType::HyperUnique => Acc::Distinct(HashSet::new()),
        }
    }

    fn add<R: Record>(&mut self, row: &R, field: Option<&str>) {
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum(s) => *s += row.number(field.expect("sum has a field")),
            Acc::Avg(s, n) => {
                *s += row.number(field.expect("avg has a field"));
                *n += 1;
            }
            Acc::Distinct(set) => {
                for v in row.values(field.expect("hyperUnique has a field")) {
                    if !set.contains(&v) {
                        set.insert(v);
                    }
                }
            }
        }
    }

    fn finish(self) -> Value {
        match self {
            Acc::Count(n) => Value::from(n),
            Acc::Sum(s) => Value::from(s),
            Acc::Avg(_, 0) => Value::Null,
            Acc::Avg(s, n) => Value::from(s / n as f64),
            Acc::Distinct(set) => Value::from(set.len() as f64),
        }
    }
}

/// Numbers as Druid renders dimension values: integers without a fraction.
pub fn render_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x}") }
}

/// The group keys `row` falls in: the cartesian product of each group dimension's values, a
/// multi-value dimension expanding into one key per value and an empty one into null.
fn group_keys<R: Record>(group_by: &[String], row: &R) -> Vec<Vec<Option<String>>> {
    let mut keys: Vec<Vec<Option<String>>> = vec![Vec::new()];
    for dim in group_by {
        let v = row.values(dim);
        let vals: Vec<Option<String>> = if v.is_empty() { vec![None] } else { v.into_iter().map(Some).collect() };
        keys = keys
            .into_iter()
            .flat_map(|k| {
                vals.iter().map(move |v| {
                    let mut k = k.clone();
                    k.push(v.clone());
                    k
                })
            })
            .collect();
    }
    keys
}

/// A group key part as the response shows it: numeric dimensions as numbers, others as strings.
fn key_value(v: Option<String>, dim: &str, dimensions: &[Dimension]) -> Value {
    let numeric = dimensions.iter().any(|d| d.name == dim && d.kind == DimensionType::Number);
    match v {
        None => Value::Null,
        Some(s) if numeric => {
            s.parse::<i64>().map(Value::from).or_else(|_| s.parse::<f64>().map(Value::from)).unwrap_or(Value::String(s))
        }
        Some(s) => Value::String(s),
    }
}

/// Whether `row` passes `filter`.
pub fn matches<R: Record>(filter: &Filter, row: &R) -> bool {
    match filter {
        Filter::And { fields } => fields.iter().all(|f| matches(f, row)),
        Filter::Or { fields } => fields.iter().any(|f| matches(f, row)),
        Filter::Not { field } => !matches(field, row),
        Filter::Selector { dimension, value } => {
            let vals = row.values(dimension);
            match value {
                SelectorValue::Null => vals.is_empty() || vals.iter().all(|v| v.is_empty()),
                SelectorValue::Text(s) => vals.iter().any(|v| v == s),
                SelectorValue::Number(n) => {
                    let want = n.as_f64();
                    vals.iter().any(|v| v.parse::<f64>().ok() == want)
                }
            }
        }
        Filter::Bound { dimension, lower, upper, lower_strict, upper_strict, ordering } => {
            let (lower_strict, upper_strict) = (lower_strict.unwrap_or(false), upper_strict.unwrap_or(false));
            row.values(dimension).iter().any(|v| match ordering.unwrap_or_default() {
                Ordering::Numeric => {
                    let Ok(x) = v.parse::<f64>() else { return false };
                    let lo_ok = lower
                        .as_ref()
                        .and_then(|b| b.number())
                        .is_none_or(|lo| if lower_strict { x > lo } else { x >= lo });
                    let hi_ok = upper
                        .as_ref()
                        .and_then(|b| b.number())
                        .is_none_or(|hi| if upper_strict { x < hi } else { x <= hi });
                    lo_ok && hi_ok
                }
                Ordering::Lexicographic => {
                    let lo_ok =
                        lower.as_ref().map(|b| b.text()).is_none_or(|lo| if lower_strict { *v > lo } else { *v >= lo });
                    let hi_ok =
                        upper.as_ref().map(|b| b.text()).is_none_or(|hi| if upper_strict { *v < hi } else { *v <= hi });
                    lo_ok && hi_ok
                }
            })
        }
    }
}

/// The start of the bucket holding `t`, in zone `tz`.
pub fn bucket_start(g: Granularity, tz: Tz, interval_start: DateTime<Utc>, t: DateTime<Utc>) -> DateTime<Utc> {
    let sub_day = |minutes: i64| {
        // Floor the local wall clock, keeping the offset in force at `t`: correct across DST
        // changes (an hour of a 25-hour day is its own bucket) and for half-hour zones.
        let local = t.with_timezone(&tz);
        let offset = local.naive_local() - t.naive_utc();
        let naive = local.naive_local();
        let since_midnight = naive.time().num_seconds_from_midnight() as i64 / 60;
        let floored = naive.date().and_hms_opt(0, 0, 0).expect("midnight")
            + Duration::minutes(since_midnight / minutes * minutes);
        (floored - offset).and_utc()
    };
    let date = local_date(tz, t);
    let day_start = |d: NaiveDate| local_day_start(tz, d);
    match g {
        Granularity::All => interval_start,
        Granularity::Minute => sub_day(1),
        Granularity::FifteenMinute => sub_day(15),
        Granularity::ThirtyMinute => sub_day(30),
        Granularity::Hour => sub_day(60),
        Granularity::Day => day_start(date),
        Granularity::Week => day_start(date - Duration::days(date.weekday().num_days_from_monday() as i64)),
        Granularity::Month => day_start(date.with_day(1).expect("day 1")),
        Granularity::Quarter => {
            let m = (date.month0() / 3) * 3 + 1;
            day_start(NaiveDate::from_ymd_opt(date.year(), m, 1).expect("valid"))
        }
        Granularity::Year => day_start(NaiveDate::from_ymd_opt(date.year(), 1, 1).expect("valid")),
    }
}

/// Every bucket start from the bucket of `start` through the bucket of `end`.
fn buckets(g: Granularity, tz: Tz, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    if g == Granularity::All {
        return vec![start];
    }
    let mut out = Vec::new();
    let mut b = bucket_start(g, tz, start, start);
    while b <= end {
        out.push(b);
        // The next bucket starts where a probe past this one's longest possible length floors to.
        let probe = match g {
            Granularity::Minute => b + Duration::minutes(1),
            Granularity::FifteenMinute => b + Duration::minutes(15),
            Granularity::ThirtyMinute => b + Duration::minutes(30),
            Granularity::Hour => b + Duration::hours(1),
            Granularity::Day => b + Duration::hours(26),
            Granularity::Week => b + Duration::days(7) + Duration::hours(2),
            Granularity::Month => b + Duration::days(32),
            Granularity::Quarter => b + Duration::days(93),
            Granularity::Year => b + Duration::days(367),
            Granularity::All => unreachable!(),
        };
        let next = bucket_start(g, tz, start, probe);
        b = if next > b { next } else { probe };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn hel() -> Tz {
        chrono_tz::Europe::Helsinki
    }

    #[test]
    fn hour_buckets_of_the_autumn_dst_day_number_25() {
        let tz = hel();
        let d = NaiveDate::from_ymd_opt(2024, 10, 27).unwrap();
        let start = local_day_start(tz, d);
        let end = local_day_start(tz, d.succ_opt().unwrap()) - Duration::milliseconds(1);
        let b = buckets(Granularity::Hour, tz, start, end);
        assert_eq!(b.len(), 25);
        assert_eq!(format_ms_in(tz, b[3]), "2024-10-27T03:00:00.000+03:00");
        assert_eq!(format_ms_in(tz, b[4]), "2024-10-27T03:00:00.000+02:00");
    }

    #[test]
    fn day_buckets_follow_local_midnight_across_spring_change() {
        let tz = hel();
        let start = local_day_start(tz, NaiveDate::from_ymd_opt(2024, 3, 30).unwrap());
        let end = local_day_start(tz, NaiveDate::from_ymd_opt(2024, 4, 2).unwrap()) - Duration::milliseconds(1);
        let b: Vec<String> =
            buckets(Granularity::Day, tz, start, end).into_iter().map(|t| format_ms_in(tz, t)).collect();
        assert_eq!(
            b,
            ["2024-03-30T00:00:00.000+02:00", "2024-03-31T00:00:00.000+02:00", "2024-04-01T00:00:00.000+03:00"]
        );
    }

    #[test]
    fn week_and_month_buckets() {
        let tz = hel();
        let t = Utc.with_ymd_and_hms(2024, 3, 31, 12, 0, 0).unwrap(); // a Sunday
        assert_eq!(format_ms_in(tz, bucket_start(Granularity::Week, tz, t, t)), "2024-03-25T00:00:00.000+02:00");
        assert_eq!(format_ms_in(tz, bucket_start(Granularity::Month, tz, t, t)), "2024-03-01T00:00:00.000+02:00");
        assert_eq!(format_ms_in(tz, bucket_start(Granularity::Quarter, tz, t, t)), "2024-01-01T00:00:00.000+02:00");
    }

    #[test]
    fn a_millisecond_before_midnight_is_the_previous_day() {
        let tz = hel();
        let midnight = local_day_start(tz, NaiveDate::from_ymd_opt(2024, 3, 31).unwrap());
        let before = bucket_start(Granularity::Day, tz, midnight, midnight - Duration::milliseconds(1));
        assert_eq!(format_ms_in(tz, before), "2024-03-30T00:00:00.000+02:00");
        assert_eq!(bucket_start(Granularity::Day, tz, midnight, midnight), midnight);
    }
}

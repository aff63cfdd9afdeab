//! giosg: the reporting APIs of the vendor docs 000 (realtime), 001 (metric tutorial) and 002 (chat_sessions).
//!
//! Owns (the query language itself is [`crate::query`], shared with job-file validation) one
//! client module per endpoint
//! (`chat_sessions`, `events`, `workflow`: bodies for a job's windows and responses split back
//! into windows; `realtime`: the rooms and users snapshots), the table shape the three history
//! endpoints share ([`columns`]), and how their answers are read whatever the upstream's habits:
//!
//! - **Metrics by meaning** ([`metric_columns`]): each aggregation reads the field with its
//!   expected name (`count`, `<field>_sum`, `<field>_avg`, `<field>_hyper_unique`; events `count`,
//!   `sum`, `avg`; workflow `<field>_avg`); a count on a field is also found as `<field>_count` or
//!   `<field>` (a server following 002's `visitor_ids_hyper_unique` by analogy); failing that, the
//!   `type: metric` fields in order, when there is one per aggregation (and the names found agree
//!   with that order); otherwise the window fails, listing the fields received.
//! - **One rule for empty buckets** ([`bucket_starts`], [`empty_metrics`]): a scope without group
//!   dimensions (org) has exactly one row per bucket of every loaded window, whether the upstream
//!   answers empty buckets (Druid's timeseries, the simulator's default) or leaves them out; a
//!   bucket with no rows has counts and sums 0, averages null (an average of nothing is not 0) and
//!   distinct counts (hyperUnique) 0 (the distinct count of no rows, as Druid and the simulator
//!   answer it; null would make a hyperUnique-only job's quiet days depend on the upstream, since
//!   an answered 0 cannot be told from an empty bucket). A line whose count is 0 is such a bucket
//!   and gets exactly those values. Grouped scopes (team, user) have rows only for the groups an
//!   answer has. A window's buckets come from the job: granularity `all` and `day` are the window
//!   itself, `hour` every wall-clock hour inside it in the job's zone ([`crate::plan`]'s hours);
//!   a line whose bucket is not one of them fails the window, as does a second line for one
//!   bucket and group.

pub mod chat_sessions;
pub mod events;
pub mod realtime;
pub mod workflow;

use chrono::{DateTime, Utc};

use crate::config::{Job, JobAggregation, SourceConfig, WindowUnit};
use crate::plan::Window;
use crate::query::{AggregationKind, Granularity, ResponseField};
use crate::row::{Column, ColumnType, Value as Cell};
use crate::source::FetchError;
use crate::source::http::HttpError;

/// chat_sessions, events and workflow tables: `scope`, `team_id`, `user_id`, then one column per
/// aggregation (`bigint` for count, `double precision` otherwise); `counted` says what a count
/// without a field counts, for its comment.
pub fn columns(job: &Job, counted: &str) -> (Vec<Column>, Vec<Column>) {
    let dims = vec![
        Column::new("scope", ColumnType::Text, "row scope: org, team or user"),
        Column::new("team_id", ColumnType::Text, "team of a team-scope row"),
        Column::new("user_id", ColumnType::Text, "user of a user-scope row"),
    ];
    let metrics = job
        .aggregations
        .iter()
        .map(|a| Column {
            name: a.column.clone(),
            ty: if a.kind == AggregationKind::Count { ColumnType::Int } else { ColumnType::Float },
            comment: match &a.field {
                Some(f) => format!("{} of {f} (api metric {})", a.kind.api_name(), a.metric_name()),
                None => {
                    format!("{} of the {counted} (api metric {})", a.kind.api_name(), a.metric_name())
                }
            },
        })
        .collect();
    (dims, metrics)
}

/// Other names a count's metric may have: `<field>_count` and `<field>` for a count on a field
/// (`chat_session_id_count`, `chat_session_id`); none otherwise.
fn count_aliases(a: &JobAggregation) -> Vec<String> {
    match (a.kind, &a.field) {
        (AggregationKind::Count, Some(f)) => vec![format!("{f}_count"), f.clone()],
        _ => Vec::new(),
    }
}

/// The index in `fields` of each of `job`'s aggregations, in order: by expected name, then (a
/// count on a field) by an alias among the `metric` fields, then by the order of the `metric`
/// fields when there is one per aggregation and the names found agree with it. The error lists
/// what was missing and every field received.
pub fn metric_columns(job: &Job, fields: &[ResponseField]) -> Result<Vec<usize>, String> {
    let is_metric = |f: &ResponseField| f.kind == "metric";
    let by_name: Vec<Option<usize>> = job
        .aggregations
        .iter()
        .map(|a| {
            let expected = a.metric_name();
            fields.iter().position(|f| f.name == expected).or_else(|| {
                count_aliases(a).iter().find_map(|alias| fields.iter().position(|f| is_metric(f) && f.name == *alias))
            })
        })
        .collect();
    if by_name.iter().all(Option::is_some) {
        return Ok(by_name.into_iter().flatten().collect());
    }
    let metrics: Vec<usize> = (0..fields.len()).filter(|i| is_metric(&fields[*i])).collect();
    let n = job.aggregations.len();
    let agrees = by_name.iter().zip(&metrics).all(|(found, m)| found.is_none_or(|i| i == *m));
    if metrics.len() == n && agrees {
        return Ok(metrics);
    }
    let missing: Vec<String> = job
        .aggregations
        .iter()
        .zip(&by_name)
        .filter(|(_, found)| found.is_none())
        .map(|(a, _)| {
            let aliases = count_aliases(a);
            if aliases.is_empty() {
                format!("`{}`", a.metric_name())
            } else {
                let others: Vec<String> = aliases.iter().map(|n| format!("`{n}`")).collect();
                format!("`{}` (or {})", a.metric_name(), others.join(", "))
            }
        })
        .collect();
    let why = if metrics.len() == n {
        "its metric fields in order disagree with the fields found by name".to_string()
    } else {
        let s = |k: usize| if k == 1 { "" } else { "s" };
        format!("it has {} metric field{} for {n} aggregation{}", metrics.len(), s(metrics.len()), s(n))
    };
    let received: Vec<String> = fields.iter().map(|f| format!("{} ({})", f.name, f.kind)).collect();
    Err(format!(
        "response has no field for {}, and {why}; fields received: {}",
        missing.join(", "),
        if received.is_empty() { "none".to_string() } else { received.join(", ") }
    ))
}

/// The bucket starts of `window` for `job`, in order: the window start for granularity `all`
/// and `day` (one bucket per window), every wall-clock hour inside it for `hour` (a repeated
/// autumn hour is two buckets, a skipped spring hour none); `None` for granularities job files
/// cannot ask for (no fill, no check).
pub fn bucket_starts(job: &Job, window: &Window) -> Option<Vec<DateTime<Utc>>> {
    match job.granularity {
        Granularity::All | Granularity::Day => Some(vec![window.start]),
        Granularity::Hour => Some(
            crate::plan::windows_overlapping(WindowUnit::Hour, job.time_zone, window.start, window.end)
                .into_iter()
                .map(|h| h.start)
                .filter(|s| *s >= window.start && *s < window.end)
                .collect(),
        ),
        Granularity::Minute
        | Granularity::FifteenMinute
        | Granularity::ThirtyMinute
        | Granularity::Week
        | Granularity::Month
        | Granularity::Quarter
        | Granularity::Year => None,
    }
}

/// The granularity a request of `job` asks for: the job's own, except for a bucketed job of
/// granularity `all` (events with `bucketed: true`), whose requests cover several windows and ask
/// for buckets of the window's length (`day` for day windows, `hour` for hour windows), so each
/// bucket is one window and [`bucket_starts`] (the window start) holds for both.
pub fn request_granularity(job: &Job) -> Granularity {
    match (job.bucketed, job.granularity, job.window) {
        (true, Granularity::All, WindowUnit::Day) => Granularity::Day,
        (true, Granularity::All, WindowUnit::Hour) => Granularity::Hour,
        (_, g, _) => g,
    }
}

/// `e`, with its detail saying which assumption a refused query (a 4xx other than 401, 403 and
/// 429) relied on and which key turns it off: a bucketed query (`giosg.bucketed_events`) or one
/// with several aggregations on a source that fuses them (`giosg.fused_events`). Other errors are
/// returned as they are.
pub fn assumption_hint(source: &SourceConfig, job: &Job, e: FetchError) -> FetchError {
    let FetchError::Http(HttpError::Status { status, method, url, detail, retry_after }) = e else { return e };
    let refused = (400..500).contains(&status) && !matches!(status, 401 | 403 | 429);
    let mut hints = Vec::new();
    if refused && job.bucketed && request_granularity(job) != job.granularity {
        hints.push(format!(
            "the request asked for {} buckets over several windows, which api-docs 001 never shows (assumption \
             giosg.bucketed_events, see `chatetl probe`): set `bucketed: false` in job {} or leave \
             `assume.bucketed_events` of source {} false",
            granularity_name(request_granularity(job)),
            job.name,
            source.name
        ));
    }
    if refused && source.assume.fused_events && job.aggregations.len() > 1 {
        hints.push(format!(
            "the request carried {} aggregations (assumption giosg.fused_events, see `chatetl probe`): set \
             `assume.fused_events` of source {} to false",
            job.aggregations.len(),
            source.name
        ));
    }
    let detail = if hints.is_empty() { detail } else { format!("{detail}; {}", hints.join("; ")) };
    FetchError::Http(HttpError::Status { status, method, url, detail, retry_after })
}

/// `day`, `hour`, … as job files and the API write it.
fn granularity_name(g: Granularity) -> String {
    serde_json::to_value(g).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// The values of a bucket without rows: counts and sums 0, averages null, distinct counts 0.
pub fn empty_metrics(job: &Job) -> Vec<Cell> {
    job.aggregations
        .iter()
        .map(|a| match a.kind {
            AggregationKind::Count | AggregationKind::Sum | AggregationKind::HyperUnique => Cell::Number(0.0),
            AggregationKind::Avg => Cell::Null,
        })
        .collect()
}

/// Whether `metrics` (one line of `job`) say its bucket had no rows: one of its counts is 0.
pub fn counts_nothing(job: &Job, metrics: &[Cell]) -> bool {
    job.aggregations
        .iter()
        .zip(metrics)
        .any(|(a, m)| a.kind == AggregationKind::Count && matches!(m, Cell::Number(x) if *x == 0.0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(crate) use crate::config::testing::job;

    /// A chat_sessions job with `aggregations` (YAML flow lines), day windows and `granularity`.
    pub(crate) fn chat_job(granularity: &str, scopes: &str, aggregations: &[&str]) -> Job {
        let aggs: String = aggregations.iter().map(|a| format!("  - {a}\n")).collect();
        job(&format!(
            "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\ngranularity: {granularity}\n\
             scopes: [{scopes}]\nstart: 2024-01-01\naggregations:\n{aggs}"
        ))
    }

    fn fields(spec: &[(&str, &str)]) -> Vec<ResponseField> {
        spec.iter().map(|(n, k)| ResponseField { name: n.to_string(), kind: k.to_string() }).collect()
    }

    const COUNT: &str = "{ type: count, field: chat_session_id, column: chats }";
    const SUM: &str = "{ type: sum, field: sales, column: sales }";
    const AVG: &str = "{ type: avg, field: sales, column: average_sales }";
    const UNIQUE: &str = "{ type: hyperUnique, field: visitor_ids, column: visitors }";

    #[test]
    fn metrics_are_found_by_their_expected_names_wherever_they_are() {
        let j = chat_job("day", "org", &[COUNT, SUM, AVG, UNIQUE]);
        let f = fields(&[
            ("start_time", "dimension"),
            ("visitor_ids_hyper_unique", "metric"),
            ("sales_avg", "metric"),
            ("count", "metric"),
            ("sales_sum", "metric"),
        ]);
        assert_eq!(metric_columns(&j, &f).unwrap(), vec![3, 4, 2, 1]);
    }

    #[test]
    fn a_count_is_also_found_as_field_count_or_as_the_field() {
        let j = chat_job("day", "org", &[SUM, COUNT]);
        for name in ["chat_session_id_count", "chat_session_id"] {
            // Listed first, so order alone would give it to the sum: the name decides.
            let f = fields(&[("start_time", "dimension"), (name, "metric"), ("sales_sum", "metric")]);
            assert_eq!(metric_columns(&j, &f).unwrap(), vec![2, 1], "{name}");
        }
        // `count` wins over an alias; an alias must be a metric (not a group dimension).
        let f = fields(&[("chat_session_id_count", "metric"), ("count", "metric"), ("sales_sum", "metric")]);
        assert_eq!(metric_columns(&j, &f).unwrap(), vec![2, 1]);
        let f = fields(&[("chat_session_id", "dimension"), ("sales_sum", "metric"), ("total", "metric")]);
        assert_eq!(metric_columns(&j, &f).unwrap(), vec![1, 2], "by order, not the dimension");
    }

    #[test]
    fn unknown_names_are_read_by_order_when_there_is_one_metric_per_aggregation() {
        let j = chat_job("day", "team", &[COUNT, SUM]);
        let f = fields(&[("start_time", "dimension"), ("team_id", "dimension"), ("n", "metric"), ("s", "metric")]);
        assert_eq!(metric_columns(&j, &f).unwrap(), vec![2, 3]);
        // A name found by name that agrees with the order is fine ...
        let f = fields(&[("start_time", "dimension"), ("n", "metric"), ("sales_sum", "metric")]);
        assert_eq!(metric_columns(&j, &f).unwrap(), vec![1, 2]);
        // ... one that contradicts it fails.
        let f = fields(&[("start_time", "dimension"), ("sales_sum", "metric"), ("n", "metric")]);
        let err = metric_columns(&j, &f).unwrap_err();
        assert!(err.contains("no field for `count` (or `chat_session_id_count`, `chat_session_id`)"), "{err}");
        assert!(err.contains("disagree"), "{err}");
    }

    #[test]
    fn otherwise_the_error_lists_every_field_received() {
        let j = chat_job("day", "org", &[COUNT, AVG]);
        let f = fields(&[("start_time", "dimension"), ("sessions", "metric")]);
        let err = metric_columns(&j, &f).unwrap_err();
        assert_eq!(
            err,
            "response has no field for `count` (or `chat_session_id_count`, `chat_session_id`), `sales_avg`, and it \
             has 1 metric field for 2 aggregations; fields received: start_time (dimension), sessions (metric)"
        );
    }

    #[test]
    fn buckets_of_a_window_follow_the_granularity_in_the_job_zone() {
        let tz = chrono_tz::Europe::Helsinki;
        let day = |d: u32| crate::time::local_day_start(tz, chrono::NaiveDate::from_ymd_opt(2024, 10, d).unwrap());
        let autumn = Window { start: day(27), end: day(28) };
        assert_eq!(bucket_starts(&chat_job("day", "org", &[COUNT]), &autumn).unwrap(), vec![autumn.start]);
        assert_eq!(bucket_starts(&chat_job("all", "org", &[COUNT]), &autumn).unwrap(), vec![autumn.start]);
        let hours = bucket_starts(&chat_job("hour", "org", &[COUNT]), &autumn).unwrap();
        assert_eq!(hours.len(), 25, "the repeated hour is two buckets");
        assert_eq!(hours[0], autumn.start);
        assert_eq!(hours[4] - hours[3], chrono::Duration::hours(1));
        assert_eq!(hours[4], Utc.with_ymd_and_hms(2024, 10, 27, 1, 0, 0).unwrap(), "03:00+02:00");
    }

    #[test]
    fn an_empty_bucket_counts_and_sums_zero_and_averages_nothing() {
        let j = chat_job("day", "org", &[COUNT, SUM, AVG, UNIQUE]);
        let empty = empty_metrics(&j);
        assert_eq!(empty, vec![Cell::Number(0.0), Cell::Number(0.0), Cell::Null, Cell::Number(0.0)]);
        assert!(counts_nothing(&j, &empty));
        assert!(!counts_nothing(&j, &[Cell::Number(1.0), Cell::Number(0.0), Cell::Null, Cell::Number(0.0)]));
        assert!(!counts_nothing(&chat_job("day", "org", &[SUM]), &[Cell::Number(0.0)]), "no count, no telling");
    }
}

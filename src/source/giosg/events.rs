//! The giosg events client (`POST /api/events/v2/orgs/{org}/fetch`, api-docs 001): the request
//! body for a job's windows and scopes, and the response split back into rows per window.
//!
//! Body (001's shape, key for key): `sources` and `vendor` from the job (default `["trusted"]`
//! and `com.giosg.chat`), the job's `interval` in its zone (`end` = last window end minus 1 ms,
//! as 001 ends days at `…T23:59:59.999`), its granularity, `group_by` from the scope (org: none,
//! team: `team_id`, user: `user_id`), `organization_id` from the source, `aggregations` as the
//! plain names 001 sends (`["avg"]`, `["count"]`; `sum` too), and the job's `filters` unchanged
//! (001 filters on `category` and `action`). Unlike chat_sessions there is no `scope` selector:
//! an event is not stored once per scope.
//!
//! Response assumption (001 does not show one): the chat_sessions shape, `{"fields": [...],
//! "data": [[...]]}`, with `start_time` first, the group_by dimension next, then one metric per
//! aggregation named `count`, `sum` or `avg` (the average and sum of the events' `value`; an
//! average of no events is null), else found by meaning (`super::metric_columns`: the metric
//! fields in order). Parsed by [`super::chat_sessions::parse`], so the same rules hold: extra
//! fields are ignored; a missing field, a line of the wrong length, a bucket outside the requested
//! windows or a non-numeric metric fails the request; the org scope has one row per window
//! whether or not the answer leaves out empty buckets (count and sum 0, average null). The
//! simulator serves exactly this shape (`docs/simulator.md`).
//!
//! # Bucketed queries (`bucketed`, an assumption `chatetl probe` checks)
//!
//! 001 shows only `granularity: all`, so by default a request covers one window. A job with
//! `bucketed: true` (or of a source with `assume: {bucketed_events: true}`) sends one request per
//! chunk of up to `max_windows_per_request` windows (31 days, 168 hours by default), exactly as
//! chat_sessions does: the same `interval`, with `granularity` the window's unit (`day`, `hour`;
//! [`super::request_granularity`]) while the job's own granularity stays `all`. The answer is
//! split back by `start_time` into one row per window, scope and group, the empty-bucket rule of
//! `super` included, so the rows are those of one `all` query per window (bucket_start = the
//! window start). A server that refuses the granularity (a 4xx) fails the chunk with a message
//! naming the assumption and the keys that turn it off ([`super::assumption_hint`]); one that silently
//! answers one bucket for the whole interval cannot be told from a quiet chunk, which is why this
//! is opt-in and probed (`giosg.bucketed_events` in `docs/assumptions.md`).
//!
//! # Several aggregations (`assume: {fused_events: true}`)
//!
//! `aggregations` is a list of plain kinds and each metric is named after its kind (`count`,
//! `sum`, `avg`), so one query carries each kind at most once: two aggregations of one kind (a
//! count for one job and a count for another) cannot be told apart in the answer, and the
//! simulator refuses a kind requested twice. A query fusing several jobs therefore carries the
//! union of their kinds, each once, and every job reads its own kinds from the one answer by
//! name ([`super::metric_columns`]). That several kinds come back, each named by its kind, is
//! the assumption `giosg.fused_events`.

use serde::{Deserialize, Serialize};

use crate::config::{EndpointParams, Job, Scope, SourceConfig};
use crate::plan::Window;
use crate::query::{AggregationKind, EVENT_DIMENSIONS, Filter, Granularity, Interval};
use crate::row::Column;
use crate::source::http::{Calls, HttpRequest};
use crate::source::{Api, FetchError, WindowRows};
use futures::future::BoxFuture;

/// One query against `POST /api/events/v2/orgs/{org}/fetch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Event sources read (001: `["trusted"]`).
    pub sources: Vec<String>,
    /// The time range, both ends inclusive, and the bucketing zone.
    pub interval: Interval,
    pub granularity: Granularity,
    #[serde(default)]
    pub group_by: Vec<String>,
    /// The organization, repeated from the path (001 sends both).
    pub organization_id: String,
    /// The event vendor (001: `com.giosg.chat`).
    pub vendor: String,
    /// `count`, `sum` or `avg` of the events' value.
    pub aggregations: Vec<AggregationKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filter>,
}

impl EventsQuery {
    /// Checks what serde cannot, every problem with its path.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if crate::time::parse_tz(&self.interval.time_zone).is_err() {
            errors.push(format!("interval.time_zone: unknown time zone `{}`", self.interval.time_zone));
        }
        if self.interval.end < self.interval.start {
            errors.push("interval: end is before start".to_string());
        }
        if self.sources.is_empty() {
            errors.push("sources: at least one source is required".to_string());
        }
        let known = |d: &str| EVENT_DIMENSIONS.iter().any(|(n, _)| *n == d);
        for (i, dim) in self.group_by.iter().enumerate() {
            if !known(dim) {
                errors.push(format!("group_by[{i}]: unknown dimension `{dim}`"));
            }
        }
        if self.aggregations.is_empty() {
            errors.push("aggregations: at least one aggregation is required".to_string());
        }
        for (i, a) in self.aggregations.iter().enumerate() {
            if *a == AggregationKind::HyperUnique {
                errors.push(format!("aggregations[{i}]: events aggregate with count, sum or avg"));
            } else if self.aggregations[..i].contains(a) {
                errors.push(format!("aggregations[{i}]: `{}` is requested twice", a.api_name()));
            }
        }
        if let Some(f) = &self.filters {
            f.validate_in("filters", EVENT_DIMENSIONS, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// `…/api/events/v2/orgs/{org}/fetch`.
pub fn url(base_url: &str, organization_id: &str) -> String {
    format!("{base_url}/api/events/v2/orgs/{organization_id}/fetch")
}

/// The query for `scope` over consecutive `windows` (at least one).
pub fn query(source: &SourceConfig, job: &Job, scope: Scope, windows: &[Window]) -> EventsQuery {
    let (vendor, sources) = match &job.params {
        EndpointParams::Events { vendor, sources } => (vendor.clone(), sources.clone()),
        other => unreachable!("an events job has events params, not {other:?}"),
    };
    EventsQuery {
        sources,
        interval: super::chat_sessions::interval(job, windows),
        granularity: super::request_granularity(job),
        group_by: scope.group_by().into_iter().map(String::from).collect(),
        organization_id: source.organization_id.clone(),
        vendor,
        aggregations: job.aggregations.iter().map(|a| a.kind).collect(),
        filters: job.filters.clone(),
    }
}

/// One request per scope of the job, over consecutive `windows`.
pub fn requests(source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
    let url = url(&source.base_url, &source.organization_id);
    job.scopes.iter().map(|scope| HttpRequest::post_json(&url, &query(source, job, *scope, windows))).collect()
}

/// The events API (api-docs 001): every scope's request at once, rows merged per window.
pub struct Events;

impl Api for Events {
    fn columns(&self, job: &Job) -> (Vec<Column>, Vec<Column>) {
        super::columns(job, "matching events' values")
    }

    fn requests(&self, source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        requests(source, job, windows)
    }

    fn fetch<'a>(
        &'a self,
        calls: &'a Calls<'a>,
        job: &'a Job,
        windows: &'a [Window],
    ) -> BoxFuture<'a, Result<WindowRows, FetchError>> {
        let requests = requests(calls.source, job, windows);
        Box::pin(async move {
            super::chat_sessions::fetch_scopes(calls, job, windows, requests, "an events result")
                .await
                .map_err(|e| super::assumption_hint(calls.source, job, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value as Cell;
    use crate::source::giosg::chat_sessions::parse;
    use crate::source::giosg::tests::job;
    use chrono::Duration;

    fn events_job() -> Job {
        job("description: d\nsource: giosg\nendpoint: events\nwindow: day\ngranularity: all\nscopes: [org, user]\n\
             start: 2024-01-01\naggregations:\n  - { type: count, column: n }\n  - { type: avg, column: wait }\n")
    }

    fn window() -> Vec<Window> {
        let start = chrono::DateTime::parse_from_rfc3339("2024-03-30T00:00:00+02:00").unwrap().to_utc();
        vec![Window { start, end: start + Duration::days(1) }]
    }

    /// Each row's dimensions and values.
    type Rows = Vec<(Vec<Option<String>>, Vec<Cell>)>;

    fn rows(scope: Scope, body: &str) -> Result<Rows, String> {
        let out = parse(&events_job(), scope, &window(), body.as_bytes(), "an events result")?;
        Ok(out.into_iter().flatten().map(|r| (r.dims, r.metrics)).collect())
    }

    #[test]
    fn metrics_are_read_by_name_or_by_order() {
        let named = r#"{"fields": [{"name": "start_time", "type": "dimension"}, {"name": "avg", "type": "metric"},
            {"name": "count", "type": "metric"}], "data": [["2024-03-30T00:00:00.000+02:00", 41.5, 2]]}"#;
        let want = vec![(vec![Some("org".into()), None, None], vec![Cell::Number(2.0), Cell::Number(41.5)])];
        assert_eq!(rows(Scope::Org, named).unwrap(), want);
        let ordered = r#"{"fields": [{"name": "start_time", "type": "dimension"}, {"name": "events", "type": "metric"},
            {"name": "value_avg", "type": "metric"}], "data": [["2024-03-30T00:00:00.000+02:00", 2, 41.5]]}"#;
        assert_eq!(rows(Scope::Org, ordered).unwrap(), want);
        let short = r#"{"fields": [{"name": "start_time", "type": "dimension"}, {"name": "events", "type": "metric"}],
            "data": []}"#;
        let err = rows(Scope::Org, short).unwrap_err();
        assert!(err.contains("no field for `count`, `avg`") && err.contains("events (metric)"), "{err}");
    }

    /// Helsinki days from 2024-03-30, over the spring change (the 31st has 23 hours).
    fn days(n: i64) -> Vec<Window> {
        let at = |d: i64| {
            let date = chrono::NaiveDate::from_ymd_opt(2024, 3, 30).unwrap() + Duration::days(d);
            crate::time::local_day_start(chrono_tz::Europe::Helsinki, date)
        };
        (0..n).map(|d| Window { start: at(d), end: at(d + 1) }).collect()
    }

    #[test]
    fn a_bucketed_query_asks_for_day_buckets_over_its_windows_and_the_answer_splits_back() {
        let source = crate::config::testing::giosg_source();
        let plain = events_job();
        assert_eq!(query(&source, &plain, Scope::Org, &days(1)).granularity, Granularity::All, "001's `all`");
        let bucketed = Job { bucketed: true, max_windows_per_request: 31, ..plain };
        let q = query(&source, &bucketed, Scope::User, &days(2));
        assert_eq!(q.granularity, Granularity::Day);
        assert_eq!(q.group_by, ["user_id"]);
        let body = serde_json::to_value(&q).unwrap();
        assert_eq!(body["interval"]["start"], "2024-03-30T00:00:00.000+02:00");
        assert_eq!(body["interval"]["end"], "2024-03-31T23:59:59.999+03:00");
        assert_eq!(bucketed.granularity, Granularity::All, "the job keeps its granularity");

        let fields = r#""fields": [{"name": "start_time", "type": "dimension"}, {"name": "user_id", "type": "dimension"},
            {"name": "count", "type": "metric"}, {"name": "avg", "type": "metric"}]"#;
        let answer = format!(
            r#"{{{fields}, "data": [["2024-03-30T00:00:00.000+02:00", "u1", 2, 41.5],
                ["2024-03-31T00:00:00.000+02:00", "u1", 1, 3.0], ["2024-03-31T00:00:00.000+02:00", "u2", 4, 8.25]]}}"#
        );
        let rows = parse(&bucketed, Scope::User, &days(2), answer.as_bytes(), "an events result").unwrap();
        let got: Vec<Vec<(Option<String>, Vec<Cell>)>> =
            rows.iter().map(|w| w.iter().map(|r| (r.dims[2].clone(), r.metrics.clone())).collect()).collect();
        let n = |c: f64, a: f64| vec![Cell::Number(c), Cell::Number(a)];
        assert_eq!(
            got,
            vec![
                vec![(Some("u1".into()), n(2.0, 41.5))],
                vec![(Some("u1".into()), n(1.0, 3.0)), (Some("u2".into()), n(4.0, 8.25))]
            ]
        );
        assert!(rows.iter().zip(days(2)).all(|(w, d)| w.iter().all(|r| r.bucket_start == d.start)));
        // The org scope gets its empty day filled, as one `all` query per day would answer it.
        let org_fields = fields.replace(r#"{"name": "user_id", "type": "dimension"},"#, "");
        let answer = format!(r#"{{{org_fields}, "data": [["2024-03-31T00:00:00.000+02:00", 3, 5.5]]}}"#);
        let rows = parse(&bucketed, Scope::Org, &days(2), answer.as_bytes(), "an events result").unwrap();
        assert_eq!(rows[0][0].metrics, vec![Cell::Number(0.0), Cell::Null]);
        assert_eq!(rows[1][0].metrics, n(3.0, 5.5));
    }

    #[test]
    fn a_refused_bucketed_or_fused_query_names_the_assumption_and_the_key() {
        let mut source = crate::config::testing::giosg_source();
        let bucketed = Job { bucketed: true, max_windows_per_request: 31, ..events_job() };
        let refused = |status: u16| {
            FetchError::Http(crate::source::http::HttpError::Status {
                status,
                method: "POST".into(),
                url: "https://service.giosg.com/api/events/v2/orgs/o/fetch".into(),
                detail: "granularity not supported".into(),
                retry_after: None,
            })
        };
        let message = super::super::assumption_hint(&source, &bucketed, refused(400)).to_string();
        assert!(message.contains("granularity not supported; the request asked for day buckets"), "{message}");
        assert!(
            message.contains("giosg.bucketed_events") && message.contains("`bucketed: false` in job j"),
            "{message}"
        );
        assert!(!message.contains("fused_events"), "{message}");
        for status in [401, 429, 503] {
            let message = super::super::assumption_hint(&source, &bucketed, refused(status)).to_string();
            assert!(!message.contains("giosg.bucketed_events"), "{status}: {message}");
        }
        source.assume.fused_events = true;
        let fused = super::super::assumption_hint(&source, &events_job(), refused(400)).to_string();
        assert!(
            fused.contains("2 aggregations (assumption giosg.fused_events") && !fused.contains("bucketed"),
            "{fused}"
        );
    }

    #[test]
    fn a_quiet_day_is_one_org_row_and_no_user_rows() {
        let fields = r#""fields": [{"name": "start_time", "type": "dimension"}, {"name": "count", "type": "metric"},
            {"name": "avg", "type": "metric"}]"#;
        let empty = vec![(vec![Some("org".into()), None, None], vec![Cell::Number(0.0), Cell::Null])];
        assert_eq!(rows(Scope::Org, &format!("{{{fields}, \"data\": []}}")).unwrap(), empty);
        let answered = format!("{{{fields}, \"data\": [[\"2024-03-30T00:00:00.000+02:00\", 0, null]]}}");
        assert_eq!(rows(Scope::Org, &answered).unwrap(), empty);
        let user_fields =
            fields.replace(r#"{"name": "count""#, r#"{"name": "user_id", "type": "dimension"}, {"name": "count""#);
        assert_eq!(rows(Scope::User, &format!("{{{user_fields}, \"data\": []}}")).unwrap(), vec![]);
    }
}

//! The giosg chat_sessions client: request bodies for a job's windows and scopes, and the
//! response split back into rows per window.
//!
//! Body (api-docs 001's shape): the job's interval in its zone (`start` = first window start,
//! `end` = last window end minus 1 ms, as the docs end days at `…T23:59:59.999`), its
//! granularity, `group_by` from the scope (team → `team_id`, user → `user_id`), its aggregations,
//! and an `and` of the job's filters, the room selector (if rooms are set) and the scope selector.
//!
//! Response assumptions (api-docs 002 shows one example): `fields` names the columns, among them
//! `start_time` and the scope's group_by dimension; each `data` line has one value per field; each
//! aggregation's metric is found by meaning (`super::metric_columns`: its expected name, a count's
//! `<field>_count` or `<field>`, else the metric fields in order). Extra fields are ignored; a
//! missing field, a line of the wrong length, a bucket outside the requested windows or not one of
//! their buckets, a second line for a bucket and group, or a non-numeric metric fails the request.
//! Empty buckets follow the one rule of `super` (the module doc): an org-scope answer that leaves
//! out a bucket gets its row filled in (counts and sums 0, averages null, distinct counts 0), and a
//! line counting 0 gets exactly those values, so both upstream habits load the same rows.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::config::{Job, Scope, SourceConfig};
use crate::plan::Window;
use crate::query::{Aggregation, ChatSessionsQuery, ChatSessionsResponse, Filter, Interval};
use crate::row::{Column, Row, Value as Cell};
use crate::source::http::{Calls, HttpRequest};
use crate::source::{Api, FetchError, WindowRows};
use futures::future::BoxFuture;

/// `…/api/reporting/v1/orgs/{org}/chat_sessions`.
pub fn url(base_url: &str, organization_id: &str) -> String {
    format!("{base_url}/api/reporting/v1/orgs/{organization_id}/chat_sessions")
}

/// One request per scope of the job, over consecutive `windows`.
pub fn requests(source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
    let url = url(&source.base_url, &source.organization_id);
    job.scopes.iter().map(|scope| HttpRequest::post_json(&url, &query(job, *scope, windows))).collect()
}

/// The chat_sessions reporting API (api-docs 001, 002).
pub struct ChatSessions;

impl Api for ChatSessions {
    fn columns(&self, job: &Job) -> (Vec<Column>, Vec<Column>) {
        super::columns(job, "chat session rows")
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
        Box::pin(fetch_scopes(calls, job, windows, requests, "a chat_sessions result"))
    }
}

/// Sends `requests` (one per scope of `job`, in order) at once, parses each `{fields, data}`
/// answer and merges their rows per window; `what` names the expected result in errors.
pub async fn fetch_scopes(
    calls: &Calls<'_>,
    job: &Job,
    windows: &[Window],
    requests: Vec<HttpRequest>,
    what: &str,
) -> Result<WindowRows, FetchError> {
    let answers = futures::future::try_join_all(requests.iter().map(|r| calls.send(r))).await?;
    let mut out = vec![Vec::new(); windows.len()];
    for ((scope, body), req) in job.scopes.iter().zip(answers).zip(&requests) {
        let rows = parse(job, *scope, windows, &body, what).map_err(|message| FetchError::response(req, message))?;
        for (acc, mut r) in out.iter_mut().zip(rows) {
            acc.append(&mut r);
        }
    }
    Ok(out)
}

/// The `interval` of consecutive `windows` (at least one) in the job's zone: the first start to
/// the last end minus 1 ms, as 001 ends days at `…T23:59:59.999` (events send the same).
pub fn interval(job: &Job, windows: &[Window]) -> Interval {
    let first = windows.first().expect("at least one window");
    let last = windows.last().expect("at least one window");
    let at = |t: DateTime<Utc>| t.with_timezone(&job.time_zone).fixed_offset();
    Interval {
        start: at(first.start),
        end: at(last.end - Duration::milliseconds(1)),
        time_zone: job.time_zone.name().to_string(),
    }
}

/// The query for `scope` over consecutive `windows` (at least one).
pub fn query(job: &Job, scope: Scope, windows: &[Window]) -> ChatSessionsQuery {
    let mut parts: Vec<Filter> = match &job.filters {
        Some(Filter::And { fields }) => fields.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    let room = |r: &String| Filter::Selector { dimension: "room_ids".into(), value: json!(r) };
    match job.rooms.as_slice() {
        [] => {}
        [one] => parts.push(room(one)),
        many => parts.push(Filter::Or { fields: many.iter().map(room).collect() }),
    }
    parts.push(Filter::Selector { dimension: "scope".into(), value: json!(scope.as_str()) });
    ChatSessionsQuery {
        interval: interval(job, windows),
        granularity: super::request_granularity(job),
        group_by: scope.group_by().into_iter().map(String::from).collect(),
        aggregations: job
            .aggregations
            .iter()
            .map(|a| Aggregation { kind: a.kind, fields: a.field.iter().cloned().collect() })
            .collect(),
        filters: Some(Filter::And { fields: parts }),
    }
}

/// Parses a `{fields, data}` response (chat_sessions, and events, which answer in the same shape)
/// for `scope` into rows per window (same order as `windows`, each window's rows by bucket); `what`
/// names the expected result in errors. A scope without group_by gets one row per bucket of every
/// window, answered or not (see the module doc of `super`).
pub fn parse(job: &Job, scope: Scope, windows: &[Window], body: &[u8], what: &str) -> Result<Vec<Vec<Row>>, String> {
    let resp: ChatSessionsResponse = crate::source::parse_json(body, what)?;
    let names: Vec<&str> = resp.fields.iter().map(|f| f.name.as_str()).collect();
    let index_of = |name: &str| {
        names.iter().position(|n| *n == name).ok_or_else(|| format!("response lacks field `{name}` (it has {names:?})"))
    };
    let start_idx = index_of("start_time")?;
    let group_idx = scope.group_by().map(index_of).transpose()?;
    let metric_idx = super::metric_columns(job, &resp.fields)?;
    let buckets: Vec<Option<Vec<DateTime<Utc>>>> = windows.iter().map(|w| super::bucket_starts(job, w)).collect();

    let mut out = vec![Vec::new(); windows.len()];
    let mut seen: HashSet<(DateTime<Utc>, Option<String>)> = HashSet::new();
    for (i, line) in resp.data.iter().enumerate() {
        if line.len() != names.len() {
            return Err(format!("data[{i}] has {} values for {} fields", line.len(), names.len()));
        }
        let label = line[start_idx].as_str().ok_or_else(|| format!("data[{i}].start_time is not a string"))?;
        let bucket = DateTime::parse_from_rfc3339(label)
            .map_err(|e| format!("data[{i}].start_time `{label}` is not RFC 3339: {e}"))?
            .with_timezone(&Utc);
        let w = windows.partition_point(|w| w.end <= bucket);
        if w == windows.len() || bucket < windows[w].start {
            return Err(format!("data[{i}]: bucket {label} is outside the requested windows"));
        }
        if let Some(starts) = &buckets[w]
            && !starts.contains(&bucket)
        {
            let g =
                serde_json::to_value(super::request_granularity(job)).ok().and_then(|v| v.as_str().map(String::from));
            return Err(format!(
                "data[{i}]: bucket {label} is not the start of a {} bucket of the window starting {}",
                g.unwrap_or_default(),
                windows[w].start.with_timezone(&job.time_zone).to_rfc3339()
            ));
        }
        let group = match group_idx {
            None => None,
            Some(g) => match &line[g] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            },
        };
        if !seen.insert((bucket, group.clone())) {
            let of = group.as_deref().map(|g| format!(" of {g}")).unwrap_or_default();
            return Err(format!("data[{i}]: a second line for bucket {label}{of}"));
        }
        let mut metrics = metric_idx
            .iter()
            .map(|m| match &line[*m] {
                Value::Null => Ok(Cell::Null),
                Value::Number(n) => Ok(Cell::from(n.as_f64())),
                other => Err(format!("data[{i}].{} is not a number: {other}", names[*m])),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if super::counts_nothing(job, &metrics) {
            metrics = super::empty_metrics(job);
        }
        let (team_id, user_id) = match scope {
            Scope::Org => (None, None),
            Scope::Team => (group, None),
            Scope::User => (None, group),
        };
        out[w].push(Row {
            bucket_start: bucket,
            dims: vec![Some(scope.as_str().to_string()), team_id, user_id],
            metrics,
        });
    }
    if group_idx.is_none() {
        for (rows, starts) in out.iter_mut().zip(&buckets) {
            for start in starts.iter().flatten() {
                if !seen.contains(&(*start, None)) {
                    rows.push(Row {
                        bucket_start: *start,
                        dims: vec![Some(scope.as_str().to_string()), None, None],
                        metrics: super::empty_metrics(job),
                    });
                }
            }
            rows.sort_by_key(|r| r.bucket_start);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::giosg::tests::chat_job;
    use serde_json::json;

    const COUNT: &str = "{ type: count, field: chat_session_id, column: chats }";
    const SUM: &str = "{ type: sum, field: sales, column: sales }";
    const AVG: &str = "{ type: avg, field: sales, column: average_sales }";
    const UNIQUE: &str = "{ type: hyperUnique, field: visitor_ids, column: visitors }";

    /// Local days of 2024-03 in Helsinki (winter time, +02:00) as windows.
    fn days(from: u32, to: u32) -> Vec<Window> {
        let at = |d: u32| {
            crate::time::local_day_start(
                chrono_tz::Europe::Helsinki,
                chrono::NaiveDate::from_ymd_opt(2024, 3, d).unwrap(),
            )
        };
        (from..=to).map(|d| Window { start: at(d), end: at(d + 1) }).collect()
    }

    fn body(fields: &[(&str, &str)], data: Value) -> Vec<u8> {
        let fields: Vec<Value> = fields.iter().map(|(n, k)| json!({"name": n, "type": k})).collect();
        serde_json::to_vec(&json!({"fields": fields, "data": data})).unwrap()
    }

    fn cells(rows: &[Vec<Row>]) -> Vec<(String, Vec<Option<String>>, Vec<Cell>)> {
        rows.iter().flatten().map(|r| (r.bucket_start.to_rfc3339(), r.dims.clone(), r.metrics.clone())).collect()
    }

    #[test]
    fn the_count_metric_may_be_named_three_ways_and_rows_are_the_same() {
        let job = chat_job("day", "org", &[COUNT, SUM]);
        let parse_named = |name: &str| {
            let b = body(
                &[("start_time", "dimension"), (name, "metric"), ("sales_sum", "metric")],
                json!([["2024-03-05T00:00:00.000+02:00", 3, 12.5], ["2024-03-06T00:00:00.000+02:00", 1, 0.0]]),
            );
            cells(&parse(&job, Scope::Org, &days(5, 6), &b, "a result").unwrap())
        };
        let want = parse_named("count");
        assert_eq!(want[0].2, vec![Cell::Number(3.0), Cell::Number(12.5)]);
        assert_eq!(parse_named("chat_session_id_count"), want);
        assert_eq!(parse_named("chat_session_id"), want);
        // An unknown name is read by order when there is one metric per aggregation ...
        assert_eq!(parse_named("sessions"), want);
    }

    #[test]
    fn fields_that_cannot_be_matched_fail_with_the_fields_received() {
        let job = chat_job("day", "org", &[COUNT, SUM]);
        let b = body(&[("start_time", "dimension"), ("sessions", "metric")], json!([]));
        let err = parse(&job, Scope::Org, &days(5, 5), &b, "a result").unwrap_err();
        assert!(
            err.contains("no field for `count` (or `chat_session_id_count`, `chat_session_id`), `sales_sum`"),
            "{err}"
        );
        assert!(err.contains("fields received: start_time (dimension), sessions (metric)"), "{err}");
    }

    #[test]
    fn omitted_org_buckets_are_filled_and_match_answered_empty_ones() {
        let job = chat_job("day", "org", &[COUNT, SUM, AVG, UNIQUE]);
        let fields = [
            ("start_time", "dimension"),
            ("count", "metric"),
            ("sales_sum", "metric"),
            ("sales_avg", "metric"),
            ("visitor_ids_hyper_unique", "metric"),
        ];
        let busy = json!(["2024-03-06T00:00:00.000+02:00", 2, 30.0, 15.0, 2.0]);
        // Druid's timeseries: every bucket, empty ones with count 0, avg null, distinct 0.
        let filled = json!([
            ["2024-03-05T00:00:00.000+02:00", 0, 0.0, null, 0.0],
            busy,
            ["2024-03-07T00:00:00.000+02:00", 0, 0.0, null, 0.0]
        ]);
        // Another server: only buckets with rows (and nothing at all for a quiet chunk).
        let omitted = json!([busy]);
        // A third: empty buckets with an average of 0 and nulls elsewhere.
        let zeroed = json!([
            ["2024-03-05T00:00:00.000+02:00", 0, null, 0.0, null],
            busy,
            ["2024-03-07T00:00:00.000+02:00", 0, 0, 0, 0]
        ]);
        let rows = |data: Value| cells(&parse(&job, Scope::Org, &days(5, 7), &body(&fields, data), "r").unwrap());
        let want = rows(filled);
        assert_eq!(want.len(), 3);
        assert_eq!(want[0].2, vec![Cell::Number(0.0), Cell::Number(0.0), Cell::Null, Cell::Number(0.0)]);
        assert_eq!(want[0].1, vec![Some("org".to_string()), None, None]);
        assert_eq!(rows(omitted), want);
        assert_eq!(rows(zeroed), want);
        let quiet = rows(json!([]));
        assert_eq!(quiet.len(), 3);
        assert!(quiet.iter().all(|r| r.2 == want[0].2));
    }

    #[test]
    fn hour_buckets_are_filled_inside_each_window_and_rows_come_in_bucket_order() {
        let job = chat_job("hour", "org", &[COUNT]);
        let b = body(
            &[("start_time", "dimension"), ("count", "metric")],
            json!([["2024-03-05T13:00:00.000+02:00", 4], ["2024-03-05T02:00:00.000+02:00", 1]]),
        );
        let out = parse(&job, Scope::Org, &days(5, 6), &b, "r").unwrap();
        assert_eq!((out[0].len(), out[1].len()), (24, 24));
        let counts: Vec<&Cell> = out[0].iter().map(|r| &r.metrics[0]).collect();
        assert_eq!((counts[2], counts[13], counts[0]), (&Cell::Number(1.0), &Cell::Number(4.0), &Cell::Number(0.0)));
        assert!(out[0].windows(2).all(|p| p[0].bucket_start < p[1].bucket_start));
    }

    #[test]
    fn a_job_of_granularity_all_asks_for_buckets_of_its_window_and_gets_a_row_per_window() {
        let job = chat_job("all", "org", &[UNIQUE]);
        assert!(job.bucketed && job.max_windows_per_request == 31, "{job:?}");
        assert_eq!(query(&job, Scope::Org, &days(5, 6)).granularity, crate::query::Granularity::Day);
        let b = body(
            &[("start_time", "dimension"), ("visitor_ids_hyper_unique", "metric")],
            json!([["2024-03-05T00:00:00.000+02:00", 3.0], ["2024-03-06T00:00:00.000+02:00", 2.0]]),
        );
        let out = parse(&job, Scope::Org, &days(5, 6), &b, "r").unwrap();
        assert_eq!((out[0].len(), out[1].len()), (1, 1));
        assert_eq!((&out[0][0].metrics[0], &out[1][0].metrics[0]), (&Cell::Number(3.0), &Cell::Number(2.0)));
        assert_eq!(out[1][0].bucket_start, days(6, 6)[0].start);
    }

    #[test]
    fn grouped_scopes_have_rows_only_for_groups_answered() {
        let job = chat_job("day", "user", &[COUNT]);
        let b = body(
            &[("start_time", "dimension"), ("user_id", "dimension"), ("chat_session_id_count", "metric")],
            json!([["2024-03-06T00:00:00.000+02:00", "u1", 2]]),
        );
        let out = parse(&job, Scope::User, &days(5, 7), &b, "r").unwrap();
        assert_eq!(cells(&out).len(), 1);
        assert_eq!(out[1][0].dims, vec![Some("user".to_string()), None, Some("u1".to_string())]);
    }

    #[test]
    fn a_bucket_off_the_grid_or_a_repeated_line_fails() {
        let job = chat_job("day", "org", &[COUNT]);
        let f = [("start_time", "dimension"), ("count", "metric")];
        let off = body(&f, json!([["2024-03-05T02:00:00.000+02:00", 1]]));
        let err = parse(&job, Scope::Org, &days(5, 5), &off, "r").unwrap_err();
        assert!(err.contains("bucket 2024-03-05T02:00:00.000+02:00 is not the start of a day bucket"), "{err}");
        let twice = body(&f, json!([["2024-03-05T00:00:00.000+02:00", 1], ["2024-03-05T00:00:00.000+02:00", 2]]));
        let err = parse(&job, Scope::Org, &days(5, 5), &twice, "r").unwrap_err();
        assert_eq!(err, "data[1]: a second line for bucket 2024-03-05T00:00:00.000+02:00");
    }

    #[test]
    fn numbers_are_kept_exactly_as_sent() {
        // Without serde_json's `float_roundtrip` the last three parse one ULP off (123456789.1234568,
        // 2046.4700000000005, 1234.567890123457): its fast path is not correctly rounded.
        let job = chat_job("day", "org", &[SUM]);
        let sent: [f64; 7] = [
            2046.47,
            0.30000000000000004,
            1234567.8901234567,
            2.2250738585072014e-308,
            123456789.12345679,
            2046.4700000000003,
            1234.5678901234567,
        ];
        for x in sent {
            let b = format!(
                r#"{{"fields": [{{"name": "start_time", "type": "dimension"}}, {{"name": "sales_sum", "type": "metric"}}],
                    "data": [["2024-03-05T00:00:00.000+02:00", {x:?}]]}}"#
            );
            let out = parse(&job, Scope::Org, &days(5, 5), b.as_bytes(), "r").unwrap();
            let Cell::Number(got) = out[0][0].metrics[0] else { panic!("{:?}", out[0][0]) };
            assert_eq!(got.to_bits(), x.to_bits(), "sent {x:?}, got {got:?}");
        }
    }
}

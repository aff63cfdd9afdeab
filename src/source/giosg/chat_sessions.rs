//! The giosg chat_sessions client: request bodies for a job's windows and scopes, and the
//! response split back into rows per window.
//!
//! Body (api-docs 001's shape): the job's interval in its zone (`start` = first window start,
//! `end` = last window end minus 1 ms, as the docs end days at `…T23:59:59.999`), its
//! granularity, `group_by` from the scope (team → `team_id`, user → `user_id`), its aggregations,
//! and an `and` of the job's filters, the room selector (if rooms are set) and the scope selector.
//!
//! Response assumptions (api-docs 002 shows one example): `fields` names the columns,
//! `start_time` first; each `data` line has one value per field; metric names follow
//! `query::Aggregation::metric_names`. Extra fields are ignored; a missing field, a line of the
//! wrong length, a bucket outside the requested windows or a non-numeric metric fails the request.

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
        granularity: job.granularity,
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
/// for `scope` into rows per window (same order as `windows`); `what` names the expected result
/// in errors.
pub fn parse(job: &Job, scope: Scope, windows: &[Window], body: &[u8], what: &str) -> Result<Vec<Vec<Row>>, String> {
    let resp: ChatSessionsResponse = crate::source::parse_json(body, what)?;
    let names: Vec<&str> = resp.fields.iter().map(|f| f.name.as_str()).collect();
    let index_of = |name: &str| {
        names.iter().position(|n| *n == name).ok_or_else(|| format!("response lacks field `{name}` (it has {names:?})"))
    };
    let start_idx = index_of("start_time")?;
    let group_idx = scope.group_by().map(index_of).transpose()?;
    let metric_idx: Vec<usize> =
        job.aggregations.iter().map(|a| index_of(&a.metric_name())).collect::<Result<_, _>>()?;

    let mut out = vec![Vec::new(); windows.len()];
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
        let group = match group_idx {
            None => None,
            Some(g) => match &line[g] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            },
        };
        let metrics = metric_idx
            .iter()
            .zip(&job.aggregations)
            .map(|(m, a)| match &line[*m] {
                Value::Null => Ok(None),
                Value::Number(n) => Ok(n.as_f64()),
                other => Err(format!("data[{i}].{} is not a number: {other}", a.metric_name())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (team_id, user_id) = match scope {
            Scope::Org => (None, None),
            Scope::Team => (group, None),
            Scope::User => (None, group),
        };
        out[w].push(Row {
            bucket_start: bucket,
            dims: vec![Some(scope.as_str().to_string()), team_id, user_id],
            metrics: metrics.into_iter().map(Cell::from).collect(),
        });
    }
    Ok(out)
}

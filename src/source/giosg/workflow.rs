//! The giosg workflow client (`POST /api/reporting/workflow/v1/orgs/{org}/query/`, api-docs 001):
//! one request per window, and its one average as the window's org-scope row.
//!
//! Body (001's shape, key for key): `avg` with the job's one aggregation field (`["dim1"]`),
//! `where` with the job's conditions in order (`field` + `search`; 001 matches `category`,
//! `action` and an empty `partner_organization_ids`), and `timespan` with `After` = the window
//! start and `Before` = the window end minus 1 ms, in the job's zone (001:
//! `2020-10-29T00:00:00.000+02:00` … `2020-10-30T23:59:59.999+02:00`, both ends inclusive).
//!
//! Response assumption (001 does not show one): the chat_sessions shape without buckets or
//! groups, `{"fields": [{"name": "dim1_avg", "type": "metric"}], "data": [[12.5]]}`: one line,
//! one value per averaged field named `<field>_avg` (else found by meaning, as in `super`: the
//! metric fields in order), null when nothing matched. An answer without a line is the empty
//! timespan (a server that leaves out empty buckets): the window's row with null averages, as one
//! answering `[[null]]`. Extra fields are ignored; a field that cannot be matched, several lines,
//! or a non-numeric value fails the window. The simulator serves exactly this
//! (`docs/simulator.md`; `--omit-empty-buckets` answers no line when nothing matched).
//!
//! # Why workflow queries are not bucketed
//!
//! Events queries may cover several windows with day or hour buckets (`bucketed`, see
//! `events.rs`); workflow queries may not, and a workflow job refuses `bucketed: true`. 001's
//! events body is Druid's (`interval` with a `time_zone`, `granularity`, `start_time` per bucket
//! in the answer), so a bucketed events query changes one value of a key 001 already sends. The
//! workflow body shares none of that: a `timespan` of two instants with fixed offsets, no
//! granularity and no zone. Bucketing it would invent two keys (a granularity, and a zone to put
//! day boundaries in: a fixed offset is wrong across a DST change) and the whole shape of a
//! bucketed answer, and a server that ignores unknown keys (the common habit) would answer one
//! average for the whole chunk, which the client would load as the first window's value: wrong
//! data with no error. The saving is also smaller: a workflow job has one scope, so a year is 365
//! requests, not events' 730 for two scopes. So a workflow request stays one window.
//!
//! Several averages in one query are another matter: `avg` is a list in 001's body and each
//! answer field is named `<field>_avg`, so a query averaging `dim1` and `dim2` for two jobs with
//! the same `where` is unambiguous; [`query`] sends every aggregation's field and [`parse`] reads
//! each by name. Whether the server answers all of them is the assumption
//! `giosg.fused_events` (`assume: {fused_events: true}`), which `chatetl probe` checks when two
//! workflow jobs of a source average different fields.

use chrono::{DateTime, Duration, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{EndpointParams, Job, SourceConfig, WorkflowCondition};
use crate::plan::Window;
use crate::query::{ChatSessionsResponse, serde_ms_offset};
use crate::row::{Column, Row, Value as Cell};
use crate::source::http::{Calls, HttpRequest};
use crate::source::{Api, FetchError, WindowRows};
use futures::future::BoxFuture;

/// One query against the workflow endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowQuery {
    /// Fields averaged (001: `["dim1"]`).
    pub avg: Vec<String>,
    /// Conditions that must all hold.
    #[serde(rename = "where", default)]
    pub conditions: Vec<WorkflowCondition>,
    pub timespan: Timespan,
}

/// `timespan`: both ends inclusive, with their offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timespan {
    #[serde(rename = "After", with = "serde_ms_offset")]
    pub after: DateTime<FixedOffset>,
    #[serde(rename = "Before", with = "serde_ms_offset")]
    pub before: DateTime<FixedOffset>,
}

/// `…/api/reporting/workflow/v1/orgs/{org}/query/` (with 001's trailing slash).
pub fn url(base_url: &str, organization_id: &str) -> String {
    format!("{base_url}/api/reporting/workflow/v1/orgs/{organization_id}/query/")
}

/// The query of `window`.
pub fn query(job: &Job, window: &Window) -> WorkflowQuery {
    let at = |t: DateTime<Utc>| t.with_timezone(&job.time_zone).fixed_offset();
    let conditions = match &job.params {
        EndpointParams::Workflow { conditions } => conditions.clone(),
        other => unreachable!("a workflow job has workflow params, not {other:?}"),
    };
    WorkflowQuery {
        avg: job.aggregations.iter().filter_map(|a| a.field.clone()).collect(),
        conditions,
        timespan: Timespan { after: at(window.start), before: at(window.end - Duration::milliseconds(1)) },
    }
}

/// One request per window.
pub fn requests(source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
    let url = url(&source.base_url, &source.organization_id);
    windows.iter().map(|w| HttpRequest::post_json(&url, &query(job, w))).collect()
}

/// The workflow reporting API (api-docs 001): one request and one org-scope row per window.
pub struct Workflow;

impl Api for Workflow {
    fn columns(&self, job: &Job) -> (Vec<Column>, Vec<Column>) {
        super::columns(job, "workflow rows")
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
        Box::pin(fetch(calls, job, windows))
    }
}

/// Sends each window's request and returns its one org-scope row.
async fn fetch(calls: &Calls<'_>, job: &Job, windows: &[Window]) -> Result<WindowRows, FetchError> {
    let requests = requests(calls.source, job, windows);
    let answers = futures::future::try_join_all(requests.iter().map(|r| calls.send(r)))
        .await
        .map_err(|e| super::assumption_hint(calls.source, job, e.into()))?;
    windows
        .iter()
        .zip(answers)
        .zip(&requests)
        .map(|((w, body), req)| parse(job, w, &body).map(|row| vec![row]).map_err(|m| FetchError::response(req, m)))
        .collect()
}

/// The org-scope row of `window` from a response to [`query`].
pub fn parse(job: &Job, window: &Window, body: &[u8]) -> Result<Row, String> {
    let resp: ChatSessionsResponse = crate::source::parse_json(body, "a workflow result")?;
    let columns = super::metric_columns(job, &resp.fields)?;
    let metrics = match resp.data.as_slice() {
        [] => super::empty_metrics(job),
        [line] => {
            if line.len() != resp.fields.len() {
                return Err(format!("data[0] has {} values for {} fields", line.len(), resp.fields.len()));
            }
            columns
                .iter()
                .map(|i| match &line[*i] {
                    Value::Null => Ok(Cell::Null),
                    Value::Number(n) => Ok(Cell::from(n.as_f64())),
                    other => Err(format!("data[0].{} is not a number: {other}", resp.fields[*i].name)),
                })
                .collect::<Result<Vec<_>, String>>()?
        }
        lines => return Err(format!("expected one data line, found {}", lines.len())),
    };
    Ok(Row { bucket_start: window.start, dims: vec![Some("org".to_string()), None, None], metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::giosg::tests::job;

    fn workflow_job() -> Job {
        job("description: d\nsource: giosg\nendpoint: workflow\nwindow: day\nstart: 2024-01-01\n\
             aggregations:\n  - { type: avg, field: dim1, column: wait }\n\
             where:\n  - { field: category, search: track_chat_invite }\n")
    }

    fn window() -> Window {
        let start = chrono::DateTime::parse_from_rfc3339("2024-03-30T00:00:00+02:00").unwrap().to_utc();
        Window { start, end: start + Duration::days(1) }
    }

    fn value(body: &str) -> Result<Cell, String> {
        parse(&workflow_job(), &window(), body.as_bytes()).map(|r| r.metrics[0].clone())
    }

    #[test]
    fn the_average_is_read_by_name_or_by_order() {
        assert_eq!(
            value(r#"{"fields": [{"name": "dim1_avg", "type": "metric"}], "data": [[12.5]]}"#),
            Ok(Cell::Number(12.5))
        );
        let two = r#"{"fields": [{"name": "n", "type": "dimension"}, {"name": "dim1_avg", "type": "metric"}], "data": [[3, 7.25]]}"#;
        assert_eq!(value(two), Ok(Cell::Number(7.25)));
        let other = r#"{"fields": [{"name": "avg_dim1", "type": "metric"}], "data": [[2046.47]]}"#;
        assert_eq!(value(other), Ok(Cell::Number(2046.47)));
        let err = value(
            r#"{"fields": [{"name": "a", "type": "metric"}, {"name": "b", "type": "metric"}], "data": [[1, 2]]}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("no field for `dim1_avg`") && err.contains("fields received: a (metric), b (metric)"),
            "{err}"
        );
    }

    #[test]
    fn no_line_is_the_empty_timespan_and_several_lines_fail() {
        let fields = r#""fields": [{"name": "dim1_avg", "type": "metric"}]"#;
        assert_eq!(value(&format!("{{{fields}, \"data\": []}}")), Ok(Cell::Null));
        assert_eq!(value(&format!("{{{fields}, \"data\": [[null]]}}")), Ok(Cell::Null));
        let err = value(&format!("{{{fields}, \"data\": [[1], [2]]}}")).unwrap_err();
        assert_eq!(err, "expected one data line, found 2");
    }
}

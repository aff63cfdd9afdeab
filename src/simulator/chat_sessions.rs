//! The simulated `POST /api/reporting/v1/orgs/{organization_id}/chat_sessions` (api-docs 002).
//!
//! Owns: the handler, reading the body as the simulator's own [`ChatSessionsRequest`]
//! (`simulator::wire::giosg`, written from 002 and 001's examples: unknown keys, an unknown
//! dimension, an aggregation 002 does not allow on a dimension are 400s naming them), and how a
//! chat-session row answers the query engine (`simulator::druid`: buckets, groups, filters and
//! aggregations, shared with events). Authentication and faults are applied around it by
//! `simulator::auth` and `simulator::faults`.
//!
//! Assumptions where the docs are silent (also in `docs/simulator.md`):
//! - the organization in the path selects rows whose `owner_organization_id` is that organization;
//! - `interval.end` is inclusive (the docs end days at `…T23:59:59.999`); times are milliseconds;
//! - without `group_by` every bucket of the interval is returned, empty ones with count 0, sums 0,
//!   averages null and distinct counts 0 (Druid's timeseries); with `group_by` only groups with rows
//!   (`Assumptions::omit_empty_buckets` leaves empty buckets out without `group_by` too);
//! - a count's metric is `count` whatever its fields (`Assumptions::count_metric_name` names it
//!   `<field>_count` or `<field>` instead);
//! - `granularity: all` has one bucket, labelled with the interval start;
//! - weeks start on Monday; buckets are labelled with their start in the query zone's offset;
//! - hyperUnique is an exact distinct count (within the docs' 2%).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::SimState;
use super::assumptions::Assumptions;
use super::dataset::ChatSessionRow;
use super::druid::{Query, Record, render_number};
use super::wire::giosg::{AggregationType, CHAT_SESSION_DIMENSIONS, ChatSessionsRequest, ReportResponse};

/// An API error: status and the `detail` message of the JSON body.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "detail": self.1 }))).into_response()
    }
}

/// A 400 `invalid query: …` answer.
pub fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, format!("invalid query: {e}"))
}

/// Checks that the giosg token may read `org`, then reads the body as a `T` (400 when it is not
/// one): the first step of every giosg reporting handler.
pub fn read_query<T: serde::de::DeserializeOwned>(
    state: &SimState,
    headers: &HeaderMap,
    org: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    super::auth::giosg_org_access(state, headers, org)?;
    serde_json::from_slice(body).map_err(bad_request)
}

/// The axum handler.
pub async fn handler(
    State(state): State<SimState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ReportResponse>, ApiError> {
    let query: ChatSessionsRequest = read_query(&state, &headers, &org, &body)?;
    let dataset = state.dataset();
    evaluate(&query, &org, &dataset.chat_session_rows, &state.assumptions()).map(Json)
}

/// Evaluates `query` for organization `org` over `rows` (sorted by time), answering as
/// `assumptions` say.
pub fn evaluate(
    query: &ChatSessionsRequest,
    org: &str,
    rows: &[ChatSessionRow],
    assumptions: &Assumptions,
) -> Result<ReportResponse, ApiError> {
    query.validate().map_err(|errs| bad_request(errs.join("; ")))?;
    let tz: Tz = crate::time::parse_tz(&query.interval.time_zone).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let metrics = query
        .aggregations
        .iter()
        .flat_map(|a| match a.kind {
            AggregationType::Count => assumptions
                .count_metric_name
                .names(a.fields())
                .into_iter()
                .map(|n| (AggregationType::Count, None, n))
                .collect::<Vec<_>>(),
            _ => a.metrics().into_iter().map(|(f, n)| (a.kind, f, n)).collect(),
        })
        .collect();
    let q = Query {
        start: query.interval.start.with_timezone(&Utc),
        end: query.interval.end.with_timezone(&Utc),
        tz,
        granularity: query.granularity,
        group_by: &query.group_by,
        metrics,
        filters: query.filters.as_ref(),
        dimensions: CHAT_SESSION_DIMENSIONS,
        omit_empty_buckets: assumptions.omit_empty_buckets,
    };
    // Rows are sorted by time; the engine takes the interval's slice, then the organization's.
    let lo = rows.partition_point(|r| r.time < q.start);
    let hi = rows.partition_point(|r| r.time <= q.end);
    let mine: Vec<&ChatSessionRow> = rows[lo..hi.max(lo)].iter().filter(|r| r.owner_organization_id == org).collect();
    Ok(super::druid::evaluate(&q, &mine))
}

impl Record for ChatSessionRow {
    fn time(&self) -> DateTime<Utc> {
        self.time
    }

    fn number(&self, dim: &str) -> f64 {
        let row = self;
        match dim {
            "order_count" => row.order_count as f64,
            "user_message_count" => row.user_message_count as f64,
            "visitor_message_count" => row.visitor_message_count as f64,
            "sales" => row.sales,
            "subscription_sales" => row.subscription_sales,
            _ => unreachable!("validated: `{dim}` is numeric"),
        }
    }

    fn values(&self, dim: &str) -> Vec<String> {
        let row = self;
        let one = |s: &str| vec![s.to_string()];
        let opt = |s: &Option<String>| s.iter().cloned().collect();
        match dim {
            "chat_initiator" => one(&row.chat_initiator),
            "chat_session_id" => one(&row.chat_session_id),
            "chat_type" => one(&row.chat_type),
            "chatted_organization_ids" => row.chatted_organization_ids.clone(),
            "owner_organization_id" => one(&row.owner_organization_id),
            "room_ids" => row.room_ids.clone(),
            "scope" => one(&row.scope),
            "team_id" => opt(&row.team_id),
            "user_id" => opt(&row.user_id),
            "user_organization_id" => opt(&row.user_organization_id),
            "visitor_ids" => row.visitor_ids.clone(),
            "visitor_session_ids" => row.visitor_session_ids.clone(),
            n => vec![render_number(row.number(n))],
        }
    }
}

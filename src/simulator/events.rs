//! The simulated giosg events and workflow endpoints (api-docs 001), served from the dataset's
//! `event` records.
//!
//! Owns: the [`Event`] record and its generator, how an event answers the shared query engine
//! (`simulator::druid`), and the two handlers. Both read their body as the simulator's own wire
//! types (`simulator::wire::giosg`, written from 001's bodies; unknown keys are 400s naming them):
//! - `POST /api/events/v2/orgs/{org}/fetch`: an [`EventsRequest`] (001's body: sources, vendor,
//!   organization_id, interval, granularity, group_by, aggregations `count`/`sum`/`avg`, filters
//!   on [`EVENT_DIMENSIONS`]); keeps the organization's events whose `vendor` is the body's vendor
//!   and whose `source` is one of its `sources`, and answers in the chat_sessions shape (`fields`
//!   + `data`) with metrics named `count`, `sum`, `avg` over the events' `value`;
//! - `POST /api/reporting/workflow/v1/orgs/{org}/query/`: a [`WorkflowRequest`] (001's body:
//!   `avg`, `where`, `timespan` After/Before, both inclusive); keeps the organization's events
//!   matching every `where` condition and answers `{"fields": [{"name": "<f>_avg", "type": "metric"}], "data":
//!   [[average or null]]}` (no line when nothing matched and `Assumptions::omit_empty_buckets` is set).
//!
//! Assumptions (001 shows no responses; also in `docs/simulator.md`): a `where` condition holds
//! when the event's field equals `search`, any element for a list field, and `search: ""` holds
//! for an empty or missing field; the workflow field `dim1` is the event's `value`; the
//! organization is the path's, and the body's `organization_id` must equal it (400 otherwise);
//! `sum` over events is accepted though 001 only shows `count` and `avg`.
//!
//! 001 shows only `granularity: all` and one aggregation per query. By default the simulator
//! answers other granularities with Druid's buckets, as chat_sessions does, and several
//! aggregations (averaged fields) with one metric each; [`super::EventQueries`] (set per server) makes it
//! refuse them with a 400 or answer them as a server reading only 001's keys would: one bucket
//! for the whole interval, only the first aggregation. A workflow body with a `granularity` is a
//! 400 whatever the switches (an unknown key: 001's workflow body has none).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Datelike, Duration, NaiveTime, Utc};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::SimState;
use super::assumptions::{EventAggregations, EventBuckets};
use super::chat_sessions::{ApiError, bad_request, read_query};
use super::dataset::{DatasetSpec, HOUR_WEIGHTS, Org, pick, weekday_factor, weighted};
use super::druid::{Query, Record, render_number};
use super::wire::giosg::{
    AggregationType, EVENT_DIMENSIONS, EventAggregation, EventsRequest, Granularity, ReportResponse, ResponseField,
    WorkflowRequest,
};
use crate::time::serde_ms_utc;

/// One event of giosg's event store, as the events and workflow endpoints read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    #[serde(with = "serde_ms_utc")]
    pub time: DateTime<Utc>,
    pub organization_id: String,
    /// `com.giosg.chat` for chat events.
    pub vendor: String,
    /// `trusted` (server-side) or `untrusted` (browser-reported).
    pub source: String,
    /// e.g. `chat_session_first_response_wait_time`, `chat_invitation`, `track_chat_invite`.
    pub category: String,
    /// e.g. `changed`, `created`, `chat_invitation_accepted`.
    pub action: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub room_id: Option<String>,
    /// The measured value (seconds for wait times; workflow's `dim1`); null when the event only
    /// counts. Sums and averages read null as 0, as Druid does.
    pub value: Option<f64>,
    /// Partner organizations involved (workflow's `partner_organization_ids`); empty for the
    /// organization's own events.
    pub partner_organization_ids: Vec<String>,
}

impl Record for Event {
    fn time(&self) -> DateTime<Utc> {
        self.time
    }

    fn values(&self, dim: &str) -> Vec<String> {
        let one = |s: &str| vec![s.to_string()];
        let opt = |s: &Option<String>| s.iter().cloned().collect();
        match dim {
            "action" => one(&self.action),
            "category" => one(&self.category),
            "source" => one(&self.source),
            "vendor" => one(&self.vendor),
            "organization_id" => one(&self.organization_id),
            "room_id" => opt(&self.room_id),
            "team_id" => opt(&self.team_id),
            "user_id" => opt(&self.user_id),
            "partner_organization_ids" => self.partner_organization_ids.clone(),
            "value" | "dim1" => self.value.map(render_number).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn number(&self, _dim: &str) -> f64 {
        self.value.unwrap_or(0.0)
    }
}

/// The `events` path of an organization.
pub fn events_path(org: &str) -> String {
    format!("/api/events/v2/orgs/{org}/fetch")
}

/// The `workflow` path of an organization.
pub fn workflow_path(org: &str) -> String {
    format!("/api/reporting/workflow/v1/orgs/{org}/query/")
}

/// The events of organization `org` in `[start, end]` (both inclusive), in time order.
fn events_between<'a>(
    state: &'a [Event],
    org: &'a str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> impl Iterator<Item = &'a Event> + 'a {
    let lo = state.partition_point(|e| e.time < start);
    let hi = state.partition_point(|e| e.time <= end);
    state[lo..hi.max(lo)].iter().filter(move |e| e.organization_id == org)
}

/// `POST /api/events/v2/orgs/{org}/fetch`.
pub async fn events_handler(
    State(state): State<SimState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ReportResponse>, ApiError> {
    let mut query: EventsRequest = read_query(&state, &headers, &org, &body)?;
    query.validate().map_err(|errs| bad_request(errs.join("; ")))?;
    if query.organization_id != org {
        return Err(bad_request(format!("organization_id {} is not the path's {org}", query.organization_id)));
    }
    let habits = state.event_queries();
    let granularity = match (query.granularity, habits.buckets) {
        (Granularity::All, _) | (_, EventBuckets::Answered) => query.granularity,
        (g, EventBuckets::Refused) => {
            let name = serde_json::to_value(g).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            return Err(bad_request(format!("granularity: `{name}` is not supported (expected `all`)")));
        }
        (_, EventBuckets::OneBucket) => Granularity::All,
    };
    several_aggregations(habits.aggregations, &mut query.aggregations)?;
    let tz = crate::time::parse_tz(&query.interval.time_zone).map_err(bad_request)?;
    let q = Query {
        start: query.interval.start.with_timezone(&Utc),
        end: query.interval.end.with_timezone(&Utc),
        tz,
        granularity,
        group_by: &query.group_by,
        metrics: query
            .aggregations
            .iter()
            .map(|a| {
                let kind = match a {
                    EventAggregation::Count => AggregationType::Count,
                    EventAggregation::Sum => AggregationType::Sum,
                    EventAggregation::Avg => AggregationType::Avg,
                };
                (kind, Some("value"), a.as_str().to_string())
            })
            .collect(),
        filters: query.filters.as_ref(),
        dimensions: EVENT_DIMENSIONS,
        omit_empty_buckets: state.assumptions().omit_empty_buckets,
    };
    let dataset = state.dataset();
    let mine: Vec<&Event> = events_between(&dataset.events, &org, q.start, q.end)
        .filter(|e| e.vendor == query.vendor && query.sources.contains(&e.source))
        .collect();
    Ok(Json(super::druid::evaluate(&q, &mine)))
}

/// `POST /api/reporting/workflow/v1/orgs/{org}/query/`.
pub async fn workflow_handler(
    State(state): State<SimState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ReportResponse>, ApiError> {
    let mut query: WorkflowRequest = read_query(&state, &headers, &org, &body)?;
    query.validate().map_err(|errs| bad_request(errs.join("; ")))?;
    several_aggregations(state.event_queries().aggregations, &mut query.avg)?;
    let (start, end) = (query.timespan.after.with_timezone(&Utc), query.timespan.before.with_timezone(&Utc));
    let dataset = state.dataset();
    let holds = |e: &Event| {
        query.conditions.iter().all(|c| {
            let values = e.values(&c.field);
            if c.search.is_empty() { values.iter().all(String::is_empty) } else { values.contains(&c.search) }
        })
    };
    let matched: Vec<&Event> = events_between(&dataset.events, &org, start, end).filter(|e| holds(e)).collect();
    let fields = query.avg.iter().map(|f| ResponseField::metric(format!("{f}_avg"))).collect();
    if matched.is_empty() && state.assumptions().omit_empty_buckets {
        return Ok(Json(ReportResponse { fields, data: Vec::new() }));
    }
    let line = query
        .avg
        .iter()
        .map(|f| {
            let xs: Vec<f64> =
                matched.iter().filter_map(|e| e.values(f).first().and_then(|v| v.parse::<f64>().ok())).collect();
            if xs.is_empty() { json!(null) } else { json!(xs.iter().sum::<f64>() / xs.len() as f64) }
        })
        .collect();
    Ok(Json(ReportResponse { fields, data: vec![line] }))
}

/// Applies `habit` to a query's `aggregations` (events kinds, workflow's averaged fields) when
/// there are several: kept, refused with a 400, or cut to the first.
fn several_aggregations<T>(habit: EventAggregations, aggregations: &mut Vec<T>) -> Result<(), ApiError> {
    if aggregations.len() < 2 {
        return Ok(());
    }
    match habit {
        EventAggregations::Answered => Ok(()),
        EventAggregations::Refused => Err(bad_request(format!(
            "aggregations: one aggregation per query is supported, {} were given",
            aggregations.len()
        ))),
        EventAggregations::FirstOnly => {
            aggregations.truncate(1);
            Ok(())
        }
    }
}

/// A kind of event generated: (category, action, share of events, whether it has a value and its
/// range in seconds, whether a user is set).
type Kind = (&'static str, &'static str, u32, Option<(u32, u32)>, bool);

const KINDS: &[Kind] = &[
    ("chat_session_first_response_wait_time", "changed", 14, Some((2, 180)), true),
    ("chat_session_response_wait_time", "changed", 30, Some((1, 600)), true),
    ("chat_invitation", "created", 20, None, true),
    ("chat_message_attachment_click_action", "created", 12, None, false),
    ("track_chat_invite", "chat_invitation_accepted", 8, Some((1, 90)), true),
    ("track_chat_invite", "first_message_sent", 8, Some((1, 900)), true),
    // Noise the 001 filters must leave out.
    ("chat_invitation", "removed", 4, None, true),
    ("chat_session_first_response_wait_time", "removed", 2, Some((2, 180)), true),
    ("chat_session_created", "created", 2, None, false),
];

/// Generates the events of `spec` for `orgs`: about two per chat session a day (same weekday
/// and hour-of-day seasonality), 10% of them untrusted or from another vendor, 10% of workflow
/// events with a partner organization, plus events at each local midnight, a millisecond after
/// it and a millisecond before the next. Its own random stream: chat sessions do not change.
pub(super) fn generate(spec: &DatasetSpec, orgs: &[Org]) -> Vec<Event> {
    let mut events = Vec::new();
    let weights: Vec<u32> = KINDS.iter().map(|k| k.2).collect();
    for day in 0..spec.days {
        let date = spec.start + Duration::days(day as i64);
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0xE7E7_5EED ^ (day as u64).wrapping_mul(0x2545_F491));
        let n = (2.0 * spec.sessions_per_day as f64 * weekday_factor(date.weekday())).round() as usize;
        let mut times = Vec::with_capacity(n + 3);
        for _ in 0..n {
            let hour = weighted(&mut rng, &HOUR_WEIGHTS) as u32;
            let ms = rng.random_range(0..3_600_000u32);
            let local = NaiveTime::from_hms_milli_opt(hour, ms / 60_000, (ms / 1000) % 60, ms % 1000).expect("valid");
            // A local time in a spring gap moves to the gap's end; an autumn one takes its first pass.
            times.push(crate::time::local_to_utc(spec.time_zone, date.and_time(local)));
        }
        let midnight = crate::time::local_day_start(spec.time_zone, date);
        let next = crate::time::local_day_start(spec.time_zone, date + Duration::days(1));
        times.extend([midnight, midnight + Duration::milliseconds(1), next - Duration::milliseconds(1)]);
        for time in times {
            let org_index = if orgs.len() == 1 || rng.random_bool(0.7) { 0 } else { rng.random_range(1..orgs.len()) };
            let org = &orgs[org_index];
            let (category, action, _, range, with_user) = KINDS[weighted(&mut rng, &weights)];
            let (user_id, team_id) = if with_user && rng.random_bool(0.95) {
                let (user, team) = pick(&mut rng, &org.users);
                (Some(user.clone()), Some(org.teams[*team].clone()))
            } else {
                (None, None)
            };
            let value = range.map(|(lo, hi)| rng.random_range(lo * 10..hi * 10) as f64 / 10.0);
            let (vendor, source) = match rng.random_range(0..20) {
                0 => ("com.giosg.other", "trusted"),
                1 => ("com.giosg.chat", "untrusted"),
                _ => ("com.giosg.chat", "trusted"),
            };
            let partner = category == "track_chat_invite" && orgs.len() > 1 && rng.random_bool(0.1);
            let partner_organization_ids =
                if partner { vec![orgs[(org_index + 1) % orgs.len()].id.clone()] } else { Vec::new() };
            events.push(Event {
                time,
                organization_id: org.id.clone(),
                vendor: vendor.to_string(),
                source: source.to_string(),
                category: category.to_string(),
                action: action.to_string(),
                user_id,
                team_id,
                room_id: Some(pick(&mut rng, &org.rooms).clone()),
                value,
                partner_organization_ids,
            });
        }
    }
    events.sort_by_key(|e| e.time);
    events
}

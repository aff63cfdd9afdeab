//! Comm100 Live Chat real-time API v4 (api-docs 003): snapshots of `GET livechat/realTime/Agents`
//! (one row per agent), `/Queue` (one row per queue: department and agent routed to), `/Today`
//! and `/RightNow` (one row each), at `captured_at`.
//!
//! Owns: the query strings, paging through Agents, and every field of the four answers as a typed,
//! snake_case column (durations `hh:mm:ss.fffffff` become seconds). The source's `base_url` ends
//! with the API version (`https://api11.comm100.io/v4`); the bearer token selects the site.
//!
//! Requests:
//! - Agents: `pageIndex` (1, 2, …), `pageSize` (the job's `page_size`), `includeStatusDistribution`
//!   (`true`/`false`), `departmentId` (when the job sets `department_id`).
//! - Queue, RightNow: no parameters (RightNow's optional time range is not sent: it is "now").
//! - Today: `startTime` = the start of `captured_at`'s local day in the job's zone and `endTime` =
//!   `captured_at`, both written `yyyy-mm-ddThh:mm:ss` in the UTC offset in force at
//!   `captured_at`, and `utcOffset` = that offset in minutes east of UTC. On a DST-change day the
//!   start is therefore not `T00:00:00` (Helsinki's spring day starts `T01:00:00` at +03:00): the
//!   pair names the exact instants of "today so far".
//!
//! Assumptions where the docs are silent (also in `docs/simulator.md`):
//! - **Agents paging.** `pageIndex` is 1-based; pages are fetched until `pageIndex == pageCount`
//!   (an empty `list` or `pageCount` 0 ends it too). Each answer's `pageIndex` must be the one
//!   asked for, an agent must appear once, and the agents must add up to the last page's `total`;
//!   otherwise the list changed while paging and the snapshot fails (the next tick captures again).
//! - **Required fields.** Every field of the docs' examples must be present (null is stored as
//!   null), except Agents' `statusDistribution`, which may be absent (stored as null); it is stored
//!   as JSON as given (the docs call it a string and show an object).
//! - **Queue.** `routeToDepartmentId` and `routeToAgentId` may each be null (a queue routed to a
//!   department only, or to an agent only); the pair is the row's key. `visitors` is stored as a
//!   JSON list `[{visitor_id, contact_identity_id, wait_seconds}]` with `visitor_count` and
//!   `max_visitor_wait_seconds` beside it.
//! - **Today.** The docs spell `abandondedChats`: it is stored as `abandoned_chats`
//!   (`abandonedChats` is read too, should Comm100 fix the spelling). Rates and averages are stored
//!   as Comm100 reports them.
//! - **RightNow.** `chatUtilization` is listed as int but shown as `0.0`: stored as a float.

use std::collections::HashSet;

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{EndpointParams, Job, SourceConfig};
use crate::plan::Window;
use crate::row::{Column, ColumnType, Row, Value as Cell};
use crate::source::giosg::realtime::{Fields, url_with_query};
use crate::source::http::{Calls, HttpRequest};
use crate::source::{Api, FetchError, WindowRows};
use crate::time::{local_date, local_day_start, utc_offset};

/// Which of the four real-time reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Agents,
    Queue,
    Today,
    RightNow,
}

/// One real-time report of Comm100 (`source::api` gives one per endpoint).
pub struct RealTime(pub Report);

impl Api for RealTime {
    fn columns(&self, _job: &Job) -> (Vec<Column>, Vec<Column>) {
        columns(self.0)
    }

    fn requests(&self, source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        windows.iter().map(|w| request(self.0, source, job, w, 1)).collect()
    }

    /// Paged: the page count is only known from the answers (at least one page).
    fn pages(&self, _job: &Job, _windows: &[Window]) -> Option<u32> {
        Some(1)
    }

    fn fetch<'a>(
        &'a self,
        calls: &'a Calls<'a>,
        job: &'a Job,
        windows: &'a [Window],
    ) -> futures::future::BoxFuture<'a, Result<WindowRows, FetchError>> {
        Box::pin(fetch(self.0, calls, job, windows))
    }
}

/// How a field of an answer becomes a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Text,
    /// `hh:mm:ss[.fffffff]` → seconds.
    Duration,
}

/// (column, API field, kind, comment) of the one-object answers and of the plain Agents and Queue
/// fields.
type Field = (&'static str, &'static str, Kind, &'static str);

const AGENT_FIELDS: &[Field] = &[
    ("display_name", "displayName", Kind::Text, "the agent's display name"),
    ("current_status_id", "currentStatusId", Kind::Text, "id of the agent's current status"),
    ("ongoing_chats", "ongoingChats", Kind::Int, "chats the agent has open"),
    ("max_concurrent_chats", "maxConcurrentChats", Kind::Int, "most chats the agent may have open at once"),
    ("intraday_chats", "intradayChats", Kind::Int, "the agent's chats today"),
    (
        "intraday_linear_chat_time_seconds",
        "intradayLinearChatTime",
        Kind::Duration,
        "the agent's linear chat time today, seconds (api hh:mm:ss.fffffff)",
    ),
];

const QUEUE_FIELDS: &[Field] = &[
    ("ongoing_chats", "ongoingChats", Kind::Int, "ongoing chats (of the agent routed to)"),
    ("max_concurrent_chats", "maxConcurrentChats", Kind::Int, "max concurrent chats (of the site)"),
    ("current_queue_length", "currentQueueLength", Kind::Int, "visitors waiting in this queue"),
    (
        "avg_wait_time_last_30_mins_seconds",
        "avgWaitTimeinLast30Mins",
        Kind::Duration,
        "average wait in the last 30 minutes, seconds",
    ),
    (
        "avg_wait_time_last_60_mins_seconds",
        "avgWaitTimeinLast60Mins",
        Kind::Duration,
        "average wait in the last 60 minutes, seconds",
    ),
    ("abandoned_chats_last_30_mins", "abandonedChatsinLast30Mins", Kind::Int, "chats abandoned in the last 30 minutes"),
    (
        "switched_to_messages_last_30_mins",
        "switchedtoMessagesinLast30Mins",
        Kind::Int,
        "chats switched to messages in the last 30 minutes",
    ),
];

const TODAY_FIELDS: &[Field] = &[
    ("chat_requests", "chatRequests", Kind::Int, "chat requests today"),
    ("total_chats", "totalChats", Kind::Int, "total chats today"),
    ("chats", "chats", Kind::Int, "chats today"),
    ("chat_acceptance_rate", "chatAcceptanceRate", Kind::Float, "chat acceptance rate today"),
    ("abandoned_chats", "abandondedChats", Kind::Int, "abandoned chats today (api field abandondedChats, sic)"),
    ("switched_to_message_chats", "switchedToMessageChats", Kind::Int, "chats switched to messages today"),
    ("missed_chats", "missedChats", Kind::Int, "missed chats today"),
    ("avg_waiting_time", "avgWaitingTime", Kind::Float, "average waiting time today (as reported)"),
    ("avg_chat_time", "avgChatTime", Kind::Float, "average chat time today (as reported)"),
    (
        "agent_avg_response_time",
        "agentAvgResponseTime",
        Kind::Float,
        "agents' average response time today (as reported)",
    ),
    ("accepted_invitations", "acceptedInvitations", Kind::Int, "accepted invitations today"),
    ("service_accessibility_rate", "serviceAccessibilityRate", Kind::Float, "service accessibility rate today"),
    (
        "department_transferred_chats",
        "departmentTransferredChats",
        Kind::Int,
        "chats transferred between departments today",
    ),
    ("total_transferred_chats", "totalTransferredChats", Kind::Int, "transferred chats today"),
    ("unique_chat_rate", "uniqueChatRate", Kind::Float, "unique chat rate today"),
    ("agent_utilization", "agentUtilization", Kind::Float, "agent utilization today"),
    ("avg_score", "avgScore", Kind::Float, "average rating score today"),
];

const RIGHT_NOW_FIELDS: &[Field] = &[
    ("logged_in_agents", "loggedInAgents", Kind::Int, "agents logged in"),
    ("agents_in_chat", "agentsInChat", Kind::Int, "agents chatting"),
    ("chat_utilization", "chatUtilization", Kind::Float, "chat utilization (listed as int, shown as 0.0)"),
    ("visitor_on_site", "visitorOnSite", Kind::Int, "visitors on the site"),
    ("ongoing_chats", "ongoingChats", Kind::Int, "ongoing chats"),
    ("ongoing_chats_with_agent", "ongoingChatsWithAgent", Kind::Int, "ongoing chats with an agent"),
    ("current_queue_length", "currentQueueLength", Kind::Int, "visitors queued"),
    ("ongoing_chats_with_bot", "ongoingChatsWithBot", Kind::Int, "ongoing chats with a bot"),
];

fn column(f: &Field) -> Column {
    let ty = match f.2 {
        Kind::Int => ColumnType::Int,
        Kind::Float | Kind::Duration => ColumnType::Float,
        Kind::Text => ColumnType::Text,
    };
    Column::new(f.0, ty, f.3)
}

/// The key and value columns of each report's snapshot.
fn columns(report: Report) -> (Vec<Column>, Vec<Column>) {
    let c = Column::new;
    let fields = |list: &[Field]| list.iter().map(column).collect::<Vec<_>>();
    match report {
        Report::Agents => {
            let mut values = fields(AGENT_FIELDS);
            values.push(c("status_distribution", ColumnType::Json, "time per status id (JSON, as reported)"));
            (vec![c("agent_id", ColumnType::Text, "the agent (guid)")], values)
        }
        Report::Queue => {
            let mut values = vec![
                c("route_to_department_name", ColumnType::Text, "name of the department routed to"),
                c("route_to_agent_display_name", ColumnType::Text, "display name of the agent routed to"),
            ];
            values.extend(fields(QUEUE_FIELDS));
            values.extend([
                c("visitor_count", ColumnType::Int, "visitors listed in the queue"),
                c(
                    "max_visitor_wait_seconds",
                    ColumnType::Float,
                    "longest wait of a listed visitor, seconds (null: none)",
                ),
                c(
                    "visitors",
                    ColumnType::Json,
                    "the queued visitors: [{visitor_id, contact_identity_id, wait_seconds}]",
                ),
            ]);
            let dims = vec![
                c("route_to_department_id", ColumnType::Text, "department the queue routes to (null: none)"),
                c("route_to_agent_id", ColumnType::Text, "agent the queue routes to (null: none)"),
            ];
            (dims, values)
        }
        Report::Today => (Vec::new(), fields(TODAY_FIELDS)),
        Report::RightNow => (Vec::new(), fields(RIGHT_NOW_FIELDS)),
    }
}

fn path(report: Report) -> &'static str {
    match report {
        Report::Agents => "/livechat/realTime/Agents",
        Report::Queue => "/livechat/realTime/Queue",
        Report::Today => "/livechat/realTime/Today",
        Report::RightNow => "/livechat/realTime/RightNow",
    }
}

/// The request for `window`; `page` is Agents' `pageIndex`.
fn request(report: Report, source: &SourceConfig, job: &Job, window: &Window, page: u32) -> HttpRequest {
    let mut params: Vec<(&str, String)> = Vec::new();
    match report {
        Report::Agents => {
            let (department_id, include_status_distribution, page_size) = match &job.params {
                EndpointParams::Agents { department_id, include_status_distribution, page_size } => {
                    (department_id.as_deref(), *include_status_distribution, *page_size)
                }
                // A job always carries its endpoint's parameters; these are the defaults.
                _ => (None, false, 100),
            };
            params.push(("pageIndex", page.to_string()));
            params.push(("pageSize", page_size.to_string()));
            params.push(("includeStatusDistribution", include_status_distribution.to_string()));
            if let Some(d) = department_id {
                params.push(("departmentId", d.to_string()));
            }
        }
        Report::Today => {
            let (start, end, offset) = today_range(job, window.start);
            let local = |t: DateTime<Utc>| t.with_timezone(&offset).format("%Y-%m-%dT%H:%M:%S").to_string();
            params.push(("startTime", local(start)));
            params.push(("endTime", local(end)));
            params.push(("utcOffset", (offset.local_minus_utc() / 60).to_string()));
        }
        Report::Queue | Report::RightNow => {}
    }
    HttpRequest {
        method: reqwest::Method::GET,
        url: url_with_query(&source.base_url, path(report), &params),
        body: None,
    }
}

/// Today so far at `captured_at`: (start of its local day, `captured_at`, the offset in force).
pub fn today_range(job: &Job, captured_at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>, FixedOffset) {
    let tz = job.time_zone;
    (local_day_start(tz, local_date(tz, captured_at)), captured_at, utc_offset(tz, captured_at))
}

/// Captures each window's snapshot (every Agents page).
async fn fetch(report: Report, calls: &Calls<'_>, job: &Job, windows: &[Window]) -> Result<WindowRows, FetchError> {
    let mut out = Vec::with_capacity(windows.len());
    for window in windows {
        let rows = match report {
            Report::Agents => fetch_agents(calls, job, window).await?,
            Report::Queue | Report::Today | Report::RightNow => {
                let req = request(report, calls.source, job, window, 1);
                let body = calls.send(&req).await?;
                parse(report, window, &req, &body)?
            }
        };
        out.push(rows);
    }
    Ok(out)
}

/// One page of Agents.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentsPage {
    #[serde(default)]
    total: Option<u64>,
    page_count: u32,
    #[serde(default)]
    page_index: Option<u32>,
    list: Vec<Value>,
}

async fn fetch_agents(calls: &Calls<'_>, job: &Job, window: &Window) -> Result<Vec<Row>, FetchError> {
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let first = request(Report::Agents, calls.source, job, window, 1);
    calls
        .pages(first, |page, req, body| {
            let fail = |m: String| FetchError::response(req, m);
            let answer: AgentsPage = crate::source::json_body(
                req,
                body,
                "a Comm100 agents page {total, pageCount, pageIndex, pageSize, list}",
            )?;
            if let Some(got) = answer.page_index
                && got != page
            {
                return Err(fail(format!("asked for pageIndex {page}, got page {got}")));
            }
            for (i, item) in answer.list.iter().enumerate() {
                let at = format!("page {page}, list[{i}]");
                let row = agent_row(window, item, &at).map_err(fail)?;
                let id = row.dims[0].clone().unwrap_or_default();
                if !seen.insert(id.clone()) {
                    return Err(fail(format!(
                        "{at}: agent {id} was already on an earlier page: the list changed while paging"
                    )));
                }
                rows.push(row);
            }
            if answer.list.is_empty() || answer.page_count == 0 || page >= answer.page_count {
                if let Some(total) = answer.total
                    && total != rows.len() as u64
                {
                    return Err(fail(format!(
                        "total is {total} agents but the pages held {}: the list changed while paging",
                        rows.len()
                    )));
                }
                tracing::debug!(job = %job.name, pages = page, rows = rows.len(), "comm100 agents fetched");
                return Ok(None);
            }
            Ok(Some(request(Report::Agents, calls.source, job, window, page + 1)))
        })
        .await?;
    Ok(rows)
}

/// `f`'s value in `fields` as a cell of its kind.
fn cell(fields: &Fields, f: &Field) -> Result<Cell, String> {
    match f.2 {
        Kind::Int | Kind::Float => fields.number(f.1),
        Kind::Text => fields.text(f.1),
        Kind::Duration => fields.duration(f.1),
    }
}

fn agent_row(window: &Window, item: &Value, at: &str) -> Result<Row, String> {
    let f = Fields::of(item, at)?;
    let mut metrics = AGENT_FIELDS.iter().map(|x| cell(&f, x)).collect::<Result<Vec<_>, _>>()?;
    metrics.push(if item.get("statusDistribution").is_some() { f.json("statusDistribution")? } else { Cell::Null });
    Ok(Row { bucket_start: window.start, dims: vec![Some(f.id("agentId")?)], metrics })
}

/// A Queue, Today or RightNow answer to `req` → its rows.
fn parse(report: Report, window: &Window, req: &HttpRequest, body: &[u8]) -> Result<Vec<Row>, FetchError> {
    let row = |dims, metrics| Row { bucket_start: window.start, dims, metrics };
    let fail = |m: String| FetchError::response(req, m);
    match report {
        Report::Queue => {
            let list: Vec<Value> = crate::source::json_body(req, body, "a Comm100 queue list")?;
            list.iter().enumerate().map(|(i, item)| queue_row(window, item, &format!("[{i}]")).map_err(fail)).collect()
        }
        Report::Today => {
            let v: Value = crate::source::json_body(req, body, "a Comm100 today object")?;
            let f = Fields::of(&v, "the answer").map_err(fail)?;
            let metrics = TODAY_FIELDS
                .iter()
                .map(|x| {
                    if x.1 == "abandondedChats" {
                        f.first_present(&[x.1, "abandonedChats"], Fields::number)
                    } else {
                        cell(&f, x)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            Ok(vec![row(Vec::new(), metrics)])
        }
        Report::Agents => unreachable!("Agents answers are paged: fetch_agents reads them"),
        Report::RightNow => {
            let v: Value = crate::source::json_body(req, body, "a Comm100 right-now object")?;
            let f = Fields::of(&v, "the answer").map_err(fail)?;
            let metrics = RIGHT_NOW_FIELDS.iter().map(|x| cell(&f, x)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
            Ok(vec![row(Vec::new(), metrics)])
        }
    }
}

fn queue_row(window: &Window, item: &Value, at: &str) -> Result<Row, String> {
    let f = Fields::of(item, at)?;
    let optional_id = |key: &str| match item.get(key) {
        Some(Value::Null) => Ok(None),
        _ => f.id(key).map(Some),
    };
    let dims = vec![optional_id("routeToDepartmentId")?, optional_id("routeToAgentId")?];
    let department = f.optional_object("routeToDepartment")?;
    let agent = f.optional_object("routeToAgent")?;
    let mut metrics = vec![
        department.map_or(Ok(Cell::Null), |d| d.text("name"))?,
        agent.map_or(Ok(Cell::Null), |a| a.text("displayName"))?,
    ];
    for x in QUEUE_FIELDS {
        metrics.push(cell(&f, x)?);
    }
    let mut visitors = Vec::new();
    let mut max_wait: Option<f64> = None;
    for (i, v) in f.array("visitors")?.iter().enumerate() {
        let v = Fields::of(v, &format!("{at}.visitors[{i}]"))?;
        let wait = match v.duration("waitTime")? {
            Cell::Number(s) => Some(s),
            _ => None,
        };
        if let Some(w) = wait {
            max_wait = Some(max_wait.map_or(w, |m| m.max(w)));
        }
        visitors.push(json!({
            "visitor_id": v.id("visitorId")?,
            "contact_identity_id": cell_json(v.text("contactIdentityId")?),
            "wait_seconds": wait,
        }));
    }
    metrics.extend([
        Cell::Number(visitors.len() as f64),
        Cell::from(max_wait),
        Cell::Text(Value::Array(visitors).to_string()),
    ]);
    Ok(Row { bucket_start: window.start, dims, metrics })
}

fn cell_json(c: Cell) -> Value {
    match c {
        Cell::Text(s) => Value::String(s),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> HttpRequest {
        HttpRequest {
            method: reqwest::Method::GET,
            url: "http://127.0.0.1/v4/livechat/realTime/Today".into(),
            body: None,
        }
    }

    fn message(e: FetchError) -> String {
        match e {
            FetchError::Response { message, .. } => message,
            other => panic!("{other}"),
        }
    }

    fn window() -> Window {
        let start = DateTime::parse_from_rfc3339("2024-03-31T10:00:00Z").unwrap().to_utc();
        Window { start, end: start + chrono::Duration::seconds(1) }
    }

    #[test]
    fn the_docs_today_example_parses_with_its_spelling() {
        let body =
            br#"{"chatRequests": 0, "totalChats": 0, "chats": 0, "chatAcceptanceRate": 0.0, "abandondedChats": 0,
            "switchedToMessageChats": 0, "missedChats": 0, "avgWaitingTime": 0.0, "avgChatTime": 0.0,
            "agentAvgResponseTime": 0.0, "acceptedInvitations": 0, "serviceAccessibilityRate": 0.0,
            "departmentTransferredChats": 0, "totalTransferredChats": 0, "uniqueChatRate": 0.0,
            "agentUtilization": 1.0, "avgScore": 0.0}"#;
        let rows = parse(Report::Today, &window(), &req(), body).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].metrics.len(), TODAY_FIELDS.len());
        assert_eq!(rows[0].metrics[15], Cell::Number(1.0));
        let fixed = String::from_utf8_lossy(body).replace("abandondedChats\": 0", "abandonedChats\": 4");
        assert_eq!(parse(Report::Today, &window(), &req(), fixed.as_bytes()).unwrap()[0].metrics[4], Cell::Number(4.0));
        let broken = String::from_utf8_lossy(body).replace("\"avgScore\": 0.0", "\"avgScores\": 0.0");
        let err = parse(Report::Today, &window(), &req(), broken.as_bytes()).unwrap_err();
        let err = message(err);
        assert_eq!(err, "the answer lacks field `avgScore`");
    }

    #[test]
    fn the_docs_queue_example_parses() {
        let body = br#"[{"routeToDepartmentId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "routeToDepartment": {"id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "siteId": 0, "name": "string"},
            "routeToAgentId": "3fa85f64-5717-4562-b3fc-2c963f66afa7",
            "routeToAgent": {"id": "3fa85f64-5717-4562-b3fc-2c963f66afa7", "displayName": "Ann", "isAdmin": true},
            "ongoingChats": 0, "maxConcurrentChats": 0, "currentQueueLength": 1,
            "avgWaitTimeinLast30Mins": "00:01:30", "avgWaitTimeinLast60Mins": "00:00:00.5000000",
            "abandonedChatsinLast30Mins": 0, "switchedtoMessagesinLast30Mins": 0,
            "visitors": [{"visitorId": "v", "contactIdentityId": "c", "waitTime": "00:00:42"}]}]"#;
        let rows = parse(Report::Queue, &window(), &req(), body).unwrap();
        let r = &rows[0];
        assert_eq!(r.dims[1].as_deref(), Some("3fa85f64-5717-4562-b3fc-2c963f66afa7"));
        assert_eq!(r.metrics[0], Cell::Text("string".into()));
        assert_eq!(r.metrics[1], Cell::Text("Ann".into()));
        assert_eq!(r.metrics[5], Cell::Number(90.0));
        assert_eq!(r.metrics[6], Cell::Number(0.5));
        assert_eq!(r.metrics[10], Cell::Number(42.0));
        assert_eq!(
            r.metrics[11],
            Cell::Text(r#"[{"contact_identity_id":"c","visitor_id":"v","wait_seconds":42.0}]"#.into())
        );
        let bad = String::from_utf8_lossy(body).replace("\"00:01:30\"", "\"90 seconds\"");
        let err = message(parse(Report::Queue, &window(), &req(), bad.as_bytes()).unwrap_err());
        assert!(err.starts_with("[0].avgWaitTimeinLast30Mins: `90 seconds` is not a duration"), "{err}");
    }

    #[test]
    fn the_docs_agent_example_parses() {
        let item = serde_json::json!({"agentId": "51f36e1a-d521-43bf-a0a8-20cbade284e4", "displayName": "srita2 chen",
            "currentStatusId": "00000000-0000-0000-0000-000000000000", "ongoingChats": 1, "maxConcurrentChats": 0,
            "intradayChats": 0, "intradayLinearChatTime": "06:53:57.0500000", "statusDistribution": {}});
        let r = agent_row(&window(), &item, "list[0]").unwrap();
        let Cell::Number(secs) = r.metrics[5] else { panic!("{:?}", r.metrics[5]) };
        assert!((secs - 24_837.05).abs() < 1e-9);
        assert_eq!(r.metrics[6], Cell::Text("{}".into()));
    }
}

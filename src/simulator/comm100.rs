//! The simulated Comm100 Live Chat real-time API v4 (api-docs 003): `GET /v4/livechat/realTime/`
//! `Agents`, `Queue`, `Today` and `RightNow`, one Comm100 site per dataset organization.
//!
//! Owns: the `comm100_department`, `comm100_agent`, `comm100_queue_entry` and `comm100_site`
//! records, their generator, the bearer check and the four handlers. Agents and Queue serve the
//! records; RightNow is computed from the site's agents, queue and site record; Today is computed
//! from the organization's chat sessions between `startTime` and `endTime` (formulas in
//! [`today`] and `docs/simulator.md`), so it is checkable from the dump.
//!
//! What it serves (the client's assumptions, `source::comm100`, also in `docs/simulator.md`):
//! - `Authorization: Bearer <api_token of an organization>` selects the site; anything else is a
//!   401 with `{"code": 401, "message": …}`;
//! - Agents pages: `pageIndex` (1-based, default 1) and `pageSize` (1 to 1000, default 10); other
//!   values are a 400. `{total, pageCount, pageIndex, pageSize, list}`, `pageCount` = ⌈total /
//!   pageSize⌉ (0 when there are no agents); a page past the end has an empty list.
//!   `departmentId` keeps the agents of that department; `includeStatusDistribution=true` fills
//!   `statusDistribution` (seconds per status id today), else it is `{}`; `utcOffset`,
//!   `startTime` and `endTime` are accepted and ignored (the intraday values are the records');
//! - durations are .NET TimeSpans, `[d.]hh:mm:ss[.fffffff]` (the fraction only when not zero);
//! - status ids: `…0000` online, `…0001` away, `…0002` offline (the docs show `…0000` on agents
//!   with a chat and `…0002` on the others);
//! - Today: `startTime` required; `startTime`/`endTime` are local times at `utcOffset` minutes
//!   east of UTC (default 0), `endTime` inclusive to the second (default: the end of `startTime`'s
//!   day); a bad value or an end before the start is a 400.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SimState;
use super::auth::KeyProblem;
use super::dataset::{ChatSessionRow, Dataset, DatasetSpec, Organization};

/// Agent status ids.
pub const ONLINE: &str = "00000000-0000-0000-0000-000000000000";
pub const AWAY: &str = "00000000-0000-0000-0000-000000000001";
pub const OFFLINE: &str = "00000000-0000-0000-0000-000000000002";

/// A department of a site (the Queue's `routeToDepartment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comm100Department {
    pub organization_id: String,
    pub id: String,
    pub name: String,
}

/// An agent's real-time status (Agents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comm100Agent {
    pub organization_id: String,
    pub agent_id: String,
    pub display_name: String,
    pub email: String,
    pub department_ids: Vec<String>,
    pub current_status_id: String,
    pub ongoing_chats: i64,
    pub max_concurrent_chats: i64,
    pub intraday_chats: i64,
    /// Served as `intradayLinearChatTime`, a TimeSpan.
    pub intraday_linear_chat_seconds: f64,
    /// Seconds in each status today, by status id.
    pub status_distribution: BTreeMap<String, f64>,
}

/// One queue: routed to a department, an agent, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comm100QueueEntry {
    pub organization_id: String,
    pub route_to_department_id: Option<String>,
    pub route_to_agent_id: Option<String>,
    pub ongoing_chats: i64,
    pub max_concurrent_chats: i64,
    pub avg_wait_time_last_30_mins_seconds: f64,
    pub avg_wait_time_last_60_mins_seconds: f64,
    pub abandoned_chats_last_30_mins: i64,
    pub switched_to_messages_last_30_mins: i64,
    /// `currentQueueLength` is their number.
    pub visitors: Vec<Comm100Visitor>,
}

/// A visitor waiting in a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comm100Visitor {
    pub visitor_id: String,
    pub contact_identity_id: String,
    pub wait_seconds: f64,
}

/// What RightNow needs beyond agents and queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comm100Site {
    pub organization_id: String,
    pub visitors_on_site: i64,
    pub ongoing_chats_with_bot: i64,
}

/// Every Comm100 record of a dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comm100Records {
    pub departments: Vec<Comm100Department>,
    pub agents: Vec<Comm100Agent>,
    pub queue: Vec<Comm100QueueEntry>,
    pub sites: Vec<Comm100Site>,
}

const DEPARTMENT_NAMES: [&str; 6] = ["Sales", "Support", "Billing", "Returns", "Partners", "VIP"];

/// A site per organization with `spec.comm100_agents` agents and `spec.teams_per_org`
/// departments, from its own random stream (the chat-session rows of a seed do not change).
pub fn generate(spec: &DatasetSpec, organizations: &[Organization]) -> Comm100Records {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x636f_6d6d_3130_3030);
    let mut out = Comm100Records::default();
    for (oi, org) in organizations.iter().enumerate() {
        let site = org.id.clone();
        let departments: Vec<Comm100Department> = (0..spec.teams_per_org.max(1) as usize)
            .map(|d| Comm100Department {
                organization_id: site.clone(),
                id: super::dataset::uuid(&mut rng),
                name: format!("{} {}", DEPARTMENT_NAMES[d % DEPARTMENT_NAMES.len()], d / DEPARTMENT_NAMES.len() + 1),
            })
            .collect();
        let mut agents = Vec::new();
        for a in 0..spec.comm100_agents as usize {
            let status = [ONLINE, AWAY, OFFLINE][super::dataset::weighted(&mut rng, &[55, 15, 30])];
            let max_concurrent_chats = rng.random_range(2..=5);
            let ongoing_chats = if status == ONLINE { rng.random_range(0..=max_concurrent_chats) } else { 0 };
            let intraday_chats = if status == OFFLINE && rng.random_bool(0.5) { 0 } else { rng.random_range(0..=40) };
            let intraday_linear_chat_seconds =
                if intraday_chats == 0 { 0.0 } else { rng.random_range(60_000..30_000_000i64) as f64 / 1000.0 };
            let mut department_ids = vec![departments[a % departments.len()].id.clone()];
            if departments.len() > 1 && rng.random_bool(0.25) {
                department_ids.push(departments[(a + 1) % departments.len()].id.clone());
            }
            let status_distribution =
                [ONLINE, AWAY, OFFLINE].iter().map(|s| (s.to_string(), rng.random_range(0..20_000) as f64)).collect();
            agents.push(Comm100Agent {
                organization_id: site.clone(),
                agent_id: super::dataset::uuid(&mut rng),
                display_name: format!("Agent {}-{}", oi + 1, a + 1),
                email: format!("agent{}@site{}.example.com", a + 1, oi + 1),
                department_ids,
                current_status_id: status.to_string(),
                ongoing_chats,
                max_concurrent_chats,
                intraday_chats,
                intraday_linear_chat_seconds,
                status_distribution,
            });
        }
        let visitors = |rng: &mut ChaCha8Rng| -> Vec<Comm100Visitor> {
            let n = if rng.random_bool(0.3) { 0 } else { rng.random_range(1..=4) };
            (0..n)
                .map(|_| Comm100Visitor {
                    visitor_id: super::dataset::uuid(rng),
                    contact_identity_id: super::dataset::uuid(rng),
                    wait_seconds: rng.random_range(1..=600) as f64,
                })
                .collect()
        };
        let waits = |rng: &mut ChaCha8Rng| (rng.random_range(0..=300) as f64, rng.random_range(0..=300) as f64);
        for d in &departments {
            let members: Vec<&Comm100Agent> = agents.iter().filter(|a| a.department_ids.contains(&d.id)).collect();
            let (w30, w60) = waits(&mut rng);
            out.queue.push(Comm100QueueEntry {
                organization_id: site.clone(),
                route_to_department_id: Some(d.id.clone()),
                route_to_agent_id: None,
                ongoing_chats: members.iter().map(|a| a.ongoing_chats).sum(),
                max_concurrent_chats: members.iter().map(|a| a.max_concurrent_chats).sum(),
                avg_wait_time_last_30_mins_seconds: w30,
                avg_wait_time_last_60_mins_seconds: w60,
                abandoned_chats_last_30_mins: rng.random_range(0..=3),
                switched_to_messages_last_30_mins: rng.random_range(0..=2),
                visitors: visitors(&mut rng),
            });
        }
        for a in agents.iter().filter(|a| a.current_status_id == ONLINE) {
            if !rng.random_bool(0.3) {
                continue;
            }
            let (w30, w60) = waits(&mut rng);
            out.queue.push(Comm100QueueEntry {
                organization_id: site.clone(),
                route_to_department_id: Some(a.department_ids[0].clone()),
                route_to_agent_id: Some(a.agent_id.clone()),
                ongoing_chats: a.ongoing_chats,
                max_concurrent_chats: a.max_concurrent_chats,
                avg_wait_time_last_30_mins_seconds: w30,
                avg_wait_time_last_60_mins_seconds: w60,
                abandoned_chats_last_30_mins: rng.random_range(0..=1),
                switched_to_messages_last_30_mins: 0,
                visitors: visitors(&mut rng),
            });
        }
        out.sites.push(Comm100Site {
            organization_id: site,
            visitors_on_site: rng.random_range(0..=500),
            ongoing_chats_with_bot: rng.random_range(0..=10),
        });
        out.departments.extend(departments);
        out.agents.extend(agents);
    }
    out
}

/// `seconds` as a .NET TimeSpan: `[d.]hh:mm:ss[.fffffff]`.
pub fn timespan(seconds: f64) -> String {
    let ticks = (seconds * 1e7).round() as i64;
    let (whole, fraction) = (ticks / 10_000_000, ticks % 10_000_000);
    let (d, h, m, s) = (whole / 86_400, whole % 86_400 / 3600, whole % 3600 / 60, whole % 60);
    let mut out = if d > 0 { format!("{d}.") } else { String::new() };
    out.push_str(&format!("{h:02}:{m:02}:{s:02}"));
    if fraction > 0 {
        out.push_str(&format!(".{fraction:07}"));
    }
    out
}

/// An error answer: status and `{"code", "message"}`.
#[derive(Debug)]
pub struct Comm100Error(StatusCode, String);

impl IntoResponse for Comm100Error {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.0.as_u16(), "message": self.1}))).into_response()
    }
}

fn bad_request(message: String) -> Comm100Error {
    Comm100Error(StatusCode::BAD_REQUEST, message)
}

/// The site (organization) whose API token the `Authorization: Bearer` header carries.
pub fn bearer_site(state: &SimState, headers: &HeaderMap) -> Result<Organization, Comm100Error> {
    super::auth::organization_by_key(state, headers, "Bearer").map_err(|problem| {
        let why = match problem {
            KeyProblem::Missing => "no bearer token",
            KeyProblem::Unknown => "invalid token",
        };
        Comm100Error(StatusCode::UNAUTHORIZED, format!("Authorization has been denied for this request: {why}."))
    })
}

type Params = Query<HashMap<String, String>>;

/// `GET /v4/livechat/realTime/Agents`.
pub async fn agents(
    State(state): State<SimState>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Json<Value>, Comm100Error> {
    let site = bearer_site(&state, &headers)?;
    let int = |key: &str, default: u64, max: u64| match p.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad_request(format!("{key} must be an integer from 1 to {max}, got `{v}`."))),
    };
    let page_index = int("pageIndex", 1, u64::from(u32::MAX))?;
    let page_size = int("pageSize", 10, 1000)?;
    let with_distribution = match p.get("includeStatusDistribution").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad_request("includeStatusDistribution must be true or false.".into())),
    };
    let dataset = state.dataset();
    let list: Vec<&Comm100Agent> = dataset
        .comm100
        .agents
        .iter()
        .filter(|a| a.organization_id == site.id)
        .filter(|a| p.get("departmentId").is_none_or(|d| a.department_ids.contains(d)))
        .collect();
    let total = list.len() as u64;
    let page: Vec<Value> = list
        .iter()
        .skip(((page_index - 1) * page_size) as usize)
        .take(page_size as usize)
        .map(|a| {
            json!({
                "agentId": a.agent_id, "displayName": a.display_name, "currentStatusId": a.current_status_id,
                "ongoingChats": a.ongoing_chats, "maxConcurrentChats": a.max_concurrent_chats,
                "intradayChats": a.intraday_chats, "intradayLinearChatTime": timespan(a.intraday_linear_chat_seconds),
                "statusDistribution": if with_distribution { json!(a.status_distribution) } else { json!({}) },
            })
        })
        .collect();
    Ok(Json(json!({
        "total": total, "pageCount": total.div_ceil(page_size), "list": page,
        "pageIndex": page_index, "pageSize": page_size,
    })))
}

/// `GET /v4/livechat/realTime/Queue`.
pub async fn queue(State(state): State<SimState>, headers: HeaderMap) -> Result<Json<Value>, Comm100Error> {
    let site = bearer_site(&state, &headers)?;
    let dataset = state.dataset();
    let c = &dataset.comm100;
    let entries: Vec<Value> = c
        .queue
        .iter()
        .filter(|q| q.organization_id == site.id)
        .map(|q| {
            let department =
                q.route_to_department_id.as_ref().and_then(|id| c.departments.iter().find(|d| &d.id == id));
            let agent = q.route_to_agent_id.as_ref().and_then(|id| c.agents.iter().find(|a| &a.agent_id == id));
            json!({
                "routeToDepartmentId": q.route_to_department_id,
                "routeToDepartment": department.map(|d| json!({"id": d.id, "siteId": 0, "name": d.name,
                    "description": "", "isAvailableInLiveChat": true, "isAvailableInTicketingAndMessaging": true,
                    "isDeleted": false})),
                "routeToAgentId": q.route_to_agent_id,
                "routeToAgent": agent.map(|a| {
                    let (first, last) = a.display_name.split_once(' ').unwrap_or((&a.display_name, ""));
                    json!({"id": a.agent_id, "displayName": a.display_name, "email": a.email, "isAdmin": false,
                        "siteId": 0, "firstName": first, "lastName": last, "isActive": true, "phone": "", "title": "",
                        "bio": "", "isLocked": false, "isDeleted": false, "departmentIds": a.department_ids})
                }),
                "ongoingChats": q.ongoing_chats,
                "maxConcurrentChats": q.max_concurrent_chats,
                "currentQueueLength": q.visitors.len(),
                "avgWaitTimeinLast30Mins": timespan(q.avg_wait_time_last_30_mins_seconds),
                "avgWaitTimeinLast60Mins": timespan(q.avg_wait_time_last_60_mins_seconds),
                "abandonedChatsinLast30Mins": q.abandoned_chats_last_30_mins,
                "switchedtoMessagesinLast30Mins": q.switched_to_messages_last_30_mins,
                "visitors": q.visitors.iter().map(|v| json!({"visitorId": v.visitor_id,
                    "contactIdentityId": v.contact_identity_id, "waitTime": timespan(v.wait_seconds)}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(Value::Array(entries)))
}

/// `GET /v4/livechat/realTime/RightNow`: computed from the site's agents, queues and site record.
pub async fn right_now(State(state): State<SimState>, headers: HeaderMap) -> Result<Json<Value>, Comm100Error> {
    let site = bearer_site(&state, &headers)?;
    let dataset = state.dataset();
    let c = &dataset.comm100;
    let agents: Vec<&Comm100Agent> = c.agents.iter().filter(|a| a.organization_id == site.id).collect();
    let logged_in: Vec<&&Comm100Agent> = agents.iter().filter(|a| a.current_status_id != OFFLINE).collect();
    let with_agent: i64 = agents.iter().map(|a| a.ongoing_chats).sum();
    let capacity: i64 = logged_in.iter().map(|a| a.max_concurrent_chats).sum();
    let record = c.sites.iter().find(|s| s.organization_id == site.id);
    let with_bot = record.map_or(0, |s| s.ongoing_chats_with_bot);
    let utilization =
        if capacity == 0 { 0.0 } else { (with_agent as f64 * 10_000.0 / capacity as f64).round() / 100.0 };
    Ok(Json(json!({
        "agentsInChat": agents.iter().filter(|a| a.ongoing_chats > 0).count(),
        "ongoingChats": with_agent + with_bot,
        "ongoingChatsWithAgent": with_agent,
        "ongoingChatsWithBot": with_bot,
        "currentQueueLength": c.queue.iter().filter(|q| q.organization_id == site.id).map(|q| q.visitors.len()).sum::<usize>(),
        "visitorOnSite": record.map_or(0, |s| s.visitors_on_site),
        "loggedInAgents": logged_in.len(),
        "chatUtilization": utilization,
    })))
}

/// `GET /v4/livechat/realTime/Today`.
pub async fn today_handler(
    State(state): State<SimState>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Json<Value>, Comm100Error> {
    let site = bearer_site(&state, &headers)?;
    let offset_minutes = match p.get("utcOffset") {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|m| m.abs() <= 14 * 60)
            .ok_or_else(|| bad_request(format!("utcOffset must be minutes from -840 to 840, got `{v}`.")))?,
    };
    let local = |key: &str, v: &str| {
        NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S")
            .map_err(|_| bad_request(format!("{key} must be yyyy-mm-ddThh:mm:ss, got `{v}`.")))
    };
    let start_local =
        local("startTime", p.get("startTime").ok_or_else(|| bad_request("startTime is required.".into()))?)?;
    let end_local = match p.get("endTime") {
        Some(v) => local("endTime", v)?,
        None => start_local.date().and_hms_opt(23, 59, 59).expect("a valid time"),
    };
    if end_local < start_local {
        return Err(bad_request("endTime is before startTime.".into()));
    }
    let utc = |t: NaiveDateTime| (t - Duration::minutes(offset_minutes)).and_utc();
    let dataset = state.dataset();
    Ok(Json(today(&dataset, &site.id, utc(start_local), utc(end_local))))
}

/// Today's figures of `site` from its chat sessions started in `[start, end]` (`end` inclusive to
/// the second). R = the sessions (their org rows); Q = those of type visitor or external (chat
/// requests); C = requests a user answered (`user_message_count` ≥ 1). Synthetic where the
/// dataset has no such measure (waiting and chat times, scores); 0 when there is nothing to
/// average.
pub fn today(dataset: &Dataset, site: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> Value {
    let rows = dataset.rows_between(start, end + Duration::milliseconds(999));
    let r: Vec<&ChatSessionRow> = rows.iter().filter(|x| x.scope == "org" && x.owner_organization_id == site).collect();
    let mut users_per_session: HashMap<&str, usize> = HashMap::new();
    for x in rows.iter().filter(|x| x.scope == "user" && x.owner_organization_id == site) {
        *users_per_session.entry(&x.chat_session_id).or_default() += 1;
    }
    let q: Vec<&&ChatSessionRow> =
        r.iter().filter(|x| matches!(x.chat_type.as_str(), "visitor" | "external")).collect();
    let c: Vec<&&&ChatSessionRow> = q.iter().filter(|x| x.user_message_count >= 1).collect();
    let unanswered = |min_visitor: i64| {
        q.iter().filter(|x| x.user_message_count == 0 && x.visitor_message_count >= min_visitor).count()
    };
    let missed = unanswered(1);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mean = |f: &dyn Fn(&ChatSessionRow) -> f64| {
        if c.is_empty() { 0.0 } else { c.iter().map(|x| f(x)).sum::<f64>() / c.len() as f64 }
    };
    let visitors: HashSet<&String> = c.iter().flat_map(|x| &x.visitor_ids).collect();
    let transferred = |x: &ChatSessionRow| x.room_ids.len() >= 2;
    json!({
        "chatRequests": q.len(),
        "totalChats": r.len(),
        "chats": c.len(),
        "chatAcceptanceRate": ratio(c.len(), q.len()),
        "abandondedChats": unanswered(0) - missed,
        "switchedToMessageChats": unanswered(3),
        "missedChats": missed,
        "avgWaitingTime": mean(&|x| 10.0 * x.visitor_message_count as f64),
        "avgChatTime": mean(&|x| 60.0 * (x.user_message_count + x.visitor_message_count) as f64),
        "agentAvgResponseTime": mean(&|x| 30.0 * x.visitor_message_count as f64 / x.user_message_count as f64),
        "acceptedInvitations": q.iter().filter(|x| x.chat_initiator != "visitor" && x.visitor_message_count >= 1).count(),
        "serviceAccessibilityRate": ratio(q.len() - missed, q.len()),
        "departmentTransferredChats": r.iter().filter(|x| transferred(x)).count(),
        "totalTransferredChats": r.iter()
            .filter(|x| transferred(x) || users_per_session.get(x.chat_session_id.as_str()).is_some_and(|n| *n >= 2))
            .count(),
        "uniqueChatRate": ratio(visitors.len(), c.len()),
        "agentUtilization": ratio(r.iter().filter(|x| x.user_message_count >= 1).count(), r.len()),
        "avgScore": mean(&|x| 1.0 + x.visitor_message_count.min(4) as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_render_as_dotnet_does() {
        assert_eq!(timespan(24_837.05), "06:53:57.0500000");
        assert_eq!(timespan(0.0), "00:00:00");
        assert_eq!(timespan(93_600.0), "1.02:00:00");
        assert_eq!(timespan(1238.2649999), "00:20:38.2649999");
        for s in [0.0, 24_837.05, 93_600.0, 1238.2649999, 59.9999999] {
            assert!((crate::time::duration_secs(&timespan(s)).unwrap() - s).abs() < 1e-6, "{s}");
        }
    }
}

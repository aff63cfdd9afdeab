//! The simulated giosg real-time reporting API (api-docs 000): `GET /api/v4/reporting/realtime/rooms`
//! and `/users`, served from the dataset's `realtime_room` and `realtime_user` records.
//!
//! Owns: those records, their generator (the current state of each organization's rooms and
//! operators, consistent with each other: a room's open chats are its operators' open chats in it,
//! its free capacity the sum of its online operators' free capacity) and the two handlers.
//!
//! What it serves (the client's assumptions, `source::giosg::realtime`, also in `docs/simulator.md`):
//! - the organization is the one whose `Authorization: Token` key is sent (401 otherwise);
//! - `{"count", "next", "previous", "results"}` pages of [`PAGE_SIZE`] results; `page` (1-based)
//!   selects one, `next`/`previous` are absolute URLs on the requested host (null at the ends); a
//!   page past the end or not a positive integer is a 404 `{"detail": "Invalid page."}`;
//! - rooms: the organization's own rooms in dataset order, then (with `include_shared=true`) the
//!   rooms other organizations share with it; `room_id` keeps the listed ids; `include_shared` must
//!   be `true` or `false` and `timezone` an IANA name (400 otherwise). The daily values are the
//!   records' (the simulator has no clock of its own), whatever the zone;
//! - a room's `average_wait_time` and `max_wait_time` are null when nobody waits, and
//!   `daily_avg_chat_wait_time` / `daily_max_chat_wait_time` are left out when the record has none;
//! - users: `user_id` keeps the listed ids; `is_logged_in` is sent with the docs' spelling
//!   `is_logged_id`; rooms as `[{room_id, room: {currently_open_chats, id, name}}]`, teams as
//!   `[{team_id}]`.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SimState;
use super::chat_sessions::ApiError;
use super::dataset::{DatasetSpec, Organization};

/// Results per page.
pub const PAGE_SIZE: usize = 20;

/// One room's real-time statistics (api-docs 000), for the organization owning it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeRoom {
    pub organization_id: String,
    pub room_id: String,
    pub room_name: String,
    /// Organizations that also see this room with `include_shared=true`.
    pub shared_with_organization_ids: Vec<String>,
    pub currently_open_chats: i64,
    pub free_capacity: i64,
    pub waiting_chats: i64,
    /// Null when nobody waits.
    pub average_wait_time: Option<f64>,
    pub max_wait_time: Option<f64>,
    pub missed_chats: i64,
    pub real_chats: i64,
    pub current_visitors: i64,
    /// Null: the field is left out of the answer.
    pub daily_avg_chat_wait_time: Option<f64>,
    pub daily_max_chat_wait_time: Option<f64>,
}

/// One operator's real-time statistics (api-docs 000).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeUser {
    pub organization_id: String,
    pub user_id: String,
    pub email: String,
    pub is_logged_in: bool,
    pub is_online: bool,
    pub currently_open_chats: i64,
    pub free_capacity: i64,
    pub rooms: Vec<RealtimeUserRoom>,
    pub team_ids: Vec<String>,
}

/// A room an operator works in, and the operator's open chats there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeUserRoom {
    pub room_id: String,
    pub room_name: String,
    pub currently_open_chats: i64,
}

/// An organization's rooms, teams and users (id, index of their team) as the chat-session
/// generator made them, so the real-time state names the same ids.
pub struct OrgPeople<'a> {
    pub id: &'a str,
    pub rooms: &'a [String],
    pub teams: &'a [String],
    pub users: &'a [(String, usize)],
}

/// Chats an operator can hold at once.
const OPERATOR_CAPACITY: i64 = 4;

/// The real-time state of every organization, from its own random stream (so the chat-session
/// rows of a seed do not change).
pub fn generate(spec: &DatasetSpec, orgs: &[OrgPeople]) -> (Vec<RealtimeRoom>, Vec<RealtimeUser>) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x7265_616c_7469_6d65);
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let (mut rooms, mut users) = (Vec::new(), Vec::new());
    for (oi, org) in orgs.iter().enumerate() {
        let room_name = |r: usize| format!("shop{}-{}.example.com", oi + 1, r + 1);
        let first_user = users.len();
        for (ui, (user_id, team)) in org.users.iter().enumerate() {
            let is_logged_in = rng.random_bool(0.8);
            let is_online = is_logged_in && rng.random_bool(0.75);
            let n_rooms = rng.random_range(1..=org.rooms.len().min(3));
            let mut picked: Vec<usize> = Vec::new();
            while picked.len() < n_rooms {
                let r = rng.random_range(0..org.rooms.len());
                if !picked.contains(&r) {
                    picked.push(r);
                }
            }
            picked.sort_unstable();
            let user_rooms: Vec<RealtimeUserRoom> = picked
                .iter()
                .map(|r| RealtimeUserRoom {
                    room_id: org.rooms[*r].clone(),
                    room_name: room_name(*r),
                    currently_open_chats: if is_online { rng.random_range(0..=2) } else { 0 },
                })
                .collect();
            let open: i64 = user_rooms.iter().map(|r| r.currently_open_chats).sum();
            let mut team_ids = vec![org.teams[*team].clone()];
            if org.teams.len() > 1 && rng.random_bool(0.2) {
                team_ids.push(org.teams[(team + 1) % org.teams.len()].clone());
            }
            users.push(RealtimeUser {
                organization_id: org.id.to_string(),
                user_id: user_id.clone(),
                email: format!("operator{}@org{}.example.com", ui + 1, oi + 1),
                is_logged_in,
                is_online,
                currently_open_chats: open,
                free_capacity: if is_online { (OPERATOR_CAPACITY - open).max(0) } else { 0 },
                rooms: user_rooms,
                team_ids,
            });
        }
        let org_users = &users[first_user..];
        for (ri, room_id) in org.rooms.iter().enumerate() {
            let in_room =
                || org_users.iter().filter_map(|u| Some((u, u.rooms.iter().find(|r| &r.room_id == room_id)?)));
            let waiting_chats = if rng.random_bool(0.4) { rng.random_range(1..=4) } else { 0 };
            let waits: Vec<f64> = (0..waiting_chats).map(|_| round1(rng.random_range(1.0..180.0))).collect();
            let real_chats = if rng.random_bool(0.2) { 0 } else { rng.random_range(1..=90) };
            let missed_chats = if real_chats == 0 { 0 } else { rng.random_range(0..=5) };
            let current_visitors = rng.random_range(0..=250);
            let daily_avg = round1(rng.random_range(5.0..60.0));
            let daily_max = round1(daily_avg + rng.random_range(0.0..120.0));
            let shared = orgs.len() > 1 && ri == 0;
            rooms.push(RealtimeRoom {
                organization_id: org.id.to_string(),
                room_id: room_id.clone(),
                room_name: room_name(ri),
                shared_with_organization_ids: if shared {
                    vec![orgs[(oi + 1) % orgs.len()].id.to_string()]
                } else {
                    Vec::new()
                },
                currently_open_chats: in_room().map(|(_, r)| r.currently_open_chats).sum(),
                free_capacity: in_room().filter(|(u, _)| u.is_online).map(|(u, _)| u.free_capacity).sum(),
                waiting_chats,
                average_wait_time: (!waits.is_empty()).then(|| round1(waits.iter().sum::<f64>() / waits.len() as f64)),
                max_wait_time: waits.iter().copied().reduce(f64::max),
                missed_chats,
                real_chats,
                current_visitors,
                daily_avg_chat_wait_time: (real_chats > 0).then_some(daily_avg),
                daily_max_chat_wait_time: (real_chats > 0).then_some(daily_max),
            });
        }
    }
    (rooms, users)
}

/// The organization whose giosg key the request carries: 401 without one or with an unknown one.
fn token_organization(state: &SimState, headers: &HeaderMap) -> Result<Organization, ApiError> {
    super::auth::organization_by_key(state, headers, "Token").map_err(|problem| {
        let message = match problem {
            super::auth::KeyProblem::Missing => "Authentication credentials were not provided.",
            super::auth::KeyProblem::Unknown => "Invalid token.",
        };
        ApiError(StatusCode::UNAUTHORIZED, message.into())
    })
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Comma-delimited ids, when the parameter is given.
fn id_filter(params: &[(String, String)], key: &str) -> Option<HashSet<String>> {
    param(params, key).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
}

/// `GET /api/v4/reporting/realtime/rooms`.
pub async fn rooms(
    State(state): State<SimState>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    let org = token_organization(&state, &headers)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let include_shared = match param(&params, "include_shared") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("include_shared: `{other}` is not a valid boolean (true or false)."))),
    };
    if let Some(tz) = param(&params, "timezone") {
        crate::time::parse_tz(tz).map_err(|e| bad(format!("timezone: {e}")))?;
    }
    let wanted = id_filter(&params, "room_id");
    let dataset = state.dataset();
    let own = dataset.realtime_rooms.iter().filter(|r| r.organization_id == org.id);
    let shared =
        dataset.realtime_rooms.iter().filter(|r| include_shared && r.shared_with_organization_ids.contains(&org.id));
    let results: Vec<Value> = own
        .chain(shared)
        .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(&r.room_id)))
        .map(|r| {
            let mut v = json!({
                "room_id": r.room_id, "room_name": r.room_name, "currently_open_chats": r.currently_open_chats,
                "free_capacity": r.free_capacity, "waiting_chats": r.waiting_chats,
                "average_wait_time": r.average_wait_time, "max_wait_time": r.max_wait_time,
                "missed_chats": r.missed_chats, "real_chats": r.real_chats, "current_visitors": r.current_visitors,
            });
            if let Some(x) = r.daily_avg_chat_wait_time {
                v["daily_avg_chat_wait_time"] = json!(x);
            }
            if let Some(x) = r.daily_max_chat_wait_time {
                v["daily_max_chat_wait_time"] = json!(x);
            }
            v
        })
        .collect();
    page(&headers, "/api/v4/reporting/realtime/rooms", &params, results)
}

/// `GET /api/v4/reporting/realtime/users`.
pub async fn users(
    State(state): State<SimState>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    let org = token_organization(&state, &headers)?;
    let wanted = id_filter(&params, "user_id");
    let dataset = state.dataset();
    let results: Vec<Value> = dataset
        .realtime_users
        .iter()
        .filter(|u| u.organization_id == org.id && wanted.as_ref().is_none_or(|w| w.contains(&u.user_id)))
        .map(|u| {
            json!({
                "user_id": u.user_id, "email": u.email, "is_logged_id": u.is_logged_in, "is_online": u.is_online,
                "currently_open_chats": u.currently_open_chats, "free_capacity": u.free_capacity,
                "rooms": u.rooms.iter().map(|r| json!({"room_id": r.room_id,
                    "room": {"currently_open_chats": r.currently_open_chats, "id": r.room_id, "name": r.room_name}}))
                    .collect::<Vec<_>>(),
                "teams": u.team_ids.iter().map(|t| json!({"team_id": t})).collect::<Vec<_>>(),
            })
        })
        .collect();
    page(&headers, "/api/v4/reporting/realtime/users", &params, results)
}

/// The `page` of `results` asked for, in giosg's paginated envelope.
fn page(
    headers: &HeaderMap,
    path: &str,
    params: &[(String, String)],
    results: Vec<Value>,
) -> Result<Json<Value>, ApiError> {
    let invalid = || ApiError(StatusCode::NOT_FOUND, "Invalid page.".into());
    let n = match param(params, "page") {
        None => 1,
        Some(p) => p.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(invalid)?,
    };
    let count = results.len();
    let pages = count.div_ceil(PAGE_SIZE).max(1);
    if n > pages {
        return Err(invalid());
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let base = reqwest::Url::parse(&format!("http://{host}{path}"))
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("invalid Host header `{host}`")))?;
    let link = |to: usize| -> Value {
        let mut url = base.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params.iter().filter(|(k, _)| k != "page") {
                q.append_pair(k, v);
            }
            q.append_pair("page", &to.to_string());
        }
        Value::String(url.to_string())
    };
    let slice: Vec<Value> = results.into_iter().skip((n - 1) * PAGE_SIZE).take(PAGE_SIZE).collect();
    Ok(Json(json!({
        "count": count,
        "next": if n < pages { link(n + 1) } else { Value::Null },
        "previous": if n > 1 { link(n - 1) } else { Value::Null },
        "results": slice,
    })))
}

//! giosg real-time reporting (api-docs 000): snapshots of `GET /api/v4/reporting/realtime/rooms`
//! and `GET /api/v4/reporting/realtime/users`, one row per room or operator at `captured_at`.
//!
//! Owns: the query strings of both endpoints, following their pages, and turning each result into
//! a row; plus [`Fields`], the field-by-field reader of a JSON object that the snapshot parsers
//! (this module and `source::comm100`) share.
//!
//! Requests: rooms sends `room_id` (the job's `rooms`, comma-delimited, only when set),
//! `include_shared` (`true`/`false`) and `timezone` (the job's zone name); users sends `user_id`
//! (the job's `user_ids`, comma-delimited, only when set). The organization is the one the token
//! belongs to: these paths have no organization, so the source's `organization_id` is unused.
//!
//! Assumptions where the docs are silent (also in `docs/simulator.md`):
//! - **Paging.** The docs call both answers "a paginated collection" and show only `results`.
//!   chatetl assumes giosg's usual envelope `{"count", "next", "previous", "results"}`: `next` is
//!   the absolute URL of the following page or null, and is followed until null (an answer without
//!   `next` is one page). A `next` on another host is refused (the token would go there), a `next`
//!   seen before is a loop, and when `count` is present the results must add up to it and name
//!   each room or user once; otherwise the collection changed while paging and the snapshot fails
//!   (the next tick captures again).
//! - **Rooms.** The fields of the docs' example must be present (`average_wait_time` and
//!   `max_wait_time` may be null: nobody waits); `daily_avg_chat_wait_time` and
//!   `daily_max_chat_wait_time` are listed but absent from the example, so they may be missing
//!   (null). Wait times are stored as given (seconds, presumably).
//! - **Users.** `user_id` is an integer in the docs' example and a UUID elsewhere in giosg: either
//!   is stored as text. The example spells `is_logged_in` as `is_logged_id`: both are read
//!   (`is_logged_in` wins when both are present); one of them must be there.
//! - **Nested rooms and teams** of a user are stored as the API returns them in `jsonb` columns
//!   `rooms` and `teams`, plus `room_ids` and `team_ids` (JSON arrays of strings) for the common
//!   questions. In PostgreSQL, `jsonb_array_elements_text(team_ids)` gives one row per team and
//!   `jsonb_array_elements(rooms) r` with `r->>'room_id'`, `(r->'room'->>'currently_open_chats')::int`
//!   one per room; in DuckDB over Parquet (JSON text), `unnest(from_json(team_ids, '["VARCHAR"]'))`
//!   and `json_extract` do the same. A child table would need a second key and load path for
//!   little gain: the arrays are short (a user's rooms and teams).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{EndpointParams, Job, SourceConfig};
use crate::plan::Window;
use crate::row::{Column, ColumnType, Row, Value as Cell};
use crate::source::http::{Calls, HttpRequest};
use crate::source::{Api, FetchError, WindowRows};

/// Which real-time collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Rooms,
    Users,
}

/// A giosg real-time collection (`source::api` gives one per endpoint).
pub struct Realtime(pub Collection);

impl Api for Realtime {
    fn columns(&self, _job: &Job) -> (Vec<Column>, Vec<Column>) {
        columns(self.0)
    }

    fn requests(&self, source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        windows.iter().map(|_| first_request(self.0, source, job)).collect()
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
        Box::pin(async move {
            let mut out = Vec::with_capacity(windows.len());
            for window in windows {
                out.push(fetch_one(self.0, calls, job, window).await?);
            }
            Ok(out)
        })
    }
}

/// `…/api/v4/reporting/realtime/rooms` or `…/users`.
pub fn path(collection: Collection) -> &'static str {
    match collection {
        Collection::Users => "/api/v4/reporting/realtime/users",
        Collection::Rooms => "/api/v4/reporting/realtime/rooms",
    }
}

/// The key and value columns of a rooms or users snapshot.
fn columns(collection: Collection) -> (Vec<Column>, Vec<Column>) {
    let c = Column::new;
    match collection {
        Collection::Users => (
            vec![c("user_id", ColumnType::Text, "the operator (giosg user id)")],
            vec![
                c("email", ColumnType::Text, "the operator's email address"),
                c(
                    "is_logged_in",
                    ColumnType::Bool,
                    "logged in (api field is_logged_in, spelled is_logged_id in the docs)",
                ),
                c("is_online", ColumnType::Bool, "online: available for chats"),
                c("currently_open_chats", ColumnType::Int, "chats the operator has open"),
                c("free_capacity", ColumnType::Int, "more chats the operator can take"),
                c("room_ids", ColumnType::Json, "ids of the operator's rooms (JSON array of strings, from rooms)"),
                c("team_ids", ColumnType::Json, "ids of the operator's teams (JSON array of strings, from teams)"),
                c(
                    "rooms",
                    ColumnType::Json,
                    "the operator's rooms as the API returns them: [{room_id, room: {id, name, currently_open_chats}}]",
                ),
                c("teams", ColumnType::Json, "the operator's teams as the API returns them: [{team_id}]"),
            ],
        ),
        Collection::Rooms => (
            vec![c("room_id", ColumnType::Text, "the room (UUID)")],
            vec![
                c("room_name", ColumnType::Text, "the room's name"),
                c("currently_open_chats", ColumnType::Int, "chats open in the room"),
                c("free_capacity", ColumnType::Int, "free capacity across the room's online operators"),
                c("waiting_chats", ColumnType::Int, "chats waiting for an operator"),
                c(
                    "average_wait_time",
                    ColumnType::Float,
                    "average wait of the visitors waiting now (as reported; null when nobody waits)",
                ),
                c(
                    "max_wait_time",
                    ColumnType::Float,
                    "longest wait of the visitors waiting now (as reported; null when nobody waits)",
                ),
                c("missed_chats", ColumnType::Int, "chats missed by operators today (in the job's zone)"),
                c("real_chats", ColumnType::Int, "real chat conversations today (in the job's zone)"),
                c("current_visitors", ColumnType::Int, "visitors active on the site now"),
                c(
                    "daily_avg_chat_wait_time",
                    ColumnType::Float,
                    "today's average wait of waiting visitors (null when not reported)",
                ),
                c(
                    "daily_max_chat_wait_time",
                    ColumnType::Float,
                    "today's longest wait of waiting visitors (null when not reported)",
                ),
            ],
        ),
    }
}

/// The first page's request of a snapshot.
fn first_request(collection: Collection, source: &SourceConfig, job: &Job) -> HttpRequest {
    let mut params: Vec<(&str, String)> = Vec::new();
    match &job.params {
        EndpointParams::RealtimeUsers { user_ids } if !user_ids.is_empty() => {
            params.push(("user_id", user_ids.join(",")));
        }
        EndpointParams::RealtimeRooms { include_shared } => {
            if !job.rooms.is_empty() {
                params.push(("room_id", job.rooms.join(",")));
            }
            params.push(("include_shared", include_shared.to_string()));
            params.push(("timezone", job.time_zone.name().to_string()));
        }
        _ => {}
    }
    HttpRequest {
        method: reqwest::Method::GET,
        // api-docs 000 serves the real-time reports from their own host (`service.giosg.com`).
        url: url_with_query(&source.realtime_base_url, path(collection), &params),
        body: None,
    }
}

/// `base + path` with `params` form-encoded (`room_id=a%2Cb`); unencoded when the base does not
/// parse (the request then fails with the URL in its message).
pub fn url_with_query(base: &str, path: &str, params: &[(&str, String)]) -> String {
    let raw = format!("{base}{path}");
    if params.is_empty() {
        return raw;
    }
    match reqwest::Url::parse_with_params(&raw, params) {
        Ok(url) => url.to_string(),
        Err(_) => {
            let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{raw}?{}", query.join("&"))
        }
    }
}

/// giosg's paginated collection (assumed envelope; see the module doc).
#[derive(Debug, Deserialize)]
struct Page {
    results: Vec<Value>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    count: Option<u64>,
}

/// One snapshot, every page: each result once, adding up to `count` when the answer has one.
async fn fetch_one(
    collection: Collection,
    calls: &Calls<'_>,
    job: &Job,
    window: &Window,
) -> Result<Vec<Row>, FetchError> {
    let mut seen_ids = HashSet::new();
    let mut rows = Vec::new();
    let first = first_request(collection, calls.source, job);
    calls
        .pages(first, |page_no, req, body| {
            let page: Page =
                crate::source::json_body(req, body, "a giosg paginated collection {count, next, previous, results}")?;
            for (i, item) in page.results.iter().enumerate() {
                let at = format!("page {page_no}, results[{i}]");
                let row = parse_result(collection, window, item, &at).map_err(|m| FetchError::response(req, m))?;
                let id = row.dims[0].clone().unwrap_or_default();
                if !seen_ids.insert(id.clone()) {
                    let m = format!(
                        "{at}: {} `{id}` was already on an earlier page: the collection changed while paging",
                        key_name(collection)
                    );
                    return Err(FetchError::response(req, m));
                }
                rows.push(row);
            }
            let Some(next) = page.next else {
                if let Some(count) = page.count
                    && count != rows.len() as u64
                {
                    let m = format!(
                        "the collection has count {count} but its pages held {} results: it changed while paging",
                        rows.len()
                    );
                    return Err(FetchError::response(req, m));
                }
                tracing::debug!(job = %job.name, pages = page_no, rows = rows.len(), "realtime snapshot fetched");
                return Ok(None);
            };
            let next =
                next_url(&calls.source.realtime_base_url, &req.url, &next).map_err(|m| FetchError::response(req, m))?;
            Ok(Some(HttpRequest { method: reqwest::Method::GET, url: next, body: None }))
        })
        .await?;
    Ok(rows)
}

fn key_name(collection: Collection) -> &'static str {
    match collection {
        Collection::Users => "user",
        Collection::Rooms => "room",
    }
}

/// Resolves a `next` link against the page it came from; it must stay on `base_url`'s host so the
/// token is never sent elsewhere.
pub fn next_url(base_url: &str, current: &str, next: &str) -> Result<String, String> {
    let current = reqwest::Url::parse(current).map_err(|e| format!("cannot parse {current}: {e}"))?;
    let url = current.join(next).map_err(|e| format!("`next` link `{next}` is not a URL: {e}"))?;
    let base = reqwest::Url::parse(base_url).map_err(|e| format!("cannot parse base_url {base_url}: {e}"))?;
    let origin =
        |u: &reqwest::Url| (u.scheme().to_string(), u.host_str().map(str::to_string), u.port_or_known_default());
    if origin(&url) != origin(&base) {
        return Err(format!("`next` link {url} leaves {base_url}; refusing to send the token there"));
    }
    Ok(url.to_string())
}

/// One result object → one row at the window's `captured_at`.
fn parse_result(collection: Collection, window: &Window, item: &Value, at: &str) -> Result<Row, String> {
    let f = Fields::of(item, at)?;
    let (dims, metrics) = match collection {
        Collection::Users => {
            let rooms = f.array("rooms")?;
            let teams = f.array("teams")?;
            let room_ids = rooms
                .iter()
                .enumerate()
                .map(|(i, r)| Fields::of(r, &format!("{at}.rooms[{i}]"))?.id("room_id"))
                .collect::<Result<Vec<_>, _>>()?;
            let team_ids = teams
                .iter()
                .enumerate()
                .map(|(i, t)| Fields::of(t, &format!("{at}.teams[{i}]"))?.id("team_id"))
                .collect::<Result<Vec<_>, _>>()?;
            (
                vec![Some(f.id("user_id")?)],
                vec![
                    f.text("email")?,
                    f.first_present(&["is_logged_in", "is_logged_id"], Fields::bool)?,
                    f.bool("is_online")?,
                    f.number("currently_open_chats")?,
                    f.number("free_capacity")?,
                    Cell::Text(Value::from(room_ids).to_string()),
                    Cell::Text(Value::from(team_ids).to_string()),
                    f.json("rooms")?,
                    f.json("teams")?,
                ],
            )
        }
        Collection::Rooms => (
            vec![Some(f.id("room_id")?)],
            vec![
                f.text("room_name")?,
                f.number("currently_open_chats")?,
                f.number("free_capacity")?,
                f.number("waiting_chats")?,
                f.number("average_wait_time")?,
                f.number("max_wait_time")?,
                f.number("missed_chats")?,
                f.number("real_chats")?,
                f.number("current_visitors")?,
                f.optional_number("daily_avg_chat_wait_time")?,
                f.optional_number("daily_max_chat_wait_time")?,
            ],
        ),
    };
    Ok(Row { bucket_start: window.start, dims, metrics })
}

/// One JSON object of a response, read field by field. Errors say where (`page 2, results[3]`)
/// and what was expected. Unknown fields are ignored; a field read with a required accessor must
/// be present (its value may be null unless it is an id).
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    at: String,
}

impl<'a> Fields<'a> {
    /// `v` as an object, or an error naming `at`.
    pub fn of(v: &'a Value, at: &str) -> Result<Fields<'a>, String> {
        match v {
            Value::Object(obj) => Ok(Fields { obj, at: at.to_string() }),
            other => Err(format!("{at} is not an object: {}", short(other))),
        }
    }

    fn get(&self, key: &str) -> Result<&'a Value, String> {
        self.obj.get(key).ok_or_else(|| format!("{} lacks field `{key}`", self.at))
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> String {
        format!("{}.{key} is not {expected}: {}", self.at, short(got))
    }

    /// An identifier: a non-empty string, or an integer (as text).
    pub fn id(&self, key: &str) -> Result<String, String> {
        match self.get(key)? {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            other => Err(self.wrong(key, "an id (a string or an integer)", other)),
        }
    }

    /// A string or null.
    pub fn text(&self, key: &str) -> Result<Cell, String> {
        match self.get(key)? {
            Value::String(s) => Ok(Cell::Text(s.clone())),
            Value::Null => Ok(Cell::Null),
            other => Err(self.wrong(key, "a string", other)),
        }
    }

    /// A number or null.
    pub fn number(&self, key: &str) -> Result<Cell, String> {
        match self.get(key)? {
            Value::Number(n) => Ok(Cell::Number(n.as_f64().unwrap_or(f64::NAN))),
            Value::Null => Ok(Cell::Null),
            other => Err(self.wrong(key, "a number", other)),
        }
    }

    /// A number, null, or absent (null).
    pub fn optional_number(&self, key: &str) -> Result<Cell, String> {
        if self.obj.contains_key(key) { self.number(key) } else { Ok(Cell::Null) }
    }

    /// A boolean or null.
    pub fn bool(&self, key: &str) -> Result<Cell, String> {
        match self.get(key)? {
            Value::Bool(b) => Ok(Cell::Bool(*b)),
            Value::Null => Ok(Cell::Null),
            other => Err(self.wrong(key, "true or false", other)),
        }
    }

    /// A duration string (`hh:mm:ss[.fffffff]`, see [`crate::time::duration_secs`]) as seconds, or null.
    pub fn duration(&self, key: &str) -> Result<Cell, String> {
        match self.get(key)? {
            Value::String(s) => {
                crate::time::duration_secs(s).map(Cell::Number).map_err(|e| format!("{}.{key}: {e}", self.at))
            }
            Value::Null => Ok(Cell::Null),
            other => Err(self.wrong(key, "a duration like hh:mm:ss", other)),
        }
    }

    /// Any value, as JSON text for a `jsonb` column (null stays null).
    pub fn json(&self, key: &str) -> Result<Cell, String> {
        match self.get(key)? {
            Value::Null => Ok(Cell::Null),
            v => Ok(Cell::Text(v.to_string())),
        }
    }

    /// An array (required, not null).
    pub fn array(&self, key: &str) -> Result<&'a Vec<Value>, String> {
        match self.get(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong(key, "a list", other)),
        }
    }

    /// An object (required, not null).
    pub fn object(&self, key: &str) -> Result<Fields<'a>, String> {
        Fields::of(self.get(key)?, &format!("{}.{key}", self.at))
    }

    /// An object, or `None` when the field is null or absent.
    pub fn optional_object(&self, key: &str) -> Result<Option<Fields<'a>>, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Fields::of(v, &format!("{}.{key}", self.at)).map(Some),
        }
    }

    /// `read` of the first of `keys` present (the same field under several spellings).
    pub fn first_present(&self, keys: &[&str], read: fn(&Self, &str) -> Result<Cell, String>) -> Result<Cell, String> {
        match keys.iter().find(|k| self.obj.contains_key(**k)) {
            Some(k) => read(self, k),
            None => {
                let others: Vec<String> = keys[1..].iter().map(|k| format!(" (or `{k}`)")).collect();
                Err(format!("{} lacks field `{}`{}", self.at, keys[0], others.concat()))
            }
        }
    }
}

/// A value for an error message, at most 60 characters of it.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(collection: Collection) -> Job {
        let text = match collection {
            Collection::Users => "description: d\nsource: giosg\nendpoint: realtime_users\nkind: snapshot\n",
            Collection::Rooms => {
                "description: d\nsource: giosg\nendpoint: realtime_rooms\nkind: snapshot\nrooms: [a, b]\n"
            }
        };
        crate::config::testing::job(text)
    }

    fn window() -> Window {
        let start = chrono::DateTime::parse_from_rfc3339("2024-03-31T10:00:00Z").unwrap().to_utc();
        Window { start, end: start + chrono::Duration::seconds(1) }
    }

    #[test]
    fn the_docs_users_example_parses_with_its_spelling() {
        // api-docs 000's example, verbatim apart from its trailing commas.
        let item = json!({"user_id": 1, "email": "name@domain.com", "is_logged_id": true, "is_online": true,
            "currently_open_chats": 3, "free_capacity": 2,
            "rooms": [{"room_id": "e6a850ca-e1d3-11e4-9706-38b1dbe48b5b",
                "room": {"currently_open_chats": 2, "id": "e6a850ca-e1d3-11e4-9706-38b1dbe48b5b", "name": "domain.com"}}],
            "teams": [{"team_id": 1}]});
        let row = parse_result(Collection::Users, &window(), &item, "results[0]").unwrap();
        assert_eq!(row.dims, vec![Some("1".to_string())]);
        assert_eq!(row.metrics[1], Cell::Bool(true));
        assert_eq!(row.metrics[5], Cell::Text(r#"["e6a850ca-e1d3-11e4-9706-38b1dbe48b5b"]"#.into()));
        assert_eq!(row.metrics[6], Cell::Text(r#"["1"]"#.into()));
        assert_eq!(row.bucket_start, window().start);

        let mut fixed = item.clone();
        fixed.as_object_mut().unwrap().remove("is_logged_id");
        fixed["is_logged_in"] = json!(false);
        let row = parse_result(Collection::Users, &window(), &fixed, "results[0]").unwrap();
        assert_eq!(row.metrics[1], Cell::Bool(false));
        fixed.as_object_mut().unwrap().remove("is_logged_in");
        let err = parse_result(Collection::Users, &window(), &fixed, "results[0]").unwrap_err();
        assert!(err.contains("lacks field `is_logged_in` (or `is_logged_id`)"), "{err}");
    }

    #[test]
    fn the_docs_rooms_example_parses_and_the_daily_fields_may_be_missing() {
        let item = json!({"room_id": "e6a850ca-e1d3-11e4-9706-38b1dbe48b5b", "room_name": "domain.com",
            "currently_open_chats": 8, "free_capacity": 4, "waiting_chats": 3, "average_wait_time": 14.6,
            "max_wait_time": 24.2, "missed_chats": 2, "real_chats": 76, "current_visitors": 123});
        let row = parse_result(Collection::Rooms, &window(), &item, "results[0]").unwrap();
        assert_eq!(row.metrics[4], Cell::Number(14.6));
        assert_eq!(row.metrics[9], Cell::Null);
        let mut broken = item.clone();
        broken["free_capacity"] = json!("4");
        let err = parse_result(Collection::Rooms, &window(), &broken, "page 1, results[0]").unwrap_err();
        assert_eq!(err, "page 1, results[0].free_capacity is not a number: \"4\"");
    }

    #[test]
    fn rooms_query_follows_the_docs_parameters() {
        let j = job(Collection::Rooms);
        let source = crate::config::SourceConfig {
            name: "giosg".into(),
            kind: crate::config::SourceKind::Giosg,
            enabled: true,
            base_url: "https://api.giosg.com".into(),
            realtime_base_url: "https://service.giosg.com".into(),
            credentials: crate::config::Credentials::Token(crate::config::Secret::new("t")),
            organization_id: "o".into(),
            unset: Vec::new(),
            credential_variables: Vec::new(),
            account_time_zone: None,
            concurrency: 1,
            requests_per_second: 1.0,
            timeout_secs: 1,
            max_retries: 0,
            max_retry_delay_secs: 1,
            max_response_bytes: 1 << 20,
            max_pages: 1000,
            assume: Default::default(),
        };
        let reqs = Realtime(Collection::Rooms).requests(&source, &j, &[window()]);
        assert_eq!(
            reqs[0].url,
            "https://service.giosg.com/api/v4/reporting/realtime/rooms?room_id=a%2Cb&include_shared=false&timezone=Europe%2FHelsinki"
        );
    }

    #[test]
    fn next_links_stay_on_the_base_host() {
        let base = "http://127.0.0.1:8089";
        let cur = "http://127.0.0.1:8089/api/v4/reporting/realtime/rooms?timezone=UTC";
        assert_eq!(
            next_url(base, cur, "?timezone=UTC&page=2").unwrap(),
            format!("{base}/api/v4/reporting/realtime/rooms?timezone=UTC&page=2")
        );
        assert!(next_url(base, cur, "http://127.0.0.1:8089/x?page=2").is_ok());
        assert!(next_url(base, cur, "https://evil.example/x?page=2").unwrap_err().contains("refusing"));
        assert!(next_url(base, cur, "http://127.0.0.1:9999/x").is_err());
    }
}

//! The Thulium chat summary client (api-docs 004): `GET {base_url}/api/chats/reports/summary` with
//! HTTP basic auth, paged with `limit`/`offset`, flattened into one typed row per bucket and user.
//!
//! Owns: the table shape of `chat_summary` jobs ([`columns`]), the query string of a chunk of
//! windows ([`requests`]: the first page of each request), paging, and reading `series` back into
//! bucket instants. Sending, retrying and authenticating are `source::http`'s.
//!
//! Request (004's parameters, form-encoded in 004's example order): `user_logins[]` (each login;
//! with `split_by_login` one request per login), `date_from`, `date_to`, `aggregate_by`, then
//! `sum_users=true`, `chat_queue_ids[]`, `response_threshold` only when the job sets them, then
//! `limit` (the job's `page_size`, at most 100) and `offset` (0, limit, 2·limit, … until a page
//! shorter than the limit, an empty one included).
//!
//! Assumptions where 004 is silent (also in `docs/simulator.md`, section Thulium):
//! - **Dates** are wall-clock times in the account's zone (`SourceConfig::account_time_zone`).
//!   `date_from` is the chunk's first window start and `date_to` its last window end minus one
//!   second: `date_to` is inclusive to the second (001's giosg bodies end days at `23:59:59.999`,
//!   and 004's example `date_from=2025-10-17&date_to=2025-11-16` reads as 31 whole days).
//! - **Zones.** Windows are the job's; dates are rendered, and `series` read, in the account's
//!   zone. Every bucket must lie inside the requested range, so a job whose zone splits the
//!   account's days (or hours, for zones a half hour apart) fails the window with a hint to use
//!   the account's zone instead of loading partial buckets. `minute` and `hour` work from any zone
//!   whose offset differs by whole hours.
//! - **The repeated autumn hour** cannot be told apart in local `YYYY-MM-DD HH:MM:SS`: Thulium
//!   reports both passes as one hour. chatetl gives that bucket (and its range) to the first pass:
//!   the first pass's window holds both passes' chats, and a window starting in the second pass is
//!   not requested at all (`date_from` moves past it; alone it loads no rows).
//! - **`series`**: minute `YYYY-MM-DD HH:MM`, hour `YYYY-MM-DD HH:00`, day `YYYY-MM-DD` (the bucket
//!   starts at that local time; a midnight the zone skips starts at the first minute that exists),
//!   hour_of_day `HH` (the first such account-local hour inside the range), week `YYYY-Www` (ISO),
//!   month `YYYY-MM` (004's example), year `YYYY`. Week, month and year buckets are longer than the
//!   one window each request covers: their row is that window's and starts at its start (a label
//!   whose period does not meet the range fails). Another shape fails the window.
//! - **Rows** carry `user_name` (null with `sum_users`) but no login: two users of the same name
//!   give two rows for one bucket, which fails the window with a hint to use `split_by_login`.
//! - Durations are `HH:MM:SS` (hours may pass 99) or null; percentages numbers or null. A missing
//!   field or a value of another type fails the window; unknown fields are ignored.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::{AggregateBy, EndpointParams, Job, SourceConfig};
use crate::plan::Window;
use crate::row::{Column, ColumnType, Row, Value as Cell};
use crate::source::http::{Calls, HttpRequest};
use crate::source::{Api, FetchError, WindowRows};
use crate::time::{duration_secs, local_to_utc};

/// The report's path under the account's `base_url`.
pub const PATH: &str = "/api/chats/reports/summary";

/// 004: "Maksymalna wartość: 100".
pub const MAX_LIMIT: u32 = 100;

/// The value columns: (name, type, comment), in the order [`flatten`] fills them.
const METRICS: [(&str, ColumnType, &str); 23] = [
    ("incoming", ColumnType::Int, "chats received, empty ones excluded (004 incoming)"),
    ("incoming_to_agent", ColumnType::Int, "chats offered to agents (004 incoming_to_agent)"),
    ("incoming_including_empty", ColumnType::Int, "chats received, empty ones included (004 incoming_including_empty)"),
    ("abandoned", ColumnType::Int, "chats the visitor left before an agent answered (004 abandoned)"),
    ("answered", ColumnType::Int, "chats an agent answered (004 answered)"),
    ("incoming_to_bot", ColumnType::Int, "chats a bot took first (004 incoming_to_bot)"),
    ("transferred_by_bot", ColumnType::Int, "bot chats handed over to an agent (004 transferred_by_bot)"),
    ("finished_by_bot", ColumnType::Int, "bot chats the bot finished itself (004 finished_by_bot)"),
    (
        "service_level_percent",
        ColumnType::Float,
        "percent of answered chats whose first response came within the job's response_threshold (004 service_level_percent)",
    ),
    ("chat_time_min_seconds", ColumnType::Float, "shortest chat time, seconds (004 chat_time.min)"),
    ("chat_time_max_seconds", ColumnType::Float, "longest chat time, seconds (004 chat_time.max)"),
    ("chat_time_sum_seconds", ColumnType::Float, "total chat time, seconds (004 chat_time.sum)"),
    (
        "chat_time_avg_seconds",
        ColumnType::Float,
        "average chat time, seconds, as the report rounds it (004 chat_time.avg)",
    ),
    ("wait_time_min_seconds", ColumnType::Float, "shortest wait for an agent, seconds (004 wait_time.min)"),
    ("wait_time_max_seconds", ColumnType::Float, "longest wait for an agent, seconds (004 wait_time.max)"),
    ("wait_time_sum_seconds", ColumnType::Float, "total wait for an agent, seconds (004 wait_time.sum)"),
    (
        "wait_time_avg_seconds",
        ColumnType::Float,
        "average wait for an agent, seconds, as the report rounds it (004 wait_time.avg)",
    ),
    ("sla_percent", ColumnType::Float, "percent of chats within the SLA, as the report computes it (004 sla_percent)"),
    ("rating_sad", ColumnType::Int, "chats rated sad (004 rating.rate.sad)"),
    ("rating_neutral", ColumnType::Int, "chats rated neutral (004 rating.rate.neutral)"),
    ("rating_happy", ColumnType::Int, "chats rated happy (004 rating.rate.happy)"),
    (
        "rating_satisfaction_percent",
        ColumnType::Float,
        "satisfaction percent of rated chats (004 rating.satisfaction_percent)",
    ),
    ("rating_rated_percent", ColumnType::Float, "percent of chats that were rated (004 rating.rated_percent)"),
];

/// `user_login`, `user_name`, then the report's fields flattened.
pub fn columns(_job: &Job) -> (Vec<Column>, Vec<Column>) {
    let dims = vec![
        Column::new(
            "user_login",
            ColumnType::Text,
            "the login the row was requested for (split_by_login jobs; else null)",
        ),
        Column::new(
            "user_name",
            ColumnType::Text,
            "the user's name as the report shows it (null when summed over users)",
        ),
    ];
    (dims, METRICS.iter().map(|(name, ty, comment)| Column::new(name, *ty, comment)).collect())
}

/// A chat summary job's own parameters.
struct Params<'a> {
    aggregate_by: AggregateBy,
    user_logins: &'a [String],
    chat_queue_ids: &'a [String],
    sum_users: bool,
    response_threshold: Option<u32>,
    split_by_login: bool,
    limit: u32,
}

fn params(job: &Job) -> Option<Params<'_>> {
    match &job.params {
        EndpointParams::ChatSummary {
            aggregate_by,
            user_logins,
            chat_queue_ids,
            sum_users,
            response_threshold,
            split_by_login,
            page_size,
        } => Some(Params {
            aggregate_by: *aggregate_by,
            user_logins,
            chat_queue_ids,
            sum_users: *sum_users,
            response_threshold: *response_threshold,
            split_by_login: *split_by_login,
            limit: (*page_size).clamp(1, MAX_LIMIT),
        }),
        _ => None,
    }
}

impl Params<'_> {
    /// The login of each request: one per login with `split_by_login`, else one request for all.
    fn logins(&self) -> Vec<Option<&str>> {
        if self.split_by_login { self.user_logins.iter().map(|l| Some(l.as_str())).collect() } else { vec![None] }
    }
}

/// The account's zone (config validation requires it for thulium sources).
fn account_zone(source: &SourceConfig, job: &Job) -> Tz {
    source.account_time_zone.unwrap_or(job.time_zone)
}

/// The wall clock of `t` in `tz`.
fn local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// Whether `t` is on the second pass of a repeated local time (its wall clock read earlier too).
fn second_pass(tz: Tz, t: DateTime<Utc>) -> bool {
    local_to_utc(tz, local(tz, t)) < t
}

/// `date_from` and `date_to` of consecutive `windows` in the account zone `tz`, or `None` when
/// every window starts in the second pass of a repeated hour (their chats belong to the first).
pub fn local_range(tz: Tz, windows: &[Window]) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let first = windows.iter().find(|w| !second_pass(tz, w.start))?;
    let last = windows.last()?;
    let (from, to) = (local(tz, first.start), local(tz, last.end - Duration::seconds(1)));
    (from <= to).then_some((from, to))
}

/// The request for one page.
fn page(
    source: &SourceConfig,
    p: &Params,
    login: Option<&str>,
    range: (NaiveDateTime, NaiveDateTime),
    offset: u64,
) -> HttpRequest {
    // Url only serializes the query (form encoding); the base URL is the source's, as configured.
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("a valid URL");
    {
        let mut q = url.query_pairs_mut();
        let logins: Vec<&str> = match login {
            Some(l) => vec![l],
            None => p.user_logins.iter().map(String::as_str).collect(),
        };
        for l in logins {
            q.append_pair("user_logins[]", l);
        }
        q.append_pair("date_from", &range.0.format("%Y-%m-%d %H:%M:%S").to_string());
        q.append_pair("date_to", &range.1.format("%Y-%m-%d %H:%M:%S").to_string());
        q.append_pair("aggregate_by", p.aggregate_by.as_str());
        if p.sum_users {
            q.append_pair("sum_users", "true");
        }
        for id in p.chat_queue_ids {
            q.append_pair("chat_queue_ids[]", id);
        }
        if let Some(t) = p.response_threshold {
            q.append_pair("response_threshold", &t.to_string());
        }
        q.append_pair("limit", &p.limit.to_string());
        q.append_pair("offset", &offset.to_string());
    }
    HttpRequest {
        method: reqwest::Method::GET,
        url: format!("{}{PATH}?{}", source.base_url, url.query().unwrap_or_default()),
        body: None,
    }
}

/// The first page of each request that loads consecutive `windows` (none when they are all the
/// second pass of a repeated hour).
pub fn requests(source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
    let Some(p) = params(job) else { return Vec::new() };
    let Some(range) = local_range(account_zone(source, job), windows) else { return Vec::new() };
    p.logins().into_iter().map(|login| page(source, &p, login, range, 0)).collect()
}

/// Sends every request (each login's at once), each page after the other, and returns the rows
/// of each window.
pub async fn fetch(calls: &Calls<'_>, job: &Job, windows: &[Window]) -> Result<Vec<Vec<Row>>, FetchError> {
    let source = calls.source;
    let p = params(job).ok_or_else(|| FetchError::Response {
        url: source.base_url.clone(),
        message: format!("job {} has no chat summary parameters", job.name),
    })?;
    let tz = account_zone(source, job);
    let mut out = vec![Vec::new(); windows.len()];
    let Some(range) = local_range(tz, windows) else { return Ok(out) };
    let logins = p.logins();
    let answers =
        futures::future::try_join_all(logins.iter().map(|login| pages(calls, job, &p, *login, range))).await?;
    let ctx = Bucketing { aggregate_by: p.aggregate_by, tz, job_tz: job.time_zone, range };
    // A row's identity: (bucket, login, user_name); mapped to the series of the row already there.
    type RowKey = (DateTime<Utc>, Option<String>, Option<String>);
    let mut seen: HashMap<RowKey, String> = HashMap::new();
    for (login, pages) in logins.into_iter().zip(answers) {
        for (req, first_index, rows) in pages {
            for (i, raw) in rows.into_iter().enumerate() {
                let n = first_index + i as u64;
                let fail = |message: String| FetchError::response(&req, format!("row {n}: {message}"));
                let row: SummaryRow =
                    serde_json::from_value(raw).map_err(|e| fail(format!("not a chat summary row: {e}")))?;
                let bucket = ctx.bucket(&row.series).map_err(fail)?;
                let w = windows.partition_point(|w| w.end <= bucket);
                if w == windows.len() || bucket < windows[w].start {
                    return Err(fail(format!(
                        "series `{}` (bucket {bucket}) is outside the requested windows",
                        row.series
                    )));
                }
                let key = (bucket, login.map(String::from), row.user_name.clone());
                if let Some(earlier) = seen.insert(key, row.series.clone()) {
                    return Err(fail(duplicate_message(&p, &ctx, &earlier, &row)));
                }
                let metrics = flatten(&row).map_err(fail)?;
                out[w].push(Row { bucket_start: bucket, dims: vec![login.map(String::from), row.user_name], metrics });
            }
        }
    }
    Ok(out)
}

/// Every page of one request: (the page's request, the index of its first row, its rows). Pages
/// follow each other by `offset` until one is short.
async fn pages(
    calls: &Calls<'_>,
    job: &Job,
    p: &Params<'_>,
    login: Option<&str>,
    range: (NaiveDateTime, NaiveDateTime),
) -> Result<Vec<(HttpRequest, u64, Vec<Value>)>, FetchError> {
    let limit = u64::from(p.limit);
    let mut out = Vec::new();
    let first = page(calls.source, p, login, range, 0);
    calls
        .pages(first, |n, req, body| {
            let offset = u64::from(n - 1) * limit;
            let rows: Vec<Value> = crate::source::json_body(req, body, "a chat summary page (a JSON array of rows)")?;
            let len = rows.len() as u64;
            tracing::debug!(job = %job.name, offset, rows = len, "chat summary page");
            if len > limit {
                return Err(FetchError::response(req, format!("a page of {len} rows for limit {limit}")));
            }
            out.push((req.clone(), offset, rows));
            Ok((len == limit).then(|| page(calls.source, p, login, range, offset + limit)))
        })
        .await?;
    Ok(out)
}

/// Why two rows fell on one bucket and name, and what to do about it.
fn duplicate_message(p: &Params, ctx: &Bucketing, earlier: &str, row: &SummaryRow) -> String {
    let who = row.user_name.as_deref().map_or("the sum over users".to_string(), |n| format!("user_name {n:?}"));
    if earlier != row.series {
        format!(
            "series `{earlier}` and `{}` both fall on one window for {who}: the window spans two `{}` buckets of the account's zone {}{}",
            row.series,
            p.aggregate_by.as_str(),
            ctx.tz.name(),
            ctx.zone_hint()
        )
    } else if row.user_name.is_some() && !p.split_by_login {
        format!(
            "two rows for series `{}` and {who}: the report tells users apart by name only, so two users share this \
             name; set `split_by_login: true` (with their `user_logins`) to request each login on its own",
            row.series
        )
    } else {
        format!("the row for series `{}` and {who} arrived twice (overlapping pages?)", row.series)
    }
}

/// What a `series` label means for one request.
struct Bucketing {
    aggregate_by: AggregateBy,
    /// The account's zone, in which labels are read.
    tz: Tz,
    job_tz: Tz,
    /// `date_from` and `date_to` of the request (account wall clock; `date_to` inclusive).
    range: (NaiveDateTime, NaiveDateTime),
}

impl Bucketing {
    /// `; give the job …` when the job's zone is not the account's.
    fn zone_hint(&self) -> String {
        if self.job_tz == self.tz {
            String::new()
        } else {
            format!(
                " (the job's zone is {}; Thulium buckets in the account's zone, so give the job `time_zone: {}`)",
                self.job_tz.name(),
                self.tz.name()
            )
        }
    }

    /// The instant bucket `series` starts at, checked to lie inside the requested range.
    fn bucket(&self, series: &str) -> Result<DateTime<Utc>, String> {
        let (from, to) = self.range;
        let end = to + Duration::seconds(1);
        let shape = |expected: &str| {
            format!("series `{series}` is not {expected} (aggregate_by {})", self.aggregate_by.as_str())
        };
        let at = |t: NaiveDateTime| local_to_utc(self.tz, t);
        // Through `local_to_utc` both passes of a repeated hour are the first, and a skipped
        // midnight is the first minute after it, as for windows.
        let inside = |start: NaiveDateTime, len: Duration| at(start) >= at(from) && at(start + len) <= at(end);
        let minute = |fmt: &str| NaiveDateTime::parse_from_str(&format!("{series}:00"), fmt).ok();
        let (start, len) = match self.aggregate_by {
            AggregateBy::Minute => (
                minute("%Y-%m-%d %H:%M:%S").ok_or_else(|| shape("a minute like 2024-03-31 14:05"))?,
                Duration::minutes(1),
            ),
            AggregateBy::Hour => {
                let t = minute("%Y-%m-%d %H:%M:%S").filter(|t| t.format("%M").to_string() == "00");
                (t.ok_or_else(|| shape("an hour like 2024-03-31 14:00"))?, Duration::hours(1))
            }
            AggregateBy::Day => {
                let d = NaiveDate::parse_from_str(series, "%Y-%m-%d").map_err(|_| shape("a date like 2024-03-31"))?;
                let next = d.succ_opt().ok_or_else(|| shape("a date with a next day"))?;
                (d.and_time(NaiveTime::MIN), next.and_time(NaiveTime::MIN) - d.and_time(NaiveTime::MIN))
            }
            AggregateBy::HourOfDay => {
                let hour = (series.len() == 2).then(|| series.parse::<u32>().ok()).flatten().filter(|h| *h < 24);
                let hour = hour.ok_or_else(|| shape("an hour of the day from 00 to 23"))?;
                let dates = from.date().iter_days().take_while(|d| *d <= to.date());
                let start = dates
                    .map(|d| d.and_hms_opt(hour, 0, 0).expect("a valid hour"))
                    .find(|t| inside(*t, Duration::hours(1)))
                    .ok_or_else(|| self.outside(series))?;
                (start, Duration::hours(1))
            }
            AggregateBy::Week | AggregateBy::Month | AggregateBy::Year => {
                let (start, next) = self.period(series).ok_or_else(|| {
                    shape(match self.aggregate_by {
                        AggregateBy::Week => "an ISO week like 2024-W13",
                        AggregateBy::Month => "a month like 2021-12",
                        _ => "a year like 2024",
                    })
                })?;
                if start >= end || next <= from {
                    return Err(self.outside(series));
                }
                // Longer than the request (one window): the row is the range's, from its start.
                return Ok(at(from));
            }
        };
        if !inside(start, len) {
            return Err(self.outside(series));
        }
        Ok(at(start))
    }

    /// `[start, next)` of a week, month or year label, on the account's wall clock.
    fn period(&self, series: &str) -> Option<(NaiveDateTime, NaiveDateTime)> {
        let year = |s: &str| (s.len() == 4).then(|| s.parse::<i32>().ok()).flatten();
        let midnight = |d: NaiveDate| d.and_time(NaiveTime::MIN);
        let (start, next) = match self.aggregate_by {
            AggregateBy::Week => {
                let (y, w) = series.split_once("-W")?;
                let week = (w.len() == 2).then(|| w.parse::<u32>().ok()).flatten()?;
                let monday = NaiveDate::from_isoywd_opt(year(y)?, week, chrono::Weekday::Mon)?;
                (monday, monday + Duration::days(7))
            }
            AggregateBy::Month => {
                let (y, m) = series.split_once('-')?;
                let month = (m.len() == 2).then(|| m.parse::<u32>().ok()).flatten()?;
                let first = NaiveDate::from_ymd_opt(year(y)?, month, 1)?;
                (first, first.checked_add_months(chrono::Months::new(1))?)
            }
            _ => {
                let first = NaiveDate::from_ymd_opt(year(series)?, 1, 1)?;
                (first, first.with_year(first.year() + 1)?)
            }
        };
        Some((midnight(start), midnight(next)))
    }

    fn outside(&self, series: &str) -> String {
        format!(
            "series `{series}` (aggregate_by {}) is not within the requested range {} .. {} of the account's zone {}{}",
            self.aggregate_by.as_str(),
            self.range.0.format("%Y-%m-%d %H:%M:%S"),
            self.range.1.format("%Y-%m-%d %H:%M:%S"),
            self.tz.name(),
            self.zone_hint()
        )
    }
}

/// One row of the report (004's example); unknown fields are ignored, missing ones are errors.
#[derive(Debug, Deserialize)]
struct SummaryRow {
    series: String,
    #[serde(deserialize_with = "present")]
    user_name: Option<String>,
    incoming: u64,
    incoming_to_agent: u64,
    incoming_including_empty: u64,
    abandoned: u64,
    answered: u64,
    incoming_to_bot: u64,
    transferred_by_bot: u64,
    finished_by_bot: u64,
    #[serde(deserialize_with = "present")]
    service_level_percent: Option<f64>,
    chat_time: Durations,
    wait_time: Durations,
    #[serde(deserialize_with = "present")]
    sla_percent: Option<f64>,
    rating: Rating,
}

#[derive(Debug, Deserialize)]
struct Durations {
    #[serde(deserialize_with = "present")]
    min: Option<String>,
    #[serde(deserialize_with = "present")]
    max: Option<String>,
    #[serde(deserialize_with = "present")]
    sum: Option<String>,
    #[serde(deserialize_with = "present")]
    avg: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Rating {
    rate: Rate,
    #[serde(deserialize_with = "present")]
    satisfaction_percent: Option<f64>,
    #[serde(deserialize_with = "present")]
    rated_percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Rate {
    sad: u64,
    neutral: u64,
    happy: u64,
}

/// A nullable field that must be present (serde lets a missing `Option` pass as `None` unless a
/// `deserialize_with` is given).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// The row's values in [`METRICS`] order.
fn flatten(row: &SummaryRow) -> Result<Vec<Cell>, String> {
    let count = |n: u64| Cell::Number(n as f64);
    let secs = |field: &str, d: &Option<String>| -> Result<Cell, String> {
        d.as_deref().map(|t| duration_secs(t).map_err(|e| format!("{field}: {e}"))).transpose().map(Cell::from)
    };
    let mut out: Vec<Cell> = [
        row.incoming,
        row.incoming_to_agent,
        row.incoming_including_empty,
        row.abandoned,
        row.answered,
        row.incoming_to_bot,
        row.transferred_by_bot,
        row.finished_by_bot,
    ]
    .into_iter()
    .map(count)
    .collect();
    out.push(Cell::from(row.service_level_percent));
    for (name, d) in [("chat_time", &row.chat_time), ("wait_time", &row.wait_time)] {
        for (part, v) in [("min", &d.min), ("max", &d.max), ("sum", &d.sum), ("avg", &d.avg)] {
            out.push(secs(&format!("{name}.{part}"), v)?);
        }
    }
    out.push(Cell::from(row.sla_percent));
    out.extend([row.rating.rate.sad, row.rating.rate.neutral, row.rating.rate.happy].map(count));
    out.push(Cell::from(row.rating.satisfaction_percent));
    out.push(Cell::from(row.rating.rated_percent));
    debug_assert_eq!(out.len(), METRICS.len());
    Ok(out)
}

/// The chat summary report (api-docs 004).
pub struct ChatSummary;

impl Api for ChatSummary {
    fn columns(&self, job: &Job) -> (Vec<Column>, Vec<Column>) {
        columns(job)
    }

    fn bucket(&self, job: &Job) -> String {
        params(job).map_or_else(String::new, |p| format!("aggregate_by {}", p.aggregate_by.as_str()))
    }

    fn requests(&self, source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        requests(source, job, windows)
    }

    /// At least one row per bucket (one user, or `sum_users`), and pages until one shorter than
    /// the limit, an empty one included: `rows / limit + 1`.
    fn pages(&self, job: &Job, windows: &[Window]) -> Option<u32> {
        let p = params(job)?;
        let (first, last) = (windows.first()?, windows.last()?);
        let minutes = (last.end - first.start).num_minutes().max(0) as u64;
        let buckets = match p.aggregate_by {
            AggregateBy::Minute => minutes,
            AggregateBy::Hour => minutes.div_ceil(60),
            AggregateBy::HourOfDay => minutes.div_ceil(60).min(24),
            AggregateBy::Day => minutes.div_ceil(24 * 60),
            AggregateBy::Week | AggregateBy::Month | AggregateBy::Year => windows.len() as u64,
        };
        Some(u32::try_from(buckets / u64::from(p.limit) + 1).unwrap_or(u32::MAX))
    }

    fn fetch<'a>(
        &'a self,
        calls: &'a Calls<'a>,
        job: &'a Job,
        windows: &'a [Window],
    ) -> futures::future::BoxFuture<'a, Result<WindowRows, FetchError>> {
        Box::pin(fetch(calls, job, windows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowUnit;
    use crate::plan::windows_overlapping;

    const HEL: Tz = chrono_tz::Europe::Helsinki;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn hours(from: &str, to: &str) -> Vec<Window> {
        windows_overlapping(WindowUnit::Hour, HEL, utc(from), utc(to))
    }

    fn bucketing(aggregate_by: AggregateBy, windows: &[Window], job_tz: Tz) -> Bucketing {
        Bucketing { aggregate_by, tz: HEL, job_tz, range: local_range(HEL, windows).unwrap() }
    }

    #[test]
    fn a_day_range_ends_at_its_last_second() {
        let days = windows_overlapping(WindowUnit::Day, HEL, utc("2025-10-16T21:00:00Z"), utc("2025-11-16T21:00:00Z"));
        assert_eq!(days.len(), 31);
        assert_eq!(local_range(HEL, &days), Some((naive("2025-10-17 00:00:00"), naive("2025-11-16 23:59:59"))));
    }

    #[test]
    fn the_second_pass_of_the_repeated_hour_is_never_requested() {
        // Helsinki 2024-10-27: 03:00+03:00 (00:00Z) and 03:00+02:00 (01:00Z).
        let day = hours("2024-10-26T21:00:00Z", "2024-10-27T22:00:00Z");
        assert_eq!(day.len(), 25);
        let (first, second) = (&day[3..4], &day[4..5]);
        assert_eq!(local_range(HEL, first), Some((naive("2024-10-27 03:00:00"), naive("2024-10-27 03:59:59"))));
        assert_eq!(local_range(HEL, second), None, "alone it loads nothing");
        assert_eq!(local_range(HEL, &day[4..6]), Some((naive("2024-10-27 04:00:00"), naive("2024-10-27 04:59:59"))));
        assert_eq!(local_range(HEL, &day[3..5]), Some((naive("2024-10-27 03:00:00"), naive("2024-10-27 03:59:59"))));
        // The merged hour belongs to the first pass, wherever the chunk ends.
        for chunk in [&day[3..4], &day[3..5], &day[..]] {
            assert_eq!(
                bucketing(AggregateBy::Hour, chunk, HEL).bucket("2024-10-27 03:00"),
                Ok(utc("2024-10-27T00:00:00Z"))
            );
        }
        let b = bucketing(AggregateBy::Minute, &day[3..4], HEL);
        assert_eq!(b.bucket("2024-10-27 03:59"), Ok(utc("2024-10-27T00:59:00Z")));
        assert!(b.bucket("2024-10-27 04:00").unwrap_err().contains("not within"));
    }

    #[test]
    fn series_shapes_and_ranges_are_checked() {
        let days = windows_overlapping(WindowUnit::Day, HEL, utc("2024-03-29T22:00:00Z"), utc("2024-04-01T21:00:00Z"));
        assert_eq!(days.len(), 3, "03-30, 03-31 (23 hours), 04-01");
        let b = bucketing(AggregateBy::Day, &days, HEL);
        assert_eq!(b.bucket("2024-03-31"), Ok(utc("2024-03-30T22:00:00Z")));
        assert_eq!(b.bucket("2024-04-01"), Ok(utc("2024-03-31T21:00:00Z")));
        assert!(b.bucket("2024-04-02").unwrap_err().contains("not within the requested range 2024-03-30 00:00:00"));
        assert!(b.bucket("2024-03-31 00:00").unwrap_err().contains("not a date"));
        let h = bucketing(AggregateBy::Hour, &days, HEL);
        assert!(h.bucket("2024-03-31 05:30").unwrap_err().contains("not an hour"));
        assert_eq!(h.bucket("2024-03-31 04:00"), Ok(utc("2024-03-31T01:00:00Z")), "the hour after the gap");
        let hod = bucketing(AggregateBy::HourOfDay, &days[1..2], HEL);
        assert_eq!(hod.bucket("00"), Ok(utc("2024-03-30T22:00:00Z")));
        assert_eq!(hod.bucket("23"), Ok(utc("2024-03-31T20:00:00Z")));
        assert!(hod.bucket("24").unwrap_err().contains("hour of the day"));
        for (agg, good, bad, outside) in [
            (AggregateBy::Week, "2024-W13", "2024-13", "2024-W15"),
            (AggregateBy::Month, "2024-03", "2024-3", "2021-12"),
            (AggregateBy::Year, "2024", "24", "2023"),
        ] {
            let b = bucketing(agg, &days[1..2], HEL);
            assert_eq!(b.bucket(good), Ok(utc("2024-03-30T22:00:00Z")), "{agg:?}: the window's start");
            assert!(b.bucket(bad).unwrap_err().contains("is not"), "{agg:?} {bad}");
            assert!(b.bucket(outside).unwrap_err().contains("not within"), "{agg:?} {outside}");
        }
    }

    #[test]
    fn another_job_zone_works_for_hours_and_fails_for_split_days() {
        // A Europe/Stockholm hour window (one hour behind Helsinki) covers a whole Helsinki hour.
        let sto = chrono_tz::Europe::Stockholm;
        let w = windows_overlapping(WindowUnit::Hour, sto, utc("2024-05-02T08:00:00Z"), utc("2024-05-02T09:00:00Z"));
        let b =
            Bucketing { aggregate_by: AggregateBy::Hour, tz: HEL, job_tz: sto, range: local_range(HEL, &w).unwrap() };
        assert_eq!(b.range, (naive("2024-05-02 11:00:00"), naive("2024-05-02 11:59:59")));
        assert_eq!(b.bucket("2024-05-02 11:00"), Ok(utc("2024-05-02T08:00:00Z")));
        // A Stockholm day is 01:00 .. 00:59:59 in Helsinki: both Helsinki days are partial.
        let d = windows_overlapping(WindowUnit::Day, sto, utc("2024-05-01T22:00:00Z"), utc("2024-05-02T22:00:00Z"));
        let b =
            Bucketing { aggregate_by: AggregateBy::Day, tz: HEL, job_tz: sto, range: local_range(HEL, &d).unwrap() };
        for day in ["2024-05-02", "2024-05-03"] {
            let err = b.bucket(day).unwrap_err();
            assert!(err.contains("give the job `time_zone: Europe/Helsinki`"), "{err}");
        }
    }

    fn row(extra: impl FnOnce(&mut Value)) -> Value {
        let mut v = serde_json::json!({
            "series": "2021-12", "user_name": "John Doe", "incoming": 1, "incoming_to_agent": 1,
            "incoming_including_empty": 1, "abandoned": 0, "answered": 1, "incoming_to_bot": 0,
            "transferred_by_bot": 0, "finished_by_bot": 0, "service_level_percent": 100,
            "chat_time": {"min": "00:00:48", "max": "00:00:48", "sum": "00:00:48", "avg": "00:00:48"},
            "wait_time": {"min": "00:00:00", "max": "00:00:00", "sum": "00:00:00", "avg": "00:00:00"},
            "sla_percent": 100,
            "rating": {"rate": {"sad": 0, "neutral": 0, "happy": 0}, "satisfaction_percent": 0, "rated_percent": 0}
        });
        extra(&mut v);
        v
    }

    #[test]
    fn the_docs_example_row_flattens_and_bad_rows_are_named() {
        let parsed: SummaryRow = serde_json::from_value(row(|v| v["surprise"] = Value::Bool(true))).unwrap();
        let cells = flatten(&parsed).unwrap();
        assert_eq!(cells.len(), METRICS.len());
        assert_eq!(cells[0], Cell::Number(1.0));
        assert_eq!(cells[8], Cell::Number(100.0));
        assert_eq!(cells[9..13], [Cell::Number(48.0), Cell::Number(48.0), Cell::Number(48.0), Cell::Number(48.0)]);
        let missing = serde_json::from_value::<SummaryRow>(row(|v| {
            v.as_object_mut().unwrap().remove("answered");
        }));
        assert!(missing.unwrap_err().to_string().contains("missing field `answered`"));
        let no_name = serde_json::from_value::<SummaryRow>(row(|v| {
            v.as_object_mut().unwrap().remove("user_name");
        }));
        assert!(no_name.unwrap_err().to_string().contains("user_name"));
        let null_name: SummaryRow = serde_json::from_value(row(|v| v["user_name"] = Value::Null)).unwrap();
        assert_eq!(null_name.user_name, None);
        let bad_time: SummaryRow = serde_json::from_value(row(|v| v["wait_time"]["avg"] = "1:2".into())).unwrap();
        assert!(flatten(&bad_time).unwrap_err().starts_with("wait_time.avg: `1:2`"));
        assert!(serde_json::from_value::<SummaryRow>(row(|v| v["incoming"] = "1".into())).is_err());
    }
}

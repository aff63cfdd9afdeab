//! The simulated Thulium `GET /api/chats/reports/summary` (api-docs 004) and its records.
//!
//! Owns: the dataset records of Thulium ([`ThuliumAccount`]: an account's zone; [`ThuliumChat`]:
//! one chat), their deterministic generator ([`generate`], its own random stream so the giosg rows
//! of a seed never change), HTTP basic authentication, the query-string parameters
//! ([`SummaryQuery`], with the simulator's own `wire::thulium::AggregateBy`), and the report
//! itself ([`report`]: select, filter, bucket, group, compute every field, sort), paged with
//! `offset`/`limit` and written as `wire::thulium::SummaryRow`s (004's example row, key for key).
//! Faults and the request log are applied around it by `simulator::faults`.
//!
//! Assumptions where 004 is silent (also in `docs/simulator.md`, section Thulium):
//! - the account is the dataset organization whose `api_token` is the basic-auth password (any
//!   non-empty user name); its zone is its `thulium_account` record's (Europe/Helsinki without one);
//! - `date_from`/`date_to` are local wall-clock times in the account zone, `YYYY-MM-DD HH:MM:SS` or
//!   a bare date (004's own example: `date_from` a bare date is its midnight, `date_to` a bare date
//!   its last second); both ends are inclusive to the whole second: a chat counts when its local
//!   start time lies in `[date_from, date_to + 1 s)`;
//! - chats are selected and bucketed by their local wall-clock time, as a database of local
//!   timestamps would: the two passes of a repeated autumn hour are one range and one bucket;
//! - `series` formats: minute `YYYY-MM-DD HH:MM`, hour `YYYY-MM-DD HH:00`, day `YYYY-MM-DD`,
//!   hour_of_day `HH`, week `YYYY-Www` (ISO), month `YYYY-MM` (004's example), year `YYYY`;
//! - rows exist only for buckets (and users) with at least one chat; sorted by series, then user
//!   name, then login; with `sum_users=true` one row per series whose `user_name` is null;
//! - durations are `HH:MM:SS` (averages rounded to the nearest second), percentages have two
//!   decimals, and an empty set gives `00:00:00` and 0 (004's example shows 0 for no ratings);
//! - an unknown or repeated single-valued parameter, a `limit` outside 1..=100 and an unknown
//!   `aggregate_by` are 400s naming the parameter.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SimState;
use super::chat_sessions::ApiError;
use super::dataset::{DatasetSpec, Organization};
use super::wire::thulium::{AggregateBy, Durations, Percent, Rates, RatingSummary, SummaryRow};
use crate::time::{local_day_start, serde_ms_utc};

/// The report's path.
pub const PATH: &str = "/api/chats/reports/summary";

/// The zone of an account without a `thulium_account` record.
pub const DEFAULT_ACCOUNT_ZONE: Tz = chrono_tz::Europe::Helsinki;

/// A Thulium account (one per dataset organization) and the zone its reports are in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThuliumAccount {
    pub organization_id: String,
    /// IANA name: `date_from`/`date_to` are read and `series` written in it.
    #[serde(serialize_with = "tz_name", deserialize_with = "tz_parse")]
    pub time_zone: Tz,
}

fn tz_name<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

fn tz_parse<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    crate::time::parse_tz(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// A chat's rating, if the visitor gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Sad,
    Neutral,
    Happy,
}

/// One chat of a Thulium account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThuliumChat {
    /// The account (a dataset organization).
    pub organization_id: String,
    /// When the chat started; what `date_from`/`date_to` and buckets are measured against.
    #[serde(with = "serde_ms_utc")]
    pub started_at: DateTime<Utc>,
    /// The user (agent) the chat was routed to; every chat has one.
    pub user_login: String,
    pub user_name: String,
    pub chat_queue_id: u32,
    /// A bot took the chat first.
    pub to_bot: bool,
    /// The bot handed the chat to an agent.
    pub transferred_by_bot: bool,
    /// The bot finished the chat itself.
    pub finished_by_bot: bool,
    /// The visitor never wrote anything.
    pub empty: bool,
    /// An agent answered.
    pub answered: bool,
    /// The visitor left before an agent answered.
    pub abandoned: bool,
    /// Seconds in the agent queue before an agent took the chat (or the visitor left).
    pub wait_seconds: u32,
    /// Seconds from the agent taking the chat to its end (answered chats).
    pub chat_seconds: u32,
    /// Seconds from the chat's start to the agent's first message (answered chats only).
    pub first_response_seconds: Option<u32>,
    pub rating: Option<Rating>,
}

// ---------------------------------------------------------------------------------------------
// Generation

const FIRST_NAMES: [&str; 20] = [
    "Anna",
    "Jan",
    "Piotr",
    "Katarzyna",
    "Tomasz",
    "Agnieszka",
    "Marek",
    "Magdalena",
    "Paweł",
    "Joanna",
    "Krzysztof",
    "Ewa",
    "Michał",
    "Monika",
    "Adam",
    "Barbara",
    "Łukasz",
    "Zofia",
    "Jakub",
    "Natalia",
];
const LAST_NAMES: [&str; 20] = [
    "Nowak",
    "Wójcik",
    "Kowalczyk",
    "Woźniak",
    "Mazur",
    "Krawczyk",
    "Kaczmarek",
    "Zając",
    "Król",
    "Wieczorek",
    "Wróbel",
    "Stępień",
    "Dudek",
    "Pawlak",
    "Walczak",
    "Sikora",
    "Baran",
    "Michalak",
    "Szewczyk",
    "Adamczyk",
];

/// User `i` of an account: (login, name), both unique within the account.
pub fn user(i: usize) -> (String, String) {
    let n = FIRST_NAMES.len();
    let (first, last) = (FIRST_NAMES[i % n], LAST_NAMES[(i / n + i) % n]);
    // (i % 20, (i / 20 + i) % 20) differ for every i below 400; later users get a number.
    let round = i / (n * n);
    let suffix = if round == 0 { String::new() } else { format!(" {}", round + 1) };
    let ascii = |s: &str| -> String {
        s.to_lowercase()
            .chars()
            .map(|c| match c {
                'ą' => 'a',
                'ć' => 'c',
                'ę' => 'e',
                'ł' => 'l',
                'ń' => 'n',
                'ó' => 'o',
                'ś' => 's',
                'ź' | 'ż' => 'z',
                c => c,
            })
            .collect()
    };
    let login = format!("{}.{}{}", ascii(first), ascii(last), suffix.trim());
    (login, format!("{first} {last}{suffix}"))
}

/// The Thulium accounts and chats of `spec`: one account per organization in `spec.time_zone`,
/// `spec.thulium_users_per_org` users each, and 1 to 4 chats per user and local day (the first
/// user also has one at local midnight and one at the day's last millisecond). Nothing when the
/// spec has no Thulium users.
pub fn generate(spec: &DatasetSpec, organizations: &[Organization]) -> (Vec<ThuliumAccount>, Vec<ThuliumChat>) {
    if spec.thulium_users_per_org == 0 {
        return (Vec::new(), Vec::new());
    }
    let tz = spec.time_zone;
    let users: Vec<(String, String)> = (0..spec.thulium_users_per_org as usize).map(user).collect();
    let mut accounts = Vec::new();
    let mut chats = Vec::new();
    for (o, org) in organizations.iter().enumerate() {
        accounts.push(ThuliumAccount { organization_id: org.id.clone(), time_zone: tz });
        for day in 0..spec.days {
            let date = spec.start + Duration::days(day as i64);
            let (lo, hi) = (local_day_start(tz, date), local_day_start(tz, date + Duration::days(1)));
            // A stream per account and day, apart from the giosg generator's.
            let stream = 0x5448_554C_4955_4D00u64 ^ ((o as u64) << 40) ^ u64::from(day);
            let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream);
            let day_ms = (hi - lo).num_milliseconds();
            for (u, (login, name)) in users.iter().enumerate() {
                let mut times: Vec<DateTime<Utc>> = (0..rng.random_range(1..=4))
                    .map(|_| lo + Duration::milliseconds(rng.random_range(0..day_ms)))
                    .collect();
                if u == 0 {
                    times.extend([lo, hi - Duration::milliseconds(1)]);
                }
                for started_at in times {
                    chats.push(chat(&mut rng, &org.id, started_at, login, name));
                }
            }
        }
    }
    sort(&mut chats);
    (accounts, chats)
}

/// One chat with consistent flags: empty chats reach nobody; a bot either finishes a chat or
/// transfers it; chats that reach an agent are answered or abandoned.
fn chat(rng: &mut ChaCha8Rng, org: &str, started_at: DateTime<Utc>, login: &str, name: &str) -> ThuliumChat {
    let empty = rng.random_bool(0.08);
    let to_bot = !empty && rng.random_bool(0.3);
    let transferred_by_bot = to_bot && rng.random_bool(0.4);
    let finished_by_bot = to_bot && !transferred_by_bot;
    let to_agent = !empty && (!to_bot || transferred_by_bot);
    let answered = to_agent && rng.random_bool(0.85);
    let abandoned = to_agent && !answered;
    let wait_seconds = match (answered, abandoned) {
        (true, _) => rng.random_range(0..=120),
        (_, true) => rng.random_range(5..=600),
        _ => 0,
    };
    let chat_seconds = match (answered, finished_by_bot) {
        (true, _) => rng.random_range(30..=2400),
        (_, true) => rng.random_range(10..=300),
        _ => 0,
    };
    let first_response_seconds = answered.then(|| wait_seconds + rng.random_range(0..=40));
    let rating = (answered && rng.random_bool(0.4)).then(|| match rng.random_range(0..20) {
        0..=2 => Rating::Sad,
        3..=7 => Rating::Neutral,
        _ => Rating::Happy,
    });
    ThuliumChat {
        organization_id: org.to_string(),
        started_at,
        user_login: login.to_string(),
        user_name: name.to_string(),
        chat_queue_id: [1, 1, 2, 3][rng.random_range(0..4)],
        to_bot,
        transferred_by_bot,
        finished_by_bot,
        empty,
        answered,
        abandoned,
        wait_seconds,
        chat_seconds,
        first_response_seconds,
        rating,
    }
}

/// The order chats are kept in: by start, then account and login.
pub fn sort(chats: &mut [ThuliumChat]) {
    chats.sort_by(|a, b| {
        (a.started_at, &a.organization_id, &a.user_login).cmp(&(b.started_at, &b.organization_id, &b.user_login))
    });
}

// ---------------------------------------------------------------------------------------------
// The endpoint

/// `GET /api/chats/reports/summary`: basic auth, parameters, the report, one page of it.
pub async fn handler(
    State(state): State<SimState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Vec<SummaryRow>>, ApiError> {
    let org = account(&state, &headers)?;
    let q = SummaryQuery::parse(uri.query().unwrap_or(""))?;
    let dataset = state.dataset();
    let tz = dataset
        .thulium_accounts
        .iter()
        .find(|a| a.organization_id == org)
        .map_or(DEFAULT_ACCOUNT_ZONE, |a| a.time_zone);
    let rows = report(&dataset.thulium_chats, &org, tz, &q);
    Ok(Json(rows.into_iter().skip(q.offset).take(q.limit).collect()))
}

/// The organization whose `api_token` is the basic-auth password (the user name may be anything
/// but empty), or 401.
fn account(state: &SimState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |msg: &str| ApiError(StatusCode::UNAUTHORIZED, msg.to_string());
    let encoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(|| unauthorized("Authentication required (HTTP basic)."))?;
    let decoded = base64_decode(encoded.trim()).and_then(|b| String::from_utf8(b).ok());
    let (user, password) = decoded
        .as_deref()
        .and_then(|s| s.split_once(':'))
        .ok_or_else(|| unauthorized("Malformed basic credentials."))?;
    if user.is_empty() {
        return Err(unauthorized("Invalid user name or password."));
    }
    state
        .dataset()
        .organizations
        .iter()
        .find(|o| o.api_token == password)
        .map(|o| o.id.clone())
        .ok_or_else(|| unauthorized("Invalid user name or password."))
}

/// Standard base64, padded or not (some clients leave the padding off); `None` when malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT.decode(text).ok()
}

/// The parameters of one report request.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryQuery {
    /// Local wall-clock times in the account zone; `date_to` is inclusive to the whole second.
    pub date_from: NaiveDateTime,
    pub date_to: NaiveDateTime,
    pub aggregate_by: AggregateBy,
    pub user_logins: Vec<String>,
    pub chat_queue_ids: Vec<u32>,
    pub sum_users: bool,
    pub response_threshold: u32,
    pub limit: usize,
    pub offset: usize,
}

impl SummaryQuery {
    /// Reads a query string (form-encoded, `user_logins[]` and `chat_queue_ids[]` repeated).
    pub fn parse(query: &str) -> Result<SummaryQuery, ApiError> {
        let bad = |msg: String| ApiError(StatusCode::BAD_REQUEST, msg);
        let url = reqwest::Url::parse(&format!("http://simulator/?{query}"))
            .map_err(|e| bad(format!("invalid query string: {e}")))?;
        let mut single: BTreeMap<String, String> = BTreeMap::new();
        let (mut user_logins, mut chat_queue_ids) = (Vec::new(), Vec::new());
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "user_logins[]" => user_logins.push(value.into_owned()),
                "chat_queue_ids[]" => chat_queue_ids.push(
                    value
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| bad(format!("chat_queue_ids[]: `{value}` is not a queue id")))?,
                ),
                "date_from" | "date_to" | "aggregate_by" | "sum_users" | "response_threshold" | "limit" | "offset" => {
                    if single.insert(key.to_string(), value.into_owned()).is_some() {
                        return Err(bad(format!("{key}: given more than once")));
                    }
                }
                other => return Err(bad(format!("unknown parameter `{other}`"))),
            }
        }
        let date = |key: &str, end_of_day: bool| -> Result<NaiveDateTime, ApiError> {
            let text = single.get(key).ok_or_else(|| bad(format!("{key} is required (YYYY-MM-DD HH:MM:SS)")))?;
            let text = text.trim();
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
                .or_else(|_| {
                    NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| {
                        d.and_time(if end_of_day {
                            NaiveTime::from_hms_opt(23, 59, 59).expect("valid")
                        } else {
                            NaiveTime::MIN
                        })
                    })
                })
                .map_err(|_| bad(format!("{key}: `{text}` is not a date like 2019-11-01 11:12:00")))
        };
        let (date_from, date_to) = (date("date_from", false)?, date("date_to", true)?);
        if date_to < date_from {
            return Err(bad(format!("date_to {date_to} is before date_from {date_from}")));
        }
        let number = |key: &str, default: usize, lo: usize, hi: usize| -> Result<usize, ApiError> {
            match single.get(key) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| bad(format!("{key}: expected a whole number from {lo} to {hi}, got `{v}`"))),
            }
        };
        let aggregate_by = match single.get("aggregate_by").map(|s| s.trim()) {
            None => AggregateBy::Month,
            Some(v) => AggregateBy::parse(v).ok_or_else(|| {
                bad(format!(
                    "aggregate_by: unknown value `{v}` (expected hour_of_day, minute, hour, day, week, month or year)"
                ))
            })?,
        };
        let sum_users = match single.get("sum_users").map(|s| s.trim()) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(v) => return Err(bad(format!("sum_users: expected true or false, got `{v}`"))),
        };
        Ok(SummaryQuery {
            date_from,
            date_to,
            aggregate_by,
            user_logins,
            chat_queue_ids,
            sum_users,
            response_threshold: number("response_threshold", 20, 0, u32::MAX as usize)? as u32,
            limit: number("limit", 100, 1, 100)?,
            offset: number("offset", 0, 0, usize::MAX)?,
        })
    }
}

/// The `series` label of local wall-clock time `t`.
pub fn series(aggregate_by: AggregateBy, t: NaiveDateTime) -> String {
    let format = match aggregate_by {
        AggregateBy::Minute => "%Y-%m-%d %H:%M",
        AggregateBy::Hour => "%Y-%m-%d %H:00",
        AggregateBy::Day => "%Y-%m-%d",
        AggregateBy::HourOfDay => "%H",
        AggregateBy::Week => "%G-W%V",
        AggregateBy::Month => "%Y-%m",
        AggregateBy::Year => "%Y",
    };
    t.format(format).to_string()
}

/// Every row of the report (before paging) for account `org` in zone `tz`.
pub fn report(chats: &[ThuliumChat], org: &str, tz: Tz, q: &SummaryQuery) -> Vec<SummaryRow> {
    // Chats are sorted by instant; a local time is within 15 hours of UTC everywhere.
    let lo = chats.partition_point(|c| c.started_at < q.date_from.and_utc() - Duration::hours(15));
    let hi = chats.partition_point(|c| c.started_at < q.date_to.and_utc() + Duration::hours(16));
    let end = q.date_to + Duration::seconds(1);
    // (series, (user name, login) unless summed over users) → its chats.
    type Group = (String, Option<(String, String)>);
    let mut groups: BTreeMap<Group, Vec<&ThuliumChat>> = BTreeMap::new();
    for c in &chats[lo..hi.max(lo)] {
        let local = c.started_at.with_timezone(&tz).naive_local();
        if c.organization_id != org
            || local < q.date_from
            || local >= end
            || (!q.user_logins.is_empty() && !q.user_logins.contains(&c.user_login))
            || (!q.chat_queue_ids.is_empty() && !q.chat_queue_ids.contains(&c.chat_queue_id))
        {
            continue;
        }
        let user = (!q.sum_users).then(|| (c.user_name.clone(), c.user_login.clone()));
        groups.entry((series(q.aggregate_by, local), user)).or_default().push(c);
    }
    groups
        .into_iter()
        .map(|((series, user), chats)| summary_row(series, user.map(|u| u.0), &chats, q.response_threshold))
        .collect()
}

/// One row: 004's fields over `chats` (see docs/simulator.md for each definition).
fn summary_row(series: String, user_name: Option<String>, chats: &[&ThuliumChat], threshold: u32) -> SummaryRow {
    let count = |f: &dyn Fn(&ThuliumChat) -> bool| chats.iter().filter(|c| f(c)).count() as u64;
    let to_agent = |c: &ThuliumChat| !c.empty && (!c.to_bot || c.transferred_by_bot);
    let answered = count(&|c| c.answered);
    let incoming_to_agent = count(&to_agent);
    let in_time = count(&|c| c.answered && c.first_response_seconds.is_some_and(|s| s <= threshold));
    let picked_up_in_time = count(&|c| c.answered && c.wait_seconds <= threshold);
    let rated = |r: Rating| count(&|c| c.rating == Some(r));
    let (sad, neutral, happy) = (rated(Rating::Sad), rated(Rating::Neutral), rated(Rating::Happy));
    let chat_times: Vec<u32> = chats.iter().filter(|c| c.answered).map(|c| c.chat_seconds).collect();
    let wait_times: Vec<u32> = chats.iter().filter(|c| to_agent(c)).map(|c| c.wait_seconds).collect();
    SummaryRow {
        series,
        user_name,
        incoming: count(&|c| !c.empty),
        incoming_to_agent,
        incoming_including_empty: chats.len() as u64,
        abandoned: count(&|c| c.abandoned),
        answered,
        incoming_to_bot: count(&|c| c.to_bot),
        transferred_by_bot: count(&|c| c.transferred_by_bot),
        finished_by_bot: count(&|c| c.finished_by_bot),
        service_level_percent: percent(in_time, answered),
        chat_time: durations(&chat_times),
        wait_time: durations(&wait_times),
        sla_percent: percent(picked_up_in_time, incoming_to_agent),
        rating: RatingSummary {
            rate: Rates { sad, neutral, happy },
            satisfaction_percent: percent(happy, sad + neutral + happy),
            rated_percent: percent(sad + neutral + happy, answered),
        },
    }
}

/// `100 * part / whole` with two decimals (a whole number is written without a fraction); 0 when
/// `whole` is 0.
fn percent(part: u64, whole: u64) -> Percent {
    if whole == 0 {
        return Percent(0.0);
    }
    Percent((10_000.0 * part as f64 / whole as f64).round() / 100.0)
}

/// `{min, max, sum, avg}` as `HH:MM:SS`, the average rounded to the nearest second (half up);
/// all `00:00:00` for no chats.
fn durations(secs: &[u32]) -> Durations {
    let sum: u64 = secs.iter().map(|s| u64::from(*s)).sum();
    let n = secs.len() as u64;
    let avg = if n == 0 { 0 } else { (2 * sum + n) / (2 * n) };
    let (min, max) = (secs.iter().min().copied().unwrap_or(0), secs.iter().max().copied().unwrap_or(0));
    Durations { min: hms(min.into()), max: hms(max.into()), sum: hms(sum), avg: hms(avg) }
}

/// `HH:MM:SS`; hours grow past 99 when they must.
pub fn hms(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn series_labels_for_every_aggregate_by() {
        let t = naive("2024-12-30 07:05:09");
        let got: Vec<String> = [
            AggregateBy::Minute,
            AggregateBy::Hour,
            AggregateBy::Day,
            AggregateBy::HourOfDay,
            AggregateBy::Week,
            AggregateBy::Month,
            AggregateBy::Year,
        ]
        .into_iter()
        .map(|a| series(a, t))
        .collect();
        assert_eq!(got, ["2024-12-30 07:05", "2024-12-30 07:00", "2024-12-30", "07", "2025-W01", "2024-12", "2024"]);
    }

    #[test]
    fn parameters_are_validated() {
        let q = SummaryQuery::parse(
            "user_logins%5B%5D=a&user_logins[]=b&date_from=2025-10-17&date_to=2025-11-16&aggregate_by=day",
        )
        .unwrap();
        assert_eq!(q.user_logins, ["a", "b"]);
        assert_eq!((q.date_from, q.date_to), (naive("2025-10-17 00:00:00"), naive("2025-11-16 23:59:59")));
        assert_eq!((q.limit, q.offset, q.response_threshold, q.sum_users), (100, 0, 20, false));
        let q = SummaryQuery::parse("date_from=2019-11-01+11%3A12%3A00&date_to=2019-11-02 11:12:00").unwrap();
        assert_eq!(q.aggregate_by, AggregateBy::Month, "month is the default");
        assert_eq!(q.date_to, naive("2019-11-02 11:12:00"));
        let err = |s: &str| SummaryQuery::parse(s).unwrap_err().1;
        let ok = "date_from=2024-01-01&date_to=2024-01-02";
        assert!(err("date_to=2024-01-01").contains("date_from is required"));
        assert!(err(&format!("{ok}&limit=101")).contains("limit"));
        assert!(err(&format!("{ok}&limit=0")).contains("limit"));
        assert!(err(&format!("{ok}&aggregate_by=fortnight")).contains("fortnight"));
        assert!(err(&format!("{ok}&user_login[]=x")).contains("user_login[]"));
        assert!(err(&format!("{ok}&offset=1&offset=2")).contains("more than once"));
        assert!(err("date_from=2024-01-02&date_to=2024-01-01").contains("before"));
        assert!(err("date_from=2024-01-01T00:00:00&date_to=2024-01-02").contains("date_from"));
    }

    #[test]
    fn base64_round_trips_what_reqwest_sends() {
        assert_eq!(base64_decode("YXBpX3VzZXI6YXBpX3Bhc3M=").unwrap(), b"api_user:api_pass");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y").is_none() && base64_decode("a$==").is_none());
    }

    #[test]
    fn users_have_unique_logins_and_names() {
        let users: Vec<_> = (0..900).map(user).collect();
        let logins: std::collections::HashSet<_> = users.iter().map(|u| &u.0).collect();
        let names: std::collections::HashSet<_> = users.iter().map(|u| &u.1).collect();
        assert_eq!((logins.len(), names.len()), (900, 900));
        assert_eq!(user(0), ("anna.nowak".to_string(), "Anna Nowak".to_string()));
        assert!(users.iter().all(|(l, _)| l.is_ascii() && !l.contains(' ')));
    }

    fn chat(at: &str, login: &str, f: impl FnOnce(&mut ThuliumChat)) -> ThuliumChat {
        let mut c = ThuliumChat {
            organization_id: "org".into(),
            started_at: DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc),
            user_login: login.into(),
            user_name: login.to_uppercase(),
            chat_queue_id: 1,
            to_bot: false,
            transferred_by_bot: false,
            finished_by_bot: false,
            empty: false,
            answered: true,
            abandoned: false,
            wait_seconds: 10,
            chat_seconds: 100,
            first_response_seconds: Some(15),
            rating: None,
        };
        f(&mut c);
        c
    }

    #[test]
    fn fields_follow_their_definitions() {
        let chats = vec![
            chat("2024-10-27T00:30:00Z", "a", |c| c.rating = Some(Rating::Happy)),
            // The second pass of Helsinki's repeated 03:00 hour: the same local hour.
            chat("2024-10-27T01:30:00Z", "a", |c| {
                c.wait_seconds = 30;
                c.first_response_seconds = Some(31);
                c.chat_seconds = 51;
                c.rating = Some(Rating::Sad);
            }),
            chat("2024-10-27T01:40:00Z", "a", |c| {
                c.answered = false;
                c.abandoned = true;
                c.wait_seconds = 200;
                c.first_response_seconds = None;
            }),
            chat("2024-10-27T01:50:00Z", "a", |c| {
                c.empty = true;
                c.answered = false;
                c.wait_seconds = 0;
                c.first_response_seconds = None;
            }),
            chat("2024-10-27T01:55:00Z", "a", |c| {
                c.to_bot = true;
                c.finished_by_bot = true;
                c.answered = false;
                c.wait_seconds = 0;
                c.first_response_seconds = None;
            }),
            chat("2024-10-27T01:56:00Z", "b", |_| {}),
        ];
        let q =
            SummaryQuery::parse("date_from=2024-10-27 03:00:00&date_to=2024-10-27 03:59:59&aggregate_by=hour").unwrap();
        let as_json = |rows: Vec<SummaryRow>| -> Vec<Value> { rows.iter().map(|r| json!(r)).collect() };
        let rows = as_json(report(&chats, "org", DEFAULT_ACCOUNT_ZONE, &q));
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(a["series"], "2024-10-27 03:00");
        assert_eq!(a["user_name"], "A");
        let n = |k: &str| a[k].as_f64().unwrap();
        assert_eq!(
            [n("incoming_including_empty"), n("incoming"), n("incoming_to_bot"), n("finished_by_bot")],
            [5.0, 4.0, 1.0, 1.0]
        );
        assert_eq!([n("incoming_to_agent"), n("answered"), n("abandoned")], [3.0, 2.0, 1.0]);
        // First responses 15 and 31 s against the default 20 s; waits 10, 30 and 200 s.
        assert_eq!(n("service_level_percent"), 50.0);
        assert_eq!(n("sla_percent"), 33.33);
        assert_eq!(a["chat_time"], json!({"min": "00:00:51", "max": "00:01:40", "sum": "00:02:31", "avg": "00:01:16"}));
        assert_eq!(a["wait_time"], json!({"min": "00:00:10", "max": "00:03:20", "sum": "00:04:00", "avg": "00:01:20"}));
        assert_eq!(
            a["rating"],
            json!({"rate": {"sad": 1, "neutral": 0, "happy": 1}, "satisfaction_percent": 50, "rated_percent": 100})
        );

        let summed = SummaryQuery { sum_users: true, response_threshold: 40, ..q.clone() };
        let rows = as_json(report(&chats, "org", DEFAULT_ACCOUNT_ZONE, &summed));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["user_name"], Value::Null);
        assert_eq!(rows[0]["incoming_including_empty"], 6);
        assert_eq!(rows[0]["service_level_percent"], 100);
        let only_b = SummaryQuery { user_logins: vec!["b".into()], ..q.clone() };
        assert_eq!(report(&chats, "org", DEFAULT_ACCOUNT_ZONE, &only_b).len(), 1);
        let queue_2 = SummaryQuery { chat_queue_ids: vec![2], ..q };
        assert!(report(&chats, "org", DEFAULT_ACCOUNT_ZONE, &queue_2).is_empty());
    }

    #[test]
    fn generated_chats_are_deterministic_consistent_and_leave_giosg_rows_alone() {
        use crate::simulator::dataset::{Dataset, generate as dataset};
        let spec = DatasetSpec {
            start: NaiveDate::from_ymd_opt(2024, 10, 26).unwrap(),
            days: 3,
            sessions_per_day: 20,
            thulium_users_per_org: 5,
            ..DatasetSpec::default()
        };
        let with = dataset(&spec);
        let without = dataset(&DatasetSpec { thulium_users_per_org: 0, ..spec.clone() });
        assert_eq!(with.chat_session_rows, without.chat_session_rows, "giosg rows do not depend on Thulium");
        assert!(without.thulium_chats.is_empty() && without.thulium_accounts.is_empty());
        assert_eq!(with, dataset(&spec));
        assert_eq!(with.thulium_accounts.len(), with.organizations.len());
        for c in &with.thulium_chats {
            assert!(!(c.empty && (c.to_bot || c.answered || c.abandoned)), "{c:?}");
            assert!(!(c.answered && c.abandoned) && (c.transferred_by_bot || c.finished_by_bot) == c.to_bot, "{c:?}");
            assert_eq!(c.first_response_seconds.is_some(), c.answered, "{c:?}");
            assert!(c.rating.is_none() || c.answered, "{c:?}");
        }
        // Every user chats every local day of every account.
        let days: std::collections::HashSet<(&str, &str, NaiveDate)> = with
            .thulium_chats
            .iter()
            .map(|c| {
                (
                    c.organization_id.as_str(),
                    c.user_login.as_str(),
                    c.started_at.with_timezone(&spec.time_zone).date_naive(),
                )
            })
            .collect();
        assert_eq!(days.len(), with.organizations.len() * 5 * 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.jsonl");
        with.write(&path).unwrap();
        assert_eq!(Dataset::read(&path).unwrap(), with);
    }

    #[test]
    fn durations_render_past_99_hours() {
        assert_eq!(hms(0), "00:00:00");
        assert_eq!(hms(48), "00:00:48");
        assert_eq!(hms(360_000 + 61), "100:01:01");
    }
}

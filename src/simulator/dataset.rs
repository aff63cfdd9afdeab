//! The simulator's synthetic dataset: organizations, giosg chat-session rows and events, Thulium
//! chats, giosg real-time state and Comm100 sites, agents and queues.
//!
//! Owns: the record types of the dataset file (JSON Lines, one `{"kind": …}` object per line; the
//! format is documented in `docs/simulator.md`), the deterministic generator, and reading and
//! writing the file. To add a record kind for a new API: add a variant to [`Record`], a field to
//! [`Dataset`], generate it in [`generate`], and document it.
//!
//! A chat session expands into one row per scope exactly as api-docs 002 describes: one `org` row
//! for the room owner organization, one `team` row per chatted team and one `user` row per chatted
//! user, each with the scope's own `user_message_count`, `order_count` and sales.
//!
//! The records of the other APIs (giosg events, Thulium, giosg real-time, Comm100) are generated
//! by their own simulator modules (`events`, `thulium`, `realtime`, `comm100`) from random streams
//! of their own, after the chat sessions, so a seed's chat sessions never change.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::comm100::{Comm100Agent, Comm100Department, Comm100QueueEntry, Comm100Records, Comm100Site};
use super::realtime::{OrgPeople, RealtimeRoom, RealtimeUser};
use super::thulium::{ThuliumAccount, ThuliumChat};
use crate::time::serde_ms_utc;

/// An organization of the dataset and the API token that may read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Organization {
    pub id: String,
    pub name: String,
    /// The `Authorization: Token …` key that may read this organization (and no other).
    pub api_token: String,
}

/// One row of giosg's chat session database (api-docs 002), for one scope of one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSessionRow {
    /// When the chat session started; what `interval` and buckets are measured against.
    #[serde(with = "serde_ms_utc")]
    pub time: DateTime<Utc>,
    pub chat_session_id: String,
    /// `org`, `team` or `user`.
    pub scope: String,
    /// `visitor`, `external`, `operator`, `group` or `task`.
    pub chat_type: String,
    /// `autosuggest`, `visitor`, `operator` or `rule`.
    pub chat_initiator: String,
    /// Organizations of users who sent messages (org scope only; empty otherwise).
    pub chatted_organization_ids: Vec<String>,
    pub order_count: i64,
    pub owner_organization_id: String,
    pub room_ids: Vec<String>,
    pub sales: f64,
    pub subscription_sales: f64,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub user_message_count: i64,
    pub user_organization_id: Option<String>,
    pub visitor_ids: Vec<String>,
    pub visitor_message_count: i64,
    pub visitor_session_ids: Vec<String>,
}

/// One line of the dataset file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Organization(Organization),
    ChatSessionRow(Box<ChatSessionRow>),
    Event(Box<super::events::Event>),
    ThuliumAccount(ThuliumAccount),
    ThuliumChat(Box<ThuliumChat>),
    RealtimeRoom(Box<RealtimeRoom>),
    RealtimeUser(Box<RealtimeUser>),
    Comm100Department(Comm100Department),
    Comm100Agent(Box<Comm100Agent>),
    Comm100QueueEntry(Box<Comm100QueueEntry>),
    Comm100Site(Comm100Site),
}

/// [`Record`] by reference, for writing without copying rows.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RecordRef<'a> {
    Organization(&'a Organization),
    ChatSessionRow(&'a ChatSessionRow),
    Event(&'a super::events::Event),
    ThuliumAccount(&'a ThuliumAccount),
    ThuliumChat(&'a ThuliumChat),
    RealtimeRoom(&'a RealtimeRoom),
    RealtimeUser(&'a RealtimeUser),
    Comm100Department(&'a Comm100Department),
    Comm100Agent(&'a Comm100Agent),
    Comm100QueueEntry(&'a Comm100QueueEntry),
    Comm100Site(&'a Comm100Site),
}

/// Everything the simulator serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    pub organizations: Vec<Organization>,
    /// Sorted by `time` (then session id and scope), so a time range is a slice.
    pub chat_session_rows: Vec<ChatSessionRow>,
    /// giosg events (events and workflow endpoints), sorted by `time`.
    pub events: Vec<super::events::Event>,
    /// Thulium accounts (their zones), one per organization that has Thulium chats.
    pub thulium_accounts: Vec<ThuliumAccount>,
    /// Thulium chats, sorted by `started_at` (then account and login).
    pub thulium_chats: Vec<ThuliumChat>,
    /// giosg real-time rooms and operators (`simulator::realtime`).
    pub realtime_rooms: Vec<RealtimeRoom>,
    pub realtime_users: Vec<RealtimeUser>,
    /// Comm100 sites, departments, agents and queues (`simulator::comm100`).
    pub comm100: Comm100Records,
}

/// The knobs of the generator. Same spec, same dataset, byte for byte.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub seed: u64,
    /// First local date generated.
    pub start: NaiveDate,
    pub days: u32,
    pub organizations: u32,
    pub rooms_per_org: u32,
    pub teams_per_org: u32,
    pub users_per_org: u32,
    /// Average sessions per day across organizations (weekdays busier than weekends).
    pub sessions_per_day: u32,
    /// The zone whose wall clock drives daily seasonality and the midnight-edge sessions.
    pub time_zone: Tz,
    /// API token of the first organization; organization `i > 0` gets `<token>-org<i>`.
    pub token: String,
    /// Thulium users (agents) per organization, each with 1 to 4 chats a day (0: no Thulium data).
    pub thulium_users_per_org: u32,
    /// Comm100 agents per organization (site).
    pub comm100_agents: u32,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        DatasetSpec {
            seed: 42,
            start: NaiveDate::from_ymd_opt(2024, 3, 25).expect("valid date"),
            days: 14,
            organizations: 2,
            rooms_per_org: 4,
            teams_per_org: 3,
            users_per_org: 12,
            sessions_per_day: 200,
            time_zone: chrono_tz::Europe::Helsinki,
            token: "sim-token".to_string(),
            thulium_users_per_org: 12,
            comm100_agents: 12,
        }
    }
}

impl Dataset {
    /// Reads a dataset file (JSON Lines). Errors name the file and line.
    pub fn read(path: &Path) -> Result<Dataset, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open dataset {}: {e}", path.display()))?;
        let mut dataset = Dataset::default();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("cannot read dataset {}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: invalid dataset record: {e}", path.display(), i + 1))?;
            dataset.push(record);
        }
        dataset.finish();
        Ok(dataset)
    }

    /// Writes the dataset as JSON Lines: organizations first, then rows in time order.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let err = |e: std::io::Error| format!("cannot write dataset {}: {e}", path.display());
        let file = std::fs::File::create(path).map_err(err)?;
        let mut out = std::io::BufWriter::new(file);
        for org in &self.organizations {
            serde_json::to_writer(&mut out, &RecordRef::Organization(org)).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(err)?;
        }
        for row in &self.chat_session_rows {
            serde_json::to_writer(&mut out, &RecordRef::ChatSessionRow(row)).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(err)?;
        }
        for event in &self.events {
            serde_json::to_writer(&mut out, &RecordRef::Event(event)).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(err)?;
        }
        for account in &self.thulium_accounts {
            serde_json::to_writer(&mut out, &RecordRef::ThuliumAccount(account)).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(err)?;
        }
        for chat in &self.thulium_chats {
            serde_json::to_writer(&mut out, &RecordRef::ThuliumChat(chat)).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(err)?;
        }
        let c = &self.comm100;
        let realtime = self.realtime_rooms.iter().map(RecordRef::RealtimeRoom);
        let realtime = realtime.chain(self.realtime_users.iter().map(RecordRef::RealtimeUser));
        let comm100 = c.departments.iter().map(RecordRef::Comm100Department);
        let comm100 = comm100.chain(c.agents.iter().map(RecordRef::Comm100Agent));
        let comm100 = comm100.chain(c.queue.iter().map(RecordRef::Comm100QueueEntry));
        let comm100 = comm100.chain(c.sites.iter().map(RecordRef::Comm100Site));
        for record in realtime.chain(comm100) {
            serde_json::to_writer(&mut out, &record).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(err)?;
        }
        out.flush().map_err(err)
    }

    fn push(&mut self, record: Record) {
        match record {
            Record::Organization(o) => self.organizations.push(o),
            Record::ChatSessionRow(r) => self.chat_session_rows.push(*r),
            Record::Event(e) => self.events.push(*e),
            Record::ThuliumAccount(a) => self.thulium_accounts.push(a),
            Record::ThuliumChat(c) => self.thulium_chats.push(*c),
            Record::RealtimeRoom(r) => self.realtime_rooms.push(*r),
            Record::RealtimeUser(u) => self.realtime_users.push(*u),
            Record::Comm100Department(d) => self.comm100.departments.push(d),
            Record::Comm100Agent(a) => self.comm100.agents.push(*a),
            Record::Comm100QueueEntry(q) => self.comm100.queue.push(*q),
            Record::Comm100Site(s) => self.comm100.sites.push(s),
        }
    }

    /// Sorts rows and, for a file without organization records, derives the organizations from
    /// the rows' owners (all readable with the token `sim-token`).
    fn finish(&mut self) {
        self.events.sort_by_key(|e| e.time);
        super::thulium::sort(&mut self.thulium_chats);
        self.chat_session_rows.sort_by(|a, b| {
            (a.time, &a.chat_session_id, scope_rank(&a.scope), &a.team_id, &a.user_id).cmp(&(
                b.time,
                &b.chat_session_id,
                scope_rank(&b.scope),
                &b.team_id,
                &b.user_id,
            ))
        });
        if self.organizations.is_empty() {
            let mut seen = std::collections::BTreeSet::new();
            for row in &self.chat_session_rows {
                if seen.insert(row.owner_organization_id.clone()) {
                    self.organizations.push(Organization {
                        id: row.owner_organization_id.clone(),
                        name: row.owner_organization_id.clone(),
                        api_token: "sim-token".to_string(),
                    });
                }
            }
        }
    }

    /// Rows whose `time` lies in `[start, end]` (both inclusive).
    pub fn rows_between(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> &[ChatSessionRow] {
        let rows = &self.chat_session_rows;
        let lo = rows.partition_point(|r| r.time < start);
        let hi = rows.partition_point(|r| r.time <= end);
        &rows[lo..hi.max(lo)]
    }
}

fn scope_rank(scope: &str) -> u8 {
    match scope {
        "org" => 0,
        "team" => 1,
        _ => 2,
    }
}

/// A deterministic UUID-shaped id (version 4 layout) from the generator's stream.
pub(super) fn uuid(rng: &mut ChaCha8Rng) -> String {
    let a: u128 = rng.random();
    let a = (a & !(0xF000u128 << 64) & !(0xC000u128 << 48)) | (0x4000u128 << 64) | (0x8000u128 << 48);
    let h = format!("{a:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// An organization's people and places, which every API's records are generated from.
pub(super) struct Org {
    pub id: String,
    pub rooms: Vec<String>,
    pub teams: Vec<String>,
    /// (user id, index into `teams`)
    pub users: Vec<(String, usize)>,
    pub visitors: Vec<String>,
}

/// A user who sent messages into a session.
struct Chatter {
    org: usize,
    user: usize,
    messages: i64,
    /// Seconds after the session started when the user joined.
    joined_secs: i64,
}

/// Hour-of-day weights (local wall clock): quiet nights, a late-morning peak, a busy evening.
pub(super) const HOUR_WEIGHTS: [u32; 24] =
    [2, 1, 1, 1, 1, 2, 4, 8, 14, 18, 20, 20, 18, 17, 17, 16, 14, 12, 12, 13, 12, 9, 6, 3];

pub(super) fn weekday_factor(day: Weekday) -> f64 {
    match day {
        Weekday::Mon => 1.15,
        Weekday::Tue => 1.1,
        Weekday::Wed => 1.05,
        Weekday::Thu => 1.0,
        Weekday::Fri => 0.95,
        Weekday::Sat => 0.6,
        Weekday::Sun => 0.5,
    }
}

pub(super) fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Picks index `i` with probability `weights[i] / sum(weights)`.
pub(super) fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Generates the dataset of `spec`.
pub fn generate(spec: &DatasetSpec) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n_orgs = spec.organizations.max(1) as usize;
    let mut organizations = Vec::new();
    let mut orgs = Vec::new();
    let visitor_pool = (spec.sessions_per_day as usize * spec.days as usize / 3).max(10);
    for i in 0..n_orgs {
        let id = uuid(&mut rng);
        let api_token = if i == 0 { spec.token.clone() } else { format!("{}-org{i}", spec.token) };
        organizations.push(Organization { id: id.clone(), name: format!("Simulated Org {}", i + 1), api_token });
        let rooms = (0..spec.rooms_per_org.max(1)).map(|_| uuid(&mut rng)).collect();
        let teams: Vec<String> = (0..spec.teams_per_org.max(1)).map(|_| uuid(&mut rng)).collect();
        let users = (0..spec.users_per_org.max(1) as usize).map(|u| (uuid(&mut rng), u % teams.len())).collect();
        let visitors = (0..visitor_pool).map(|_| uuid(&mut rng)).collect();
        orgs.push(Org { id, rooms, teams, users, visitors });
    }

    let mut rows = Vec::new();
    for day in 0..spec.days {
        let date = spec.start + Duration::days(day as i64);
        // Each day draws from its own stream, so one day's data does not depend on the others.
        let mut day_rng =
            ChaCha8Rng::seed_from_u64(spec.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(day as u64 + 1)));
        let expected = spec.sessions_per_day as f64 * weekday_factor(date.weekday());
        let n = (expected * day_rng.random_range(0.85..1.15)).round() as usize;
        let mut times = Vec::with_capacity(n + 3);
        for _ in 0..n {
            let hour = weighted(&mut day_rng, &HOUR_WEIGHTS) as u32;
            let ms = day_rng.random_range(0..3_600_000u32);
            let local = NaiveTime::from_hms_milli_opt(hour, ms / 60_000, (ms / 1000) % 60, ms % 1000).expect("valid");
            let naive = date.and_time(local);
            match spec.time_zone.classify_local(naive) {
                // The hour skipped by a spring-forward change has no sessions, as in real life;
                // the repeated autumn hour gets sessions on both of its passes.
                LocalTime::Gap => continue,
                LocalTime::One(t) => times.push(t),
                LocalTime::Two(a, b) => times.push(if day_rng.random_bool(0.5) { a } else { b }),
            }
        }
        // Sessions a millisecond either side of local midnight (and at midnight exactly).
        let midnight = crate::time::local_day_start(spec.time_zone, date);
        let next = crate::time::local_day_start(spec.time_zone, date + Duration::days(1));
        times.extend([midnight, midnight + Duration::milliseconds(1), next - Duration::milliseconds(1)]);
        for t in times {
            session_rows(&mut day_rng, &orgs, t, &mut rows);
        }
    }
    let events = super::events::generate(spec, &orgs);
    let (thulium_accounts, thulium_chats) = super::thulium::generate(spec, &organizations);
    let mut dataset = Dataset {
        organizations,
        chat_session_rows: rows,
        events,
        thulium_accounts,
        thulium_chats,
        ..Dataset::default()
    };
    let people: Vec<OrgPeople> =
        orgs.iter().map(|o| OrgPeople { id: &o.id, rooms: &o.rooms, teams: &o.teams, users: &o.users }).collect();
    (dataset.realtime_rooms, dataset.realtime_users) = super::realtime::generate(spec, &people);
    dataset.comm100 = super::comm100::generate(spec, &dataset.organizations);
    dataset.finish();
    dataset
}

enum LocalTime {
    Gap,
    One(DateTime<Utc>),
    Two(DateTime<Utc>, DateTime<Utc>),
}

trait ClassifyLocal {
    fn classify_local(&self, naive: chrono::NaiveDateTime) -> LocalTime;
}

impl ClassifyLocal for Tz {
    fn classify_local(&self, naive: chrono::NaiveDateTime) -> LocalTime {
        use chrono::{LocalResult, TimeZone};
        match self.from_local_datetime(&naive) {
            LocalResult::None => LocalTime::Gap,
            LocalResult::Single(t) => LocalTime::One(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => LocalTime::Two(a.with_timezone(&Utc), b.with_timezone(&Utc)),
        }
    }
}

/// Money with two decimals, as shops report it.
fn money(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> f64 {
    rng.random_range(lo * 100..hi * 100) as f64 / 100.0
}

/// Generates one chat session starting at `time` and appends its rows (org, teams, users).
fn session_rows(rng: &mut ChaCha8Rng, orgs: &[Org], time: DateTime<Utc>, rows: &mut Vec<ChatSessionRow>) {
    let owner = if orgs.len() == 1 || rng.random_bool(0.7) { 0 } else { rng.random_range(1..orgs.len()) };
    let org = &orgs[owner];
    let chat_type = ["visitor", "external", "operator", "group", "task"][weighted(rng, &[70, 10, 8, 6, 6])];
    let with_visitors = matches!(chat_type, "visitor" | "external");
    let chat_initiator = if with_visitors {
        ["visitor", "autosuggest", "operator", "rule"][weighted(rng, &[50, 28, 12, 10])]
    } else {
        "operator"
    };

    // Rooms: mostly one, the popular ones more often.
    let room_weights: Vec<u32> = (0..org.rooms.len() as u32).map(|i| 8 / (i + 1) + 1).collect();
    let mut room_ids = vec![org.rooms[weighted(rng, &room_weights)].clone()];
    if org.rooms.len() > 1 && rng.random_bool(0.15) {
        let other = pick(rng, &org.rooms).clone();
        if !room_ids.contains(&other) {
            room_ids.push(other);
        }
    }

    // Visitors and their messages.
    let (visitor_ids, visitor_session_ids, visitor_message_count) = if with_visitors {
        let n = if rng.random_bool(0.9) { 1 } else { 2 };
        let ids: Vec<String> = (0..n).map(|_| pick(rng, &org.visitors).clone()).collect();
        let mut ids = ids;
        ids.dedup();
        let sessions = ids.iter().map(|_| uuid(rng)).collect();
        let silent = if chat_initiator == "autosuggest" { 0.45 } else { 0.1 };
        let messages = if rng.random_bool(silent) { 0 } else { rng.random_range(1..=9) };
        (ids, sessions, messages)
    } else {
        (Vec::new(), Vec::new(), 0)
    };

    // Users who sent messages: none (unanswered) to a few, now and then from a partner org.
    let n_chatters = match chat_type {
        "group" => rng.random_range(2..=4),
        "operator" | "task" => rng.random_range(1..=2),
        _ => [0, 1, 2, 3][weighted(rng, &[15, 60, 20, 5])],
    };
    let mut chatters: Vec<Chatter> = Vec::new();
    let mut joined_secs = rng.random_range(3..90);
    for k in 0..n_chatters {
        let from = if k > 0 && orgs.len() > 1 && rng.random_bool(0.25) {
            (owner + rng.random_range(1..orgs.len())) % orgs.len()
        } else {
            owner
        };
        let user = rng.random_range(0..orgs[from].users.len());
        if chatters.iter().any(|c| c.org == from && c.user == user) {
            continue;
        }
        let messages = [1, 1, 2, 2, 3, 4, 5, 8][rng.random_range(0..8)];
        chatters.push(Chatter { org: from, user, messages, joined_secs });
        joined_secs += rng.random_range(30..900);
    }

    // Orders: during the chat or up to 24 hours after (api-docs 001), each with its own time.
    let mut orders: Vec<(i64, f64)> = Vec::new();
    let mut subscription: Option<(i64, f64)> = None;
    if with_visitors && visitor_message_count > 0 && rng.random_bool(0.18) {
        let n = [1, 1, 1, 1, 1, 1, 1, 2, 2, 3][rng.random_range(0..10)];
        for _ in 0..n {
            orders.push((rng.random_range(0..86_400), money(rng, 5, 400)));
        }
        if rng.random_bool(0.2) {
            subscription = Some((rng.random_range(0..86_400), money(rng, 9, 50)));
        }
    }
    let sales_after = |from_secs: i64| -> (i64, f64, f64) {
        let mine: Vec<&(i64, f64)> = orders.iter().filter(|(at, _)| *at >= from_secs).collect();
        let sales = mine.iter().map(|(_, v)| v).sum::<f64>();
        let sub = subscription.filter(|(at, _)| *at >= from_secs).map_or(0.0, |(_, v)| v);
        (mine.len() as i64, round_cents(sales), sub)
    };

    let session_id = uuid(rng);
    let base = ChatSessionRow {
        time,
        chat_session_id: session_id,
        scope: "org".into(),
        chat_type: chat_type.into(),
        chat_initiator: chat_initiator.into(),
        chatted_organization_ids: Vec::new(),
        order_count: 0,
        owner_organization_id: org.id.clone(),
        room_ids,
        sales: 0.0,
        subscription_sales: 0.0,
        team_id: None,
        user_id: None,
        user_message_count: 0,
        user_organization_id: None,
        visitor_ids,
        visitor_message_count,
        visitor_session_ids,
    };

    // The org row: the owner organization's users' messages, every order.
    let mut chatted_orgs: Vec<String> = chatters.iter().map(|c| orgs[c.org].id.clone()).collect();
    chatted_orgs.sort();
    chatted_orgs.dedup();
    let (order_count, sales, subscription_sales) = sales_after(0);
    rows.push(ChatSessionRow {
        chatted_organization_ids: chatted_orgs,
        order_count,
        sales,
        subscription_sales,
        user_message_count: chatters.iter().filter(|c| c.org == owner).map(|c| c.messages).sum(),
        ..base.clone()
    });

    // One row per chatted team: its users' messages, orders after the team's first join.
    let mut teams: BTreeMap<(usize, usize), (i64, i64)> = BTreeMap::new();
    for c in &chatters {
        let team = orgs[c.org].users[c.user].1;
        let entry = teams.entry((c.org, team)).or_insert((0, i64::MAX));
        entry.0 += c.messages;
        entry.1 = entry.1.min(c.joined_secs);
    }
    for ((o, team), (messages, joined)) in teams {
        let (order_count, sales, subscription_sales) = sales_after(joined);
        rows.push(ChatSessionRow {
            scope: "team".into(),
            team_id: Some(orgs[o].teams[team].clone()),
            user_message_count: messages,
            order_count,
            sales,
            subscription_sales,
            ..base.clone()
        });
    }

    // One row per chatted user.
    for c in &chatters {
        let (order_count, sales, subscription_sales) = sales_after(c.joined_secs);
        rows.push(ChatSessionRow {
            scope: "user".into(),
            user_id: Some(orgs[c.org].users[c.user].0.clone()),
            user_organization_id: Some(orgs[c.org].id.clone()),
            user_message_count: c.messages,
            order_count,
            sales,
            subscription_sales,
            ..base.clone()
        });
    }
}

fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DatasetSpec {
        DatasetSpec { days: 3, sessions_per_day: 50, ..DatasetSpec::default() }
    }

    #[test]
    fn same_spec_same_dataset() {
        assert_eq!(generate(&small()), generate(&small()));
        let other = generate(&DatasetSpec { seed: 7, ..small() });
        assert_ne!(generate(&small()).chat_session_rows, other.chat_session_rows);
    }

    #[test]
    fn every_session_has_one_org_row_and_consistent_scopes() {
        let ds = generate(&small());
        let mut by_session: BTreeMap<&str, Vec<&ChatSessionRow>> = BTreeMap::new();
        for r in &ds.chat_session_rows {
            by_session.entry(&r.chat_session_id).or_default().push(r);
        }
        for rows in by_session.values() {
            assert_eq!(rows.iter().filter(|r| r.scope == "org").count(), 1);
            for r in rows {
                match r.scope.as_str() {
                    "org" => assert!(r.team_id.is_none() && r.user_id.is_none()),
                    "team" => {
                        assert!(r.team_id.is_some() && r.user_id.is_none() && r.chatted_organization_ids.is_empty())
                    }
                    "user" => assert!(r.user_id.is_some() && r.team_id.is_none() && r.user_organization_id.is_some()),
                    s => panic!("unexpected scope {s}"),
                }
            }
            let users: i64 = rows.iter().filter(|r| r.scope == "user").map(|r| r.user_message_count).sum();
            let teams: i64 = rows.iter().filter(|r| r.scope == "team").map(|r| r.user_message_count).sum();
            assert_eq!(users, teams, "a team's messages are its users' messages");
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let ds = generate(&small());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.jsonl");
        ds.write(&path).unwrap();
        assert_eq!(Dataset::read(&path).unwrap(), ds);
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"kind\":\"organization\",\"id\":\"a\",\"name\":\"a\",\"api_token\":\"t\"}\n{\"kind\":\"nope\"}\n",
        )
        .unwrap();
        let err = Dataset::read(&path).unwrap_err();
        assert!(err.contains("bad.jsonl:2"), "{err}");
    }
}

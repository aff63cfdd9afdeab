//! Thulium's chat summary (api-docs 004) end to end: shipped jobs → the simulator over HTTP (basic
//! auth, `limit`/`offset` paging) → PostgreSQL and Parquet, with every value checked against the
//! dumped `thulium_chat` records read as plain JSON; paging, the docs' query string, the
//! simulator's parameter checks, auth failures, bad responses and same-named users.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_schema::DataType;
use chatetl::simulator::{FaultConfig, FaultRule, RunningSimulator};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use serde_json::Value;
use sqlx::Row as _;

use crate::util::{Dump, TestDb, TestWarehouse, chatetl, dump, serve};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;
const PATH: &str = "/api/chats/reports/summary";
const DAILY: &str = "thulium_chat_summary_daily";
const HOURLY: &str = "thulium_chat_summary_hourly";

/// api-docs 004's example request.
const DOCS_EXAMPLE: &str = "https://your-system-name.thulium.com/api/chats/reports/summary?user_logins[]=jkowalski&date_from=2025-10-17&date_to=2025-11-16&aggregate_by=day";

/// The value columns, in table order.
const METRICS: [&str; 23] = [
    "incoming",
    "incoming_to_agent",
    "incoming_including_empty",
    "abandoned",
    "answered",
    "incoming_to_bot",
    "transferred_by_bot",
    "finished_by_bot",
    "service_level_percent",
    "chat_time_min_seconds",
    "chat_time_max_seconds",
    "chat_time_sum_seconds",
    "chat_time_avg_seconds",
    "wait_time_min_seconds",
    "wait_time_max_seconds",
    "wait_time_sum_seconds",
    "wait_time_avg_seconds",
    "sla_percent",
    "rating_sad",
    "rating_neutral",
    "rating_happy",
    "rating_satisfaction_percent",
    "rating_rated_percent",
];

// ---------------------------------------------------------------------------------------------
// The dump, read as plain JSON, and the expected report computed from it

/// One `thulium_chat` record.
#[derive(Debug, Clone)]
struct Chat {
    at: DateTime<Utc>,
    v: Value,
}

impl Chat {
    fn b(&self, k: &str) -> bool {
        self.v[k].as_bool().unwrap_or_else(|| panic!("{k} is not a boolean in {}", self.v))
    }
    fn n(&self, k: &str) -> f64 {
        self.v[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number in {}", self.v))
    }
    fn s(&self, k: &str) -> &str {
        self.v[k].as_str().unwrap_or_else(|| panic!("{k} is not a string in {}", self.v))
    }
    fn local(&self) -> NaiveDateTime {
        self.at.with_timezone(&HEL).naive_local()
    }
}

/// (organization ids in order, the first organization's API token, every Thulium chat).
fn read_chats(path: &Path) -> (Vec<String>, String, Vec<Chat>) {
    let (mut orgs, mut token, mut chats) = (Vec::new(), String::new(), Vec::new());
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str().unwrap() {
            "organization" => {
                if orgs.is_empty() {
                    token = v["api_token"].as_str().unwrap().to_string();
                }
                orgs.push(v["id"].as_str().unwrap().to_string());
            }
            "thulium_account" => assert_eq!(v["time_zone"], "Europe/Helsinki"),
            "thulium_chat" => {
                let at = DateTime::parse_from_rfc3339(v["started_at"].as_str().unwrap()).unwrap().with_timezone(&Utc);
                chats.push(Chat { at, v });
            }
            _ => {}
        }
    }
    (orgs, token, chats)
}

/// A row's key: (bucket start, user_login, user_name).
type Key = (DateTime<Utc>, Option<String>, Option<String>);

/// Key → the 23 values.
type Table = BTreeMap<Key, Vec<Option<f64>>>;

/// The first instant a Helsinki wall-clock time names (the first pass of a repeated hour).
fn first_instant(t: NaiveDateTime) -> DateTime<Utc> {
    HEL.from_local_datetime(&t).earliest().expect("an existing local time").with_timezone(&Utc)
}

fn two_decimals_percent(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { (10_000.0 * part as f64 / whole as f64).round() / 100.0 }
}

/// min, max, sum, average rounded to the second; zeros for none.
fn stats(secs: &[f64]) -> [f64; 4] {
    if secs.is_empty() {
        return [0.0; 4];
    }
    let sum: f64 = secs.iter().sum();
    let min = secs.iter().cloned().fold(f64::MAX, f64::min);
    let max = secs.iter().cloned().fold(0.0, f64::max);
    [min, max, sum, (sum / secs.len() as f64).round()]
}

/// The report's 23 values for a group of chats, by docs/simulator.md's definitions.
fn expected_values(chats: &[&Chat], threshold: f64) -> Vec<Option<f64>> {
    let count = |f: &dyn Fn(&Chat) -> bool| chats.iter().filter(|c| f(c)).count();
    let to_agent = |c: &Chat| !c.b("empty") && (!c.b("to_bot") || c.b("transferred_by_bot"));
    let answered = count(&|c| c.b("answered"));
    let offered = count(&to_agent);
    let first_in_time = count(&|c| c.b("answered") && c.n("first_response_seconds") <= threshold);
    let picked_in_time = count(&|c| c.b("answered") && c.n("wait_seconds") <= threshold);
    let rated = |r: &str| count(&|c| c.v["rating"] == r);
    let (sad, neutral, happy) = (rated("sad"), rated("neutral"), rated("happy"));
    let chat_times: Vec<f64> = chats.iter().filter(|c| c.b("answered")).map(|c| c.n("chat_seconds")).collect();
    let waits: Vec<f64> = chats.iter().filter(|c| to_agent(c)).map(|c| c.n("wait_seconds")).collect();
    let mut out = vec![
        count(&|c| !c.b("empty")) as f64,
        offered as f64,
        chats.len() as f64,
        count(&|c| c.b("abandoned")) as f64,
        answered as f64,
        count(&|c| c.b("to_bot")) as f64,
        count(&|c| c.b("transferred_by_bot")) as f64,
        count(&|c| c.b("finished_by_bot")) as f64,
        two_decimals_percent(first_in_time, answered),
    ];
    out.extend(stats(&chat_times));
    out.extend(stats(&waits));
    out.push(two_decimals_percent(picked_in_time, offered));
    out.extend([sad as f64, neutral as f64, happy as f64]);
    out.push(two_decimals_percent(happy, sad + neutral + happy));
    out.push(two_decimals_percent(sad + neutral + happy, answered));
    out.into_iter().map(Some).collect()
}

/// The expected table of account `org` for chats whose local time passes `keep`, bucketed by
/// `bucket` (a local wall-clock time → its bucket's local start), per user name.
fn expected(
    chats: &[Chat],
    org: &str,
    keep: impl Fn(NaiveDateTime) -> bool,
    bucket: impl Fn(NaiveDateTime) -> NaiveDateTime,
) -> Table {
    let mut groups: BTreeMap<Key, Vec<&Chat>> = BTreeMap::new();
    for c in chats.iter().filter(|c| c.s("organization_id") == org && keep(c.local())) {
        let key = (first_instant(bucket(c.local())), None, Some(c.s("user_name").to_string()));
        groups.entry(key).or_default().push(c);
    }
    groups.into_iter().map(|(k, cs)| (k, expected_values(&cs, 20.0))).collect()
}

fn day_of(t: NaiveDateTime) -> NaiveDateTime {
    t.date().and_hms_opt(0, 0, 0).unwrap()
}

fn hour_of(t: NaiveDateTime) -> NaiveDateTime {
    t.date().and_hms_opt(t.hour(), 0, 0).unwrap()
}

fn dates(from: &str, to: &str) -> impl Fn(NaiveDateTime) -> bool {
    let (a, b) = (from.parse::<NaiveDate>().unwrap(), to.parse::<NaiveDate>().unwrap());
    move |t| (a..=b).contains(&t.date())
}

fn assert_tables_match(what: &str, got: &Table, want: &Table) {
    assert!(!want.is_empty(), "{what}: the dataset has rows to compare");
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: the same buckets and users");
    for (k, w) in want {
        for ((name, g), w) in METRICS.iter().zip(&got[k]).zip(w) {
            let ok = match (g, w) {
                (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                _ => g == w,
            };
            assert!(ok, "{what} {k:?} {name}: got {g:?}, want {w:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the warehouse back

async fn pg_table(pool: &sqlx::PgPool, table: &str) -> Table {
    let values: Vec<String> = METRICS.iter().map(|m| format!("\"{m}\"::float8")).collect();
    let sql = format!("SELECT bucket_start, user_login, user_name, {} FROM analytics.\"{table}\"", values.join(", "));
    let mut out = Table::new();
    for r in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap() {
        let key = (r.get::<DateTime<Utc>, _>(0), r.get(1), r.get(2));
        let row = (0..METRICS.len()).map(|i| r.get::<Option<f64>, _>(3 + i)).collect();
        assert!(out.insert(key.clone(), row).is_none(), "{table}: duplicate row {key:?}");
    }
    out
}

fn parquet_table(root: &Path, table: &str) -> Table {
    let mut out = Table::new();
    for batch in chatetl::readback::read_parquet_dir(&root.join(table)).unwrap() {
        let bucket = batch.column_by_name("bucket_start").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
        let text = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (login, name) = (text("user_login"), text("user_name"));
        let opt = |a: &arrow_array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
        for i in 0..batch.num_rows() {
            let row = METRICS
                .iter()
                .map(|m| {
                    let col = batch.column_by_name(m).unwrap_or_else(|| panic!("{table} has no column {m}"));
                    (!col.is_null(i)).then(|| match col.data_type() {
                        DataType::Int64 => col.as_primitive::<Int64Type>().value(i) as f64,
                        _ => col.as_primitive::<Float64Type>().value(i),
                    })
                })
                .collect();
            let key = (DateTime::from_timestamp_micros(bucket.value(i)).unwrap(), opt(&login, i), opt(&name, i));
            assert!(out.insert(key.clone(), row).is_none(), "{table}: duplicate row {key:?}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Configuration and running

/// Writes a chatetl.yaml whose `thulium` source is the simulator (or a proxy in front of it) at
/// `base_url`, plus `jobs`; returns its path.
fn thulium_config(
    dir: &Path,
    base_url: &str,
    password: &str,
    warehouse: TestWarehouse,
    jobs: &[(String, String)],
) -> PathBuf {
    let wh = match warehouse {
        TestWarehouse::Parquet(p) => format!("  kind: parquet\n  path: {}\n", p.display()),
        TestWarehouse::Postgres(url) => format!("  kind: postgres\n  url: {url}\n  schema: analytics\n"),
    };
    let config = format!(
        "time_zone: Europe/Helsinki\njobs_dir: jobs\nsources:\n  thulium:\n    kind: thulium\n    base_url: {base_url}\n    username: api_user\n    password: {password}\n    time_zone: Europe/Helsinki\n    concurrency: 4\n    requests_per_second: 1000\n    timeout_secs: 10\n    max_retries: 2\n    max_retry_delay_secs: 1\nwarehouse:\n{wh}"
    );
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    std::fs::write(dir.join("chatetl.yaml"), config).unwrap();
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(format!("{name}.yaml")), text).unwrap();
    }
    dir.join("chatetl.yaml")
}

/// A shipped job file with `start:` replaced and `extra` lines appended.
fn shipped(name: &str, start: &str, extra: &[&str]) -> (String, String) {
    renamed(name, name, start, extra)
}

/// Shipped job `from`, named `name` (its table too), with `start:` and the keys of `extra`
/// replaced (or `extra` appended).
fn renamed(from: &str, name: &str, start: &str, extra: &[&str]) -> (String, String) {
    let file = format!("{from}.yaml");
    let text =
        chatetl::demo::shipped::JOBS.iter().find(|(n, _)| *n == file).unwrap_or_else(|| panic!("{file} is shipped")).1;
    let (name_line, start_line) = (format!("name: {name}"), format!("start: {start}"));
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for line in [name_line.as_str(), start_line.as_str()].iter().chain(extra) {
        let key = format!("{}:", line.split(':').next().unwrap());
        match lines.iter_mut().find(|l| l.starts_with(&key)) {
            Some(l) => *l = line.to_string(),
            None => lines.push(line.to_string()),
        }
    }
    (name.to_string(), lines.join("\n") + "\n")
}

fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    chatetl(&all)
}

/// A run of the shipped daily job (with `extra` keys) over 2024-02-01 against `base_url`, into
/// a fresh Parquet warehouse.
struct DailyRun {
    _dir: tempfile::TempDir,
    wh: PathBuf,
    code: i32,
    out: String,
    err: String,
}

impl DailyRun {
    fn new(base_url: &str, password: &str, extra: &[&str]) -> DailyRun {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wh");
        let jobs = [shipped(DAILY, "2024-02-01", extra)];
        let config = thulium_config(dir.path(), base_url, password, TestWarehouse::Parquet(&wh), &jobs);
        let (code, out, err) = run_cli(&config, &["run", "--job", DAILY, "--from", "2024-02-01", "--to", "2024-02-01"]);
        DailyRun { _dir: dir, wh, code, out, err }
    }

    /// Whether the window's partition (its local month's file) was written.
    fn wrote(&self) -> bool {
        self.wh.join(DAILY).join("year=2024/month=2/data.parquet").exists()
    }
}

/// The decoded query pairs of the simulator's Thulium requests, in order.
fn summary_queries(sim: &RunningSimulator) -> Vec<Vec<(String, String)>> {
    sim.handle.requests().iter().filter(|r| r.path == PATH).map(|r| pairs(r.query.as_deref().unwrap_or(""))).collect()
}

fn pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    q.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// GETs the report with `query`, with basic auth (user, password) when given: (status, JSON body).
async fn get_report(sim: &RunningSimulator, query: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{PATH}?{query}", sim.base_url()));
    if let Some((user, password)) = auth {
        req = req.basic_auth(user, Some(password));
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
}

struct Fixture {
    _dump: Dump,
    sim: RunningSimulator,
    org: String,
    token: String,
    chats: Vec<Chat>,
}

/// A dataset dumped with `args` (separated by spaces), read and served.
async fn fixture(args: &str) -> Fixture {
    let d = dump(&args.split_whitespace().collect::<Vec<_>>());
    let (orgs, token, chats) = read_chats(&d.path);
    let sim = serve(&d.path).await;
    Fixture { org: orgs[0].clone(), _dump: d, sim, token, chats }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_jobs_load_the_dumped_report_into_postgres_and_parquet_across_the_autumn_change() {
    let f = fixture("--seed 8 --start 2024-10-25 --days 4 --sessions-per-day 5 --thulium-users 12").await;
    // The repeated hour (03:00+03:00 = 00:00Z, 03:00+02:00 = 01:00Z) has chats on both passes.
    let pass = |h: u32| {
        let lo = Utc.with_ymd_and_hms(2024, 10, 27, h, 0, 0).unwrap();
        f.chats.iter().any(|c| c.s("organization_id") == f.org && c.at >= lo && c.at < lo + chrono::Duration::hours(1))
    };
    assert!(pass(0) && pass(1), "the dataset covers both passes of the repeated hour");

    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let jobs = [shipped(DAILY, "2024-10-25", &[]), shipped(HOURLY, "2024-10-25", &[])];
    let base = f.sim.base_url();
    let configs = [
        thulium_config(&dir.path().join("pg"), &base, &f.token, TestWarehouse::Postgres(&db.url), &jobs),
        thulium_config(&dir.path().join("pq"), &base, &f.token, TestWarehouse::Parquet(&wh), &jobs),
    ];
    for config in &configs {
        let (code, out, err) = run_cli(config, &["run", "--job", DAILY, "--from", "2024-10-25", "--to", "2024-10-28"]);
        assert_eq!(code, 0, "{out}\n{err}");
        let (code, out, err) = run_cli(config, &["run", "--job", HOURLY, "--from", "2024-10-26", "--to", "2024-10-27"]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let pool = db.pool().await;
    let want_daily = expected(&f.chats, &f.org, dates("2024-10-25", "2024-10-28"), day_of);
    let want_hourly = expected(&f.chats, &f.org, dates("2024-10-26", "2024-10-27"), hour_of);
    assert_eq!(want_daily.len(), 4 * 12, "every user chats every day");
    assert_tables_match("postgres daily", &pg_table(&pool, DAILY).await, &want_daily);
    assert_tables_match("parquet daily", &parquet_table(&wh, DAILY), &want_daily);
    let pg_hourly = pg_table(&pool, HOURLY).await;
    assert_tables_match("postgres hourly", &pg_hourly, &want_hourly);
    assert_tables_match("parquet hourly", &parquet_table(&wh, HOURLY), &want_hourly);

    // The merged hour sits on its first pass; the second pass has no rows.
    let first = Utc.with_ymd_and_hms(2024, 10, 27, 0, 0, 0).unwrap();
    assert!(pg_hourly.keys().any(|k| k.0 == first));
    assert!(!pg_hourly.keys().any(|k| k.0 == first + chrono::Duration::hours(1)));
    let daily_buckets: Vec<(String, String)> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT bucket_date::text, to_char(bucket_start AT TIME ZONE 'Europe/Helsinki', 'HH24:MI') FROM analytics.{DAILY} ORDER BY 1"
    )))
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let want: Vec<(String, String)> = ["2024-10-25", "2024-10-26", "2024-10-27", "2024-10-28"]
        .iter()
        .map(|d| (d.to_string(), "00:00".into()))
        .collect();
    assert_eq!(daily_buckets, want, "one bucket per local day, at local midnight");
    let logins: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(user_login) FROM analytics.{DAILY}")))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(logins, 0, "user_login is null without split_by_login");
    let comment: String =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT obj_description('analytics.{DAILY}'::regclass)")))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(comment.starts_with("Thulium chat summary per user and day"), "{comment}");

    // Reloading from the second pass: that window is not requested (date_from moves to 04:00),
    // and the rows stay as they were.
    f.sim.handle.clear_requests();
    let (code, out, err) = run_cli(
        &configs[0],
        &["run", "--job", HOURLY, "--from", "2024-10-27T01:00:00Z", "--to", "2024-10-27T03:00:00Z"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let queries = summary_queries(&f.sim);
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(param(&queries[0], "date_from"), ["2024-10-27 04:00:00"]);
    assert_eq!(param(&queries[0], "date_to"), ["2024-10-27 04:59:59"]);
    assert_tables_match("postgres hourly reloaded", &pg_table(&pool, HOURLY).await, &want_hourly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_delivers_every_row_once_for_0_1_99_100_101_and_250_users() {
    for users in [0usize, 1, 99, 100, 101, 250] {
        let f = fixture(&format!(
            "--seed 2 --start 2024-02-01 --days 1 --organizations 1 --sessions-per-day 1 --thulium-users {users}"
        ))
        .await;
        let run = DailyRun::new(&f.sim.base_url(), &f.token, &[]);
        assert_eq!(run.code, 0, "{users} users: {}\n{}", run.out, run.err);
        let got = if run.wh.join(DAILY).exists() { parquet_table(&run.wh, DAILY) } else { Table::new() };
        assert_eq!(got.len(), users, "{users} users: one row each");
        let names: HashSet<&Option<String>> = got.keys().map(|k| &k.2).collect();
        assert_eq!(names.len(), users);
        if users > 0 {
            let want = expected(&f.chats, &f.org, dates("2024-02-01", "2024-02-01"), day_of);
            assert_tables_match(&format!("{users} users"), &got, &want);
        }
        let queries = summary_queries(&f.sim);
        let offsets: Vec<&str> = queries.iter().flat_map(|q| param(q, "offset")).collect();
        let want_offsets: Vec<String> = (0..=users / 100).map(|p| (p * 100).to_string()).collect();
        assert_eq!(offsets, want_offsets, "{users} users: pages of 100 until a short one");
        assert!(queries.iter().all(|q| param(q, "limit") == ["100"]));
        assert!(f.sim.handle.requests().iter().all(|r| r.status == 200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pages_and_split_by_login_page_each_login_and_fill_user_login() {
    let f =
        fixture("--seed 4 --start 2024-02-01 --days 3 --organizations 1 --sessions-per-day 1 --thulium-users 7").await;
    let logins: Vec<String> = (0..3).map(|i| chatetl::simulator::thulium::user(i).0).collect();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let split = format!("user_logins: [{}]", logins.join(", "));
    let jobs = [
        shipped(DAILY, "2024-02-01", &["page_size: 2"]),
        renamed(DAILY, "split_daily", "2024-02-01", &[&split, "split_by_login: true", "page_size: 2"]),
    ];
    let config = thulium_config(dir.path(), &f.sim.base_url(), &f.token, TestWarehouse::Parquet(&wh), &jobs);

    // 7 users over 3 days: 21 rows in pages of 2 (the last page has 1).
    let (code, out, err) = run_cli(&config, &["run", "--job", DAILY, "--from", "2024-02-01", "--to", "2024-02-03"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let want = expected(&f.chats, &f.org, dates("2024-02-01", "2024-02-03"), day_of);
    assert_eq!(want.len(), 21);
    assert_tables_match("pages of 2", &parquet_table(&wh, DAILY), &want);
    let offsets: Vec<String> =
        summary_queries(&f.sim).iter().flat_map(|q| param(q, "offset")).map(String::from).collect();
    assert_eq!(offsets, (0..11).map(|p| (p * 2).to_string()).collect::<Vec<_>>());

    // One request per login, each paged (3 rows: pages of 2 and 1), rows keyed by login.
    f.sim.handle.clear_requests();
    let (code, out, err) =
        run_cli(&config, &["run", "--job", "split_daily", "--from", "2024-02-01", "--to", "2024-02-03"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let queries = summary_queries(&f.sim);
    assert_eq!(queries.len(), 6, "{queries:?}");
    for login in &logins {
        let mine: Vec<&Vec<(String, String)>> =
            queries.iter().filter(|q| param(q, "user_logins[]") == [login.as_str()]).collect();
        assert_eq!(mine.iter().flat_map(|q| param(q, "offset")).collect::<Vec<_>>(), ["0", "2"], "{login}");
    }
    let got = parquet_table(&wh, "split_daily");
    let want: Table = expected(&f.chats, &f.org, dates("2024-02-01", "2024-02-03"), day_of)
        .into_iter()
        .filter_map(|((t, _, name), v)| {
            let login = f.chats.iter().find(|c| Some(c.s("user_name")) == name.as_deref())?.s("user_login").to_string();
            logins.contains(&login).then_some(((t, Some(login), name), v))
        })
        .collect();
    assert_eq!(want.len(), 9);
    assert_tables_match("split by login", &got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_job_sends_the_docs_example_parameters() {
    let f =
        fixture("--seed 6 --start 2025-10-16 --days 33 --organizations 1 --sessions-per-day 1 --thulium-users 3").await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let jobs = [
        shipped(DAILY, "2025-10-01", &["user_logins: [jkowalski]"]),
        shipped(HOURLY, "2025-10-01", &[]),
        renamed(DAILY, "monthly", "2025-10-01", &["aggregate_by: month"]),
    ];
    let config_path = thulium_config(dir.path(), &f.sim.base_url(), &f.token, TestWarehouse::Parquet(&wh), &jobs);
    let config = chatetl::config::load(&config_path).unwrap();
    // A request covers a month of days or a week of hours, and one window for longer buckets.
    let per_request = |name: &str| config.jobs[name].max_windows_per_request;
    assert_eq!((per_request(DAILY), per_request(HOURLY), per_request("monthly")), (31, 168, 1));
    let job = &config.jobs[DAILY];
    let (from, to) = chatetl::plan::parse_range("2025-10-17", "2025-11-16", job.time_zone).unwrap();
    let windows = chatetl::plan::windows_overlapping(job.window, job.time_zone, from, to);
    assert_eq!(windows.len(), 31);
    let chunks = chatetl::plan::chunk(&windows, job.max_windows_per_request);
    assert_eq!(chunks.len(), 1, "31 days in one request");
    let source = chatetl::source::Source::new(&config.sources["thulium"]).unwrap();
    let requests = source.requests(job, &chunks[0]);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, reqwest::Method::GET);
    assert!(requests[0].body.is_none());
    let url = reqwest::Url::parse(&requests[0].url).unwrap();
    assert_eq!(url.path(), PATH);
    let ours: Vec<(String, String)> = pairs(url.query().unwrap());
    let docs = pairs(DOCS_EXAMPLE.split_once('?').unwrap().1);
    let keys = |q: &[(String, String)]| q.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        keys(&ours),
        [keys(&docs), vec!["limit".into(), "offset".into()]].concat(),
        "004's parameters, then paging"
    );
    assert_eq!(param(&ours, "user_logins[]"), param(&docs, "user_logins[]"));
    assert_eq!(param(&ours, "aggregate_by"), param(&docs, "aggregate_by"));
    // 004 writes whole days; chatetl writes them with 004's `YYYY-MM-DD HH:MM:SS`, date_to inclusive.
    assert_eq!(param(&ours, "date_from"), [format!("{} 00:00:00", param(&docs, "date_from")[0])]);
    assert_eq!(param(&ours, "date_to"), [format!("{} 23:59:59", param(&docs, "date_to")[0])]);
    assert_eq!((param(&ours, "limit"), param(&ours, "offset")), (vec!["100"], vec!["0"]));

    // The simulator reads 004's own form as the same range: both answer the same rows.
    let login = chatetl::simulator::thulium::user(1).0;
    let me = Some(("api_user", f.token.as_str()));
    let from_docs = get_report(&f.sim, &DOCS_EXAMPLE.split_once('?').unwrap().1.replace("jkowalski", &login), me).await;
    let from_ours = get_report(&f.sim, &url.query().unwrap().replace("jkowalski", &login), me).await;
    assert_eq!(from_docs.0, 200, "{from_docs:?}");
    assert_eq!(from_docs.1.as_array().unwrap().len(), 31, "one row a day for the user");
    assert_eq!(from_docs, from_ours);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_checks_auth_and_parameters() {
    let f =
        fixture("--seed 7 --start 2024-02-01 --days 1 --organizations 2 --sessions-per-day 1 --thulium-users 2").await;
    let ok = "date_from=2024-02-01+00%3A00%3A00&date_to=2024-02-01+23%3A59%3A59&aggregate_by=day";
    let me = Some(("api_user", f.token.as_str()));
    let (status, body) = get_report(&f.sim, &format!("{ok}&limit=100"), me).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 2);
    for (query, needle) in [
        (format!("{ok}&limit=101"), "limit"),
        (format!("{ok}&limit=0"), "limit"),
        ("date_to=2024-02-01&aggregate_by=day".to_string(), "date_from"),
        ("date_from=2024-02-01&aggregate_by=day".to_string(), "date_to"),
        ("date_from=2024-02-01T00:00:00&date_to=2024-02-01".to_string(), "date_from"),
        (format!("{ok}&aggregate_by=day"), "more than once"),
        ("date_from=2024-02-01&date_to=2024-02-01&aggregate_by=quarter".to_string(), "quarter"),
        (format!("{ok}&sum_users=yes"), "sum_users"),
        (format!("{ok}&user_login%5B%5D=x"), "user_login[]"),
    ] {
        let (status, body) = get_report(&f.sim, &query, me).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(needle), "{query}: {body}");
    }
    for auth in [None, Some(("api_user", "wrong")), Some(("", f.token.as_str()))] {
        let (status, body) = get_report(&f.sim, ok, auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body["detail"].is_string());
    }
    // The second organization's key reads the second account.
    let (status, body) = get_report(&f.sim, ok, Some(("someone", &format!("{}-org1", f.token)))).await;
    assert_eq!(status, 200);
    let second: HashSet<&str> = body.as_array().unwrap().iter().map(|r| r["user_name"].as_str().unwrap()).collect();
    assert_eq!(second.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_zone_fails_the_window_clearly_and_keeps_the_secret() {
    let f =
        fixture("--seed 8 --start 2024-02-01 --days 2 --organizations 1 --sessions-per-day 1 --thulium-users 3").await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let secret = "Wr0ng-Thulium-Pa55word";
    let jobs = [shipped(DAILY, "2024-02-01", &[])];
    let config = thulium_config(dir.path(), &f.sim.base_url(), secret, TestWarehouse::Parquet(&wh), &jobs);
    // Every crate logs at trace level: the password is in no line, plain or as its basic-auth form.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "--job",
            DAILY,
            "--from",
            "2024-02-01",
            "--to",
            "2024-02-02",
        ])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let (code, out, err) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, Some(3), "refused credentials exit 3: {out}\n{err}");
    assert!(err.lines().count() > 10, "trace logging is on");
    // Standard base64 with padding, as the basic-auth header carries the credentials.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("api_user:{secret}"));
    assert!(!err.contains(&basic) && !out.contains(&basic), "the basic-auth header leaked");
    assert!(
        err.contains(&format!("job {DAILY}, window 2024-02-01..2024-02-02"))
            && err.contains("upstream returned 401 for GET http://")
            && err.contains(PATH),
        "{err}"
    );
    assert!(!err.contains(secret) && !out.contains(secret), "the password leaked");
    assert_eq!(f.sim.handle.requests().len(), 1, "a 401 is not retried");
    assert!(!wh.join(DAILY).join("year=2024/month=2/data.parquet").exists(), "nothing was written");

    // Day buckets in another zone than the account's would be split: the window fails, saying why.
    let run = DailyRun::new(&f.sim.base_url(), &f.token, &["time_zone: America/New_York"]);
    assert_eq!(run.code, 4, "buckets that do not fit the windows are a bad response: {}\n{}", run.out, run.err);
    assert!(run.err.contains("give the job `time_zone: Europe/Helsinki`") && run.err.contains(PATH), "{}", run.err);
    assert!(!run.wrote());
}

/// An HTTP server in front of the simulator that rewrites each answer's body with `rewrite`
/// (200 stays 200; a body starting with `<` is sent as HTML).
async fn rewriting_proxy(upstream: String, rewrite: fn(&str) -> String) -> String {
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut forward = client.get(format!("{upstream}{path}"));
            if let Some(auth) = req.headers().get("authorization") {
                forward = forward.header("authorization", auth.to_str().unwrap());
            }
            let resp = forward.send().await.unwrap();
            let status = axum::http::StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let body = rewrite(&resp.text().await.unwrap());
            let kind = if body.starts_with('<') { "text/html" } else { "application/json" };
            (status, [("content-type", kind)], body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_responses_fail_the_window_and_extra_fields_are_tolerated() {
    let f =
        fixture("--seed 9 --start 2024-02-01 --days 1 --organizations 1 --sessions-per-day 1 --thulium-users 4").await;
    let want = expected(&f.chats, &f.org, dates("2024-02-01", "2024-02-01"), day_of);
    // (case, how the body is rewritten, the failure expected if any).
    type Case = (&'static str, fn(&str) -> String, Option<&'static str>);
    let cases: [Case; 4] = [
        ("html", |_| "<html><body><h1>502 Bad Gateway</h1></body></html>".to_string(), Some("response is not JSON")),
        ("truncated", |b| b[..b.len() / 2].to_string(), Some("response is not JSON")),
        (
            "missing",
            |b| b.replacen("\"answered\":", "\"answered_chats\":", 1),
            Some("row 0: not a chat summary row: missing field `answered`"),
        ),
        ("extra", |b| b.replace("\"series\":", "\"queue_name\":\"sales\",\"series\":"), None),
    ];
    for (name, rewrite, failure) in cases {
        let proxy = rewriting_proxy(f.sim.base_url(), rewrite).await;
        let run = DailyRun::new(&proxy, &f.token, &[]);
        let (code, out, err) = (run.code, &run.out, &run.err);
        match failure {
            Some(message) => {
                assert_eq!(code, 4, "{name}: an unreadable answer exits 4: {out}\n{err}");
                assert!(
                    err.contains(&format!("job {DAILY}, window 2024-02-01"))
                        && err.contains("unexpected response from GET http://")
                        && err.contains(message),
                    "{name}: {err}"
                );
                assert!(!run.wrote(), "{name}: nothing was written");
            }
            None => {
                assert_eq!(code, 0, "{name}: {out}\n{err}");
                assert_tables_match(name, &parquet_table(&run.wh, DAILY), &want);
            }
        }
    }

    // A body cut off mid-transfer (the simulator's truncate fault) fails after the retries.
    f.sim.handle.add_rule(FaultRule {
        path_contains: Some(PATH.into()),
        faults: FaultConfig { truncate_rate: 1.0, ..FaultConfig::default() },
        ..FaultRule::default()
    });
    f.sim.handle.clear_requests();
    let run = DailyRun::new(&f.sim.base_url(), &f.token, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.out, run.err);
    assert!(
        run.err.contains(&format!("job {DAILY}, window 2024-02-01"))
            && run.err.contains(&format!("GET {}{PATH}", f.sim.base_url())),
        "{}",
        run.err
    );
    assert_eq!(f.sim.handle.requests().len(), 3, "the first attempt and 2 retries");
    assert!(!run.wrote(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_of_one_name_fail_with_a_hint_and_split_by_login_tells_them_apart() {
    let d = dump(
        &"--seed 10 --start 2024-02-01 --days 2 --organizations 1 --sessions-per-day 1 --thulium-users 3"
            .split_whitespace()
            .collect::<Vec<_>>(),
    );
    let ((login_a, name_a), (login_b, _)) =
        (chatetl::simulator::thulium::user(0), chatetl::simulator::thulium::user(1));
    // Give user B user A's name, as a second "Anna Nowak" would have.
    let lines: Vec<String> = std::fs::read_to_string(&d.path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            if v["kind"] == "thulium_chat" && v["user_login"] == login_b.as_str() {
                v["user_name"] = name_a.clone().into();
            }
            v.to_string()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("renamed.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (orgs, token, chats) = read_chats(&path);
    let sim = serve(&path).await;
    let wh = dir.path().join("wh");
    let split = format!("user_logins: [{login_a}, {login_b}]");
    let jobs =
        [shipped(DAILY, "2024-02-01", &[]), renamed(DAILY, "split", "2024-02-01", &[&split, "split_by_login: true"])];
    let config = thulium_config(dir.path(), &sim.base_url(), &token, TestWarehouse::Parquet(&wh), &jobs);
    let (code, out, err) = run_cli(&config, &["run", "--job", DAILY, "--from", "2024-02-01", "--to", "2024-02-02"]);
    assert_eq!(code, 4, "rows the report cannot tell apart are a bad response, exit 4: {out}\n{err}");
    assert!(err.contains(&format!("user_name {name_a:?}")) && err.contains("split_by_login: true"), "{err}");

    let (code, out, err) = run_cli(&config, &["run", "--job", "split", "--from", "2024-02-01", "--to", "2024-02-02"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut want = Table::new();
    for login in [&login_a, &login_b] {
        for day in ["2024-02-01", "2024-02-02"] {
            let keep = dates(day, day);
            let mine: Vec<&Chat> = chats
                .iter()
                .filter(|c| c.s("organization_id") == orgs[0] && c.s("user_login") == login && keep(c.local()))
                .collect();
            let bucket = first_instant(day.parse::<NaiveDate>().unwrap().and_hms_opt(0, 0, 0).unwrap());
            want.insert((bucket, Some(login.clone()), Some(name_a.clone())), expected_values(&mine, 20.0));
        }
    }
    assert_tables_match("split by login", &parquet_table(&wh, "split"), &want);
}

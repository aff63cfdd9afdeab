//! Shared test helpers: datasets dumped through the real CLI, a running simulator, and an
//! independent reading of the dump (plain JSON, not the simulator's own types) for expected values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type};
use arrow_schema::DataType;
use sqlx::Row as _;

use chatetl::simulator::{Dataset, FaultConfig, RunningSimulator, Simulator};
use chrono::{DateTime, Utc};
use serde_json::Value;

pub const TOKEN: &str = "sim-token";

/// Runs the `chatetl` binary with `args`, returning (status code, stdout, stderr).
pub fn chatetl(args: &[&str]) -> (i32, String, String) {
    output(Command::new(env!("CARGO_BIN_EXE_chatetl")).args(args).env_remove("RUST_LOG"))
}

/// Runs `cmd` to its end: (status code, stdout, stderr).
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run chatetl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A dataset dumped by `chatetl simulate --dump-dataset` into a temp dir.
pub struct Dump {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn dump(extra: &[&str]) -> Dump {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataset.jsonl");
    let mut args = vec!["simulate", "--dump-dataset", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, _, err) = chatetl(&args);
    assert_eq!(code, 0, "dump failed: {err}");
    Dump { _dir: dir, path }
}

/// Serves a dumped dataset on 127.0.0.1:0.
pub async fn serve(path: &Path) -> RunningSimulator {
    let dataset = Dataset::read(path).unwrap();
    Simulator::new(dataset, FaultConfig::default(), 1).spawn().await.unwrap()
}

/// One record of the dump, read as plain JSON.
#[derive(Debug, Clone)]
pub struct Row {
    pub time: DateTime<Utc>,
    pub v: Value,
}

impl Row {
    pub fn s(&self, k: &str) -> &str {
        self.v[k].as_str().unwrap_or("")
    }
    pub fn n(&self, k: &str) -> f64 {
        self.v[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number in {}", self.v))
    }
    /// A list dimension's values; a plain string counts as a list of one.
    pub fn list(&self, k: &str) -> Vec<String> {
        match &self.v[k] {
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            Value::String(s) => vec![s.clone()],
            other => panic!("{k} is not a list: {other}"),
        }
    }
}

/// (organizations, chat session rows) of a dump.
pub fn read_dump(path: &Path) -> (Vec<Value>, Vec<Row>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut orgs = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str().unwrap() {
            "organization" => orgs.push(v),
            "chat_session_row" => {
                let time = DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap().with_timezone(&Utc);
                rows.push(Row { time, v })
            }
            // Records of the other APIs: see `read_kind`.
            _ => {}
        }
    }
    (orgs, rows)
}

/// The records of `kind` in a dump (e.g. `event`) with their `time` (the Unix epoch when they
/// have none), read as plain JSON, in file order.
pub fn read_kind(path: &Path, kind: &str) -> Vec<Row> {
    records(path, kind)
        .into_iter()
        .map(|v| {
            let time = v["time"]
                .as_str()
                .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
                .unwrap_or_default();
            Row { time, v }
        })
        .collect()
}

/// (local date, scope, team or user id) → value: a giosg-shaped table (chat_sessions, events,
/// workflow), as read back from a warehouse or computed from a dump.
pub type Table = BTreeMap<(String, String, Option<String>), Option<f64>>;

/// Asserts two tables have the same keys and values (within 2% for distinct counts).
pub fn assert_tables_match(job: &str, got: &Table, want: &Table, distinct: bool) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{job}: the same days, scopes, teams and users"
    );
    for (k, w) in want {
        let g = got[k];
        match (g, w) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                let tol = if distinct { 0.02 * w.max(1.0) } else { 1e-9 * w.abs().max(1.0) };
                assert!((g - w).abs() <= tol, "{job} {k:?}: got {g}, want {w}");
            }
            _ => panic!("{job} {k:?}: got {g:?}, want {w:?}"),
        }
    }
}

/// A giosg-shaped table (`analytics` schema) read from PostgreSQL.
pub async fn pg_table(pool: &sqlx::PgPool, table: &str, column: &str) -> Table {
    let sql = format!(
        "SELECT bucket_date::text, scope, coalesce(team_id, user_id), \"{column}\"::float8 FROM analytics.\"{table}\""
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect()
}

/// A giosg-shaped table read from its Parquet folder under `root`.
pub fn parquet_table(root: &Path, table: &str, column: &str) -> Table {
    let mut out = Table::new();
    for batch in chatetl::readback::read_parquet_dir(&root.join(table)).unwrap() {
        let date = batch.column_by_name("bucket_date").unwrap().as_primitive::<Date32Type>().clone();
        let scope = batch.column_by_name("scope").unwrap().as_string::<i32>().clone();
        let team = batch.column_by_name("team_id").unwrap().as_string::<i32>().clone();
        let user = batch.column_by_name("user_id").unwrap().as_string::<i32>().clone();
        let value = batch.column_by_name(column).unwrap().clone();
        for i in 0..batch.num_rows() {
            let who = if !team.is_null(i) {
                Some(team.value(i).to_string())
            } else if !user.is_null(i) {
                Some(user.value(i).to_string())
            } else {
                None
            };
            let v = if value.is_null(i) {
                None
            } else {
                Some(match value.data_type() {
                    DataType::Int64 => value.as_primitive::<Int64Type>().value(i) as f64,
                    _ => value.as_primitive::<Float64Type>().value(i),
                })
            };
            let key = (date.value_as_date(i).unwrap().to_string(), scope.value(i).to_string(), who);
            assert!(out.insert(key.clone(), v).is_none(), "{table}: duplicate row {key:?}");
        }
    }
    out
}

/// POSTs a query body to the chat_sessions endpoint of `org`.
pub async fn post_query(sim: &RunningSimulator, org: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{}/api/reporting/v1/orgs/{org}/chat_sessions", sim.base_url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Token {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A fresh database per test, created from `DATABASE_URL` (set by scripts/test) and dropped after.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        use sqlx::Connection;
        let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set: run the suite with scripts/test");
        let name = format!("chatetl_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.expect("connect to DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b.to_string(), format!("?{q}")),
            None => (admin_url.clone(), String::new()),
        };
        let prefix = &base[..base.rfind('/').expect("a database path in DATABASE_URL")];
        TestDb { url: format!("{prefix}/{name}{query}"), admin_url, name }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut conn)
                        .await;
                }
            })
        })
        .join();
    }
}

/// Where a test's configuration sends data.
pub enum TestWarehouse<'a> {
    Parquet(&'a Path),
    Postgres(&'a str),
}

/// Writes a chatetl.yaml for the running simulator (organization 0) plus `jobs` (file name, text)
/// into `dir`; returns the config path. Retries are quick and limits generous.
pub fn write_config(
    dir: &Path,
    sim: &RunningSimulator,
    token: &str,
    warehouse: TestWarehouse,
    jobs: &[(&str, String)],
) -> PathBuf {
    let wh = match warehouse {
        TestWarehouse::Parquet(p) => format!("  kind: parquet\n  path: {}\n", p.display()),
        TestWarehouse::Postgres(url) => format!("  kind: postgres\n  url: {url}\n  schema: analytics\n"),
    };
    write_config_with(dir, sim, token, &wh, jobs)
}

/// [`write_config`] with the `warehouse:` section's keys given as YAML text (indented by two).
pub fn write_config_with(
    dir: &Path,
    sim: &RunningSimulator,
    token: &str,
    wh: &str,
    jobs: &[(&str, String)],
) -> PathBuf {
    let org = sim.handle.dataset().organizations[0].id.clone();
    let config = format!(
        "time_zone: Europe/Helsinki\njobs_dir: jobs\nsources:\n  giosg:\n    kind: giosg\n    base_url: {}\n    token: {token}\n    organization_id: {org}\n    concurrency: 8\n    requests_per_second: 1000\n    timeout_secs: 10\n    max_retries: 3\n    max_retry_delay_secs: 1\nwarehouse:\n{wh}",
        sim.base_url()
    );
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    let path = dir.join("chatetl.yaml");
    std::fs::write(&path, config).unwrap();
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(name), text).unwrap();
    }
    path
}

/// The shipped chat_sessions job files (the first slice's catalogue), optionally with their
/// `start:` replaced.
pub fn shipped_jobs(start: Option<&str>) -> Vec<(&'static str, String)> {
    shipped_jobs_of("chat_sessions", start)
}

/// The shipped job files of `endpoint`, optionally with their `start:` replaced.
pub fn shipped_jobs_of(endpoint: &str, start: Option<&str>) -> Vec<(&'static str, String)> {
    chatetl::demo::shipped::JOBS
        .iter()
        .filter(|(_, text)| text.lines().any(|l| l.trim() == format!("endpoint: {endpoint}")))
        .map(|(name, text)| {
            let text = match start {
                Some(s) => {
                    text.lines()
                        .map(|l| if l.starts_with("start:") { format!("start: {s}") } else { l.to_string() })
                        .collect::<Vec<_>>()
                        .join("\n")
                        + "\n"
                }
                None => text.to_string(),
            };
            (*name, text)
        })
        .collect()
}

/// Every record of `kind` in a dump, as plain JSON (`realtime_room`, `comm100_agent`, …).
pub fn records(path: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Every `.parquet` file below `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One cell of a Parquet file as text: floats in Rust's shortest round-trip form (equal text,
/// equal bits), timestamps in UTC microseconds, nulls as `null`.
fn parquet_cell(col: &dyn Array, i: usize) -> String {
    use arrow_array::types::TimestampMicrosecondType;
    if col.is_null(i) {
        return "null".into();
    }
    match col.data_type() {
        DataType::Int64 => col.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Float64 => format!("{:?}", col.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => col.as_string::<i32>().value(i).to_string(),
        DataType::Boolean => col.as_boolean().value(i).to_string(),
        DataType::Date32 => col.as_primitive::<Date32Type>().value_as_date(i).unwrap().to_string(),
        DataType::Timestamp(_, _) => {
            let us = col.as_primitive::<TimestampMicrosecondType>().value(i);
            DateTime::<Utc>::from_timestamp_micros(us).unwrap().to_rfc3339()
        }
        other => panic!("no test rendering for {other}"),
    }
}

/// Every batch of the Parquet file `path`, read with the parquet crate's own Arrow reader.
pub fn parquet_batches(path: &Path) -> impl Iterator<Item = arrow_array::RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    reader.map(|b| b.unwrap())
}

/// A table's rows as (column, value) pairs, sorted: compared whole between two loads.
pub type Rows = Vec<Vec<(String, String)>>;

/// Every row of the Parquet files below `dir`, read with the parquet crate's own Arrow reader
/// (not chatetl's readback), without the columns in `skip`.
pub fn parquet_rows(dir: &Path, skip: &[&str]) -> Rows {
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        for batch in parquet_batches(&path) {
            let schema = batch.schema();
            for i in 0..batch.num_rows() {
                let row = schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .filter(|(f, _)| !skip.contains(&f.name().as_str()))
                    .map(|(f, c)| (f.name().clone(), parquet_cell(c.as_ref(), i)))
                    .collect();
                rows.push(row);
            }
        }
    }
    rows.sort();
    rows
}

/// Every row of `analytics.<table>` in PostgreSQL as (column, text) pairs without the load
/// metadata (`_window_start`, `_loaded_at`, `_run_id`), sorted; nulls as `null`.
pub async fn pg_rows_of(pool: &sqlx::PgPool, table: &str) -> Rows {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'analytics' \
         AND table_name = $1 AND column_name NOT LIKE '\\_%' ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!columns.is_empty(), "table analytics.{table} exists");
    let select: Vec<String> = columns.iter().map(|c| format!("coalesce(\"{c}\"::text, 'null')")).collect();
    let sql = format!("SELECT ARRAY[{}] FROM analytics.\"{table}\"", select.join(", "));
    let mut rows: Rows = sqlx::query_scalar::<_, Vec<String>>(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|values| columns.iter().cloned().zip(values).collect())
        .collect();
    rows.sort();
    rows
}

/// A `chat_session_row` record of organization `org` at `time` (RFC 3339 UTC with milliseconds):
/// an org-scope visitor chat that is a real chat (3 user, 2 visitor messages) with one order of
/// `sales`.
pub fn real_chat_record(time: &str, org: &str, id: &str, sales: f64) -> Value {
    serde_json::json!({
        "kind": "chat_session_row", "time": time, "chat_session_id": id, "scope": "org",
        "chat_type": "visitor", "chat_initiator": "visitor", "chatted_organization_ids": [org],
        "order_count": 1, "owner_organization_id": org, "room_ids": ["room-1"], "sales": sales,
        "subscription_sales": 0.0, "team_id": null, "user_id": null, "user_message_count": 3,
        "user_organization_id": null, "visitor_ids": [format!("visitor-{id}")], "visitor_message_count": 2,
        "visitor_session_ids": [format!("visit-{id}")]
    })
}

/// Writes `records` as a dataset file (JSON Lines) into `dir`.
pub fn write_dataset(dir: &Path, records: &[Value]) -> PathBuf {
    let path = dir.join("dataset.jsonl");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether a dump row is a real chat as the shipped `real_chats` job filters them, with
/// `min_user_messages` for its user message bound (2 as shipped).
pub fn real_chat(r: &Row, min_user_messages: f64) -> bool {
    matches!(r.s("chat_type"), "visitor" | "external")
        && r.n("user_message_count") >= min_user_messages
        && r.n("visitor_message_count") >= 1.0
}

/// The giosg-shaped [`Table`] of a sum over a dump: `value` summed over the rows of `org` that
/// `keep` accepts, by local date in `tz` (on `days`), scope and team or user; the org scope has
/// a row (0 when nothing matched) every day. A count is the sum of 1.
pub fn dump_sums(
    rows: &[Row],
    org: &str,
    tz: chrono_tz::Tz,
    days: &[chrono::NaiveDate],
    keep: impl Fn(&Row) -> bool,
    value: fn(&Row) -> f64,
) -> Table {
    let mut out: Table = days.iter().map(|d| ((d.to_string(), "org".to_string(), None), Some(0.0))).collect();
    for r in rows.iter().filter(|r| r.s("owner_organization_id") == org && keep(r)) {
        let (date, scope) = (r.time.with_timezone(&tz).date_naive(), r.s("scope"));
        let who = matches!(scope, "team" | "user").then(|| r.s(&format!("{scope}_id")).to_string());
        if days.contains(&date) {
            let sum = out.entry((date.to_string(), scope.to_string(), who)).or_insert(Some(0.0));
            *sum = sum.map(|s| s + value(r));
        }
    }
    out
}

/// The state database of the Parquet warehouse at `root` (`_chatetl/state.db`), opened with SQL
/// as an independent reader (not chatetl's sink).
pub async fn parquet_state_db(root: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(root.join("_chatetl/state.db"))
        .busy_timeout(std::time::Duration::from_secs(30));
    sqlx::SqlitePool::connect_with(options).await.unwrap()
}

/// Rows per `_window_start` in the Parquet files below `dir` (read with the parquet crate).
pub fn parquet_window_rows(dir: &Path) -> BTreeMap<DateTime<Utc>, usize> {
    use arrow_array::types::TimestampMicrosecondType;
    let mut out = BTreeMap::new();
    for path in parquet_files(dir) {
        for batch in parquet_batches(&path) {
            let starts = batch.column_by_name("_window_start").unwrap().as_primitive::<TimestampMicrosecondType>();
            for us in starts.values().iter() {
                *out.entry(DateTime::<Utc>::from_timestamp_micros(*us).unwrap()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// One reading of a Parquet table folder: each data file's schema, and every row as
/// [`parquet_rows`] renders them (all columns), read with the parquet crate.
#[derive(Debug, Default)]
pub struct TableReading {
    pub schemas: Vec<(PathBuf, arrow_schema::SchemaRef)>,
    pub rows: Rows,
}

/// Reads every data file below `dir` (skipping `.`- and `_`-prefixed names). A folder or file
/// that vanishes while it is read (a replaced or deleted folder) is an `Err` of kind
/// `NotFound`, for the caller to read again; a file that exists but does not parse panics.
pub fn try_read_table(dir: &Path) -> std::io::Result<TableReading> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else if name.ends_with(".parquet") {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    let mut reading = TableReading::default();
    for path in files {
        let file = std::fs::File::open(&path)?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{} is not a readable Parquet file: {e}", path.display()));
        reading.schemas.push((path.clone(), builder.schema().clone()));
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap_or_else(|e| panic!("{} does not read whole: {e}", path.display()));
            let schema = batch.schema();
            for i in 0..batch.num_rows() {
                let row = schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| (f.name().clone(), parquet_cell(c.as_ref(), i)))
                    .collect();
                reading.rows.push(row);
            }
        }
    }
    reading.rows.sort();
    Ok(reading)
}

/// `chatetl --config <config> schedule --listen 127.0.0.1:0 <extra>` as a child process, and
/// the base URL of its health and metrics endpoint (read from its stderr, which a thread keeps
/// draining so the daemon never blocks on it).
pub fn start_daemon(config: &Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(["--config", config.to_str().unwrap(), "schedule", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("health and metrics on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let base = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the daemon prints its endpoint");
    (daemon, base)
}

/// Polls `check` until it gives a value, failing after `patience`: only for a daemon in another
/// process, whose progress can be read only from outside (its database, its endpoint).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: impl std::fmt::Display,
    patience: std::time::Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within {patience:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends SIGTERM to `daemon` and waits for it: it must exit 0.
pub fn stop_daemon(mut daemon: std::process::Child) {
    // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(daemon.wait().unwrap().code(), Some(0), "the daemon stops cleanly on SIGTERM");
}

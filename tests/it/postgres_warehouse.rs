//! The PostgreSQL warehouse over years: state per target (the demo and a production
//! configuration on one database, interleaved), state of an earlier release claimed forward, a
//! column added while readers read, rebuilds killed at several instants while readers read,
//! failed windows and died runs, and what the catalog shows BI users (natural keys, date indexes,
//! comments). The `chatetl` binary as users run it, the simulator over HTTP, a real PostgreSQL.
//!
//! Waits are for observed events (a log line, a lock released), each with a generous timeout
//! that only turns a hang into a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chatetl::simulator::{FaultConfig, FaultRule, RunningSimulator};
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use serde_json::Value;
use sqlx::Row as _;

use crate::util::{
    Dump, Row, TOKEN, TestDb, TestWarehouse, assert_tables_match, chatetl, dump, dump_sums, pg_table, read_dump,
    real_chat, serve, shipped_jobs, write_config,
};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

/// How long anything waited for may take before the test fails (never a delay relied on).
const PATIENCE: Duration = Duration::from_secs(90);

fn today() -> NaiveDate {
    Utc::now().with_timezone(&HEL).date_naive()
}

fn days_ago(n: i64) -> NaiveDate {
    today() - chrono::Duration::days(n)
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    chatetl::time::local_day_start(HEL, d)
}

/// A served dataset and a production configuration (schema `analytics`) of `jobs`.
struct Env {
    dump: Dump,
    sim: RunningSimulator,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// A dataset of `days` days from `data_start`, served, with `jobs` writing to `url`.
async fn env(url: &str, data_start: NaiveDate, days: u32, jobs: &[(&str, String)]) -> Env {
    let dump = dump(&[
        "--seed",
        "21",
        "--start",
        &data_start.to_string(),
        "--days",
        &days.to_string(),
        "--sessions-per-day",
        "25",
    ]);
    let sim = serve(&dump.path).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(url), jobs);
    Env { dump, sim, _dir: dir, path }
}

impl Env {
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli(&self.path, args)
    }

    /// The job file of `job`, to change its definition.
    fn job_path(&self, job: &str) -> PathBuf {
        self.path.parent().unwrap().join("jobs").join(format!("{job}.yaml"))
    }

    fn edit_job(&self, job: &str, from: &str, to: &str) {
        let path = self.job_path(job);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{job}: `{from}` in {text}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
}

fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    chatetl(&all)
}

/// `chatetl status --json` of `job`.
fn status_of(config: &Path, job: &str) -> Value {
    let (code, out, err) = cli(config, &["status", "--json", "--job", job]);
    assert_eq!(code, 0, "{out}\n{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    all.into_iter().find(|s| s["job"] == job).unwrap_or_else(|| panic!("{job} in {out}"))
}

/// The shipped job file `name` with `start:` replaced and `extra` lines after it.
fn job_file(name: &str, start: NaiveDate, extra: &str) -> (&'static str, String) {
    let (file, text) = shipped_jobs(Some(&start.to_string()))
        .into_iter()
        .find(|(f, _)| *f == format!("{name}.yaml"))
        .unwrap_or_else(|| panic!("shipped job {name}"));
    let text = text.replacen(&format!("start: {start}"), &format!("start: {start}\n{extra}"), 1);
    (file, text)
}

/// Everything of one target as text, compared whole before and after another target's runs:
/// its rows of every state table and every row (load metadata included) of its tables.
async fn target_snapshot(pool: &sqlx::PgPool, target: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for table in ["jobs", "window_loads", "runs", "window_failures"] {
        let sql = format!("SELECT (t.*)::text FROM chatetl.{table} t WHERE target = $1");
        out.insert(format!("chatetl.{table}"), sorted_text(pool, &sql, Some(target)).await);
    }
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1")
            .bind(target)
            .fetch_all(pool)
            .await
            .unwrap();
    for table in tables {
        let sql = format!("SELECT (t.*)::text FROM \"{target}\".\"{table}\" t");
        out.insert(table, sorted_text(pool, &sql, None).await);
    }
    out
}

async fn sorted_text(pool: &sqlx::PgPool, sql: &str, bind: Option<&str>) -> Vec<String> {
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_string()));
    if let Some(b) = bind {
        q = q.bind(b.to_string());
    }
    let mut rows = q.fetch_all(pool).await.unwrap();
    rows.sort();
    rows
}

async fn scalar_i64(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

/// A task querying the database throughout a test, as a BI user would, collecting what it saw
/// wrong (`check` says what is wrong with one answer, or errors).
struct Reader {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Reader {
    fn start(pool: sqlx::PgPool, sql: &'static str, check: fn(&sqlx::postgres::PgRow) -> Option<String>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut reads, mut wrong) = (0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match sqlx::query(sql).fetch_one(&pool).await {
                    Ok(row) => wrong.extend(check(&row)),
                    Err(e) => wrong.push(format!("query failed: {e}")),
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (reads, wrong)
        });
        Reader { stop, task }
    }

    /// Stops it; (answers read, what was wrong).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `chatetl args` as a child process whose stderr lines arrive on the returned channel.
fn spawn_cli(config: &Path, args: &[&str]) -> (std::process::Child, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `text`; None if the process ended first.
async fn line_with(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, text: &str) -> Option<String> {
    let wait = async {
        while let Some(line) = rx.recv().await {
            if line.contains(text) {
                return Some(line);
            }
        }
        None
    };
    tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("no `{text}` line within {PATIENCE:?}"))
}

/// Waits until no session of this database holds an advisory lock (a killed process's session
/// has ended, so its job lock is free).
async fn job_locks_released(pool: &sqlx::PgPool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while scalar_i64(
        pool,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "a job lock was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dump_rows(e: &Env) -> (String, Vec<Row>) {
    let (orgs, rows) = read_dump(&e.dump.path);
    (orgs[0]["id"].as_str().unwrap().to_string(), rows)
}

fn span(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_and_production_on_one_database_keep_their_own_state() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let demo = || {
        let (code, out, err) = chatetl(&["demo", "--postgres", &db.url, "--days", "2"]);
        assert_eq!(code, 0, "{out}\n{err}");
    };
    let start = days_ago(5);
    let e = env(&db.url, days_ago(6), 7, &shipped_jobs(Some(&start.to_string()))).await;

    demo();
    let demo_first = target_snapshot(&pool, "chatetl_demo").await;
    assert!(demo_first["chatetl.window_loads"].len() > 20 && demo_first["real_chats"].len() > 2, "{demo_first:?}");

    // Backfill loads one job at a time: every production job, as an operator would.
    for (file, _) in shipped_jobs(None) {
        let job = file.trim_end_matches(".yaml");
        let (from, to) = (start.to_string(), days_ago(3).to_string());
        let (code, out, err) = e.cli(&["backfill", "--job", job, "--from", &from, "--to", &to, "--concurrency", "4"]);
        assert_eq!(code, 0, "{job}: {out}\n{err}");
    }
    assert_eq!(target_snapshot(&pool, "chatetl_demo").await, demo_first, "production's backfill left the demo alone");
    let prod_first = target_snapshot(&pool, "analytics").await;
    let real_chats = status_of(&e.path, "real_chats");
    assert_eq!(real_chats["windows_loaded"], 3, "{real_chats}");
    assert_eq!(real_chats["last_run"]["kind"], "backfill", "{real_chats}");
    let watermark: DateTime<Utc> = serde_json::from_value(real_chats["watermark"].clone()).unwrap();
    assert_eq!(watermark, day_start(days_ago(2)), "production's own watermark, not the demo's");

    demo();
    assert_eq!(target_snapshot(&pool, "analytics").await, prod_first, "the demo left production alone");
    let demo_second = target_snapshot(&pool, "chatetl_demo").await;
    assert_ne!(demo_second["chatetl.runs"], demo_first["chatetl.runs"], "the demo ran again");

    let (code, out, err) = e.cli(&["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(target_snapshot(&pool, "chatetl_demo").await, demo_second, "production's run left the demo alone");
    let real_chats = status_of(&e.path, "real_chats");
    assert_eq!(real_chats["windows_loaded"], 5, "days -5 .. -1: {real_chats}");
    let watermark: DateTime<Utc> = serde_json::from_value(real_chats["watermark"].clone()).unwrap();
    assert_eq!(watermark, day_start(today()));
    // One job name, one state row per target.
    let targets: Vec<String> =
        sqlx::query_scalar("SELECT target FROM chatetl.jobs WHERE job = 'real_chats' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(targets, ["analytics", "chatetl_demo"]);
    let runs =
        scalar_i64(&pool, "SELECT count(*) FROM chatetl.runs WHERE target = 'analytics' AND job = 'real_chats'").await;
    assert_eq!(runs, 2, "production's backfill and run; the demo's runs are its own");
}

/// `analytics.real_chats` as the release before targets created it: no date index.
const OLD_REAL_CHATS: &str = "CREATE SCHEMA analytics;
CREATE TABLE analytics.real_chats (bucket_start timestamptz NOT NULL, bucket_date date NOT NULL, scope text,
  team_id text, user_id text, real_chats bigint, _window_start timestamptz NOT NULL, _loaded_at timestamptz NOT NULL,
  _run_id text NOT NULL, CONSTRAINT real_chats_natural_key UNIQUE NULLS NOT DISTINCT (bucket_start, scope, team_id, user_id))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_the_release_before_targets_is_claimed_by_the_schema_holding_the_table() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let start = NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
    let jobs = [job_file("real_chats", start, ""), job_file("short_chats", start, "")];
    let e = env(&db.url, start, 8, &jobs).await;
    let job = chatetl::config::load(&e.path).unwrap().jobs["real_chats"].clone();
    let old_hash = chatetl::state::legacy_definition_hash(&job);

    // The state as the previous release left it: migrations 1 and 2, rows keyed by job name.
    let mut old = sqlx::migrate::Migrator::with_migrations(
        [
            (1, "state", include_str!("../../migrations/0001_state.sql")),
            (2, "error kind", include_str!("../../migrations/0002_error_kind.sql")),
        ]
        .into_iter()
        .map(|(v, d, sql)| {
            use sqlx::SqlSafeStr;
            sqlx::migrate::Migration::new(v, d.into(), sqlx::migrate::MigrationType::Simple, sql.into_sql_str(), false)
        })
        .collect(),
    );
    old.dangerous_set_table_name("chatetl._sqlx_migrations");
    old.create_schema("chatetl");
    old.run(&pool).await.unwrap();
    sqlx::raw_sql(OLD_REAL_CHATS).execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO chatetl.jobs (job, definition_hash, watermark, history_start) VALUES
           ('real_chats', $1, $2, $3), ('short_chats', 'some-hash', $2, $3)",
    )
    .bind(&old_hash)
    .bind(day_start(start + chrono::Duration::days(3)))
    .bind(day_start(start))
    .execute(&pool)
    .await
    .unwrap();
    let legacy_days = span(start, start + chrono::Duration::days(2));
    for d in &legacy_days {
        let (from, to) = (day_start(*d), day_start(*d + chrono::Duration::days(1)));
        sqlx::query("INSERT INTO analytics.real_chats VALUES ($1, $2, 'org', NULL, NULL, -1, $1, now(), 'legacy-run')")
            .bind(from)
            .bind(*d)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO chatetl.window_loads VALUES ('real_chats', $1, $2, 1, 3, 'legacy-run', $3, now())")
            .bind(from)
            .bind(to)
            .bind(&old_hash)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO chatetl.runs (run_id, job, kind, started_at, finished_at, status, windows_planned, windows_loaded, rows, requests)
         VALUES ('legacy-run', 'real_chats', 'backfill', now() - interval '1 day', now() - interval '1 day', 'succeeded', 3, 3, 3, 3)",
    )
    .execute(&pool)
    .await
    .unwrap();

    // The current release claims real_chats for analytics (its table is there), not short_chats.
    let s = status_of(&e.path, "real_chats");
    assert_eq!(s["windows_loaded"], 3, "{s}");
    assert_eq!(s["rows_loaded"], 3, "{s}");
    assert_eq!(s["last_run"]["run_id"], "legacy-run", "{s}");
    assert_eq!(s["definition_changed"], false, "the old hash was adopted: {s}");
    let watermark: DateTime<Utc> = serde_json::from_value(s["watermark"].clone()).unwrap();
    assert_eq!(watermark, day_start(start + chrono::Duration::days(3)));
    let short = status_of(&e.path, "short_chats");
    assert!(short["watermark"].is_null() && short["windows_loaded"] == 0, "no table, nothing claimed: {short}");
    let unclaimed = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let sql = format!("SELECT string_agg(job, ',' ORDER BY job) FROM chatetl.{table} WHERE target IS NULL");
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap()
        }
    };
    assert_eq!(unclaimed("jobs").await.as_deref(), Some("short_chats"));
    assert_eq!(unclaimed("window_loads").await, None);
    assert_eq!(unclaimed("runs").await, None);

    // A backfill skips the claimed windows (their rows stay) and loads the rest once.
    e.sim.handle.clear_requests();
    let (code, out, err) = e.cli(&["backfill", "--job", "real_chats", "--from", "2024-05-01", "--to", "2024-05-05"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(e.sim.handle.requests().iter().all(|r| !r.body.contains("2024-05-01T")), "claimed windows skipped");
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM analytics.real_chats WHERE _run_id = 'legacy-run'").await, 3);
    assert_eq!(status_of(&e.path, "real_chats")["windows_loaded"], 5);
    let index =
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'analytics' AND indexname = 'real_chats_bucket_date_idx'";
    assert_eq!(scalar_i64(&pool, index).await, 1, "the old table got its date index");
    let kept = "SELECT count(*) FROM chatetl.jobs WHERE target = 'analytics' AND job = 'real_chats' \
        AND definition->>'version' = '2' AND definition_hash = $1";
    let kept: i64 =
        sqlx::query_scalar(kept).bind(chatetl::state::definition_hash(&job)).fetch_one(&pool).await.unwrap();
    assert_eq!(kept, 1, "the unchanged definition's document is kept from its first run on");

    // A second target on the same database starts fresh and leaves analytics alone.
    let reporting = e.path.with_file_name("reporting.yaml");
    let text = std::fs::read_to_string(&e.path).unwrap().replace("schema: analytics", "schema: reporting");
    std::fs::write(&reporting, text).unwrap();
    let fresh = status_of(&reporting, "real_chats");
    assert!(fresh["watermark"].is_null() && fresh["windows_loaded"] == 0 && fresh["last_run"].is_null(), "{fresh}");
    let analytics_before = target_snapshot(&pool, "analytics").await;
    let (code, out, err) =
        cli(&reporting, &["run", "--job", "real_chats", "--from", "2024-05-01", "--to", "2024-05-02"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(status_of(&reporting, "real_chats")["windows_loaded"], 2);
    assert_eq!(target_snapshot(&pool, "analytics").await, analytics_before);
    let repeated = "SELECT count(*) FROM (SELECT 1 FROM chatetl.jobs GROUP BY target, job HAVING count(*) > 1) d";
    assert_eq!(scalar_i64(&pool, repeated).await, 0, "one row per (target, job)");
    assert_eq!(unclaimed("jobs").await.as_deref(), Some("short_chats"), "reporting holds no short_chats table");
    let loads = "SELECT count(*) FROM chatetl.window_loads WHERE job = 'real_chats'";
    assert_eq!(scalar_i64(&pool, loads).await, 5 + 2, "analytics' five and reporting's two: none copied");

    // Reloading the claimed windows replaces their rows whole: the simulator's values, no repeats.
    let (code, out, err) = e.cli(&["run", "--job", "real_chats", "--from", "2024-05-01", "--to", "2024-05-05"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (org, rows) = dump_rows(&e);
    let want =
        dump_sums(&rows, &org, HEL, &span(start, start + chrono::Duration::days(4)), |r| real_chat(r, 2.0), |_| 1.0);
    assert_tables_match("real_chats", &pg_table(&pool, "real_chats", "real_chats").await, &want, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_aggregation_becomes_a_column_while_readers_read_and_outdated_fills_it() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let start = days_ago(8);
    let e = env(&db.url, days_ago(9), 10, &[job_file("real_chats", start, "")]).await;
    // No lookback: the run after the change loads only new days, so the older ones stay outdated.
    e.edit_job("real_chats", "lookback_windows: 2", "lookback_windows: 0");
    let (code, out, err) =
        e.cli(&["run", "--job", "real_chats", "--from", &start.to_string(), "--to", &days_ago(3).to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");

    let reader = Reader::start(db.pool().await, "SELECT count(*) FROM analytics.real_chats", |r| {
        (r.get::<i64, _>(0) == 0).then(|| "the table read empty".to_string())
    });
    e.edit_job(
        "real_chats",
        "  - { type: count, field: chat_session_id, column: real_chats }\n",
        "  - { type: count, field: chat_session_id, column: real_chats }\n  - { type: sum, field: sales, column: real_chat_sales }\n",
    );
    let (code, out, err) = e.cli(&["run", "--job", "real_chats"]);
    assert_eq!(code, 0, "the next run adds the column and loads: {out}\n{err}");
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT col_description('analytics.real_chats'::regclass, attnum) FROM pg_attribute
         WHERE attrelid = 'analytics.real_chats'::regclass AND attname = 'real_chat_sales'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(comment.is_some_and(|c| !c.is_empty()), "the added column has its comment");
    let s = status_of(&e.path, "real_chats");
    assert_eq!(s["windows_outdated"], 6, "the six days loaded before: {s}");
    assert_eq!(s["added_columns"], serde_json::json!(["real_chat_sales"]), "{s}");
    assert_eq!(s["definition_change"], Value::Null, "{s}");
    let nulls = "SELECT count(DISTINCT bucket_date) FROM analytics.real_chats WHERE real_chat_sales IS NULL";
    assert_eq!(scalar_i64(&pool, nulls).await, 6);

    let (code, out, err) = e.cli(&["run", "--job", "real_chats", "--outdated"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let s = status_of(&e.path, "real_chats");
    assert_eq!(s["windows_outdated"], 0, "{s}");
    assert_eq!(s["windows_loaded"], 8, "{s}");
    let (reads, wrong) = reader.finish().await;
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(reads > 20, "the reader read throughout: {reads}");
    let (org, rows) = dump_rows(&e);
    let days = span(start, days_ago(1));
    let want = dump_sums(&rows, &org, HEL, &days, |r| real_chat(r, 2.0), |r| r.n("sales"));
    assert_tables_match("real_chat_sales", &pg_table(&pool, "real_chats", "real_chat_sales").await, &want, false);

    // A table that lost a value column of the definition (or never had one: an endpoint that
    // gained a field) gets it back in place, null in the rows loaded before.
    sqlx::query("ALTER TABLE analytics.real_chats DROP COLUMN real_chat_sales").execute(&pool).await.unwrap();
    let (code, out, err) = e.cli(&["run", "--job", "real_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT col_description('analytics.real_chats'::regclass, attnum) FROM pg_attribute
         WHERE attrelid = 'analytics.real_chats'::regclass AND attname = 'real_chat_sales'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(comment.is_some_and(|c| !c.is_empty()), "the column is back, with its comment");
    // One that lost a key column holds something else: refused, naming the command that rebuilds it.
    sqlx::query("ALTER TABLE analytics.real_chats DROP COLUMN team_id").execute(&pool).await.unwrap();
    let (code, out, err) = e.cli(&["run", "--job", "real_chats"]);
    assert_eq!(code, 2, "a configuration problem: {out}\n{err}");
    assert!(err.contains("team_id") && err.contains("`chatetl run --job real_chats --rebuild`"), "{err}");
}

/// What a reader of the live table must never see during a rebuild: no rows, a window missing
/// (20 days), a row twice.
const LIVE_READ: &str = "SELECT count(*), count(DISTINCT _window_start),
    count(*) - count(DISTINCT (bucket_start, scope, team_id, user_id)) FROM analytics.real_chats";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_killed_at_any_instant_keep_the_live_table_whole_and_the_last_one_promotes() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let start = days_ago(20);
    let e = env(&db.url, days_ago(21), 22, &[job_file("real_chats", start, "max_windows_per_request: 1")]).await;
    let (code, out, err) = e.cli(&["run", "--job", "real_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(scalar_i64(&pool, "SELECT count(DISTINCT _window_start) FROM analytics.real_chats").await, 20);
    // A BI role's grant survives the swap.
    let role = format!("bi_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role}; GRANT USAGE ON SCHEMA analytics TO {role}; GRANT SELECT ON analytics.real_chats TO {role}"
    )))
    .execute(&pool)
    .await
    .unwrap();

    // The meaning changes (three user messages make a real chat): only a rebuild may load it.
    e.edit_job("real_chats", "lower: 2", "lower: 3");
    assert!(status_of(&e.path, "real_chats")["definition_changed"] == true);
    let reader = Reader::start(db.pool().await, LIVE_READ, |r| {
        let (rows, windows, twice) = (r.get::<i64, _>(0), r.get::<i64, _>(1), r.get::<i64, _>(2));
        (rows == 0 || windows != 20 || twice != 0).then(|| format!("{rows} rows, {windows} windows, {twice} twice"))
    });
    e.sim.handle.set_faults(FaultConfig { latency_ms: 120, ..FaultConfig::default() });
    let shadow_windows = "SELECT count(DISTINCT _window_start) FROM analytics._rebuild_real_chats";
    let mut kills = 0;
    let mut rebuilt = 0;
    for delay_ms in [0u64, 150, 400, 700] {
        job_locks_released(&pool).await;
        let (mut child, mut lines) =
            spawn_cli(&e.path, &["run", "--job", "real_chats", "--rebuild", "--concurrency", "1"]);
        line_with(&mut lines, "windows loaded").await.expect("the rebuild commits a window");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success(), "killed before it finished (after {delay_ms} ms)");
        kills += 1;
        // What status says agrees with both tables.
        let s = status_of(&e.path, "real_chats");
        assert_eq!(s["windows_loaded"], 20, "{s}");
        assert_eq!(s["rows_loaded"], scalar_i64(&pool, "SELECT count(*) FROM analytics.real_chats").await, "{s}");
        let in_shadow = scalar_i64(&pool, shadow_windows).await;
        assert_eq!(s["rebuild_windows_loaded"], in_shadow, "{s}");
        assert!(in_shadow > rebuilt, "each attempt resumes and adds windows: {in_shadow} after {rebuilt}");
        rebuilt = in_shadow;
        let running = "SELECT count(*) FROM chatetl.runs WHERE target = 'analytics' AND status = 'running'";
        assert_eq!(scalar_i64(&pool, running).await, 1, "the killed run, until the next one");
    }
    assert!(rebuilt < 20, "the kills came before the rebuild finished: {rebuilt}");

    e.sim.handle.clear_requests();
    job_locks_released(&pool).await;
    let (code, out, err) = e.cli(&["run", "--job", "real_chats", "--rebuild"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(e.sim.handle.requests().len(), 3 * (20 - rebuilt as usize), "resumed: only the windows not rebuilt yet");
    let (reads, wrong) = reader.finish().await;
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(reads > 50, "the reader read throughout: {reads}");

    let gone: bool = sqlx::query_scalar("SELECT to_regclass('analytics._rebuild_real_chats') IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(gone, "the shadow table is gone");
    let s = status_of(&e.path, "real_chats");
    assert_eq!(s["definition_changed"], false, "{s}");
    assert!(s["rebuild_windows_loaded"].is_null() && s["windows_loaded"] == 20 && s["windows_outdated"] == 0, "{s}");
    let shadow_state = "SELECT (SELECT count(*) FROM chatetl.jobs WHERE job LIKE '%~rebuild')
        + (SELECT count(*) FROM chatetl.window_loads WHERE job LIKE '%~rebuild') + (SELECT count(*) FROM chatetl.runs WHERE job LIKE '%~rebuild')";
    assert_eq!(scalar_i64(&pool, shadow_state).await, 0, "the shadow's state moved to the job");
    let died = "SELECT count(*) FROM chatetl.runs WHERE target = 'analytics' AND job = 'real_chats' AND kind = 'rebuild' AND status = 'died'";
    assert_eq!(scalar_i64(&pool, died).await, kills);
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'analytics.real_chats'::regclass ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(names, ["analytics.real_chats_bucket_date_idx", "analytics.real_chats_natural_key"]);
    let granted: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'analytics.real_chats', 'SELECT')")
        .bind(&role)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(granted, "the grant was copied to the rebuilt table");
    let (org, rows) = dump_rows(&e);
    let want = dump_sums(&rows, &org, HEL, &span(start, days_ago(1)), |r| real_chat(r, 3.0), |_| 1.0);
    assert_tables_match("real_chats", &pg_table(&pool, "real_chats", "real_chats").await, &want, false);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}; DROP ROLE {role}"))).execute(&pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_windows_are_recorded_until_loaded_and_a_killed_run_is_marked_died() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let start = days_ago(10);
    let e = env(&db.url, days_ago(11), 12, &[job_file("real_chats", start, "max_windows_per_request: 2")]).await;
    // The chunk of days -6 and -5 fails for good (every attempt of its scope requests).
    let failing = days_ago(6);
    let interval_start = HEL
        .from_local_datetime(&failing.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string();
    e.sim.handle.add_rule(FaultRule {
        body_contains: Some(interval_start),
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let failures = || async {
        let config = chatetl::config::load(&e.path).unwrap();
        let runner = chatetl::runner::Runner::open(config).await.unwrap();
        runner.sink.window_failures("real_chats").await.unwrap()
    };
    let (code, out, err) = e.cli(&["run", "--job", "real_chats"]);
    assert_eq!(code, 1, "an outage of two windows exits 1: {out}\n{err}");
    let first = failures().await;
    let starts: Vec<DateTime<Utc>> = first.keys().copied().collect();
    assert_eq!(starts, [day_start(failing), day_start(days_ago(5))]);
    for f in first.values() {
        assert_eq!((f.attempts, f.kind), (1, chatetl::error::ErrorKind::UpstreamUnavailable), "{f:?}");
        assert!(f.error.contains("job real_chats") && f.error.contains("503"), "{f:?}");
    }
    assert_eq!(status_of(&e.path, "real_chats")["windows_failed"], 2);

    let (code, _, _) =
        e.cli(&["run", "--job", "real_chats", "--from", &failing.to_string(), "--to", &days_ago(5).to_string()]);
    assert_eq!(code, 1);
    let second = failures().await;
    assert!(second.values().all(|f| f.attempts == 2), "{second:?}");
    assert!(second.values().all(|f| f.run_id != first[&f.window_start].run_id), "the newest attempt wins");

    e.sim.handle.clear_rules();
    let (code, out, err) = e.cli(&["run", "--job", "real_chats", "--failed"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(failures().await.is_empty(), "loaded windows are no longer failures");
    let s = status_of(&e.path, "real_chats");
    assert_eq!((s["windows_failed"].as_u64(), s["windows_loaded"].as_u64()), (Some(0), Some(10)), "{s}");

    // SIGKILL in the middle of a run: its record says running until the next run of the job.
    e.sim.handle.set_faults(FaultConfig { latency_ms: 3000, ..FaultConfig::default() });
    let (mut child, mut lines) = spawn_cli(
        &e.path,
        &["run", "--job", "real_chats", "--from", &start.to_string(), "--to", &days_ago(1).to_string()],
    );
    line_with(&mut lines, "run started").await.expect("the run starts");
    child.kill().unwrap();
    let _ = child.wait();
    let killed: String = sqlx::query_scalar(
        "SELECT run_id FROM chatetl.runs WHERE target = 'analytics' AND job = 'real_chats' AND status = 'running'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    e.sim.handle.set_faults(FaultConfig::default());
    job_locks_released(&pool).await;
    let (code, out, err) =
        e.cli(&["run", "--job", "real_chats", "--from", &days_ago(2).to_string(), "--to", &days_ago(1).to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = sqlx::query("SELECT status, finished_at, error FROM chatetl.runs WHERE run_id = $1")
        .bind(&killed)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(r.get::<String, _>(0), "died");
    assert!(r.get::<Option<DateTime<Utc>>, _>(1).is_some());
    assert_eq!(r.get::<Option<String>, _>(2).as_deref(), Some("the process ended before the run finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_have_a_natural_key_a_date_index_and_every_state_column_a_comment() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (code, out, err) = chatetl(&["demo", "--postgres", &db.url, "--days", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // (table, constraint type, key columns, nulls not distinct)
    let keys: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, c.contype::text,
           (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(num, ord)
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num),
           i.indnullsnotdistinct
         FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid
         WHERE c.connamespace = 'chatetl_demo'::regnamespace AND c.contype IN ('p', 'u') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let key = |t: &str| {
        keys.iter().find(|k| k.0 == format!("chatetl_demo.{t}")).cloned().unwrap_or_else(|| panic!("{t}: {keys:?}"))
    };
    assert_eq!(
        key("real_chats"),
        ("chatetl_demo.real_chats".into(), "u".into(), "bucket_start,scope,team_id,user_id".into(), true)
    );
    assert_eq!(key("comm100_today"), ("chatetl_demo.comm100_today".into(), "p".into(), "captured_at".into(), false));
    let tables = scalar_i64(&pool, "SELECT count(*) FROM pg_tables WHERE schemaname = 'chatetl_demo'").await;
    assert_eq!(keys.len() as i64, tables, "every table has one natural key: {keys:?}");

    // Every table has an index led by its date column, and the README's filter uses it.
    let dated = "SELECT count(DISTINCT i.indrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE c.relnamespace = 'chatetl_demo'::regnamespace AND a.attname IN ('bucket_date', 'captured_date')";
    assert_eq!(scalar_i64(&pool, dated).await, tables);
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
    for filter in ["bucket_date >= current_date - 30", "bucket_date = current_date - 1"] {
        let sql =
            format!("EXPLAIN SELECT bucket_date, user_id, real_chats FROM chatetl_demo.real_chats WHERE {filter}");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await.unwrap();
        assert!(plan.iter().any(|l| l.contains("real_chats_bucket_date_idx")), "{filter}: {plan:?}");
    }
    drop(conn);

    // Comments on every state table and column, and on every column of the job tables.
    let uncommented: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname || coalesce('.' || a.attname, '') FROM pg_class c
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind = 'r' AND c.relnamespace IN ('chatetl'::regnamespace, 'chatetl_demo'::regnamespace)
           AND c.relname <> '_sqlx_migrations'
           AND (obj_description(c.oid, 'pg_class') IS NULL OR (a.attnum IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL))
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(uncommented.is_empty(), "without a comment: {uncommented:?}");
    let state_tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'chatetl' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        state_tables,
        [
            "_sqlx_migrations",
            "jobs",
            "runs",
            "source_budgets",
            "source_slots",
            "ticks",
            "window_failures",
            "window_loads"
        ]
    );
}

/// Commits run four at a time and write their rows concurrently, taking turns only for the
/// state: a range loaded after a later one moves the watermark over both at once (the walk over
/// the chain of loads from the watermark), every row lands once, exactly as the dump has it; and a
/// column retyped by hand is refused before any load as the table's fault (exit 2, naming the
/// table and the column), its rows kept: the binary COPY would have written a bigint's bytes into
/// a numeric column as a wrong number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_move_the_watermark_over_every_loaded_window_and_a_retyped_column_is_refused() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let start = days_ago(12);
    let e = env(&db.url, days_ago(13), 14, &[job_file("real_chats", start, "max_windows_per_request: 1")]).await;
    let (later, last) = (days_ago(6).to_string(), days_ago(1).to_string());
    let (code, out, err) =
        e.cli(&["backfill", "--job", "real_chats", "--from", &later, "--to", &last, "--concurrency", "4"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(status_of(&e.path, "real_chats")["watermark"], Value::Null, "the first days are missing");
    let early = (start.to_string(), days_ago(7).to_string());
    let (code, out, err) =
        e.cli(&["backfill", "--job", "real_chats", "--from", &early.0, "--to", &early.1, "--concurrency", "4"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let s = status_of(&e.path, "real_chats");
    assert_eq!(s["watermark"], serde_json::to_value(day_start(today())).unwrap(), "{s}");
    assert_eq!(s["windows_loaded"], 12);
    let (org, rows) = dump_rows(&e);
    let want = dump_sums(&rows, &org, HEL, &span(start, days_ago(1)), |r| real_chat(r, 2.0), |_| 1.0);
    assert_tables_match("real_chats", &pg_table(&pool, "real_chats", "real_chats").await, &want, false);

    let count = || async { scalar_i64(&pool, "SELECT count(*) FROM analytics.real_chats").await };
    let before = count().await;
    sqlx::raw_sql("ALTER TABLE analytics.real_chats ALTER COLUMN real_chats TYPE numeric")
        .execute(&pool)
        .await
        .unwrap();
    let (code, out, err) = e.cli(&["run", "--job", "real_chats", "--from", &last, "--to", &last]);
    assert_eq!(code, 2, "the table's fault: {out}\n{err}");
    assert!(err.contains("\"analytics\".\"real_chats\""), "{err}");
    assert!(err.contains("real_chats is numeric (chatetl writes bigint)"), "{err}");
    assert_eq!(count().await, before, "the window keeps its rows");
}

/// Two commits of the same window at the same time (found in review: with the job's row locked
/// only after the COPY, both deleted the old rows and kept their own) leave one load's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commits_of_one_window_at_once_leave_the_rows_of_one_of_them() {
    use chatetl::batch::WindowBatch;
    use chatetl::sink::Commit;
    use chatetl::sink::postgres::PostgresSink;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let start = days_ago(3);
    let e = env(&db.url, days_ago(4), 5, &[job_file("real_chats", start, "")]).await;
    let d = days_ago(2).to_string();
    let (code, out, err) = e.cli(&["backfill", "--job", "real_chats", "--from", &d, "--to", &d]);
    assert_eq!(code, 0, "{out}\n{err}");
    let config = chatetl::config::load(&e.path).unwrap();
    let job = config.jobs["real_chats"].clone();
    let schema = chatetl::runner::table_schema(&job);
    let hash = chatetl::state::definition_hash(&job);
    let w = chatetl::plan::Window { start: day_start(days_ago(2)), end: day_start(days_ago(1)) };
    let sink = PostgresSink::connect(&chatetl::config::Secret::new(db.url.clone()), "analytics").await.unwrap();
    let dims = schema.dims.len();
    // A user-scope row of `user`: scope, team_id, user_id.
    let row = |user: &str| chatetl::row::Row {
        bucket_start: w.start,
        dims: (0..dims)
            .map(|i| match i {
                0 => Some("user".to_string()),
                i if i == dims - 1 => Some(user.to_string()),
                _ => None,
            })
            .collect(),
        metrics: vec![chatetl::row::Value::Number(1.0); schema.metrics.len()],
    };
    let in_window = format!(
        "SELECT count(*) FROM analytics.real_chats WHERE {t} >= '{}' AND {t} < '{}'",
        w.start.to_rfc3339(),
        w.end.to_rfc3339(),
        t = schema.time_column
    );
    for round in 0..10 {
        let batch = |user: String| chatetl::batch::build(&schema, w, vec![row(&user)], Utc::now(), "r").unwrap();
        let commit = |batch| Commit {
            job: &job,
            schema: &schema,
            history_start: day_start(start),
            definition_hash: &hash,
            run_id: "r",
            requests: 1,
            windows: vec![WindowBatch { window: w, batch }],
            partial_after: None,
        };
        let (a, b) = tokio::join!(
            sink.commit(commit(batch(format!("a{round}")))),
            sink.commit(commit(batch(format!("b{round}"))))
        );
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        assert_eq!(scalar_i64(&pool, &in_window).await, 1, "round {round}: the rows of one load, not of both");
    }
}

/// Text with a NUL character (found in review) cannot be stored by PostgreSQL: the window fails
/// as an answer chatetl cannot store (exit 4, not retryable), not as a warehouse outage (exit 1,
/// which invites retries that can never succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_a_nul_character_fails_its_window_as_unstorable_not_as_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let org = "0b5f6c2e-0000-4000-8000-000000000002";
    let mut team_row = crate::util::real_chat_record("2024-03-05T10:00:00.000Z", org, "s1", 5.0);
    team_row["scope"] = "team".into();
    team_row["team_id"] = "team\u{0}x".into();
    let records = vec![
        serde_json::json!({"kind": "organization", "id": org, "name": "Nul", "api_token": TOKEN}),
        crate::util::real_chat_record("2024-03-05T10:00:00.000Z", org, "s1", 5.0),
        team_row,
    ];
    let path = crate::util::write_dataset(dir.path(), &records);
    let sim = chatetl::simulator::Simulator::new(
        chatetl::simulator::Dataset::read(&path).unwrap(),
        FaultConfig::default(),
        1,
    )
    .spawn()
    .await
    .unwrap();
    let db = TestDb::new().await;
    let jobs: Vec<_> =
        crate::util::shipped_jobs(Some("2024-03-01")).into_iter().filter(|(f, _)| *f == "real_chats.yaml").collect();
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&db.url), &jobs);
    let (code, out, err) = cli(&config, &["run", "--from", "2024-03-05", "--to", "2024-03-05", "--json"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("NUL character") && err.contains("a retry will not help"), "{err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (summary["retryable"].as_bool(), summary["errors"][0]["kind"].as_str()),
        (Some(false), Some("bad_response"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lock_of_a_vanished_host_is_noticed_within_a_minute_by_tcp_keepalives() {
    // A session advisory lock lasts as long as the server believes its holder is there: with the
    // OS defaults a host that vanished (power cut, partition) keeps it for two hours of silence.
    let db = TestDb::new().await;
    let sink =
        chatetl::sink::postgres::PostgresSink::connect(&chatetl::config::Secret::new(db.url.clone()), "analytics")
            .await
            .unwrap();
    let mut shown = Vec::new();
    for name in ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"] {
        let value: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = $1")
            .bind(name)
            .fetch_one(sink.pool())
            .await
            .unwrap();
        shown.push(value);
    }
    // The lock's connection is one of the pool's, detached: it was opened with the same options.
    assert_eq!(shown, ["30", "10", "3"], "chatetl's sessions ask for keepalives");
}

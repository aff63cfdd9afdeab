//! History recorded truthfully, in both warehouses: a range is clamped to the job's `start` and
//! its last complete window (a backfill `--to` a future date never moves the watermark past
//! today), a range wholly outside is refused; SIGINT during a backfill prints the summary, exits
//! 130 and records the run as interrupted; failed windows are recorded and `run --failed`
//! reloads exactly them.
//!
//! Dates are today's in Europe/Helsinki (the simulated dataset ends tomorrow), so these tests
//! check chatetl against the real clock: every expectation that names "today" accepts the day
//! before and after the run, in case the run straddles midnight.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chatetl::simulator::{FaultConfig, FaultRule, RunningSimulator};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use crate::util::{Dump, TOKEN, TestDb, TestWarehouse, chatetl, dump, serve, write_config};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

fn today() -> NaiveDate {
    Utc::now().with_timezone(&HEL).date_naive()
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    chatetl::time::local_day_start(HEL, d)
}

/// A daily chat count from `start`, one window per request.
fn daily_job(start: NaiveDate) -> (&'static str, String) {
    (
        "daily_chats.yaml",
        format!(
            "description: Chats per day\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
             aggregations:\n  - {{ type: count, column: chats }}\nstart: {start}\nlookback_windows: 0\n\
             max_windows_per_request: 1\n"
        ),
    )
}

struct Env {
    _dump: Dump,
    _dir: tempfile::TempDir,
    sim: RunningSimulator,
    config: PathBuf,
}

/// A simulated dataset from 12 days ago to tomorrow, and a configuration with [`daily_job`]
/// from `start` loading into the PostgreSQL database `postgres`, or else a Parquet folder.
async fn env(postgres: Option<&str>, start: NaiveDate) -> Env {
    let first = (today() - chrono::Duration::days(12)).to_string();
    let d = dump(&["--seed", "4", "--start", &first, "--days", "14", "--sessions-per-day", "30"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let warehouse = match postgres {
        Some(url) => TestWarehouse::Postgres(url),
        None => TestWarehouse::Parquet(&wh),
    };
    let config = write_config(dir.path(), &sim, TOKEN, warehouse, &[daily_job(start)]);
    Env { _dump: d, _dir: dir, sim, config }
}

impl Env {
    fn chatetl(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        chatetl(&all)
    }

    /// `status --json` of daily_chats.
    fn status(&self) -> Value {
        let (code, out, err) = self.chatetl(&["status", "--job", "daily_chats", "--json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    }

    fn watermark(&self) -> Option<DateTime<Utc>> {
        self.status()["watermark"].as_str().map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_clamped_to_the_last_complete_window_and_refused_wholly_outside() {
    let db = TestDb::new().await;
    for pg in [false, true] {
        let start = today() - chrono::Duration::days(8);
        let e = env(pg.then_some(db.url.as_str()), start).await;
        let sub = if pg { "postgres" } else { "parquet" };

        let (code, out, err) =
            e.chatetl(&["run", "--job", "daily_chats", "--from", "2030-01-01", "--to", "2030-01-02"]);
        assert_eq!(code, 2, "{sub}: a range wholly in the future is refused\n{out}\n{err}");
        assert!(err.contains("no window of the range is complete yet"), "{sub}: {err}");
        let before = (start - chrono::Duration::days(30)).to_string();
        let (code, _, err) = e.chatetl(&["run", "--job", "daily_chats", "--from", &before, "--to", &before]);
        assert_eq!(code, 2, "{sub}: {err}");
        assert!(err.contains("before the job's history starts"), "{sub}: {err}");
        assert!(e.sim.handle.requests().is_empty(), "{sub}: nothing was fetched");

        // A backfill to 4 days from now loads up to yesterday and says so.
        let before_run = today();
        let future = (before_run + chrono::Duration::days(4)).to_string();
        let (code, out, err) =
            e.chatetl(&["backfill", "--job", "daily_chats", "--from", &start.to_string(), "--to", &future]);
        let after_run = today();
        assert_eq!(code, 0, "{sub}: {out}\n{err}");
        assert!(
            err.contains("note: job daily_chats: the range ends at") && err.contains("the last complete window"),
            "{sub}: {err}"
        );
        let watermark = e.watermark();
        assert!(
            [day_start(before_run), day_start(after_run)].contains(&watermark.unwrap()),
            "{sub}: the watermark stays at the end of yesterday, not {watermark:?}"
        );
        let loaded = e.status()["windows_loaded"].as_u64().unwrap();
        assert!(loaded == 8 || loaded == 9, "{sub}: the days from start to yesterday, got {loaded}");

        // A range ending in the middle of today: today is not loaded, the watermark stays.
        let in_an_hour = (Utc::now() + chrono::Duration::hours(1)).with_timezone(&HEL).to_rfc3339();
        let yesterday = (today() - chrono::Duration::days(1)).to_string();
        let (code, out, err) = e.chatetl(&["run", "--job", "daily_chats", "--from", &yesterday, "--to", &in_an_hour]);
        assert_eq!(code, 0, "{sub}: {out}\n{err}");
        assert_eq!(e.watermark(), watermark, "{sub}: today is not complete, so the watermark did not move");
        let bodies: Vec<String> = e.sim.handle.requests().iter().map(|r| r.body.clone()).collect();
        if before_run == after_run {
            let today_start = format!("\"start\":\"{before_run}T00:00:00");
            assert!(!bodies.iter().any(|b| b.contains(&today_start)), "{sub}: today was never requested: {bodies:?}");
        }
    }
}

/// Starts `backfill` of daily_chats from `start` to yesterday, one window at a time, and returns
/// once it has committed its first window (its stderr says so): the child, the rest of its
/// stderr, and what it printed so far.
fn backfill_until_a_window_is_loaded(
    e: &Env,
    start: NaiveDate,
) -> (std::process::Child, BufReader<std::process::ChildStderr>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(["--config", e.config.to_str().unwrap(), "backfill", "--job", "daily_chats", "--concurrency", "1"])
        .args(["--from", &start.to_string(), "--to", &(today() - chrono::Duration::days(1)).to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the backfill ended before loading a window:\n{seen}");
        seen.push_str(&line);
        if line.contains("windows loaded") {
            return (child, stderr, seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_backfill_prints_the_summary_and_records_the_run_as_interrupted() {
    let db = TestDb::new().await;
    let start = today() - chrono::Duration::days(10);
    let e = env(Some(&db.url), start).await;
    // Slow answers, one window per request, one request at a time: the backfill is still going
    // when the signal arrives after its first committed window.
    e.sim.handle.set_faults(FaultConfig { latency_ms: 300, ..FaultConfig::default() });
    let (child, mut stderr, seen) = backfill_until_a_window_is_loaded(&e, start);
    // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{out}\n{seen}{rest}");
    assert!(rest.contains("SIGINT: finishing the windows in flight"), "{rest}");
    assert!(out.lines().any(|l| l.starts_with("daily_chats")), "the summary is printed:\n{out}");

    let pool = db.pool().await;
    let (status, loaded, planned): (String, i32, i32) =
        sqlx::query_as("SELECT status, windows_loaded, windows_planned FROM chatetl.runs WHERE job = 'daily_chats'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "interrupted");
    assert!(loaded >= 1 && loaded < planned, "{loaded} of {planned} windows");
    let loads: i64 = sqlx::query_scalar("SELECT count(*) FROM chatetl.window_loads WHERE job = 'daily_chats'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(loads, loaded as i64, "every window the run counts is committed, and only those");

    // The next backfill loads the rest.
    e.sim.handle.set_faults(FaultConfig::default());
    let (code, out, err) = e.chatetl(&[
        "backfill",
        "--job",
        "daily_chats",
        "--from",
        &start.to_string(),
        "--to",
        &(today() - chrono::Duration::days(1)).to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(e.status()["windows_loaded"].as_u64(), Some(planned as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_windows_are_recorded_and_run_failed_reloads_exactly_them() {
    let db = TestDb::new().await;
    for pg in [false, true] {
        let start = today() - chrono::Duration::days(8);
        let e = env(pg.then_some(db.url.as_str()), start).await;
        let sub = if pg { "postgres" } else { "parquet" };
        let broken = [start + chrono::Duration::days(2), start + chrono::Duration::days(5)];
        for day in broken {
            e.sim.handle.add_rule(FaultRule {
                body_contains: Some(format!("{day}T00:00:00")),
                faults: FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() },
                ..FaultRule::default()
            });
        }
        let to = (start + chrono::Duration::days(6)).to_string();
        let (code, out, err) =
            e.chatetl(&["backfill", "--job", "daily_chats", "--from", &start.to_string(), "--to", &to]);
        assert_eq!(code, 1, "{sub}: two windows failed (an outage: exit 1)\n{out}\n{err}");
        let status = e.status();
        assert_eq!(status["windows_failed"], 2, "{sub}: {status}");
        assert_eq!(status["windows_loaded"], 5, "{sub}: {status}");
        let (_, out, _) = e.chatetl(&["status", "--job", "daily_chats"]);
        assert!(out.contains("2: run --failed"), "{sub}: {out}");

        // The upstream recovers: --failed asks for exactly the two failed days.
        e.sim.handle.clear_rules();
        e.sim.handle.clear_requests();
        let (code, out, err) = e.chatetl(&["run", "--job", "daily_chats", "--failed"]);
        assert_eq!(code, 0, "{sub}: {out}\n{err}");
        let asked: Vec<String> = e.sim.handle.requests().iter().map(|r| r.body.clone()).collect();
        assert_eq!(asked.len(), 2, "{sub}: one request per failed window: {asked:?}");
        for day in broken {
            assert!(asked.iter().any(|b| b.contains(&format!("{day}T00:00:00"))), "{sub}: {day} reloaded: {asked:?}");
        }
        let status = e.status();
        assert_eq!(
            (status["windows_failed"].as_u64(), status["windows_loaded"].as_u64()),
            (Some(0), Some(7)),
            "{sub}: {status}"
        );
        let (code, _, err) = e.chatetl(&["run", "--job", "daily_chats", "--failed"]);
        assert_eq!(code, 0);
        assert!(err.contains("no failed windows"), "{sub}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_long_table_name_rebuilds_and_keeps_one_key_and_one_date_index() {
    let db = TestDb::new().await;
    let start = today() - chrono::Duration::days(3);
    let e = env(Some(&db.url), start).await;
    // 50 characters: `_rebuild_<table>_bucket_date_idx` is 75, past PostgreSQL's 63.
    let table = "daily_chats_for_the_whole_organization_per_local_d";
    assert_eq!(table.len(), 50);
    let job = e.config.parent().unwrap().join("jobs/daily_chats.yaml");
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&job, format!("{text}table: {table}\n")).unwrap();
    let (code, out, err) = e.chatetl(&["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    std::fs::write(&job, format!("{}table: {table}\nrooms: [room-a]\n", text)).unwrap();
    let (code, out, err) = e.chatetl(&["run", "--job", "daily_chats", "--rebuild"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = e.chatetl(&["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "the next run finds the table as it made it: {out}\n{err}");
    let pool = db.pool().await;
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE schemaname = 'analytics' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(indexes.len(), 2, "one natural key and one date index, no duplicate: {indexes:?}");
    assert!(indexes.iter().all(|i| i.len() <= 63 && i.starts_with(table)), "{indexes:?}");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'analytics'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, [table], "the shadow table is gone");
    assert_eq!(e.status()["definition_changed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_is_recorded_as_died_by_the_next_run_in_parquet() {
    let start = today() - chrono::Duration::days(10);
    let e = env(None, start).await;
    e.sim.handle.set_faults(FaultConfig { latency_ms: 300, ..FaultConfig::default() });
    let (mut child, _stderr, _) = backfill_until_a_window_is_loaded(&e, start);
    child.kill().unwrap();
    child.wait().unwrap();
    let root = e.config.parent().unwrap().join("wh");
    let state = crate::util::parquet_state_db(&root).await;
    let status: Vec<String> = sqlx::query_scalar("SELECT status FROM runs").fetch_all(&state).await.unwrap();
    assert_eq!(status, ["running"], "the killed run could not close its record");
    state.close().await;

    e.sim.handle.set_faults(FaultConfig::default());
    let (code, out, err) = e.chatetl(&["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let state = crate::util::parquet_state_db(&root).await;
    let runs: Vec<(String, String, Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT kind, status, error, finished_at FROM runs ORDER BY started_at")
            .fetch_all(&state)
            .await
            .unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].0.as_str(), runs[0].1.as_str()), ("backfill", "died"), "{runs:?}");
    assert!(runs[0].2.as_deref().is_some_and(|e| e.contains("the process ended before the run finished")), "{runs:?}");
    assert!(runs[0].3.is_some(), "a died run gets the time it was found");
    assert_eq!(runs[1].1, "succeeded");
}

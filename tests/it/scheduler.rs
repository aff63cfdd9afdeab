//! `chatetl schedule`: ticks on a moved clock advance watermarks, overlapping ticks are skipped,
//! two daemons load each window once, an outage is caught up on the first tick, reloads detect a
//! changed job (and keep the old definitions when the new files are invalid), SIGTERM in the
//! middle of a catch-up leaves only whole committed windows, and /metrics matches the rows in
//! the warehouse.
//!
//! No test sleeps and hopes: after moving the manual clock a test waits until every job loop
//! has looked at the new time and gone back to sleep and no run is in flight ([`settle`]), so a
//! check that something did *not* happen is made only after the loop provably saw the time.
//! Waits have a generous timeout ([`PATIENCE`]) that only turns a hang into a failure.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chatetl::config;
use chatetl::metrics::Metrics;
use chatetl::runner::Runner;
use chatetl::scheduler::{Activity, Clock, ManualClock, Scheduler, SchedulerOptions};
use chatetl::simulator::{FaultConfig, RunningSimulator};
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::util::{TOKEN, TestDb, TestWarehouse, dump, eventually, serve, write_config};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

fn local(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    HEL.with_ymd_and_hms(y, m, d, h, min, s).earliest().unwrap().with_timezone(&Utc)
}

fn hourly_job(start: &str, schedule: &str) -> (&'static str, String) {
    (
        "hourly_chats.yaml",
        format!(
            "description: Chats per hour\nsource: giosg\nendpoint: chat_sessions\nwindow: hour\nscopes: [org, team]\n\
             aggregations:\n  - {{ type: count, column: chats }}\nstart: {start}\nlookback_windows: 0\nschedule: \"{schedule}\"\n"
        ),
    )
}

fn daily_job(start: &str, schedule: &str, extra: &str) -> (&'static str, String) {
    (
        "daily_chats.yaml",
        format!(
            "description: Chats per day\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
             aggregations:\n  - {{ type: count, column: chats }}\n{extra}start: {start}\nlookback_windows: 0\nschedule: \"{schedule}\"\n"
        ),
    )
}

/// How long anything a test waits for may take before the test fails: a guard against hangs,
/// never a delay the test relies on.
const PATIENCE: Duration = Duration::from_secs(30);

/// `f`, or a failure naming `what` after [`PATIENCE`].
async fn within<T>(what: impl Display, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("not within {PATIENCE:?}: {what}"))
}

/// A scheduler running in this process on a manual clock.
struct Daemon {
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    activity: watch::Receiver<Activity>,
    stop: CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// The scheduler's /readyz check.
    ready: chatetl::metrics::HealthCheck,
}

/// Starts a daemon and waits until it has started its job loops, whose first fire times are
/// then fixed (computed from the clock's reading at that moment): the clock may move at once.
async fn start_daemon(config_path: &Path, clock: Arc<ManualClock>) -> Daemon {
    start_daemon_with(config_path, clock, false).await
}

/// [`start_daemon`], catching up at start with `catch_up` (as `--catch-up`).
async fn start_daemon_with(config_path: &Path, clock: Arc<ManualClock>, catch_up: bool) -> Daemon {
    let config = config::load(config_path).unwrap();
    let runner = Runner::open(config).await.unwrap();
    let opts = SchedulerOptions { concurrency: 2, shutdown_grace: Duration::from_secs(5), catch_up };
    let scheduler = Scheduler::new(config_path.to_path_buf(), runner, Clock::Manual(clock.clone()), opts);
    let metrics = scheduler.metrics();
    let activity = scheduler.activity();
    let ready = scheduler.readiness_check();
    let stop = CancellationToken::new();
    let (reload, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(scheduler.run(stop.clone(), rx));
    let d = Daemon { clock, metrics, activity, stop, reload, task, ready };
    d.wait("the job loops start", |a| a.generation == 1).await;
    d
}

/// Waits until every job loop of `daemons` (all on `clock`) has looked at the clock's current
/// time and gone back to sleep, then until none of them has a run in flight. A loop that ticks
/// starts its run before it sleeps again, so once all sleep no run can start until the clock
/// moves: what the metrics show then is final for this time.
async fn settle(clock: &ManualClock, daemons: &[&Daemon]) {
    let loops: usize = daemons.iter().map(|d| d.activity().loops).sum();
    let now = clock.now();
    within(format!("{loops} job loop(s) asleep after seeing {now}"), clock.wait_for_sleepers(loops)).await;
    for d in daemons {
        d.wait(format!("the runs started at {now} end"), |a| a.in_flight == 0).await;
    }
}

impl Daemon {
    /// The scheduler's activity now.
    fn activity(&self) -> Activity {
        self.activity.borrow().clone()
    }

    /// Waits until the scheduler's activity satisfies `done`, and returns it.
    async fn wait(&self, what: impl Display, done: impl FnMut(&Activity) -> bool) -> Activity {
        let mut rx = self.activity.clone();
        let seen = within(what, rx.wait_for(done)).await.expect("the scheduler is running").clone();
        seen
    }

    /// Moves the clock to `t`, waits until the loops have seen it and the runs it started ended
    /// ([`settle`]), and checks that `job` has had `runs` runs.
    async fn tick_to(&self, t: DateTime<Utc>, job: &str, runs: u64) {
        self.clock.set(t);
        settle(&self.clock, &[self]).await;
        let m = self.metrics.snapshot().get(job).cloned().unwrap_or_default();
        assert_eq!(m.runs, runs, "{job}: runs after moving the clock to {t} ({m:?}, {:?})", self.activity());
    }

    async fn stop(self) {
        self.stop.cancel();
        within("the scheduler stops", self.task).await.unwrap();
    }
}

/// (rows, windows, files) of a Parquet table, read back from the warehouse folder: a window is
/// a distinct `_window_start`; the sink writes one file per local month.
fn parquet_rows_windows_and_files(table_dir: &Path) -> (u64, usize, usize) {
    let windows = crate::util::parquet_window_rows(table_dir);
    let rows = windows.values().sum::<usize>() as u64;
    (rows, windows.len(), crate::util::parquet_files(table_dir).len())
}

struct Env {
    _dump: crate::util::Dump,
    _dir: tempfile::TempDir,
    sim: RunningSimulator,
    path: std::path::PathBuf,
}

async fn env(args: &[&str], warehouse: TestWarehouse<'_>, jobs: &[(&'static str, String)]) -> Env {
    let d = dump(args);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &sim, TOKEN, warehouse, jobs);
    Env { _dump: d, _dir: dir, sim, path }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_and_daily_jobs_advance_tick_by_tick_across_the_spring_dst_change() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let e = env(
        &["--seed", "3", "--start", "2024-03-29", "--days", "5", "--sessions-per-day", "40"],
        TestWarehouse::Parquet(&wh),
        &[hourly_job("2024-03-30", "0 5 * * * *"), daily_job("2024-03-30", "0 0 6 * * *", "")],
    )
    .await;
    let d = start_daemon(&e.path, ManualClock::new(local(2024, 3, 30, 0, 0, 0))).await;
    // Hourly: at hh:05 the hour before is complete. 2024-03-31 has no 03:xx local hour.
    let mut runs = 0;
    let mut t = local(2024, 3, 30, 1, 5, 0);
    while t < local(2024, 4, 1, 8, 0, 0) {
        runs += 1;
        d.tick_to(t, "hourly_chats", runs).await;
        let hour_start = t - chrono::Duration::minutes(5);
        assert_eq!(d.metrics.snapshot()["hourly_chats"].watermark, Some(hour_start), "after the tick at {t}");
        t += chrono::Duration::hours(1);
    }
    assert_eq!(runs, 2 * 24 + 7 - 1, "the 23-hour day has 23 ticks");
    // Daily at 06:00 local, before and after the change (04:00Z in summer time, 05:00Z before).
    let daily = d.metrics.snapshot()["daily_chats"].clone();
    assert_eq!(daily.runs, 3, "06:00 on 03-30, 03-31 and 04-01");
    assert_eq!(daily.watermark, Some(local(2024, 4, 1, 0, 0, 0)));
    // One second before: both loops look at 05:59:59 (the hourly one ticks for 04-01 08:05)
    // and go back to sleep, the daily one until 06:00 local.
    d.clock.set(local(2024, 4, 2, 5, 59, 59));
    settle(&d.clock, &[&d]).await;
    assert_eq!(d.metrics.snapshot()["daily_chats"].runs, 3, "not before 06:00 local");
    assert_eq!(
        d.clock.wake_times(),
        [local(2024, 4, 2, 6, 0, 0), local(2024, 4, 2, 6, 5, 0)],
        "daily waits for 06:00 local, hourly for 06:05"
    );
    d.tick_to(local(2024, 4, 2, 6, 0, 0), "daily_chats", 4).await;
    assert_eq!(local(2024, 4, 2, 6, 0, 0), Utc.with_ymd_and_hms(2024, 4, 2, 3, 0, 0).unwrap());

    // /metrics, served as the daemon does, parses and matches the rows in the warehouse.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health: chatetl::metrics::HealthCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let server = tokio::spawn(chatetl::metrics::serve(
        listener,
        d.metrics.clone(),
        chatetl::metrics::Probes::same(health),
        std::future::pending(),
    ));
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    server.abort();
    let sample = |name: &str, job: &str| -> f64 {
        let prefix = format!("{name}{{chatetl_job=\"{job}\",");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not Prometheus text: {line}");
    }
    // Every hourly window was loaded once, by this daemon (lookback 0), so its counters are
    // what the table holds.
    let (rows_in_warehouse, windows, files) = parquet_rows_windows_and_files(&wh.join("hourly_chats"));
    assert!(rows_in_warehouse > 0, "the warehouse has hourly rows");
    assert_eq!(windows, 24 + 23 + 24 + 5, "03-30 00:00 to 04-02 05:00 local, each hour once");
    assert_eq!(files, 2, "one file for March, one for April");
    assert_eq!(sample("chatetl_job_rows_loaded_total", "hourly_chats") as u64, rows_in_warehouse);
    assert_eq!(sample("chatetl_job_windows_loaded_total", "hourly_chats") as usize, windows);
    assert_eq!(sample("chatetl_job_runs_total", "daily_chats"), 4.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_during_a_run_is_skipped_and_an_outage_is_caught_up_on_the_first_tick() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(
        &["--seed", "3", "--start", "2024-05-01", "--days", "6", "--sessions-per-day", "20"],
        TestWarehouse::Parquet(&dir.path().join("wh")),
        &[hourly_job("2024-05-02", "0 5 * * * *")],
    )
    .await;
    let d = start_daemon(&e.path, ManualClock::new(local(2024, 5, 2, 0, 0, 0))).await;
    e.sim.handle.set_faults(FaultConfig { latency_ms: 1000, ..FaultConfig::default() });
    d.clock.set(local(2024, 5, 2, 1, 5, 0));
    // Wait until the first run has read the clock (it plans up to 01:05 whatever the clock
    // reads later), then tick again while it still waits for the slow simulator.
    d.wait("the first run reads the clock", |a| a.runs_started == 1).await;
    d.tick_to(local(2024, 5, 2, 2, 5, 0), "hourly_chats", 1).await;
    let m = d.metrics.snapshot()["hourly_chats"].clone();
    assert_eq!((m.runs, m.skipped_ticks), (1, 1), "the overlapping tick was skipped, not doubled");
    assert_eq!(e.sim.handle.requests().len(), 2, "one run: one request per scope");
    e.sim.handle.set_faults(FaultConfig::default());

    // The first run loaded 00:00-01:00 (the clock read 01:05 when it planned).
    assert_eq!(m.watermark, Some(local(2024, 5, 2, 1, 0, 0)));
    // Three days down: the first tick after loads every missed hour (01:00 .. 05-05 02:00).
    e.sim.handle.clear_requests();
    d.tick_to(local(2024, 5, 5, 2, 5, 0), "hourly_chats", 2).await;
    let m = d.metrics.snapshot()["hourly_chats"].clone();
    assert_eq!(m.watermark, Some(local(2024, 5, 5, 2, 0, 0)));
    assert_eq!(m.windows_loaded, 1 + 73);
    assert_eq!(e.sim.handle.requests().len(), 2, "72 hours fit in one request per scope (168 per request)");
    d.stop().await;
}

/// Four days of data and a daily job at 06:30 on the PostgreSQL database `db`: the setting of
/// the tests of daemons sharing one warehouse.
async fn daily_on(db: &TestDb) -> Env {
    env(
        &["--seed", "3", "--start", "2024-05-01", "--days", "4", "--sessions-per-day", "20"],
        TestWarehouse::Postgres(&db.url),
        &[daily_job("2024-05-01", "0 30 6 * * *", "")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_database_load_each_window_once() {
    let db = TestDb::new().await;
    let e = daily_on(&db).await;
    // Slow answers keep the winner's run (and its lock) going while the other daemon ticks.
    e.sim.handle.set_faults(FaultConfig { latency_ms: 1000, ..FaultConfig::default() });
    let clock = ManualClock::new(local(2024, 5, 3, 0, 0, 0));
    let (a, b) = (start_daemon(&e.path, clock.clone()).await, start_daemon(&e.path, clock.clone()).await);
    clock.set(local(2024, 5, 3, 6, 30, 0));
    // Both daemons' loops tick at 06:30 and sleep again; then both runs (or lock refusals) end.
    settle(&clock, &[&a, &b]).await;
    let (ma, mb) = (a.metrics.snapshot()["daily_chats"].clone(), b.metrics.snapshot()["daily_chats"].clone());
    assert_eq!(ma.runs + ma.skipped_ticks + mb.runs + mb.skipped_ticks, 2, "each daemon's tick ran or was skipped");
    assert_eq!(ma.windows_loaded + mb.windows_loaded, 2, "05-01 and 05-02, loaded once between them");
    assert_eq!(
        ma.skipped_ticks + mb.skipped_ticks,
        1,
        "the other daemon lost the claim of the tick (or found the job locked)"
    );
    assert_eq!(e.sim.handle.requests().len(), 1, "one request for the two days, from one daemon");
    let pool = db.pool().await;
    let loads: i64 = sqlx::query_scalar("SELECT count(*) FROM chatetl.window_loads WHERE target = 'analytics'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(loads, 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_loses_the_claim_is_ready_and_reports_the_warehouse_watermark() {
    let db = TestDb::new().await;
    let e = daily_on(&db).await;
    // Clocks of their own: the winner's reaches the tick (and runs it) before the loser's does.
    let start = local(2024, 5, 3, 0, 0, 0);
    let (wclock, lclock) = (ManualClock::new(start), ManualClock::new(start));
    let winner = start_daemon(&e.path, wclock.clone()).await;
    let loser = start_daemon(&e.path, lclock.clone()).await;
    assert!((loser.ready)().await.is_err(), "not ready before any tick");
    winner.tick_to(local(2024, 5, 3, 6, 30, 0), "daily_chats", 1).await;
    let stored = winner.metrics.snapshot()["daily_chats"].watermark;
    assert_eq!(stored, Some(local(2024, 5, 3, 0, 0, 0)), "the winner loaded 05-01 and 05-02");
    assert_eq!(loser.metrics.snapshot()["daily_chats"].watermark, None, "the loser read the state before the run");
    lclock.set(local(2024, 5, 3, 6, 30, 0));
    settle(&lclock, &[&loser]).await;
    let m = loser.metrics.snapshot()["daily_chats"].clone();
    assert_eq!((m.runs, m.skipped_ticks), (0, 1), "the winner claimed the tick: {m:?}");
    assert_eq!(m.watermark, stored, "the loser's watermark gauge is the warehouse's, not its own stale one");
    (loser.ready)().await.expect("ready: another daemon ran the tick");
    let a = loser.activity();
    assert_eq!((a.runs_started, a.runs_finished), (0, 0), "a lost claim neither starts nor finishes a run");
    assert_eq!(e.sim.handle.requests().len(), 1, "one request, from the winner");
    winner.stop().await;
    loser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_takes_over_a_claim_whose_run_did_not_end_and_skips_a_done_one() {
    let db = TestDb::new().await;
    let e = daily_on(&db).await;
    let clock = ManualClock::new(local(2024, 5, 3, 12, 0, 0));
    let first = start_daemon_with(&e.path, clock.clone(), true).await;
    first.wait("the catch-up ran", |a| a.runs_finished == 1).await;
    first.stop().await;
    let pool = db.pool().await;
    let tick = local(2024, 5, 3, 6, 30, 0);
    let row: (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT daemon, done_at FROM chatetl.ticks WHERE job = 'daily_chats' AND fire_at = $1")
            .bind(tick)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(row.1.is_some(), "a run that ended marks its tick done: {row:?}");
    // A done tick is not run again by a daemon catching up later.
    let second = start_daemon_with(&e.path, clock.clone(), true).await;
    second.wait("the catch-up's claim is answered", |a| a.in_flight == 0).await;
    let m = second.metrics.snapshot()["daily_chats"].clone();
    assert_eq!((m.runs, m.skipped_ticks), (0, 1), "{m:?}");
    second.stop().await;
    // A daemon claimed the tick and was killed before its run ended: a daemon started with
    // --catch-up over a minute after the claim runs it.
    sqlx::query(
        "UPDATE chatetl.ticks SET daemon = 'killed:1:x', claimed_at = clock_timestamp() - interval '61 seconds', \
         done_at = NULL \
         WHERE job = 'daily_chats' AND fire_at = $1",
    )
    .bind(tick)
    .execute(&pool)
    .await
    .unwrap();
    let third = start_daemon_with(&e.path, clock.clone(), true).await;
    third.wait("the catch-up ran", |a| a.runs_finished == 1).await;
    let m = third.metrics.snapshot()["daily_chats"].clone();
    assert_eq!((m.runs, m.skipped_ticks), (1, 0), "{m:?}");
    let row: (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT daemon, done_at FROM chatetl.ticks WHERE job = 'daily_chats' AND fire_at = $1")
            .bind(tick)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(row.0 != "killed:1:x" && row.1.is_some(), "taken over and done: {row:?}");
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_job_is_detected_and_an_invalid_reload_keeps_the_old_definitions() {
    let db = TestDb::new().await;
    let e = env(
        &["--seed", "3", "--start", "2024-05-01", "--days", "6", "--sessions-per-day", "20"],
        TestWarehouse::Postgres(&db.url),
        &[daily_job("2024-05-01", "0 30 6 * * *", "")],
    )
    .await;
    let d = start_daemon(&e.path, ManualClock::new(local(2024, 5, 2, 0, 0, 0))).await;
    d.tick_to(local(2024, 5, 2, 6, 30, 0), "daily_chats", 1).await;
    assert!(!d.metrics.snapshot()["daily_chats"].definition_changed);

    // An invalid job file: reported, and the old definition keeps running.
    let job_file = e.path.parent().unwrap().join("jobs/daily_chats.yaml");
    let good = std::fs::read_to_string(&job_file).unwrap();
    std::fs::write(&job_file, good.replace("window: day", "window: fortnight")).unwrap();
    d.reload.send(()).await.unwrap();
    let a = d.wait("the invalid reload is answered", |a| a.reloads == 1).await;
    assert_eq!(a.generation, 1, "the invalid files were refused: the old loops keep running");
    d.tick_to(local(2024, 5, 3, 6, 30, 0), "daily_chats", 2).await;
    assert_eq!(d.metrics.snapshot()["daily_chats"].windows_loaded, 2);

    // A changed query: the reload takes it, and the next run is refused (the loaded rows mean
    // something else now), loading nothing, with the command that rebuilds.
    std::fs::write(&job_file, good.replace("scopes: [org]", "scopes: [org]\nrooms: [room-a]")).unwrap();
    d.reload.send(()).await.unwrap();
    let a = d.wait("the valid reload is answered", |a| a.reloads == 2).await;
    assert_eq!((a.generation, a.loops), (2, 1), "the reload was taken: new loops run the changed job");
    d.tick_to(local(2024, 5, 4, 6, 30, 0), "daily_chats", 3).await;
    let m = d.metrics.snapshot()["daily_chats"].clone();
    assert!(m.definition_changed);
    assert_eq!(m.windows_loaded, 2, "the refused tick loaded nothing");
    assert_eq!(m.errors.get(&chatetl::error::ErrorKind::Configuration), Some(&1));
    d.stop().await;
    let (_, out, err) = crate::util::chatetl(&["--config", e.path.to_str().unwrap(), "status"]);
    assert!(out.lines().any(|l| l.starts_with("daily_chats") && l.contains("CHANGED: run --rebuild")), "{out}\n{err}");
    let (code, _, err) = crate::util::chatetl(&["--config", e.path.to_str().unwrap(), "run", "--job", "daily_chats"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`chatetl run --job daily_chats --rebuild` reloads the whole history into a shadow table"),
        "{err}"
    );

    // --rebuild reloads the whole history with the new definition and swaps it in.
    let (code, out, err) =
        crate::util::chatetl(&["--config", e.path.to_str().unwrap(), "run", "--job", "daily_chats", "--rebuild"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, out, _) = crate::util::chatetl(&["--config", e.path.to_str().unwrap(), "status"]);
    assert!(out.lines().any(|l| l.starts_with("daily_chats") && l.contains(" ok ")), "{out}");
}

/// The sample of `name` for job daily_chats in a /metrics text (`name{job="daily_chats"} value`).
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{chatetl_job=\"daily_chats\",");
    text.lines().find(|l| l.starts_with(&prefix)).map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_catch_up_leaves_whole_windows_and_the_next_start_completes_them() {
    let db = TestDb::new().await;
    let today = Utc::now().with_timezone(&HEL).date_naive();
    let start = today - chrono::Duration::days(40);
    let (start_s, data_start) = (start.to_string(), (start - chrono::Duration::days(1)).to_string());
    let e = env(
        &["--seed", "3", "--start", &data_start, "--days", "43", "--sessions-per-day", "10"],
        TestWarehouse::Postgres(&db.url),
        &[daily_job(&start_s, "* * * * * *", "max_windows_per_request: 2\n")],
    )
    .await;
    e.sim.handle.set_faults(FaultConfig { latency_ms: 150, ..FaultConfig::default() });
    let pool = db.pool().await;
    let loaded = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM chatetl.window_loads WHERE target = 'analytics'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    // What the warehouse table holds: (rows, days with rows).
    let in_table = || async {
        sqlx::query_as::<_, (i64, i64)>("SELECT count(*), count(DISTINCT bucket_date) FROM analytics.daily_chats")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
            .args([
                "--config",
                e.path.to_str().unwrap(),
                "schedule",
                "--listen",
                "127.0.0.1:0",
                "--concurrency",
                "1",
                "--shutdown-grace-secs",
                "5",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut daemon = spawn();
    let patience = 2 * PATIENCE;
    eventually("six windows committed", patience, || async { (loaded().await >= 6).then_some(()) }).await;
    let pid = daemon.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
    let committed = loaded().await;
    assert!(committed < 40, "stopped before the catch-up finished: {committed}");
    let wm: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = 'analytics'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected = chatetl::time::local_day_start(HEL, start + chrono::Duration::days(committed));
    assert_eq!(wm, Some(expected), "the watermark covers exactly the committed windows");
    let (rows_before_restart, days_with_rows) = in_table().await;
    assert_eq!(days_with_rows, committed, "nothing half-written");

    // Windows are not reloaded (lookback 0), so the next process loads exactly the rest.
    e.sim.handle.set_faults(FaultConfig::default());
    let (daemon, url) = crate::util::start_daemon(&e.path, &["--concurrency", "1"]);
    // The daemon listens before it opens the warehouse: ready once it has.
    eventually("/healthz: the scheduler runs and the warehouse answers", PATIENCE, || async {
        (reqwest::get(format!("{url}/healthz")).await.unwrap().status() == 200).then_some(())
    })
    .await;
    eventually("the next start completes the catch-up", patience, || async { (loaded().await >= 40).then_some(()) })
        .await;
    // This process's counters against the warehouse: the days it added to the table, the rows
    // it added.
    let (total_rows, days) = in_table().await;
    assert_eq!(days, 40, "every day of the catch-up is in the table");
    let (rows_added, days_added) = (total_rows - rows_before_restart, days - committed);
    // The counters move when the run that committed the last window ends, a moment later.
    let text = eventually("/metrics shows the catch-up's windows", PATIENCE, || async {
        let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
        (metric(&text, "chatetl_job_windows_loaded_total") == Some((40 - committed) as f64)).then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "chatetl_job_windows_loaded_total"), Some(days_added as f64), "{text}");
    assert_eq!(metric(&text, "chatetl_job_rows_loaded_total"), Some(rows_added as f64), "{text}");
    crate::util::stop_daemon(daemon);
    let wm: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = 'analytics'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(wm, Some(chatetl::time::local_day_start(HEL, today)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_delays_a_window_and_a_partial_window_is_replaced_without_moving_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (name, text) = hourly_job("2024-05-02", "0 5 * * * *");
    let text = text + "settle_secs: 600\ninclude_partial: true\n";
    let e = env(
        &["--seed", "3", "--start", "2024-05-01", "--days", "3", "--sessions-per-day", "200"],
        TestWarehouse::Parquet(&wh),
        &[(name, text)],
    )
    .await;
    let d = start_daemon(&e.path, ManualClock::new(local(2024, 5, 2, 0, 0, 0))).await;
    let db = crate::util::parquet_state_db(&wh).await;
    let recorded = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM window_loads WHERE job = 'hourly_chats'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // Rows of the hour starting at local 2024-05-02 `hour`:00, each (time, dims) at most once.
    let rows = |hour: u32| {
        let rows = crate::util::parquet_rows(&wh.join("hourly_chats"), &["_window_start", "_loaded_at", "_run_id"]);
        let mut distinct = rows.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), rows.len(), "no row is duplicated");
        crate::util::parquet_window_rows(&wh.join("hourly_chats"))
            .get(&local(2024, 5, 2, hour, 0, 0))
            .copied()
            .unwrap_or(0)
    };

    // 01:05: the hour 00:00-01:00 ended 5 minutes ago, less than the 10-minute settle: it is
    // loaded as the partial window, not recorded, and the watermark does not move.
    d.tick_to(local(2024, 5, 2, 1, 5, 0), "hourly_chats", 1).await;
    let partial = rows(0);
    assert!(partial > 0, "the partial hour is written");
    assert_eq!(recorded().await, 0, "but not recorded as loaded");
    assert_eq!(d.metrics.snapshot()["hourly_chats"].watermark, None);

    // 02:05: 00:00-01:00 has settled: reloaded and recorded; 01:00-02:00 is the partial one now.
    d.tick_to(local(2024, 5, 2, 2, 5, 0), "hourly_chats", 2).await;
    assert_eq!(d.metrics.snapshot()["hourly_chats"].watermark, Some(local(2024, 5, 2, 1, 0, 0)));
    assert_eq!(recorded().await, 1);
    assert_eq!(rows(0), partial, "replaced in place, never duplicated");
    assert!(rows(1) > 0, "the next partial hour is written");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_snapshot_is_captured_at_its_fire_time_even_when_the_tick_runs_late() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let rooms_job = (
        "rooms_now.yaml",
        "description: Rooms now\nsource: giosg\nendpoint: realtime_rooms\nkind: snapshot\nschedule: \"0 */5 * * * *\"\n"
            .to_string(),
    );
    let e = env(&["--seed", "5", "--days", "1"], TestWarehouse::Parquet(&wh), &[rooms_job]).await;
    let org = e.sim.handle.dataset().organizations[0].id.clone();
    let rooms = e.sim.handle.dataset().realtime_rooms.iter().filter(|r| r.organization_id == org).count();
    assert!(rooms > 0, "the dataset has rooms");
    let d = start_daemon(&e.path, ManualClock::new(local(2024, 5, 2, 10, 2, 17))).await;
    // The clock passes each fire time by a few seconds, as a busy machine's would.
    d.tick_to(local(2024, 5, 2, 10, 5, 3), "rooms_now", 1).await;
    d.tick_to(local(2024, 5, 2, 10, 10, 4), "rooms_now", 2).await;
    d.stop().await;
    let mut captured: Vec<(DateTime<Utc>, usize)> = Vec::new();
    for batch in chatetl::readback::read_parquet_dir(&wh.join("rooms_now")).unwrap() {
        let col = batch.column_by_name("captured_at").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
        for i in 0..batch.num_rows() {
            let t = DateTime::<Utc>::from_timestamp_micros(col.value(i)).unwrap();
            match captured.iter_mut().find(|(c, _)| *c == t) {
                Some((_, n)) => *n += 1,
                None => captured.push((t, 1)),
            }
        }
    }
    captured.sort();
    assert_eq!(
        captured,
        [(local(2024, 5, 2, 10, 5, 0), rooms), (local(2024, 5, 2, 10, 10, 0), rooms)],
        "one snapshot per tick, stamped with the fire time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_the_job_until_the_configuration_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let d0 = dump(&["--seed", "3", "--start", "2024-05-01", "--days", "4", "--sessions-per-day", "20"]);
    let sim = serve(&d0.path).await;
    let jobs = [daily_job("2024-05-01", "0 30 6 * * *", "")];
    let path = write_config(dir.path(), &sim, "not-the-key", TestWarehouse::Parquet(&wh), &jobs);
    let d = start_daemon(&path, ManualClock::new(local(2024, 5, 2, 0, 0, 0))).await;
    d.tick_to(local(2024, 5, 2, 6, 30, 0), "daily_chats", 1).await;
    assert_eq!(sim.handle.requests().len(), 1, "one refused request");
    let m = d.metrics.snapshot()["daily_chats"].clone();
    assert!(m.paused, "{m:?}");
    assert_eq!(m.errors.get(&chatetl::error::ErrorKind::Credentials), Some(&1), "{m:?}");

    // The next tick runs nothing and sends nothing; /metrics and status say the job is paused.
    d.tick_to(local(2024, 5, 3, 6, 30, 0), "daily_chats", 1).await;
    assert_eq!(sim.handle.requests().len(), 1, "no request while paused");
    let text = d.metrics.render_openmetrics(Utc::now());
    let labels = "chatetl_job=\"daily_chats\",source=\"giosg\",endpoint=\"chat_sessions\"";
    assert!(text.contains(&format!("chatetl_job_paused{{{labels}}} 1")), "{text}");
    assert!(text.contains(&format!("chatetl_job_errors_total{{{labels},kind=\"credentials\"}} 1")), "{text}");
    let (_, out, err) = crate::util::chatetl(&["--config", path.to_str().unwrap(), "status"]);
    let line = out.lines().find(|l| l.starts_with("daily_chats")).unwrap_or_else(|| panic!("{out}\n{err}"));
    assert!(line.contains("paused") && line.contains("[credentials]"), "{out}");

    // Fixed credentials and a reload: the next tick loads the days missed, and the job runs again.
    write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &jobs);
    d.reload.send(()).await.unwrap();
    d.wait("the reload is answered", |a| a.reloads == 1).await;
    assert!(!d.metrics.snapshot()["daily_chats"].paused, "a reload lifts the pause");
    d.tick_to(local(2024, 5, 4, 6, 30, 0), "daily_chats", 2).await;
    let m = d.metrics.snapshot()["daily_chats"].clone();
    assert_eq!(m.watermark, Some(local(2024, 5, 4, 0, 0, 0)), "{m:?}");
    assert_eq!(m.windows_loaded, 3, "2, 3 and 4 May: {m:?}");
    d.stop().await;
}

/// A daily org-scope chat_sessions job `name` with one aggregation, on `schedule`.
fn fusable_job(file: &'static str, aggregation: &str, schedule: &str) -> (&'static str, String) {
    (
        file,
        format!(
            "description: A metric\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
             aggregations:\n  - {aggregation}\nstart: 2024-05-01\nlookback_windows: 0\nschedule: \"{schedule}\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_share_requests_and_a_schedule_tick_together_with_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let e = env(
        &["--seed", "4", "--start", "2024-05-01", "--days", "4", "--sessions-per-day", "20"],
        TestWarehouse::Parquet(&wh),
        &[
            fusable_job("a_chats.yaml", "{ type: count, column: chats }", "0 30 6 * * *"),
            fusable_job("b_sales.yaml", "{ type: sum, field: sales, column: sales }", "0 30 6 * * *"),
            fusable_job(
                "c_messages.yaml",
                "{ type: sum, field: user_message_count, column: messages }",
                "0 30 6 * * *",
            ),
            // Same requests, another schedule: its own tick.
            fusable_job("d_later.yaml", "{ type: count, column: chats }", "0 45 6 * * *"),
        ],
    )
    .await;
    let clock = ManualClock::new(local(2024, 5, 3, 0, 0, 0));
    let d = start_daemon(&e.path, clock.clone()).await;
    for job in ["a_chats", "b_sales", "c_messages"] {
        d.tick_to(local(2024, 5, 3, 6, 30, 0), job, 1).await;
    }
    let requests = e.sim.handle.requests();
    assert_eq!(requests.len(), 1, "one request (org scope, both days) for the three jobs: {requests:#?}");
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(body["aggregations"].as_array().unwrap().len(), 3, "{body}");
    let snapshot = d.metrics.snapshot();
    assert_eq!(snapshot.get("d_later").map_or(0, |m| m.runs), 0, "d_later waits for its own fire time");
    for job in ["a_chats", "b_sales", "c_messages"] {
        assert_eq!(snapshot[job].windows_loaded, 2, "{job}: 05-01 and 05-02");
        let (rows, windows, _) = parquet_rows_windows_and_files(&wh.join(job));
        assert_eq!((rows, windows), (2, 2), "{job}: its own table, one org row per day");
    }
    d.tick_to(local(2024, 5, 3, 6, 45, 0), "d_later", 1).await;
    assert_eq!(e.sim.handle.requests().len(), 2, "d_later's own request");
    assert_eq!(d.metrics.snapshot()["a_chats"].runs, 1, "no second run of the group");
    d.stop().await;
}

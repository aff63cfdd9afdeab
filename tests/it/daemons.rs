//! Several chatetl processes on one PostgreSQL warehouse spend one vendor budget and share the
//! ticks (`src/budget.rs`, `src/scheduler.rs`): three `chatetl schedule` processes, one killed
//! with SIGKILL in the middle of a request, keep the combined rate and concurrency within the
//! source's limits and load every window once; three clients without the shared budget exceed
//! them (the negative control, so the checks can fail).
//!
//! Every check reads the simulator's request log (`received_at_us`, `answered_at_us`) after
//! waiting for an event that proves the work was done (watermarks in PostgreSQL); nothing sleeps
//! and then asserts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chatetl::budget::SharedBudget;
use chatetl::config::{self, Secret, Warehouse};
use chatetl::simulator::{FaultConfig, RecordedRequest, RunningSimulator};
use chatetl::sink::Sink;
use chatetl::source::Source;
use chatetl::source::http::HttpRequest;
use chrono::{DateTime, Timelike, Utc};

use crate::util::{TOKEN, TestDb, TestWarehouse, dump, eventually, serve, write_config};

/// The source's limits in these tests. A low rate spaces requests 500 ms apart, so a request
/// delayed on its way (a loaded machine) by less than that cannot carry two past [`DELIVERY_SLACK`].
const RPS: usize = 2;
const CONCURRENCY: usize = 2;
/// What a 1 s window of the upstream may see beyond `RPS`: a request whose slot lay just
/// before the window and that was delayed into it by a stall longer than the budget's 5 %
/// spacing absorbs (`src/budget.rs`, "Why it holds"). Runs observe `RPS` itself.
const DELIVERY_SLACK: usize = 1;
/// A guard against hangs on a loaded machine, never a delay a test relies on.
const PATIENCE: Duration = Duration::from_secs(120);

/// The most requests the upstream received in any 1 s window (half-open, sliding).
fn max_per_second(log: &[RecordedRequest]) -> usize {
    let mut times: Vec<i64> = log.iter().map(|r| r.received_at_us).collect();
    times.sort();
    (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t < times[i] + 1_000_000).count()).max().unwrap_or(0)
}

/// The most requests being answered at one instant (received, not yet answered).
fn max_in_flight(log: &[RecordedRequest]) -> usize {
    let mut edges: Vec<(i64, i32)> = log.iter().flat_map(|r| [(r.received_at_us, 1), (r.answered_at_us, -1)]).collect();
    // An answer at the instant another arrives frees its slot first.
    edges.sort();
    let (mut now, mut max) = (0, 0);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// A chatetl.yaml for `sim` with the giosg source limited to [`RPS`] and [`CONCURRENCY`].
fn limited_config(
    dir: &std::path::Path,
    sim: &RunningSimulator,
    wh: TestWarehouse,
    jobs: &[(&str, String)],
) -> std::path::PathBuf {
    let path = write_config(dir, sim, TOKEN, wh, jobs);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace("concurrency: 8\n", &format!("concurrency: {CONCURRENCY}\n"))
        .replace("requests_per_second: 1000\n", &format!("requests_per_second: {RPS}\n"))
        .replace("timeout_secs: 10\n", "timeout_secs: 5\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// Three clients of one source, each as its own process would build it: with `shared`, each
/// over its own pool on one warehouse database; otherwise each with its own limits alone.
async fn three_clients(sim: &RunningSimulator, shared: Option<&TestDb>) -> Vec<Arc<Source>> {
    let dir = tempfile::tempdir().unwrap();
    let path = limited_config(dir.path(), sim, TestWarehouse::Parquet(&dir.path().join("wh")), &[]);
    let config = config::load(&path).unwrap();
    let source = &config.sources["giosg"];
    let mut out = Vec::new();
    for _ in 0..3 {
        let budget = match shared {
            Some(db) => {
                let warehouse = Warehouse::Postgres { url: Secret::new(db.url.clone()), schema: "analytics".into() };
                let sink = Sink::open(&warehouse).await.unwrap();
                Some(SharedBudget::new(sink.shared_pool().expect("a PostgreSQL warehouse").clone()))
            }
            None => None,
        };
        out.push(Arc::new(Source::with_parts(source, Default::default(), budget.as_ref()).unwrap()));
    }
    out
}

/// Sends `each` requests from every client at once and returns the simulator's log of them.
async fn hammer(sim: &RunningSimulator, clients: &[Arc<Source>], each: usize) -> Vec<RecordedRequest> {
    sim.handle.clear_requests();
    let org = sim.handle.dataset().organizations[0].id.clone();
    let url = format!("{}/api/reporting/v1/orgs/{org}/chat_sessions", sim.base_url());
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        for _ in 0..each {
            let (client, url) = (client.clone(), url.clone());
            // An empty query: answered 400 at once, one attempt, logged like any request.
            tasks.spawn(async move { client.send(&HttpRequest::post_json(&url, &serde_json::json!({}))).await });
        }
    }
    tokio::time::timeout(PATIENCE, async { while tasks.join_next().await.is_some() {} })
        .await
        .expect("every request answered");
    let log = sim.handle.requests();
    assert_eq!(log.len(), clients.len() * each, "one attempt per request");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_without_the_shared_budget_exceed_the_rate_and_with_it_keep_it() {
    let d = dump(&["--seed", "3", "--start", "2024-05-01", "--days", "1", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let alone = max_per_second(&hammer(&sim, &three_clients(&sim, None).await, 5).await);
    assert!(alone > RPS + DELIVERY_SLACK, "each client's own burst and rate add up: {alone} in one second");
    let db = TestDb::new().await;
    let shared = max_per_second(&hammer(&sim, &three_clients(&sim, Some(&db)).await, 5).await);
    eprintln!("max requests in 1 s: {alone} without the shared budget, {shared} with it (limit {RPS})");
    assert!(shared <= RPS + DELIVERY_SLACK, "{shared} requests in one second, limit {RPS} (+{DELIVERY_SLACK})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_without_the_shared_budget_exceed_the_concurrency_and_with_it_keep_it() {
    let d = dump(&["--seed", "3", "--start", "2024-05-01", "--days", "1", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    // Slow answers: requests overlap unless something holds them back.
    sim.handle.set_faults(FaultConfig { latency_ms: 600, ..FaultConfig::default() });
    let alone = max_in_flight(&hammer(&sim, &three_clients(&sim, None).await, 3).await);
    assert!(alone > CONCURRENCY, "each client's own limit adds up: {alone} in flight");
    let db = TestDb::new().await;
    let shared = max_in_flight(&hammer(&sim, &three_clients(&sim, Some(&db)).await, 3).await);
    eprintln!("max in flight: {alone} without the shared budget, {shared} with it (limit {CONCURRENCY})");
    assert!(shared <= CONCURRENCY, "{shared} in flight, limit {CONCURRENCY}");
}

/// A fixed-offset zone (`Etc/GMT…`) whose clock reads between 09:00 and 10:59 now, so a job
/// starting on its local date has about ten complete hour windows whatever the time of day.
fn zone_at_ten_in_the_morning(now: DateTime<Utc>) -> (chrono_tz::Tz, i32) {
    let offset = (10 - now.hour() as i32 + 24) % 24;
    let offset = if offset > 14 { offset - 24 } else { offset };
    // Etc/GMT-3 is UTC+3 (the POSIX sign).
    let name = match offset {
        0 => "Etc/GMT".to_string(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    (name.parse().unwrap(), offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_one_killed_share_the_rate_and_load_every_window_once() {
    let now = Utc::now();
    let (zone, offset) = zone_at_ten_in_the_morning(now);
    let local_date = (now + chrono::Duration::hours(offset as i64)).date_naive();
    let start = local_date.format("%Y-%m-%d").to_string();
    let from = (local_date - chrono::Days::new(1)).format("%Y-%m-%d").to_string();
    let d = dump(&["--seed", "7", "--start", &from, "--days", "3", "--sessions-per-day", "400"]);
    let sim = serve(&d.path).await;
    // Slow enough that requests overlap (so the concurrency limit is met) and the kill finds one
    // in flight; two in flight could still pass 2 a second, so the rate binds too.
    sim.handle.set_faults(FaultConfig { latency_ms: 900, ..FaultConfig::default() });
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Four jobs with one request per hour window, each on its own schedule (so no two fuse) and
    // with no lookback: a window requested twice is a tick run twice.
    const JOBS: usize = 4;
    let jobs: Vec<(String, String)> = (0..JOBS)
        .map(|i| {
            (
                format!("hourly_{i}.yaml"),
                format!(
                    "description: Chats per hour\nsource: giosg\nendpoint: chat_sessions\nwindow: hour\nscopes: [org]\n\
                     time_zone: {}\naggregations:\n  - {{ type: count, column: chats }}\nstart: {start}\n\
                     lookback_windows: 0\nmax_windows_per_request: 1\nschedule: \"{i}-59/4 * * * * *\"\n",
                    zone.name()
                ),
            )
        })
        .collect();
    let jobs: Vec<(&str, String)> = jobs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let path = limited_config(dir.path(), &sim, TestWarehouse::Postgres(&db.url), &jobs);
    let (mut daemons, mut endpoints): (Vec<std::process::Child>, Vec<String>) =
        (0..3).map(|_| crate::util::start_daemon(&path, &["--catch-up", "--shutdown-grace-secs", "5"])).unzip();
    let pool = db.pool().await;

    // SIGKILL the daemon holding a lease: it has a request in flight.
    let victim = eventually("a daemon with a request in flight", PATIENCE, || async {
        let holders: Vec<String> =
            sqlx::query_scalar("SELECT holder FROM chatetl.source_slots WHERE holder IS NOT NULL")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        let pids: Vec<u32> = holders.iter().filter_map(|h| h.split(':').nth(1)?.parse().ok()).collect();
        let started = sim.handle.requests().len() >= 6;
        daemons.iter().position(|d| pids.contains(&d.id())).filter(|_| started)
    })
    .await;
    let mut killed = daemons.remove(victim);
    endpoints.remove(victim);
    let killed_at_us = Utc::now().timestamp_micros();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let requests_at_kill = sim.handle.requests().len();

    // Done when every job's watermark reaches the start of the current local hour (the hour may
    // turn while the test runs: read it again each time).
    let job_names: Vec<String> = (0..JOBS).map(|i| format!("hourly_{i}")).collect();
    // The hour the wait saw: the checks below stop there, should a new hour begin meanwhile.
    let loaded_to = eventually("the surviving daemons load every job up to the current hour", PATIENCE, || async {
        let hour_start = Utc::now().with_minute(0).unwrap().with_second(0).unwrap().with_nanosecond(0).unwrap();
        let marks: Vec<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = 'analytics' AND job = ANY($1)")
                .bind(&job_names)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        (marks.len() == JOBS && marks.iter().all(|m| m.is_some_and(|m| m >= hour_start))).then_some(hour_start)
    })
    .await;
    let loaded_at_us = Utc::now().timestamp_micros();
    // Every survivor is ready and its freshness gauges are current, whether it ran a job's ticks
    // itself or lost their claims to the other one.
    for url in &endpoints {
        eventually(
            format!("{url} is ready with every job's watermark lag under an hour and a bit"),
            PATIENCE,
            || async {
                let ready = reqwest::get(format!("{url}/readyz")).await.ok()?.status().is_success();
                let text = reqwest::get(format!("{url}/metrics")).await.ok()?.text().await.ok()?;
                let lags: Vec<f64> = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("chatetl_job_watermark_lag_seconds{") && l.contains("chatetl_job=\"hourly_")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                    .collect();
                // A watermark at the start of this hour or the last: a lag under two hours.
                (ready && lags.len() == JOBS && lags.iter().all(|l| *l < 7200.0)).then_some(())
            },
        )
        .await;
    }
    // Each claimed tick ran once: a run record per tick row, but for the ticks the killed daemon
    // claimed and never finished (its rows have no done_at). Read while the survivors run, in
    // one statement (a run's claim is committed before its record).
    let victim = format!(":{}:", killed.id());
    for job in &job_names {
        let (runs, ticks, undone): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM chatetl.runs WHERE job = $1), \
                    (SELECT count(*) FROM chatetl.ticks WHERE job = $1), \
                    (SELECT count(*) FROM chatetl.ticks WHERE job = $1 AND done_at IS NULL AND strpos(daemon, $2) > 0)",
        )
        .bind(job)
        .bind(&victim)
        .fetch_one(&pool)
        .await
        .unwrap();
        eprintln!("{job}: {runs} runs, {ticks} claimed ticks, {undone} of them claimed by the killed daemon");
        assert!(ticks > 1, "{job}: ticks were claimed");
        assert!(runs <= ticks, "{job}: {runs} runs for {ticks} claimed ticks: a tick ran twice");
        // Up to two claims of a job may have no record yet: one whose run is about to record it,
        // or a tick claimed while the previous run still holds the job (its claim is deleted
        // once the run lock refuses it).
        assert!(runs >= ticks - undone - 2, "{job}: {runs} runs for {ticks} claimed ticks: ticks were lost");
    }
    // The survivors' time spent waiting on the shared budget is on /metrics.
    let mut waited = 0.0;
    for url in &endpoints {
        let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("chatetl_source_budget_wait_seconds_total{source=\"giosg\"}"));
        waited += line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0);
    }
    assert!(waited > 0.0, "the surviving daemons waited on the shared budget");
    for daemon in daemons {
        crate::util::stop_daemon(daemon);
    }
    let log: Vec<RecordedRequest> =
        sim.handle.requests().into_iter().filter(|r| r.path.ends_with("/chat_sessions")).collect();
    let (per_second, in_flight) = (max_per_second(&log), max_in_flight(&log));
    let claims: Vec<(String, i64)> =
        sqlx::query_as("SELECT daemon, count(*) FROM chatetl.ticks GROUP BY daemon ORDER BY daemon")
            .fetch_all(&pool)
            .await
            .unwrap();
    eprintln!(
        "three daemons: {} requests ({requests_at_kill} before the kill), max {per_second} in 1 s (limit {RPS}), \
         max {in_flight} in flight (limit {CONCURRENCY}); tick claims by daemon: {claims:?}",
        log.len()
    );
    assert!(per_second <= RPS + DELIVERY_SLACK, "{per_second} requests in one second, limit {RPS} (+{DELIVERY_SLACK})");
    assert!(in_flight <= CONCURRENCY, "{in_flight} requests in flight, limit {CONCURRENCY}");
    assert!(claims.len() >= 2, "the ticks went to more than one daemon: {claims:?}");

    // Every window once per job: each window's request (the jobs' bodies are alike) was sent
    // JOBS times, once by each job, and more only for windows the killed daemon had not committed
    // (below). A window of an hour that began after the wait (first requested after it) may have
    // been requested by some jobs only: it is left out.
    let mut per_body: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in &log {
        per_body.entry(r.body.as_str()).or_default().push(r.received_at_us);
    }
    per_body.retain(|_, times| times.iter().min().is_some_and(|t| *t < loaded_at_us));
    // A window is sent again only for a request made before the kill whose answer the killed
    // daemon never committed (in flight, or answered while the rest of its chunk was): so beyond
    // its JOBS requests a window has at most as many more as it had requests before the kill,
    // and a window first requested after the kill has exactly JOBS.
    for (body, times) in &per_body {
        let before = times.iter().filter(|t| **t < killed_at_us).count();
        assert!(
            times.len() == JOBS || (before > 0 && times.len() <= JOBS + before),
            "a window requested {} times, {before} of them before the kill (at {times:?} µs): {body}",
            times.len()
        );
    }
    let again: usize = per_body.values().map(|s| s.len().saturating_sub(JOBS)).sum();
    eprintln!("{} windows, {again} requests again after the kill", per_body.len());
    let loads: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job, count(*) FROM chatetl.window_loads WHERE target = 'analytics' AND window_start < $1 \
         GROUP BY job ORDER BY job",
    )
    .bind(loaded_to)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(loads.len(), JOBS);
    for (job, n) in &loads {
        assert_eq!(*n as usize, per_body.len(), "job {job}: every window recorded loaded");
    }
    // The rows are what one daemon loads: one row per window and scope, none twice.
    for job in &job_names {
        let (rows, distinct): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(DISTINCT (bucket_start, scope)) FROM analytics.{job}"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(rows, distinct, "job {job}: no row twice");
    }
}

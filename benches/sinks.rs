//! Sink throughput on a larger simulated backfill: `scripts/bench` (or `cargo bench --bench sinks`).
//!
//! One process, one dataset, one simulator. The baseline is the same backfill without a sink
//! (fetch over HTTP + parse + build Arrow batches); each sink is then measured end to end (the
//! backfill command's path) and alone (committing the already built batches). Results are
//! reported as rows/s and as ratios to the baseline, never asserted.
//!
//! Environment: BENCH_DAYS (default 60), BENCH_SESSIONS (sessions per day, default 3000),
//! DATABASE_URL (PostgreSQL; skipped when unset).

use std::time::Instant;

use chatetl::batch::{self, WindowBatch};
use chatetl::config::{self, Config, Secret, Warehouse};
use chatetl::plan;
use chatetl::runner::{Progress, RunKind, RunOptions, Runner};
use chatetl::simulator::{DatasetSpec, FaultConfig, Simulator, dataset};
use chatetl::sink::{Commit, Sink};
use chatetl::source::Source;
use chrono::NaiveDate;

const JOB: &str = "name: bench_hourly
description: Real chats, messages and sales per hour, every scope (benchmark job).
source: giosg
endpoint: chat_sessions
window: day
granularity: hour
scopes: [org, team, user]
start: 2024-01-01
aggregations:
  - { type: count, column: chats }
  - { type: sum, field: user_message_count, column: messages }
  - { type: avg, field: sales, column: average_sales }
";

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let days = env_num("BENCH_DAYS", 60);
    let sessions = env_num("BENCH_SESSIONS", 3000);
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let spec = DatasetSpec {
        start,
        days,
        sessions_per_day: sessions,
        users_per_org: 40,
        teams_per_org: 6,
        ..DatasetSpec::default()
    };
    let data = dataset::generate(&spec);
    let org = data.organizations[0].id.clone();
    let sim = Simulator::new(data, FaultConfig::default(), 1).spawn().await?;

    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("jobs"))?;
    std::fs::write(dir.path().join("jobs/bench_hourly.yaml"), JOB)?;
    std::fs::write(
        dir.path().join("chatetl.yaml"),
        format!(
            "time_zone: Europe/Helsinki\nsources:\n  giosg:\n    kind: giosg\n    base_url: {}\n    token: sim-token\n    organization_id: {org}\n    concurrency: 4\n    requests_per_second: 10000\nwarehouse:\n  kind: parquet\n  path: {}\n",
            sim.base_url(),
            dir.path().join("wh").display()
        ),
    )?;
    let config: Config = config::load(&dir.path().join("chatetl.yaml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let job = config.jobs["bench_hourly"].clone();
    let tz = job.time_zone;
    let windows = plan::windows_overlapping(
        job.window,
        tz,
        chatetl::time::local_day_start(tz, start),
        chatetl::time::local_day_start(tz, start + chrono::Duration::days(days as i64)),
    );
    println!("dataset: {days} days x ~{sessions} sessions/day; job bench_hourly (hourly buckets, 3 scopes, 3 metrics)");

    // Baseline: fetch + parse + build, no sink.
    let source = Source::new(&config.sources["giosg"]).map_err(anyhow::Error::msg)?;
    let schema = chatetl::runner::table_schema(&job);
    let t = Instant::now();
    let mut batches: Vec<WindowBatch> = Vec::new();
    for chunk in plan::chunk(&windows, job.max_windows_per_request) {
        let rows = source.fetch(&job, &chunk).await.0?;
        for (w, rows) in chunk.iter().zip(rows) {
            let b = batch::build(&schema, *w, rows, chrono::Utc::now(), "bench").map_err(anyhow::Error::msg)?;
            batches.push(WindowBatch { window: *w, batch: b });
        }
    }
    let base_secs = t.elapsed().as_secs_f64();
    let rows: usize = batches.iter().map(|b| b.batch.num_rows()).sum();
    let mut results = vec![("baseline: fetch + parse + build (no sink)".to_string(), base_secs)];

    let mut warehouses = vec![("parquet".to_string(), Warehouse::Parquet { path: dir.path().join("wh") })];
    match std::env::var("DATABASE_URL") {
        Ok(url) => warehouses.push((
            "postgres".to_string(),
            Warehouse::Postgres { url: Secret::new(url), schema: "chatetl_bench".into() },
        )),
        Err(_) => println!("DATABASE_URL unset: PostgreSQL skipped"),
    }
    for (name, wh) in warehouses {
        let mut cfg = config.clone();
        cfg.warehouse = wh.clone();
        let runner = Runner::open(cfg).await?;
        let opts = RunOptions {
            kind: RunKind::Range,
            concurrency: 4,
            progress: Progress::Log,
            force: true,
            ..RunOptions::default()
        };
        let t = Instant::now();
        let report = runner.run(&job, windows.clone(), &opts).await?;
        assert!(report.ok(), "{:?}", report.failures);
        results.push((format!("{name}: backfill end to end"), t.elapsed().as_secs_f64()));

        // The sink alone: commit the prebuilt batches, 31 windows per commit as a backfill does.
        let sink = Sink::open(&wh).await?;
        let hash = chatetl::state::definition_hash(&job);
        let t = Instant::now();
        for group in batches.chunks(job.max_windows_per_request as usize) {
            sink.commit(Commit {
                job: &job,
                schema: &schema,
                history_start: chatetl::time::local_day_start(tz, job.start),
                definition_hash: &hash,
                run_id: "bench",
                requests: 3,
                windows: group.to_vec(),
                partial_after: None,
            })
            .await?;
        }
        results.push((format!("{name}: sink alone (commit prebuilt batches)"), t.elapsed().as_secs_f64()));
    }
    sim.stop().await?;

    println!("{rows} rows in {} windows\n", windows.len());
    println!("{:<48} {:>9} {:>12} {:>14}", "measurement", "seconds", "rows/s", "x baseline time");
    for (name, secs) in &results {
        println!("{name:<48} {secs:>9.3} {:>12.0} {:>14.2}", rows as f64 / secs, secs / base_secs);
    }
    Ok(())
}

//! Sink throughput on a larger simulated backfill: `scripts/bench` (or `cargo bench --bench sinks`).
//!
//! One process, one dataset, one simulator, one job (hourly buckets of every scope: a row per
//! hour and organization, team and user). Measured, each as seconds and rows/s:
//!
//! - the source alone: fetch over HTTP + parse + build Arrow batches, no sink;
//! - per sink, the backfill end to end (the `backfill` command's path, 4 chunks at a time) and
//!   the sink alone (the prebuilt batches committed into an empty table, one chunk of windows
//!   per commit as a backfill commits them, 4 commits at a time, and for Parquet also one at a
//!   time, as the single-threaded reference writes; Parquet's writes are the best of 3);
//! - the references: for Parquet, the same batches written with arrow-rs directly, one
//!   `ArrowWriter` per monthly file with chatetl's writer settings (zstd 3) and an fsync, no
//!   chatetl logic around it; for PostgreSQL, `psql \copy` (CSV) of the same rows, dumped from
//!   chatetl's table, into an empty table of the same shape and key (`LIKE … INCLUDING ALL`).
//!
//! Ratios are against the reference of each sink (issue 14: PostgreSQL within 1.3x of psql,
//! Parquet within 1.5x of arrow-rs); reported, never asserted.
//!
//! Environment: BENCH_DAYS (default 160), BENCH_SESSIONS (sessions per day, default 12000),
//! BENCH_USERS (users per organization, default 400), BENCH_TEAMS (default 20), DATABASE_URL
//! (PostgreSQL; skipped when unset; `psql` must be on PATH for its reference).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chatetl::batch::{self, WindowBatch};
use chatetl::config::{self, Config, Job, Secret, Warehouse};
use chatetl::plan;
use chatetl::runner::{Progress, RunKind, RunOptions, Runner};
use chatetl::simulator::{DatasetSpec, FaultConfig, Simulator, dataset};
use chatetl::sink::{Commit, Sink};
use chatetl::source::Source;
use chrono::NaiveDate;
use futures::StreamExt;

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

/// Commits (and backfill chunks) in flight at once, as `backfill --concurrency 4`.
const CONCURRENCY: usize = 4;

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One line of the report.
struct Line {
    name: String,
    secs: f64,
    /// Index of the reference line this one is compared with.
    against: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let days = env_num("BENCH_DAYS", 160);
    let sessions = env_num("BENCH_SESSIONS", 12000);
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let spec = DatasetSpec {
        start,
        days,
        sessions_per_day: sessions,
        users_per_org: env_num("BENCH_USERS", 400),
        teams_per_org: env_num("BENCH_TEAMS", 20),
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
    println!(
        "dataset: {days} days x ~{sessions} sessions/day, {} users and {} teams; job bench_hourly (hourly buckets, 3 scopes, 3 metrics)",
        spec.users_per_org, spec.teams_per_org
    );

    // The source alone: fetch + parse + build, no sink.
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
    let rows: usize = batches.iter().map(|b| b.batch.num_rows()).sum();
    let mut lines = vec![Line {
        name: "source alone: fetch + parse + build".into(),
        secs: t.elapsed().as_secs_f64(),
        against: None,
    }];

    // Parquet: the writes take well under a second, so each is the best of 3 (fresh folders).
    let reference = lines.len();
    let mut best = f64::INFINITY;
    for i in 0..3 {
        let t = Instant::now();
        write_directly(&job, &batches, &dir.path().join(format!("direct-{i}")))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    lines.push(Line { name: "parquet reference: arrow-rs directly".into(), secs: best, against: None });
    let wh = Warehouse::Parquet { path: dir.path().join("wh") };
    let secs = backfill(&config, &wh, &job, &windows).await?;
    lines.push(Line { name: "parquet: chatetl backfill end to end".into(), secs, against: Some(reference) });
    for concurrency in [1, CONCURRENCY] {
        let mut best = f64::INFINITY;
        for i in 0..3 {
            let alone = Warehouse::Parquet { path: dir.path().join(format!("wh-alone-{concurrency}-{i}")) };
            best = best.min(commit_alone(&alone, &job, &batches, concurrency).await?);
        }
        let name = format!("parquet: chatetl sink alone, {concurrency} at a time");
        lines.push(Line { name, secs: best, against: Some(reference) });
    }

    // PostgreSQL.
    match std::env::var("DATABASE_URL") {
        Err(_) => println!("DATABASE_URL unset: PostgreSQL skipped"),
        Ok(url) => {
            let bench_schema = "chatetl_bench";
            let pool = sqlx::PgPool::connect(&url).await?;
            // A fresh schema and state for it, so every load goes into an empty table.
            let forget = async |pool: &sqlx::PgPool| -> anyhow::Result<()> {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {bench_schema} CASCADE")))
                    .execute(pool)
                    .await?;
                for table in ["runs", "window_failures", "window_loads", "jobs"] {
                    let sql = format!("DELETE FROM chatetl.{table} WHERE target = '{bench_schema}'");
                    // Missing before chatetl's first connection made its schema: nothing to forget.
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await;
                }
                Ok(())
            };
            forget(&pool).await?;
            let wh = Warehouse::Postgres { url: Secret::new(url.clone()), schema: bench_schema.into() };
            let secs = backfill(&config, &wh, &job, &windows).await?;
            let table = format!("{bench_schema}.{}", job.table);
            let columns = schema.column_names().join(", ");
            let csv = dir.path().join("rows.csv");
            psql(&url, &format!("\\copy (SELECT {columns} FROM {table}) TO '{}' WITH (FORMAT csv)", csv.display()))?;
            let copy_table = format!("{bench_schema}.psql_copy");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {copy_table}; CREATE TABLE {copy_table} (LIKE {table} INCLUDING ALL)"
            )))
            .execute(&pool)
            .await?;
            let t = Instant::now();
            psql(&url, &format!("\\copy {copy_table} ({columns}) FROM '{}' WITH (FORMAT csv)", csv.display()))?;
            let reference = lines.len();
            lines.push(Line {
                name: "postgres reference: psql \\copy (CSV)".into(),
                secs: t.elapsed().as_secs_f64(),
                against: None,
            });
            lines.push(Line { name: "postgres: chatetl backfill end to end".into(), secs, against: Some(reference) });
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {table}"))).execute(&pool).await?;
            let secs = commit_alone(&wh, &job, &batches, CONCURRENCY).await?;
            let name = "postgres: chatetl sink alone, 4 at a time".into();
            lines.push(Line { name, secs, against: Some(reference) });
            let copied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {copy_table}")))
                .fetch_one(&pool)
                .await?;
            assert_eq!(copied as usize, rows, "psql copied every row");
            forget(&pool).await?;
        }
    }
    sim.stop().await?;

    println!("{rows} rows in {} windows ({} per commit)\n", windows.len(), job.max_windows_per_request);
    println!("{:<46} {:>9} {:>12} {:>13}", "measurement", "seconds", "rows/s", "x reference");
    for line in &lines {
        let ratio = line.against.map(|r| format!("{:.2}", line.secs / lines[r].secs)).unwrap_or_default();
        println!("{:<46} {:>9.3} {:>12.0} {:>13}", line.name, line.secs, rows as f64 / line.secs, ratio);
    }
    Ok(())
}

/// The backfill command's path: every window of `job` into `warehouse`, 4 chunks at a time.
async fn backfill(config: &Config, warehouse: &Warehouse, job: &Job, windows: &[plan::Window]) -> anyhow::Result<f64> {
    let mut cfg = config.clone();
    cfg.warehouse = warehouse.clone();
    let runner = Runner::open(cfg).await?;
    let opts = RunOptions {
        kind: RunKind::Range,
        concurrency: CONCURRENCY,
        progress: Progress::Log,
        force: true,
        ..RunOptions::default()
    };
    let t = Instant::now();
    let report = runner.run(job, windows.to_vec(), &opts).await?;
    anyhow::ensure!(report.ok(), "{:?}", report.failures);
    Ok(t.elapsed().as_secs_f64())
}

/// The sink alone: the prebuilt batches committed a chunk of windows per commit, `concurrency`
/// commits at a time.
async fn commit_alone(
    warehouse: &Warehouse,
    job: &Job,
    batches: &[WindowBatch],
    concurrency: usize,
) -> anyhow::Result<f64> {
    let sink = Sink::open(warehouse).await?;
    let schema = chatetl::runner::table_schema(job);
    let definition = chatetl::state::definition(job);
    let history_start = chatetl::time::local_day_start(job.time_zone, job.start);
    sink.prepare(job, &schema, history_start, &definition).await?;
    let t = Instant::now();
    let commits = batches.chunks(job.max_windows_per_request as usize).map(|group| {
        sink.commit(Commit {
            job,
            schema: &schema,
            history_start,
            definition_hash: &definition.hash,
            run_id: "bench",
            requests: 3,
            windows: group.to_vec(),
            partial_after: None,
        })
    });
    let mut done = futures::stream::iter(commits).buffer_unordered(concurrency);
    while let Some(result) = done.next().await {
        result?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The reference writer: `batches` grouped by chatetl's monthly partitions, each written with
/// one `ArrowWriter` and chatetl's writer settings, then fsynced.
fn write_directly(job: &Job, batches: &[WindowBatch], root: &Path) -> anyhow::Result<()> {
    let mut files: BTreeMap<PathBuf, Vec<&WindowBatch>> = BTreeMap::new();
    for b in batches {
        let partition = chatetl::sink::parquet::partition_of(job.kind, job.time_zone, b.window.start);
        files.entry(root.join(partition).join("data.parquet")).or_default().push(b);
    }
    for (path, batches) in files {
        std::fs::create_dir_all(path.parent().expect("a folder"))?;
        let file = std::fs::File::create(&path)?;
        let schema = batches[0].batch.schema();
        let props = chatetl::sink::parquet::writer_properties();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file.try_clone()?, schema, Some(props))?;
        for b in batches {
            writer.write(&b.batch)?;
        }
        writer.close()?;
        file.sync_all()?;
    }
    Ok(())
}

/// Runs one `psql` meta-command against `url`.
fn psql(url: &str, command: &str) -> anyhow::Result<()> {
    let out = Command::new("psql").arg(url).args(["-v", "ON_ERROR_STOP=1", "-qc", command]).output()?;
    anyhow::ensure!(out.status.success(), "psql {command}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

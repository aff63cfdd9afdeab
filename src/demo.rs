//! `chatetl demo`: the built-in simulator, every shipped job, a local warehouse, a summary.
//!
//! Owns: starting the simulator in-process on a dataset that ends today, loading the embedded
//! configuration and job catalogue ([`shipped`]) with the simulator's address and keys in place of
//! the `GIOSG_*`, `THULIUM_*` and `COMM100_*` environment variables, running each windowed job over
//! the last `days` complete days and capturing each snapshot job once, and reading a few result
//! rows back from the warehouse for the summary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::{Duration, Utc};

use crate::config::{self, Config, JobKind, Secret, Warehouse};
use crate::plan;
use crate::runner::{Progress, RunKind, RunOptions, RunReport, Runner};
use crate::simulator::{DatasetSpec, FaultConfig, Simulator, dataset};
use crate::time::local_day_start;

/// The configuration and job files compiled into the binary.
pub mod shipped {
    /// `chatetl.yaml` as shipped.
    pub const CONFIG: &str = include_str!("../chatetl.yaml");
    include!(concat!(env!("OUT_DIR"), "/shipped_jobs.rs"));
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Complete days loaded, ending yesterday.
    pub days: u32,
    /// Parquet folder (when `postgres` is not set).
    pub out: PathBuf,
    /// Load into this PostgreSQL database instead.
    pub postgres: Option<Secret>,
    /// Average sessions per simulated day.
    pub sessions_per_day: u32,
}

/// One day of the summary: (local date, real chats, sales in real chats, unique visitors), org scope.
pub type SampleRow = (String, Option<f64>, Option<f64>, Option<f64>);

/// What the demo did.
pub struct DemoSummary {
    pub reports: Vec<RunReport>,
    pub seconds: f64,
    pub warehouse: String,
    /// A few result rows, read back from the warehouse.
    pub sample: Vec<SampleRow>,
}

/// Writes the embedded configuration and jobs into `dir` and loads them with the simulator's
/// address, key and organization standing in for the `GIOSG_*` variables.
pub fn shipped_config(dir: &std::path::Path, base_url: &str, token: &str, org: &str) -> Result<Config, String> {
    std::fs::create_dir_all(dir.join("jobs")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("chatetl.yaml"), shipped::CONFIG).map_err(|e| e.to_string())?;
    for (name, text) in shipped::JOBS {
        std::fs::write(dir.join("jobs").join(name), text).map_err(|e| e.to_string())?;
    }
    let comm100_base = format!("{base_url}/v4");
    // The simulator serves every vendor; an organization's key is also its Thulium password
    // (any user name) and its Comm100 bearer token.
    let vars: HashMap<&str, &str> = HashMap::from([
        ("GIOSG_BASE_URL", base_url),
        ("GIOSG_TOKEN", token),
        ("GIOSG_ORGANIZATION_ID", org),
        ("THULIUM_BASE_URL", base_url),
        ("THULIUM_USER", "demo"),
        ("THULIUM_PASSWORD", token),
        ("THULIUM_TIME_ZONE", "Europe/Helsinki"),
        ("COMM100_BASE_URL", comm100_base.as_str()),
        ("COMM100_TOKEN", token),
    ]);
    let lookup = |name: &str| vars.get(name).map(|v| v.to_string()).or_else(|| std::env::var(name).ok());
    config::load_with_env(&dir.join("chatetl.yaml"), &lookup).map_err(|e| e.to_string())
}

/// Runs the demo.
pub async fn run(opts: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let tz = chrono_tz::Europe::Helsinki;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let first = today - Duration::days(opts.days.max(1) as i64);
    let spec = DatasetSpec {
        start: first - Duration::days(1),
        days: opts.days.max(1) + 2,
        sessions_per_day: opts.sessions_per_day,
        time_zone: tz,
        ..DatasetSpec::default()
    };
    let data = dataset::generate(&spec);
    let org = data.organizations[0].id.clone();
    let token = data.organizations[0].api_token.clone();
    let sim = Simulator::new(data, FaultConfig::default(), 1).spawn().await?;

    let dir = tempfile::tempdir()?;
    let mut config = shipped_config(dir.path(), &sim.base_url(), &token, &org).map_err(anyhow::Error::msg)?;
    // The demo's history is its days, so watermarks (and `chatetl status`) show them loaded.
    for job in config.jobs.values_mut() {
        job.start = first;
    }
    // The shipped limits are polite to the real API; the local simulator needs none.
    for source in config.sources.values_mut() {
        source.requests_per_second = 500.0;
    }
    config.warehouse = match &opts.postgres {
        Some(url) => Warehouse::Postgres { url: url.clone(), schema: "chatetl_demo".into() },
        None => Warehouse::Parquet { path: opts.out.clone() },
    };
    let runner = Runner::open(config).await?;
    let from = local_day_start(tz, first);
    let to = local_day_start(tz, today);
    let mut reports = Vec::new();
    for job in runner.config.jobs.values() {
        let windows = match job.kind {
            JobKind::Windowed => plan::windows_overlapping(job.window, job.time_zone, from, to),
            // Snapshots have no history: capture the simulator's current state once.
            JobKind::Snapshot => runner.incremental_windows(job, Utc::now()).await?.0,
        };
        let opts = RunOptions {
            kind: RunKind::Demo,
            concurrency: 4,
            progress: Progress::Auto,
            force: true,
            ..RunOptions::default()
        };
        reports.push(runner.run(job, windows, &opts).await?);
    }
    let sample = sample_rows(&runner, 7).await.unwrap_or_default();
    let warehouse = runner.sink.describe();
    sim.stop().await?;
    Ok(DemoSummary { reports, seconds: started.elapsed().as_secs_f64(), warehouse, sample })
}

/// The last `n` days of org-scope real chats, sales and unique visitors, read back from the
/// warehouse.
async fn sample_rows(
    runner: &Runner,
    n: usize,
) -> Result<Vec<(String, Option<f64>, Option<f64>, Option<f64>)>, String> {
    let mut by_date: std::collections::BTreeMap<String, [Option<f64>; 3]> = Default::default();
    for (i, (table, column)) in [
        ("real_chats", "real_chats"),
        ("sales_in_real_chats", "sales_in_real_chats"),
        ("unique_visitors", "unique_visitors"),
    ]
    .iter()
    .enumerate()
    {
        for (date, value) in crate::readback::org_series(&runner.sink, table, column).await? {
            by_date.entry(date).or_default()[i] = value;
        }
    }
    Ok(by_date.into_iter().rev().take(n).rev().map(|(d, [a, b, c])| (d, a, b, c)).collect())
}

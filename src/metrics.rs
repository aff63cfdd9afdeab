//! The daemon's health and metrics endpoint (`chatetl schedule --listen 127.0.0.1:9464`).
//!
//! Owns: [`Metrics`] (per-job counters and gauges the scheduler updates after each run), which
//! families `/metrics` shows and how each is read from a job's [`JobMetrics`], and the HTTP
//! server: `GET /metrics` and `GET /healthz` (whose check, a [`HealthCheck`], the scheduler
//! supplies), served on a bound listener until a shutdown future resolves. The text itself (the
//! OpenMetrics 1.0 text format: HELP, TYPE, escaping, numbers, `# EOF`) is written by the
//! `prometheus-client` crate, to which [`Metrics`] hands its snapshot as a collector per scrape.
//!
//! To add a metric: add a field to [`JobMetrics`], update it in the `record_*` method that learns
//! it, and add one entry to `FAMILIES` (name, help, and how to read the sample). A gauge's sample
//! is omitted for a job when the entry returns `None` (nothing to show yet), and a family with no
//! sample at all is omitted whole.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::error::ErrorKind;
use crate::runner::{ChunkDone, RunReport};
use crate::source::http::{RequestStatsSnapshot, StatsRegistry};

/// The content type of `GET /metrics`: the OpenMetrics text format, version 1.0.0.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Per-job counters and gauges, updated by the scheduler as chunks and runs finish, and each
/// source's request counts; read by /metrics.
#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<String, JobMetrics>>,
    requests: Mutex<Option<StatsRegistry>>,
}

/// What the daemon knows of one job; the counters are totals since the process started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMetrics {
    /// The job's source and endpoint, its samples' `source` and `endpoint` labels.
    pub source: String,
    pub endpoint: String,
    /// When the job's next tick fires.
    pub next_run: Option<DateTime<Utc>>,
    /// End of the last run that had no failed window.
    pub last_success: Option<DateTime<Utc>>,
    /// The job's watermark after its last run.
    pub watermark: Option<DateTime<Utc>>,
    /// Windows loaded (counter).
    pub windows_loaded: u64,
    /// Rows loaded (counter).
    pub rows_loaded: u64,
    /// Windows whose chunk failed (counter).
    pub windows_failed: u64,
    /// Runs, including failed ones and those that could not start (counter).
    pub runs: u64,
    /// Runs with a failed window or a fatal error (counter).
    pub run_failures: u64,
    /// Upstream requests (counter).
    pub requests: u64,
    /// Upstream requests retried (counter).
    pub retries: u64,
    /// Ticks skipped because the job was still running, locked elsewhere, or claimed by another
    /// daemon on the warehouse (counter).
    pub skipped_ticks: u64,
    /// Wall-clock duration of the last finished run.
    pub last_run_duration_secs: Option<f64>,
    /// The last run found the stored definition different from the job file's.
    pub definition_changed: bool,
    /// Paused by the daemon until the next reload (its source refused the credentials).
    pub paused: bool,
    /// Failed chunks and fatal run errors by kind (counter per kind; kinds never seen are absent).
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Registers a job of `source` and `endpoint` so it appears (with zero counters) before its
    /// first run.
    pub fn register(&self, job: &str, source: &str, endpoint: &str) {
        self.update(job, |m| {
            m.source = source.to_string();
            m.endpoint = endpoint.to_string();
        });
    }

    /// Shows these sources' request counts and durations (the daemon's runners share them).
    pub fn set_request_stats(&self, stats: StatsRegistry) {
        *self.requests.lock().unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    /// What the warehouse remembers of a job, read when the daemon starts, so its gauges are
    /// there before its first tick: its watermark, the end of its last successful run and how
    /// long its last run took.
    pub fn record_state(
        &self,
        job: &str,
        watermark: Option<DateTime<Utc>>,
        last_success: Option<DateTime<Utc>>,
        last_run_duration_secs: Option<f64>,
    ) {
        self.update(job, |m| {
            m.watermark = m.watermark.or(watermark);
            m.last_success = m.last_success.or(last_success);
            m.last_run_duration_secs = m.last_run_duration_secs.or(last_run_duration_secs);
        });
    }

    /// The job's watermark as the warehouse has it now (another process loaded it): replaces the
    /// last.
    pub fn record_watermark(&self, job: &str, watermark: Option<DateTime<Utc>>) {
        self.update(job, |m| m.watermark = watermark);
    }

    /// When the job's next tick fires.
    pub fn set_next_run(&self, job: &str, at: Option<DateTime<Utc>>) {
        self.update(job, |m| m.next_run = at);
    }

    /// A chunk finished (committed or failed): its windows, rows, requests and retries are added
    /// at once, so the counters move during a long run, and a failure counts an error of its kind.
    pub fn record_chunk(&self, job: &str, chunk: &ChunkDone) {
        self.update(job, |m| {
            m.windows_loaded += chunk.windows_loaded;
            m.windows_failed += chunk.windows_failed;
            m.rows_loaded += chunk.rows;
            m.requests += chunk.requests;
            m.retries += chunk.retries;
            if let Some(kind) = chunk.failure {
                *m.errors.entry(kind).or_default() += 1;
            }
        });
    }

    /// A run finished (its chunks were counted by [`Metrics::record_chunk`]): one run (and one
    /// run failure unless `report.ok()`), `last_success = finished_at` when it is ok, and its
    /// duration and definition flag. `watermark` is the job's watermark after the run and
    /// replaces the last.
    pub fn record_run(&self, report: &RunReport, watermark: Option<DateTime<Utc>>, finished_at: DateTime<Utc>) {
        self.update(&report.job, |m| {
            m.runs += 1;
            if report.ok() {
                m.last_success = Some(finished_at);
            } else {
                m.run_failures += 1;
            }
            m.watermark = watermark;
            m.last_run_duration_secs = Some(report.elapsed.as_secs_f64());
            // A run that loaded anything ran with a definition the warehouse accepted.
            m.definition_changed = false;
        });
    }

    /// A run that could not start or ended in a fatal error of `kind`: counts a run, a run
    /// failure and an error of that kind.
    pub fn record_fatal(&self, job: &str, kind: ErrorKind) {
        self.update(job, |m| {
            m.runs += 1;
            m.run_failures += 1;
            *m.errors.entry(kind).or_default() += 1;
        });
    }

    /// The job's runs are refused because its definition changed beyond added aggregations
    /// (`true`), until a run succeeds again.
    pub fn set_definition_changed(&self, job: &str, changed: bool) {
        self.update(job, |m| m.definition_changed = changed);
    }

    /// The job is paused (`true`) or runs again (`false`).
    pub fn set_paused(&self, job: &str, paused: bool) {
        self.update(job, |m| m.paused = paused);
    }

    /// A tick skipped because the job was still running, locked elsewhere, or claimed by another
    /// daemon on the warehouse.
    pub fn record_skipped_tick(&self, job: &str) {
        self.update(job, |m| m.skipped_ticks += 1);
    }

    /// Every job's metrics, by job name.
    pub fn snapshot(&self) -> BTreeMap<String, JobMetrics> {
        self.jobs().clone()
    }

    /// The OpenMetrics text exposition, as of `now`: for each family, its HELP and TYPE once, then
    /// one sample per job labelled `job="<name>"` (jobs in name order); then `chatetl_up 1` and
    /// `# EOF`. A counter family is named without `_total` and its samples with it. Gauges a job
    /// has no value for yet (never succeeded, no watermark, never run) have no sample for it, and
    /// a family without samples (no jobs; a gauge no job has yet) is left out. Timestamps and the
    /// watermark lag (`now` - watermark) are seconds to the millisecond.
    pub fn render_openmetrics(&self, now: DateTime<Utc>) -> String {
        let mut registry = Registry::default();
        let requests =
            self.requests.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(StatsRegistry::snapshot);
        registry.register_collector(Box::new(Scrape {
            jobs: self.snapshot(),
            requests: requests.unwrap_or_default(),
            now,
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }

    /// The job's metrics, created (zeroed) on first use, under the lock.
    fn update(&self, job: &str, f: impl FnOnce(&mut JobMetrics)) {
        let mut jobs = self.jobs();
        match jobs.get_mut(job) {
            Some(m) => f(m),
            None => f(jobs.entry(job.to_string()).or_default()),
        }
    }

    /// The lock; a panic elsewhere while holding it leaves plain numbers, still worth serving.
    fn jobs(&self) -> MutexGuard<'_, BTreeMap<String, JobMetrics>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One metric family with a sample per job.
struct Family {
    /// The family's name; the encoder appends `_total` to a counter's samples.
    name: &'static str,
    help: &'static str,
    sample: Sample,
}

/// How a family reads a job's sample.
enum Sample {
    Counter(fn(&JobMetrics) -> u64),
    /// `None` leaves the job out.
    Gauge(fn(&JobMetrics, DateTime<Utc>) -> Option<f64>),
}

/// One job's sample of a family.
enum Value {
    Counter(u64),
    Gauge(f64),
}

impl Sample {
    fn read(&self, m: &JobMetrics, now: DateTime<Utc>) -> Option<Value> {
        match self {
            Sample::Counter(value) => Some(Value::Counter(value(m))),
            Sample::Gauge(value) => value(m, now).map(Value::Gauge),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Sample::Counter(_) => MetricType::Counter,
            Sample::Gauge(_) => MetricType::Gauge,
        }
    }
}

const FAMILIES: &[Family] = &[
    Family {
        name: "chatetl_job_last_success_timestamp_seconds",
        help: "End of the job's last run that had no failed window, in seconds since the Unix epoch.",
        sample: Sample::Gauge(|m, _| m.last_success.map(timestamp_seconds)),
    },
    Family {
        name: "chatetl_job_watermark_timestamp_seconds",
        help: "The job's watermark (every window ending at or before it is loaded), in seconds since the Unix epoch.",
        sample: Sample::Gauge(|m, _| m.watermark.map(timestamp_seconds)),
    },
    Family {
        name: "chatetl_job_watermark_lag_seconds",
        help: "Seconds between now and the job's watermark.",
        sample: Sample::Gauge(|m, now| m.watermark.map(|w| millis_as_seconds((now - w).num_milliseconds()))),
    },
    Family {
        name: "chatetl_job_windows_loaded",
        help: "Windows loaded since the process started.",
        sample: Sample::Counter(|m| m.windows_loaded),
    },
    Family {
        name: "chatetl_job_rows_loaded",
        help: "Rows loaded since the process started.",
        sample: Sample::Counter(|m| m.rows_loaded),
    },
    Family {
        name: "chatetl_job_windows_failed",
        help: "Windows that failed to load since the process started.",
        sample: Sample::Counter(|m| m.windows_failed),
    },
    Family {
        name: "chatetl_job_runs",
        help: "Job runs since the process started, including those that failed.",
        sample: Sample::Counter(|m| m.runs),
    },
    Family {
        name: "chatetl_job_run_failures",
        help: "Job runs with a failed window or a fatal error since the process started.",
        sample: Sample::Counter(|m| m.run_failures),
    },
    Family {
        name: "chatetl_job_requests",
        help: "Upstream API requests since the process started.",
        sample: Sample::Counter(|m| m.requests),
    },
    Family {
        name: "chatetl_job_retries",
        help: "Upstream API requests retried since the process started.",
        sample: Sample::Counter(|m| m.retries),
    },
    Family {
        name: "chatetl_job_skipped_ticks",
        help: "Scheduled ticks skipped because the job was still running, locked by another process, or claimed by another daemon on the warehouse.",
        sample: Sample::Counter(|m| m.skipped_ticks),
    },
    Family {
        name: "chatetl_job_next_run_timestamp_seconds",
        help: "When the job's next scheduled tick fires, in seconds since the Unix epoch.",
        sample: Sample::Gauge(|m, _| m.next_run.map(timestamp_seconds)),
    },
    Family {
        name: "chatetl_job_last_run_duration_seconds",
        help: "Duration of the job's last finished run in seconds.",
        sample: Sample::Gauge(|m, _| m.last_run_duration_secs),
    },
    Family {
        name: "chatetl_job_paused",
        help: "1 while the daemon pauses the job because its source refused the credentials (until a reload), else 0.",
        sample: Sample::Gauge(|m, _| Some(f64::from(u8::from(m.paused)))),
    },
    Family {
        name: "chatetl_job_definition_changed",
        help: "1 when the job's last run found its stored definition different from the job file's, else 0.",
        sample: Sample::Gauge(|m, _| Some(f64::from(u8::from(m.definition_changed)))),
    },
];

/// One scrape: the jobs' metrics as of `now`, encoded by `prometheus-client` as [`FAMILIES`]
/// say, then `chatetl_up`.
#[derive(Debug)]
struct Scrape {
    jobs: BTreeMap<String, JobMetrics>,
    requests: BTreeMap<String, RequestStatsSnapshot>,
    now: DateTime<Utc>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for family in FAMILIES {
            let samples: Vec<(&str, Value)> = self
                .jobs
                .iter()
                .filter_map(|(job, m)| Some((job.as_str(), family.sample.read(m, self.now)?)))
                .collect();
            // A family without samples is left out whole, as the registry leaves out an empty
            // `Family`: its HELP and TYPE alone tell a scraper nothing.
            if samples.is_empty() {
                continue;
            }
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, family.sample.metric_type())?;
            for (job, value) in samples {
                let m = &self.jobs[job];
                let labels = [("chatetl_job", job), ("source", m.source.as_str()), ("endpoint", m.endpoint.as_str())];
                let sample = metric.encode_family(&labels)?;
                match value {
                    Value::Counter(v) => ConstCounter::new(v).encode(sample)?,
                    Value::Gauge(v) => ConstGauge::new(v).encode(sample)?,
                }
            }
        }
        // Errors by kind: one sample per job and kind seen, so an alert can tell refused
        // credentials (`kind="credentials"`) from an outage (`kind="upstream_unavailable"`).
        let errors: Vec<(&str, ErrorKind, u64)> =
            self.jobs.iter().flat_map(|(job, m)| m.errors.iter().map(move |(k, n)| (job.as_str(), *k, *n))).collect();
        if !errors.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "chatetl_job_errors",
                "Failed chunks and fatal run errors since the process started, by kind: credentials, bad_request, \
                 upstream_unavailable, bad_response, warehouse or configuration.",
                None,
                MetricType::Counter,
            )?;
            for (job, kind, n) in errors {
                let m = &self.jobs[job];
                let labels = [
                    ("chatetl_job", job),
                    ("source", m.source.as_str()),
                    ("endpoint", m.endpoint.as_str()),
                    ("kind", kind.as_str()),
                ];
                ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
            }
        }
        if self.requests.values().any(|r| r.count > 0) {
            let mut metric = encoder.encode_descriptor(
                "chatetl_source_requests",
                "Upstream request attempts since the process started, by source and status class (2xx, 4xx, 5xx, \
                 or error when no answer came: a timeout, a refused or dropped connection).",
                None,
                MetricType::Counter,
            )?;
            for (source, stats) in &self.requests {
                for (class, n) in &stats.by_class {
                    ConstCounter::new(*n)
                        .encode(metric.encode_family(&[("source", source.as_str()), ("class", class)])?)?;
                }
            }
            let mut metric = encoder.encode_descriptor(
                "chatetl_source_request_duration_seconds",
                "Duration of upstream request attempts, from sending to the last byte of the answer (or the failure).",
                None,
                MetricType::Histogram,
            )?;
            for (source, stats) in self.requests.iter().filter(|(_, r)| r.count > 0) {
                metric.encode_family(&[("source", source.as_str())])?.encode_histogram::<Vec<(String, String)>>(
                    stats.sum_seconds,
                    stats.count,
                    &stats.buckets,
                    None,
                )?;
            }
        }
        if self.requests.values().any(|r| r.budget_wait_seconds.is_some()) {
            let mut metric = encoder.encode_descriptor(
                "chatetl_source_budget_wait_seconds",
                "Time upstream request attempts waited for the vendor budget shared by every chatetl process on \
                 the PostgreSQL warehouse (a concurrency lease and a rate slot).",
                None,
                MetricType::Counter,
            )?;
            for (source, stats) in &self.requests {
                if let Some(waited) = stats.budget_wait_seconds {
                    ConstCounter::new(waited).encode(metric.encode_family(&[("source", source.as_str())])?)?;
                }
            }
        }
        let info = ConstGauge::new(1_i64);
        info.encode(
            encoder
                .encode_descriptor(
                    "chatetl_build_info",
                    "1, labelled with the running chatetl's version.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?,
        )?;
        let up = ConstGauge::new(1_i64);
        up.encode(encoder.encode_descriptor(
            "chatetl_up",
            "1 while the chatetl daemon serves metrics.",
            None,
            up.metric_type(),
        )?)
    }
}

/// Seconds since the Unix epoch, to the millisecond.
fn timestamp_seconds(t: DateTime<Utc>) -> f64 {
    millis_as_seconds(t.timestamp_millis())
}

/// Milliseconds as seconds. The division is correctly rounded, so the shortest decimal the
/// encoder prints is the milliseconds exactly (`1.005`, never `1.0050000000000001`).
fn millis_as_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// A check behind /healthz or /readyz: Ok, or Err(the reason), answered at once.
pub type HealthCheck = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What the endpoint answers about the daemon.
#[derive(Clone)]
pub struct Probes {
    /// /healthz, liveness: the scheduler runs and its warehouse answers.
    pub health: HealthCheck,
    /// /readyz, readiness: every scheduled job has caught up since the daemon started.
    pub ready: HealthCheck,
}

impl Probes {
    /// Both probes answering `check`.
    pub fn same(check: HealthCheck) -> Probes {
        Probes { health: check.clone(), ready: check }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    probes: Probes,
}

/// GET /healthz and GET /readyz: 200 "ok\n" or 503 with the reason; GET /metrics: 200 with
/// content type [`CONTENT_TYPE`].
pub fn router(metrics: Arc<Metrics>, probes: Probes) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, probes })
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    probes: Probes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics endpoint listening");
    axum::serve(listener, router(metrics, probes)).with_graceful_shutdown(shutdown).await
}

async fn answer(check: &HealthCheck) -> (StatusCode, String) {
    match check().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    answer(&s.probes.health).await
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    answer(&s.probes.ready).await
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.render_openmetrics(Utc::now()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use futures::FutureExt;
    use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

    use super::*;

    type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

    /// `text` read as a scraper reads it, by a strict OpenMetrics parser: HELP and TYPE before a
    /// family's samples, one family's samples together, unique label sets, valid numbers and
    /// escapes, counters' `_total`, and the final `# EOF`.
    fn parse(text: &str) -> Exposition {
        openmetrics_parser::openmetrics::parse_openmetrics(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The value of family `name`'s sample labelled `chatetl_job="<job>"` (or with no labels).
    fn value(exp: &Exposition, name: &str, job: Option<&str>) -> Option<f64> {
        let family = exp.families.get(name).unwrap_or_else(|| panic!("no family {name}"));
        let sample = family.iter_samples().find(|s| {
            let labels = s.get_labelset().unwrap();
            let got: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            match job {
                Some(j) => got.iter().any(|(k, v)| k == "chatetl_job" && v == j),
                None => got.is_empty(),
            }
        })?;
        match &sample.value {
            OpenMetricsValue::Counter(c) => Some(c.value.as_f64()),
            OpenMetricsValue::Gauge(n) => Some(n.as_f64()),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }

    fn sample_count(exp: &Exposition) -> usize {
        exp.families.values().map(|f| f.iter_samples().count()).sum()
    }

    fn at(h: u32, m: u32, s: u32, ms: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, h, m, s).unwrap() + chrono::Duration::milliseconds(ms.into())
    }

    fn report(job: &str, rows: u64, windows_loaded: usize, windows_failed: usize) -> RunReport {
        let failures = (0..windows_failed.min(1))
            .map(|_| {
                let window = crate::plan::Window { start: at(0, 0, 0, 0), end: at(1, 0, 0, 0) };
                crate::runner::ChunkFailure {
                    first: window,
                    last: window,
                    windows: windows_failed,
                    kind: crate::error::ErrorKind::UpstreamUnavailable,
                    message: "boom".into(),
                }
            })
            .collect();
        RunReport {
            job: job.to_string(),
            run_id: "r".to_string(),
            windows_planned: windows_loaded + windows_failed,
            windows_cancelled: 0,
            windows_skipped: 0,
            windows_loaded,
            windows_failed,
            rows,
            requests: 3,
            retries: 1,
            elapsed: Duration::from_millis(1500),
            failures,
            added_columns: Vec::new(),
            promoted: false,
            fused_with: Vec::new(),
        }
    }

    /// Every per-job family and its type; a counter's samples are its name plus `_total`.
    const JOB_FAMILIES: &[(&str, OpenMetricsType)] = &[
        ("chatetl_job_last_success_timestamp_seconds", OpenMetricsType::Gauge),
        ("chatetl_job_watermark_timestamp_seconds", OpenMetricsType::Gauge),
        ("chatetl_job_watermark_lag_seconds", OpenMetricsType::Gauge),
        ("chatetl_job_windows_loaded", OpenMetricsType::Counter),
        ("chatetl_job_rows_loaded", OpenMetricsType::Counter),
        ("chatetl_job_windows_failed", OpenMetricsType::Counter),
        ("chatetl_job_runs", OpenMetricsType::Counter),
        ("chatetl_job_run_failures", OpenMetricsType::Counter),
        ("chatetl_job_requests", OpenMetricsType::Counter),
        ("chatetl_job_retries", OpenMetricsType::Counter),
        ("chatetl_job_skipped_ticks", OpenMetricsType::Counter),
        ("chatetl_job_next_run_timestamp_seconds", OpenMetricsType::Gauge),
        ("chatetl_job_last_run_duration_seconds", OpenMetricsType::Gauge),
        ("chatetl_job_definition_changed", OpenMetricsType::Gauge),
        ("chatetl_job_paused", OpenMetricsType::Gauge),
    ];

    /// A chunk of `loaded` windows with `rows`, or a failed one of `failed` windows.
    fn chunk(loaded: u64, failed: u64, rows: u64, requests: u64, retries: u64) -> ChunkDone {
        ChunkDone {
            windows_loaded: loaded,
            windows_failed: failed,
            rows,
            requests,
            retries,
            failure: (failed > 0).then_some(ErrorKind::UpstreamUnavailable),
        }
    }

    #[test]
    fn exposition_parses_strictly_and_shows_what_was_recorded() {
        let metrics = Metrics::new();
        metrics.register("giosg_daily", "giosg", "chat_sessions");
        metrics.register("never_run", "thulium", "chat_summary");
        let stats = StatsRegistry::default();
        stats.of("giosg").record("2xx", Duration::from_millis(40));
        stats.of("giosg").record("2xx", Duration::from_millis(300));
        stats.of("giosg").record("5xx", Duration::from_secs(3));
        metrics.set_request_stats(stats);
        // Chunks count as they finish: a first run of one chunk, then a chunk loaded and one failed.
        metrics.record_chunk("giosg_daily", &chunk(4, 0, 120, 3, 1));
        let mut second = report("giosg_daily", 30, 1, 2);
        second.elapsed = Duration::from_millis(2250);
        let watermark = at(0, 0, 0, 0);
        metrics.record_run(
            &report("giosg_daily", 120, 4, 0),
            Some(watermark - chrono::Duration::days(1)),
            at(10, 0, 5, 250),
        );
        metrics.record_chunk("giosg_daily", &chunk(1, 0, 30, 2, 0));
        metrics.record_chunk("giosg_daily", &chunk(0, 2, 0, 1, 1));
        metrics.record_run(&second, Some(watermark), at(11, 0, 7, 0));
        metrics.set_definition_changed("giosg_daily", true);
        metrics.record_fatal("giosg_daily", ErrorKind::Credentials);
        metrics.record_skipped_tick("giosg_daily");
        metrics.record_skipped_tick("giosg_daily");
        metrics.set_next_run("giosg_daily", Some(at(13, 0, 0, 0)));
        let now = at(12, 30, 0, 500);

        let text = metrics.render_openmetrics(now);
        let exp = parse(&text);

        let mut types: Vec<_> = exp.families.values().map(|f| (f.family_name.as_str(), f.family_type)).collect();
        types.sort_by_key(|(name, _)| *name);
        let mut expected_types: Vec<_> = JOB_FAMILIES.to_vec();
        expected_types.push(("chatetl_up", OpenMetricsType::Gauge));
        expected_types.push(("chatetl_build_info", OpenMetricsType::Gauge));
        expected_types.push(("chatetl_job_errors", OpenMetricsType::Counter));
        expected_types.push(("chatetl_source_requests", OpenMetricsType::Counter));
        expected_types.push(("chatetl_source_request_duration_seconds", OpenMetricsType::Histogram));
        expected_types.sort_by_key(|(name, _)| *name);
        assert_eq!(types, expected_types);
        assert!(exp.families.values().all(|f| !f.help.is_empty()), "every family has a HELP");

        let v = |name: &str| value(&exp, name, Some("giosg_daily"));
        let labels = "{chatetl_job=\"giosg_daily\",source=\"giosg\",endpoint=\"chat_sessions\"}";
        // The second run failed, so the last success is the first run's end, milliseconds kept.
        assert_eq!(v("chatetl_job_last_success_timestamp_seconds"), Some(1_709_287_205.25));
        assert!(
            text.contains(&format!("chatetl_job_last_success_timestamp_seconds{labels} 1709287205.25\n")),
            "{text}"
        );
        assert_eq!(v("chatetl_job_watermark_timestamp_seconds"), Some(watermark.timestamp() as f64));
        assert_eq!(v("chatetl_job_watermark_lag_seconds"), Some((12 * 3600 + 30 * 60) as f64 + 0.5));
        assert!(text.contains(&format!("chatetl_job_watermark_lag_seconds{labels} 45000.5\n")), "{text}");
        assert_eq!(v("chatetl_job_next_run_timestamp_seconds"), Some(at(13, 0, 0, 0).timestamp() as f64));
        assert_eq!(v("chatetl_job_windows_loaded"), Some(5.0));
        assert_eq!(v("chatetl_job_rows_loaded"), Some(150.0));
        assert_eq!(v("chatetl_job_windows_failed"), Some(2.0));
        assert_eq!(v("chatetl_job_runs"), Some(3.0));
        assert_eq!(v("chatetl_job_run_failures"), Some(2.0));
        assert_eq!(v("chatetl_job_requests"), Some(6.0));
        assert_eq!(v("chatetl_job_retries"), Some(2.0));
        assert_eq!(v("chatetl_job_skipped_ticks"), Some(2.0));
        assert_eq!(v("chatetl_job_last_run_duration_seconds"), Some(2.25));
        assert_eq!(v("chatetl_job_definition_changed"), Some(1.0));
        // The sample names are unchanged (`_total` on counters), and counters are integers.
        assert!(text.contains(&format!("\nchatetl_job_rows_loaded_total{labels} 150\n")), "{text}");
        assert!(text.ends_with("\nchatetl_up 1\n# EOF\n"), "{text}");
        // Errors by kind tell the refused credentials of the fatal run from the failed chunk's
        // outage; kinds never seen have no sample.
        let errors = "chatetl_job_errors_total{chatetl_job=\"giosg_daily\",source=\"giosg\",endpoint=\"chat_sessions\"";
        assert!(text.contains(&format!("\n{errors},kind=\"credentials\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("\n{errors},kind=\"upstream_unavailable\"}} 1\n")), "{text}");
        assert!(
            !text.contains("kind=\"warehouse\"")
                && !text.contains("chatetl_job=\"never_run\",source=\"thulium\",endpoint=\"chat_summary\",kind"),
            "{text}"
        );
        // Requests per source and status class, and their durations.
        assert!(text.contains("\nchatetl_source_requests_total{source=\"giosg\",class=\"2xx\"} 2\n"), "{text}");
        assert!(text.contains("\nchatetl_source_requests_total{source=\"giosg\",class=\"5xx\"} 1\n"), "{text}");
        assert!(
            text.contains("\nchatetl_source_request_duration_seconds_bucket{le=\"0.05\",source=\"giosg\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nchatetl_source_request_duration_seconds_bucket{le=\"2.5\",source=\"giosg\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("\nchatetl_source_request_duration_seconds_count{source=\"giosg\"} 3\n"), "{text}");
        assert!(
            text.contains(&format!("\nchatetl_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        // No sample says `job`: Prometheus keeps that label for its own scrape target.
        assert!(!text.contains("{job=") && !text.contains(",job="), "{text}");

        // The registered job that never ran: zero counters, no gauges without a value.
        for (family, _) in JOB_FAMILIES {
            let expected = match *family {
                "chatetl_job_last_success_timestamp_seconds"
                | "chatetl_job_watermark_timestamp_seconds"
                | "chatetl_job_watermark_lag_seconds"
                | "chatetl_job_next_run_timestamp_seconds"
                | "chatetl_job_last_run_duration_seconds" => None,
                _ => Some(0.0),
            };
            assert_eq!(value(&exp, family, Some("never_run")), expected, "{family}");
        }
        assert_eq!(value(&exp, "chatetl_up", None), Some(1.0));
        // 15 families of giosg_daily, 10 of never_run, two error kinds, two request classes, one
        // histogram, build info, chatetl_up.
        assert_eq!(sample_count(&exp), 15 + 10 + 2 + 2 + 1 + 1 + 1);

        let snapshot = metrics.snapshot();
        assert_eq!(
            snapshot["never_run"],
            JobMetrics { source: "thulium".into(), endpoint: "chat_summary".into(), ..JobMetrics::default() }
        );
        assert_eq!(snapshot["giosg_daily"].last_success, Some(at(10, 0, 5, 250)));
        assert_eq!(snapshot["giosg_daily"].watermark, Some(watermark));
    }

    #[test]
    fn the_stored_state_fills_the_freshness_gauges_before_any_run() {
        let metrics = Metrics::new();
        metrics.register("giosg_daily", "giosg", "chat_sessions");
        let (watermark, success) = (at(0, 0, 0, 0), at(6, 30, 2, 0));
        metrics.record_state("giosg_daily", Some(watermark), Some(success), Some(12.5));
        let exp = parse(&metrics.render_openmetrics(at(12, 0, 0, 0)));
        let v = |name: &str| value(&exp, name, Some("giosg_daily"));
        assert_eq!(v("chatetl_job_watermark_timestamp_seconds"), Some(watermark.timestamp() as f64));
        assert_eq!(v("chatetl_job_watermark_lag_seconds"), Some(12.0 * 3600.0));
        assert_eq!(v("chatetl_job_last_success_timestamp_seconds"), Some(success.timestamp() as f64));
        assert_eq!(v("chatetl_job_last_run_duration_seconds"), Some(12.5));
        assert_eq!(v("chatetl_job_runs"), Some(0.0), "no run counted");
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let metrics = Metrics::new();
        let exp = parse(&metrics.render_openmetrics(at(0, 0, 0, 0)));
        let mut families: Vec<&String> = exp.families.keys().collect();
        families.sort();
        assert_eq!(families, ["chatetl_build_info", "chatetl_up"], "no jobs: only up and build info");
        assert_eq!(sample_count(&exp), 2);

        // A job that never ran has its counters and flag, and no gauge without a value.
        metrics.register("never_run", "giosg", "chat_sessions");
        let text = metrics.render_openmetrics(at(0, 0, 0, 0));
        let exp = parse(&text);
        for (family, _) in JOB_FAMILIES {
            let shown = !family.ends_with("_timestamp_seconds")
                && !family.ends_with("_lag_seconds")
                && *family != "chatetl_job_last_run_duration_seconds";
            assert_eq!(exp.families.contains_key(*family), shown, "{family}\n{text}");
        }
        // Ten counters and flags (paused included, at 0), build info and chatetl_up.
        assert_eq!(exp.families.len(), 10 + 2);
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let job = "we\"ird\\job\nname";
        let metrics = Metrics::new();
        metrics.record_skipped_tick(job);
        let text = metrics.render_openmetrics(at(0, 0, 0, 0));
        assert!(
            text.contains(
                "chatetl_job_skipped_ticks_total{chatetl_job=\"we\\\"ird\\\\job\\nname\",source=\"\",endpoint=\"\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(value(&parse(&text), "chatetl_job_skipped_ticks", Some(job)), Some(1.0));
    }

    #[test]
    fn the_parser_rejects_what_a_scraper_would() {
        let ok = "# HELP a x\n# TYPE a gauge\na{job=\"j\"} 1\n# EOF\n";
        assert!(openmetrics_parser::openmetrics::parse_openmetrics(ok).is_ok());
        for bad in [
            "# HELP a x\n# TYPE a gauge\na{job=\"j\"} 1\n",           // no EOF
            "# HELP a x\n# TYPE a gauge\na 1\na 2\n# EOF\n",          // duplicate sample
            "# HELP a x\n# TYPE a gauge\na one\n# EOF\n",             // not a number
            "# HELP a x\n# TYPE a gauge\na{job=\"j\"k\"} 1\n# EOF\n", // unescaped quote
            "# HELP a x\n# TYPE a counter\na 1\n# EOF\n",             // counter without _total
            "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na 2\n# EOF\n", // a resumed
        ] {
            assert!(openmetrics_parser::openmetrics::parse_openmetrics(bad).is_err(), "accepted {bad:?}");
        }
    }

    /// A health check that fails with the reason set in `failing`, if any.
    fn switchable_health(failing: Arc<Mutex<Option<String>>>) -> HealthCheck {
        Arc::new(move || {
            let failing = failing.clone();
            async move {
                match failing.lock().unwrap().clone() {
                    Some(reason) => Err(reason),
                    None => Ok(()),
                }
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn server_answers_metrics_and_healthz_and_stops_on_shutdown() {
        let metrics = Arc::new(Metrics::new());
        metrics.register("giosg_daily", "giosg", "chat_sessions");
        let failing = Arc::new(Mutex::new(None));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server =
            tokio::spawn(serve(listener, metrics.clone(), Probes::same(switchable_health(failing.clone())), async {
                let _ = rx.await;
            }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let base = format!("http://{addr}");

        let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE.as_str()], CONTENT_TYPE);
        let exp = parse(&resp.text().await.unwrap());
        assert_eq!(value(&exp, "chatetl_job_runs", Some("giosg_daily")), Some(0.0));
        assert_eq!(value(&exp, "chatetl_up", None), Some(1.0));

        // Metrics recorded after the server started show on the next scrape.
        metrics.record_skipped_tick("giosg_daily");
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert_eq!(value(&parse(&text), "chatetl_job_skipped_ticks", Some("giosg_daily")), Some(1.0), "{text}");

        let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok\n");

        *failing.lock().unwrap() = Some("warehouse unreachable: connection refused".to_string());
        let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.text().await.unwrap(), "warehouse unreachable: connection refused\n");

        *failing.lock().unwrap() = None;
        assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
        assert_eq!(client.get(format!("{base}/nope")).send().await.unwrap().status(), 404);

        // Not stopped before the shutdown future resolves, stopped soon after (the client's idle
        // keep-alive connection does not hold it open).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished());
        tx.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stopped");
        result.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting connections");
    }

    #[test]
    fn a_fatal_run_counts_a_run_and_a_failure_and_keeps_the_last_success() {
        let metrics = Metrics::new();
        metrics.record_chunk("j", &chunk(1, 0, 7, 1, 0));
        metrics.record_run(&report("j", 7, 1, 0), None, at(1, 0, 0, 0));
        metrics.record_fatal("j", ErrorKind::Warehouse);
        let m = &metrics.snapshot()["j"];
        assert_eq!((m.runs, m.run_failures, m.rows_loaded), (2, 1, 7));
        assert_eq!(m.last_success, Some(at(1, 0, 0, 0)));
        assert_eq!(m.last_run_duration_secs, Some(1.5));
    }
}

//! The daemon's health and metrics endpoint (`chatetl schedule --listen 127.0.0.1:9464`).
//!
//! Owns: [`Metrics`] (per-job counters and gauges the scheduler updates after each run), their
//! rendering in the Prometheus text exposition format (version 0.0.4), and the HTTP server:
//! `GET /metrics` and `GET /healthz` (whose check, a [`HealthCheck`], the scheduler supplies),
//! served on a bound listener until a shutdown future resolves.
//!
//! To add a metric: add a field to [`JobMetrics`], update it in the `record_*` method that learns
//! it, and add one entry to `FAMILIES` (name, type, help, and how to read the sample). A job's
//! sample is omitted when the entry returns `None` (a gauge with nothing to show yet).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;

use crate::runner::RunReport;

/// The content type of `GET /metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Per-job counters and gauges, updated by the scheduler after each run and read by /metrics.
#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<String, JobMetrics>>,
}

/// What the daemon knows of one job; the counters are totals since the process started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMetrics {
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
    /// Ticks skipped because the job was still running or locked elsewhere (counter).
    pub skipped_ticks: u64,
    /// Wall-clock duration of the last finished run.
    pub last_run_duration_secs: Option<f64>,
    /// The last run found the stored definition different from the job file's.
    pub definition_changed: bool,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Registers jobs so they appear (with zero counters) before their first run.
    pub fn register(&self, job: &str) {
        self.update(job, |_| {});
    }

    /// Adds a finished run's report: its counters to the totals, one run (and one run failure
    /// unless `report.ok()`), `last_success = finished_at` when it is ok, and its duration and
    /// definition flag. `watermark` is the job's watermark after the run and replaces the last.
    pub fn record_run(&self, report: &RunReport, watermark: Option<DateTime<Utc>>, finished_at: DateTime<Utc>) {
        self.update(&report.job, |m| {
            m.windows_loaded += report.windows_loaded as u64;
            m.rows_loaded += report.rows;
            m.windows_failed += report.windows_failed as u64;
            m.runs += 1;
            m.requests += report.requests;
            m.retries += report.retries;
            if report.ok() {
                m.last_success = Some(finished_at);
            } else {
                m.run_failures += 1;
            }
            m.watermark = watermark;
            m.last_run_duration_secs = Some(report.elapsed.as_secs_f64());
            m.definition_changed = report.definition_changed;
        });
    }

    /// A run that could not start or ended in a fatal error: counts a run and a run failure.
    pub fn record_fatal(&self, job: &str) {
        self.update(job, |m| {
            m.runs += 1;
            m.run_failures += 1;
        });
    }

    /// A tick skipped because the job was still running or locked elsewhere.
    pub fn record_skipped_tick(&self, job: &str) {
        self.update(job, |m| m.skipped_ticks += 1);
    }

    /// Every job's metrics, by job name.
    pub fn snapshot(&self) -> BTreeMap<String, JobMetrics> {
        self.jobs().clone()
    }

    /// The Prometheus text exposition format (version 0.0.4): each family's HELP and TYPE once,
    /// then one sample per job labelled `job="<name>"` (jobs in name order), then `chatetl_up 1`.
    /// Gauges a job has no value for yet (never succeeded, no watermark, never run) have no
    /// sample for it. Timestamps and the watermark lag (`now` - watermark) are seconds with up to
    /// 3 decimals; counters are integers.
    pub fn render_prometheus(&self, now: DateTime<Utc>) -> String {
        let jobs = self.snapshot();
        let mut out = String::new();
        render(&jobs, now, &mut out).expect("writing to a String cannot fail");
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
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// The job's sample value, already formatted; `None` leaves the job out.
    value: fn(&JobMetrics, DateTime<Utc>) -> Option<String>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "chatetl_job_last_success_timestamp_seconds",
        kind: "gauge",
        help: "End of the job's last run that had no failed window, in seconds since the Unix epoch.",
        value: |m, _| m.last_success.map(timestamp_seconds),
    },
    Family {
        name: "chatetl_job_watermark_timestamp_seconds",
        kind: "gauge",
        help: "The job's watermark (every window ending at or before it is loaded), in seconds since the Unix epoch.",
        value: |m, _| m.watermark.map(timestamp_seconds),
    },
    Family {
        name: "chatetl_job_watermark_lag_seconds",
        kind: "gauge",
        help: "Seconds between now and the job's watermark.",
        value: |m, now| m.watermark.map(|w| millis_as_seconds((now - w).num_milliseconds())),
    },
    Family {
        name: "chatetl_job_windows_loaded_total",
        kind: "counter",
        help: "Windows loaded since the process started.",
        value: |m, _| Some(m.windows_loaded.to_string()),
    },
    Family {
        name: "chatetl_job_rows_loaded_total",
        kind: "counter",
        help: "Rows loaded since the process started.",
        value: |m, _| Some(m.rows_loaded.to_string()),
    },
    Family {
        name: "chatetl_job_windows_failed_total",
        kind: "counter",
        help: "Windows that failed to load since the process started.",
        value: |m, _| Some(m.windows_failed.to_string()),
    },
    Family {
        name: "chatetl_job_runs_total",
        kind: "counter",
        help: "Job runs since the process started, including those that failed.",
        value: |m, _| Some(m.runs.to_string()),
    },
    Family {
        name: "chatetl_job_run_failures_total",
        kind: "counter",
        help: "Job runs with a failed window or a fatal error since the process started.",
        value: |m, _| Some(m.run_failures.to_string()),
    },
    Family {
        name: "chatetl_job_requests_total",
        kind: "counter",
        help: "Upstream API requests since the process started.",
        value: |m, _| Some(m.requests.to_string()),
    },
    Family {
        name: "chatetl_job_retries_total",
        kind: "counter",
        help: "Upstream API requests retried since the process started.",
        value: |m, _| Some(m.retries.to_string()),
    },
    Family {
        name: "chatetl_job_skipped_ticks_total",
        kind: "counter",
        help: "Scheduled ticks skipped because the job was still running or locked elsewhere.",
        value: |m, _| Some(m.skipped_ticks.to_string()),
    },
    Family {
        name: "chatetl_job_last_run_duration_seconds",
        kind: "gauge",
        help: "Duration of the job's last finished run in seconds.",
        value: |m, _| m.last_run_duration_secs.map(float),
    },
    Family {
        name: "chatetl_job_definition_changed",
        kind: "gauge",
        help: "1 when the job's last run found its stored definition different from the job file's, else 0.",
        value: |m, _| Some(u8::from(m.definition_changed).to_string()),
    },
];

fn render(jobs: &BTreeMap<String, JobMetrics>, now: DateTime<Utc>, out: &mut String) -> std::fmt::Result {
    for family in FAMILIES {
        writeln!(out, "# HELP {} {}", family.name, family.help)?;
        writeln!(out, "# TYPE {} {}", family.name, family.kind)?;
        for (job, m) in jobs {
            if let Some(value) = (family.value)(m, now) {
                writeln!(out, "{}{{job=\"{}\"}} {value}", family.name, escape_label_value(job))?;
            }
        }
    }
    writeln!(out, "# HELP chatetl_up 1 while the chatetl daemon serves metrics.")?;
    writeln!(out, "# TYPE chatetl_up gauge")?;
    writeln!(out, "chatetl_up 1")
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the Unix epoch, with up to 3 decimals.
fn timestamp_seconds(t: DateTime<Utc>) -> String {
    millis_as_seconds(t.timestamp_millis())
}

/// Milliseconds as seconds: an integer when whole, else up to 3 decimals without trailing zeros.
fn millis_as_seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    let (secs, frac) = (abs / 1000, abs % 1000);
    if frac == 0 {
        format!("{sign}{secs}")
    } else {
        let frac = format!("{frac:03}");
        format!("{sign}{secs}.{}", frac.trim_end_matches('0'))
    }
}

/// A float as Prometheus (Go's ParseFloat) reads it: whole numbers without a fraction.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // Rust's shortest round-trip form: `3`, `0.25`, never an exponent.
        format!("{v}")
    }
}

/// What /healthz checks: returns Ok while the scheduler runs and the warehouse answers, Err(reason) otherwise.
pub type HealthCheck = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: HealthCheck,
}

/// GET /healthz: 200 "ok\n" or 503 with the reason; GET /metrics: 200 with content type
/// [`CONTENT_TYPE`].
pub fn router(metrics: Arc<Metrics>, health: HealthCheck) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, health })
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics endpoint listening");
    axum::serve(listener, router(metrics, health)).with_graceful_shutdown(shutdown).await
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    match (s.health)().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.render_prometheus(Utc::now()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use chrono::TimeZone;
    use futures::FutureExt;

    use super::*;

    /// A sample's labels, sorted by name.
    type Labels = Vec<(String, String)>;

    /// What a strict parse of an exposition found.
    #[derive(Debug, Default)]
    struct Exposition {
        /// Family name → TYPE.
        types: BTreeMap<String, String>,
        /// (name, labels) → value.
        samples: BTreeMap<(String, Labels), f64>,
    }

    impl Exposition {
        fn value(&self, name: &str, job: Option<&str>) -> Option<f64> {
            let labels = job.map(|j| vec![("job".to_string(), j.to_string())]).unwrap_or_default();
            self.samples.get(&(name.to_string(), labels)).copied()
        }
    }

    fn is_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    /// A sample value as Go's ParseFloat (Prometheus) reads it; Rust-only spellings rejected.
    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            _ if s.chars().all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')) => {
                s.parse().map_err(|e| format!("bad value {s:?}: {e}"))
            }
            _ => Err(format!("bad value {s:?}")),
        }
    }

    /// `{name="value",…}` (the part after the metric name) → labels and what follows.
    fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
        let Some(mut rest) = s.strip_prefix('{') else { return Ok((Vec::new(), s)) };
        let mut labels = Vec::new();
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            if !labels.is_empty() {
                rest = rest.strip_prefix(',').ok_or_else(|| format!("expected `,` at {rest:?}"))?;
            }
            let (name, after) = rest.split_once("=\"").ok_or_else(|| format!("expected `=\"` in {rest:?}"))?;
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("unterminated label value in {s:?}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {s:?}")),
                    },
                    Some((_, '\n')) => return Err(format!("raw newline in label value of {s:?}")),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(n, _)| n == name) {
                return Err(format!("label {name} twice in {s:?}"));
            }
            labels.push((name.to_string(), value));
            rest = &after[end + 1..];
        }
    }

    /// A strict parser of the text format as `render_prometheus` writes it: only HELP and TYPE
    /// comments, each exactly once per family and before its samples; a family's samples
    /// together; `name{labels} value` or `name value` with a valid float and no timestamp; no
    /// sample twice; a final newline.
    fn parse(text: &str) -> Result<Exposition, String> {
        let body = text.strip_suffix('\n').ok_or("no final newline")?;
        let mut exp = Exposition::default();
        let mut helps = BTreeSet::new();
        let mut finished = BTreeSet::new();
        let mut current: Option<String> = None;
        for (n, line) in body.split('\n').enumerate() {
            let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(comment) = line.strip_prefix("# ") {
                let (keyword, rest) = comment.split_once(' ').ok_or_else(|| err("bad comment".into()))?;
                let (name, text) = rest.split_once(' ').ok_or_else(|| err("missing text".into()))?;
                if !is_metric_name(name) {
                    return Err(err("bad metric name".into()));
                }
                if current.as_deref() != Some(name) {
                    if let Some(previous) = current.take() {
                        finished.insert(previous);
                    }
                    if finished.contains(name) {
                        return Err(err("family resumed after another".into()));
                    }
                    current = Some(name.to_string());
                }
                if exp.samples.keys().any(|(n, _)| n == name) {
                    return Err(err("HELP or TYPE after the family's samples".into()));
                }
                match keyword {
                    "HELP" if !helps.insert(name.to_string()) => return Err(err("second HELP".into())),
                    "HELP" if text.is_empty() => return Err(err("empty HELP".into())),
                    "HELP" => {}
                    "TYPE" if exp.types.contains_key(name) => return Err(err("second TYPE".into())),
                    "TYPE" if matches!(text, "counter" | "gauge" | "histogram" | "summary" | "untyped") => {
                        exp.types.insert(name.to_string(), text.to_string());
                    }
                    _ => return Err(err("unknown comment".into())),
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(err("bad metric name".into()));
            }
            if current.as_deref() != Some(name) {
                return Err(err("sample outside its family".into()));
            }
            if !helps.contains(name) || !exp.types.contains_key(name) {
                return Err(err("sample before its HELP and TYPE".into()));
            }
            let (mut labels, rest) = parse_labels(&line[name_end..]).map_err(err)?;
            let value = rest.strip_prefix(' ').ok_or_else(|| err("expected one space before the value".into()))?;
            let value = parse_value(value).map_err(err)?;
            labels.sort();
            if exp.samples.insert((name.to_string(), labels), value).is_some() {
                return Err(err("duplicate sample".into()));
            }
        }
        Ok(exp)
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
            definition_changed: false,
        }
    }

    const JOB_FAMILIES: &[&str] = &[
        "chatetl_job_last_success_timestamp_seconds",
        "chatetl_job_watermark_timestamp_seconds",
        "chatetl_job_watermark_lag_seconds",
        "chatetl_job_windows_loaded_total",
        "chatetl_job_rows_loaded_total",
        "chatetl_job_windows_failed_total",
        "chatetl_job_runs_total",
        "chatetl_job_run_failures_total",
        "chatetl_job_requests_total",
        "chatetl_job_retries_total",
        "chatetl_job_skipped_ticks_total",
        "chatetl_job_last_run_duration_seconds",
        "chatetl_job_definition_changed",
    ];

    #[test]
    fn exposition_parses_strictly_and_shows_what_was_recorded() {
        let metrics = Metrics::new();
        metrics.register("giosg_daily");
        metrics.register("never_run");
        let first = report("giosg_daily", 120, 4, 0);
        let mut second = report("giosg_daily", 30, 1, 2);
        second.definition_changed = true;
        second.elapsed = Duration::from_millis(2250);
        let watermark = at(0, 0, 0, 0);
        metrics.record_run(&first, Some(at(0, 0, 0, 0) - chrono::Duration::days(1)), at(10, 0, 5, 250));
        metrics.record_run(&second, Some(watermark), at(11, 0, 7, 0));
        metrics.record_fatal("giosg_daily");
        metrics.record_skipped_tick("giosg_daily");
        metrics.record_skipped_tick("giosg_daily");
        let now = at(12, 30, 0, 500);

        let text = metrics.render_prometheus(now);
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let mut expected_types: BTreeMap<String, String> = JOB_FAMILIES
            .iter()
            .map(|f| (f.to_string(), if f.ends_with("_total") { "counter" } else { "gauge" }.to_string()))
            .collect();
        expected_types.insert("chatetl_up".into(), "gauge".into());
        assert_eq!(exp.types, expected_types);

        let job = Some("giosg_daily");
        let v = |name: &str| exp.value(name, job);
        // The second run failed, so the last success is the first run's end, milliseconds kept.
        assert_eq!(v("chatetl_job_last_success_timestamp_seconds"), Some(1_709_287_205.25));
        assert!(text.contains("chatetl_job_last_success_timestamp_seconds{job=\"giosg_daily\"} 1709287205.25\n"));
        assert_eq!(v("chatetl_job_watermark_timestamp_seconds"), Some(watermark.timestamp() as f64));
        assert_eq!(v("chatetl_job_watermark_lag_seconds"), Some((12 * 3600 + 30 * 60) as f64 + 0.5));
        assert_eq!(v("chatetl_job_windows_loaded_total"), Some(5.0));
        assert_eq!(v("chatetl_job_rows_loaded_total"), Some((first.rows + second.rows) as f64));
        assert_eq!(v("chatetl_job_windows_failed_total"), Some(2.0));
        assert_eq!(v("chatetl_job_runs_total"), Some(3.0));
        assert_eq!(v("chatetl_job_run_failures_total"), Some(2.0));
        assert_eq!(v("chatetl_job_requests_total"), Some(6.0));
        assert_eq!(v("chatetl_job_retries_total"), Some(2.0));
        assert_eq!(v("chatetl_job_skipped_ticks_total"), Some(2.0));
        assert_eq!(v("chatetl_job_last_run_duration_seconds"), Some(2.25));
        assert_eq!(v("chatetl_job_definition_changed"), Some(1.0));
        // Counters are written as integers.
        assert!(text.contains("chatetl_job_rows_loaded_total{job=\"giosg_daily\"} 150\n"));

        // The registered job that never ran: zero counters, no gauges without a value.
        let never = |name: &str| exp.value(name, Some("never_run"));
        for family in JOB_FAMILIES {
            let expected = match *family {
                "chatetl_job_last_success_timestamp_seconds"
                | "chatetl_job_watermark_timestamp_seconds"
                | "chatetl_job_watermark_lag_seconds"
                | "chatetl_job_last_run_duration_seconds" => None,
                _ => Some(0.0),
            };
            assert_eq!(never(family), expected, "{family}");
        }
        assert_eq!(exp.value("chatetl_up", None), Some(1.0));
        assert_eq!(exp.samples.len(), 13 + 9 + 1);

        let snapshot = metrics.snapshot();
        assert_eq!(snapshot["never_run"], JobMetrics::default());
        assert_eq!(snapshot["giosg_daily"].last_success, Some(at(10, 0, 5, 250)));
        assert_eq!(snapshot["giosg_daily"].watermark, Some(watermark));
    }

    #[test]
    fn no_jobs_still_renders_every_family_and_up() {
        let text = Metrics::new().render_prometheus(at(0, 0, 0, 0));
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(exp.types.len(), JOB_FAMILIES.len() + 1);
        assert_eq!(exp.samples.len(), 1);
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let job = "we\"ird\\job\nname";
        let metrics = Metrics::new();
        metrics.record_skipped_tick(job);
        let text = metrics.render_prometheus(at(0, 0, 0, 0));
        assert!(text.contains("chatetl_job_skipped_ticks_total{job=\"we\\\"ird\\\\job\\nname\"} 1\n"), "{text}");
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(exp.value("chatetl_job_skipped_ticks_total", Some(job)), Some(1.0));
        assert_eq!(escape_label_value("plain_name"), "plain_name");
    }

    #[test]
    fn the_strict_parser_rejects_what_prometheus_would() {
        let ok = "# HELP a x\n# TYPE a gauge\na{job=\"j\"} 1\n";
        assert!(parse(ok).is_ok());
        for bad in [
            "# HELP a x\n# TYPE a gauge\na{job=\"j\"} 1",      // no final newline
            "# TYPE a gauge\na 1\n",                           // no HELP
            "# HELP a x\na 1\n",                               // no TYPE
            "# HELP a x\n# HELP a x\n# TYPE a gauge\na 1\n",   // HELP twice
            "# HELP a x\n# TYPE a gauge\na 1\na 2\n",          // duplicate sample
            "# HELP a x\n# TYPE a gauge\na one\n",             // not a float
            "# HELP a x\n# TYPE a gauge\na inf\n",             // Rust-only spelling
            "# HELP a x\n# TYPE a gauge\na{job=\"j} 1\n",      // unterminated value
            "# HELP a x\n# TYPE a gauge\na{job=\"j\\t\"} 1\n", // bad escape
            "# HELP a x\n# TYPE a gauge\na 1 2 3\n",           // trailing fields
            "# HELP a x\n# TYPE a gauge\n# HELP b x\n# TYPE b gauge\nb 1\na 1\n", // sample outside family
            "# HELP a x\n# TYPE a gauge\na 1\n# HELP a y\n",   // HELP after samples
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_prometheus_reads_them() {
        assert_eq!(millis_as_seconds(0), "0");
        assert_eq!(millis_as_seconds(1_500), "1.5");
        assert_eq!(millis_as_seconds(1_005), "1.005");
        assert_eq!(millis_as_seconds(-250), "-0.25");
        assert_eq!(millis_as_seconds(-3_000), "-3");
        assert_eq!(float(3.0), "3");
        assert_eq!(float(0.125), "0.125");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(1e21), "1000000000000000000000");
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
        metrics.register("giosg_daily");
        let failing = Arc::new(Mutex::new(None));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), switchable_health(failing.clone()), async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let base = format!("http://{addr}");

        let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE.as_str()], CONTENT_TYPE);
        let text = resp.text().await.unwrap();
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(exp.value("chatetl_job_runs_total", Some("giosg_daily")), Some(0.0));
        assert_eq!(exp.value("chatetl_up", None), Some(1.0));

        // Metrics recorded after the server started show on the next scrape.
        metrics.record_skipped_tick("giosg_daily");
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains("chatetl_job_skipped_ticks_total{job=\"giosg_daily\"} 1\n"), "{text}");

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
        metrics.record_run(&report("j", 7, 1, 0), None, at(1, 0, 0, 0));
        metrics.record_fatal("j");
        let m = &metrics.snapshot()["j"];
        assert_eq!((m.runs, m.run_failures, m.rows_loaded), (2, 1, 7));
        assert_eq!(m.last_success, Some(at(1, 0, 0, 0)));
        assert_eq!(m.last_run_duration_secs, Some(1.5));
    }
}

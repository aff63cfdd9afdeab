//! `chatetl schedule`: the daemon that keeps every scheduled job current.
//!
//! Owns: the [`Clock`] (the system clock, or a [`ManualClock`] tests move by hand), one tick loop
//! per job with a `schedule` (fire times from [`crate::schedule_time::Schedule`], evaluated on the
//! job zone's wall clock: see that module for why chatetl drives its own ticks rather than
//! tokio-cron-scheduler), the overlap guard (a tick while the job still runs is skipped and
//! counted), reloading job files (an invalid new configuration is reported and the old
//! definitions keep running), graceful shutdown (no new ticks, no new chunks; runs in flight get
//! a grace period, then are dropped, which rolls their open transactions back), and the
//! health/metrics endpoint's data ([`crate::metrics`]).
//!
//! Ticks only trigger: what a tick loads comes from the watermark (incremental catch-up, plus the
//! job's lookback), and the per-job run lock (a PostgreSQL advisory lock, or a file lock) keeps
//! a second daemon from loading the same job at the same time. So late, doubled or missed ticks
//! do no harm: the first tick after three days of downtime loads the three days.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config, Job, JobKind};
use crate::metrics::{HealthCheck, Metrics};
use crate::runner::{Progress, RunError, RunKind, RunOptions, Runner};
use crate::schedule_time::Schedule;
use crate::state::definition_hash;

/// Where "now" comes from.
#[derive(Clone)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// A clock that only moves when told to (tests).
    Manual(Arc<ManualClock>),
}

/// A clock that moves only by [`ManualClock::set`] / [`ManualClock::advance`].
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock { now: watch::Sender::new(start) })
    }

    pub fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    /// Moves to `t` (never backwards), waking every sleeper whose time has come.
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_if_modified(|now| {
            let moved = t > *now;
            if moved {
                *now = t;
            }
            moved
        });
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.set(self.now() + by);
    }
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// Returns once the clock reads `t` or later.
    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        match self {
            Clock::System => loop {
                let left = t - Utc::now();
                if left <= chrono::Duration::zero() {
                    return;
                }
                // Wake at least once a minute so a wall-clock jump (suspend, NTP) is noticed.
                let nap = left.to_std().unwrap_or_default().min(Duration::from_secs(60));
                tokio::time::sleep(nap).await;
            },
            Clock::Manual(m) => {
                let mut rx = m.now.subscribe();
                while *rx.borrow_and_update() < t {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Chunks in flight per run (as `backfill --concurrency`).
    pub concurrency: usize,
    /// How long runs in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { concurrency: 4, shutdown_grace: Duration::from_secs(30) }
    }
}

/// The daemon.
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    config_path: PathBuf,
    /// Swapped whole on a successful reload; runs keep the runner they started with.
    runner: RwLock<Arc<Runner>>,
    clock: Clock,
    opts: SchedulerOptions,
    metrics: Arc<Metrics>,
    /// Jobs with a run in flight.
    running: Mutex<HashSet<String>>,
    runs: Mutex<JoinSet<()>>,
    /// Cancelled at shutdown: no new chunk starts.
    stop_runs: CancellationToken,
    stopping: CancellationToken,
}

/// Removes a job from the running set however its run ends (even when aborted).
struct RunningGuard {
    inner: Arc<Inner>,
    job: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.inner.running.lock().expect("running lock").remove(&self.job);
    }
}

impl Scheduler {
    /// A scheduler for the jobs of `runner`'s configuration, read from `config_path` on reload.
    pub fn new(config_path: PathBuf, runner: Runner, clock: Clock, opts: SchedulerOptions) -> Scheduler {
        let metrics = Arc::new(Metrics::new());
        for job in runner.config.jobs.keys() {
            metrics.register(job);
        }
        Scheduler {
            inner: Arc::new(Inner {
                config_path,
                runner: RwLock::new(Arc::new(runner)),
                clock,
                opts,
                metrics,
                running: Mutex::new(HashSet::new()),
                runs: Mutex::new(JoinSet::new()),
                stop_runs: CancellationToken::new(),
                stopping: CancellationToken::new(),
            }),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// 200 while the scheduler runs and the warehouse answers.
    pub fn health_check(&self) -> HealthCheck {
        let inner = self.inner.clone();
        Arc::new(move || {
            let inner = inner.clone();
            Box::pin(async move {
                if inner.stopping.is_cancelled() {
                    return Err("shutting down".to_string());
                }
                let runner = inner.runner.read().expect("runner lock").clone();
                runner.sink.ping().await.map_err(|e| e.to_string())
            })
        })
    }

    /// Runs until `shutdown` is cancelled; each message on `reload` re-reads the job files.
    /// Returns once runs in flight finished or the grace period ended.
    pub async fn run(self, shutdown: CancellationToken, mut reload: mpsc::Receiver<()>) {
        let inner = self.inner;
        let mut loops = start_loops(&inner);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = reload.recv() => {
                    if let Some(new_loops) = inner.reload().await {
                        loops.cancel();
                        loops = new_loops;
                    }
                }
            }
        }
        info!(
            grace_secs = inner.opts.shutdown_grace.as_secs(),
            "shutting down: no new ticks; waiting for runs in flight"
        );
        inner.stopping.cancel();
        loops.cancel();
        inner.stop_runs.cancel();
        let mut runs = std::mem::take(&mut *inner.runs.lock().expect("runs lock"));
        let drained =
            tokio::time::timeout(inner.opts.shutdown_grace, async { while runs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("runs still in flight after the grace period: dropping them (their open transactions roll back)");
            runs.abort_all();
            while runs.join_next().await.is_some() {}
        }
        info!("scheduler stopped");
    }
}

/// Starts one tick loop per scheduled job; cancel the token to stop them all.
fn start_loops(inner: &Arc<Inner>) -> CancellationToken {
    let token = inner.stopping.child_token();
    let runner = inner.runner.read().expect("runner lock").clone();
    for job in runner.config.jobs.values() {
        let Some(expr) = &job.schedule else {
            info!(job = %job.name, "no schedule: not run by the scheduler");
            continue;
        };
        let schedule = match Schedule::parse(expr, job.time_zone) {
            Ok(s) => s,
            Err(e) => {
                error!(job = %job.name, error = %e, "invalid schedule: job not scheduled");
                continue;
            }
        };
        info!(job = %job.name, schedule = %expr, time_zone = job.time_zone.name(), "job scheduled");
        tokio::spawn(job_loop(inner.clone(), job.clone(), schedule, token.clone()));
    }
    token
}

async fn job_loop(inner: Arc<Inner>, job: Job, schedule: Schedule, stop: CancellationToken) {
    let mut after = inner.clock.now();
    loop {
        let Some(next) = schedule.next_after(after) else {
            info!(job = %job.name, "schedule has no further fire times");
            return;
        };
        tokio::select! {
            _ = inner.clock.sleep_until(next) => {}
            _ = stop.cancelled() => return,
        }
        inner.tick(&job, next);
        // A clock that jumped past several fire times fires once, then waits for the next one.
        after = next.max(inner.clock.now());
    }
}

impl Inner {
    /// Starts a run of `job` for the tick at `at`, unless one is still in flight.
    fn tick(self: &Arc<Self>, job: &Job, at: DateTime<Utc>) {
        if !self.running.lock().expect("running lock").insert(job.name.clone()) {
            self.metrics.record_skipped_tick(&job.name);
            warn!(job = %job.name, tick = %at, "tick skipped: the previous run of this job is still going");
            return;
        }
        let guard = RunningGuard { inner: self.clone(), job: job.name.clone() };
        let inner = self.clone();
        let job = job.clone();
        let mut runs = self.runs.lock().expect("runs lock");
        // Reap finished runs so a daemon that ticks for months keeps no record of each one.
        while runs.try_join_next().is_some() {}
        runs.spawn(async move {
            let _guard = guard;
            inner.run_once(&job, at).await;
        });
    }

    async fn run_once(&self, job: &Job, at: DateTime<Utc>) {
        let runner = self.runner.read().expect("runner lock").clone();
        // A snapshot is captured at its tick (a retried tick replaces it); history runs up to now.
        let now = if job.kind == JobKind::Snapshot { at } else { self.clock.now() };
        let result = async {
            let (windows, partial_after) = runner.incremental_windows(job, now).await?;
            let opts = RunOptions {
                kind: RunKind::Scheduled,
                concurrency: self.opts.concurrency,
                progress: Progress::Log,
                force: true,
                partial_after: Some(partial_after),
                cancel: Some(self.stop_runs.clone()),
            };
            runner.run(job, windows, &opts).await
        }
        .await;
        match result {
            Ok(report) => {
                let watermark = runner.sink.job_state(&job.name).await.ok().and_then(|s| s.watermark);
                self.metrics.record_run(&report, watermark, self.clock.now());
                if !report.ok() {
                    warn!(job = %job.name, tick = %at, failed = report.windows_failed, cancelled = report.windows_cancelled, "tick left windows to the next one");
                }
            }
            Err(RunError::Locked(_)) => {
                self.metrics.record_skipped_tick(&job.name);
                info!(job = %job.name, tick = %at, "tick skipped: another chatetl process is loading this job");
            }
            Err(e) => {
                self.metrics.record_fatal(&job.name, e.kind());
                error!(job = %job.name, tick = %at, kind = %e.kind(), error = %e, "tick failed");
            }
        }
    }

    /// Re-reads the configuration; on success swaps the runner (sharing the warehouse) and
    /// returns the new loops' token. On failure the old definitions keep running.
    async fn reload(self: &Arc<Self>) -> Option<CancellationToken> {
        let config = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                error!(file = %self.config_path.display(), "reload failed, keeping the running definitions:\n{e}");
                return None;
            }
        };
        let old = self.runner.read().expect("runner lock").clone();
        let changes = describe_changes(&old.config, &config);
        let runner = match Runner::with_shared_sink(config, old.sink.clone()) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "reload failed, keeping the running definitions");
                return None;
            }
        };
        for job in runner.config.jobs.keys() {
            self.metrics.register(job);
        }
        *self.runner.write().expect("runner lock") = Arc::new(runner);
        info!(changes = %changes, "configuration reloaded");
        Some(start_loops(self))
    }
}

/// "added a, changed b, removed c" between two configurations.
fn describe_changes(old: &Config, new: &Config) -> String {
    let hash = |c: &Config| -> BTreeMap<String, (String, Option<String>)> {
        c.jobs.values().map(|j| (j.name.clone(), (definition_hash(j), j.schedule.clone()))).collect()
    };
    let (a, b) = (hash(old), hash(new));
    let mut parts = Vec::new();
    for name in b.keys().filter(|n| !a.contains_key(*n)) {
        parts.push(format!("added {name}"));
    }
    for (name, v) in &b {
        if a.get(name).is_some_and(|w| w != v) {
            parts.push(format!("changed {name}"));
        }
    }
    for name in a.keys().filter(|n| !b.contains_key(*n)) {
        parts.push(format!("removed {name}"));
    }
    if parts.is_empty() { "none".to_string() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_moved_past_their_time() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap());
        let c = Clock::Manual(clock.clone());
        let wake = Utc.with_ymd_and_hms(2024, 1, 1, 1, 0, 0).unwrap();
        let sleeper = tokio::spawn(async move { c.sleep_until(wake).await });
        clock.advance(chrono::Duration::minutes(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "not yet");
        clock.advance(chrono::Duration::minutes(30));
        tokio::time::timeout(Duration::from_secs(2), sleeper).await.unwrap().unwrap();
        clock.set(Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(clock.now(), wake, "never backwards");
    }
}

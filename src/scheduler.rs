//! `chatetl schedule`: the daemon that keeps every scheduled job current.
//!
//! Owns: the [`Clock`] (the system clock, or a [`ManualClock`] tests move by hand and that
//! tells when every sleeper has seen its time), one tick loop per job with a `schedule` (fire
//! times from [`crate::schedule_time::Schedule`], evaluated on the job zone's wall clock: see
//! that module for why chatetl drives its own ticks rather than tokio-cron-scheduler; each
//! loop's first fire time is computed before it is spawned), the overlap guard (a tick while the
//! job still runs is skipped and counted), reloading job files (an invalid new configuration is
//! reported and the old definitions keep running), graceful shutdown (no new ticks, no new
//! chunks; runs in flight get a grace period, then are dropped, which rolls their open
//! transactions back), the health/metrics endpoint's data ([`crate::metrics`]), and
//! [`Activity`], the daemon's own record of loops started, reloads answered and runs started,
//! finished and in flight, which tests wait on instead of sleeping. A job whose source refused
//! its credentials is paused (no run, no request, `chatetl_job_paused 1`, a `paused` run record)
//! until the configuration is reloaded, instead of being retried on every tick.
//!
//! Jobs that could share requests ([`crate::plan::fusion`]) and fire on the same schedule in the
//! same zone are a tick group: the first of their loops to fire at an instant runs every member
//! that is free with one request per chunk ([`Runner::run_fused`]), and the others' loops, firing
//! at the same instant, find their tick taken. The catch-up at start goes through the same path.
//!
//! Several daemons on one PostgreSQL warehouse share the ticks: the first daemon to insert a
//! tick's row into `chatetl.ticks` (target, job, fire time) runs it, every other one skips it,
//! so each tick runs once, not once per daemon (which re-fetched lookback windows). A tick
//! group's members are claimed in one statement, in name order (concurrent claims of one group
//! wait on each other's rows rather than deadlock, and the whole group goes to one daemon). The
//! catch-up at start claims the latest fire time at or before the start
//! ([`Schedule::last_at_or_before`]), the same instant in every daemon, so daemons started together
//! catch up once. A claimed tick's row gets its `done_at` when its run ends, whatever the outcome;
//! a daemon that claimed a tick and did not run it (the job was locked, the run was cancelled by
//! a shutdown) deletes its claim, and a catch-up takes over a claim made over a minute ago
//! without `done_at` (its daemon was killed, or still runs it: then the job's run lock refuses
//! the second run); the row keeps naming its claimer until a run that ends marks it done (naming
//! that run's daemon), so a refused taker deletes nothing. So a daemon killed after claiming and
//! restarted by its supervisor with `--catch-up` over a minute later runs the tick it lost. A
//! fresh claim is never taken over: daemons starting together would take over each other's, and
//! one whose run lock came free just before the first run marked the tick done would run it
//! twice; a restart within the minute leaves the tick to the job's next one. A daemon that dies hands its jobs over within one tick
//! too: a tick it claimed and did not finish leaves its windows behind the watermark, its run lock
//! goes with its connection, and the next tick, claimed by a live daemon, loads them.
//! A daemon that loses a claim reads the job's watermark from the warehouse into its metrics and
//! counts the job as caught up (readiness does not depend on running a job oneself), so every
//! daemon's freshness gauges and /readyz tell the truth, not only the winner's; the watermark it
//! reads is the one before the winner's run of that tick (one tick behind at most).
//! Claims older than 7 days are deleted (by each daemon, at most once an hour). Clocks need not
//! agree: fire times are schedule instants, whichever daemon's clock reaches them first; a daemon
//! that cannot claim (the database is down) skips the tick, as its run would fail anyway. A
//! Parquet warehouse has no shared database: ticks are not claimed there. At its stop the
//! scheduler releases every vendor-budget lease this process still holds
//! ([`crate::budget::SharedBudget::release_all`]), after its runs ended or were dropped.
//!
//! Ticks only trigger: what a tick loads comes from the watermark (incremental catch-up, plus the
//! job's lookback), and the per-job run lock (a PostgreSQL advisory lock, or a file lock) keeps
//! a second daemon from loading the same job at the same time. So late, doubled or missed ticks
//! do no harm: the first tick after three days of downtime loads the three days.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config, Job, JobKind};
use crate::error::ErrorKind;
use crate::metrics::{HealthCheck, Metrics};
use crate::runner::{ChunkDone, ChunkObserver, Progress, RunError, RunKind, RunOptions, RunReport, Runner};
use crate::schedule_time::Schedule;
use crate::state::{RunRecord, definition_hash};

/// Where "now" comes from.
#[derive(Clone)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// A clock that only moves when told to (tests).
    Manual(Arc<ManualClock>),
}

/// A clock that moves only by [`ManualClock::set`] / [`ManualClock::advance`], and knows who
/// sleeps on it: [`ManualClock::wait_for_sleepers`] returns once every sleeper has looked at the
/// current reading, so a test can move the clock and then wait for "every loop asleep" instead
/// of sleeping and hoping.
pub struct ManualClock {
    state: watch::Sender<ManualState>,
    next_sleeper: AtomicU64,
}

struct ManualState {
    now: DateTime<Utc>,
    /// The tasks in [`Clock::sleep_until`], by id.
    sleepers: BTreeMap<u64, Sleeper>,
}

struct Sleeper {
    /// The time it waits for.
    until: DateTime<Utc>,
    /// The clock's reading when it last looked (always earlier than `until`).
    seen: DateTime<Utc>,
}

/// Forgets a sleeper however its sleep ends: woken, or dropped (a cancelled loop).
struct SleeperGuard<'a> {
    clock: &'a ManualClock,
    id: u64,
}

impl Drop for SleeperGuard<'_> {
    fn drop(&mut self) {
        self.clock.state.send_if_modified(|s| s.sleepers.remove(&self.id).is_some());
    }
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            state: watch::Sender::new(ManualState { now: start, sleepers: BTreeMap::new() }),
            next_sleeper: AtomicU64::new(0),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.state.borrow().now
    }

    /// Moves to `t` (never backwards), waking every sleeper whose time has come.
    pub fn set(&self, t: DateTime<Utc>) {
        self.state.send_if_modified(|s| {
            let moved = t > s.now;
            if moved {
                s.now = t;
            }
            moved
        });
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.set(self.now() + by);
    }

    /// Returns once exactly `n` tasks sleep on this clock and each of them has looked at its
    /// current reading and gone back to waiting for a later time. After a [`ManualClock::set`],
    /// that means every sleeper whose time came has woken and left (a scheduler loop: ticked
    /// and slept again; a loop that ticks sleeps again only after starting its run), and every
    /// other one has seen the new time and still waits. Wrap it in a timeout: it waits forever
    /// when the count never matches.
    pub async fn wait_for_sleepers(&self, n: usize) {
        let mut rx = self.state.subscribe();
        let all_asleep =
            |s: &ManualState| s.sleepers.len() == n && s.sleepers.values().all(|z| z.seen == s.now && z.until > s.now);
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(all_asleep).await;
    }

    /// The times the current sleepers wait for, earliest first.
    pub fn wake_times(&self) -> Vec<DateTime<Utc>> {
        let mut times: Vec<_> = self.state.borrow().sleepers.values().map(|z| z.until).collect();
        times.sort();
        times
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        let id = self.next_sleeper.fetch_add(1, Ordering::Relaxed);
        let _guard = SleeperGuard { clock: self, id };
        // Subscribed before the first look, so no move of the clock after it is missed.
        let mut rx = self.state.subscribe();
        loop {
            let mut due = false;
            // Look and record what was seen in one step, under the channel's lock.
            self.state.send_if_modified(|s| {
                if s.now >= t {
                    due = true;
                    return s.sleepers.remove(&id).is_some();
                }
                let seen = s.now;
                let old = s.sleepers.insert(id, Sleeper { until: t, seen });
                old.is_none_or(|o| o.seen != seen)
            });
            if due || rx.changed().await.is_err() {
                return;
            }
        }
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
            Clock::Manual(m) => m.sleep_until(t).await,
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
    /// Run every scheduled job once at start (an incremental run: the catch-up after downtime),
    /// without waiting for its first fire time.
    pub catch_up: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { concurrency: 4, shutdown_grace: Duration::from_secs(30), catch_up: false }
    }
}

/// What the daemon has done so far, published on a [`watch`] channel
/// ([`Scheduler::activity`]) so tests wait for the event that proves a thing ran instead of
/// sleeping. Counters only grow; `loops` and `in_flight` are current values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Sets of tick loops started: 1 once [`Scheduler::run`] started its loops (each with its
    /// first fire time already computed), then one more per reload that was taken.
    pub generation: u64,
    /// Tick loops of the current generation (jobs with a valid schedule).
    pub loops: usize,
    /// Reload requests answered, taken or refused (a refused one leaves `generation` as it was).
    pub reloads: u64,
    /// Runs that have read the clock for the time they load up to: moving the clock afterwards
    /// no longer changes what they load.
    pub runs_started: u64,
    /// Runs that ended (their metrics recorded, their job free for the next tick).
    pub runs_finished: u64,
    /// Runs in flight.
    pub in_flight: usize,
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
    activity: watch::Sender<Activity>,
    /// Jobs with a run in flight.
    running: Mutex<HashSet<String>>,
    /// Jobs paused because their source refused the credentials, until the next reload.
    paused: Mutex<HashSet<String>>,
    runs: Mutex<JoinSet<()>>,
    /// Cancelled at shutdown: no new chunk starts.
    stop_runs: CancellationToken,
    stopping: CancellationToken,
    /// The last warehouse check, which /healthz reports without waiting on the warehouse.
    warehouse: Mutex<WarehouseCheck>,
    /// Whether [`Inner::record_stored_state`] ran (once is enough).
    stored_state_read: std::sync::atomic::AtomicBool,
    /// Scheduled jobs that have not yet had a run without a failed window since the daemon
    /// started: /readyz is 503 while there are any.
    behind: Mutex<std::collections::BTreeSet<String>>,
    /// Each scheduled job's tick group (itself first, then the others; alone: itself), set
    /// when the loops start.
    tick_groups: Mutex<HashMap<String, Vec<String>>>,
    /// The latest tick each job was run for, by its own loop or its group's.
    ticked: Mutex<HashMap<String, DateTime<Utc>>>,
    /// When this daemon last deleted old tick claims.
    claims_pruned: Mutex<Option<std::time::Instant>>,
}

/// Tick claims are kept this long, and pruned at most this often.
const KEEP_CLAIMS: &str = "7 days";
const PRUNE_CLAIMS_EVERY: Duration = Duration::from_secs(3600);

/// How often the warehouse is checked for /healthz, and how long one check may take.
const WAREHOUSE_CHECK_EVERY: Duration = Duration::from_secs(5);
const WAREHOUSE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of the last warehouse check and when it was made.
struct WarehouseCheck {
    checked_at: std::time::Instant,
    /// Since when, and why, the warehouse does not answer (None: it answered last time).
    failing: Option<(std::time::Instant, String)>,
}

/// Removes a job from the running set however its run ends (even when aborted).
struct RunningGuard {
    inner: Arc<Inner>,
    job: String,
    /// Its run started (counted in `runs_started`): its end counts in `runs_finished`. False for
    /// a member whose tick another daemon claimed.
    started: bool,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.inner.running.lock().expect("running lock").remove(&self.job);
        // Published after the job is free, so a run counted as finished can never make the
        // next tick look like an overlap.
        let started = self.started;
        self.inner.activity.send_modify(|a| {
            a.in_flight -= 1;
            if started {
                a.runs_finished += 1;
            }
        });
    }
}

/// What a claim of a tick's members in `chatetl.ticks` found.
#[derive(Default)]
struct Claimed {
    /// The members this daemon claimed: it runs them.
    mine: HashSet<String>,
    /// The members another daemon claimed first.
    elsewhere: Vec<String>,
}

impl Scheduler {
    /// A scheduler for the jobs of `runner`'s configuration, read from `config_path` on reload.
    pub fn new(config_path: PathBuf, runner: Runner, clock: Clock, opts: SchedulerOptions) -> Scheduler {
        Scheduler::with_metrics(config_path, runner, clock, opts, Arc::new(Metrics::new()))
    }

    /// [`Scheduler::new`] recording into `metrics`, which an endpoint may already serve (the
    /// daemon listens before its warehouse answers).
    pub fn with_metrics(
        config_path: PathBuf,
        runner: Runner,
        clock: Clock,
        opts: SchedulerOptions,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        for job in runner.config.jobs.values() {
            metrics.register(&job.name, &job.source, job.endpoint.name());
        }
        metrics.set_request_stats(runner.request_stats().clone());
        let behind = runner.config.jobs.values().filter(|j| j.schedule.is_some()).map(|j| j.name.clone()).collect();
        Scheduler {
            inner: Arc::new(Inner {
                config_path,
                runner: RwLock::new(Arc::new(runner)),
                clock,
                opts,
                metrics,
                activity: watch::Sender::new(Activity::default()),
                running: Mutex::new(HashSet::new()),
                paused: Mutex::new(HashSet::new()),
                runs: Mutex::new(JoinSet::new()),
                stop_runs: CancellationToken::new(),
                stopping: CancellationToken::new(),
                // The runner just opened the warehouse: it answered.
                warehouse: Mutex::new(WarehouseCheck { checked_at: std::time::Instant::now(), failing: None }),
                stored_state_read: std::sync::atomic::AtomicBool::new(false),
                behind: Mutex::new(behind),
                tick_groups: Mutex::new(HashMap::new()),
                ticked: Mutex::new(HashMap::new()),
                claims_pruned: Mutex::new(None),
            }),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// What the daemon has done so far; see [`Activity`].
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.inner.activity.subscribe()
    }

    /// 200 while the scheduler runs and the warehouse answered its last check (made every
    /// [`WAREHOUSE_CHECK_EVERY`] by [`Scheduler::run`]); answers at once, never waiting on the
    /// warehouse, and says since when and why it does not answer.
    pub fn health_check(&self) -> HealthCheck {
        let inner = self.inner.clone();
        Arc::new(move || {
            let inner = inner.clone();
            Box::pin(async move {
                if inner.stopping.is_cancelled() {
                    return Err("shutting down".to_string());
                }
                let check = inner.warehouse.lock().expect("warehouse check lock");
                match &check.failing {
                    None => Ok(()),
                    Some((since, why)) => Err(format!(
                        "the warehouse does not answer, for {} s now (checked {} s ago): {why}",
                        since.elapsed().as_secs(),
                        check.checked_at.elapsed().as_secs()
                    )),
                }
            })
        })
    }

    /// Reads every job's watermark and last success from the warehouse into the metrics (done by
    /// [`Scheduler::run`] too, once): call it before serving the metrics of a daemon that starts,
    /// so its freshness gauges are there from its first scrape.
    pub async fn load_stored_state(&self) {
        self.inner.record_stored_state().await;
    }

    /// 200 once every scheduled job has had a run without a failed window since the daemon
    /// started (with `catch_up`, right after the catch-up): the daemon is caught up. Says which
    /// jobs are not.
    pub fn readiness_check(&self) -> HealthCheck {
        let inner = self.inner.clone();
        Arc::new(move || {
            let inner = inner.clone();
            Box::pin(async move {
                let behind = inner.behind.lock().expect("behind lock");
                match behind.len() {
                    0 => Ok(()),
                    n => Err(format!(
                        "catching up: {n} job(s) without a complete run yet: {}",
                        behind.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                    )),
                }
            })
        })
    }

    /// Checks the warehouse every [`WAREHOUSE_CHECK_EVERY`] until `stop`, for /healthz.
    async fn check_warehouse(inner: Arc<Inner>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WAREHOUSE_CHECK_EVERY) => {}
            }
            let runner = inner.runner.read().expect("runner lock").clone();
            let result = match tokio::time::timeout(WAREHOUSE_CHECK_TIMEOUT, runner.sink.ping()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {} s", WAREHOUSE_CHECK_TIMEOUT.as_secs())),
            };
            let now = std::time::Instant::now();
            let mut check = inner.warehouse.lock().expect("warehouse check lock");
            check.checked_at = now;
            match (result, check.failing.take()) {
                (Ok(()), Some((since, _))) => {
                    info!(down_secs = since.elapsed().as_secs(), "the warehouse answers again");
                }
                (Ok(()), None) => {}
                (Err(why), failing) => {
                    if failing.is_none() {
                        warn!(error = %why, "the warehouse does not answer");
                    }
                    check.failing = Some((failing.map_or(now, |(since, _)| since), why));
                }
            }
        }
    }

    /// Runs until `shutdown` is cancelled; each message on `reload` re-reads the job files.
    /// Returns once runs in flight finished or the grace period ended.
    pub async fn run(self, shutdown: CancellationToken, mut reload: mpsc::Receiver<()>) {
        let inner = self.inner;
        inner.record_stored_state().await;
        let checker = tokio::spawn(Scheduler::check_warehouse(inner.clone(), inner.stopping.clone()));
        let mut loops = start_loops(&inner, inner.clock.now(), &HashMap::new());
        if inner.opts.catch_up {
            let runner = inner.runner.read().expect("runner lock").clone();
            let now = inner.clock.now();
            for job in runner.config.jobs.values().filter(|j| j.schedule.is_some()) {
                // Every daemon catching up claims the same tick: the latest fire time so far.
                let fire = job
                    .schedule
                    .as_deref()
                    .and_then(|e| Schedule::parse(e, job.time_zone).ok())
                    .and_then(|s| s.last_at_or_before(now))
                    .unwrap_or(now);
                info!(job = %job.name, tick = %fire, "catching up at start");
                inner.tick(job, now, fire, true);
            }
        }
        inner.activity.send_modify(|a| {
            a.generation += 1;
            a.loops = loops.count;
        });
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = reload.recv() => {
                    let taken = inner.reload(&mut loops).await;
                    inner.activity.send_modify(|a| {
                        a.reloads += 1;
                        if taken {
                            a.generation += 1;
                            a.loops = loops.count;
                        }
                    });
                }
            }
        }
        info!(
            grace_secs = inner.opts.shutdown_grace.as_secs(),
            "shutting down: no new ticks; waiting for runs in flight"
        );
        inner.stopping.cancel();
        let _ = checker.await;
        loops.stop().await;
        inner.stop_runs.cancel();
        let mut runs = std::mem::take(&mut *inner.runs.lock().expect("runs lock"));
        let drained =
            tokio::time::timeout(inner.opts.shutdown_grace, async { while runs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("runs still in flight after the grace period: dropping them (their open transactions roll back)");
            runs.abort_all();
            while runs.join_next().await.is_some() {}
        }
        // A dropped attempt's lease would be released in the background, which an exiting
        // process never gets to: release them all now.
        let runner = inner.runner.read().expect("runner lock").clone();
        if let Some(pool) = runner.sink.shared_pool() {
            match crate::budget::release_all(pool).await {
                Ok(0) => {}
                Ok(n) => info!(leases = n, "released the shared budget leases of dropped requests"),
                Err(e) => {
                    warn!(error = %e, "cannot release this process's shared budget leases; they expire by themselves")
                }
            }
        }
        info!("scheduler stopped");
    }
}

/// The tick loops of one configuration.
struct Loops {
    stop: CancellationToken,
    tasks: JoinSet<Option<(String, PendingTick)>>,
    count: usize,
}

/// The fire time a stopped loop was waiting for (not ticked), and the schedule it came from.
struct PendingTick {
    expr: String,
    time_zone: chrono_tz::Tz,
    next: DateTime<Utc>,
}

impl Loops {
    /// Stops every loop and waits until they have ended, so no loop of this set ticks after;
    /// returns each stopped loop's pending fire time by job name.
    async fn stop(&mut self) -> HashMap<String, PendingTick> {
        self.stop.cancel();
        let mut pending = HashMap::new();
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok(Some((job, tick))) = ended {
                pending.insert(job, tick);
            }
        }
        pending
    }
}

/// Starts one tick loop per scheduled job, each with its first fire time computed here, before
/// the loop is spawned: the first after `since` (the clock at start or reload), or, for a job
/// whose schedule a reload left as it was, the fire time its stopped loop was waiting for (so a
/// reload neither drops nor repeats a tick). However late a loop task first runs, it fires at
/// that time.
fn start_loops(inner: &Arc<Inner>, since: DateTime<Utc>, pending: &HashMap<String, PendingTick>) -> Loops {
    let stop = inner.stopping.child_token();
    let mut tasks = JoinSet::new();
    let runner = inner.runner.read().expect("runner lock").clone();
    *inner.tick_groups.lock().expect("tick groups lock") = tick_groups(&runner.config);
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
        let first = match pending.get(&job.name) {
            Some(p) if p.expr == *expr && p.time_zone == job.time_zone => Some(p.next),
            _ => schedule.next_after(since),
        };
        let Some(first) = first else {
            info!(job = %job.name, schedule = %expr, "schedule has no further fire times: job not scheduled");
            continue;
        };
        info!(job = %job.name, schedule = %expr, time_zone = job.time_zone.name(), first_tick = %first, "job scheduled");
        tasks.spawn(job_loop(inner.clone(), job.clone(), schedule, first, stop.clone()));
    }
    let count = tasks.len();
    Loops { stop, tasks, count }
}

/// Every scheduled job's tick group: the jobs that share requests ([`crate::plan::fusion::groups`])
/// and fire on the same schedule in the same zone; the job itself first.
fn tick_groups(config: &Config) -> HashMap<String, Vec<String>> {
    let jobs: Vec<&Job> = config.jobs.values().filter(|j| j.schedule.is_some()).collect();
    let mut out = HashMap::new();
    for group in crate::plan::fusion::groups_in(config, &jobs) {
        let mut by_schedule: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for i in group {
            let job = jobs[i];
            let key = (job.schedule.clone().unwrap_or_default(), job.time_zone.name().to_string());
            by_schedule.entry(key).or_default().push(job.name.clone());
        }
        for names in by_schedule.into_values() {
            for name in &names {
                let mut members = vec![name.clone()];
                members.extend(names.iter().filter(|n| *n != name).cloned());
                out.insert(name.clone(), members);
            }
        }
    }
    out
}

/// Ticks `job` at each fire time from `first` on; once `stop` is cancelled, returns the fire
/// time it was waiting for (`None` when the schedule has no further fire times).
async fn job_loop(
    inner: Arc<Inner>,
    job: Job,
    schedule: Schedule,
    first: DateTime<Utc>,
    stop: CancellationToken,
) -> Option<(String, PendingTick)> {
    let mut next = first;
    loop {
        inner.metrics.set_next_run(&job.name, Some(next));
        tokio::select! {
            // A stopped loop never ticks, even when its fire time has come too: the fire time
            // goes to the loop that replaces it.
            biased;
            _ = stop.cancelled() => {
                let tick = PendingTick { expr: schedule.expr().to_string(), time_zone: job.time_zone, next };
                return Some((job.name, tick));
            }
            _ = inner.clock.sleep_until(next) => {}
        }
        inner.tick(&job, next, next, false);
        // A clock that jumped past several fire times fires once, then waits for the next one.
        let after = next.max(inner.clock.now());
        let Some(n) = schedule.next_after(after) else {
            info!(job = %job.name, "schedule has no further fire times");
            inner.metrics.set_next_run(&job.name, None);
            return None;
        };
        next = n;
    }
}

impl Inner {
    /// Starts a run of `job` for the tick at `at`, unless one is still in flight, with the
    /// members of its tick group that are free (one request per chunk for all of them); a job
    /// its group already ran for `at` has nothing left to do. On a shared warehouse only the
    /// members whose tick `fire` (the fire time `at` stands for) this daemon claims run; a
    /// `catch_up` also takes over a claim made before the daemons starting with it.
    fn tick(self: &Arc<Self>, job: &Job, at: DateTime<Utc>, fire: DateTime<Utc>, catch_up: bool) {
        // Held while the group is claimed, so a partner's loop firing at the same instant sees
        // its tick either taken (and returns) or free (and claims it), never half-claimed.
        let mut ticked = self.ticked.lock().expect("ticked lock");
        if ticked.get(&job.name) == Some(&at) {
            return;
        }
        if self.paused.lock().expect("paused lock").contains(&job.name) {
            info!(job = %job.name, tick = %at, "tick skipped: the job is paused until the configuration is reloaded (its credentials were refused)");
            return;
        }
        if !self.running.lock().expect("running lock").insert(job.name.clone()) {
            self.metrics.record_skipped_tick(&job.name);
            warn!(job = %job.name, tick = %at, "tick skipped: the previous run of this job is still going");
            return;
        }
        let runner = self.runner.read().expect("runner lock").clone();
        let partners = self.tick_groups.lock().expect("tick groups lock").get(&job.name).cloned().unwrap_or_default();
        let mut members = vec![job.clone()];
        for name in partners.iter().skip(1) {
            let Some(partner) = runner.config.jobs.get(name) else { continue };
            let free = !self.paused.lock().expect("paused lock").contains(name)
                && ticked.get(name) != Some(&at)
                && self.running.lock().expect("running lock").insert(name.clone());
            if free {
                members.push(partner.clone());
            }
        }
        for m in &members {
            ticked.insert(m.name.clone(), at);
        }
        drop(ticked);
        // Published before the loop sleeps again: "every loop asleep" implies this run counted.
        self.activity.send_modify(|a| a.in_flight += members.len());
        let mut guards: Vec<RunningGuard> =
            members.iter().map(|m| RunningGuard { inner: self.clone(), job: m.name.clone(), started: true }).collect();
        let inner = self.clone();
        let mut runs = self.runs.lock().expect("runs lock");
        // Reap finished runs so a daemon that ticks for months keeps no record of each one.
        while runs.try_join_next().is_some() {}
        runs.spawn(async move {
            let target = runner.sink.describe();
            if let Some(pool) = runner.sink.shared_pool() {
                let claimed = inner.claim(pool, &target, &members, fire, catch_up).await;
                // Before their guards go: "no run in flight" implies their metrics are current.
                inner.claimed_elsewhere(&runner, &claimed.elsewhere).await;
                // Members another daemon runs are free again at once (they never started here).
                for g in guards.iter_mut().filter(|g| !claimed.mine.contains(&g.job)) {
                    g.started = false;
                }
                guards.retain(|g| claimed.mine.contains(&g.job));
                members.retain(|m| claimed.mine.contains(&m.name));
                if members.is_empty() {
                    return;
                }
            }
            let _guards = guards;
            let not_run = if members.len() == 1 {
                inner.run_once(&members[0], at).await
            } else {
                inner.run_group(&runner, &members, at).await
            };
            if let Some(pool) = runner.sink.shared_pool() {
                inner.claim_ended(pool, &target, &members, &not_run, fire).await;
            }
        });
    }

    /// Jobs whose tick another daemon claimed: their watermark as the warehouse has it now goes
    /// into the metrics (replacing this daemon's older one), and they count as caught up, since
    /// a live daemon runs them.
    async fn claimed_elsewhere(&self, runner: &Runner, jobs: &[String]) {
        for name in jobs {
            match runner.sink.job_state(name).await {
                Ok(state) => self.metrics.record_watermark(name, state.watermark),
                Err(e) => warn!(job = %name, error = %e, "cannot read the job's watermark for the metrics"),
            }
            self.behind.lock().expect("behind lock").remove(name);
        }
    }

    /// Ends this daemon's claims of the tick `fire` of `members`: `done_at` for those whose run
    /// ended (whatever the outcome); the claims of those it did not run (`not_run`: locked by
    /// another process, cancelled by a shutdown) are deleted if they are still this daemon's and
    /// not done, so a catch-up (or any daemon) may take the tick. A claim this daemon's catch-up
    /// took over from another daemon is marked done too (naming this daemon): the tick ran.
    async fn claim_ended(
        &self,
        pool: &sqlx::PgPool,
        target: &str,
        members: &[Job],
        not_run: &[String],
        fire: DateTime<Utc>,
    ) {
        let done: Vec<String> = members.iter().map(|m| m.name.clone()).filter(|n| !not_run.contains(n)).collect();
        if !done.is_empty() {
            let marked = sqlx::query(
                "INSERT INTO chatetl.ticks AS t (target, job, fire_at, daemon, done_at) \
                 SELECT $1, j, $3, $4, clock_timestamp() FROM unnest($2::text[]) AS j ORDER BY j \
                 ON CONFLICT (target, job, fire_at) DO UPDATE SET daemon = excluded.daemon, done_at = excluded.done_at",
            )
            .bind(target)
            .bind(&done)
            .bind(fire)
            .bind(crate::budget::process_id())
            .execute(pool)
            .await;
            if let Err(e) = marked {
                warn!(jobs = ?done, tick = %fire, error = %e, "cannot mark the tick done in the warehouse (a catch-up may run it again)");
            }
        }
        if !not_run.is_empty() {
            let deleted = sqlx::query(
                "DELETE FROM chatetl.ticks WHERE target = $1 AND job = ANY($2) AND fire_at = $3 AND daemon = $4 \
                 AND done_at IS NULL",
            )
            .bind(target)
            .bind(not_run)
            .bind(fire)
            .bind(crate::budget::process_id())
            .execute(pool)
            .await;
            if let Err(e) = deleted {
                warn!(jobs = ?not_run, tick = %fire, error = %e, "cannot give up the claim of a tick not run (a catch-up takes it over)");
            }
        }
    }

    /// The members of a tick this daemon claims in `chatetl.ticks` (see the module doc): those no
    /// other daemon claimed first; none when the database cannot be reached. A `catch_up` also
    /// takes over a claim made over a minute ago whose run has not ended (`done_at IS NULL`): its
    /// daemon was killed (and may be this one, restarted), or still runs it, in which case the
    /// job's run lock refuses this daemon's run. Daemons started together catch up once.
    async fn claim(
        &self,
        pool: &sqlx::PgPool,
        target: &str,
        members: &[Job],
        fire: DateTime<Utc>,
        catch_up: bool,
    ) -> Claimed {
        self.prune_claims(pool).await;
        let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        names.sort();
        let on_conflict = if catch_up {
            // The row lock serializes takers. The claim stays its claimer's until the tick is done:
            // a taker refused by the run lock (the claimer still runs it) deletes nothing.
            // Only a claim over a minute old: daemons starting together would otherwise take over
            // each other's fresh claims, and one whose run lock came free just before the first
            // run marked the tick done would run it a second time (seen in the three-daemon test).
            "ON CONFLICT (target, job, fire_at) DO UPDATE SET claimed_at = t.claimed_at \
             WHERE t.done_at IS NULL AND t.claimed_at < clock_timestamp() - interval '60 seconds'"
        } else {
            "ON CONFLICT DO NOTHING"
        };
        let query = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO chatetl.ticks AS t (target, job, fire_at, daemon) \
             SELECT $1, j, $3, $4 FROM unnest($2::text[]) AS j ORDER BY j {on_conflict} RETURNING job"
        )))
        .bind(target)
        .bind(&names)
        .bind(fire)
        .bind(crate::budget::process_id());
        let claimed: Result<Vec<String>, sqlx::Error> = query.fetch_all(pool).await;
        match claimed {
            Ok(claimed) => {
                let elsewhere: Vec<String> = names.iter().filter(|n| !claimed.contains(n)).cloned().collect();
                for name in &elsewhere {
                    self.metrics.record_skipped_tick(name);
                    info!(job = %name, tick = %fire, "tick skipped: another daemon on this warehouse runs it");
                }
                Claimed { mine: claimed.into_iter().collect(), elsewhere }
            }
            Err(e) => {
                warn!(jobs = ?names, tick = %fire, error = %e, "tick skipped: cannot claim it in the warehouse (a later tick retries)");
                Claimed::default()
            }
        }
    }

    /// Deletes tick claims older than [`KEEP_CLAIMS`], at most once per [`PRUNE_CLAIMS_EVERY`].
    async fn prune_claims(&self, pool: &sqlx::PgPool) {
        {
            let mut last = self.claims_pruned.lock().expect("claims lock");
            if last.is_some_and(|t| t.elapsed() < PRUNE_CLAIMS_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let pruned = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM chatetl.ticks WHERE claimed_at < clock_timestamp() - interval '{KEEP_CLAIMS}'"
        )))
        .execute(pool)
        .await;
        if let Err(e) = pruned {
            warn!(error = %e, "cannot delete old tick claims; the next prune retries");
        }
    }

    /// Every job's watermark and last success as the warehouse has them, into the metrics, so
    /// freshness gauges (and alerts on them) work from start-up, not from each job's first tick.
    async fn record_stored_state(&self) {
        let runner = self.runner.read().expect("runner lock").clone();
        if self.stored_state_read.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let names: Vec<String> = runner.config.jobs.keys().cloned().collect();
        match runner.sink.status(&names).await {
            Ok(statuses) => {
                for s in statuses {
                    let last_success = s.last_success.or_else(|| {
                        s.last_run.as_ref().filter(|r| r.status == "succeeded").and_then(|r| r.finished_at)
                    });
                    let duration = s
                        .last_run
                        .as_ref()
                        .and_then(|r| r.finished_at.map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0));
                    self.metrics.record_state(&s.job, s.watermark, last_success, duration);
                }
            }
            Err(e) => warn!(error = %e, "cannot read the jobs' state for the metrics; they fill in as jobs run"),
        }
    }

    /// The options of a scheduled run.
    fn run_options(&self, partial_after: DateTime<Utc>) -> RunOptions {
        RunOptions {
            kind: RunKind::Scheduled,
            concurrency: self.opts.concurrency,
            progress: Progress::Log,
            force: true,
            partial_after: Some(partial_after),
            cancel: Some(self.stop_runs.clone()),
            observer: Some(ChunkObserver({
                let metrics = self.metrics.clone();
                Arc::new(move |job: &str, chunk: &ChunkDone| metrics.record_chunk(job, chunk))
            })),
        }
    }

    /// Runs `job` for the tick at `at`; returns it when it did not run (see [`Inner::finished`]).
    async fn run_once(&self, job: &Job, at: DateTime<Utc>) -> Vec<String> {
        let runner = self.runner.read().expect("runner lock").clone();
        // A snapshot is captured at its tick (a retried tick replaces it); history runs up to now.
        let now = if job.kind == JobKind::Snapshot { at } else { self.clock.now() };
        self.activity.send_modify(|a| a.runs_started += 1);
        let result = async {
            let (windows, partial_after) = runner.incremental_windows(job, now).await?;
            runner.run(job, windows, &self.run_options(partial_after)).await
        }
        .await;
        if self.finished(&runner, job, at, result).await { Vec::new() } else { vec![job.name.clone()] }
    }

    /// One tick of a tick group (windowed jobs sharing requests), at one `now` for all members;
    /// returns the members that did not run (see [`Inner::finished`]).
    async fn run_group(&self, runner: &Runner, members: &[Job], at: DateTime<Utc>) -> Vec<String> {
        let now = self.clock.now();
        self.activity.send_modify(|a| a.runs_started += members.len() as u64);
        let mut planned = Vec::new();
        let mut not_run = Vec::new();
        let mut partial_after = now;
        for job in members {
            match runner.incremental_windows(job, now).await {
                Ok((windows, partial)) => {
                    partial_after = partial;
                    planned.push((job.clone(), windows));
                }
                Err(e) => {
                    if !self.finished(runner, job, at, Err(e)).await {
                        not_run.push(job.name.clone());
                    }
                }
            }
        }
        // Members share settle_secs (part of what fuses them), so one instant is every member's.
        let results = runner.run_fused(&planned, &self.run_options(partial_after)).await;
        for ((job, _), (_, result)) in planned.iter().zip(results) {
            if !self.finished(runner, job, at, result).await {
                not_run.push(job.name.clone());
            }
        }
        not_run
    }

    /// Records how a tick's run of `job` ended: metrics, readiness, a pause after refused
    /// credentials, and its log line. False when the tick was not run: another process had the
    /// job locked, or the run was cancelled (a shutdown) and left windows undone.
    async fn finished(
        &self,
        runner: &Runner,
        job: &Job,
        at: DateTime<Utc>,
        result: Result<RunReport, RunError>,
    ) -> bool {
        let mut ran = true;
        match result {
            Ok(report) => {
                let watermark = runner.sink.job_state(&job.name).await.ok().and_then(|s| s.watermark);
                self.metrics.record_run(&report, watermark, self.clock.now());
                if report.ok() {
                    self.behind.lock().expect("behind lock").remove(&job.name);
                }
                if report.error_kind() == Some(ErrorKind::Credentials) {
                    self.pause(runner, job).await;
                } else if !report.ok() {
                    warn!(job = %job.name, tick = %at, failed = report.windows_failed, cancelled = report.windows_cancelled, "tick left windows to the next one");
                }
                ran = report.windows_cancelled == 0;
            }
            Err(RunError::Locked(_)) => {
                ran = false;
                self.metrics.record_skipped_tick(&job.name);
                info!(job = %job.name, tick = %at, "tick skipped: another chatetl process is loading this job");
            }
            Err(e @ (RunError::DefinitionChanged { .. } | RunError::SnapshotDefinitionChanged { .. })) => {
                self.metrics.record_fatal(&job.name, e.kind());
                self.metrics.set_definition_changed(&job.name, true);
                error!(job = %job.name, tick = %at, kind = %e.kind(), error = %e, "tick refused");
            }
            Err(e) => {
                self.metrics.record_fatal(&job.name, e.kind());
                error!(job = %job.name, tick = %at, kind = %e.kind(), error = %e, "tick failed");
            }
        }
        ran
    }

    /// Pauses `job` after its source refused the credentials: no tick runs it until the next
    /// reload; the run history gets a `paused` record saying so, which `status` shows.
    async fn pause(&self, runner: &Runner, job: &Job) {
        self.paused.lock().expect("paused lock").insert(job.name.clone());
        self.metrics.set_paused(&job.name, true);
        let message = format!(
            "job {}: source `{}` refused the credentials; the job is paused until the configuration is reloaded \
             (fix them, then send SIGHUP)",
            job.name, job.source
        );
        error!(job = %job.name, source = %job.source, "job paused: its source refused the credentials; fix them and reload (SIGHUP)");
        let now = Utc::now();
        let record = RunRecord {
            run_id: uuid::Uuid::new_v4().to_string(),
            job: job.name.clone(),
            kind: "schedule".into(),
            started_at: now,
            finished_at: Some(now),
            status: "paused".into(),
            windows_planned: 0,
            windows_loaded: 0,
            windows_skipped: 0,
            windows_failed: 0,
            rows: 0,
            requests: 0,
            retries: 0,
            error: Some(message),
            error_kind: Some(ErrorKind::Credentials),
        };
        if let Err(e) = runner.sink.record_run(&record).await {
            warn!(job = %job.name, error = %e, "cannot record the pause in the run history");
        }
    }

    /// Re-reads the configuration; on success stops the old loops, swaps the runner (sharing
    /// the warehouse), starts the new loops in `loops` and returns true. On failure the old
    /// definitions keep running.
    async fn reload(self: &Arc<Self>, loops: &mut Loops) -> bool {
        let config = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                error!(file = %self.config_path.display(), "reload failed, keeping the running definitions:\n{e}");
                return false;
            }
        };
        let old = self.runner.read().expect("runner lock").clone();
        let changes = describe_changes(&old.config, &config);
        let runner = match Runner::with_shared_parts(config, old.sink.clone(), old.request_stats().clone()) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "reload failed, keeping the running definitions");
                return false;
            }
        };
        for job in runner.config.jobs.values() {
            self.metrics.register(&job.name, &job.source, job.endpoint.name());
        }
        // A job the new files drop or unschedule no longer holds readiness back.
        self.behind
            .lock()
            .expect("behind lock")
            .retain(|name| runner.config.jobs.get(name).is_some_and(|j| j.schedule.is_some()));
        let since = self.clock.now();
        let pending = loops.stop().await;
        *self.runner.write().expect("runner lock") = Arc::new(runner);
        // New clients ask the upstream again: paused jobs run on their next tick.
        for job in std::mem::take(&mut *self.paused.lock().expect("paused lock")) {
            self.metrics.set_paused(&job, false);
        }
        *loops = start_loops(self, since, &pending);
        info!(changes = %changes, "configuration reloaded");
        true
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

    /// A failure guard for waits that should end at once: fails instead of hanging.
    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_moved_past_their_time() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap());
        let c = Clock::Manual(clock.clone());
        let wake = Utc.with_ymd_and_hms(2024, 1, 1, 1, 0, 0).unwrap();
        let sleeper = tokio::spawn(async move { c.sleep_until(wake).await });
        within("the sleeper looks at 00:00", clock.wait_for_sleepers(1)).await;
        assert_eq!(clock.wake_times(), [wake]);
        clock.advance(chrono::Duration::minutes(30));
        // Returns only once the sleeper has looked at 00:30 and gone back to sleep.
        within("the sleeper looks at 00:30", clock.wait_for_sleepers(1)).await;
        assert!(!sleeper.is_finished(), "not yet");
        assert_eq!(clock.wake_times(), [wake]);
        clock.advance(chrono::Duration::minutes(30));
        within("the sleeper wakes at 01:00", sleeper).await.unwrap();
        assert!(clock.wake_times().is_empty(), "a woken sleeper is forgotten");
        within("no sleepers", clock.wait_for_sleepers(0)).await;
        clock.set(Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(clock.now(), wake, "never backwards");
    }

    #[tokio::test]
    async fn a_due_sleeper_is_not_counted_asleep_and_a_dropped_one_is_forgotten() {
        let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(t0);
        let (early, late) = (t0 + chrono::Duration::minutes(10), t0 + chrono::Duration::minutes(20));
        let c = Clock::Manual(clock.clone());
        let first = tokio::spawn(async move { c.sleep_until(early).await });
        let c = Clock::Manual(clock.clone());
        let second = tokio::spawn(async move { c.sleep_until(late).await });
        within("both asleep", clock.wait_for_sleepers(2)).await;
        assert_eq!(clock.wake_times(), [early, late]);
        // Past the first one's time: "two asleep" is false from this moment on, before it even
        // runs, so a waiter for two sleepers cannot return on the stale count.
        clock.set(early);
        assert!(futures::FutureExt::now_or_never(clock.wait_for_sleepers(2)).is_none(), "a due sleeper is awake");
        within("the first wakes", first).await.unwrap();
        within("only the second sleeps", clock.wait_for_sleepers(1)).await;
        assert_eq!(clock.wake_times(), [late]);
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        within("a cancelled sleep leaves the count", clock.wait_for_sleepers(0)).await;
    }
}

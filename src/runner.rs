//! Executing a plan: windows of a job fetched, built, and committed chunk by chunk.
//!
//! Owns: [`Runner`] (the configuration, the open warehouse and one [`Source`] per configured
//! source), the ways windows are chosen (incremental from the watermark, an explicit range, a
//! backfill that skips windows already loaded with the same definition, a rebuild into the job's
//! shadow table that resumes and is promoted at the end), what a changed definition does (added
//! aggregations become columns; anything else refuses the run until a rebuild, and snapshot jobs
//! are never rebuilt), bounded concurrency across chunks, progress (a bar on a terminal, a log
//! line per chunk otherwise), error isolation (a failed chunk keeps its windows' old rows and the
//! others go on, and its windows are recorded as failed), and the run record (runs left
//! `running` by a process that died are closed as `died` by the next run of the job).
//!
//! A chunk is the set of consecutive windows one request per scope covers; its windows commit
//! together, after every scope's request succeeded, so no window is ever half-loaded.

pub mod progress;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::batch::{self, TableSchema, WindowBatch};
use crate::budget::SharedBudget;
use crate::config::{Config, Job, JobKind, WindowUnit};
use crate::error::ErrorKind;
use crate::plan::{self, Window};
use crate::row::Row;
use crate::sink::{Commit, Sink, SinkError};
use crate::source::http::{CallCounts, StatsRegistry};
use crate::source::{ClientError, FetchError, Source, WindowRows};
use crate::state::{Change, RunRecord, WindowFailure, definition_hash};
use crate::time::local_day_start;

/// A problem that stops a whole job run (as opposed to one chunk failing).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("job {job}: source `{name}` is not configured")]
    UnknownSource { job: String, name: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] ClientError),
    /// Another process (a second daemon, a manual run) is loading this job right now.
    #[error("job {0} is being loaded by another chatetl process; try again when it finishes")]
    Locked(String),
    /// The job's definition changed in a way that changes what its loaded rows mean; loading
    /// more would mix two meanings in one table.
    #[error(
        "job {job}: its definition changed since its history was loaded (more than added aggregations), so the \
         loaded rows mean something else; `chatetl run --job {job} --rebuild` reloads the whole history into a \
         shadow table and swaps it in when complete (the live table keeps serving until then), or restore the \
         previous definition"
    )]
    DefinitionChanged { job: String },
    /// A snapshot job's definition changed in a way that needs its table rebuilt: its history
    /// cannot be fetched again, so chatetl never replaces it.
    #[error(
        "job {job}: its definition changed since its captures were taken (more than added aggregations), and a \
         snapshot's history cannot be fetched again, so chatetl never rebuilds it; restore the previous definition, \
         or give the job a new `table:` to start a new history beside the old one"
    )]
    SnapshotDefinitionChanged { job: String },
    /// `--rebuild` of a snapshot job: it would delete captures that cannot be fetched again.
    #[error(
        "job {job}: a snapshot job cannot be rebuilt: its captures cannot be fetched again, and a rebuild would \
         delete them; new columns are added in place by the next run, and a definition that changed otherwise \
         needs a new `table:`"
    )]
    SnapshotRebuild { job: String },
}

impl RunError {
    /// Whose fault it is (a job locked by another process is a passing condition: retry).
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::UnknownSource { .. }
            | RunError::Source(_)
            | RunError::DefinitionChanged { .. }
            | RunError::SnapshotDefinitionChanged { .. }
            | RunError::SnapshotRebuild { .. } => ErrorKind::Configuration,
            RunError::Sink(e) => e.kind,
            RunError::Locked(_) => ErrorKind::Warehouse,
        }
    }
}

/// Loading one chunk of windows failed: fetching, reading the rows, or committing them.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The rows of a window do not fit its table (outside the window, a wrong type, a repeat).
    #[error("window {window}: {message}")]
    Rows { window: String, message: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl LoadError {
    /// Whose fault it is, and so whether retrying can help ([`ErrorKind::retryable`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            LoadError::Fetch(e) => e.kind(),
            LoadError::Rows { .. } => ErrorKind::BadResponse,
            LoadError::Sink(e) => e.kind,
        }
    }
}

/// Why this run happens; recorded in the run history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `chatetl run` without a range: from the watermark.
    Incremental,
    /// `chatetl run --from --to`: exactly that range, reloaded.
    Range,
    /// `chatetl backfill`: a range, skipping windows already loaded.
    Backfill,
    /// `chatetl demo`.
    Demo,
    /// A tick of `chatetl schedule`: incremental.
    Scheduled,
    /// `chatetl run --rebuild`: the whole history again into a shadow table, after a definition
    /// change; resumes a rebuild that was interrupted.
    Rebuild,
    /// `chatetl run --failed`: exactly the windows whose last load attempt failed.
    Failed,
    /// `chatetl run --outdated`: the windows loaded before columns were added.
    Outdated,
}

impl RunKind {
    fn as_str(self) -> &'static str {
        match self {
            RunKind::Incremental => "run",
            RunKind::Range => "run-range",
            RunKind::Backfill => "backfill",
            RunKind::Demo => "demo",
            RunKind::Scheduled => "schedule",
            RunKind::Rebuild => "rebuild",
            RunKind::Failed => "run-failed",
            RunKind::Outdated => "run-outdated",
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on stderr when it is a terminal, else a log line per chunk.
    Auto,
    /// Log lines only.
    Log,
}

/// Options of one job run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub kind: RunKind,
    /// Chunks (requests per scope) in flight at once.
    pub concurrency: usize,
    pub progress: Progress,
    /// Reload windows already loaded with the current definition (backfill and a resumed rebuild
    /// skip them otherwise).
    pub force: bool,
    /// Windows ending after this instant are incomplete: loaded, but not recorded as loaded.
    pub partial_after: Option<DateTime<Utc>>,
    /// Once cancelled, no new chunk starts; chunks in flight finish (or are dropped by the caller,
    /// which rolls their transactions back).
    pub cancel: Option<CancellationToken>,
    /// Told of every chunk as it finishes (a daemon's live metrics).
    pub observer: Option<ChunkObserver>,
}

/// What one finished chunk did: its windows loaded or failed, rows, requests and retries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkDone {
    pub windows_loaded: u64,
    pub windows_failed: u64,
    pub rows: u64,
    pub requests: u64,
    pub retries: u64,
    /// The kind of its failure, when it failed.
    pub failure: Option<ErrorKind>,
}

/// Called with the job's name and each [`ChunkDone`] of a run, as the chunk finishes.
#[derive(Clone)]
pub struct ChunkObserver(pub Arc<dyn Fn(&str, &ChunkDone) + Send + Sync>);

impl std::fmt::Debug for ChunkObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkObserver")
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            kind: RunKind::Range,
            concurrency: 2,
            progress: Progress::Auto,
            force: false,
            partial_after: None,
            cancel: None,
            observer: None,
        }
    }
}

/// A chunk that failed: its windows, the kind of failure and the whole message (`job …, window
/// …: cause`).
#[derive(Debug, Clone)]
pub struct ChunkFailure {
    pub first: Window,
    pub last: Window,
    pub windows: usize,
    pub kind: ErrorKind,
    pub message: String,
}

/// What one job run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: String,
    pub windows_planned: usize,
    pub windows_skipped: usize,
    pub windows_loaded: usize,
    pub windows_failed: usize,
    /// Windows not started because the run was cancelled (shutdown).
    pub windows_cancelled: usize,
    pub rows: u64,
    pub requests: u64,
    pub retries: u64,
    pub elapsed: Duration,
    pub failures: Vec<ChunkFailure>,
    /// Value columns this run added to the job's table (added aggregations).
    pub added_columns: Vec<String>,
    /// A rebuild's shadow table replaced the live one at the end of this run.
    pub promoted: bool,
    /// The jobs that shared this run's requests (query fusion); empty when it had its own.
    pub fused_with: Vec<String>,
}

impl RunReport {
    /// Every planned window was loaded or skipped: nothing failed, nothing was cancelled.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.windows_cancelled == 0
    }

    /// The kind that decides this run's exit code, when a chunk failed.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        ErrorKind::most_urgent(self.failures.iter().map(|f| f.kind))
    }
}

/// Sources, warehouse and configuration, ready to run jobs.
pub struct Runner {
    pub config: Config,
    pub sink: Arc<Sink>,
    sources: BTreeMap<String, Arc<Source>>,
    /// Each source's request counts, kept by a daemon across reloads.
    request_stats: StatsRegistry,
}

impl Runner {
    /// Opens the warehouse, builds a client per source, and brings every job's stored
    /// definition hash up to the current scheme ([`Runner::adopt_definition_hashes`]).
    pub async fn open(config: Config) -> Result<Runner, RunError> {
        let sink = Sink::open(&config.warehouse).await?;
        let runner = Runner::with_sink(config, sink)?;
        for job in runner.config.jobs.values() {
            if runner.sink.claim_legacy_state(job).await? {
                info!(job = %job.name, target = %runner.sink.describe(), "state kept by an earlier release now belongs to this target");
            }
        }
        runner.adopt_definition_hashes().await?;
        Ok(runner)
    }

    /// Where a job's history was stored with the hash of an older scheme of the same definition
    /// (`state::legacy_definition_hash`), stores the current one instead, so an upgrade never
    /// marks an unchanged job CHANGED.
    pub async fn adopt_definition_hashes(&self) -> Result<(), RunError> {
        for job in self.config.jobs.values() {
            let stored = self.sink.job_state(&job.name).await?.definition_hash;
            let (legacy, current) = (crate::state::legacy_definition_hash(job), definition_hash(job));
            if stored.as_deref() == Some(legacy.as_str()) && legacy != current {
                info!(job = %job.name, "stored definition hash adopted by the current hashing scheme");
                self.sink.adopt_definition_hash(&job.name, &legacy, &current).await?;
            }
        }
        Ok(())
    }

    /// A runner over an already open warehouse.
    pub fn with_sink(config: Config, sink: Sink) -> Result<Runner, RunError> {
        Runner::with_shared_sink(config, Arc::new(sink))
    }

    /// A runner for a new configuration over the same open warehouse (a reload).
    pub fn with_shared_sink(config: Config, sink: Arc<Sink>) -> Result<Runner, RunError> {
        Runner::with_shared_parts(config, sink, StatsRegistry::default())
    }

    /// [`Runner::with_shared_sink`], its sources counting their requests in `request_stats`
    /// (the previous runner's, so a daemon's counts survive a reload).
    pub fn with_shared_parts(
        config: Config,
        sink: Arc<Sink>,
        request_stats: StatsRegistry,
    ) -> Result<Runner, RunError> {
        // Over a warehouse whose state is in PostgreSQL every process spends one vendor budget
        // (`crate::budget`): daemons, and one-shot runs and backfills too.
        let budget = sink.shared_pool().map(|pool| SharedBudget::new(pool.clone()));
        let sources = config
            .sources
            .iter()
            .map(|(name, s)| {
                Ok((name.clone(), Arc::new(Source::with_parts(s, request_stats.of(name), budget.as_ref())?)))
            })
            .collect::<Result<_, RunError>>()?;
        Ok(Runner { config, sink, sources, request_stats })
    }

    /// Each source's request counts (by status class) and durations.
    pub fn request_stats(&self) -> &StatsRegistry {
        &self.request_stats
    }

    /// The source of `job`.
    pub fn source_of(&self, job: &Job) -> Result<Arc<Source>, RunError> {
        self.sources
            .get(&job.source)
            .cloned()
            .ok_or_else(|| RunError::UnknownSource { job: job.name.clone(), name: job.source.clone() })
    }

    /// The windows an incremental run at `now` loads (the job's settle delay and
    /// `include_partial` apply), and the instant after which windows are incomplete.
    pub async fn incremental_windows(
        &self,
        job: &Job,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Window>, DateTime<Utc>), RunError> {
        if job.kind == JobKind::Snapshot {
            // One snapshot, captured at `now` (a tick's time); it is complete once written.
            let window = plan::window_containing(WindowUnit::Snapshot, job.time_zone, now);
            return Ok((vec![window], window.end));
        }
        let state = self.sink.job_state(&job.name).await?;
        let settle = chrono::Duration::seconds(job.settle_secs as i64);
        let windows = plan::incremental(
            job.window,
            job.time_zone,
            job.start,
            state.watermark,
            now,
            job.lookback_windows,
            settle,
            job.include_partial,
        );
        Ok((windows, now - settle))
    }

    /// `run --rebuild`: every complete window of the job's history at `now`, loaded with the
    /// current definition into the job's shadow table ([`crate::sink::shadow_job`]), which replaces
    /// the live table in one atomic step once every window is loaded ([`Sink::promote`]). Until
    /// then BI queries read the old table, whole; an interrupted or partly failed rebuild leaves
    /// it in place, and the next `--rebuild` resumes (windows the shadow already holds with this
    /// definition are skipped). Snapshot jobs are refused: their captures cannot be fetched again.
    pub async fn rebuild(&self, job: &Job, now: DateTime<Utc>, opts: &RunOptions) -> Result<RunReport, RunError> {
        if job.kind == JobKind::Snapshot {
            return Err(RunError::SnapshotRebuild { job: job.name.clone() });
        }
        let lock = self.sink.try_lock_job(&job.name).await?.ok_or_else(|| RunError::Locked(job.name.clone()))?;
        let result = self.rebuild_locked(job, now, opts).await;
        lock.release().await;
        result
    }

    async fn rebuild_locked(&self, job: &Job, now: DateTime<Utc>, opts: &RunOptions) -> Result<RunReport, RunError> {
        let shadow = crate::sink::shadow_job(job);
        let definition = crate::state::definition(job);
        let kept = self.sink.job_state(&shadow.name).await?;
        if kept.definition_hash.as_deref() == Some(definition.hash.as_str()) {
            info!(job = %job.name, "resuming an interrupted rebuild: windows already in the shadow table are skipped");
        } else {
            self.sink.reset_job(&shadow).await?;
        }
        let settle = chrono::Duration::seconds(job.settle_secs as i64);
        let windows = plan::incremental(job.window, job.time_zone, job.start, None, now, 0, settle, false);
        // Never forced: resuming means skipping the windows the shadow already holds (`run`
        // forces its reloads, and its options arrive here).
        let opts =
            RunOptions { kind: RunKind::Rebuild, force: false, partial_after: Some(now - settle), ..opts.clone() };
        let mut report = self.run_locked(&shadow, windows, &opts).await?;
        report.job = job.name.clone();
        if report.ok() {
            self.sink.promote(job, &shadow).await?;
            report.promoted = true;
            info!(job = %job.name, windows = report.windows_loaded + report.windows_skipped, "rebuild complete: the new table replaced the old one");
        } else {
            warn!(job = %job.name, failed = report.windows_failed, cancelled = report.windows_cancelled,
                "rebuild incomplete: the live table is unchanged; run --rebuild again to resume");
        }
        Ok(report)
    }

    /// Loads `windows` of `job` (any order; they are sorted and chunked), holding the job's run
    /// lock so no other process loads it at the same time.
    pub async fn run(&self, job: &Job, windows: Vec<Window>, opts: &RunOptions) -> Result<RunReport, RunError> {
        let lock = self.sink.try_lock_job(&job.name).await?.ok_or_else(|| RunError::Locked(job.name.clone()))?;
        let result = self.run_locked(job, windows, opts).await;
        lock.release().await;
        result
    }

    /// Loads jobs that can share requests ([`plan::fusion::groups`]: they differ only in their
    /// aggregations) with one request per chunk and scope for all of them: the union of their
    /// windows is chunked, each chunk fetched once with every member's aggregations, and each
    /// member commits its own windows of it into its own table, with its own state, run record
    /// and failures. A member that cannot start (locked, a changed definition) or whose commit
    /// fails leaves the others loading; a failed request fails the chunk's windows of every
    /// member. One job alone is [`Runner::run`]. Results come in the order of `jobs`; a chunk's
    /// requests are counted in the report of its first member with windows in it.
    pub async fn run_fused(
        &self,
        jobs: &[(Job, Vec<Window>)],
        opts: &RunOptions,
    ) -> Vec<(String, Result<RunReport, RunError>)> {
        let mut results: Vec<Option<Result<RunReport, RunError>>> = jobs.iter().map(|_| None).collect();
        let mut locks = Vec::new();
        let mut members = Vec::new();
        for (i, (job, windows)) in jobs.iter().enumerate() {
            let lock = match self.sink.try_lock_job(&job.name).await {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    results[i] = Some(Err(RunError::Locked(job.name.clone())));
                    continue;
                }
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            locks.push(lock);
            match self.begin(job, windows.clone(), opts).await {
                Ok(member) => members.push((i, member)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let (indexes, members): (Vec<usize>, Vec<Member>) = members.into_iter().unzip();
        if !members.is_empty() {
            for (i, result) in indexes.into_iter().zip(self.load(members, opts).await) {
                results[i] = Some(result);
            }
        }
        for lock in locks {
            lock.release().await;
        }
        jobs.iter().zip(results).map(|((job, _), r)| (job.name.clone(), r.expect("every job has a result"))).collect()
    }

    async fn run_locked(&self, job: &Job, windows: Vec<Window>, opts: &RunOptions) -> Result<RunReport, RunError> {
        let member = self.begin(job, windows, opts).await?;
        self.load(vec![member], opts).await.pop().expect("one member, one result")
    }

    /// The start of one job's run (its lock held): runs left by a dead process closed, the
    /// definition compared (added aggregations become columns), the table prepared, loaded
    /// windows skipped (backfill, rebuild), the run recorded as running.
    async fn begin<'a>(
        &self,
        job: &'a Job,
        mut windows: Vec<Window>,
        opts: &RunOptions,
    ) -> Result<Member<'a>, RunError> {
        let started = Instant::now();
        self.source_of(job)?;
        let schema = table_schema(job);
        let definition = crate::state::definition(job);
        let hash = definition.hash.clone();
        // A snapshot job's watermark is its latest snapshot; a windowed job's walks from `start`.
        let history_start = match job.kind {
            JobKind::Windowed => local_day_start(job.time_zone, job.start),
            JobKind::Snapshot => windows.iter().map(|w| w.start).min().unwrap_or_else(Utc::now),
        };
        // This run holds the job's lock: a run still recorded as running belongs to a process
        // that ended without finishing it.
        let died = self.sink.close_abandoned_runs(&job.name, Utc::now()).await?;
        if died > 0 {
            warn!(job = %job.name, runs = died, "runs whose process ended before they finished are recorded as died");
        }
        let stored = self.sink.job_state(&job.name).await?;
        let mut added_columns = Vec::new();
        match crate::state::compare(stored.definition_hash.as_deref(), stored.definition.as_ref(), &definition) {
            Change::Same => {}
            Change::Added(columns) => {
                info!(job = %job.name, columns = ?columns, "aggregations were added: adding their columns to the table");
                self.sink.add_columns(job, &schema, &columns, &definition).await?;
                added_columns = columns;
            }
            Change::Other => {
                let (job, job_kind) = (job.name.clone(), job.kind);
                return Err(match job_kind {
                    JobKind::Snapshot => RunError::SnapshotDefinitionChanged { job },
                    JobKind::Windowed => RunError::DefinitionChanged { job },
                });
            }
        }
        self.sink.prepare(job, &schema, history_start, &definition).await?;
        windows.sort();
        windows.dedup();
        let planned = windows.len();
        if matches!(opts.kind, RunKind::Backfill | RunKind::Rebuild) && !opts.force {
            let loaded = self.sink.window_loads(&job.name).await?;
            windows
                .retain(|w| !loaded.get(&w.start).is_some_and(|l| l.window_end == w.end && l.definition_hash == hash));
        }
        let skipped = planned - windows.len();
        let run_id = uuid::Uuid::new_v4().to_string();
        let record = RunRecord {
            run_id: run_id.clone(),
            job: job.name.clone(),
            kind: opts.kind.as_str().to_string(),
            started_at: Utc::now(),
            finished_at: None,
            status: "running".into(),
            windows_planned: planned as u32,
            windows_loaded: 0,
            windows_skipped: skipped as u32,
            windows_failed: 0,
            rows: 0,
            requests: 0,
            retries: 0,
            error: None,
            error_kind: None,
        };
        self.sink.record_run(&record).await?;
        let chunks = plan::chunk(&windows, job.max_windows_per_request).len();
        info!(job = %job.name, run_id = %run_id, windows = windows.len(), skipped, chunks, kind = record.kind, "run started");
        let report = RunReport {
            job: job.name.clone(),
            run_id,
            windows_planned: planned,
            windows_skipped: skipped,
            windows_loaded: 0,
            windows_failed: 0,
            windows_cancelled: 0,
            rows: 0,
            requests: 0,
            retries: 0,
            elapsed: Duration::ZERO,
            failures: Vec::new(),
            added_columns,
            promoted: false,
            fused_with: Vec::new(),
        };
        Ok(Member { job, schema, hash, history_start, windows, record, report, started, started_windows: 0 })
    }

    /// Loads the windows of `members` (begun, one job or a fused group) chunk by chunk and
    /// records how each run ended; one result per member, in order.
    async fn load(&self, mut members: Vec<Member<'_>>, opts: &RunOptions) -> Vec<Result<RunReport, RunError>> {
        let lead = members[0].job;
        let source = self.sources.get(&lead.source).cloned().expect("begin checked the source");
        let fused = (members.len() > 1).then(|| {
            let jobs: Vec<&Job> = members.iter().map(|m| m.job).collect();
            plan::fusion::Fused::new(&jobs)
        });
        let names: Vec<String> = members.iter().map(|m| m.job.name.clone()).collect();
        if fused.is_some() {
            for m in &mut members {
                m.report.fused_with = names.iter().filter(|n| **n != m.job.name).cloned().collect();
            }
            info!(jobs = ?names, "these jobs differ only in their aggregations: one request per chunk loads them all");
        }
        let mut all: Vec<Window> = members.iter().flat_map(|m| m.windows.iter().copied()).collect();
        all.sort();
        all.dedup();
        // Each chunk with, per member, the chunk's windows that member loads.
        let chunks: Vec<(Vec<Window>, Vec<Vec<Window>>)> = plan::chunk(&all, lead.max_windows_per_request)
            .into_iter()
            .map(|chunk| {
                let own = members
                    .iter()
                    .map(|m| chunk.iter().copied().filter(|w| m.windows.binary_search(w).is_ok()).collect())
                    .collect();
                (chunk, own)
            })
            .collect();
        let total = all.len();
        let bar = progress::bar(opts.progress, total as u64, &names.join("+"));
        let parts: Vec<MemberParts> = members
            .iter()
            .map(|m| MemberParts {
                run_id: m.report.run_id.clone(),
                schema: m.schema.clone(),
                hash: m.hash.clone(),
                history_start: m.history_start,
            })
            .collect();
        let ctx = ChunkContext {
            members: members.iter().map(|m| m.job).collect(),
            fetch_job: fused.as_ref().map_or(lead, |f| &f.job),
            fused: fused.as_ref(),
            parts,
            source: &source,
            sink: &self.sink,
            partial_after: opts.partial_after,
        };
        // Cancelled by the caller (shutdown) or by this run when the upstream refuses the
        // credentials: no new chunk starts; those in flight finish.
        let stop = opts.cancel.clone().unwrap_or_default().child_token();
        let mut started = vec![0usize; members.len()];
        let mut outcomes = futures::stream::iter(chunks)
            .take_while(|_| std::future::ready(!stop.is_cancelled()))
            .map(|(chunk, own)| {
                for (n, w) in started.iter_mut().zip(&own) {
                    *n += w.len();
                }
                ctx.load(chunk, own)
            })
            .buffer_unordered(opts.concurrency.max(1));
        let mut done = 0usize;
        let mut calls: Vec<CallCounts> = vec![CallCounts::default(); members.len()];
        while let Some((chunk, counts, results)) = outcomes.next().await {
            done += chunk.len();
            // The chunk's requests belong to its first member with windows in it.
            let mut counted = false;
            for (i, own, result) in results {
                let member = &mut members[i];
                let counts = if counted { CallCounts::default() } else { counts };
                counted = true;
                calls[i] += counts;
                member.outcome(&own, counts, result, opts, &stop, bar.is_none(), (done, total));
            }
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        drop(outcomes);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        // The run stopped itself: a request's credentials were refused (a caller's stop is
        // `opts.cancel`). A member whose own chunks never started is refused all the same.
        let refused = stop.is_cancelled() && !opts.cancel.as_ref().is_some_and(|c| c.is_cancelled());
        let mut results = Vec::new();
        for ((mut member, started), calls) in members.into_iter().zip(started).zip(calls) {
            member.started_windows = started;
            if refused {
                member.refused_before_start();
            }
            results.push(member.finish(&self.sink, calls, opts).await);
        }
        results
    }
}

/// One job's run in progress: what [`Runner::begin`] set up, and its report so far.
struct Member<'a> {
    job: &'a Job,
    schema: TableSchema,
    hash: String,
    history_start: DateTime<Utc>,
    /// Sorted, without repeats, without skipped windows.
    windows: Vec<Window>,
    record: RunRecord,
    report: RunReport,
    started: Instant,
    started_windows: usize,
}

impl Member<'_> {
    /// Takes one chunk's outcome for this job's windows `own` of it: counts, progress, and for a
    /// failure its log line and its entry in the report.
    /// (The failed windows were recorded by the chunk's own future: awaiting the warehouse here
    /// would stop the other chunks in flight from being polled while they hold its locks.)
    #[allow(clippy::too_many_arguments, reason = "one call site, in the chunk loop")]
    fn outcome(
        &mut self,
        own: &[Window],
        counts: CallCounts,
        result: Result<u64, Arc<LoadError>>,
        opts: &RunOptions,
        stop: &CancellationToken,
        log: bool,
        (done, total): (usize, usize),
    ) {
        let job = self.job;
        if let Some(observer) = &opts.observer {
            let n = own.len() as u64;
            let (loaded, rows, failure) = match &result {
                Ok(rows) => (n, *rows, None),
                Err(e) => (0, 0, Some(e.kind())),
            };
            let chunk = ChunkDone {
                windows_loaded: loaded,
                windows_failed: n - loaded,
                rows,
                requests: u64::from(counts.requests),
                retries: u64::from(counts.retries),
                failure,
            };
            (observer.0)(&job.name, &chunk);
        }
        let span = format!(
            "{} .. {}",
            own[0].label(job.window, job.time_zone),
            own[own.len() - 1].label(job.window, job.time_zone)
        );
        let report = &mut self.report;
        match result {
            Ok(rows) => {
                report.windows_loaded += own.len();
                report.rows += rows;
                if log {
                    info!(job = %job.name, windows = %span, rows, progress = format!("{done}/{total}"), "windows loaded");
                }
            }
            Err(error) => {
                report.windows_failed += own.len();
                let kind = error.kind();
                if kind == ErrorKind::Credentials && !stop.is_cancelled() {
                    error!(job = %job.name, source = %job.source, "the upstream refused the credentials: the run stops");
                    stop.cancel();
                }
                let message = failure_message(job, own, &error);
                warn!(job = %job.name, windows = %span, %kind, retryable = kind.retryable(), error = %error, "windows failed");
                report.failures.push(ChunkFailure {
                    first: own[0],
                    last: own[own.len() - 1],
                    windows: own.len(),
                    kind,
                    message,
                });
            }
        }
    }

    /// After the source refused the credentials (on a request of another member of a fused
    /// group): this job's windows that never started failed for that reason too, unless one of
    /// its own requests already says so.
    fn refused_before_start(&mut self) {
        let job = self.job;
        let left = &self.windows[self.started_windows..];
        if left.is_empty() || self.report.failures.iter().any(|f| f.kind == ErrorKind::Credentials) {
            return;
        }
        let message = format!(
            "job {}, window {}: not loaded: source `{}` refused the credentials on a request this job shares with {}",
            job.name,
            chunk_label(job, left),
            job.source,
            self.report.fused_with.join(", ")
        );
        self.report.failures.push(ChunkFailure {
            first: left[0],
            last: left[left.len() - 1],
            windows: left.len(),
            kind: ErrorKind::Credentials,
            message,
        });
    }

    /// Records how the run ended and returns its report.
    async fn finish(mut self, sink: &Sink, calls: CallCounts, opts: &RunOptions) -> Result<RunReport, RunError> {
        let job = self.job;
        let report = &mut self.report;
        report.windows_cancelled = self.windows.len() - self.started_windows;
        if report.windows_cancelled > 0 {
            warn!(job = %job.name, windows = report.windows_cancelled, "run cancelled; the remaining windows were not started");
        }
        report.failures.sort_by_key(|f| f.first);
        report.requests = u64::from(calls.requests);
        report.retries = u64::from(calls.retries);
        report.elapsed = self.started.elapsed();

        let record = &mut self.record;
        record.finished_at = Some(Utc::now());
        record.windows_loaded = report.windows_loaded as u32;
        record.windows_failed = report.windows_failed as u32;
        record.rows = report.rows;
        record.requests = report.requests as u32;
        record.retries = report.retries as u32;
        // Interrupted: the caller (a signal, a shutdown) stopped the run before every window
        // started; a stop after refused credentials is that failure.
        let interrupted = report.windows_cancelled > 0 && opts.cancel.as_ref().is_some_and(|c| c.is_cancelled());
        record.status = run_status(report, interrupted).into();
        record.error = report.failures.first().map(|f| f.message.clone());
        record.error_kind = report.error_kind();
        sink.record_run(record).await?;
        info!(job = %job.name, run_id = %report.run_id, loaded = report.windows_loaded, failed = report.windows_failed,
              rows = report.rows, requests = report.requests, retries = report.retries,
              elapsed_ms = report.elapsed.as_millis() as u64, "run finished");
        Ok(self.report)
    }
}

/// What loading a chunk needs: the members, the job its requests are built from (the one job,
/// or the fused one), and per member its run id, schema, definition hash and history start.
struct ChunkContext<'a> {
    members: Vec<&'a Job>,
    fetch_job: &'a Job,
    fused: Option<&'a plan::fusion::Fused>,
    parts: Vec<MemberParts>,
    source: &'a Source,
    sink: &'a Sink,
    partial_after: Option<DateTime<Utc>>,
}

/// What a member's commits need of its run.
struct MemberParts {
    run_id: String,
    schema: TableSchema,
    hash: String,
    history_start: DateTime<Utc>,
}

/// Per member with windows in a chunk: its index, those windows, and its rows or the cause.
type MemberOutcomes = Vec<(usize, Vec<Window>, Result<u64, Arc<LoadError>>)>;

impl ChunkContext<'_> {
    /// Fetches one chunk once and commits each member's windows of it: the chunk, the requests
    /// it made (also when it failed), and each member's outcome.
    async fn load(&self, chunk: Vec<Window>, own: Vec<Vec<Window>>) -> (Vec<Window>, CallCounts, MemberOutcomes) {
        let fetch_job = self.fetch_job;
        let span = info_span!("window", job = %fetch_job.name, window = %chunk_label(fetch_job, &chunk));
        let (fetched, counts) = self.source.fetch(fetch_job, &chunk).instrument(span.clone()).await;
        let mut fetched = fetched.map_err(|e| Arc::new(LoadError::Fetch(e)));
        let loaded_at = Utc::now();
        // The chunk's requests are recorded with the first member's windows (as its report counts them).
        let first = own.iter().position(|w| !w.is_empty());
        // One member after the other: a fused chunk holds one warehouse connection at a time,
        // however many jobs share it (the pool also serves every job's lock and other chunks).
        let outcomes = async {
            let mut outcomes = Vec::new();
            for (i, windows) in own.into_iter().enumerate().filter(|(_, w)| !w.is_empty()) {
                let result = match &mut fetched {
                    Ok(rows) => {
                        let mine = self.rows_of(i, &chunk, rows, &windows);
                        let requests = if Some(i) == first { counts.requests } else { 0 };
                        self.commit(i, &windows, mine, loaded_at, requests).await.map_err(Arc::new)
                    }
                    Err(e) => Err(Arc::clone(e)),
                };
                if let Err(error) = &result {
                    self.record_failures(i, &windows, error).await;
                }
                outcomes.push((i, windows, result));
            }
            outcomes
        }
        .instrument(span)
        .await;
        (chunk, counts, outcomes)
    }

    /// Member `i`'s rows of its `windows` out of the chunk's: moved out when the member is the
    /// only one (no copy on the common path), its own values of the fused rows otherwise.
    fn rows_of(
        &self,
        i: usize,
        chunk: &[Window],
        rows: &mut WindowRows,
        windows: &[Window],
    ) -> Vec<(Window, Vec<Row>)> {
        chunk
            .iter()
            .zip(rows.iter_mut())
            .filter(|(w, _)| windows.binary_search(w).is_ok())
            .map(|(w, rows)| match self.fused {
                Some(fused) => (*w, fused.rows_of(i, rows)),
                None => (*w, std::mem::take(rows)),
            })
            .collect()
    }

    /// Records member `i`'s `windows` as failed with `error`. The windows keep their old rows
    /// either way; a failure that cannot be recorded only means `run --failed` will not list
    /// them. A failed capture cannot be taken again for its time: only the run records it.
    async fn record_failures(&self, i: usize, windows: &[Window], error: &LoadError) {
        let job = self.members[i];
        if job.kind != JobKind::Windowed {
            return;
        }
        let (message, kind, failed_at) = (failure_message(job, windows, error), error.kind(), Utc::now());
        let failures: Vec<WindowFailure> = windows
            .iter()
            .map(|w| WindowFailure {
                window_start: w.start,
                window_end: w.end,
                run_id: self.parts[i].run_id.clone(),
                kind,
                error: message.clone(),
                failed_at,
                attempts: 1,
            })
            .collect();
        if let Err(e) = self.sink.record_failures(&job.name, &failures).await {
            warn!(job = %job.name, windows = %chunk_label(job, windows), error = %e, "cannot record the failed windows");
        }
    }

    /// Builds member `i`'s batches of its `windows`' rows (`own`) and commits them.
    async fn commit(
        &self,
        i: usize,
        windows: &[Window],
        own: Vec<(Window, Vec<Row>)>,
        loaded_at: DateTime<Utc>,
        requests: u32,
    ) -> Result<u64, LoadError> {
        let job = self.members[i];
        let MemberParts { run_id, schema, hash, history_start } = &self.parts[i];
        // Sorting rows and filling Arrow builders is CPU work: on a blocking thread, so the
        // runtime's threads keep fetching and parsing the other chunks meanwhile.
        let (build_schema, build_run_id, unit, tz) = (schema.clone(), run_id.clone(), job.window, job.time_zone);
        let built = tokio::task::spawn_blocking(move || {
            own.into_iter()
                .map(|(w, rows)| {
                    batch::build(&build_schema, w, rows, loaded_at, &build_run_id)
                        .map(|batch| WindowBatch { window: w, batch })
                        .map_err(|message| LoadError::Rows { window: w.label(unit, tz), message })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        let batches = match built {
            Ok(batches) => batches?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                let window = chunk_label(job, windows);
                return Err(LoadError::Rows { window, message: format!("building its rows was stopped: {e}") });
            }
        };
        Ok(self
            .sink
            .commit(Commit {
                job,
                schema,
                history_start: *history_start,
                definition_hash: hash,
                run_id,
                requests,
                windows: batches,
                partial_after: self.partial_after,
            })
            .await?)
    }
}

/// How a run ended, as its record says: `interrupted` when the caller stopped it (a signal, a
/// shutdown) before every window started; else `failed` (nothing loaded) or `partial` when a
/// failure is reported; `interrupted` when windows were left unstarted otherwise; `succeeded`.
pub fn run_status(report: &RunReport, interrupted: bool) -> &'static str {
    match (report.failures.is_empty(), report.windows_loaded, report.windows_cancelled) {
        _ if interrupted => "interrupted",
        (true, _, 0) => "succeeded",
        (true, _, _) => "interrupted",
        (false, 0, _) => "failed",
        (false, _, _) => "partial",
    }
}

/// `job …, window …: cause`: how a chunk's failure is reported and recorded.
fn failure_message(job: &Job, windows: &[Window], error: &LoadError) -> String {
    format!("job {}, window {}: {error}", job.name, chunk_label(job, windows))
}

/// `2024-03-31` for one window, `2024-03-01..2024-03-31` for several.
fn chunk_label(job: &Job, chunk: &[Window]) -> String {
    let label = |w: &Window| w.label(job.window, job.time_zone);
    match chunk {
        [one] => label(one),
        _ => format!("{}..{}", label(&chunk[0]), label(&chunk[chunk.len() - 1])),
    }
}

/// The schema of `job`'s table, with the columns its endpoint module declares.
pub fn table_schema(job: &Job) -> TableSchema {
    let (dims, metrics) = crate::source::columns(job);
    TableSchema::new(job, dims, metrics, &crate::source::bucket_name(job))
}

//! Sinks: where loaded windows land, atomically, together with their state.
//!
//! Owns: the one interface the runner uses ([`Sink`]) over the warehouses of `chatetl.yaml`:
//! PostgreSQL (`postgres`: delete-then-`COPY` of the windows in one transaction with their
//! window loads and the watermark) and Parquet (`parquet`: one file per table and partition
//! period, replaced atomically, with its state in an SQLite database in the warehouse folder).
//! Both keep a job's state with the target it describes (the PostgreSQL schema, the Parquet
//! folder), add value columns in place, and rebuild into a shadow table swapped in at the end
//! ([`shadow_job`], [`Sink::promote`]). A closed enum rather than a trait
//! object: adding a warehouse is one file here plus one arm per method, and the compiler finds
//! the forgotten arm.

pub mod lake;
pub mod parquet;
pub mod postgres;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::batch::{TableSchema, WindowBatch};
use crate::config::{Job, Warehouse};
use crate::error::ErrorKind;
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};

/// A warehouse operation that failed; the message names the table, file or statement, and the
/// kind says whose fault it is: [`ErrorKind::Warehouse`] (the database or the disk failed; a
/// retry may help), [`ErrorKind::Configuration`] (the warehouse holds a table that does not
/// fit the job's definition) or [`ErrorKind::BadResponse`] (the upstream sent a value the
/// warehouse cannot store, such as text with a NUL byte; no retry helps).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SinkError {
    /// The database, a file or the state store failed.
    pub fn warehouse(message: impl Into<String>) -> SinkError {
        SinkError { kind: ErrorKind::Warehouse, message: message.into() }
    }

    /// What the warehouse holds does not fit the job's definition.
    pub fn definition(message: impl Into<String>) -> SinkError {
        SinkError { kind: ErrorKind::Configuration, message: message.into() }
    }

    /// The upstream sent a value the warehouse cannot store.
    pub fn unstorable(message: impl Into<String>) -> SinkError {
        SinkError { kind: ErrorKind::BadResponse, message: message.into() }
    }
}

/// Windows to replace, with what the state needs to record about them.
#[derive(Debug)]
pub struct Commit<'a> {
    pub job: &'a Job,
    pub schema: &'a TableSchema,
    /// Start of the job's history, where the watermark starts.
    pub history_start: DateTime<Utc>,
    pub definition_hash: &'a str,
    pub run_id: &'a str,
    /// Requests made for these windows.
    pub requests: u32,
    pub windows: Vec<WindowBatch>,
    /// Windows ending after this instant are incomplete (`include_partial`): their rows are
    /// written, but they are not recorded as loaded, so the watermark never passes them.
    pub partial_after: Option<DateTime<Utc>>,
}

impl Commit<'_> {
    /// Whether `w` is recorded as a complete load.
    pub fn complete(&self, w: &crate::plan::Window) -> bool {
        self.partial_after.is_none_or(|t| w.end <= t)
    }

    /// The watermark after this commit, from the `current` one and the job's contiguous `loads`
    /// (the rule is `state::next_watermark`'s).
    pub fn next_watermark(
        &self,
        current: Option<DateTime<Utc>>,
        loads: &BTreeMap<DateTime<Utc>, DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let latest_complete = self.windows.iter().filter(|w| self.complete(&w.window)).map(|w| w.window.end).max();
        crate::state::next_watermark(self.job.kind, self.history_start, current, loads, latest_complete)
    }
}

/// A job's run lock, held for one run: a PostgreSQL session advisory lock on a connection of its
/// own (closing it releases the lock on every exit path, even a panic or a kill), or an OS file
/// lock on `<path>/_chatetl/<job>.lock` for Parquet.
pub enum JobLock {
    Postgres(postgres::AdvisoryLock),
    File(std::fs::File),
}

impl JobLock {
    /// Releases the lock now (dropping it releases it too).
    pub async fn release(self) {
        match self {
            JobLock::Postgres(l) => l.release().await,
            JobLock::File(f) => drop(f),
        }
    }
}

/// The job a rebuild of `job` loads into: the same definition, its state under
/// `<name>~rebuild` (`~` cannot appear in a job name, so no job collides with it) and its table
/// `_rebuild_<table>` beside the live one (readers skip `_`-prefixed folders; a name too long for
/// PostgreSQL ends in a hash, [`fit_identifier`]). [`Sink::promote`]
/// swaps it in once every window is loaded.
pub fn shadow_job(job: &Job) -> Job {
    Job {
        name: format!("{}{SHADOW_SUFFIX}", job.name),
        table: fit_identifier(format!("_rebuild_{}", job.table)),
        ..job.clone()
    }
}

/// Longest name PostgreSQL keeps (`NAMEDATALEN - 1`); it cuts longer ones silently.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// `name`, or when it is longer than [`MAX_IDENTIFIER_LEN`] its first 54 characters and 8 hex
/// digits of its sha256: distinct long names stay distinct, and a name made from a table's stays
/// the same each time it is made (PostgreSQL would cut both to one 63-character prefix).
pub fn fit_identifier(name: String) -> String {
    if name.len() <= MAX_IDENTIFIER_LEN {
        return name;
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(name.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect();
    let cut = (0..=54).rev().find(|i| name.is_char_boundary(*i)).unwrap_or(0);
    format!("{}_{hash}", &name[..cut])
}

/// What [`shadow_job`] appends to a job's name.
pub const SHADOW_SUFFIX: &str = "~rebuild";

/// Attempts (10 ms apart) before a Parquet job lock counts as held by another process.
const FILE_LOCK_ATTEMPTS: u32 = 20;

/// An open warehouse.
pub enum Sink {
    Postgres(postgres::PostgresSink),
    Parquet(parquet::ParquetSink),
    /// Parquet in an object store, state in PostgreSQL.
    Lake(lake::LakeSink),
}

impl Sink {
    /// Connects (Postgres: and applies the state migrations) or opens the folder (Parquet: its
    /// state database, converting a warehouse of an earlier layout and completing an interrupted
    /// promotion).
    pub async fn open(warehouse: &Warehouse) -> Result<Sink, SinkError> {
        Ok(match warehouse {
            Warehouse::Postgres { url, schema } => Sink::Postgres(postgres::PostgresSink::connect(url, schema).await?),
            Warehouse::Parquet { path } => Sink::Parquet(parquet::ParquetSink::open(path).await?),
            Warehouse::Lake { url, state } => Sink::Lake(lake::LakeSink::open(url, state).await?),
        })
    }

    /// Where data goes, for messages (never a password).
    pub fn describe(&self) -> String {
        match self {
            Sink::Postgres(s) => format!("postgres schema {}", s.schema()),
            Sink::Parquet(s) => format!("parquet {}", s.root().display()),
            Sink::Lake(s) => format!("parquet {}", s.url()),
        }
    }

    /// Creates the job's table (or folder) if needed, registers the job (its definition and
    /// history start) if new, stores the definition's document when the stored hash equals
    /// `definition.hash` but no document was kept yet, and returns the job's state. A table that
    /// lacks one of `schema`'s columns is refused ([`SinkError::definition`], naming
    /// `run --job <job> --rebuild`).
    pub async fn prepare(
        &self,
        job: &Job,
        schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        match self {
            Sink::Postgres(s) => s.prepare(job, schema, history_start, definition).await,
            Sink::Parquet(s) => s.prepare(job, schema, history_start, definition).await,
            Sink::Lake(s) => s.prepare(job, schema, history_start, definition).await,
        }
    }

    /// Adds the nullable value columns `added` (of `schema`) to the job's existing table without
    /// a moment of lost service, stores `definition` as the job's definition and appends `added`
    /// to its `added_columns`. PostgreSQL: `ALTER TABLE … ADD COLUMN` with its comment, in one
    /// transaction with the state. Parquet: every file of the table is rewritten with the new
    /// columns null, so every file carries one schema at all times. Windows loaded before keep
    /// their load's old definition hash: they are the outdated ones. Idempotent: an interrupted
    /// call is completed by the next.
    pub async fn add_columns(
        &self,
        job: &Job,
        schema: &TableSchema,
        added: &[String],
        definition: &Definition,
    ) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.add_columns(job, schema, added, definition).await,
            Sink::Parquet(s) => s.add_columns(job, schema, added, definition).await,
            Sink::Lake(s) => s.add_columns(job, schema, added, definition).await,
        }
    }

    /// Records failed load attempts of windows of `job` (upserting: `attempts` counts up, the
    /// newest error wins). A later successful commit of a window removes its failure.
    pub async fn record_failures(&self, job: &str, failures: &[WindowFailure]) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.record_failures(job, failures).await,
            Sink::Parquet(s) => s.record_failures(job, failures).await,
            Sink::Lake(s) => s.record_failures(job, failures).await,
        }
    }

    /// The windows of `job` whose last load attempt failed, by window start.
    pub async fn window_failures(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        match self {
            Sink::Postgres(s) => s.window_failures(job).await,
            Sink::Parquet(s) => s.window_failures(job).await,
            Sink::Lake(s) => s.window_failures(job).await,
        }
    }

    /// Marks `job`'s runs still recorded as `running` as `died` (finished at `now`, with an
    /// error saying the process ended before the run finished); returns how many. Called by a
    /// run that holds the job's lock, so no live process owns them.
    pub async fn close_abandoned_runs(&self, job: &str, now: DateTime<Utc>) -> Result<u64, SinkError> {
        match self {
            Sink::Postgres(s) => s.close_abandoned_runs(job, now).await,
            Sink::Parquet(s) => s.close_abandoned_runs(job, now).await,
            Sink::Lake(s) => s.close_abandoned_runs(job, now).await,
        }
    }

    /// Replaces `live`'s table and state with `shadow`'s in one atomic step ([`shadow_job`]): a
    /// reader sees the old table or the new one, never neither and never a mix. Afterwards
    /// `live` has the shadow's table, window loads, watermark, definition and runs; the shadow's
    /// state is gone and `live.added_columns` is empty. PostgreSQL: one transaction (drop,
    /// rename, state). Parquet: the two folders are exchanged atomically, then the state moves;
    /// an interrupted promotion is completed when the warehouse is next opened.
    pub async fn promote(&self, live: &Job, shadow: &Job) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.promote(live, shadow).await,
            Sink::Parquet(s) => s.promote(live, shadow).await,
            Sink::Lake(s) => s.promote(live, shadow).await,
        }
    }

    /// Replaces the stored definition hash `from` of `job` (and of its window loads) with `to`:
    /// the same definition under a new hashing scheme (`state::legacy_definition_hash`).
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.adopt_definition_hash(job, from, to).await,
            Sink::Parquet(s) => s.adopt_definition_hash(job, from, to).await,
            Sink::Lake(s) => s.adopt_definition_hash(job, from, to).await,
        }
    }

    /// Takes `job`'s run lock, or `None` when another process holds it.
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<JobLock>, SinkError> {
        match self {
            Sink::Postgres(s) => Ok(s.try_lock_job(job).await?.map(JobLock::Postgres)),
            Sink::Lake(s) => Ok(s.try_lock_job(job).await?.map(JobLock::Postgres)),
            Sink::Parquet(s) => {
                // An OS file lock belongs to the open file, and a process this one forks (any
                // `Command`) holds a copy of every descriptor until it execs: for that instant a
                // lock just released still reads as held. Another chatetl's lock lasts a whole
                // run, so a refusal that persists over a short while is real.
                for _ in 0..FILE_LOCK_ATTEMPTS {
                    if let Some(file) = s.try_lock_job(job)? {
                        return Ok(Some(JobLock::File(file)));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Ok(s.try_lock_job(job)?.map(JobLock::File))
            }
        }
    }

    /// Forgets everything about a shadow job ([`shadow_job`]) before a new rebuild: its table
    /// (folder), window loads, failures, runs and its job record, so its next `prepare`
    /// registers it afresh. Never called for a live job: live history is only ever replaced
    /// whole, by [`Sink::promote`].
    pub async fn reset_job(&self, job: &Job) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.reset_job(job).await,
            Sink::Parquet(s) => s.reset_job(job).await,
            Sink::Lake(s) => s.reset_job(job).await,
        }
    }

    /// Claims state an earlier release kept for `job` without naming its target (PostgreSQL:
    /// rows of the shared `chatetl` schema keyed by job name alone) when this target's schema
    /// holds the job's table; returns whether it did. Parquet state always lived in its folder:
    /// nothing to claim.
    pub async fn claim_legacy_state(&self, job: &Job) -> Result<bool, SinkError> {
        match self {
            Sink::Postgres(s) => s.claim_legacy_state(job).await,
            Sink::Parquet(_) | Sink::Lake(_) => Ok(false),
        }
    }

    /// Whether the warehouse answers (for /healthz).
    pub async fn ping(&self) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.ping().await,
            Sink::Parquet(s) => s.ping().await,
            Sink::Lake(s) => s.ping().await,
        }
    }

    /// Replaces the windows and records the complete ones as loaded (removing their failures);
    /// returns the rows written.
    pub async fn commit(&self, commit: Commit<'_>) -> Result<u64, SinkError> {
        match self {
            Sink::Postgres(s) => s.commit(commit).await,
            Sink::Parquet(s) => s.commit(commit).await,
            Sink::Lake(s) => s.commit(commit).await,
        }
    }

    /// The last load of every loaded window of `job`, by window start.
    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        match self {
            Sink::Postgres(s) => s.window_loads(job).await,
            Sink::Parquet(s) => s.window_loads(job).await,
            Sink::Lake(s) => s.window_loads(job).await,
        }
    }

    /// The stored state of `job` (empty if it was never prepared).
    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        match self {
            Sink::Postgres(s) => s.job_state(job).await,
            Sink::Parquet(s) => s.job_state(job).await,
            Sink::Lake(s) => s.job_state(job).await,
        }
    }

    /// Inserts or updates a run record.
    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.record_run(run).await,
            Sink::Parquet(s) => s.record_run(run).await,
            Sink::Lake(s) => s.record_run(run).await,
        }
    }

    /// Status of each of `jobs` (`windows_outdated` counts loads whose definition hash differs
    /// from the job's stored one).
    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        match self {
            Sink::Postgres(s) => s.status(jobs).await,
            Sink::Parquet(s) => s.status(jobs).await,
            Sink::Lake(s) => s.status(jobs).await,
        }
    }

    /// The PostgreSQL pool where the warehouse keeps its state, which every chatetl process on
    /// it shares (the vendor budget, the daemons' ticks: `crate::budget`); `None` for Parquet.
    pub fn shared_pool(&self) -> Option<&sqlx::PgPool> {
        match self {
            Sink::Postgres(s) => Some(s.pool()),
            Sink::Lake(s) => Some(s.state_pool()),
            Sink::Parquet(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fit_identifier;

    #[test]
    fn long_identifiers_fit_postgres_and_stay_distinct() {
        assert_eq!(fit_identifier("real_chats_natural_key".into()), "real_chats_natural_key");
        let long = |tail: &str| format!("_rebuild_average_purchase_value_in_real_chats_hourly{tail}_bucket_date_idx");
        let (a, b) = (fit_identifier(long("")), fit_identifier(long("_2")));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b, "the same 54-character prefix, different hashes");
        assert_eq!(a, fit_identifier(long("")), "the same name each time");
        assert_eq!(fit_identifier("x".repeat(63)), "x".repeat(63));
    }
}

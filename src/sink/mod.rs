//! Sinks: where loaded windows land, atomically, together with their state.
//!
//! Owns: the one interface the runner uses ([`Sink`]) over the warehouses of `chatetl.yaml`:
//! PostgreSQL (`postgres`: delete-then-`COPY` of the windows in one transaction with their
//! window loads and the watermark) and Parquet (`parquet`: one file per window, written to a temp
//! name, fsynced and renamed into place, then the state file). A closed enum rather than a trait
//! object: adding a warehouse is one file here plus one arm per method, and the compiler finds
//! the forgotten arm.

pub mod parquet;
pub mod postgres;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::batch::{TableSchema, WindowBatch};
use crate::config::{Job, Warehouse};
use crate::error::ErrorKind;
use crate::state::{JobState, JobStatus, RunRecord, WindowLoad};

/// A warehouse operation that failed; the message names the table, file or statement, and the
/// kind says whose fault it is: [`ErrorKind::Warehouse`] (the database or the disk failed; a
/// retry may help) or [`ErrorKind::Configuration`] (the warehouse holds a table that does not
/// fit the job's definition).
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

/// Attempts (10 ms apart) before a Parquet job lock counts as held by another process.
const FILE_LOCK_ATTEMPTS: u32 = 20;

/// An open warehouse.
pub enum Sink {
    Postgres(postgres::PostgresSink),
    Parquet(parquet::ParquetSink),
}

impl Sink {
    /// Connects (Postgres: and applies the state migrations) or opens the folder.
    pub async fn open(warehouse: &Warehouse) -> Result<Sink, SinkError> {
        Ok(match warehouse {
            Warehouse::Postgres { url, schema } => Sink::Postgres(postgres::PostgresSink::connect(url, schema).await?),
            Warehouse::Parquet { path } => Sink::Parquet(parquet::ParquetSink::open(path)?),
        })
    }

    /// Where data goes, for messages (never a password).
    pub fn describe(&self) -> String {
        match self {
            Sink::Postgres(s) => format!("postgres schema {}", s.schema()),
            Sink::Parquet(s) => format!("parquet {}", s.root().display()),
        }
    }

    /// Creates the job's table (or folder) if needed, registers the job, and returns its state.
    pub async fn prepare(
        &self,
        job: &Job,
        schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition_hash: &str,
    ) -> Result<JobState, SinkError> {
        match self {
            Sink::Postgres(s) => s.prepare(job, schema, history_start, definition_hash).await,
            Sink::Parquet(s) => s.prepare(job, history_start, definition_hash).await,
        }
    }

    /// Replaces the stored definition hash `from` of `job` (and of its window loads) with `to`:
    /// the same definition under a new hashing scheme (`state::legacy_definition_hash`).
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.adopt_definition_hash(job, from, to).await,
            Sink::Parquet(s) => s.adopt_definition_hash(job, from, to).await,
        }
    }

    /// Takes `job`'s run lock, or `None` when another process holds it.
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<JobLock>, SinkError> {
        match self {
            Sink::Postgres(s) => Ok(s.try_lock_job(job).await?.map(JobLock::Postgres)),
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

    /// Forgets `job`'s history before a rebuild: drops its table (folder), its window loads and
    /// watermark, and stores `definition_hash` as the definition the new history is loaded with.
    pub async fn reset_job(&self, job: &Job, definition_hash: &str) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.reset_job(job, definition_hash).await,
            Sink::Parquet(s) => s.reset_job(job, definition_hash).await,
        }
    }

    /// Whether the warehouse answers (for /healthz).
    pub async fn ping(&self) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.ping().await,
            Sink::Parquet(s) => s.ping(),
        }
    }

    /// Replaces the windows and records them; returns the rows written.
    pub async fn commit(&self, commit: Commit<'_>) -> Result<u64, SinkError> {
        match self {
            Sink::Postgres(s) => s.commit(commit).await,
            Sink::Parquet(s) => s.commit(commit).await,
        }
    }

    /// The last load of every loaded window of `job`, by window start.
    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        match self {
            Sink::Postgres(s) => s.window_loads(job).await,
            Sink::Parquet(s) => s.window_loads(job),
        }
    }

    /// The stored state of `job` (empty if it was never prepared).
    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        match self {
            Sink::Postgres(s) => s.job_state(job).await,
            Sink::Parquet(s) => s.job_state(job),
        }
    }

    /// Inserts or updates a run record.
    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.record_run(run).await,
            Sink::Parquet(s) => s.record_run(run).await,
        }
    }

    /// Status of each of `jobs`.
    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        match self {
            Sink::Postgres(s) => s.status(jobs).await,
            Sink::Parquet(s) => s.status(jobs),
        }
    }
}

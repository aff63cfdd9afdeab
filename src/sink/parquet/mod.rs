//! The Parquet warehouse: one folder per table, one file per partition period, state in SQLite.
//!
//! ```text
//! <root>/<table>/year=2024/month=3/data.parquet             windowed jobs (day or hour windows)
//! <root>/<table>/year=2024/month=3/day=7/data.parquet       snapshot jobs
//! <root>/_rebuild_<table>/…                                 a rebuild's shadow table
//! <root>/_chatetl/state.db                                  jobs, window loads, failures, runs
//! <root>/_chatetl/<job>.lock                                a job's run lock
//! ```
//!
//! Owns: [`ParquetSink`], the warehouse side of every `Sink` method. A partition is the local
//! month (snapshot jobs: the local day) of a window's start in the job's zone; hive keys are
//! integers without leading zeros (`month=3`), which pyarrow, DuckDB, polars and Spark all type as
//! integers (DuckDB reads `month=03` as text). A commit
//! groups its windows by partition and, for each, merges them into the current file (its rows of
//! the committed windows dropped, the new rows in time order) and replaces it atomically
//! (`files`); partitions of one table are written one writer at a time in this process (the job
//! lock excludes other processes), while fetches still overlap. Only when every partition of a
//! commit is in place is the state committed (`store`), so a crash redoes windows, never skips
//! them. Every file of a table has the table's current schema: added columns are written into a
//! copy of the whole table that is swapped in ([`ParquetSink::add_columns`]), and a rebuild's
//! shadow folder is exchanged with the live one ([`ParquetSink::promote`]). A warehouse of the
//! previous layout (a file per window, JSON state) is converted when opened (`convert`).

mod convert;
pub(super) mod files;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::SchemaRef;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

pub use files::{DATA_FILE, data_files, partition_of, writer_properties};

use super::{Commit, SinkError};
use crate::batch::TableSchema;
use crate::config::{Job, JobKind};
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};
use store::{NewLoad, Promotion, Store};

/// The folder of chatetl's own files in the warehouse root.
const STATE_DIR: &str = "_chatetl";

/// The marker a promotion writes into the shadow folder before the exchange; it holds the
/// promotion's id, so the folder it is found in says whether the exchange happened.
const PROMOTION_MARKER: &str = ".chatetl-promotion";

/// The prefix `sink::shadow_job` gives a rebuild's table.
const SHADOW_PREFIX: &str = "_rebuild_";

/// Prefix of the work folder a table is rewritten in when columns are added, beside it.
const ADD_COLUMNS_PREFIX: &str = "_add_columns_";

/// A folder of Parquet tables and its state database.
pub struct ParquetSink {
    root: PathBuf,
    store: Store,
    /// One writer per partition file in this process.
    partitions: std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

fn io_err(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> SinkError {
    move |e| SinkError::warehouse(format!("{what}: {e}"))
}

/// Opens (creating) a lock file, for an OS lock on it.
fn open_lock_file(path: &Path) -> Result<std::fs::File, SinkError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("cannot open lock file {}", path.display())))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::warehouse(format!("a file task failed: {e}")))?
}

/// The table's schema for its files: the batch schema, named for the live table (a shadow's
/// files become the live table's when promoted).
pub(super) fn file_schema(schema: &TableSchema) -> SchemaRef {
    let table = schema.table.strip_prefix(SHADOW_PREFIX).unwrap_or(&schema.table);
    files::with_table_name(&schema.arrow_schema(), table)
}

/// The value columns of `schema` that a table's files (whose schema is `found`, as read from
/// the file `example` of the table `table`) lack, to be added; a lacking key or time column
/// means the table holds something else, and is refused with the remedy.
pub(super) fn lacking_columns(
    job: &Job,
    schema: &TableSchema,
    found: &arrow_schema::Schema,
    table: &str,
    example: &str,
) -> Result<Vec<String>, SinkError> {
    let name = &job.name;
    let missing: Vec<String> =
        schema.column_names().into_iter().filter(|c| found.field_with_name(c).is_err()).collect();
    // Value columns the files lack (an endpoint that gained a field in a chatetl release) are
    // added to every file at once; a missing key or time column means the table holds something
    // else.
    let keys: Vec<&String> = missing.iter().filter(|c| !schema.metrics.iter().any(|m| &m.name == *c)).collect();
    if keys.is_empty() {
        return Ok(missing);
    }
    let remedy = match job.kind {
        JobKind::Windowed => format!(
            "the job's definition changed since they were written: `chatetl run --job {name} --rebuild` reloads the \
             history into a new table and swaps it in"
        ),
        JobKind::Snapshot => "a snapshot's captures cannot be fetched again, so chatetl never rebuilds its table: \
             give the job a new `table:`"
            .to_string(),
    };
    Err(SinkError::definition(format!(
        "job {name}: the files of table {table} lack key columns {keys:?} (for example {example}); {remedy}"
    )))
}

impl ParquetSink {
    /// Opens (creating) the warehouse folder and its state database, converts a warehouse of
    /// the previous layout, and completes promotions a crash interrupted.
    pub async fn open(root: &Path) -> Result<ParquetSink, SinkError> {
        let state_dir = root.join(STATE_DIR);
        std::fs::create_dir_all(&state_dir)
            .map_err(io_err(format!("cannot create warehouse folder {}", state_dir.display())))?;
        let store = Store::open(&state_dir.join("state.db")).await?;
        let sink = ParquetSink { root: root.to_path_buf(), store, partitions: Default::default() };
        convert::convert(&sink.root, &sink.store).await?;
        for p in sink.store.promotions().await? {
            // The process promoting holds the job's lock; only an abandoned promotion is ours.
            let Some(lock) = sink.try_lock_job(&p.live_job)? else { continue };
            info!(job = %p.live_job, table = %p.live_table, "completing an interrupted promotion");
            // The live table is whole either way; a promotion that cannot finish now is tried
            // again at the next open.
            if let Err(error) = sink.finish_promotion(&p).await {
                warn!(job = %p.live_job, table = %p.live_table, %error, "cannot complete the interrupted promotion");
            }
            drop(lock);
        }
        Ok(sink)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.root.join(table)
    }

    fn file_schema(schema: &TableSchema) -> SchemaRef {
        file_schema(schema)
    }

    /// Creates the table folder, refuses one whose files lack a column of `schema`, registers
    /// the job if new, and returns its state.
    pub async fn prepare(
        &self,
        job: &Job,
        schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        let dir = self.table_dir(&job.table);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("job {}: cannot create {}", job.name, dir.display())))?;
        let (name, owned_job, owned_schema) = (job.name.clone(), job.clone(), schema.clone());
        let work = self.root.join(format!("{ADD_COLUMNS_PREFIX}{}", job.table));
        let lacking = blocking(move || {
            // A copy an interrupted column addition left (half built, or the old table after
            // the swap): never data, but a `root/**` glob would read it.
            files::remove_dir_all(&work).map_err(io_err(format!("job {name}: cannot remove {}", work.display())))?;
            // One walk of the table folder: its temp files go, its first data file speaks for all
            // (every file has the table's one schema).
            let found = files::scan(&dir).map_err(io_err(format!("job {name}: cannot list {}", dir.display())))?;
            let temps = files::remove_temp_files(&found)
                .map_err(io_err(format!("job {name}: cannot remove temp files below {}", dir.display())))?;
            if temps > 0 {
                info!(job = %name, files = temps, "removed temp files an interrupted write left");
            }
            let Some(first) = found.data.first() else { return Ok(Vec::new()) };
            let found = files::read_schema(first).map_err(|e| SinkError::warehouse(format!("job {name}: {e}")))?;
            lacking_columns(&owned_job, &owned_schema, &found, &dir.display().to_string(), &first.display().to_string())
        })
        .await?;
        if !lacking.is_empty() {
            let rewritten = self.rewrite_with_schema(job, schema).await?;
            info!(job = %job.name, table = %job.table, files = rewritten, columns = ?lacking, "value columns of the endpoint added to the table");
        }
        self.store.register(&job.name, history_start, definition).await?;
        self.store.job_state(&job.name).await
    }

    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        self.store.job_state(job).await
    }

    /// The in-process writer lock of one partition file.
    fn partition_lock(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(path.to_path_buf()).or_default().clone()
    }

    /// Merges the windows into their partitions, each replaced atomically, then records the
    /// complete ones and moves the watermark.
    pub async fn commit(&self, c: Commit<'_>) -> Result<u64, SinkError> {
        let table_dir = self.table_dir(&c.job.table);
        let schema = Self::file_schema(c.schema);
        let mut by_partition: BTreeMap<PathBuf, Vec<(files::Span, arrow_array::RecordBatch)>> = BTreeMap::new();
        let mut rows = 0u64;
        for w in &c.windows {
            rows += w.batch.num_rows() as u64;
            let batch = files::project(&w.batch, &schema)
                .map_err(|e| SinkError::warehouse(format!("job {}: window {}: {e}", c.job.name, w.window.start)))?;
            let partition = table_dir.join(partition_of(c.job.kind, c.job.time_zone, w.window.start)).join(DATA_FILE);
            let span = (w.window.start.timestamp_micros(), w.window.end.timestamp_micros());
            by_partition.entry(partition).or_default().push((span, batch));
        }
        for (path, windows) in by_partition {
            // Owned and moved into the file task: a commit dropped mid-way (a shutdown past its
            // grace) releases the partition only when the task that writes it has ended.
            let writer = self.partition_lock(&path).lock_owned().await;
            let (schema, table_dir, time) = (schema.clone(), table_dir.clone(), c.schema.time_column);
            let job = c.job.name.clone();
            blocking(move || {
                let _writer = writer;
                let what = format!("job {job}: cannot replace partition {}", path.display());
                files::commit_partition(&path, &schema, windows, time, &table_dir, &what)
            })
            .await?;
        }
        let loads: Vec<NewLoad> = c
            .windows
            .iter()
            .filter(|w| c.complete(&w.window))
            .map(|w| NewLoad {
                window_start: w.window.start,
                window_end: w.window.end,
                rows: w.batch.num_rows() as u64,
                requests: c.requests,
                run_id: c.run_id,
                definition_hash: c.definition_hash,
            })
            .collect();
        self.store.commit(&c.job.name, c.job.kind, &loads, |current, spans| c.next_watermark(current, spans)).await?;
        Ok(rows)
    }

    /// An OS lock on `_chatetl/<job>.lock`, released when the file closes (or the process ends).
    pub fn try_lock_job(&self, job: &str) -> Result<Option<std::fs::File>, SinkError> {
        let path = self.root.join(STATE_DIR).join(format!("{job}.lock"));
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(format!("cannot lock {}", path.display()))(e)),
        }
    }

    /// Removes a shadow job's folder and forgets its state.
    pub async fn reset_job(&self, job: &Job) -> Result<(), SinkError> {
        let dir = self.table_dir(&job.table);
        files::remove_dir_all(&dir).map_err(io_err(format!("job {}: cannot remove {}", job.name, dir.display())))?;
        self.store.forget(&job.name).await
    }

    /// See `Sink::adopt_definition_hash`.
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        self.store.adopt_definition_hash(job, from, to).await
    }

    /// Rewrites every file of the job's table with `schema` (the added columns null) into a work
    /// folder and swaps it in, so every file keeps one schema at every instant; then stores the
    /// definition and the added columns. A call interrupted before the swap starts over; one
    /// interrupted after it finds every file already with `schema` and only updates the state.
    pub async fn add_columns(
        &self,
        job: &Job,
        schema: &TableSchema,
        added: &[String],
        definition: &Definition,
    ) -> Result<(), SinkError> {
        let rewritten = self.rewrite_with_schema(job, schema).await?;
        info!(job = %job.name, table = %job.table, files = rewritten, columns = ?added, "columns added to the table");
        self.store.add_columns(&job.name, added, definition).await
    }

    /// Rewrites every file of `job`'s table with `schema`'s columns (those a file lacks: null)
    /// in a work folder and swaps it in, so every file has one schema at all times; returns the
    /// files rewritten (0 when all had the schema already).
    async fn rewrite_with_schema(&self, job: &Job, schema: &TableSchema) -> Result<usize, SinkError> {
        let (root, dir) = (self.root.clone(), self.table_dir(&job.table));
        let work = self.root.join(format!("{ADD_COLUMNS_PREFIX}{}", job.table));
        let (target, name) = (Self::file_schema(schema), job.name.clone());
        blocking(move || {
            let what = format!("job {name}: cannot add columns to table {}", dir.display());
            // Leftovers of an interrupted call: a half-built copy, or the old table after the swap.
            files::remove_dir_all(&work).map_err(io_err(&what))?;
            let found = files::data_files(&dir).map_err(io_err(&what))?;
            let mut stale = Vec::new();
            for f in &found {
                let s = files::read_schema(f).map_err(|e| SinkError::warehouse(format!("{what}: {e}")))?;
                if s.fields() != target.fields() {
                    stale.push(f);
                }
            }
            if stale.is_empty() {
                return Ok(0);
            }
            for f in &found {
                let rel = f.strip_prefix(&dir).expect("found below the table folder");
                let batches = files::read_projected(f, &target, &what)?
                    .ok_or_else(|| SinkError::warehouse(format!("{what}: {} vanished", f.display())))?;
                files::replace(&work.join(rel), &target, &batches, &work).map_err(io_err(&what))?;
            }
            files::exchange(&root, &dir, &work).map_err(io_err(&what))?;
            files::remove_dir_all(&work).map_err(io_err(&what))?;
            Ok(found.len())
        })
        .await
    }

    /// See `Sink::record_failures`.
    pub async fn record_failures(&self, job: &str, failures: &[WindowFailure]) -> Result<(), SinkError> {
        self.store.record_failures(job, failures).await
    }

    /// See `Sink::window_failures`.
    pub async fn window_failures(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        self.store.window_failures(job).await
    }

    /// See `Sink::close_abandoned_runs`.
    /// Also completes a promotion of `job` a dead process left half-done (a long-running
    /// daemon never opens the warehouse again, so [`ParquetSink::open`] alone would not): the
    /// caller holds the job's lock.
    pub async fn close_abandoned_runs(&self, job: &str, now: DateTime<Utc>) -> Result<u64, SinkError> {
        for p in self.store.promotions().await?.into_iter().filter(|p| p.live_job == job) {
            info!(job = %p.live_job, table = %p.live_table, "completing an interrupted promotion");
            self.finish_promotion(&p).await?;
        }
        self.store.close_abandoned_runs(job, now).await
    }

    /// Exchanges the shadow folder with the live one and moves the shadow's state to the live
    /// job. Crash-safe: the promotion is recorded (with an id, also written as a marker file
    /// inside the shadow folder) before the exchange, so [`ParquetSink::open`] can tell from where
    /// the marker is whether the exchange happened, and finishes the rest.
    pub async fn promote(&self, live: &Job, shadow: &Job) -> Result<(), SinkError> {
        let p = Promotion {
            live_job: live.name.clone(),
            shadow_job: shadow.name.clone(),
            live_table: live.table.clone(),
            shadow_table: shadow.table.clone(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            moved: false,
        };
        self.store.begin_promotion(&p).await?;
        self.finish_promotion(&p).await
    }

    /// The steps of a promotion from wherever it stopped.
    async fn finish_promotion(&self, p: &Promotion) -> Result<(), SinkError> {
        let (root, live_dir, shadow_dir) =
            (self.root.clone(), self.table_dir(&p.live_table), self.table_dir(&p.shadow_table));
        let what = format!("job {}: cannot promote table {} over {}", p.live_job, p.shadow_table, p.live_table);
        if !p.moved {
            let (id, failed, live, shadow) = (p.id.clone(), what.clone(), live_dir.clone(), shadow_dir.clone());
            // The marker in the live folder: the exchange happened. Elsewhere: it did not.
            let shadow_missing = blocking(move || {
                if std::fs::read_to_string(live.join(PROMOTION_MARKER)).ok().as_deref() != Some(id.as_str()) {
                    if !shadow.is_dir() {
                        return Ok(true);
                    }
                    let marker = shadow.join(PROMOTION_MARKER);
                    let err = io_err(&failed);
                    files::write_atomic(&marker, |f| std::io::Write::write_all(f, id.as_bytes())).map_err(&err)?;
                    files::exchange(&root, &live, &shadow).map_err(&err)?;
                }
                Ok(false)
            })
            .await?;
            if shadow_missing {
                // Not exchanged, and nothing to exchange: the live table and state stay as they
                // are, and the shadow's loads are forgotten so the next rebuild loads it all again.
                self.store.forget(&p.shadow_job).await?;
                self.store.end_promotion(&p.live_job).await?;
                return Err(SinkError::warehouse(format!(
                    "{what}: the shadow folder {} is missing; `chatetl run --job {} --rebuild` loads it again",
                    self.table_dir(&p.shadow_table).display(),
                    p.live_job
                )));
            }
            self.store.move_promoted_state(p).await?;
        }
        blocking(move || {
            let err = io_err(&what);
            match std::fs::remove_file(live_dir.join(PROMOTION_MARKER)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
            // The old table, now under the shadow's name.
            files::remove_dir_all(&shadow_dir).map_err(&err)
        })
        .await?;
        self.store.end_promotion(&p.live_job).await?;
        info!(job = %p.live_job, table = %p.live_table, "the rebuilt table replaced the live one");
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), SinkError> {
        std::fs::metadata(&self.root).map_err(io_err(format!("warehouse folder {}", self.root.display())))?;
        self.store.ping().await
    }

    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        self.store.window_loads(job).await
    }

    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        self.store.record_run(run).await
    }

    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(self.store.status(job).await?);
        }
        Ok(out)
    }
}

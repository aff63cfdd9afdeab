//! The Parquet warehouse: `<path>/<table>/date=YYYY-MM-DD/[hour=HH/]part-<window start>.parquet`,
//! one file per window, zstd-compressed; state in `<path>/_chatetl/<job>.json`.
//!
//! Owns: where a window's file lives, writing it atomically (temp name in the same folder, fsync,
//! rename over the old file, fsync of the folder), and recording the load in the state file only
//! after the data is in place. File names carry the window's UTC start (`20241027T000000Z`), so the
//! repeated autumn hour gets two files in its `hour=03` folder. Partition folders are the local
//! date (and hour) in the job's zone; the zone is also in each file's metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{Commit, SinkError};
use crate::batch::TableSchema;
use crate::config::{Job, WindowUnit};
use crate::plan::Window;
use crate::state::file::{FileState, write_atomic};
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};

/// A folder of Parquet partitions.
pub struct ParquetSink {
    root: PathBuf,
    state: FileState,
}

/// The file holding `window` of `job`'s table under `root`.
pub fn window_path(root: &Path, job: &Job, window: &Window) -> PathBuf {
    let local = window.start.with_timezone(&job.time_zone);
    let mut dir = root.join(&job.table).join(format!("date={}", local.format("%Y-%m-%d")));
    if matches!(job.window, WindowUnit::Hour | WindowUnit::Snapshot) {
        dir = dir.join(format!("hour={}", local.format("%H")));
    }
    dir.join(format!("part-{}.parquet", window.start.format("%Y%m%dT%H%M%SZ")))
}

impl ParquetSink {
    /// Opens (creating) the warehouse folder.
    pub async fn open(root: &Path) -> Result<ParquetSink, SinkError> {
        std::fs::create_dir_all(root)
            .map_err(|e| SinkError::warehouse(format!("cannot create warehouse folder {}: {e}", root.display())))?;
        Ok(ParquetSink { root: root.to_path_buf(), state: FileState::new(root) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Registers the job (its definition hash and history start) if new, and returns its state.
    pub async fn prepare(
        &self,
        job: &Job,
        _schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        let definition_hash = definition.hash.as_str();
        let dir = self.root.join(&job.table);
        std::fs::create_dir_all(&dir)
            .map_err(|e| SinkError::warehouse(format!("job {}: cannot create {}: {e}", job.name, dir.display())))?;
        self.state
            .update(&job.name, |s| {
                if s.definition_hash.is_none() {
                    s.definition_hash = Some(definition_hash.to_string());
                    s.history_start = Some(history_start);
                }
                JobState { definition_hash: s.definition_hash.clone(), watermark: s.watermark, ..JobState::default() }
            })
            .await
            .map_err(|e| SinkError::warehouse(format!("job {}: {e}", job.name)))
    }

    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        let s = self.state.read(job).map_err(SinkError::warehouse)?;
        Ok(JobState { definition_hash: s.definition_hash, watermark: s.watermark, ..JobState::default() })
    }

    /// Writes each window's file, then records the loads and moves the watermark.
    pub async fn commit(&self, c: Commit<'_>) -> Result<u64, SinkError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
            .set_max_row_group_row_count(Some(64 * 1024))
            .build();
        let mut rows = 0u64;
        let mut written = Vec::new();
        for w in &c.windows {
            let path = window_path(&self.root, c.job, &w.window);
            let props = props.clone();
            let batch = w.batch.clone();
            let target = path.clone();
            tokio::task::spawn_blocking(move || {
                write_atomic(&target, |f| {
                    let mut writer =
                        ArrowWriter::try_new(f, batch.schema(), Some(props)).map_err(std::io::Error::other)?;
                    writer.write(&batch).map_err(std::io::Error::other)?;
                    writer.close().map_err(std::io::Error::other)?;
                    Ok(())
                })
            })
            .await
            .map_err(|e| SinkError::warehouse(format!("writer task failed: {e}")))?
            .map_err(|e| SinkError::warehouse(format!("cannot write {}: {e}", path.display())))?;
            rows += w.batch.num_rows() as u64;
            written.push((w.window, w.batch.num_rows() as u64));
        }
        let now = Utc::now();
        self.state
            .update(&c.job.name, |s| {
                for (window, n) in written.iter().filter(|(w, _)| c.complete(w)) {
                    s.windows.insert(
                        window.start,
                        WindowLoad {
                            window_start: window.start,
                            window_end: window.end,
                            rows: *n,
                            requests: c.requests,
                            run_id: c.run_id.to_string(),
                            definition_hash: c.definition_hash.to_string(),
                            loaded_at: now,
                        },
                    );
                }
                let spans: BTreeMap<DateTime<Utc>, DateTime<Utc>> =
                    s.windows.values().map(|l| (l.window_start, l.window_end)).collect();
                s.watermark = c.next_watermark(s.watermark, &spans);
            })
            .await
            .map_err(SinkError::warehouse)?;
        Ok(rows)
    }

    /// An OS lock on `_chatetl/<job>.lock`, released when the file closes (or the process ends).
    pub fn try_lock_job(&self, job: &str) -> Result<Option<std::fs::File>, SinkError> {
        let dir = self.root.join("_chatetl");
        std::fs::create_dir_all(&dir)
            .map_err(|e| SinkError::warehouse(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{job}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| SinkError::warehouse(format!("cannot open lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(SinkError::warehouse(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }

    /// Removes the job's folder and forgets its loads and watermark.
    pub async fn reset_job(&self, job: &Job) -> Result<(), SinkError> {
        let definition_hash = "";
        let dir = self.root.join(&job.table);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SinkError::warehouse(format!("cannot remove {}: {e}", dir.display()))),
        }
        self.state
            .update(&job.name, |s| {
                s.windows.clear();
                s.watermark = None;
                s.definition_hash = Some(definition_hash.to_string());
            })
            .await
            .map_err(SinkError::warehouse)
    }

    /// See `Sink::adopt_definition_hash`.
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        self.state
            .update(job, |s| {
                if s.definition_hash.as_deref() == Some(from) {
                    s.definition_hash = Some(to.to_string());
                }
                for w in s.windows.values_mut().filter(|w| w.definition_hash == from) {
                    w.definition_hash = to.to_string();
                }
            })
            .await
            .map_err(SinkError::warehouse)
    }

    /// See `Sink::add_columns`.
    pub async fn add_columns(
        &self,
        _job: &Job,
        _schema: &TableSchema,
        _added: &[String],
        _definition: &Definition,
    ) -> Result<(), SinkError> {
        Err(SinkError::warehouse("add_columns: not implemented yet"))
    }

    /// See `Sink::record_failures`.
    pub async fn record_failures(&self, _job: &str, _failures: &[WindowFailure]) -> Result<(), SinkError> {
        Err(SinkError::warehouse("record_failures: not implemented yet"))
    }

    /// See `Sink::window_failures`.
    pub async fn window_failures(&self, _job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        Err(SinkError::warehouse("window_failures: not implemented yet"))
    }

    /// See `Sink::close_abandoned_runs`.
    pub async fn close_abandoned_runs(&self, _job: &str, _now: DateTime<Utc>) -> Result<u64, SinkError> {
        Err(SinkError::warehouse("close_abandoned_runs: not implemented yet"))
    }

    /// See `Sink::promote`.
    pub async fn promote(&self, _live: &Job, _shadow: &Job) -> Result<(), SinkError> {
        Err(SinkError::warehouse("promote: not implemented yet"))
    }

    pub async fn ping(&self) -> Result<(), SinkError> {
        std::fs::metadata(&self.root)
            .map(|_| ())
            .map_err(|e| SinkError::warehouse(format!("warehouse folder {}: {e}", self.root.display())))
    }

    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        Ok(self.state.read(job).map_err(SinkError::warehouse)?.windows)
    }

    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        self.state.update(&run.job, |s| s.upsert_run(run)).await.map_err(SinkError::warehouse)
    }

    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        jobs.iter()
            .map(|job| {
                let s = self.state.read(job).map_err(SinkError::warehouse)?;
                Ok(JobStatus {
                    job: job.clone(),
                    watermark: s.watermark,
                    definition_hash: s.definition_hash,
                    windows_loaded: s.windows.len() as u64,
                    rows_loaded: s.windows.values().map(|w| w.rows).sum(),
                    windows_failed: 0,
                    windows_outdated: 0,
                    added_columns: Vec::new(),
                    last_success: None,
                    last_error: s.runs.iter().rev().find_map(|r| r.error.clone()),
                    last_error_kind: s.runs.iter().rev().find(|r| r.error.is_some()).and_then(|r| r.error_kind),
                    last_run: s.runs.last().cloned(),
                })
            })
            .collect()
    }
}

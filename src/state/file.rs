//! State of the Parquet warehouse: one JSON file per job under `<root>/_chatetl/`.
//!
//! Owns: reading and atomically replacing `<root>/_chatetl/<job>.json` (temp file, fsync, rename,
//! fsync of the folder) and [`write_atomic`], which the Parquet sink uses for data files too. The
//! file is written only after the data it describes is in place, so a crash between the two makes
//! the next run redo that window, never skip it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{RunRecord, WindowLoad};

/// Runs kept per job in the state file.
const RUNS_KEPT: usize = 200;

/// Everything remembered of one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    pub job: String,
    pub definition_hash: Option<String>,
    pub history_start: Option<DateTime<Utc>>,
    pub watermark: Option<DateTime<Utc>>,
    /// Last successful load per window start.
    pub windows: BTreeMap<DateTime<Utc>, WindowLoad>,
    /// Most recent last.
    pub runs: Vec<RunRecord>,
}

impl JobFile {
    /// Inserts or replaces a run record, keeping the newest [`RUNS_KEPT`].
    pub fn upsert_run(&mut self, run: &RunRecord) {
        match self.runs.iter_mut().find(|r| r.run_id == run.run_id) {
            Some(r) => *r = run.clone(),
            None => self.runs.push(run.clone()),
        }
        if self.runs.len() > RUNS_KEPT {
            let excess = self.runs.len() - RUNS_KEPT;
            self.runs.drain(..excess);
        }
    }
}

/// The `_chatetl/` folder of a Parquet warehouse.
#[derive(Debug)]
pub struct FileState {
    dir: PathBuf,
    /// Serializes read-modify-write cycles within this process.
    lock: tokio::sync::Mutex<()>,
}

impl FileState {
    pub fn new(root: &Path) -> FileState {
        FileState { dir: root.join("_chatetl"), lock: tokio::sync::Mutex::new(()) }
    }

    fn path(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.json"))
    }

    /// The job's state; empty when it has none yet.
    pub fn read(&self, job: &str) -> Result<JobFile, String> {
        let path = self.path(job);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("corrupt state file {}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(JobFile { job: job.to_string(), ..JobFile::default() })
            }
            Err(e) => Err(format!("cannot read state file {}: {e}", path.display())),
        }
    }

    /// Reads, changes and atomically writes back the job's state.
    pub async fn update<T>(&self, job: &str, change: impl FnOnce(&mut JobFile) -> T) -> Result<T, String> {
        let _guard = self.lock.lock().await;
        let mut state = self.read(job)?;
        let out = change(&mut state);
        let path = self.path(job);
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        write_atomic(&path, |f| f.write_all(&bytes))
            .map_err(|e| format!("cannot write state file {}: {e}", path.display()))?;
        Ok(out)
    }

    /// Names of the jobs that have state.
    pub fn jobs(&self) -> Result<Vec<String>, String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot list {}: {e}", self.dir.display())),
        };
        let mut jobs: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(String::from))
            .collect();
        jobs.sort();
        Ok(jobs)
    }
}

/// Writes `path` whole or not at all: a temp file in the same folder, fsynced, renamed over
/// `path`, then the folder fsynced so the rename survives a crash.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("path has no folder"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

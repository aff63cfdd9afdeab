//! Conversion of a Parquet warehouse written by the previous release: a file per window
//! (`<table>/date=YYYY-MM-DD/[hour=HH/]part-<UTC start>.parquet`, the folder the window start's
//! local date) and a JSON state file per job (`_chatetl/<job>.json`).
//!
//! Owns: the legacy state file's format ([`JobFile`], read only) and [`convert`], run by
//! `ParquetSink::open`: (1) every JSON file is imported into the state database (upserts, so
//! importing twice changes nothing); (2) each table's window files (only those chatetl wrote)
//! are regrouped into the new partitions in a work folder beside the table, each read back, and
//! the work folder is swapped in for the table in one atomic step, so readers never see a row
//! twice; (3) the JSON files move to `_chatetl/converted/`. A crash at any point leaves a
//! warehouse the next open converts from there, without losing or doubling a row. Delete this
//! module once no warehouse of that layout remains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_schema::{Field, Schema, SchemaRef};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::store::Store;
use super::{files, io_err};
use crate::config::JobKind;
use crate::sink::SinkError;
use crate::state::{RunRecord, WindowLoad};

/// Everything the previous release remembered of one job, in `_chatetl/<job>.json`.
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

/// Where converted JSON state files are kept.
const CONVERTED_DIR: &str = "converted";

/// A window file of the previous layout.
struct LegacyFile {
    path: PathBuf,
    /// The local date of its window's start (its `date=` folder).
    date: NaiveDate,
}

/// Converts whatever of the previous layout `root` still holds (nothing to do: a few folder
/// listings).
pub async fn convert(root: &Path, store: &Store) -> Result<(), SinkError> {
    let state_dir = root.join(super::STATE_DIR);
    let (json, tables) = legacy(root).await?;
    if json.is_empty() && tables.is_empty() {
        return Ok(());
    }
    // One converting process at a time: another one opening the warehouse now waits here, then
    // finds what is left (nothing, when the first one finished).
    let lock_path = state_dir.join("convert.lock");
    let lock = super::open_lock_file(&lock_path)?;
    let lock = super::blocking(move || {
        lock.lock().map_err(io_err(format!("cannot lock {}", lock_path.display())))?;
        Ok(lock)
    })
    .await?;
    let (json, tables) = legacy(root).await?;
    remove_work_folders(root)?;
    info!(root = %root.display(), state_files = json.len(), tables = tables.len(), "converting a warehouse of the previous layout");
    for path in &json {
        let bytes = std::fs::read(path).map_err(io_err(format!("cannot read state file {}", path.display())))?;
        let state: JobFile = serde_json::from_slice(&bytes).map_err(|e| {
            SinkError::definition(format!(
                "cannot convert state file {}: it is not a chatetl state file: {e}",
                path.display()
            ))
        })?;
        let job = path.file_stem().and_then(|s| s.to_str()).unwrap_or(&state.job).to_string();
        let loads: Vec<WindowLoad> = state.windows.values().cloned().collect();
        store
            .import(&job, state.definition_hash.as_deref(), state.history_start, state.watermark, &loads, &state.runs)
            .await?;
        info!(job = %job, windows = loads.len(), runs = state.runs.len(), "state imported from {}", path.display());
    }
    for table in tables {
        let (name, files) = (table.dir.display().to_string(), table.files.len());
        let partitions = super::blocking(move || convert_table(table)).await?;
        info!(table = %name, files, partitions, "table converted to monthly or daily partitions");
    }
    if !json.is_empty() {
        let converted = state_dir.join(CONVERTED_DIR);
        std::fs::create_dir_all(&converted).map_err(io_err(format!("cannot create {}", converted.display())))?;
        for path in &json {
            let to = converted.join(path.file_name().expect("a file name"));
            std::fs::rename(path, &to).map_err(io_err(format!(
                "cannot move {} to {}",
                path.display(),
                to.display()
            )))?;
        }
        std::fs::File::open(&state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("cannot sync {}", state_dir.display())))?;
    }
    info!(root = %root.display(), "conversion complete");
    drop(lock);
    Ok(())
}

/// What `root` holds of the previous layout: JSON state files and table folders.
async fn legacy(root: &Path) -> Result<(Vec<PathBuf>, Vec<LegacyTable>), SinkError> {
    let json = legacy_state_files(&root.join(super::STATE_DIR))?;
    let root = root.to_path_buf();
    let tables = super::blocking(move || legacy_tables(&root)).await?;
    Ok((json, tables))
}

/// The `_chatetl/<job>.json` files, sorted.
fn legacy_state_files(state_dir: &Path) -> Result<Vec<PathBuf>, SinkError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .map_err(io_err(format!("cannot list {}", state_dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    Ok(out)
}

/// A table folder of the previous layout and its window files.
struct LegacyTable {
    dir: PathBuf,
    files: Vec<LegacyFile>,
}

/// Each table folder of `root` holding `date=` folders.
fn legacy_tables(root: &Path) -> Result<Vec<LegacyTable>, SinkError> {
    let mut out = Vec::new();
    for table in std::fs::read_dir(root).map_err(io_err(format!("cannot list {}", root.display())))? {
        let table = table.map_err(io_err(format!("cannot list {}", root.display())))?.path();
        let is_table = table.file_name().and_then(|n| n.to_str()).is_some_and(files::is_data_name);
        if !is_table || !table.is_dir() {
            continue;
        }
        let (mut legacy, mut has_date_dirs) = (Vec::new(), false);
        for entry in std::fs::read_dir(&table).map_err(io_err(format!("cannot list {}", table.display())))? {
            let dir = entry.map_err(io_err(format!("cannot list {}", table.display())))?.path();
            let Some(date) = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("date=")) else {
                continue;
            };
            let Ok(date) = NaiveDate::parse_from_str(date, "%Y-%m-%d") else { continue };
            has_date_dirs = true;
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).map_err(io_err(format!("cannot list {}", d.display())))? {
                    let p = e.map_err(io_err(format!("cannot list {}", d.display())))?.path();
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                    if p.is_dir() {
                        stack.push(p);
                    } else if name.starts_with("part-") && name.ends_with(".parquet") {
                        legacy.push(LegacyFile { path: p, date });
                    }
                }
            }
        }
        if has_date_dirs {
            legacy.sort_by(|a, b| a.path.cmp(&b.path));
            // Another tool's table in the same layout (Spark writes `date=…/part-….parquet`):
            // its first file carries no chatetl.table metadata naming the folder.
            let name = table.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let ours = match legacy.first() {
                Some(f) => files::read_schema(&f.path)
                    .map(|s| s.metadata().get("chatetl.table").is_some_and(|t| *t == name))
                    .unwrap_or(false),
                None => true,
            };
            if ours {
                out.push(LegacyTable { dir: table, files: legacy });
            }
        }
    }
    Ok(out)
}

/// Regroups a table's window files into partitions in a work folder beside it, then swaps the
/// work folder in for the table's in one atomic step, so a reader sees the old layout or the new
/// one, never both (every row twice) and never neither; returns the partitions written. A crash
/// before the swap leaves the table as it was (the work folder is discarded by the next open).
///
/// Only files chatetl wrote are converted (their `chatetl.table` metadata names the folder): a
/// folder of another tool's files in the same layout (Spark writes `date=…/part-….parquet` too) is
/// left alone, and a table folder mixing both is refused rather than touched.
fn convert_table(table: LegacyTable) -> Result<usize, SinkError> {
    let (table_dir, legacy) = (table.dir.as_path(), table.files);
    let what = format!("cannot convert table {}", table_dir.display());
    let name = table_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let root = table_dir.parent().expect("a table folder is inside the warehouse folder");
    let mut schemas = Vec::new();
    for f in &legacy {
        schemas.push(files::read_schema(&f.path).map_err(|e| SinkError::warehouse(format!("{what}: {e}")))?);
    }
    let ours = |s: &SchemaRef| s.metadata().get("chatetl.table").is_some_and(|t| *t == name);
    match schemas.iter().zip(&legacy).find(|(s, _)| !ours(s)) {
        None => {}
        Some(_) if !schemas.iter().any(ours) => {
            info!(folder = %table_dir.display(), "not a chatetl table (its files carry no chatetl.table metadata): left alone");
            return Ok(0);
        }
        Some((_, foreign)) => {
            return Err(SinkError::definition(format!(
                "{what}: it mixes chatetl's files with others (for example {}); move those out of the warehouse folder",
                foreign.path.display()
            )));
        }
    }
    // One schema for the whole table: the newest file's (by window start), with any column
    // only older files have appended, so no value is dropped.
    let Some(newest) = legacy.iter().zip(&schemas).max_by_key(|(f, _)| window_start_of(&f.path)).map(|(_, s)| s) else {
        return Ok(0);
    };
    let mut fields: Vec<Field> = newest.fields().iter().map(|f| f.as_ref().clone()).collect();
    for s in &schemas {
        for field in s.fields() {
            if !fields.iter().any(|x| x.name() == field.name()) {
                fields.push(field.as_ref().clone().with_nullable(true));
            }
        }
    }
    let schema = SchemaRef::new(Schema::new_with_metadata(fields, newest.metadata().clone()));
    let (kind, time) = match schema.field_with_name("captured_at") {
        Ok(_) => (JobKind::Snapshot, "captured_at"),
        Err(_) => (JobKind::Windowed, "bucket_start"),
    };
    // Partitions already in the new layout (a table converted by hand, or half by a test) are
    // merged too: the old files' windows replace their rows, the rest is kept.
    let mut by_partition: BTreeMap<PathBuf, (Option<PathBuf>, Vec<&LegacyFile>)> = BTreeMap::new();
    for existing in files::data_files(table_dir).map_err(io_err(&what))? {
        let rel = existing.strip_prefix(table_dir).expect("below the table folder").to_path_buf();
        by_partition.entry(rel).or_default().0 = Some(existing);
    }
    for f in &legacy {
        let rel = files::partition_of_date(kind, f.date).join(files::DATA_FILE);
        by_partition.entry(rel).or_default().1.push(f);
    }
    let work = root.join(format!("{WORK_PREFIX}{name}"));
    files::remove_dir_all(&work).map_err(io_err(&what))?;
    let written = by_partition.len();
    for (rel, (existing, old)) in by_partition {
        let mut windows = Vec::new();
        for f in old {
            let batches = files::read_projected(&f.path, &schema, &what)?.ok_or_else(|| {
                SinkError::warehouse(format!("{what}: {} vanished while converting", f.path.display()))
            })?;
            for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
                let span = time_span(&batch, time).ok_or_else(|| {
                    SinkError::warehouse(format!("{what}: {} has rows without a {time} column", f.path.display()))
                })?;
                windows.push((span, batch));
            }
        }
        let existing = match existing {
            Some(path) => files::read_projected(&path, &schema, &what)?.unwrap_or_default(),
            None => Vec::new(),
        };
        let merged = files::merge(existing, windows, time);
        let target = work.join(&rel);
        files::replace(&target, &schema, &merged, &work).map_err(io_err(&what))?;
        // Read back what was written: the swap below makes it the table.
        let expected: usize = merged.iter().map(|b| b.num_rows()).sum();
        let got: usize = match files::read(&target).map_err(|e| SinkError::warehouse(format!("{what}: {e}")))? {
            Some((_, batches)) => batches.iter().map(|b| b.num_rows()).sum(),
            None => 0,
        };
        if got != expected {
            return Err(SinkError::warehouse(format!(
                "{what}: {} holds {got} rows after writing {expected}; the table is left as it was",
                target.display()
            )));
        }
    }
    std::fs::create_dir_all(&work).map_err(io_err(&what))?;
    files::exchange(root, table_dir, &work).map_err(io_err(&what))?;
    // The work folder now holds the old layout.
    files::remove_dir_all(&work).map_err(io_err(&what))?;
    Ok(written)
}

/// Prefix of the work folder a table is converted in, beside it (`_`: never data to readers).
const WORK_PREFIX: &str = "_convert_";

/// Removes the work folders a conversion interrupted by a crash left in `root`.
fn remove_work_folders(root: &Path) -> Result<(), SinkError> {
    for entry in std::fs::read_dir(root).map_err(io_err(format!("cannot list {}", root.display())))? {
        let path = entry.map_err(io_err(format!("cannot list {}", root.display())))?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(WORK_PREFIX)) && path.is_dir() {
            files::remove_dir_all(&path).map_err(io_err(format!("cannot remove {}", path.display())))?;
        }
    }
    Ok(())
}

/// `part-20241027T000000Z.parquet` → its window start (for ordering; the epoch if unparsable).
fn window_start_of(path: &Path) -> DateTime<Utc> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("part-"))
        .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok())
        .map(|t| t.and_utc())
        .unwrap_or_default()
}

/// The half-open span of a window file's rows (`None` without rows). The rows of other windows
/// lie outside it, since windows never overlap.
fn time_span(batch: &RecordBatch, time: &str) -> Option<files::Span> {
    let times = batch.column_by_name(time)?.as_primitive::<TimestampMicrosecondType>();
    let (min, max) = (times.values().iter().min()?, times.values().iter().max()?);
    Some((*min, *max + 1))
}

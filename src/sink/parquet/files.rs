//! The files of a Parquet warehouse: where a window's partition lives, reading a partition,
//! merging committed windows into it, and replacing files and folders atomically.
//!
//! Owns: the layout (`<table>/year=2024/month=3/data.parquet` for windowed jobs,
//! `…/month=3/day=7/data.parquet` for snapshot jobs, by the window start's local date), the writer
//! settings (zstd, chunk statistics), [`merge`] (an existing partition's rows minus the committed
//! windows, with the new rows, in time order, written as slices: nothing is copied or re-sorted),
//! [`project`] (rows of a file onto the table's current schema, missing columns null),
//! [`write_atomic`] (temp file in the same folder, fsync, rename, fsync of the folder) and
//! [`exchange`] (two folders swapped in one step). Names starting with `.` or `_` are never data:
//! temp files, markers and work folders use them, and readers skip them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{Schema, SchemaRef};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;

use crate::config::JobKind;
use crate::sink::SinkError;

/// The one data file of a partition folder.
pub const DATA_FILE: &str = "data.parquet";

/// Rows read per batch (a month of hourly rows is a few batches).
const READ_BATCH_ROWS: usize = 64 * 1024;

/// The partition folder (relative to the table folder) holding a window starting at `start`.
pub fn partition_of(kind: JobKind, tz: Tz, start: DateTime<Utc>) -> PathBuf {
    partition_of_date(kind, start.with_timezone(&tz).date_naive())
}

/// The partition folder of a window whose start has the local date `date`.
pub fn partition_of_date(kind: JobKind, date: NaiveDate) -> PathBuf {
    // No leading zeros: DuckDB types `month=03` as text, `month=3` as an integer.
    let month = PathBuf::from(format!("year={}", date.year())).join(format!("month={}", date.month()));
    match kind {
        JobKind::Windowed => month,
        JobKind::Snapshot => month.join(format!("day={}", date.day())),
    }
}

/// Whether a file or folder name is data (not a temp file, marker or work folder).
pub fn is_data_name(name: &str) -> bool {
    !name.starts_with('.') && !name.starts_with('_')
}

/// What a table folder holds: its data files and the temp files interrupted writes left.
#[derive(Debug, Default)]
pub struct Scan {
    /// `data.parquet` files below data folders, sorted.
    pub data: Vec<PathBuf>,
    /// Hidden `.data.parquet.tmp-…` files below data folders.
    pub temps: Vec<PathBuf>,
}

/// Walks the data folders below `table_dir` once (an empty [`Scan`] when it does not exist).
pub fn scan(table_dir: &Path) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let mut stack = vec![table_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type()?.is_dir();
            if is_dir && is_data_name(&name) {
                stack.push(entry.path());
            } else if !is_dir && name == DATA_FILE {
                out.data.push(entry.path());
            } else if !is_dir && name.starts_with('.') && name.contains(".tmp-") {
                out.temps.push(entry.path());
            }
        }
    }
    out.data.sort();
    Ok(out)
}

/// Every data file below `table_dir` (empty when it does not exist), sorted.
pub fn data_files(table_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(scan(table_dir)?.data)
}

/// `create_dir_all`, with each folder it creates made durable (its parent fsynced), so a power
/// cut after a file is renamed into a new `year=…/month=…` folder cannot lose the folder while
/// the state, committed after, says the file is there.
pub fn create_dir_all_durably(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for created in missing.into_iter().rev() {
        match std::fs::create_dir(created) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Removes the temp files of `scan` (left by interrupted writes: hidden from readers but still
/// bytes on disk); returns how many. Called with the job's lock held, so no write of the table
/// is in flight.
pub fn remove_temp_files(scan: &Scan) -> std::io::Result<usize> {
    for path in &scan.temps {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(scan.temps.len())
}

/// The settings every data file is written with.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        // Min/max per column chunk is what readers prune with; page statistics and indexes would
        // add a footer larger than a small partition's data.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .build()
}

/// The schema and rows of a Parquet file; `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .with_batch_size(READ_BATCH_ROWS);
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some((schema, batches)))
}

/// The rows of the Parquet file `path` on `schema` ([`project`]); `None` when it does not
/// exist. Errors start with `what`: a file that cannot be read is the disk's (a retry may help),
/// one whose rows do not fit `schema` the definition's.
pub fn read_projected(path: &Path, schema: &SchemaRef, what: &str) -> Result<Option<Vec<RecordBatch>>, SinkError> {
    let Some((_, batches)) = read(path).map_err(|e| SinkError::warehouse(format!("{what}: {e}")))? else {
        return Ok(None);
    };
    let projected = batches.iter().map(|b| project(b, schema)).collect::<Result<Vec<_>, _>>();
    projected.map(Some).map_err(|e| SinkError::definition(format!("{what}: {}: {e}", path.display())))
}

/// The schema of a Parquet file (its footer only).
pub fn read_schema(path: &Path) -> Result<SchemaRef, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(builder.schema().clone())
}

/// `batch` with `schema`'s columns: taken by name, null where `batch` lacks one. A column of
/// `batch` that `schema` lacks is dropped when it holds only nulls (an added column whose
/// definition was reverted) and refused otherwise: dropping it would lose values.
pub fn project(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    if batch.schema().fields() == schema.fields() {
        return RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| e.to_string());
    }
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if schema.field_with_name(field.name()).is_err() && column.null_count() != column.len() {
            return Err(format!(
                "it holds values in column {}, which the table's definition does not have",
                field.name()
            ));
        }
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => {
                Err(format!("column {} is {}, the table's definition says {}", f.name(), c.data_type(), f.data_type()))
            }
            None if f.is_nullable() => Ok(new_null_array(f.data_type(), batch.num_rows())),
            None => Err(format!("it lacks column {}, which cannot be null", f.name())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// A half-open span of the time column, in microseconds.
pub type Span = (i64, i64);

/// The rows of a partition after a commit, in time order, as slices of `existing` (the current
/// file's batches, sorted by time) and of `new` (each window's span and rows, sorted): the
/// existing rows whose time is inside a committed window are dropped, the window's new rows take
/// their place. Every batch has `schema`'s columns already.
pub fn merge(existing: Vec<RecordBatch>, new: Vec<(Span, RecordBatch)>, time_column: &str) -> Vec<RecordBatch> {
    let mut bounds: Vec<i64> = new.iter().flat_map(|((s, e), _)| [*s, *e]).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let inside = |t: i64| new.iter().any(|((s, e), _)| *s <= t && t < *e);
    // (first time, piece): the existing rows outside every committed window, then the new rows.
    let mut pieces: Vec<(i64, RecordBatch)> =
        existing.iter().flat_map(|batch| cut(batch, time_column, &bounds, &inside)).collect();
    for (_, batch) in new {
        if let Some(first) = batch.column_by_name(time_column).filter(|t| !t.is_empty()) {
            let first = first.as_primitive::<TimestampMicrosecondType>().value(0);
            pieces.push((first, batch));
        }
    }
    pieces.sort_by_key(|(t, _)| *t);
    pieces.into_iter().map(|(_, b)| b).collect()
}

/// Rows below which an existing row group is decoded and written again with a commit's rows
/// instead of copied as it is: small commits (a scheduler's few windows, one capture) never
/// leave a file of tiny row groups, and what a commit re-encodes stays bounded.
pub const MIN_COPIED_ROW_GROUP_ROWS: usize = 32 * 1024;

/// Rows per row group written ([`writer_properties`] says the same to the `ArrowWriter`).
const MAX_ROW_GROUP_ROWS: usize = 128 * 1024;

/// What the new partition file is made of, in time order.
enum Piece {
    /// Row group `i` of the current file, copied as its compressed bytes.
    Copy(usize),
    /// Rows to encode.
    Rows(RecordBatch),
}

/// Replaces the committed windows `new` (each window's span and rows, sorted, with `schema`'s
/// columns) in the partition file `path`, atomically, as [`merge`] and [`replace`] would, but
/// without decoding what the commit does not touch: a row group of the current file whose time
/// range (its statistics) meets no committed window and that holds at least
/// [`MIN_COPIED_ROW_GROUP_ROWS`] rows is copied into the new file as its compressed bytes; the
/// others are decoded, lose their rows inside the committed windows, and are encoded again with
/// the new rows. A backfill therefore encodes each row once and compresses nothing twice, where
/// rewriting the whole month made its cost grow with the month's rows already written. Row
/// groups stay in time order and never overlap, so the file reads as one sorted run. A file
/// whose schema is not exactly `schema` (written before a column was added) is decoded whole.
/// Errors start with `what`.
pub fn commit_partition(
    path: &Path,
    schema: &SchemaRef,
    new: Vec<(Span, RecordBatch)>,
    time_column: &str,
    stop: &Path,
    what: &str,
) -> Result<(), SinkError> {
    let disk = |e: String| SinkError::warehouse(format!("{what}: {e}"));
    let source = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(disk(format!("cannot open {}: {e}", path.display()))),
    };
    let Some(source) = source else {
        let batches: Vec<RecordBatch> = new.into_iter().map(|(_, b)| b).collect();
        return replace(path, schema, &batches, stop).map_err(|e| disk(e.to_string()));
    };
    let unreadable = |e: parquet::errors::ParquetError| disk(format!("cannot read {}: {e}", path.display()));
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(&source)
        .map_err(unreadable)?;
    let reader = ArrowReaderMetadata::try_new(Arc::new(metadata), Default::default()).map_err(unreadable)?;
    let time_leaf = schema.index_of(time_column).ok();
    if reader.schema().fields() != schema.fields() || time_leaf.is_none() {
        let existing = read_projected(path, schema, what)?.unwrap_or_default();
        let merged = merge(existing, new, time_column);
        return replace(path, schema, &merged, stop).map_err(|e| disk(e.to_string()));
    }
    let time_leaf = time_leaf.expect("checked");
    let spans: Vec<Span> = new.iter().map(|(span, _)| *span).collect();
    let mut bounds: Vec<i64> = spans.iter().flat_map(|(s, e)| [*s, *e]).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let inside = |t: i64| spans.iter().any(|(s, e)| *s <= t && t < *e);
    // (first time, source order, piece): the source order is the row group's index (new rows
    // come last), so pieces starting at one instant keep the file's order.
    let mut pieces: Vec<(i64, usize, Piece)> = Vec::new();
    for (i, group) in reader.metadata().row_groups().iter().enumerate() {
        let range = match group.column(time_leaf).statistics() {
            Some(parquet::file::statistics::Statistics::Int64(s)) => {
                s.min_opt().zip(s.max_opt()).map(|(a, b)| (*a, *b))
            }
            _ => None,
        };
        let copy = range.filter(|(min, max)| {
            group.num_rows() as usize >= MIN_COPIED_ROW_GROUP_ROWS && !spans.iter().any(|(s, e)| s <= max && min < e)
        });
        if let Some((min, _)) = copy {
            pieces.push((min, i, Piece::Copy(i)));
            continue;
        }
        let file = source.try_clone().map_err(|e| disk(format!("cannot read {}: {e}", path.display())))?;
        let rows = ParquetRecordBatchReaderBuilder::new_with_metadata(file, reader.clone())
            .with_row_groups(vec![i])
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(unreadable)?;
        for batch in rows {
            let batch = batch.map_err(|e| disk(format!("cannot read {}: {e}", path.display())))?;
            let batch = project(&batch, schema)
                .map_err(|e| SinkError::definition(format!("{what}: {}: {e}", path.display())))?;
            for (first, piece) in cut(&batch, time_column, &bounds, &inside) {
                pieces.push((first, i, Piece::Rows(piece)));
            }
        }
    }
    for (_, batch) in new {
        if let Some(first) = batch.column_by_name(time_column).filter(|t| !t.is_empty()) {
            let first = first.as_primitive::<TimestampMicrosecondType>().value(0);
            pieces.push((first, usize::MAX, Piece::Rows(batch)));
        }
    }
    if pieces.is_empty() {
        return replace(path, schema, &[], stop).map_err(|e| disk(e.to_string()));
    }
    pieces.sort_by_key(|(first, order, _)| (*first, *order));
    let groups = reader.metadata().row_groups();
    let page_index = reader.metadata().page_index();
    write_atomic(path, |f| {
        let (mut writer, factory) = ArrowWriter::try_new(f, schema.clone(), Some(writer_properties()))
            .and_then(|w| w.into_serialized_writer())
            .map_err(std::io::Error::other)?;
        let mut pending: Vec<RecordBatch> = Vec::new();
        for (_, _, piece) in pieces {
            match piece {
                Piece::Rows(batch) => {
                    let mut batch = batch;
                    loop {
                        let room = MAX_ROW_GROUP_ROWS - pending.iter().map(|b| b.num_rows()).sum::<usize>();
                        if batch.num_rows() < room {
                            pending.push(batch);
                            break;
                        }
                        pending.push(batch.slice(0, room));
                        batch = batch.slice(room, batch.num_rows() - room);
                        encode_row_group(&mut writer, &factory, schema, std::mem::take(&mut pending))?;
                    }
                }
                Piece::Copy(i) => {
                    encode_row_group(&mut writer, &factory, schema, std::mem::take(&mut pending))?;
                    let group = &groups[i];
                    let mut out = writer.next_row_group().map_err(std::io::Error::other)?;
                    for (c, column) in group.columns().iter().enumerate() {
                        let close = ColumnCloseResult {
                            bytes_written: column.compressed_size() as u64,
                            rows_written: group.num_rows() as u64,
                            metadata: column.clone(),
                            bloom_filter: None,
                            column_index: page_index.and_then(|p| p.column_index(i, c)).cloned(),
                            offset_index: page_index.and_then(|p| p.offset_index(i, c)).cloned(),
                        };
                        out.append_column(&source, close).map_err(std::io::Error::other)?;
                    }
                    out.close().map_err(std::io::Error::other)?;
                }
            }
        }
        encode_row_group(&mut writer, &factory, schema, pending)?;
        writer.close().map_err(std::io::Error::other)?;
        Ok(())
    })
    .map_err(|e| disk(e.to_string()))
}

/// Encodes `batches` (together at most [`MAX_ROW_GROUP_ROWS`] rows) as the next row group of
/// `writer`; nothing when they hold no rows.
fn encode_row_group<W: std::io::Write + Send>(
    writer: &mut SerializedFileWriter<W>,
    factory: &ArrowRowGroupWriterFactory,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> std::io::Result<()> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(());
    }
    let index = writer.flushed_row_groups().len();
    let mut columns = factory.create_column_writers(index).map_err(std::io::Error::other)?;
    for batch in &batches {
        let mut leaves = columns.iter_mut();
        for (field, array) in schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, array).map_err(std::io::Error::other)? {
                let column = leaves.next().ok_or_else(|| std::io::Error::other("more leaves than columns"))?;
                column.write(&leaf).map_err(std::io::Error::other)?;
            }
        }
    }
    let mut group = writer.next_row_group().map_err(std::io::Error::other)?;
    for column in columns {
        column
            .close()
            .map_err(std::io::Error::other)?
            .append_to_row_group(&mut group)
            .map_err(std::io::Error::other)?;
    }
    group.close().map_err(std::io::Error::other)?;
    Ok(())
}

/// The rows of `batch` (sorted by `time_column`) outside the committed windows, as slices with
/// their first time: cut at every window bound in `bounds`, so each slice lies wholly inside a
/// committed window (dropped) or wholly outside all of them (kept).
fn cut(
    batch: &RecordBatch,
    time_column: &str,
    bounds: &[i64],
    inside: &impl Fn(i64) -> bool,
) -> Vec<(i64, RecordBatch)> {
    let Some(times) = batch.column_by_name(time_column) else { return Vec::new() };
    let times = times.as_primitive::<TimestampMicrosecondType>().values();
    let mut cuts: Vec<usize> = bounds.iter().map(|b| times.partition_point(|t| t < b)).collect();
    cuts.push(0);
    cuts.push(times.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .filter(|pair| pair[0] < pair[1] && !inside(times[pair[0]]))
        .map(|pair| (times[pair[0]], batch.slice(pair[0], pair[1] - pair[0])))
        .collect()
}

/// Writes `batches` (all of `schema`) as the Parquet file `path`, atomically; with no rows,
/// removes `path` instead, and the folders it leaves empty up to `stop`.
pub fn replace(path: &Path, schema: &SchemaRef, batches: &[RecordBatch], stop: &Path) -> std::io::Result<()> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let dir = path.parent().unwrap_or(stop);
        File::open(dir)?.sync_all()?;
        return remove_empty_dirs(dir, stop);
    }
    write_atomic(path, |f| {
        let mut writer =
            ArrowWriter::try_new(f, schema.clone(), Some(writer_properties())).map_err(std::io::Error::other)?;
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            writer.write(b).map_err(std::io::Error::other)?;
        }
        writer.close().map_err(std::io::Error::other)?;
        Ok(())
    })
}

/// Removes `dir` and its parents while they are empty, stopping at `stop` (kept).
pub fn remove_empty_dirs(dir: &Path, stop: &Path) -> std::io::Result<()> {
    let mut at = dir.to_path_buf();
    while at != stop && at.starts_with(stop) {
        match std::fs::remove_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not empty (ENOTEMPTY, or EEXIST on some systems): a sibling still holds data.
            Err(_) => return Ok(()),
        }
        let Some(parent) = at.parent() else { break };
        at = parent.to_path_buf();
    }
    File::open(stop)
        .and_then(|d| d.sync_all())
        .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
}

/// Writes `path` whole or not at all: a temp file (dot-prefixed, so readers skip it) in the same
/// folder, fsynced, renamed over `path`, then the folder fsynced so the rename survives a crash.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("path has no folder"))?;
    create_dir_all_durably(dir)?;
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

/// Swaps folders `a` and `b` (both in `parent`) in one step: afterwards `a` holds what `b` held
/// and `b` what `a` held; when `a` does not exist, `b` is renamed to `a`. Linux exchanges them
/// atomically (`renameat2` with `RENAME_EXCHANGE`), so a reader of `a` sees the old folder or the
/// new one, never neither. Elsewhere it takes two renames (`a` → a temp name, `b` → `a`): for
/// the instant between them `a` does not exist, and a reader listing it then finds no table.
pub fn exchange(parent: &Path, a: &Path, b: &Path) -> std::io::Result<()> {
    if !a.exists() {
        std::fs::rename(b, a)?;
    } else {
        exchange_existing(a, b)?;
    }
    File::open(parent)?.sync_all()
}

#[cfg(target_os = "linux")]
fn exchange_existing(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (ca, cb) = (cstr(a)?, cstr(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call; AT_FDCWD resolves them
    // as given (absolute or relative to the working directory).
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        // NFS and some FUSE filesystems cannot exchange two folders: retrying cannot help.
        return Err(std::io::Error::other(format!(
            "the filesystem of {} cannot exchange two folders in one step (renameat2 RENAME_EXCHANGE: {e}), which \
             rebuilds and added columns need; put the Parquet warehouse on a local filesystem",
            a.display()
        )));
    }
    Err(e)
}

#[cfg(not(target_os = "linux"))]
fn exchange_existing(a: &Path, b: &Path) -> std::io::Result<()> {
    let parent = a.parent().ok_or_else(|| std::io::Error::other("folder has no parent"))?;
    let name = a.file_name().and_then(|n| n.to_str()).unwrap_or("table");
    let aside = parent.join(format!(".{name}.exchange-{}", uuid::Uuid::new_v4().simple()));
    std::fs::rename(a, &aside)?;
    // Between these two renames `a` does not exist.
    std::fs::rename(b, a)?;
    std::fs::rename(&aside, b)
}

/// Removes a folder and everything below it; a missing folder is fine.
pub fn remove_dir_all(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `schema` with its `chatetl.table` metadata set to `table`.
pub fn with_table_name(schema: &SchemaRef, table: &str) -> SchemaRef {
    let mut metadata = schema.metadata().clone();
    metadata.insert("chatetl.table".to_string(), table.to_string());
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, TimeUnit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn batch(times: &[i64], v: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![v; times.len()])),
            ],
        )
        .unwrap()
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64)> {
        batches
            .iter()
            .flat_map(|b| {
                let t = b.column(0).as_primitive::<TimestampMicrosecondType>().clone();
                let v = b.column(1).as_primitive::<arrow_array::types::Int64Type>().clone();
                (0..b.num_rows()).map(move |i| (t.value(i), v.value(i)))
            })
            .collect()
    }

    #[test]
    fn merge_replaces_the_committed_windows_and_keeps_time_order() {
        let existing = vec![batch(&[1, 2, 5, 7], 0), batch(&[8, 12], 0)];
        // [2, 6) replaced (rows 2 and 5 go), [9, 10) is new between 8 and 12, [20, 21) is empty.
        let new = vec![((2, 6), batch(&[3, 4], 1)), ((9, 10), batch(&[9], 1)), ((20, 21), batch(&[], 1))];
        let merged = merge(existing, new, "t");
        assert_eq!(rows(&merged), vec![(1, 0), (3, 1), (4, 1), (7, 0), (8, 0), (9, 1), (12, 0)]);
    }

    fn row_groups(path: &Path) -> Vec<(i64, usize)> {
        let meta = ParquetMetaDataReader::new().parse_and_finish(&File::open(path).unwrap()).unwrap();
        meta.row_groups().iter().map(|g| (g.column(0).data_page_offset(), g.num_rows() as usize)).collect()
    }

    fn file_rows(path: &Path) -> Vec<(i64, i64)> {
        rows(&read(path).unwrap().unwrap().1)
    }

    #[test]
    fn a_commit_copies_the_row_groups_it_does_not_touch_and_replaces_those_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("year=2024/month=3").join(DATA_FILE);
        let n = MIN_COPIED_ROW_GROUP_ROWS as i64 + 10;
        let first: Vec<i64> = (0..n).collect();
        commit_partition(&path, &schema(), vec![((0, n), batch(&first, 0))], "t", dir.path(), "t").unwrap();
        // A later window: the first group is copied as it is, the new rows are a group of their own.
        commit_partition(&path, &schema(), vec![((n + 100, n + 200), batch(&[n + 150], 1))], "t", dir.path(), "t")
            .unwrap();
        let groups = row_groups(&path);
        assert_eq!(groups.iter().map(|g| g.1).collect::<Vec<_>>(), [n as usize, 1]);
        let mut want: Vec<(i64, i64)> = first.iter().map(|t| (*t, 0)).collect();
        want.push((n + 150, 1));
        assert_eq!(file_rows(&path), want);
        // A window before everything, one inside the small group: the big group is still copied;
        // the small one is decoded, and its row outside the window kept, in time order.
        let new = vec![((-10, -5), batch(&[-7], 2)), ((n + 100, n + 160), batch(&[n + 120], 3))];
        commit_partition(&path, &schema(), new, "t", dir.path(), "t").unwrap();
        let mut want: Vec<(i64, i64)> = vec![(-7, 2)];
        want.extend(first.iter().map(|t| (*t, 0)));
        want.push((n + 120, 3));
        assert_eq!(file_rows(&path), want);
        assert_eq!(row_groups(&path).iter().map(|g| g.1).collect::<Vec<_>>(), [1, n as usize, 1]);
        // A window inside the big group: it is decoded and written again without its rows there.
        commit_partition(&path, &schema(), vec![((5, 15), batch(&[9], 4))], "t", dir.path(), "t").unwrap();
        let mut want: Vec<(i64, i64)> = vec![(-7, 2)];
        want.extend((0..5).map(|t| (t, 0)));
        want.push((9, 4));
        want.extend((15..n).map(|t| (t, 0)));
        want.push((n + 120, 3));
        assert_eq!(file_rows(&path), want);
        // Replacing every window with no rows removes the file.
        let all = vec![((-10, n + 200), batch(&[], 0))];
        commit_partition(&path, &schema(), all, "t", dir.path(), "t").unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn project_fills_missing_columns_with_nulls_and_refuses_to_drop_values() {
        let narrow = Arc::new(Schema::new(vec![schema().field(0).clone()]));
        let b = RecordBatch::try_new(narrow.clone(), vec![batch(&[1, 2], 0).column(0).clone()]).unwrap();
        let wide = project(&b, &schema()).unwrap();
        assert_eq!(wide.column(1).null_count(), 2);
        assert!(project(&batch(&[1], 5), &narrow).unwrap_err().contains("column v"));
        let nulls = project(&wide, &narrow).unwrap();
        assert_eq!(nulls.num_columns(), 1, "an all-null column the table lacks is dropped");
    }

    #[test]
    fn partitions_are_months_or_days_of_the_local_start_with_integer_keys() {
        let tz: Tz = "Europe/Helsinki".parse().unwrap();
        let t = DateTime::parse_from_rfc3339("2024-03-31T22:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(partition_of(JobKind::Windowed, tz, t), PathBuf::from("year=2024/month=4"));
        assert_eq!(partition_of(JobKind::Snapshot, tz, t), PathBuf::from("year=2024/month=4/day=1"));
    }

    #[test]
    fn temp_files_left_by_an_interrupted_write_are_removed_and_data_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let month = dir.path().join("year=2024/month=3");
        std::fs::create_dir_all(&month).unwrap();
        write_atomic(&month.join(DATA_FILE), |f| std::io::Write::write_all(f, b"data")).unwrap();
        std::fs::write(month.join(".data.parquet.tmp-0123abcd"), b"half").unwrap();
        std::fs::write(dir.path().join(".data.parquet.tmp-ffff"), b"half").unwrap();
        let found = scan(dir.path()).unwrap();
        assert_eq!(found.data, [month.join(DATA_FILE)]);
        assert_eq!(remove_temp_files(&found).unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(&month).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [DATA_FILE]);
        assert_eq!(remove_temp_files(&scan(&dir.path().join("missing")).unwrap()).unwrap(), 0);
    }

    #[test]
    fn folders_are_created_durably_and_an_existing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        create_dir_all_durably(&dir.path().join("t/year=2024/month=3")).unwrap();
        assert!(dir.path().join("t/year=2024/month=3").is_dir());
        create_dir_all_durably(&dir.path().join("t/year=2024/month=3")).unwrap();
        create_dir_all_durably(dir.path()).unwrap();
    }
}

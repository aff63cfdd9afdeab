//! The Parquet warehouse over years of history: partitions sized for a year of hourly windows and
//! a year of 5-minute snapshots, writers and rebuilds SIGKILLed while readers read, conversion of
//! the previous per-window layout, and added columns without a moment of lost service.
//!
//! Parquet is read back with the parquet crate directly and the state database with SQL, never
//! through chatetl's readback. Readers that must see one folder whole (a rebuild's swap, an added
//! column's swap) open the table folder once and read through that descriptor
//! (`/proc/self/fd/N`), as a reader listing the folder at one instant would.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use chatetl::config::{JobKind, Warehouse};
use chatetl::simulator::{FaultConfig, RunningSimulator};
use chatetl::sink::{Commit, Sink};
use chrono::{DateTime, DurationRound, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::util::{
    Dump, Rows, TOKEN, TableReading, TestWarehouse, chatetl, dump, parquet_files, parquet_rows, parquet_state_db,
    parquet_window_rows, read_dump, serve, try_read_table, write_config,
};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;
const JOB: &str = "chats";
const LOAD_METADATA: [&str; 3] = ["_window_start", "_loaded_at", "_run_id"];
/// How long anything waited for may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(120);

/// The chat_sessions job `chats` with `window`s (`hour` or `day`) over `scopes`, `per_request`
/// windows per request, and `more` aggregations after its count of chats.
fn job_file(window: &str, start: &str, scopes: &str, per_request: u32, more: &str) -> (&'static str, String) {
    (
        "chats.yaml",
        format!(
            "description: Chats per {window}\nsource: giosg\nendpoint: chat_sessions\nwindow: {window}\n\
             scopes: [{scopes}]\nmax_windows_per_request: {per_request}\naggregations:\n  - {{ type: count, column: chats }}\n\
             {more}start: {start}\nlookback_windows: 0\n"
        ),
    )
}

fn hourly_job(start: &str, scopes: &str, per_request: u32, more: &str) -> (&'static str, String) {
    job_file("hour", start, scopes, per_request, more)
}

/// A dumped dataset served on loopback, and a Parquet warehouse configured for it.
struct Env {
    dir: tempfile::TempDir,
    dump: Dump,
    sim: RunningSimulator,
    config: PathBuf,
    wh: PathBuf,
    org: String,
}

impl Env {
    async fn new(dataset: &[&str], jobs: &[(&str, String)]) -> Env {
        let dump = dump(dataset);
        let sim = serve(&dump.path).await;
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wh");
        let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), jobs);
        let org = sim.handle.dataset().organizations[0].id.clone();
        Env { dir, dump, sim, config, wh, org }
    }

    fn table(&self) -> PathBuf {
        self.wh.join(JOB)
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        chatetl(&all)
    }

    /// `cli` that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "chatetl {args:?}:\n{out}\n{err}");
        out
    }

    /// The job's entry of `status --json`.
    fn status(&self) -> Value {
        let out = self.ok(&["status", "--json"]);
        let all: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        all.into_iter().find(|s| s["job"] == JOB).unwrap_or_else(|| panic!("no {JOB} in {out}"))
    }

    /// A `chatetl` child with `args` whose stderr is read line by line.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
            .args(["--config", self.config.to_str().unwrap(), "--log-format", "json"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Chats (and messages) per hour bucket of the org scope in [from, to), from the dump.
    fn expected_hours(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeMap<DateTime<Utc>, (f64, f64)> {
        let mut out = BTreeMap::new();
        let mut t = from;
        while t < to {
            out.insert(t, (0.0, 0.0));
            t += chrono::Duration::hours(1);
        }
        let (_, rows) = read_dump(&self.dump.path);
        for r in rows.iter().filter(|r| r.s("owner_organization_id") == self.org && r.s("scope") == "org") {
            if let Some(v) = out.get_mut(&r.time.duration_trunc(chrono::Duration::hours(1)).unwrap()) {
                v.0 += 1.0;
                v.1 += r.n("user_message_count");
            }
        }
        out
    }
}

fn local(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    chatetl::time::local_day_start(HEL, NaiveDate::from_ymd_opt(y, m, d).unwrap())
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// The value of `column` in a rendered row.
fn cell<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    &row.iter().find(|(c, _)| c == column).unwrap_or_else(|| panic!("no column {column} in {row:?}")).1
}

/// Org-scope `column` per bucket start of a table's rendered rows (each bucket once).
fn per_bucket(rows: &Rows, column: &str) -> BTreeMap<DateTime<Utc>, Option<f64>> {
    let mut out = BTreeMap::new();
    for r in rows.iter().filter(|r| cell(r, "scope") == "org") {
        let v = match cell(r, column) {
            "null" => None,
            v => Some(v.parse::<f64>().unwrap()),
        };
        assert!(out.insert(utc(cell(r, "bucket_start")), v).is_none(), "bucket {} twice", cell(r, "bucket_start"));
    }
    out
}

/// Rows without the load metadata, for comparing two loads of the same data.
fn without_metadata(rows: &Rows) -> Rows {
    let mut out: Rows = rows
        .iter()
        .map(|r| r.iter().filter(|(c, _)| !LOAD_METADATA.contains(&c.as_str())).cloned().collect())
        .collect();
    out.sort();
    out
}

/// Asserts each (time, dimensions) key appears once in `rows` (a doubled window doubles keys).
fn assert_keys_unique(rows: &Rows, what: &str) {
    let keys: Vec<_> = rows
        .iter()
        .map(|r| {
            r.iter()
                .filter(|(c, _)| matches!(c.as_str(), "bucket_start" | "captured_at" | "scope" | "team_id" | "user_id"))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    let distinct: BTreeSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "{what}: a row key appears twice");
}

/// Total bytes of `files`.
fn bytes(files: &[PathBuf]) -> u64 {
    files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

/// Asserts no file of `files` has zero rows.
fn assert_no_empty_file(files: &[PathBuf]) {
    for f in files {
        let rows = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
            .unwrap()
            .metadata()
            .file_metadata()
            .num_rows();
        assert!(rows > 0, "{} has no rows", f.display());
    }
}

/// Every row of `files` written again as one zstd file (the layout's ideal); returns its bytes.
fn one_zstd_file(files: &[PathBuf], out: &Path) -> u64 {
    let batches: Vec<RecordBatch> = files.iter().flat_map(|f| read_batches(f)).collect();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(out).unwrap(), batches[0].schema(), Some(props)).unwrap();
    for b in &batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    std::fs::metadata(out).unwrap().len()
}

/// A reader thread reading a table folder over and over until stopped, checking `check` on every
/// whole reading: the folder opened once and read through that descriptor; a reading during
/// which the folder was swapped out (and so maybe being deleted) is read again.
struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

impl Reader {
    fn spawn(table: PathBuf, mut check: impl FnMut(&TableReading) + Send + 'static) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut readings = 0;
            loop {
                let last = flag.load(Ordering::SeqCst);
                let dir = std::fs::File::open(&table)
                    .unwrap_or_else(|e| panic!("the table folder {} is missing: {e}", table.display()));
                let pinned = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                let reading = try_read_table(&pinned);
                let still_live =
                    std::fs::metadata(&table).map(|m| m.ino()).ok() == dir.metadata().ok().map(|m| m.ino());
                match reading {
                    Ok(reading) if still_live => {
                        check(&reading);
                        readings += 1;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("reading {} failed: {e}", table.display()),
                }
                if last {
                    return readings;
                }
            }
        });
        Reader { stop, handle: Some(handle) }
    }

    /// Stops the thread after one more reading; returns how many readings it checked.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().expect("running").join() {
            Ok(n) => n,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Reader {
    /// A test that fails before `finish` stops the thread before its folder is deleted.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Waits until the child's stderr logs `message` (a JSON log line); false when the child ended
/// without logging it. The rest of stderr is drained in the background so the child never blocks.
fn wait_for_log(child: &mut std::process::Child, message: &str) -> bool {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let message = message.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains(&message) {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(()) => true,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => false,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the child never logged it"),
    }
}

/// SIGKILL: the process gets no chance to clean up. Returns whether it was still running.
fn kill(child: &mut std::process::Child) -> bool {
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    running
}

/// The window loads of `job` recorded in the warehouse's state database, by window start.
async fn window_loads(wh: &Path, job: &str) -> BTreeMap<DateTime<Utc>, chatetl::state::WindowLoad> {
    Sink::open(&Warehouse::Parquet { path: wh.to_path_buf() }).await.unwrap().window_loads(job).await.unwrap()
}

/// The rows of each window load of `job`, by window start.
async fn recorded_loads(wh: &Path, job: &str) -> BTreeMap<DateTime<Utc>, u64> {
    window_loads(wh, job).await.into_iter().map(|(s, l)| (s, l.rows)).collect()
}

/// Asserts the state agrees with the files: every window recorded as loaded is on disk with its
/// recorded rows (a window on disk but not recorded is one whose commit the kill interrupted
/// after its partition was replaced: the next run redoes it).
async fn assert_state_matches_files(e: &Env) {
    let loads = recorded_loads(&e.wh, JOB).await;
    let on_disk = parquet_window_rows(&e.table());
    for (start, rows) in &loads {
        assert_eq!(on_disk.get(start).copied().unwrap_or(0) as u64, *rows, "window {start}: recorded rows on disk");
    }
    let status = e.status();
    assert_eq!(status["windows_loaded"], loads.len() as u64, "status counts the recorded loads");
    assert_eq!(status["rows_loaded"], loads.values().sum::<u64>(), "status sums the recorded rows");
}

/// A calendar year of an hourly job backfilled from the CLI: twelve monthly files, none empty,
/// within 3x the bytes of the same rows in one zstd file, every bucket equal to the dump, and
/// `status` agreeing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_hourly_windows_is_twelve_files_within_3x_of_one_file() {
    let e = Env::new(
        &["--seed", "21", "--start", "2024-01-01", "--days", "366", "--sessions-per-day", "6"],
        &[hourly_job("2024-01-01", "org", 168, "  - { type: sum, field: user_message_count, column: messages }\n")],
    )
    .await;
    e.ok(&["backfill", "--job", JOB, "--from", "2024-01-01", "--to", "2024-12-31", "--concurrency", "2"]);

    let files = parquet_files(&e.table());
    assert!(files.len() <= 12, "at most a file per month: {files:?}");
    assert_eq!(files.len(), 12, "a file per local month of 2024");
    assert!(files.iter().all(|f| f.ends_with("data.parquet")));
    assert_no_empty_file(&files);
    let (table_bytes, ideal) = (bytes(&files), one_zstd_file(&files, &e.dir.path().join("one.parquet")));
    assert!(table_bytes <= 3 * ideal, "table {table_bytes} bytes, one file {ideal} bytes");

    let rows = parquet_rows(&e.table(), &[]);
    let want = e.expected_hours(local(2024, 1, 1), local(2025, 1, 1));
    assert_eq!(want.len(), 366 * 24, "a leap year of hours, DST days included");
    let (chats, messages) = (per_bucket(&rows, "chats"), per_bucket(&rows, "messages"));
    assert_eq!(chats.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "every hour once");
    for (t, (c, m)) in &want {
        assert_eq!((chats[t], messages[t]), (Some(*c), Some(*m)), "hour {t}");
    }
    let status = e.status();
    assert_eq!(status["windows_loaded"], 366 * 24);
    assert_eq!(status["rows_loaded"], rows.len() as u64);
    assert_eq!(status["watermark"], serde_json::to_value(local(2025, 1, 1)).unwrap());
    assert_eq!((status["windows_failed"].as_u64(), status["windows_outdated"].as_u64()), (Some(0), Some(0)));
}

/// The shipped snapshot job giosg_realtime_rooms over a Parquet warehouse, driven through the
/// `Sink` API with synthetic captures every 5 minutes from local 2024-01-01.
struct Snapshots {
    _dir: tempfile::TempDir,
    _dump: Dump,
    _sim: RunningSimulator,
    wh: PathBuf,
    job: chatetl::config::Job,
    schema: chatetl::batch::TableSchema,
    definition: chatetl::state::Definition,
    first: DateTime<Utc>,
}

impl Snapshots {
    async fn new() -> Snapshots {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wh");
        let d = dump(&["--seed", "3", "--start", "2024-01-01", "--days", "1", "--sessions-per-day", "1"]);
        let sim = serve(&d.path).await;
        let rooms = chatetl::demo::shipped::JOBS.iter().find(|(n, _)| *n == "giosg_realtime_rooms.yaml").unwrap();
        let config =
            write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &[(rooms.0, rooms.1.to_string())]);
        let job = chatetl::config::load(&config).unwrap().jobs["giosg_realtime_rooms"].clone();
        assert_eq!(job.kind, JobKind::Snapshot);
        let (schema, definition) = (chatetl::runner::table_schema(&job), chatetl::state::definition(&job));
        Snapshots { _dir: dir, _dump: d, _sim: sim, wh, job, schema, definition, first: local(2024, 1, 1) }
    }

    async fn sink(&self) -> Sink {
        let sink = Sink::open(&Warehouse::Parquet { path: self.wh.clone() }).await.unwrap();
        sink.prepare(&self.job, &self.schema, self.first, &self.definition).await.unwrap();
        sink
    }

    /// Capture `i` (5 minutes after capture `i - 1`): five rooms, values varying as a day's
    /// counters would.
    fn capture(&self, i: i64) -> chatetl::batch::WindowBatch {
        use chatetl::row::{ColumnType, Value};
        let at = self.first + chrono::Duration::minutes(5 * i);
        let window = chatetl::plan::window_containing(self.job.window, self.job.time_zone, at);
        let rows = (0..5)
            .map(|room| chatetl::row::Row {
                bucket_start: at,
                dims: (0..self.schema.dims.len())
                    .map(|k| Some(if k == 0 { format!("room-{room}") } else { format!("value-{room}") }))
                    .collect(),
                metrics: self
                    .schema
                    .metrics
                    .iter()
                    .enumerate()
                    .map(|(k, m)| match m.ty {
                        ColumnType::Int => Value::Number(((i % 288) * (room + 1) + k as i64) as f64 % 97.0),
                        ColumnType::Float => Value::Number(((i * 7 + room) % 1000) as f64 / 8.0),
                        ColumnType::Bool => Value::Bool((i + room) % 3 == 0),
                        ColumnType::Text | ColumnType::Json => Value::Text(format!("room {room}")),
                    })
                    .collect(),
            })
            .collect();
        let batch = chatetl::batch::build(&self.schema, window, rows, at, "snapshots").unwrap();
        chatetl::batch::WindowBatch { window, batch }
    }

    /// Commits `captures` in one commit.
    async fn commit(&self, sink: &Sink, captures: impl Iterator<Item = i64>) {
        sink.commit(Commit {
            job: &self.job,
            schema: &self.schema,
            history_start: self.first,
            definition_hash: &self.definition.hash,
            run_id: "snapshots",
            requests: 1,
            windows: captures.map(|i| self.capture(i)).collect(),
            partial_after: None,
        })
        .await
        .unwrap();
    }
}

/// A year of 5-minute captures (105,120) of a snapshot job: at most a file per local day, none
/// empty, within 3x the bytes of one zstd file, and `status` agreeing. Committing each capture
/// through the CLI would take minutes (each commit rewrites its day's file and fsyncs), so the
/// year is driven through the `Sink` API a day (288 captures) per commit, plus one day committed
/// capture by capture as a scheduler's ticks would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_five_minute_snapshots_is_at_most_a_file_per_day_within_3x_of_one_file() {
    let s = Snapshots::new().await;
    let sink = s.sink().await;
    let (job, first) = (&s.job, s.first);
    let per_day = 288;
    let captures = 365 * per_day;
    assert_eq!(captures, 105_120);
    // The first day as ticks would commit it: one capture per commit, rewriting the day's file.
    for i in 0..per_day {
        s.commit(&sink, i..i + 1).await;
    }
    for day in 1..365 {
        s.commit(&sink, day * per_day..(day + 1) * per_day).await;
    }

    let table = s.wh.join(&job.table);
    let files = parquet_files(&table);
    assert!(files.len() <= 366, "at most a file per day: {}", files.len());
    assert!(files.iter().all(|f| f.parent().unwrap().file_name().unwrap().to_str().unwrap().starts_with("day=")));
    assert_no_empty_file(&files);
    let (table_bytes, ideal) = (bytes(&files), one_zstd_file(&files, &s.wh.join("one.parquet")));
    assert!(table_bytes <= 3 * ideal, "table {table_bytes} bytes, one file {ideal} bytes");
    let windows = parquet_window_rows(&table);
    assert_eq!(windows.len() as i64, captures, "every capture once");
    assert!(windows.values().all(|n| *n == 5), "five rooms in every capture");
    let status = &sink.status(std::slice::from_ref(&job.name)).await.unwrap()[0];
    assert_eq!(status.windows_loaded, captures as u64);
    assert_eq!(status.rows_loaded, 5 * captures as u64);
    let last = first + chrono::Duration::minutes(5 * (captures - 1));
    assert_eq!(status.watermark, Some(chatetl::plan::window_containing(job.window, job.time_zone, last).end));
}

/// A backfill SIGKILLed at increasing delays after its first committed chunk, with a reader
/// reading every file throughout: no file is ever unreadable, no window ever doubled, and a window
/// once seen never goes missing; after each kill the state agrees with the files; the last
/// backfill completes with every hour equal to the dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_while_it_replaces_partitions_loses_and_doubles_nothing() {
    let e = Env::new(
        &["--seed", "5", "--start", "2024-01-01", "--days", "62", "--sessions-per-day", "30"],
        &[hourly_job("2024-01-01", "org, team", 24, "")],
    )
    .await;
    e.sim.handle.set_faults(FaultConfig { latency_ms: 80, ..FaultConfig::default() });
    std::fs::create_dir_all(e.table()).unwrap();
    let reader = Reader::spawn(e.table(), {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        move |reading| {
            assert_keys_unique(&reading.rows, "a reading during the backfill");
            let mut windows: BTreeMap<String, usize> = BTreeMap::new();
            for r in &reading.rows {
                *windows.entry(cell(r, "_window_start").to_string()).or_default() += 1;
            }
            for (w, n) in &seen {
                assert_eq!(windows.get(w), Some(n), "window {w} was seen whole before");
            }
            seen = windows;
        }
    });
    let args = ["backfill", "--job", JOB, "--from", "2024-01-01", "--to", "2024-03-01", "--concurrency", "2"];
    let mut killed = 0;
    for delay_ms in [0u64, 25, 60, 120, 250, 500] {
        let mut child = e.spawn(&args);
        let logged = wait_for_log(&mut child, "windows loaded");
        std::thread::sleep(Duration::from_millis(delay_ms));
        killed += kill(&mut child) as usize;
        assert_state_matches_files(&e).await;
        if !logged {
            break;
        }
    }
    assert!(killed >= 3, "most backfills were killed mid-way: {killed}");
    e.sim.handle.set_faults(FaultConfig::default());
    e.ok(&args);
    let readings = reader.finish();
    assert!(readings > 10, "the reader read throughout: {readings}");

    let rows = parquet_rows(&e.table(), &[]);
    assert_keys_unique(&rows, "the completed table");
    let want = e.expected_hours(local(2024, 1, 1), local(2024, 3, 2));
    let chats = per_bucket(&rows, "chats");
    assert_eq!(chats, want.iter().map(|(t, (c, _))| (*t, Some(*c))).collect(), "every org hour equal to the dump");
    assert_state_matches_files(&e).await;
    assert_eq!(e.status()["windows_loaded"], want.len() as u64);
    assert_no_empty_file(&parquet_files(&e.table()));
}

/// `run --rebuild` SIGKILLed at increasing delays, with a reader of the live table: it is always
/// the old table or the new one, whole; the next `--rebuild` resumes and promotes. The job has
/// day windows starting 40 days ago, since a rebuild reloads the whole history up to now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_leaves_the_live_table_whole_and_the_next_one_promotes() {
    let today = Utc::now().with_timezone(&HEL).date_naive();
    let (start, yesterday) =
        ((today - chrono::Duration::days(40)).to_string(), (today - chrono::Duration::days(1)).to_string());
    let e = Env::new(
        &["--seed", "6", "--start", &start, "--days", "41", "--sessions-per-day", "30"],
        &[job_file("day", &start, "org", 1, "")],
    )
    .await;
    e.ok(&["run", "--job", JOB, "--from", &start, "--to", &yesterday]);
    let old = without_metadata(&parquet_rows(&e.table(), &[]));
    assert_eq!(old.len(), 40);
    // Team rows too: the loaded rows mean something else, so the history must be rebuilt.
    let (name, text) = job_file("day", &start, "org, team", 1, "");
    std::fs::write(e.dir.path().join("jobs").join(name), text).unwrap();
    let (code, _, err) = e.cli(&["run", "--job", JOB, "--from", &yesterday, "--to", &yesterday]);
    assert_ne!(code, 0, "a changed definition is refused until rebuilt: {err}");
    assert!(err.contains("--rebuild"), "{err}");
    e.sim.handle.set_faults(FaultConfig { latency_ms: 100, ..FaultConfig::default() });

    let digests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = Reader::spawn(e.table(), {
        let digests = digests.clone();
        move |reading| {
            assert!(!reading.rows.is_empty(), "the live table is never empty");
            digests.lock().unwrap().push(without_metadata(&reading.rows));
        }
    });
    let (mut killed, mut in_shadow) = (0, None);
    for delay_ms in [0u64, 30, 80, 200] {
        let mut child = e.spawn(&["run", "--job", JOB, "--rebuild", "--concurrency", "2"]);
        wait_for_log(&mut child, "windows loaded");
        std::thread::sleep(Duration::from_millis(delay_ms));
        if !kill(&mut child) {
            // It finished first: promoted, nothing left to resume.
            in_shadow = None;
            break;
        }
        killed += 1;
        let live = without_metadata(&parquet_rows(&e.table(), &[]));
        assert_eq!(live, old, "the live table is the old one until promoted");
        let status = e.status();
        in_shadow = status["rebuild_windows_loaded"].as_u64();
        assert!(in_shadow.is_some(), "a rebuild is in progress: {status}");
    }
    assert!(killed >= 2, "rebuilds were killed mid-way: {killed}");
    e.sim.handle.set_faults(FaultConfig::default());
    let (code, out, err) = e.cli(&["run", "--job", JOB, "--rebuild", "--concurrency", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    if let Some(n) = in_shadow {
        // `job windows loaded skipped …`: the windows the shadow already held are skipped.
        let row: Vec<&str> =
            out.lines().find(|l| l.starts_with(JOB)).unwrap_or_else(|| panic!("{out}")).split_whitespace().collect();
        assert_eq!((row[2], row[3]), ((40 - n).to_string().as_str(), n.to_string().as_str()), "resumed: {out}");
        assert!(err.contains("resuming an interrupted rebuild"), "{err}");
    }
    let new = without_metadata(&parquet_rows(&e.table(), &[]));
    assert_ne!(new, old, "{out}");
    assert!(new.iter().any(|r| cell(r, "scope") == "team"), "the rebuilt table has the new definition's rows");
    reader.finish();
    let digests = std::mem::take(&mut *digests.lock().unwrap());
    assert!(digests.iter().all(|d| *d == old || *d == new), "every reading was the old table or the new one, whole");
    assert!(digests.contains(&old));
    assert!(!e.wh.join(format!("_rebuild_{JOB}")).exists(), "the old table is deleted");
    let status = e.status();
    assert_eq!(status["windows_outdated"], 0);
    assert_eq!(status["windows_loaded"], 40);
    assert_eq!(status["added_columns"], serde_json::json!([]));
    assert_eq!(status["rows_loaded"], new.len() as u64);
    assert_eq!(status["rebuild_windows_loaded"], Value::Null, "no rebuild in progress");
    assert!(recorded_loads(&e.wh, &format!("{JOB}~rebuild")).await.is_empty(), "the shadow's state is gone");
    // The rebuilt job loads on with its new definition.
    e.ok(&["run", "--job", JOB, "--from", &yesterday, "--to", &yesterday]);
}

/// A promotion interrupted before or after its folder exchange (the two states a crash can leave
/// once the promotion is recorded) is completed when the warehouse is next opened; one whose
/// shadow folder has vanished is dropped, leaving the live table and state as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_promotion_is_completed_on_the_next_open() {
    for case in ["before the exchange", "after the exchange", "shadow folder gone"] {
        let exchanged = case == "after the exchange";
        let e = Env::new(
            &["--seed", "7", "--start", "2024-01-01", "--days", "3", "--sessions-per-day", "30"],
            &[hourly_job("2024-01-01", "org", 24, "")],
        )
        .await;
        e.ok(&["run", "--job", JOB, "--from", "2024-01-01", "--to", "2024-01-02"]);
        let old = parquet_rows(&e.table(), &[]);
        // A shadow loaded by a rebuild (the same definition: a copy made with the CLI's state).
        let shadow = e.wh.join(format!("_rebuild_{JOB}"));
        copy_dir(&e.table(), &shadow);
        let changed = shadow.join("year=2024/month=1/data.parquet");
        let rows = read_batches(&changed);
        write_batches(&changed, &[rows[0].slice(0, rows[0].num_rows() / 2)]);
        let new = parquet_rows(&shadow, &[]);
        assert_ne!(new, old);
        let db = parquet_state_db(&e.wh).await;
        let shadow_job = format!("{JOB}~rebuild");
        for sql in [
            "INSERT INTO jobs (job, definition_hash, definition, added_columns, history_start, watermark, updated_at)
               SELECT ?2, definition_hash, definition, '[\"x\"]', history_start, watermark, updated_at FROM jobs WHERE job = ?1",
            "UPDATE jobs SET added_columns = '[\"x\"]' WHERE job = ?1",
            "INSERT INTO window_loads SELECT ?2, window_start, window_end, 7, requests, run_id, definition_hash, loaded_at
               FROM window_loads WHERE job = ?1",
            "INSERT INTO promotions (live_job, shadow_job, live_table, shadow_table, id, moved, started_at)
               VALUES (?1, ?2, ?1, '_rebuild_' || ?1, 'p1', 0, 0)",
        ] {
            sqlx::query(sql).bind(JOB).bind(&shadow_job).execute(&db).await.unwrap();
        }
        db.close().await;
        std::fs::write(shadow.join(".chatetl-promotion"), "p1").unwrap();
        if exchanged {
            // As a crash right after the exchange leaves it.
            let aside = e.wh.join("aside");
            std::fs::rename(e.table(), &aside).unwrap();
            std::fs::rename(&shadow, e.table()).unwrap();
            std::fs::rename(&aside, &shadow).unwrap();
        }
        if case == "shadow folder gone" {
            std::fs::remove_dir_all(&shadow).unwrap();
            let status = e.status();
            assert_eq!(parquet_rows(&e.table(), &[]), old, "{case}: the live table is untouched");
            assert!(recorded_loads(&e.wh, JOB).await.values().all(|r| *r != 7), "{case}: the live loads too");
            assert!(recorded_loads(&e.wh, &shadow_job).await.is_empty(), "{case}: a rebuild starts afresh");
            assert_eq!(status["added_columns"], serde_json::json!(["x"]));
            let db = parquet_state_db(&e.wh).await;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM promotions").fetch_one(&db).await.unwrap();
            assert_eq!(left, 0, "{case}: the promotion is dropped");
            continue;
        }
        let status = e.status();
        assert_eq!(parquet_rows(&e.table(), &[]), new, "{case}: the shadow's table is live");
        assert!(!shadow.exists(), "the old table is deleted");
        assert!(!e.table().join(".chatetl-promotion").exists(), "the marker is gone");
        let loads = recorded_loads(&e.wh, JOB).await;
        assert!(!loads.is_empty() && loads.values().all(|r| *r == 7), "the live job has the shadow's loads");
        assert!(recorded_loads(&e.wh, &shadow_job).await.is_empty());
        assert_eq!(status["added_columns"], serde_json::json!([]));
        let db = parquet_state_db(&e.wh).await;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM promotions").fetch_one(&db).await.unwrap();
        assert_eq!(left, 0, "the promotion is finished");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The batches of a Parquet file, with the file's schema metadata (`chatetl.table`, the zone),
/// which the reader's batches leave out: files the previous release wrote carried it.
fn read_batches(path: &Path) -> Vec<RecordBatch> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = builder.schema().clone();
    builder.build().unwrap().map(|b| b.unwrap().with_schema(schema.clone()).unwrap()).collect()
}

fn write_batches(path: &Path, batches: &[RecordBatch]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batches[0].schema(), None).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
}

/// Rewrites the warehouse as the previous release left it: a file per window under
/// `date=<local date>/hour=<local hour>/part-<UTC start>.parquet` and `_chatetl/<job>.json`,
/// written here with arrow and serde_json; the new files and state.db are deleted. `keep`: new
/// partitions (relative paths) left in place, as a conversion interrupted after writing them.
async fn rebuild_old_layout(wh: &Path, job: &str, table: &str, keep: &[&str]) {
    let table = wh.join(table);
    let db = parquet_state_db(wh).await;
    let (hash, history_start, watermark): (String, i64, Option<i64>) =
        sqlx::query_as("SELECT definition_hash, history_start, watermark FROM jobs WHERE job = ?1")
            .bind(job)
            .fetch_one(&db)
            .await
            .unwrap();
    let loads: Vec<(i64, i64, i64, i64, String, String, i64)> = sqlx::query_as(
        "SELECT window_start, window_end, rows, requests, run_id, definition_hash, loaded_at FROM window_loads WHERE job = ?1",
    )
    .bind(job)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    let at = |us: i64| DateTime::<Utc>::from_timestamp_micros(us).unwrap();
    let windows: serde_json::Map<String, Value> = loads
        .iter()
        .map(|(s, end, rows, requests, run, hash, loaded)| {
            (
                serde_json::to_value(at(*s)).unwrap().as_str().unwrap().to_string(),
                serde_json::json!({"window_start": at(*s), "window_end": at(*end), "rows": rows, "requests": requests,
                    "run_id": run, "definition_hash": hash, "loaded_at": at(*loaded)}),
            )
        })
        .collect();
    let state = serde_json::json!({"job": job, "definition_hash": hash, "history_start": at(history_start),
        "watermark": watermark.map(at), "windows": windows, "runs": []});
    std::fs::write(wh.join(format!("_chatetl/{job}.json")), serde_json::to_vec_pretty(&state).unwrap()).unwrap();

    let mut by_window: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for f in parquet_files(&table) {
        for batch in read_batches(&f) {
            let starts = batch.column_by_name("_window_start").unwrap();
            let starts =
                arrow_array::cast::AsArray::as_primitive::<arrow_array::types::TimestampMicrosecondType>(starts);
            let mut i = 0;
            while i < batch.num_rows() {
                let mut j = i;
                while j < batch.num_rows() && starts.value(j) == starts.value(i) {
                    j += 1;
                }
                by_window.entry(starts.value(i)).or_default().push(batch.slice(i, j - i));
                i = j;
            }
        }
    }
    for f in parquet_files(&table) {
        let rel = f.strip_prefix(&table).unwrap().to_str().unwrap().to_string();
        if !keep.contains(&rel.as_str()) {
            std::fs::remove_file(&f).unwrap();
            let _ = std::fs::remove_dir(f.parent().unwrap());
            let _ = std::fs::remove_dir(f.parent().unwrap().parent().unwrap());
        }
    }
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(wh.join(format!("_chatetl/state.db{ext}")));
    }
    for (start, batches) in by_window {
        let start = at(start);
        let l = start.with_timezone(&HEL);
        let path = table
            .join(format!("date={}", l.format("%Y-%m-%d")))
            .join(format!("hour={}", l.format("%H")))
            .join(format!("part-{}.parquet", start.format("%Y%m%dT%H%M%SZ")));
        write_batches(&path, &batches);
    }
}

/// A table loaded with the new code, rewritten in the previous layout by the test, is converted
/// when the warehouse is opened: every row exactly once in monthly files, the window loads and
/// watermark as before, old files and folders gone, the JSON moved to `_chatetl/converted/`;
/// a conversion interrupted after writing some partitions (old files still there, some even
/// deleted) completes the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_window_layout_is_converted_on_open_exactly_once_even_after_a_crash() {
    let e = Env::new(
        &["--seed", "8", "--start", "2024-03-25", "--days", "12", "--sessions-per-day", "40"],
        &[hourly_job("2024-03-25", "org, team", 24, "")],
    )
    .await;
    e.ok(&["run", "--job", JOB, "--from", "2024-03-25", "--to", "2024-04-05"]);
    let rows = parquet_rows(&e.table(), &[]);
    let layout: Vec<PathBuf> = parquet_files(&e.table());
    assert_eq!(layout.len(), 2, "March and April");
    let loads = window_loads(&e.wh, JOB).await;
    let watermark = e.status()["watermark"].clone();
    assert_eq!(watermark, serde_json::to_value(local(2024, 4, 6)).unwrap());

    // Another tool's table in the same layout (as Spark writes it) is not chatetl's to convert.
    let foreign = e.wh.join("spark_output/date=2024-03-26/part-00000-0a1b.snappy.parquet");
    let spark = RecordBatch::try_from_iter([("x", Arc::new(arrow_array::Int64Array::from(vec![1, 2])) as _)]).unwrap();
    write_batches(&foreign, &[spark]);
    let march = read_batches(&layout[0]);
    for (keep, delete_some) in [(&[][..], false), (&["year=2024/month=3/data.parquet"][..], true)] {
        rebuild_old_layout(&e.wh, JOB, JOB, keep).await;
        // What a conversion killed before its swap leaves beside the table: discarded.
        write_batches(&e.wh.join(format!("_convert_{JOB}/year=2024/month=3/data.parquet")), &march);
        let old_files: Vec<PathBuf> = parquet_files(&e.table());
        assert_eq!(old_files.len(), loads.len() + keep.len(), "a file per window (and the kept partition)");
        if delete_some {
            // A crash while deleting the converted files: some of March's are gone already.
            for f in old_files.iter().filter(|f| f.to_str().unwrap().contains("date=2024-03-2")).take(30) {
                std::fs::remove_file(f).unwrap();
            }
        }
        let status = e.status();
        assert_eq!(parquet_files(&e.table()), layout, "keep {keep:?}: the monthly files only");
        assert_eq!(parquet_rows(&e.table(), &[]), rows, "keep {keep:?}: every row exactly once");
        let dirs: Vec<String> =
            std::fs::read_dir(e.table()).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(dirs, ["year=2024"], "the date= folders are gone");
        assert_eq!(window_loads(&e.wh, JOB).await, loads, "the window loads as before, field by field");
        assert_eq!(status["watermark"], watermark);
        assert_eq!(status["windows_loaded"], loads.len() as u64);
        assert!(!e.wh.join(format!("_chatetl/{JOB}.json")).exists());
        assert!(e.wh.join(format!("_chatetl/converted/{JOB}.json")).exists());
        std::fs::remove_file(e.wh.join(format!("_chatetl/converted/{JOB}.json"))).unwrap();
        assert!(!e.wh.join(format!("_convert_{JOB}")).exists(), "the work folder is gone");
        assert!(foreign.exists(), "another tool's files are left alone");
    }
    // The converted warehouse loads on: a backfill skips every converted window.
    e.sim.handle.clear_requests();
    e.ok(&["backfill", "--job", JOB, "--from", "2024-03-25", "--to", "2024-04-05"]);
    assert!(e.sim.handle.requests().is_empty(), "every window counts as loaded");
}

/// A snapshot table of the previous layout (a file per capture under `date=…/hour=…/`) is
/// converted into a file per local day: every capture exactly once, its loads and watermark as
/// before. Snapshots cannot be fetched again, so this conversion must lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_captures_are_converted_into_daily_files_exactly_once() {
    let s = Snapshots::new().await;
    let sink = s.sink().await;
    // Two local days: captures 0-11 of Jan 1 and 0-11 of Jan 2.
    s.commit(&sink, (0..12).chain(288..300)).await;
    let table = s.wh.join(&s.job.table);
    let rows = parquet_rows(&table, &[]);
    let (loads, status) =
        (sink.window_loads(&s.job.name).await.unwrap(), sink.status(std::slice::from_ref(&s.job.name)).await.unwrap());
    drop(sink);
    rebuild_old_layout(&s.wh, &s.job.name, &s.job.table, &[]).await;
    assert_eq!(parquet_files(&table).len(), 24, "a file per capture");

    let sink = Sink::open(&Warehouse::Parquet { path: s.wh.clone() }).await.unwrap();
    let files: Vec<String> =
        parquet_files(&table).iter().map(|p| p.strip_prefix(&table).unwrap().display().to_string()).collect();
    assert_eq!(files, ["year=2024/month=1/day=1/data.parquet", "year=2024/month=1/day=2/data.parquet"]);
    assert_eq!(parquet_rows(&table, &[]), rows, "every capture exactly once");
    assert_eq!(sink.window_loads(&s.job.name).await.unwrap(), loads);
    assert_eq!(sink.status(std::slice::from_ref(&s.job.name)).await.unwrap()[0].watermark, status[0].watermark);
}

/// An added aggregation on a loaded job: the next run rewrites every file with the new column
/// (null in the old windows) and swaps the table in while a reader reads it, never empty and never
/// with two schemas at once; `status` reports the outdated windows and the added column, and
/// `run --outdated` fills them with the dump's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_reaches_every_file_at_once_and_outdated_fills_it() {
    let e = Env::new(
        &["--seed", "9", "--start", "2024-01-20", "--days", "25", "--sessions-per-day", "30"],
        &[hourly_job("2024-01-20", "org", 24, "")],
    )
    .await;
    e.ok(&["run", "--job", JOB, "--from", "2024-01-20", "--to", "2024-02-12"]);
    assert_eq!(parquet_files(&e.table()).len(), 2);
    let schemas = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let reader = Reader::spawn(e.table(), {
        let schemas = schemas.clone();
        move |reading| {
            assert!(!reading.rows.is_empty(), "the table is never empty");
            let fields: BTreeSet<Vec<String>> = reading
                .schemas
                .iter()
                .map(|(_, s)| s.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect())
                .collect();
            assert_eq!(fields.len(), 1, "every file read at one instant has one schema: {fields:?}");
            schemas.lock().unwrap().extend(fields);
        }
    });
    while schemas.lock().unwrap().is_empty() {
        std::thread::yield_now();
    }
    let (name, text) =
        hourly_job("2024-01-20", "org", 24, "  - { type: sum, field: user_message_count, column: messages }\n");
    std::fs::write(e.dir.path().join("jobs").join(name), text).unwrap();
    e.ok(&["run", "--job", JOB, "--from", "2024-02-13", "--to", "2024-02-13"]);

    let files = parquet_files(&e.table());
    let first =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&files[0]).unwrap()).unwrap().schema().clone();
    for f in &files {
        let s = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap()).unwrap().schema().clone();
        assert_eq!(s, first, "{} has the table's one schema", f.display());
    }
    assert!(first.field_with_name("messages").is_ok());
    let rows = parquet_rows(&e.table(), &[]);
    let messages = per_bucket(&rows, "messages");
    let feb13 = local(2024, 2, 13);
    assert!(messages.iter().filter(|(t, _)| **t < feb13).all(|(_, v)| v.is_none()), "old windows hold null");
    assert!(
        messages.iter().filter(|(t, _)| **t >= feb13).all(|(_, v)| v.is_some()),
        "the new run's windows hold values"
    );
    let status = e.status();
    assert_eq!(status["windows_outdated"], 24 * 24, "the windows loaded before the column");
    assert_eq!(status["added_columns"], serde_json::json!(["messages"]));

    e.ok(&["run", "--job", JOB, "--outdated"]);
    let status = e.status();
    assert_eq!(status["windows_outdated"], 0);
    assert_eq!(status["added_columns"], serde_json::json!(["messages"]));
    let rows = parquet_rows(&e.table(), &[]);
    let want = e.expected_hours(local(2024, 1, 20), local(2024, 2, 14));
    assert_eq!(per_bucket(&rows, "messages"), want.iter().map(|(t, (_, m))| (*t, Some(*m))).collect());
    assert_eq!(per_bucket(&rows, "chats"), want.iter().map(|(t, (c, _))| (*t, Some(*c))).collect());
    let readings = reader.finish();
    assert!(readings > 3, "{readings}");
    assert_eq!(schemas.lock().unwrap().len(), 2, "the reader saw the old schema, then the new one");
    assert!(!e.wh.join(format!("_add_columns_{JOB}")).exists(), "the work folder is gone");
}

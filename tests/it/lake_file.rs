//! The lake's code path (object_store, state in PostgreSQL) on a `file://` URL: the same rows
//! and partition files as the local Parquet warehouse, value columns added to every object, a
//! rebuild promoted over the live table, and a promotion a crash interrupted finished by the
//! job's next run. The S3 server's tests are in `lake.rs`; these need no server but PostgreSQL.
//!
//! Parquet is read back with the parquet crate (`util::parquet_rows`), the state with SQL.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde_json::Value;

use crate::util::{
    Dump, TOKEN, TestDb, TestWarehouse, chatetl, dump, parquet_files, parquet_rows, serve, write_config,
};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;
const LOAD_METADATA: [&str; 3] = ["_window_start", "_loaded_at", "_run_id"];

fn today() -> NaiveDate {
    chrono::Utc::now().with_timezone(&HEL).date_naive()
}

fn job(start: NaiveDate, extra: &str) -> (&'static str, String) {
    (
        "daily_chats.yaml",
        format!(
            "description: Chats per day\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org, user]\n\
             aggregations:\n  - {{ type: count, column: chats }}\n{extra}start: {start}\nlookback_windows: 0\n\
             max_windows_per_request: 7\n"
        ),
    )
}

/// `chatetl.yaml` in `dir` for the simulator, writing to the local folder `local`, or with
/// `lake` (a URL) and `state` to a lake.
fn config(
    dir: &Path,
    sim: &chatetl::simulator::RunningSimulator,
    lake: Option<(&str, &str)>,
    jobs: &[(&str, String)],
) -> PathBuf {
    let path = write_config(dir, sim, TOKEN, TestWarehouse::Parquet(&dir.join("wh")), jobs);
    if let Some((url, state)) = lake {
        let text = std::fs::read_to_string(&path).unwrap();
        let local = format!("  kind: parquet\n  path: {}\n", dir.join("wh").display());
        assert!(text.contains(&local));
        std::fs::write(&path, text.replace(&local, &format!("  kind: parquet\n  path: {url}\n  state: {state}\n")))
            .unwrap();
    }
    path
}

fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    chatetl(&all)
}

fn status(config: &Path) -> Value {
    let (code, out, err) = run(config, &["status", "--job", "daily_chats", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

/// The files below `dir`, relative, sorted.
fn relative_files(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut out: Vec<String> =
        parquet_files(dir).iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
    out.sort();
    out
}

struct Env {
    _dump: Dump,
    dir: tempfile::TempDir,
    sim: chatetl::simulator::RunningSimulator,
    db: TestDb,
    start: NaiveDate,
}

async fn env() -> Env {
    let first = (today() - chrono::Duration::days(45)).to_string();
    let d = dump(&["--seed", "11", "--start", &first, "--days", "47", "--sessions-per-day", "25"]);
    let sim = serve(&d.path).await;
    Env {
        _dump: d,
        dir: tempfile::tempdir().unwrap(),
        sim,
        db: TestDb::new().await,
        start: today() - chrono::Duration::days(40),
    }
}

impl Env {
    fn lake_dir(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn lake_url(&self) -> String {
        format!("file://{}", self.lake_dir().display())
    }

    fn lake_config(&self, extra: &str) -> PathBuf {
        let url = self.lake_url();
        config(&self.dir.path().join("cfg-lake"), &self.sim, Some((&url, &self.db.url)), &[job(self.start, extra)])
    }

    fn local_config(&self, extra: &str) -> PathBuf {
        config(&self.dir.path().join("cfg-local"), &self.sim, None, &[job(self.start, extra)])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_lake_holds_the_rows_and_files_of_a_local_warehouse_through_added_columns_and_a_rebuild() {
    let e = env().await;
    let (lake, local) = (e.lake_config(""), e.local_config(""));
    let (from, to) = (e.start.to_string(), (today() - chrono::Duration::days(1)).to_string());
    for cfg in [&lake, &local] {
        let (code, out, err) = run(cfg, &["backfill", "--job", "daily_chats", "--from", &from, "--to", &to]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let local_table = e.dir.path().join("cfg-local/wh/daily_chats");
    let lake_table = e.lake_dir().join("daily_chats");
    let files = relative_files(&lake_table);
    assert!(files.len() >= 2, "the range spans two months: {files:?}");
    assert_eq!(files, relative_files(&local_table), "the same partition files");
    assert!(files.iter().all(|f| f.ends_with("/data.parquet") && f.starts_with("year=")), "{files:?}");
    let rows = parquet_rows(&lake_table, &LOAD_METADATA);
    assert!(!rows.is_empty());
    assert_eq!(rows, parquet_rows(&local_table, &LOAD_METADATA), "the same rows");
    let s = status(&lake);
    assert_eq!(s["windows_loaded"], 40, "{s}");
    assert_eq!(s["windows_loaded"], status(&local)["windows_loaded"]);
    // The state is in PostgreSQL, keyed by the URL; nothing of it in the lake's folder.
    let pool = e.db.pool().await;
    let loads: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chatetl.window_loads WHERE target = $1 AND job = 'daily_chats'")
            .bind(e.lake_url())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(loads, 40);
    assert!(!e.lake_dir().join("_chatetl/state.db").exists());

    // An added aggregation: every object gets the column, null in the windows loaded before.
    let added = "  - { type: sum, field: user_message_count, column: messages }\n";
    let with_column = |cfg: &Path| {
        let file = cfg.parent().unwrap().join("jobs/daily_chats.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("column: chats }\n", &format!("column: chats }}\n{added}"))).unwrap();
    };
    with_column(&lake);
    let (code, out, err) = run(&lake, &["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for file in parquet_files(&lake_table) {
        let batch = crate::util::parquet_batches(&file).next().unwrap();
        assert!(batch.schema().field_with_name("messages").is_ok(), "{} lacks the added column", file.display());
    }
    assert_eq!(status(&lake)["windows_outdated"], 40);

    // A definition change that needs a rebuild (a room filter): refused, then rebuilt and
    // promoted, as in the local warehouse.
    for cfg in [&lake, &local] {
        let file = cfg.parent().unwrap().join("jobs/daily_chats.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let text =
            if cfg == &local { text.replace("column: chats }\n", &format!("column: chats }}\n{added}")) } else { text };
        std::fs::write(&file, format!("{text}rooms: [room-a]\n")).unwrap();
        let (code, out, err) = run(cfg, &["run", "--job", "daily_chats"]);
        assert_eq!(code, 2, "a rebuild is needed: {out}\n{err}");
        assert!(err.contains("--rebuild"), "{err}");
        let (code, out, err) = run(cfg, &["run", "--job", "daily_chats", "--rebuild"]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    assert_eq!(relative_files(&lake_table), relative_files(&local_table));
    assert_eq!(
        parquet_rows(&lake_table, &LOAD_METADATA),
        parquet_rows(&local_table, &LOAD_METADATA),
        "the rebuilt rows"
    );
    assert!(relative_files(&e.lake_dir().join("_rebuild_daily_chats")).is_empty(), "the shadow is gone");
    let left: Vec<PathBuf> = match std::fs::read_dir(e.lake_dir().join("_chatetl/promotions")) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(left.is_empty(), "no promotion left recorded: {left:?}");
    let s = status(&lake);
    assert_eq!(s["windows_loaded"], 40, "{s}");
    assert_eq!(s["windows_outdated"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_a_crash_interrupted_is_finished_by_the_jobs_next_run() {
    let e = env().await;
    let lake = e.lake_config("");
    let (from, to) = (e.start.to_string(), (today() - chrono::Duration::days(1)).to_string());
    let (code, out, err) = run(&lake, &["backfill", "--job", "daily_chats", "--from", &from, "--to", &to]);
    assert_eq!(code, 0, "{out}\n{err}");
    let live = e.lake_dir().join("daily_chats");
    let before = parquet_rows(&live, &LOAD_METADATA);
    // The state a crash leaves after the rebuild loaded every window and recorded its promotion,
    // before any object was copied: the shadow's objects and state, and the record.
    let shadow = e.lake_dir().join("_rebuild_daily_chats");
    std::fs::create_dir_all(&shadow).unwrap();
    for file in relative_files(&live) {
        let to = shadow.join(&file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(live.join(&file), &to).unwrap();
    }
    // The shadow lacks the newest month: the promotion must delete it from the live table.
    let months = relative_files(&shadow);
    let dropped = months.last().unwrap().clone();
    std::fs::remove_file(shadow.join(&dropped)).unwrap();
    let pool = e.db.pool().await;
    for sql in [
        "INSERT INTO chatetl.jobs (target, job, definition_hash, definition, watermark, history_start, added_columns)
         SELECT target, 'daily_chats~rebuild', definition_hash, definition, watermark, history_start, added_columns
         FROM chatetl.jobs WHERE target = $1 AND job = 'daily_chats'",
        "UPDATE chatetl.window_loads SET run_id = 'before' WHERE target = $1 AND job = 'daily_chats'",
        "INSERT INTO chatetl.window_loads (target, job, window_start, window_end, rows, requests, run_id, definition_hash, loaded_at)
         SELECT target, 'daily_chats~rebuild', window_start, window_end, rows, requests, 'rebuilt', definition_hash, loaded_at
         FROM chatetl.window_loads WHERE target = $1 AND job = 'daily_chats'",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(e.lake_url()).execute(&pool).await.unwrap();
    }
    let record = |objects: Vec<String>| {
        serde_json::json!({
            "live_job": "daily_chats", "shadow_job": "daily_chats~rebuild",
            "live_table": "daily_chats", "shadow_table": "_rebuild_daily_chats", "objects": objects,
        })
        .to_string()
    };
    std::fs::create_dir_all(e.lake_dir().join("_chatetl/promotions")).unwrap();
    std::fs::write(e.lake_dir().join("_chatetl/promotions/daily_chats.json"), record(relative_files(&shadow))).unwrap();

    let (code, out, err) = run(&lake, &["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(relative_files(&shadow).is_empty(), "the shadow's objects are gone");
    assert!(!e.lake_dir().join("_chatetl/promotions/daily_chats.json").exists(), "the record is gone");
    assert_eq!(relative_files(&live), months[..months.len() - 1].to_vec(), "the month the shadow lacked is gone");
    let after = parquet_rows(&live, &LOAD_METADATA);
    assert!(after.len() < before.len(), "the dropped month held rows");
    let run_ids: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT run_id FROM chatetl.window_loads WHERE target = $1 AND job = 'daily_chats' ORDER BY 1",
    )
    .bind(e.lake_url())
    .fetch_all(&pool)
    .await
    .unwrap();
    // The shadow's loads became the live job's (the run after the promotion loaded nothing new:
    // the watermark is at yesterday's end).
    assert_eq!(run_ids, ["rebuilt"], "the live job has the shadow's loads");
    let shadow_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chatetl.jobs WHERE target = $1 AND job = 'daily_chats~rebuild'")
            .bind(e.lake_url())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shadow_rows, 0);

    // A record whose shadow no longer holds every object it names (a later rebuild emptied it)
    // never touches the live table: the record and the shadow's state go, and the run says so
    // (opening the lake tries the promotion, warns, and the run goes on).
    let live_before = parquet_rows(&live, &LOAD_METADATA);
    sqlx::query(
        "INSERT INTO chatetl.jobs (target, job, definition_hash, definition, watermark, history_start, added_columns)
         SELECT target, 'daily_chats~rebuild', definition_hash, definition, watermark, history_start, added_columns
         FROM chatetl.jobs WHERE target = $1 AND job = 'daily_chats'",
    )
    .bind(e.lake_url())
    .execute(&pool)
    .await
    .unwrap();
    let record_path = e.lake_dir().join("_chatetl/promotions/daily_chats.json");
    std::fs::create_dir_all(record_path.parent().unwrap()).unwrap();
    std::fs::write(&record_path, record(vec!["year=2020/month=1/data.parquet".into()])).unwrap();
    let (code, out, err) = run(&lake, &["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("the rebuilt table lacks 1 of its 1 objects"), "{err}");
    assert_eq!(parquet_rows(&live, &LOAD_METADATA), live_before, "the live table is untouched");
    assert!(!record_path.exists(), "the record is gone");
    let (code, out, err) = run(&lake, &["run", "--job", "daily_chats"]);
    assert_eq!(code, 0, "the next run goes on: {out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_url_needs_a_state_database_and_a_known_store() {
    let e = env().await;
    let dir = e.dir.path().join("cfg");
    let cfg = config(&dir, &e.sim, Some(("s3://bucket/prefix", &e.db.url)), &[job(e.start, "")]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let without_state: String =
        text.lines().filter(|l| !l.trim_start().starts_with("state:")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&cfg, &without_state).unwrap();
    let (code, out, err) = run(&cfg, &["validate"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("warehouse.state"), "{err}");
    std::fs::write(&cfg, text.replace("s3://bucket/prefix", "ftp://host/prefix")).unwrap();
    let (code, out, err) = run(&cfg, &["validate"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("unknown object store"), "{err}");
}

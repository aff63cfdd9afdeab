//! The Parquet warehouse on object storage (issue 13, "the lake"): `path: s3://BUCKET/PREFIX`
//! with its state in PostgreSQL (`state:`), against a real S3 server (moto, started by
//! scripts/test) and the simulator over HTTP.
//!
//! What is checked: a backfill to S3 holds the same rows, in the same `year=/month=` objects, as
//! the same backfill into a local folder; a reload replaces only its month's object; a partition
//! write killed in flight leaves the old object and the old state; throttling and 5xx answers
//! are retried; secrets never reach the output; a missing `state:` is refused.
//!
//! Objects are read back with pyarrow over S3 (`CHATETL_TEST_PYTHON`), local folders with
//! pyarrow from disk, the state with SQL: never through chatetl's own readers. Requests can go
//! through a [`FaultProxy`] in front of the server, which faults or holds them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::http::Method;
use chatetl::simulator::{Dataset, FaultConfig, RunningSimulator, Simulator};
use serde_json::Value;
use sqlx::Row as _;

use crate::s3::{self, Bucket, Fault, FaultProxy};
use crate::util::{
    Dump, TOKEN, TestDb, dump, output, parquet_files, real_chat_record, serve, shipped_jobs_of, write_config_with,
};

const DAILY: &str = "real_chats";
const HOURLY: &str = "thulium_chat_summary_hourly";
/// 40 days over February and March 2024.
const FROM: &str = "2024-02-10";
const TO: &str = "2024-03-20";
/// The day whose data changes between loads (its month is March), and its month's object.
const DAY: &str = "2024-03-05";
const DAY_OBJECT: &str = "real_chats/year=2024/month=3/data.parquet";
/// The prefix every test writes under, in a bucket of its own.
const PREFIX: &str = "lake";
/// How long anything waited for may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(180);

/// A table's rows as pyarrow reads them (Hive keys included), each as a JSON object.
type Rows = Vec<serde_json::Map<String, Value>>;

/// The simulator, a bucket, a state database, and configurations loading `real_chats` and
/// `thulium_chat_summary_hourly` into the bucket and into a local folder.
struct Lake {
    dir: tempfile::TempDir,
    dump: Dump,
    sim: RunningSimulator,
    db: TestDb,
    bucket: Bucket,
    /// The S3 warehouse and the local one, both loading from `sim`.
    s3: PathBuf,
    local: PathBuf,
}

impl Lake {
    async fn new() -> Lake {
        let dump = dump(&[
            "--seed",
            "13",
            "--start",
            "2024-02-08",
            "--days",
            "45",
            "--organizations",
            "1",
            "--sessions-per-day",
            "30",
            "--thulium-users",
            "3",
        ]);
        let sim = serve(&dump.path).await;
        let (dir, db, bucket) = (tempfile::tempdir().unwrap(), TestDb::new().await, Bucket::new().await);
        let mut lake = Lake { dir, dump, sim, db, bucket, s3: PathBuf::new(), local: PathBuf::new() };
        (lake.s3, lake.local) = lake.configs("loaded", &lake.sim);
        lake
    }

    /// `s3://BUCKET/lake`.
    fn url(&self) -> String {
        self.bucket.url(PREFIX)
    }

    fn local_root(&self) -> PathBuf {
        self.dir.path().join("local-wh")
    }

    /// The S3 and local configurations for `sim`, in `dir/name-s3` and `dir/name-local`.
    fn configs(&self, name: &str, sim: &RunningSimulator) -> (PathBuf, PathBuf) {
        let s3 = format!("  kind: parquet\n  path: {}\n  state: {}\n", self.url(), self.db.url);
        let local = format!("  kind: parquet\n  path: {}\n", self.local_root().display());
        (self.config(&format!("{name}-s3"), sim, &s3), self.config(&format!("{name}-local"), sim, &local))
    }

    /// A configuration of both jobs, giosg and Thulium from `sim`, and the `warehouse:` keys `wh`.
    fn config(&self, name: &str, sim: &RunningSimulator, wh: &str) -> PathBuf {
        let mut jobs = shipped_jobs_of("chat_sessions", None);
        jobs.extend(shipped_jobs_of("chat_summary", None));
        jobs.retain(|(f, _)| [DAILY, HOURLY].iter().any(|j| *f == format!("{j}.yaml")));
        assert_eq!(jobs.len(), 2);
        let path = write_config_with(&self.dir.path().join(name), sim, TOKEN, wh, &jobs);
        let thulium = format!(
            "sources:\n  thulium:\n    kind: thulium\n    base_url: {}\n    username: api_user\n    password: {TOKEN}\n    \
             time_zone: Europe/Helsinki\n    requests_per_second: 1000\n    timeout_secs: 10\n    max_retries: 3\n    \
             max_retry_delay_secs: 1\n",
            sim.base_url()
        );
        let text = std::fs::read_to_string(&path).unwrap().replacen("sources:\n", &thulium, 1);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A simulator serving the dump plus one more real chat on [`DAY`], and the configurations
    /// that load from it into the same two warehouses.
    async fn changed(&self) -> (RunningSimulator, PathBuf, PathBuf) {
        let org = self.sim.handle.dataset().organizations[0].id.clone();
        let mut text = std::fs::read_to_string(&self.dump.path).unwrap();
        text.push_str(&format!("{}\n", real_chat_record(&format!("{DAY}T10:00:00.000Z"), &org, "restated", 12.5)));
        let path = self.dir.path().join("changed.jsonl");
        std::fs::write(&path, text).unwrap();
        let sim = Simulator::new(Dataset::read(&path).unwrap(), FaultConfig::default(), 1).spawn().await.unwrap();
        let (s3, local) = self.configs("changed", &sim);
        (sim, s3, local)
    }

    /// chatetl with `config` and `args`, its S3 requests sent to `endpoint`.
    fn cli(&self, endpoint: &str, config: &Path, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        s3::chatetl(endpoint, &all)
    }

    /// `cli` straight to the S3 server, which must succeed.
    fn ok(&self, config: &Path, args: &[&str]) -> String {
        let (code, out, err) = self.cli(&s3::endpoint(), config, args);
        assert_eq!(code, 0, "chatetl {args:?}:\n{out}\n{err}");
        out
    }

    /// A backfill of `job` from..to with `config`, straight to the S3 server.
    fn backfill(&self, config: &Path, job: &str, from: &str, to: &str) {
        self.ok(config, &["backfill", "--job", job, "--from", from, "--to", to]);
    }

    /// `job`'s entry of `status --json` in the S3 warehouse.
    fn status(&self, job: &str) -> Value {
        let out = self.ok(&self.s3, &["status", "--json"]);
        let all: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        all.into_iter().find(|s| s["job"] == job).unwrap_or_else(|| panic!("no {job} in {out}"))
    }

    /// `table` in the bucket, read with pyarrow over S3.
    fn s3_rows(&self, table: &str) -> Rows {
        pyarrow_rows(&format!("{}/{PREFIX}/{table}", self.bucket.name), true)
    }

    /// `table` in the local warehouse, read with pyarrow from disk.
    fn local_rows(&self, table: &str) -> Rows {
        pyarrow_rows(self.local_root().join(table).to_str().unwrap(), false)
    }

    /// Every object key under the prefix, and each one's ETag.
    async fn objects(&self) -> BTreeMap<String, String> {
        let prefix = format!("{PREFIX}/");
        let objects = self.bucket.objects(&prefix).await;
        objects.into_iter().map(|o| (o.key[prefix.len()..].to_string(), o.etag)).collect()
    }

    /// (run id, loaded at) of each of `job`'s loaded windows, by window start, from the state
    /// in PostgreSQL; every row is the bucket URL's.
    async fn window_loads(&self, job: &str) -> BTreeMap<String, (String, String)> {
        let rows = sqlx::query(
            "SELECT target, to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS'), run_id, \
             loaded_at::text FROM chatetl.window_loads WHERE job = $1",
        )
        .bind(job)
        .fetch_all(&self.db.pool().await)
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                assert_eq!(r.get::<String, _>(0), self.url(), "the state is keyed by the path URL");
                (r.get(1), (r.get(2), r.get(3)))
            })
            .collect()
    }
}

/// Every row of the Hive-partitioned Parquet dataset at `location` (`BUCKET/PREFIX/TABLE` on
/// the S3 server, or a local folder), read with pyarrow; NaN as the string `"NaN"`.
fn pyarrow_rows(location: &str, over_s3: bool) -> Rows {
    const READ: &str = r#"
import json, sys
import pyarrow.dataset as ds, pyarrow.fs as fs
location, endpoint, key, secret, region = sys.argv[1:]
filesystem = None
if endpoint:
    filesystem = fs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http",
                                 access_key=key, secret_key=secret, region=region)
table = ds.dataset(location, filesystem=filesystem, format="parquet", partitioning="hive").to_table()
for row in table.to_pylist():
    row = {k: "NaN" if isinstance(v, float) and v != v else v for k, v in row.items()}
    print(json.dumps(row, sort_keys=True, default=str))
"#;
    let python =
        std::env::var("CHATETL_TEST_PYTHON").expect("CHATETL_TEST_PYTHON is set: run the suite with scripts/test");
    let endpoint = if over_s3 { s3::endpoint() } else { String::new() };
    let out = std::process::Command::new(python)
        .args(["-c", READ, location, &endpoint, s3::ACCESS_KEY, s3::SECRET_KEY, s3::REGION])
        .output()
        .unwrap();
    assert!(out.status.success(), "pyarrow reads {location}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| match serde_json::from_str(l).unwrap() {
            Value::Object(row) => row,
            other => panic!("not a row: {other}"),
        })
        .collect()
}

/// Rows as sorted JSON text without the columns in `skip`: compared whole.
fn text(rows: &Rows, skip: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.retain(|k, _| !skip.contains(&k.as_str()));
            Value::Object(r).to_string()
        })
        .collect();
    out.sort();
    out
}

/// What differs between two loads of the same data.
const LOAD_METADATA: [&str; 2] = ["_loaded_at", "_run_id"];

/// Rows (all columns, as text) by `bucket_date`.
fn by_date(rows: &Rows) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r["bucket_date"].as_str().unwrap().to_string())
            .or_default()
            .push(Value::Object(r.clone()).to_string());
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

/// The org-scope value of `real_chats` on `date`.
fn org_real_chats(rows: &Rows, date: &str) -> i64 {
    let org: Vec<_> = rows.iter().filter(|r| r["bucket_date"] == date && r["scope"] == "org").collect();
    assert_eq!(org.len(), 1, "one org row on {date}");
    org[0]["real_chats"].as_i64().unwrap()
}

/// Waits until `proxy` holds a request; fails when `child` exits first or after [`PATIENCE`].
async fn until_held(proxy: &FaultProxy, child: &mut std::process::Child, log: &Path) {
    let mut held = proxy.held();
    let deadline = Instant::now() + PATIENCE;
    while *held.borrow_and_update() == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("chatetl exited ({status}) before a PUT was held: {}", std::fs::read_to_string(log).unwrap());
        }
        assert!(Instant::now() < deadline, "no PUT held within {PATIENCE:?}: {:?}", proxy.log());
        // Woken by the hold; the timeout only lets the loop see an early exit.
        let _ = tokio::time::timeout(Duration::from_millis(250), held.changed()).await;
    }
}

/// The keys of a month's object for both jobs' February and March.
fn expected_keys() -> Vec<String> {
    [DAILY, HOURLY].iter().flat_map(|t| (2..=3).map(move |m| format!("{t}/year=2024/month={m}/data.parquet"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_to_s3_holds_the_rows_and_objects_of_the_same_backfill_on_disk() {
    let lake = Lake::new().await;
    // The hourly job over the end of February (2024 is a leap year) into March: 144 windows.
    let (hourly_from, hourly_to) = ("2024-02-27", "2024-03-03");
    for config in [&lake.s3, &lake.local] {
        lake.backfill(config, DAILY, FROM, TO);
        lake.backfill(config, HOURLY, hourly_from, hourly_to);
    }

    // Exactly the month objects, named as the local files are: no temp or stray objects.
    let keys: Vec<String> = lake.objects().await.into_keys().collect();
    assert_eq!(keys, expected_keys());
    let local_root = lake.local_root();
    let local_files: Vec<String> = parquet_files(&local_root)
        .iter()
        .map(|f| f.strip_prefix(&local_root).unwrap().to_str().unwrap().to_string())
        .filter(|f| !f.starts_with('_'))
        .collect();
    assert_eq!(keys, local_files);

    for (table, days) in [(DAILY, 40), (HOURLY, 6)] {
        let (s3_rows, local_rows) = (lake.s3_rows(table), lake.local_rows(table));
        assert_eq!(by_date(&s3_rows).len(), days, "{table}: every day has rows");
        assert_eq!(text(&s3_rows, &LOAD_METADATA), text(&local_rows, &LOAD_METADATA), "{table}: the same rows");
        // `status` reports the windows and rows from the state in PostgreSQL.
        let status = lake.status(table);
        let windows = if table == HOURLY { 24 * days } else { days } as u64;
        assert_eq!(status["windows_loaded"], windows, "{table}: {status}");
        assert_eq!(status["rows_loaded"], s3_rows.len() as u64, "{table}: {status}");
        assert_eq!(status["windows_failed"], 0, "{table}: {status}");
        assert_eq!(lake.window_loads(table).await.len() as u64, windows, "{table}: a load recorded per window");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_a_changed_day_replaces_only_its_month_object_and_its_rows() {
    let lake = Lake::new().await;
    lake.backfill(&lake.s3, DAILY, FROM, TO);
    let (objects, rows, loads) = (lake.objects().await, lake.s3_rows(DAILY), lake.window_loads(DAILY).await);

    let (_changed_sim, changed, _) = lake.changed().await;
    lake.ok(&changed, &["run", "--job", DAILY, "--from", DAY, "--to", DAY]);

    let after = lake.objects().await;
    assert_eq!(after.keys().collect::<Vec<_>>(), objects.keys().collect::<Vec<_>>(), "the same objects");
    for (key, etag) in &objects {
        assert_eq!(after[key] != *etag, key == DAY_OBJECT, "{key}: replaced exactly when it holds {DAY}");
    }
    // The other days' rows are byte for byte the old ones (load metadata included); the day has
    // the new chat.
    let new_rows = lake.s3_rows(DAILY);
    let (mut old_days, mut new_days) = (by_date(&rows), by_date(&new_rows));
    assert_eq!(org_real_chats(&new_rows, DAY), org_real_chats(&rows, DAY) + 1);
    assert_ne!(old_days.remove(DAY), new_days.remove(DAY));
    assert_eq!(old_days, new_days, "the rows of every other day are unchanged");
    // Only the day's load is recorded anew.
    let new_loads = lake.window_loads(DAILY).await;
    let reloaded: Vec<_> = loads.keys().filter(|w| loads[*w] != new_loads[*w]).collect();
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    assert_eq!(reloaded[0], "2024-03-04T22:00:00", "{DAY} in Helsinki, in UTC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_killed_during_its_partition_put_leaves_the_old_object_and_state() {
    let lake = Lake::new().await;
    lake.backfill(&lake.s3, DAILY, FROM, TO);
    let (objects, rows, loads) = (lake.objects().await, lake.s3_rows(DAILY), lake.window_loads(DAILY).await);

    // The reload's PUT of March's object (and any retry of it) is held by the proxy; chatetl
    // is killed while it waits for the answer.
    let proxy = FaultProxy::start(&s3::endpoint()).await;
    proxy.fault(Some(Method::PUT), DAY_OBJECT, usize::MAX, Fault::Hold);
    let (_changed_sim, changed, _) = lake.changed().await;
    let log = lake.dir.path().join("killed.log");
    let mut child = s3::command(&proxy.url)
        .args(["--config", changed.to_str().unwrap(), "run", "--job", DAILY, "--from", DAY, "--to", DAY])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    until_held(&proxy, &mut child, &log).await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(lake.objects().await, objects, "every object is the old one, and no other appeared");
    assert_eq!(text(&lake.s3_rows(DAILY), &[]), text(&rows, &[]), "pyarrow reads the old rows");
    assert_eq!(lake.window_loads(DAILY).await, loads, "the state does not record the reload");
    let forwarded: Vec<_> = proxy.log().into_iter().filter(|l| l.method == Method::PUT && l.fault.is_none()).collect();
    assert!(forwarded.iter().all(|l| !l.path.ends_with(DAY_OBJECT)), "no PUT of {DAY_OBJECT} was forwarded");

    // A new run completes, with the day's new rows; the killed run is recorded as died.
    lake.ok(&changed, &["run", "--job", DAILY, "--from", DAY, "--to", DAY]);
    let new_rows = lake.s3_rows(DAILY);
    assert_eq!(org_real_chats(&new_rows, DAY), org_real_chats(&rows, DAY) + 1);
    let (mut old_days, mut new_days) = (by_date(&rows), by_date(&new_rows));
    old_days.remove(DAY);
    new_days.remove(DAY);
    assert_eq!(old_days, new_days, "the rows of every other day are unchanged");
    let new_loads = lake.window_loads(DAILY).await;
    assert_eq!(loads.keys().filter(|w| loads[*w] != new_loads[*w]).count(), 1, "the day's load is recorded");
    let died: i64 = sqlx::query_scalar("SELECT count(*) FROM chatetl.runs WHERE job = $1 AND status = 'died'")
        .bind(DAILY)
        .fetch_one(&lake.db.pool().await)
        .await
        .unwrap();
    assert_eq!(died, 1, "the killed run is recorded as died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_failed_requests_are_retried_and_the_rows_are_right() {
    let lake = Lake::new().await;
    let proxy = FaultProxy::start(&s3::endpoint()).await;
    // The backfill's first PUTs of data objects: three throttled, then two server errors.
    proxy.fault(Some(Method::PUT), "/data.parquet", 3, Fault::SlowDown);
    proxy.fault(Some(Method::PUT), "/data.parquet", 2, Fault::InternalError);
    let (code, out, err) = lake.cli(&proxy.url, &lake.s3, &["backfill", "--job", DAILY, "--from", FROM, "--to", TO]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!((proxy.injected(Fault::SlowDown), proxy.injected(Fault::InternalError)), (3, 2));

    // A reload reads its month's object: a server error and a throttle on the first GETs.
    proxy.fault(Some(Method::GET), "/data.parquet", 1, Fault::InternalError);
    proxy.fault(Some(Method::GET), "/data.parquet", 1, Fault::SlowDown);
    let (_changed_sim, changed, changed_local) = lake.changed().await;
    let (code, out, err) = lake.cli(&proxy.url, &changed, &["run", "--job", DAILY, "--from", DAY, "--to", DAY]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!((proxy.injected(Fault::SlowDown), proxy.injected(Fault::InternalError)), (4, 3), "{:?}", proxy.log());

    // Each faulted request was sent again and then answered.
    let log = proxy.log();
    for (i, l) in log.iter().enumerate().filter(|(_, l)| l.fault.is_some()) {
        assert!(
            log[i + 1..].iter().any(|r| r.method == l.method && r.path == l.path && (200..300).contains(&r.status)),
            "{} {} ({:?}) was retried: {log:?}",
            l.method,
            l.path,
            l.fault
        );
    }
    assert_eq!(lake.objects().await.into_keys().collect::<Vec<_>>(), &expected_keys()[..2]);

    // The same two loads into a local folder give the same rows.
    lake.backfill(&lake.local, DAILY, FROM, TO);
    lake.ok(&changed_local, &["run", "--job", DAILY, "--from", DAY, "--to", DAY]);
    assert_eq!(text(&lake.s3_rows(DAILY), &LOAD_METADATA), text(&lake.local_rows(DAILY), &LOAD_METADATA));
    assert_eq!(lake.status(DAILY)["windows_loaded"], 40);
}

/// A backfill of two days with the secret key `SECRET`, its S3 requests sent to `endpoint`
/// with `extra` options: (code, stdout, stderr), after checking neither shows the secret.
fn backfill_with_secret(lake: &Lake, endpoint: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--config", lake.s3.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["backfill", "--job", DAILY, "--from", "2024-03-01", "--to", "2024-03-02"]);
    let (code, out, err) = output(s3::command(endpoint).env("AWS_SECRET_ACCESS_KEY", SECRET).args(&args));
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "{extra:?}: the secret is printed:\n{out}\n{err}");
    assert!(
        err.contains(&lake.bucket.name) || out.contains(&lake.bucket.name),
        "{extra:?}: the error names the bucket:\n{out}\n{err}"
    );
    (code, out, err)
}

const SECRET: &str = "zebra-6f1c-SECRET-never-printed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_never_reaches_the_output_when_the_store_refuses_it() {
    let lake = Lake::new().await;
    let proxy = FaultProxy::start(&s3::endpoint()).await;
    // Refused writes (a read-only policy): the window fails as refused credentials, recorded so.
    proxy.fault(Some(Method::PUT), "", usize::MAX, Fault::AccessDenied);
    let (code, out, err) = backfill_with_secret(&lake, &proxy.url, &["-v", "--log-format", "json"]);
    assert_eq!(code, 2, "refused credentials are the configuration's:\n{out}\n{err}");
    let status = ["--config", lake.s3.to_str().unwrap(), "status", "--json"];
    let (code, out, err) = output(s3::command(&s3::endpoint()).env("AWS_SECRET_ACCESS_KEY", SECRET).args(status));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "status prints the secret:\n{out}\n{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    let daily = all.iter().find(|s| s["job"] == DAILY).unwrap();
    assert_eq!(daily["last_error_kind"], "configuration", "{daily}");

    // Every request refused, from the first listing on.
    proxy.fault(None, "", usize::MAX, Fault::AccessDenied);
    for extra in [&[][..], &["-v", "--log-format", "json"]] {
        let (code, out, err) = backfill_with_secret(&lake, &proxy.url, extra);
        assert_eq!(code, 2, "{extra:?}: refused credentials are the configuration's:\n{out}\n{err}");
    }
    assert!(proxy.log().iter().all(|l| l.status == 403 || l.method != Method::PUT), "{:?}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_never_reaches_the_output_when_the_store_does_not_answer() {
    let lake = Lake::new().await;
    // A port nothing listens on: object_store retries the connection, then the warehouse fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, out, err) = backfill_with_secret(&lake, &format!("http://{closed}"), &["-v"]);
    assert_eq!(code, 1, "a warehouse failure, which a later run may not have:\n{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_path_without_state_is_refused_before_anything_is_sent() {
    let lake = Lake::new().await;
    let text = std::fs::read_to_string(&lake.s3).unwrap();
    let state_line = format!("  state: {}\n", lake.db.url);
    assert!(text.contains(&state_line));
    std::fs::write(&lake.s3, text.replace(&state_line, "")).unwrap();
    let proxy = FaultProxy::start(&s3::endpoint()).await;
    for args in [&["validate"][..], &["status"], &["run", "--job", DAILY, "--from", DAY, "--to", DAY]] {
        let (code, out, err) = lake.cli(&proxy.url, &lake.s3, args);
        assert_eq!(code, 2, "{args:?}:\n{out}\n{err}");
        assert!(err.contains("warehouse.state"), "{args:?}: the message names warehouse.state:\n{err}");
    }
    assert!(proxy.log().is_empty(), "nothing was sent to S3: {:?}", proxy.log());
    assert!(lake.sim.handle.requests().is_empty(), "nothing was sent to the source");
}

//! End to end: job files → simulator over HTTP → PostgreSQL and Parquet, with values checked
//! against the dumped dataset, idempotent reloads, fault isolation, resumable backfills, the
//! minimum request count, retries and secrets.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow_schema::DataType;
use chatetl::config::{self, Config};
use chatetl::runner::{Progress, RunKind, RunOptions, Runner};
use chatetl::simulator::{FaultConfig, FaultRule, RunningSimulator};
use chrono::{NaiveDate, Utc};
use sqlx::Row as _;

use crate::util::{
    Row, TOKEN, Table, TestDb, TestWarehouse, assert_tables_match, chatetl, dump, parquet_table, pg_table, read_dump,
    serve, shipped_jobs, write_config,
};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

fn real(r: &Row) -> bool {
    matches!(r.s("chat_type"), "visitor" | "external")
        && r.n("user_message_count") >= 2.0
        && r.n("visitor_message_count") >= 1.0
}

/// Expected values of a metric from the dump: rows of `org` passing `keep`, grouped by local date
/// and scope key, reduced by `agg`, for dates in `days`.
fn expected(
    rows: &[Row],
    org: &str,
    days: &[NaiveDate],
    scopes: &[&str],
    keep: fn(&Row) -> bool,
    agg: &str,
    field: &str,
) -> Table {
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<&Row>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.s("owner_organization_id") == org && scopes.contains(&r.s("scope")) && keep(r)) {
        let date = r.time.with_timezone(&HEL).date_naive();
        if !days.contains(&date) {
            continue;
        }
        let who = match r.s("scope") {
            "team" => Some(r.s("team_id").to_string()),
            "user" => Some(r.s("user_id").to_string()),
            _ => None,
        };
        groups.entry((date.to_string(), r.s("scope").to_string(), who)).or_default().push(r);
    }
    // Org scope has a row for every day, zero (or null) when nothing matched.
    if scopes.contains(&"org") {
        for d in days {
            groups.entry((d.to_string(), "org".into(), None)).or_default();
        }
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let v = match agg {
                "count" => Some(rs.len() as f64),
                "sum" => Some(rs.iter().map(|r| r.n(field)).sum()),
                "avg" if rs.is_empty() => None,
                "avg" => Some(rs.iter().map(|r| r.n(field)).sum::<f64>() / rs.len() as f64),
                "distinct" => Some(rs.iter().flat_map(|r| r.list(field)).collect::<HashSet<_>>().len() as f64),
                a => panic!("{a}"),
            };
            (k, v)
        })
        .collect()
}

/// The jobs checked against the dump: (table, column, scopes, filter, aggregation, field).
type Check = (&'static str, &'static str, &'static [&'static str], fn(&Row) -> bool, &'static str, &'static str);
const CHECKS: &[Check] = &[
    ("real_chats", "real_chats", &["org", "team", "user"], real, "count", ""),
    ("sales_in_real_chats", "sales_in_real_chats", &["org", "team", "user"], real, "sum", "sales"),
    (
        "average_purchase_value_in_real_chats",
        "average_purchase_value",
        &["org", "team", "user"],
        |r| real(r) && r.n("order_count") > 0.0,
        "avg",
        "sales",
    ),
    (
        "unique_visitors",
        "unique_visitors",
        &["org"],
        |r| r.s("chat_type") == "visitor" && r.s("chat_initiator") == "visitor",
        "distinct",
        "visitor_ids",
    ),
    (
        "short_chats",
        "short_chats",
        &["org", "team", "user"],
        |r| {
            let (u, v) = (r.n("user_message_count"), r.n("visitor_message_count"));
            matches!(r.s("chat_type"), "visitor" | "external") && u >= 1.0 && (u < 2.0 || v < 1.0)
        },
        "count",
        "",
    ),
];

fn days(from: &str, to: &str) -> Vec<NaiveDate> {
    let (a, b) = (from.parse::<NaiveDate>().unwrap(), to.parse::<NaiveDate>().unwrap());
    a.iter_days().take_while(|d| *d <= b).collect()
}

struct Setup {
    _dump: crate::util::Dump,
    _dir: tempfile::TempDir,
    rows: Vec<Row>,
    org: String,
    _sim: RunningSimulator,
    config_path: std::path::PathBuf,
}

/// A dataset covering both 2024 DST changes of Helsinki, served, with the shipped jobs.
async fn setup(warehouse: impl FnOnce(&Path) -> String, start: &str, days: &str, sessions: &str) -> Setup {
    let d = dump(&["--seed", "31", "--start", start, "--days", days, "--sessions-per-day", sessions]);
    let (orgs, rows) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap().to_string();
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path());
    let warehouse =
        if wh.starts_with("postgres") { TestWarehouse::Postgres(&wh) } else { TestWarehouse::Parquet(Path::new(&wh)) };
    let config_path = write_config(dir.path(), &sim, TOKEN, warehouse, &shipped_jobs(Some(start)));
    Setup { _dump: d, _dir: dir, rows, org, _sim: sim, config_path }
}

fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    chatetl(&all)
}

const RANGES: [(&str, &str); 2] = [("2024-03-29", "2024-04-01"), ("2024-10-26", "2024-10-28")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_values_match_the_dump_across_both_dst_changes() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let s = setup(|_| url, "2024-03-28", "216", "25").await;
    for (from, to) in RANGES {
        let (code, out, err) = run_cli(&s.config_path, &["run", "--from", from, "--to", to]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let pool = db.pool().await;
    let all_days: Vec<NaiveDate> = RANGES.iter().flat_map(|(a, b)| days(a, b)).collect();
    for (table, column, scopes, keep, agg, field) in CHECKS {
        let want = expected(&s.rows, &s.org, &all_days, scopes, *keep, agg, field);
        assert_tables_match(table, &pg_table(&pool, table, column).await, &want, *agg == "distinct");
    }
    // The 23- and 25-hour days are single rows with their own local date.
    let starts: Vec<(String, String)> = sqlx::query("SELECT bucket_date::text, to_char(bucket_start AT TIME ZONE 'Europe/Helsinki', 'HH24:MI') FROM analytics.real_chats WHERE scope = 'org' ORDER BY bucket_start")
        .fetch_all(&pool).await.unwrap().into_iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(starts.len(), 7);
    assert!(starts.iter().all(|(_, t)| t == "00:00"), "every bucket starts at local midnight: {starts:?}");
    let comment: String =
        sqlx::query_scalar("SELECT obj_description('analytics.real_chats'::regclass)").fetch_one(&pool).await.unwrap();
    assert!(comment.starts_with("Real chats per day"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_values_match_the_dump_and_files_are_one_per_local_month() {
    let s = setup(|d| d.join("wh").display().to_string(), "2024-03-28", "216", "25").await;
    for (from, to) in RANGES {
        let (code, out, err) = run_cli(&s.config_path, &["run", "--from", from, "--to", to]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let root = s.config_path.parent().unwrap().join("wh");
    let all_days: Vec<NaiveDate> = RANGES.iter().flat_map(|(a, b)| days(a, b)).collect();
    for (table, column, scopes, keep, agg, field) in CHECKS {
        let want = expected(&s.rows, &s.org, &all_days, scopes, *keep, agg, field);
        assert_tables_match(table, &parquet_table(&root, table, column), &want, *agg == "distinct");
    }
    // 2024-03-29 .. 04-01 and 10-26 .. 10-28: three local months, one file each.
    let table = root.join("real_chats");
    let files: Vec<_> = crate::util::parquet_files(&table)
        .iter()
        .map(|p| p.strip_prefix(&table).unwrap().display().to_string())
        .collect();
    assert_eq!(
        files,
        ["year=2024/month=10/data.parquet", "year=2024/month=3/data.parquet", "year=2024/month=4/data.parquet"],
        "one file per local month"
    );
    // The window of local 2024-03-31 (UTC start 2024-03-30T22:00Z, a 23-hour day) is in March's.
    let march = crate::util::parquet_window_rows(&table.join("year=2024/month=3"));
    let utc = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    assert_eq!(
        march.keys().copied().collect::<Vec<_>>(),
        [utc("2024-03-28T22:00:00Z"), utc("2024-03-29T22:00:00Z"), utc("2024-03-30T22:00:00Z")],
        "March's file holds the windows of 03-29, 03-30 and 03-31, by their UTC start"
    );
    let file = std::fs::File::open(table.join("year=2024/month=3/data.parquet")).unwrap();
    let schema = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().schema().clone();
    assert_eq!(
        schema.field_with_name("bucket_start").unwrap().data_type(),
        &DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(schema.metadata()["chatetl.time_zone"], "Europe/Helsinki");
}

async fn open_runner(config_path: &Path) -> (Config, Runner) {
    let config = config::load(config_path).unwrap();
    let runner = Runner::open(config.clone()).await.unwrap();
    (config, runner)
}

/// Every row of a Postgres table minus load metadata, sorted.
async fn pg_rows(pool: &sqlx::PgPool, table: &str) -> Vec<String> {
    let sql = format!("SELECT (t.*)::text FROM (SELECT * FROM analytics.\"{table}\") t");
    let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap();
    // Drop the trailing _window_start, _loaded_at, _run_id fields (load metadata changes).
    rows = rows.into_iter().map(|r| r.rsplitn(4, ',').last().unwrap().to_string()).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_a_range_or_an_overlapping_one_leaves_identical_rows() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let s = setup(|_| url, "2024-05-01", "20", "30").await;
    let pool = db.pool().await;
    let run = |a: &str, b: &str| {
        let (code, out, err) = run_cli(
            &s.config_path,
            &["run", "--job", "real_chats", "--job", "sales_in_real_chats", "--from", a, "--to", b],
        );
        assert_eq!(code, 0, "{out}\n{err}");
    };
    run("2024-05-03", "2024-05-12");
    let first = pg_rows(&pool, "real_chats").await;
    let sales_first = pg_rows(&pool, "sales_in_real_chats").await;
    run("2024-05-03", "2024-05-12");
    run("2024-05-08", "2024-05-15");
    run("2024-05-03", "2024-05-12");
    let again = pg_rows(&pool, "real_chats").await;
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) - count(DISTINCT (bucket_start, scope, team_id, user_id)) FROM analytics.real_chats",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0);
    let extra: Vec<String> = again.iter().filter(|r| !first.contains(r)).cloned().collect();
    assert!(
        extra.iter().all(|r| r.contains("2024-05-13") || r.contains("2024-05-14") || r.contains("2024-05-15")),
        "only the new days were added: {extra:?}"
    );
    assert_eq!(again.len() - extra.len(), first.len(), "the first range is unchanged");
    let sales_again = pg_rows(&pool, "sales_in_real_chats").await;
    assert!(sales_first.iter().all(|r| sales_again.contains(r)));
    // Every loaded window has one load record; the watermark did not move (history starts earlier: 05-01 missing).
    let (_, runner) = open_runner(&s.config_path).await;
    let loads = runner.sink.window_loads("real_chats").await.unwrap();
    assert_eq!(loads.len(), 13);
    assert_eq!(runner.sink.job_state("real_chats").await.unwrap().watermark, None);
}

fn job_with(name: &str, start: &str, max_windows: u32) -> (&'static str, String) {
    let text = chatetl::demo::shipped::JOBS.iter().find(|(n, _)| *n == format!("{name}.yaml")).unwrap().1;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("start:") {
                format!("start: {start}\nmax_windows_per_request: {max_windows}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    (Box::leak(format!("{name}.yaml").into_boxed_str()), text + "\n")
}

/// A dataset dumped with `args`, served, and a config with one job writing to `warehouse`.
struct One {
    _dump: crate::util::Dump,
    _dir: tempfile::TempDir,
    sim: RunningSimulator,
    path: std::path::PathBuf,
}

async fn one_job(args: &[&str], warehouse: TestWarehouse<'_>, job: (&'static str, String)) -> One {
    let d = dump(args);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &sim, TOKEN, warehouse, &[job]);
    One { _dump: d, _dir: dir, sim, path }
}

fn opts(kind: RunKind) -> RunOptions {
    RunOptions { kind, concurrency: 2, progress: Progress::Log, force: false, ..RunOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_window_keeps_its_old_rows_and_holds_the_watermark() {
    let db = TestDb::new().await;
    let One { sim, path, .. } = &one_job(
        &["--seed", "8", "--start", "2024-06-01", "--days", "12", "--sessions-per-day", "30"],
        TestWarehouse::Postgres(&db.url),
        job_with("real_chats", "2024-06-01", 3),
    )
    .await;
    let (config, runner) = open_runner(path).await;
    let job = &config.jobs["real_chats"];
    let tz = job.time_zone;
    let range = |a: &str, b: &str| {
        let (f, t) = chatetl::plan::parse_range(a, b, tz).unwrap();
        chatetl::plan::windows_overlapping(job.window, tz, f, t)
    };
    let first = runner.run(job, range("2024-06-01", "2024-06-09"), &opts(RunKind::Range)).await.unwrap();
    assert!(first.ok());
    assert_eq!(
        runner.sink.job_state("real_chats").await.unwrap().watermark,
        Some(chatetl::time::local_day_start(tz, NaiveDate::from_ymd_opt(2024, 6, 10).unwrap()))
    );
    let pool = db.pool().await;
    let before = pg_rows(&pool, "real_chats").await;

    // Fail the chunk 06-04..06-06 for good (every attempt of its three scope requests).
    sim.handle.add_rule(FaultRule {
        body_contains: Some("2024-06-04T00:00:00.000+03:00".into()),
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let runs_before: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT _run_id FROM analytics.real_chats").fetch_all(&pool).await.unwrap();
    let report = runner.run(job, range("2024-06-01", "2024-06-12"), &opts(RunKind::Range)).await.unwrap();
    assert_eq!((report.windows_loaded, report.windows_failed), (9, 3));
    let msg = &report.failures[0].message;
    assert!(
        msg.contains("job real_chats")
            && msg.contains("2024-06-04")
            && msg.contains("503")
            && msg.contains("/chat_sessions"),
        "{msg}"
    );
    // The failed days keep the rows of the first run; the others were replaced by the second.
    let failed_days: Vec<(String, String)> = sqlx::query("SELECT DISTINCT bucket_date::text, _run_id FROM analytics.real_chats WHERE bucket_date BETWEEN '2024-06-04' AND '2024-06-06'")
        .fetch_all(&pool).await.unwrap().into_iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(failed_days.len(), 3);
    assert!(failed_days.iter().all(|(_, run)| runs_before.contains(run)));
    let after = pg_rows(&pool, "real_chats").await;
    let new_days = after
        .iter()
        .filter(|r| ["2024-06-10", "2024-06-11", "2024-06-12"].iter().any(|d| r.contains(&format!(",{d},"))))
        .count();
    assert!(new_days > 0);
    assert_eq!(after.len(), before.len() + new_days, "06-01..06-09 keep as many rows; 06-10..12 are added");
    // The failed days still hold their first load, so every window up to 06-12 is loaded and the
    // watermark covers them (a never-loaded failed window holds it: see the next test).
    assert_eq!(
        runner.sink.job_state("real_chats").await.unwrap().watermark,
        Some(chatetl::time::local_day_start(tz, NaiveDate::from_ymd_opt(2024, 6, 13).unwrap()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_stops_before_a_failed_window_and_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dump(&["--seed", "8", "--start", "2024-06-01", "--days", "12", "--sessions-per-day", "30"]);
    let sim = serve(&d.path).await;
    let wh = dir.path().join("wh");
    let path =
        write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &[job_with("real_chats", "2024-06-01", 2)]);
    let (config, runner) = open_runner(&path).await;
    let job = &config.jobs["real_chats"];
    sim.handle.add_rule(FaultRule {
        body_contains: Some("2024-06-05T00:00:00.000+03:00".into()),
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![500], ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let now = chatetl::time::local_day_start(job.time_zone, NaiveDate::from_ymd_opt(2024, 6, 11).unwrap());
    let (windows, _) = runner.incremental_windows(job, now).await.unwrap();
    assert_eq!(windows.len(), 10, "06-01 .. 06-10 are complete");
    let report = runner.run(job, windows, &opts(RunKind::Incremental)).await.unwrap();
    assert_eq!(report.windows_failed, 2);
    let june = |d| chatetl::time::local_day_start(job.time_zone, NaiveDate::from_ymd_opt(2024, 6, d).unwrap());
    assert_eq!(
        runner.sink.job_state("real_chats").await.unwrap().watermark,
        Some(june(5)),
        "held before the failed 06-05"
    );
    let loaded = crate::util::parquet_window_rows(&wh.join("real_chats"));
    assert!(loaded.contains_key(&june(8)), "windows after the failure are committed");
    assert!(!loaded.contains_key(&june(5)));

    sim.handle.clear_rules();
    let (windows, _) = runner.incremental_windows(job, now).await.unwrap();
    assert_eq!(windows.first().map(|w| w.start), Some(june(5)), "the next run starts at the watermark");
    assert!(runner.run(job, windows, &opts(RunKind::Incremental)).await.unwrap().ok());
    assert_eq!(runner.sink.job_state("real_chats").await.unwrap().watermark, Some(june(11)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_without_redoing_finished_windows() {
    let db = TestDb::new().await;
    let One { sim, path, .. } = &one_job(
        &["--seed", "9", "--start", "2024-01-01", "--days", "60", "--sessions-per-day", "10"],
        TestWarehouse::Postgres(&db.url),
        job_with("real_chats", "2024-01-01", 10),
    )
    .await;
    // The chunk starting 2024-01-21 fails: the backfill is "interrupted" there.
    sim.handle.add_rule(FaultRule {
        body_contains: Some("2024-01-21T00:00:00.000+02:00".into()),
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![502], ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let (code, out, err) = run_cli(
        path,
        &["backfill", "--job", "real_chats", "--from", "2024-01-01", "--to", "2024-02-29", "--concurrency", "3"],
    );
    assert_eq!(code, 1, "an upstream outage (502 after retries) makes exit code 1: {out}\n{err}");
    assert!(err.contains("job real_chats, window 2024-01-21..2024-01-30") && err.contains("502"), "{err}");
    sim.handle.clear_rules();
    sim.handle.clear_requests();
    let (code, out, err) =
        run_cli(path, &["backfill", "--job", "real_chats", "--from", "2024-01-01", "--to", "2024-02-29"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let requests = sim.handle.requests();
    assert_eq!(requests.len(), 3, "only the failed chunk, once per scope");
    assert!(
        requests
            .iter()
            .all(|r| r.body.contains("2024-01-21T00:00:00.000+02:00")
                && r.body.contains("2024-01-30T23:59:59.999+02:00"))
    );
    assert!(out.contains("skipped"), "{out}");
    let pool = db.pool().await;
    let windows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chatetl.window_loads WHERE target = 'analytics' AND job = 'real_chats'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(windows, 60);
    let wm: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = 'analytics' AND job = 'real_chats'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(wm, Some(chatetl::time::local_day_start(HEL, NaiveDate::from_ymd_opt(2024, 3, 1).unwrap())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_makes_the_minimum_number_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dump(&["--seed", "10", "--start", "2024-01-01", "--days", "70", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let wh = dir.path().join("wh");
    let path = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &shipped_jobs(Some("2024-01-01")));
    let (code, out, err) = run_cli(
        &path,
        &["run", "--job", "real_chats", "--job", "unique_visitors", "--from", "2024-01-01", "--to", "2024-03-02"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let reqs = sim.handle.requests();
    let count = |needle: &str| reqs.iter().filter(|r| r.body.contains(needle)).count();
    // 62 days: real_chats = 2 chunks of 31 days x 3 scopes; unique_visitors (granularity all,
    // org scope) asks for a day bucket per window: 2 chunks too.
    assert_eq!(count("\"count\""), 6);
    assert_eq!(count("hyperUnique"), 2);
    assert!(reqs.iter().filter(|r| r.body.contains("hyperUnique")).all(|r| r.body.contains("\"granularity\":\"day\"")));
    assert_eq!(reqs.len(), 8);
    let (_, plan_out, _) =
        run_cli(&path, &["plan", "--job", "real_chats", "--from", "2024-01-01", "--to", "2024-03-02"]);
    assert!(plan_out.contains("62 day windows") && plan_out.contains("6 requests"), "{plan_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_429_and_503_succeed_and_401_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dump(&["--seed", "10", "--start", "2024-01-01", "--days", "3", "--sessions-per-day", "20"]);
    let sim = serve(&d.path).await;
    let wh = dir.path().join("wh");
    let path =
        write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &[job_with("real_chats", "2024-01-01", 31)]);
    sim.handle.add_rule(FaultRule {
        times: Some(1),
        faults: FaultConfig { throttle_rate: 1.0, retry_after_secs: Some(1), ..FaultConfig::default() },
        ..FaultRule::default()
    });
    sim.handle.add_rule(FaultRule {
        times: Some(2),
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let (code, out, err) = run_cli(&path, &["run", "--from", "2024-01-01", "--to", "2024-01-02"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let statuses: Vec<u16> = sim.handle.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 2);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "every scope answered in the end");
    assert!(
        out.lines().any(|l| l.starts_with("real_chats") && l.split_whitespace().nth(7) == Some("3")),
        "3 retries reported: {out}"
    );

    // A wrong key: one request per scope, no retries, a message naming job, window, status and URL.
    sim.handle.clear_requests();
    let bad = write_config(
        &dir.path().join("bad"),
        &sim,
        "not-the-key",
        TestWarehouse::Parquet(&wh),
        &[job_with("real_chats", "2024-01-01", 31)],
    );
    let (code, _, err) = run_cli(&bad, &["run", "--from", "2024-01-01", "--to", "2024-01-02"]);
    assert_eq!(code, 3, "refused credentials exit 3 (an outage exits 1): {err}");
    // The first 401 cancels the chunk's other scope requests, so 1 to 3 are sent; none twice.
    let sent = sim.handle.requests();
    let bodies: HashSet<&str> = sent.iter().map(|r| r.body.as_str()).collect();
    assert!((1..=3).contains(&sent.len()) && bodies.len() == sent.len(), "401 is not retried: {sent:?}");
    assert!(sent.iter().all(|r| r.status == 401));
    assert!(
        err.contains("job real_chats, window 2024-01-01..2024-01-02")
            && err.contains("upstream returned 401 for POST http://")
            && err.contains("/chat_sessions"),
        "{err}"
    );
    assert!(!err.contains("not-the-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_status_and_metrics_tell_refused_credentials_from_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dump(&["--seed", "10", "--start", "2024-01-01", "--days", "3", "--sessions-per-day", "20"]);
    let sim = serve(&d.path).await;
    let wh = dir.path().join("wh");
    let job = || job_with("real_chats", "2024-01-01", 31);
    let good = write_config(&dir.path().join("good"), &sim, TOKEN, TestWarehouse::Parquet(&wh), &[job()]);
    let bad = write_config(&dir.path().join("bad"), &sim, "not-the-key", TestWarehouse::Parquet(&wh), &[job()]);
    let range = ["run", "--from", "2024-01-01", "--to", "2024-01-02"];
    let status = |config: &Path| {
        let (code, out, err) = run_cli(config, &["status"]);
        assert_eq!(code, 0, "{err}");
        let (_, json, _) = run_cli(config, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        (out, v[0]["last_error_kind"].as_str().map(String::from))
    };
    // Every job's metrics as the daemon records them, from a run of the library's runner.
    // A run as the daemon makes it: its chunks counted into the metrics as they finish.
    let observed_run = async |runner: &chatetl::runner::Runner, job: &chatetl::config::Job, windows| {
        let metrics = Arc::new(chatetl::metrics::Metrics::new());
        metrics.register(&job.name, &job.source, job.endpoint.name());
        let m = metrics.clone();
        let observer = chatetl::runner::ChunkObserver(Arc::new(move |job: &str, c: &chatetl::runner::ChunkDone| {
            m.record_chunk(job, c)
        }));
        let opts = chatetl::runner::RunOptions { observer: Some(observer), ..opts(RunKind::Range) };
        let report = runner.run(job, windows, &opts).await.unwrap();
        metrics.record_run(&report, None, Utc::now());
        metrics.render_openmetrics(Utc::now())
    };
    let errors = |kind: &str| {
        format!(
            "chatetl_job_errors_total{{chatetl_job=\"real_chats\",source=\"giosg\",endpoint=\"chat_sessions\",kind=\"{kind}\"}} 1"
        )
    };

    // An outage: every request answers 503, after its retries.
    sim.handle.add_rule(FaultRule {
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let (code, out, err) = run_cli(&good, &range);
    assert_eq!(code, 1, "an outage exits 1 (retrying later can help): {out}\n{err}");
    let (table, kind) = status(&good);
    assert_eq!(kind.as_deref(), Some("upstream_unavailable"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("real_chats") && l.contains("[upstream_unavailable]")), "{table}");
    let (config, runner) = open_runner(&good).await;
    let (from, to) = chatetl::plan::parse_range("2024-01-01", "2024-01-01", HEL).unwrap();
    let windows = chatetl::plan::windows_overlapping(chatetl::config::WindowUnit::Day, HEL, from, to);
    let text = observed_run(&runner, &config.jobs["real_chats"], windows.clone()).await;
    assert!(text.contains(&errors("upstream_unavailable")), "{text}");
    assert!(!text.contains("kind=\"credentials\""), "{text}");
    sim.handle.clear_rules();

    // Refused credentials: exit 3, and the same warehouse's status says so.
    let (code, out, err) = run_cli(&bad, &range);
    assert_eq!(code, 3, "refused credentials exit 3: {out}\n{err}");
    let (table, kind) = status(&bad);
    assert_eq!(kind.as_deref(), Some("credentials"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("real_chats") && l.contains("[credentials]")), "{table}");
    let (config, runner) = open_runner(&bad).await;
    let text = observed_run(&runner, &config.jobs["real_chats"], windows).await;
    assert!(text.contains(&errors("credentials")), "{text}");
    assert!(!text.contains("kind=\"upstream_unavailable\""), "{text}");

    // Once the upstream answers again, the run succeeds and exits 0.
    let (code, out, err) = run_cli(&good, &range);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_run_after_one_request_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dump(&["--seed", "10", "--start", "2024-01-01", "--days", "3", "--sessions-per-day", "20"]);
    let sim = serve(&d.path).await;
    let wh = dir.path().join("wh");
    // Two jobs of one source (three scopes each), 60 days in chunks of 10 windows.
    let jobs = [job_with("real_chats", "2024-01-01", 10), job_with("short_chats", "2024-01-01", 10)];
    // The token comes from a variable (unset here, so its default applies): the error names it.
    let token = "${CHATETL_TEST_REFUSED_TOKEN:-not-the-key}";
    let bad = write_config(dir.path(), &sim, token, TestWarehouse::Parquet(&wh), &jobs);
    let args = ["backfill", "--job", "real_chats", "--from", "2024-01-01", "--to", "2024-02-29", "--concurrency", "4"];
    let (code, out, err) = run_cli(&bad, &args);
    assert_eq!(code, 3, "refused credentials exit 3: {out}\n{err}");
    assert_eq!(sim.handle.requests().len(), 1, "one request for the whole backfill: {:?}", sim.handle.requests());
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("upstream returned 401 for POST http://") && line.contains("/chat_sessions"), "{line}");
    assert!(line.contains("source `giosg` refused its credentials (from `CHATETL_TEST_REFUSED_TOKEN`)"), "{line}");
    assert!(!err.contains("not-the-key") && !out.contains("not-the-key"), "the token leaked");
    let row = out.lines().find(|l| l.starts_with("real_chats")).unwrap_or_else(|| panic!("{out}"));
    let loaded: usize = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(loaded, 0, "{out}");

    // Both jobs in one run: still one request for the source.
    sim.handle.clear_requests();
    let (code, out, err) = run_cli(&bad, &["run", "--from", "2024-01-01", "--to", "2024-02-29"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert_eq!(sim.handle.requests().len(), 1, "{:?}", sim.handle.requests());
    assert!(
        err.contains(
            "source `giosg`: its credentials (from `CHATETL_TEST_REFUSED_TOKEN`) were refused (401 for POST http://"
        ),
        "{err}"
    );

    // A good token with an organization it does not know: giosg answers 404, a refusal too.
    sim.handle.clear_requests();
    let good = write_config(&dir.path().join("org"), &sim, TOKEN, TestWarehouse::Parquet(&wh), &jobs);
    let org = sim.handle.dataset().organizations[0].id.clone();
    let text = std::fs::read_to_string(&good).unwrap().replace(&org, "no-such-organization");
    std::fs::write(&good, text).unwrap();
    let (code, out, err) = run_cli(&good, &["run", "--from", "2024-01-01", "--to", "2024-02-29"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert_eq!(sim.handle.requests().len(), 1, "{:?}", sim.handle.requests());
    assert!(
        err.contains("upstream returned 404 for POST http://") && err.contains("refused its organization_id"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stored_with_the_old_hashing_scheme_is_adopted_and_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let args = ["--seed", "10", "--start", "2024-01-01", "--days", "3", "--sessions-per-day", "20"];
    let one = one_job(&args, TestWarehouse::Parquet(&wh), job_with("real_chats", "2024-01-01", 31)).await;
    let (sim, path) = (&one.sim, &one.path);
    let (code, out, err) = run_cli(path, &["run", "--from", "2024-01-01", "--to", "2024-01-02"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The warehouse as the previous release left it: every stored hash of the Debug-based scheme.
    let job = config::load(path).unwrap().jobs["real_chats"].clone();
    let (old, new) = (chatetl::state::legacy_definition_hash(&job), chatetl::state::definition_hash(&job));
    assert_ne!(old, new);
    let db = crate::util::parquet_state_db(&wh).await;
    let count = |hash: String| {
        let db = db.clone();
        async move {
            let mut n = 0i64;
            for table in ["jobs", "window_loads"] {
                let sql = format!("SELECT count(*) FROM {table} WHERE job = 'real_chats' AND definition_hash = ?1");
                n += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .bind(hash.clone())
                    .fetch_one(&db)
                    .await
                    .unwrap();
            }
            n
        }
    };
    assert_eq!(count(new.clone()).await, 3, "the job and its two windows");
    for table in ["jobs", "window_loads"] {
        let sql = format!("UPDATE {table} SET definition_hash = ?1 WHERE definition_hash = ?2");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&old).bind(&new).execute(&db).await.unwrap();
    }

    let (_, out, _) = run_cli(path, &["status"]);
    let line = out.lines().find(|l| l.starts_with("real_chats")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" ok ") && !line.contains("CHANGED"), "{out}");
    assert_eq!((count(old.clone()).await, count(new.clone()).await), (0, 3), "every stored hash adopted");
    // The windows count as loaded with the current definition: a backfill skips them.
    sim.handle.clear_requests();
    let (code, out, err) =
        run_cli(path, &["backfill", "--job", "real_chats", "--from", "2024-01-01", "--to", "2024-01-02"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(sim.handle.requests().is_empty(), "nothing reloaded: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_trace_logs() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dump(&["--seed", "10", "--start", "2024-01-01", "--days", "3", "--sessions-per-day", "20"]);
    let sim = serve(&d.path).await;
    let secret_token = TOKEN;
    let path = write_config(
        dir.path(),
        &sim,
        secret_token,
        TestWarehouse::Postgres(&db.url),
        &[job_with("real_chats", "2024-01-01", 31)],
    );
    let mut args = vec!["--config", path.to_str().unwrap(), "-vv", "--log-format"];
    for format in ["json", "pretty"] {
        args.truncate(4);
        args.extend([format, "run", "--from", "2024-01-01", "--to", "2024-01-02"]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
            .args(&args)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.lines().count() > 20, "trace logging is on");
        assert!(!stderr.contains(secret_token) && !stdout.contains(secret_token), "the token leaked");
    }
    let debug = format!("{:?}", config::load(&path).unwrap());
    assert!(!debug.contains(secret_token) && debug.contains("***"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_keeps_its_commits_and_the_rerun_loads_only_the_rest() {
    let db = TestDb::new().await;
    let d = dump(&["--seed", "9", "--start", "2024-01-01", "--days", "60", "--sessions-per-day", "10"]);
    let sim = serve(&d.path).await;
    sim.handle.set_faults(FaultConfig { latency_ms: 120, ..FaultConfig::default() });
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &sim,
        TOKEN,
        TestWarehouse::Postgres(&db.url),
        &[job_with("real_chats", "2024-01-01", 5)],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "-q",
            "backfill",
            "--job",
            "real_chats",
            "--from",
            "2024-01-01",
            "--to",
            "2024-02-29",
            "--concurrency",
            "1",
        ])
        .spawn()
        .unwrap();
    let pool = db.pool().await;
    let loaded = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM chatetl.window_loads WHERE target = 'analytics' AND job = 'real_chats'",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
    };
    // Kill it (SIGKILL: no chance to clean up) once a few chunks are committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while loaded().await < 10 {
        assert!(std::time::Instant::now() < deadline, "the backfill made no progress");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let committed = loaded().await;
    assert!((10..60).contains(&committed), "killed part way: {committed} windows");
    assert_eq!(committed % 5, 0, "chunks commit whole");
    let rows_per_window: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM analytics.real_chats GROUP BY _window_start")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows_per_window.len() as i64,
        committed,
        "every committed window has its rows, nothing else was written"
    );

    sim.handle.set_faults(FaultConfig::default());
    sim.handle.clear_requests();
    let (code, out, err) =
        run_cli(&path, &["backfill", "--job", "real_chats", "--from", "2024-01-01", "--to", "2024-02-29"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let remaining = 60 - committed as usize;
    assert_eq!(sim.handle.requests().len(), 3 * remaining / 5, "only the unfinished chunks, once per scope");
    assert_eq!(loaded().await, 60);
}

//! Vendor answers read by meaning: the same dataset served the way two readings of api-docs 002
//! answer (the count metric named `count`, `chat_session_id_count` or `chat_session_id`; empty
//! buckets answered with zeros or left out) loads the same warehouse rows, and numbers land
//! bit-exact as the simulator sent them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use chatetl::simulator::{Assumptions, CountMetricName, Dataset, FaultConfig, RunningSimulator, Simulator};
use serde_json::{Value, json};

use crate::util::{
    Rows, TOKEN, TestDb, TestWarehouse, chatetl, dump, parquet_files, parquet_rows, pg_rows_of, post_query,
    real_chat_record, serve, shipped_jobs, shipped_jobs_of, write_config, write_dataset,
};

/// The load metadata columns, which differ between any two loads.
const METADATA: [&str; 3] = ["_window_start", "_loaded_at", "_run_id"];

/// Three Helsinki days around the autumn DST change (2024-10-27 has 25 hours).
const FROM: &str = "2024-10-26";
const TO: &str = "2024-10-28";
const HOURS: usize = 24 + 25 + 24;

/// The shipped chat_sessions jobs as shipped (day windows), each again with hour windows
/// (`<name>_hourly`, hour buckets; unique_visitors keeps `all`), and real chats by hour inside day
/// windows (one request, 73 buckets); plus the shipped events and workflow jobs.
fn jobs() -> Vec<(&'static str, String)> {
    let shipped = shipped_jobs(Some(FROM));
    let mut jobs = shipped.clone();
    for (file, text) in &shipped {
        let name = file.trim_end_matches(".yaml");
        let hourly = text
            .replace(&format!("name: {name}\n"), &format!("name: {name}_hourly\n"))
            .replace("window: day\n", "window: hour\n")
            .replace("granularity: day\n", "granularity: hour\n");
        jobs.push((Box::leak(format!("{name}_hourly.yaml").into_boxed_str()), hourly));
        if name == "real_chats" {
            let by_hour = text
                .replace("name: real_chats\n", "name: real_chats_by_hour\n")
                .replace("granularity: day\n", "granularity: hour\n");
            jobs.push(("real_chats_by_hour.yaml", by_hour));
        }
    }
    jobs.extend(shipped_jobs_of("events", Some(FROM)));
    jobs.extend(shipped_jobs_of("workflow", Some(FROM)));
    jobs
}

fn table_of(file: &str) -> &str {
    file.trim_end_matches(".yaml")
}

/// Loads every job of `jobs` over FROM..TO with the `chatetl` binary into a fresh warehouse.
fn load(sim: &RunningSimulator, dir: &Path, warehouse: TestWarehouse, jobs: &[(&str, String)]) {
    let config = write_config(dir, sim, TOKEN, warehouse, jobs);
    let (code, out, err) = chatetl(&["--config", config.to_str().unwrap(), "run", "--from", FROM, "--to", TO]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Every table of `jobs` in the Parquet warehouse `root`, without load metadata.
fn parquet_tables(root: &Path, jobs: &[(&str, String)]) -> BTreeMap<String, Rows> {
    jobs.iter()
        .map(|(file, _)| (table_of(file).to_string(), parquet_rows(&root.join(table_of(file)), &METADATA)))
        .collect()
}

fn col<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    &row.iter().find(|(c, _)| c == name).unwrap_or_else(|| panic!("no column {name} in {row:?}")).1
}

/// An org-scope chat_sessions query over FROM..TO counting real-chat-like org rows per hour, as
/// the simulator answers it now.
async fn hourly_count_answer(sim: &RunningSimulator) -> Value {
    let org = sim.handle.dataset().organizations[0].id.clone();
    let body = json!({
        "interval": {"start": "2024-10-26T00:00:00.000+03:00", "end": "2024-10-28T23:59:59.999+02:00",
                     "time_zone": "Europe/Helsinki"},
        "granularity": "hour", "group_by": [],
        "aggregations": [{"type": "count", "fields": ["chat_session_id"]}],
        "filters": {"type": "selector", "dimension": "scope", "value": "org"}
    });
    let (status, answer) = post_query(sim, &org, Some(TOKEN), &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_jobs_load_the_same_rows_whatever_the_count_is_called_and_whether_empty_buckets_are_answered() {
    // A few sessions a day (plus the generator's three at each midnight edge): most hours, and
    // for the narrower metrics whole days, are quiet.
    let d = dump(&["--seed", "17", "--start", "2024-10-25", "--days", "5", "--sessions-per-day", "3"]);
    let sim = serve(&d.path).await;
    let jobs = jobs();
    let mut loads: Vec<(String, BTreeMap<String, Rows>)> = Vec::new();
    for omit_empty_buckets in [false, true] {
        for count_metric_name in [CountMetricName::Count, CountMetricName::FieldCount, CountMetricName::Field] {
            let assumptions = Assumptions { count_metric_name, omit_empty_buckets };
            sim.handle.set_assumptions(assumptions.clone());

            // The switches really change the answers the client reads.
            let answer = hourly_count_answer(&sim).await;
            let metric = answer["fields"][1]["name"].as_str().unwrap();
            let want = match count_metric_name {
                CountMetricName::Count => "count",
                CountMetricName::FieldCount => "chat_session_id_count",
                CountMetricName::Field => "chat_session_id",
            };
            assert_eq!(metric, want, "{assumptions:?}");
            let lines = answer["data"].as_array().unwrap().len();
            if omit_empty_buckets {
                // These quiet hours are absent from every omitting answer: without the client's
                // fill their org rows would be missing from the tables compared below, and the
                // comparison with the answered-zeros load would fail (with the fill switched off,
                // it fails at the first table: average_first_response_wait_time lacks its quiet
                // org days).
                assert!(lines > 0 && lines < HOURS / 2, "{lines} of {HOURS} hours have org rows");
            } else {
                assert_eq!(lines, HOURS, "every hour is answered, quiet ones with 0");
            }

            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("wh");
            load(&sim, dir.path(), TestWarehouse::Parquet(&root), &jobs);
            loads.push((format!("{assumptions:?}"), parquet_tables(&root, &jobs)));
        }
    }
    sim.handle.set_assumptions(Assumptions::default());

    let (first, want) = &loads[0];
    for (name, got) in &loads[1..] {
        for (table, rows) in want {
            assert_eq!(&got[table], rows, "{table}: {name} loads the rows {first} loads");
        }
    }
    // The rule itself: one org row per bucket of every window, grouped scopes only where they
    // have rows; quiet buckets count 0 and average null.
    let org_rows = |table: &str| -> Vec<&Vec<(String, String)>> {
        want[table].iter().filter(|r| col(r, "scope") == "org").collect()
    };
    for (file, text) in &jobs {
        let table = table_of(file);
        let buckets = if text.contains("window: hour") || text.contains("granularity: hour") { HOURS } else { 3 };
        assert_eq!(org_rows(table).len(), buckets, "{table}: one org row per bucket");
    }
    let quiet =
        |table: &str, column: &str, empty: &str| org_rows(table).iter().filter(|r| col(r, column) == empty).count();
    assert!(quiet("real_chats_hourly", "real_chats", "0") > HOURS / 2, "mostly quiet hours");
    assert!(quiet("real_chats_by_hour", "real_chats", "0") > HOURS / 2);
    assert!(quiet("sales_in_real_chats_hourly", "sales_in_real_chats", "0.0") > HOURS / 2, "sums of nothing are 0");
    assert!(quiet("unique_visitors_hourly", "unique_visitors", "0.0") > HOURS / 2, "distinct counts of nothing are 0");
    let avg = "average_purchase_value";
    assert!(quiet("average_purchase_value_in_real_chats", avg, "null") >= 1, "a day without purchases");
    assert!(
        quiet("average_purchase_value_in_real_chats_hourly", avg, "null") > HOURS / 2,
        "averages of nothing are null"
    );
    assert_eq!(quiet("average_purchase_value_in_real_chats_hourly", avg, "0.0"), 0, "never 0");
    assert!(want["real_chats_hourly"].iter().filter(|r| col(r, "scope") != "org").all(|r| col(r, "real_chats") != "0"));
    // The two PostgreSQL loads furthest apart agree too.
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    load(&sim, tempfile::tempdir().unwrap().path(), TestWarehouse::Postgres(&a.url), &jobs);
    sim.handle.set_assumptions(Assumptions { count_metric_name: CountMetricName::Field, omit_empty_buckets: true });
    load(&sim, tempfile::tempdir().unwrap().path(), TestWarehouse::Postgres(&b.url), &jobs);
    let (pa, pb) = (a.pool().await, b.pool().await);
    for (file, _) in &jobs {
        let table = table_of(file);
        let rows = pg_rows_of(&pa, table).await;
        assert_eq!(rows.len(), want[table].len(), "{table}: PostgreSQL holds the Parquet rows");
        assert_eq!(pg_rows_of(&pb, table).await, rows, "{table}: PostgreSQL, filled vs omitted");
    }
}

/// Values of 15 to 17 significant digits, several of which serde_json's default parser reads one
/// ULP off (123456789.12345679, 2046.4700000000003, 1234.5678901234567, 186621.06225999998): the
/// simulator reading the dataset file or the client reading its answer would then hold another
/// value than the file's, and the comparison of bits below fails.
const EXACT: [f64; 8] = [
    2046.47,
    0.30000000000000004,
    1234567.8901234567,
    123456789.12345679,
    2046.4700000000003,
    1234.5678901234567,
    186621.06225999998,
    0.1,
];

/// A dataset with one real chat with orders per local day from 2024-03-01, of `sales` EXACT[i].
fn exact_dataset(dir: &Path) -> std::path::PathBuf {
    let org = "0b5f6c2e-0000-4000-8000-000000000001";
    let mut records = vec![json!({"kind": "organization", "id": org, "name": "Exact", "api_token": TOKEN})];
    for (i, sales) in EXACT.iter().enumerate() {
        // Noon in Helsinki (+02:00 in March).
        let time = format!("2024-03-{:02}T10:00:00.000Z", i + 1);
        records.push(real_chat_record(&time, org, &format!("s{i}"), *sales));
    }
    write_dataset(dir, &records)
}

fn exact_jobs() -> Vec<(&'static str, String)> {
    shipped_jobs(Some("2024-03-01"))
        .into_iter()
        .filter(|(f, _)| matches!(*f, "sales_in_real_chats.yaml" | "average_purchase_value_in_real_chats.yaml"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_land_bit_exact_in_postgres_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let path = exact_dataset(dir.path());
    let sim = Simulator::new(Dataset::read(&path).unwrap(), FaultConfig::default(), 1).spawn().await.unwrap();
    let jobs = exact_jobs();
    let to = format!("2024-03-{:02}", EXACT.len());
    let run = |config: &Path| {
        let (code, out, err) =
            chatetl(&["--config", config.to_str().unwrap(), "run", "--from", "2024-03-01", "--to", &to]);
        assert_eq!(code, 0, "{out}\n{err}");
    };
    let columns = [
        ("sales_in_real_chats", "sales_in_real_chats"),
        ("average_purchase_value_in_real_chats", "average_purchase_value"),
    ];

    let db = TestDb::new().await;
    run(&write_config(&dir.path().join("pg"), &sim, TOKEN, TestWarehouse::Postgres(&db.url), &jobs));
    let pool = db.pool().await;
    for (table, column) in columns {
        let sql = format!("SELECT \"{column}\" FROM analytics.\"{table}\" WHERE scope = 'org' ORDER BY bucket_start");
        let got: Vec<f64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.unwrap();
        let bits: Vec<u64> = got.iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, EXACT.map(f64::to_bits), "{table}: PostgreSQL holds {got:?}, sent {EXACT:?}");
    }

    let root = dir.path().join("parquet").join("wh");
    run(&write_config(&dir.path().join("parquet"), &sim, TOKEN, TestWarehouse::Parquet(&root), &jobs));
    for (table, column) in columns {
        let mut got: Vec<(i64, f64)> = Vec::new();
        for file in parquet_files(&root.join(table)) {
            use arrow_array::Array;
            use arrow_array::cast::AsArray;
            use arrow_array::types::{Float64Type, TimestampMicrosecondType};
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&file).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let start = batch.column_by_name("bucket_start").unwrap().as_primitive::<TimestampMicrosecondType>();
                let value = batch.column_by_name(column).unwrap().as_primitive::<Float64Type>();
                for i in 0..batch.num_rows() {
                    assert!(!value.is_null(i));
                    got.push((start.value(i), value.value(i)));
                }
            }
        }
        got.sort_by_key(|(t, _)| *t);
        let bits: Vec<u64> = got.iter().map(|(_, x)| x.to_bits()).collect();
        assert_eq!(bits, EXACT.map(f64::to_bits), "{table}: Parquet holds {got:?}, sent {EXACT:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switches_are_flags_and_an_admin_route_too() {
    let d = dump(&["--seed", "4", "--start", "2024-10-26", "--days", "3", "--sessions-per-day", "3"]);

    // In process, over the admin route.
    let sim = serve(&d.path).await;
    let client = reqwest::Client::new();
    let url = format!("{}/_sim/assumptions", sim.base_url());
    let now: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(now, json!({"count_metric_name": "count", "omit_empty_buckets": false}));
    let set = json!({"count_metric_name": "field_count", "omit_empty_buckets": true});
    assert_eq!(client.put(&url).json(&set).send().await.unwrap().status(), 200);
    assert_eq!(sim.handle.assumptions().count_metric_name, CountMetricName::FieldCount);
    let answer = hourly_count_answer(&sim).await;
    assert_eq!(answer["fields"][1]["name"], "chat_session_id_count");
    assert!(answer["data"].as_array().unwrap().len() < HOURS);
    let bad = client.put(&url).json(&json!({"count_metric_name": "fields"})).send().await.unwrap();
    assert_eq!(bad.status(), 422, "an unknown name is refused");

    // From the command line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(["simulate", "--listen", "127.0.0.1:0", "--dataset", d.path.to_str().unwrap()])
        .args(["--count-metric-name", "field", "--omit-empty-buckets"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let base = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "simulator exited early");
        if let Some(rest) = line.split("simulator on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let now: Value = client.get(format!("{base}/_sim/assumptions")).send().await.unwrap().json().await.unwrap();
    assert_eq!(now, json!({"count_metric_name": "field", "omit_empty_buckets": true}));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());

    let (code, _, err) = chatetl(&["simulate", "--count-metric-name", "fields", "--dump-dataset", "/dev/null"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("field_count"), "{err}");
}

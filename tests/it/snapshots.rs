//! Snapshot jobs end to end: giosg realtime rooms and users, Comm100 Agents, Queue, Today and
//! RightNow, from the simulator over HTTP into PostgreSQL and Parquet. Expected rows come from the
//! dumped dataset read as plain JSON; Today is recomputed here from the dump's chat sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use chatetl::runner::{RunKind, RunOptions, RunReport, Runner};
use chatetl::simulator::{FaultConfig, FaultRule, RunningSimulator};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use crate::util::{Dump, TOKEN, TestDb, TestWarehouse, chatetl, dump, read_dump, records, serve};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

/// A tick on the spring DST day of Helsinki: its local day started at +02:00, the tick is at +03:00.
const TICK: &str = "2024-03-31T14:07:30Z";

/// The shipped snapshot jobs.
const SNAPSHOT_JOBS: [&str; 6] = [
    "giosg_realtime_rooms",
    "giosg_realtime_users",
    "comm100_agents",
    "comm100_queue",
    "comm100_today",
    "comm100_right_now",
];

fn tick() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(TICK).unwrap().with_timezone(&Utc)
}

fn shipped(name: &str) -> (&'static str, String) {
    let file = format!("{name}.yaml");
    let (file, text) = chatetl::demo::shipped::JOBS
        .iter()
        .find(|(f, _)| *f == file)
        .unwrap_or_else(|| panic!("jobs/{file} is shipped"));
    (file, text.to_string())
}

fn shipped_snapshot_jobs() -> Vec<(&'static str, String)> {
    SNAPSHOT_JOBS.iter().map(|n| shipped(n)).collect()
}

/// A chatetl.yaml with a `giosg` and a `comm100` source on the simulator (or on `base_url`), plus
/// `jobs`.
fn write_config(
    dir: &Path,
    base_url: &str,
    org: &str,
    token: &str,
    warehouse: &TestWarehouse,
    jobs: &[(&str, String)],
) -> PathBuf {
    let wh = match warehouse {
        TestWarehouse::Parquet(p) => format!("  kind: parquet\n  path: {}\n", p.display()),
        TestWarehouse::Postgres(url) => format!("  kind: postgres\n  url: {url}\n  schema: analytics\n"),
    };
    let limits =
        "    requests_per_second: 1000\n    timeout_secs: 10\n    max_retries: 2\n    max_retry_delay_secs: 1\n";
    let config = format!(
        "time_zone: Europe/Helsinki\njobs_dir: jobs\nsources:\n  giosg:\n    kind: giosg\n    base_url: {base_url}\n    token: {token}\n    organization_id: {org}\n{limits}  comm100:\n    kind: comm100\n    base_url: {base_url}/v4\n    token: {token}\n{limits}warehouse:\n{wh}"
    );
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    for entry in std::fs::read_dir(dir.join("jobs")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(name), text).unwrap();
    }
    let path = dir.join("chatetl.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

struct Fixture {
    dump: Dump,
    sim: RunningSimulator,
    dir: tempfile::TempDir,
    org: String,
}

async fn fixture(sizes: &[&str]) -> Fixture {
    let mut args = vec!["--seed", "5", "--start", "2024-03-25", "--days", "14", "--sessions-per-day", "120"];
    args.extend_from_slice(sizes);
    let dump = dump(&args);
    let (orgs, _) = read_dump(&dump.path);
    let org = orgs[0]["id"].as_str().unwrap().to_string();
    let sim = serve(&dump.path).await;
    Fixture { dump, sim, dir: tempfile::tempdir().unwrap(), org }
}

impl Fixture {
    fn config(&self, sub: &str, warehouse: &TestWarehouse, jobs: &[(&str, String)]) -> PathBuf {
        let dir = self.dir.path().join(sub);
        write_config(&dir, &self.sim.base_url(), &self.org, TOKEN, warehouse, jobs)
    }
}

/// Runs `jobs` as a scheduler tick at `at` would, in process.
async fn capture(config: &Path, jobs: &[&str], at: DateTime<Utc>) -> Vec<RunReport> {
    let config = chatetl::config::load(config).unwrap();
    let runner = Runner::open(config).await.unwrap();
    let mut reports = Vec::new();
    for name in jobs {
        let job = runner.config.jobs[*name].clone();
        let (windows, partial_after) = runner.incremental_windows(&job, at).await.unwrap();
        let opts = RunOptions { kind: RunKind::Scheduled, partial_after: Some(partial_after), ..RunOptions::default() };
        reports.push(runner.run(&job, windows, &opts).await.unwrap());
    }
    reports
}

// ---------------------------------------------------------------------------------------------
// Reading tables back as JSON objects.

/// The key columns of each table.
fn key_columns(table: &str) -> &'static [&'static str] {
    match table {
        t if t.contains("rooms") => &["room_id"],
        t if t.contains("users") => &["user_id"],
        t if t.contains("agents") => &["agent_id"],
        t if t.contains("queue") => &["route_to_department_id", "route_to_agent_id"],
        _ => &[],
    }
}

/// Rows of one captured_at: key → value columns.
type Snapshot = BTreeMap<String, Map<String, Value>>;

/// Rows by captured_at, each checked for its captured_date and stripped of load metadata.
fn by_capture(table: &str, rows: Vec<Map<String, Value>>) -> BTreeMap<DateTime<Utc>, Snapshot> {
    let mut out: BTreeMap<DateTime<Utc>, Snapshot> = BTreeMap::new();
    for mut row in rows {
        let at = row.remove("captured_at").unwrap();
        let at = DateTime::parse_from_rfc3339(at.as_str().unwrap()).unwrap().with_timezone(&Utc);
        let date = row.remove("captured_date").unwrap();
        assert_eq!(date.as_str().unwrap(), at.with_timezone(&HEL).date_naive().to_string(), "{table}: captured_date");
        for meta in ["_window_start", "_loaded_at", "_run_id"] {
            assert!(row.remove(meta).is_some(), "{table} has {meta}");
        }
        let key: Vec<String> =
            key_columns(table).iter().map(|k| row.remove(*k).unwrap().as_str().unwrap_or("null").to_string()).collect();
        let key = key.join("|");
        assert!(out.entry(at).or_default().insert(key.clone(), row).is_none(), "{table}: {key} twice at {at}");
    }
    out
}

async fn pg_rows(pool: &sqlx::PgPool, table: &str) -> BTreeMap<DateTime<Utc>, Snapshot> {
    let sql = format!("SELECT row_to_json(t)::text FROM analytics.\"{table}\" t");
    let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap();
    let rows = texts.iter().map(|t| serde_json::from_str::<Map<String, Value>>(t).unwrap()).collect();
    by_capture(table, rows)
}

fn parquet_rows(root: &Path, table: &str) -> BTreeMap<DateTime<Utc>, Snapshot> {
    let batches = chatetl::readback::read_parquet_dir(&root.join(table)).unwrap();
    by_capture(table, batches.iter().flat_map(batch_rows).collect())
}

fn batch_rows(batch: &RecordBatch) -> Vec<Map<String, Value>> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|i| {
            schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(field, col)| {
                    let v = if col.is_null(i) {
                        Value::Null
                    } else {
                        match col.data_type() {
                            DataType::Utf8 => {
                                let s = col.as_string::<i32>().value(i);
                                if field.metadata().get("chatetl.type").map(String::as_str) == Some("json") {
                                    serde_json::from_str(s).unwrap()
                                } else {
                                    json!(s)
                                }
                            }
                            DataType::Int64 => json!(col.as_primitive::<Int64Type>().value(i)),
                            DataType::Float64 => json!(col.as_primitive::<Float64Type>().value(i)),
                            DataType::Boolean => json!(col.as_boolean().value(i)),
                            DataType::Date32 => {
                                json!(col.as_primitive::<Date32Type>().value_as_date(i).unwrap().to_string())
                            }
                            DataType::Timestamp(..) => {
                                let micros = col.as_primitive::<TimestampMicrosecondType>().value(i);
                                json!(DateTime::from_timestamp_micros(micros).unwrap().to_rfc3339())
                            }
                            other => panic!("unexpected column type {other}"),
                        }
                    };
                    (field.name().clone(), v)
                })
                .collect()
        })
        .collect()
}

/// Equal JSON, numbers within a relative 1e-9 (sums may be added in another order).
fn assert_close(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{at}: got {g}, want {w}");
        }
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "{at}: fields");
            for (k, w) in w {
                assert_close(&g[k], w, &format!("{at}.{k}"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{at}: length");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_close(g, w, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

fn assert_snapshot(table: &str, got: &Snapshot, want: &Snapshot) {
    assert!(!want.is_empty(), "{table}: the dataset has rows to compare");
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{table}: the same keys");
    for (k, w) in want {
        assert_close(&Value::Object(got[k].clone()), &Value::Object(w.clone()), &format!("{table}[{k}]"));
    }
}

// ---------------------------------------------------------------------------------------------
// Expected snapshots, from the dump read as plain JSON.

fn pick(record: &Value, fields: &[&str]) -> Map<String, Value> {
    fields.iter().map(|f| (f.to_string(), record[*f].clone())).collect()
}

fn ids(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect()
}

fn expected_rooms(dump: &Path, org: &str, include_shared: bool, only: Option<&[&str]>) -> Snapshot {
    records(dump, "realtime_room")
        .iter()
        .filter(|r| {
            r["organization_id"] == org || (include_shared && ids(&r["shared_with_organization_ids"]).contains(&org))
        })
        .filter(|r| only.is_none_or(|o| o.contains(&r["room_id"].as_str().unwrap())))
        .map(|r| {
            let fields = [
                "room_name",
                "currently_open_chats",
                "free_capacity",
                "waiting_chats",
                "average_wait_time",
                "max_wait_time",
                "missed_chats",
                "real_chats",
                "current_visitors",
                "daily_avg_chat_wait_time",
                "daily_max_chat_wait_time",
            ];
            (r["room_id"].as_str().unwrap().to_string(), pick(r, &fields))
        })
        .collect()
}

fn expected_users(dump: &Path, org: &str) -> Snapshot {
    records(dump, "realtime_user")
        .iter()
        .filter(|u| u["organization_id"] == org)
        .map(|u| {
            let mut m = pick(u, &["email", "is_logged_in", "is_online", "currently_open_chats", "free_capacity"]);
            let rooms = u["rooms"].as_array().unwrap();
            m.insert("room_ids".into(), rooms.iter().map(|r| r["room_id"].clone()).collect());
            m.insert("team_ids".into(), u["team_ids"].clone());
            m.insert(
                "rooms".into(),
                rooms
                    .iter()
                    .map(|r| {
                        json!({"room_id": r["room_id"], "room": {"id": r["room_id"], "name": r["room_name"],
                            "currently_open_chats": r["currently_open_chats"]}})
                    })
                    .collect(),
            );
            m.insert("teams".into(), ids(&u["team_ids"]).iter().map(|t| json!({"team_id": t})).collect());
            (u["user_id"].as_str().unwrap().to_string(), m)
        })
        .collect()
}

fn expected_agents(dump: &Path, org: &str, with_distribution: bool) -> Snapshot {
    records(dump, "comm100_agent")
        .iter()
        .filter(|a| a["organization_id"] == org)
        .map(|a| {
            let mut m = pick(
                a,
                &["display_name", "current_status_id", "ongoing_chats", "max_concurrent_chats", "intraday_chats"],
            );
            m.insert("intraday_linear_chat_time_seconds".into(), a["intraday_linear_chat_seconds"].clone());
            m.insert(
                "status_distribution".into(),
                if with_distribution { a["status_distribution"].clone() } else { json!({}) },
            );
            (a["agent_id"].as_str().unwrap().to_string(), m)
        })
        .collect()
}

fn expected_queue(dump: &Path, org: &str) -> Snapshot {
    let departments: HashMap<String, Value> =
        records(dump, "comm100_department").into_iter().map(|d| (d["id"].as_str().unwrap().to_string(), d)).collect();
    let agents: HashMap<String, Value> =
        records(dump, "comm100_agent").into_iter().map(|a| (a["agent_id"].as_str().unwrap().to_string(), a)).collect();
    records(dump, "comm100_queue_entry")
        .iter()
        .filter(|q| q["organization_id"] == org)
        .map(|q| {
            let (dept, agent) = (q["route_to_department_id"].as_str(), q["route_to_agent_id"].as_str());
            let visitors = q["visitors"].as_array().unwrap();
            let waits: Vec<f64> = visitors.iter().map(|v| v["wait_seconds"].as_f64().unwrap()).collect();
            let mut m = pick(
                q,
                &[
                    "ongoing_chats",
                    "max_concurrent_chats",
                    "avg_wait_time_last_30_mins_seconds",
                    "avg_wait_time_last_60_mins_seconds",
                    "abandoned_chats_last_30_mins",
                    "switched_to_messages_last_30_mins",
                ],
            );
            m.insert("route_to_department_name".into(), dept.map_or(Value::Null, |d| departments[d]["name"].clone()));
            m.insert(
                "route_to_agent_display_name".into(),
                agent.map_or(Value::Null, |a| agents[a]["display_name"].clone()),
            );
            m.insert("current_queue_length".into(), json!(visitors.len()));
            m.insert("visitor_count".into(), json!(visitors.len()));
            m.insert(
                "max_visitor_wait_seconds".into(),
                waits.iter().copied().reduce(f64::max).map_or(Value::Null, |w| json!(w)),
            );
            m.insert("visitors".into(), Value::Array(visitors.clone()));
            (format!("{}|{}", dept.unwrap_or("null"), agent.unwrap_or("null")), m)
        })
        .collect()
}

fn expected_right_now(dump: &Path, org: &str) -> Snapshot {
    let agents: Vec<Value> =
        records(dump, "comm100_agent").into_iter().filter(|a| a["organization_id"] == org).collect();
    let site = records(dump, "comm100_site").into_iter().find(|s| s["organization_id"] == org).unwrap();
    let n = |v: &Value, k: &str| v[k].as_i64().unwrap();
    let logged_in: Vec<&Value> =
        agents.iter().filter(|a| a["current_status_id"] != "00000000-0000-0000-0000-000000000002").collect();
    let with_agent: i64 = agents.iter().map(|a| n(a, "ongoing_chats")).sum();
    let capacity: i64 = logged_in.iter().map(|a| n(a, "max_concurrent_chats")).sum();
    let queued: usize = records(dump, "comm100_queue_entry")
        .iter()
        .filter(|q| q["organization_id"] == org)
        .map(|q| q["visitors"].as_array().unwrap().len())
        .sum();
    let utilization =
        if capacity == 0 { 0.0 } else { (100.0 * with_agent as f64 / capacity as f64 * 100.0).round() / 100.0 };
    let row = json!({
        "logged_in_agents": logged_in.len(),
        "agents_in_chat": agents.iter().filter(|a| n(a, "ongoing_chats") > 0).count(),
        "chat_utilization": utilization,
        "visitor_on_site": site["visitors_on_site"],
        "ongoing_chats": with_agent + n(&site, "ongoing_chats_with_bot"),
        "ongoing_chats_with_agent": with_agent,
        "current_queue_length": queued,
        "ongoing_chats_with_bot": site["ongoing_chats_with_bot"],
    });
    BTreeMap::from([(String::new(), row.as_object().unwrap().clone())])
}

/// Today at `at`: the organization's sessions from its local midnight (Helsinki) to `at` (whole
/// second), by the formulas of docs/simulator.md.
fn expected_today(dump: &Path, org: &str, at: DateTime<Utc>) -> Snapshot {
    let (_, rows) = read_dump(dump);
    let start = chatetl::time::local_day_start(HEL, at.with_timezone(&HEL).date_naive());
    let end = at + Duration::seconds(1);
    let today: Vec<&crate::util::Row> =
        rows.iter().filter(|r| r.time >= start && r.time < end && r.s("owner_organization_id") == org).collect();
    let sessions: Vec<&crate::util::Row> = today.iter().copied().filter(|r| r.s("scope") == "org").collect();
    let mut users: HashMap<&str, usize> = HashMap::new();
    for r in today.iter().filter(|r| r.s("scope") == "user") {
        *users.entry(r.s("chat_session_id")).or_default() += 1;
    }
    let (u, v) =
        (|r: &crate::util::Row| r.n("user_message_count"), |r: &crate::util::Row| r.n("visitor_message_count"));
    let requests: Vec<_> = sessions.iter().filter(|r| ["visitor", "external"].contains(&r.s("chat_type"))).collect();
    let answered: Vec<_> = requests.iter().filter(|r| u(r) >= 1.0).collect();
    let missed = requests.iter().filter(|r| u(r) == 0.0 && v(r) >= 1.0).count();
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let avg = |f: &dyn Fn(&crate::util::Row) -> f64| {
        if answered.is_empty() { 0.0 } else { answered.iter().map(|r| f(r)).sum::<f64>() / answered.len() as f64 }
    };
    let visitors: HashSet<String> = answered.iter().flat_map(|r| r.list("visitor_ids")).collect();
    let two_rooms = |r: &crate::util::Row| r.list("room_ids").len() >= 2;
    let row = json!({
        "chat_requests": requests.len(),
        "total_chats": sessions.len(),
        "chats": answered.len(),
        "chat_acceptance_rate": frac(answered.len(), requests.len()),
        "abandoned_chats": requests.iter().filter(|r| u(r) == 0.0 && v(r) == 0.0).count(),
        "switched_to_message_chats": requests.iter().filter(|r| u(r) == 0.0 && v(r) >= 3.0).count(),
        "missed_chats": missed,
        "avg_waiting_time": avg(&|r| 10.0 * v(r)),
        "avg_chat_time": avg(&|r| 60.0 * (u(r) + v(r))),
        "agent_avg_response_time": avg(&|r| 30.0 * v(r) / u(r)),
        "accepted_invitations": requests.iter().filter(|r| r.s("chat_initiator") != "visitor" && v(r) >= 1.0).count(),
        "service_accessibility_rate": frac(requests.len() - missed, requests.len()),
        "department_transferred_chats": sessions.iter().filter(|r| two_rooms(r)).count(),
        "total_transferred_chats": sessions
            .iter()
            .filter(|r| two_rooms(r) || users.get(r.s("chat_session_id")).is_some_and(|n| *n >= 2))
            .count(),
        "unique_chat_rate": frac(visitors.len(), answered.len()),
        "agent_utilization": frac(sessions.iter().filter(|r| u(r) >= 1.0).count(), sessions.len()),
        "avg_score": avg(&|r| 1.0 + v(r).min(4.0)),
    });
    assert!(sessions.len() > 20, "the day has sessions to count: {}", sessions.len());
    BTreeMap::from([(String::new(), row.as_object().unwrap().clone())])
}

/// What each shipped snapshot job's table must hold after a capture at `at`.
fn expected_shipped(dump: &Path, org: &str, table: &str, at: DateTime<Utc>) -> Snapshot {
    match table {
        "giosg_realtime_rooms" => expected_rooms(dump, org, false, None),
        "giosg_realtime_users" => expected_users(dump, org),
        "comm100_agents" => expected_agents(dump, org, true),
        "comm100_queue" => expected_queue(dump, org),
        "comm100_today" => expected_today(dump, org, at),
        "comm100_right_now" => expected_right_now(dump, org),
        t => panic!("{t}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snapshot_lands_in_postgres_and_parquet_as_the_dataset_has_it() {
    let f = fixture(&[]).await;
    let db = TestDb::new().await;
    let parquet = f.dir.path().join("wh");
    for (sub, warehouse) in [("pg", TestWarehouse::Postgres(&db.url)), ("pq", TestWarehouse::Parquet(&parquet))] {
        let config = f.config(sub, &warehouse, &shipped_snapshot_jobs());
        for report in capture(&config, &SNAPSHOT_JOBS, tick()).await {
            assert!(report.ok() && report.windows_loaded == 1, "{sub} {}: {:?}", report.job, report.failures);
        }
        for table in SNAPSHOT_JOBS {
            let got = match warehouse {
                TestWarehouse::Postgres(_) => pg_rows(&db.pool().await, table).await,
                TestWarehouse::Parquet(root) => parquet_rows(root, table),
            };
            assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![tick()], "{sub} {table}: captured_at is the tick");
            let want = expected_shipped(&f.dump.path, &f.org, table, tick());
            assert_snapshot(&format!("{sub} {table}"), &got[&tick()], &want);
        }
    }
    // Column types: a BI user gets numbers, booleans and jsonb, not text.
    let pool = db.pool().await;
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
         WHERE table_schema = 'analytics' AND column_name IN ('is_online', 'teams', 'free_capacity', 'captured_at', 'status_distribution', 'chat_utilization')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let types: BTreeMap<String, String> = types.into_iter().collect();
    assert_eq!(types["giosg_realtime_users.is_online"], "boolean");
    assert_eq!(types["giosg_realtime_users.teams"], "jsonb");
    assert_eq!(types["giosg_realtime_rooms.free_capacity"], "bigint");
    assert_eq!(types["comm100_agents.status_distribution"], "jsonb");
    assert_eq!(types["comm100_right_now.chat_utilization"], "double precision");
    assert_eq!(types["comm100_queue.captured_at"], "timestamp with time zone");
    // The JSON columns answer the questions the module docs promise, in SQL.
    let per_team: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics.giosg_realtime_users u, jsonb_array_elements_text(u.team_ids) AS team_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let want: usize = records(&f.dump.path, "realtime_user")
        .iter()
        .filter(|u| u["organization_id"] == f.org.as_str())
        .map(|u| u["team_ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(per_team as usize, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_arrives_once_across_several_pages() {
    // 45 rooms (+1 shared) and 50 operators: three giosg pages of 20; 23 agents in pages of 10.
    let f = fixture(&["--rooms", "45", "--users", "50", "--comm100-agents", "23"]).await;
    let parquet = f.dir.path().join("wh");
    let jobs = [
        (
            "rooms.yaml",
            "description: d\nsource: giosg\nendpoint: realtime_rooms\nkind: snapshot\ninclude_shared: true\n"
                .to_string(),
        ),
        shipped("giosg_realtime_users"),
        (
            "agents.yaml",
            "description: d\nsource: comm100\nendpoint: agents\nkind: snapshot\npage_size: 10\n".to_string(),
        ),
    ];
    let config = f.config("pq", &TestWarehouse::Parquet(&parquet), &jobs);
    for report in capture(&config, &["rooms", "giosg_realtime_users", "agents"], tick()).await {
        assert!(report.ok(), "{}: {:?}", report.job, report.failures);
        assert_eq!(report.requests, 3, "{}: three pages", report.job);
    }
    let rooms = parquet_rows(&parquet, "rooms");
    let want_rooms = expected_rooms(&f.dump.path, &f.org, true, None);
    assert_eq!(want_rooms.len(), 46, "45 own rooms and one shared by the other organization");
    assert_snapshot("rooms", &rooms[&tick()], &want_rooms);
    assert_snapshot(
        "users",
        &parquet_rows(&parquet, "giosg_realtime_users")[&tick()],
        &expected_users(&f.dump.path, &f.org),
    );
    let agents = parquet_rows(&parquet, "agents");
    assert_snapshot("agents", &agents[&tick()], &expected_agents(&f.dump.path, &f.org, false));

    let log = f.sim.handle.requests();
    let queries = |path: &str| -> Vec<String> {
        log.iter().filter(|r| r.path.ends_with(path)).map(|r| r.query.clone().unwrap_or_default()).collect()
    };
    assert_eq!(
        queries("/realtime/rooms"),
        vec![
            "include_shared=true&timezone=Europe%2FHelsinki",
            "include_shared=true&timezone=Europe%2FHelsinki&page=2",
            "include_shared=true&timezone=Europe%2FHelsinki&page=3",
        ],
        "the client follows `next` to the end"
    );
    assert_eq!(queries("/realtime/users"), vec!["", "page=2", "page=3"]);
    assert_eq!(
        queries("/realTime/Agents"),
        (1..=3).map(|p| format!("pageIndex={p}&pageSize=10&includeStatusDistribution=false")).collect::<Vec<_>>()
    );
    assert!(log.iter().all(|r| r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retaken_tick_replaces_its_snapshot_and_a_new_tick_appends() {
    let f = fixture(&[]).await;
    let db = TestDb::new().await;
    let parquet = f.dir.path().join("wh");
    let jobs = [shipped("comm100_agents"), shipped("giosg_realtime_rooms")];
    let names = ["comm100_agents", "giosg_realtime_rooms"];
    let later = tick() + Duration::minutes(5);
    for (sub, warehouse) in [("pg", TestWarehouse::Postgres(&db.url)), ("pq", TestWarehouse::Parquet(&parquet))] {
        let config = f.config(sub, &warehouse, &jobs);
        let read = async |table: &str| match warehouse {
            TestWarehouse::Postgres(_) => pg_rows(&db.pool().await, table).await,
            TestWarehouse::Parquet(root) => parquet_rows(root, table),
        };
        for at in [tick(), tick(), tick() + Duration::milliseconds(400)] {
            assert!(capture(&config, &names, at).await.iter().all(RunReport::ok));
        }
        for table in names {
            let got = read(table).await;
            assert_eq!(
                got.keys().copied().collect::<Vec<_>>(),
                vec![tick()],
                "{sub} {table}: one snapshot for the tick"
            );
            assert_eq!(got[&tick()].len(), expected_shipped(&f.dump.path, &f.org, table, tick()).len());
        }
        assert!(capture(&config, &names, later).await.iter().all(RunReport::ok));
        for table in names {
            let got = read(table).await;
            assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![tick(), later], "{sub} {table}: appended");
            assert_eq!(got[&tick()], got[&later], "{sub} {table}: the same state twice");
        }
    }
    // The watermark of a snapshot job is the end of its latest snapshot.
    let pool = db.pool().await;
    let wm: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = 'analytics' AND job = 'comm100_agents'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(wm, Some(later + Duration::seconds(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatetl_run_captures_now_once_and_ranges_are_refused() {
    let f = fixture(&[]).await;
    let parquet = f.dir.path().join("wh");
    let config = f.config("pq", &TestWarehouse::Parquet(&parquet), &shipped_snapshot_jobs());
    let c = config.to_str().unwrap();
    let before = Utc::now() - Duration::seconds(1);
    let (code, out, err) =
        chatetl(&["--config", c, "run", "--job", "comm100_right_now", "--job", "giosg_realtime_users"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let after = Utc::now();
    for table in ["comm100_right_now", "giosg_realtime_users"] {
        let got = parquet_rows(&parquet, table);
        assert_eq!(got.len(), 1, "{table}: one capture");
        let (at, rows) = got.iter().next().unwrap();
        assert!((before..=after).contains(at) && at.timestamp_subsec_nanos() == 0, "{table}: captured now, {at}");
        assert_eq!(rows.len(), expected_shipped(&f.dump.path, &f.org, table, *at).len());
    }
    for args in [
        vec!["backfill", "--job", "comm100_today", "--from", "2024-03-25", "--to", "2024-03-31"],
        vec!["run", "--job", "comm100_today", "--from", "2024-03-25", "--to", "2024-03-31"],
    ] {
        let mut full = vec!["--config", c];
        full.extend(&args);
        let (code, _, err) = chatetl(&full);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("job comm100_today: endpoint today has no history, so a snapshot job cannot load a range"),
            "{err}"
        );
    }
    // `plan` shows the one request of a capture now, with today's range.
    let (code, out, _) = chatetl(&["--config", c, "plan", "--job", "comm100_today"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("1 snapshot windows")
            && out.contains("GET http://")
            && out.contains("/v4/livechat/realTime/Today?startTime="),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shipped_job_sends_the_documented_parameters() {
    let f = fixture(&[]).await;
    let parquet = f.dir.path().join("wh");
    let room_ids: Vec<String> = records(&f.dump.path, "realtime_room")
        .iter()
        .filter(|r| r["organization_id"] == f.org.as_str())
        .take(2)
        .map(|r| r["room_id"].as_str().unwrap().to_string())
        .collect();
    let user =
        records(&f.dump.path, "realtime_user").into_iter().find(|u| u["organization_id"] == f.org.as_str()).unwrap();
    let department = records(&f.dump.path, "comm100_department")
        .into_iter()
        .find(|d| d["organization_id"] == f.org.as_str())
        .unwrap();
    let mut jobs = shipped_snapshot_jobs();
    jobs.push(("some_rooms.yaml", format!("description: d\nsource: giosg\nendpoint: realtime_rooms\nkind: snapshot\ntime_zone: America/New_York\nrooms: [{}]\n", room_ids.join(", "))));
    jobs.push((
        "some_users.yaml",
        format!(
            "description: d\nsource: giosg\nendpoint: realtime_users\nkind: snapshot\nuser_ids: [{}]\n",
            user["user_id"].as_str().unwrap()
        ),
    ));
    jobs.push((
        "department_agents.yaml",
        format!(
            "description: d\nsource: comm100\nendpoint: agents\nkind: snapshot\ndepartment_id: {}\n",
            department["id"].as_str().unwrap()
        ),
    ));
    let config = f.config("pq", &TestWarehouse::Parquet(&parquet), &jobs);
    let mut names = SNAPSHOT_JOBS.to_vec();
    names.extend(["some_rooms", "some_users", "department_agents"]);
    for report in capture(&config, &names, tick()).await {
        assert!(report.ok(), "{}: {:?}", report.job, report.failures);
    }

    // api-docs 000 and 003 parameters (plus the paging of the client's assumptions).
    let documented: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("/api/v4/reporting/realtime/rooms", &["room_id", "include_shared", "timezone", "page"][..]),
        ("/api/v4/reporting/realtime/users", &["user_id", "page"][..]),
        (
            "/v4/livechat/realTime/Agents",
            &[
                "departmentId",
                "includeStatusDistribution",
                "utcOffset",
                "startTime",
                "endTime",
                "pageIndex",
                "pageSize",
            ][..],
        ),
        ("/v4/livechat/realTime/Queue", &[][..]),
        ("/v4/livechat/realTime/Today", &["startTime", "endTime", "utcOffset"][..]),
        ("/v4/livechat/realTime/RightNow", &["utcOffset", "startTime", "endTime"][..]),
    ]);
    let log = f.sim.handle.requests();
    let mut sent: Vec<(String, String)> = Vec::new();
    for r in &log {
        let allowed = documented.get(r.path.as_str()).unwrap_or_else(|| panic!("undocumented path {}", r.path));
        let query = r.query.clone().unwrap_or_default();
        let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{query}"))
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let keys: BTreeSet<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), pairs.len(), "{query}: no repeated parameter");
        assert!(keys.iter().all(|k| allowed.contains(k)), "{}: {query}", r.path);
        assert_eq!(r.method, "GET");
        sent.push((r.path.clone(), query));
    }
    let expect = [
        ("/api/v4/reporting/realtime/rooms", "include_shared=false&timezone=Europe%2FHelsinki".to_string()),
        ("/api/v4/reporting/realtime/users", String::new()),
        ("/v4/livechat/realTime/Agents", "pageIndex=1&pageSize=100&includeStatusDistribution=true".to_string()),
        ("/v4/livechat/realTime/Queue", String::new()),
        // Local midnight was 2024-03-30T22:00Z (+02:00); at the tick the offset is +03:00.
        (
            "/v4/livechat/realTime/Today",
            "startTime=2024-03-31T01%3A00%3A00&endTime=2024-03-31T17%3A07%3A30&utcOffset=180".to_string(),
        ),
        ("/v4/livechat/realTime/RightNow", String::new()),
        (
            "/api/v4/reporting/realtime/rooms",
            format!("room_id={}%2C{}&include_shared=false&timezone=America%2FNew_York", room_ids[0], room_ids[1]),
        ),
        ("/api/v4/reporting/realtime/users", format!("user_id={}", user["user_id"].as_str().unwrap())),
        (
            "/v4/livechat/realTime/Agents",
            format!(
                "pageIndex=1&pageSize=100&includeStatusDistribution=false&departmentId={}",
                department["id"].as_str().unwrap()
            ),
        ),
    ];
    let expect: Vec<(String, String)> = expect.into_iter().map(|(p, q)| (p.to_string(), q)).collect();
    assert_eq!(sent, expect);

    // The filters select what they name.
    let some = parquet_rows(&parquet, "some_rooms");
    let wanted: Vec<&str> = room_ids.iter().map(String::as_str).collect();
    assert_snapshot("some_rooms", &some[&tick()], &expected_rooms(&f.dump.path, &f.org, false, Some(&wanted)));
    assert_eq!(
        parquet_rows(&parquet, "some_users")[&tick()].keys().collect::<Vec<_>>(),
        vec![user["user_id"].as_str().unwrap()]
    );
    let in_department: BTreeSet<String> = records(&f.dump.path, "comm100_agent")
        .iter()
        .filter(|a| ids(&a["department_ids"]).contains(&department["id"].as_str().unwrap()))
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect();
    let got: BTreeSet<String> = parquet_rows(&parquet, "department_agents")[&tick()].keys().cloned().collect();
    assert!(!got.is_empty() && got == in_department);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_with_job_window_status_and_url_and_never_prints_the_token() {
    let f = fixture(&[]).await;
    let dir = f.dir.path().join("bad");
    let wrong = "wrong-secret-token-123";
    let config = write_config(
        &dir,
        &f.sim.base_url(),
        &f.org,
        wrong,
        &TestWarehouse::Parquet(&dir.join("wh")),
        &shipped_snapshot_jobs(),
    );
    let c = config.to_str().unwrap();
    for (job, path) in [
        ("comm100_agents", "/v4/livechat/realTime/Agents?pageIndex=1&pageSize=100&includeStatusDistribution=true"),
        ("giosg_realtime_rooms", "/api/v4/reporting/realtime/rooms?include_shared=false&timezone=Europe%2FHelsinki"),
    ] {
        f.sim.handle.clear_requests();
        let (code, out, err) = chatetl(&["--config", c, "-v", "run", "--job", job]);
        assert_eq!(code, 3, "refused credentials exit 3: {out}\n{err}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{err}"));
        assert!(line.starts_with(&format!("error: job {job}, window 20")), "{line}");
        assert!(line.contains(&format!(": upstream returned 401 for GET {}{path}: ", f.sim.base_url())), "{line}");
        assert!(!err.contains(wrong) && !out.contains(wrong), "the token leaked");
        let log = f.sim.handle.requests();
        assert_eq!(log.len(), 1, "a 401 is not retried");
        assert_eq!(log[0].status, 401);
    }
}

/// What the mangling proxy does to each answer.
#[derive(Clone, Copy, PartialEq)]
enum Mangle {
    Html,
    Drop(&'static str),
    Extra,
}

/// A proxy in front of the simulator that rewrites its answers (an HTML error page with status 200,
/// a field removed from every object, unknown fields added everywhere).
async fn mangling_proxy(sim: &str, mode: Arc<std::sync::Mutex<Mangle>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = format!("http://{}", listener.local_addr().unwrap());
    let (sim, own2) = (sim.to_string(), own.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (sim, own, mode) = (sim.clone(), own2.clone(), *mode.lock().unwrap());
        async move {
            let url = format!("{sim}{}", req.uri());
            let auth = req.headers().get("authorization").unwrap().to_str().unwrap().to_string();
            let resp = reqwest::Client::new().get(url).header("authorization", auth).send().await.unwrap();
            let text = resp.text().await.unwrap().replace(&sim, &own);
            let body = match mode {
                Mangle::Html => {
                    "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>".to_string()
                }
                Mangle::Drop(field) => {
                    let mut v: Value = serde_json::from_str(&text).unwrap();
                    visit(&mut v, &mut |m| {
                        m.remove(field);
                    });
                    v.to_string()
                }
                Mangle::Extra => {
                    let mut v: Value = serde_json::from_str(&text).unwrap();
                    visit(&mut v, &mut |m| {
                        m.insert("someNewField".into(), json!({"added": [1, 2]}));
                    });
                    v.to_string()
                }
            };
            ([("content-type", if mode == Mangle::Html { "text/html" } else { "application/json" })], body)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    own
}

fn visit(v: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            // Children first, so what `f` adds is not visited.
            m.values_mut().for_each(|x| visit(x, f));
            f(m);
        }
        Value::Array(items) => items.iter_mut().for_each(|x| visit(x, f)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_fail_the_snapshot_clearly_and_unknown_fields_are_tolerated() {
    let f = fixture(&[]).await;
    let mode = Arc::new(std::sync::Mutex::new(Mangle::Extra));
    let proxy = mangling_proxy(&f.sim.base_url(), mode.clone()).await;
    let parquet = f.dir.path().join("wh");
    let config = write_config(
        &f.dir.path().join("proxied"),
        &proxy,
        &f.org,
        TOKEN,
        &TestWarehouse::Parquet(&parquet),
        &shipped_snapshot_jobs(),
    );
    // Unknown fields everywhere: every snapshot still loads, equal to the dataset.
    for report in capture(&config, &SNAPSHOT_JOBS, tick()).await {
        assert!(report.ok(), "{}: {:?}", report.job, report.failures);
    }
    for table in SNAPSHOT_JOBS {
        let want = expected_shipped(&f.dump.path, &f.org, table, tick());
        let mut got = parquet_rows(&parquet, table).remove(&tick()).unwrap();
        // JSON columns keep what the API sent, new fields included; the typed columns ignore them.
        let mut kept = 0;
        for row in got.values_mut() {
            let mut v = Value::Object(std::mem::take(row));
            visit(&mut v, &mut |m| kept += usize::from(m.remove("someNewField").is_some()));
            *row = v.as_object().unwrap().clone();
        }
        let json_columns = ["giosg_realtime_users", "comm100_agents"].contains(&table);
        assert_eq!(kept > 0, json_columns, "{table}: {kept} new fields kept in JSON columns");
        assert_snapshot(table, &got, &want);
    }

    let label = "window 2024-03-31T17:07:31+03:00";
    let cases: [(Mangle, &str, &str); 5] = [
        (
            Mangle::Html,
            "giosg_realtime_rooms",
            "response is not JSON (expected value at line 1 column 1); it starts with \"<html><head><title>502 Bad Gateway",
        ),
        (Mangle::Drop("free_capacity"), "giosg_realtime_rooms", "page 1, results[0] lacks field `free_capacity`"),
        (
            Mangle::Drop("intradayLinearChatTime"),
            "comm100_agents",
            "page 1, list[0] lacks field `intradayLinearChatTime`",
        ),
        (
            Mangle::Drop("list"),
            "comm100_agents",
            "response is not a Comm100 agents page {total, pageCount, pageIndex, pageSize, list}: missing field `list`",
        ),
        (Mangle::Drop("avgScore"), "comm100_today", "the answer lacks field `avgScore`"),
    ];
    let at = tick() + Duration::seconds(1);
    for (m, job, message) in cases {
        *mode.lock().unwrap() = m;
        let report = capture(&config, &[job], at).await.remove(0);
        assert_eq!(report.windows_failed, 1, "{job}");
        let failure = &report.failures[0].message;
        assert!(
            failure.starts_with(&format!("job {job}, {label}: unexpected response from GET {proxy}/")),
            "{failure}"
        );
        assert!(failure.contains(message), "{failure}\nwants: {message}");
        assert!(!parquet_rows(&parquet, job).contains_key(&at), "{job}: nothing written for the failed snapshot");
    }

    // A truncated body (the simulator's fault, straight to it): retried, then a clear failure.
    let direct = write_config(
        &f.dir.path().join("direct"),
        &f.sim.base_url(),
        &f.org,
        TOKEN,
        &TestWarehouse::Parquet(&parquet),
        &shipped_snapshot_jobs(),
    );
    f.sim.handle.clear_requests();
    f.sim.handle.add_rule(FaultRule {
        path_contains: Some("/realTime/RightNow".into()),
        faults: FaultConfig { truncate_rate: 1.0, ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let report = capture(&direct, &["comm100_right_now"], at).await.remove(0);
    let failure = &report.failures[0].message;
    assert!(
        failure.starts_with(&format!(
            "job comm100_right_now, {label}: GET {}/v4/livechat/realTime/RightNow failed: ",
            f.sim.base_url()
        )),
        "{failure}"
    );
    let served: Vec<_> = f.sim.handle.requests().into_iter().filter(|r| r.path.ends_with("RightNow")).collect();
    assert_eq!(served.len(), 3, "the first attempt and two retries");
    assert!(served.iter().all(|r| r.fault.as_deref() == Some("truncate")));
    assert!(!parquet_rows(&parquet, "comm100_right_now").contains_key(&at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_history_is_never_destroyed_by_a_rebuild_or_a_changed_definition() {
    let f = fixture(&[]).await;
    let db = TestDb::new().await;
    let parquet = f.dir.path().join("wh");
    let later = tick() + Duration::minutes(5);
    for (sub, warehouse) in [("pg", TestWarehouse::Postgres(&db.url)), ("pq", TestWarehouse::Parquet(&parquet))] {
        let config = f.config(sub, &warehouse, &[shipped("comm100_agents")]);
        let read = async || match warehouse {
            TestWarehouse::Postgres(_) => pg_rows(&db.pool().await, "comm100_agents").await,
            TestWarehouse::Parquet(root) => parquet_rows(root, "comm100_agents"),
        };
        for at in [tick(), later] {
            assert!(capture(&config, &["comm100_agents"], at).await.iter().all(RunReport::ok));
        }
        let before = read().await;
        assert_eq!(before.keys().copied().collect::<Vec<_>>(), vec![tick(), later], "{sub}: two captures");
        let c = config.to_str().unwrap();

        let (code, out, err) = chatetl(&["--config", c, "run", "--job", "comm100_agents", "--rebuild"]);
        assert_eq!(code, 2, "{sub}: --rebuild of a snapshot job is refused\n{out}\n{err}");
        assert!(err.contains("a snapshot job cannot be rebuilt: its captures cannot be fetched again"), "{sub}: {err}");
        assert_eq!(read().await, before, "{sub}: every capture is still there");

        // A change that is more than added columns (here the department filter) is refused too,
        // with what to do instead, and loads nothing.
        let job = f.dir.path().join(sub).join("jobs/comm100_agents.yaml");
        let text = std::fs::read_to_string(&job).unwrap();
        std::fs::write(&job, format!("{text}department_id: 3fa85f64-5717-4562-b3fc-2c963f66afa6\n")).unwrap();
        let (code, out, err) = chatetl(&["--config", c, "run", "--job", "comm100_agents"]);
        assert_eq!(code, 2, "{sub}: a changed snapshot definition is refused\n{out}\n{err}");
        assert!(
            err.contains("a snapshot's history cannot be fetched again, so chatetl never rebuilds it"),
            "{sub}: {err}"
        );
        assert!(err.contains("give the job a new `table:`"), "{sub}: {err}");
        assert_eq!(read().await, before, "{sub}: every capture is still there");
        let (_, out, _) = chatetl(&["--config", c, "status", "--job", "comm100_agents"]);
        assert!(out.contains("CHANGED: keep the old definition or use a new table"), "{sub}: {out}");
        std::fs::write(&job, text).unwrap();
    }
}

//! giosg events and workflow end to end: the shipped jobs' bodies equal api-docs 001's, their
//! values in PostgreSQL and Parquet equal what the dumped `event` records give (computed here from
//! plain JSON), and a bad token or a bad response fails the window with a clear message while an
//! extra field is tolerated.

use std::collections::BTreeMap;
use std::path::Path;

use chatetl::runner::{Progress, RunKind, RunOptions, Runner};
use chatetl::simulator::{FaultConfig, FaultRule};
use chatetl::source::Source;
use serde_json::Value;

use crate::util::{
    Row, TOKEN, Table, TestDb, TestWarehouse, assert_tables_match, dump, parquet_table, pg_table, read_dump, read_kind,
    serve, shipped_jobs_of, write_config,
};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

/// The shipped events and workflow jobs, from `start`.
fn jobs(start: &str) -> Vec<(&'static str, String)> {
    let mut jobs = shipped_jobs_of("events", Some(start));
    jobs.extend(shipped_jobs_of("workflow", Some(start)));
    jobs
}

/// What a job reads from the dump: (table, column, scopes, category, action, aggregation,
/// workflow). Written from 001's bodies, independently of the job files.
type Check = (&'static str, &'static str, &'static [&'static str], &'static str, &'static str, &'static str, bool);
const CHECKS: &[Check] = &[
    (
        "average_first_response_wait_time",
        "avg_first_response_wait_seconds",
        &["org", "user"],
        "chat_session_first_response_wait_time",
        "changed",
        "avg",
        false,
    ),
    (
        "average_response_wait_time",
        "avg_response_wait_seconds",
        &["org", "user"],
        "chat_session_response_wait_time",
        "changed",
        "avg",
        false,
    ),
    ("chat_invitations", "chat_invitations", &["org", "user"], "chat_invitation", "created", "count", false),
    ("bot_clicks", "bot_clicks", &["org", "user"], "chat_message_attachment_click_action", "created", "count", false),
    (
        "average_invite_accepted_wait_time",
        "avg_invite_accepted_wait_seconds",
        &["org"],
        "track_chat_invite",
        "chat_invitation_accepted",
        "avg",
        true,
    ),
    (
        "average_first_message_sent",
        "avg_first_message_sent_seconds",
        &["org"],
        "track_chat_invite",
        "first_message_sent",
        "avg",
        true,
    ),
];

/// The expected table of `check` from the dumped events of `org` on local dates `days`. The
/// events endpoint reads trusted com.giosg.chat events; workflow reads every event whose
/// partner_organization_ids is empty. Org scope has a row per day (count 0, avg null when empty);
/// user scope has rows only for users with events.
fn expected(events: &[Row], org: &str, days: &[String], check: &Check) -> Table {
    let (_, _, scopes, category, action, agg, workflow) = *check;
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<f64>> = BTreeMap::new();
    for d in days {
        groups.entry((d.clone(), "org".into(), None)).or_default();
    }
    for e in events {
        let date = e.time.with_timezone(&HEL).date_naive().to_string();
        let source_ok = if workflow {
            e.v["partner_organization_ids"].as_array().unwrap().is_empty()
        } else {
            e.s("vendor") == "com.giosg.chat" && e.s("source") == "trusted"
        };
        if e.s("organization_id") != org
            || e.s("category") != category
            || e.s("action") != action
            || !source_ok
            || !days.contains(&date)
        {
            continue;
        }
        let value = e.v["value"].as_f64().unwrap_or(0.0);
        for scope in scopes {
            let who = match *scope {
                "user" => e.v["user_id"].as_str().map(String::from),
                _ => None,
            };
            groups.entry((date.clone(), scope.to_string(), who)).or_default().push(value);
        }
    }
    groups
        .into_iter()
        .map(|(k, xs)| {
            let v = match agg {
                "count" => Some(xs.len() as f64),
                _ if xs.is_empty() => None,
                _ => Some(xs.iter().sum::<f64>() / xs.len() as f64),
            };
            (k, v)
        })
        .collect()
}

struct Setup {
    _dump: crate::util::Dump,
    dir: tempfile::TempDir,
    events: Vec<Row>,
    org: String,
    sim: chatetl::simulator::RunningSimulator,
}

/// Four days over Helsinki's spring DST change, served.
async fn setup() -> Setup {
    let d = dump(&["--seed", "17", "--start", "2024-03-29", "--days", "4", "--sessions-per-day", "120"]);
    let (orgs, _) = read_dump(&d.path);
    let events = read_kind(&d.path, "event");
    assert!(events.len() > 500, "the dump has events: {}", events.len());
    let org = orgs[0]["id"].as_str().unwrap().to_string();
    let sim = serve(&d.path).await;
    Setup { _dump: d, dir: tempfile::tempdir().unwrap(), events, org, sim }
}

const DAYS: [&str; 4] = ["2024-03-29", "2024-03-30", "2024-03-31", "2024-04-01"];

async fn load_all(config_path: &Path) -> Runner {
    let config = chatetl::config::load(config_path).unwrap();
    assert_eq!(config.jobs.len(), 6, "four events jobs and two workflow jobs are shipped");
    let runner = Runner::open(config).await.unwrap();
    let (from, to) = chatetl::plan::parse_range(DAYS[0], DAYS[3], HEL).unwrap();
    for job in runner.config.jobs.values() {
        let windows = chatetl::plan::windows_overlapping(job.window, job.time_zone, from, to);
        let opts = RunOptions { kind: RunKind::Range, progress: Progress::Log, ..RunOptions::default() };
        let report = runner.run(job, windows, &opts).await.unwrap();
        assert!(report.ok(), "{}: {:?}", job.name, report.failures);
        assert_eq!(report.windows_loaded, 4, "{}", job.name);
    }
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_workflow_values_in_postgres_match_the_dump() {
    let s = setup().await;
    let db = TestDb::new().await;
    let path = write_config(s.dir.path(), &s.sim, TOKEN, TestWarehouse::Postgres(&db.url), &jobs(DAYS[0]));
    load_all(&path).await;
    let pool = db.pool().await;
    let days: Vec<String> = DAYS.iter().map(|d| d.to_string()).collect();
    for check in CHECKS {
        let want = expected(&s.events, &s.org, &days, check);
        assert!(want.values().filter(|v| v.is_some_and(|x| x > 0.0)).count() >= 4, "{}: data to compare", check.0);
        assert_tables_match(check.0, &pg_table(&pool, check.0, check.1).await, &want, false);
    }
    // Counts are bigint, averages double precision; the table says what it holds.
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = 'analytics' \
         AND column_name IN ('chat_invitations', 'avg_first_message_sent_seconds') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        types,
        [
            ("avg_first_message_sent_seconds".to_string(), "double precision".to_string()),
            ("chat_invitations".to_string(), "bigint".to_string())
        ]
    );
    let comment: Option<String> =
        sqlx::query_scalar("SELECT obj_description('analytics.bot_clicks'::regclass)").fetch_one(&pool).await.unwrap();
    assert!(comment.unwrap().starts_with("Bot clicks per day"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_workflow_values_in_parquet_match_the_dump() {
    let s = setup().await;
    let wh = s.dir.path().join("wh");
    let path = write_config(s.dir.path(), &s.sim, TOKEN, TestWarehouse::Parquet(&wh), &jobs(DAYS[0]));
    load_all(&path).await;
    let days: Vec<String> = DAYS.iter().map(|d| d.to_string()).collect();
    for check in CHECKS {
        let want = expected(&s.events, &s.org, &days, check);
        assert_tables_match(check.0, &parquet_table(&wh, check.0, check.1), &want, false);
        let table = wh.join(check.0);
        let files: Vec<_> = crate::util::parquet_files(&table)
            .iter()
            .map(|p| p.strip_prefix(&table).unwrap().display().to_string())
            .collect();
        assert_eq!(
            files,
            ["year=2024/month=3/data.parquet", "year=2024/month=4/data.parquet"],
            "{}: one partition per local month of the days",
            check.0
        );
    }
}

/// Removes the interval (events) or timespan (workflow) values and the organization placeholder.
fn set_aside(mut body: Value) -> Value {
    for (outer, a, b) in [("interval", "start", "end"), ("timespan", "After", "Before")] {
        if body.get(outer).is_some() {
            body[outer][a] = Value::Null;
            body[outer][b] = Value::Null;
        }
    }
    if body.get("organization_id").is_some() {
        body["organization_id"] = Value::Null;
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_events_and_workflow_body_equals_001_and_the_simulator_accepts_001_verbatim() {
    let s = setup().await;
    let wh = s.dir.path().join("wh");
    let path = write_config(s.dir.path(), &s.sim, TOKEN, TestWarehouse::Parquet(&wh), &jobs("2024-01-01"));
    let config = chatetl::config::load(&path).unwrap();
    let source = Source::new(&config.sources["giosg"]).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api-docs-001");
    let index: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("index.json")).unwrap()).unwrap();
    let doc = |e: &Value| -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(e["file"].as_str().unwrap())).unwrap()).unwrap()
    };
    let mut compared = 0;
    for job in config.jobs.values() {
        let (from, to) = chatetl::plan::parse_range("2024-03-30", "2024-03-30", HEL).unwrap();
        let windows = chatetl::plan::windows_overlapping(job.window, job.time_zone, from, to);
        let requests = source.requests(job, &windows);
        let scopes: Vec<&str> = if job.endpoint == chatetl::config::Endpoint::Workflow {
            vec!["org"]
        } else {
            job.scopes.iter().map(|s| s.as_str()).collect()
        };
        assert_eq!(requests.len(), scopes.len(), "{}", job.name);
        // 001 misspells the metric: "average_reponse_wait_time".
        let metric = if job.name == "average_response_wait_time" { "average_reponse_wait_time" } else { &job.name };
        for (scope, req) in scopes.iter().zip(&requests) {
            let entry = index
                .iter()
                // 001's workflow bodies have no scope (they are organization-wide).
                .find(|e| {
                    e["metric"] == metric
                        && (e["scope"] == *scope || e["scope"].is_null())
                        && e["python_example"] == false
                })
                .unwrap_or_else(|| panic!("no 001 body for {} {scope}", job.name));
            let body = req.body.clone().unwrap();
            assert_eq!(set_aside(body.clone()), set_aside(doc(entry)), "{} {scope}", job.name);
            if let Some(interval) = body.get("interval") {
                assert_eq!(interval["start"], "2024-03-30T00:00:00.000+02:00");
                assert_eq!(interval["end"], "2024-03-30T23:59:59.999+02:00");
                assert_eq!(body["organization_id"], s.org.as_str());
            } else {
                assert_eq!(body["timespan"]["After"], "2024-03-30T00:00:00.000+02:00");
                assert_eq!(body["timespan"]["Before"], "2024-03-30T23:59:59.999+02:00");
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 4 * 2 + 2, "four events metrics in two scopes, two workflow metrics");

    // Every 001 events and workflow body (python examples too) is answered 200 as written, once
    // its placeholder organization is ours.
    let client = reqwest::Client::new();
    let mut sent = 0;
    for e in index.iter().filter(|e| e["endpoint"] == "events" || e["endpoint"] == "workflow") {
        let mut body = doc(e);
        let path = if e["endpoint"] == "events" {
            body["organization_id"] = Value::String(s.org.clone());
            chatetl::simulator::events::events_path(&s.org)
        } else {
            chatetl::simulator::events::workflow_path(&s.org)
        };
        let resp = client
            .post(format!("{}{path}", s.sim.base_url()))
            .header("authorization", format!("Token {TOKEN}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{}: {answer}", e["file"]);
        assert!(answer["fields"].is_array() && answer["data"].is_array(), "{}: {answer}", e["file"]);
        sent += 1;
    }
    assert_eq!(sent, 14, "12 events bodies and 2 workflow bodies in 001");
}

/// Runs `table`'s job for one day with `rule` applied to its requests; returns the failure
/// message, or `None` when the window loaded.
async fn one_day_with(s: &Setup, token: &str, table: &str, rule: Option<FaultConfig>) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let job: Vec<(&str, String)> = jobs(DAYS[0]).into_iter().filter(|(n, _)| n.starts_with(table)).collect();
    let path = write_config(dir.path(), &s.sim, token, TestWarehouse::Parquet(&wh), &job);
    let config = chatetl::config::load(&path).unwrap();
    let runner = Runner::open(config).await.unwrap();
    let job = &runner.config.jobs[table];
    s.sim.handle.clear_rules();
    if let Some(faults) = rule {
        s.sim.handle.add_rule(FaultRule { faults, ..FaultRule::default() });
    }
    let (from, to) = chatetl::plan::parse_range(DAYS[1], DAYS[1], HEL).unwrap();
    let windows = chatetl::plan::windows_overlapping(job.window, job.time_zone, from, to);
    let opts = RunOptions { kind: RunKind::Range, progress: Progress::Log, ..RunOptions::default() };
    let report = runner.run(job, windows, &opts).await.unwrap();
    s.sim.handle.clear_rules();
    report.failures.first().map(|f| f.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_or_a_bad_response_fails_the_window_clearly_and_an_extra_field_is_tolerated() {
    let s = setup().await;
    for table in ["chat_invitations", "average_first_message_sent"] {
        let path = if table == "chat_invitations" { "/api/events/v2/orgs/" } else { "/api/reporting/workflow/" };
        let err = one_day_with(&s, "wrong-token", table, None).await.expect("a bad token fails");
        assert!(
            err.contains(table) && err.contains("2024-03-30") && err.contains("401") && err.contains(path),
            "{err}"
        );
        assert!(!err.contains("wrong-token"), "the token is never shown: {err}");

        let html = FaultConfig { html_rate: 1.0, ..FaultConfig::default() };
        let err = one_day_with(&s, TOKEN, table, Some(html)).await.expect("an HTML page fails");
        assert!(err.contains("not JSON") && err.contains("<!DOCTYPE html>") && err.contains(path), "{err}");

        // Retried like any broken transfer, then the window fails.
        let cut = FaultConfig { truncate_rate: 1.0, ..FaultConfig::default() };
        let err = one_day_with(&s, TOKEN, table, Some(cut)).await.expect("a truncated body fails");
        assert!(err.contains(table) && err.contains("2024-03-30") && err.contains(path), "{err}");

        let missing = FaultConfig { drop_field: Some("fields".into()), ..FaultConfig::default() };
        let err = one_day_with(&s, TOKEN, table, Some(missing)).await.expect("a missing field fails");
        assert!(err.contains("missing field `fields`") && err.contains(path), "{err}");

        let extra = FaultConfig { extra_field: Some("_experimental".into()), ..FaultConfig::default() };
        assert_eq!(one_day_with(&s, TOKEN, table, Some(extra)).await, None, "{table}: an extra field is tolerated");
    }
}

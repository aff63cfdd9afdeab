//! Bucketed events queries (`bucketed: true`, `assume: {bucketed_events: true}`) and the probe of
//! the two query shapes 001 never shows for events and workflow (`giosg.bucketed_events`,
//! `giosg.fused_events`), against the simulator over HTTP: a bucketed backfill sends one request
//! per chunk and scope and loads the very rows of one `granularity: all` request per window; each
//! `EventQueries` switch makes the probe report the assumption contradicted (the default
//! simulator confirms both); and a bucketed run against a server that refuses buckets fails
//! naming the assumption and the keys that turn it off.

use std::path::Path;

use chatetl::config::Config;
use chatetl::probe::{Report, Verdict};
use chatetl::runner::{Progress, RunKind, RunOptions, RunReport, Runner};
use chatetl::simulator::{
    DatasetSpec, EventAggregations, EventBuckets, EventQueries, FaultConfig, RunningSimulator, Simulator, dataset,
};
use chrono::{Duration, NaiveDate, Utc};

use crate::util::{TOKEN, TestWarehouse, parquet_rows, shipped_jobs_of, write_config};

const HEL: chrono_tz::Tz = chrono_tz::Europe::Helsinki;

/// Columns that differ between two loads of the same rows.
const LOAD_COLUMNS: &[&str] = &["_loaded_at", "_run_id"];

/// A simulator serving `days` generated days from `start`.
async fn simulator(start: NaiveDate, days: u32) -> RunningSimulator {
    busy_simulator(start, days, 60).await
}

/// A simulator serving `days` generated days from `start` with `sessions_per_day`.
async fn busy_simulator(start: NaiveDate, days: u32, sessions_per_day: u32) -> RunningSimulator {
    let spec = DatasetSpec { start, days, sessions_per_day, time_zone: HEL, ..DatasetSpec::default() };
    Simulator::new(dataset::generate(&spec), FaultConfig::default(), 1).spawn().await.unwrap()
}

/// The shipped job file `name` (from `start`), and a copy named and tabled `<name>_bucketed`
/// with `bucketed: true`.
fn with_bucketed_copy(name: &str, start: &str) -> Vec<(String, String)> {
    let (_, text) = shipped_jobs_of("events", Some(start))
        .into_iter()
        .chain(shipped_jobs_of("workflow", Some(start)))
        .find(|(file, _)| file.trim_end_matches(".yaml") == name)
        .unwrap_or_else(|| panic!("no shipped job {name}"));
    let copy = text.replace(&format!("name: {name}"), &format!("name: {name}_bucketed")) + "bucketed: true\n";
    vec![(format!("{name}.yaml"), text), (format!("{name}_bucketed.yaml"), copy)]
}

fn config(dir: &Path, sim: &RunningSimulator, jobs: &[(String, String)]) -> Config {
    let jobs: Vec<(&str, String)> = jobs.iter().map(|(f, t)| (f.as_str(), t.clone())).collect();
    let path = write_config(dir, sim, TOKEN, TestWarehouse::Parquet(&dir.join("wh")), &jobs);
    chatetl::config::load(&path).unwrap()
}

/// Backfills `job` over local dates `from..=to`, counting the requests the simulator saw.
async fn backfill(runner: &Runner, sim: &RunningSimulator, job: &str, from: &str, to: &str) -> (RunReport, usize) {
    let job = &runner.config.jobs[job];
    let (start, end) = chatetl::plan::parse_range(from, to, HEL).unwrap();
    let windows = chatetl::plan::windows_overlapping(job.window, job.time_zone, start, end);
    sim.handle.clear_requests();
    let opts = RunOptions { kind: RunKind::Backfill, progress: Progress::Log, ..RunOptions::default() };
    let report = runner.run(job, windows, &opts).await.unwrap();
    (report, sim.handle.requests().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_backfill_sends_a_request_per_chunk_and_loads_the_rows_of_a_request_per_day() {
    // 61 days over Helsinki's spring DST change (2024-03-31 is 23 hours long).
    let sim = simulator(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap(), 61).await;
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = with_bucketed_copy("bot_clicks", "2024-03-01");
    jobs.extend(with_bucketed_copy("average_first_response_wait_time", "2024-03-01"));
    let config = config(dir.path(), &sim, &jobs);
    let bucketed = &config.jobs["bot_clicks_bucketed"];
    assert!(bucketed.bucketed && bucketed.max_windows_per_request == 31, "{bucketed:?}");
    assert_eq!(bucketed.granularity, chatetl::query::Granularity::All, "the job keeps its granularity");
    assert!(!config.jobs["bot_clicks"].bucketed);
    // Transport only: bucketing is not part of what the rows mean.
    let hash = chatetl::state::definition_hash;
    assert_eq!(hash(bucketed), hash(&config.jobs["bot_clicks"]));
    let runner = Runner::open(config).await.unwrap();

    for name in ["bot_clicks", "average_first_response_wait_time"] {
        let (plain, plain_requests) = backfill(&runner, &sim, name, "2024-03-01", "2024-04-30").await;
        assert!(plain.ok(), "{name}: {:?}", plain.failures);
        // Org and user scope, one request per day each.
        assert_eq!((plain.windows_loaded, plain_requests), (61, 122), "{name}");
        let bucketed_name = format!("{name}_bucketed");
        let (bucketed, bucketed_requests) = backfill(&runner, &sim, &bucketed_name, "2024-03-01", "2024-04-30").await;
        assert!(bucketed.ok(), "{bucketed_name}: {:?}", bucketed.failures);
        // Two chunks (31 and 30 days) of two scopes.
        assert_eq!((bucketed.windows_loaded, bucketed_requests, bucketed.requests), (61, 4, 4), "{bucketed_name}");
        let bodies: Vec<String> = sim.handle.requests().into_iter().map(|r| r.body).collect();
        assert!(bodies.iter().all(|b| b.contains(r#""granularity":"day""#)), "{bodies:?}");
        assert!(bodies.iter().any(|b| b.contains(r#""start":"2024-03-01T00:00:00.000+02:00""#)), "{bodies:?}");

        let wh = dir.path().join("wh");
        let want = parquet_rows(&wh.join(name), LOAD_COLUMNS);
        let got = parquet_rows(&wh.join(&bucketed_name), LOAD_COLUMNS);
        assert!(want.len() > 61, "{name}: org rows for every day and user rows: {}", want.len());
        assert_eq!(got, want, "{name}: the bucketed load has the rows of one request per day");
        // A backfill again skips every window: nothing is sent.
        let (again, requests) = backfill(&runner, &sim, &bucketed_name, "2024-03-01", "2024-04-30").await;
        assert_eq!((again.windows_skipped, requests), (61, 0), "{bucketed_name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_hour_job_asks_for_hour_buckets_over_the_short_dst_day() {
    let sim = simulator(NaiveDate::from_ymd_opt(2024, 3, 30).unwrap(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let hourly = |name: &str, bucketed: bool| {
        let text = format!(
            "description: chat invitations per hour\nsource: giosg\nendpoint: events\nwindow: hour\n\
             granularity: all\nscopes: [org, user]\nstart: 2024-03-30\nbucketed: {bucketed}\naggregations:\n  \
             - {{ type: count, column: invitations }}\nfilters:\n  type: and\n  fields:\n    \
             - {{ type: selector, dimension: category, value: chat_invitation }}\n    \
             - {{ type: selector, dimension: action, value: created }}\n"
        );
        (format!("{name}.yaml"), text)
    };
    let config = config(dir.path(), &sim, &[hourly("hourly", false), hourly("hourly_bucketed", true)]);
    assert_eq!(config.jobs["hourly_bucketed"].max_windows_per_request, 168);
    let runner = Runner::open(config).await.unwrap();
    let (plain, plain_requests) = backfill(&runner, &sim, "hourly", "2024-03-30", "2024-03-31").await;
    // 24 + 23 hours, two scopes.
    assert_eq!((plain.windows_loaded, plain_requests), (47, 94), "{:?}", plain.failures);
    let (bucketed, requests) = backfill(&runner, &sim, "hourly_bucketed", "2024-03-30", "2024-03-31").await;
    assert_eq!((bucketed.windows_loaded, requests), (47, 2), "{:?}", bucketed.failures);
    assert!(sim.handle.requests().iter().all(|r| r.body.contains(r#""granularity":"hour""#)));
    let wh = dir.path().join("wh");
    assert_eq!(parquet_rows(&wh.join("hourly_bucketed"), LOAD_COLUMNS), parquet_rows(&wh.join("hourly"), LOAD_COLUMNS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_run_against_a_server_that_refuses_buckets_fails_naming_the_assumption_and_the_keys() {
    let sim = simulator(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap(), 5).await;
    sim.handle.set_event_queries(EventQueries { buckets: EventBuckets::Refused, ..EventQueries::default() });
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim, &with_bucketed_copy("bot_clicks", "2024-03-01"));
    let runner = Runner::open(config).await.unwrap();
    let (report, requests) = backfill(&runner, &sim, "bot_clicks_bucketed", "2024-03-01", "2024-03-05").await;
    assert_eq!((report.windows_loaded, report.windows_failed), (0, 5));
    assert!((1..=2).contains(&requests), "a refused request is not retried: {requests}");
    let failure = &report.failures[0];
    assert_eq!(failure.kind, chatetl::error::ErrorKind::BadRequest, "{failure:?}");
    for fragment in [
        "upstream returned 400",
        "granularity: `day` is not supported",
        "giosg.bucketed_events",
        "`bucketed: false` in job bot_clicks_bucketed",
        "`assume.bucketed_events` of source giosg",
    ] {
        assert!(failure.message.contains(fragment), "{fragment}: {}", failure.message);
    }
    // The same job unbucketed still loads: only the bucketed query is refused.
    let (plain, _) = backfill(&runner, &sim, "bot_clicks", "2024-03-01", "2024-03-05").await;
    assert!(plain.ok() && plain.windows_loaded == 5, "{:?}", plain.failures);
}

/// The shipped events and workflow jobs from ten days ago, and a workflow job averaging another
/// field under the same conditions as average_first_message_sent (so workflow has two averages
/// to fuse), served with data up to today.
async fn probe_setup(dir: &Path) -> (RunningSimulator, Config) {
    let today = Utc::now().with_timezone(&HEL).date_naive();
    let start = today - Duration::days(10);
    // Busy enough that yesterday has bot clicks whatever the weekday (about 25 on a Sunday):
    // the bucketed check needs data in the later window it asks for.
    let sim = busy_simulator(start, 12, 300).await;
    let from = start.to_string();
    let mut jobs: Vec<(String, String)> = shipped_jobs_of("events", Some(&from))
        .into_iter()
        .chain(shipped_jobs_of("workflow", Some(&from)))
        .map(|(f, t)| (f.to_string(), t))
        .collect();
    let (_, first_message) = jobs.iter().find(|(f, _)| f == "average_first_message_sent.yaml").unwrap().clone();
    let other_field = first_message
        .replace("name: average_first_message_sent", "name: first_message_value")
        .replace("field: dim1, column: avg_first_message_sent_seconds", "field: value, column: avg_value");
    assert_ne!(other_field, first_message);
    jobs.push(("first_message_value.yaml".into(), other_field));
    let config = config(dir, &sim, &jobs);
    (sim, config)
}

async fn probe(config: &Config) -> Report {
    let runner = Runner::open(config.clone()).await.unwrap();
    chatetl::probe::probe(&runner, Some("giosg"), Utc::now()).await
}

/// The verdict and observation of assumption `id` on `endpoint`.
fn finding(report: &Report, id: &str, endpoint: &str) -> (Verdict, String) {
    let f = report
        .findings
        .iter()
        .find(|f| f.assumption.id == id && f.endpoint == endpoint)
        .unwrap_or_else(|| panic!("{id} on {endpoint} not checked: {:#?}", report.findings));
    (f.verdict, f.observed.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_confirms_buckets_and_several_aggregations_and_each_switch_contradicts_one() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config) = probe_setup(dir.path()).await;

    let report = probe(&config).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let contradicted: Vec<_> = report.findings.iter().filter(|f| f.verdict == Verdict::Contradicted).collect();
    assert!(contradicted.is_empty(), "{contradicted:#?}");
    let (v, seen) = finding(&report, "giosg.bucketed_events", "events");
    assert_eq!(v, Verdict::Confirmed, "{seen}");
    assert!(seen.contains("`assume: {bucketed_events: true}` may be set on source giosg"), "{seen}");
    for endpoint in ["events", "workflow"] {
        let (v, seen) = finding(&report, "giosg.fused_events", endpoint);
        assert_eq!(v, Verdict::Confirmed, "{endpoint}: {seen}");
        assert!(seen.contains("`assume: {fused_events: true}` may be set on source giosg"), "{seen}");
    }
    assert!(
        report.findings.iter().all(|f| f.assumption.id != "giosg.bucketed_events" || f.endpoint == "events"),
        "workflow is never bucketed, so not probed for it"
    );
    // Events: the job's own request, the quiet week, then 2 all + 1 bucketed + 1 alone + 1 fused;
    // workflow: its own, then 1 all + 1 alone + 1 fused.
    assert_eq!(
        report.requests,
        2 + 5 + 1 + 3,
        "{:?}",
        sim.handle.requests().iter().map(|r| &r.body).collect::<Vec<_>>()
    );

    let switched = |buckets, aggregations| EventQueries { buckets, aggregations };
    let cases = [
        (switched(EventBuckets::Refused, EventAggregations::Answered), "giosg.bucketed_events", "was refused"),
        (switched(EventBuckets::OneBucket, EventAggregations::Answered), "giosg.bucketed_events", "other rows"),
        (switched(EventBuckets::Answered, EventAggregations::Refused), "giosg.fused_events", "was refused"),
        (switched(EventBuckets::Answered, EventAggregations::FirstOnly), "giosg.fused_events", "cannot be read"),
    ];
    for (queries, broken, why) in cases {
        sim.handle.set_event_queries(queries);
        let report = probe(&config).await;
        assert!(report.failures.is_empty(), "{queries:?}: {:?}", report.failures);
        let endpoints: &[&str] = if broken == "giosg.fused_events" { &["events", "workflow"] } else { &["events"] };
        for endpoint in endpoints {
            let (v, seen) = finding(&report, broken, endpoint);
            assert_eq!(v, Verdict::Contradicted, "{queries:?} {endpoint}: {seen}");
            assert!(seen.contains(why), "{queries:?} {endpoint}: {seen}");
            let key = broken.trim_start_matches("giosg.");
            assert!(seen.contains(&format!("do not set `assume: {{{key}: true}}`")), "{seen}");
        }
        // The other assumption is untouched, and so is everything else.
        let other = if broken == "giosg.fused_events" { "giosg.bucketed_events" } else { "giosg.fused_events" };
        assert_eq!(finding(&report, other, "events").0, Verdict::Confirmed, "{queries:?}");
        let contradicted: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Contradicted && f.assumption.id != broken)
            .collect();
        assert!(contradicted.is_empty(), "{queries:?}: {contradicted:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_query_switches_are_set_and_read_over_http_and_refuse_unknown_keys() {
    let sim = simulator(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap(), 1).await;
    let client = reqwest::Client::new();
    let url = format!("{}/_sim/event-queries", sim.base_url());
    let got: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, serde_json::json!({"buckets": "answered", "aggregations": "answered"}));
    let put = client.put(&url).json(&serde_json::json!({"buckets": "one_bucket"})).send().await.unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(sim.handle.event_queries().buckets, EventBuckets::OneBucket);
    let bad = client.put(&url).json(&serde_json::json!({"bucket": "refused"})).send().await.unwrap();
    assert!(bad.status().is_client_error(), "{}", bad.status());
    assert_eq!(sim.handle.event_queries().buckets, EventBuckets::OneBucket, "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_days_without_data_the_probe_confirms_neither_buckets_nor_several_aggregations() {
    // Found in review: an empty window answers every metric with its empty value, so a server
    // that mixed the metrics up looked right. Data ends three weeks ago: yesterday is quiet.
    let dir = tempfile::tempdir().unwrap();
    let today = Utc::now().with_timezone(&HEL).date_naive();
    let start = today - Duration::days(30);
    let sim = busy_simulator(start, 9, 300).await;
    let jobs: Vec<(String, String)> = shipped_jobs_of("events", Some(&start.to_string()))
        .into_iter()
        .filter(|(f, _)| *f == "bot_clicks.yaml")
        .map(|(f, t)| (f.to_string(), t))
        .collect();
    let config = config(dir.path(), &sim, &jobs);
    // A server that answers the second metric wrongly would otherwise have passed.
    sim.handle.set_event_queries(EventQueries {
        buckets: EventBuckets::OneBucket,
        aggregations: EventAggregations::FirstOnly,
    });
    let report = probe(&config).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for id in ["giosg.bucketed_events", "giosg.fused_events"] {
        let (v, seen) = finding(&report, id, "events");
        assert_eq!(v, Verdict::NotObservable, "{id}: {seen}");
        assert!(seen.contains("no data"), "{id}: {seen}");
    }
}

//! `chatetl probe` against the simulator: in its default mode every assumption the probe can see
//! is confirmed, and in modes that break one (faults that drop a field, an HTML answer) exactly
//! that assumption is reported contradicted, with the fix it suggests.

use chatetl::config::{Config, Warehouse};
use chatetl::probe::{Report, Verdict};
use chatetl::runner::Runner;
use chatetl::simulator::{DatasetSpec, FaultConfig, FaultRule, RunningSimulator, Simulator, dataset};
use chrono::{Duration, Utc};

/// The simulator with data up to today, and the shipped catalogue (every vendor) pointed at it.
async fn setup(dir: &std::path::Path) -> (RunningSimulator, Config) {
    let today = Utc::now().date_naive();
    let spec = DatasetSpec {
        start: today - Duration::days(10),
        days: 12,
        sessions_per_day: 60,
        time_zone: chrono_tz::Europe::Helsinki,
        ..DatasetSpec::default()
    };
    let data = dataset::generate(&spec);
    let (org, token) = (data.organizations[0].id.clone(), data.organizations[0].api_token.clone());
    let sim = Simulator::new(data, FaultConfig::default(), 1).spawn().await.unwrap();
    let mut config = chatetl::demo::shipped_config(dir, &sim.base_url(), &token, &org).unwrap();
    config.warehouse = Warehouse::Parquet { path: dir.join("wh") };
    for source in config.sources.values_mut() {
        source.requests_per_second = 500.0;
        source.max_retries = 0;
    }
    (sim, config)
}

async fn probe(config: &Config) -> Report {
    let runner = Runner::open(config.clone()).await.unwrap();
    chatetl::probe::probe(&runner, None, Utc::now()).await
}

fn verdicts(report: &Report, assumption: &str) -> Vec<(String, Verdict, String)> {
    report
        .findings
        .iter()
        .filter(|f| f.assumption.id == assumption)
        .map(|f| (f.endpoint.to_string(), f.verdict, f.observed.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_simulator_confirms_every_assumption_the_probe_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config) = setup(dir.path()).await;
    let report = probe(&config).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let contradicted: Vec<_> = report.findings.iter().filter(|f| f.verdict == Verdict::Contradicted).collect();
    assert!(contradicted.is_empty(), "{contradicted:#?}");
    // One request per source and endpoint its jobs use (giosg 5, Thulium 1, Comm100 4), one
    // about a quiet week for each of chat_sessions and events, and five for events comparing
    // answers (2 `all` + 1 bucketed; 1 alone + 1 fused).
    assert_eq!(report.requests, 17, "{:?}", sim.handle.requests().iter().map(|r| &r.path).collect::<Vec<_>>());
    assert_eq!(sim.handle.requests().len(), 17);
    for id in chatetl::probe::ASSUMPTIONS.iter().map(|a| a.id) {
        let seen = verdicts(&report, id);
        assert!(!seen.is_empty(), "{id} was not checked");
        let confirmed = seen.iter().any(|(_, v, _)| *v == Verdict::Confirmed);
        // Only the unit of Today's utcOffset cannot be seen in any answer.
        assert_eq!(confirmed, id != "comm100.utc_offset_minutes", "{id}: {seen:?}");
    }
    assert!(
        !dir.path().join("wh").read_dir().unwrap().any(|e| e.unwrap().path().extension().is_some()),
        "no data written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_break_an_assumption_are_reported_contradicted_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config) = setup(dir.path()).await;
    let drop = |path: &str, field: &str| FaultRule {
        path_contains: Some(path.to_string()),
        faults: FaultConfig { drop_field: Some(field.to_string()), ..FaultConfig::default() },
        ..FaultRule::default()
    };
    sim.handle.add_rule(drop("/realtime/rooms", "next"));
    sim.handle.add_rule(drop("/realtime/users", "is_logged_id"));
    sim.handle.add_rule(drop("/realTime/Agents", "pageIndex"));
    sim.handle.add_rule(drop("/realTime/Today", "abandondedChats"));
    sim.handle.add_rule(drop("/workflow/", "fields"));
    sim.handle.add_rule(FaultRule {
        path_contains: Some("/api/chats/reports/summary".into()),
        faults: FaultConfig { html_rate: 1.0, ..FaultConfig::default() },
        ..FaultRule::default()
    });
    let report = probe(&config).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let contradicted = |id: &str, endpoint: &str| {
        let f = report
            .findings
            .iter()
            .find(|f| f.assumption.id == id && f.endpoint == endpoint)
            .unwrap_or_else(|| panic!("{id} on {endpoint} not checked"));
        assert_eq!(f.verdict, Verdict::Contradicted, "{id} on {endpoint}: {f:?}");
        assert!(!f.assumption.fix.is_empty() && f.assumption.code.contains("src/"), "{f:?}");
        f.observed.clone()
    };
    assert!(contradicted("giosg.realtime_paging", "realtime_rooms").contains("no `next`"));
    assert!(contradicted("giosg.realtime_users_logged_in", "realtime_users").contains("neither"));
    assert!(contradicted("comm100.agents_paging", "agents").contains("pageIndex"));
    assert!(contradicted("comm100.today_spelling", "today").contains("neither"));
    assert!(contradicted("giosg.report_shape", "workflow").contains("no fields/data"));
    for id in ["thulium.page_rows", "thulium.series_labels"] {
        assert!(contradicted(id, "chat_summary").contains("not JSON"), "{id}");
    }
    // What was not broken stays confirmed.
    let report_shape = verdicts(&report, "giosg.report_shape");
    assert!(report_shape.iter().any(|(e, v, _)| e == "chat_sessions" && *v == Verdict::Confirmed), "{report_shape:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_failure_of_the_probe_not_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, mut config) = setup(dir.path()).await;
    let giosg = config.sources.get_mut("giosg").unwrap();
    giosg.credentials = chatetl::config::Credentials::Token(chatetl::config::Secret::new("not-the-key"));
    let report = probe(&config).await;
    let refused: Vec<_> = report.failures.iter().filter(|f| f.source == "giosg").collect();
    assert_eq!(refused.len(), 5, "every giosg endpoint fails: {:?}", report.failures);
    assert!(refused.iter().all(|f| f.kind == chatetl::error::ErrorKind::Credentials), "{refused:?}");
    let giosg_requests =
        sim.handle.requests().iter().filter(|r| !r.path.contains("/v4/") && !r.path.contains("/chats/")).count();
    assert_eq!(giosg_requests, 1, "one refused request for the source, then none");
    assert!(report.findings.iter().all(|f| f.source != "giosg"));
    assert!(report.findings.iter().any(|f| f.source == "thulium" && f.verdict == Verdict::Confirmed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_count_metric_name_and_omitted_empty_buckets_are_reported_contradicted() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config) = setup(dir.path()).await;
    sim.handle.set_assumptions(chatetl::simulator::Assumptions {
        count_metric_name: chatetl::simulator::CountMetricName::FieldCount,
        omit_empty_buckets: true,
    });
    let report = probe(&config).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let find = |id: &str, endpoint: &str| {
        report
            .findings
            .iter()
            .find(|f| f.assumption.id == id && f.endpoint == endpoint)
            .unwrap_or_else(|| panic!("{id} on {endpoint} not checked"))
            .clone()
    };
    let count = find("giosg.count_metric_name", "chat_sessions");
    assert_eq!(count.verdict, Verdict::Contradicted, "{count:?}");
    assert!(count.observed.contains("`chat_session_id_count`"), "{count:?}");
    assert!(count.assumption.fix.contains("none needed for loading"), "{count:?}");
    let empty = find("giosg.empty_buckets", "chat_sessions");
    assert_eq!(empty.verdict, Verdict::Contradicted, "{empty:?}");
    assert!(empty.observed.contains("empty buckets are left out"), "{empty:?}");
    assert!(empty.assumption.fix.contains("none needed"), "{empty:?}");
    // Events answer `count` whatever the switch (only chat_sessions is switched).
    assert_eq!(find("giosg.count_metric_name", "events").verdict, Verdict::Confirmed);
}

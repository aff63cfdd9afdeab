//! The shipped Prometheus alert rules (`deploy/prometheus/chatetl-alerts.yml`) evaluated by
//! Prometheus's own rule engine (`promtool test rules`, from Debian's `prometheus` package, which
//! `scripts/test` installs) against real scrapes of a running daemon: a job whose data is stale
//! and whose runs fail (its upstream is unreachable), a job paused by refused credentials, and a
//! daemon that serves nothing.
//!
//! The daemon is scraped twice, the second time after its failing job's run failures grew; the
//! two scrapes become an hour of samples each in promtool's input, and the rules are evaluated at
//! the end of the second hour.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{TOKEN, TestDb, TestWarehouse, chatetl, dump, serve, start_daemon, stop_daemon, write_config};

const PATIENCE: Duration = Duration::from_secs(60);

fn promtool() -> String {
    std::env::var("CHATETL_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".to_string())
}

/// A scrape's samples: `name{labels}` (as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            (series.to_string(), value)
        })
        .collect()
}

/// promtool's notation for `v` (its expanding notation takes plain decimals).
fn number(v: f64) -> String {
    if v.is_infinite() { "Inf".to_string() } else { format!("{v}") }
}

/// Polls /metrics until `until` holds for its samples; returns them.
async fn scrape_until(base: &str, what: &str, until: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        let s = samples(&text);
        if until(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the sample of `name` for `job`, if any.
fn of(s: &BTreeMap<String, f64>, name: &str, job: &str) -> Option<f64> {
    let prefix = format!("{name}{{chatetl_job=\"{job}\",");
    s.iter().find(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| *v)
}

/// The annotations of `alert` in the rules file, with `labels` filled in as Prometheus does.
fn annotations(rules: &Value, alert: &str, labels: &BTreeMap<&str, &str>) -> Value {
    let rule = rules["groups"][0]["rules"].as_array().unwrap().iter().find(|r| r["alert"] == alert).unwrap();
    let mut out = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_object().unwrap() {
        let mut text = v.as_str().unwrap().to_string();
        for (label, value) in labels {
            text = text.replace(&format!("{{{{ $labels.{label} }}}}"), value);
        }
        assert!(!text.contains("{{"), "a template the test does not fill: {text}");
        out.insert(k.clone(), Value::String(text));
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_fire_on_a_stale_failing_job_a_paused_one_and_a_silent_daemon() {
    let rules_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/chatetl-alerts.yml");
    let rules_text = std::fs::read_to_string(&rules_path).unwrap();
    let rules: Value = serde_saphyr::from_str(&rules_text).unwrap();
    let d = dump(&["--seed", "2", "--start", "2024-05-01", "--days", "3", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new().await;
    let job = |source: &str| {
        format!(
            "description: d\nsource: {source}\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
             aggregations:\n  - {{ type: count, column: chats }}\nstart: 2024-05-01\nlookback_windows: 0\nschedule: \"* * * * * *\"\n"
        )
    };
    // History first: daily_chats loads 1-3 May, so its watermark is two years old.
    let loaded = write_config(
        &dir.path().join("a"),
        &sim,
        TOKEN,
        TestWarehouse::Postgres(&db.url),
        &[("daily_chats.yaml", job("giosg"))],
    );
    let (code, out, err) = chatetl(&[
        "--config",
        loaded.to_str().unwrap(),
        "backfill",
        "--job",
        "daily_chats",
        "--from",
        "2024-05-01",
        "--to",
        "2024-05-03",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");

    // Then the daemon, with daily_chats's upstream gone and another job's token refused.
    let org = sim.handle.dataset().organizations[0].id.clone();
    let source = |name: &str, url: &str, token: &str| {
        format!(
            "  {name}:\n    kind: giosg\n    base_url: {url}\n    token: {token}\n    organization_id: {org}\n    \
             max_retries: 0\n    timeout_secs: 5\n"
        )
    };
    let daemon_dir = dir.path().join("b");
    std::fs::create_dir_all(daemon_dir.join("jobs")).unwrap();
    let config = format!(
        "time_zone: Europe/Helsinki\njobs_dir: jobs\nsources:\n{}{}warehouse:\n  kind: postgres\n  url: {}\n  schema: analytics\n",
        source("giosg", "http://127.0.0.1:9", TOKEN),
        source("refused", &sim.base_url(), "not-the-key"),
        db.url
    );
    std::fs::write(daemon_dir.join("chatetl.yaml"), config).unwrap();
    std::fs::write(daemon_dir.join("jobs/daily_chats.yaml"), job("giosg")).unwrap();
    std::fs::write(daemon_dir.join("jobs/refused_chats.yaml"), job("refused")).unwrap();
    let (daemon, base) = start_daemon(&daemon_dir.join("chatetl.yaml"), &[]);
    let first = scrape_until(&base, "refused_chats paused, daily_chats failing", |s| {
        of(s, "chatetl_job_paused", "refused_chats") == Some(1.0)
            && of(s, "chatetl_job_run_failures_total", "daily_chats").is_some_and(|n| n >= 1.0)
    })
    .await;
    // The watermark came from the warehouse at start-up: no run of this daemon loaded anything.
    assert!(of(&first, "chatetl_job_watermark_lag_seconds", "daily_chats").is_some_and(|lag| lag > 365.0 * 86400.0));
    let failures = of(&first, "chatetl_job_run_failures_total", "daily_chats").unwrap();
    let second = scrape_until(&base, "more failed runs", |s| {
        of(s, "chatetl_job_run_failures_total", "daily_chats").is_some_and(|n| n > failures)
    })
    .await;
    stop_daemon(daemon);

    // Two hours of samples at 1 m: the first scrape's values, then the second's.
    let input_series: Vec<Value> = second
        .iter()
        .map(|(series, v2)| {
            let v1 = first.get(series).copied().unwrap_or(*v2);
            json!({ "series": series, "values": format!("{}+0x59 {}+0x60", number(v1), number(*v2)) })
        })
        .collect();
    let alert = |name: &str, job: Option<&str>, severity: &str| {
        let mut labels = BTreeMap::from([("severity", severity)]);
        if let Some(job) = job {
            labels.extend([("chatetl_job", job), ("source", if job == "daily_chats" { "giosg" } else { "refused" })]);
            labels.insert("endpoint", "chat_sessions");
        }
        json!({ "exp_labels": labels, "exp_annotations": annotations(&rules, name, &labels) })
    };
    let tests = json!({
        "rule_files": [rules_path],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    { "eval_time": "119m", "alertname": "ChatetlHistoryStale", "exp_alerts": [alert("ChatetlHistoryStale", Some("daily_chats"), "warning")] },
                    { "eval_time": "119m", "alertname": "ChatetlJobFailing", "exp_alerts": [alert("ChatetlJobFailing", Some("daily_chats"), "warning")] },
                    { "eval_time": "119m", "alertname": "ChatetlJobPaused", "exp_alerts": [alert("ChatetlJobPaused", Some("refused_chats"), "critical")] },
                    { "eval_time": "119m", "alertname": "ChatetlSnapshotStale", "exp_alerts": [] },
                    { "eval_time": "119m", "alertname": "ChatetlDown", "exp_alerts": [] },
                ],
            },
            {
                "interval": "1m",
                "input_series": [],
                "alert_rule_test": [
                    { "eval_time": "10m", "alertname": "ChatetlDown", "exp_alerts": [alert("ChatetlDown", None, "critical")] },
                ],
            },
        ],
    });
    let test_file = dir.path().join("alerts_test.yml");
    // JSON is YAML: promtool reads it as is.
    std::fs::write(&test_file, serde_json::to_string_pretty(&tests).unwrap()).unwrap();
    let check = std::process::Command::new(promtool()).args(["check", "rules"]).arg(&rules_path).output();
    let check = check.unwrap_or_else(|e| panic!("cannot run {} ({e}): run the suite with scripts/test", promtool()));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let run = std::process::Command::new(promtool()).args(["test", "rules"]).arg(&test_file).output().unwrap();
    assert!(
        run.status.success(),
        "promtool test rules failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

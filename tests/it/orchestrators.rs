//! Running under an orchestrator: the Kubernetes CronJob of `deploy/kubernetes/` runs its
//! container arguments against the simulator and fails at once exactly on the exit codes a retry
//! cannot fix; the Airflow task of `deploy/airflow/` (its function, imported without Airflow)
//! returns the JSON summary, and tells retryable failures from those that need a person.

use std::collections::BTreeSet;
use std::path::Path;

use chatetl::error::ErrorKind;
use chatetl::simulator::{FaultConfig, RunningSimulator};

use crate::util::*;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The exit codes of failures a retry cannot fix, as chatetl defines them.
fn not_retryable() -> BTreeSet<u64> {
    ErrorKind::ALL.iter().filter(|k| !k.retryable()).map(|k| u64::from(k.exit_code())).collect()
}

/// A config for the simulator with the shipped real_chats job (from 2024-01-01) into Parquet.
fn setup(dir: &Path, sim: &RunningSimulator) -> std::path::PathBuf {
    let jobs: Vec<_> = shipped_jobs(Some("2024-01-01")).into_iter().filter(|(f, _)| *f == "real_chats.yaml").collect();
    write_config(dir, sim, TOKEN, TestWarehouse::Parquet(&dir.join("wh")), &jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_cronjob_runs_its_arguments_and_fails_fast_exactly_where_a_retry_cannot_help() {
    let manifest: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo("deploy/kubernetes/chatetl-cronjob.yaml")).unwrap())
            .unwrap();
    assert_eq!(manifest["kind"], "CronJob");
    let job = &manifest["spec"]["jobTemplate"]["spec"];
    let rules = job["podFailurePolicy"]["rules"].as_array().unwrap();
    let codes = |action: &str| -> BTreeSet<u64> {
        rules
            .iter()
            .filter(|r| r["action"] == action && r.get("onExitCodes").is_some())
            .flat_map(|r| r["onExitCodes"]["values"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
            .collect()
    };
    assert_eq!(codes("FailJob"), not_retryable(), "the Job fails at once on exactly the codes a retry cannot fix");
    assert_eq!(codes("Ignore"), BTreeSet::from([130]), "an interrupted run (eviction) is retried without counting");
    let pod = &job["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never", "podFailurePolicy needs it");
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "chatetl");
    let args: Vec<String> =
        container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();

    // The container's arguments, run as they are against the simulator.
    let d = dump(&["--seed", "41", "--start", "2024-01-01", "--days", "20", "--sessions-per-day", "10"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &sim);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(&args)
        .env("CHATETL_CONFIG", &config)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((summary["exit_code"].as_u64(), summary["ok"].as_bool()), (Some(0), Some(true)), "{summary}");
    assert_eq!(summary["jobs"][0]["job"], "real_chats", "{summary}");
    assert!(summary["jobs"][0]["loaded"].as_u64().unwrap() > 20, "{summary}");
    assert!(stderr.lines().all(|l| l.starts_with('{')), "--log-format json: every log line is JSON: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_airflow_task_returns_the_summary_and_tells_a_retry_from_a_fix() {
    let d = dump(&["--seed", "42", "--start", "2024-01-01", "--days", "10", "--sessions-per-day", "10"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &sim);
    let python =
        std::env::var("CHATETL_TEST_PYTHON").expect("CHATETL_TEST_PYTHON is set: run the suite with scripts/test");
    let task = |day: &str, config: &Path| {
        let script = r#"
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("chatetl_dag", sys.argv[1])
dag = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dag)
try:
    print(json.dumps({"returned": dag.run_chatetl(["real_chats"], sys.argv[2])}))
except dag.ChatetlNeedsAFix as e:
    print(json.dumps({"needs_a_fix": str(e)}))
except dag.ChatetlFailed as e:
    print(json.dumps({"retry": str(e)}))
"#;
        let out = std::process::Command::new(&python)
            .args(["-c", script, repo("deploy/airflow/chatetl_dag.py").to_str().unwrap(), day])
            .env("CHATETL_BIN", env!("CARGO_BIN_EXE_chatetl"))
            .env("CHATETL_CONFIG", config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()
    };
    // {{ ds }} = 2024-01-03: that day's window, loaded.
    let ok = task("2024-01-03", &config);
    let summary = &ok["returned"];
    assert_eq!(summary["exit_code"], 0, "{ok}");
    assert_eq!((summary["jobs"][0]["windows"].as_u64(), summary["jobs"][0]["loaded"].as_u64()), (Some(1), Some(1)));
    let requests = sim.handle.requests();
    assert!(requests.iter().all(|r| r.body.contains("2024-01-03T00:00:00.000+02:00")), "{requests:?}");

    // An outage (every answer a 503, after the retries): Airflow may try again.
    sim.handle.set_faults(FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() });
    let outage = task("2024-01-04", &config);
    let message = outage["retry"].as_str().unwrap_or_else(|| panic!("a retryable failure: {outage}"));
    assert!(message.contains("exited 1") && message.contains("503"), "{message}");
    sim.handle.set_faults(FaultConfig::default());

    // Refused credentials: no retry can fix them.
    let wrong = dir.path().join("wrong");
    let jobs: Vec<_> = shipped_jobs(Some("2024-01-01")).into_iter().filter(|(f, _)| *f == "real_chats.yaml").collect();
    let wrong = write_config(&wrong, &sim, "not-the-token", TestWarehouse::Parquet(&dir.path().join("wh")), &jobs);
    let refused = task("2024-01-04", &wrong);
    let message = refused["needs_a_fix"].as_str().unwrap_or_else(|| panic!("a failure a retry cannot fix: {refused}"));
    assert!(message.contains("exited 3"), "{message}");
    assert!(!message.contains("not-the-token"), "the token is never printed: {message}");
    assert!(not_retryable().contains(&3));
}

//! The shipped job catalogue: it validates, and every request body equals api-docs 001's (or
//! 002's example) once interval values and the room selector are set aside.

use chatetl::config::Scope;
use chatetl::plan::Window;
use chatetl::query::Granularity;
use chatetl::source::Source;
use serde_json::Value;

use crate::util::{TOKEN, TestWarehouse, chatetl, dump, serve, shipped_jobs, write_config};

/// `and` is commutative: sort its fields (recursively) so order does not matter.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for x in map.values_mut() {
                normalize(x);
            }
            if map.get("type").and_then(Value::as_str) == Some("and")
                && let Some(Value::Array(fields)) = map.get_mut("fields")
            {
                fields.sort_by_key(|f| f.to_string());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Removes the interval values, the room selector and (for short chats) the two bounds that
/// contradict 001's own definition (see jobs/short_chats.yaml).
fn set_aside(mut body: Value, short_chats: bool) -> Value {
    body["interval"]["start"] = Value::Null;
    body["interval"]["end"] = Value::Null;
    if let Some(Value::Array(fields)) = body["filters"].get_mut("fields") {
        fields.retain(|f| f["dimension"] != "room_ids");
        if short_chats {
            fields.retain(|f| {
                !(f["type"] == "bound"
                    && (f["lower"] == "2" || f["lower"] == "1")
                    && f.get("lowerStrict") == Some(&Value::Bool(false)))
            });
        }
    }
    normalize(&mut body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_body_equals_the_docs_body() {
    let d = dump(&["--seed", "1", "--start", "2024-01-01", "--days", "1", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let path = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &shipped_jobs(None));
    let config = chatetl::config::load(&path).unwrap();
    assert_eq!(config.jobs.len(), 8);
    let source = Source::new(&config.sources["giosg"]).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let index: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("api-docs-001/index.json")).unwrap()).unwrap();
    let mut compared = 0;
    for job in config.jobs.values() {
        let window = chatetl::plan::windows_overlapping(
            job.window,
            job.time_zone,
            chrono::Utc::now() - chrono::Duration::days(2),
            chrono::Utc::now() - chrono::Duration::days(1),
        );
        let window: Vec<Window> = window.into_iter().take(1).collect();
        let requests = source.requests(job, &window);
        assert_eq!(requests.len(), job.scopes.len());
        for (scope, req) in job.scopes.iter().zip(&requests) {
            let body = req.body.clone().unwrap();
            let doc: Value = if job.name == "unique_visitors" {
                assert_eq!(*scope, Scope::Org);
                let mut doc: Value =
                    serde_json::from_str(&std::fs::read_to_string(fixtures.join("api-docs-002/example.json")).unwrap())
                        .unwrap();
                // 002's one-day query asks for `all`; chatetl asks for `day` buckets, so one
                // request covers a chunk of days with each bucket exactly one day (the same rows).
                assert_eq!((&doc["granularity"], job.granularity), (&Value::from("all"), Granularity::All));
                doc["granularity"] = "day".into();
                doc
            } else {
                let entry = index
                    .iter()
                    .find(|e| {
                        e["metric"] == job.name.as_str() && e["scope"] == scope.as_str() && e["python_example"] == false
                    })
                    .unwrap_or_else(|| panic!("no 001 body for {} {}", job.name, scope.as_str()));
                serde_json::from_str(
                    &std::fs::read_to_string(fixtures.join("api-docs-001").join(entry["file"].as_str().unwrap()))
                        .unwrap(),
                )
                .unwrap()
            };
            let short = job.name == "short_chats";
            assert_eq!(set_aside(body.clone(), false), set_aside(doc, short), "{} {}", job.name, scope.as_str());
            assert_eq!(body["interval"]["time_zone"], "Europe/Helsinki");
            assert!(
                body["interval"]["end"].as_str().unwrap().ends_with("T23:59:59.999+02:00")
                    || body["interval"]["end"].as_str().unwrap().ends_with("T23:59:59.999+03:00")
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 7 * 3 + 1, "seven 001 metrics in three scopes, and 002's example");
}

/// What the shipped chatetl.yaml reads from the environment.
const CREDENTIALS: [(&str, &str); 5] = [
    ("GIOSG_TOKEN", "t"),
    ("GIOSG_ORGANIZATION_ID", "o"),
    ("THULIUM_USER", "u"),
    ("THULIUM_PASSWORD", "p"),
    ("COMM100_TOKEN", "c"),
];

#[test]
fn the_shipped_configuration_validates() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(["--config", &format!("{root}/chatetl.yaml"), "validate"])
        .envs(CREDENTIALS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs = chatetl::demo::shipped::JOBS.len();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("3 sources, {jobs} jobs")));
    assert!(out.stderr.is_empty(), "no warnings: {}", String::from_utf8_lossy(&out.stderr));
    // Without a credential: a warning naming the variable, the file and the line (only the
    // commands that contact the source need it); with --strict, exit 2 saying the same.
    for (strict, code) in [(false, 0), (true, 2)] {
        let mut args = vec!["--config".to_string(), format!("{root}/chatetl.yaml"), "validate".into()];
        if strict {
            args.push("--strict".into());
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
            .args(&args)
            .envs(CREDENTIALS.iter().filter(|(k, _)| *k != "GIOSG_TOKEN").copied())
            .env_remove("GIOSG_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "strict {strict}");
        let err = String::from_utf8_lossy(&out.stderr);
        let prefix = if strict { "error: " } else { "warning: " };
        assert!(err.starts_with(prefix) && err.contains("GIOSG_TOKEN") && err.contains("chatetl.yaml:"), "{err}");
    }
}

#[test]
fn validate_reports_a_broken_job_file_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::write(
        dir.path().join("chatetl.yaml"),
        "sources:\n  giosg:\n    kind: giosg\n    base_url: http://127.0.0.1:9\n    token: t\n    organization_id: o\nwarehouse:\n  kind: parquet\n  path: wh\n",
    )
    .unwrap();
    let good = chatetl::demo::shipped::JOBS.iter().find(|(n, _)| *n == "real_chats.yaml").unwrap().1;
    std::fs::write(dir.path().join("jobs/a.yaml"), good.replace("granularity: day", "granulrity: day")).unwrap();
    std::fs::write(dir.path().join("jobs/b.yaml"), good.replace("scopes: [org, team, user]", "scopes: [org, galaxy]"))
        .unwrap();
    let (code, _, err) = chatetl(&["--config", dir.path().join("chatetl.yaml").to_str().unwrap(), "validate"]);
    assert_eq!(code, 2, "{err}");
    let line_of = |needle: &str| good.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    assert!(err.contains(&format!("a.yaml:{}:", line_of("granularity"))) && err.contains("granulrity"), "{err}");
    assert!(err.contains(&format!("b.yaml:{}:", line_of("scopes"))) && err.contains("galaxy"), "{err}");
}

#[test]
fn the_demo_loads_every_shipped_job_into_readable_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("warehouse");
    let (code, out, err) =
        chatetl(&["demo", "--days", "3", "--sessions-per-day", "60", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (name, _) in chatetl::demo::shipped::JOBS {
        let table = name.trim_end_matches(".yaml");
        assert!(out.contains(table), "summary lists {table}: {out}");
        let batches = chatetl::readback::read_parquet_dir(&out_dir.join(table)).unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        // Windowed jobs have a row per day at least; a snapshot (today, right now) may be one row.
        let snapshot = batches.iter().any(|b| b.schema().column_with_name("captured_at").is_some());
        assert!(rows >= if snapshot { 1 } else { 3 }, "{table} has rows: {rows}");
    }
    assert!(out.contains("last days, organization scope"), "{out}");
    assert!(out_dir.join("_chatetl/state.db").exists(), "the state database is in the warehouse folder");
    assert!(!out_dir.join("_chatetl/real_chats.json").exists(), "no JSON state is written any more");
}

#[test]
fn plan_prints_the_requests_of_every_shipped_job() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in chatetl::demo::shipped::JOBS {
        let name = file.trim_end_matches(".yaml");
        let snapshot = text.lines().any(|l| l.trim() == "kind: snapshot");
        let mut args = vec!["--config".to_string(), format!("{root}/chatetl.yaml"), "plan".into(), "--job".into()];
        args.push(name.to_string());
        if !snapshot {
            args.extend(["--from", "2024-03-30", "--to", "2024-03-31"].map(String::from));
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
            .args(&args)
            .envs(CREDENTIALS)
            .env("CHATETL_WAREHOUSE_PATH", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let windows = if snapshot { "1 snapshot windows" } else { "2 day windows" };
        // 2024-03-31 is Helsinki's 23-hour day.
        let hourly = name.ends_with("_hourly");
        assert!(stdout.contains(if hourly { "47 hour windows" } else { windows }), "{name}: {stdout}");
        assert!(stdout.contains("GET http") || stdout.contains("POST http"), "{name}: {stdout}");
    }
}

/// The `total` line of a plan: (jobs, requests).
fn plan_total(out: &str) -> (usize, u64) {
    let line = out.lines().find(|l| l.starts_with("total ")).unwrap_or_else(|| panic!("a total line: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    (cells[1].parse().unwrap(), cells[2].parse().unwrap())
}

#[test]
fn plan_totals_the_catalogue_and_fused_trios_send_a_third_of_their_requests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let plan = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatetl"))
            .args(["--config", &format!("{root}/chatetl.yaml"), "plan", "--from", "2024-01-01", "--to", "2024-12-31"])
            .args(extra)
            .env("CHATETL_WAREHOUSE_PATH", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let (fused, apart) = (plan(&[]), plan(&["--no-fusion"]));
    let windowed = chatetl::demo::shipped::JOBS.iter().filter(|(_, t)| !t.contains("kind: snapshot")).count();
    assert_eq!(plan_total(&fused).0, windowed, "a range plans the windowed jobs: {fused}");
    assert!(!fused.contains("POST http"), "without --job, only the totals: {fused}");
    assert!(fused.contains("time at the rate") && fused.contains("giosg ") && fused.contains("thulium "), "{fused}");
    // 2024 has 366 days: 12 chunks of at most 31 days, 3 scopes; each of the two trios sends 36
    // requests instead of 108.
    assert_eq!(plan_total(&apart).1 - plan_total(&fused).1, 2 * (108 - 36), "{fused}\n{apart}");
    for trio in [
        "jobs messages_in_real_chats, real_chats, sales_in_real_chats share one request per chunk",
        "jobs average_purchase_value_in_real_chats, purchases_in_real_chats, real_chats_with_sales share one request",
    ] {
        assert!(fused.contains(trio), "{fused}");
    }
}

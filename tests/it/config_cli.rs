//! One vendor at a time: commands that contact no source need no credentials, a source can be
//! disabled, `--job` takes globs and `--source` a source's jobs, `validate` finds a Thulium zone
//! that would fail every window, and giosg's real-time reports go to their own host.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Dump, TOKEN, dump, serve};

/// Two days from 2024-02-01 of one organization (5 chat sessions a day, 2 Thulium users).
fn small_dump(seed: &str) -> Dump {
    dump(&[
        "--seed",
        seed,
        "--start",
        "2024-02-01",
        "--days",
        "2",
        "--organizations",
        "1",
        "--sessions-per-day",
        "5",
        "--thulium-users",
        "2",
    ])
}

/// Every variable the shipped chatetl.yaml reads, and what else could leak in from the
/// environment the tests run in.
pub(crate) const VARIABLES: [&str; 13] = [
    "GIOSG_BASE_URL",
    "GIOSG_REALTIME_BASE_URL",
    "GIOSG_TOKEN",
    "GIOSG_ORGANIZATION_ID",
    "THULIUM_BASE_URL",
    "THULIUM_USER",
    "THULIUM_PASSWORD",
    "THULIUM_TIME_ZONE",
    "COMM100_BASE_URL",
    "COMM100_TOKEN",
    "CHATETL_WAREHOUSE_PATH",
    "CHATETL_CONFIG",
    "RUST_LOG",
];

/// Runs `chatetl --config <config> args…` with none of [`VARIABLES`] set but those of `env`:
/// (exit code, stdout, stderr).
fn cli(config: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    for v in VARIABLES {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied()).arg("--config").arg(config).args(args);
    let out = cmd.output().expect("run chatetl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("chatetl.yaml")
}

/// The shipped chatetl.yaml with `edits` (from, to) applied, reading the shipped jobs, written
/// into `dir`.
fn edited_config(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let mut text = chatetl::demo::shipped::CONFIG.replace("jobs_dir: jobs", &format!("jobs_dir: {}", jobs.display()));
    for (from, to) in edits {
        assert!(text.contains(from), "the shipped chatetl.yaml has `{from}`");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join("chatetl.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `enabled: true` of source `name` in the shipped chatetl.yaml, and its replacement.
fn disable(name: &str) -> (String, String) {
    (format!("    kind: {name}\n    enabled: true"), format!("    kind: {name}\n    enabled: false"))
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starts with {prefix}")) + 1
}

#[test]
fn status_plan_and_validate_need_only_the_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let env = [("CHATETL_WAREHOUSE_PATH", wh.to_str().unwrap())];
    let config = shipped_config();
    let shipped = std::fs::read_to_string(&config).unwrap();

    let (code, out, err) = cli(&config, &env, &["status"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (file, _) in chatetl::demo::shipped::JOBS {
        assert!(out.contains(file.trim_end_matches(".yaml")), "status lists {file}: {out}");
    }
    let (code, json, err) = cli(&config, &env, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(json.as_array().unwrap().iter().all(|j| j["enabled"] == true), "{json}");

    // Requests are printed without credentials; the unset organization shows as its reference.
    let (code, out, err) =
        cli(&config, &env, &["plan", "--job", "real_chats", "--from", "2024-03-01", "--to", "2024-03-01"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("POST https://api.giosg.com/api/reporting/v1/orgs/${GIOSG_ORGANIZATION_ID}/chat_sessions"),
        "{out}"
    );
    assert!(err.contains("GIOSG_TOKEN") && err.contains("run needs them"), "{err}");
    let (code, out, err) = cli(&config, &env, &["plan", "--job", "giosg_realtime_rooms"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("GET https://service.giosg.com/api/v4/reporting/realtime/rooms?"),
        "api-docs 000's host: {out}"
    );

    // validate: every unset credential is a warning with its place; --strict makes them errors.
    let (code, out, err) = cli(&config, &env, &["validate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let jobs = chatetl::demo::shipped::JOBS.len();
    assert!(out.contains(&format!("3 sources, {jobs} jobs")) && out.contains("5 warnings"), "{out}");
    for (key, variable) in [
        ("    token: ${GIOSG_TOKEN}", "GIOSG_TOKEN"),
        ("    organization_id:", "GIOSG_ORGANIZATION_ID"),
        ("    username:", "THULIUM_USER"),
        ("    password:", "THULIUM_PASSWORD"),
        ("    token: ${COMM100_TOKEN}", "COMM100_TOKEN"),
    ] {
        let at = format!("chatetl.yaml:{}:", line_of(&shipped, key));
        let warned = err.lines().any(|l| l.starts_with("warning: ") && l.contains(&at) && l.contains(variable));
        assert!(warned, "a warning names {variable} at {at}: {err}");
    }
    let (code, _, err) = cli(&config, &env, &["validate", "--strict"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: ") && err.contains("GIOSG_TOKEN") && err.contains("COMM100_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_contact_a_source_need_its_credentials_and_only_its() {
    let d = small_dump("3");
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let base = sim.base_url();
    let password = "thulium-secret-not-to-print";
    let env = [
        ("CHATETL_WAREHOUSE_PATH", wh.to_str().unwrap()),
        ("THULIUM_BASE_URL", base.as_str()),
        ("THULIUM_USER", "demo"),
        ("THULIUM_PASSWORD", password),
    ];
    let config = shipped_config();

    // giosg's credentials are unset: its jobs are refused before anything is sent.
    let (code, out, err) =
        cli(&config, &env, &["run", "--job", "real_chats", "--from", "2024-02-01", "--to", "2024-02-01"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("cannot contact source giosg")
            && err.contains("GIOSG_TOKEN")
            && err.contains("GIOSG_ORGANIZATION_ID"),
        "{err}"
    );
    assert!(
        err.contains("chatetl.yaml:") && !err.contains("THULIUM") && !err.contains("COMM100"),
        "only giosg's: {err}"
    );
    let (code, _, err) =
        cli(&config, &env, &["backfill", "--job", "unique_visitors", "--from", "2024-02-01", "--to", "2024-02-01"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("GIOSG_TOKEN") && !err.contains("COMM100_TOKEN"), "{err}");
    let (code, _, err) = cli(&config, &env, &["run", "--job", "comm100_queue"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("COMM100_TOKEN") && !err.contains("GIOSG_TOKEN"), "{err}");
    // The daemon runs every enabled job: it needs them all (and re-reads them so on SIGHUP).
    let (code, _, err) = cli(&config, &env, &["schedule", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("GIOSG_TOKEN") && err.contains("COMM100_TOKEN") && !err.contains("THULIUM_PASSWORD"), "{err}");
    assert!(sim.handle.requests().is_empty(), "nothing was sent");

    // A job of the source whose credentials are set runs, whatever the other sources lack (the
    // simulator's Thulium password is the organization's key, any user name).
    let env_ok: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| if *k == "THULIUM_PASSWORD" { (*k, TOKEN) } else { (*k, *v) }).collect();
    let (code, out, err) = cli(
        &config,
        &env_ok,
        &["run", "--job", "thulium_chat_summary_daily", "--from", "2024-02-01", "--to", "2024-02-01"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("thulium_chat_summary_daily") && !out.contains("real_chats"), "{out}");
    let (code, out, err) = cli(
        &config,
        &env,
        &["run", "--job", "thulium_chat_summary_daily", "--from", "2024-02-01", "--to", "2024-02-01"],
    );
    assert_eq!(code, 3, "a refused password is exit 3: {out}\n{err}");
    assert!(!out.contains(password) && !err.contains(password), "the password never prints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_source_is_validated_listed_and_never_run() {
    let d = small_dump("4");
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let base = sim.base_url();
    let (giosg, comm100) = (disable("giosg"), disable("comm100"));
    let config = edited_config(dir.path(), &[(&giosg.0, &giosg.1), (&comm100.0, &comm100.1)]);
    // Only Thulium's variables: a user of that one vendor.
    let env = [
        ("CHATETL_WAREHOUSE_PATH", wh.to_str().unwrap()),
        ("THULIUM_BASE_URL", base.as_str()),
        ("THULIUM_USER", "demo"),
        ("THULIUM_PASSWORD", TOKEN),
    ];
    let shipped = chatetl::demo::shipped::JOBS;
    let of = |prefix: &str| shipped.iter().filter(|(f, _)| f.starts_with(prefix)).count();

    let (code, out, err) = cli(&config, &env, &["validate", "--strict"]);
    assert_eq!(code, 0, "a disabled source needs no credentials: {out}\n{err}");
    assert!(out.contains(&format!("source comm100 disabled with its {} jobs", of("comm100"))), "{out}");
    assert!(out.contains("source giosg disabled") && !out.contains("warnings") && err.is_empty(), "{out}\n{err}");
    // A problem in a disabled source's job file is still an error.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("jobs")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let jobs_dir = text.lines().find(|l| l.starts_with("jobs_dir:")).unwrap();
    std::fs::write(broken.join("chatetl.yaml"), text.replace(jobs_dir, "jobs_dir: jobs")).unwrap();
    let queue = shipped.iter().find(|(f, _)| *f == "comm100_queue.yaml").unwrap().1;
    std::fs::write(broken.join("jobs/comm100_queue.yaml"), format!("{queue}windw: day\n")).unwrap();
    let (code, _, err) = cli(&broken.join("chatetl.yaml"), &env, &["validate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("comm100_queue.yaml:") && err.contains("windw"), "{err}");

    // status lists every job, the disabled ones as such.
    let (code, out, err) = cli(&config, &env, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("comm100_queue (disabled)") && out.contains("real_chats (disabled)"), "{out}");
    assert!(!out.contains("thulium_chat_summary_daily (disabled)"), "{out}");
    let (_, json, _) = cli(&config, &env, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let enabled = |job: &str| json.as_array().unwrap().iter().find(|j| j["job"] == job).unwrap()["enabled"].clone();
    assert_eq!((enabled("comm100_queue"), enabled("thulium_chat_summary_daily")), (false.into(), true.into()));

    // Running a disabled job, glob or source is refused, saying why.
    for args in [&["--job", "comm100_queue"][..], &["--source", "comm100"], &["--job", "comm100_*"]] {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let (code, _, err) = cli(&config, &env, &all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("disabled") && err.contains("enabled: false"), "{args:?}: {err}");
    }
    let (code, _, err) =
        cli(&config, &env, &["backfill", "--job", "real_chats", "--from", "2024-02-01", "--to", "2024-02-01"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("job real_chats is disabled"), "{err}");

    // `run` runs the enabled jobs only.
    let (code, out, err) = cli(&config, &env, &["run", "--from", "2024-02-01", "--to", "2024-02-01"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("thulium_chat_summary_daily") && out.contains("thulium_chat_summary_hourly"), "{out}");
    assert!(!out.contains("real_chats") && !out.contains("comm100"), "{out}");
    assert!(err.contains("note: left out, their source has `enabled: false`"), "{err}");
    assert!(sim.handle.requests().iter().all(|r| r.path.starts_with("/api/chats/reports/summary")), "Thulium only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_chosen_by_glob_and_by_source() {
    let d = small_dump("5");
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let base = sim.base_url();
    let env = [
        ("CHATETL_WAREHOUSE_PATH", wh.to_str().unwrap()),
        ("THULIUM_BASE_URL", base.as_str()),
        ("THULIUM_USER", "demo"),
        ("THULIUM_PASSWORD", TOKEN),
    ];
    let config = shipped_config();
    let range = ["--from", "2024-02-01", "--to", "2024-02-01"];
    let with_range = |args: &[&'static str]| [args, &range[..]].concat();

    let (code, out, err) = cli(&config, &env, &with_range(&["run", "--job", "thulium*daily"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("thulium_chat_summary_daily") && !out.contains("thulium_chat_summary_hourly"), "{out}");
    let (code, out, err) = cli(&config, &env, &with_range(&["run", "--source", "thulium"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("thulium_chat_summary_daily") && out.contains("thulium_chat_summary_hourly"), "{out}");
    // A glob that matches nothing is an error naming it, even next to one that matches.
    let (code, _, err) = cli(&config, &env, &with_range(&["run", "--job", "thulium*", "--job", "zendesk_*"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no job matches `zendesk_*`"), "{err}");
    let (code, _, err) = cli(&config, &env, &with_range(&["run", "--source", "zendesk"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown source `zendesk`"), "{err}");
    // backfill loads one job: its glob must match exactly one.
    let (code, _, err) = cli(&config, &env, &with_range(&["backfill", "--job", "thulium*"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`thulium*` matches 2: thulium_chat_summary_daily, thulium_chat_summary_hourly"), "{err}");
    let (code, out, err) = cli(&config, &env, &with_range(&["backfill", "--job", "*_hourly", "--source", "thulium"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("thulium_chat_summary_hourly"), "{out}");

    // plan and status take them too.
    let (code, out, err) = cli(&config, &[], &with_range(&["plan", "--source", "thulium"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("job thulium_chat_summary_daily: 1 day windows")
            && out.contains("job thulium_chat_summary_hourly: 24 hour windows"),
        "{out}"
    );
    assert!(!out.contains("job real_chats"), "{out}");
    let (code, out, err) = cli(&config, &env, &["status", "--job", "thulium*", "--job", "real_chats"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<&str> = out.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(listed, ["real_chats", "thulium_chat_summary_daily", "thulium_chat_summary_hourly"], "{out}");
    let row = |job: &str| out.lines().find(|l| l.starts_with(&format!("{job} "))).unwrap().to_string();
    assert!(
        row("thulium_chat_summary_daily").contains("succeeded") && !row("real_chats").contains("succeeded"),
        "{out}"
    );
}

#[test]
fn validate_finds_a_thulium_zone_that_would_split_the_accounts_days() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("CHATETL_WAREHOUSE_PATH", dir.path().to_str().unwrap()), ("THULIUM_TIME_ZONE", "Europe/Warsaw")];
    let (code, out, err) = cli(&shipped_config(), &env, &["validate"]);
    assert_eq!(code, 2, "{out}\n{err}");
    // The daily job has chatetl.yaml's zone (Helsinki): pointed at its mapping. Its hours fit
    // Warsaw's (one whole hour apart all year), so the hourly job passes.
    let daily = chatetl::demo::shipped::JOBS.iter().find(|(f, _)| *f == "thulium_chat_summary_daily.yaml").unwrap().1;
    let at = format!("thulium_chat_summary_daily.yaml:{}:1: time_zone: ", line_of(daily, "name:"));
    assert!(err.contains(&at), "{at} in {err}");
    assert!(err.contains("Europe/Helsinki") && err.contains("give the job `time_zone: Europe/Warsaw`"), "{err}");
    assert!(!err.contains("thulium_chat_summary_hourly"), "{err}");
    // The job's own zone: pointed at it.
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let text = format!("{daily}time_zone: America/New_York\n");
    std::fs::write(jobs.join("thulium_chat_summary_daily.yaml"), &text).unwrap();
    let config = dir.path().join("chatetl.yaml");
    std::fs::write(&config, chatetl::demo::shipped::CONFIG).unwrap();
    let (code, _, err) = cli(&config, &[("CHATETL_WAREHOUSE_PATH", "wh")], &["validate"]);
    assert_eq!(code, 2, "{err}");
    let at = format!(
        "thulium_chat_summary_daily.yaml:{}:12: time_zone: the job's zone America/New_York",
        text.lines().count()
    );
    assert!(err.contains(&at), "{at} in {err}");
    // With the account's zone it validates.
    std::fs::write(jobs.join("thulium_chat_summary_daily.yaml"), format!("{daily}time_zone: Europe/Helsinki\n"))
        .unwrap();
    let (code, out, err) = cli(&config, &[("CHATETL_WAREHOUSE_PATH", "wh")], &["validate"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_requests_go_to_realtime_base_url() {
    let d = dump(&["--seed", "6", "--days", "1", "--organizations", "1", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let org = sim.handle.dataset().organizations[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let base = sim.base_url();
    // base_url answers nothing: every request the jobs send must go to the real-time host.
    let env = [
        ("CHATETL_WAREHOUSE_PATH", wh.to_str().unwrap()),
        ("GIOSG_BASE_URL", "http://127.0.0.1:9"),
        ("GIOSG_REALTIME_BASE_URL", base.as_str()),
        ("GIOSG_TOKEN", TOKEN),
        ("GIOSG_ORGANIZATION_ID", org.as_str()),
    ];
    let config = shipped_config();
    let (code, out, err) = cli(&config, &env, &["plan", "--job", "giosg_realtime_*"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("GET {base}/api/v4/reporting/realtime/rooms?")), "{out}");
    assert!(out.contains(&format!("GET {base}/api/v4/reporting/realtime/users")), "{out}");
    let (code, out, err) = cli(&config, &env, &["run", "--job", "giosg_realtime_*"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let paths: Vec<String> = sim.handle.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.iter().any(|p| p == "/api/v4/reporting/realtime/rooms"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "/api/v4/reporting/realtime/users"), "{paths:?}");
    // The other giosg endpoints stay on base_url.
    let (_, out, _) =
        cli(&config, &env, &["plan", "--job", "real_chats", "--from", "2024-03-01", "--to", "2024-03-01"]);
    assert!(out.contains("POST http://127.0.0.1:9/api/reporting/v1/orgs/"), "{out}");
    // Unset, it follows GIOSG_BASE_URL (the simulator, a proxy), else api-docs 000's host.
    let follow: Vec<(&str, &str)> = env.iter().filter(|(k, _)| *k != "GIOSG_REALTIME_BASE_URL").copied().collect();
    let (_, out, _) = cli(&config, &follow, &["plan", "--job", "giosg_realtime_rooms"]);
    assert!(out.contains("GET http://127.0.0.1:9/api/v4/reporting/realtime/rooms?"), "{out}");
}

//! Every upstream read is bounded: a server that ignores `offset`, an answer over the source's
//! `max_response_bytes`, a body that drips forever and a collection of more pages than
//! `max_pages` each fail their own job's window, quickly and with their message, while another
//! job of the same run (same source, same simulator) loads.
//!
//! Each run has two jobs of the shipped Thulium daily summary over 2024-02-01: `good` (pages of
//! 100) and `bounded` (pages of 50, or 2), so the simulator's faults aim at `bounded` alone by
//! its `limit=` in the query string.

use std::time::{Duration, Instant};

use chatetl::simulator::{FaultConfig, FaultRule, RunningSimulator};

use crate::util::{chatetl, dump, records, serve};

const PATH: &str = "/api/chats/reports/summary";
const DAILY: &str = "thulium_chat_summary_daily";

/// A simulator serving one Thulium account of `users` users (one chat per day), and its password.
async fn thulium(users: usize) -> (crate::util::Dump, RunningSimulator, String) {
    let d = dump(&[
        "--seed",
        "3",
        "--start",
        "2024-02-01",
        "--days",
        "1",
        "--organizations",
        "1",
        "--sessions-per-day",
        "1",
        "--thulium-users",
        &users.to_string(),
    ]);
    let password = records(&d.path, "organization")[0]["api_token"].as_str().unwrap().to_string();
    let sim = serve(&d.path).await;
    (d, sim, password)
}

/// The shipped daily job named `name` (its table too) with `page_size`.
fn job(name: &str, page_size: u32) -> String {
    let file = format!("{DAILY}.yaml");
    let text = chatetl::demo::shipped::JOBS.iter().find(|(n, _)| *n == file).unwrap().1;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("name:") && !l.starts_with("start:") && !l.starts_with("page_size:"))
        .map(String::from)
        .collect();
    lines.extend([format!("name: {name}"), "start: 2024-02-01".into(), format!("page_size: {page_size}")]);
    lines.join("\n") + "\n"
}

/// The outcome of one run of `good` and `bounded`.
struct Run {
    _dir: tempfile::TempDir,
    wh: std::path::PathBuf,
    code: i32,
    out: String,
    err: String,
    elapsed: Duration,
}

impl Run {
    fn wrote(&self, job: &str) -> bool {
        self.wh.join(job).join("year=2024/month=2/data.parquet").exists()
    }

    /// `bounded` failed with `message` and wrote nothing; `good` loaded.
    fn assert_only_bounded_failed(&self, message: &str) {
        let (code, out, err) = (self.code, &self.out, &self.err);
        eprintln!("CODE {code} {:?}\n{err}", self.elapsed);
        assert_ne!(code, 0, "the run fails: {out}\n{err}");
        assert!(err.contains("job bounded, window 2024-02-01") && err.contains(message), "`{message}` in: {err}");
        assert!(!err.contains("job good,"), "good does not fail: {err}");
        assert!(self.wrote("good"), "good loaded: {out}\n{err}");
        assert!(!self.wrote("bounded"), "bounded wrote nothing: {out}\n{err}");
    }
}

/// Runs `good` (pages of 100) and `bounded` (pages of `bounded_page_size`) over 2024-02-01, the
/// source's config with `source_extra` lines appended.
fn run(sim: &RunningSimulator, password: &str, bounded_page_size: u32, source_extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let mut source = format!(
        "  thulium:\n    kind: thulium\n    base_url: {}\n    username: api_user\n    password: {password}\n    \
         time_zone: Europe/Helsinki\n    concurrency: 4\n    requests_per_second: 1000\n    timeout_secs: 10\n    \
         max_retries: 1\n    max_retry_delay_secs: 1\n",
        sim.base_url()
    );
    for line in source_extra {
        let key = format!("    {}:", line.split(':').next().unwrap());
        source = source.lines().filter(|l| !l.starts_with(&key)).map(|l| format!("{l}\n")).collect();
        source.push_str(&format!("    {line}\n"));
    }
    let config = format!(
        "time_zone: Europe/Helsinki\njobs_dir: jobs\nsources:\n{source}warehouse:\n  kind: parquet\n  path: {}\n",
        wh.display()
    );
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::write(dir.path().join("chatetl.yaml"), config).unwrap();
    std::fs::write(dir.path().join("jobs/good.yaml"), job("good", 100)).unwrap();
    std::fs::write(dir.path().join("jobs/bounded.yaml"), job("bounded", bounded_page_size)).unwrap();
    let config = dir.path().join("chatetl.yaml");
    let started = Instant::now();
    let (code, out, err) = chatetl(&[
        "--config",
        config.to_str().unwrap(),
        "run",
        "--job",
        "good",
        "--job",
        "bounded",
        "--from",
        "2024-02-01",
        "--to",
        "2024-02-01",
    ]);
    Run { _dir: dir, wh, code, out, err, elapsed: started.elapsed() }
}

/// Faults for `bounded`'s requests (pages of 50) alone.
fn aim(sim: &RunningSimulator, faults: FaultConfig) {
    sim.handle.add_rule(FaultRule {
        path_contains: Some(PATH.into()),
        query_contains: Some("limit=50".into()),
        faults,
        ..FaultRule::default()
    });
}

/// Requests the simulator served for `bounded` (pages of `limit`).
fn bounded_requests(sim: &RunningSimulator, limit: u32) -> usize {
    let limit = format!("limit={limit}");
    sim.handle.requests().iter().filter(|r| r.path == PATH && r.query.as_deref().unwrap_or("").contains(&limit)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_a_server_ignoring_offset_fails_at_the_repeated_page() {
    // 60 users: `bounded`'s first page (50 rows) is full, so it asks for a second one.
    let (_d, sim, password) = thulium(60).await;
    aim(&sim, FaultConfig { ignore_offset: true, ..FaultConfig::default() });
    let run = run(&sim, &password, 50, &[]);
    run.assert_only_bounded_failed(
        "page 2 is the same as page 1 byte for byte: the upstream ignores the paging parameter",
    );
    assert_eq!(bounded_requests(&sim, 50), 2, "it stops at the first repeated page");
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_an_answer_over_max_response_bytes_fails_once_without_retries() {
    let (_d, sim, password) = thulium(4).await;
    let message = "answered more than 65536 bytes (the source's max_response_bytes)";
    // Declared up front (Content-Length), then found while reading a chunked body.
    for (case, drip_ms) in [("content-length", 0), ("chunked", 1)] {
        sim.handle.clear_rules();
        sim.handle.clear_requests();
        aim(&sim, FaultConfig { pad_bytes: 10 * 1024 * 1024, drip_ms, ..FaultConfig::default() });
        let run = run(&sim, &password, 50, &["max_response_bytes: 65536"]);
        run.assert_only_bounded_failed(message);
        assert_eq!(bounded_requests(&sim, 50), 1, "{case}: not retried");
        // Dripping 10 MiB in 256-byte pieces would take over 40 s; the cap stops it at 64 KiB.
        assert!(run.elapsed < Duration::from_secs(20), "{case}: {:?}", run.elapsed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_a_dripping_body_fails_after_timeout_secs() {
    let (_d, sim, password) = thulium(4).await;
    // A pause of 5 s before each 256-byte piece: the answer (over 1 KiB) would take 20 s or more
    // per attempt; timeout_secs: 1 ends each attempt after a second, body included.
    aim(&sim, FaultConfig { drip_ms: 5000, ..FaultConfig::default() });
    let run = run(&sim, &password, 50, &["timeout_secs: 1"]);
    run.assert_only_bounded_failed("timed out (after the source's timeout_secs, 1 s, which bounds the whole answer)");
    assert_eq!(bounded_requests(&sim, 50), 2, "the attempt and 1 retry");
    assert!(run.elapsed < Duration::from_secs(15), "two attempts of 1 s, not of 20 s: {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_more_pages_than_max_pages_fail_the_window() {
    // 7 users in pages of 2: 4 pages for `bounded`, over max_pages 3; 1 page for `good`.
    let (_d, sim, password) = thulium(7).await;
    let run = run(&sim, &password, 2, &["max_pages: 3"]);
    run.assert_only_bounded_failed("still more pages after 3 pages (the source's max_pages); giving up");
    assert_eq!(bounded_requests(&sim, 2), 3, "it stops at the cap");
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
}

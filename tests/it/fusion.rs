//! Query fusion and sources side by side: jobs that differ only in their aggregations share one
//! request per chunk and scope (the simulator's request log counts them), load tables equal to
//! the separate loads, and keep their failures apart; jobs of different sources run at once.

use std::path::Path;

use crate::util::*;

const TRIO: [&str; 3] = ["real_chats", "messages_in_real_chats", "sales_in_real_chats"];

/// The three shipped real-chat jobs (same filters and scopes, one aggregation each) from 2024-01-01.
fn trio() -> Vec<(&'static str, String)> {
    shipped_jobs(Some("2024-01-01"))
        .into_iter()
        .filter(|(f, _)| TRIO.iter().any(|t| *f == format!("{t}.yaml")))
        .collect()
}

fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    chatetl(&all)
}

const RANGE: [&str; 4] = ["--from", "2024-01-01", "--to", "2024-03-02"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fused_trio_sends_one_request_per_chunk_and_scope_and_loads_the_same_tables() {
    let d = dump(&["--seed", "21", "--start", "2024-01-01", "--days", "70", "--sessions-per-day", "30"]);
    let sim = serve(&d.path).await;
    let (fused_db, apart_db) = (TestDb::new().await, TestDb::new().await);
    let dir = tempfile::tempdir().unwrap();
    let fused = write_config(&dir.path().join("fused"), &sim, TOKEN, TestWarehouse::Postgres(&fused_db.url), &trio());
    let apart = write_config(&dir.path().join("apart"), &sim, TOKEN, TestWarehouse::Postgres(&apart_db.url), &trio());

    // plan says what run sends.
    let (code, out, err) = run_cli(&fused, &[&["plan"][..], &RANGE].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "jobs messages_in_real_chats, real_chats, sales_in_real_chats share one request per chunk (they differ \
             only in aggregations): 62 day windows in Europe/Helsinki (2 chunks), 6 requests for all 3 instead of 18, 0.0 s at 1000/s"
        ),
        "{out}"
    );
    let total = out.lines().find(|l| l.starts_with("total ")).unwrap_or_else(|| panic!("a total line: {out}"));
    assert_eq!(total.split_whitespace().take(3).collect::<Vec<_>>(), ["total", "3", "6"], "{out}");

    let (code, out, err) = run_cli(&fused, &[&["run"][..], &RANGE].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let requests = sim.handle.requests();
    // 62 days = 2 chunks of at most 31 days, x 3 scopes: one request each for all three jobs.
    assert_eq!(requests.len(), 6, "{requests:#?}");
    for r in &requests {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let aggregations = body["aggregations"].as_array().unwrap();
        assert_eq!(aggregations.len(), 3, "every job's aggregation in one request: {body}");
    }
    let (code, out, err) = run_cli(&apart, &[&["run", "--no-fusion"][..], &RANGE].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sim.handle.requests().len() - requests.len(), 18, "apart: 3 jobs x 2 chunks x 3 scopes");

    let (fused_pool, apart_pool) = (fused_db.pool().await, apart_db.pool().await);
    for job in TRIO {
        let (got, want) = (pg_rows_of(&fused_pool, job).await, pg_rows_of(&apart_pool, job).await);
        assert!(want.len() > 62, "{job}: org rows for every day plus team and user rows ({} rows)", want.len());
        assert_eq!(got, want, "{job}: the fused load equals the separate one");
        let state = "SELECT count(*) FROM chatetl.window_loads WHERE target = 'analytics' AND job = $1";
        for pool in [&fused_pool, &apart_pool] {
            let n: i64 = sqlx::query_scalar(state).bind(job).fetch_one(pool).await.unwrap();
            assert_eq!(n, 62, "{job}: its own 62 windows recorded");
        }
    }
    // Each job has its own run record; the requests are counted once, with the first job.
    let runs: Vec<(String, i32)> = sqlx::query_as(
        "SELECT job, requests FROM chatetl.runs WHERE target = 'analytics' AND status = 'succeeded' ORDER BY job",
    )
    .fetch_all(&fused_pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(runs.iter().map(|(_, r)| *r as usize).sum::<usize>(), 6, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fused_job_whose_commit_fails_leaves_the_others_loaded() {
    let d = dump(&["--seed", "22", "--start", "2024-01-01", "--days", "70", "--sessions-per-day", "20"]);
    let sim = serve(&d.path).await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&db.url), &trio());
    let (code, out, err) = run_cli(&config, &[&["run"][..], &RANGE].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let pool = db.pool().await;
    let before = pg_rows_of(&pool, "sales_in_real_chats").await;
    // sales_in_real_chats' table now refuses every new row: its commits fail, the others' do not.
    sqlx::query("ALTER TABLE analytics.sales_in_real_chats ADD CONSTRAINT refuse_rows CHECK (false) NOT VALID")
        .execute(&pool)
        .await
        .unwrap();
    let runs_before = sim.handle.requests().len();
    let (code, out, err) = run_cli(&config, &[&["run"][..], &RANGE].concat());
    assert_eq!(code, 1, "a failed commit is a warehouse failure: {out}\n{err}");
    assert_eq!(sim.handle.requests().len() - runs_before, 6, "still one request per chunk and scope");
    assert!(err.contains("job sales_in_real_chats, window 2024-01-01..2024-01-31"), "{err}");
    assert!(!err.contains("job real_chats,") && !err.contains("job messages_in_real_chats,"), "{err}");
    let status = |job: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32, i32)>(
                "SELECT status, windows_loaded, windows_failed FROM chatetl.runs WHERE target = 'analytics' \
                 AND job = $1 ORDER BY started_at DESC LIMIT 1",
            )
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(status("real_chats").await, ("succeeded".to_string(), 62, 0));
    assert_eq!(status("messages_in_real_chats").await, ("succeeded".to_string(), 62, 0));
    assert_eq!(status("sales_in_real_chats").await, ("failed".to_string(), 0, 62));
    let failed = "SELECT count(*) FROM chatetl.window_failures WHERE target = 'analytics' AND job = $1";
    for (job, n) in [("real_chats", 0), ("messages_in_real_chats", 0), ("sales_in_real_chats", 62)] {
        let got: i64 = sqlx::query_scalar(failed).bind(job).fetch_one(&pool).await.unwrap();
        assert_eq!(got, n, "{job}: failed windows recorded");
    }
    assert_eq!(pg_rows_of(&pool, "sales_in_real_chats").await, before, "the failed job keeps its old rows");
}

/// A TCP proxy in front of `upstream` that holds each connection until `release` returns true
/// (checked every 20 ms, at most `limit`), then pipes it through.
async fn holding_proxy(
    upstream: std::net::SocketAddr,
    release: impl Fn() -> bool + Send + Sync + 'static,
    limit: std::time::Duration,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = std::sync::Arc::new(release);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + limit;
                while !release() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_different_sources_run_side_by_side() {
    let d = dump(&["--seed", "23", "--start", "2024-01-01", "--days", "10", "--sessions-per-day", "10"]);
    let sim = serve(&d.path).await;
    // giosg answers only once the simulator has seen a Thulium request: run one source after the
    // other and giosg's requests wait out the proxy's limit first, so Thulium's come after them.
    let seen = sim.handle.clone();
    let thulium_seen = move || seen.requests().iter().any(|r| r.path.contains("/api/chats/reports/summary"));
    let upstream: std::net::SocketAddr = sim.base_url().trim_start_matches("http://").parse().unwrap();
    let proxy = holding_proxy(upstream, thulium_seen, std::time::Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let org = sim.handle.dataset().organizations[0].id.clone();
    let config = format!(
        "time_zone: Europe/Helsinki\njobs_dir: jobs\nsources:\n  giosg:\n    kind: giosg\n    base_url: http://{proxy}\n    \
         token: {TOKEN}\n    organization_id: {org}\n    timeout_secs: 120\n  thulium:\n    kind: thulium\n    \
         base_url: {}\n    username: api_user\n    password: {TOKEN}\n    time_zone: Europe/Helsinki\n\
         warehouse:\n  kind: parquet\n  path: {}\n",
        sim.base_url(),
        wh.display()
    );
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    let path = dir.path().join("chatetl.yaml");
    std::fs::write(&path, config).unwrap();
    // giosg's job comes first in name order, so a serial run would send it first.
    for (name, text) in chatetl::demo::shipped::JOBS {
        if ["real_chats.yaml", "thulium_chat_summary_daily.yaml"].contains(name) {
            let text = text.lines().map(|l| if l.starts_with("start:") { "start: 2024-01-01" } else { l });
            std::fs::write(dir.path().join("jobs").join(name), text.collect::<Vec<_>>().join("\n") + "\n").unwrap();
        }
    }
    let (code, out, err) = run_cli(&path, &["run", "--from", "2024-01-02", "--to", "2024-01-08"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let log = sim.handle.requests();
    let first_thulium = log.iter().position(|r| r.path.contains("/api/chats/reports/summary")).unwrap();
    let last_giosg = log.iter().rposition(|r| r.path.contains("/chat_sessions")).unwrap();
    assert!(
        first_thulium < last_giosg,
        "Thulium's first request came while giosg's were held, not after them: {:?}",
        log.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(out.contains("real_chats") && out.contains("thulium_chat_summary_daily"), "{out}");
}

/// The shipped job `name` with its `start` replaced.
fn shipped_from(name: &'static str, start: &str) -> (&'static str, String) {
    let text = chatetl::demo::shipped::JOBS.iter().find(|(f, _)| f.trim_end_matches(".yaml") == name).unwrap().1;
    let text: Vec<String> =
        text.lines().map(|l| if l.starts_with("start:") { format!("start: {start}") } else { l.to_string() }).collect();
    (
        chatetl::demo::shipped::JOBS.iter().find(|(f, _)| f.trim_end_matches(".yaml") == name).unwrap().0,
        text.join("\n") + "\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fused_job_whose_chunks_never_started_after_refused_credentials_failed_for_that_reason() {
    let d = dump(&["--seed", "24", "--start", "2024-01-01", "--days", "10", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Fused, but messages_in_real_chats' windows are all in chunks after real_chats' first one,
    // whose request is refused: the run stops before they start.
    let jobs = [shipped_from("real_chats", "2026-09-01"), shipped_from("messages_in_real_chats", "2026-11-15")];
    let config = write_config(dir.path(), &sim, "not-the-token", TestWarehouse::Postgres(&db.url), &jobs);
    let (code, out, err) = run_cli(&config, &["run", "--concurrency", "1", "--json"]);
    assert_eq!(code, 3, "{out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    for job in summary["jobs"].as_array().unwrap() {
        assert_eq!(job["error_kind"], "credentials", "{job}");
        assert_eq!(job["status"], "failed", "{job}");
    }
    assert_eq!(summary["retryable"], false, "{summary}");
    assert!(
        err.contains("job messages_in_real_chats, window 2026-11-15..") && err.contains("refused the credentials"),
        "{err}"
    );
    let runs: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT job, status, error_kind FROM chatetl.runs WHERE target = 'analytics' ORDER BY job")
            .fetch_all(&db.pool().await)
            .await
            .unwrap();
    let credentials = Some("credentials".to_string());
    assert_eq!(
        runs,
        vec![
            ("messages_in_real_chats".to_string(), "failed".to_string(), credentials.clone()),
            ("real_chats".to_string(), "failed".to_string(), credentials),
        ]
    );
    assert_eq!(sim.handle.requests().len(), 1, "nothing is sent after the refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_run_after_another_job_of_its_source_is_captured_when_its_turn_comes() {
    let d = dump(&["--seed", "25", "--start", "2024-01-01", "--days", "10", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // a_chats (real_chats renamed) comes first in name order on the same source, and takes a
    // while (a year of windows).
    let (_, chats) = shipped_from("real_chats", "2025-11-01");
    let jobs = [
        ("a_chats.yaml", chats.replace("name: real_chats", "name: a_chats")),
        shipped_from("giosg_realtime_rooms", "2024-01-01"),
    ];
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&db.url), &jobs);
    // Slow answers make a_chats' run last seconds: a capture planned at the start of the command
    // would be stamped seconds before a_chats finished.
    sim.handle.add_rule(chatetl::simulator::FaultRule {
        path_contains: Some("chat_sessions".into()),
        faults: chatetl::simulator::FaultConfig { latency_ms: 1100, ..Default::default() },
        ..Default::default()
    });
    let (code, out, err) = run_cli(&config, &["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let pool = db.pool().await;
    let finished: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT date_trunc('second', finished_at) FROM chatetl.runs WHERE target = 'analytics' AND job = 'a_chats'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let captured: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT min(captured_at) FROM analytics.giosg_realtime_rooms")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(captured >= finished, "captured at {captured}, planned before a_chats finished at {finished}");
}

//! Operating with PostgreSQL away: the daemon listens before its warehouse answers and starts
//! once it does; `/healthz` answers at once (under a second) whatever the warehouse does, saying
//! since when and why it does not answer; a command facing an unreachable server fails within
//! seconds naming host, port, database and user, never the password; a malformed url exits 2.
//!
//! PostgreSQL "goes away" through [`Proxy`], a TCP proxy in front of the test server that can be
//! cut: while cut it accepts connections and forwards nothing, so connections hang as they do
//! across a partitioned network (a stopped server would refuse at once, the easier case).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::util::{TOKEN, TestDb, TestWarehouse, chatetl, dump, serve, start_daemon, stop_daemon, write_config};

/// How long a wait may take before the test fails (a guard against hangs, not a delay).
const PATIENCE: Duration = Duration::from_secs(60);

/// A cuttable TCP proxy to the PostgreSQL of `DATABASE_URL`.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String, cut: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(cut);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rx, upstream) = (rx.clone(), upstream.clone());
                tokio::spawn(async move {
                    let mut rx2 = rx.clone();
                    let _ = rx2.wait_for(|cut| !cut).await;
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, rx.clone()), pipe(sr, cw, rx));
                });
            }
        });
        Proxy { addr, cut: tx }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        let user = authority.rsplit_once('@').map_or(String::new(), |(u, _)| format!("{u}@"));
        format!("{scheme}://{user}{}/{path}", self.addr)
    }
}

/// Copies `from` to `to`, holding every byte while the proxy is cut.
async fn pipe(mut from: impl AsyncReadExt + Unpin, mut to: impl AsyncWriteExt + Unpin, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|cut| !cut).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// GET /healthz: (status, body, how long the answer took).
async fn healthz(base: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let resp = reqwest::get(format!("{base}/healthz")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap(), started.elapsed())
}

/// Polls /healthz until `want` holds, asserting that every answer came within a second.
async fn healthz_until(base: &str, what: &str, want: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body, took) = healthz(base).await;
        assert!(took < Duration::from_secs(1), "/healthz took {took:?} ({status} {body})");
        if want(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what} (last: {status} {body})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// host:port of `DATABASE_URL`.
fn upstream(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split_once('/').unwrap().0;
    authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_listens_before_postgres_answers_and_healthz_never_waits_on_it() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(upstream(&db.url), true).await;
    let d = dump(&["--seed", "2", "--start", "2024-05-01", "--days", "3", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let job = "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
               aggregations:\n  - { type: count, column: chats }\nstart: 2024-05-01\nschedule: \"0 0 6 1 1 *\"\n";
    let url = proxy.url(&db.url);
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&url), &[("daily.yaml", job.into())]);
    // It listens although the warehouse does not answer.
    let (mut daemon, base) = start_daemon(&config, &[]);

    // Not ready while the warehouse does not answer: 503 at once, with the reason.
    let (status, body, took) = healthz(&base).await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(body.contains("opening the warehouse") || body.contains("waiting for the warehouse"), "{body}");
    // The first attempt gives up after its timeout and says where it tried.
    let body =
        healthz_until(&base, "a failed attempt is reported", |_, b| b.contains("waiting for the warehouse")).await;
    assert!(body.contains(&format!("at {}", proxy.addr)) && body.contains("no answer within 10 s"), "{body}");
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon keeps running");

    // The warehouse comes up: the daemon starts.
    proxy.set_cut(false);
    healthz_until(&base, "the daemon starts once the warehouse answers", |s, _| s == 200).await;

    // The warehouse goes away again: /healthz still answers at once, saying so.
    proxy.set_cut(true);
    let body = healthz_until(&base, "the outage is reported", |s, _| s == 503).await;
    assert!(body.contains("the warehouse does not answer, for"), "{body}");
    proxy.set_cut(false);
    healthz_until(&base, "the warehouse answers again", |s, _| s == 200).await;

    stop_daemon(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_fails_in_seconds_naming_where_and_never_the_password() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(upstream(&db.url), true).await;
    let d = dump(&["--seed", "2", "--start", "2024-05-01", "--days", "1", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let with_password = proxy.url(&db.url).replacen("://postgres@", "://postgres:hunter2@", 1);
    assert!(with_password.contains("hunter2"), "{with_password}");
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&with_password), &[]);
    let config = config.to_str().unwrap();
    let started = Instant::now();
    let (code, out, err) = chatetl(&["--config", config, "status"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let database = db.url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let want = format!("at {}, database {database}, user postgres: no answer within 10 s", proxy.addr);
    assert!(err.contains(&want) && err.contains("check that the server is running"), "{err}");
    assert!(!format!("{out}{err}").contains("hunter2"), "{out}{err}");

    // A url that cannot be parsed is a configuration error, named without its password.
    let text = std::fs::read_to_string(config).unwrap().replace(&proxy.addr.to_string(), "127.0.0.1:99999");
    std::fs::write(config, text).unwrap();
    let (code, out, err) = chatetl(&["--config", config, "status"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("the postgres warehouse url is not valid") && !err.contains("hunter2"), "{err}");
    // An unencoded `/` in the password moves its end into the database name: refused, unechoed.
    let text =
        std::fs::read_to_string(config).unwrap().replace(":hunter2@127.0.0.1:99999", ":20/hunter2@127.0.0.1:5432");
    std::fs::write(config, text).unwrap();
    let (code, out, err) = chatetl(&["--config", config, "status"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("percent-encode them in the password") && !err.contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_catch_up_the_daemon_is_alive_at_once_and_ready_once_every_job_caught_up() {
    let db = TestDb::new().await;
    let d = dump(&["--seed", "2", "--start", "2024-05-01", "--days", "3", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    // Slow answers: the catch-up (every day from 1 May 2024 to yesterday, in 31-day requests four
    // at a time) takes at least eight rounds of 500 ms, far longer than the two probes below.
    sim.handle.set_faults(chatetl::simulator::FaultConfig { latency_ms: 500, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    // A schedule that fires once a year: only the catch-up runs the job during the test.
    let job = "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
               aggregations:\n  - { type: count, column: chats }\nstart: 2024-05-01\nschedule: \"0 0 6 1 1 *\"\n";
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&db.url), &[("daily.yaml", job.into())]);
    let (daemon, base) = start_daemon(&config, &["--catch-up"]);
    healthz_until(&base, "the daemon is alive", |s, _| s == 200).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "alive, not ready: the catch-up is still running");
    assert!(ready.text().await.unwrap().contains("catching up: 1 job(s) without a complete run yet: daily"));
    let deadline = Instant::now() + PATIENCE;
    while reqwest::get(format!("{base}/readyz")).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "not ready within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ready means caught up: the watermark is at the end of yesterday.
    let pool = db.pool().await;
    let watermark: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = 'analytics' AND job = 'daily'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Helsinki).date_naive();
    let yesterday_end = chatetl::time::local_day_start(chrono_tz::Europe::Helsinki, today);
    assert!(watermark.is_some_and(|w| w >= yesterday_end - chrono::Duration::days(1)), "{watermark:?}");
    stop_daemon(daemon);
}

/// The value of `name`'s sample for job `daily` in a /metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{chatetl_job=\"daily\",");
    text.lines().find(|l| l.starts_with(&prefix)).map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_there_from_start_up_and_move_while_a_run_is_still_going() {
    let db = TestDb::new().await;
    let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Helsinki).date_naive();
    let start = today - chrono::Duration::days(20);
    let first = (start - chrono::Duration::days(1)).to_string();
    let d = dump(&["--seed", "2", "--start", &first, "--days", "22", "--sessions-per-day", "5"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    // One window per request and a yearly schedule: only a catch-up runs it, chunk by chunk.
    let job = format!(
        "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nscopes: [org]\n\
         aggregations:\n  - {{ type: count, column: chats }}\nstart: {start}\nlookback_windows: 0\n\
         max_windows_per_request: 1\nschedule: \"0 0 6 1 1 *\"\n"
    );
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Postgres(&db.url), &[("daily.yaml", job)]);
    let c = config.to_str().unwrap();
    let half = (start + chrono::Duration::days(9)).to_string();
    let (code, out, err) =
        chatetl(&["--config", c, "backfill", "--job", "daily", "--from", &start.to_string(), "--to", &half]);
    assert_eq!(code, 0, "{out}\n{err}");

    // A restart: once the daemon is up (healthy), before any tick, the freshness gauges come
    // from the warehouse.
    let (daemon, base) = start_daemon(&config, &[]);
    healthz_until(&base, "the daemon is up", |s, _| s == 200).await;
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let watermark = chatetl::time::local_day_start(chrono_tz::Europe::Helsinki, start + chrono::Duration::days(10));
    assert_eq!(sample(&text, "chatetl_job_watermark_timestamp_seconds"), Some(watermark.timestamp() as f64), "{text}");
    assert!(sample(&text, "chatetl_job_last_success_timestamp_seconds").is_some(), "{text}");
    assert!(sample(&text, "chatetl_job_watermark_lag_seconds").is_some_and(|lag| lag > 9.0 * 86400.0), "{text}");
    assert!(sample(&text, "chatetl_job_next_run_timestamp_seconds").is_some(), "{text}");
    assert!(sample(&text, "chatetl_job_last_run_duration_seconds").is_some(), "{text}");
    assert_eq!(sample(&text, "chatetl_job_runs_total"), Some(0.0), "no run yet: {text}");
    stop_daemon(daemon);

    // A catch-up of ten windows, one request each, one at a time, each answered slowly: the
    // counters move as each window commits, before the run ends.
    sim.handle.set_faults(chatetl::simulator::FaultConfig { latency_ms: 400, ..Default::default() });
    let (daemon, base) = start_daemon(&config, &["--catch-up", "--concurrency", "1"]);
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        let loaded = sample(&text, "chatetl_job_windows_loaded_total").unwrap_or(0.0);
        if loaded >= 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no window counted within {PATIENCE:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let loaded = sample(&text, "chatetl_job_windows_loaded_total").unwrap();
    assert!(loaded < 10.0, "counted while the run goes on: {loaded} of 10 windows");
    assert_eq!(sample(&text, "chatetl_job_runs_total"), Some(0.0), "the run has not ended: {text}");
    assert!(sample(&text, "chatetl_job_requests_total").is_some_and(|n| n >= loaded), "{text}");
    assert!(text.contains("chatetl_source_requests_total{source=\"giosg\",class=\"2xx\"}"), "{text}");
    assert!(text.contains("chatetl_source_request_duration_seconds_bucket{le=\"0.5\",source=\"giosg\"}"), "{text}");
    stop_daemon(daemon);
}

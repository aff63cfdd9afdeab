//! Fault injection (per request by header, server-wide, and by targeted rule) and the request
//! log (in-process handle and admin endpoint).

use std::time::{Duration, Instant};

use chatetl::simulator::{FaultConfig, FaultRule, chat_sessions_path};
use serde_json::{Value, json};

use crate::util::{TOKEN, dump, read_dump, serve};

struct Fixture {
    _dump: crate::util::Dump,
    sim: chatetl::simulator::RunningSimulator,
    url: String,
    body: String,
}

async fn fixture() -> Fixture {
    let d = dump(&["--seed", "3", "--start", "2024-01-01", "--days", "1", "--sessions-per-day", "30"]);
    let (orgs, _) = read_dump(&d.path);
    let sim = serve(&d.path).await;
    let url = format!("{}{}", sim.base_url(), chat_sessions_path(orgs[0]["id"].as_str().unwrap()));
    let body = json!({"interval": {"start": "2024-01-01T00:00:00.000+02:00", "end": "2024-01-01T23:59:59.999+02:00",
        "time_zone": "Europe/Helsinki"}, "granularity": "hour", "group_by": [], "aggregations": [{"type": "count"}]})
    .to_string();
    Fixture { _dump: d, sim, url, body }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn send(f: &Fixture, fault: Option<&str>) -> Result<(u16, reqwest::header::HeaderMap, String), reqwest::Error> {
    let mut req = client().post(&f.url).header("authorization", format!("Token {TOKEN}")).body(f.body.clone());
    if let Some(spec) = fault {
        req = req.header("x-sim-fault", spec);
    }
    let resp = req.send().await?;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Ok((status, headers, resp.text().await?))
}

#[tokio::test]
async fn server_errors_from_the_header() {
    let f = fixture().await;
    for _ in 0..5 {
        let (status, _, body) = send(&f, Some("error_rate=1,error_statuses=502|503")).await.unwrap();
        assert!(status == 502 || status == 503, "{status}");
        assert!(body.contains("detail"));
    }
    let (status, _, _) = send(&f, None).await.unwrap();
    assert_eq!(status, 200, "without the header the request is served");
}

#[tokio::test]
async fn throttling_sends_retry_after() {
    let f = fixture().await;
    let (status, headers, _) = send(&f, Some("throttle_rate=1,retry_after_secs=7")).await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "7");
}

#[tokio::test]
async fn connection_reset_fails_the_request() {
    let f = fixture().await;
    let err = send(&f, Some("reset_rate=1")).await.unwrap_err();
    assert!(err.is_request() || err.is_body() || err.is_decode() || err.is_connect(), "{err:?}");
    assert_eq!(f.sim.handle.requests().last().unwrap().fault.as_deref(), Some("reset"));
}

#[tokio::test]
async fn truncated_body_fails_while_reading() {
    let f = fixture().await;
    let resp = client()
        .post(&f.url)
        .header("authorization", format!("Token {TOKEN}"))
        .header("x-sim-fault", "truncate_rate=1")
        .body(f.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the head arrives whole");
    let declared: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(declared > 100);
    assert!(resp.bytes().await.is_err(), "the body stops short of its declared length");
}

#[tokio::test]
async fn latency_and_jitter_delay_the_answer() {
    let f = fixture().await;
    let t = Instant::now();
    let (status, _, _) = send(&f, Some("latency_ms=300,jitter_ms=50")).await.unwrap();
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
}

#[tokio::test]
async fn requests_per_second_limit_per_key() {
    let f = fixture().await;
    let mut statuses = Vec::new();
    // 0.5 per second: a burst of one, the next token two seconds later (a wide margin for the
    // six quick requests below).
    for _ in 0..6 {
        statuses.push(send(&f, Some("rps_limit=0.5,retry_after_secs=1")).await.unwrap().0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    let log = f.sim.handle.requests();
    assert_eq!(log.iter().filter(|r| r.fault.as_deref() == Some("rate_limit")).count(), 5);
}

#[tokio::test]
async fn server_wide_faults_and_rates() {
    let f = fixture().await;
    f.sim.handle.set_faults(FaultConfig { error_rate: 0.5, error_statuses: vec![500], ..FaultConfig::default() });
    let mut errors = 0;
    for _ in 0..40 {
        if send(&f, None).await.unwrap().0 == 500 {
            errors += 1;
        }
    }
    assert!((8..=32).contains(&errors), "about half of 40 fail: {errors}");
    f.sim.handle.set_faults(FaultConfig::default());
    assert_eq!(send(&f, None).await.unwrap().0, 200);
}

#[tokio::test]
async fn targeted_rules_fail_the_first_n_matching_requests() {
    let f = fixture().await;
    // Through the admin endpoint, as a test in another process would.
    let rule = FaultRule {
        body_contains: Some("2024-01-01T00:00:00.000+02:00".into()),
        times: Some(2),
        faults: FaultConfig { error_rate: 1.0, error_statuses: vec![503], ..FaultConfig::default() },
        ..FaultRule::default()
    };
    let resp = client().post(format!("{}/_sim/fault-rules", f.sim.base_url())).json(&rule).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(send(&f, None).await.unwrap().0, 503);
    assert_eq!(send(&f, None).await.unwrap().0, 503);
    assert_eq!(send(&f, None).await.unwrap().0, 200, "the rule is used up");
}

#[tokio::test]
async fn the_request_log_records_bodies_and_never_the_token() {
    let f = fixture().await;
    send(&f, None).await.unwrap();
    send(&f, Some("error_rate=1,error_statuses=500")).await.unwrap();
    let log = f.sim.handle.requests();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].seq, log[0].status, log[0].method.as_str()), (1, 200, "POST"));
    assert_eq!((log[1].seq, log[1].status, log[1].fault.as_deref()), (2, 500, Some("error")));
    assert_eq!(serde_json::from_str::<Value>(&log[0].body).unwrap(), serde_json::from_str::<Value>(&f.body).unwrap());

    let admin = format!("{}/_sim/requests", f.sim.base_url());
    let text = client().get(&admin).send().await.unwrap().text().await.unwrap();
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.len(), 2, "admin routes are not recorded themselves");
    assert!(listed[0]["path"].as_str().unwrap().ends_with("/chat_sessions"));
    assert!(!text.contains(TOKEN), "the API key is never recorded");

    assert_eq!(client().delete(&admin).send().await.unwrap().status(), 204);
    assert!(f.sim.handle.requests().is_empty());
}

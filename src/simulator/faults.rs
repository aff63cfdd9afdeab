//! Fault injection and the request log, applied around every simulated API route.
//!
//! Owns: [`FaultConfig`] (latency, jitter, error and throttle rates, connection resets, truncated,
//! padded and dripping bodies, an ignored `offset`, a requests-per-second limit per API key), where a request's faults come from (a
//! matching [`FaultRule`] set by a test, else the `x-sim-fault` header, else the server-wide
//! flags), the per-key state of `rps_limit` (kept by governor's keyed rate limiters), and
//! recording every request served ([`RecordedRequest`]). Authorization headers are never recorded.
//!
//! The header takes `key=value` pairs separated by commas, with the keys of [`FaultConfig`]:
//! `x-sim-fault: error_rate=1,error_statuses=503` or `throttle_rate=1,retry_after_secs=2`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::SimState;
use super::chat_sessions::ApiError;

/// How the simulator misbehaves. Rates are probabilities per request (0 = never, 1 = always).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fixed delay before answering, in milliseconds.
    pub latency_ms: u64,
    /// Extra random delay, uniform in `0..=jitter_ms` milliseconds.
    pub jitter_ms: u64,
    /// Fraction of requests answered with a server error from `error_statuses`.
    pub error_rate: f64,
    /// Statuses used for server errors (default 500, 502 and 503).
    pub error_statuses: Vec<u16>,
    /// Fraction of requests answered `429 Too Many Requests` with `Retry-After`.
    pub throttle_rate: f64,
    /// The `Retry-After` seconds sent with every 429 (default 1).
    pub retry_after_secs: Option<u64>,
    /// Fraction of requests whose connection is dropped before a complete response.
    pub reset_rate: f64,
    /// Fraction of requests whose body is cut in half (the declared length is kept, then the
    /// connection closes).
    pub truncate_rate: f64,
    /// Requests per second allowed per API key; more are answered 429 with `Retry-After`.
    pub rps_limit: Option<f64>,
    /// Fraction of requests answered `200` with an HTML page instead of JSON (a proxy's or login
    /// page, as misconfigured gateways send).
    pub html_rate: f64,
    /// Removes this key from every JSON object of the response (a missing field).
    pub drop_field: Option<String>,
    /// Adds this key (value `"unexpected"`) to every JSON object of the response (an extra
    /// field, which clients must tolerate).
    pub extra_field: Option<String>,
    /// Appends this many spaces to a JSON answer (still valid JSON, this many bytes longer).
    pub pad_bytes: u64,
    /// Sends the body in pieces of [`DRIP_PIECE`] bytes with this pause (milliseconds) before
    /// each, without a `Content-Length`: never faster than one pause, slower the longer it is.
    pub drip_ms: u64,
    /// Drops the request's `offset` query parameter before the API sees it, so a paged answer
    /// (the Thulium chat summary) is the first page whatever offset was asked.
    pub ignore_offset: bool,
}

/// The size of one piece of a `drip_ms` body.
pub const DRIP_PIECE: usize = 256;

/// A fault aimed at particular requests, for tests: the first `times` requests (all, if unset)
/// whose path, query string (as sent, not decoded) and body contain the given strings get
/// `faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRule {
    pub path_contains: Option<String>,
    pub query_contains: Option<String>,
    pub body_contains: Option<String>,
    pub times: Option<u32>,
    pub faults: FaultConfig,
}

/// One request the simulator served (admin routes excluded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// 1 for the first request served.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: String,
    /// The status answered; 0 when the connection was reset before a response.
    pub status: u16,
    /// The fault applied, if any: `error`, `throttle`, `rate_limit`, `reset`, `truncate`,
    /// `html`, `drop_field`, `extra_field`, `ignore_offset`, `pad`, `drip` (the last applied).
    pub fault: Option<String>,
    /// When the request arrived (microseconds since the Unix epoch, the simulator's clock).
    #[serde(default)]
    pub received_at_us: i64,
    /// When its answer was ready to send, after any latency (same clock); the body may still
    /// stream after.
    #[serde(default)]
    pub answered_at_us: i64,
}

/// Microseconds since the Unix epoch.
fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

impl FaultConfig {
    /// Parses the `x-sim-fault` header: `key=value` pairs separated by commas; lists (statuses)
    /// separated by `|`.
    pub fn parse_header(spec: &str) -> Result<FaultConfig, String> {
        let mut map = serde_json::Map::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("x-sim-fault: `{pair}` is not key=value"))?;
            let value = if matches!(k.trim(), "drop_field" | "extra_field") {
                serde_json::json!(v.trim())
            } else if k.trim() == "error_statuses" {
                let codes: Result<Vec<u16>, _> = v.split('|').map(|s| s.trim().parse::<u16>()).collect();
                serde_json::json!(codes.map_err(|_| format!("x-sim-fault: bad status list `{v}`"))?)
            } else {
                serde_json::from_str(v.trim()).map_err(|_| format!("x-sim-fault: `{k}` needs a number, got `{v}`"))?
            };
            map.insert(k.trim().to_string(), value);
        }
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| format!("x-sim-fault: {e}"))
    }

    fn retry_after(&self) -> u64 {
        self.retry_after_secs.unwrap_or(1)
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Serve,
    Error(u16),
    Throttle,
    Reset,
    Truncate,
    Html,
}

/// `rps_limit` per API key: one governor keyed limiter (GCRA, a token bucket's equivalent) per
/// distinct limit, since the limit comes with each request's faults. Each key starts with a burst
/// of `max(1, rps)` requests (whole ones), then gets one more every `1 / rps` seconds.
#[derive(Default)]
pub(crate) struct RateLimiter {
    by_rps: HashMap<u64, DefaultKeyedRateLimiter<String>>,
}

impl RateLimiter {
    /// The longest wait for the next request; governor counts in u64 nanoseconds, so an `rps`
    /// of 0 (or less) gets this instead of never.
    const MAX_PERIOD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// Takes a request for `key` under `rps`; false when the key is over its limit.
    fn admit(&mut self, key: &str, rps: f64) -> bool {
        self.by_rps
            .entry(rps.to_bits())
            .or_insert_with(|| DefaultKeyedRateLimiter::keyed(Self::quota(rps)))
            .check_key(&key.to_string())
            .is_ok()
    }

    fn quota(rps: f64) -> Quota {
        let period = Duration::try_from_secs_f64(1.0 / rps)
            .unwrap_or(Self::MAX_PERIOD)
            .clamp(Duration::from_nanos(1), Self::MAX_PERIOD);
        // `max` turns NaN into 1; `as` saturates a huge rps at u32::MAX.
        let burst = NonZeroU32::new(rps.max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period).expect("a period of at least 1 ns").allow_burst(burst)
    }
}

/// The middleware: records the request, picks and applies its faults, records the outcome.
pub async fn layer(State(state): State<SimState>, req: Request, next: Next) -> Response {
    let received_at_us = now_us();
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return ApiError(StatusCode::BAD_REQUEST, format!("cannot read request body: {e}")).into_response(),
    };
    let path = parts.uri.path().to_string();
    let body_text = String::from_utf8_lossy(&bytes).into_owned();
    let header_spec = parts.headers.get("x-sim-fault").map(|v| v.to_str().unwrap_or("").to_string());
    let api_key = parts.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    let mut record = RecordedRequest {
        seq: 0,
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        body: body_text.clone(),
        status: 0,
        fault: None,
        received_at_us,
        answered_at_us: 0,
    };

    let query = parts.uri.query().unwrap_or("").to_string();
    let config = match state.faults_for(&path, &query, &body_text, header_spec.as_deref()) {
        Ok(c) => c,
        Err(msg) => {
            record.status = 400;
            record.answered_at_us = now_us();
            state.record(record);
            return ApiError(StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let (outcome, delay) = state.roll(&config);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let rate_limited = config.rps_limit.is_some_and(|rps| !state.admit(&String::from_utf8_lossy(&api_key), rps));

    let throttled = |label: &str, record: &mut RecordedRequest| {
        record.status = 429;
        record.fault = Some(label.to_string());
        let mut resp = ApiError(StatusCode::TOO_MANY_REQUESTS, "Request was throttled.".into()).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(config.retry_after()));
        resp
    };
    let response = match outcome {
        Outcome::Reset => {
            record.fault = Some("reset".into());
            let failing = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated reset",
                ))
            });
            Response::new(Body::from_stream(failing))
        }
        Outcome::Throttle => throttled("throttle", &mut record),
        Outcome::Error(status) => {
            record.status = status;
            record.fault = Some("error".into());
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError(code, format!("Simulated server error {status}.")).into_response()
        }
        _ if rate_limited => throttled("rate_limit", &mut record),
        Outcome::Html => {
            record.status = 200;
            record.fault = Some("html".into());
            let page = "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n<body><h1>Service Unavailable</h1><p>The gateway could not reach the application.</p></body></html>\n";
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
        }
        Outcome::Serve | Outcome::Truncate => {
            if config.ignore_offset {
                record.fault = Some("ignore_offset".into());
                parts.uri = without_offset(&parts.uri);
            }
            let req = Request::from_parts(parts, Body::from(bytes));
            let mut resp = next.run(req).await;
            record.status = resp.status().as_u16();
            if config.drop_field.is_some() || config.extra_field.is_some() {
                let label = if config.drop_field.is_some() { "drop_field" } else { "extra_field" };
                record.fault = Some(label.into());
                resp = rewrite_json(resp, config.drop_field.as_deref(), config.extra_field.as_deref()).await;
            }
            if config.pad_bytes > 0 {
                record.fault = Some("pad".into());
                resp = pad(resp, config.pad_bytes).await;
            }
            if outcome == Outcome::Truncate {
                record.fault = Some("truncate".into());
                resp = truncate(resp).await;
            } else if config.drip_ms > 0 {
                record.fault = Some("drip".into());
                resp = drip(resp, Duration::from_millis(config.drip_ms)).await;
            }
            resp
        }
    };
    record.answered_at_us = now_us();
    state.record(record);
    response
}

/// Removes key `drop` from, and adds key `add` to, every JSON object of `resp`'s body.
async fn rewrite_json(resp: Response, drop: Option<&str>, add: Option<&str>) -> Response {
    fn walk(v: &mut serde_json::Value, drop: Option<&str>, add: Option<&str>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(k) = drop {
                    map.remove(k);
                }
                for x in map.values_mut() {
                    walk(x, drop, add);
                }
                if let Some(k) = add {
                    map.insert(k.to_string(), serde_json::json!("unexpected"));
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|x| walk(x, drop, add)),
            _ => {}
        }
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    walk(&mut value, drop, add);
    let out = value.to_string();
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Response::from_parts(parts, Body::from(out))
}

/// `uri` without its `offset` query parameter.
fn without_offset(uri: &axum::http::Uri) -> axum::http::Uri {
    let query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("offset"))
        .collect();
    let text = if query.is_empty() { uri.path().to_string() } else { format!("{}?{}", uri.path(), query.join("&")) };
    text.parse().unwrap_or_else(|_| uri.clone())
}

/// `resp` with `n` spaces after its body when it is JSON.
async fn pad(resp: Response, n: u64) -> Response {
    let json =
        resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.contains("json"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let mut bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default().to_vec();
    bytes.resize(bytes.len() + n as usize, b' ');
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, Body::from(bytes))
}

/// `resp` with its body sent in pieces of [`DRIP_PIECE`] bytes, `pause` before each, chunked.
async fn drip(resp: Response, pause: Duration) -> Response {
    let (mut parts, body) = resp.into_parts();
    let full = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    let pieces = futures::stream::unfold((full, true), move |(rest, first)| async move {
        if rest.is_empty() && !first {
            return None;
        }
        tokio::time::sleep(pause).await;
        let mut rest = rest;
        let piece = rest.split_to(rest.len().min(DRIP_PIECE));
        Some((Ok::<Bytes, std::io::Error>(piece), (rest, false)))
    });
    Response::from_parts(parts, Body::from_stream(pieces))
}

/// Sends the first half of `resp`'s body under the full `Content-Length`, then fails the stream
/// so the connection closes mid-body.
async fn truncate(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let full = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let half = full.slice(0..full.len() / 2);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
    // Yield the half, then pause so hyper flushes the head and the half, then fail the stream.
    let chunks = futures::stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok(half), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "simulated truncated body")), 2))
                }
                _ => None,
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(chunks))
}

impl SimState {
    /// The faults for one request: the first matching rule (using one of its `times`), else the
    /// header, else the server-wide configuration.
    fn faults_for(
        &self,
        path: &str,
        query: &str,
        body: &str,
        header_spec: Option<&str>,
    ) -> Result<FaultConfig, String> {
        {
            let mut rules = self.inner.rules.lock().expect("rules lock");
            let hit = rules.iter_mut().position(|r| {
                r.path_contains.as_deref().is_none_or(|p| path.contains(p))
                    && r.query_contains.as_deref().is_none_or(|q| query.contains(q))
                    && r.body_contains.as_deref().is_none_or(|b| body.contains(b))
                    && r.times != Some(0)
            });
            if let Some(i) = hit {
                let rule = &mut rules[i];
                if let Some(t) = rule.times.as_mut() {
                    *t -= 1;
                }
                return Ok(rule.faults.clone());
            }
        }
        if let Some(spec) = header_spec {
            return FaultConfig::parse_header(spec);
        }
        Ok(self.inner.faults.lock().expect("faults lock").clone())
    }

    /// Draws the outcome and delay for one request from the seeded generator.
    fn roll(&self, c: &FaultConfig) -> (Outcome, Duration) {
        let mut rng = self.inner.rng.lock().expect("rng lock");
        let jitter = if c.jitter_ms > 0 { rng.random_range(0..=c.jitter_ms) } else { 0 };
        let delay = Duration::from_millis(c.latency_ms + jitter);
        let mut hit = |rate: f64| rate > 0.0 && rng.random_bool(rate.clamp(0.0, 1.0));
        let outcome = if hit(c.reset_rate) {
            Outcome::Reset
        } else if hit(c.throttle_rate) {
            Outcome::Throttle
        } else if hit(c.error_rate) {
            let statuses = if c.error_statuses.is_empty() { vec![500, 502, 503] } else { c.error_statuses.clone() };
            Outcome::Error(statuses[rng.random_range(0..statuses.len())])
        } else if hit(c.truncate_rate) {
            Outcome::Truncate
        } else if hit(c.html_rate) {
            Outcome::Html
        } else {
            Outcome::Serve
        };
        (outcome, delay)
    }

    fn admit(&self, key: &str, rps: f64) -> bool {
        self.inner.limiter.lock().expect("limiter lock").admit(key, rps)
    }

    fn record(&self, mut r: RecordedRequest) {
        let mut log = self.inner.log.lock().expect("log lock");
        r.seq = self.inner.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        tracing::debug!(seq = r.seq, method = %r.method, path = %r.path, status = r.status, fault = ?r.fault, "simulator served request");
        log.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_spec_parses_every_key() {
        let c = FaultConfig::parse_header(
            "latency_ms=5, jitter_ms=2,error_rate=0.5,error_statuses=502|503,throttle_rate=1,retry_after_secs=3,reset_rate=0,truncate_rate=0.25,rps_limit=10",
        )
        .unwrap();
        assert_eq!(c.latency_ms, 5);
        assert_eq!(c.error_statuses, vec![502, 503]);
        assert_eq!(c.retry_after_secs, Some(3));
        assert_eq!(c.rps_limit, Some(10.0));
        assert!(FaultConfig::parse_header("explode=1").unwrap_err().contains("explode"));
        assert!(FaultConfig::parse_header("error_rate").is_err());
        let c = FaultConfig::parse_header("pad_bytes=100,drip_ms=20,ignore_offset=true").unwrap();
        assert_eq!((c.pad_bytes, c.drip_ms, c.ignore_offset), (100, 20, true));
        assert_eq!(FaultConfig::default(), FaultConfig::parse_header("").unwrap(), "no fault by default");
    }

    #[test]
    fn ignore_offset_drops_only_the_offset() {
        let uri: axum::http::Uri = "/api/chats/reports/summary?limit=2&offset=4&x=offset".parse().unwrap();
        assert_eq!(without_offset(&uri).to_string(), "/api/chats/reports/summary?limit=2&x=offset");
        let uri: axum::http::Uri = "/a?offset=4".parse().unwrap();
        assert_eq!(without_offset(&uri).to_string(), "/a");
    }

    #[test]
    fn rps_limit_admits_a_burst_then_the_rate_per_key() {
        let mut l = RateLimiter::default();
        let admitted = (0..10).filter(|_| l.admit("k", 3.0)).count();
        assert_eq!(admitted, 3, "a burst of rps requests, then none until the next one is due");
        assert!(l.admit("other", 3.0), "keys have their own limits");
        assert!(l.admit("k", 50.0), "another rps is another limit");

        // 20 per second: the burst, then one every 50 ms.
        assert_eq!((0..30).filter(|_| l.admit("fast", 20.0)).count(), 20);
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.admit("fast", 20.0), "the next request is due after 1 / rps seconds");
    }

    #[test]
    fn rps_limits_governor_cannot_express_are_still_applied() {
        let mut l = RateLimiter::default();
        for rps in [0.0, -1.0, f64::NAN, 1e-300] {
            assert_eq!((0..3).filter(|_| l.admit("k", rps)).count(), 1, "rps {rps}: one, then none");
        }
        assert_eq!((0..100).filter(|_| l.admit("k", 1e12)).count(), 100, "a huge rps is a huge burst");
    }
}

//! Shared HTTP plumbing for every source: one [`HttpClient`] per configured source.
//!
//! Owns: the auth header, per-request timeouts, a response size limit, a concurrency limit (a semaphore) and a
//! requests-per-second limit (governor's GCRA), retries with exponential backoff and full jitter
//! on 429, 5xx, connection errors and broken bodies (backon), honouring `Retry-After` up to
//! `max_retry_delay_secs` and never retrying sooner than the backoff (so `Retry-After: 0` cannot
//! spin). 400/401/403/404 fail at once with the upstream's message. A source module builds its
//! requests and parses bodies; it never retries or pages by itself.
//!
//! Refused credentials fail fast: until the upstream has answered one request of the source with
//! anything but 401/403, the source's requests go one at a time; after a 401 or 403 (or, for
//! giosg, a 404 on the organization's own path: an unknown `organization_id`) the client sends
//! nothing more and every request fails at once with [`HttpError::CredentialsRefused`], so
//! a wrong token costs one request per source, not one per window. A new client (a new run, or a
//! daemon's reload) asks again.
//!
//! Every request goes through a [`Calls`]: one chunk's view of its source's client that counts
//! that chunk's own requests and retries (so jobs running at once never mix their counts) and
//! pages through a collection with [`Calls::pages`], the one paging loop: it stops with an error
//! when a page asks for a page already fetched, when a page's body repeats the previous one (an
//! upstream that ignores its paging parameter), or after the source's `max_pages` pages.
//!
//! Every read is bounded. `timeout_secs` is each attempt's total deadline (reqwest's `timeout`):
//! it runs from sending the request to the body's last byte, so a body that drips forever fails
//! after it like any timeout (and is retried as a transport failure). A body is read chunk by
//! chunk and fails with [`HttpError::TooLarge`] as soon as it passes the source's
//! `max_response_bytes`, or before reading when its `Content-Length` says it would; that is not
//! retried (the same request gets the same answer). Paging stops with the errors above, so no
//! upstream can make one window read without end.
//!
//! Over a PostgreSQL warehouse the rate and concurrency limits are those of every chatetl process
//! on it together ([`crate::budget`]): an attempt takes one of the account's shared leases and
//! its rate slot instead of governor's, and is not sent (a retryable [`HttpError::Budget`]) when
//! the database cannot say it may be.
//!
//! Every attempt is also counted in the source's [`RequestStats`] (by status class, with its
//! duration), which a daemon's `/metrics` shows live; the stats outlive a reload of the
//! configuration ([`StatsRegistry`]).
//!
//! To use from a new source: build an [`HttpClient`] from its [`SourceConfig`] with the vendor's
//! credentials; the runner hands each chunk a [`Calls`] over it: [`Calls::send`] one
//! [`HttpRequest`] (the body comes back whole) or [`Calls::pages`].

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Semaphore;

use crate::budget::{SharedBudget, SourceBudget};
use crate::config::{Credentials, SourceConfig};
use crate::source::FetchError;

/// One request, ready to send (and to print in `chatetl plan`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub body: Option<serde_json::Value>,
}

impl HttpRequest {
    /// A `POST` of `body` as JSON.
    pub fn post_json(url: &str, body: &impl serde::Serialize) -> HttpRequest {
        HttpRequest {
            method: reqwest::Method::POST,
            url: url.to_string(),
            body: Some(serde_json::to_value(body).expect("request bodies serialize")),
        }
    }
}

/// A request that failed for good (after retries where retrying could help).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The upstream answered with an error status.
    #[error("upstream returned {status} for {method} {url}: {detail}")]
    Status { status: u16, method: String, url: String, detail: String, retry_after: Option<Duration> },
    /// No (complete) response: connection refused or reset, timeout, body cut short.
    #[error("{method} {url} failed: {cause}")]
    Transport { method: String, url: String, cause: String, timeout: bool },
    /// The upstream answered 401 or 403 to this request (`detail` is its answer) or to an
    /// earlier one of the source (`detail` is `None`: this one was not sent). Nothing more is
    /// sent to the source.
    #[error("{}", refused_message(.source_name, .variables, *.status, .method, .url, .detail.as_deref()))]
    CredentialsRefused {
        source_name: String,
        /// The environment variables the credentials come from, as chatetl.yaml names them.
        variables: Vec<String>,
        status: u16,
        method: String,
        url: String,
        detail: Option<String>,
    },
    /// The shared budget ([`crate::budget`]) could not be read: the request was not sent.
    #[error("source `{source_name}`: {method} {url} was not sent: {cause}")]
    Budget { source_name: String, method: String, url: String, cause: String },
    /// The body (or its `Content-Length`) passed the source's `max_response_bytes`.
    #[error(
        "{method} {url} answered more than {limit} bytes (the source's max_response_bytes); \
         the answer was not read further"
    )]
    TooLarge { method: String, url: String, limit: u64 },
}

impl HttpError {
    /// Whether another attempt may succeed: throttling, server errors and transport failures.
    pub fn retryable(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => *status == 429 || *status >= 500,
            HttpError::Transport { .. } | HttpError::Budget { .. } => true,
            HttpError::CredentialsRefused { .. } | HttpError::TooLarge { .. } => false,
        }
    }

    /// Whether the upstream refused the credentials (401, 403), now or earlier.
    pub fn credentials_refused(&self) -> bool {
        matches!(self, HttpError::Status { status: 401 | 403, .. } | HttpError::CredentialsRefused { .. })
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            HttpError::Transport { .. }
            | HttpError::CredentialsRefused { .. }
            | HttpError::TooLarge { .. }
            | HttpError::Budget { .. } => None,
        }
    }
}

/// Requests and retries, counted per chunk of one job (see [`Calls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Attempts sent, every page and every retry included.
    pub requests: u32,
    /// Attempts that were retries.
    pub retries: u32,
}

impl std::ops::AddAssign for CallCounts {
    fn add_assign(&mut self, other: CallCounts) {
        self.requests += other.requests;
        self.retries += other.retries;
    }
}

/// Backoff between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay (doubling, with jitter).
    pub min_delay: Duration,
    /// Longest delay, and the cap on `Retry-After`.
    pub max_delay: Duration,
}

/// The message of [`HttpError::CredentialsRefused`]: the status, URL and answer, the source, the
/// variables its credentials come from, and what happens next.
fn refused_message(
    source: &str,
    variables: &[String],
    status: u16,
    method: &str,
    url: &str,
    detail: Option<&str>,
) -> String {
    let from = match variables {
        [] => String::new(),
        names => format!(" (from {})", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
    };
    let what = if status == 404 { "its organization_id" } else { "its credentials" };
    match detail {
        Some(detail) => format!(
            "upstream returned {status} for {method} {url}: {detail}; source `{source}` refused {what}{from}, \
             so nothing more is sent to it until they are fixed (and, for `chatetl schedule`, the configuration reloaded)"
        ),
        None => format!(
            "source `{source}`: {what}{from} were refused ({status} for {method} {url}); this request was not sent"
        ),
    }
}

/// What the upstream has said of a source's credentials so far.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// No answer that tells yet (only 429, 5xx or transport failures, or nothing sent).
    Unknown,
    /// Some request was answered with neither 401 nor 403.
    Accepted,
    /// A request was answered 401 or 403.
    Refused { status: u16, method: String, url: String },
}

/// Upper bounds (seconds) of the request-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A source's requests so far: attempts by status class (`2xx` … `5xx`, or `error` when no
/// answer came: a timeout, a refused or dropped connection) and a histogram of their durations
/// (from sending to the last byte of the body, or to the failure).
#[derive(Debug, Default)]
pub struct RequestStats {
    by_class: Mutex<BTreeMap<&'static str, u64>>,
    /// Attempts per bucket of [`DURATION_BUCKETS`] (not cumulative), the last one for longer.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    micros: AtomicU64,
    /// Time attempts waited on the shared budget ([`crate::budget`]), and whether any did.
    budget_wait_micros: AtomicU64,
    budget_waits: AtomicU64,
}

/// A copy of [`RequestStats`] at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestStatsSnapshot {
    pub by_class: BTreeMap<&'static str, u64>,
    /// (upper bound, attempts that took longer than the previous bound and at most this one),
    /// ending with +Inf; the encoder makes them cumulative.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
    /// Seconds attempts waited for a shared lease and rate slot; `None` without a shared budget.
    pub budget_wait_seconds: Option<f64>,
}

impl RequestStats {
    pub(crate) fn record(&self, class: &'static str, took: Duration) {
        *self.by_class.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(class).or_default() += 1;
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_budget_wait(&self, waited: Duration) {
        self.budget_waits.fetch_add(1, Ordering::Relaxed);
        self.budget_wait_micros.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestStatsSnapshot {
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        RequestStatsSnapshot {
            by_class: self.by_class.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: self.micros.load(Ordering::Relaxed) as f64 / 1e6,
            budget_wait_seconds: (self.budget_waits.load(Ordering::Relaxed) > 0)
                .then(|| self.budget_wait_micros.load(Ordering::Relaxed) as f64 / 1e6),
        }
    }
}

/// The [`RequestStats`] of every source by name, shared by the runners a daemon builds on each
/// reload so the counts keep growing across them.
#[derive(Debug, Clone, Default)]
pub struct StatsRegistry(Arc<Mutex<BTreeMap<String, Arc<RequestStats>>>>);

impl StatsRegistry {
    /// The stats of source `name`, created empty on first use.
    pub fn of(&self, name: &str) -> Arc<RequestStats> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(name.to_string()).or_default().clone()
    }

    /// Every source's stats at this instant, by name.
    pub fn snapshot(&self) -> BTreeMap<String, RequestStatsSnapshot> {
        let sources = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        sources.into_iter().map(|(name, stats)| (name, stats.snapshot())).collect()
    }
}

/// The status class of an attempt's outcome.
fn status_class(result: &Result<bytes::Bytes, HttpError>) -> &'static str {
    let status = match result {
        Ok(_) | Err(HttpError::TooLarge { .. }) => return "2xx",
        Err(HttpError::Status { status, .. }) => *status,
        Err(_) => return "error",
    };
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// An HTTP client for one source.
pub struct HttpClient {
    source: String,
    /// The variables the credentials come from, for the refusal's message.
    credential_variables: Vec<String>,
    /// giosg: `/orgs/<organization_id>/`; a 404 on such a path means the organization is
    /// unknown to these credentials (api-docs 002), a refusal like 401/403.
    organization_path: Option<String>,
    /// Built on the first request: commands that open a runner without sending anything
    /// (`status`, an incremental `plan`) never pay for a TLS client.
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
    timeout: Duration,
    auth: Credentials,
    limiter: DefaultDirectRateLimiter,
    permits: Semaphore,
    /// The budget shared with the other processes on the warehouse; `None`: `limiter` alone.
    budget: Option<SourceBudget>,
    policy: RetryPolicy,
    /// The source's `max_response_bytes`.
    max_response_bytes: u64,
    /// The source's `timeout_secs`, for the message of a timeout.
    timeout_secs: u64,
    verdict: std::sync::Mutex<Verdict>,
    /// Held by the one request in flight while the verdict is unknown.
    first: tokio::sync::Mutex<()>,
    stats: Arc<RequestStats>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("source", &self.source).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client with the source's credentials, limits and timeouts, counting its attempts in
    /// `stats`.
    pub fn new(source: &SourceConfig, stats: Arc<RequestStats>) -> Result<HttpClient, String> {
        HttpClient::with_budget(source, stats, None)
    }

    /// [`HttpClient::new`] spending `budget` (shared with the other processes on the
    /// warehouse) instead of its own rate limit, when there is one.
    pub fn with_budget(
        source: &SourceConfig,
        stats: Arc<RequestStats>,
        budget: Option<&SharedBudget>,
    ) -> Result<HttpClient, String> {
        let auth = source.credentials.clone();
        let rps = source.requests_per_second.max(0.001);
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rps))
            .ok_or_else(|| format!("source {}: invalid requests_per_second {rps}", source.name))?
            .allow_burst(NonZeroU32::new(rps.ceil().max(1.0) as u32).expect("at least 1"));
        Ok(HttpClient {
            source: source.name.clone(),
            credential_variables: source.credential_variables.clone(),
            organization_path: (source.kind == crate::config::SourceKind::Giosg && !source.organization_id.is_empty())
                .then(|| format!("/orgs/{}/", source.organization_id)),
            client: std::sync::OnceLock::new(),
            timeout: Duration::from_secs(source.timeout_secs),
            auth,
            limiter: RateLimiter::direct(quota),
            permits: Semaphore::new(source.concurrency.max(1)),
            budget: budget.map(|b| b.for_source(source)),
            policy: RetryPolicy {
                max_retries: source.max_retries,
                min_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(source.max_retry_delay_secs.max(1)),
            },
            max_response_bytes: source.max_response_bytes,
            timeout_secs: source.timeout_secs,
            verdict: std::sync::Mutex::new(Verdict::Unknown),
            first: tokio::sync::Mutex::new(()),
            stats,
        })
    }

    /// Sends `req` (see [`HttpClient::send_retrying`]) unless the source's credentials were
    /// refused; while no answer has told whether they are accepted, one request at a time.
    async fn send(&self, req: &HttpRequest, tally: &Tally) -> Result<bytes::Bytes, HttpError> {
        let _first = match self.verdict() {
            Verdict::Accepted => None,
            Verdict::Refused { .. } => return Err(self.refused(&self.verdict())),
            Verdict::Unknown => Some(self.first.lock().await),
        };
        // Another request may have settled the verdict while this one waited.
        let verdict = self.verdict();
        if let Verdict::Refused { .. } = verdict {
            return Err(self.refused(&verdict));
        }
        let mut result = self.send_retrying(req, tally).await;
        let unknown_organization = |status: u16, url: &str| {
            status == 404 && self.organization_path.as_ref().is_some_and(|p| url.contains(p.as_str()))
        };
        if let Err(HttpError::Status { status, method, url, detail, .. }) = &result
            && (matches!(status, 401 | 403) || unknown_organization(*status, url))
        {
            result = Err(HttpError::CredentialsRefused {
                source_name: self.source.clone(),
                variables: self.credential_variables.clone(),
                status: *status,
                method: method.clone(),
                url: url.clone(),
                detail: Some(detail.clone()),
            });
        }
        let told = match &result {
            Err(HttpError::CredentialsRefused { status, method, url, .. }) => {
                Some(Verdict::Refused { status: *status, method: method.clone(), url: url.clone() })
            }
            Ok(_) | Err(HttpError::Status { status: 400..=499, .. }) => Some(Verdict::Accepted),
            Err(_) => None,
        };
        if let Some(told) = told {
            let mut verdict = self.verdict.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *verdict == Verdict::Unknown {
                if let Verdict::Refused { status, url, .. } = &told {
                    tracing::error!(source = %self.source, status, %url, "the upstream refused the credentials; no further requests are sent for this source");
                }
                *verdict = told;
            }
        }
        result
    }

    fn verdict(&self) -> Verdict {
        self.verdict.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn refused(&self, verdict: &Verdict) -> HttpError {
        let Verdict::Refused { status, method, url } = verdict else { unreachable!("called on a refusal") };
        HttpError::CredentialsRefused {
            source_name: self.source.clone(),
            variables: self.credential_variables.clone(),
            status: *status,
            method: method.clone(),
            url: url.clone(),
            detail: None,
        }
    }

    /// Sends `req`, retrying what can be retried, and returns the whole response body; each
    /// attempt and retry is counted in `tally`.
    async fn send_retrying(&self, req: &HttpRequest, tally: &Tally) -> Result<bytes::Bytes, HttpError> {
        let p = self.policy;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(p.min_delay)
            .with_max_delay(p.max_delay)
            .with_max_times(p.max_retries as usize)
            .with_jitter();
        (|| self.attempt(req, tally))
            .retry(backoff)
            .when(HttpError::retryable)
            // Wait at least what the upstream asked (capped), never less than the backoff.
            .adjust(|e: &HttpError, next: Option<Duration>| next.map(|d| d.max(e.retry_after().unwrap_or_default().min(p.max_delay))))
            .notify(|e: &HttpError, wait: Duration| {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %self.source, error = %e, wait_ms = wait.as_millis() as u64, "retrying request");
            })
            .await
    }

    /// One attempt, after the rate and concurrency limits let it go, counted in the chunk's
    /// tally and the source's stats. With a shared budget: this process's permit first (so at
    /// most `concurrency` of its attempts ask the database), then a shared lease and rate slot.
    async fn attempt(&self, req: &HttpRequest, tally: &Tally) -> Result<bytes::Bytes, HttpError> {
        // Built before a slot is taken: building it (TLS roots) would delay the request past its
        // slot, and a request late by more than the next one is early for the upstream's count.
        self.client(req)?;
        let (_permit, lease) = match &self.budget {
            None => {
                self.limiter.until_ready_with_jitter(Jitter::up_to(Duration::from_millis(20))).await;
                (self.permits.acquire().await.expect("semaphore never closed"), None)
            }
            Some(budget) => {
                let permit = self.permits.acquire().await.expect("semaphore never closed");
                let lease = budget.acquire().await.map_err(|e| HttpError::Budget {
                    source_name: self.source.clone(),
                    method: req.method.to_string(),
                    url: req.url.clone(),
                    cause: e.to_string(),
                })?;
                tracing::debug!(source = %self.source, account = %&budget.account()[..12], waited_ms = lease.waited.as_millis() as u64, "shared budget lets the request go");
                self.stats.record_budget_wait(lease.waited);
                (permit, Some(lease))
            }
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.exchange(req).await;
        self.stats.record(status_class(&result), started.elapsed());
        if let Some(lease) = lease {
            lease.release().await;
        }
        result
    }

    /// The reqwest client, built the first time it is needed.
    fn client(&self, req: &HttpRequest) -> Result<&reqwest::Client, HttpError> {
        let built = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("chatetl/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("source {}: cannot build an HTTP client: {}", self.source, error_chain(&e)))
        });
        built.as_ref().map_err(|cause| HttpError::Transport {
            method: req.method.to_string(),
            url: req.url.clone(),
            cause: cause.clone(),
            timeout: false,
        })
    }

    /// Sends `req` once and reads its whole answer.
    async fn exchange(&self, req: &HttpRequest) -> Result<bytes::Bytes, HttpError> {
        let method = req.method.to_string();
        let mut builder = self.client(req)?.request(req.method.clone(), &req.url);
        builder = match &self.auth {
            Credentials::Token(t) => builder.header(AUTHORIZATION, format!("Token {}", t.expose())),
            Credentials::Bearer(t) => builder.bearer_auth(t.expose()),
            Credentials::Basic { username, password } => builder.basic_auth(username, Some(password.expose())),
        };
        builder = builder.header(ACCEPT, "application/json");
        if let Some(body) = &req.body {
            builder = builder.header(CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let transport = |e: reqwest::Error| HttpError::Transport {
            method: method.clone(),
            url: req.url.clone(),
            cause: if e.is_timeout() {
                format!(
                    "{} (after the source's timeout_secs, {} s, which bounds the whole answer)",
                    error_chain(&e),
                    self.timeout_secs
                )
            } else {
                error_chain(&e)
            },
            timeout: e.is_timeout(),
        };
        tracing::debug!(source = %self.source, %method, url = %req.url, "sending request");
        let mut resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let too_large =
            || HttpError::TooLarge { method: method.clone(), url: req.url.clone(), limit: self.max_response_bytes };
        if status.is_success() && resp.content_length().is_some_and(|n| n > self.max_response_bytes) {
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if (body.len() + chunk.len()) as u64 > self.max_response_bytes {
                if status.is_success() {
                    return Err(too_large());
                }
                // An error's answer is only shown (cut to 300 characters): keep its status.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        if status.is_success() {
            return Ok(body);
        }
        let mut detail = String::from_utf8_lossy(&body).trim().to_string();
        if detail.len() > 300 {
            let cut = (0..=300).rev().find(|i| detail.is_char_boundary(*i)).unwrap_or(0);
            detail.truncate(cut);
            detail.push('…');
        }
        if detail.is_empty() {
            detail = status.canonical_reason().unwrap_or("no body").to_string();
        }
        Err(HttpError::Status { status: status.as_u16(), method, url: req.url.clone(), detail, retry_after })
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: AtomicU32,
    retries: AtomicU32,
}

/// One chunk's calls to its source: the source's client and configuration, and the requests and
/// retries of this chunk alone.
#[derive(Debug)]
pub struct Calls<'a> {
    client: &'a HttpClient,
    /// The source the requests go to.
    pub source: &'a SourceConfig,
    tally: Tally,
}

/// What a page reader says after a page: the request of the following page, or the end.
pub type NextPage = Option<HttpRequest>;

impl<'a> Calls<'a> {
    /// A fresh tally over `client`, which must be `source`'s.
    pub fn new(client: &'a HttpClient, source: &'a SourceConfig) -> Calls<'a> {
        Calls { client, source, tally: Tally::default() }
    }

    /// Sends `req` (retried where that can help) and returns the whole body.
    pub async fn send(&self, req: &HttpRequest) -> Result<bytes::Bytes, HttpError> {
        self.client.send(req, &self.tally).await
    }

    /// Every page of a paged request, from `first`: `read(page_no, request, body)` takes each
    /// page (numbered from 1) and returns the next page's request or `None` at the end. Fails
    /// when a page's request was sent before (the pages loop), when a body repeats the previous
    /// page's (the upstream ignores its paging parameter), or after the source's `max_pages`.
    pub async fn pages(
        &self,
        first: HttpRequest,
        mut read: impl FnMut(u32, &HttpRequest, &[u8]) -> Result<NextPage, FetchError>,
    ) -> Result<(), FetchError> {
        let key = |r: &HttpRequest| (r.url.clone(), r.body.as_ref().map(|b| b.to_string()));
        let mut seen = HashSet::from([key(&first)]);
        let mut previous: Option<bytes::Bytes> = None;
        let mut req = first;
        let max_pages = self.source.max_pages;
        for page_no in 1..=max_pages {
            let body = self.send(&req).await?;
            if previous.as_ref().is_some_and(|p| *p == body) && !body.is_empty() {
                let message = format!(
                    "page {page_no} is the same as page {} byte for byte: the upstream ignores the paging parameter",
                    page_no - 1
                );
                return Err(FetchError::response(&req, message));
            }
            let Some(next) = read(page_no, &req, &body)? else { return Ok(()) };
            if !seen.insert(key(&next)) {
                let message = format!("page {page_no} leads back to {}, an earlier page: the pages loop", next.url);
                return Err(FetchError::response(&req, message));
            }
            previous = Some(body);
            req = next;
        }
        let message = format!("still more pages after {max_pages} pages (the source's max_pages); giving up");
        Err(FetchError::response(&req, message))
    }

    /// The requests and retries made through these calls so far.
    pub fn counts(&self) -> CallCounts {
        CallCounts {
            requests: self.tally.requests.load(Ordering::Relaxed),
            retries: self.tally.retries.load(Ordering::Relaxed),
        }
    }
}

/// `error: cause: cause` — reqwest's Display hides the interesting part in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

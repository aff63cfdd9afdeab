//! Upstream APIs: one module per vendor endpoint behind one [`Api`] trait, plus the shared HTTP
//! plumbing.
//!
//! Owns: [`Api`] (what every endpoint module implements: the columns of its rows, what a bucket
//! is, the requests that load some windows, and fetching them), [`api`] (the one place that maps
//! an [`Endpoint`] of the registry to its module, with no wildcard arm), [`Source`] (a configured
//! account: its [`http::HttpClient`]) and [`FetchError`]. Vendor modules never retry, throttle or
//! page by themselves: `http` does that once for all, and counts each chunk's requests
//! ([`http::Calls`]).
//!
//! # Adding an endpoint
//!
//! 1. `src/config/endpoint.rs`: a variant in `endpoints!`, its arm in `Endpoint::info` (name,
//!    vendor, kind, keys, dimensions, aggregations), its `EndpointParams` variant if it has
//!    parameters of its own.
//! 2. `src/config/load/params.rs`: its arm reading those parameters; a new job-file key also
//!    gets a field in `src/config/load/raw.rs` and a line in `ENDPOINT_KEYS`
//!    (`src/config/load/job.rs`).
//! 3. A module `src/source/<vendor>/<endpoint>.rs` with its `pub mod <endpoint>;` line in the
//!    vendor module (`src/source/<vendor>.rs` or `src/source/<vendor>/mod.rs`), or new code in
//!    `src/source/<vendor>.rs`: a unit struct implementing [`Api`] (with a unit test parsing the
//!    docs' example answer), and its line in [`api`].
//! 4. `src/simulator/<endpoint>.rs` with its handler, and its `pub mod` line and route in
//!    `src/simulator/mod.rs`; request and answer types in `src/simulator/wire/<vendor>.rs`
//!    (Comm100's are still inline in `simulator/comm100.rs`); new records in
//!    `src/simulator/dataset.rs`; the route and every assumption in `docs/simulator.md`.
//! 5. Job files under `jobs/` (`build.rs` embeds them; there is no list to update), and in the
//!    README's "Job files" section the endpoint table row, the endpoint's section and, for a
//!    snapshot endpoint, its row in the snapshot rows table.
//! 6. Tests: a snapshot job's name in `SNAPSHOT_JOBS` and its path in the `documented` map of
//!    `tests/it/snapshots.rs`; a windowed job's values against the dump, as `tests/it/thulium.rs`
//!    does.
//!
//! The compiler points at a forgotten step 1 to 3: every `match` on [`Endpoint`] is exhaustive
//! (`tests/it/architecture.rs` refuses wildcard arms), and a unit test checks that
//! `ENDPOINT_KEYS` reads exactly the keys the registry names. Steps 4 to 6 (the `pub mod` lines,
//! docs and test lists) nothing checks: follow the list.
//!
//! Measured by adding a throwaway Comm100 `Visitors` snapshot endpoint this way: 9 files, 209
//! lines added and 5 removed, two of the files new modules.

pub mod comm100;
pub mod giosg;
pub mod http;
pub mod thulium;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::config::{Endpoint, Job, SourceConfig};
use crate::error::ErrorKind;
use crate::plan::Window;
use crate::row::{Column, Row};
use http::{CallCounts, Calls, HttpClient, HttpError, HttpRequest};

/// Fetching a chunk of windows failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The upstream answered 2xx with something chatetl cannot read.
    #[error("unexpected response from {url}: {message}")]
    Response { url: String, message: String },
}

impl FetchError {
    /// A [`FetchError::Response`] about `req`'s answer.
    pub fn response(req: &HttpRequest, message: impl Into<String>) -> FetchError {
        FetchError::Response { url: format!("{} {}", req.method, req.url), message: message.into() }
    }

    /// Whose fault it is: refused credentials (401, 403), a refused request (another 4xx), an
    /// upstream that could not answer (429, 5xx, transport), or an answer chatetl cannot read.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FetchError::Http(e) if e.credentials_refused() => ErrorKind::Credentials,
            // The warehouse could not say whether the vendor's budget allows the request.
            FetchError::Http(HttpError::Budget { .. }) => ErrorKind::Warehouse,
            FetchError::Http(e) if e.retryable() => ErrorKind::UpstreamUnavailable,
            FetchError::Http(HttpError::Status { .. } | HttpError::CredentialsRefused { .. }) => ErrorKind::BadRequest,
            FetchError::Http(HttpError::Transport { .. }) => ErrorKind::UpstreamUnavailable,
            FetchError::Http(HttpError::TooLarge { .. }) | FetchError::Response { .. } => ErrorKind::BadResponse,
        }
    }
}

/// The rows of each window of a chunk, in window order.
pub type WindowRows = Vec<Vec<Row>>;

/// What every endpoint module implements (see the module doc for adding one).
pub trait Api: Sync {
    /// The key dimensions and value columns of `job`'s rows.
    fn columns(&self, job: &Job) -> (Vec<Column>, Vec<Column>);

    /// What one bucket of `job` is, for the time column's comment (`day granularity`).
    fn bucket(&self, job: &Job) -> String {
        let g = serde_json::to_value(job.granularity).ok().and_then(|v| v.as_str().map(String::from));
        format!("{} granularity", g.unwrap_or_default())
    }

    /// The requests that load `windows` (consecutive) of `job`, in the order they are sent; for
    /// paged endpoints, the first page of each. `chatetl plan` prints them.
    fn requests(&self, source: &SourceConfig, job: &Job, windows: &[Window]) -> Vec<HttpRequest>;

    /// Pages each of those requests takes, for `chatetl plan`'s totals: `None` where an answer is
    /// one page, else an estimate from what the plan knows (the answers alone tell the truth).
    fn pages(&self, _job: &Job, _windows: &[Window]) -> Option<u32> {
        None
    }

    /// Sends them through `calls` (every page) and returns the rows of each window.
    fn fetch<'a>(
        &'a self,
        calls: &'a Calls<'a>,
        job: &'a Job,
        windows: &'a [Window],
    ) -> BoxFuture<'a, Result<WindowRows, FetchError>>;
}

/// The module of `endpoint`: the one dispatch from the registry to the clients.
pub fn api(endpoint: Endpoint) -> &'static dyn Api {
    match endpoint {
        Endpoint::ChatSessions => &giosg::chat_sessions::ChatSessions,
        Endpoint::Events => &giosg::events::Events,
        Endpoint::Workflow => &giosg::workflow::Workflow,
        Endpoint::RealtimeRooms => &giosg::realtime::Realtime(giosg::realtime::Collection::Rooms),
        Endpoint::RealtimeUsers => &giosg::realtime::Realtime(giosg::realtime::Collection::Users),
        Endpoint::ChatSummary => &thulium::ChatSummary,
        Endpoint::Agents => &comm100::RealTime(comm100::Report::Agents),
        Endpoint::Queue => &comm100::RealTime(comm100::Report::Queue),
        Endpoint::Today => &comm100::RealTime(comm100::Report::Today),
        Endpoint::RightNow => &comm100::RealTime(comm100::Report::RightNow),
    }
}

/// The key dimensions and value columns of `job`'s rows.
pub fn columns(job: &Job) -> (Vec<Column>, Vec<Column>) {
    api(job.endpoint).columns(job)
}

/// What a bucket of `job` is, for the time column's comment.
pub fn bucket_name(job: &Job) -> String {
    api(job.endpoint).bucket(job)
}

/// Parses a whole JSON body as `T`; the message says what was expected and how the body starts
/// (an HTML error page, a truncated document), never more than 80 characters of it.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let head: String = String::from_utf8_lossy(&body[..body.len().min(80)]).chars().collect();
        format!("response is not JSON ({e}); it starts with {head:?}")
    })?;
    serde_json::from_value(value).map_err(|e| format!("response is not {what}: {e}"))
}

/// [`parse_json`] of the answer to `req`, failing as a [`FetchError::Response`] about it.
pub fn json_body<T: DeserializeOwned>(req: &HttpRequest, body: &[u8], what: &str) -> Result<T, FetchError> {
    parse_json(body, what).map_err(|message| FetchError::response(req, message))
}

/// A configured upstream account.
#[derive(Debug)]
pub struct Source {
    pub config: SourceConfig,
    client: HttpClient,
}

/// A source's client could not be built (a TLS backend, an invalid rate).
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {message}")]
pub struct ClientError {
    pub source_name: String,
    pub message: String,
}

impl Source {
    pub fn new(config: &SourceConfig) -> Result<Source, ClientError> {
        Source::with_stats(config, Default::default())
    }

    /// A source counting its requests in `stats` (a daemon's, kept across reloads).
    pub fn with_stats(config: &SourceConfig, stats: std::sync::Arc<http::RequestStats>) -> Result<Source, ClientError> {
        Source::with_parts(config, stats, None)
    }

    /// [`Source::with_stats`], spending `budget` (shared by the processes on a PostgreSQL
    /// warehouse, [`crate::budget`]) when there is one.
    pub fn with_parts(
        config: &SourceConfig,
        stats: std::sync::Arc<http::RequestStats>,
        budget: Option<&crate::budget::SharedBudget>,
    ) -> Result<Source, ClientError> {
        let client = HttpClient::with_budget(config, stats, budget)
            .map_err(|message| ClientError { source_name: config.name.clone(), message })?;
        Ok(Source { config: config.clone(), client })
    }

    /// The requests that load `windows` (consecutive) of `job`, in the order they are sent; for
    /// paged endpoints, the first page of each.
    pub fn requests(&self, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        api(job.endpoint).requests(&self.config, job, windows)
    }

    /// Sends one request (retried where that can help) and returns its raw body and the requests
    /// it took: `chatetl probe` reads answers this way.
    pub async fn send(&self, req: &HttpRequest) -> (Result<bytes::Bytes, HttpError>, CallCounts) {
        let calls = Calls::new(&self.client, &self.config);
        let result = calls.send(req).await;
        (result, calls.counts())
    }

    /// Fetches `windows` (consecutive) of `job`, every page: rows per window, in window order,
    /// and the requests and retries this fetch made (also when it failed).
    pub async fn fetch(&self, job: &Job, windows: &[Window]) -> (Result<WindowRows, FetchError>, CallCounts) {
        let calls = Calls::new(&self.client, &self.config);
        let result = api(job.endpoint).fetch(&calls, job, windows).await;
        (result, calls.counts())
    }
}

//! Upstream APIs: one module per vendor endpoint behind one [`Source`], plus the shared HTTP
//! plumbing.
//!
//! Owns: [`Source`] (a configured account: its [`http::HttpClient`] and the dispatch from a job's
//! endpoint to the module that builds its requests, pages through the answers and parses them),
//! [`columns`] (the table each endpoint's rows fill) and [`FetchError`]. Vendor modules never
//! retry or throttle by themselves; `http` does that once for all.
//!
//! Every endpoint module has the same three functions:
//! - `columns(job)`: the key dimensions and value columns of its rows;
//! - `requests(source, job, windows)`: the requests that load `windows` (for paged APIs, the
//!   first page of each), which `chatetl plan` prints;
//! - `fetch(client, source, job, windows)`: sends them (every page) and returns the rows of each
//!   window, in window order.
//!
//! To add an API: a module with those functions, an [`Endpoint`] variant (and a
//! [`crate::config::SourceKind`] for a new vendor), and one arm in each function of this file.

pub mod comm100;
pub mod giosg;
pub mod http;
pub mod thulium;

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;

use crate::batch::{Column, Row};
use crate::config::{Endpoint, Job, SourceConfig};
use crate::plan::Window;
use http::{HttpClient, HttpError, HttpRequest};

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
}

/// The key dimensions and value columns of `job`'s rows.
pub fn columns(job: &Job) -> (Vec<Column>, Vec<Column>) {
    match job.endpoint {
        Endpoint::ChatSessions | Endpoint::Events | Endpoint::Workflow => giosg::columns(job),
        Endpoint::RealtimeRooms | Endpoint::RealtimeUsers => giosg::realtime::columns(job),
        Endpoint::ChatSummary => thulium::columns(job),
        Endpoint::Agents | Endpoint::Queue | Endpoint::Today | Endpoint::RightNow => comm100::columns(job),
    }
}

/// What a bucket of `job` is, for the time column's comment (`day granularity`).
pub fn bucket_name(job: &Job) -> String {
    match &job.params {
        crate::config::EndpointParams::ChatSummary { aggregate_by, .. } => {
            format!("aggregate_by {}", aggregate_by.as_str())
        }
        _ => {
            let g = serde_json::to_value(job.granularity).ok().and_then(|v| v.as_str().map(String::from));
            format!("{} granularity", g.unwrap_or_default())
        }
    }
}

/// Parses a whole JSON body as `T`; the error says what was expected and how the body starts
/// (an HTML error page, a truncated document), never more than 80 characters of it.
pub fn json_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let head: String = String::from_utf8_lossy(&body[..body.len().min(80)]).chars().collect();
        format!("response is not JSON ({e}); it starts with {head:?}")
    })?;
    serde_json::from_value(value).map_err(|e| format!("response is not {what}: {e}"))
}

/// A configured upstream account.
#[derive(Debug)]
pub struct Source {
    pub config: SourceConfig,
    client: HttpClient,
}

impl Source {
    pub fn new(config: &SourceConfig) -> Result<Source, String> {
        Ok(Source { config: config.clone(), client: HttpClient::new(config)? })
    }

    /// The requests that load `windows` (consecutive) of `job`, in the order they are sent; for
    /// paged endpoints, the first page of each.
    pub fn requests(&self, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        let s = &self.config;
        match job.endpoint {
            Endpoint::ChatSessions => giosg::chat_sessions::requests(s, job, windows),
            Endpoint::Events => giosg::events::requests(s, job, windows),
            Endpoint::Workflow => giosg::workflow::requests(s, job, windows),
            Endpoint::RealtimeRooms | Endpoint::RealtimeUsers => giosg::realtime::requests(s, job, windows),
            Endpoint::ChatSummary => thulium::requests(s, job, windows),
            Endpoint::Agents | Endpoint::Queue | Endpoint::Today | Endpoint::RightNow => {
                comm100::requests(s, job, windows)
            }
        }
    }

    /// Fetches `windows` (consecutive) of `job`, every page: rows per window, in window order.
    pub async fn fetch(&self, job: &Job, windows: &[Window]) -> Result<Vec<Vec<Row>>, FetchError> {
        let (c, s) = (&self.client, &self.config);
        match job.endpoint {
            Endpoint::ChatSessions => giosg::chat_sessions::fetch(c, s, job, windows).await,
            Endpoint::Events => giosg::events::fetch(c, s, job, windows).await,
            Endpoint::Workflow => giosg::workflow::fetch(c, s, job, windows).await,
            Endpoint::RealtimeRooms | Endpoint::RealtimeUsers => giosg::realtime::fetch(c, s, job, windows).await,
            Endpoint::ChatSummary => thulium::fetch(c, s, job, windows).await,
            Endpoint::Agents | Endpoint::Queue | Endpoint::Today | Endpoint::RightNow => {
                comm100::fetch(c, s, job, windows).await
            }
        }
    }

    /// (requests sent, retries) so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.client.stats.requests.load(Ordering::Relaxed), self.client.stats.retries.load(Ordering::Relaxed))
    }
}

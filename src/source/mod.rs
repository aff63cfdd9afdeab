//! Upstream APIs: one module per vendor behind one [`Source`], plus the shared HTTP plumbing.
//!
//! Owns: [`Source`] (a configured account: its [`http::HttpClient`] and the dispatch from a job's
//! endpoint to the module that builds its requests and parses its responses) and [`FetchError`].
//! Vendor modules never retry or throttle by themselves; `http` does that once for all.
//!
//! To add an API: a module under `source/` with `query`/`parse` functions like
//! `giosg::chat_sessions`, a [`crate::config::SourceKind`] or [`crate::config::Endpoint`] variant,
//! and one arm in [`Source::requests`] and [`Source::fetch`].

pub mod giosg;
pub mod http;

use std::sync::atomic::Ordering;

use crate::batch::Row;
use crate::config::{Endpoint, Job, SourceConfig, SourceKind};
use crate::plan::Window;
use http::{Auth, HttpClient, HttpError, HttpRequest};

/// Fetching a chunk of windows failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The upstream answered 2xx with something chatetl cannot read.
    #[error("unexpected response to POST {url}: {message}")]
    Response { url: String, message: String },
}

/// A configured upstream account.
#[derive(Debug)]
pub struct Source {
    pub config: SourceConfig,
    client: HttpClient,
}

impl Source {
    pub fn new(config: &SourceConfig) -> Result<Source, String> {
        let auth = match config.kind {
            SourceKind::Giosg => Auth::Token(config.token.clone()),
        };
        Ok(Source { config: config.clone(), client: HttpClient::new(config, auth)? })
    }

    /// The requests that load `windows` (consecutive) of `job`, in the order they are sent.
    pub fn requests(&self, job: &Job, windows: &[Window]) -> Vec<HttpRequest> {
        match (self.config.kind, job.endpoint) {
            (SourceKind::Giosg, Endpoint::ChatSessions) => {
                let url = giosg::chat_sessions::url(&self.config.base_url, &self.config.organization_id);
                job.scopes
                    .iter()
                    .map(|scope| HttpRequest {
                        method: reqwest::Method::POST,
                        url: url.clone(),
                        body: Some(
                            serde_json::to_value(giosg::chat_sessions::query(job, *scope, windows))
                                .expect("serializable"),
                        ),
                    })
                    .collect()
            }
        }
    }

    /// Fetches `windows` (consecutive) of `job`: rows per window, in window order.
    pub async fn fetch(&self, job: &Job, windows: &[Window]) -> Result<Vec<Vec<Row>>, FetchError> {
        match (self.config.kind, job.endpoint) {
            (SourceKind::Giosg, Endpoint::ChatSessions) => {
                let requests = self.requests(job, windows);
                let answers = futures::future::try_join_all(requests.iter().map(|r| self.client.send(r))).await?;
                let mut out = vec![Vec::new(); windows.len()];
                for ((scope, body), req) in job.scopes.iter().zip(answers).zip(&requests) {
                    let rows = giosg::chat_sessions::parse(job, *scope, windows, &body)
                        .map_err(|message| FetchError::Response { url: req.url.clone(), message })?;
                    for (acc, mut r) in out.iter_mut().zip(rows) {
                        acc.append(&mut r);
                    }
                }
                Ok(out)
            }
        }
    }

    /// (requests sent, retries) so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.client.stats.requests.load(Ordering::Relaxed), self.client.stats.retries.load(Ordering::Relaxed))
    }
}

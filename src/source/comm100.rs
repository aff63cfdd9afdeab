//! comm100: not implemented yet (issue 4).

use crate::batch::{Column, Row};
use crate::config::{Job, SourceConfig};
use crate::plan::Window;
use crate::source::FetchError;
use crate::source::http::{HttpClient, HttpRequest};

pub fn columns(_job: &Job) -> (Vec<Column>, Vec<Column>) {
    (Vec::new(), Vec::new())
}

pub fn requests(_source: &SourceConfig, _job: &Job, _windows: &[Window]) -> Vec<HttpRequest> {
    Vec::new()
}

pub async fn fetch(
    _client: &HttpClient,
    _source: &SourceConfig,
    job: &Job,
    _windows: &[Window],
) -> Result<Vec<Vec<Row>>, FetchError> {
    Err(FetchError::Response {
        url: String::new(),
        message: format!("endpoint {} is not implemented", job.endpoint.name()),
    })
}

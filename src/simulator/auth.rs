//! Authentication of the simulated APIs, answering as the real services do.
//!
//! Owns: giosg's `Authorization: Token <key>` check for an organization in the path: 401 without
//! or with an unknown key, 404 for an unknown organization, 403 for an organization the key may
//! not read (api-docs 002's status list). Each dataset organization has its own key.

use axum::http::{HeaderMap, StatusCode, header};

use super::SimState;
use super::chat_sessions::ApiError;

/// Checks that the request's giosg token may read organization `org`.
pub fn giosg_org_access(state: &SimState, headers: &HeaderMap, org: &str) -> Result<(), ApiError> {
    let unauthorized = |msg: &str| ApiError(StatusCode::UNAUTHORIZED, msg.to_string());
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("Authentication credentials were not provided."))?;
    let dataset = state.dataset();
    if !dataset.organizations.iter().any(|o| o.api_token == token) {
        return Err(unauthorized("Invalid token."));
    }
    match dataset.organizations.iter().find(|o| o.id == org) {
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("Organization {org} not found."))),
        Some(o) if o.api_token != token => {
            Err(ApiError(StatusCode::FORBIDDEN, "You do not have permission to perform this action.".into()))
        }
        Some(_) => Ok(()),
    }
}

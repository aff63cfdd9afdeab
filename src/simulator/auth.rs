//! Authentication of the simulated APIs, answering as the real services do.
//!
//! Owns: finding the organization an `Authorization: <scheme> <key>` header names
//! ([`organization_by_key`], for giosg's `Token` and Comm100's `Bearer`), and giosg's check for an organization in the path: 401 without
//! or with an unknown key, 404 for an unknown organization, 403 for an organization the key may
//! not read (api-docs 002's status list). Each dataset organization has its own key.

use axum::http::{HeaderMap, StatusCode, header};

use super::SimState;
use super::chat_sessions::ApiError;
use super::dataset::Organization;

/// Why a request's API key was refused.
pub enum KeyProblem {
    /// No `Authorization: <scheme> …` header.
    Missing,
    /// A key no organization has.
    Unknown,
}

/// The organization whose API token the `Authorization: <scheme> <token>` header carries
/// (`Token` for giosg, `Bearer` for Comm100).
pub fn organization_by_key(state: &SimState, headers: &HeaderMap, scheme: &str) -> Result<Organization, KeyProblem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(scheme)?.strip_prefix(' '))
        .map(str::trim)
        .ok_or(KeyProblem::Missing)?;
    state.dataset().organizations.iter().find(|o| o.api_token == token).cloned().ok_or(KeyProblem::Unknown)
}

/// Checks that the request's giosg token may read organization `org`.
pub fn giosg_org_access(state: &SimState, headers: &HeaderMap, org: &str) -> Result<(), ApiError> {
    let unauthorized = |msg: &str| ApiError(StatusCode::UNAUTHORIZED, msg.to_string());
    let caller = organization_by_key(state, headers, "Token").map_err(|problem| match problem {
        KeyProblem::Missing => unauthorized("Authentication credentials were not provided."),
        KeyProblem::Unknown => unauthorized("Invalid token."),
    })?;
    match state.dataset().organizations.iter().find(|o| o.id == org) {
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("Organization {org} not found."))),
        Some(o) if o.api_token != caller.api_token => {
            Err(ApiError(StatusCode::FORBIDDEN, "You do not have permission to perform this action.".into()))
        }
        Some(_) => Ok(()),
    }
}

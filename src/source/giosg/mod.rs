//! giosg: the reporting APIs of `../shared/api-docs/` 001 and 002.
//!
//! Owns the chat_sessions query language (`query`: the request body, its dimensions and which
//! aggregations each dimension allows) and the chat_sessions client (`chat_sessions`: bodies for a
//! job's windows, responses split back into windows).

pub mod chat_sessions;
pub mod query;

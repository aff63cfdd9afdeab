//! giosg: the reporting APIs of `../shared/api-docs/` 001 and 002.
//!
//! Owns the chat_sessions query language (`query`): the request body, its dimensions and which
//! aggregations each dimension allows.

pub mod query;

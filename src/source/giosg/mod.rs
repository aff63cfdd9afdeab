//! giosg: the reporting APIs of the vendor docs 000 (realtime), 001 (metric tutorial) and 002 (chat_sessions).
//!
//! Owns the chat_sessions query language (`query`: the request body, its dimensions and which
//! aggregations each dimension allows, shared with events), one client module per endpoint
//! (`chat_sessions`, `events`, `workflow`: bodies for a job's windows and responses split back
//! into windows; `realtime`: the rooms and users snapshots), and the table shape the three
//! history endpoints share ([`columns`]).

pub mod chat_sessions;
pub mod events;
pub mod realtime;
pub mod workflow;

use crate::config::Job;
use crate::query::AggregationKind;
use crate::row::{Column, ColumnType};

/// chat_sessions, events and workflow tables: `scope`, `team_id`, `user_id`, then one column per
/// aggregation (`bigint` for count, `double precision` otherwise); `counted` says what a count
/// without a field counts, for its comment.
pub fn columns(job: &Job, counted: &str) -> (Vec<Column>, Vec<Column>) {
    let dims = vec![
        Column::new("scope", ColumnType::Text, "row scope: org, team or user"),
        Column::new("team_id", ColumnType::Text, "team of a team-scope row"),
        Column::new("user_id", ColumnType::Text, "user of a user-scope row"),
    ];
    let metrics = job
        .aggregations
        .iter()
        .map(|a| Column {
            name: a.column.clone(),
            ty: if a.kind == AggregationKind::Count { ColumnType::Int } else { ColumnType::Float },
            comment: match &a.field {
                Some(f) => format!("{} of {f} (api metric {})", a.kind.api_name(), a.metric_name()),
                None => {
                    format!("{} of the {counted} (api metric {})", a.kind.api_name(), a.metric_name())
                }
            },
        })
        .collect();
    (dims, metrics)
}

//! The endpoint registry: every upstream endpoint a job can read, and what a job file may say
//! about it.
//!
//! Owns: [`Endpoint`] (generated with [`Endpoint::ALL`] by one macro, so the list cannot miss a
//! variant), [`EndpointInfo`] (its name in job files, vendor, job kind, the keys it reads besides
//! the common ones, the dimensions its filters and fields may name, the aggregations it computes),
//! given by [`Endpoint::info`], the one exhaustive match over endpoints on the configuration
//! side; and [`EndpointParams`], what each endpoint reads beyond the common keys.
//!
//! To add an endpoint: a variant in `endpoints!` below, its arm in [`Endpoint::info`], its
//! [`EndpointParams`] variant (or [`EndpointParams::None`]) and its arm in `load/params.rs`; new
//! job-file keys also get a field in `load/raw.rs` and a line in `load/job.rs` (`ENDPOINT_KEYS`).
//! The client, the simulator, job files and docs follow: the module doc of `source/` lists every
//! step.

use crate::config::{JobKind, SourceKind};
use crate::query::{AggregationKind, DIMENSIONS, DimensionKind, EVENT_DIMENSIONS};

/// Declares [`Endpoint`] and [`Endpoint::ALL`] from one list.
macro_rules! endpoints {
    ($($(#[$doc:meta])* $variant:ident,)*) => {
        /// The API endpoint a job reads.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Endpoint {
            $($(#[$doc])* $variant,)*
        }

        impl Endpoint {
            /// Every endpoint, in registry order.
            pub const ALL: &'static [Endpoint] = &[$(Endpoint::$variant,)*];
        }
    };
}

endpoints! {
    /// giosg `POST /api/reporting/v1/orgs/{org}/chat_sessions`.
    ChatSessions,
    /// giosg `POST /api/events/v2/orgs/{org}/fetch`.
    Events,
    /// giosg `POST /api/reporting/workflow/v1/orgs/{org}/query/`.
    Workflow,
    /// giosg `GET /api/v4/reporting/realtime/rooms` (snapshot).
    RealtimeRooms,
    /// giosg `GET /api/v4/reporting/realtime/users` (snapshot).
    RealtimeUsers,
    /// Thulium `GET /api/chats/reports/summary`.
    ChatSummary,
    /// Comm100 `GET livechat/realTime/Agents` (snapshot).
    Agents,
    /// Comm100 `GET livechat/realTime/Queue` (snapshot).
    Queue,
    /// Comm100 `GET livechat/realTime/Today` (snapshot).
    Today,
    /// Comm100 `GET livechat/realTime/RightNow` (snapshot).
    RightNow,
}

/// What the configuration knows of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointInfo {
    /// Its name in job files (`endpoint: chat_sessions`), also used in definition hashes.
    pub name: &'static str,
    /// The source kind that serves it.
    pub vendor: SourceKind,
    /// Whether it has history (windowed jobs) or only a current state (snapshot jobs).
    pub kind: JobKind,
    /// The job-file keys it reads besides those of every job (`name`, `description`, `source`,
    /// `endpoint`, `kind`, `schedule`, `table`, `time_zone`) and, for windowed endpoints, those
    /// of every windowed job ([`WINDOWED_KEYS`]).
    pub keys: &'static [&'static str],
    /// The dimensions its `filters` and `aggregations[].field` may name.
    pub dimensions: &'static [(&'static str, DimensionKind)],
    /// The aggregation types its `aggregations` may use (empty: it takes none).
    pub aggregations: &'static [AggregationKind],
}

/// The keys of every windowed job (history, loaded window by window).
pub const WINDOWED_KEYS: &[&str] = &["window", "start", "lookback_windows", "settle_secs", "include_partial"];

const ALL_AGGREGATIONS: &[AggregationKind] =
    &[AggregationKind::Count, AggregationKind::Sum, AggregationKind::Avg, AggregationKind::HyperUnique];

impl Endpoint {
    /// The registry entry of this endpoint.
    pub fn info(self) -> EndpointInfo {
        use JobKind::{Snapshot, Windowed};
        use SourceKind::{Comm100, Giosg, Thulium};
        let (name, vendor, kind, keys, dimensions, aggregations): (_, _, _, &'static [&'static str], _, _) = match self
        {
            Endpoint::ChatSessions => (
                "chat_sessions",
                Giosg,
                Windowed,
                &["max_windows_per_request", "granularity", "scopes", "rooms", "aggregations", "filters"],
                DIMENSIONS,
                ALL_AGGREGATIONS,
            ),
            Endpoint::Events => (
                "events",
                Giosg,
                Windowed,
                &[
                    "max_windows_per_request",
                    "granularity",
                    "scopes",
                    "aggregations",
                    "filters",
                    "vendor",
                    "event_sources",
                    "bucketed",
                ],
                EVENT_DIMENSIONS,
                &[AggregationKind::Count, AggregationKind::Sum, AggregationKind::Avg],
            ),
            Endpoint::Workflow => (
                "workflow",
                Giosg,
                Windowed,
                &["aggregations", "where", "bucketed"],
                DIMENSIONS,
                &[AggregationKind::Avg],
            ),
            Endpoint::RealtimeRooms => ("realtime_rooms", Giosg, Snapshot, &["rooms", "include_shared"], &[], &[]),
            Endpoint::RealtimeUsers => ("realtime_users", Giosg, Snapshot, &["user_ids"], &[], &[]),
            Endpoint::ChatSummary => (
                "chat_summary",
                Thulium,
                Windowed,
                &[
                    "max_windows_per_request",
                    "aggregate_by",
                    "user_logins",
                    "chat_queue_ids",
                    "sum_users",
                    "response_threshold",
                    "split_by_login",
                    "page_size",
                ],
                &[],
                &[],
            ),
            Endpoint::Agents => {
                ("agents", Comm100, Snapshot, &["department_id", "include_status_distribution", "page_size"], &[], &[])
            }
            Endpoint::Queue => ("queue", Comm100, Snapshot, &[], &[], &[]),
            Endpoint::Today => ("today", Comm100, Snapshot, &[], &[], &[]),
            Endpoint::RightNow => ("right_now", Comm100, Snapshot, &[], &[], &[]),
        };
        EndpointInfo { name, vendor, kind, keys, dimensions, aggregations }
    }

    /// Its name in job files.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Whether it has history (windowed jobs) or only a current state (snapshot jobs).
    pub fn kind(self) -> JobKind {
        self.info().kind
    }

    /// Whether a job of this endpoint may say `key` (a key of another endpoint is an error, so a
    /// typo or a misplaced key never goes unnoticed).
    pub fn takes(self, key: &str) -> bool {
        let info = self.info();
        (info.kind == JobKind::Windowed && WINDOWED_KEYS.contains(&key)) || info.keys.contains(&key)
    }

    /// The endpoints a source of `vendor` serves, in registry order.
    pub fn of(vendor: SourceKind) -> impl Iterator<Item = Endpoint> {
        Endpoint::ALL.iter().copied().filter(move |e| e.info().vendor == vendor)
    }

    /// The endpoint named `name` in job files.
    pub fn named(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.iter().copied().find(|e| e.name() == name)
    }
}

/// Thulium's `aggregate_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateBy {
    Minute,
    Hour,
    Day,
    HourOfDay,
    Week,
    Month,
    Year,
}

impl AggregateBy {
    /// Every value, by its name in job files and on the wire.
    pub const ALL: [(&'static str, AggregateBy); 7] = [
        ("minute", AggregateBy::Minute),
        ("hour", AggregateBy::Hour),
        ("day", AggregateBy::Day),
        ("hour_of_day", AggregateBy::HourOfDay),
        ("week", AggregateBy::Week),
        ("month", AggregateBy::Month),
        ("year", AggregateBy::Year),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AggregateBy::Minute => "minute",
            AggregateBy::Hour => "hour",
            AggregateBy::Day => "day",
            AggregateBy::HourOfDay => "hour_of_day",
            AggregateBy::Week => "week",
            AggregateBy::Month => "month",
            AggregateBy::Year => "year",
        }
    }
}

/// One `where` condition of a workflow query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowCondition {
    pub field: String,
    pub search: String,
}

/// What a job sends beyond the common keys; one variant per endpoint family.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointParams {
    /// chat_sessions: everything is in the common keys (scopes, rooms, aggregations, filters).
    ChatSessions,
    /// events: the body's `vendor` and `sources` (scopes, aggregations and filters are common).
    Events { vendor: String, sources: Vec<String> },
    /// workflow: the `where` conditions (the `avg` field is the one aggregation's).
    Workflow { conditions: Vec<WorkflowCondition> },
    /// realtime rooms: `room_id` is the job's `rooms`; `include_shared`; `timezone` is the job's.
    RealtimeRooms { include_shared: bool },
    /// realtime users: `user_id` filter.
    RealtimeUsers { user_ids: Vec<String> },
    /// Thulium chat summary.
    ChatSummary {
        aggregate_by: AggregateBy,
        user_logins: Vec<String>,
        chat_queue_ids: Vec<String>,
        sum_users: bool,
        response_threshold: Option<u32>,
        /// One request per login, so each row carries `user_login`.
        split_by_login: bool,
        /// `limit` of each page (1..=100, default 100).
        page_size: u32,
    },
    /// Comm100 Agents.
    Agents { department_id: Option<String>, include_status_distribution: bool, page_size: u32 },
    /// Comm100 Queue, Today, RightNow: no parameters of their own.
    None,
}

impl EndpointParams {
    /// The parameters as their job-file keys and values, for the definition hash: written out
    /// key by key, so renaming a Rust type or variant never changes a stored hash. `None` for
    /// chat_sessions (everything is in the common keys).
    pub fn canonical(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            EndpointParams::ChatSessions => return None,
            EndpointParams::Events { vendor, sources } => json!({"vendor": vendor, "event_sources": sources}),
            EndpointParams::Workflow { conditions } => {
                let conditions: Vec<_> =
                    conditions.iter().map(|c| json!({"field": c.field, "search": c.search})).collect();
                json!({"where": conditions})
            }
            EndpointParams::RealtimeRooms { include_shared } => json!({"include_shared": include_shared}),
            EndpointParams::RealtimeUsers { user_ids } => json!({"user_ids": user_ids}),
            EndpointParams::ChatSummary {
                aggregate_by,
                user_logins,
                chat_queue_ids,
                sum_users,
                response_threshold,
                split_by_login,
                page_size,
            } => json!({
                "aggregate_by": aggregate_by.as_str(),
                "user_logins": user_logins,
                "chat_queue_ids": chat_queue_ids,
                "sum_users": sum_users,
                "response_threshold": response_threshold,
                "split_by_login": split_by_login,
                "page_size": page_size,
            }),
            EndpointParams::Agents { department_id, include_status_distribution, page_size } => json!({
                "department_id": department_id,
                "include_status_distribution": include_status_distribution,
                "page_size": page_size,
            }),
            EndpointParams::None => json!({}),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found_by_name() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::named(e.name()), Some(*e));
        }
        let mut names: Vec<_> = Endpoint::ALL.iter().map(|e| e.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Endpoint::ALL.len());
    }

    #[test]
    fn every_endpoint_belongs_to_one_vendor() {
        let served: usize = [SourceKind::Giosg, SourceKind::Thulium, SourceKind::Comm100]
            .iter()
            .map(|k| Endpoint::of(*k).count())
            .sum();
        assert_eq!(served, Endpoint::ALL.len());
    }

    #[test]
    fn endpoints_with_aggregations_read_the_aggregations_key() {
        for e in Endpoint::ALL {
            let info = e.info();
            assert_eq!(!info.aggregations.is_empty(), e.takes("aggregations"), "{}", info.name);
        }
    }
}

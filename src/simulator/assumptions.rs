//! Switches for what the simulator assumes where the vendors' docs are silent, so that tests can
//! serve the same dataset the way another reading of the docs would (`docs/simulator.md`,
//! "Assumptions and their switches"). The defaults are the simulator's readings; the client must
//! load the same rows under every setting.
//!
//! Owns [`Assumptions`] (server-wide, set by `chatetl simulate` flags, [`super::Simulator::with_assumptions`],
//! [`super::SimState::set_assumptions`] or `PUT /_sim/assumptions`) and [`CountMetricName`]; and
//! [`EventQueries`]: how the events and workflow endpoints take the queries api-docs 001 shows
//! none of (buckets other than `all`, several aggregations), which a client may use only once
//! `chatetl probe` has confirmed them (set by [`super::Simulator::with_event_queries`],
//! [`super::SimState::set_event_queries`] or `PUT /_sim/event-queries`). It is a struct of its own
//! so that the answers' switches above keep their shape.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a chat_sessions answer calls the metric of `{"type": "count", "fields": ["chat_session_id"]}`.
/// A count without fields is `count` under every setting; events always answer `count`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountMetricName {
    /// `count`, one metric whatever the fields (the default).
    #[default]
    Count,
    /// `<field>_count`, one per field (`chat_session_id_count`), by analogy with 002's
    /// `visitor_ids_hyper_unique`.
    FieldCount,
    /// `<field>`, one per field (`chat_session_id`).
    Field,
}

impl CountMetricName {
    /// The names the flag and the admin route take.
    pub const NAMES: [&'static str; 3] = ["count", "field_count", "field"];

    pub fn as_str(self) -> &'static str {
        match self {
            CountMetricName::Count => "count",
            CountMetricName::FieldCount => "field_count",
            CountMetricName::Field => "field",
        }
    }

    /// The metric names of a count on `fields`: one `count` without fields or with the default,
    /// else one per field.
    pub fn names(self, fields: &[String]) -> Vec<String> {
        match self {
            _ if fields.is_empty() => vec!["count".to_string()],
            CountMetricName::Count => vec!["count".to_string()],
            CountMetricName::FieldCount => fields.iter().map(|f| format!("{f}_count")).collect(),
            CountMetricName::Field => fields.to_vec(),
        }
    }
}

impl FromStr for CountMetricName {
    type Err = String;

    fn from_str(s: &str) -> Result<CountMetricName, String> {
        by_name(
            s,
            &CountMetricName::NAMES,
            [CountMetricName::Count, CountMetricName::FieldCount, CountMetricName::Field],
        )
    }
}

/// The value of `values` whose name in `names` (same order) is `s`; the error lists the names.
fn by_name<T: Copy, const N: usize>(s: &str, names: &[&str; N], values: [T; N]) -> Result<T, String> {
    match names.iter().position(|n| *n == s) {
        Some(i) => Ok(values[i]),
        None => Err(format!("`{s}` is not one of {}", names.join(", "))),
    }
}

/// How answers are written where the docs leave it open. `Default` is today's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Assumptions {
    /// What chat_sessions calls a count's metric.
    pub count_metric_name: CountMetricName,
    /// Answers without `group_by` (chat_sessions, events) leave out buckets with no rows instead
    /// of answering them with count 0, and a workflow answer that matched nothing has no line.
    pub omit_empty_buckets: bool,
}

/// How the events endpoint answers a `granularity` other than `all` (001 shows only `all`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBuckets {
    /// Buckets as chat_sessions answers them (Druid's), one `start_time` per bucket (the default).
    #[default]
    Answered,
    /// A 400 naming the granularity, as a server that takes only 001's `all` would answer.
    Refused,
    /// The granularity is ignored: one bucket for the whole interval, labelled with its start (as
    /// a server that reads only 001's keys would answer).
    OneBucket,
}

impl EventBuckets {
    /// The names the flag and the admin route take.
    pub const NAMES: [&'static str; 3] = ["answered", "refused", "one_bucket"];
}

impl FromStr for EventBuckets {
    type Err = String;

    fn from_str(s: &str) -> Result<EventBuckets, String> {
        by_name(s, &EventBuckets::NAMES, [EventBuckets::Answered, EventBuckets::Refused, EventBuckets::OneBucket])
    }
}

/// How the events and workflow endpoints answer a query with several aggregations (events) or
/// averaged fields (workflow); 001 shows one each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventAggregations {
    /// Every aggregation, each metric named as for one (the default).
    #[default]
    Answered,
    /// A 400: one aggregation per query.
    Refused,
    /// Only the first aggregation is answered; the others are left out of `fields` and `data`.
    FirstOnly,
}

impl EventAggregations {
    /// The names the flag and the admin route take.
    pub const NAMES: [&'static str; 3] = ["answered", "refused", "first_only"];
}

impl FromStr for EventAggregations {
    type Err = String;

    fn from_str(s: &str) -> Result<EventAggregations, String> {
        let values = [EventAggregations::Answered, EventAggregations::Refused, EventAggregations::FirstOnly];
        by_name(s, &EventAggregations::NAMES, values)
    }
}

/// How the events and workflow endpoints take queries 001 does not show: the readings behind
/// `assume: {bucketed_events, fused_events}` of a giosg source (`giosg.bucketed_events`,
/// `giosg.fused_events` in `docs/assumptions.md`). `Default` answers both, as chat_sessions does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventQueries {
    /// An events query whose granularity is not `all`.
    pub buckets: EventBuckets,
    /// An events query with several aggregations, a workflow query averaging several fields.
    pub aggregations: EventAggregations,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_metric_names() {
        let f = vec!["chat_session_id".to_string()];
        assert_eq!(CountMetricName::Count.names(&f), ["count"]);
        assert_eq!(CountMetricName::FieldCount.names(&f), ["chat_session_id_count"]);
        assert_eq!(CountMetricName::Field.names(&f), ["chat_session_id"]);
        assert_eq!(CountMetricName::Field.names(&[]), ["count"]);
        for n in CountMetricName::NAMES {
            assert_eq!(n.parse::<CountMetricName>().unwrap().as_str(), n);
        }
        assert!("fields".parse::<CountMetricName>().unwrap_err().contains("count, field_count, field"));
        let a: Assumptions = serde_json::from_str(r#"{"count_metric_name": "field_count"}"#).unwrap();
        assert_eq!(a, Assumptions { count_metric_name: CountMetricName::FieldCount, omit_empty_buckets: false });
    }

    #[test]
    fn event_query_switches_parse_by_name() {
        for n in EventBuckets::NAMES {
            let b: EventBuckets = n.parse().unwrap();
            assert_eq!(serde_json::to_value(b).unwrap(), n);
        }
        for n in EventAggregations::NAMES {
            let a: EventAggregations = n.parse().unwrap();
            assert_eq!(serde_json::to_value(a).unwrap(), n);
        }
        assert!("one-bucket".parse::<EventBuckets>().unwrap_err().contains("answered, refused, one_bucket"));
        let q: EventQueries = serde_json::from_str(r#"{"buckets": "refused"}"#).unwrap();
        assert_eq!(q, EventQueries { buckets: EventBuckets::Refused, aggregations: EventAggregations::Answered });
        assert!(serde_json::from_str::<EventQueries>(r#"{"bucket": "refused"}"#).is_err(), "unknown keys refused");
    }
}

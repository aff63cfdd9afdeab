//! Switches for what the simulator assumes where the vendors' docs are silent, so that tests can
//! serve the same dataset the way another reading of the docs would (`docs/simulator.md`,
//! "Assumptions and their switches"). The defaults are the simulator's readings; the client must
//! load the same rows under every setting.
//!
//! Owns [`Assumptions`] (server-wide, set by `chatetl simulate` flags, [`super::Simulator::with_assumptions`],
//! [`super::SimState::set_assumptions`] or `PUT /_sim/assumptions`) and [`CountMetricName`].

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
        match s {
            "count" => Ok(CountMetricName::Count),
            "field_count" => Ok(CountMetricName::FieldCount),
            "field" => Ok(CountMetricName::Field),
            other => Err(format!("`{other}` is not one of {}", CountMetricName::NAMES.join(", "))),
        }
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
}

//! The giosg chat_sessions query language (api-docs 002), as typed request and response bodies.
//!
//! Owns: the request body (`ChatSessionsQuery`: interval, granularity, group_by, aggregations,
//! filters), the dimension catalogue with the aggregations each dimension allows, the metric
//! names of the response, and structural validation (`validate`). Job files (`config`) are
//! checked against it and the giosg clients (`source::giosg`) send it; it imports neither. The
//! simulator has wire types of its own, so it cannot agree with the client by construction.
//!
//! Assumptions where 002 is silent (documented in `docs/simulator.md`):
//! - `not` takes a single `field`, as in Druid's filter language.
//! - `bound` values may be numbers or strings (001's short-chats bodies send `"lower": "2"`).
//! - `count` may carry `fields` (001 sends `["chat_session_id"]`); they do not change the count.
//! - metric names: `count`, `<field>_sum`, `<field>_avg`, `<field>_hyper_unique` (the last is 002's).

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One query against `POST /api/reporting/v1/orgs/{org}/chat_sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSessionsQuery {
    /// The time range (both ends inclusive, as the docs' `…T23:59:59.999` ends show) and the zone
    /// used for bucketing.
    pub interval: Interval,
    /// The bucket size of the result.
    pub granularity: Granularity,
    /// Dimensions to group by; empty for one row per bucket.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// The metrics to compute per bucket and group.
    pub aggregations: Vec<Aggregation>,
    /// Which session rows are included; absent means all rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filter>,
}

/// `interval` of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    /// First instant included, with its offset (`2019-01-01T00:00:00.000+02:00`).
    #[serde(with = "serde_ms_offset")]
    pub start: DateTime<FixedOffset>,
    /// Last instant included (`2019-01-01T23:59:59.999+02:00`).
    #[serde(with = "serde_ms_offset")]
    pub end: DateTime<FixedOffset>,
    /// IANA zone for bucket boundaries (`Europe/Helsinki`).
    pub time_zone: String,
}

/// Bucket size. 002 names `all`, `hour`, `day`, `week` and `month`; the simulator also accepts
/// Druid's other simple granularities listed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    All,
    Minute,
    FifteenMinute,
    ThirtyMinute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

/// One aggregation: `{"type": "sum", "fields": ["sales"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregation {
    #[serde(rename = "type")]
    pub kind: AggregationKind,
    /// The dimensions aggregated; one metric per field. `count` needs none.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// The aggregation types of 002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregationKind {
    #[serde(rename = "count")]
    Count,
    #[serde(rename = "sum")]
    Sum,
    #[serde(rename = "avg")]
    Avg,
    #[serde(rename = "hyperUnique")]
    HyperUnique,
}

/// A filter of the query language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Filter {
    /// Matches rows whose dimension equals `value`; a multi-value dimension matches if any
    /// value does; `null` matches a missing value or an empty list.
    Selector { dimension: String, value: Value },
    /// Range on one dimension; each bound is optional and inclusive unless marked strict.
    Bound {
        dimension: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lower: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upper: Option<Value>,
        #[serde(default, rename = "lowerStrict", skip_serializing_if = "std::ops::Not::not")]
        lower_strict: bool,
        #[serde(default, rename = "upperStrict", skip_serializing_if = "std::ops::Not::not")]
        upper_strict: bool,
        #[serde(default)]
        ordering: Ordering,
    },
    /// All of `fields` match.
    And { fields: Vec<Filter> },
    /// Any of `fields` matches.
    Or { fields: Vec<Filter> },
    /// `field` does not match.
    Not { field: Box<Filter> },
}

/// How a `bound` compares values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    Lexicographic,
    Numeric,
}

/// What a dimension holds, which decides how it filters, groups and aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimensionKind {
    /// One string or null.
    Text,
    /// A list of strings (expands in `group_by`, matches if any value matches).
    Multi,
    /// A number (summable and averageable).
    Number,
}

/// Every dimension of 002 with its kind.
pub const DIMENSIONS: &[(&str, DimensionKind)] = &[
    ("chat_initiator", DimensionKind::Text),
    ("chat_session_id", DimensionKind::Text),
    ("chat_type", DimensionKind::Text),
    ("chatted_organization_ids", DimensionKind::Multi),
    ("order_count", DimensionKind::Number),
    ("owner_organization_id", DimensionKind::Text),
    ("room_ids", DimensionKind::Multi),
    ("sales", DimensionKind::Number),
    ("scope", DimensionKind::Text),
    ("subscription_sales", DimensionKind::Number),
    ("team_id", DimensionKind::Text),
    ("user_id", DimensionKind::Text),
    ("user_message_count", DimensionKind::Number),
    ("user_organization_id", DimensionKind::Text),
    ("visitor_ids", DimensionKind::Multi),
    ("visitor_message_count", DimensionKind::Number),
    ("visitor_session_ids", DimensionKind::Multi),
];

/// The dimensions of an event (api-docs 001's events bodies filter on `category` and `action`
/// and group by `user_id`; the rest are what chatetl assumes an event carries).
pub const EVENT_DIMENSIONS: &[(&str, DimensionKind)] = &[
    ("action", DimensionKind::Text),
    ("category", DimensionKind::Text),
    ("room_id", DimensionKind::Text),
    ("source", DimensionKind::Text),
    ("team_id", DimensionKind::Text),
    ("user_id", DimensionKind::Text),
    ("value", DimensionKind::Number),
    ("vendor", DimensionKind::Text),
];

/// The kind of dimension `name`, or `None` when 002 has no such dimension.
pub fn dimension_kind(name: &str) -> Option<DimensionKind> {
    DIMENSIONS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

impl AggregationKind {
    /// The dimensions 002 allows this aggregation on (`count` takes any or none).
    pub fn allowed_fields(self) -> &'static [&'static str] {
        const NUMERIC: &[&str] =
            &["order_count", "user_message_count", "visitor_message_count", "sales", "subscription_sales"];
        match self {
            AggregationKind::Count => &[],
            AggregationKind::Sum | AggregationKind::Avg => NUMERIC,
            AggregationKind::HyperUnique => &["chat_session_id", "visitor_ids", "visitor_session_ids"],
        }
    }

    /// The name of this aggregation in the API (`hyperUnique`).
    pub fn api_name(self) -> &'static str {
        match self {
            AggregationKind::Count => "count",
            AggregationKind::Sum => "sum",
            AggregationKind::Avg => "avg",
            AggregationKind::HyperUnique => "hyperUnique",
        }
    }
}

impl Aggregation {
    /// The response metric names this aggregation produces, in order: `count` for count, else
    /// one `<field>_<suffix>` per field (`visitor_ids_hyper_unique`, `sales_sum`, `sales_avg`).
    pub fn metric_names(&self) -> Vec<String> {
        let suffix = match self.kind {
            AggregationKind::Count => return vec!["count".to_string()],
            AggregationKind::Sum => "sum",
            AggregationKind::Avg => "avg",
            AggregationKind::HyperUnique => "hyper_unique",
        };
        self.fields.iter().map(|f| format!("{f}_{suffix}")).collect()
    }
}

impl ChatSessionsQuery {
    /// Checks what serde cannot: known dimensions, aggregations on allowed fields, bounds with a
    /// value, a sane interval and zone. Returns every problem, each naming the path and the value.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if crate::time::parse_tz(&self.interval.time_zone).is_err() {
            errors.push(format!("interval.time_zone: unknown time zone `{}`", self.interval.time_zone));
        }
        if self.interval.end < self.interval.start {
            errors.push(format!(
                "interval: end {} is before start {}",
                self.interval.end.to_rfc3339(),
                self.interval.start.to_rfc3339()
            ));
        }
        for (i, dim) in self.group_by.iter().enumerate() {
            if dimension_kind(dim).is_none() {
                errors.push(format!("group_by[{i}]: unknown dimension `{dim}`"));
            }
        }
        if self.aggregations.is_empty() {
            errors.push("aggregations: at least one aggregation is required".to_string());
        }
        let mut names = std::collections::HashSet::new();
        for (i, agg) in self.aggregations.iter().enumerate() {
            let allowed = agg.kind.allowed_fields();
            if agg.kind != AggregationKind::Count && agg.fields.is_empty() {
                errors.push(format!("aggregations[{i}]: `{}` needs at least one field", agg.kind.api_name()));
            }
            for (j, field) in agg.fields.iter().enumerate() {
                if dimension_kind(field).is_none() {
                    errors.push(format!("aggregations[{i}].fields[{j}]: unknown dimension `{field}`"));
                } else if agg.kind != AggregationKind::Count && !allowed.contains(&field.as_str()) {
                    errors.push(format!(
                        "aggregations[{i}].fields[{j}]: `{}` is not available for `{field}` (allowed: {})",
                        agg.kind.api_name(),
                        allowed.join(", ")
                    ));
                }
            }
            for name in agg.metric_names() {
                if !names.insert(name.clone()) {
                    errors.push(format!("aggregations[{i}]: metric `{name}` is requested twice"));
                }
            }
        }
        if let Some(filter) = &self.filters {
            filter.validate("filters", &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

impl Filter {
    /// Structural checks of this filter against 002's dimensions, pushing each problem prefixed
    /// with `path`.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        self.validate_in(path, DIMENSIONS, errors)
    }

    /// Structural checks of this filter against `dimensions`.
    pub fn validate_in(&self, path: &str, dimensions: &[(&str, DimensionKind)], errors: &mut Vec<String>) {
        let check_dimension = |path: &str, dimension: &str, errors: &mut Vec<String>| {
            if !dimensions.iter().any(|(n, _)| *n == dimension) {
                errors.push(format!("{path}.dimension: unknown dimension `{dimension}`"));
            }
        };
        match self {
            Filter::Selector { dimension, value } => {
                check_dimension(path, dimension, errors);
                if !(value.is_string() || value.is_number() || value.is_null() || value.is_boolean()) {
                    errors.push(format!("{path}.value: expected a string, number or null, found {value}"));
                }
            }
            Filter::Bound { dimension, lower, upper, ordering, .. } => {
                check_dimension(path, dimension, errors);
                if lower.is_none() && upper.is_none() {
                    errors.push(format!("{path}: bound on `{dimension}` needs `lower` or `upper`"));
                }
                for (name, v) in [("lower", lower), ("upper", upper)] {
                    let Some(v) = v else { continue };
                    let ok = match ordering {
                        Ordering::Numeric => bound_number(v).is_some(),
                        Ordering::Lexicographic => v.is_string() || v.is_number(),
                    };
                    if !ok {
                        errors.push(format!("{path}.{name}: `{v}` is not a valid {ordering:?} bound"));
                    }
                }
            }
            Filter::And { fields } | Filter::Or { fields } => {
                for (i, f) in fields.iter().enumerate() {
                    f.validate_in(&format!("{path}.fields[{i}]"), dimensions, errors);
                }
            }
            Filter::Not { field } => field.validate_in(&format!("{path}.field"), dimensions, errors),
        }
    }
}

/// A bound value as a number: JSON numbers, and strings holding one (`"2"`).
pub fn bound_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// The response body: `{"fields": [...], "data": [[...], ...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSessionsResponse {
    pub fields: Vec<ResponseField>,
    pub data: Vec<Vec<Value>>,
}

/// One column of the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseField {
    pub name: String,
    /// `dimension` (start_time and group_by columns) or `metric`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Serde adapter: `DateTime<FixedOffset>` as giosg writes it (`2019-01-01T00:00:00.000+02:00`).
pub mod serde_ms_offset {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, false))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time `{s}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{
      "interval": {"start": "2019-01-01T00:00:00.000+02:00", "end": "2019-01-01T23:59:59.999+02:00",
                   "time_zone": "Europe/Helsinki"},
      "granularity": "all", "group_by": [],
      "aggregations": [{"type": "hyperUnique", "fields": ["visitor_ids"]}],
      "filters": {"type": "and", "fields": [
        {"type": "selector", "dimension": "scope", "value": "org"},
        {"type": "selector", "dimension": "chat_type", "value": "visitor"},
        {"type": "selector", "dimension": "chat_initiator", "value": "visitor"}]}}"#;

    #[test]
    fn parses_and_reserializes_the_docs_example() {
        let q: ChatSessionsQuery = serde_json::from_str(DOC_EXAMPLE).unwrap();
        q.validate().unwrap();
        assert_eq!(q.aggregations[0].metric_names(), vec!["visitor_ids_hyper_unique"]);
        let back = serde_json::to_value(&q).unwrap();
        let orig: Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn unknown_filter_type_is_named() {
        let body = DOC_EXAMPLE
            .replace(r#""type": "selector", "dimension": "scope""#, r#""type": "regex", "dimension": "scope""#);
        let err = serde_json::from_str::<ChatSessionsQuery>(&body).unwrap_err().to_string();
        assert!(err.contains("regex"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem_with_its_path() {
        let mut q: ChatSessionsQuery = serde_json::from_str(DOC_EXAMPLE).unwrap();
        q.group_by = vec!["colour".into()];
        q.aggregations.push(Aggregation { kind: AggregationKind::Sum, fields: vec!["chat_type".into()] });
        q.filters =
            Some(Filter::Not { field: Box::new(Filter::Selector { dimension: "mood".into(), value: Value::Null }) });
        let errs = q.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("group_by[0]") && errs[0].contains("colour"));
        assert!(errs[1].contains("aggregations[1].fields[0]") && errs[1].contains("chat_type"));
        assert!(errs[2].contains("filters.field.dimension") && errs[2].contains("mood"));
    }

    #[test]
    fn bound_numbers_accept_strings() {
        assert_eq!(bound_number(&Value::from("2")), Some(2.0));
        assert_eq!(bound_number(&Value::from(1)), Some(1.0));
        assert_eq!(bound_number(&Value::from("two")), None);
    }
}

//! The simulator's own wire types for giosg's reporting endpoints, written from the docs:
//! api-docs 002 (`POST /api/reporting/v1/orgs/{org}/chat_sessions`: the query language, its
//! dimensions and aggregations, the `{fields, data}` response) and api-docs 001 (the metric
//! catalogue's request bodies for chat_sessions, `events/v2/…/fetch` and
//! `reporting/workflow/v1/…/query/`).
//!
//! Owns: [`ChatSessionsRequest`], [`EventsRequest`] and [`WorkflowRequest`] (the bodies the
//! simulated handlers parse), [`Filter`] (selector / bound / and / or / not), [`ReportResponse`]
//! (what all three answer), the dimension tables requests are validated against
//! ([`CHAT_SESSION_DIMENSIONS`] from 002's table, [`EVENT_DIMENSIONS`] from the simulator's
//! event records), and `validate` on each request (what serde cannot check).
//!
//! These types are deliberately not the client's (the `source::giosg` module): the simulator parses
//! what the docs say a vendor accepts, so a wrong guess in the client shows up as a 400 from the
//! simulator instead of agreeing with itself. The unit tests below parse every body of
//! `tests/fixtures/api-docs-001` and `api-docs-002` with these types and write 002's example
//! response with them.
//!
//! Strictness. 002 names the top-level attributes and 001/002's examples show every key used;
//! every object here rejects keys it does not know (`deny_unknown_fields`), so a misspelled
//! `granulrity` or `lowerstrict` is a 400 naming it rather than silently ignored. Values keep the
//! JSON type they were sent with (`"lower": "2"` stays a string, as 001 sends it), so a parsed
//! body writes back as the same JSON.
//!
//! Where the docs are silent (also in `docs/simulator.md`):
//! - `filters` is one filter object (both docs' examples; 002's attribute table writes
//!   `[[Filter, ...] ]`, which no example uses); optional, absent means every row;
//! - the filter language is Druid's, as 001's bodies are: `selector` (`value` a string, a number
//!   or null), `bound` (`lower`/`upper` numbers or numeric strings, `lowerStrict`/`upperStrict`,
//!   `ordering` `numeric` or `lexicographic`, the latter the default), `and`/`or` over `fields`,
//!   and `not` over one `field` (no doc shows `not`);
//! - `granularity`: the docs show `day` and `all`; Druid's simple granularities `minute`,
//!   `fifteen_minute`, `thirty_minute`, `hour`, `week`, `month`, `quarter` and `year` are
//!   accepted too;
//! - `group_by` may be left out (002: "leave empty if you don't want to group");
//! - `count` may carry `fields` (001 sends `["chat_session_id"]`) naming known dimensions; they do
//!   not change the count (002: count "does not need fields defined");
//! - events' `aggregations` are plain names: 001 shows `count` and `avg`; `sum` is accepted too
//!   (the simulator's assumption, over the events' `value`);
//! - workflow's `where` may be left out (no conditions).

use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

// ---------------------------------------------------------------------------------------------
// chat_sessions (api-docs 002)

/// The body of `POST /api/reporting/v1/orgs/{org}/chat_sessions` (002's "Request payload").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSessionsRequest {
    /// "Time interval of the query."
    pub interval: Interval,
    /// "Granularity of the query."
    pub granularity: Granularity,
    /// "All dimensions to be used in grouping the query results. Leave empty if you don't want
    /// to group by any dimension."
    #[serde(default)]
    pub group_by: Vec<String>,
    /// "All different aggregations to be calculated in this query."
    pub aggregations: Vec<Aggregation>,
    /// "Filter for selecting the session rows for the query."
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filter>,
}

/// `interval`: `{"start": "2019-01-01T00:00:00.000+02:00", "end": "2019-01-01T23:59:59.999+02:00",
/// "time_zone": "Europe/Helsinki"}` (002's example). Both ends are included (the docs end a day at
/// `…T23:59:59.999`); the zone decides bucket boundaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    #[serde(with = "rfc3339_ms")]
    pub start: DateTime<FixedOffset>,
    #[serde(with = "rfc3339_ms")]
    pub end: DateTime<FixedOffset>,
    /// An IANA zone name; checked by `validate`.
    pub time_zone: String,
}

/// `granularity`: the docs show `day` and `all`; the rest are Druid's simple granularities.
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

/// One aggregation: `{"type": "hyperUnique", "fields": ["visitor_ids"]}` (002's example).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregation {
    #[serde(rename = "type")]
    pub kind: AggregationType,
    /// The dimensions aggregated, one metric each. `count` "does not need fields defined"
    /// (absent and present are both kept as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

impl Aggregation {
    /// The fields, none when absent.
    pub fn fields(&self) -> &[String] {
        self.fields.as_deref().unwrap_or(&[])
    }

    /// The metrics this aggregation answers, in order, with the field each reads: one `count`
    /// whatever the fields, else one per field (`sales_sum`, `visitor_ids_hyper_unique`).
    pub fn metrics(&self) -> Vec<(Option<&str>, String)> {
        match self.kind {
            AggregationType::Count => vec![(None, "count".to_string())],
            k => self.fields().iter().map(|f| (Some(f.as_str()), k.metric_name(f))).collect(),
        }
    }
}

/// 002's "Available aggregations", spelled as the docs spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregationType {
    #[serde(rename = "avg")]
    Avg,
    #[serde(rename = "sum")]
    Sum,
    #[serde(rename = "hyperUnique")]
    HyperUnique,
    #[serde(rename = "count")]
    Count,
}

impl AggregationType {
    /// The name in a request.
    pub fn as_str(self) -> &'static str {
        match self {
            AggregationType::Avg => "avg",
            AggregationType::Sum => "sum",
            AggregationType::HyperUnique => "hyperUnique",
            AggregationType::Count => "count",
        }
    }

    /// 002's "Available for dimensions" column; `None` for count ("-": it counts rows).
    pub fn available_for(self) -> Option<&'static [&'static str]> {
        const NUMBERS: &[&str] =
            &["order_count", "user_message_count", "visitor_message_count", "sales", "subscription_sales"];
        match self {
            AggregationType::Avg | AggregationType::Sum => Some(NUMBERS),
            AggregationType::HyperUnique => Some(&["chat_session_id", "visitor_ids", "visitor_session_ids"]),
            AggregationType::Count => None,
        }
    }

    /// The response's metric name for `field`: `count` (whatever the field); `<field>_sum`,
    /// `<field>_avg` (assumed); `<field>_hyper_unique` (002's example response:
    /// `visitor_ids_hyper_unique`).
    pub fn metric_name(self, field: &str) -> String {
        match self {
            AggregationType::Count => "count".to_string(),
            AggregationType::Sum => format!("{field}_sum"),
            AggregationType::Avg => format!("{field}_avg"),
            AggregationType::HyperUnique => format!("{field}_hyper_unique"),
        }
    }
}

/// A filter, Druid's language as 001's bodies use it (tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Filter {
    /// `{"type": "selector", "dimension": "chat_type", "value": "visitor"}`: the row's value
    /// equals `value` (any value of a list dimension); null matches null and an empty list.
    Selector { dimension: String, value: SelectorValue },
    /// `{"type": "bound", "dimension": "user_message_count", "lower": 2, "ordering": "numeric"}`:
    /// the value lies within the bounds, each optional and inclusive unless strict.
    Bound {
        dimension: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lower: Option<BoundValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upper: Option<BoundValue>,
        #[serde(rename = "lowerStrict", default, skip_serializing_if = "Option::is_none")]
        lower_strict: Option<bool>,
        #[serde(rename = "upperStrict", default, skip_serializing_if = "Option::is_none")]
        upper_strict: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ordering: Option<Ordering>,
    },
    /// Every filter of `fields` matches.
    And { fields: Vec<Filter> },
    /// Some filter of `fields` matches.
    Or { fields: Vec<Filter> },
    /// `field` does not match (Druid's shape; no doc shows it).
    Not { field: Box<Filter> },
}

/// A selector's `value`: a string (every doc example), a number or null.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectorValue {
    Null,
    Text(String),
    Number(Number),
}

impl Serialize for SelectorValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SelectorValue::Null => s.serialize_unit(),
            SelectorValue::Text(t) => s.serialize_str(t),
            SelectorValue::Number(n) => n.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SelectorValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(SelectorValue::Null),
            Value::String(t) => Ok(SelectorValue::Text(t)),
            Value::Number(n) => Ok(SelectorValue::Number(n)),
            other => {
                Err(serde::de::Error::custom(format!("a selector's value is a string, a number or null, not {other}")))
            }
        }
    }
}

/// A bound's `lower`/`upper`: a number (`"lower": 2`) or a string (`"lower": "2"`, as 001's
/// short-chats bodies send; a numeric bound reads it as a number).
#[derive(Debug, Clone, PartialEq)]
pub enum BoundValue {
    Text(String),
    Number(Number),
}

impl BoundValue {
    /// As a number: a JSON number, or a string holding one.
    pub fn number(&self) -> Option<f64> {
        match self {
            BoundValue::Number(n) => n.as_f64(),
            BoundValue::Text(t) => t.trim().parse().ok(),
        }
    }

    /// As text, for a lexicographic comparison.
    pub fn text(&self) -> String {
        match self {
            BoundValue::Number(n) => n.to_string(),
            BoundValue::Text(t) => t.clone(),
        }
    }
}

impl Serialize for BoundValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BoundValue::Text(t) => s.serialize_str(t),
            BoundValue::Number(n) => n.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BoundValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(t) => Ok(BoundValue::Text(t)),
            Value::Number(n) => Ok(BoundValue::Number(n)),
            other => Err(serde::de::Error::custom(format!("a bound is a number or a string, not {other}"))),
        }
    }
}

/// A bound's `ordering`: 001 sends `numeric`; `lexicographic` is Druid's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    Lexicographic,
    Numeric,
}

/// What a dimension holds, which decides how it filters, groups and renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimensionType {
    /// A string, or null (`team_id`, `user_id`, `user_organization_id` outside their scope).
    Text,
    /// A list of strings ("unique ids of …"): one group per value, a selector matches any value.
    TextList,
    /// A number ("number of …", "sum of …"): summable and averageable.
    Number,
}

/// One dimension of a record, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimension {
    pub name: &'static str,
    pub kind: DimensionType,
}

const fn dim(name: &'static str, kind: DimensionType) -> Dimension {
    Dimension { name, kind }
}

/// 002's "Available dimensions", in its order, each typed from its description.
pub const CHAT_SESSION_DIMENSIONS: &[Dimension] = &[
    dim("chat_initiator", DimensionType::Text),
    dim("chat_session_id", DimensionType::Text),
    dim("chat_type", DimensionType::Text),
    dim("chatted_organization_ids", DimensionType::TextList),
    dim("order_count", DimensionType::Number),
    dim("owner_organization_id", DimensionType::Text),
    dim("room_ids", DimensionType::TextList),
    dim("sales", DimensionType::Number),
    dim("scope", DimensionType::Text),
    dim("subscription_sales", DimensionType::Number),
    dim("team_id", DimensionType::Text),
    dim("user_id", DimensionType::Text),
    dim("user_message_count", DimensionType::Number),
    dim("user_organization_id", DimensionType::Text),
    dim("visitor_ids", DimensionType::TextList),
    dim("visitor_message_count", DimensionType::Number),
    dim("visitor_session_ids", DimensionType::TextList),
];

/// The dimension `name` of `table`.
pub fn dimension(table: &[Dimension], name: &str) -> Option<Dimension> {
    table.iter().find(|d| d.name == name).copied()
}

impl ChatSessionsRequest {
    /// What serde cannot check: a known zone, `end` not before `start`, known dimensions,
    /// aggregations on the dimensions 002 allows, one metric per name, and sound filters. Every
    /// problem, each naming where it is.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.interval.validate(&mut errors);
        group_by(&self.group_by, CHAT_SESSION_DIMENSIONS, &mut errors);
        if self.aggregations.is_empty() {
            errors.push("aggregations: at least one aggregation is required".to_string());
        }
        let mut names = std::collections::HashSet::new();
        for (i, agg) in self.aggregations.iter().enumerate() {
            let at = format!("aggregations[{i}]");
            match agg.kind.available_for() {
                None => {
                    for (j, f) in agg.fields().iter().enumerate() {
                        if dimension(CHAT_SESSION_DIMENSIONS, f).is_none() {
                            errors.push(format!("{at}.fields[{j}]: unknown dimension `{f}`"));
                        }
                    }
                }
                Some(allowed) => {
                    if agg.fields().is_empty() {
                        errors.push(format!("{at}: `{}` needs at least one field", agg.kind.as_str()));
                    }
                    for (j, f) in agg.fields().iter().enumerate() {
                        if dimension(CHAT_SESSION_DIMENSIONS, f).is_none() {
                            errors.push(format!("{at}.fields[{j}]: unknown dimension `{f}`"));
                        } else if !allowed.contains(&f.as_str()) {
                            errors.push(format!(
                                "{at}.fields[{j}]: `{}` is not available for `{f}` (002 allows it for {})",
                                agg.kind.as_str(),
                                allowed.join(", ")
                            ));
                        }
                    }
                }
            }
            for (_, name) in agg.metrics() {
                if !names.insert(name.clone()) {
                    errors.push(format!("{at}: metric `{name}` is requested twice"));
                }
            }
        }
        if let Some(f) = &self.filters {
            f.validate("filters", CHAT_SESSION_DIMENSIONS, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

impl Interval {
    fn validate(&self, errors: &mut Vec<String>) {
        if crate::time::parse_tz(&self.time_zone).is_err() {
            errors.push(format!("interval.time_zone: unknown time zone `{}`", self.time_zone));
        }
        if self.end < self.start {
            errors.push(format!(
                "interval: end {} is before start {}",
                self.end.to_rfc3339_opts(SecondsFormat::Millis, false),
                self.start.to_rfc3339_opts(SecondsFormat::Millis, false)
            ));
        }
    }
}

fn group_by(dims: &[String], table: &[Dimension], errors: &mut Vec<String>) {
    for (i, d) in dims.iter().enumerate() {
        if dimension(table, d).is_none() {
            errors.push(format!("group_by[{i}]: unknown dimension `{d}`"));
        }
    }
}

impl Filter {
    /// Checks this filter against the dimensions of `table`, pushing each problem prefixed with
    /// `path` (`filters.fields[2].lower`).
    pub fn validate(&self, path: &str, table: &[Dimension], errors: &mut Vec<String>) {
        let known = |dimension: &str, errors: &mut Vec<String>| {
            if self::dimension(table, dimension).is_none() {
                errors.push(format!("{path}.dimension: unknown dimension `{dimension}`"));
            }
        };
        match self {
            Filter::Selector { dimension, .. } => known(dimension, errors),
            Filter::Bound { dimension, lower, upper, ordering, .. } => {
                known(dimension, errors);
                if lower.is_none() && upper.is_none() {
                    errors.push(format!("{path}: a bound on `{dimension}` needs `lower` or `upper`"));
                }
                if ordering.unwrap_or_default() == Ordering::Numeric {
                    for (name, b) in [("lower", lower), ("upper", upper)] {
                        if let Some(b) = b
                            && b.number().is_none()
                        {
                            errors.push(format!("{path}.{name}: `{}` is not a number (ordering numeric)", b.text()));
                        }
                    }
                }
            }
            Filter::And { fields } | Filter::Or { fields } => {
                for (i, f) in fields.iter().enumerate() {
                    f.validate(&format!("{path}.fields[{i}]"), table, errors);
                }
            }
            Filter::Not { field } => field.validate(&format!("{path}.field"), table, errors),
        }
    }
}

/// The answer of chat_sessions (002's "Response payload"), and, as the simulator assumes, of
/// events and workflow: `{"fields": [{"name": "start_time", "type": "dimension"}, …],
/// "data": [["2019-01-01T00:00:00.000+02:00", 51.01]]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportResponse {
    /// "Field of the result."
    pub fields: Vec<ResponseField>,
    /// "Values for fields in the same order as in fields array, one Datapoint for each bucket."
    pub data: Vec<Vec<Value>>,
}

/// One column of a [`ReportResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseField {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
}

impl ResponseField {
    pub fn dimension(name: impl Into<String>) -> ResponseField {
        ResponseField { name: name.into(), kind: FieldType::Dimension }
    }

    pub fn metric(name: impl Into<String>) -> ResponseField {
        ResponseField { name: name.into(), kind: FieldType::Metric }
    }
}

/// `dimension` (start_time and the group_by columns) or `metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Dimension,
    Metric,
}

// ---------------------------------------------------------------------------------------------
// events (api-docs 001)

/// The body of `POST /api/events/v2/orgs/{org}/fetch`, as 001's events bodies are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// 001: `["trusted"]`.
    pub sources: Vec<String>,
    pub interval: Interval,
    pub granularity: Granularity,
    #[serde(default)]
    pub group_by: Vec<String>,
    /// The organization again (001 sends it next to the path's); must equal the path's.
    pub organization_id: String,
    /// 001: `com.giosg.chat`.
    pub vendor: String,
    /// Plain names: 001 sends `["avg"]` and `["count"]`.
    pub aggregations: Vec<EventAggregation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filter>,
}

/// An events aggregation; its metric is named as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAggregation {
    Count,
    Sum,
    Avg,
}

impl EventAggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAggregation::Count => "count",
            EventAggregation::Sum => "sum",
            EventAggregation::Avg => "avg",
        }
    }
}

/// What an event carries as the events endpoint reads it. 001 filters on `category` and
/// `action` and groups by `user_id`; the rest are the simulator's event record's fields.
pub const EVENT_DIMENSIONS: &[Dimension] = &[
    dim("action", DimensionType::Text),
    dim("category", DimensionType::Text),
    dim("room_id", DimensionType::Text),
    dim("source", DimensionType::Text),
    dim("team_id", DimensionType::Text),
    dim("user_id", DimensionType::Text),
    dim("value", DimensionType::Number),
    dim("vendor", DimensionType::Text),
];

impl EventsRequest {
    /// What serde cannot check, every problem naming where it is.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.interval.validate(&mut errors);
        if self.sources.is_empty() {
            errors.push("sources: at least one source is required".to_string());
        }
        group_by(&self.group_by, EVENT_DIMENSIONS, &mut errors);
        if self.aggregations.is_empty() {
            errors.push("aggregations: at least one aggregation is required".to_string());
        }
        for (i, a) in self.aggregations.iter().enumerate() {
            if self.aggregations[..i].contains(a) {
                errors.push(format!("aggregations[{i}]: `{}` is requested twice", a.as_str()));
            }
        }
        if let Some(f) = &self.filters {
            f.validate("filters", EVENT_DIMENSIONS, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

// ---------------------------------------------------------------------------------------------
// workflow (api-docs 001)

/// The body of `POST /api/reporting/workflow/v1/orgs/{org}/query/`, as 001's workflow bodies are
/// written (001 prints them with trailing commas; the fixtures hold them as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    /// The fields averaged (001: `["dim1"]`).
    pub avg: Vec<String>,
    /// Conditions that must all hold.
    #[serde(rename = "where", default)]
    pub conditions: Vec<Condition>,
    pub timespan: Timespan,
}

/// `{"field": "category", "search": "track_chat_invite"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    pub search: String,
}

/// `{"After": "2020-10-29T00:00:00.000+02:00", "Before": "2020-10-30T23:59:59.999+02:00"}`, both
/// ends included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timespan {
    #[serde(rename = "After", with = "rfc3339_ms")]
    pub after: DateTime<FixedOffset>,
    #[serde(rename = "Before", with = "rfc3339_ms")]
    pub before: DateTime<FixedOffset>,
}

impl WorkflowRequest {
    /// What serde cannot check, every problem naming where it is. Field names are not checked:
    /// 001 lists none, and a field an event lacks is simply empty (it holds for `search: ""`,
    /// matches nothing else and averages to null).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.avg.is_empty() {
            errors.push("avg: at least one field is required".to_string());
        }
        if self.timespan.before < self.timespan.after {
            errors.push("timespan: Before is earlier than After".to_string());
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// RFC 3339 with an offset, written with milliseconds as giosg's docs write it
/// (`2019-01-01T00:00:00.000+02:00`).
mod rfc3339_ms {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, false))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not an RFC 3339 time with an offset like 2019-01-01T00:00:00.000+02:00: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures(dir: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir)
    }

    /// (file, endpoint, body) of every body 001's index lists.
    fn bodies_001() -> Vec<(String, String, String)> {
        let dir = fixtures("api-docs-001");
        let index: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
        index
            .iter()
            .map(|e| {
                let file = e["file"].as_str().unwrap().to_string();
                let body = std::fs::read_to_string(dir.join(&file)).unwrap();
                (file, e["endpoint"].as_str().unwrap().to_string(), body)
            })
            .collect()
    }

    /// Parses `body` as a `T`, checks it writes back as the same JSON (nothing dropped, renamed
    /// or retyped) and returns it.
    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(file: &str, body: &str) -> T {
        let parsed: T = serde_json::from_str(body).unwrap_or_else(|e| panic!("{file}: {e}"));
        let original: Value = serde_json::from_str(body).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), original, "{file} does not write back as read");
        parsed
    }

    #[test]
    fn every_body_of_001_parses_writes_back_and_validates() {
        let bodies = bodies_001();
        let mut seen = std::collections::BTreeMap::new();
        for (file, endpoint, body) in &bodies {
            *seen.entry(endpoint.as_str()).or_insert(0) += 1;
            match endpoint.as_str() {
                "chat_sessions" => round_trip::<ChatSessionsRequest>(file, body).validate(),
                "events" => round_trip::<EventsRequest>(file, body).validate(),
                "workflow" => round_trip::<WorkflowRequest>(file, body).validate(),
                other => panic!("{file}: unknown endpoint {other}"),
            }
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        }
        // Every file of the directory is in the index.
        let files = std::fs::read_dir(fixtures("api-docs-001")).unwrap().count();
        assert_eq!(files, bodies.len() + 1, "the index lists every fixture");
        let want = std::collections::BTreeMap::from([("chat_sessions", 28), ("events", 12), ("workflow", 2)]);
        assert_eq!(seen, want);
    }

    #[test]
    fn the_example_of_002_parses_writes_back_and_validates() {
        let body = std::fs::read_to_string(fixtures("api-docs-002").join("example.json")).unwrap();
        let q: ChatSessionsRequest = round_trip("002 example.json", &body);
        q.validate().unwrap();
        assert_eq!(q.granularity, Granularity::All);
        assert_eq!(q.aggregations[0].kind, AggregationType::HyperUnique);
        assert_eq!(q.aggregations[0].metrics(), [(Some("visitor_ids"), "visitor_ids_hyper_unique".to_string())]);
        assert_eq!(q.interval.start.to_rfc3339(), "2019-01-01T00:00:00+02:00");
        let Some(Filter::And { fields }) = &q.filters else { panic!("an and filter") };
        assert_eq!(fields[0], Filter::Selector { dimension: "scope".into(), value: SelectorValue::Text("org".into()) });
        assert_eq!(std::fs::read_dir(fixtures("api-docs-002")).unwrap().count(), 1, "002 has one request body");
    }

    /// 002's "An example response", verbatim.
    const RESPONSE_002: &str = r#"{
  "fields": [
    {
      "name": "start_time",
      "type": "dimension"
    },
    {
      "name": "visitor_ids_hyper_unique",
      "type": "metric"
    }
  ],
  "data": [["2019-01-01T00:00:00.000+02:00", 51.01]]
}"#;

    #[test]
    fn the_response_of_002_is_what_the_simulator_writes() {
        let written = ReportResponse {
            fields: vec![
                ResponseField::dimension("start_time"),
                ResponseField::metric(AggregationType::HyperUnique.metric_name("visitor_ids")),
            ],
            data: vec![vec![Value::from("2019-01-01T00:00:00.000+02:00"), Value::from(51.01)]],
        };
        let doc: Value = serde_json::from_str(RESPONSE_002).unwrap();
        assert_eq!(serde_json::to_value(&written).unwrap(), doc);
        assert_eq!(serde_json::from_value::<ReportResponse>(doc).unwrap(), written);
    }

    #[test]
    fn the_short_chats_bounds_keep_their_json_types() {
        let (file, _, body) = bodies_001().into_iter().find(|(f, ..)| f == "short_chats.chat_sessions.1.json").unwrap();
        let q: ChatSessionsRequest = round_trip(&file, &body);
        let Some(Filter::And { fields }) = q.filters else { panic!("an and filter") };
        let bounds: Vec<(Option<BoundValue>, Option<bool>)> = fields
            .iter()
            .filter_map(|f| match f {
                Filter::Bound { lower, lower_strict, .. } => Some((lower.clone(), *lower_strict)),
                _ => None,
            })
            .collect();
        assert_eq!(
            bounds,
            [(Some(BoundValue::Text("2".into())), Some(false)), (Some(BoundValue::Text("1".into())), Some(false)),]
        );
        assert_eq!(bounds[0].0.as_ref().unwrap().number(), Some(2.0));
    }

    #[test]
    fn unknown_keys_and_values_are_refused_by_name() {
        let body = std::fs::read_to_string(fixtures("api-docs-002").join("example.json")).unwrap();
        let err = |from: &str, to: &str| {
            assert!(body.contains(from), "{from}");
            serde_json::from_str::<ChatSessionsRequest>(&body.replacen(from, to, 1)).unwrap_err().to_string()
        };
        assert!(err(r#""granularity""#, r#""granulrity""#).contains("granulrity"));
        assert!(err(r#""time_zone""#, r#""timezone""#).contains("timezone"));
        assert!(err(r#""type": "selector""#, r#""type": "regex""#).contains("regex"));
        assert!(err(r#""hyperUnique""#, r#""hyperunique""#).contains("hyperunique"));
        assert!(err(r#""value": "org""#, r#""value": "org", "extra": 1"#).contains("extra"));
        assert!(err(r#""value": "org""#, r#""value": true"#).contains("string, a number or null"));
        assert!(err(r#""2019-01-01T00:00:00.000+02:00""#, r#""2019-01-01 00:00""#).contains("2019-01-01 00:00"));
        assert!(err(r#""value": "org""#, r#""dimension2": "x""#).contains("dimension2"));

        let events = bodies_001().into_iter().find(|(_, e, _)| e == "events").unwrap().2;
        let e = serde_json::from_str::<EventsRequest>(&events.replacen(r#""avg""#, r#""hyperUnique""#, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hyperUnique"), "{e}");
        let workflow = bodies_001().into_iter().find(|(_, e, _)| e == "workflow").unwrap().2;
        let e = serde_json::from_str::<WorkflowRequest>(&workflow.replacen(r#""After""#, r#""after""#, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("after"), "{e}");
    }

    #[test]
    fn validation_names_every_problem_and_where_it_is() {
        let body = std::fs::read_to_string(fixtures("api-docs-002").join("example.json")).unwrap();
        let mut q: ChatSessionsRequest = serde_json::from_str(&body).unwrap();
        q.interval.time_zone = "Mars/Olympus".into();
        q.group_by = vec!["colour".into()];
        q.aggregations.push(Aggregation { kind: AggregationType::Sum, fields: Some(vec!["chat_type".into()]) });
        q.aggregations.push(Aggregation { kind: AggregationType::Avg, fields: None });
        q.aggregations.push(Aggregation { kind: AggregationType::Count, fields: None });
        q.aggregations.push(Aggregation { kind: AggregationType::Count, fields: Some(vec!["chat_session_id".into()]) });
        q.filters = Some(Filter::Not {
            field: Box::new(Filter::Bound {
                dimension: "mood".into(),
                lower: Some(BoundValue::Text("lots".into())),
                upper: None,
                lower_strict: None,
                upper_strict: None,
                ordering: Some(Ordering::Numeric),
            }),
        });
        let errs = q.validate().unwrap_err();
        let want = [
            "interval.time_zone: unknown time zone `Mars/Olympus`",
            "group_by[0]: unknown dimension `colour`",
            "aggregations[1].fields[0]: `sum` is not available for `chat_type`",
            "aggregations[2]: `avg` needs at least one field",
            "aggregations[4]: metric `count` is requested twice",
            "filters.field.dimension: unknown dimension `mood`",
            "filters.field.lower: `lots` is not a number",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (e, w) in errs.iter().zip(want) {
            assert!(e.starts_with(w), "{e} does not start with {w}");
        }
    }

    #[test]
    fn events_and_workflow_validation() {
        let events = bodies_001().into_iter().find(|(_, e, _)| e == "events").unwrap().2;
        let mut q: EventsRequest = serde_json::from_str(&events).unwrap();
        q.group_by = vec!["scope".into()];
        q.sources.clear();
        q.aggregations = vec![EventAggregation::Avg, EventAggregation::Avg];
        let errs = q.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("sources") && errs[1].contains("`scope`") && errs[2].contains("twice"));

        let workflow = bodies_001().into_iter().find(|(_, e, _)| e == "workflow").unwrap().2;
        let mut w: WorkflowRequest = serde_json::from_str(&workflow).unwrap();
        w.avg.clear();
        std::mem::swap(&mut w.timespan.after, &mut w.timespan.before);
        let errs = w.validate().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("avg") && errs[1].contains("Before"));
    }
}

//! The simulator's own wire types for Thulium's `GET /api/chats/reports/summary`, written from
//! api-docs 004: the `aggregate_by` values the parameter table lists, and one row of the answer
//! as 004's example response shows it.
//!
//! Owns: [`AggregateBy`] and [`SummaryRow`] (with [`Durations`], [`RatingSummary`], [`Rates`] and
//! [`Percent`]). The query string itself is read by `simulator::thulium::SummaryQuery`; the
//! values of a row are computed there. Not the client's types (`config`'s `AggregateBy`, the
//! Thulium client's row): the simulator answers what 004 documents, so a client reading a
//! field 004 does not show fails against it.
//!
//! Strictness: [`SummaryRow`] rejects keys it does not know when read back, so the test below
//! proves the simulator writes exactly 004's keys, with 004's JSON types (counts as integers,
//! durations as `HH:MM:SS` strings, a whole percentage as an integer, `100` not `100.0`).
//!
//! Where 004 is silent (also in `docs/simulator.md`): `user_name` is null on a `sum_users=true`
//! row; a fractional percentage has two decimals.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `aggregate_by`: "Jedna z wartości: hour_of_day, minute, hour, day, week, month, year"
/// (one of), "domyślnie miesiąc (month)" (default month).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateBy {
    HourOfDay,
    Minute,
    Hour,
    Day,
    Week,
    #[default]
    Month,
    Year,
}

impl AggregateBy {
    /// Every value, in 004's order.
    pub const ALL: [AggregateBy; 7] = [
        AggregateBy::HourOfDay,
        AggregateBy::Minute,
        AggregateBy::Hour,
        AggregateBy::Day,
        AggregateBy::Week,
        AggregateBy::Month,
        AggregateBy::Year,
    ];

    /// The value as the query string spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateBy::HourOfDay => "hour_of_day",
            AggregateBy::Minute => "minute",
            AggregateBy::Hour => "hour",
            AggregateBy::Day => "day",
            AggregateBy::Week => "week",
            AggregateBy::Month => "month",
            AggregateBy::Year => "year",
        }
    }

    /// The value spelled `text`, or `None` for one 004 does not list.
    pub fn parse(text: &str) -> Option<AggregateBy> {
        AggregateBy::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// One row of the answer (004's example, key for key, in its order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryRow {
    /// The bucket's label (`2021-12` for a month).
    pub series: String,
    /// The user's name; null on a `sum_users=true` row.
    pub user_name: Option<String>,
    pub incoming: u64,
    pub incoming_to_agent: u64,
    pub incoming_including_empty: u64,
    pub abandoned: u64,
    pub answered: u64,
    pub incoming_to_bot: u64,
    pub transferred_by_bot: u64,
    pub finished_by_bot: u64,
    pub service_level_percent: Percent,
    pub chat_time: Durations,
    pub wait_time: Durations,
    pub sla_percent: Percent,
    pub rating: RatingSummary,
}

/// `{"min", "max", "sum", "avg"}`, each `HH:MM:SS` (`00:00:48`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durations {
    pub min: String,
    pub max: String,
    pub sum: String,
    pub avg: String,
}

/// `rating`: `{"rate": {"sad", "neutral", "happy"}, "satisfaction_percent", "rated_percent"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingSummary {
    pub rate: Rates,
    pub satisfaction_percent: Percent,
    pub rated_percent: Percent,
}

/// Chats per rating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub sad: u64,
    pub neutral: u64,
    pub happy: u64,
}

/// A percentage: written as an integer when whole (004's `100` and `0`), else as a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 && self.0 >= 0.0 && self.0 < 1e15 {
            s.serialize_u64(self.0 as u64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        f64::deserialize(d).map(Percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// 004's example response, verbatim.
    const RESPONSE_004: &str = r#"[
{
"series": "2021-12",
"user_name": "John Doe",
"incoming": 1,
"incoming_to_agent": 1,
"incoming_including_empty": 1,
"abandoned": 0,
"answered": 1,
"incoming_to_bot": 0,
"transferred_by_bot": 0,
"finished_by_bot": 0,
"service_level_percent": 100,
"chat_time": {
"min": "00:00:48",
"max": "00:00:48",
"sum": "00:00:48",
"avg": "00:00:48"
},
"wait_time": {
"min": "00:00:00",
"max": "00:00:00",
"sum": "00:00:00",
"avg": "00:00:00"
},
"sla_percent": 100,
"rating": {
"rate": {
"sad": 0,
"neutral": 0,
"happy": 0
},
"satisfaction_percent": 0,
"rated_percent": 0
}
}]"#;

    #[test]
    fn the_response_of_004_is_what_the_simulator_writes() {
        let d = |s: &str| Durations { min: s.into(), max: s.into(), sum: s.into(), avg: s.into() };
        let written = vec![SummaryRow {
            series: "2021-12".into(),
            user_name: Some("John Doe".into()),
            incoming: 1,
            incoming_to_agent: 1,
            incoming_including_empty: 1,
            abandoned: 0,
            answered: 1,
            incoming_to_bot: 0,
            transferred_by_bot: 0,
            finished_by_bot: 0,
            service_level_percent: Percent(100.0),
            chat_time: d("00:00:48"),
            wait_time: d("00:00:00"),
            sla_percent: Percent(100.0),
            rating: RatingSummary {
                rate: Rates { sad: 0, neutral: 0, happy: 0 },
                satisfaction_percent: Percent(0.0),
                rated_percent: Percent(0.0),
            },
        }];
        let doc: Value = serde_json::from_str(RESPONSE_004).unwrap();
        let json = serde_json::to_value(&written).unwrap();
        assert_eq!(json, doc);
        // Same JSON types too: 100, not 100.0.
        assert_eq!(serde_json::to_string(&json).unwrap(), serde_json::to_string(&doc).unwrap());
        // Written in 004's key order.
        let text = serde_json::to_string(&written).unwrap();
        let keys: Vec<&str> = RESPONSE_004.lines().filter_map(|l| l.split('"').nth(1)).collect();
        let mut at = 0;
        for k in keys {
            at += text[at..].find(&format!("\"{k}\"")).unwrap_or_else(|| panic!("{k} out of 004's order"));
        }
        assert_eq!(serde_json::from_value::<Vec<SummaryRow>>(doc).unwrap(), written);
    }

    #[test]
    fn percentages_are_integers_when_whole() {
        assert_eq!(serde_json::to_string(&Percent(100.0)).unwrap(), "100");
        assert_eq!(serde_json::to_string(&Percent(33.33)).unwrap(), "33.33");
    }

    #[test]
    fn aggregate_by_takes_the_values_004_lists() {
        let listed = "hour_of_day, minute, hour, day, week, month, year";
        let names: Vec<&str> = AggregateBy::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.join(", "), listed);
        for a in AggregateBy::ALL {
            assert_eq!(AggregateBy::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
        assert_eq!(AggregateBy::default(), AggregateBy::Month, "004: domyślnie miesiąc (month)");
        assert_eq!(AggregateBy::parse("quarter"), None);
    }
}

//! Rows and columns: what a source returns for one bucket (or one snapshot line) and what a
//! table's columns are.
//!
//! Owns: [`Column`] and [`ColumnType`] (a key dimension or a value column of a job's table, with
//! its SQL type and comment), [`Row`] and [`Value`]. It sits below both `source` (which fills
//! rows) and `batch` (which turns them into Arrow), so neither needs the other.

use chrono::{DateTime, Utc};

/// The SQL type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `bigint` / Int64 (counts).
    Int,
    /// `double precision` / Float64.
    Float,
    /// `text` / Utf8.
    Text,
    /// `boolean` / Boolean.
    Bool,
    /// `jsonb` / Utf8 holding JSON (Arrow field metadata `chatetl.type = json`).
    Json,
}

/// One column: a dimension or a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// What it holds, for the column comment.
    pub comment: String,
}

impl Column {
    pub fn new(name: &str, ty: ColumnType, comment: &str) -> Column {
        Column { name: name.to_string(), ty, comment: comment.to_string() }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Number(f64),
    Text(String),
    Bool(bool),
}

impl From<Option<f64>> for Value {
    fn from(v: Option<f64>) -> Value {
        v.map_or(Value::Null, Value::Number)
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Value {
        v.map_or(Value::Null, Value::Text)
    }
}

/// One bucket of one group, or one line of a snapshot: what a source returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The bucket start, or the snapshot's `captured_at`.
    pub bucket_start: DateTime<Utc>,
    /// Values of the table's key dimensions, in order.
    pub dims: Vec<Option<String>>,
    /// Values of the table's value columns, in order; [`Value::Null`] is SQL null.
    pub metrics: Vec<Value>,
}

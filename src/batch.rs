//! Typed rows: a job's output schema and the Arrow `RecordBatch` of one window.
//!
//! Owns: [`TableSchema`] (the time columns, the key dimensions and value columns its caller passes
//! from the job's source module, and the load metadata `_window_start`, `_loaded_at`, `_run_id`)
//! and [`build`] (the [`Row`]s of a window → a `RecordBatch` both sinks consume). It does not
//! know the vendors: rows and columns are `crate::row`'s.
//!
//! - A windowed job's table starts with `bucket_start` (timestamptz) and `bucket_date` (its local
//!   date in the job's zone); a snapshot job's with `captured_at` and `captured_date`.
//! - Dimensions are nullable text and, with the time column, the table's natural key.
//! - Values are `bigint`, `double precision`, `text`, `boolean` or `jsonb` (JSON text in Parquet).
//!
//! Timestamps are `Timestamp(Microsecond, "UTC")`; the job's zone travels in the schema metadata
//! and in the date column.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::config::{Job, JobKind};
use crate::plan::Window;
use crate::row::{Column, ColumnType, Row, Value};

/// The output table of a job.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub table: String,
    pub description: String,
    pub time_zone: Tz,
    /// `bucket_start` (windowed jobs) or `captured_at` (snapshot jobs).
    pub time_column: &'static str,
    /// `bucket_date` or `captured_date`: the local date of the time column.
    pub date_column: &'static str,
    /// Comment of the time column.
    pub time_comment: String,
    /// Key columns after the time column: nullable text.
    pub dims: Vec<Column>,
    /// Value columns.
    pub metrics: Vec<Column>,
}

/// A window and its rows as Arrow, ready for a sink.
#[derive(Debug, Clone)]
pub struct WindowBatch {
    pub window: Window,
    pub batch: RecordBatch,
}

impl TableSchema {
    /// The schema of `job`'s table with the key dimensions and value columns its source declares
    /// (`source::columns`); `bucket` says what one bucket is (`day granularity`), for the time
    /// column's comment.
    pub fn new(job: &Job, dims: Vec<Column>, metrics: Vec<Column>, bucket: &str) -> TableSchema {
        let (time_column, date_column, time_comment) = match job.kind {
            JobKind::Windowed => {
                ("bucket_start", "bucket_date", format!("start of the bucket ({bucket}), UTC instant"))
            }
            JobKind::Snapshot => {
                ("captured_at", "captured_date", "the scheduled tick that captured this state, UTC instant".to_string())
            }
        };
        TableSchema {
            table: job.table.clone(),
            description: job.description.clone(),
            time_zone: job.time_zone,
            time_column,
            date_column,
            time_comment,
            dims,
            metrics,
        }
    }

    /// Every column name, in table order.
    pub fn column_names(&self) -> Vec<String> {
        let mut names = vec![self.time_column.to_string(), self.date_column.to_string()];
        names.extend(self.dims.iter().map(|d| d.name.clone()));
        names.extend(self.metrics.iter().map(|m| m.name.clone()));
        names.extend(["_window_start", "_loaded_at", "_run_id"].map(String::from));
        names
    }

    /// The Arrow schema, with the job's zone and description in its metadata.
    pub fn arrow_schema(&self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields =
            vec![Field::new(self.time_column, ts(), false), Field::new(self.date_column, DataType::Date32, false)];
        fields.extend(self.dims.iter().map(|d| Field::new(&d.name, DataType::Utf8, true)));
        fields.extend(self.metrics.iter().map(|m| {
            let field = Field::new(&m.name, arrow_type(m.ty), true);
            if m.ty == ColumnType::Json {
                field.with_metadata(HashMap::from([("chatetl.type".to_string(), "json".to_string())]))
            } else {
                field
            }
        }));
        fields.extend([
            Field::new("_window_start", ts(), false),
            Field::new("_loaded_at", ts(), false),
            Field::new("_run_id", DataType::Utf8, false),
        ]);
        let metadata = HashMap::from([
            ("chatetl.time_zone".to_string(), self.time_zone.name().to_string()),
            ("chatetl.description".to_string(), self.description.clone()),
            ("chatetl.table".to_string(), self.table.clone()),
        ]);
        Arc::new(Schema::new_with_metadata(fields, metadata))
    }
}

fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
        ColumnType::Bool => DataType::Boolean,
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// A column being built.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn new(ty: ColumnType, n: usize) -> Builder {
        match ty {
            ColumnType::Int => Builder::Int(Int64Builder::with_capacity(n)),
            ColumnType::Float => Builder::Float(Float64Builder::with_capacity(n)),
            ColumnType::Text | ColumnType::Json => Builder::Text(StringBuilder::new()),
            ColumnType::Bool => Builder::Bool(BooleanBuilder::with_capacity(n)),
        }
    }

    /// Appends `v`, or says why it does not fit the column.
    fn append(&mut self, column: &Column, v: &Value) -> Result<(), String> {
        let wrong = |v: &Value| Err(format!("{} expects {:?}, got {v:?}", column.name, column.ty));
        match (self, v) {
            (Builder::Int(b), Value::Null) => b.append_null(),
            (Builder::Float(b), Value::Null) => b.append_null(),
            (Builder::Text(b), Value::Null) => b.append_null(),
            (Builder::Bool(b), Value::Null) => b.append_null(),
            (Builder::Int(b), Value::Number(x)) => {
                if x.fract() != 0.0 || !x.is_finite() || x.abs() > 9.0e15 {
                    return Err(format!("{} must be a whole number, got {x}", column.name));
                }
                b.append_value(*x as i64)
            }
            (Builder::Float(b), Value::Number(x)) => {
                if !x.is_finite() {
                    return Err(format!("{} must be a finite number, got {x}", column.name));
                }
                b.append_value(*x)
            }
            (Builder::Text(b), Value::Text(s)) => b.append_value(s),
            (Builder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (_, v) => return wrong(v),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Float(mut b) => Arc::new(b.finish()),
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Builds the batch of `window` from `rows`, sorted by time and dimensions. Fails on a row
/// outside the window, a value of the wrong type (a non-integral count), or two rows with the same
/// time and dimensions.
pub fn build(
    schema: &TableSchema,
    window: Window,
    mut rows: Vec<Row>,
    loaded_at: DateTime<Utc>,
    run_id: &str,
) -> Result<RecordBatch, String> {
    rows.sort_by(|a, b| (a.bucket_start, &a.dims).cmp(&(b.bucket_start, &b.dims)));
    for pair in rows.windows(2) {
        if pair[0].bucket_start == pair[1].bucket_start && pair[0].dims == pair[1].dims {
            return Err(format!("two rows for {} {} and {:?}", schema.time_column, pair[0].bucket_start, pair[0].dims));
        }
    }
    let n = rows.len();
    let mut bucket = TimestampMicrosecondBuilder::with_capacity(n);
    let mut date = Date32Builder::with_capacity(n);
    let mut dims: Vec<StringBuilder> = schema.dims.iter().map(|_| StringBuilder::new()).collect();
    let mut values: Vec<Builder> = schema.metrics.iter().map(|m| Builder::new(m.ty, n)).collect();
    for row in &rows {
        if row.bucket_start < window.start || row.bucket_start >= window.end {
            return Err(format!(
                "{} {} is outside window [{}, {})",
                schema.time_column, row.bucket_start, window.start, window.end
            ));
        }
        if row.dims.len() != dims.len() || row.metrics.len() != values.len() {
            return Err(format!(
                "a row has {} dimensions and {} values; the table has {} and {}",
                row.dims.len(),
                row.metrics.len(),
                dims.len(),
                values.len()
            ));
        }
        bucket.append_value(micros(row.bucket_start));
        date.append_value(date32(row.bucket_start.with_timezone(&schema.time_zone).date_naive()));
        for (b, v) in dims.iter_mut().zip(&row.dims) {
            b.append_option(v.as_deref());
        }
        for ((b, column), v) in values.iter_mut().zip(&schema.metrics).zip(&row.metrics) {
            b.append(column, v)?;
        }
    }
    let constant_ts = |t: DateTime<Utc>| {
        let mut b = TimestampMicrosecondBuilder::with_capacity(n);
        b.append_slice(&vec![micros(t); n]);
        Arc::new(b.finish().with_timezone("UTC")) as ArrayRef
    };
    let mut columns: Vec<ArrayRef> = vec![Arc::new(bucket.finish().with_timezone("UTC")), Arc::new(date.finish())];
    columns.extend(dims.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend(values.into_iter().map(Builder::finish));
    columns.push(constant_ts(window.start));
    columns.push(constant_ts(loaded_at));
    let mut run = StringBuilder::new();
    for _ in 0..n {
        run.append_value(run_id);
    }
    columns.push(Arc::new(run.finish()));
    RecordBatch::try_new(schema.arrow_schema(), columns).map_err(|e| format!("cannot build the batch: {e}"))
}

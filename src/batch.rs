//! Typed rows: a job's output schema and the Arrow `RecordBatch` of one window.
//!
//! Owns: [`TableSchema`] (derived from the job: bucket start and local date, the scope
//! dimensions, one column per aggregation — `bigint` for count, `double precision` for sum, avg
//! and hyperUnique — and the load metadata `_window_start`, `_loaded_at`, `_run_id`), [`Row`] (what
//! a source returns for one bucket and group) and [`build`] (rows of a window → a `RecordBatch`
//! both sinks consume). Timestamps are `Timestamp(Microsecond, "UTC")`; the job's zone travels in
//! the schema metadata and in `bucket_date`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{Date32Builder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::config::Job;
use crate::plan::Window;
use crate::source::giosg::query::AggregationKind;

/// Columns every job table has, before its metrics (`bucket_start`, `bucket_date`) and after
/// them (`_window_start`, `_loaded_at`, `_run_id`).
pub const DIMENSIONS: [&str; 3] = ["scope", "team_id", "user_id"];

/// The SQL type of a metric column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// `bigint` / Int64 (counts).
    Int,
    /// `double precision` / Float64.
    Float,
}

/// One metric column.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricColumn {
    pub name: String,
    pub ty: MetricType,
    /// What it holds, for the column comment.
    pub comment: String,
}

/// The output table of a job.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub table: String,
    pub description: String,
    pub time_zone: Tz,
    pub dims: Vec<&'static str>,
    pub metrics: Vec<MetricColumn>,
}

/// One bucket of one group: what a source returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub bucket_start: DateTime<Utc>,
    /// Values of [`TableSchema::dims`], in order.
    pub dims: Vec<Option<String>>,
    /// Values of [`TableSchema::metrics`], in order; `None` is SQL null (e.g. an average of nothing).
    pub metrics: Vec<Option<f64>>,
}

/// A window and its rows as Arrow, ready for a sink.
#[derive(Debug, Clone)]
pub struct WindowBatch {
    pub window: Window,
    pub batch: RecordBatch,
}

impl TableSchema {
    /// The schema of `job`'s table.
    pub fn for_job(job: &Job) -> TableSchema {
        let metrics = job
            .aggregations
            .iter()
            .map(|a| MetricColumn {
                name: a.column.clone(),
                ty: if a.kind == AggregationKind::Count { MetricType::Int } else { MetricType::Float },
                comment: match &a.field {
                    Some(f) => format!("{} of {f} (api metric {})", a.kind.api_name(), a.metric_name()),
                    None => format!("{} of chat session rows", a.kind.api_name()),
                },
            })
            .collect();
        TableSchema {
            table: job.table.clone(),
            description: job.description.clone(),
            time_zone: job.time_zone,
            dims: DIMENSIONS.to_vec(),
            metrics,
        }
    }

    /// Every column name, in table order.
    pub fn column_names(&self) -> Vec<String> {
        let mut names = vec!["bucket_start".to_string(), "bucket_date".to_string()];
        names.extend(self.dims.iter().map(|d| d.to_string()));
        names.extend(self.metrics.iter().map(|m| m.name.clone()));
        names.extend(["_window_start", "_loaded_at", "_run_id"].map(String::from));
        names
    }

    /// The Arrow schema, with the job's zone and description in its metadata.
    pub fn arrow_schema(&self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields =
            vec![Field::new("bucket_start", ts(), false), Field::new("bucket_date", DataType::Date32, false)];
        fields.extend(self.dims.iter().map(|d| Field::new(*d, DataType::Utf8, *d != "scope")));
        fields.extend(self.metrics.iter().map(|m| {
            let ty = match m.ty {
                MetricType::Int => DataType::Int64,
                MetricType::Float => DataType::Float64,
            };
            Field::new(&m.name, ty, true)
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

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// Builds the batch of `window` from `rows`, sorted by bucket and dimensions. Fails on a row
/// outside the window, a non-integral count, or two rows with the same bucket and dimensions.
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
            return Err(format!("two rows for bucket {} and {:?}", pair[0].bucket_start, pair[0].dims));
        }
    }
    let n = rows.len();
    let mut bucket = TimestampMicrosecondBuilder::with_capacity(n);
    let mut date = Date32Builder::with_capacity(n);
    let mut dims: Vec<StringBuilder> = schema.dims.iter().map(|_| StringBuilder::new()).collect();
    let mut ints: Vec<Int64Builder> = Vec::new();
    let mut floats: Vec<Float64Builder> = Vec::new();
    for m in &schema.metrics {
        match m.ty {
            MetricType::Int => ints.push(Int64Builder::with_capacity(n)),
            MetricType::Float => floats.push(Float64Builder::with_capacity(n)),
        }
    }
    for row in &rows {
        if row.bucket_start < window.start || row.bucket_start >= window.end {
            return Err(format!("bucket {} is outside window [{}, {})", row.bucket_start, window.start, window.end));
        }
        bucket.append_value(micros(row.bucket_start));
        date.append_value(date32(row.bucket_start.with_timezone(&schema.time_zone).date_naive()));
        for (b, v) in dims.iter_mut().zip(&row.dims) {
            b.append_option(v.as_deref());
        }
        let (mut i, mut f) = (0, 0);
        for (m, v) in schema.metrics.iter().zip(&row.metrics) {
            match m.ty {
                MetricType::Int => {
                    let v = match v {
                        Some(x) if x.fract() != 0.0 || !x.is_finite() => {
                            return Err(format!("{} must be a whole number, got {x}", m.name));
                        }
                        Some(x) => Some(*x as i64),
                        None => None,
                    };
                    ints[i].append_option(v);
                    i += 1;
                }
                MetricType::Float => {
                    floats[f].append_option(*v);
                    f += 1;
                }
            }
        }
    }
    let constant_ts = |t: DateTime<Utc>| {
        let mut b = TimestampMicrosecondBuilder::with_capacity(n);
        b.append_slice(&vec![micros(t); n]);
        Arc::new(b.finish().with_timezone("UTC")) as ArrayRef
    };
    let mut columns: Vec<ArrayRef> = vec![Arc::new(bucket.finish().with_timezone("UTC")), Arc::new(date.finish())];
    columns.extend(dims.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    let (mut ints, mut floats) = (ints.into_iter(), floats.into_iter());
    for m in &schema.metrics {
        columns.push(match m.ty {
            MetricType::Int => Arc::new(ints.next().expect("one builder per column").finish()) as ArrayRef,
            MetricType::Float => Arc::new(floats.next().expect("one builder per column").finish()) as ArrayRef,
        });
    }
    columns.push(constant_ts(window.start));
    columns.push(constant_ts(loaded_at));
    let mut run = StringBuilder::new();
    for _ in 0..n {
        run.append_value(run_id);
    }
    columns.push(Arc::new(run.finish()));
    RecordBatch::try_new(schema.arrow_schema(), columns).map_err(|e| format!("cannot build the batch: {e}"))
}

//! Reading loaded results back from a warehouse, for `chatetl demo`'s summary.
//!
//! Owns: [`org_series`], one metric's org-scope values per local date, read from the Postgres
//! table or from every data file of the Parquet table's partitions.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::{AssertSqlSafe, Row as _};

use crate::sink::Sink;
use crate::sink::postgres::quote_ident;

/// (local date, value) of `column` for the org scope of `table`, by date.
pub async fn org_series(sink: &Sink, table: &str, column: &str) -> Result<Vec<(String, Option<f64>)>, String> {
    match sink {
        Sink::Postgres(pg) => {
            let sql = format!(
                "SELECT bucket_date::text, {}::float8 FROM {}.{} WHERE scope = 'org' ORDER BY bucket_start",
                quote_ident(column),
                quote_ident(pg.schema()),
                quote_ident(table)
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pg.pool())
                .await
                .map_err(|e| format!("cannot read {table}: {e}"))?;
            Ok(rows.into_iter().map(|r| (r.get::<String, _>(0), r.get::<Option<f64>, _>(1))).collect())
        }
        Sink::Lake(lake) => Err(format!("reading {table} back from {} is not supported", lake.url())),
        Sink::Parquet(pq) => {
            let mut out = BTreeMap::new();
            for batch in read_parquet_dir(&pq.root().join(table))? {
                let scope = batch.column_by_name("scope").ok_or("no scope column")?.as_string::<i32>().clone();
                let dates = batch
                    .column_by_name("bucket_date")
                    .ok_or("no bucket_date column")?
                    .as_primitive::<Date32Type>()
                    .clone();
                let values = batch.column_by_name(column).ok_or_else(|| format!("no column {column}"))?;
                for i in 0..batch.num_rows() {
                    if scope.value(i) != "org" {
                        continue;
                    }
                    let date = dates.value_as_date(i).map(|d| d.to_string()).unwrap_or_default();
                    let value = if values.is_null(i) {
                        None
                    } else {
                        match values.data_type() {
                            DataType::Int64 => Some(values.as_primitive::<Int64Type>().value(i) as f64),
                            DataType::Float64 => Some(values.as_primitive::<Float64Type>().value(i)),
                            other => return Err(format!("{column} has type {other}")),
                        }
                    };
                    out.insert(date, value);
                }
            }
            Ok(out.into_iter().collect())
        }
    }
}

/// Every batch of every data file of the Parquet table folder `dir` (its partitions' files, by
/// path; temp files, markers and `_`-prefixed folders skipped).
pub fn read_parquet_dir(dir: &std::path::Path) -> Result<Vec<RecordBatch>, String> {
    let files = crate::sink::parquet::data_files(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut batches = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).map_err(|e| format!("cannot open {}: {e}", f.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for b in reader {
            batches.push(b.map_err(|e| format!("cannot read {}: {e}", f.display()))?);
        }
    }
    Ok(batches)
}

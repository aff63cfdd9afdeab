//! External-table DDL: how engines that read Parquet from a folder or a bucket (BigQuery,
//! Snowflake, Athena, Trino, Databricks/Spark, DuckDB) are told about a job's table in a Parquet
//! warehouse. Pure text generation (`chatetl ddl` prints it); nothing is sent anywhere.
//!
//! Owns [`Engine`] and [`ddl`]. The layout it describes is the Parquet sink's
//! (`crate::sink::parquet`): `<location>/<table>/year=Y/month=M/data.parquet` for windowed jobs,
//! `…/month=M/day=D/data.parquet` for snapshot jobs, Hive-style keys without leading zeros (so
//! every engine reads them as integers). Column types follow the Arrow schema of
//! [`TableSchema::arrow_schema`]: the time column and `_window_start`/`_loaded_at` are UTC
//! instants (Parquet `TIMESTAMP(MICROS, isAdjustedToUTC = true)`), the date column a `DATE`,
//! dimensions text, counts 64-bit integers, other values doubles. A column added to a job later
//! (an added aggregation) is missing from older files: engines that read by column name give it
//! null there (DuckDB needs `union_by_name`, which the DDL sets).

use crate::batch::TableSchema;
use crate::config::{Job, JobKind};
use crate::row::ColumnType;

/// An engine that reads external Parquet tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// BigQuery: `CREATE EXTERNAL TABLE … WITH PARTITION COLUMNS` over `gs://`.
    Bigquery,
    /// Snowflake: an external table over a stage, partitions from the file names.
    Snowflake,
    /// Amazon Athena: Hive DDL over `s3://`, partitions found by `MSCK REPAIR TABLE`.
    Athena,
    /// Trino's Hive connector: `external_location` and `partitioned_by`.
    Trino,
    /// Databricks / Spark SQL: `USING PARQUET PARTITIONED BY`.
    Databricks,
    /// DuckDB: a view over `read_parquet` with Hive partitioning.
    Duckdb,
}

/// One column: its name and its type in each engine's words.
struct Col {
    name: String,
    ty: Ty,
    comment: String,
}

#[derive(Clone, Copy)]
enum Ty {
    Timestamp,
    Date,
    Text,
    Int,
    Float,
    Bool,
}

impl Ty {
    fn name(self, engine: Engine) -> &'static str {
        use Engine::*;
        match (self, engine) {
            (Ty::Timestamp, Bigquery) => "TIMESTAMP",
            (Ty::Timestamp, Snowflake) => "TIMESTAMP_TZ",
            (Ty::Timestamp, Athena | Trino | Databricks) => "TIMESTAMP",
            (Ty::Timestamp, Duckdb) => "TIMESTAMPTZ",
            (Ty::Date, _) => "DATE",
            (Ty::Text, Bigquery) => "STRING",
            (Ty::Text, Snowflake | Trino | Duckdb) => "VARCHAR",
            (Ty::Text, Athena | Databricks) => "STRING",
            (Ty::Int, Bigquery) => "INT64",
            (Ty::Int, Snowflake) => "NUMBER(19, 0)",
            (Ty::Int, Athena | Trino | Databricks | Duckdb) => "BIGINT",
            (Ty::Float, Bigquery) => "FLOAT64",
            (Ty::Float, Snowflake) => "FLOAT",
            (Ty::Float, Athena | Trino | Databricks | Duckdb) => "DOUBLE",
            (Ty::Bool, Bigquery) => "BOOL",
            (Ty::Bool, _) => "BOOLEAN",
        }
    }
}

fn columns(schema: &TableSchema) -> Vec<Col> {
    let col = |name: &str, ty, comment: &str| Col { name: name.to_string(), ty, comment: comment.to_string() };
    let mut out = vec![
        col(schema.time_column, Ty::Timestamp, &schema.time_comment),
        col(schema.date_column, Ty::Date, &format!("local date of {} in {}", schema.time_column, schema.time_zone)),
    ];
    out.extend(schema.dims.iter().map(|d| col(&d.name, Ty::Text, &d.comment)));
    out.extend(schema.metrics.iter().map(|m| {
        let ty = match m.ty {
            ColumnType::Int => Ty::Int,
            ColumnType::Float => Ty::Float,
            ColumnType::Text | ColumnType::Json => Ty::Text,
            ColumnType::Bool => Ty::Bool,
        };
        col(&m.name, ty, &m.comment)
    }));
    out.push(col("_window_start", Ty::Timestamp, "start of the window whose load wrote the row"));
    out.push(col("_loaded_at", Ty::Timestamp, "when the row was loaded"));
    out.push(col("_run_id", Ty::Text, "the run that loaded it"));
    out
}

/// The Hive partition keys of `job`'s folders, outermost first.
fn partition_keys(job: &Job) -> &'static [&'static str] {
    match job.kind {
        JobKind::Windowed => &["year", "month"],
        JobKind::Snapshot => &["year", "month", "day"],
    }
}

/// A column name as `engine` reads it whatever it is (a leading underscore, a reserved word):
/// backticks where Hive's and BigQuery's parsers want them, double quotes for Trino; Snowflake's
/// as written (unquoted names starting with `_` are valid there, and quoting would make them
/// case-sensitive in every query); DuckDB's view has no column list.
fn ident(engine: Engine, name: &str) -> String {
    match engine {
        Engine::Bigquery | Engine::Athena | Engine::Databricks => format!("`{}`", name.replace('`', "")),
        Engine::Trino | Engine::Duckdb => format!("\"{}\"", name.replace('"', "\"\"")),
        Engine::Snowflake => name.to_string(),
    }
}

/// SQL text literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The statements that make `job`'s table (whose schema is `schema`) readable by `engine` from
/// `location`, the warehouse's root (`s3://bucket/prefix`, `gs://…`, a local folder for DuckDB):
/// a comment saying what it is, then the DDL, ending with a newline.
pub fn ddl(engine: Engine, job: &Job, schema: &TableSchema, location: &str) -> String {
    let root = location.trim_end_matches('/');
    let table = &schema.table;
    let dir = format!("{root}/{table}");
    let cols = columns(schema);
    let keys = partition_keys(job);
    let id = |name: &str| ident(engine, name);
    let width = cols.iter().map(|c| id(&c.name).len()).max().unwrap_or(0);
    let list = |ty: &dyn Fn(&Col) -> String| -> String {
        cols.iter().map(|c| format!("  {:<width$} {}", id(&c.name), ty(c))).collect::<Vec<_>>().join(",\n")
    };
    // Trino and Spark declare the partition keys as the last columns.
    let commented_with_keys = |key_type: &str| -> Vec<String> {
        let mut lines: Vec<String> = cols
            .iter()
            .map(|c| format!("  {:<width$} {} COMMENT {}", id(&c.name), c.ty.name(engine), quote(&c.comment)))
            .collect();
        lines.extend(keys.iter().map(|k| format!("  {:<width$} {key_type}", id(k))));
        lines
    };
    let head = format!(
        "-- {table}: {}\n-- chatetl job {}, Parquet under {dir}/{}\n",
        schema.description.replace('\n', " "),
        job.name,
        keys.iter().map(|k| format!("{k}=N")).collect::<Vec<_>>().join("/") + "/data.parquet"
    );
    let body = match engine {
        Engine::Duckdb => format!(
            "CREATE OR REPLACE VIEW {table} AS\nSELECT * FROM read_parquet({}, hive_partitioning = true, union_by_name = true);\n",
            quote(&format!("{dir}/**/data.parquet"))
        ),
        Engine::Bigquery => {
            let typed = list(&|c: &Col| format!("{} OPTIONS (description = {})", c.ty.name(engine), quote(&c.comment)));
            let parts = keys.iter().map(|k| format!("{} INT64", id(k))).collect::<Vec<_>>().join(", ");
            format!(
                "CREATE OR REPLACE EXTERNAL TABLE `DATASET.{table}` (\n{typed}\n)\nWITH PARTITION COLUMNS ({parts})\n\
                 OPTIONS (\n  format = 'PARQUET',\n  uris = [{}],\n  hive_partition_uri_prefix = {},\n  \
                 description = {}\n);\n",
                quote(&format!("{dir}/*")),
                quote(&dir),
                quote(&schema.description)
            )
        }
        Engine::Snowflake => {
            let part = |k: &str| {
                format!(
                    "  {k:<width$} NUMBER AS TO_NUMBER(REGEXP_SUBSTR(METADATA$FILENAME, '{k}=([0-9]+)', 1, 1, 'e', 1))"
                )
            };
            let mut lines: Vec<String> = keys.iter().map(|k| part(k)).collect();
            lines.extend(cols.iter().map(|c| {
                let ty = c.ty.name(engine);
                format!("  {:<width$} {ty} AS (VALUE:{}::{ty}) COMMENT {}", c.name, c.name, quote(&c.comment))
            }));
            format!(
                "-- STAGE: a stage on {root}/ (CREATE STAGE … URL = {} …)\n\
                 CREATE OR REPLACE EXTERNAL TABLE {table} (\n{}\n)\nPARTITION BY ({})\nLOCATION = @STAGE/{table}/\n\
                 PATTERN = '.*data[.]parquet'\nFILE_FORMAT = (TYPE = PARQUET)\nAUTO_REFRESH = FALSE\nCOMMENT = {};\n\
                 ALTER EXTERNAL TABLE {table} REFRESH;\n",
                quote(&format!("{root}/")),
                lines.join(",\n"),
                keys.join(", "),
                quote(&schema.description)
            )
        }
        Engine::Athena => {
            let typed = list(&|c: &Col| format!("{} COMMENT {}", c.ty.name(engine), quote(&c.comment)));
            let parts = keys.iter().map(|k| format!("{} int", id(k))).collect::<Vec<_>>().join(", ");
            format!(
                "CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{typed}\n)\nCOMMENT {}\nPARTITIONED BY ({parts})\n\
                 STORED AS PARQUET\nLOCATION {};\nMSCK REPAIR TABLE {table};\n",
                quote(&schema.description),
                quote(&format!("{dir}/"))
            )
        }
        Engine::Trino => {
            let lines = commented_with_keys("INTEGER");
            format!(
                "CREATE TABLE IF NOT EXISTS hive.SCHEMA.{table} (\n{}\n)\nCOMMENT {}\nWITH (\n  format = 'PARQUET',\n  \
                 external_location = {},\n  partitioned_by = ARRAY[{}]\n);\n\
                 CALL hive.system.sync_partition_metadata('SCHEMA', '{table}', 'ADD');\n",
                lines.join(",\n"),
                quote(&schema.description),
                quote(&dir),
                keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
            )
        }
        Engine::Databricks => {
            let lines = commented_with_keys("INT");
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (\n{}\n)\nUSING PARQUET\nPARTITIONED BY ({})\nLOCATION {}\nCOMMENT {};\n\
                 MSCK REPAIR TABLE {table};\n",
                lines.join(",\n"),
                keys.iter().map(|k| id(k)).collect::<Vec<_>>().join(", "),
                quote(&dir),
                quote(&schema.description)
            )
        }
    };
    head + &body
}

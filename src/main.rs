//! The `chatetl` binary: parses arguments, resolves them into library calls, prints the whole
//! error chain and sets the exit code (0 success, 1 a run failed, 2 bad usage or configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "simulator")]
use anyhow::Context;
#[cfg(feature = "simulator")]
use chatetl::simulator::{
    Assumptions, CountMetricName, Dataset, DatasetSpec, EventAggregations, EventBuckets, EventQueries, FaultConfig,
    Simulator, dataset,
};
use chatetl::telemetry::{self, LogFormat};

mod commands;
#[cfg(feature = "simulator")]
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

/// Export chat-analytics metrics from vendor reporting APIs into PostgreSQL or Parquet.
#[derive(Debug, Parser)]
#[command(name = "chatetl", version, propagate_version = true)]
struct Cli {
    /// Configuration file (sources, warehouse, defaults).
    #[arg(long, global = true, env = "CHATETL_CONFIG", default_value = "chatetl.yaml")]
    config: PathBuf,
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log detail (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

macro_rules! validate_examples {
    () => {
        "\
Examples:
  chatetl validate
  chatetl validate --strict                  # unset credential variables are errors too
  chatetl --config deploy/chatetl.postgres.yaml validate
Unset credential variables (a source's token, username, password, organization_id) are warnings:
only run, backfill and schedule contact the sources, and they refuse to without them."
    };
}

macro_rules! status_examples {
    () => {
        "Examples:\n  chatetl status\n  chatetl status --job 'real_chats*'\n  chatetl status --json | jq '.[].watermark'"
    };
}

/// How commands choose jobs.
macro_rules! select_help {
    () => {
        "--job takes names or globs (`real_chats*`, `{real,short}_chats`; quote them for the shell) and
may be repeated; --source NAME selects the jobs of a source (both given: the jobs matching both).
A glob or source that matches no job is an error."
    };
}

/// How commands choose jobs, and ranges.
macro_rules! select_range_help {
    () => {
        "--job takes names or globs (`real_chats*`, `{real,short}_chats`; quote them for the shell) and
may be repeated; --source NAME selects the jobs of a source (both given: the jobs matching both).
A glob or source that matches no job is an error.

Dates (YYYY-MM-DD) are whole days in the job's time zone, both ends inclusive;
RFC 3339 datetimes (2024-03-31T00:00:00+03:00) make a half-open range. A range is clamped to the
job's `start` and its last complete window (a note says so); one wholly outside is refused."
    };
}

macro_rules! plan_examples {
    () => {
        "\
Examples:
  chatetl plan --job real_chats --from 2024-03-01 --to 2024-03-31
  chatetl plan --job real_chats            # what the next incremental run would load
  chatetl plan --source thulium --from 2024-03-01 --to 2024-03-01
  chatetl plan                             # every job: requests and time at the sources' rates
Requests are printed without their credentials, so plan needs none. Jobs that differ only in
their aggregations share one request per chunk (query fusion; --no-fusion plans them apart).
The totals count every page, estimated where the page count is known only from the answers."
    };
}

macro_rules! run_examples {
    () => {
        "\
Examples:
  chatetl run                                   # every job, from its watermark
  chatetl run --job real_chats --job short_chats
  chatetl run --job 'real_chats*'               # every job whose name starts with real_chats
  chatetl run --source giosg                    # every job of source giosg
  chatetl run --job real_chats --from 2024-03-01 --to 2024-03-31   # reload March
  chatetl run --job real_chats --rebuild        # the whole history into a shadow table, swapped in
  chatetl run --job real_chats --failed         # exactly the windows that failed
  chatetl run --job real_chats --outdated       # fill columns added to the job in older windows
Jobs of different sources run side by side, each source within its own requests_per_second and
concurrency; jobs that differ only in their aggregations share one request per chunk.
Exit codes: 0 every window loaded; 1 some window failed (the others are kept), an outage or the
warehouse; 2 bad usage or configuration (also an unset credential variable of a source the jobs
read, or a job of a disabled source); 3 refused credentials; 4 a refused request or an unreadable
answer; 130 interrupted (SIGINT/SIGTERM: the windows in flight commit, the run is recorded)."
    };
}

macro_rules! backfill_examples {
    () => {
        "\
Examples:
  chatetl backfill --job real_chats --from 2023-01-01 --to 2023-12-31 --concurrency 4
  chatetl backfill --job 'thulium*daily' --from 2024-01-01 --to 2024-06-30   # a glob must match one job
Re-running the same command skips windows already loaded with the job's current definition
(--force reloads them). A backfill never moves a watermark backwards."
    };
}

macro_rules! schedule_examples {
    () => {
        "\
Examples:
  chatetl schedule                                  # health and metrics on 127.0.0.1:9464
  chatetl schedule --listen 0.0.0.0:9464 --concurrency 2
  curl -s localhost:9464/metrics; curl -s localhost:9464/healthz
  kill -HUP <pid>                                   # re-read chatetl.yaml and the job files
Each tick of a job is an incremental run: every complete window from the watermark (plus the
job's lookback), so a daemon that was down catches up on its first tick. Schedules are cron
expressions with six fields (seconds first), evaluated on the wall clock of the job's zone."
    };
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check chatetl.yaml and every job file; report every problem with file:line:col.
    #[command(after_help = validate_examples!())]
    Validate(ValidateArgs),
    /// Print jobs' windows and the exact request bodies; send nothing (no credentials needed).
    #[command(after_help = plan_examples!(), after_long_help = concat!(plan_examples!(), "\n\n", select_range_help!()))]
    Plan(PlanArgs),
    /// Load jobs: without a range, incrementally from each watermark; with one, reload exactly it.
    #[command(after_help = run_examples!(), after_long_help = concat!(run_examples!(), "\n\n", select_range_help!()))]
    Run(RunArgs),
    /// Load a long range in chunks, with bounded concurrency and a progress bar; resumable.
    #[command(after_help = backfill_examples!(), after_long_help = concat!(backfill_examples!(), "\n\n", select_range_help!()))]
    Backfill(BackfillArgs),
    /// Run every scheduled job on its cron schedule until SIGTERM/SIGINT (SIGHUP reloads job files).
    #[command(after_help = schedule_examples!())]
    Schedule(ScheduleArgs),
    /// Per job: watermark, last run, rows and last error.
    #[command(
        after_help = status_examples!(),
        after_long_help = concat!(status_examples!(), "\n\n", select_help!())
    )]
    Status(StatusArgs),
    /// Print the external-table DDL that lets BigQuery, Snowflake, Athena, Trino, Databricks or
    /// DuckDB read a job's table from a Parquet warehouse; send nothing.
    #[command(after_help = DDL_HELP)]
    Ddl(DdlArgs),
    /// Ask each source once per endpoint a job uses and check its answers against every
    /// assumption chatetl makes where the vendors' docs are silent (docs/assumptions.md).
    #[command(after_help = PROBE_HELP)]
    Probe(ProbeArgs),
    /// Serve the vendor APIs on loopback from a deterministic synthetic dataset.
    #[cfg(feature = "simulator")]
    #[command(after_help = SIMULATE_EXAMPLES)]
    Simulate(SimulateArgs),
    /// Built-in simulator + every shipped job -> a local warehouse, then a summary.
    #[cfg(feature = "simulator")]
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(DemoArgs),
}

#[cfg(feature = "simulator")]
const DEMO_EXAMPLES: &str = "\
Examples:
  chatetl demo                          # last 30 days into ./warehouse (Parquet)
  chatetl demo --days 7 --out /tmp/wh
  chatetl demo --postgres postgres://postgres@127.0.0.1:5432/postgres   # schema chatetl_demo";

#[derive(Debug, Args)]
struct RangeArgs {
    /// Start of the range (see below).
    #[arg(long, value_name = "DATE|DATETIME", requires = "to")]
    from: Option<String>,
    /// End of the range (a date is inclusive).
    #[arg(long, value_name = "DATE|DATETIME", requires = "from")]
    to: Option<String>,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Report unset credential variables as errors (exit 2), not warnings.
    #[arg(long)]
    strict: bool,
}

/// `--job` and `--source`: which jobs a command works on.
#[derive(Debug, Args)]
struct SelectArgs {
    /// Jobs by name or glob (repeatable; quote globs for the shell).
    #[arg(long = "job", value_name = "NAME|GLOB")]
    jobs: Vec<String>,
    /// The jobs of this source (repeatable).
    #[arg(long = "source", value_name = "NAME")]
    sources: Vec<String>,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Jobs to plan; every enabled job when neither --job nor --source is given.
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    range: RangeArgs,
    /// Plan each job's own requests, as `run --no-fusion` sends them.
    #[arg(long)]
    no_fusion: bool,
    /// Also print the request bodies when planning every job (with --job or --source they are
    /// always printed).
    #[arg(long)]
    bodies: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Jobs to run; every enabled job when neither --job nor --source is given.
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    range: RangeArgs,
    /// Requests (chunks) in flight per job.
    #[arg(long, default_value_t = 2, value_parser = at_least_one::<usize>)]
    concurrency: usize,
    /// Load the job's whole history again with its current definition (after a definition
    /// change) into a shadow table that replaces the live one when every window is loaded; the
    /// live table keeps serving until then. An interrupted rebuild resumes. Refused for snapshot
    /// jobs, whose captures cannot be fetched again.
    #[arg(long, conflicts_with_all = ["from", "to", "failed", "outdated"])]
    rebuild: bool,
    /// Reload exactly the windows whose last load attempt failed (`status` counts them).
    #[arg(long, conflicts_with_all = ["from", "to", "outdated"])]
    failed: bool,
    /// Reload the windows loaded before columns were added to the job (added aggregations):
    /// fills the new columns in that history (`status` counts them).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    outdated: bool,
    /// Send each job's own requests, even where jobs differ only in their aggregations and could
    /// share one request per chunk (query fusion, the default).
    #[arg(long)]
    no_fusion: bool,
    /// Print the summary as one JSON line on stdout (exit code, retryable, per job, errors) for
    /// an orchestrator, instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BackfillArgs {
    /// The job to backfill, by name or by a glob that matches exactly one job.
    #[arg(long, value_name = "NAME|GLOB")]
    job: String,
    /// Look for the job among this source's jobs only.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// First day (or instant) of the range.
    #[arg(long, value_name = "DATE|DATETIME")]
    from: String,
    /// Last day (inclusive) or end instant.
    #[arg(long, value_name = "DATE|DATETIME")]
    to: String,
    /// Requests (chunks) in flight.
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    concurrency: usize,
    /// Reload windows that are already loaded.
    #[arg(long)]
    force: bool,
    /// Print the summary as one JSON line on stdout, as `run --json` does.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ScheduleArgs {
    /// Address of the health (/healthz) and Prometheus metrics (/metrics) endpoint.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Requests (chunks) in flight per job run, as for backfill.
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    concurrency: usize,
    /// Seconds runs in flight may take to finish after SIGTERM/SIGINT before they are rolled back.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Run every scheduled job once at start (the catch-up after downtime) instead of waiting
    /// for its first fire time; /readyz turns 200 once each has run without a failed window.
    #[arg(long)]
    catch_up: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Jobs to show; every job (disabled ones too) when neither --job nor --source is given.
    #[command(flatten)]
    select: SelectArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const DDL_HELP: &str = "\
Examples:
  chatetl ddl --engine duckdb --job real_chats | duckdb lake.db      # a view over the local warehouse
  chatetl ddl --engine athena --job 'real_chats*' --location s3://bucket/chatetl
  chatetl ddl --engine bigquery --job real_chats --location gs://bucket/chatetl
--location is the warehouse's root as the engine reaches it (default: the configured Parquet
path). Placeholders in capitals (DATASET, STAGE, SCHEMA) are yours to fill in.";

#[derive(Debug, Args)]
struct DdlArgs {
    /// The engine whose SQL is printed.
    #[arg(long, value_enum)]
    engine: chatetl::ddl::Engine,
    /// Jobs by name or glob (repeatable); every enabled job when none is given.
    #[command(flatten)]
    select: SelectArgs,
    /// The warehouse's root as the engine reads it: s3://bucket/prefix, gs://…, az://…, a path.
    #[arg(long, value_name = "URL")]
    location: Option<String>,
}

const PROBE_HELP: &str = "\
Examples:
  chatetl probe                      # every source, one request per endpoint its jobs use
  chatetl probe --source giosg --json > probe.json   # send this to the maintainers

Each assumption is reported as confirmed, contradicted (with what was seen and what to change) or
not observable. Nothing is written to the warehouse. Exit codes: 0 every endpoint answered
(contradictions included: they are findings), 1/3/4 a request failed as `run` would (an outage,
refused credentials, a refused request).";

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Only this source.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "simulator")]
#[derive(Debug, Args)]
struct DemoArgs {
    /// Complete days to load, ending yesterday.
    #[arg(long, default_value_t = 30, value_parser = at_least_one::<u32>)]
    days: u32,
    /// Parquet warehouse folder.
    #[arg(long, default_value = "warehouse")]
    out: PathBuf,
    /// Load into this PostgreSQL database (schema chatetl_demo) instead of Parquet.
    #[arg(long, value_name = "URL", env = "CHATETL_DEMO_POSTGRES", hide_env_values = true)]
    postgres: Option<String>,
    /// Average chat sessions per simulated day.
    #[arg(long, default_value_t = 200)]
    sessions_per_day: u32,
}

#[cfg(feature = "simulator")]
const SIMULATE_EXAMPLES: &str = "\
Examples:
  chatetl simulate --listen 127.0.0.1:8089 --start 2024-03-25 --days 14
  chatetl simulate --seed 7 --days 3 --dump-dataset dataset.jsonl
  chatetl simulate --dataset dataset.jsonl --error-rate 0.1 --throttle-rate 0.05 --latency-ms 50
  chatetl simulate --count-metric-name field_count --omit-empty-buckets   # another reading of 002

  curl -s -H 'Authorization: Token sim-token' localhost:8089/_sim/organizations
Faults for one request: header `x-sim-fault: error_rate=1,error_statuses=503`.
The dataset format and every API assumption: docs/simulator.md.";

#[cfg(feature = "simulator")]
#[derive(Debug, Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Serve this dataset file (JSON Lines) instead of generating one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seed", "start", "days"])]
    dataset: Option<PathBuf>,
    /// Write the dataset to FILE as JSON Lines and exit without serving.
    #[arg(long, value_name = "FILE")]
    dump_dataset: Option<PathBuf>,
    /// Generator seed: the same seed, start and sizes give the same dataset.
    #[arg(long)]
    seed: Option<u64>,
    /// First local date of the dataset [default: the last --days days up to today].
    #[arg(long, value_name = "YYYY-MM-DD")]
    start: Option<NaiveDate>,
    /// Number of days generated.
    #[arg(long, value_parser = at_least_one::<u32>)]
    days: Option<u32>,
    /// Organizations (each with its own rooms, teams, users and API token).
    #[arg(long, default_value_t = 2, value_parser = at_least_one::<u32>)]
    organizations: u32,
    /// Rooms per organization.
    #[arg(long, default_value_t = 4)]
    rooms: u32,
    /// Teams per organization.
    #[arg(long, default_value_t = 3)]
    teams: u32,
    /// Users (operators) per organization.
    #[arg(long, default_value_t = 12)]
    users: u32,
    /// Average chat sessions per day (weekdays busier, nights quieter).
    #[arg(long, default_value_t = 200)]
    sessions_per_day: u32,
    /// Thulium users (agents) per organization, each with 1 to 4 chats a day; 0 generates no
    /// Thulium data.
    #[arg(long, default_value_t = 12)]
    thulium_users: u32,
    /// Comm100 agents per organization (site); Agents pages through them.
    #[arg(long, default_value_t = 12)]
    comm100_agents: u32,
    /// Zone of the local clock that drives daily seasonality and the midnight-edge sessions.
    #[arg(long, default_value = "Europe/Helsinki")]
    time_zone: String,
    /// API token of the first organization; organization i > 0 gets `<token>-org<i>`.
    #[arg(long, env = "CHATETL_SIM_TOKEN", default_value = "sim-token", hide_env_values = true)]
    token: String,
    /// Fixed delay before each answer, in milliseconds.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    latency_ms: u64,
    /// Extra random delay up to this many milliseconds.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    jitter_ms: u64,
    /// Fraction of requests answered with a server error (see --error-statuses).
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    error_rate: f64,
    /// Statuses used for server errors.
    #[arg(long, value_delimiter = ',', default_value = "500,502,503", help_heading = "Faults")]
    error_statuses: Vec<u16>,
    /// Fraction of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    throttle_rate: f64,
    /// Retry-After seconds sent with 429 answers.
    #[arg(long, default_value_t = 1, help_heading = "Faults")]
    retry_after_secs: u64,
    /// Fraction of requests whose connection is dropped before a complete response.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    reset_rate: f64,
    /// Fraction of requests whose body is cut in half.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    truncate_rate: f64,
    /// Requests per second allowed per API key (more get 429).
    #[arg(long, help_heading = "Faults")]
    rps_limit: Option<f64>,
    /// Seed of the random fault draws.
    #[arg(long, default_value_t = 1, help_heading = "Faults")]
    fault_seed: u64,
    /// What chat_sessions answers call the metric of a count on a field: `count`,
    /// `chat_session_id_count` (field_count) or `chat_session_id` (field).
    #[arg(
        long,
        default_value = "count",
        value_parser = clap::builder::TypedValueParser::map(
            clap::builder::PossibleValuesParser::new(CountMetricName::NAMES),
            |s: String| s.parse::<CountMetricName>().expect("one of NAMES")
        ),
        help_heading = "Assumptions"
    )]
    count_metric_name: CountMetricName,
    /// Answers without group_by leave out buckets with no rows (and workflow answers that
    /// matched nothing have no line) instead of answering them with count 0.
    #[arg(long, help_heading = "Assumptions")]
    omit_empty_buckets: bool,
    /// How an events query with `day`/`hour` granularity is answered: `answered` (a line per
    /// bucket), `refused` (400) or `one_bucket` (the whole interval as one bucket).
    #[arg(
        long,
        default_value = "answered",
        value_parser = clap::builder::TypedValueParser::map(
            clap::builder::PossibleValuesParser::new(EventBuckets::NAMES),
            |s: String| s.parse::<EventBuckets>().expect("one of NAMES")
        ),
        help_heading = "Assumptions"
    )]
    event_buckets: EventBuckets,
    /// How an events query with several aggregations (a workflow query averaging several fields)
    /// is answered: `answered`, `refused` (400) or `first_only` (only the first metric).
    #[arg(
        long,
        default_value = "answered",
        value_parser = clap::builder::TypedValueParser::map(
            clap::builder::PossibleValuesParser::new(EventAggregations::NAMES),
            |s: String| s.parse::<EventAggregations>().expect("one of NAMES")
        ),
        help_heading = "Assumptions"
    )]
    event_aggregations: EventAggregations,
}

/// A count that must be at least 1 (`--concurrency 0` would never send a request), for clap's
/// `value_parser`: clap refuses anything else with exit 2, naming the flag.
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err("expected a whole number of at least 1".to_string()),
    }
}

/// An error the user can fix by changing arguments or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print and end die quietly when their reader goes away (`chatetl plan | head`),
    // as Unix tools do; the long-running ones keep Rust's default (SIGPIPE ignored, EPIPE errors).
    #[cfg(unix)]
    if matches!(cli.command, Command::Validate(_) | Command::Plan(_) | Command::Status(_) | Command::Ddl(_)) {
        // SAFETY: called before any thread starts; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    telemetry::init(cli.log_format, cli.verbose as i8 - cli.quiet as i8);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A typed error's kind decides (a malformed warehouse url is a configuration error).
            let kind = e
                .downcast_ref::<chatetl::runner::RunError>()
                .map(|r| r.kind())
                .or_else(|| e.downcast_ref::<chatetl::sink::SinkError>().map(|s| s.kind));
            match (e.downcast_ref::<UsageError>(), kind) {
                (Some(_), _) => ExitCode::from(2),
                (None, Some(kind)) => ExitCode::from(kind.exit_code()),
                (None, None) => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // Credentials are asked for by the commands that contact a source, for those sources.
        Command::Validate(args) => commands::validate(&cli.config, load_config(&cli.config)?, args),
        Command::Plan(args) => commands::plan(load_config(&cli.config)?, args).await,
        Command::Run(args) => commands::run(load_config(&cli.config)?, args).await,
        Command::Backfill(args) => commands::backfill(load_config(&cli.config)?, args).await,
        Command::Status(args) => commands::status(load_config(&cli.config)?, args).await,
        Command::Ddl(args) => commands::ddl(load_config(&cli.config)?, args),
        Command::Probe(args) => commands::probe(load_config(&cli.config)?, args).await,
        // The daemon runs every enabled job, and re-reads the files on SIGHUP with
        // `config::load`: both need the credentials of every enabled source a job names.
        Command::Schedule(args) => {
            let config = chatetl::config::load(&cli.config).map_err(|e| UsageError(e.to_string()))?;
            commands::schedule(cli.config.clone(), config, args).await
        }
        #[cfg(feature = "simulator")]
        Command::Simulate(args) => simulate(args).await,
        #[cfg(feature = "simulator")]
        Command::Demo(args) => commands::demo(args).await,
    }
}

/// Loads the configuration, leaving unset credential variables to the commands that contact
/// a source; every problem is a usage error (exit 2).
fn load_config(path: &std::path::Path) -> anyhow::Result<chatetl::config::Config> {
    chatetl::config::load_deferred(path).map_err(|e| UsageError(e.to_string()).into())
}

#[cfg(feature = "simulator")]
async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let tz = chatetl::time::parse_tz(&args.time_zone).map_err(UsageError)?;
    let dataset = match &args.dataset {
        Some(path) => Dataset::read(path).map_err(UsageError)?,
        None => {
            let days = args.days.unwrap_or(30);
            let today = chrono::Utc::now().with_timezone(&tz).date_naive();
            let spec = DatasetSpec {
                seed: args.seed.unwrap_or(42),
                start: args.start.unwrap_or(today - chrono::Duration::days(days as i64 - 1)),
                days,
                organizations: args.organizations,
                rooms_per_org: args.rooms,
                teams_per_org: args.teams,
                users_per_org: args.users,
                sessions_per_day: args.sessions_per_day,
                time_zone: tz,
                token: args.token.clone(),
                thulium_users_per_org: args.thulium_users,
                comm100_agents: args.comm100_agents,
            };
            dataset::generate(&spec)
        }
    };
    if let Some(path) = &args.dump_dataset {
        dataset.write(path).map_err(anyhow::Error::msg)?;
        eprintln!(
            "wrote {} organizations, {} chat session rows, {} events, {} Thulium chats, {} realtime rooms and \
             users, {} Comm100 agents to {}",
            dataset.organizations.len(),
            dataset.chat_session_rows.len(),
            dataset.events.len(),
            dataset.thulium_chats.len(),
            dataset.realtime_rooms.len() + dataset.realtime_users.len(),
            dataset.comm100.agents.len(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (name, rate) in [
        ("--error-rate", args.error_rate),
        ("--throttle-rate", args.throttle_rate),
        ("--reset-rate", args.reset_rate),
        ("--truncate-rate", args.truncate_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(UsageError(format!("{name} must be between 0 and 1, got {rate}")).into());
        }
    }
    let faults = FaultConfig {
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        error_rate: args.error_rate,
        error_statuses: args.error_statuses,
        throttle_rate: args.throttle_rate,
        retry_after_secs: Some(args.retry_after_secs),
        reset_rate: args.reset_rate,
        truncate_rate: args.truncate_rate,
        rps_limit: args.rps_limit,
        // Response rewriting is for tests (rules or the `x-sim-fault` header), not a server flag.
        ..FaultConfig::default()
    };
    let orgs: Vec<String> = dataset.organizations.iter().map(|o| o.id.clone()).collect();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("simulator on http://{} serving organizations {}", listener.local_addr()?, orgs.join(", "));
    let assumptions =
        Assumptions { count_metric_name: args.count_metric_name, omit_empty_buckets: args.omit_empty_buckets };
    if assumptions != Assumptions::default() {
        eprintln!("answering with {assumptions:?}");
    }
    let event_queries = EventQueries { buckets: args.event_buckets, aggregations: args.event_aggregations };
    if event_queries != EventQueries::default() {
        eprintln!("answering events queries with {event_queries:?}");
    }
    Simulator::new(dataset, faults, args.fault_seed)
        .with_assumptions(assumptions)
        .with_event_queries(event_queries)
        .serve(listener, shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
#[cfg(feature = "simulator")]
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn help_and_long_help_both_show_the_examples_and_run_its_exit_codes() {
        let mut cli = Cli::command();
        cli.build();
        for name in ["validate", "plan", "run", "backfill", "schedule", "status", "probe"] {
            let sub = cli.find_subcommand_mut(name).unwrap_or_else(|| panic!("no subcommand {name}"));
            let (short, long) = (sub.render_help().to_string(), sub.render_long_help().to_string());
            for (which, text) in [("-h", &short), ("--help", &long)] {
                assert!(text.contains("chatetl "), "{name} {which} shows no example:\n{text}");
            }
            if matches!(name, "run" | "backfill" | "plan") {
                assert!(long.contains("A range is clamped"), "{name} --help explains ranges:\n{long}");
            }
        }
        let run = cli.find_subcommand_mut("run").unwrap().render_long_help().to_string();
        assert!(run.contains("130 interrupted") && run.contains("3 refused credentials"), "{run}");
        for line in run.lines() {
            assert!(line.chars().count() <= 100, "a help line wider than 100 columns wraps: {line}");
        }
    }
}

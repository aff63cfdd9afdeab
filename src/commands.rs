//! The exporter's subcommands: resolve arguments against the configuration, call the library,
//! print results. Output that scripts read (plan bodies, status JSON, summaries) goes to stdout;
//! logs go to stderr.

use std::process::ExitCode;

use anyhow::Context;
use chatetl::config::{Config, Job, JobKind, Selection};
use chatetl::error::ErrorKind;
use chatetl::plan::{self, Window};
use chatetl::runner::{Progress, RunKind, RunOptions, RunReport, Runner};
use chrono::{DateTime, Utc};

#[cfg(feature = "simulator")]
use crate::DemoArgs;
use crate::{
    BackfillArgs, DdlArgs, PlanArgs, ProbeArgs, RangeArgs, RunArgs, ScheduleArgs, SelectArgs, StatusArgs, UsageError,
    ValidateArgs,
};

/// The jobs `--job` and `--source` choose, or a usage error naming what matched nothing.
fn select<'a>(config: &'a Config, args: &SelectArgs) -> anyhow::Result<Selection<'a>> {
    chatetl::config::select(config, &args.jobs, &args.sources).map_err(|e| UsageError(e).into())
}

/// Whether the command line chose jobs (else a command works on every enabled job).
fn chosen(args: &SelectArgs) -> bool {
    !args.jobs.is_empty() || !args.sources.is_empty()
}

/// Tells which selected jobs are left out because their source is disabled.
fn note_disabled(selection: &Selection) {
    if !selection.disabled.is_empty() {
        let names: Vec<&str> = selection.disabled.iter().map(|j| j.name.as_str()).collect();
        eprintln!("note: left out, their source has `enabled: false`: {}", names.join(", "));
    }
}

/// A usage error (exit 2) naming every unset credential variable of the sources of `jobs`, which
/// the command is about to contact; never their values.
fn require_credentials(config: &Config, jobs: &[Job]) -> anyhow::Result<()> {
    config.require_credentials(jobs.iter().map(|j| j.source.as_str())).map_err(|e| {
        let sources: std::collections::BTreeSet<&str> = jobs
            .iter()
            .map(|j| j.source.as_str())
            .filter(|s| config.sources.get(*s).is_some_and(|s| !s.unset.is_empty()))
            .collect();
        let sources: Vec<&str> = sources.into_iter().collect();
        UsageError(format!(
            "cannot contact source {} without its credentials; set these variables (for the simulator: \
             examples/simulator.env):\n{e}",
            sources.join(", ")
        ))
        .into()
    })
}

/// `validate`: every problem of the files (the loader's), then what loads but would fail: a
/// Thulium job whose buckets do not fit the account's zone (an error), unset credential variables
/// (warnings, errors with `--strict`).
pub fn validate(path: &std::path::Path, config: Config, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for failure in &config.window_failures {
        if config.jobs.contains_key(&failure.job) {
            errors.push(failure.diagnostic.to_string());
        } else {
            warnings.push(format!("{} (job {} is disabled)", failure.diagnostic, failure.job));
        }
    }
    for unset in config.unset_variables(config.sources.keys().map(String::as_str)) {
        let source = config.sources.values().find(|s| s.unset.contains(unset)).map_or("", |s| s.name.as_str());
        let line = format!("{}; run, backfill and schedule need it to contact source {source}", unset.at);
        if args.strict { errors.push(line) } else { warnings.push(line) }
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if !errors.is_empty() {
        return Err(UsageError(errors.join("\n")).into());
    }
    let disabled: Vec<String> = config
        .sources
        .values()
        .filter(|s| !s.enabled)
        .map(|s| {
            let jobs = config.disabled_jobs.values().filter(|j| j.source == s.name).count();
            format!("source {} disabled with its {jobs} jobs", s.name)
        })
        .collect();
    let mut notes = disabled;
    if !warnings.is_empty() {
        notes.push(format!("{} warnings", warnings.len()));
    }
    println!(
        "{}: ok ({} sources, {} jobs in {}){}",
        path.display(),
        config.sources.len(),
        config.jobs.len() + config.disabled_jobs.len(),
        config.jobs_dir.display(),
        if notes.is_empty() { String::new() } else { format!("; {}", notes.join("; ")) }
    );
    Ok(ExitCode::SUCCESS)
}

/// The windows of `range` for `job` at `now`, clamped to its history and its last complete
/// window (a note on stderr says how), and the instant after which windows are incomplete; `None`
/// when no range was given. A range wholly outside is a usage error saying why.
fn range_windows(
    job: &Job,
    range: &RangeArgs,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<(Vec<Window>, DateTime<Utc>)>> {
    let (Some(from), Some(to)) = (&range.from, &range.to) else { return Ok(None) };
    if job.kind == JobKind::Snapshot {
        return Err(UsageError(format!(
            "job {}: endpoint {} has no history, so a snapshot job cannot load a range; run it without \
             --from/--to (or on a schedule) to capture the current state",
            job.name,
            job.endpoint.name()
        ))
        .into());
    }
    let (from, to) =
        plan::parse_range(from, to, job.time_zone).map_err(|e| UsageError(format!("job {}: {e}", job.name)))?;
    let settle = chrono::Duration::seconds(job.settle_secs as i64);
    let checked = plan::clamp_range(job.window, job.time_zone, job.start, from, to, now, settle, job.include_partial)
        .map_err(|e| UsageError(format!("job {}: {e}", job.name)))?;
    for note in &checked.notes {
        eprintln!("note: job {}: the range {note}", job.name);
    }
    Ok(Some((plan::windows_overlapping(job.window, job.time_zone, checked.from, checked.to), checked.partial_after)))
}

/// Windows of `job` that `run --failed` or `run --outdated` reloads, as the warehouse lists them.
/// Outdated windows are those loaded with another definition than the job file's: before the
/// columns were added, including when this very run adds them.
async fn listed_windows(runner: &Runner, job: &Job, kind: RunKind) -> anyhow::Result<Vec<Window>> {
    Ok(match kind {
        RunKind::Failed => runner
            .sink
            .window_failures(&job.name)
            .await?
            .values()
            .map(|f| Window { start: f.window_start, end: f.window_end })
            .collect(),
        _ => {
            let current = chatetl::state::definition_hash(job);
            runner
                .sink
                .window_loads(&job.name)
                .await?
                .values()
                .filter(|l| l.definition_hash != current)
                .map(|l| Window { start: l.window_start, end: l.window_end })
                .collect()
        }
    })
}

/// A token cancelled by the first SIGINT or SIGTERM: the run starts no new chunk, lets those in
/// flight commit, records itself as interrupted and prints its summary. A second signal ends the
/// process at once (exit 130); the next run of the job records that run as died.
fn interrupt_token() -> anyhow::Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if n > 0 {
                eprintln!("{name} again: stopping now");
                std::process::exit(130);
            }
            eprintln!("{name}: finishing the windows in flight, then stopping (again to stop now)");
            cancel.cancel();
        }
    });
    Ok(token)
}

pub async fn plan(config: Config, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let selection = select(&config, &args.select)?;
    // Planning sends nothing: a disabled job may be planned when it is chosen.
    let mut jobs: Vec<Job> = selection.enabled.iter().map(|j| (*j).clone()).collect();
    if chosen(&args.select) {
        jobs.extend(selection.disabled.iter().map(|j| (*j).clone()));
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    // As `run` does, a range leaves out snapshot jobs (they have no history) unless named.
    if args.range.from.is_some() {
        jobs.retain(|j| j.kind == JobKind::Windowed || args.select.jobs.contains(&j.name));
    }
    let now = Utc::now();
    let mut planned = Vec::new();
    for job in &jobs {
        planned.push((job, range_windows(job, &args.range, now)?.map(|(w, _)| w)));
    }
    let runner = match planned.iter().any(|(_, w)| w.is_none()) {
        true => Some(Runner::open(config.clone()).await?),
        false => None,
    };
    let mut windows_of = Vec::new();
    for (job, windows) in planned {
        windows_of.push(match (windows, &runner) {
            (Some(w), _) => w,
            (None, Some(runner)) => runner.incremental_windows(job, now).await?.0,
            (None, None) => unreachable!("a runner is opened for incremental plans"),
        });
    }
    let refs: Vec<&Job> = jobs.iter().collect();
    let groups = if args.no_fusion {
        (0..refs.len()).map(|i| vec![i]).collect()
    } else {
        plan::fusion::groups_in(&config, &refs)
    };
    let bodies = chosen(&args.select) || args.bodies;
    let mut totals: Vec<PlannedRequests> = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        if i > 0 && bodies {
            println!();
        }
        let members: Vec<(&Job, &[Window])> = group.iter().map(|&j| (refs[j], windows_of[j].as_slice())).collect();
        totals.push(plan_group(&config, &members, bodies)?);
    }
    if !bodies || groups.len() > 1 {
        if bodies {
            println!();
        }
        print!("{}", plan_totals(&config, &totals));
    }
    Ok(ExitCode::SUCCESS)
}

/// What one planned unit (a job, or jobs sharing requests) sends.
struct PlannedRequests {
    jobs: Vec<String>,
    source: String,
    /// Requests of the first page of each.
    requests: u64,
    /// Every page, estimated where the page count is known only from the answers.
    with_pages: u64,
    /// Whether `with_pages` is an estimate (a lower bound).
    estimated: bool,
}

/// Prints one unit's windows and, with `bodies`, the requests that load them (without
/// credentials); returns what it sends.
fn plan_group(config: &Config, members: &[(&Job, &[Window])], bodies: bool) -> anyhow::Result<PlannedRequests> {
    let lead = members[0].0;
    let source_config = config
        .sources
        .get(&lead.source)
        .with_context(|| format!("job {}: unknown source {}", lead.name, lead.source))?;
    let fused = (members.len() > 1).then(|| {
        let jobs: Vec<&Job> = members.iter().map(|(j, _)| *j).collect();
        plan::fusion::Fused::new(&jobs)
    });
    let fetch_job = fused.as_ref().map_or(lead, |f| &f.job);
    let mut all: Vec<Window> = members.iter().flat_map(|(_, w)| w.iter().copied()).collect();
    all.sort();
    all.dedup();
    let api = chatetl::source::api(lead.endpoint);
    let chunks = plan::chunk(&all, lead.max_windows_per_request);
    let (mut requests, mut with_pages, mut estimated) = (0u64, 0u64, false);
    for chunk in &chunks {
        let n = api.requests(source_config, fetch_job, chunk).len() as u64;
        requests += n;
        match api.pages(fetch_job, chunk) {
            Some(pages) => {
                with_pages += n * u64::from(pages);
                estimated = true;
            }
            None => with_pages += n,
        }
    }
    let disabled = if source_config.enabled { "" } else { " (disabled: its source has `enabled: false`)" };
    let unit = |job: &Job| match job.window {
        chatetl::config::WindowUnit::Day => "day",
        chatetl::config::WindowUnit::Hour => "hour",
        chatetl::config::WindowUnit::Snapshot => "snapshot",
    };
    let pages = if estimated { format!(" (about {with_pages} with pages)") } else { String::new() };
    let at_rate = format!(
        ", {} at {}/s",
        human_secs(with_pages as f64 / source_config.requests_per_second),
        source_config.requests_per_second
    );
    if fused.is_some() {
        let names: Vec<&str> = members.iter().map(|(j, _)| j.name.as_str()).collect();
        println!(
            "jobs {}{disabled} share one request per chunk (they differ only in aggregations): {} {} windows in {} ({}), \
             {requests} requests{pages} for all {} instead of {}{at_rate}",
            names.join(", "),
            all.len(),
            unit(lead),
            lead.time_zone.name(),
            if all.is_empty() { "nothing to load".to_string() } else { format!("{} chunks", chunks.len()) },
            names.len(),
            members
                .iter()
                .map(|(j, w)| plan::chunk(w, j.max_windows_per_request)
                    .iter()
                    .map(|c| api.requests(source_config, j, c).len())
                    .sum::<usize>())
                .sum::<usize>(),
        );
        for (job, windows) in members {
            println!("job {}: {} {} windows, in the shared requests", job.name, windows.len(), unit(job));
        }
    } else {
        println!(
            "job {}{disabled}: {} {} windows in {} ({}), {requests} requests{pages}{at_rate}",
            lead.name,
            all.len(),
            unit(lead),
            lead.time_zone.name(),
            if all.is_empty() { "nothing to load".to_string() } else { format!("{} chunks", chunks.len()) },
        );
    }
    if !source_config.unset.is_empty() && bodies {
        let vars: Vec<&str> = source_config.unset.iter().map(|u| u.variable.as_str()).collect();
        eprintln!(
            "note: job {}: source {} has unset variables ({}); plan sends nothing, but run needs them",
            lead.name,
            source_config.name,
            vars.join(", ")
        );
    }
    if bodies {
        for chunk in &chunks {
            let first = chunk[0].label(lead.window, lead.time_zone);
            let last = chunk[chunk.len() - 1].label(lead.window, lead.time_zone);
            println!("\n# windows {first} .. {last} ({} windows)", chunk.len());
            for req in api.requests(source_config, fetch_job, chunk) {
                println!("{} {}", req.method, req.url);
                if let Some(body) = &req.body {
                    println!("{}", serde_json::to_string_pretty(body)?);
                }
            }
        }
    }
    Ok(PlannedRequests {
        jobs: members.iter().map(|(j, _)| j.name.clone()).collect(),
        source: lead.source.clone(),
        requests,
        with_pages,
        estimated,
    })
}

/// The totals of a plan: requests per source and the time they take at the source's
/// `requests_per_second` (sources run side by side, so the whole run takes the longest of them),
/// then in all.
fn plan_totals(config: &Config, planned: &[PlannedRequests]) -> String {
    let mut by_source: std::collections::BTreeMap<&str, (u64, u64, bool, usize)> = Default::default();
    for p in planned {
        let e = by_source.entry(p.source.as_str()).or_default();
        e.0 += p.requests;
        e.1 += p.with_pages;
        e.2 |= p.estimated;
        e.3 += p.jobs.len();
    }
    let mut rows = Vec::new();
    let (mut all, mut longest) = (0u64, 0f64);
    for (source, (requests, with_pages, estimated, jobs)) in &by_source {
        let rate = config.sources.get(*source).map_or(f64::INFINITY, |s| s.requests_per_second);
        let secs = *with_pages as f64 / rate;
        all += with_pages;
        longest = longest.max(secs);
        rows.push(vec![
            source.to_string(),
            jobs.to_string(),
            requests.to_string(),
            format!("{}{with_pages}", if *estimated { "~" } else { "" }),
            format!("{rate}"),
            human_secs(secs),
        ]);
    }
    let jobs: usize = planned.iter().map(|p| p.jobs.len()).sum();
    let first: u64 = planned.iter().map(|p| p.requests).sum();
    let estimated = planned.iter().any(|p| p.estimated);
    rows.push(vec![
        "total".into(),
        jobs.to_string(),
        first.to_string(),
        format!("{}{all}", if estimated { "~" } else { "" }),
        String::new(),
        human_secs(longest),
    ]);
    let mut out = table(&["source", "jobs", "requests", "with pages", "per second", "time at the rate"], &rows);
    out.push('\n');
    if estimated {
        out.push_str(
            "~ estimated: a paged answer's page count is known only from the answers (at least one row per bucket)\n",
        );
    }
    out.push_str("sources run side by side: the run takes as long as its slowest source\n");
    out
}

/// `2 h 5 min`, `3 min 20 s`, `4.2 s`.
fn human_secs(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        _ if secs < 60.0 => format!("{secs:.1} s"),
        _ if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

pub async fn run(config: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let ranged = args.range.from.is_some();
    let listed = match (args.failed, args.outdated) {
        (true, _) => Some(RunKind::Failed),
        (_, true) => Some(RunKind::Outdated),
        _ => None,
    };
    let selection = select(&config, &args.select)?;
    selection.refuse_disabled().map_err(UsageError)?;
    note_disabled(&selection);
    // A range is history: snapshot jobs have none, so `run --from --to` leaves them out unless
    // named exactly (and then refuses them).
    let named = |job: &Job| args.select.jobs.contains(&job.name);
    let chosen: Vec<Job> = selection
        .enabled
        .iter()
        .filter(|j| !(ranged && j.kind == JobKind::Snapshot && !named(j)))
        .map(|j| (*j).clone())
        .collect();
    if chosen.is_empty() && !selection.enabled.is_empty() {
        return Err(UsageError(
            "the jobs chosen are snapshot jobs, which have no history: run them without --from/--to".into(),
        )
        .into());
    }
    // A snapshot's capture cannot be taken again later: a failed one is lost, not reloadable.
    let chosen: Vec<Job> = match listed {
        Some(_) => {
            if let Some(job) = chosen.iter().find(|j| j.kind == JobKind::Snapshot && named(j)) {
                return Err(UsageError(format!(
                    "job {}: a snapshot job has no windows to reload: a capture that failed cannot be taken again \
                     for its time (the upstream only tells the current state), and its columns are filled from \
                     the next capture on",
                    job.name
                ))
                .into());
            }
            chosen.into_iter().filter(|j| j.kind == JobKind::Windowed).collect()
        }
        None => chosen,
    };
    if args.rebuild
        && let Some(job) = chosen.iter().find(|j| j.kind == JobKind::Snapshot)
    {
        return Err(UsageError(chatetl::runner::RunError::SnapshotRebuild { job: job.name.clone() }.to_string()).into());
    }
    let now = Utc::now();
    let mut jobs = Vec::new();
    for job in chosen {
        let windows = range_windows(&job, &args.range, now)?;
        jobs.push((job, windows));
    }
    let contacted: Vec<Job> = jobs.iter().map(|(j, _)| j.clone()).collect();
    require_credentials(&config, &contacted)?;
    let runner = Runner::open(config).await?;
    let interrupt = interrupt_token()?;
    let base = RunOptions {
        concurrency: args.concurrency,
        progress: Progress::Auto,
        force: true,
        cancel: Some(interrupt.clone()),
        ..RunOptions::default()
    };
    // Every job's windows, at one `now`, so jobs that share requests agree on them.
    let now = Utc::now();
    let mut planned: Vec<(Job, Vec<Window>, RunOptions)> = Vec::new();
    let mut fatal = Vec::new();
    for (job, windows) in jobs {
        let mut opts = base.clone();
        let windows = match (args.rebuild, windows, listed) {
            (true, _, _) => Vec::new(),
            (false, Some((w, partial_after)), _) => {
                opts.kind = RunKind::Range;
                opts.partial_after = Some(partial_after);
                w
            }
            (false, None, Some(kind)) => {
                opts.kind = kind;
                // A listed window still in progress (include_partial) stays incomplete.
                let settle = chrono::Duration::seconds(job.settle_secs as i64);
                opts.partial_after = Some(now - settle);
                let w = listed_windows(&runner, &job, kind).await?;
                if w.is_empty() {
                    eprintln!(
                        "note: job {}: no {} windows",
                        job.name,
                        if kind == RunKind::Failed { "failed" } else { "outdated" }
                    );
                }
                w
            }
            (false, None, None) => match runner.incremental_windows(&job, now).await {
                Ok((w, partial_after)) => {
                    opts.kind = RunKind::Incremental;
                    opts.partial_after = Some(partial_after);
                    w
                }
                Err(e) => {
                    fatal.push((e.kind(), format!("job {}: {e:#}", job.name)));
                    continue;
                }
            },
        };
        planned.push((job, windows, opts));
    }
    let order: Vec<String> = planned.iter().map(|(j, _, _)| j.name.clone()).collect();
    let units = units(&runner.config, planned, args.rebuild || args.no_fusion);
    // Sources side by side, each within its own budget (its client's rate and concurrency); a
    // source's jobs one unit after the other.
    let mut by_source: std::collections::BTreeMap<String, Vec<Unit>> = Default::default();
    for unit in units {
        by_source.entry(unit[0].0.source.clone()).or_default().push(unit);
    }
    let (runner, interrupt_ref, rebuild) = (&runner, &interrupt, args.rebuild);
    let per_source = by_source.into_values().map(|units| async move {
        let mut results = Vec::new();
        for mut unit in units {
            if interrupt_ref.is_cancelled() {
                break;
            }
            // A snapshot is the state when it is captured: its window (its `captured_at`) is
            // the instant its turn comes, not the instant the run started.
            if unit.len() == 1 && unit[0].0.kind == JobKind::Snapshot && unit[0].2.kind == RunKind::Incremental {
                let (job, windows, opts) = &mut unit[0];
                match runner.incremental_windows(job, Utc::now()).await {
                    Ok((w, partial_after)) => (*windows, opts.partial_after) = (w, Some(partial_after)),
                    Err(e) => {
                        results.push((job.name.clone(), Err(e)));
                        continue;
                    }
                }
            }
            if rebuild {
                for (job, _, opts) in unit {
                    results.push((job.name.clone(), runner.rebuild(&job, Utc::now(), &opts).await));
                }
            } else {
                let opts = unit[0].2.clone();
                let members: Vec<(Job, Vec<Window>)> = unit.into_iter().map(|(j, w, _)| (j, w)).collect();
                results.extend(runner.run_fused(&members, &opts).await);
            }
        }
        results
    });
    let mut results: Vec<(String, Result<RunReport, chatetl::runner::RunError>)> =
        futures::future::join_all(per_source).await.into_iter().flatten().collect();
    results.sort_by_key(|(name, _)| order.iter().position(|n| n == name));
    let mut reports = Vec::new();
    for (name, result) in results {
        match result {
            Ok(r) => reports.push(r),
            Err(e) => fatal.push((e.kind(), format!("job {name}: {e:#}"))),
        }
    }
    release_leases(&runner).await;
    finish(&reports, &fatal, interrupt.is_cancelled(), args.json)
}

/// Frees what this process still holds of the shared vendor budget (leases of attempts dropped
/// when a run was cut short), so other processes need not wait for them to expire.
async fn release_leases(runner: &Runner) {
    if let Some(pool) = runner.sink.shared_pool()
        && let Err(error) = chatetl::budget::release_all(pool).await
    {
        tracing::warn!(%error, "cannot release this process's leases of the shared vendor budget; they expire by themselves");
    }
}

/// Jobs run together: one job, or jobs that share requests (query fusion), with their windows and
/// options.
type Unit = Vec<(Job, Vec<Window>, RunOptions)>;

/// Groups planned jobs into [`Unit`]s: jobs whose requests differ only in aggregations
/// ([`plan::fusion::groups`]) and whose runs are of one kind share a unit, unless `separate`.
fn units(config: &Config, planned: Vec<(Job, Vec<Window>, RunOptions)>, separate: bool) -> Vec<Unit> {
    let groups = if separate {
        (0..planned.len()).map(|i| vec![i]).collect()
    } else {
        let jobs: Vec<&Job> = planned.iter().map(|(j, _, _)| j).collect();
        let mut groups = Vec::new();
        for group in plan::fusion::groups_in(config, &jobs) {
            // Runs of another kind (a range, listed windows) or another partial instant stay apart.
            let mut kinds: Vec<Vec<usize>> = Vec::new();
            for i in group {
                let same = |g: &Vec<usize>| {
                    let (a, b) = (&planned[g[0]].2, &planned[i].2);
                    a.kind == b.kind && a.partial_after == b.partial_after
                };
                match kinds.iter_mut().find(|g| same(g)) {
                    Some(g) => g.push(i),
                    None => kinds.push(vec![i]),
                }
            }
            groups.extend(kinds);
        }
        groups
    };
    let mut planned: Vec<Option<(Job, Vec<Window>, RunOptions)>> = planned.into_iter().map(Some).collect();
    groups
        .into_iter()
        .map(|g| g.into_iter().map(|i| planned[i].take().expect("each job in one group")).collect())
        .collect()
}

pub async fn backfill(config: Config, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let select_args = SelectArgs { jobs: vec![args.job.clone()], sources: args.source.clone().into_iter().collect() };
    let selection = select(&config, &select_args)?;
    selection.refuse_disabled().map_err(UsageError)?;
    let job = match selection.enabled.as_slice() {
        [job] => (*job).clone(),
        many => {
            let names: Vec<&str> = many.iter().map(|j| j.name.as_str()).collect();
            return Err(UsageError(format!(
                "backfill loads one job, and `{}` matches {}: {} (name one of them)",
                args.job,
                many.len(),
                names.join(", ")
            ))
            .into());
        }
    };
    let range = RangeArgs { from: Some(args.from), to: Some(args.to) };
    let (windows, partial_after) = range_windows(&job, &range, Utc::now())?.expect("range given");
    require_credentials(&config, std::slice::from_ref(&job))?;
    let runner = Runner::open(config).await?;
    let interrupt = interrupt_token()?;
    let opts = RunOptions {
        kind: RunKind::Backfill,
        concurrency: args.concurrency,
        progress: Progress::Auto,
        force: args.force,
        partial_after: Some(partial_after),
        cancel: Some(interrupt.clone()),
        observer: None,
    };
    let result = runner.run(&job, windows, &opts).await;
    release_leases(&runner).await;
    match result {
        Ok(report) => finish(&[report], &[], interrupt.is_cancelled(), args.json),
        Err(e) => finish(&[], &[(e.kind(), format!("job {}: {e:#}", job.name))], interrupt.is_cancelled(), args.json),
    }
}

/// Prints the run summary and failures. The exit code is the most urgent failure's
/// (`ErrorKind::exit_code`: 3 refused credentials, 4 a refused request or unreadable answer, 2 the
/// configuration, 1 an outage or the warehouse), 1 for a run cut short, 130 when a signal
/// interrupted it, 0 when all went well. With `json`, stdout is one JSON line instead of the
/// table ([`json_summary`]), for an orchestrator (the last line of stdout is what Airflow's
/// BashOperator keeps).
fn finish(
    reports: &[RunReport],
    fatal: &[(ErrorKind, String)],
    interrupted: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let kinds = fatal.iter().map(|(k, _)| *k).chain(reports.iter().filter_map(RunReport::error_kind));
    let code: u8 = match ErrorKind::most_urgent(kinds) {
        _ if interrupted => 130,
        Some(kind) => kind.exit_code(),
        None if reports.iter().any(|r| !r.ok()) => 1,
        None => 0,
    };
    if json {
        println!("{}", json_summary(reports, fatal, interrupted, code));
    } else {
        println!("{}", summary_table(reports));
    }
    for r in reports {
        for f in &r.failures {
            eprintln!("error: {}", f.message);
        }
        if !r.added_columns.is_empty() {
            eprintln!(
                "note: job {}: columns {} were added; windows loaded before hold null there until \
                 `chatetl run --job {} --outdated` reloads them",
                r.job,
                r.added_columns.join(", "),
                r.job
            );
        }
    }
    for (_, f) in fatal {
        eprintln!("error: {f}");
    }
    let mut told = std::collections::BTreeSet::new();
    for r in reports.iter().filter(|r| !r.fused_with.is_empty()) {
        let mut group: Vec<&str> = r.fused_with.iter().map(String::as_str).chain([r.job.as_str()]).collect();
        group.sort();
        if told.insert(group.clone()) {
            eprintln!(
                "note: {} differ only in aggregations and shared one request per chunk (--no-fusion: one each); \
                 a chunk's requests are counted under the first of them",
                group.join(", ")
            );
        }
    }
    if interrupted {
        let cut: Vec<&str> = reports.iter().filter(|r| r.windows_cancelled > 0).map(|r| r.job.as_str()).collect();
        if cut.is_empty() {
            eprintln!("interrupted: every window already started had finished; no further job was started");
        } else {
            eprintln!(
                "interrupted: {} recorded as interrupted; the windows not started keep their old rows",
                cut.join(", ")
            );
        }
    }
    Ok(ExitCode::from(code))
}

/// The one-line JSON summary of a run: its exit code, whether running it again can help
/// (`retryable`: it failed or was interrupted, and every error is of a kind a retry can fix), per
/// job what it did, and every error with its kind.
pub fn json_summary(reports: &[RunReport], fatal: &[(ErrorKind, String)], interrupted: bool, code: u8) -> String {
    let kind_of = |k: ErrorKind| serde_json::json!({"kind": k.as_str(), "retryable": k.retryable()});
    let jobs: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "job": r.job,
                "run_id": r.run_id,
                "status": chatetl::runner::run_status(r, interrupted && r.windows_cancelled > 0),
                "windows": r.windows_planned,
                "loaded": r.windows_loaded,
                "skipped": r.windows_skipped,
                "failed": r.windows_failed,
                "cancelled": r.windows_cancelled,
                "rows": r.rows,
                "requests": r.requests,
                "retries": r.retries,
                "seconds": (r.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "error_kind": r.error_kind().map(|k| k.as_str()),
                "fused_with": r.fused_with,
            })
        })
        .collect();
    let mut errors: Vec<serde_json::Value> = reports
        .iter()
        .flat_map(|r| r.failures.iter().map(move |f| (r.job.as_str(), f.kind, f.message.as_str())))
        .map(|(job, kind, message)| {
            let mut e = kind_of(kind);
            e["job"] = job.into();
            e["message"] = message.into();
            e
        })
        .collect();
    errors.extend(fatal.iter().map(|(kind, message)| {
        let mut e = kind_of(*kind);
        e["message"] = message.as_str().into();
        e
    }));
    let retryable = code != 0 && errors.iter().all(|e| e["retryable"] == true);
    serde_json::json!({
        "summary": "chatetl",
        "exit_code": code,
        "ok": code == 0,
        "retryable": retryable,
        "interrupted": interrupted,
        "jobs": jobs,
        "errors": errors,
    })
    .to_string()
}

/// Per job: windows, loaded, skipped, failed, rows, requests, retries, seconds.
pub fn summary_table(reports: &[RunReport]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.job.clone(),
                r.windows_planned.to_string(),
                r.windows_loaded.to_string(),
                r.windows_skipped.to_string(),
                r.windows_failed.to_string(),
                r.rows.to_string(),
                r.requests.to_string(),
                r.retries.to_string(),
                format!("{:.2}", r.elapsed.as_secs_f64()),
            ]
        })
        .collect();
    table(&["job", "windows", "loaded", "skipped", "failed", "rows", "requests", "retries", "seconds"], &rows)
}

/// A plain text table with aligned columns (numbers right-aligned).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |i: usize| rows.iter().all(|r| r[i].parse::<f64>().is_ok() || r[i] == "-") && !rows.is_empty();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i > 0 && numeric(i) { format!("{c:>w$}", w = widths[i]) } else { format!("{c:<w$}", w = widths[i]) }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// `ddl`: the external-table statements of the chosen jobs' tables for one engine.
pub fn ddl(config: Config, args: DdlArgs) -> anyhow::Result<ExitCode> {
    let location = match (&args.location, &config.warehouse) {
        (Some(l), _) => l.clone(),
        (None, chatetl::config::Warehouse::Parquet { path }) => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            path.display().to_string()
        }
        (None, chatetl::config::Warehouse::Lake { url, .. }) => url.clone(),
        (None, _) => {
            return Err(UsageError(
                "ddl describes a Parquet warehouse, and this configuration's is PostgreSQL: give --location with \
                 the root of a Parquet warehouse (s3://bucket/prefix, gs://…, a path)"
                    .into(),
            )
            .into());
        }
    };
    let selection = select(&config, &args.select)?;
    let mut jobs: Vec<&Job> = selection.enabled.clone();
    if chosen(&args.select) {
        jobs.extend(selection.disabled.iter().copied());
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let schema = chatetl::runner::table_schema(job);
        print!("{}", chatetl::ddl::ddl(args.engine, job, &schema, &location));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(config: Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    // Status reads the warehouse only: no source is contacted, so no credential is needed.
    let selection = select(&config, &args.select)?;
    let mut jobs: Vec<&Job> = selection.enabled.iter().chain(&selection.disabled).copied().collect();
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let zones: std::collections::BTreeMap<String, chrono_tz::Tz> =
        jobs.iter().map(|j| (j.name.clone(), j.time_zone)).collect();
    let definitions: std::collections::BTreeMap<String, (chatetl::state::Definition, JobKind)> =
        jobs.iter().map(|j| (j.name.clone(), (chatetl::state::definition(j), j.kind))).collect();
    let disabled: std::collections::BTreeSet<String> = selection.disabled.iter().map(|j| j.name.clone()).collect();
    let runner = Runner::open(config).await?;
    let statuses = runner.sink.status(&names).await?;
    // Per job: how its definition differs from the stored one, and a rebuild in progress.
    let mut changes = std::collections::BTreeMap::new();
    for s in &statuses {
        let stored = runner.sink.job_state(&s.job).await?;
        let (definition, kind) = &definitions[&s.job];
        let change = chatetl::state::compare(stored.definition_hash.as_deref(), stored.definition.as_ref(), definition);
        let shadow = format!("{}{}", s.job, chatetl::sink::SHADOW_SUFFIX);
        let rebuilding = runner.sink.job_state(&shadow).await?.definition_hash.is_some();
        let rebuilt = if rebuilding { runner.sink.window_loads(&shadow).await?.len() } else { 0 };
        changes.insert(s.job.clone(), (change, *kind, rebuilding.then_some(rebuilt)));
    }
    if args.json {
        let out: Vec<serde_json::Value> = statuses
            .iter()
            .map(|s| {
                let (change, _, rebuilding) = &changes[&s.job];
                let mut v = serde_json::to_value(s).expect("serializable");
                v["watermark_lag_secs"] = serde_json::json!(s.watermark.map(|w| (Utc::now() - w).num_seconds()));
                v["definition_changed"] = serde_json::json!(*change == chatetl::state::Change::Other);
                v["definition_change"] = match change {
                    chatetl::state::Change::Same => serde_json::json!(null),
                    chatetl::state::Change::Added(columns) => serde_json::json!({ "add_columns": columns }),
                    chatetl::state::Change::Other => serde_json::json!("rebuild"),
                };
                v["rebuild_windows_loaded"] = serde_json::json!(rebuilding);
                v["enabled"] = serde_json::json!(!disabled.contains(&s.job));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let local = |t: Option<DateTime<Utc>>, job: &str| match (t, zones.get(job)) {
        (Some(t), Some(tz)) => t.with_timezone(tz).format("%Y-%m-%d %H:%M %Z").to_string(),
        _ => "-".to_string(),
    };
    let definition = |s: &chatetl::state::JobStatus| {
        let (change, kind, rebuilding) = &changes[&s.job];
        let mut text = match (change, kind) {
            (_, _) if s.definition_hash.is_none() => "-".to_string(),
            (chatetl::state::Change::Same, _) if s.windows_outdated > 0 => format!(
                "ok; {} windows lack {}: run --outdated",
                s.windows_outdated,
                if s.added_columns.is_empty() { "added columns".to_string() } else { s.added_columns.join(", ") }
            ),
            (chatetl::state::Change::Same, _) => "ok".to_string(),
            (chatetl::state::Change::Added(columns), _) => {
                format!("ADDED {}: the next run adds the columns", columns.join(", "))
            }
            (chatetl::state::Change::Other, JobKind::Snapshot) => {
                "CHANGED: keep the old definition or use a new table".to_string()
            }
            (chatetl::state::Change::Other, JobKind::Windowed) => "CHANGED: run --rebuild".to_string(),
        };
        if let Some(n) = rebuilding {
            text.push_str(&format!("; rebuild in progress ({n} windows), --rebuild resumes it"));
        }
        text
    };
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let last = s.last_run.as_ref();
            vec![
                if disabled.contains(&s.job) { format!("{} (disabled)", s.job) } else { s.job.clone() },
                local(s.watermark, &s.job),
                s.watermark.map(|w| human_duration(Utc::now() - w)).unwrap_or("-".into()),
                definition(s),
                last.map(|r| format!("{} {}", r.status, local(r.finished_at.or(Some(r.started_at)), &s.job)))
                    .unwrap_or("-".into()),
                last.map(|r| format!("{}/{}", r.requests, r.retries)).unwrap_or("-".into()),
                last.and_then(|r| {
                    r.finished_at.map(|f| format!("{:.1}", (f - r.started_at).num_milliseconds() as f64 / 1000.0))
                })
                .unwrap_or("-".into()),
                s.windows_loaded.to_string(),
                if s.windows_failed > 0 { format!("{}: run --failed", s.windows_failed) } else { "0".to_string() },
                s.rows_loaded.to_string(),
                s.last_error
                    .as_ref()
                    .map(|e| {
                        let kind = s.last_error_kind.map_or(String::new(), |k| format!("[{k}] "));
                        format!("{kind}{}", e.chars().take(80).collect::<String>())
                    })
                    .unwrap_or("-".into()),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "job",
                "watermark",
                "lag",
                "definition",
                "last run",
                "requests/retries",
                "seconds",
                "windows",
                "failed",
                "rows",
                "last error"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `chatetl probe`: one request per source and endpoint, each assumption's verdict.
pub async fn probe(config: Config, args: ProbeArgs) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.source
        && !config.sources.contains_key(name)
    {
        let names: Vec<&str> = config.sources.keys().map(String::as_str).collect();
        return Err(UsageError(format!("unknown source `{name}` (chatetl.yaml defines {})", names.join(", "))).into());
    }
    // It contacts the sources of the jobs it probes: their credentials must be set.
    let probed: Vec<Job> =
        config.jobs.values().filter(|j| args.source.as_ref().is_none_or(|s| *s == j.source)).cloned().collect();
    require_credentials(&config, &probed)?;
    let runner = Runner::open(config).await?;
    let report = chatetl::probe::probe(&runner, args.source.as_deref(), Utc::now()).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let rows: Vec<Vec<String>> = report
            .findings
            .iter()
            .map(|f| {
                vec![
                    f.source.clone(),
                    f.endpoint.to_string(),
                    f.assumption.id.to_string(),
                    f.verdict.as_str().to_string(),
                    f.observed.chars().take(90).collect(),
                ]
            })
            .collect();
        println!("{}", table(&["source", "endpoint", "assumption", "verdict", "observed"], &rows));
        for f in report.findings.iter().filter(|f| f.verdict == chatetl::probe::Verdict::Contradicted) {
            println!(
                "\n{} ({} {}): {}\n  assumed: {}\n  seen: {}\n  made in: {}\n  to change: {}",
                f.assumption.id,
                f.source,
                f.endpoint,
                f.verdict.as_str(),
                f.assumption.statement,
                f.observed,
                f.assumption.code,
                f.assumption.fix
            );
        }
        let count = |v| report.findings.iter().filter(|f| f.verdict == v).count();
        println!(
            "\n{} confirmed, {} contradicted, {} not observable; {} request(s) sent",
            count(chatetl::probe::Verdict::Confirmed),
            count(chatetl::probe::Verdict::Contradicted),
            count(chatetl::probe::Verdict::NotObservable),
            report.requests
        );
    }
    for f in &report.failures {
        eprintln!("error: source {} endpoint {} (job {}): {}", f.source, f.endpoint, f.job, f.message);
    }
    Ok(match ErrorKind::most_urgent(report.failures.iter().map(|f| f.kind)) {
        Some(kind) => ExitCode::from(kind.exit_code()),
        None => ExitCode::SUCCESS,
    })
}

/// `45m`, `26h`, `3d`: how far behind a watermark is.
fn human_duration(d: chrono::Duration) -> String {
    match d.num_minutes() {
        m if m < 120 => format!("{m}m"),
        m if m < 72 * 60 => format!("{}h", m / 60),
        m => format!("{}d", m / (24 * 60)),
    }
}

#[cfg(feature = "simulator")]
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = chatetl::demo::DemoOptions {
        days: args.days,
        out: args.out,
        postgres: args.postgres.map(chatetl::config::Secret::new),
        sessions_per_day: args.sessions_per_day,
    };
    let summary = chatetl::demo::run(&opts).await?;
    println!("chatetl demo: simulator -> {} in {:.1} s\n", summary.warehouse, summary.seconds);
    println!("{}", summary_table(&summary.reports));
    if !summary.sample.is_empty() {
        let fmt = |v: Option<f64>| {
            v.map(|x| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.2}") }).unwrap_or("-".into())
        };
        let rows: Vec<Vec<String>> =
            summary.sample.iter().map(|(d, a, b, c)| vec![d.clone(), fmt(*a), fmt(*b), fmt(*c)]).collect();
        println!(
            "\nlast days, organization scope:\n{}",
            table(&["date", "real_chats", "sales_in_real_chats", "unique_visitors"], &rows)
        );
    }
    let failed = summary.reports.iter().any(|r| !r.ok());
    for r in &summary.reports {
        for f in &r.failures {
            eprintln!("error: {}", f.message);
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `chatetl schedule`: listens first, then opens the warehouse, retrying (with /healthz saying
/// why it is not ready) while it does not answer, so a database that starts after chatetl does
/// not take the service down; then runs the scheduler until SIGTERM/SIGINT.
pub async fn schedule(path: std::path::PathBuf, config: Config, args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    use std::sync::{Arc, RwLock};

    use chatetl::metrics::{HealthCheck, Metrics, Probes};
    use chatetl::scheduler::{Clock, Scheduler, SchedulerOptions};
    use tokio_util::sync::CancellationToken;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {} (--listen): {e}", args.listen)))?;
    eprintln!("chatetl schedule: health and metrics on http://{}", listener.local_addr()?);
    let metrics = Arc::new(Metrics::new());
    // What /healthz answers: why the daemon is not running yet, then the scheduler's check.
    let waiting: Arc<RwLock<Result<(), String>>> =
        Arc::new(RwLock::new(Err("starting: opening the warehouse".to_string())));
    let current: Arc<RwLock<Option<Probes>>> = Arc::new(RwLock::new(None));
    let probe = |pick: fn(&Probes) -> HealthCheck| -> HealthCheck {
        let (waiting, current) = (waiting.clone(), current.clone());
        Arc::new(move || match current.read().expect("health lock").as_ref().map(pick) {
            Some(check) => check(),
            None => {
                let state = waiting.read().expect("health lock").clone();
                Box::pin(async move { state })
            }
        })
    };
    let probes = Probes { health: probe(|p| p.health.clone()), ready: probe(|p| p.ready.clone()) };
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    spawn_signal_handlers(shutdown.clone(), reload_tx)?;
    let server_stop = CancellationToken::new();
    let server =
        tokio::spawn(chatetl::metrics::serve(listener, metrics.clone(), probes, server_stop.clone().cancelled_owned()));

    let mut delay = std::time::Duration::from_secs(1);
    let runner = loop {
        match Runner::open(config.clone()).await {
            Ok(runner) => break Some(runner),
            Err(e) if e.kind() == ErrorKind::Warehouse => {
                tracing::warn!(error = %e, retry_in_secs = delay.as_secs(), "the warehouse does not answer yet; retrying");
                *waiting.write().expect("health lock") =
                    Err(format!("waiting for the warehouse (next attempt in {} s): {e}", delay.as_secs()));
                tokio::select! {
                    _ = shutdown.cancelled() => break None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            Err(e) => {
                server_stop.cancel();
                return Err(e.into());
            }
        }
    };
    if let Some(runner) = runner {
        let opts = SchedulerOptions {
            concurrency: args.concurrency,
            shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_secs),
            catch_up: args.catch_up,
        };
        let scheduler = Scheduler::with_metrics(path, runner, Clock::System, opts, metrics);
        // Healthy implies the freshness gauges are there: read before the probes say so.
        scheduler.load_stored_state().await;
        *current.write().expect("health lock") =
            Some(Probes { health: scheduler.health_check(), ready: scheduler.readiness_check() });
        scheduler.run(shutdown, reload_rx).await;
    }
    server_stop.cancel();
    server.await??;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP sends a reload request.
fn spawn_signal_handlers(
    shutdown: tokio_util::sync::CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); shutdown.cancel(); }
                _ = int.recv() => { tracing::info!("SIGINT received"); shutdown.cancel(); }
                _ = hup.recv() => { tracing::info!("SIGHUP received: reloading the configuration"); let _ = reload.send(()).await; }
            }
        }
    });
    Ok(())
}

//! Choosing jobs on the command line: `--job` names or globs and `--source` names.
//!
//! Owns: [`select`]. A pattern is a glob (`*`, `?`, `[abc]`, `{a,b}`) over job names; a plain
//! name is a glob that matches itself. Every pattern and every source must match at least one
//! job, or the selection fails naming it, so a typo never selects nothing in silence.

use globset::GlobBuilder;

use crate::config::{Config, Job};

/// The jobs a command works on, each list in name order.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    /// Jobs of enabled sources.
    pub enabled: Vec<&'a Job>,
    /// Jobs of disabled sources that were selected too.
    pub disabled: Vec<&'a Job>,
    /// Each pattern or source that matched only disabled jobs, with them (`real_chats`,
    /// `--source comm100`): commands that run jobs refuse these.
    pub only_disabled: Vec<(String, Vec<&'a Job>)>,
}

/// The jobs of `config` whose name matches one of `patterns` (all when there are none) and whose
/// source is one of `sources` (any when there are none). Fails naming an invalid glob, an unknown
/// source, or a pattern or source that matches no job.
pub fn select<'a>(config: &'a Config, patterns: &[String], sources: &[String]) -> Result<Selection<'a>, String> {
    let all = config.all_jobs();
    let names = |jobs: &mut dyn Iterator<Item = &str>| -> String {
        let names: Vec<&str> = jobs.collect();
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    };
    for source in sources {
        if !config.sources.contains_key(source) {
            return Err(format!(
                "unknown source `{source}` (chatetl.yaml defines {})",
                names(&mut config.sources.keys().map(String::as_str))
            ));
        }
    }
    let of_sources = |job: &Job| sources.is_empty() || sources.contains(&job.source);
    let mut matchers = Vec::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("--job `{pattern}` is not a valid glob: {}", e.kind()))?;
        matchers.push((pattern, glob.compile_matcher()));
    }
    let mut selection = Selection::default();
    let mut pick = |what: String, matched: Vec<(&'a Job, bool)>| {
        if !matched.is_empty() && matched.iter().all(|(_, enabled)| !enabled) {
            selection.only_disabled.push((what, matched.iter().map(|(j, _)| *j).collect()));
        }
    };
    for (pattern, matcher) in &matchers {
        let matched: Vec<(&Job, bool)> =
            all.values().filter(|(j, _)| of_sources(j) && matcher.is_match(&j.name)).copied().collect();
        if matched.is_empty() {
            let scope = match sources {
                [] => format!("jobs in {}", config.jobs_dir.display()),
                _ => format!("jobs of source {}", sources.join(", ")),
            };
            let known = names(&mut all.values().filter(|(j, _)| of_sources(j)).map(|(j, _)| j.name.as_str()));
            let what = if pattern.contains(['*', '?', '[', '{']) { "no job matches" } else { "unknown job" };
            return Err(format!("{what} `{pattern}` ({scope}: {known})"));
        }
        pick(pattern.to_string(), matched);
    }
    for source in sources {
        let matched: Vec<(&Job, bool)> = all.values().filter(|(j, _)| j.source == *source).copied().collect();
        if matched.is_empty() {
            return Err(format!("source `{source}` has no jobs in {}", config.jobs_dir.display()));
        }
        if matchers.is_empty() {
            pick(format!("--source {source}"), matched);
        }
    }
    for (job, enabled) in all.values() {
        let named = matchers.is_empty() || matchers.iter().any(|(_, m)| m.is_match(&job.name));
        if named && of_sources(job) {
            if *enabled { selection.enabled.push(job) } else { selection.disabled.push(job) }
        }
    }
    Ok(selection)
}

impl Selection<'_> {
    /// Fails naming what matched only disabled jobs, for commands that run jobs.
    pub fn refuse_disabled(&self) -> Result<(), String> {
        let Some((what, jobs)) = self.only_disabled.first() else { return Ok(()) };
        let sources: std::collections::BTreeSet<&str> = jobs.iter().map(|j| j.source.as_str()).collect();
        let sources = sources.into_iter().collect::<Vec<_>>().join(", ");
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        let why = "`enabled: false` in chatetl.yaml; set it to true to run its jobs";
        Err(if what.starts_with("--source ") {
            format!("source {sources} is disabled ({why})")
        } else if names == [what.as_str()] {
            format!("job {what} is disabled: its source {sources} has {why}")
        } else {
            format!("`{what}` matches only disabled jobs ({}): source {sources} has {why}", names.join(", "))
        })
    }
}

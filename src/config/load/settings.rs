//! The rules of `chatetl.yaml`: sources, warehouse, default zone and jobs folder.
//!
//! To add a source kind: a row of [`SOURCE_KINDS`], its keys in `raw.rs` and [`source`]; its
//! endpoints name it as their vendor in the registry (`config/endpoint.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::ctx::{Ctx, Deferrable, Secrets, one_of, quoted};
use super::interpolate::referenced_variables;
use super::raw::{RawConfig, RawSource, RawWarehouse};
use crate::config::{Credentials, Secret, SourceAssumptions, SourceConfig, SourceKind, UnsetVariable, Warehouse};

/// Source kinds by their name in `chatetl.yaml`.
pub(super) const SOURCE_KINDS: &[(&str, SourceKind)] =
    &[("giosg", SourceKind::Giosg), ("thulium", SourceKind::Thulium), ("comm100", SourceKind::Comm100)];

/// Longest `timeout_secs` and `max_retry_delay_secs` (a day), far from any overflow.
const MAX_DELAY_SECS: u64 = 86_400;

/// Default `max_response_bytes` (64 MiB): far above any page chatetl asks for.
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest `max_response_bytes` (16 GiB): a body is held in memory whole.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// What the job files are checked against about one source.
#[derive(Debug, Clone, Copy)]
pub(super) struct SourceInfo {
    /// Its kind, when valid.
    pub kind: Option<SourceKind>,
    /// `enabled` (true when unknown).
    pub enabled: bool,
    /// Thulium: the account's zone, when valid.
    pub account_time_zone: Option<Tz>,
    /// giosg: `assume` (the defaults when it has problems, already reported).
    pub assume: SourceAssumptions,
}

impl SourceInfo {
    /// A source known only by name.
    pub fn unknown() -> SourceInfo {
        SourceInfo { kind: None, enabled: true, account_time_zone: None, assume: SourceAssumptions::default() }
    }
}

/// Every source name, with what is known of it.
pub(super) type SourceKinds = BTreeMap<String, SourceInfo>;

/// What `chatetl.yaml` gives the job files.
pub(super) struct JobDefaults {
    /// The sources jobs may name; `None` when they are unknown (not checked then).
    pub sources: Option<SourceKinds>,
    /// Zone of jobs that name none; `None` when it was invalid (already reported).
    pub time_zone: Option<Tz>,
}

/// The jobs folder.
pub(super) struct JobsDir {
    pub path: PathBuf,
    /// Where it is named (the mapping when defaulted).
    pub at: Location,
    /// How messages show it (never a variable's value).
    pub shown: String,
}

/// The variables that hold a secret in `raw` (a source's `token` or `password`, `warehouse.url`),
/// each with the key that reads it: no other key may use them.
pub(super) fn secrets(raw: &RawConfig) -> Secrets {
    let mut secrets = Secrets::new();
    let mut add = |key: String, value: &Option<Spanned<String>>| {
        for variable in value.iter().flat_map(|v| referenced_variables(&v.value)) {
            secrets.entry(variable).or_insert_with(|| key.clone());
        }
    };
    for (name, source) in raw.sources.iter().flat_map(|s| s.value.iter()) {
        add(format!("sources.{name}.token"), &source.value.token);
        add(format!("sources.{name}.password"), &source.value.password);
    }
    if let Some(warehouse) = &raw.warehouse {
        add("warehouse.url".to_string(), &warehouse.value.url);
        add("warehouse.state".to_string(), &warehouse.value.state);
    }
    secrets
}

/// What `chatetl.yaml` yields; each `None` part had problems, already reported.
pub(super) struct Settings {
    pub sources: Option<BTreeMap<String, SourceConfig>>,
    pub warehouse: Option<Warehouse>,
    pub defaults: JobDefaults,
    /// The resolved jobs folder, where it was named (the mapping when defaulted), and how
    /// messages show it.
    pub jobs_dir: Option<JobsDir>,
    /// The unset credential variables of each source (also of sources with other problems).
    pub unset: BTreeMap<String, Vec<UnsetVariable>>,
}

/// Validates `chatetl.yaml`; relative paths are resolved against `base`, its folder.
pub(super) fn config(ctx: &mut Ctx, raw: &Spanned<RawConfig>, base: &Path) -> Settings {
    let at = raw.referenced;
    let r = &raw.value;
    let time_zone = match &r.time_zone {
        None => Some(Tz::UTC),
        Some(v) => ctx.time_zone("time_zone", v),
    };
    let jobs_dir = jobs_dir(ctx, at, r.jobs_dir.as_ref(), base);

    let mut unset = BTreeMap::new();
    let (sources, kinds) = match ctx.required(at, "sources", &r.sources, "a mapping of source names to sources") {
        None => (None, None),
        Some(map) => {
            let (sources, kinds) = self::sources(ctx, map, &mut unset);
            (sources, Some(kinds))
        }
    };
    let warehouse = ctx
        .required(at, "warehouse", &r.warehouse, "`kind: parquet` with `path`, or `kind: postgres` with `url`")
        .and_then(|w| warehouse(ctx, w, base));
    Settings { sources, warehouse, defaults: JobDefaults { sources: kinds, time_zone }, jobs_dir, unset }
}

/// The validated sources (`None` when any has a problem), and every name with what is known of
/// it; each source's unset credential variables go to `unset`.
fn sources(
    ctx: &mut Ctx,
    map: &Spanned<BTreeMap<String, Spanned<RawSource>>>,
    unset: &mut BTreeMap<String, Vec<UnsetVariable>>,
) -> (Option<BTreeMap<String, SourceConfig>>, SourceKinds) {
    let mut sources = Some(BTreeMap::new());
    let mut kinds = BTreeMap::new();
    if map.value.is_empty() {
        ctx.error(map.referenced, "sources", "expected at least one source");
        sources = None;
    }
    for (name, raw) in &map.value {
        let (kind, source, variables) = self::source(ctx, name, raw);
        kinds.insert(name.clone(), kind);
        if !variables.is_empty() {
            unset.insert(name.clone(), variables);
        }
        match (source, &mut sources) {
            (Some(source), Some(sources)) => {
                sources.insert(name.clone(), source);
            }
            _ => sources = None,
        }
    }
    (sources, kinds)
}

/// The jobs folder, resolved against `base`.
pub(super) fn jobs_dir(
    ctx: &mut Ctx,
    mapping: Location,
    raw: Option<&Spanned<String>>,
    base: &Path,
) -> Option<JobsDir> {
    match raw {
        None => Some(JobsDir {
            path: base.join("jobs"),
            at: mapping,
            shown: quoted(&base.join("jobs").display().to_string()),
        }),
        Some(v) => {
            let dir = ctx.non_empty("jobs_dir", v, "a folder")?;
            if dir.contains(char::is_control) {
                let shown = ctx.shown(&v.value, &dir);
                ctx.error(v.referenced, "jobs_dir", format!("{shown} holds a control character (expected a folder)"));
                return None;
            }
            let path = base.join(dir.trim());
            let shown = ctx.shown(&v.value, &path.display().to_string());
            Some(JobsDir { path, at: v.referenced, shown })
        }
    }
}

/// An `http://` or `https://` URL without its trailing slash, a query or a fragment.
fn url(ctx: &mut Ctx, path: &str, v: &Spanned<String>) -> Option<String> {
    let (url, shown) = ctx.text_shown(path, v)?;
    let url = url.trim().trim_end_matches('/');
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    if authority.is_some_and(|a| a.contains('@')) {
        // Rejected rather than redacted: a base URL is printed whole by `plan`, in `-v` logs, in
        // error messages and in the run history, and each of those would have to redact it
        // correctly forever; refused here, the secret never gets past the loader. (Not echoed:
        // the value holds the password.)
        let message = "holds credentials (`user:password@` before the host), which would be printed wherever the \
                       URL is; give them to the source's `token` or `username` and `password` instead";
        ctx.error(v.referenced, path, message);
        return None;
    }
    if rest.is_some_and(|r| r.contains(['?', '#'])) {
        // A query may hold a key too: not echoed either.
        ctx.error(v.referenced, path, "expected the API's root URL, without a query (`?`) or fragment (`#`)");
        return None;
    }
    if authority.is_none_or(|h| h.is_empty()) || url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        ctx.error(v.referenced, path, format!("expected an http:// or https:// URL, found {shown}"));
        return None;
    }
    Some(url.to_string())
}

/// What is wrong with a credential's value, never showing it: empty, or a control character
/// (a newline, often left by a secret file, would split the HTTP header it is sent in).
fn credential_problem(text: &str, what: &str) -> Option<String> {
    if text.trim().is_empty() {
        return Some(format!("expected {what}, found an empty value"));
    }
    let control = text.chars().find(|c| c.is_control())?;
    let which = match control {
        '\n' | '\r' => "a line break (not shown; a secret file's trailing newline, perhaps)".to_string(),
        '\t' => "a tab (not shown)".to_string(),
        c => format!("a control character, U+{:04X} (not shown)", u32::from(c)),
    };
    Some(format!("expected {what} without control characters, found one with {which}"))
}

/// One source: what the jobs' checks need, the validated source, and its unset credential
/// variables (a source needs them only to be contacted, so they are not errors here).
fn source(
    ctx: &mut Ctx,
    name: &str,
    raw: &Spanned<RawSource>,
) -> (SourceInfo, Option<SourceConfig>, Vec<UnsetVariable>) {
    let at = raw.referenced;
    let r = &raw.value;
    let p = |key: &str| format!("sources.{name}.{key}");
    let kinds: Vec<&str> = SOURCE_KINDS.iter().map(|(n, _)| *n).collect();

    let kind = ctx
        .required(at, &p("kind"), &r.kind, &format!("the source kind: {}", one_of(&kinds)))
        .and_then(|v| ctx.choice(&p("kind"), v, "source kind", SOURCE_KINDS));
    let enabled = r.enabled.as_ref().is_none_or(|v| v.value);
    let base_url = ctx
        .required(at, &p("base_url"), &r.base_url, "the API's http:// or https:// URL")
        .and_then(|v| url(ctx, &p("base_url"), v));
    let realtime_base_url = match (&r.realtime_base_url, kind) {
        (None, _) => Some(None),
        (Some(v), Some(SourceKind::Giosg) | None) => url(ctx, &p("realtime_base_url"), v).map(Some),
        (Some(v), Some(other)) => {
            let kind_name = SOURCE_KINDS.iter().find(|(_, k)| *k == other).map_or("", |(n, _)| *n);
            ctx.error(v.referenced, &p("realtime_base_url"), format!("not used by a {kind_name} source"));
            None
        }
    };
    // Each kind's credentials; keys of another kind are errors, so a typo cannot go unnoticed.
    let (needed, unused): (&[&str], &[&str]) = match kind {
        Some(SourceKind::Giosg) => (&["token", "organization_id"], &["username", "password", "time_zone"]),
        Some(SourceKind::Thulium) => (&["username", "password", "time_zone"], &["token", "organization_id"]),
        Some(SourceKind::Comm100) => (&["token"], &["organization_id", "username", "password", "time_zone"]),
        None => (&[], &[]),
    };
    let raw_key = |key: &str| match key {
        "token" => &r.token,
        "organization_id" => &r.organization_id,
        "username" => &r.username,
        "password" => &r.password,
        _ => &r.time_zone,
    };
    for key in unused {
        if let Some(v) = raw_key(key) {
            let kind_name = SOURCE_KINDS.iter().find(|(_, k)| Some(*k) == kind).map_or("", |(n, _)| *n);
            ctx.error(v.referenced, &p(key), format!("not used by a {kind_name} source"));
        }
    }
    // Credentials and the organization are needed only to contact the source: an unset
    // variable leaves the value empty (the organization: its reference as written, for `plan`)
    // and is recorded in `unset`, for the commands that contact the source to refuse.
    let mut unset = Vec::new();
    let mut credential_variables = Vec::new();
    let mut value = |key: &str, expected: &str, what: &str| -> Option<String> {
        if !needed.contains(&key) {
            return Some(String::new());
        }
        let v = ctx.required(at, &p(key), raw_key(key), expected)?;
        if key != "organization_id" {
            credential_variables.extend(referenced_variables(&v.value));
        }
        let secret = matches!(key, "token" | "password");
        match ctx.deferrable(&p(key), v, secret) {
            Deferrable::Text(text) if let Some(problem) = credential_problem(&text, what) => {
                ctx.error(v.referenced, &p(key), problem);
                None
            }
            Deferrable::Text(text) => Some(text),
            Deferrable::Unset(variables) => {
                unset.extend(variables);
                Some(if key == "organization_id" { v.value.trim().to_string() } else { String::new() })
            }
            Deferrable::Invalid => None,
        }
    };
    let token = value("token", "the API token, e.g. `${GIOSG_TOKEN}`", "an API token");
    let organization_id = value("organization_id", "the id of the organization to read", "an organization id");
    let username = value("username", "the API user, e.g. `${THULIUM_USER}`", "a user name");
    let password = value("password", "the API password, e.g. `${THULIUM_PASSWORD}`", "a password");
    let account_time_zone = match (kind, &r.time_zone) {
        (Some(SourceKind::Thulium), Some(v)) => ctx.time_zone(&p("time_zone"), v).map(Some),
        (Some(SourceKind::Thulium), None) => {
            ctx.required(at, &p("time_zone"), &r.time_zone, "the account's IANA zone, e.g. Europe/Warsaw");
            None
        }
        _ => Some(None),
    };
    let max = u64::from(u32::MAX);
    let concurrency = ctx.integer(&p("concurrency"), r.concurrency.as_ref(), 1, max, 4);
    let requests_per_second = ctx.positive(&p("requests_per_second"), r.requests_per_second.as_ref(), 5.0);
    let timeout_secs = ctx.integer(&p("timeout_secs"), r.timeout_secs.as_ref(), 1, MAX_DELAY_SECS, 60);
    let max_retries = ctx.integer(&p("max_retries"), r.max_retries.as_ref(), 0, max, 5);
    let max_retry_delay_secs =
        ctx.integer(&p("max_retry_delay_secs"), r.max_retry_delay_secs.as_ref(), 1, MAX_DELAY_SECS, 60);
    let max_response_bytes = ctx.integer(
        &p("max_response_bytes"),
        r.max_response_bytes.as_ref(),
        1024,
        MAX_RESPONSE_BYTES,
        DEFAULT_MAX_RESPONSE_BYTES,
    );
    let max_pages = ctx.integer(&p("max_pages"), r.max_pages.as_ref(), 1, max, 1000);
    let assume = match (&r.assume, kind) {
        (None, _) => Some(SourceAssumptions::default()),
        (Some(v), Some(SourceKind::Giosg) | None) => {
            let flag = |f: &Option<Spanned<bool>>| f.as_ref().is_some_and(|f| f.value);
            Some(SourceAssumptions {
                bucketed_events: flag(&v.value.bucketed_events),
                fused_events: flag(&v.value.fused_events),
            })
        }
        (Some(v), Some(other)) => {
            let kind_name = SOURCE_KINDS.iter().find(|(_, k)| *k == other).map_or("", |(n, _)| *n);
            let message = format!(
                "not used by a {kind_name} source (bucketed_events and fused_events are about giosg's events \
                 and workflow queries)"
            );
            ctx.error(v.referenced, &p("assume"), message);
            None
        }
    };

    let info = SourceInfo {
        kind,
        enabled,
        account_time_zone: account_time_zone.flatten(),
        assume: assume.unwrap_or_default(),
    };
    let source = (|| {
        let base_url = base_url?;
        Some(SourceConfig {
            name: name.to_string(),
            kind: kind?,
            enabled,
            realtime_base_url: realtime_base_url?.unwrap_or_else(|| base_url.clone()),
            base_url,
            unset: unset.clone(),
            credential_variables: credential_variables.clone(),
            credentials: match kind? {
                SourceKind::Giosg => Credentials::Token(Secret::new(token?)),
                SourceKind::Comm100 => Credentials::Bearer(Secret::new(token?)),
                SourceKind::Thulium => {
                    Credentials::Basic { username: username?.trim().to_string(), password: Secret::new(password?) }
                }
            },
            organization_id: organization_id?.trim().to_string(),
            account_time_zone: account_time_zone?,
            concurrency: usize::try_from(concurrency?).ok()?,
            requests_per_second: requests_per_second?,
            timeout_secs: timeout_secs?,
            max_retries: u32::try_from(max_retries?).ok()?,
            max_retry_delay_secs: max_retry_delay_secs?,
            max_response_bytes: max_response_bytes?,
            max_pages: u32::try_from(max_pages?).ok()?,
            assume: assume?,
        })
    })();
    (info, source, unset)
}

#[derive(Clone, Copy)]
enum WarehouseKind {
    Parquet,
    Postgres,
}

fn warehouse(ctx: &mut Ctx, raw: &Spanned<RawWarehouse>, base: &Path) -> Option<Warehouse> {
    let at = raw.referenced;
    let r = &raw.value;
    let kinds = [("parquet", WarehouseKind::Parquet), ("postgres", WarehouseKind::Postgres)];
    let kind = ctx
        .required(at, "warehouse.kind", &r.kind, "parquet or postgres")
        .and_then(|v| ctx.choice("warehouse.kind", v, "warehouse kind", &kinds))?;
    let (kind_name, unused) = match kind {
        WarehouseKind::Parquet => ("parquet", vec![("url", &r.url), ("schema", &r.schema)]),
        WarehouseKind::Postgres => ("postgres", vec![("path", &r.path), ("state", &r.state)]),
    };
    for (key, value) in unused {
        if let Some(v) = value {
            ctx.error(v.referenced, &format!("warehouse.{key}"), format!("not used by a {kind_name} warehouse"));
        }
    }
    match kind {
        WarehouseKind::Parquet => {
            let v = ctx.required(at, "warehouse.path", &r.path, "the folder the tables are written to")?;
            let text = ctx.non_empty("warehouse.path", v, "a folder")?.trim().to_string();
            if let Some(scheme) = url_scheme(&text) {
                return lake(ctx, at, r, v, &text, scheme);
            }
            if let Some(s) = &r.state {
                let message = "used only by a warehouse in an object store (`path: s3://…`); a folder keeps its \
                     state in `_chatetl/` inside it";
                ctx.error(s.referenced, "warehouse.state", message.to_string());
            }
            let path = base.join(text);
            if let Some(problem) = unusable_folder(&path) {
                let shown = ctx.shown(&v.value, &path.display().to_string());
                ctx.error(v.referenced, "warehouse.path", format!("{shown} {problem}"));
                return None;
            }
            Some(Warehouse::Parquet { path })
        }
        WarehouseKind::Postgres => {
            let url = ctx
                .required(at, "warehouse.url", &r.url, "a postgres:// URL, e.g. `${DATABASE_URL}`")
                .and_then(|v| postgres_url(ctx, "warehouse.url", v));
            let schema = match &r.schema {
                None => Some("public".to_string()),
                Some(v) => ctx.identifier("warehouse.schema", v),
            };
            Some(Warehouse::Postgres { url: url?, schema: schema? })
        }
    }
}

/// A PostgreSQL URL at `key` (a secret: never echoed).
fn postgres_url(ctx: &mut Ctx, key: &str, v: &Spanned<String>) -> Option<Secret> {
    let url = ctx.secret_text(key, v)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        ctx.error(v.referenced, key, "expected a postgres:// or postgresql:// URL");
        return None;
    }
    if let Some(c) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        let which = if c == '\n' || c == '\r' { "a line break" } else { "a space or control character" };
        let message = format!("expected a postgres:// URL, found one with {which} (not shown)");
        ctx.error(v.referenced, key, message);
        return None;
    }
    Some(Secret::new(url))
}

/// The object stores a Parquet warehouse's `path` may name, by URL scheme.
pub const LAKE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "file"];

/// The scheme of `text` when it is written as a URL (`scheme://…`), known or not.
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let url_like = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    url_like.then_some(scheme)
}

/// Whether `url` names an object store chatetl can open (its scheme, bucket and path), or why not.
pub(super) fn check_object_store_url(url: &str) -> Result<(), String> {
    use object_store::ObjectStoreScheme;
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    let (scheme, _) = ObjectStoreScheme::parse(&parsed).map_err(|_| {
        "expected s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or file:///ABSOLUTE/PATH".to_string()
    })?;
    match scheme {
        ObjectStoreScheme::AmazonS3
        | ObjectStoreScheme::GoogleCloudStorage
        | ObjectStoreScheme::MicrosoftAzure
        | ObjectStoreScheme::Local => Ok(()),
        _ => Err("expected s3://, gs://, az:// or file://".into()),
    }
}

/// One spelling of an object-store URL, the state's key (its watermarks and job locks): the
/// scheme lowercase with `s3a` as `s3`, no repeated or trailing `/` in the path (a `file:///`
/// root keeps its own). Two spellings of one place must not be two writers unknown to each other.
pub(super) fn normal_lake_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else { return text.to_string() };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "s3a" => "s3".to_string(),
        other => other.to_string(),
    };
    let mut path = String::with_capacity(rest.len());
    for c in rest.chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    while path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    format!("{scheme}://{path}")
}

/// A Parquet warehouse in an object store: `path` is its URL, `state` the PostgreSQL its state
/// lives in (an object store has no transactions and no locks that end with their holder).
fn lake(
    ctx: &mut Ctx,
    at: Location,
    r: &RawWarehouse,
    path: &Spanned<String>,
    text: &str,
    scheme: &str,
) -> Option<Warehouse> {
    let shown = ctx.shown(&path.value, text);
    let mut url = None;
    if !LAKE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        let known = LAKE_SCHEMES.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ");
        let message = format!("{shown}: unknown object store; expected {known} or a folder");
        ctx.error(path.referenced, "warehouse.path", message);
    } else if let Err(problem) = check_object_store_url(text) {
        ctx.error(path.referenced, "warehouse.path", format!("{shown}: {problem}"));
    } else {
        url = Some(normal_lake_url(text));
    }
    let state = ctx
        .required(
            at,
            "warehouse.state",
            &r.state,
            "a postgres:// URL for the state of a warehouse in an object store, e.g. `${DATABASE_URL}`",
        )
        .and_then(|v| postgres_url(ctx, "warehouse.state", v));
    Some(Warehouse::Lake { url: url?, state: state? })
}

/// Why the Parquet warehouse cannot be a folder at `path`, if it cannot: something else is there,
/// or it does not exist and cannot be created (a file, or a folder that cannot be written, on the
/// way). Checked without creating anything, so that `validate` changes nothing.
fn unusable_folder(path: &Path) -> Option<String> {
    if path.to_string_lossy().contains(char::is_control) {
        return Some("holds a control character (expected a folder name without any)".to_string());
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return None,
        Ok(_) => return Some("is not a folder (a file is in its place)".to_string()),
        Err(_) if path.symlink_metadata().is_ok() => {
            return Some("is a symbolic link to something that does not exist".to_string());
        }
        Err(_) => {}
    }
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor {
        let probe = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        match std::fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => {
                return (!writable(probe)).then(|| format!("cannot be created: `{}` is not writable", probe.display()));
            }
            Ok(_) => return Some(format!("cannot be created: `{}` is not a folder", probe.display())),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Some(format!("cannot be created: `{}`: {e}", probe.display()));
            }
            Err(_) => ancestor = dir.parent(),
        }
    }
    None
}

/// Whether this process may create entries in the folder `dir`.
#[cfg(unix)]
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(not(unix))]
fn writable(_dir: &Path) -> bool {
    true
}

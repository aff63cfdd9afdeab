//! The rules of `chatetl.yaml`: sources, warehouse, default zone and jobs folder.
//!
//! To add a source kind: a row of [`SOURCE_KINDS`], its keys in `raw.rs` and [`source`]; its
//! endpoints name it as their vendor in the registry (`config/endpoint.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::ctx::{Ctx, one_of};
use super::raw::{RawConfig, RawSource, RawWarehouse};
use crate::config::{Credentials, Secret, SourceConfig, SourceKind, Warehouse};

/// Source kinds by their name in `chatetl.yaml`.
pub(super) const SOURCE_KINDS: &[(&str, SourceKind)] =
    &[("giosg", SourceKind::Giosg), ("thulium", SourceKind::Thulium), ("comm100", SourceKind::Comm100)];

/// Longest `timeout_secs` and `max_retry_delay_secs` (a day), far from any overflow.
const MAX_DELAY_SECS: u64 = 86_400;

/// Every source name, with its kind when that is valid.
pub(super) type SourceKinds = BTreeMap<String, Option<SourceKind>>;

/// What `chatetl.yaml` gives the job files.
pub(super) struct JobDefaults {
    /// The sources jobs may name; `None` when they are unknown (not checked then).
    pub sources: Option<SourceKinds>,
    /// Zone of jobs that name none; `None` when it was invalid (already reported).
    pub time_zone: Option<Tz>,
}

/// What `chatetl.yaml` yields; each `None` part had problems, already reported.
pub(super) struct Settings {
    pub sources: Option<BTreeMap<String, SourceConfig>>,
    pub warehouse: Option<Warehouse>,
    pub defaults: JobDefaults,
    /// The resolved jobs folder, and where it was named (the mapping when defaulted).
    pub jobs_dir: Option<(PathBuf, Location)>,
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

    let (sources, kinds) = match ctx.required(at, "sources", &r.sources, "a mapping of source names to sources") {
        None => (None, None),
        Some(map) => {
            let (sources, kinds) = self::sources(ctx, map);
            (sources, Some(kinds))
        }
    };
    let warehouse = ctx
        .required(at, "warehouse", &r.warehouse, "`kind: parquet` with `path`, or `kind: postgres` with `url`")
        .and_then(|w| warehouse(ctx, w, base));
    Settings { sources, warehouse, defaults: JobDefaults { sources: kinds, time_zone }, jobs_dir }
}

/// The validated sources (`None` when any has a problem), and every name with its kind if valid.
fn sources(
    ctx: &mut Ctx,
    map: &Spanned<BTreeMap<String, Spanned<RawSource>>>,
) -> (Option<BTreeMap<String, SourceConfig>>, SourceKinds) {
    let mut sources = Some(BTreeMap::new());
    let mut kinds = BTreeMap::new();
    if map.value.is_empty() {
        ctx.error(map.referenced, "sources", "expected at least one source");
        sources = None;
    }
    for (name, raw) in &map.value {
        let (kind, source) = self::source(ctx, name, raw);
        kinds.insert(name.clone(), kind);
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
) -> Option<(PathBuf, Location)> {
    match raw {
        None => Some((base.join("jobs"), mapping)),
        Some(v) => Some((base.join(ctx.non_empty("jobs_dir", v, "a folder")?), v.referenced)),
    }
}

/// One source: its kind (when valid, for the jobs' checks) and the validated source.
fn source(ctx: &mut Ctx, name: &str, raw: &Spanned<RawSource>) -> (Option<SourceKind>, Option<SourceConfig>) {
    let at = raw.referenced;
    let r = &raw.value;
    let p = |key: &str| format!("sources.{name}.{key}");
    let kinds: Vec<&str> = SOURCE_KINDS.iter().map(|(n, _)| *n).collect();

    let kind = ctx
        .required(at, &p("kind"), &r.kind, &format!("the source kind: {}", one_of(&kinds)))
        .and_then(|v| ctx.choice(&p("kind"), v, "source kind", SOURCE_KINDS));
    let base_url = ctx.required(at, &p("base_url"), &r.base_url, "the API's http:// or https:// URL").and_then(|v| {
        let url = ctx.text(&p("base_url"), v)?;
        let url = url.trim().trim_end_matches('/');
        let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
            ctx.error(v.referenced, &p("base_url"), format!("expected an http:// or https:// URL, found `{url}`"));
            return None;
        }
        Some(url.to_string())
    });
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
    let mut value = |key: &str, expected: &str, what: &str| -> Option<String> {
        if !needed.contains(&key) {
            return Some(String::new());
        }
        ctx.required(at, &p(key), raw_key(key), expected).and_then(|v| ctx.non_empty(&p(key), v, what))
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

    let source = (|| {
        Some(SourceConfig {
            name: name.to_string(),
            kind: kind?,
            base_url: base_url?,
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
        })
    })();
    (kind, source)
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
        WarehouseKind::Postgres => ("postgres", vec![("path", &r.path)]),
    };
    for (key, value) in unused {
        if let Some(v) = value {
            ctx.error(v.referenced, &format!("warehouse.{key}"), format!("not used by a {kind_name} warehouse"));
        }
    }
    match kind {
        WarehouseKind::Parquet => {
            let path = ctx
                .required(at, "warehouse.path", &r.path, "the folder the tables are written to")
                .and_then(|v| ctx.non_empty("warehouse.path", v, "a folder"))?;
            Some(Warehouse::Parquet { path: base.join(path.trim()) })
        }
        WarehouseKind::Postgres => {
            let url =
                ctx.required(at, "warehouse.url", &r.url, "a postgres:// URL, e.g. `${DATABASE_URL}`").and_then(|v| {
                    let url = ctx.text("warehouse.url", v)?;
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                        // The value may hold a password: never echo it.
                        ctx.error(v.referenced, "warehouse.url", "expected a postgres:// or postgresql:// URL");
                        return None;
                    }
                    Some(Secret::new(url))
                });
            let schema = match &r.schema {
                None => Some("public".to_string()),
                Some(v) => ctx.identifier("warehouse.schema", v),
            };
            Some(Warehouse::Postgres { url: url?, schema: schema? })
        }
    }
}

//! The lake: the Parquet warehouse's layout in an object store (`s3://`, `gs://`, `az://`,
//! `file://`, through the `object_store` crate), with its state in PostgreSQL.
//!
//! ```text
//! <url>/<table>/year=2024/month=3/data.parquet           windowed jobs
//! <url>/<table>/year=2024/month=3/day=7/data.parquet     snapshot jobs
//! <url>/_rebuild_<table>/…                               a rebuild's shadow table
//! <url>/_chatetl/promotions/<job>.json                   a promotion in progress
//! state: chatetl.jobs, window_loads, … in PostgreSQL, target = <url>
//! ```
//!
//! Owns: [`LakeSink`], building the store from the URL and the providers' standard
//! environment (object_store's `from_env`: `AWS_*`, `GOOGLE_*`, `AZURE_*`, and their credential
//! chains: web identity, container and instance metadata), and every `Sink` method for it.
//!
//! # Partitions
//! A commit merges its windows into each partition exactly as on local disk (the current object
//! is fetched into a local staging folder, `files::commit_partition` writes the new file beside
//! it, untouched row groups copied as compressed bytes) and replaces the object with ONE PUT: an
//! object store makes a PUT visible whole or not at all, so a reader gets the old object or the
//! new one, and a writer killed in the middle leaves the old one. A partition left without rows
//! is deleted. Only then is the state committed, so a crash redoes windows, never skips them.
//! object_store retries throttling (429, 503 SlowDown), 5xx and connection errors itself (10
//! retries from 100 ms, at most 3 minutes per request); what still fails is a warehouse error,
//! which a later run can retry, or, for refused credentials, a configuration error.
//!
//! # Why the state is in PostgreSQL
//! Several writers (daemons on several hosts) need a job lock that ends with its holder and a
//! watermark moved in a transaction with the window loads. Conditional PUTs could build a lock
//! only as a lease with an expiry, and are not alike across providers (S3 needs If-Match
//! configured per bucket, GCS has generations, Azure ETags); PostgreSQL gives a session
//! advisory lock (released when the holder dies, however it dies) and transactions, and is where
//! the daemons' shared vendor budget lives too. The state is keyed by the warehouse URL, so two
//! lakes (or a lake and a PostgreSQL warehouse) on one database never share a watermark or a
//! lock. Within the lock one process writes a table, so the read-merge-PUT of a partition has
//! no other writer; partitions of one table are written one writer at a time in this process.
//!
//! # What an object store cannot do in one step
//! There is no atomic exchange of two folders. Adding value columns rewrites the table's objects
//! one by one (each PUT atomic; for the minutes it takes, some objects have the new columns and
//! some do not, which readers that merge schemas by name read as nulls). A rebuild's promotion
//! copies each shadow object over the live one (server-side, atomic per object), deletes the live
//! objects the shadow lacks, moves the state in one transaction and deletes the shadow; a marker
//! object written first lets the next run of the job finish a promotion a crash interrupted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow_schema::SchemaRef;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload};
use tracing::info;

use super::parquet::{DATA_FILE, files, lacking_columns, partition_of};
use super::postgres::{AdvisoryLock, PostgresSink};
use super::{Commit, SinkError};
use crate::batch::TableSchema;
use crate::config::{Job, Secret};
use crate::error::ErrorKind;
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};

/// The folder of chatetl's own objects (readers skip `_` names).
const STATE_DIR: &str = "_chatetl";

/// An object store error as a [`SinkError`] whose message starts with `what`: refused
/// credentials are the configuration's (no retry helps), the rest the store's (object_store
/// retried already; a later run may succeed).
fn store_err(what: &str) -> impl Fn(object_store::Error) -> SinkError + '_ {
    move |e| match e {
        e if refused(&e) => SinkError {
            kind: ErrorKind::Configuration,
            message: format!(
                "{what}: the object store refused the credentials ({}); check the provider's credential variables \
                 (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY…) \
                 or the role of this host",
                scrub(&e.to_string())
            ),
        },
        e if e.to_string().contains("NoSuchBucket") || e.to_string().contains("ContainerNotFound") => {
            SinkError::definition(format!(
                "{what}: the bucket does not exist ({}); create it, or fix warehouse.path",
                scrub(&e.to_string())
            ))
        }
        e => SinkError::warehouse(format!("{what}: {}", scrub(&e.to_string()))),
    }
}

/// `text` without the XML error body a store answered, which can echo the signed request (an
/// S3 `SignatureDoesNotMatch` carries the canonical request, session token included): its
/// `Code` and `Message` are kept.
fn scrub(text: &str) -> String {
    let Some(at) = text.find('<') else { return text.to_string() };
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_string())
    };
    let mut out = text[..at].trim_end().to_string();
    for (name, value) in [("code", element("Code")), ("message", element("Message"))] {
        if let Some(v) = value {
            out.push_str(&format!(" {name}: {v};"));
        }
    }
    out.trim_end_matches(';').to_string()
}

/// Whether the store refused the credentials: object_store says so for a GET or a PUT, but
/// reports a refused LIST (and a few other requests) as a generic error whose message carries
/// the HTTP status, and its retry error type is not public to ask.
fn refused(e: &object_store::Error) -> bool {
    if matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) {
        return true;
    }
    let mut chain: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = chain {
        let text = err.to_string();
        if text.contains("403 Forbidden") || text.contains("401 Unauthorized") {
            return true;
        }
        chain = err.source();
    }
    false
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::warehouse(format!("a file task failed: {e}")))?
}

/// A promotion recorded (as an object) before the shadow's objects are copied.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Promotion {
    live_job: String,
    shadow_job: String,
    live_table: String,
    shadow_table: String,
    /// The shadow's data objects (relative to its table) when the promotion began, the whole
    /// rebuilt table: only these are copied, and all of them must still be there, so a record
    /// can never promote a shadow that a later rebuild emptied or only partly loaded.
    objects: Vec<String>,
}

/// A Parquet warehouse in an object store, its state in PostgreSQL.
pub struct LakeSink {
    /// The warehouse URL as configured (without a trailing `/`): messages and the state's target.
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The URL's path inside the store (the bucket's prefix).
    prefix: ObjectPath,
    state: PostgresSink,
    /// For `file://`: the folder, written with the local warehouse's atomic writes (a hidden
    /// temp file, fsynced, renamed) rather than object_store's, whose `data.parquet#N` staging
    /// files sit beside the data where readers would take them for data.
    local_root: Option<std::path::PathBuf>,
    /// One writer per partition object in this process.
    partitions: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl LakeSink {
    /// Builds the store for `url` from the environment, connects to the state database and
    /// completes promotions a crash interrupted.
    pub async fn open(url: &str, state: &Secret) -> Result<LakeSink, SinkError> {
        let (store, prefix, local_root) = build_store(url)?;
        let state = PostgresSink::connect(state, url).await.map_err(|e| SinkError {
            kind: e.kind,
            message: format!("the state database of the warehouse {url}: {}", e.message),
        })?;
        let sink = LakeSink { url: url.to_string(), store, prefix, state, local_root, partitions: Default::default() };
        for p in sink.promotions().await? {
            // The process promoting holds the job's lock; only an abandoned promotion is ours.
            let Some(lock) = sink.try_lock_job(&p.live_job).await? else { continue };
            info!(job = %p.live_job, table = %p.live_table, "completing an interrupted promotion");
            let done = sink.finish_promotion(&p).await;
            lock.release().await;
            if let Err(error) = done {
                tracing::warn!(job = %p.live_job, %error, "cannot complete the interrupted promotion; the job's next run tries again");
            }
        }
        Ok(sink)
    }

    /// The warehouse URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PostgreSQL pool of the state (the daemons' shared budget lives there too).
    pub fn state_pool(&self) -> &sqlx::PgPool {
        self.state.pool()
    }

    /// `<prefix>/<relative>`, for a `/`-separated relative path of data names.
    fn key(&self, relative: &str) -> ObjectPath {
        relative.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |k, part| k.join(part))
    }

    fn shown(&self, key: &ObjectPath) -> String {
        let relative = key.as_ref().strip_prefix(self.prefix.as_ref()).unwrap_or(key.as_ref());
        format!("{}/{}", self.url, relative.trim_start_matches('/'))
    }

    /// The data objects of `table`, as paths relative to the table (`year=2024/month=3/data.parquet`),
    /// sorted. Objects below `_` or `.` names (work and state) are not data.
    async fn data_objects(&self, table: &str) -> Result<Vec<String>, SinkError> {
        let dir = self.key(table);
        let what = format!("cannot list {}", self.shown(&dir));
        let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await.map_err(store_err(&what))?;
        let mut out: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<String> = meta.location.prefix_match(&dir)?.map(|p| p.as_ref().to_string()).collect();
                let data =
                    parts.last().is_some_and(|name| name == DATA_FILE) && parts.iter().all(|p| files::is_data_name(p));
                data.then(|| parts.join("/"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Writes `bytes` as the object `key`, whole or not at all.
    async fn put(&self, key: &ObjectPath, bytes: Vec<u8>, what: &str) -> Result<(), SinkError> {
        let Some(root) = &self.local_root else {
            return self.store.put(key, PutPayload::from(bytes)).await.map(|_| ()).map_err(store_err(what));
        };
        let path = local_path(root, key);
        let failed = what.to_string();
        blocking(move || {
            files::write_atomic(&path, |f| std::io::Write::write_all(f, &bytes))
                .map_err(|e| SinkError::warehouse(format!("{failed}: {e}")))
        })
        .await
    }

    /// Copies the object `from` over `to` (server-side in a cloud store).
    async fn copy(&self, from: &ObjectPath, to: &ObjectPath, what: &str) -> Result<(), SinkError> {
        if self.local_root.is_none() {
            return self.store.copy(from, to).await.map_err(store_err(what));
        }
        // Not a hard link (object_store's local copy): a mounted bucket has none.
        let bytes = self
            .fetch(from, what)
            .await?
            .ok_or_else(|| SinkError::warehouse(format!("{what}: {} vanished", self.shown(from))))?;
        self.put(to, bytes.to_vec(), what).await
    }

    /// The object at `key`, or `None` when there is none.
    async fn fetch(&self, key: &ObjectPath, what: &str) -> Result<Option<Bytes>, SinkError> {
        match self.store.get(key).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(store_err(what))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(what)(e)),
        }
    }

    /// Refuses a table whose objects lack a key column of `schema`, adds the value columns they
    /// lack (rewriting every object), registers the job if new and returns its state.
    pub async fn prepare(
        &self,
        job: &Job,
        schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        let objects = self.data_objects(&job.table).await?;
        // A column addition rewrites the objects in order, so an interrupted one left the first
        // rewritten and the last not: reading both finds it and completes it.
        let mut probes: Vec<&String> = objects.first().into_iter().chain(objects.last()).collect();
        probes.dedup();
        let mut lacking = Vec::new();
        for relative in probes {
            let key = self.key(&format!("{}/{relative}", job.table));
            let shown = self.shown(&key);
            let what = format!("job {}: cannot read {shown}", job.name);
            let Some(bytes) = self.fetch(&key, &what).await? else { continue };
            let found = read_schema(bytes, &what)?;
            let table = self.shown(&self.key(&job.table));
            for column in lacking_columns(job, schema, &found, &table, &shown)? {
                if !lacking.contains(&column) {
                    lacking.push(column);
                }
            }
        }
        if !lacking.is_empty() {
            let rewritten = self.rewrite_with_schema(job, schema).await?;
            info!(job = %job.name, table = %job.table, objects = rewritten, columns = ?lacking, "value columns of the endpoint added to the table");
        }
        self.state.register(&job.name, history_start, definition).await
    }

    /// The in-process writer lock of one partition object.
    fn partition_lock(&self, key: &ObjectPath) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Merges the windows into their partition objects, each replaced by one PUT, then records
    /// the complete ones and moves the watermark.
    pub async fn commit(&self, c: Commit<'_>) -> Result<u64, SinkError> {
        let schema = super::parquet::file_schema(c.schema);
        let mut by_partition: BTreeMap<String, Vec<(files::Span, arrow_array::RecordBatch)>> = BTreeMap::new();
        let mut rows = 0u64;
        for w in &c.windows {
            rows += w.batch.num_rows() as u64;
            let batch = files::project(&w.batch, &schema)
                .map_err(|e| SinkError::warehouse(format!("job {}: window {}: {e}", c.job.name, w.window.start)))?;
            let partition = partition_of(c.job.kind, c.job.time_zone, w.window.start);
            let relative = format!("{}/{}/{DATA_FILE}", c.job.table, partition.display());
            let span = (w.window.start.timestamp_micros(), w.window.end.timestamp_micros());
            by_partition.entry(relative).or_default().push((span, batch));
        }
        for (relative, windows) in by_partition {
            let key = self.key(&relative);
            let writer = self.partition_lock(&key).lock_owned().await;
            let what = format!("job {}: cannot replace partition {}", c.job.name, self.shown(&key));
            let current = self.fetch(&key, &what).await?;
            let existed = current.is_some();
            let (schema, time, failed) = (schema.clone(), c.schema.time_column, what.clone());
            let merged = blocking(move || merge_staged(current, &schema, windows, time, &failed)).await?;
            match merged {
                Some(bytes) => self.put(&key, bytes, &what).await?,
                None if existed => match self.store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(&what)(e)),
                },
                None => {}
            }
            drop(writer);
        }
        self.state.commit_state(&c).await?;
        Ok(rows)
    }

    /// The job's run lock: a PostgreSQL session advisory lock for (this URL, job).
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<AdvisoryLock>, SinkError> {
        self.state.try_lock_job(job).await
    }

    /// Deletes every object of the shadow job's table and forgets its state.
    /// A promotion of this shadow that a crash interrupted is finished first (its rebuild was
    /// complete); the state goes before the objects, so a reset cut short never leaves a shadow
    /// whose state says loaded over objects that are gone.
    pub async fn reset_job(&self, job: &Job) -> Result<(), SinkError> {
        self.finish_pending_promotion(&job.name).await?;
        self.state.forget(&job.name).await?;
        self.delete_prefix(&job.table, &format!("job {}: cannot remove the rebuild's objects", job.name)).await
    }

    /// Deletes every object below `<prefix>/<relative>/`.
    async fn delete_prefix(&self, relative: &str, what: &str) -> Result<(), SinkError> {
        let dir = self.key(relative);
        let what = format!("{what} below {}", self.shown(&dir));
        let locations = self.store.list(Some(&dir)).map_ok(|meta| meta.location).boxed();
        let deleted: Vec<_> = self.store.delete_stream(locations).collect().await;
        for result in deleted {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(&what)(e)),
            }
        }
        Ok(())
    }

    /// See `Sink::adopt_definition_hash`.
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        self.state.adopt_definition_hash(job, from, to).await
    }

    /// Rewrites the table's objects with the added columns (null), one PUT each, then records
    /// them. Idempotent: an interrupted call is completed by the next (objects that have the
    /// columns already are left alone).
    pub async fn add_columns(
        &self,
        job: &Job,
        schema: &TableSchema,
        added: &[String],
        definition: &Definition,
    ) -> Result<(), SinkError> {
        let rewritten = self.rewrite_with_schema(job, schema).await?;
        info!(job = %job.name, table = %job.table, objects = rewritten, columns = ?added, "columns added to the table");
        self.state.record_added_columns(&job.name, added, definition).await
    }

    /// Rewrites every object of `job`'s table whose schema is not `schema`'s with its columns
    /// (those it lacks: null); returns how many.
    async fn rewrite_with_schema(&self, job: &Job, schema: &TableSchema) -> Result<usize, SinkError> {
        let target = super::parquet::file_schema(schema);
        let mut rewritten = 0;
        for relative in self.data_objects(&job.table).await? {
            let key = self.key(&format!("{}/{relative}", job.table));
            let what = format!("job {}: cannot add columns to {}", job.name, self.shown(&key));
            let _writer = self.partition_lock(&key).lock_owned().await;
            let Some(current) = self.fetch(&key, &what).await? else { continue };
            let (target, failed) = (target.clone(), what.clone());
            let replaced = blocking(move || reshape_staged(current, &target, &failed)).await?;
            if let Some(bytes) = replaced {
                self.put(&key, bytes, &what).await?;
                rewritten += 1;
            }
        }
        Ok(rewritten)
    }

    /// See `Sink::record_failures`.
    pub async fn record_failures(&self, job: &str, failures: &[WindowFailure]) -> Result<(), SinkError> {
        self.state.record_failures(job, failures).await
    }

    /// See `Sink::window_failures`.
    pub async fn window_failures(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        self.state.window_failures(job).await
    }

    /// See `Sink::close_abandoned_runs`; also completes a promotion of `job` a dead process
    /// left half-done (the caller holds the job's lock).
    pub async fn close_abandoned_runs(&self, job: &str, now: DateTime<Utc>) -> Result<u64, SinkError> {
        self.finish_pending_promotion(job).await?;
        self.state.close_abandoned_runs(job, now).await
    }

    /// Finishes the recorded promotion of `job` (the live job or its rebuild's shadow), if any.
    async fn finish_pending_promotion(&self, job: &str) -> Result<(), SinkError> {
        let live = job.strip_suffix(super::SHADOW_SUFFIX).unwrap_or(job);
        if let Some(p) = self.promotion(live).await? {
            info!(job = %p.live_job, table = %p.live_table, "completing an interrupted promotion");
            self.finish_promotion(&p).await?;
        }
        Ok(())
    }

    fn promotion_key(&self, live_job: &str) -> ObjectPath {
        self.key(&format!("{STATE_DIR}/promotions")).join(format!("{live_job}.json"))
    }

    /// The recorded promotion of the live job `live_job`, if any (one GET).
    async fn promotion(&self, live_job: &str) -> Result<Option<Promotion>, SinkError> {
        let key = self.promotion_key(live_job);
        let what = format!("job {live_job}: cannot read its promotion record {}", self.shown(&key));
        let Some(bytes) = self.fetch(&key, &what).await? else { return Ok(None) };
        let p = serde_json::from_slice(&bytes).map_err(|e| {
            SinkError::warehouse(format!(
                "{what}: it is not a promotion record ({e}); remove it once the table is checked"
            ))
        })?;
        Ok(Some(p))
    }

    /// The promotions recorded and not finished; an object there that is not a record (an
    /// editor's backup, a console's folder marker) is skipped with a warning.
    async fn promotions(&self) -> Result<Vec<Promotion>, SinkError> {
        let dir = self.key(&format!("{STATE_DIR}/promotions"));
        let what = format!("cannot list the promotions in progress below {}", self.shown(&dir));
        let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await.map_err(store_err(&what))?;
        let mut out = Vec::new();
        for meta in listed {
            let Some(bytes) = self.fetch(&meta.location, &what).await? else { continue };
            match serde_json::from_slice::<Promotion>(&bytes) {
                Ok(p) => out.push(p),
                Err(error) => {
                    tracing::warn!(object = %self.shown(&meta.location), %error, "not a promotion record; skipped")
                }
            }
        }
        Ok(out)
    }

    /// Replaces the live table's objects and state with the shadow's; crash-safe through the
    /// promotion record written first ([`LakeSink::finish_promotion`]).
    pub async fn promote(&self, live: &Job, shadow: &Job) -> Result<(), SinkError> {
        let p = Promotion {
            live_job: live.name.clone(),
            shadow_job: shadow.name.clone(),
            live_table: live.table.clone(),
            shadow_table: shadow.table.clone(),
            objects: self.data_objects(&shadow.table).await?,
        };
        let key = self.promotion_key(&p.live_job);
        let what = format!("job {}: cannot record its promotion at {}", p.live_job, self.shown(&key));
        let record = serde_json::to_vec(&p).map_err(|e| SinkError::warehouse(format!("{what}: {e}")))?;
        self.put(&key, record, &what).await?;
        self.finish_promotion(&p).await
    }

    /// The steps of a promotion from wherever it stopped. While the shadow still has its state,
    /// its objects are whole (a promotion starts only after the rebuild loaded every window), so
    /// they are copied over the live ones (again, after a crash: copies are idempotent) and the
    /// live objects the shadow lacks are deleted; then the state moves in one transaction, after
    /// which the shadow's objects and the record go.
    async fn finish_promotion(&self, p: &Promotion) -> Result<(), SinkError> {
        let what = format!("job {}: cannot promote table {} over {}", p.live_job, p.shadow_table, p.live_table);
        let shadow_state = self.state.job_state(&p.shadow_job).await?;
        if shadow_state.definition_hash.is_some() {
            let found: BTreeSet<String> = self.data_objects(&p.shadow_table).await?.into_iter().collect();
            let missing: Vec<&String> = p.objects.iter().filter(|o| !found.contains(*o)).collect();
            if !missing.is_empty() {
                // Never copy a shadow that is not the one recorded: the live table keeps what it
                // has, and the rebuild's state and record go, so the next rebuild starts afresh.
                self.state.forget(&p.shadow_job).await?;
                self.delete_record(p, &what).await?;
                return Err(SinkError::warehouse(format!(
                    "{what}: the rebuilt table lacks {} of its {} objects (for example {}); the live table is \
                     untouched; `chatetl run --job {} --rebuild` loads the rebuild again",
                    missing.len(),
                    p.objects.len(),
                    missing[0],
                    p.live_job
                )));
            }
            let shadow: BTreeSet<String> = p.objects.iter().cloned().collect();
            for relative in &shadow {
                let (from, to) = (
                    self.key(&format!("{}/{relative}", p.shadow_table)),
                    self.key(&format!("{}/{relative}", p.live_table)),
                );
                self.copy(&from, &to, &what).await?;
            }
            for relative in self.data_objects(&p.live_table).await? {
                if !shadow.contains(&relative) {
                    let key = self.key(&format!("{}/{relative}", p.live_table));
                    match self.store.delete(&key).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(store_err(&what)(e)),
                    }
                }
            }
            self.state.move_promoted_state(&p.live_job, &p.shadow_job).await?;
        }
        self.delete_prefix(&p.shadow_table, &what).await?;
        self.delete_record(p, &what).await?;
        info!(job = %p.live_job, table = %p.live_table, "the rebuilt table replaced the live one");
        Ok(())
    }

    async fn delete_record(&self, p: &Promotion, what: &str) -> Result<(), SinkError> {
        match self.store.delete(&self.promotion_key(&p.live_job)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(what)(e)),
        }
    }

    /// Whether the state database and the store answer.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.state.ping().await?;
        let what = format!("the object store at {} does not answer", self.url);
        self.store.list_with_delimiter(Some(&self.prefix)).await.map_err(store_err(&what))?;
        Ok(())
    }

    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        self.state.window_loads(job).await
    }

    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        self.state.job_state(job).await
    }

    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        self.state.record_run(run).await
    }

    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        self.state.status(jobs).await
    }
}

/// The store of `url` (configured from the environment) and the prefix inside it.
fn build_store(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath, Option<std::path::PathBuf>), SinkError> {
    let bad = |problem: String| SinkError::definition(format!("warehouse.path {url}: {problem}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL ({e})")))?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
    let built = |e: object_store::Error| bad(format!("cannot configure the object store: {e}"));
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            Arc::new(object_store::aws::AmazonS3Builder::from_env().with_url(url).build().map_err(built)?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url).build().map_err(built)?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url).build().map_err(built)?)
        }
        ObjectStoreScheme::Local => {
            let dir = parsed.to_file_path().map_err(|()| bad("not an absolute local path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                SinkError::warehouse(format!("warehouse.path {url}: cannot create {}: {e}", dir.display()))
            })?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(built)?;
            let local = local.with_automatic_cleanup(true).with_fsync(true);
            return Ok((Arc::new(local), ObjectPath::default(), Some(dir)));
        }
        _ => return Err(bad("expected s3://, gs://, az:// or file://".into())),
    };
    Ok((store, prefix, None))
}

/// The file of the object `key` of a `file://` store rooted at `root`.
fn local_path(root: &std::path::Path, key: &ObjectPath) -> std::path::PathBuf {
    key.parts().fold(root.to_path_buf(), |p, part| p.join(part.as_ref()))
}

/// The schema of a Parquet object (its footer).
fn read_schema(bytes: Bytes, what: &str) -> Result<SchemaRef, SinkError> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| SinkError::warehouse(format!("{what}: not a Parquet file: {e}")))?;
    Ok(builder.schema().clone())
}

/// The partition `current` (its bytes, if it exists) with the committed windows `new` merged in,
/// as `files::commit_partition` writes it, staged in a local temp folder; `None` when no row is
/// left.
fn merge_staged(
    current: Option<Bytes>,
    schema: &SchemaRef,
    new: Vec<(files::Span, arrow_array::RecordBatch)>,
    time_column: &str,
    what: &str,
) -> Result<Option<Vec<u8>>, SinkError> {
    let stage = tempfile::tempdir().map_err(|e| SinkError::warehouse(format!("{what}: no staging folder: {e}")))?;
    let path = stage.path().join(DATA_FILE);
    if let Some(bytes) = current {
        std::fs::write(&path, &bytes).map_err(|e| SinkError::warehouse(format!("{what}: cannot stage it: {e}")))?;
    }
    files::commit_partition(&path, schema, new, time_column, stage.path(), what)?;
    staged_bytes(&path, what)
}

/// The object `current` rewritten with `schema`'s columns, or `None` when it has them already.
fn reshape_staged(current: Bytes, schema: &SchemaRef, what: &str) -> Result<Option<Vec<u8>>, SinkError> {
    if read_schema(current.clone(), what)?.fields() == schema.fields() {
        return Ok(None);
    }
    let stage = tempfile::tempdir().map_err(|e| SinkError::warehouse(format!("{what}: no staging folder: {e}")))?;
    let path = stage.path().join(DATA_FILE);
    std::fs::write(&path, &current).map_err(|e| SinkError::warehouse(format!("{what}: cannot stage it: {e}")))?;
    let batches = files::read_projected(&path, schema, what)?.unwrap_or_default();
    let out = stage.path().join("reshaped").join(DATA_FILE);
    files::replace(&out, schema, &batches, stage.path())
        .map_err(|e| SinkError::warehouse(format!("{what}: cannot write it: {e}")))?;
    staged_bytes(&out, what)
}

/// The bytes of the staged file `path`, `None` when the merge left no file.
fn staged_bytes(path: &std::path::Path, what: &str) -> Result<Option<Vec<u8>>, SinkError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SinkError::warehouse(format!("{what}: cannot read the staged file: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_listing_is_the_credentials_fault_and_an_outage_is_the_stores() {
        let generic = |text: &str| object_store::Error::Generic { store: "S3", source: text.to_string().into() };
        let listing = generic("Error performing list request: Server returned non-2xx status code: 403 Forbidden: …");
        assert_eq!(store_err("w")(listing).kind, ErrorKind::Configuration);
        let denied = object_store::Error::PermissionDenied { path: "p".into(), source: "403".into() };
        assert_eq!(store_err("w")(denied).kind, ErrorKind::Configuration);
        let outage =
            generic("Error performing put request: Server returned non-2xx status code: 503 Service Unavailable");
        let e = store_err("job x: cannot replace partition s3://b/p")(outage);
        assert_eq!(e.kind, ErrorKind::Warehouse);
        assert!(e.message.starts_with("job x: cannot replace partition s3://b/p: "), "{}", e.message);
    }

    #[test]
    fn an_error_body_echoing_the_signed_request_is_cut_to_its_code_and_message() {
        let body = "Error performing PUT http://s3/b/k in 1s: Server returned non-2xx status code: 403 Forbidden: \
            <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we \
            calculated does not match</Message><CanonicalRequest>PUT /b/k x-amz-security-token:SESSION-SECRET-9\
            </CanonicalRequest></Error>";
        let denied = object_store::Error::Generic { store: "S3", source: body.to_string().into() };
        let e = store_err("w")(denied);
        assert_eq!(e.kind, ErrorKind::Configuration);
        assert!(!e.message.contains("SESSION-SECRET-9"), "{}", e.message);
        assert!(e.message.contains("code: SignatureDoesNotMatch"), "{}", e.message);
        assert!(e.message.contains("403 Forbidden"), "{}", e.message);
        assert_eq!(scrub("no body here"), "no body here");
        let missing = object_store::Error::Generic {
            store: "S3",
            source: "404 Not Found: <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>"
                .to_string()
                .into(),
        };
        let e = store_err("w")(missing);
        assert_eq!(e.kind, ErrorKind::Configuration, "no retry creates a bucket");
        assert!(e.message.contains("the bucket does not exist"), "{}", e.message);
    }
}

//! `chatetl simulate`: vendor reporting APIs served on loopback from a synthetic dataset.
//!
//! Owns: the shared server state ([`SimState`]: dataset, faults, assumptions, request log), the router, the
//! admin routes under `/_sim/`, and serving on a bound listener until a shutdown future resolves.
//! Tests, the benchmark and `chatetl demo` run against it; it is checked against the vendors' own
//! example request bodies and is never a substitute for a client written from the docs.
//!
//! Requests are parsed, and answers written, with the simulator's own wire types ([`wire`]),
//! written from the vendors' docs and tested against their examples; nothing here uses the
//! client's types (the `source` and `config` modules), so the simulator cannot agree with a wrong
//! guess of the client by construction.
//!
//! To add an upstream API: write its request and response types from the docs in
//! `simulator/wire/<vendor>.rs` (with a test against the docs' examples), write
//! `simulator/<api>.rs` with its handler (evaluating from the dataset), add its records to
//! `dataset.rs`, and add one `.route(…)` line in [`Simulator::router`].
//!
//! Admin routes (not faulted, not recorded, no auth; the server binds loopback):
//! - `GET /_sim/requests`, `DELETE /_sim/requests`: the request log, and clearing it;
//! - `GET /_sim/faults`, `PUT /_sim/faults`: the server-wide [`FaultConfig`];
//! - `GET /_sim/assumptions`, `PUT /_sim/assumptions`: the server-wide [`Assumptions`] (how answers
//!   are written where the docs are silent: the count metric's name, empty buckets);
//! - `GET /_sim/event-queries`, `PUT /_sim/event-queries`: the server-wide [`EventQueries`] (how
//!   events and workflow take buckets and several aggregations, which 001 never shows);
//! - `POST /_sim/fault-rules`, `DELETE /_sim/fault-rules`: add a [`FaultRule`], clear them all;
//! - `GET /_sim/organizations`: the organizations (ids and names; tokens are not shown).

pub mod assumptions;
pub mod auth;
pub mod chat_sessions;
pub mod comm100;
pub mod dataset;
pub mod druid;
pub mod events;
pub mod faults;
pub mod realtime;
pub mod thulium;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;

pub use assumptions::{Assumptions, CountMetricName, EventAggregations, EventBuckets, EventQueries};
pub use dataset::{Dataset, DatasetSpec};
pub use faults::{FaultConfig, FaultRule, RecordedRequest};

/// The path of giosg's chat_sessions endpoint for an organization.
pub fn chat_sessions_path(org: &str) -> String {
    format!("/api/reporting/v1/orgs/{org}/chat_sessions")
}

/// Shared state of a running simulator; cheap to clone.
#[derive(Clone)]
pub struct SimState {
    inner: Arc<Inner>,
}

struct Inner {
    dataset: Arc<Dataset>,
    faults: Mutex<FaultConfig>,
    assumptions: Mutex<Assumptions>,
    event_queries: Mutex<EventQueries>,
    rules: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<RecordedRequest>>,
    seq: AtomicU64,
    rng: Mutex<ChaCha8Rng>,
    limiter: Mutex<faults::RateLimiter>,
}

/// A simulator: dataset plus fault configuration, ready to serve.
#[derive(Clone)]
pub struct Simulator {
    state: SimState,
}

impl Simulator {
    /// A simulator serving `dataset` with server-wide `faults`; `fault_seed` makes the random
    /// fault draws repeatable.
    pub fn new(dataset: Dataset, faults: FaultConfig, fault_seed: u64) -> Simulator {
        let inner = Inner {
            dataset: Arc::new(dataset),
            faults: Mutex::new(faults),
            assumptions: Mutex::new(Assumptions::default()),
            event_queries: Mutex::new(EventQueries::default()),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(fault_seed)),
            limiter: Mutex::new(faults::RateLimiter::default()),
        };
        Simulator { state: SimState { inner: Arc::new(inner) } }
    }

    /// Serves answers written with `assumptions` instead of the defaults.
    pub fn with_assumptions(self, assumptions: Assumptions) -> Simulator {
        self.state.set_assumptions(assumptions);
        self
    }

    /// Serves events and workflow queries as `event_queries` say instead of the defaults.
    pub fn with_event_queries(self, event_queries: EventQueries) -> Simulator {
        self.state.set_event_queries(event_queries);
        self
    }

    /// The in-process handle tests use to inspect requests and set faults.
    pub fn handle(&self) -> SimState {
        self.state.clone()
    }

    /// Every route: the vendor APIs (faulted and recorded) and the admin routes.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/reporting/v1/orgs/{organization_id}/chat_sessions", post(chat_sessions::handler))
            .route("/api/events/v2/orgs/{organization_id}/fetch", post(events::events_handler))
            .route("/api/reporting/workflow/v1/orgs/{organization_id}/query/", post(events::workflow_handler))
            .route(thulium::PATH, get(thulium::handler))
            .route("/api/v4/reporting/realtime/rooms", get(realtime::rooms))
            .route("/api/v4/reporting/realtime/users", get(realtime::users))
            .route("/v4/livechat/realTime/Agents", get(comm100::agents))
            .route("/v4/livechat/realTime/Queue", get(comm100::queue))
            .route("/v4/livechat/realTime/Today", get(comm100::today_handler))
            .route("/v4/livechat/realTime/RightNow", get(comm100::right_now))
            .layer(axum::middleware::from_fn_with_state(self.state.clone(), faults::layer));
        let admin = Router::new()
            .route("/_sim/requests", get(admin_requests).delete(admin_clear_requests))
            .route("/_sim/faults", get(admin_faults).put(admin_set_faults))
            .route("/_sim/assumptions", get(admin_assumptions).put(admin_set_assumptions))
            .route("/_sim/event-queries", get(admin_event_queries).put(admin_set_event_queries))
            .route("/_sim/fault-rules", post(admin_add_rule).delete(admin_clear_rules))
            .route("/_sim/organizations", get(admin_organizations));
        api.merge(admin).with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, orgs = self.state.dataset().organizations.len(), rows = self.state.dataset().chat_session_rows.len(), "simulator listening");
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }

    /// Binds `127.0.0.1:0` and serves in the background; for tests and `chatetl demo`.
    pub async fn spawn(self) -> std::io::Result<RunningSimulator> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = self.handle();
        let task = tokio::spawn(self.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(RunningSimulator { addr, handle, shutdown: Some(tx), task: Some(task) })
    }
}

/// A simulator serving in the background; stops when dropped or on [`RunningSimulator::stop`].
pub struct RunningSimulator {
    pub addr: SocketAddr,
    pub handle: SimState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningSimulator {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl SimState {
    /// The dataset being served.
    pub fn dataset(&self) -> Arc<Dataset> {
        self.inner.dataset.clone()
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.log.lock().expect("log lock").clone()
    }

    /// Forgets the requests served so far.
    pub fn clear_requests(&self) {
        self.inner.log.lock().expect("log lock").clear();
    }

    /// Replaces the server-wide faults.
    pub fn set_faults(&self, faults: FaultConfig) {
        *self.inner.faults.lock().expect("faults lock") = faults;
    }

    /// How answers are written where the docs are silent.
    pub fn assumptions(&self) -> Assumptions {
        self.inner.assumptions.lock().expect("assumptions lock").clone()
    }

    /// Replaces the server-wide assumptions (from the next request on).
    pub fn set_assumptions(&self, assumptions: Assumptions) {
        *self.inner.assumptions.lock().expect("assumptions lock") = assumptions;
    }

    /// How events and workflow take buckets and several aggregations.
    pub fn event_queries(&self) -> EventQueries {
        *self.inner.event_queries.lock().expect("event queries lock")
    }

    /// Replaces the server-wide [`EventQueries`] (from the next request on).
    pub fn set_event_queries(&self, event_queries: EventQueries) {
        *self.inner.event_queries.lock().expect("event queries lock") = event_queries;
    }

    /// Adds a targeted fault rule (checked before the header and the server-wide faults).
    pub fn add_rule(&self, rule: FaultRule) {
        self.inner.rules.lock().expect("rules lock").push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_rules(&self) {
        self.inner.rules.lock().expect("rules lock").clear();
    }
}

async fn admin_requests(State(s): State<SimState>) -> Json<Vec<RecordedRequest>> {
    Json(s.requests())
}

async fn admin_clear_requests(State(s): State<SimState>) -> axum::http::StatusCode {
    s.clear_requests();
    axum::http::StatusCode::NO_CONTENT
}

async fn admin_faults(State(s): State<SimState>) -> Json<FaultConfig> {
    Json(s.inner.faults.lock().expect("faults lock").clone())
}

async fn admin_set_faults(State(s): State<SimState>, Json(f): Json<FaultConfig>) -> Json<FaultConfig> {
    s.set_faults(f.clone());
    Json(f)
}

async fn admin_assumptions(State(s): State<SimState>) -> Json<Assumptions> {
    Json(s.assumptions())
}

async fn admin_set_assumptions(State(s): State<SimState>, Json(a): Json<Assumptions>) -> Json<Assumptions> {
    s.set_assumptions(a.clone());
    Json(a)
}

async fn admin_event_queries(State(s): State<SimState>) -> Json<EventQueries> {
    Json(s.event_queries())
}

async fn admin_set_event_queries(State(s): State<SimState>, Json(q): Json<EventQueries>) -> Json<EventQueries> {
    s.set_event_queries(q);
    Json(q)
}

async fn admin_add_rule(State(s): State<SimState>, Json(r): Json<FaultRule>) -> axum::http::StatusCode {
    s.add_rule(r);
    axum::http::StatusCode::CREATED
}

async fn admin_clear_rules(State(s): State<SimState>) -> axum::http::StatusCode {
    s.clear_rules();
    axum::http::StatusCode::NO_CONTENT
}

async fn admin_organizations(State(s): State<SimState>) -> Json<serde_json::Value> {
    let orgs: Vec<_> =
        s.dataset().organizations.iter().map(|o| serde_json::json!({"id": o.id, "name": o.name})).collect();
    Json(serde_json::Value::Array(orgs))
}

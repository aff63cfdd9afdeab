//! One vendor budget for every chatetl process on a PostgreSQL warehouse: each source's
//! `requests_per_second` and `concurrency` are spent by all of them together, not by each.
//!
//! Owns: [`SharedBudget`] (the warehouse's pool and this process's id, [`process_id`]),
//! [`SourceBudget`] (one vendor account's budget: a request-rate row and concurrency leases in
//! the `chatetl` schema, migration `0004_shared_budget.sql`), [`Lease`] (what one attempt holds
//! while it is in flight) and [`account_key`] (which budget a source spends). `source::http`
//! asks for a lease before each attempt when the runner was built over a warehouse whose state
//! is in PostgreSQL ([`crate::sink::Sink::shared_pool`]); Parquet warehouses keep the in-process
//! limits (governor and a semaphore), since their processes share no database.
//!
//! # Why it holds
//!
//! **Rate.** `chatetl.source_budgets` holds one row per account with `next_at`, the earliest
//! instant of the next request slot. Taking a slot is one statement,
//! `next_at = greatest(next_at, clock_timestamp()) + s` on that row (`s = 1.05 / rps`),
//! returning the slot (`greatest(old next_at, now)`) minus `clock_timestamp()`: the wait. The
//! statement locks the row, so concurrent takers are serialized and each sees the previous one's
//! `next_at`: slot `k + 1` is at least `s` after slot `k`. Slots and waits are measured on
//! PostgreSQL's clock alone, so the processes' clocks (and their skew) play no part; a process
//! sleeps the returned wait on its own monotonic timer and never sends before its slot. There is
//! no burst: `rps + 1` slots span `rps · s = 1.05 s`, so a half-open 1 s interval holds at most
//! `rps` slots (rounded up). An upstream sees a request later than its slot by the answer of
//! PostgreSQL, the timer and the connection; only the *difference* of two requests' delays can put
//! more into one of its seconds: none while delays differ by less than `0.05 / rps` (12 ms at 4/s),
//! at most one more while they differ by less than `s` (so `source::http` builds its HTTP client
//! before taking a slot, never between the slot and the request). The three-daemon test allows
//! that one.
//!
//! **Concurrency.** `chatetl.source_slots` holds `concurrency` rows per account. An attempt first
//! leases a free row (`FOR UPDATE SKIP LOCKED`, holder and `expires_at` set in the same
//! statement), then takes its rate slot, sends, and frees the row (only if it still holds it). So
//! at most `concurrency` attempts of all processes are in flight, and only lease holders take
//! rate slots: `next_at` never runs more than `concurrency / rps` ahead, and a request is never
//! held back between its slot and its sending by a wait for a lease (which would bunch requests
//! into one second). No pooled connection is held while a request is in flight or while waiting
//! for a row (a busy account is polled every 25 to 100 ms), so the 16-connection pool is enough
//! for any number of requests. A lease runs out `timeout_secs + concurrency · 1.05 / rps + 30 s`
//! after it was taken: longer than a live attempt can hold it (a wait of up to 10 s for a pooled
//! connection before the slot statement, the rate wait, then reqwest's total timeout), so only a
//! dead process's lease expires; until then it holds its row, so a killed daemon costs at most
//! that long of one slot. A process that stops releases every lease it still holds
//! ([`SharedBudget::release_all`]: the scheduler at its stop, after its runs ended or were
//! dropped), so only a killed one leaves leases to expire.
//!
//! **The account.** [`account_key`] is the sha256 of the source kind, its base URL, its
//! organization and its credential's identity (the basic-auth user, or the sha256 of a token):
//! what a vendor counts a budget against. Two configurations naming the same account share the
//! budget whatever they call the source. No secret is stored: the token enters only through a
//! hash. The processes must agree on `requests_per_second` and `concurrency`: each spaces its own
//! slots by its own rate and leases among its own first `concurrency` rows.
//!
//! **PostgreSQL unreachable.** Nothing is sent without a lease and a slot: an attempt whose
//! budget statement fails fails with `HttpError::Budget` (kind `warehouse`, retryable), which the
//! client retries with its usual backoff; after the retries the window fails and is loaded by a
//! later run. The vendor's limit is never exceeded silently.
//!
//! One-shot `run` and `backfill` on a PostgreSQL warehouse spend the same vendor budget as the
//! daemons and take their leases and slots the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use crate::config::{Credentials, SourceConfig};

/// Slots are this much further apart than `1 / requests_per_second`: room for the delays of
/// requests on their way to differ (see the module doc) at the cost of 5 % of the rate.
const SPACING: f64 = 1.05;
/// How long a lease outlives the longest live attempt: more than the 10 s an attempt may wait for
/// a pooled connection (the pool's acquire timeout) between taking its lease and its rate slot.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Polling a busy account for a free lease: first and longest pause.
const POLL_MIN: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(100);

/// A fraction in `[0, 1)` that differs between callers, to spread their polls.
fn jitter_fraction() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    f64::from(nanos % 1000) / 1000.0
}

/// A budget statement failed: the attempt is not sent.
#[derive(Debug, thiserror::Error)]
#[error("the shared request budget in PostgreSQL cannot be read ({cause}); nothing was sent, a retry may help")]
pub struct BudgetError {
    pub cause: String,
}

fn db_err(e: sqlx::Error) -> BudgetError {
    BudgetError { cause: e.to_string() }
}

/// This process among the others on the warehouse: `host:pid:id` (the id tells a restarted
/// process with a reused pid apart).
pub fn process_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}:{}:{}", std::process::id(), &id[..8])
    })
}

/// Numbers this process's leases (across every budget and reload), so each lease has a holder
/// of its own.
static LEASES: AtomicU64 = AtomicU64::new(0);

/// The budget kept in a warehouse's PostgreSQL database, for every source of a runner.
#[derive(Debug, Clone)]
pub struct SharedBudget {
    pool: PgPool,
}

impl SharedBudget {
    pub fn new(pool: PgPool) -> SharedBudget {
        SharedBudget { pool }
    }

    /// Releases every lease this process holds on the warehouse (of every account): called when
    /// the process stops sending, after its attempts ended or were dropped (a dropped attempt's
    /// own release would run in the background, which an exiting process never gets to).
    /// Returns how many were released.
    pub async fn release_all(&self) -> Result<u64, BudgetError> {
        release_all(&self.pool).await
    }

    /// The budget `source` spends.
    pub fn for_source(&self, source: &SourceConfig) -> SourceBudget {
        let rps = source.requests_per_second.max(0.001);
        let slots = source.concurrency.clamp(1, i32::MAX as usize);
        let interval = Duration::from_secs_f64(SPACING / rps);
        SourceBudget {
            shared: self.clone(),
            account: account_key(source),
            source: source.name.clone(),
            interval,
            slots: slots as i32,
            lease: Duration::from_secs(source.timeout_secs) + interval * slots as u32 + LEASE_MARGIN,
            prepared: tokio::sync::OnceCell::new(),
        }
    }
}

/// The budget key of `source`'s vendor account: sha256 (hex) of its kind, base URL,
/// organization and credential identity; never a secret in clear.
pub fn account_key(source: &SourceConfig) -> String {
    use sha2::{Digest, Sha256};
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let identity = match &source.credentials {
        Credentials::Token(t) | Credentials::Bearer(t) => format!("token:{}", hex(&Sha256::digest(t.expose()))),
        Credentials::Basic { username, .. } => format!("user:{username}"),
    };
    let text = format!(
        "chatetl budget v1\n{:?}\n{}\n{}\n{identity}",
        source.kind,
        source.base_url.trim_end_matches('/'),
        source.organization_id
    );
    hex(&Sha256::digest(text.as_bytes()))
}

/// One vendor account's shared budget, as one source of one process spends it.
#[derive(Debug)]
pub struct SourceBudget {
    shared: SharedBudget,
    account: String,
    source: String,
    interval: Duration,
    slots: i32,
    lease: Duration,
    /// The account's slot rows exist (inserted on first use).
    prepared: tokio::sync::OnceCell<()>,
}

impl SourceBudget {
    /// The account key (for logs: a hash).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Waits until this process may send one attempt: a concurrency lease of the account, then
    /// its rate slot. The lease is held until [`Lease::release`] (or the drop of the lease).
    pub async fn acquire(&self) -> Result<Lease, BudgetError> {
        let started = std::time::Instant::now();
        self.prepared
            .get_or_try_init(|| async {
                sqlx::query(
                    "INSERT INTO chatetl.source_slots (account, slot) \
                     SELECT $1, s FROM generate_series(0, $2 - 1) AS s ON CONFLICT DO NOTHING",
                )
                .bind(&self.account)
                .bind(self.slots)
                .execute(&self.shared.pool)
                .await
                .map(|_| ())
            })
            .await
            .map_err(db_err)?;
        let holder = format!("{}#{}", process_id(), LEASES.fetch_add(1, Ordering::Relaxed));
        let mut pause = POLL_MIN;
        let slot = loop {
            let slot: Option<i32> = sqlx::query_scalar(
                "UPDATE chatetl.source_slots SET holder = $2, expires_at = clock_timestamp() + make_interval(secs => $3) \
                 WHERE account = $1 AND slot = (\
                   SELECT slot FROM chatetl.source_slots \
                   WHERE account = $1 AND slot < $4 AND (holder IS NULL OR expires_at <= clock_timestamp()) \
                   ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING slot",
            )
            .bind(&self.account)
            .bind(&holder)
            .bind(self.lease.as_secs_f64())
            .bind(self.slots)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_err)?;
            if let Some(slot) = slot {
                break slot;
            }
            let jitter = pause.mul_f64(jitter_fraction() / 2.0);
            tokio::time::sleep(pause + jitter).await;
            pause = (pause * 2).min(POLL_MAX);
        };
        let mut lease = Lease {
            pool: self.shared.pool.clone(),
            account: self.account.clone(),
            slot,
            holder: Some(holder),
            waited: Duration::ZERO,
        };
        // The lease is released (by its drop) if taking the rate slot fails.
        let wait_secs: f64 = sqlx::query_scalar(
            "INSERT INTO chatetl.source_budgets AS b (account, source, next_at) \
             VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) \
             ON CONFLICT (account) DO UPDATE \
               SET next_at = greatest(b.next_at, clock_timestamp()) + make_interval(secs => $3), source = excluded.source \
             RETURNING extract(epoch FROM (b.next_at - make_interval(secs => $3) - clock_timestamp()))::float8",
        )
        .bind(&self.account)
        .bind(&self.source)
        .bind(self.interval.as_secs_f64())
        .fetch_one(&self.shared.pool)
        .await
        .map_err(db_err)?;
        if wait_secs > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait_secs)).await;
        }
        lease.waited = started.elapsed();
        Ok(lease)
    }
}

/// A concurrency lease of one account, held by one attempt in flight; released by
/// [`Lease::release`] or, should the attempt be dropped, in the background by its drop. A lease
/// its process never releases expires.
#[derive(Debug)]
pub struct Lease {
    pool: PgPool,
    account: String,
    slot: i32,
    holder: Option<String>,
    /// How long the attempt waited for its lease and slot.
    pub waited: Duration,
}

impl Lease {
    /// Frees the lease (only if this attempt still holds it: an expired one may be another's).
    /// Should the statement fail, the drop of the lease tries again in the background.
    pub async fn release(mut self) {
        if let Some(holder) = &self.holder
            && release(&self.pool, &self.account, self.slot, holder).await
        {
            self.holder = None;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(holder) = self.holder.take() else { return };
        let (pool, account, slot) = (self.pool.clone(), self.account.clone(), self.slot);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release(&pool, &account, slot, &holder).await });
        }
    }
}

/// Frees one lease; false when the statement failed.
async fn release(pool: &PgPool, account: &str, slot: i32, holder: &str) -> bool {
    let freed = sqlx::query(
        "UPDATE chatetl.source_slots SET holder = NULL, expires_at = NULL WHERE account = $1 AND slot = $2 AND holder = $3",
    )
    .bind(account)
    .bind(slot)
    .bind(holder)
    .execute(pool)
    .await;
    if let Err(e) = &freed {
        tracing::warn!(slot, error = %e, "cannot release a shared concurrency lease; it expires by itself");
    }
    freed.is_ok()
}

/// Releases every lease of this process ([`process_id`]) on `pool`'s database.
pub async fn release_all(pool: &PgPool) -> Result<u64, BudgetError> {
    let freed = sqlx::query(
        "UPDATE chatetl.source_slots SET holder = NULL, expires_at = NULL WHERE starts_with(holder, $1 || '#')",
    )
    .bind(process_id())
    .execute(pool)
    .await
    .map_err(db_err)?;
    Ok(freed.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn source(token: &str, org: &str) -> SourceConfig {
        let mut s = crate::config::testing::giosg_source();
        s.credentials = Credentials::Token(Secret::new(token));
        s.organization_id = org.into();
        s
    }

    #[test]
    fn the_account_key_names_the_account_and_hides_the_token() {
        let a = account_key(&source("secret-token", "org-1"));
        assert_eq!(a.len(), 64);
        assert!(!a.contains("secret"));
        let mut renamed = source("secret-token", "org-1");
        renamed.name = "other_name".into();
        renamed.base_url = "https://service.giosg.com/".into();
        assert_eq!(account_key(&renamed), a, "the source's name and a trailing slash do not matter");
        assert_ne!(account_key(&source("secret-token", "org-2")), a);
        assert_ne!(account_key(&source("other-token", "org-1")), a);
    }

    /// A pool on a fresh database created on the server of `DATABASE_URL` with the budget's
    /// tables (migration 0004; it is left behind, like a crashed test's), or
    /// `None` (the test is skipped) when it is unset.
    /// A fresh database with the budget tables, dropped when the guard is.
    struct TestDb {
        pool: PgPool,
        admin: String,
        name: String,
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                    }
                })
            })
            .join();
        }
    }

    async fn test_db() -> TestDb {
        use sqlx::Connection;
        let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL is set: run the suite with scripts/test");
        let name = format!("chatetl_budget_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let base = admin.split('?').next().unwrap_or(&admin);
        let url = format!("{}/{name}", &base[..base.rfind('/').expect("a database in DATABASE_URL")]);
        let pool = PgPool::connect(&url).await.expect("connect to the new database");
        sqlx::raw_sql(concat!("CREATE SCHEMA chatetl;\n", include_str!("../migrations/0004_shared_budget.sql")))
            .execute(&pool)
            .await
            .expect("migrate");
        TestDb { pool, admin, name }
    }

    #[tokio::test]
    async fn slots_are_spaced_by_the_rate_across_budgets_of_one_account() {
        let db = test_db().await;
        let pool = db.pool.clone();
        let mut config = source(&uuid::Uuid::new_v4().to_string(), "org");
        config.requests_per_second = 20.0;
        config.concurrency = 3;
        // Two processes' views of one account.
        let (a, b) = (SharedBudget::new(pool.clone()).for_source(&config), SharedBudget::new(pool).for_source(&config));
        let started = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
        for i in 0..10 {
            let budget = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move { budget.acquire().await.expect("acquire").release().await });
        }
        while tasks.join_next().await.is_some() {}
        // 10 slots at least 50 ms apart (52.5 ms): the last is at least 450 ms after the first.
        assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn leases_cap_attempts_in_flight_and_an_abandoned_one_expires() {
        let db = test_db().await;
        let pool = db.pool.clone();
        let mut config = source(&uuid::Uuid::new_v4().to_string(), "org");
        config.requests_per_second = 1000.0;
        config.concurrency = 2;
        config.timeout_secs = 0;
        let budget = SharedBudget::new(pool.clone()).for_source(&config);
        let (first, second) = (budget.acquire().await.unwrap(), budget.acquire().await.unwrap());
        assert_ne!(first.slot, second.slot);
        let third = tokio::time::timeout(Duration::from_millis(500), budget.acquire()).await;
        assert!(third.is_err(), "a third attempt waits while two are in flight");
        first.release().await;
        let third = tokio::time::timeout(Duration::from_secs(10), budget.acquire()).await.expect("freed").unwrap();
        // A process that dies never releases: its lease runs out (here after 30 s and a bit).
        std::mem::forget(second);
        let fourth = tokio::time::timeout(Duration::from_secs(60), budget.acquire()).await.expect("expired").unwrap();
        assert_ne!(third.slot, fourth.slot);
    }

    #[tokio::test]
    async fn release_all_frees_every_lease_of_this_process_and_no_other() {
        let db = test_db().await;
        let pool = db.pool.clone();
        let mut config = source(&uuid::Uuid::new_v4().to_string(), "org");
        config.requests_per_second = 1000.0;
        config.concurrency = 3;
        let budget = SharedBudget::new(pool.clone()).for_source(&config);
        let (a, b) = (budget.acquire().await.unwrap(), budget.acquire().await.unwrap());
        assert_ne!(a.holder, b.holder, "each lease has a holder of its own");
        // Another process's lease of the third slot.
        sqlx::query(
            "UPDATE chatetl.source_slots SET holder = 'other:1:x#0', expires_at = clock_timestamp() + interval '1 hour' \
             WHERE account = $1 AND holder IS NULL",
        )
        .bind(budget.account())
        .execute(&pool)
        .await
        .unwrap();
        // Attempts dropped as a process exits: their background releases never run.
        std::mem::forget(a);
        std::mem::forget(b);
        assert_eq!(SharedBudget::new(pool.clone()).release_all().await.unwrap(), 2);
        let held: Vec<String> =
            sqlx::query_scalar("SELECT holder FROM chatetl.source_slots WHERE account = $1 AND holder IS NOT NULL")
                .bind(budget.account())
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(held, ["other:1:x#0"]);
    }
}

//! The PostgreSQL change-data-capture consumer: a logical-replication (`pgoutput`) stream from a slot, mapped by
//! [`Mapping`] to invalidations and applied by an [`Applier`].
//!
//! # Delivery
//! At least once, never lost:
//! - A transaction's changes are collected until its commit, applied (L2, then the bus), and only then is the
//!   commit's end LSN acknowledged to the slot. A consumer killed between the two is sent the transaction again
//!   after its restart: PostgreSQL resumes a slot from its confirmed LSN.
//! - A transaction whose end LSN is not beyond what was already applied is skipped (deduplicated by LSN).
//! - Application failures (Redis down, the bus refusing) are retried with backoff for the same transaction; the
//!   stream waits, the slot keeps the WAL. Nothing later is acknowledged before it.
//! - The replication connection is re-established with backoff after any error; the backoff starts over once a
//!   session streams again.
//!
//! # Keys
//! A rule without a key template keys rows by the table's `PRIMARY KEY` (in key order, joined by `:`), read from
//! the catalog at start and again at every (re)connection — the key the cache uses. Not the replica-identity
//! columns of the stream: under `REPLICA IDENTITY FULL`, which the set-up turns on for tag templates over non-key
//! columns, PostgreSQL marks every column as identity. A mapped table without a primary key and a rule without a
//! key template for it fail the start, naming both.
//!
//! # Feed marks: how nodes know the consumer is keeping up
//! The holder calls `pg_logical_emit_message(false, 'strata-cdc-mark:<slot>', <id>)` every 100 ms on its pool (a
//! superuser, or a role granted EXECUTE on it). A non-transactional message lands in the WAL after the commit
//! record of every transaction that committed before the call, so when the stream delivers the mark, every such
//! transaction has been received — and, the loop being sequential, applied (L2, then the bus). The holder then
//! publishes `Invalidation::FeedMark { feed: <slot>, age_ms }` (age: since just before the emit) through the same
//! [`Applier`], after those invalidations. Nodes whose namespaces are fed by this slot trust their caches only
//! while the last mark is recent (`strata::NamespaceBuilder::with_change_feed`), so a consumer that stalls (a
//! stopped process keeps its slot and its lock), cannot reach Redis, or dies makes readers go to the source
//! instead of serving what a commit replaced. Marks of another holder or from before a restart are ignored.
//!
//! # Several nodes, one slot: failover
//! Every node may run a consumer on the same slot; one streams, the others are standbys. The rule:
//! - The streaming consumer holds a session-level advisory lock (key derived from the slot name) on a connection
//!   of its own for as long as it is the holder, and checks that connection every `status_interval`; losing it
//!   ends its session (it steps down and queues for the lock again).
//! - A standby blocks in `pg_advisory_lock` on its own connection, silently (one info log when it becomes a
//!   standby). PostgreSQL grants the lock the moment the holder's session ends — a `stop`, a crash, a `kill -9`
//!   (the kernel closes the sockets) — or, for a holder host that vanished, within about 8 s (TCP keepalives set
//!   on the lock session).
//! - The new holder starts streaming at once from the slot's confirmed LSN (so nothing unacknowledged is lost),
//!   and logs the takeover once. While the old walsender is still exiting the slot is reported active: that is
//!   retried every 50 ms; a slot still held 2 s after the lock was taken belongs to no live holder and its
//!   session is terminated; after 10 s the consumer falls back to its normal backoff.
//! - Bound: for a holder process that dies or stops, a standby streams again within the lock hand-over plus one
//!   connection set-up plus at most a few 50 ms retries — well under a second on a local network (the test
//!   measures it).
//!
//! [`CdcStats::active`] says whether this consumer holds the slot, [`CdcHandle::holder`] who does
//! (`pg_replication_slots.active_pid`, or the lock's holder between sessions, with its `application_name`,
//! `strata-cdc:<node>`).
//!
//! # When the slot is gone
//! A missing slot (dropped, or never created) or a lost one (`wal_status = 'lost'`: the server removed WAL it
//! still needed) means changes may have gone unseen. The consumer (re)creates the slot, *then* clears every mapped
//! namespace (an L2 generation barrier and a bus `Clear`), so what was missed cannot be served; a lost or vanished
//! slot is also logged as an error and counted (`slots_lost`) — that is the alarm.
//!
//! # Changes it cannot use
//! An undecodable message, a change of a relation it was not told about, or a change a rule cannot map (see
//! [`crate::mapping`]) is logged, counted, and clears the affected namespaces (all of them when the table is
//! unknown). The consumer never stops for bad data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool, Row};
use tokio::sync::watch;

use crate::apply::Applier;
use crate::mapping::{Batch, Change, ConfigError, Mapping, Rule};
use crate::pgoutput::{self, Message, Relation};

/// Why the consumer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    /// The mapping rules are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An option is invalid.
    #[error("CDC option `{field}`: {problem}")]
    Option {
        /// The option.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// PostgreSQL refused or failed.
    #[error("PostgreSQL ({context}): {source}")]
    Postgres {
        /// What the consumer was doing.
        context: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

fn pg(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CdcError {
    let context = context.into();
    move |source| CdcError::Postgres { context, source }
}

/// Consumer options.
#[derive(Debug, Clone)]
pub struct PgCdcOptions {
    /// `postgres://user[:password]@host[:port]/database`. The user needs the REPLICATION attribute (and, for the
    /// set-up, ownership of the tables).
    pub url: String,
    /// The replication slot (created when missing). Letters, digits and `_` only.
    pub slot: String,
    /// The publication (created when missing and `manage_publication` is set).
    pub publication: String,
    /// The mapping rules.
    pub rules: Vec<Rule>,
    /// Namespaces that take every tag a rule invalidates, whatever the rule's namespace: the edge proxy's, so
    /// that one tag (`product:{id}`) covers the cached rows and the proxied pages that carry it. Default: none.
    pub tag_mirrors: Vec<String>,
    /// Create the publication over the mapped tables when it is missing, add mapped tables it lacks, and set
    /// `REPLICA IDENTITY FULL` on tables whose tag templates read non-key columns. Default: true.
    pub manage_publication: bool,
    /// How often the confirmed LSN is reported to the server. Default: 1 s.
    pub status_interval: Duration,
    /// The longest wait between retries (applying, reconnecting). Default: 5 s.
    pub max_backoff: Duration,
    /// This node's name in PostgreSQL (`application_name` = `strata-cdc:<node>`), so that every node can tell who
    /// holds the slot. Default: `<hostname>:<pid>`.
    pub node: String,
}

impl PgCdcOptions {
    /// Options with the defaults.
    pub fn new(
        url: impl Into<String>,
        slot: impl Into<String>,
        publication: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            slot: slot.into(),
            publication: publication.into(),
            rules: Vec::new(),
            tag_mirrors: Vec::new(),
            manage_publication: true,
            status_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            node: default_node(),
        }
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
}

fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}:{}", std::process::id())
}

/// `strata-cdc:<node>`, cut to PostgreSQL's 63 bytes.
fn application_name(node: &str) -> String {
    let mut name = format!("strata-cdc:{node}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The advisory-lock key of a slot: the same on every node, non-negative (so its halves fit `pg_locks`' oids).
fn lock_key(slot: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "strata-cdc slot ".bytes().chain(slot.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & 0x7fff_ffff_ffff_ffff) as i64
}

/// First wait between retries; the backoff doubles up to `max_backoff` and starts over after a success.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// How often a slot that is still active after this consumer took its lock (the old walsender exiting) is retried.
const BUSY_RETRY: Duration = Duration::from_millis(50);
/// A slot still active this long after the lock was taken has no live holder: its session is terminated.
const BUSY_TERMINATE_AFTER: Duration = Duration::from_secs(2);
/// After this long of a busy slot, retries fall back to the normal backoff.
const BUSY_FAST_FOR: Duration = Duration::from_secs(10);
/// How often a standby refreshes who holds the slot.
const HOLDER_REFRESH: Duration = Duration::from_secs(2);
/// How often the holder marks its feed (see [`PgCdc::emit_mark`]): well under the nodes' change-feed bound.
const MARK_EVERY: Duration = Duration::from_millis(100);
/// Marks emitted and not yet seen in the stream, at most.
const MARKS_KEPT: usize = 256;

/// The session that holds the slot (or, between its replication sessions, the slot's advisory lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its backend pid.
    pub pid: i32,
    /// Its `application_name` (`strata-cdc:<node>` for a Strata consumer).
    pub application_name: Option<String>,
    /// Its client address (TCP connections only).
    pub client_addr: Option<String>,
}

/// What the consumer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CdcStats {
    /// This consumer holds the slot (its advisory lock) and streams from it; `false` on a standby.
    pub active: bool,
    /// The backend pid of the slot's holder, when known (see [`CdcHandle::holder`]).
    pub holder_pid: Option<i32>,
    /// Times this consumer took the slot over after waiting as a standby.
    pub takeovers: u64,
    /// Transactions applied.
    pub transactions: u64,
    /// Row changes seen.
    pub changes: u64,
    /// Invalidations published (keys + tags + namespaces).
    pub invalidations: u64,
    /// Transactions skipped because their LSN was already applied.
    pub duplicates: u64,
    /// Messages that did not decode.
    pub undecodable: u64,
    /// Changes a rule could not map (its namespace was cleared).
    pub unmapped: u64,
    /// Failed attempts to apply a transaction (each retried).
    pub apply_failures: u64,
    /// Replication sessions started after the first.
    pub reconnects: u64,
    /// Slots created because they were missing (including the first start).
    pub slots_created: u64,
    /// Slots found lost or gone after this consumer had used them: the alarm.
    pub slots_lost: u64,
    /// The last end LSN acknowledged.
    pub acked_lsn: u64,
}

#[derive(Default)]
struct Counters {
    active: AtomicBool,
    holder: Mutex<Option<Holder>>,
    takeovers: AtomicU64,
    transactions: AtomicU64,
    changes: AtomicU64,
    invalidations: AtomicU64,
    duplicates: AtomicU64,
    undecodable: AtomicU64,
    unmapped: AtomicU64,
    apply_failures: AtomicU64,
    reconnects: AtomicU64,
    slots_created: AtomicU64,
    slots_lost: AtomicU64,
    acked_lsn: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> CdcStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CdcStats {
            active: self.active.load(Ordering::Relaxed),
            holder_pid: self.holder().map(|h| h.pid),
            takeovers: g(&self.takeovers),
            transactions: g(&self.transactions),
            changes: g(&self.changes),
            invalidations: g(&self.invalidations),
            duplicates: g(&self.duplicates),
            undecodable: g(&self.undecodable),
            unmapped: g(&self.unmapped),
            apply_failures: g(&self.apply_failures),
            reconnects: g(&self.reconnects),
            slots_created: g(&self.slots_created),
            slots_lost: g(&self.slots_lost),
            acked_lsn: g(&self.acked_lsn),
        }
    }

    fn holder(&self) -> Option<Holder> {
        self.holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_holder(&self, holder: Option<Holder>) {
        *self.holder.lock().unwrap_or_else(|e| e.into_inner()) = holder;
    }
}

fn bump(a: &AtomicU64, name: &'static str) {
    a.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(name).increment(1);
}

/// The consumer. [`PgCdc::start`] validates, sets up, and spawns it.
pub struct PgCdc {
    options: PgCdcOptions,
    mapping: Arc<Mapping>,
    applier: Arc<Applier>,
    pool: PgPool,
    repl: ReplicationConfig,
    counters: Arc<Counters>,
    /// This process has seen the slot (so its disappearance is a loss, not a first start).
    seen_slot: bool,
    /// For the lock sessions.
    connect: PgConnectOptions,
    lock_key: i64,
    /// The session holding the slot's advisory lock: `Some` while this consumer is the holder.
    lock: Option<PgConnection>,
    /// A lock session that found the lock taken at start, handed to the standby loop.
    waiting: Option<PgConnection>,
    /// Since when the slot has been busy while this consumer held its lock.
    busy_since: Option<Instant>,
    /// A takeover to log once the session streams: when the standby's wait began, and the holder it waited for.
    takeover: Option<(Instant, Instant, Option<Holder>)>,
}

/// The feed marks this holder emitted and has not seen back yet: id → when (taken before the emit).
#[derive(Default)]
struct Marks {
    next: u64,
    pending: std::collections::VecDeque<(u64, Instant)>,
}

impl Marks {
    fn next(&mut self) -> (u64, Instant) {
        self.next += 1;
        (self.next, Instant::now())
    }

    fn emitted(&mut self, id: u64, at: Instant) {
        if self.pending.len() >= MARKS_KEPT {
            self.pending.pop_front();
        }
        self.pending.push_back((id, at));
    }

    /// Mark `id` came back: when it was emitted (older pending marks are dropped: the stream is in order).
    fn seen(&mut self, id: u64) -> Option<Instant> {
        while let Some(&(first, at)) = self.pending.front() {
            self.pending.pop_front();
            if first == id {
                return Some(at);
            }
            if first > id {
                self.pending.push_front((first, at));
                return None;
            }
        }
        None
    }
}

/// Aborts a task when dropped (the mark emitter ends with its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every [`MARK_EVERY`], writes a mark into the WAL (a non-transactional logical message, so it lands after every
/// commit that completed before the call) and remembers when. When the stream delivers it, everything committed
/// earlier has been applied.
async fn emit_marks(pool: PgPool, prefix: String, marks: Arc<std::sync::Mutex<Marks>>) {
    let mut tick = tokio::time::interval(MARK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Recorded before the emit: the stream may deliver the mark before the query returns.
        let id = {
            let mut m = marks.lock().expect("marks lock");
            let (id, at) = m.next();
            m.emitted(id, at);
            id
        };
        let emitted = tokio::time::timeout(
            MARK_EVERY * 5,
            sqlx::query("select pg_logical_emit_message(false, $1, $2)")
                .bind(&prefix)
                .bind(id.to_string())
                .execute(&pool),
        )
        .await;
        match emitted {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "CDC: emitting a feed mark failed"),
            Err(_) => tracing::debug!("CDC: emitting a feed mark timed out"),
        }
    }
}

/// How a replication session ended.
enum SessionError {
    /// The slot is active in another session (the previous holder's walsender, still exiting).
    Busy(String),
    /// The advisory lock's session is gone: this consumer is no longer the holder.
    LockLost(String),
    /// Anything else.
    Other(String),
}

/// A running consumer.
pub struct CdcHandle {
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl CdcHandle {
    /// What the consumer has done so far.
    pub fn stats(&self) -> CdcStats {
        self.counters.snapshot()
    }

    /// Whether this consumer holds the slot (`false`: a standby).
    pub fn is_active(&self) -> bool {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Who holds the slot, as last seen: this consumer's own walsender when active; on a standby, the other
    /// node's session (refreshed every few seconds).
    pub fn holder(&self) -> Option<Holder> {
        self.counters.holder()
    }

    /// Stops after the transaction being applied; what was applied is acknowledged.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }

    /// Ends the consumer at once, as a crash would (nothing more is acknowledged).
    pub async fn kill(self) {
        self.join.abort();
        let _ = self.join.await;
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The password in a `postgres://user:password@…` URL (percent-decoded), if any.
fn url_password(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return String::new();
    };
    let Some((_, pw)) = userinfo.split_once(':') else {
        return String::new();
    };
    let bytes = pw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgCdc {
    /// Validates the options, connects, reads the mapped tables' primary keys, sets up the publication (and
    /// replica identities), and spawns the consumer: as the slot's holder when its advisory lock is free (the slot
    /// is then ensured before this returns), else as a standby that takes over when the holder's session ends.
    /// Errors name what is wrong; after this returns, the consumer retries on its own.
    pub async fn start(
        options: PgCdcOptions,
        applier: Arc<Applier>,
    ) -> Result<CdcHandle, CdcError> {
        for (field, v) in [
            ("slot", &options.slot),
            ("publication", &options.publication),
        ] {
            if !valid_ident(v) {
                return Err(CdcError::Option {
                    field,
                    problem: format!("{v:?}: use 1–63 lowercase letters, digits and `_`"),
                });
            }
        }
        if options.rules.is_empty() {
            return Err(CdcError::Option {
                field: "rules",
                problem: "no mapping rules: the consumer would invalidate nothing".into(),
            });
        }
        let mut mapping = Mapping::new(&options.rules)?;
        mapping.mirror_tags(options.tag_mirrors.iter().cloned());
        let app_name = application_name(&options.node);
        let connect: PgConnectOptions = options.url.parse().map_err(|e| CdcError::Option {
            field: "url",
            problem: format!("{e}"),
        })?;
        let database = connect
            .get_database()
            .unwrap_or(connect.get_username())
            .to_owned();
        let repl = ReplicationConfig::new(
            connect.get_host(),
            connect.get_username(),
            url_password(&options.url),
            database,
            options.slot.clone(),
            options.publication.clone(),
        )
        .with_port(connect.get_port())
        .with_status_interval(options.status_interval)
        .with_wakeup_interval(options.status_interval)
        .with_application_name(app_name.clone());
        let connect = connect.application_name(&app_name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect.clone())
            .await
            .map_err(pg(format!("connecting to {}", redact(&options.url))))?;
        mapping.set_primary_keys(primary_keys(&pool, &mapping).await?);
        mapping.check_keys()?;
        let lock_key = lock_key(&options.slot);
        let mut cdc = PgCdc {
            options,
            mapping: Arc::new(mapping),
            applier,
            pool,
            repl,
            counters: Arc::default(),
            seen_slot: false,
            connect,
            lock_key,
            lock: None,
            waiting: None,
            busy_since: None,
            takeover: None,
        };
        if cdc.options.manage_publication {
            cdc.setup_publication().await?;
        }
        // The first consumer takes the slot at once (and makes sure it exists before returning); later ones
        // return as standbys and wait for it in the background.
        let (conn, got) = cdc
            .try_lock()
            .await
            .map_err(pg("taking the slot's advisory lock"))?;
        if got {
            cdc.lock = Some(conn);
            cdc.counters.active.store(true, Ordering::Relaxed);
            cdc.ensure_slot().await?;
        } else {
            // A slot that exists now and vanishes before this node takes over is a loss, not a first start.
            let exists: bool = sqlx::query_scalar(
                "select exists(select 1 from pg_replication_slots where slot_name = $1)",
            )
            .bind(&cdc.options.slot)
            .fetch_one(&cdc.pool)
            .await
            .map_err(pg("looking up the replication slot"))?;
            cdc.seen_slot = exists;
            cdc.waiting = Some(conn);
        }
        let counters = cdc.counters.clone();
        let (stop, stop_rx) = watch::channel(false);
        let join = tokio::spawn(async move { cdc.run(stop_rx).await });
        Ok(CdcHandle {
            counters,
            stop,
            join,
        })
    }

    async fn setup_publication(&self) -> Result<(), CdcError> {
        let publication = &self.options.publication;
        let exists: bool =
            sqlx::query_scalar("select exists(select 1 from pg_publication where pubname = $1)")
                .bind(publication)
                .fetch_one(&self.pool)
                .await
                .map_err(pg("looking up the publication"))?;
        let tables: Vec<String> = self
            .mapping
            .tables()
            .iter()
            .map(|(s, t)| format!("{}.{}", quote(s), quote(t)))
            .collect();
        if !exists {
            let sql = format!(
                "create publication {} for table {}",
                quote(publication),
                tables.join(", ")
            );
            match sqlx::query(&sql).execute(&self.pool).await {
                Ok(_) => {}
                // Another node created it a moment ago.
                Err(e) if already_exists(&e) => {}
                Err(e) => return Err(pg(format!("creating publication {publication}"))(e)),
            }
        } else {
            let have: Vec<(String, String)> = sqlx::query_as(
                "select schemaname::text, tablename::text from pg_publication_tables where pubname = $1",
            )
            .bind(publication)
            .fetch_all(&self.pool)
            .await
            .map_err(pg("reading the publication's tables"))?;
            for (s, t) in self.mapping.tables() {
                if !have.contains(&(s.clone(), t.clone())) {
                    let sql = format!(
                        "alter publication {} add table {}.{}",
                        quote(publication),
                        quote(&s),
                        quote(&t)
                    );
                    sqlx::query(&sql)
                        .execute(&self.pool)
                        .await
                        .map_err(pg(format!("adding {s}.{t} to publication {publication}")))?;
                }
            }
        }
        for (s, t) in self.mapping.tables() {
            let tag_cols = self.mapping.tag_columns(&s, &t);
            if tag_cols.is_empty() {
                continue;
            }
            let row = sqlx::query(
                "select c.relreplident::text as ident,
                        coalesce(array_agg(a.attname::text) filter (where i.indisprimary), '{}') as keys
                   from pg_class c
                   join pg_namespace n on n.oid = c.relnamespace
                   left join pg_index i on i.indrelid = c.oid and i.indisprimary
                   left join pg_attribute a on a.attrelid = c.oid and a.attnum = any(i.indkey)
                  where n.nspname = $1 and c.relname = $2
                  group by c.relreplident",
            )
            .bind(&s)
            .bind(&t)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg(format!("reading the replica identity of {s}.{t}")))?;
            let Some(row) = row else {
                return Err(CdcError::Option {
                    field: "rules",
                    problem: format!("table {s}.{t} does not exist"),
                });
            };
            let ident: String = row.get("ident");
            let keys: Vec<String> = row.get("keys");
            if ident != "f" && tag_cols.iter().any(|c| !keys.contains(c)) {
                let sql = format!(
                    "alter table {}.{} replica identity full",
                    quote(&s),
                    quote(&t)
                );
                sqlx::query(&sql)
                    .execute(&self.pool)
                    .await
                    .map_err(pg(format!("setting REPLICA IDENTITY FULL on {s}.{t}")))?;
                tracing::info!(table = %format!("{s}.{t}"), "CDC: set REPLICA IDENTITY FULL: tag templates read non-key columns");
            }
        }
        Ok(())
    }

    /// Makes sure the slot exists and is usable; (re)creates it otherwise and clears every mapped namespace.
    async fn ensure_slot(&mut self) -> Result<(), CdcError> {
        let slot = self.options.slot.clone();
        let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "select plugin::text, wal_status from pg_replication_slots where slot_name = $1",
        )
        .bind(&slot)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg("looking up the replication slot"))?;
        let lost = match &row {
            Some((plugin, _)) if plugin.as_deref() != Some("pgoutput") => {
                return Err(CdcError::Option {
                    field: "slot",
                    problem: format!("slot {slot} uses plugin {plugin:?}, not pgoutput"),
                })
            }
            Some((_, status)) if status.as_deref() == Some("lost") => {
                tracing::error!(%slot, "CDC ALARM: replication slot lost (WAL removed); recreating it and clearing every mapped namespace");
                sqlx::query("select pg_drop_replication_slot($1)")
                    .bind(&slot)
                    .execute(&self.pool)
                    .await
                    .map_err(pg("dropping the lost slot"))?;
                true
            }
            Some(_) => {
                self.seen_slot = true;
                return Ok(());
            }
            None if self.seen_slot => {
                tracing::error!(%slot, "CDC ALARM: replication slot disappeared; recreating it and clearing every mapped namespace");
                true
            }
            None => {
                tracing::warn!(%slot, "CDC: replication slot missing (first start, or dropped): creating it and clearing every mapped namespace");
                false
            }
        };
        // Creating a slot waits for every transaction running at that moment to end; bound the wait so that a
        // long transaction elsewhere makes start-up fail with a message instead of hanging.
        let created = async {
            let mut conn = self.pool.acquire().await?;
            sqlx::query("set statement_timeout = '30s'")
                .execute(&mut *conn)
                .await?;
            let r = sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(&slot)
                .execute(&mut *conn)
                .await;
            sqlx::query("reset statement_timeout")
                .execute(&mut *conn)
                .await?;
            r
        }
        .await;
        match created {
            Ok(_) => {}
            // Another consumer (a second node) created it a moment ago, and clears the namespaces itself.
            Err(e) if already_exists(&e) => {
                self.seen_slot = true;
                return Ok(());
            }
            Err(e) => return Err(pg(format!("creating replication slot {slot}"))(e)),
        }
        bump(
            &self.counters.slots_created,
            "strata_cdc_slots_created_total",
        );
        if lost {
            bump(&self.counters.slots_lost, "strata_cdc_slots_lost_total");
        }
        self.seen_slot = true;
        // Changes from now on reach the slot; what happened before is covered by clearing.
        let mut batch = Batch::default();
        for ns in self.mapping.namespaces() {
            batch.clear(&ns);
        }
        self.apply_until_done(&batch).await;
        Ok(())
    }

    /// Applies a batch, retrying with backoff until it is done (or the task is cancelled).
    async fn apply_until_done(&self, batch: &Batch) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.applier.apply(batch).await {
                Ok(done) => {
                    let n = (done.keys + done.tags + done.namespaces) as u64;
                    self.counters.invalidations.fetch_add(n, Ordering::Relaxed);
                    metrics::counter!("strata_cdc_invalidations_total").increment(n);
                    return;
                }
                Err(e) => {
                    bump(
                        &self.counters.apply_failures,
                        "strata_cdc_apply_failures_total",
                    );
                    tracing::warn!(error = %e, ?backoff, "CDC: applying invalidations failed; retrying (nothing is acknowledged meanwhile)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    /// Opens a lock session and tries the slot's lock: the connection and whether it is held now.
    async fn try_lock(&self) -> Result<(PgConnection, bool), sqlx::Error> {
        let mut conn = PgConnection::connect_with(&self.connect).await?;
        // The server notices a holder host that vanished (not only a closed socket) within seconds, and a standby
        // that went away in its wait leaves the queue; server-wide timeouts must not end an idle holder. Older
        // servers lack some of these settings.
        for sql in [
            "set tcp_keepalives_idle = 5",
            "set tcp_keepalives_interval = 1",
            "set tcp_keepalives_count = 3",
            "set client_connection_check_interval = '1s'",
            "set statement_timeout = 0",
            "set lock_timeout = 0",
            "set idle_session_timeout = 0",
        ] {
            let _ = sqlx::query(sql).execute(&mut conn).await;
        }
        let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(self.lock_key)
            .fetch_one(&mut conn)
            .await?;
        Ok((conn, got))
    }

    /// Becomes the holder: at once when the lock is free, else as a standby blocked on it until its holder's
    /// session ends. `Ok(false)` when stopped meanwhile.
    async fn wait_for_lock(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, String> {
        let mut conn = match self.waiting.take() {
            Some(conn) => conn,
            None => {
                let (conn, got) = self
                    .try_lock()
                    .await
                    .map_err(|e| format!("taking the slot's advisory lock: {e}"))?;
                if got {
                    self.lock = Some(conn);
                    self.counters.active.store(true, Ordering::Relaxed);
                    return Ok(true);
                }
                conn
            }
        };
        self.counters.active.store(false, Ordering::Relaxed);
        self.refresh_holder().await;
        let held_by = self.counters.holder();
        tracing::info!(
            slot = %self.options.slot,
            holder_pid = held_by.as_ref().map(|h| h.pid),
            holder = held_by.as_ref().and_then(|h| h.application_name.as_deref()),
            "CDC standby: slot {} held by another node; taking over when its session ends",
            self.options.slot
        );
        let since = Instant::now();
        let got = {
            let wait = sqlx::query("select pg_advisory_lock($1)")
                .bind(self.lock_key)
                .execute(&mut conn);
            tokio::pin!(wait);
            let mut refresh = tokio::time::interval(HOLDER_REFRESH);
            refresh.reset();
            loop {
                tokio::select! {
                    r = &mut wait => break r,
                    _ = stop.changed() => return Ok(false),
                    _ = refresh.tick() => self.refresh_holder().await,
                }
            }
        };
        got.map_err(|e| format!("waiting for the slot's advisory lock: {e}"))?;
        self.lock = Some(conn);
        self.counters.active.store(true, Ordering::Relaxed);
        bump(&self.counters.takeovers, "strata_cdc_takeovers_total");
        let previous = self.counters.holder();
        self.takeover = Some((since, Instant::now(), previous));
        Ok(true)
    }

    /// Records who holds the slot: its walsender, or between sessions the lock's holder.
    async fn refresh_holder(&self) {
        // pid, application_name, client address
        type Row = (Option<i32>, Option<String>, Option<String>);
        let row: Result<Option<Row>, _> = sqlx::query_as(
            "select coalesce(s.active_pid, l.pid), a.application_name::text, host(a.client_addr)
               from (select 1) one
               left join pg_replication_slots s on s.slot_name = $1 and s.active
               left join pg_locks l on l.locktype = 'advisory' and l.granted and l.objsubid = 1
                     and l.database = (select oid from pg_database where datname = current_database())
                     and l.classid = ($2::bigint)::oid and l.objid = ($3::bigint)::oid
               left join pg_stat_activity a on a.pid = coalesce(s.active_pid, l.pid)
              limit 1",
        )
        .bind(&self.options.slot)
        .bind(self.lock_key >> 32)
        .bind(self.lock_key & 0xffff_ffff)
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(row) => self.counters.set_holder(row.and_then(|(pid, name, addr)| {
                Some(Holder {
                    pid: pid?,
                    application_name: name,
                    client_addr: addr,
                })
            })),
            Err(e) => tracing::debug!(error = %e, "CDC: reading the slot's holder failed"),
        }
    }

    /// The lock session is still there (this consumer is still the holder).
    async fn check_lock(&mut self) -> Result<(), SessionError> {
        let Some(lock) = self.lock.as_mut() else {
            return Err(SessionError::LockLost("no lock session".into()));
        };
        match tokio::time::timeout(Duration::from_secs(5), lock.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::LockLost(e.to_string())),
            Err(_) => Err(SessionError::LockLost(
                "the lock session did not answer within 5 s".into(),
            )),
        }
    }

    /// Gives up the holder role (the lock's session ends, so a standby takes over at once).
    async fn release(&mut self) {
        self.counters.active.store(false, Ordering::Relaxed);
        if let Some(lock) = self.lock.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), lock.close()).await;
        }
    }

    /// The session holding the slot although this consumer holds its lock cannot belong to a live holder (it would
    /// have noticed losing the lock): end it.
    async fn terminate_stale_holder(&self) {
        let r: Result<Vec<(i32, bool)>, _> = sqlx::query_as(
            "select active_pid, pg_terminate_backend(active_pid) from pg_replication_slots
              where slot_name = $1 and active_pid is not null",
        )
        .bind(&self.options.slot)
        .fetch_all(&self.pool)
        .await;
        match r {
            Ok(pids) => {
                for (pid, _) in pids {
                    tracing::warn!(slot = %self.options.slot, pid, "CDC: slot still held {BUSY_TERMINATE_AFTER:?} after taking its lock; terminating that session (it has no live holder)");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "CDC: terminating the slot's stale session failed")
            }
        }
    }

    async fn sleep(d: Duration, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.changed() => {}
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = INITIAL_BACKOFF;
        // `start` checked the slot when it took the lock.
        let mut check_slot = false;
        let mut sessions = 0u64;
        let mut terminated = false;
        let mut slow_warned = false;
        while !*stop.borrow() {
            if self.lock.is_none() {
                match self.wait_for_lock(&mut stop).await {
                    Ok(true) => {
                        check_slot = true;
                        backoff = INITIAL_BACKOFF;
                        self.busy_since = None;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "CDC: could not queue for the slot; retrying");
                        Self::sleep(backoff, &mut stop).await;
                        backoff = (backoff * 2).min(self.options.max_backoff);
                        continue;
                    }
                }
            }
            if check_slot {
                if let Err(e) = self.ensure_slot().await {
                    tracing::warn!(error = %e, "CDC: checking the slot failed; retrying");
                    Self::sleep(backoff, &mut stop).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    continue;
                }
                check_slot = false;
            }
            if sessions > 0 {
                bump(&self.counters.reconnects, "strata_cdc_reconnects_total");
            }
            sessions += 1;
            match self.session(&mut stop, &mut backoff).await {
                Ok(()) => break,
                Err(SessionError::Busy(e)) => {
                    let since = *self.busy_since.get_or_insert_with(Instant::now);
                    let busy = since.elapsed();
                    if busy < BUSY_FAST_FOR {
                        if busy >= BUSY_TERMINATE_AFTER && !terminated {
                            terminated = true;
                            self.terminate_stale_holder().await;
                        }
                        tracing::debug!(error = %e, ?busy, "CDC: slot still active elsewhere; retrying at once");
                        Self::sleep(BUSY_RETRY, &mut stop).await;
                    } else {
                        if !slow_warned {
                            slow_warned = true;
                            tracing::warn!(error = %e, ?busy, "CDC: slot still active elsewhere although this node holds its lock; retrying with backoff");
                        }
                        Self::sleep(backoff, &mut stop).await;
                        backoff = (backoff * 2).min(self.options.max_backoff);
                    }
                }
                Err(SessionError::LockLost(e)) => {
                    tracing::warn!(error = %e, slot = %self.options.slot, "CDC: lost the slot's advisory lock; stepping down to standby");
                    self.release().await;
                    terminated = false;
                    slow_warned = false;
                }
                Err(SessionError::Other(e)) => {
                    tracing::warn!(error = %e, ?backoff, "CDC: replication session ended; reconnecting");
                    Self::sleep(backoff, &mut stop).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    check_slot = true;
                }
            }
        }
        // Stopped: the walsender is gone (the session shut down); end the lock's session so a standby takes over.
        self.release().await;
    }

    /// Re-reads the primary keys (DDL may have changed them); on failure the ones known are kept.
    async fn reload_primary_keys(&mut self) {
        match primary_keys(&self.pool, &self.mapping).await {
            Ok(keys) => {
                let mut m = (*self.mapping).clone();
                m.set_primary_keys(keys);
                if let Err(e) = m.check_keys() {
                    tracing::error!(error = %e, "CDC: a mapped table lost its primary key; its changes clear the namespace");
                }
                self.mapping = Arc::new(m);
            }
            Err(e) => {
                tracing::warn!(error = %e, "CDC: re-reading the primary keys failed; keeping the known ones")
            }
        }
    }

    /// One replication session; `Ok` when stopped.
    async fn session(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> Result<(), SessionError> {
        self.check_lock().await?;
        self.reload_primary_keys().await;
        let confirmed: Option<String> = sqlx::query_scalar(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
        )
        .bind(&self.options.slot)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| SessionError::Other(format!("reading the slot's confirmed LSN: {e}")))?
        .flatten();
        let mut applied = confirmed
            .as_deref()
            .and_then(|s| Lsn::parse(s).ok())
            .map_or(0, Lsn::as_u64);
        let mut client = ReplicationClient::connect(self.repl.clone())
            .await
            .map_err(|e| SessionError::Other(format!("connecting for replication: {e}")))?;
        let started = tokio::select! {
            r = client.wait_started() => r,
            _ = stop.changed() => {
                let _ = client.shutdown().await;
                return Ok(());
            }
        };
        if let Err(e) = started {
            let e = e.to_string();
            // object_in_use: "replication slot … is active for PID …".
            return Err(if e.contains("55006") {
                SessionError::Busy(e)
            } else {
                SessionError::Other(format!("starting replication: {e}"))
            });
        }
        // Streaming: the slot is this session's.
        *backoff = INITIAL_BACKOFF;
        self.busy_since = None;
        self.refresh_holder().await;
        if let Some((waited_since, locked_at, previous)) = self.takeover.take() {
            let me = self.counters.holder();
            tracing::info!(
                slot = %self.options.slot,
                previous_pid = previous.as_ref().map(|h| h.pid),
                previous = previous.as_ref().and_then(|h| h.application_name.as_deref()),
                holder_pid = me.as_ref().map(|h| h.pid),
                holder = me.as_ref().and_then(|h| h.application_name.as_deref()),
                standby_for = ?locked_at.duration_since(waited_since),
                takeover = ?locked_at.elapsed(),
                "CDC: took over slot {}: streaming {:?} after its lock freed",
                self.options.slot,
                locked_at.elapsed()
            );
        }
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut tx: Option<Tx> = None;
        // Marks are written by a task of their own, so the stream is never held up by the emitting query.
        let marks = Arc::new(std::sync::Mutex::new(Marks::default()));
        let _emitter = AbortOnDrop(tokio::spawn(emit_marks(
            self.pool.clone(),
            self.mark_prefix(),
            marks.clone(),
        )));
        let mut lock_check =
            tokio::time::interval(self.options.status_interval.max(Duration::from_millis(100)));
        lock_check.reset();
        loop {
            let event = tokio::select! {
                ev = client.recv() => ev,
                _ = stop.changed() => {
                    let _ = client.shutdown().await;
                    return Ok(());
                }
                _ = lock_check.tick() => {
                    self.check_lock().await?;
                    continue;
                }
            };
            let event = match event {
                Ok(Some(ev)) => ev,
                Ok(None) => return Err(SessionError::Other("the server ended the stream".into())),
                Err(e) => return Err(SessionError::Other(e.to_string())),
            };
            match event {
                ReplicationEvent::Begin { final_lsn, .. } => {
                    tx = Some(Tx {
                        lsn: final_lsn.as_u64(),
                        batch: Batch::default(),
                    });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let Some(t) = tx.as_mut() else {
                        // Outside a transaction only relation/type descriptions are expected.
                        if let Ok(Message::Relation(r)) = pgoutput::decode(&data) {
                            relations.insert(r.oid, r);
                        }
                        continue;
                    };
                    self.on_data(&data, t, &mut relations);
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(t) = tx.take() else { continue };
                    let end = end_lsn.as_u64();
                    if end <= applied {
                        bump(&self.counters.duplicates, "strata_cdc_duplicates_total");
                        continue;
                    }
                    self.apply_until_done(&t.batch).await;
                    applied = end;
                    client.update_applied_lsn(end_lsn);
                    self.counters.acked_lsn.store(end, Ordering::Relaxed);
                    bump(&self.counters.transactions, "strata_cdc_transactions_total");
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Between transactions everything received is applied: let the slot move past WAL of
                    // unpublished tables.
                    if tx.is_none() && wal_end.as_u64() > applied {
                        applied = wal_end.as_u64();
                        client.update_applied_lsn(wal_end);
                        self.counters.acked_lsn.store(applied, Ordering::Relaxed);
                    }
                }
                ReplicationEvent::Message {
                    prefix, content, ..
                } if prefix == self.mark_prefix() => {
                    // Every transaction that committed before the mark was emitted came (and was applied) before
                    // it: tell the nodes, so they keep trusting their caches.
                    let Some(emitted) = std::str::from_utf8(&content)
                        .ok()
                        .and_then(|id| id.parse().ok())
                        .and_then(|id| marks.lock().expect("marks lock").seen(id))
                    else {
                        continue; // another holder's mark, or one from before a restart
                    };
                    if let Err(e) = self
                        .applier
                        .mark(&self.options.slot, emitted.elapsed())
                        .await
                    {
                        tracing::debug!(error = %e, "CDC: publishing a feed mark failed");
                    }
                }
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
    }

    /// The prefix of this feed's marks in the WAL.
    fn mark_prefix(&self) -> String {
        format!("strata-cdc-mark:{}", self.options.slot)
    }

    fn on_data(&self, data: &[u8], t: &mut Tx, relations: &mut HashMap<u32, Relation>) {
        absorb(&self.mapping, &self.counters, data, t, relations);
    }
}

/// Folds one pgoutput message of the transaction `t` into its batch: relations are remembered, row changes
/// mapped; anything undecodable or unmappable clears conservatively (and is counted and logged).
fn absorb(
    mapping: &Mapping,
    counters: &Counters,
    data: &[u8],
    t: &mut Tx,
    relations: &mut HashMap<u32, Relation>,
) {
    let clear_all = |batch: &mut Batch| {
        for ns in mapping.namespaces() {
            batch.clear(&ns);
        }
    };
    let msg = match pgoutput::decode(data) {
        Ok(m) => m,
        Err(e) => {
            bump(&counters.undecodable, "strata_cdc_undecodable_total");
            tracing::error!(error = %e, lsn = t.lsn, "CDC: undecodable change; clearing every mapped namespace");
            clear_all(&mut t.batch);
            return;
        }
    };
    let (oid, change) = match &msg {
        Message::Relation(r) => {
            relations.insert(r.oid, r.clone());
            return;
        }
        Message::Insert { oid, new } => (*oid, Change::Insert { new }),
        Message::Update { oid, old, new } => (
            *oid,
            Change::Update {
                old: old.as_ref().map(|(k, v)| (*k, v.as_slice())),
                new,
            },
        ),
        Message::Delete { oid, old } => (
            *oid,
            Change::Delete {
                old: (old.0, old.1.as_slice()),
            },
        ),
        Message::Truncate { oids } => {
            for oid in oids {
                match relations.get(oid) {
                    Some(r) => {
                        for ns in mapping.namespaces_of(&r.schema, &r.name) {
                            t.batch.clear(&ns);
                        }
                    }
                    None => clear_all(&mut t.batch),
                }
            }
            return;
        }
        Message::Begin { .. }
        | Message::Commit { .. }
        | Message::Origin
        | Message::Type
        | Message::LogicalMessage => return,
    };
    counters.changes.fetch_add(1, Ordering::Relaxed);
    let Some(rel) = relations.get(&oid) else {
        bump(&counters.undecodable, "strata_cdc_undecodable_total");
        tracing::error!(
            oid,
            lsn = t.lsn,
            "CDC: change of a relation never described; clearing every mapped namespace"
        );
        clear_all(&mut t.batch);
        return;
    };
    for u in mapping.map(rel, change, t.lsn, &mut t.batch) {
        bump(&counters.unmapped, "strata_cdc_unmapped_total");
        tracing::warn!(table = %format!("{}.{}", rel.schema, rel.name), namespace = %u.namespace, reason = %u.reason, "CDC: change not mappable; clearing the namespace");
    }
}

struct Tx {
    lsn: u64,
    batch: Batch,
}

/// The `PRIMARY KEY` columns (in key order; empty for a table without one) of every mapped table, from the
/// catalog. A mapped table that does not exist is an error naming its rule.
async fn primary_keys(
    pool: &PgPool,
    mapping: &Mapping,
) -> Result<HashMap<(String, String), Vec<String>>, CdcError> {
    let mut out = HashMap::new();
    for (s, t) in mapping.tables() {
        let pk: Option<Vec<String>> = sqlx::query_scalar(
            "select array(select a.attname::text
                            from pg_index i
                           cross join lateral unnest(i.indkey::int2[]) with ordinality k(attnum, n)
                            join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                           where i.indrelid = c.oid and i.indisprimary
                           order by k.n)
               from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1 and c.relname = $2",
        )
        .bind(&s)
        .bind(&t)
        .fetch_optional(pool)
        .await
        .map_err(pg(format!("reading the primary key of {s}.{t}")))?;
        let Some(pk) = pk else {
            let problem = format!("table {s}.{t} does not exist");
            return Err(match mapping.table_error(&s, &t, problem.clone()) {
                Some(e) => CdcError::Config(e),
                None => CdcError::Option {
                    field: "rules",
                    problem,
                },
            });
        };
        out.insert((s, t), pk);
    }
    Ok(out)
}

/// `duplicate_object`: a publication or slot that another process created first.
fn already_exists(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42710")
}

/// Quotes an identifier.
fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_out_of_urls_and_out_of_messages() {
        assert_eq!(url_password("postgres://u:p%40ss@h:5432/db"), "p@ss");
        assert_eq!(url_password("postgres://u@h/db"), "");
        assert_eq!(url_password("postgres://h/db"), "");
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }

    fn relation(oid: u32, name: &str) -> Relation {
        Relation {
            oid,
            schema: "shop".into(),
            name: name.into(),
            replica_identity: b'd',
            columns: vec![
                pgoutput::Column {
                    key: true,
                    name: "id".into(),
                    type_oid: 25,
                },
                pgoutput::Column {
                    key: false,
                    name: "v".into(),
                    type_oid: 20,
                },
            ],
        }
    }

    fn mapping() -> Mapping {
        let mut m = Mapping::new(&[
            Rule::new("shop.price", "price").version_column("v"),
            Rule::new("shop.stock", "stock"),
        ])
        .unwrap();
        m.set_primary_keys(
            ["price", "stock"]
                .map(|t| (("shop".to_owned(), t.to_owned()), vec!["id".to_owned()]))
                .into(),
        );
        m.check_keys().unwrap();
        m
    }

    #[test]
    fn lock_keys_are_stable_and_fit_pg_locks() {
        assert_eq!(lock_key("a"), lock_key("a"));
        assert_ne!(lock_key("a"), lock_key("b"));
        for slot in ["a", "strata", "strata_cdc_1"] {
            let k = lock_key(slot);
            assert!(k >= 0);
            assert!((k >> 32) <= i64::from(u32::MAX) && (k & 0xffff_ffff) <= i64::from(u32::MAX));
        }
        assert_eq!(application_name("n:1"), "strata-cdc:n:1");
        assert_eq!(application_name(&"x".repeat(100)).len(), 63);
    }

    fn tx() -> Tx {
        Tx {
            lsn: 77,
            batch: Batch::default(),
        }
    }

    fn cleared(t: &Tx) -> Vec<&str> {
        t.batch
            .namespaces
            .iter()
            .filter(|(_, c)| c.clear)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    #[test]
    fn garbage_and_undescribed_relations_clear_every_namespace_and_are_counted() {
        let (m, c) = (mapping(), Counters::default());
        let mut rels = HashMap::new();
        let mut t = tx();
        absorb(&m, &c, b"I\x00\x00", &mut t, &mut rels);
        assert_eq!(cleared(&t), vec!["price", "stock"]);
        let mut t = tx();
        let text = |s: &str| pgoutput::Datum::Text(s.into());
        let insert = pgoutput::encode::insert(5, &[text("a"), text("1")]);
        absorb(&m, &c, &insert, &mut t, &mut rels);
        assert_eq!(cleared(&t), vec!["price", "stock"]);
        assert_eq!(c.snapshot().undecodable, 2);
    }

    #[test]
    fn described_changes_map_and_truncates_clear_their_tables_namespaces() {
        let (m, c) = (mapping(), Counters::default());
        let mut rels = HashMap::new();
        let mut t = tx();
        let text = |s: &str| pgoutput::Datum::Text(s.into());
        absorb(
            &m,
            &c,
            &pgoutput::encode::relation(&relation(5, "price")),
            &mut t,
            &mut rels,
        );
        absorb(
            &m,
            &c,
            &pgoutput::encode::relation(&relation(6, "stock")),
            &mut t,
            &mut rels,
        );
        absorb(
            &m,
            &c,
            &pgoutput::encode::update(5, None, &[text("sku"), text("9")]),
            &mut t,
            &mut rels,
        );
        absorb(
            &m,
            &c,
            &pgoutput::encode::insert(6, &[text("sku"), text("1")]),
            &mut t,
            &mut rels,
        );
        assert!(cleared(&t).is_empty());
        assert_eq!(t.batch.namespaces["price"].keys.get("sku"), Some(&Some(9)));
        // No version column: the commit LSN is the version.
        assert_eq!(t.batch.namespaces["stock"].keys.get("sku"), Some(&Some(77)));
        absorb(&m, &c, &pgoutput::encode::truncate(&[6]), &mut t, &mut rels);
        assert_eq!(cleared(&t), vec!["stock"]);
        let s = c.snapshot();
        assert_eq!((s.changes, s.undecodable, s.unmapped), (2, 0, 0));
    }

    #[test]
    fn slot_names_are_checked() {
        assert!(valid_ident("strata_cdc_1"));
        assert!(!valid_ident("Strata"));
        assert!(!valid_ident("1slot"));
        assert!(!valid_ident("a-b"));
        assert!(!valid_ident(""));
    }
}

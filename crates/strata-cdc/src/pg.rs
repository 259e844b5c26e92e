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
//! - The replication connection is re-established with backoff after any error.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
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
    /// Create the publication over the mapped tables when it is missing, add mapped tables it lacks, and set
    /// `REPLICA IDENTITY FULL` on tables whose tag templates read non-key columns. Default: true.
    pub manage_publication: bool,
    /// How often the confirmed LSN is reported to the server. Default: 1 s.
    pub status_interval: Duration,
    /// The longest wait between retries (applying, reconnecting). Default: 5 s.
    pub max_backoff: Duration,
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
            manage_publication: true,
            status_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
}

/// What the consumer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CdcStats {
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
    /// Validates the options, connects, sets up the publication (and replica identities), ensures the slot, and
    /// spawns the consumer. Errors name what is wrong; after this returns, the consumer retries on its own.
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
        let mapping = Arc::new(Mapping::new(&options.rules)?);
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
        .with_application_name(format!("strata-cdc-{}", options.slot));
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect)
            .await
            .map_err(pg(format!("connecting to {}", redact(&options.url))))?;
        let mut cdc = PgCdc {
            options,
            mapping,
            applier,
            pool,
            repl,
            counters: Arc::default(),
            seen_slot: false,
        };
        if cdc.options.manage_publication {
            cdc.setup_publication().await?;
        }
        cdc.ensure_slot().await?;
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

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        while !*stop.borrow() {
            if !first {
                bump(&self.counters.reconnects, "strata_cdc_reconnects_total");
                if let Err(e) = self.ensure_slot().await {
                    tracing::warn!(error = %e, "CDC: checking the slot failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    continue;
                }
            }
            first = false;
            match self.session(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "CDC: replication session ended; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    /// One replication session; `Ok` when stopped.
    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let confirmed: Option<String> = sqlx::query_scalar(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
        )
        .bind(&self.options.slot)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| format!("reading the slot's confirmed LSN: {e}"))?
        .flatten();
        let mut applied = confirmed
            .as_deref()
            .and_then(|s| Lsn::parse(s).ok())
            .map_or(0, Lsn::as_u64);
        let mut client = ReplicationClient::connect(self.repl.clone())
            .await
            .map_err(|e| format!("connecting for replication: {e}"))?;
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut tx: Option<Tx> = None;
        loop {
            let event = tokio::select! {
                ev = client.recv() => ev,
                _ = stop.changed() => {
                    let _ = client.shutdown().await;
                    return Ok(());
                }
            };
            let event = match event {
                Ok(Some(ev)) => ev,
                Ok(None) => return Err("the server ended the stream".into()),
                Err(e) => return Err(e.to_string()),
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
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
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
        Mapping::new(&[
            Rule::new("shop.price", "price").version_column("v"),
            Rule::new("shop.stock", "stock"),
        ])
        .unwrap()
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

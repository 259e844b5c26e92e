//! What a running server holds: the cache with its namespaces (values are JSON documents), the sources they read
//! and write, and the background parts that shutdown closes: the cache (its bus node, L2 replay task and
//! write-behind flushers) and the CDC consumer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::bus::{Bus, InProcessBus};
use strata::codec::Json;
use strata::{Cache, Namespace};
use strata::{SharedTier, Sink, Source};
use strata_sql::{
    Dialect, Postgres, Query, SqlError, Sqlite, Table, TableSchema, TableSpec, TypedSource,
};

use crate::config::{parse_fsync, Config, WriteModeConfig};

/// A connected source.
#[derive(Clone)]
pub enum Pool {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// What a namespace reads, as configured: a table (read and written) or a query (read only).
enum Binding<'a> {
    /// A table: a source and a sink.
    Table(TableSpec),
    /// A `SELECT` with its key (and, when it has one, version) column: a source.
    Query {
        sql: &'a str,
        key_column: &'a str,
        version_column: &'a str,
    },
}

/// A bound table or query: what the namespace reads through, what it writes through (a table only), and the
/// catalog's types every request's key and every PUT's value is checked against.
struct BoundSource {
    source: Arc<dyn Source<Value>>,
    sink: Option<Arc<dyn Sink<Value>>>,
    schema: Arc<TableSchema>,
}

impl Pool {
    /// Binds a table or query on this pool, in the pool's dialect: the one place a namespace's source is bound.
    async fn bind(&self, binding: Binding<'_>) -> Result<BoundSource, SqlError> {
        match self {
            Pool::Sqlite(p) => bind::<Sqlite>(p, binding).await,
            Pool::Postgres(p) => bind::<Postgres>(p, binding).await,
        }
    }
}

/// [`Pool::bind`] for dialect `D`.
async fn bind<D: Dialect>(
    pool: &sqlx::Pool<D::Db>,
    binding: Binding<'_>,
) -> Result<BoundSource, SqlError> {
    Ok(match binding {
        Binding::Table(spec) => {
            let t = Arc::new(Table::<D, Value>::bind(pool.clone(), spec).await?);
            BoundSource {
                schema: t.schema().clone(),
                source: t.clone(),
                sink: Some(t),
            }
        }
        Binding::Query {
            sql,
            key_column,
            version_column,
        } => {
            let q = Query::<D, Value>::bind(pool.clone(), sql, key_column, version_column).await?;
            BoundSource {
                schema: q.schema().clone(),
                source: Arc::new(q),
                sink: None,
            }
        }
    })
}

/// One namespace as the API serves it.
pub struct NsHandle {
    /// The engine's handle.
    pub ns: Namespace<Value>,
    /// Its write mode.
    pub mode: WriteModeConfig,
    /// Whether it reads a table or query (else: a plain cache written by PUT).
    pub has_source: bool,
    /// Whether PUT and DELETE reach the source (false for a query).
    pub writable: bool,
    /// What it is for.
    pub description: String,
    /// Columns a loaded row carries that are not part of the value (the key and the version: they are in the
    /// URL and the `ETag`), so reads and writes show the same shape.
    pub hidden_columns: Vec<String>,
    /// The source's catalog types (table- or query-bound namespaces): the canonical key form every request's key
    /// is checked against, and the value check every PUT passes before any write mode (write-behind included).
    pub schema: Option<Arc<TableSchema>>,
    /// The HTTP caching fields of its answers (`[namespaces.X.http]`), when configured.
    pub http: Option<crate::http_caching::HttpCaching>,
    /// The rate limit its requests pass (a name in [`AppState::limits`]).
    pub rate_limit: Option<String>,
    /// An auth namespace's introspection endpoint (see [`crate::auth`]).
    pub introspector: Option<Arc<strata_http::introspect::Introspector>>,
}

/// The server's shared state.
pub struct AppState {
    /// The cache.
    pub cache: Cache,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NsHandle>,
    /// Bearer token for mutating and admin routes.
    pub token: Option<String>,
    /// Longest key accepted.
    pub max_key_len: usize,
    /// Largest body accepted.
    pub max_body: usize,
    /// When the server started.
    pub started: Instant,
    /// The write-behind queue, when a namespace writes behind (its flushers belong to the cache's namespaces).
    pub write_behind: Option<WriteBehind>,
    /// The sources, for readiness checks.
    pub pools: BTreeMap<String, Pool>,
    /// The CDC consumer (taken at shutdown to stop it).
    pub cdc: Mutex<Option<strata_cdc::CdcHandle>>,
    /// False once shutdown began.
    pub ready: AtomicBool,
    /// Whether L2 (Redis) is configured.
    pub has_l2: bool,
    /// `[server]` as configured (access rules and connection limits).
    pub server: crate::config::ServerConfig,
    /// The edge tier, when `[proxy]` is configured: the proxy and where it listens.
    pub proxy: Option<EdgeProxy>,
    /// Purges by kind (see [`crate::purge`]).
    pub purges: crate::purge::PurgeCounters,
    /// The CDNs in front, sent every purge (`[[cdn]]`).
    pub cdn: crate::cdn::Hooks,
    /// The rate limits (`[limits]`, see [`crate::limits`]).
    pub limits: crate::limits::RateLimits,
}

/// The cache namespace the proxy stores responses in (not a data API namespace: those never start with `_`).
pub const EDGE_NAMESPACE: &str = "_edge";

/// The proxy of `[proxy]`.
pub struct EdgeProxy {
    /// The proxy (its routes, counters and namespace).
    pub proxy: Arc<strata_http::proxy::Proxy>,
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// Each route's rate limit (a name under `[limits]`), in route order.
    pub rate_limits: Vec<Option<String>>,
}

impl EdgeProxy {
    /// The proxy of `section` over `cache`, storing in [`EDGE_NAMESPACE`] (in L2 too when `with_l2`: nodes share
    /// responses).
    pub fn build(
        cache: &Cache,
        section: &crate::config::ProxySection,
        with_l2: bool,
    ) -> anyhow::Result<Self> {
        let routes = section
            .routes()
            .map_err(|(i, e)| anyhow::anyhow!("proxy.routes[{i}]: {e}"))?;
        let ns =
            strata_http::proxy::edge_namespace(cache, EDGE_NAMESPACE, section.retention(), with_l2)
                .context("the proxy's namespace")?;
        Ok(Self {
            proxy: strata_http::proxy::Proxy::new(routes, ns, section.proxy_config()),
            listen: section.listen,
            rate_limits: section
                .routes
                .iter()
                .map(|r| r.rate_limit.as_ref().map(|l| l.get_ref().clone()))
                .collect(),
        })
    }
}

/// Opens (creating if missing) a SQLite file with WAL and `synchronous=FULL` (write-behind's checkpoint relies on
/// the source's durability).
async fn open_sqlite(path: &PathBuf, max: u32) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(max.max(1))
        .connect_with(options)
        .await
        .with_context(|| format!("opening SQLite at {}", path.display()))
}

/// Connects every source of `config` (SQLite files, created if missing, are relative to the data directory).
pub async fn connect_sources(config: &Config) -> anyhow::Result<BTreeMap<String, Pool>> {
    let data_dir = &config.server.data_dir;
    let mut pools = BTreeMap::new();
    for (name, s) in &config.sources {
        let s = s.get_ref();
        if s.http.is_some() {
            continue; // not a pool: bound per namespace
        }
        let pool = match (&s.sqlite, &s.postgres) {
            (Some(path), _) => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    data_dir.join(path)
                };
                Pool::Sqlite(open_sqlite(&path, s.max_connections).await?)
            }
            (None, Some(url)) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(s.max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await
                    .with_context(|| format!("connecting to source {name:?} (PostgreSQL)"))?,
            ),
            (None, None) => unreachable!("validated: one of sqlite, postgres and http"),
        };
        pools.insert(name.clone(), pool);
    }
    Ok(pools)
}

/// The tables the namespaces of `config` are bound to (not queries): `(namespace, source, table)`.
pub fn bound_tables(config: &Config) -> Vec<(String, String, String)> {
    config
        .namespaces
        .iter()
        .filter_map(|(name, n)| {
            let n = n.get_ref();
            match (&n.source, &n.query) {
                (Some(src), None) if config.sources[src.get_ref()].get_ref().http.is_none() => {
                    Some((
                        name.clone(),
                        src.get_ref().clone(),
                        n.table.clone().unwrap_or_else(|| name.clone()),
                    ))
                }
                _ => None,
            }
        })
        .collect()
}

/// Fails, naming every missing table at once and how to create them, when a namespace's table does not exist.
async fn check_tables(config: &Config, pools: &BTreeMap<String, Pool>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (ns, src, table) in bound_tables(config) {
        let exists = crate::demo::table_exists(&pools[&src], &table)
            .await
            .with_context(|| {
                format!("namespace {ns}: looking up table {table:?} in source {src:?}")
            })?;
        if !exists {
            missing.push(format!("{table:?} (namespace {ns}, source {src})"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "missing table{}: {}. Run `strata init --config {}`: it creates the tables the demo catalog describes \
         (product, price, inventory, session, flag, counter, permission) with the configured key and version \
         columns and seeds them; create any other table yourself",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        config.origin
    )
}

impl AppState {
    /// Connects everything the config names and builds the namespaces. With `seed_demo`, the demo catalog is
    /// created and seeded in every source first. Without it, a table a namespace needs that does not exist is an
    /// error naming every missing table and `strata init --config F` (which creates the example's tables).
    pub async fn build(config: &Config, options: &crate::RunOptions) -> anyhow::Result<Arc<Self>> {
        let seed_demo = options.seed_demo;
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;

        // Sources.
        let pools = connect_sources(config).await?;
        if seed_demo {
            for (name, pool) in &pools {
                crate::demo::install_all(pool)
                    .await
                    .with_context(|| format!("creating the demo catalog in source {name:?}"))?;
            }
        }
        check_tables(config, &pools).await?;

        // L2 and the bus.
        let (shared, bus): (Option<Arc<dyn SharedTier>>, Arc<dyn Bus>) = match &config.redis {
            Some(r) => {
                let l2 = strata_redis::RedisL2::connect(
                    &r.url,
                    strata_redis::L2Options {
                        prefix: r.prefix.clone(),
                        timeout: r.timeout.0,
                    },
                )
                .await
                .with_context(|| format!("connecting to Redis at {}", r.url))?;
                let bus = strata_redis::RedisBus::connect(
                    &r.url,
                    strata_redis::RedisBusOptions {
                        stream: format!("{}:bus", r.prefix),
                        timeout: r.timeout.0,
                        ..strata_redis::RedisBusOptions::default()
                    },
                )
                .await
                .with_context(|| format!("connecting the bus to Redis at {}", r.url))?;
                (Some(Arc::new(l2)), Arc::new(bus))
            }
            None => (None, Arc::new(InProcessBus::new())),
        };
        let mut builder = Cache::builder().with_bus(bus.clone());
        if let Some(l2) = &shared {
            builder = builder.with_shared_tier(l2.clone());
        }
        let cache = builder.build();
        let proxy = match &config.proxy {
            Some(section) => Some(EdgeProxy::build(&cache, section, shared.is_some())?),
            None => None,
        };

        // Write-behind, when needed.
        let needs_behind = config
            .namespaces
            .values()
            .any(|n| *n.get_ref().write.get_ref() == WriteModeConfig::Behind);
        let write_behind = if needs_behind {
            let mut o = WriteBehindOptions::default();
            o.journal.recover_damaged = options.recover_journal;
            if let Some(f) = &config.write_behind.fsync {
                o.journal.fsync = parse_fsync(f.get_ref()).expect("validated");
            }
            if let Some(m) = config.write_behind.max_pending {
                o.max_pending = m;
            }
            if let Some(l) = config.write_behind.linger {
                o.linger = l.0;
            }
            Some(WriteBehind::open(data_dir.join("journal"), o)?)
        } else {
            None
        };

        // Namespaces.
        let mut namespaces = BTreeMap::new();
        for (name, n) in &config.namespaces {
            let n = n.get_ref();
            let policy = config
                .policy(name, n)
                .map_err(|e| anyhow::anyhow!("namespace {name}: {e}"))?;
            let mut b = cache
                .namespace::<Value>(name)
                .with_policy(policy)
                .with_codec(Json)
                .with_weigher(|v: &Value| v.to_string().len());
            if let Some(p) = n.protection() {
                b = b.with_protection(p);
            }
            // Fed by CDC: the caches are trusted only while the consumer's feed marks are recent (a stalled or
            // dead consumer makes reads go to the source instead of serving what a commit replaced).
            if let Some(cdc) = config
                .cdc
                .as_ref()
                .filter(|c| c.rules.iter().any(|r| r.namespace == *name))
            {
                b = b.with_change_feed(cdc.slot.clone());
            }
            let mut schema = None;
            let http_source = n
                .source
                .as_ref()
                .map(|src| config.sources[src.get_ref()].get_ref())
                .filter(|s| s.http.is_some());
            if let Some(src) = http_source {
                let base = src.http.as_deref().expect("filtered").trim_end_matches('/');
                let base = match &n.path {
                    Some(p) => format!("{base}/{p}"),
                    None => base.to_string(),
                };
                let roots = match &src.ca_file {
                    Some(f) => strata_http::client::load_roots(f).map_err(|e| {
                        anyhow::anyhow!("namespace {name}: its source's ca_file: {e}")
                    })?,
                    None => Vec::new(),
                };
                let client = strata_http::client::https_client(&roots)?;
                b = b.with_source(Arc::new(strata_http::source::HttpSource::<Value>::new(
                    name,
                    &base,
                    client,
                    src.http_options(),
                )));
            } else if let Some(src) = &n.source {
                let pool = &pools[src.get_ref()];
                let bound = match &n.query {
                    Some(query) => pool
                        .bind(Binding::Query {
                            sql: query.get_ref(),
                            key_column: &n.key_column,
                            version_column: &n.version_column,
                        })
                        .await
                        .with_context(|| format!("namespace {name}: its query"))?,
                    None => {
                        let table = n.table.clone().unwrap_or_else(|| name.clone());
                        let spec = TableSpec::new(&table, &n.key_column, &n.version_column);
                        pool.bind(Binding::Table(spec))
                            .await
                            .with_context(|| format!("namespace {name}: table {table}"))?
                    }
                };
                schema = Some(bound.schema);
                let sc = config.sources[src.get_ref()].get_ref();
                b = match sc.retries.unwrap_or(0) {
                    0 => b.with_source(bound.source),
                    n => b.with_source(Arc::new(strata::retry_budget::Retrying::new(
                        bound.source,
                        n,
                        sc.retry_ratio.unwrap_or(0.1),
                    ))),
                };
                if let Some(sink) = bound.sink {
                    b = b.with_sink(sink);
                    if let Some(wb) = &write_behind {
                        if *n.write.get_ref() == WriteModeConfig::Behind {
                            b = b.with_write_behind(wb.clone());
                        }
                    }
                }
            }
            if !n.tags.is_empty() {
                let templates = n
                    .tags
                    .iter()
                    .map(|t| crate::http_caching::TagTemplate::parse(t.get_ref()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("namespaces.{name}.tags: {e}"))?;
                let key_column = n.key_column.clone();
                b = b.with_tagger(move |key, value: &Value| {
                    templates
                        .iter()
                        .filter_map(|t| t.render(key, &key_column, value))
                        .collect()
                });
            }
            let introspector = match &n.introspection {
                Some(i) => Some(Arc::new(crate::auth::introspector(name, i)?)),
                None => None,
            };
            let ns = b.build()?;
            namespaces.insert(
                name.clone(),
                NsHandle {
                    ns,
                    mode: *n.write.get_ref(),
                    has_source: n.source.is_some(),
                    writable: n.source.is_none() || (n.query.is_none() && http_source.is_none()),
                    description: n.description.clone().unwrap_or_default(),
                    rate_limit: n.rate_limit.as_ref().map(|l| l.get_ref().clone()),
                    introspector,
                    http: n
                        .http
                        .as_ref()
                        .map(|h| {
                            h.compiled().map_err(|(f, e)| {
                                anyhow::anyhow!("namespaces.{name}.http.{f}: {e}")
                            })
                        })
                        .transpose()?,
                    hidden_columns: if n.source.is_some() && http_source.is_none() {
                        vec![n.key_column.clone(), n.version_column.clone()]
                    } else {
                        Vec::new()
                    },
                    schema,
                },
            );
        }

        let specs = config
            .cdn
            .iter()
            .map(|h| h.spec().map_err(|e| anyhow::anyhow!(e)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cdn = crate::cdn::Hooks::open(specs, &config.server.data_dir.join("cdn"))?;

        // Change data capture.
        let cdc = match &config.cdc {
            Some(c) => {
                let url = config.sources[c.source.get_ref()]
                    .get_ref()
                    .postgres
                    .clone()
                    .expect("validated: a PostgreSQL source");
                let mut options = strata_cdc::PgCdcOptions::new(url, &c.slot, &c.publication);
                options.rules = c.rules.clone();
                if config.proxy.is_some() {
                    // One tag, every tier: a rule's tags also reach the proxied pages that carry them.
                    options.tag_mirrors.push(EDGE_NAMESPACE.to_string());
                }
                if seed_demo {
                    // The demo catalog was created in the connection's current schema (the URL may set a
                    // search_path); CDC rules name tables by schema, and an unqualified one means `public`.
                    if let Pool::Postgres(p) = &pools[c.source.get_ref()] {
                        let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                            .fetch_one(p)
                            .await
                            .context("reading the current schema")?;
                        for r in &mut options.rules {
                            if !r.table.contains('.') {
                                r.table = format!("{schema}.{}", r.table);
                            }
                        }
                    }
                }
                let mut applier = strata_cdc::Applier::new(
                    shared.clone(),
                    bus.clone(),
                    "cdc",
                    strata_cdc::ApplyOptions::default(),
                );
                if cdn.iter().next().is_some() {
                    // The tags a change takes out of the proxy go to the CDNs in front too, queued before the
                    // batch is applied (and acknowledged): a CDN purge is never lost to a crash.
                    let hooks = cdn.clone();
                    applier = applier.with_observer(Arc::new(move |batch: &strata_cdc::Batch| {
                        let Some(edge) = batch.namespaces.get(EDGE_NAMESPACE) else {
                            return Ok(());
                        };
                        if edge.clear {
                            return hooks
                                .enqueue(crate::cdn::EventKind::All, &[], false, None)
                                .map_err(|e| e.to_string());
                        }
                        let tags: Vec<String> = edge.tags.iter().cloned().collect();
                        if tags.is_empty() {
                            return Ok(());
                        }
                        hooks
                            .enqueue(crate::cdn::EventKind::Tag, &tags, false, None)
                            .map_err(|e| e.to_string())
                    }));
                }
                Some(
                    strata_cdc::PgCdc::start(options, Arc::new(applier))
                        .await
                        .with_context(|| {
                            format!(
                                "starting change data capture (slot {:?}, publication {:?}; PostgreSQL needs \
                                 wal_level=logical)",
                                c.slot, c.publication
                            )
                        })?,
                )
            }
            None => None,
        };

        let limits = build_limits(config).await?;
        Ok(Arc::new(Self {
            cache,
            namespaces,
            token: config.token(),
            max_key_len: config.server.max_key_len,
            max_body: config.server.max_body.0 as usize,
            started: Instant::now(),
            write_behind,
            pools,
            cdc: Mutex::new(cdc),
            ready: AtomicBool::new(true),
            has_l2: shared.is_some(),
            server: config.server.clone(),
            proxy,
            purges: Default::default(),
            cdn,
            limits,
        }))
    }

    /// Whether every source answers.
    pub async fn sources_ok(&self) -> Result<(), String> {
        for (name, p) in &self.pools {
            let r = match p {
                Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                Pool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            };
            r.map_err(|e| format!("source {name}: {e}"))?;
        }
        Ok(())
    }
}

/// `[limits]`: over Redis when `[redis]` is set (one connection for all), else in this process.
async fn build_limits(config: &Config) -> anyhow::Result<crate::limits::RateLimits> {
    use crate::limits::{KeyBy, NamedLimit, Network, RateLimits};
    let mut out = RateLimits {
        trusted: config
            .server
            .trusted_proxies
            .iter()
            .map(|p| Network::parse(p).map_err(|e| anyhow::anyhow!("server.trusted_proxies: {e}")))
            .collect::<anyhow::Result<_>>()?,
        ..RateLimits::default()
    };
    if config.limits.is_empty() {
        return Ok(out);
    }
    let conn = match &config.redis {
        Some(r) => Some(
            strata_redis::limit::connect(&r.url, r.timeout.0)
                .await
                .with_context(|| format!("connecting the rate limiter to Redis at {}", r.url))?,
        ),
        None => None,
    };
    for (name, l) in &config.limits {
        let l = l.get_ref();
        let key = match &l.key {
            Some(k) => KeyBy::parse(k).map_err(|e| anyhow::anyhow!("limits.{name}.key: {e}"))?,
            None => KeyBy::Ip,
        };
        let shared: Option<Arc<dyn strata::limit::SharedLimiter>> = match (&conn, &config.redis) {
            (Some(c), Some(r)) => Some(Arc::new(strata_redis::RedisLimiter::with_connection(
                c.clone(),
                &r.url,
                &r.prefix,
                name,
                l.algorithm,
                r.timeout.0,
            ))),
            _ => None,
        };
        out.by_name.insert(
            name.clone(),
            Arc::new(NamedLimit::new(
                name,
                l.algorithm,
                l.quota(),
                key,
                l.nodes.unwrap_or(1),
                shared,
            )),
        );
    }
    Ok(out)
}

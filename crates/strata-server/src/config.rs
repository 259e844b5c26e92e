//! The server's configuration: one TOML file, validated when it is loaded.
//!
//! Every error is a [`ConfigError`] naming the file, the line and column, the field (`namespaces.price.ttl`) and
//! what would be valid. Parsing errors come from `toml` with their span; checks that need more than one field
//! (a namespace naming a source that does not exist, a policy the engine rejects) keep the span of the field they
//! blame through [`toml::Spanned`].
//!
//! No config at all is the embedded default ([`Config::embedded`]): SQLite in the data directory, L1 only, the
//! in-process bus, and a demo catalog (see [`crate::demo`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A configuration error, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    /// The file (or `<embedded>`).
    pub file: String,
    /// 1-based line (0 when the error has no location).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a dotted path (`namespaces.price.ttl`), or `-` when unknown.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// A duration written as `250ms`, `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write e.g. \"250ms\", \"30s\", \"5m\", \"1h\""
            ))
        })
    }
}

/// A size written as `512KiB`, `256MiB`, `1GiB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => parse_bytes(&s).map(Bytes).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size; write e.g. \"64KiB\", \"256MiB\", \"1GiB\" or a number of bytes"
                ))
            }),
        }
    }
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening, auth and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The in-process tier.
    #[serde(default)]
    pub l1: L1Config,
    /// Redis as L2, lease store and bus. Absent: L1 only, in-process bus.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Named databases.
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<SourceConfig>>,
    /// The namespaces.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Spanned<NamespaceConfig>>,
    /// The write-behind journal (for namespaces with `write = "behind"`).
    #[serde(default)]
    pub write_behind: WriteBehindConfig,
    /// Change data capture from a PostgreSQL source.
    #[serde(default)]
    pub cdc: Option<CdcConfig>,
    /// Where the file came from (for errors); not in the file.
    #[serde(skip)]
    pub origin: String,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address. Default: `127.0.0.1:8700`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token for mutating and admin routes. Default: none (open).
    #[serde(default)]
    pub token: Option<String>,
    /// Read the token from this environment variable instead.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Largest request body. Default: 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body: Bytes,
    /// Longest key, in bytes. Default: 512.
    #[serde(default = "default_max_key")]
    pub max_key_len: usize,
    /// Where SQLite files and the write-behind journal live. Default: `strata-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8700".parse().expect("valid address")
}
fn default_max_body() -> Bytes {
    Bytes(1 << 20)
}
fn default_max_key() -> usize {
    512
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("strata-data")
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            token_env: None,
            max_body: default_max_body(),
            max_key_len: default_max_key(),
            data_dir: default_data_dir(),
        }
    }
}

/// `[l1]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1Config {
    /// Memory for all namespaces' L1 together, split evenly unless a namespace sets its own. Default: 256 MiB.
    #[serde(default = "default_l1_budget")]
    pub budget: Bytes,
}

fn default_l1_budget() -> Bytes {
    Bytes(256 << 20)
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            budget: default_l1_budget(),
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Key prefix (one per deployment). Default: `strata`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Bound on every Redis call. Default: 250 ms.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
}

fn default_prefix() -> String {
    "strata".into()
}
fn default_redis_timeout() -> Dur {
    Dur(Duration::from_millis(250))
}

/// `[sources.NAME]`: exactly one of `sqlite` and `postgres`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A SQLite file, relative to `server.data_dir` unless absolute; created if missing.
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL.
    #[serde(default)]
    pub postgres: Option<String>,
    /// Pool size. Default: 16.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_pool() -> u32 {
    16
}

/// The write mode of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteModeConfig {
    /// Commit, then invalidate.
    Aside,
    /// Commit, then set the caches.
    Through,
    /// Journal, ack, flush later.
    Behind,
    /// Commit only.
    Around,
}

/// `[namespaces.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The source (a name under `[sources]`). Without one, the namespace is a plain cache written by `PUT`.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// The table (default: the namespace name).
    #[serde(default)]
    pub table: Option<String>,
    /// Instead of a table: a `SELECT` with one row per key (a join, a view). Read-only: PUT and DELETE are refused.
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// The key column. Default: `id`.
    #[serde(default = "default_key_column")]
    pub key_column: String,
    /// The version column. Default: `version`.
    #[serde(default = "default_version_column")]
    pub version_column: String,
    /// Write mode: `aside`, `through`, `behind` or `around`. Default: `aside`.
    #[serde(default = "default_write")]
    pub write: Spanned<WriteModeConfig>,
    /// Fresh for. Default: 60 s.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// TTL spread, ± fraction. Default: 0.1.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Serve stale while revalidating for this long after the TTL.
    #[serde(default)]
    pub stale_for: Option<Dur>,
    /// Serve stale while the source fails for this long after the TTL.
    #[serde(default)]
    pub fail_safe_for: Option<Dur>,
    /// Cache "absent" for this long.
    #[serde(default)]
    pub negative_ttl: Option<Dur>,
    /// `"off"`, `"ratio:0.8"` or `"xfetch:1.0"`.
    #[serde(default)]
    pub early_refresh: Option<Spanned<String>>,
    /// Use L1. Default: true.
    #[serde(default)]
    pub l1: Option<bool>,
    /// This namespace's L1 budget (default: an even share of `[l1] budget`).
    #[serde(default)]
    pub l1_budget: Option<Bytes>,
    /// Use L2 (when `[redis]` is set). Default: true.
    #[serde(default)]
    pub l2: Option<bool>,
    /// Coalesce loads across nodes with a Redis lease. Default: true with Redis.
    #[serde(default)]
    pub distributed_coalescing: Option<bool>,
    /// Serve stale after this long waiting for the source.
    #[serde(default)]
    pub soft_timeout: Option<Dur>,
    /// Fail the load after this long.
    #[serde(default)]
    pub hard_timeout: Option<Dur>,
    /// What this namespace is for (shown in stats and the dashboard).
    #[serde(default)]
    pub description: Option<String>,
}

fn default_key_column() -> String {
    "id".into()
}
fn default_version_column() -> String {
    "version".into()
}
fn default_write() -> Spanned<WriteModeConfig> {
    Spanned::new(0..0, WriteModeConfig::Aside)
}

/// `[write_behind]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBehindConfig {
    /// `"always"` (fsync before each ack, group commit) or a duration (`"10ms"`: sync on a timer). Default:
    /// `always`.
    #[serde(default)]
    pub fsync: Option<Spanned<String>>,
    /// Writes waiting for the source at most. Default: 100,000.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// How long the flusher gathers a batch. Default: 20 ms.
    #[serde(default)]
    pub linger: Option<Dur>,
}

/// `[cdc]`: a logical-replication consumer on a PostgreSQL source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// The PostgreSQL source (a name under `[sources]`).
    pub source: Spanned<String>,
    /// Replication slot. Default: `strata`.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication. Default: `strata`.
    #[serde(default = "default_slot")]
    pub publication: String,
    /// Mapping rules (`[[cdc.rules]]`).
    #[serde(default)]
    pub rules: Vec<strata_cdc::Rule>,
}

fn default_slot() -> String {
    "strata".into()
}

/// Line and column (1-based) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// The dotted field at a span: the nearest `[table]` header above it plus the key on the span's line.
fn field_at(src: &str, span: &Range<usize>) -> String {
    let start = span.start.min(src.len());
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = src[line_start..].lines().next().unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned());
    let header = src[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (header, key) {
        (Some(h), Some(k)) => format!("{h}.{k}"),
        (Some(h), None) => h,
        (None, Some(k)) => k,
        (None, None) => "-".into(),
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            field: "-".into(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&src, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<Self, ConfigError> {
        let locate = |span: Option<Range<usize>>, field: Option<String>, message: String| {
            let (line, column, field) = match span {
                Some(span) => {
                    let (l, c) = line_col(src, span.start);
                    (l, c, field.unwrap_or_else(|| field_at(src, &span)))
                }
                None => (0, 0, field.unwrap_or_else(|| "-".into())),
            };
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                field,
                message,
            }
        };
        let mut config: Config = toml::from_str(src)
            .map_err(|e: toml::de::Error| locate(e.span(), None, e.message().to_owned()))?;
        config.origin = file.to_owned();
        config
            .validate()
            .map_err(|(span, field, message)| locate(span, Some(field), message))?;
        Ok(config)
    }

    /// Cross-field checks: `Err((span, field, message))`.
    #[allow(clippy::type_complexity)]
    fn validate(&self) -> Result<(), (Option<Range<usize>>, String, String)> {
        let names = || {
            self.sources
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, s) in &self.sources {
            let field = format!("sources.{name}");
            match (&s.get_ref().sqlite, &s.get_ref().postgres) {
                (Some(_), Some(_)) | (None, None) => return Err((
                    Some(s.span()),
                    field,
                    "set exactly one of `sqlite = \"file.db\"` and `postgres = \"postgres://…\"`"
                        .into(),
                )),
                (None, Some(url))
                    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") =>
                {
                    return Err((
                        Some(s.span()),
                        format!("{field}.postgres"),
                        format!("{url:?} is not a postgres:// URL"),
                    ))
                }
                _ => {}
            }
        }
        if self.server.max_key_len == 0 || self.server.max_key_len > 64 * 1024 {
            return Err((
                None,
                "server.max_key_len".into(),
                "must be between 1 and 65536".into(),
            ));
        }
        for (name, ns) in &self.namespaces {
            let field = |f: &str| format!("namespaces.{name}.{f}");
            if !valid_name(name) {
                return Err((
                    Some(ns.span()),
                    format!("namespaces.{name}"),
                    "namespace names use letters, digits, `_` and `-`, and do not start with `_`"
                        .into(),
                ));
            }
            let n = ns.get_ref();
            if let Some(src) = &n.source {
                if !self.sources.contains_key(src.get_ref()) {
                    return Err((
                        Some(src.span()),
                        field("source"),
                        format!("no source {:?}; defined: [{}]", src.get_ref(), names()),
                    ));
                }
            }
            let mode = *n.write.get_ref();
            if let Some(q) = &n.query {
                let problem = if n.source.is_none() {
                    Some("a `query` needs a `source`")
                } else if n.table.is_some() {
                    Some("set `table` or `query`, not both")
                } else if n.write.span().end > 0 {
                    Some("a query-bound namespace is read-only: leave `write` out")
                } else if q.get_ref().trim().is_empty() {
                    Some("the query is empty")
                } else {
                    None
                };
                if let Some(p) = problem {
                    return Err((Some(q.span()), field("query"), p.into()));
                }
            }
            if n.source.is_none() && mode != WriteModeConfig::Aside {
                return Err((
                    Some(n.write.span()).filter(|s| s.end > 0).or(Some(ns.span())),
                    field("write"),
                    format!("{mode:?} writes need a `source`; a namespace without one is a plain cache (leave `write` out)").to_lowercase(),
                ));
            }
            if let Some(er) = &n.early_refresh {
                if parse_early_refresh(er.get_ref()).is_none() {
                    return Err((
                        Some(er.span()),
                        field("early_refresh"),
                        format!(
                            "{:?}: write \"off\", \"ratio:0.8\" (0 < r < 1) or \"xfetch:1.0\" (beta > 0)",
                            er.get_ref()
                        ),
                    ));
                }
            }
            if let Err(e) = self.policy(name, n) {
                return Err((Some(ns.span()), format!("namespaces.{name}"), e));
            }
        }
        if let Some(fsync) = &self.write_behind.fsync {
            if parse_fsync(fsync.get_ref()).is_none() {
                return Err((
                    Some(fsync.span()),
                    "write_behind.fsync".into(),
                    format!(
                        "{:?}: write \"always\" or a duration such as \"10ms\"",
                        fsync.get_ref()
                    ),
                ));
            }
        }
        if let Some(cdc) = &self.cdc {
            match self.sources.get(cdc.source.get_ref()) {
                Some(s) if s.get_ref().postgres.is_some() => {}
                Some(_) => {
                    return Err((
                        Some(cdc.source.span()),
                        "cdc.source".into(),
                        "change data capture needs a PostgreSQL source (SQLite uses the outbox)"
                            .into(),
                    ))
                }
                None => {
                    return Err((
                        Some(cdc.source.span()),
                        "cdc.source".into(),
                        format!(
                            "no source {:?}; defined: [{}]",
                            cdc.source.get_ref(),
                            names()
                        ),
                    ))
                }
            }
            if let Err(e) = strata_cdc::Mapping::new(&cdc.rules) {
                return Err((None, format!("cdc.rules[{}]", e.rule), e.problem));
            }
            for r in &cdc.rules {
                if !self.namespaces.contains_key(&r.namespace) {
                    return Err((
                        None,
                        "cdc.rules".into(),
                        format!(
                            "rule for {} names namespace {:?}, which is not configured",
                            r.table, r.namespace
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The engine policy of a namespace.
    pub fn policy(&self, name: &str, n: &NamespaceConfig) -> Result<strata::Policy, String> {
        let mut b = strata::Policy::builder()
            .with_ttl(n.ttl.map_or(Duration::from_secs(60), |d| d.0))
            .with_write_mode(match n.write.get_ref() {
                WriteModeConfig::Aside => strata::WriteMode::Aside,
                WriteModeConfig::Through => strata::WriteMode::Through,
                WriteModeConfig::Behind => strata::WriteMode::Behind,
                WriteModeConfig::Around => strata::WriteMode::Around,
            });
        if let Some(j) = n.jitter {
            b = b.with_jitter(j);
        }
        if let Some(d) = n.stale_for {
            b = b.with_stale_for(d.0);
        }
        if let Some(d) = n.fail_safe_for {
            b = b.with_fail_safe_for(d.0);
        }
        if let Some(d) = n.negative_ttl {
            b = b.with_negative_ttl(d.0);
        }
        if let Some(er) = &n.early_refresh {
            if let Some(e) = parse_early_refresh(er.get_ref()) {
                b = b.with_early_refresh(e);
            }
        }
        let l1_on = n.l1.unwrap_or(true);
        b = b.with_l1(l1_on);
        let share = self.l1.budget.0 / (self.namespaces.len().max(1) as u64);
        b = b.with_l1_budget_bytes(n.l1_budget.map_or(share, |x| x.0).max(64 << 10));
        b = b.with_l2(self.redis.is_some() && n.l2.unwrap_or(true));
        b = b.with_distributed_coalescing(
            self.redis.is_some() && n.distributed_coalescing.unwrap_or(true),
        );
        if let Some(d) = n.soft_timeout {
            b = b.with_soft_timeout(d.0);
        }
        if let Some(d) = n.hard_timeout {
            b = b.with_hard_timeout(d.0);
        }
        let _ = name;
        b.build().map_err(|e| e.to_string())
    }

    /// The bearer token: `server.token`, or the variable `server.token_env` names.
    pub fn token(&self) -> Option<String> {
        self.server.token.clone().or_else(|| {
            self.server
                .token_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }

    /// The embedded default: the demo catalog in SQLite, L1 only (see [`crate::demo`]).
    pub fn embedded(data_dir: &Path) -> Self {
        Self::embedded_with(data_dir, None, None)
    }

    /// The embedded default, optionally with Redis (L2 and bus: several nodes) and the catalog in PostgreSQL (with
    /// a CDC consumer on slot and publication [`crate::demo::DEMO_SLOT`]).
    pub fn embedded_with(data_dir: &Path, redis: Option<&str>, postgres: Option<&str>) -> Self {
        let src = crate::demo::EMBEDDED_CONFIG;
        let mut c = Self::parse(src, "<embedded>").expect("the embedded config is valid");
        c.server.data_dir = data_dir.to_path_buf();
        if let Some(url) = redis {
            c.redis = Some(RedisConfig {
                url: url.to_owned(),
                prefix: default_prefix(),
                timeout: default_redis_timeout(),
            });
        }
        if let Some(url) = postgres {
            for s in c.sources.values_mut() {
                let s = s.get_mut();
                s.sqlite = None;
                s.postgres = Some(url.to_owned());
            }
            // Changes made outside Strata (psql) reach every node: CDC on the tables other writers change.
            // Unqualified tables are resolved in the connection's current schema when the server starts.
            c.cdc = Some(CdcConfig {
                source: Spanned::new(0..0, "catalog".into()),
                slot: crate::demo::DEMO_SLOT.into(),
                publication: crate::demo::DEMO_SLOT.into(),
                rules: vec![
                    strata_cdc::Rule::new("price", "price").version_column("version"),
                    strata_cdc::Rule::new("inventory", "inventory").version_column("version"),
                    strata_cdc::Rule::new("product", "product").tag("category:{category}"),
                ],
            });
        }
        c
    }

    /// Names the CDC slot (and the publication: the same name) instead of the configured ones.
    pub fn set_cdc_slot(&mut self, slot: &str) {
        if let Some(cdc) = &mut self.cdc {
            cdc.slot = slot.to_owned();
            cdc.publication = slot.to_owned();
        }
    }
}

/// Namespace names double as URL path segments and metric labels.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `"off" | "ratio:R" | "xfetch:BETA"`.
pub fn parse_early_refresh(s: &str) -> Option<strata::EarlyRefresh> {
    let s = s.trim();
    if s == "off" {
        return Some(strata::EarlyRefresh::Off);
    }
    let (kind, v) = s.split_once(':')?;
    let v: f64 = v.trim().parse().ok()?;
    match kind.trim() {
        "ratio" if v > 0.0 && v < 1.0 => Some(strata::EarlyRefresh::Ratio(v)),
        "xfetch" if v > 0.0 && v.is_finite() => Some(strata::EarlyRefresh::XFetch { beta: v }),
        _ => None,
    }
}

/// `"always"` or a duration.
pub fn parse_fsync(s: &str) -> Option<strata::journal::Fsync> {
    if s.trim() == "always" {
        return Some(strata::journal::Fsync::Always);
    }
    let d = humantime::parse_duration(s.trim()).ok()?;
    (d.as_millis() > 0).then_some(strata::journal::Fsync::EveryMs(d.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ConfigError {
        Config::parse(src, "strata.toml").unwrap_err()
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("256MiB"), Some(256 << 20));
        assert_eq!(parse_bytes("10"), Some(10));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert!(parse_early_refresh("ratio:0.8").is_some());
        assert!(parse_early_refresh("ratio:1.5").is_none());
        assert!(parse_early_refresh("xfetch:1").is_some());
        assert!(parse_fsync("always").is_some());
        assert!(parse_fsync("10ms").is_some());
        assert!(parse_fsync("sometimes").is_none());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(
            "[server]\nlisten = \"127.0.0.1:8700\"\n\n[namespaces.price]\nttl = \"ten seconds\"\n",
        );
        assert_eq!((e.file.as_str(), e.line), ("strata.toml", 5), "{e}");
        assert_eq!(e.field, "namespaces.price.ttl", "{e}");
        assert!(e.message.contains("not a duration"), "{e}");

        let e = err("[namespaces.price]\nttll = \"10s\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "namespaces.price.ttll"),
            "{e}"
        );
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("[sources.db]\nsqlite = \"a.db\"\n\n[namespaces.price]\nsource = \"pg\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (5, "namespaces.price.source"),
            "{e}"
        );
        assert!(e.message.contains("defined: [db]"), "{e}");

        let e = err("[namespaces.price]\nwrite = \"sideways\"\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("aside"), "{e}");

        let e = err("[namespaces.price]\nearly_refresh = \"soon\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "namespaces.price.early_refresh")
        );

        let e = err("[sources.db]\nsqlite = \"a.db\"\npostgres = \"postgres://x\"\n");
        assert_eq!(e.field, "sources.db");
        assert!(e.message.contains("exactly one"));

        let e = err("[namespaces.price]\nwrite = \"through\"\n");
        assert!(e.message.contains("need a `source`"), "{e}");

        let e = err("[namespaces.price]\njitter = 3.0\n");
        assert_eq!(e.field, "namespaces.price");
        assert!(e.message.contains("jitter"), "{e}");

        let e = err("[server]\nlisten = \"nowhere\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "server.listen"), "{e}");
        let e = err("not toml at all");
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("strata.toml:1:"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let src = include_str!("../../../examples/strata.toml");
        let c = Config::parse(src, "examples/strata.toml").unwrap();
        let modes: Vec<(&str, WriteModeConfig)> = c
            .namespaces
            .iter()
            .map(|(n, ns)| (n.as_str(), *ns.get_ref().write.get_ref()))
            .collect();
        for (ns, mode) in [
            ("product", WriteModeConfig::Around),
            ("session", WriteModeConfig::Through),
            ("counter", WriteModeConfig::Behind),
            ("price", WriteModeConfig::Through),
            ("inventory", WriteModeConfig::Through),
            ("permission", WriteModeConfig::Through),
            ("flag", WriteModeConfig::Around),
        ] {
            assert!(modes.contains(&(ns, mode)), "{ns}: {modes:?}");
        }
        assert!(c.cdc.is_some());
    }

    #[test]
    fn the_embedded_config_is_valid() {
        let c = Config::embedded(Path::new("/tmp/x"));
        assert!(c.redis.is_none());
        assert_eq!(c.namespaces.len(), 6);
        assert!(c.cdc.is_none());
        let mut c = Config::embedded_with(
            Path::new("/tmp/x"),
            Some("redis://127.0.0.1:6379"),
            Some("postgres://postgres@127.0.0.1/test"),
        );
        c.set_cdc_slot("mine");
        let cdc = c.cdc.as_ref().unwrap();
        assert_eq!(
            (cdc.slot.as_str(), cdc.publication.as_str()),
            ("mine", "mine")
        );
        assert!(strata_cdc::Mapping::new(&cdc.rules).is_ok());
    }
}

//! `strata-sql`: PostgreSQL and SQLite tables as a namespace's source of truth ([`Source`] and [`Sink`]).
//!
//! # Mapping
//! A [`TableSpec`] names a table, its key column and (for writes, required) its version column. Rows map to values
//! through serde via JSON, so any `Serialize + DeserializeOwned` type whose fields are the table's columns works
//! without per-type SQL:
//! - PostgreSQL reads `to_jsonb(row)` and writes with `jsonb_populate_record(NULL::table, $value)`, so column types
//!   are PostgreSQL's own;
//! - SQLite reads `json_object(column, …)` and writes `json_extract($value, '$.column')` per column.
//!
//! Extra row columns (the key, the version) are ignored by serde unless the type denies unknown fields.
//!
//! # Keys and values are typed by the catalog
//! Binding reads each column's type (`pg_attribute` / `PRAGMA table_info`) into a [`TableSchema`] ([`schema`]):
//! - keys have one canonical spelling per row (integers: `42`, `-7`, never `042`, `+42`, ` 42`, `42.9`; text as
//!   is; uuids lowercase hyphenated) and anything else is refused with [`SqlError::BadKey`] before SQL —
//!   [`TypedSource::canonical_key`] lets a caller check a key once, before it reaches the cache. Keys are bound as
//!   parameters of the key column's type (`= ANY($1::int8[])`, an SQLite integer), never compared through a cast
//!   of the column, and a single-key load only answers with a row whose key is the one asked for;
//! - values are checked against the column types ([`TypedSource::validate`]: integers for integer columns, strings
//!   for text, booleans, `NOT NULL`, unknown or missing fields) on every write, so SQLite's type affinity never
//!   stores `"abc"` in an INTEGER column; a value the database still refuses (a `CHECK`, a malformed date) is a
//!   [`SqlError::BadValue`] as well.
//!
//! # Versions
//! Every write bumps the version column in the same statement (`version = version + 1`, `RETURNING version`), so
//! the version the cache stores is the one the database committed; a delete returns the deleted row's version + 1
//! (the tombstone's), so a fill of the deleted row is refused. Loads return each row's version.
//!
//! # Batches
//! `load_many` is one query for all keys (`= ANY($1)` / `IN (SELECT value FROM json_each(?))`); every key in the
//! batch must be canonical, and a row answered for a key nobody asked for (or twice for one key) is an error.
//!
//! # Why sqlx
//! One pooled async API for both databases (PostgreSQL wire protocol in Rust, SQLite bundled), with JSON support
//! on both; identifiers come from configuration, so they are validated ([`quote_ident`]) and quoted, and every value
//! is a bound parameter.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{PgPool, Row, SqlitePool};
use strata_core::{Fetched, Rejection, SharedError, Sink, Source, WriteErrorKind};

pub mod schema;

pub use schema::{BadValue, KeyError, KeyKind, TableSchema};
use schema::{ColumnInfo, KeyParam, KeyParams};

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// A table or column name from the configuration is not a plain identifier.
    #[error("{what} {name:?} is not a valid identifier (letters, digits and _, not starting with a digit; optionally schema.name)")]
    InvalidIdentifier {
        /// Which setting.
        what: &'static str,
        /// The offending name.
        name: String,
    },
    /// The table does not exist.
    #[error("table {0:?} does not exist")]
    NoSuchTable(String),
    /// A configured column does not exist.
    #[error("table {table:?} has no column {column:?}")]
    NoSuchColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The key column's type has no canonical key form, so the table cannot be bound.
    #[error(
        "key column {column:?} of {table:?} has type {column_type}, which has no single spelling per value; key \
         columns must be integers (smallint, integer, bigint; SQLite INTEGER), text (text, varchar; SQLite TEXT) or \
         uuid"
    )]
    UnsupportedKeyType {
        /// The table.
        table: String,
        /// The key column.
        column: String,
        /// Its type.
        column_type: String,
    },
    /// A key is not the canonical spelling of a key of the table (refused before SQL).
    #[error(transparent)]
    BadKey(#[from] KeyError),
    /// The database answered a load with a row for another key than the one asked for, or with two rows for one
    /// key: nothing is cached.
    #[error("{table:?} answered the load of {asked} with {problem}")]
    KeyMismatch {
        /// The table or query.
        table: String,
        /// The key (or batch) asked for.
        asked: String,
        /// What came back.
        problem: String,
    },
    /// A write needs a version column.
    #[error("table {0:?} has no version column configured; writes need one")]
    NoVersionColumn(String),
    /// A value does not serialize to a JSON object whose fields are columns, does not fit their types, or the
    /// database refused it (a data exception, `NOT NULL`, `CHECK`, unique, foreign key).
    #[error("value for key {key:?} does not map onto table {table:?}: {problem}")]
    BadValue {
        /// The key written.
        key: String,
        /// The table.
        table: String,
        /// The field (column) at fault, when known (the database names it for `NOT NULL`, unique and foreign
        /// keys; PostgreSQL not for a `CHECK` or a value out of range).
        field: Option<String>,
        /// What is wrong: the rule, in the database's words when it refused the value.
        problem: String,
    },
    /// A row does not deserialize into the value type.
    #[error("row {key:?} of table {table:?} does not decode: {problem}")]
    BadRow {
        /// The row's key.
        key: String,
        /// The table.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// The database failed.
    #[error("database error on table {table:?}: {source}")]
    Database {
        /// The table.
        table: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

/// Which table backs a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The table, optionally `schema.table`.
    pub table: String,
    /// The primary-key column (one column; its value is the cache key as text).
    pub key_column: String,
    /// The version column (an integer bumped by every write); required for writes.
    pub version_column: Option<String>,
}

impl TableSpec {
    /// A spec with a version column.
    pub fn new(table: &str, key_column: &str, version_column: &str) -> Self {
        Self {
            table: table.into(),
            key_column: key_column.into(),
            version_column: Some(version_column.into()),
        }
    }
}

/// Validates and double-quotes an identifier (`name` or `schema.name`).
pub fn quote_ident(what: &'static str, name: &str) -> Result<String, SqlError> {
    let bad = || SqlError::InvalidIdentifier {
        what,
        name: name.to_owned(),
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(bad());
    }
    let mut quoted = Vec::new();
    for p in parts {
        let mut chars = p.chars();
        let ok_first = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        quoted.push(format!("\"{p}\""));
    }
    Ok(quoted.join("."))
}

fn shared(e: SqlError) -> SharedError {
    Arc::new(e)
}

/// The quoted names, the column list and the catalog's types a table (or query) was bound with.
#[derive(Debug, Clone)]
struct Bound {
    spec: TableSpec,
    table: String,
    key: String,
    version: Option<String>,
    /// Columns other than the key and version, unquoted.
    columns: Vec<String>,
    /// Canonical keys and value checks.
    schema: Arc<TableSchema>,
}

impl Bound {
    fn new(spec: TableSpec, all_columns: Vec<ColumnInfo>) -> Result<Self, SqlError> {
        if all_columns.is_empty() {
            return Err(SqlError::NoSuchTable(spec.table.clone()));
        }
        let has = |c: &str| all_columns.iter().any(|x| x.name == c);
        for c in std::iter::once(&spec.key_column).chain(spec.version_column.iter()) {
            if !has(c) {
                return Err(SqlError::NoSuchColumn {
                    table: spec.table.clone(),
                    column: c.clone(),
                });
            }
        }
        let table = quote_ident("table", &spec.table)?;
        Self::assemble(table, spec, all_columns)
    }

    fn assemble(
        table: String,
        spec: TableSpec,
        all_columns: Vec<ColumnInfo>,
    ) -> Result<Self, SqlError> {
        let columns = all_columns
            .iter()
            .map(|c| c.name.clone())
            .filter(|c| *c != spec.key_column && Some(c) != spec.version_column.as_ref())
            .collect();
        let schema = TableSchema::new(
            spec.table.clone(),
            &spec.key_column,
            spec.version_column.as_deref(),
            all_columns,
        )?;
        Ok(Self {
            table,
            key: quote_ident("key column", &spec.key_column)?,
            version: spec
                .version_column
                .as_deref()
                .map(|v| quote_ident("version column", v))
                .transpose()?,
            columns,
            schema: Arc::new(schema),
            spec,
        })
    }

    /// A bound for a read-only query: no table name to quote; the version column only if the query has it.
    fn for_query(
        label: &str,
        key_column: &str,
        version_column: &str,
        all_columns: Vec<ColumnInfo>,
    ) -> Result<Self, SqlError> {
        if !all_columns.iter().any(|c| c.name == key_column) {
            return Err(SqlError::NoSuchColumn {
                table: label.to_owned(),
                column: key_column.to_owned(),
            });
        }
        let version = all_columns
            .iter()
            .any(|c| c.name == version_column)
            .then(|| version_column.to_owned());
        let spec = TableSpec {
            table: label.to_owned(),
            key_column: key_column.to_owned(),
            version_column: version,
        };
        Self::assemble(label.to_owned(), spec, all_columns)
    }

    fn version_or_err(&self) -> Result<&str, SqlError> {
        self.version
            .as_deref()
            .ok_or_else(|| SqlError::NoVersionColumn(self.spec.table.clone()))
    }

    /// The key as a typed parameter, refused unless canonical.
    fn key_param(&self, key: &str) -> Result<KeyParam, SqlError> {
        Ok(self.schema.key_param(key)?)
    }

    /// The value's fields, checked against the columns' types (the key and version columns dropped).
    fn fields<V: Serialize>(
        &self,
        key: &str,
        value: &V,
    ) -> Result<serde_json::Map<String, serde_json::Value>, SqlError> {
        let bad = |field: Option<String>, problem: String| SqlError::BadValue {
            key: key.to_owned(),
            table: self.spec.table.clone(),
            field,
            problem,
        };
        self.schema.key_param(key)?;
        let json = serde_json::to_value(value).map_err(|e| bad(None, e.to_string()))?;
        self.schema
            .validate(&json)
            .map_err(|e| bad(e.field, e.message))?;
        let serde_json::Value::Object(mut map) = json else {
            return Err(bad(None, "it is not a struct or map".into()));
        };
        map.remove(&self.spec.key_column);
        if let Some(v) = &self.spec.version_column {
            map.remove(v);
        }
        Ok(map)
    }

    /// The fields of every item of a batch, which must share one column set (the same statement serves all).
    #[allow(clippy::type_complexity)]
    fn batch_fields<V: Serialize>(
        &self,
        items: &[(&str, &V, u64)],
    ) -> Result<(Vec<String>, Vec<serde_json::Map<String, serde_json::Value>>), SqlError> {
        let mut maps = Vec::with_capacity(items.len());
        let mut columns: Option<Vec<String>> = None;
        for (key, value, _) in items {
            let map = self.fields(key, *value)?;
            let cols: Vec<String> = map.keys().cloned().collect();
            match &columns {
                None => columns = Some(cols),
                Some(c) if *c == cols => {}
                Some(_) => {
                    return Err(SqlError::BadValue {
                        key: (*key).to_owned(),
                        table: self.spec.table.clone(),
                        field: None,
                        problem: "a batch needs the same fields in every value".into(),
                    })
                }
            }
            maps.push(map);
        }
        Ok((columns.unwrap_or_default(), maps))
    }

    /// A version as the database's signed 64-bit integer.
    fn version_i64(&self, key: &str, version: u64) -> Result<i64, SqlError> {
        i64::try_from(version).map_err(|_| SqlError::BadValue {
            key: key.to_owned(),
            table: self.spec.table.clone(),
            field: Some(self.spec.version_column.clone().unwrap_or_default()),
            problem: format!("version {version} does not fit a 64-bit signed column"),
        })
    }

    fn decode<V: DeserializeOwned>(
        &self,
        key: &str,
        row: serde_json::Value,
    ) -> Result<Fetched<V>, SqlError> {
        let version = self
            .spec
            .version_column
            .as_ref()
            .and_then(|c| row.get(c))
            .and_then(serde_json::Value::as_i64)
            .map(|v| v.max(0) as u64);
        let value: V = serde_json::from_value(row).map_err(|e| SqlError::BadRow {
            key: key.to_owned(),
            table: self.spec.table.clone(),
            problem: e.to_string(),
        })?;
        let fetched = Fetched::value(value);
        Ok(match version {
            Some(v) => fetched.with_version(v),
            None => fetched,
        })
    }

    /// The value of the row of `key` (a single-key load), or absence. A row for any other key, or a second row,
    /// is an error: the load never takes "the first row" of an answer that does not match.
    fn one<V: DeserializeOwned>(
        &self,
        key: &str,
        rows: Vec<(String, serde_json::Value)>,
    ) -> Result<Fetched<V>, SharedError> {
        let mut found = None;
        for (k, row) in rows {
            let problem = if k != key {
                format!("a row for key {k:?}")
            } else if found.is_some() {
                "two rows".to_owned()
            } else {
                found = Some(row);
                continue;
            };
            return Err(shared(SqlError::KeyMismatch {
                table: self.spec.table.clone(),
                asked: format!("key {key:?}"),
                problem,
            }));
        }
        match found {
            Some(row) => self.decode(key, row).map_err(shared),
            None => Ok(Fetched::absent()),
        }
    }

    /// The values of every row, by key (a batch load of `keys`). A row for a key not asked for, or two rows for
    /// one key, is an error.
    fn all<V: DeserializeOwned>(
        &self,
        keys: &[String],
        rows: Vec<(String, serde_json::Value)>,
    ) -> Result<HashMap<String, Fetched<V>>, SharedError> {
        let asked: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
        let mut out = HashMap::with_capacity(rows.len());
        for (k, row) in rows {
            let problem = if !asked.contains(k.as_str()) {
                format!("a row for key {k:?}, which was not asked for")
            } else if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(k.clone()) {
                slot.insert(self.decode(&k, row).map_err(shared)?);
                continue;
            } else {
                format!("two rows for key {k:?}")
            };
            return Err(shared(SqlError::KeyMismatch {
                table: self.spec.table.clone(),
                asked: format!("a batch of {} keys", keys.len()),
                problem,
            }));
        }
        Ok(out)
    }

    fn db(&self, source: sqlx::Error) -> SqlError {
        SqlError::Database {
            table: self.spec.table.clone(),
            source,
        }
    }

    /// A failed write: the database refusing the value (a data exception, `NOT NULL`, `CHECK`, unique, foreign
    /// key) is the value's fault ([`SqlError::BadValue`], naming the column when the database does); anything
    /// else is the database's.
    fn write_error(&self, key: &str, source: sqlx::Error) -> SqlError {
        if let sqlx::Error::Database(d) = &source {
            if let Some((field, problem)) = refusal(d.as_ref()) {
                return SqlError::BadValue {
                    key: key.to_owned(),
                    table: self.spec.table.clone(),
                    field,
                    problem: format!("the database refused it: {problem}"),
                };
            }
        }
        self.db(source)
    }
}

/// The column and the rule of a database error that refuses a value, `None` when the error is not a refusal.
///
/// PostgreSQL: class 22 (data exception: out of range, numeric overflow, malformed input) and class 23 (integrity:
/// `NOT NULL` 23502, foreign key 23503, unique 23505, `CHECK` 23514, exclusion 23P01). It names the column for
/// `NOT NULL` and in the detail of unique and foreign keys (`Key (sku)=(x) already exists.`).
/// SQLite (extended codes): 275 `CHECK`, 787 foreign key, 1299 `NOT NULL`, 1555 primary key, 2067 unique,
/// 3091 `STRICT` datatype, 1811 a trigger's `RAISE(ABORT, …)`, 19 any other constraint; it names `table.column`
/// after the colon for `NOT NULL` and unique.
fn refusal(d: &dyn sqlx::error::DatabaseError) -> Option<(Option<String>, String)> {
    let code = d.code().unwrap_or_default();
    if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        if !(code.starts_with("22") || code.starts_with("23")) {
            return None;
        }
        let detail = pg.detail().unwrap_or_default();
        let field = pg.column().map(str::to_owned).or_else(|| {
            let rest = detail.strip_prefix("Key (")?;
            Some(rest.split_once(")=")?.0.to_owned())
        });
        let mut problem = d.message().to_owned();
        if matches!(&*code, "23503" | "23505" | "23P01") && !detail.is_empty() {
            problem = format!("{problem} ({detail})");
        }
        return Some((field, problem));
    }
    if !["19", "275", "787", "1299", "1555", "2067", "3091", "1811"].contains(&&*code) {
        return None;
    }
    let message = d.message();
    let field = match &*code {
        "1299" | "1555" | "2067" => message.rsplit_once(": ").map(|(_, cols)| {
            cols.split(", ")
                .map(|c| c.rsplit_once('.').map_or(c, |(_, col)| col))
                .collect::<Vec<_>>()
                .join(", ")
        }),
        _ => None,
    };
    Some((field, message.to_owned()))
}

impl strata_core::Rejection for SqlError {
    fn write_error_kind(&self) -> WriteErrorKind {
        match self {
            SqlError::BadValue { field, problem, .. } => {
                WriteErrorKind::rejected(field.as_deref(), problem.clone())
            }
            SqlError::BadKey(k) => {
                WriteErrorKind::rejected(Some(&k.column), format!("the key must be {}", k.expected))
            }
            SqlError::Database { source, .. } => match source {
                sqlx::Error::PoolTimedOut => WriteErrorKind::Unavailable { timed_out: true },
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => WriteErrorKind::Unavailable { timed_out: false },
                sqlx::Error::Database(d) => {
                    let code = d.code().unwrap_or_default();
                    if code == "57014" {
                        // query_canceled: a statement_timeout.
                        WriteErrorKind::Unavailable { timed_out: true }
                    } else if code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || ["5", "6"].contains(&&*code)
                    {
                        // Connection exceptions, out of resources, shutting down; SQLite BUSY/LOCKED.
                        WriteErrorKind::Unavailable { timed_out: false }
                    } else {
                        WriteErrorKind::Failed
                    }
                }
                _ => WriteErrorKind::Failed,
            },
            _ => WriteErrorKind::Failed,
        }
    }
}

/// A bound table or query whose catalog types are known: canonical keys and value checks, for callers that want
/// to check once before the cache (the server, a write-behind queue).
pub trait TypedSource {
    /// The catalog's description, as read at bind time (cheap to clone and keep).
    fn schema(&self) -> &Arc<TableSchema>;

    /// `key` if it is the canonical spelling of a key of this table (see [`schema`]); else an error naming the key
    /// and the expected form.
    fn canonical_key(&self, key: &str) -> Result<String, KeyError> {
        self.schema().canonical_key(key)
    }

    /// Checks a value (a JSON object of columns) against the columns' types, as every write does.
    fn validate(&self, value: &serde_json::Value) -> Result<(), BadValue> {
        self.schema().validate(value)
    }
}

impl<V> TypedSource for PgTable<V> {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.bound.schema
    }
}

impl<V> TypedSource for SqliteTable<V> {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.bound.schema
    }
}

/// The SQL spelling of a typed key parameter (`$n` followed by this), by key kind: `(scalar, array)`.
fn pg_casts(kind: &KeyKind) -> (&'static str, &'static str) {
    match kind {
        KeyKind::Integer { .. } => ("::int8", "::int8[]"),
        KeyKind::Uuid => ("::text::uuid", "::text[]::uuid[]"),
        _ => ("::text", "::text[]"),
    }
}

type PgQ<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
type SqliteQ<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn pg_bind_key(q: PgQ<'_>, key: KeyParam) -> PgQ<'_> {
    match key {
        KeyParam::Int(n) => q.bind(n),
        KeyParam::Text(s) => q.bind(s),
    }
}

fn pg_bind_keys(q: PgQ<'_>, keys: KeyParams) -> PgQ<'_> {
    match keys {
        KeyParams::Int(v) => q.bind(v),
        KeyParams::Text(v) => q.bind(v),
    }
}

fn sqlite_bind_key(q: SqliteQ<'_>, key: KeyParam) -> SqliteQ<'_> {
    match key {
        KeyParam::Int(n) => q.bind(n),
        KeyParam::Text(s) => q.bind(s),
    }
}

/// A PostgreSQL table as a [`Source`] and [`Sink`] of `V`.
pub struct PgTable<V> {
    pool: PgPool,
    bound: Bound,
    /// `::int8` / `::text` / `::text::uuid`: a key parameter of the key column's type.
    key_cast: &'static str,
    /// The same for an array of keys.
    keys_cast: &'static str,
    _v: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for PgTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTable")
            .field("spec", &self.bound.spec)
            .finish_non_exhaustive()
    }
}

impl<V> PgTable<V> {
    /// Binds `spec` on `pool`: checks the names and reads the table's columns and their types, `NOT NULL`
    /// constraints and defaults (a key column of a type without a canonical spelling is refused).
    pub async fn bind(pool: PgPool, spec: TableSpec) -> Result<Self, SqlError> {
        let table = quote_ident("table", &spec.table)?;
        let rows = sqlx::query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    format_type(a.atttypid, NULL), a.atttypmod, a.attnotnull, \
                    a.atthasdef OR a.attidentity <> '', a.attgenerated <> '' \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .bind(&table)
        .fetch_all(&pool)
        .await
        .map_err(|source| SqlError::Database {
            table: spec.table.clone(),
            source,
        })?;
        let columns: Vec<ColumnInfo> = rows
            .iter()
            .map(|r| {
                ColumnInfo::postgres(
                    r.get(0),
                    r.get(1),
                    &r.get::<String, _>(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                )
            })
            .collect();
        let bound = Bound::new(spec, columns)?;
        let (key_cast, keys_cast) = pg_casts(bound.schema.key_kind());
        Ok(Self {
            pool,
            bound,
            key_cast,
            keys_cast,
            _v: PhantomData,
        })
    }

    /// `key` if it is the canonical spelling of a key of this table, else an error naming it and the form.
    pub fn canonical_key(&self, key: &str) -> Result<String, KeyError> {
        self.bound.schema.canonical_key(key)
    }

    /// Checks a value against the table's column types (what every write of this table checks first).
    pub fn validate(&self, value: &serde_json::Value) -> Result<(), BadValue> {
        self.bound.schema.validate(value)
    }

    /// What every write of `key` with `value` checks before any SQL — the key is canonical, the value fits the
    /// columns — without writing: [`SqlError::BadKey`] or [`SqlError::BadValue`] (naming key, field and type).
    /// For callers that acknowledge before they write (write-behind).
    pub fn check_write(&self, key: &str, value: &V) -> Result<(), SqlError>
    where
        V: Serialize,
    {
        self.bound.fields(key, value).map(drop)
    }

    async fn load_rows(&self, keys: &[String]) -> Result<Vec<(String, serde_json::Value)>, SqlError>
    where
        V: DeserializeOwned,
    {
        let b = &self.bound;
        let params = b.schema.key_params(keys)?;
        let sql = format!(
            "SELECT t.{key}::text, to_jsonb(t) FROM {table} t WHERE t.{key} = ANY($1{cast})",
            key = b.key,
            table = b.table,
            cast = self.keys_cast
        );
        let rows = pg_bind_keys(sqlx::query(&sql), params)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| b.db(e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<serde_json::Value, _>(1)))
            .collect())
    }
}

impl<V: DeserializeOwned + Send + Sync + 'static> Source<V> for PgTable<V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        async move {
            let rows = self.load_rows(&[key.to_owned()]).await.map_err(shared)?;
            self.bound.one(key, rows)
        }
        .boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        async move {
            let rows = self.load_rows(keys).await.map_err(shared)?;
            self.bound.all(keys, rows)
        }
        .boxed()
    }
}

impl<V: Serialize + Send + Sync + 'static> Sink<V> for PgTable<V> {
    fn check(&self, key: &str, value: &V) -> Result<(), SharedError> {
        self.check_write(key, value)
            .map_err(|e| Arc::new(e) as SharedError)
    }

    fn classify(&self, error: &SharedError) -> WriteErrorKind {
        SqlError::classify(error)
    }

    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let fields = b.fields(key, value).map_err(shared)?;
            let cols: Vec<String> = fields
                .keys()
                .map(|c| quote_ident("column", c))
                .collect::<Result<_, _>>()
                .map_err(shared)?;
            let insert_cols: String = cols.iter().map(|c| format!(", {c}")).collect();
            let select_cols: String = cols.iter().map(|c| format!(", r.{c}")).collect();
            let updates: String = cols
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}, "))
                .collect();
            let sql = format!(
                "INSERT INTO {table} AS t ({key}{insert_cols}, {version}) \
                 SELECT $1{kc}{select_cols}, 1 FROM jsonb_populate_record(NULL::{table}, $2::jsonb) r \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = t.{version} + 1 RETURNING t.{version}",
                table = b.table,
                key = b.key,
                kc = self.key_cast
            );
            let row = pg_bind_key(sqlx::query(&sql), param)
                .bind(serde_json::Value::Object(fields))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| shared(b.write_error(key, e)))?;
            Ok(row.get::<i64, _>(0).max(0) as u64)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = $1{kc} RETURNING {version}",
                table = b.table,
                key = b.key,
                kc = self.key_cast
            );
            let row = pg_bind_key(sqlx::query(&sql), param)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| shared(b.write_error(key, e)))?;
            Ok(row.map(|r| r.get::<i64, _>(0).max(0) as u64 + 1))
        }
        .boxed()
    }

    fn upsert_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a V,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let items = [(key, value, version)];
            Ok(self.upsert_fenced_many(&items).await?[0])
        }
        .boxed()
    }

    /// One statement for the whole batch: `unnest` of keys, JSON documents and versions, each document turned
    /// into a row by `jsonb_populate_record`, and `ON CONFLICT … DO UPDATE … WHERE t.version < EXCLUDED.version`.
    fn upsert_fenced_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a V, u64)],
    ) -> BoxFuture<'a, Result<Vec<bool>, SharedError>> {
        async move {
            if items.is_empty() {
                return Ok(Vec::new());
            }
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let (columns, maps) = b.batch_fields(items).map_err(shared)?;
            let cols: Vec<String> = columns
                .iter()
                .map(|c| quote_ident("column", c))
                .collect::<Result<_, _>>()
                .map_err(shared)?;
            let insert_cols: String = cols.iter().map(|c| format!(", {c}")).collect();
            let select_cols: String = cols.iter().map(|c| format!(", r.{c}")).collect();
            let updates: String = cols
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}, "))
                .collect();
            let sql = format!(
                "INSERT INTO {table} AS t ({key}{insert_cols}, {version}) \
                 SELECT x.k{select_cols}, x.v \
                 FROM unnest($1{ksc}, $2::jsonb[], $3::int8[]) AS x(k, doc, v) \
                 CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, x.doc) r \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = EXCLUDED.{version} \
                 WHERE t.{version} < EXCLUDED.{version} \
                 RETURNING t.{key}::text",
                table = b.table,
                key = b.key,
                ksc = self.keys_cast
            );
            let keys: Vec<String> = items.iter().map(|(k, _, _)| (*k).to_owned()).collect();
            let params = b.schema.key_params(&keys).map_err(|e| shared(e.into()))?;
            let docs: Vec<serde_json::Value> =
                maps.into_iter().map(serde_json::Value::Object).collect();
            let versions: Vec<i64> = items
                .iter()
                .map(|(k, _, v)| b.version_i64(k, *v))
                .collect::<Result<_, _>>()
                .map_err(shared)?;
            let rows = pg_bind_keys(sqlx::query(&sql), params)
                .bind(&docs)
                .bind(&versions)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| {
                    let first = keys.first().map_or("", String::as_str);
                    shared(b.write_error(first, e))
                })?;
            let written: std::collections::HashSet<String> =
                rows.iter().map(|r| r.get::<String, _>(0)).collect();
            Ok(keys.iter().map(|k| written.contains(k)).collect())
        }
        .boxed()
    }

    fn delete_fenced<'a>(
        &'a self,
        key: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let b = &self.bound;
            let column = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let v = b.version_i64(key, version).map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = $1{kc} AND {column} < $2",
                table = b.table,
                key = b.key,
                kc = self.key_cast
            );
            let done = pg_bind_key(sqlx::query(&sql), param)
                .bind(v)
                .execute(&self.pool)
                .await
                .map_err(|e| shared(b.write_error(key, e)))?;
            Ok(done.rows_affected() > 0)
        }
        .boxed()
    }
}

/// A SQLite table as a [`Source`] and [`Sink`] of `V`: the embedded default.
///
/// SQLite has no boolean type: a `bool` column reads back as `0`/`1`, so a `bool` field needs a serde adapter
/// (or an integer field). For the write-behind journal's checkpoint to be safe against power loss, open the pool
/// with `synchronous=FULL`; `NORMAL` in WAL mode survives process crashes only.
pub struct SqliteTable<V> {
    pool: SqlitePool,
    bound: Bound,
    _v: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for SqliteTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTable")
            .field("spec", &self.bound.spec)
            .finish_non_exhaustive()
    }
}

impl<V> SqliteTable<V> {
    /// Binds `spec` on `pool`: checks the names and reads the table's columns, their declared types, `NOT NULL`
    /// constraints and defaults (a key column of a type without a canonical spelling is refused).
    pub async fn bind(pool: SqlitePool, spec: TableSpec) -> Result<Self, SqlError> {
        let table = quote_ident("table", &spec.table)?;
        let rows = sqlx::query(&format!("PRAGMA table_info({table})"))
            .fetch_all(&pool)
            .await
            .map_err(|source| SqlError::Database {
                table: spec.table.clone(),
                source,
            })?;
        let columns: Vec<ColumnInfo> = rows
            .iter()
            .map(|r| {
                ColumnInfo::sqlite(
                    r.get("name"),
                    r.get("type"),
                    r.get::<i64, _>("notnull") != 0,
                    r.get::<Option<String>, _>("dflt_value").is_some(),
                )
            })
            .collect();
        let bound = Bound::new(spec, columns)?;
        Ok(Self {
            pool,
            bound,
            _v: PhantomData,
        })
    }

    /// `key` if it is the canonical spelling of a key of this table, else an error naming it and the form.
    pub fn canonical_key(&self, key: &str) -> Result<String, KeyError> {
        self.bound.schema.canonical_key(key)
    }

    /// Checks a value against the table's column types (what every write of this table checks first).
    pub fn validate(&self, value: &serde_json::Value) -> Result<(), BadValue> {
        self.bound.schema.validate(value)
    }

    /// What every write of `key` with `value` checks before any SQL — the key is canonical, the value fits the
    /// columns — without writing: [`SqlError::BadKey`] or [`SqlError::BadValue`] (naming key, field and type).
    /// For callers that acknowledge before they write (write-behind).
    pub fn check_write(&self, key: &str, value: &V) -> Result<(), SqlError>
    where
        V: Serialize,
    {
        self.bound.fields(key, value).map(drop)
    }

    async fn load_rows(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, serde_json::Value)>, SqlError> {
        let b = &self.bound;
        // Integer keys travel as JSON numbers, so `json_each` yields integers: compared as integers, exactly.
        let keys_json = b.schema.key_params(keys)?.json();
        let mut pairs: Vec<String> = Vec::new();
        for c in b
            .columns
            .iter()
            .chain(b.spec.version_column.iter())
            .chain(std::iter::once(&b.spec.key_column))
        {
            pairs.push(format!("'{c}', {}", quote_ident("column", c)?));
        }
        let sql = format!(
            "SELECT CAST({key} AS TEXT), json_object({pairs}) FROM {table} \
             WHERE {key} IN (SELECT value FROM json_each(?1))",
            key = b.key,
            table = b.table,
            pairs = pairs.join(", ")
        );
        let rows = sqlx::query(&sql)
            .bind(keys_json)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| b.db(e))?;
        rows.iter()
            .map(|r| {
                let k: String = r.get(0);
                let text: String = r.get(1);
                let json = serde_json::from_str(&text).map_err(|e| SqlError::BadRow {
                    key: k.clone(),
                    table: b.spec.table.clone(),
                    problem: e.to_string(),
                })?;
                Ok((k, json))
            })
            .collect()
    }
}

impl<V: DeserializeOwned + Send + Sync + 'static> Source<V> for SqliteTable<V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        async move {
            let rows = self.load_rows(&[key.to_owned()]).await.map_err(shared)?;
            self.bound.one(key, rows)
        }
        .boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        async move {
            let rows = self.load_rows(keys).await.map_err(shared)?;
            self.bound.all(keys, rows)
        }
        .boxed()
    }
}

impl<V: Serialize + Send + Sync + 'static> Sink<V> for SqliteTable<V> {
    fn check(&self, key: &str, value: &V) -> Result<(), SharedError> {
        self.check_write(key, value)
            .map_err(|e| Arc::new(e) as SharedError)
    }

    fn classify(&self, error: &SharedError) -> WriteErrorKind {
        SqlError::classify(error)
    }

    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let fields = b.fields(key, value).map_err(shared)?;
            let mut cols = Vec::new();
            let mut exprs = Vec::new();
            for c in fields.keys() {
                cols.push(quote_ident("column", c).map_err(shared)?);
                // `c` is a validated identifier, so it is safe inside the JSON path literal.
                exprs.push(format!("json_extract(?2, '$.{c}')"));
            }
            let insert_cols: String = cols.iter().map(|c| format!(", {c}")).collect();
            let values: String = exprs.iter().map(|e| format!(", {e}")).collect();
            let updates: String = cols
                .iter()
                .map(|c| format!("{c} = excluded.{c}, "))
                .collect();
            let sql = format!(
                "INSERT INTO {table} ({key}{insert_cols}, {version}) VALUES (?1{values}, 1) \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = {table}.{version} + 1 \
                 RETURNING {version}",
                table = b.table,
                key = b.key,
            );
            let row = sqlite_bind_key(sqlx::query(&sql), param)
                .bind(serde_json::Value::Object(fields).to_string())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| shared(b.write_error(key, e)))?;
            Ok(row.get::<i64, _>(0).max(0) as u64)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = ?1 RETURNING {version}",
                table = b.table,
                key = b.key
            );
            let row = sqlite_bind_key(sqlx::query(&sql), param)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| shared(b.write_error(key, e)))?;
            Ok(row.map(|r| r.get::<i64, _>(0).max(0) as u64 + 1))
        }
        .boxed()
    }

    fn upsert_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a V,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let items = [(key, value, version)];
            Ok(self.upsert_fenced_many(&items).await?[0])
        }
        .boxed()
    }

    /// One transaction for the whole batch (one commit, one sync), one fenced `INSERT … ON CONFLICT … WHERE
    /// version < excluded.version` per item.
    fn upsert_fenced_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a V, u64)],
    ) -> BoxFuture<'a, Result<Vec<bool>, SharedError>> {
        async move {
            if items.is_empty() {
                return Ok(Vec::new());
            }
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let (columns, maps) = b.batch_fields(items).map_err(shared)?;
            let mut cols = Vec::new();
            let mut exprs = Vec::new();
            for c in &columns {
                cols.push(quote_ident("column", c).map_err(shared)?);
                // `c` is a validated identifier, so it is safe inside the JSON path literal.
                exprs.push(format!("json_extract(?2, '$.{c}')"));
            }
            let insert_cols: String = cols.iter().map(|c| format!(", {c}")).collect();
            let values: String = exprs.iter().map(|e| format!(", {e}")).collect();
            let updates: String = cols
                .iter()
                .map(|c| format!("{c} = excluded.{c}, "))
                .collect();
            let sql = format!(
                "INSERT INTO {table} ({key}{insert_cols}, {version}) VALUES (?1{values}, ?3) \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = excluded.{version} \
                 WHERE {table}.{version} < excluded.{version} RETURNING 1",
                table = b.table,
                key = b.key,
            );
            let mut tx = self.pool.begin().await.map_err(|e| shared(b.db(e)))?;
            let mut out = Vec::with_capacity(items.len());
            for ((key, _, v), map) in items.iter().zip(maps) {
                let v = b.version_i64(key, *v).map_err(shared)?;
                let param = b.key_param(key).map_err(shared)?;
                let row = sqlite_bind_key(sqlx::query(&sql), param)
                    .bind(serde_json::Value::Object(map).to_string())
                    .bind(v)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| shared(b.write_error(key, e)))?;
                out.push(row.is_some());
            }
            tx.commit().await.map_err(|e| shared(b.db(e)))?;
            Ok(out)
        }
        .boxed()
    }

    fn delete_fenced<'a>(
        &'a self,
        key: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let b = &self.bound;
            let column = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let v = b.version_i64(key, version).map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = ?1 AND {column} < ?2",
                table = b.table,
                key = b.key
            );
            let done = sqlite_bind_key(sqlx::query(&sql), param)
                .bind(v)
                .execute(&self.pool)
                .await
                .map_err(|e| shared(b.write_error(key, e)))?;
            Ok(done.rows_affected() > 0)
        }
        .boxed()
    }
}

pub mod query;

pub use query::{PgQuery, SqliteQuery};

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> Bound {
        let col = |name: &str, ty: &str| ColumnInfo::sqlite(name.into(), ty.into(), true, false);
        Bound::new(
            TableSpec::new("price", "id", "version"),
            vec![
                col("id", "INTEGER"),
                col("cents", "INTEGER"),
                col("version", "INTEGER"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_single_key_load_only_takes_the_row_of_its_key() {
        let b = bound();
        let row = |id: i64| {
            (
                id.to_string(),
                serde_json::json!({"id": id, "cents": id * 100, "version": 1}),
            )
        };
        let got: Fetched<serde_json::Value> = b.one("42", vec![row(42)]).unwrap();
        assert_eq!(got.value.unwrap()["cents"], 4200);
        // An answer for another key (what a cast comparison would give for `042`) is not taken as the row.
        let e = b.one::<serde_json::Value>("42", vec![row(43)]).unwrap_err();
        assert!(e.to_string().contains("a row for key \"43\""), "{e}");
        let e = b
            .one::<serde_json::Value>("42", vec![row(42), row(42)])
            .unwrap_err();
        assert!(e.to_string().contains("two rows"), "{e}");
        assert!(b
            .one::<serde_json::Value>("42", vec![])
            .unwrap()
            .value
            .is_none());
        let keys = ["42".to_owned(), "7".to_owned()];
        let e = b
            .all::<serde_json::Value>(&keys, vec![row(42), row(8)])
            .unwrap_err();
        assert!(e.to_string().contains("not asked for"), "{e}");
        assert_eq!(
            b.all::<serde_json::Value>(&keys, vec![row(42)])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert_eq!(quote_ident("table", "price").unwrap(), "\"price\"");
        assert_eq!(
            quote_ident("table", "s1.price_2").unwrap(),
            "\"s1\".\"price_2\""
        );
        for bad in [
            "",
            "1x",
            "a-b",
            "a.b.c",
            "x\"; DROP TABLE y; --",
            "a b",
            "é",
        ] {
            let err = quote_ident("table", bad).unwrap_err().to_string();
            assert!(err.contains("not a valid identifier"), "{bad}: {err}");
        }
    }
}

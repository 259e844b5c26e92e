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
//! Extra row columns (the key, the version) are ignored by serde unless the type denies unknown fields. Fields
//! that are not columns are refused with an error naming them, so a typo never silently drops data.
//!
//! # Versions
//! Every write bumps the version column in the same statement (`version = version + 1`, `RETURNING version`), so
//! the version the cache stores is the one the database committed; a delete returns the deleted row's version + 1
//! (the tombstone's), so a fill of the deleted row is refused. Loads return each row's version.
//!
//! # Batches
//! `load_many` is one query for all keys (`= ANY($1)` / `IN (SELECT value FROM json_each(?))`).
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
use strata_core::{Fetched, SharedError, Sink, Source};

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
    /// A write needs a version column.
    #[error("table {0:?} has no version column configured; writes need one")]
    NoVersionColumn(String),
    /// A value does not serialize to a JSON object whose fields are columns.
    #[error("value for key {key:?} does not map onto table {table:?}: {problem}")]
    BadValue {
        /// The key written.
        key: String,
        /// The table.
        table: String,
        /// What is wrong.
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

/// The quoted names and the column list a table was bound with.
#[derive(Debug, Clone)]
struct Bound {
    spec: TableSpec,
    table: String,
    key: String,
    version: Option<String>,
    /// Columns other than the key and version, unquoted.
    columns: Vec<String>,
}

impl Bound {
    fn new(spec: TableSpec, all_columns: Vec<String>) -> Result<Self, SqlError> {
        if all_columns.is_empty() {
            return Err(SqlError::NoSuchTable(spec.table.clone()));
        }
        let has = |c: &str| all_columns.iter().any(|x| x == c);
        for c in std::iter::once(&spec.key_column).chain(spec.version_column.iter()) {
            if !has(c) {
                return Err(SqlError::NoSuchColumn {
                    table: spec.table.clone(),
                    column: c.clone(),
                });
            }
        }
        let columns = all_columns
            .into_iter()
            .filter(|c| *c != spec.key_column && Some(c) != spec.version_column.as_ref())
            .collect();
        Ok(Self {
            table: quote_ident("table", &spec.table)?,
            key: quote_ident("key column", &spec.key_column)?,
            version: spec
                .version_column
                .as_deref()
                .map(|v| quote_ident("version column", v))
                .transpose()?,
            columns,
            spec,
        })
    }

    /// A bound for a read-only query: no table name to quote; the version column only if the query has it.
    fn for_query(
        label: &str,
        key_column: &str,
        version_column: &str,
        all_columns: Vec<String>,
    ) -> Result<Self, SqlError> {
        if !all_columns.iter().any(|c| c == key_column) {
            return Err(SqlError::NoSuchColumn {
                table: label.to_owned(),
                column: key_column.to_owned(),
            });
        }
        let version = all_columns
            .iter()
            .any(|c| c == version_column)
            .then(|| version_column.to_owned());
        let spec = TableSpec {
            table: label.to_owned(),
            key_column: key_column.to_owned(),
            version_column: version,
        };
        Ok(Self {
            table: label.to_owned(),
            key: quote_ident("key column", key_column)?,
            version: spec
                .version_column
                .as_deref()
                .map(|v| quote_ident("version column", v))
                .transpose()?,
            columns: all_columns
                .into_iter()
                .filter(|c| *c != spec.key_column && Some(c) != spec.version_column.as_ref())
                .collect(),
            spec,
        })
    }

    fn version_or_err(&self) -> Result<&str, SqlError> {
        self.version
            .as_deref()
            .ok_or_else(|| SqlError::NoVersionColumn(self.spec.table.clone()))
    }

    /// The value's fields, checked against the columns.
    fn fields<V: Serialize>(
        &self,
        key: &str,
        value: &V,
    ) -> Result<serde_json::Map<String, serde_json::Value>, SqlError> {
        let bad = |problem: String| SqlError::BadValue {
            key: key.to_owned(),
            table: self.spec.table.clone(),
            problem,
        };
        let json = serde_json::to_value(value).map_err(|e| bad(e.to_string()))?;
        let serde_json::Value::Object(mut map) = json else {
            return Err(bad("it is not a struct or map".into()));
        };
        map.remove(&self.spec.key_column);
        if let Some(v) = &self.spec.version_column {
            map.remove(v);
        }
        if let Some(unknown) = map.keys().find(|k| !self.columns.contains(k)) {
            return Err(bad(format!("field {unknown:?} is not a column")));
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

    /// The value of the first row (a single-key load), or absence.
    fn first<V: DeserializeOwned>(
        &self,
        rows: Vec<(String, serde_json::Value)>,
    ) -> Result<Fetched<V>, SharedError> {
        match rows.into_iter().next() {
            Some((k, row)) => self.decode(&k, row).map_err(shared),
            None => Ok(Fetched::absent()),
        }
    }

    /// The values of every row, by key (a batch load).
    fn all<V: DeserializeOwned>(
        &self,
        rows: Vec<(String, serde_json::Value)>,
    ) -> Result<HashMap<String, Fetched<V>>, SharedError> {
        rows.into_iter()
            .map(|(k, row)| Ok((k.clone(), self.decode(&k, row).map_err(shared)?)))
            .collect()
    }

    fn db(&self, source: sqlx::Error) -> SqlError {
        SqlError::Database {
            table: self.spec.table.clone(),
            source,
        }
    }
}

/// A PostgreSQL table as a [`Source`] and [`Sink`] of `V`.
pub struct PgTable<V> {
    pool: PgPool,
    bound: Bound,
    key_type: String,
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
    /// Binds `spec` on `pool`: checks the names and reads the table's columns and key type.
    pub async fn bind(pool: PgPool, spec: TableSpec) -> Result<Self, SqlError> {
        let table = quote_ident("table", &spec.table)?;
        let rows = sqlx::query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
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
        let columns: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect();
        let key_type = columns
            .iter()
            .find(|(c, _)| *c == spec.key_column)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let bound = Bound::new(spec, columns.into_iter().map(|(c, _)| c).collect())?;
        Ok(Self {
            pool,
            bound,
            key_type,
            _v: PhantomData,
        })
    }

    async fn load_rows(&self, keys: &[String]) -> Result<Vec<(String, serde_json::Value)>, SqlError>
    where
        V: DeserializeOwned,
    {
        let b = &self.bound;
        let sql = format!(
            "SELECT t.{key}::text, to_jsonb(t) FROM {table} t WHERE t.{key} = ANY($1::text[]::{kt}[])",
            key = b.key,
            table = b.table,
            kt = self.key_type
        );
        let rows = sqlx::query(&sql)
            .bind(keys)
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
            self.bound.first(rows)
        }
        .boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        async move {
            let rows = self.load_rows(keys).await.map_err(shared)?;
            self.bound.all(rows)
        }
        .boxed()
    }
}

impl<V: Serialize + Send + Sync + 'static> Sink<V> for PgTable<V> {
    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
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
                 SELECT $1::text::{kt}{select_cols}, 1 FROM jsonb_populate_record(NULL::{table}, $2::jsonb) r \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = t.{version} + 1 RETURNING t.{version}",
                table = b.table,
                key = b.key,
                kt = self.key_type
            );
            let row = sqlx::query(&sql)
                .bind(key)
                .bind(serde_json::Value::Object(fields))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
            Ok(row.get::<i64, _>(0).max(0) as u64)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = $1::text::{kt} RETURNING {version}",
                table = b.table,
                key = b.key,
                kt = self.key_type
            );
            let row = sqlx::query(&sql)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
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
                 SELECT x.k::text::{kt}{select_cols}, x.v \
                 FROM unnest($1::text[], $2::jsonb[], $3::int8[]) AS x(k, doc, v) \
                 CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, x.doc) r \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = EXCLUDED.{version} \
                 WHERE t.{version} < EXCLUDED.{version} \
                 RETURNING t.{key}::text",
                table = b.table,
                key = b.key,
                kt = self.key_type
            );
            let keys: Vec<&str> = items.iter().map(|(k, _, _)| *k).collect();
            let docs: Vec<serde_json::Value> =
                maps.into_iter().map(serde_json::Value::Object).collect();
            let versions: Vec<i64> = items
                .iter()
                .map(|(k, _, v)| b.version_i64(k, *v))
                .collect::<Result<_, _>>()
                .map_err(shared)?;
            let rows = sqlx::query(&sql)
                .bind(&keys)
                .bind(&docs)
                .bind(&versions)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
            let written: std::collections::HashSet<String> =
                rows.iter().map(|r| r.get::<String, _>(0)).collect();
            Ok(keys.iter().map(|k| written.contains(*k)).collect())
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
            let v = b.version_i64(key, version).map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = $1::text::{kt} AND {column} < $2",
                table = b.table,
                key = b.key,
                kt = self.key_type
            );
            let done = sqlx::query(&sql)
                .bind(key)
                .bind(v)
                .execute(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
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
    integer_key: bool,
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
    /// Binds `spec` on `pool`: checks the names and reads the table's columns.
    pub async fn bind(pool: SqlitePool, spec: TableSpec) -> Result<Self, SqlError> {
        let table = quote_ident("table", &spec.table)?;
        let rows = sqlx::query(&format!("PRAGMA table_info({table})"))
            .fetch_all(&pool)
            .await
            .map_err(|source| SqlError::Database {
                table: spec.table.clone(),
                source,
            })?;
        let columns: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<String, _>("name"), r.get::<String, _>("type")))
            .collect();
        let integer_key = columns
            .iter()
            .any(|(c, t)| *c == spec.key_column && t.to_ascii_uppercase().contains("INT"));
        let bound = Bound::new(spec, columns.into_iter().map(|(c, _)| c).collect())?;
        Ok(Self {
            pool,
            bound,
            integer_key,
            _v: PhantomData,
        })
    }

    async fn load_rows(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, serde_json::Value)>, SqlError> {
        let b = &self.bound;
        let mut pairs: Vec<String> = Vec::new();
        for c in b
            .columns
            .iter()
            .chain(b.spec.version_column.iter())
            .chain(std::iter::once(&b.spec.key_column))
        {
            pairs.push(format!("'{c}', {}", quote_ident("column", c)?));
        }
        let key_set = if self.integer_key {
            "SELECT CAST(value AS INTEGER) FROM json_each(?1)"
        } else {
            "SELECT value FROM json_each(?1)"
        };
        let sql = format!(
            "SELECT CAST({key} AS TEXT), json_object({pairs}) FROM {table} WHERE {key} IN ({key_set})",
            key = b.key,
            table = b.table,
            pairs = pairs.join(", ")
        );
        let keys_json = serde_json::to_string(keys).expect("strings serialize");
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
            self.bound.first(rows)
        }
        .boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        async move {
            let rows = self.load_rows(keys).await.map_err(shared)?;
            self.bound.all(rows)
        }
        .boxed()
    }
}

impl<V: Serialize + Send + Sync + 'static> Sink<V> for SqliteTable<V> {
    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
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
            let row = sqlx::query(&sql)
                .bind(key)
                .bind(serde_json::Value::Object(fields).to_string())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
            Ok(row.get::<i64, _>(0).max(0) as u64)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        async move {
            let b = &self.bound;
            let version = b.version_or_err().map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = ?1 RETURNING {version}",
                table = b.table,
                key = b.key
            );
            let row = sqlx::query(&sql)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
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
                let row = sqlx::query(&sql)
                    .bind(*key)
                    .bind(serde_json::Value::Object(map).to_string())
                    .bind(v)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| shared(b.db(e)))?;
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
            let v = b.version_i64(key, version).map_err(shared)?;
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = ?1 AND {column} < ?2",
                table = b.table,
                key = b.key
            );
            let done = sqlx::query(&sql)
                .bind(key)
                .bind(v)
                .execute(&self.pool)
                .await
                .map_err(|e| shared(b.db(e)))?;
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

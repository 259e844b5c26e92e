//! A read-only query as a namespace's [`Source`]: any `SELECT` that yields one row per key (a join, a view, a
//! projection), filtered by its key column. Rows map to values like table rows (serde via JSON); a column named
//! like the version column, when the query has one, is the version. There is no [`strata_core::Sink`]: a
//! query-bound namespace is written through the tables it reads, and learns of changes by TTL, invalidation or CDC.
//!
//! The query is wrapped, never rewritten: `SELECT … FROM (<query>) q WHERE q.<key> = ANY(…)`. Its columns and the
//! key column's type are read once at bind time (`describe`), so a query that does not parse or lacks the key
//! column is an error then, not on the first read. Keys follow the key column's type like a table's (canonical
//! integers, text, lowercase uuids; see [`crate::schema`]) and are compared as parameters of that type; a key
//! column of any other type is compared by its text output (`q.key::text`, `CAST(q.key AS TEXT)`), exactly, so
//! only the spelling the database prints names a row.

use std::collections::HashMap;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::{Column, Executor, PgPool, Row, SqlitePool};
use strata_core::{Fetched, SharedError, Source};

use crate::schema::{query_key_kind, ColumnInfo, KeyKind};
use crate::{
    pg_bind_keys, pg_casts, quote_ident, shared, Bound, SqlError, TableSchema, TypedSource,
};

/// A query bound to a PostgreSQL pool.
pub struct PgQuery<V> {
    pool: PgPool,
    sql: String,
    bound: Bound,
    _v: PhantomData<fn() -> V>,
}

/// A query bound to a SQLite pool.
pub struct SqliteQuery<V> {
    pool: SqlitePool,
    sql: String,
    bound: Bound,
    _v: PhantomData<fn() -> V>,
}

fn label(query: &str) -> String {
    let one_line: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let short: String = one_line.chars().take(60).collect();
    if short.len() < one_line.len() {
        format!("query `{short}…`")
    } else {
        format!("query `{short}`")
    }
}

fn check(query: &str) -> Result<&str, SqlError> {
    let q = query.trim().trim_end_matches(';').trim();
    if q.is_empty() || q.contains(';') {
        return Err(SqlError::BadValue {
            key: String::new(),
            table: label(query),
            field: None,
            problem: "give one SELECT statement (no `;` inside)".into(),
        });
    }
    Ok(q)
}

/// The columns of `query`'s rows, with the key form of each column's type, from the database's own description of
/// the statement (nothing runs).
async fn columns_of<'e, E: Executor<'e>>(
    executor: E,
    query: &str,
) -> Result<Vec<ColumnInfo>, sqlx::Error> {
    use sqlx::TypeInfo;
    let sql = format!("SELECT * FROM ({query}) q");
    let described = executor.describe(&sql).await?;
    Ok(described
        .columns()
        .iter()
        .map(|c| {
            let ty = c.type_info().name().to_owned();
            let kind = query_key_kind(&ty);
            ColumnInfo::of_query(c.name().to_owned(), ty, kind)
        })
        .collect())
}

/// One key through the source's batch query (the statement is the same either way).
async fn load_one<V, S: Source<V>>(source: &S, key: &str) -> Result<Fetched<V>, SharedError> {
    let keys = [key.to_owned()];
    let mut all = source.load_many(&keys).await?;
    Ok(all.remove(key).unwrap_or_else(Fetched::absent))
}

impl<V> TypedSource for PgQuery<V> {
    fn schema(&self) -> &std::sync::Arc<TableSchema> {
        &self.bound.schema
    }
}

impl<V> TypedSource for SqliteQuery<V> {
    fn schema(&self) -> &std::sync::Arc<TableSchema> {
        &self.bound.schema
    }
}

impl<V> PgQuery<V> {
    /// Binds `query` (its rows have `key_column`; `version_column` is used when present).
    pub async fn bind(
        pool: PgPool,
        query: &str,
        key_column: &str,
        version_column: &str,
    ) -> Result<Self, SqlError> {
        let label = label(query);
        let q = check(query)?;
        let db = |source| SqlError::Database {
            table: label.clone(),
            source,
        };
        let columns = columns_of(&pool, q).await.map_err(db)?;
        let bound = Bound::for_query(&label, key_column, version_column, columns)?;
        let kind = bound.schema.key_kind().clone();
        let sql = if kind == KeyKind::TextOutput {
            format!(
                "SELECT q.{key}::text, to_jsonb(q) FROM ({q}) q WHERE q.{key}::text = ANY($1::text[])",
                key = bound.key
            )
        } else {
            format!(
                "SELECT q.{key}::text, to_jsonb(q) FROM ({q}) q WHERE q.{key} = ANY($1{cast})",
                key = bound.key,
                cast = pg_casts(&kind).1
            )
        };
        Ok(Self {
            pool,
            sql,
            bound,
            _v: PhantomData,
        })
    }
}

impl<V> SqliteQuery<V> {
    /// Binds `query` (its rows have `key_column`; `version_column` is used when present).
    pub async fn bind(
        pool: SqlitePool,
        query: &str,
        key_column: &str,
        version_column: &str,
    ) -> Result<Self, SqlError> {
        let label = label(query);
        let q = check(query)?;
        let db = |source| SqlError::Database {
            table: label.clone(),
            source,
        };
        let columns = columns_of(&pool, q).await.map_err(db)?;
        let mut pairs = Vec::with_capacity(columns.len());
        for c in &columns {
            pairs.push(format!(
                "'{}', q.{}",
                c.name,
                quote_ident("column", &c.name)?
            ));
        }
        let bound = Bound::for_query(&label, key_column, version_column, columns)?;
        // Typed keys compare as themselves (integers travel as JSON numbers); others by their text.
        let filter = if *bound.schema.key_kind() == KeyKind::TextOutput {
            format!("CAST(q.{} AS TEXT)", bound.key)
        } else {
            format!("q.{}", bound.key)
        };
        let sql = format!(
            "SELECT CAST(q.{key} AS TEXT), json_object({pairs}) FROM ({q}) q \
             WHERE {filter} IN (SELECT value FROM json_each(?1))",
            key = bound.key,
            pairs = pairs.join(", ")
        );
        Ok(Self {
            pool,
            sql,
            bound,
            _v: PhantomData,
        })
    }
}

impl<V: DeserializeOwned + Send + Sync + 'static> Source<V> for PgQuery<V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        load_one(self, key).boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        async move {
            let params = self
                .bound
                .schema
                .key_params(keys)
                .map_err(|e| shared(e.into()))?;
            let rows = pg_bind_keys(sqlx::query(&self.sql), params)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| shared(self.bound.db(e)))?;
            let rows = rows
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<serde_json::Value, _>(1)))
                .collect();
            self.bound.all(keys, rows)
        }
        .boxed()
    }
}

impl<V: DeserializeOwned + Send + Sync + 'static> Source<V> for SqliteQuery<V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        load_one(self, key).boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        async move {
            let keys_json = self
                .bound
                .schema
                .key_params(keys)
                .map_err(|e| shared(e.into()))?
                .json();
            let rows = sqlx::query(&self.sql)
                .bind(keys_json)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| shared(self.bound.db(e)))?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let k: String = r.get(0);
                let text: String = r.get(1);
                let json = serde_json::from_str(&text).map_err(|e| {
                    shared(SqlError::BadRow {
                        key: k.clone(),
                        table: self.bound.spec.table.clone(),
                        problem: e.to_string(),
                    })
                })?;
                out.push((k, json));
            }
            self.bound.all(keys, out)
        }
        .boxed()
    }
}

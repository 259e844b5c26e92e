//! A read-only query as a namespace's [`Source`]: any `SELECT` that yields one row per key (a join, a view, a
//! projection), filtered by its key column. Rows map to values like table rows (serde via JSON); a column named
//! like the version column, when the query has one, is the version. There is no [`strata_core::Sink`]: a
//! query-bound namespace is written through the tables it reads, and learns of changes by TTL, invalidation or CDC.
//!
//! The query is wrapped, never rewritten: `SELECT … FROM (<query>) q WHERE q.<key> = ANY(…)`. Its columns are read
//! once at bind time (`describe`), so a query that does not parse or lacks the key column is an error then, not on
//! the first read.

use std::collections::HashMap;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::{Column, Executor, PgPool, Row, SqlitePool};
use strata_core::{Fetched, SharedError, Source};

use crate::{quote_ident, shared, Bound, SqlError};

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
            problem: "give one SELECT statement (no `;` inside)".into(),
        });
    }
    Ok(q)
}

/// The column names of `query`'s rows, from the database's own description of the statement (nothing runs).
async fn columns_of<'e, E: Executor<'e>>(
    executor: E,
    query: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!("SELECT * FROM ({query}) q");
    let described = executor.describe(&sql).await?;
    Ok(described
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect())
}

/// One key through the source's batch query (the statement is the same either way).
async fn load_one<V, S: Source<V>>(source: &S, key: &str) -> Result<Fetched<V>, SharedError> {
    let keys = [key.to_owned()];
    let mut all = source.load_many(&keys).await?;
    Ok(all.remove(key).unwrap_or_else(Fetched::absent))
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
        let sql = format!(
            "SELECT q.{key}::text, to_jsonb(q) FROM ({q}) q WHERE q.{key}::text = ANY($1::text[])",
            key = bound.key
        );
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
            pairs.push(format!("'{c}', q.{}", quote_ident("column", c)?));
        }
        let bound = Bound::for_query(&label, key_column, version_column, columns)?;
        let sql = format!(
            "SELECT CAST(q.{key} AS TEXT), json_object({pairs}) FROM ({q}) q \
             WHERE CAST(q.{key} AS TEXT) IN (SELECT value FROM json_each(?1))",
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
            let rows = sqlx::query(&self.sql)
                .bind(keys)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| shared(self.bound.db(e)))?;
            let rows = rows
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<serde_json::Value, _>(1)))
                .collect();
            self.bound.all(rows)
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
            let keys_json = serde_json::to_string(keys).expect("strings serialize");
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
            self.bound.all(out)
        }
        .boxed()
    }
}

//! A read-only query as a namespace's [`Source`]: any `SELECT` that yields one row per key (a join, a view, a
//! projection), filtered by its key column. Rows map to values like table rows (serde via JSON); a column named
//! like the version column, when the query has one, is the version. There is no [`strata_core::Sink`]: a
//! query-bound namespace is written through the tables it reads, and learns of changes by TTL, invalidation or CDC.
//!
//! The query is wrapped, never rewritten: `SELECT … FROM (<query>) q WHERE q.<key> = ANY(…)` (the dialect's load,
//! the same one a table's rows are read with). Its columns and the key column's type are read once at bind time
//! (`describe`), so a query that does not parse or lacks the key column is an error then, not on the first read.
//! Keys follow the key column's type like a table's (canonical integers, text, lowercase uuids; see
//! [`crate::schema`]) and are compared as parameters of that type; a key column of any other type is compared by
//! its text output (`q.key::text`, `CAST(q.key AS TEXT)`), exactly, so only the spelling the database prints names
//! a row. A single-key load runs the batch statement with one key.

use std::collections::HashMap;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::Pool;
use strata_core::{Fetched, SharedError, Source};

use crate::bound::Bound;
use crate::dialect::{Dialect, Driver, Postgres, Sqlite};
use crate::schema::{query_key_kind, ColumnInfo};
use crate::table::Reader;
use crate::{SqlError, TableSchema, TypedSource};

/// A query bound to a PostgreSQL pool.
pub type PgQuery<V> = Query<Postgres, V>;

/// A query bound to a SQLite pool.
pub type SqliteQuery<V> = Query<Sqlite, V>;

/// A query of dialect `D` as a [`Source`] of `V` ([`PgQuery`], [`SqliteQuery`]).
pub struct Query<D: Dialect, V> {
    read: Reader<D>,
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
async fn columns_of<DB: Driver>(
    pool: &Pool<DB>,
    query: &str,
) -> Result<Vec<ColumnInfo>, sqlx::Error> {
    let sql = format!("SELECT * FROM ({query}) q");
    Ok(DB::describe(pool, &sql)
        .await?
        .into_iter()
        .map(|(name, ty)| {
            let kind = query_key_kind(&ty);
            ColumnInfo::of_query(name, ty, kind)
        })
        .collect())
}

impl<D: Dialect, V> TypedSource for Query<D, V> {
    fn schema(&self) -> &std::sync::Arc<TableSchema> {
        &self.read.bound.schema
    }
}

impl<D: Dialect, V> Query<D, V> {
    /// Binds `query` (its rows have `key_column`; `version_column` is used when present).
    pub async fn bind(
        pool: Pool<D::Db>,
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
        // A row's document: every column of the query, in its order.
        let document: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let bound = Bound::for_query(&label, key_column, version_column, columns)?;
        Ok(Self {
            read: Reader::new(pool, bound, &format!("({q})"), "q", &document)?,
            _v: PhantomData,
        })
    }
}

impl<D: Dialect, V: DeserializeOwned + Send + Sync + 'static> Source<V> for Query<D, V> {
    /// One key through the batch statement (the statement is the same either way).
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        async move {
            let keys = [key.to_owned()];
            let mut all = self.read.all(&keys).await?;
            Ok(all.remove(key).unwrap_or_else(Fetched::absent))
        }
        .boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        self.read.all(keys).boxed()
    }
}

//! A table as a [`Source`] and [`Sink`]: one copy of the plumbing, running a [`Dialect`]'s statements.
//!
//! # Invariants
//! - Binding reads the catalog once: a missing table or column, a key column without a canonical form, or a name
//!   that is not a plain identifier (the table's, a column's) is an error then, not on the first read. The load and
//!   the deletes are built then too, from the quoted names; only an upsert's text is spelled per write, from the
//!   value's fields.
//! - Every write checks before any SQL what [`Table::check_write`] checks (the key is canonical, the value fits the
//!   columns), and needs the version column ([`SqlError::NoVersionColumn`] otherwise).
//! - Every write bumps the version in the same statement and returns the one the database committed; a delete
//!   returns the deleted row's version + 1 (the tombstone's); a fenced write or delete changes the row only when
//!   its version is newer than the row's.
//! - A single-key load takes only the row of its key; a batch refuses a row nobody asked for, or two for one key.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Pool;
use strata_core::{Fetched, Rejection, SharedError, Sink, Source, WriteErrorKind};

use crate::bound::Bound;
use crate::dialect::{
    bind_key, Dialect, Driver, Fenced, FencedBatch, Param, Postgres, Relation, Sqlite, WriteColumns,
};
use crate::{
    quote_ident, shared, BadValue, KeyError, SqlError, TableSchema, TableSpec, TypedSource,
};

/// A PostgreSQL table as a [`Source`] and [`Sink`] of `V`.
pub type PgTable<V> = Table<Postgres, V>;

/// A SQLite table as a [`Source`] and [`Sink`] of `V`: the embedded default (see [`Sqlite`] for its booleans and
/// the `synchronous` setting write-behind wants).
pub type SqliteTable<V> = Table<Sqlite, V>;

/// What a bound table or query reads with: its pool, what it was bound with, and its batch load (built at bind).
pub(crate) struct Reader<D: Dialect> {
    pub(crate) pool: Pool<D::Db>,
    pub(crate) bound: Bound,
    load: String,
}

impl<D: Dialect> Reader<D> {
    /// Builds the load of `bound` from `relation` (`alias` qualifies its columns; `columns` make up a row's
    /// document, in order).
    pub(crate) fn new(
        pool: Pool<D::Db>,
        bound: Bound,
        relation: &str,
        alias: &'static str,
        columns: &[String],
    ) -> Result<Self, SqlError> {
        let load = D::load(
            &bound,
            &Relation {
                from: relation,
                alias,
                columns,
            },
        )?;
        Ok(Self { pool, bound, load })
    }

    /// The rows of `keys` (each canonical, or the batch is refused before SQL): each row's key as text and its
    /// document.
    async fn rows(&self, keys: &[String]) -> Result<Vec<(String, serde_json::Value)>, SqlError> {
        let b = &self.bound;
        let params = b.schema.key_params(keys)?;
        let q = D::bind_keys(sqlx::query(&self.load), params);
        let rows = D::Db::run(&self.pool, q).await.map_err(|e| b.db(e))?.rows;
        rows.iter()
            .map(|r| {
                let k = D::Db::text(r, 0);
                let json = D::Db::json(r, 1).map_err(|problem| SqlError::BadRow {
                    key: k.clone(),
                    table: b.spec.table.clone(),
                    problem,
                })?;
                Ok((k, json))
            })
            .collect()
    }

    /// The row of `key` only ([`Bound::one`]).
    pub(crate) async fn one<V: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Fetched<V>, SharedError> {
        let rows = self.rows(&[key.to_owned()]).await.map_err(shared)?;
        self.bound.one(key, rows)
    }

    /// The rows of a batch, by key ([`Bound::all`]).
    pub(crate) async fn all<V: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Fetched<V>>, SharedError> {
        let rows = self.rows(keys).await.map_err(shared)?;
        self.bound.all(keys, rows)
    }
}

/// The deletes of a table with a version column, built at bind.
struct Deletes {
    /// `DELETE … WHERE key = $1 RETURNING version`.
    delete: String,
    /// `DELETE … WHERE key = $1 AND version < $2`.
    fenced: String,
}

/// A table of dialect `D` as a [`Source`] and [`Sink`] of `V` ([`PgTable`], [`SqliteTable`]).
pub struct Table<D: Dialect, V> {
    read: Reader<D>,
    /// `None` without a version column (every write is then [`SqlError::NoVersionColumn`]).
    deletes: Option<Deletes>,
    _v: PhantomData<fn() -> V>,
}

impl<D: Dialect, V> std::fmt::Debug for Table<D, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(D::TABLE)
            .field("spec", &self.read.bound.spec)
            .finish_non_exhaustive()
    }
}

impl<D: Dialect, V> Table<D, V> {
    /// Binds `spec` on `pool`: checks the names and reads the table's columns and their types, `NOT NULL`
    /// constraints and defaults (a key column of a type without a canonical spelling is refused).
    pub async fn bind(pool: Pool<D::Db>, spec: TableSpec) -> Result<Self, SqlError> {
        let table = quote_ident("table", &spec.table)?;
        let (catalog, param) = D::catalog(&table);
        let mut q = sqlx::query(&catalog);
        if let Some(p) = param {
            q = D::Db::bind(q, Param::Text(p));
        }
        let rows = D::Db::run(&pool, q)
            .await
            .map_err(|source| SqlError::Database {
                table: spec.table.clone(),
                source,
            })?
            .rows;
        let columns = rows.iter().map(D::column).collect();
        let bound = Bound::new(spec, columns)?;
        let deletes = bound.version.as_deref().map(|version| {
            let (table, key) = (&bound.table, &bound.key);
            let k = D::placeholder(1, Some(bound.schema.key_kind()));
            Deletes {
                delete: format!("DELETE FROM {table} WHERE {key} = {k} RETURNING {version}"),
                fenced: format!(
                    "DELETE FROM {table} WHERE {key} = {k} AND {version} < {v}",
                    v = D::placeholder(2, None)
                ),
            }
        });
        // A row's document: the value columns, then the version and the key (dropped again by `Bound::fields`).
        let document: Vec<String> = bound
            .columns
            .iter()
            .chain(bound.spec.version_column.iter())
            .chain(std::iter::once(&bound.spec.key_column))
            .cloned()
            .collect();
        let relation = bound.table.clone();
        Ok(Self {
            read: Reader::new(pool, bound, &relation, "t", &document)?,
            deletes,
            _v: PhantomData,
        })
    }

    /// `key` if it is the canonical spelling of a key of this table, else an error naming it and the form.
    pub fn canonical_key(&self, key: &str) -> Result<String, KeyError> {
        self.read.bound.schema.canonical_key(key)
    }

    /// Checks a value against the table's column types (what every write of this table checks first).
    pub fn validate(&self, value: &serde_json::Value) -> Result<(), BadValue> {
        self.read.bound.schema.validate(value)
    }

    /// What every write of `key` with `value` checks before any SQL — the key is canonical, the value fits the
    /// columns — without writing: [`SqlError::BadKey`] or [`SqlError::BadValue`] (naming key, field and type).
    /// For callers that acknowledge before they write (write-behind).
    pub fn check_write(&self, key: &str, value: &V) -> Result<(), SqlError>
    where
        V: Serialize,
    {
        self.read.bound.fields(key, value).map(drop)
    }

    fn deletes(&self) -> Result<&Deletes, SqlError> {
        self.deletes
            .as_ref()
            .ok_or_else(|| SqlError::NoVersionColumn(self.read.bound.spec.table.clone()))
    }
}

impl<D: Dialect, V> TypedSource for Table<D, V> {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.read.bound.schema
    }
}

impl<D: Dialect, V: DeserializeOwned + Send + Sync + 'static> Source<V> for Table<D, V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        self.read.one(key).boxed()
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        self.read.all(keys).boxed()
    }
}

impl<D: Dialect, V: Serialize + Send + Sync + 'static> Sink<V> for Table<D, V> {
    fn check(&self, key: &str, value: &V) -> Result<(), SharedError> {
        self.check_write(key, value)
            .map_err(|e| Arc::new(e) as SharedError)
    }

    fn classify(&self, error: &SharedError) -> WriteErrorKind {
        SqlError::classify(error)
    }

    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>> {
        async move {
            let b = &self.read.bound;
            let version = b.version_or_err().map_err(shared)?;
            let param = b.key_param(key).map_err(shared)?;
            let fields = b.fields(key, value).map_err(shared)?;
            let names: Vec<String> = fields.keys().cloned().collect();
            let sql = D::upsert(b, version, &WriteColumns::new(&names).map_err(shared)?);
            let q = D::Db::bind(bind_key(sqlx::query(&sql), param), Param::Doc(fields));
            let row = D::Db::run(&self.read.pool, q)
                .await
                .and_then(|ran| ran.rows.into_iter().next().ok_or(sqlx::Error::RowNotFound))
                .map_err(|e| shared(b.write_error::<D>(key, e)))?;
            Ok(D::Db::version(&row))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        async move {
            let b = &self.read.bound;
            let sql = &self.deletes().map_err(shared)?.delete;
            let param = b.key_param(key).map_err(shared)?;
            let rows = D::Db::run(&self.read.pool, bind_key(sqlx::query(sql), param))
                .await
                .map_err(|e| shared(b.write_error::<D>(key, e)))?
                .rows;
            Ok(rows.first().map(|r| D::Db::version(r) + 1))
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

    /// The batch as the dialect writes it (PostgreSQL: one `unnest` statement; SQLite: one transaction of single
    /// statements), after every item passed the checks of a write and the batch shares one column set.
    fn upsert_fenced_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a V, u64)],
    ) -> BoxFuture<'a, Result<Vec<bool>, SharedError>> {
        async move {
            if items.is_empty() {
                return Ok(Vec::new());
            }
            let b = &self.read.bound;
            let version = b.version_or_err().map_err(shared)?;
            let (names, docs) = b.batch_fields(items).map_err(shared)?;
            let batch = FencedBatch {
                pool: &self.read.pool,
                bound: b,
                version,
                columns: WriteColumns::new(&names).map_err(shared)?,
                items: items
                    .iter()
                    .zip(docs)
                    .map(|(&(key, _, version), doc)| Fenced { key, doc, version })
                    .collect(),
            };
            D::upsert_fenced_many(batch).await.map_err(shared)
        }
        .boxed()
    }

    fn delete_fenced<'a>(
        &'a self,
        key: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let b = &self.read.bound;
            let sql = &self.deletes().map_err(shared)?.fenced;
            let param = b.key_param(key).map_err(shared)?;
            let v = b.version_i64(key, version).map_err(shared)?;
            let q = D::Db::bind(bind_key(sqlx::query(sql), param), Param::Int(v));
            let done = D::Db::run(&self.read.pool, q)
                .await
                .map_err(|e| shared(b.write_error::<D>(key, e)))?
                .done;
            Ok(D::rows_affected(&done) > 0)
        }
        .boxed()
    }
}

//! What differs between the databases, said once per database: a [`Dialect`] supplies its statements, its catalog
//! query, how keys and JSON documents travel as parameters and how its errors read; [`Table`](crate::Table) and
//! [`Query`](crate::Query) are the one copy of the plumbing that runs them.
//!
//! # Why the trait is shaped so
//! - **Zero-sized types, static dispatch.** [`Postgres`] and [`Sqlite`] carry no state: a table is
//!   `Table<Postgres, V>` ([`PgTable`](crate::PgTable)) or `Table<Sqlite, V>`, so every call is resolved at compile
//!   time and a table holds nothing it did not hold before (its pool, its bound names, its statements).
//! - **SQL as text, built at bind.** A dialect turns the quoted identifiers into statement text: the load (of a
//!   table or of a wrapped query) is built once when the table or query is bound, as are the deletes (one template
//!   for both dialects, the dialect spelling only the parameters). Only the upserts are spelled per write, because
//!   their column list is the value's fields. The catalog is a statement too (`pg_attribute` with the table as a
//!   parameter; `PRAGMA table_info`, which takes none), and a catalog row maps to a column by the dialect.
//! - **sqlx's generics stated once.** Running a statement generically over `sqlx::Database` wants a handful of
//!   higher-ranked bounds (the pool and its connections execute, arguments convert, integers, texts and JSON
//!   documents bind and decode) at every generic call site. [`Driver`] states them once, in a blanket impl for every
//!   driver that meets them, and [`Dialect::Db`] is bounded by it, so the plumbing is generic without repeating a
//!   bound; sqlx's own `Json` picks each driver's document type (`jsonb`; text). A dialect adds only what its driver
//!   does differently: a batch of keys (a typed array; a JSON text), a result's row count, and the one write that is
//!   a different strategy rather than different text — a fenced batch (one `unnest` statement; a transaction of
//!   single statements).
//! - **Errors by code.** A dialect reads its own codes: which refuse a value (and name its column), which mean the
//!   database is unavailable.
//! - **Sealed by its signatures.** The hidden methods take the crate's private types (catalog columns, typed key
//!   parameters, bound names), so only this crate can implement or call them; the `private_interfaces` lint, which
//!   flags exactly that, is allowed for this module. Callers name a dialect; they do not write one.
//!
//! # Invariants
//! - Every value (key, document, version) is a bound parameter; identifiers are validated and quoted
//!   ([`quote_ident`]) before they reach any statement text. A column name is embedded in a JSON path (`'$.name'`)
//!   or a JSON object key (`'name'`) only after it passed that validation.
//! - [`Driver::run`] reads a statement's whole answer (its rows and its summary), as `fetch_all` and `execute` do;
//!   a statement that must return a row and returns none is sqlx's `RowNotFound`, as with `fetch_one`.
//! - Keys are bound as the key column's type (see [`crate::schema`]); a column is never cast to compare a key,
//!   except a query's key column of a type without a canonical form, compared by its text output.
//! - A database error carries no dialect, so classifying one ([`Rejection`](strata_core::Rejection)) asks every
//!   dialect's codes, in the order PostgreSQL, SQLite; a failed write of a table asks its own dialect whether the
//!   database refused the value.

// The seal: see "Sealed by its signatures" above.
#![allow(private_interfaces)]

use std::borrow::Cow;

use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use sqlx::types::Json;
use sqlx::{
    Column, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type,
};
use strata_core::WriteErrorKind;

use crate::bound::Bound;
use crate::schema::{ColumnInfo, KeyKind, KeyParam, KeyParams};
use crate::{quote_ident, SqlError};

mod postgres;
mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

/// A statement of driver `DB`, with its parameters bound so far.
pub type Statement<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// A parameter the plumbing binds the same way on every driver.
pub(crate) enum Param {
    /// A key of an integer column, or a version.
    Int(i64),
    /// A key of a text (or uuid) column, or a catalog query's table name.
    Text(String),
    /// A value's fields as one JSON document (`jsonb`; text).
    Doc(serde_json::Map<String, serde_json::Value>),
}

impl From<KeyParam> for Param {
    fn from(key: KeyParam) -> Self {
        match key {
            KeyParam::Int(n) => Param::Int(n),
            KeyParam::Text(s) => Param::Text(s),
        }
    }
}

/// What a statement gave back: the rows it returned and what it did (the rows it changed).
pub struct Ran<DB: Database> {
    /// The rows, in order.
    pub rows: Vec<DB::Row>,
    /// The driver's summary.
    pub done: DB::QueryResult,
}

/// A sqlx driver the tables and queries run on: its pool and connections execute statements; integers, texts and
/// JSON documents bind and decode. Implemented for every driver that can (PostgreSQL and SQLite).
pub trait Driver: Database {
    /// Runs `q` on `pool`.
    fn run<'a>(
        pool: &'a Pool<Self>,
        q: Statement<'a, Self>,
    ) -> BoxFuture<'a, Result<Ran<Self>, sqlx::Error>>;

    /// The name and type name of each column of `sql`'s rows, from the database's description of the statement
    /// (nothing runs).
    fn describe<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, sqlx::Error>>;

    /// Binds the next parameter.
    #[doc(hidden)]
    fn bind(q: Statement<'_, Self>, p: Param) -> Statement<'_, Self>;

    /// Column `i` of `row` as text.
    fn text(row: &Self::Row, i: usize) -> String;

    /// Column 0 of `row` as a version (a negative one as 0).
    fn version(row: &Self::Row) -> u64;

    /// Column `i` of `row` as a JSON document, or why it is not one.
    fn json(row: &Self::Row, i: usize) -> Result<serde_json::Value, String>;
}

impl<DB> Driver for DB
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<serde_json::Map<String, serde_json::Value>>: Encode<'q, DB> + Type<DB>,
    for<'r> Json<serde_json::Value>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn run<'a>(
        pool: &'a Pool<Self>,
        q: Statement<'a, Self>,
    ) -> BoxFuture<'a, Result<Ran<Self>, sqlx::Error>> {
        async move {
            let mut rows = Vec::new();
            let mut done = Self::QueryResult::default();
            let mut results = pool.fetch_many(q);
            while let Some(step) = results.try_next().await? {
                match step {
                    sqlx::Either::Left(d) => done.extend(std::iter::once(d)),
                    sqlx::Either::Right(row) => rows.push(row),
                }
            }
            Ok(Ran { rows, done })
        }
        .boxed()
    }

    fn describe<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, sqlx::Error>> {
        use sqlx::TypeInfo;
        async move {
            let described = pool.describe(sql).await?;
            Ok(described
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
                .collect())
        }
        .boxed()
    }

    fn bind(q: Statement<'_, Self>, p: Param) -> Statement<'_, Self> {
        match p {
            Param::Int(n) => q.bind(n),
            Param::Text(s) => q.bind(s),
            Param::Doc(doc) => q.bind(Json(doc)),
        }
    }

    fn text(row: &Self::Row, i: usize) -> String {
        row.get(i)
    }

    fn version(row: &Self::Row) -> u64 {
        row.get::<i64, _>(0).max(0) as u64
    }

    fn json(row: &Self::Row, i: usize) -> Result<serde_json::Value, String> {
        match row.try_get::<Json<serde_json::Value>, _>(i) {
            Ok(Json(v)) => Ok(v),
            // The parser's own words (a document that is not JSON), as when the text was parsed here.
            Err(sqlx::Error::ColumnDecode { source, .. }) => Err(source.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What a load reads from: a table (`"shop"."price"`) or a wrapped query (`(SELECT …)`), under an alias, with the
/// columns a row's JSON document is made of (SQLite names them; PostgreSQL takes the whole row).
pub(crate) struct Relation<'a> {
    /// The quoted table, or the query in parentheses.
    pub from: &'a str,
    /// The alias every column is qualified with.
    pub alias: &'static str,
    /// The columns of the document, unquoted, in the order the document lists them.
    pub columns: &'a [String],
}

/// A write's column list (the value's fields, without the key and version), quoted once.
pub(crate) struct WriteColumns<'a> {
    /// As the value names them (validated identifiers, so safe inside a JSON path literal).
    pub names: &'a [String],
    /// Quoted.
    pub quoted: Vec<String>,
}

impl<'a> WriteColumns<'a> {
    pub(crate) fn new(names: &'a [String]) -> Result<Self, SqlError> {
        let quoted = names
            .iter()
            .map(|c| quote_ident("column", c))
            .collect::<Result<_, _>>()?;
        Ok(Self { names, quoted })
    }

    /// `, a, b`: the columns after the key in an `INSERT` list.
    pub(crate) fn list(&self) -> String {
        self.quoted.iter().map(|c| format!(", {c}")).collect()
    }

    /// `a = <excluded>.a, b = <excluded>.b, `: the `ON CONFLICT` update of every column, before the version's.
    pub(crate) fn updates(&self, excluded: &str) -> String {
        self.quoted
            .iter()
            .map(|c| format!("{c} = {excluded}.{c}, "))
            .collect()
    }
}

/// One item of a fenced batch, its value already checked and reduced to its fields.
pub(crate) struct Fenced<'a> {
    pub key: &'a str,
    pub doc: serde_json::Map<String, serde_json::Value>,
    pub version: u64,
}

/// A fenced batch, checked and ready: where it goes, and what.
pub(crate) struct FencedBatch<'a, D: Dialect> {
    pub pool: &'a Pool<D::Db>,
    pub bound: &'a Bound,
    /// The version column, quoted.
    pub version: &'a str,
    /// The columns every item's document has.
    pub columns: WriteColumns<'a>,
    pub items: Vec<Fenced<'a>>,
}

/// A database's SQL and conventions (see the module doc): [`Postgres`] or [`Sqlite`].
pub trait Dialect: Send + Sync + Sized + 'static {
    /// The sqlx driver.
    type Db: Driver;

    /// The table type's name, for `Debug` (`PgTable`, `SqliteTable`).
    const TABLE: &'static str;

    /// The catalog statement for `table` (quoted) and the one parameter it takes, if any: a row per column.
    #[doc(hidden)]
    fn catalog(table: &str) -> (Cow<'static, str>, Option<String>);

    /// A catalog row as a column: its type, `NOT NULL` constraint and default.
    #[doc(hidden)]
    fn column(row: &<Self::Db as Database>::Row) -> ColumnInfo;

    /// The load of every row whose key is in parameter 1 (a batch, as `bind_keys` binds it): each row as its key's
    /// text and a JSON document.
    #[doc(hidden)]
    fn load(b: &Bound, from: &Relation<'_>) -> Result<String, SqlError>;

    /// Parameter `n` (from 1), typed as the key column when it is the key.
    #[doc(hidden)]
    fn placeholder(n: usize, key: Option<&KeyKind>) -> String;

    /// `INSERT … ON CONFLICT … DO UPDATE`, bumping the version (1 for a new row), `RETURNING` it: parameter 1 the
    /// key, 2 the document ([`Param::Doc`]).
    #[doc(hidden)]
    fn upsert(b: &Bound, version: &str, columns: &WriteColumns<'_>) -> String;

    /// Binds a batch of keys.
    #[doc(hidden)]
    fn bind_keys(q: Statement<'_, Self::Db>, keys: KeyParams) -> Statement<'_, Self::Db>;

    /// How many rows a statement changed.
    #[doc(hidden)]
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// Writes a batch where each item's version is newer than the row's (or the row is absent): whether each was.
    #[doc(hidden)]
    fn upsert_fenced_many(
        batch: FencedBatch<'_, Self>,
    ) -> BoxFuture<'_, Result<Vec<bool>, SqlError>>;

    /// The column and the rule of a database error that refuses a value (a constraint, a data exception); `None`
    /// when the error is not a refusal.
    #[doc(hidden)]
    fn refusal(d: &dyn sqlx::error::DatabaseError) -> Option<(Option<String>, String)>;

    /// How a database error code reads when it is this dialect's "not available" (a timeout, a lost connection,
    /// a busy database); `None` otherwise.
    #[doc(hidden)]
    fn unavailable(code: &str) -> Option<WriteErrorKind>;
}

/// Binds a key as the key column's type.
pub(crate) fn bind_key<DB: Driver>(q: Statement<'_, DB>, key: KeyParam) -> Statement<'_, DB> {
    DB::bind(q, key.into())
}

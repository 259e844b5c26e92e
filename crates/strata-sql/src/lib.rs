//! `strata-sql`: PostgreSQL and SQLite tables as a namespace's source of truth ([`Source`] and [`Sink`]), and
//! read-only queries as a [`Source`].
//!
//! # Shape
//! One [`Table`] and one [`Query`] are the plumbing — binding, loads, the checks before every write, version
//! bumping, batch checks, error classification — and a [`Dialect`] ([`Postgres`], [`Sqlite`]) is what one database
//! says differently: its statements, its catalog query, how a batch of keys is bound, how its errors read (see
//! [`dialect`] for why the trait is shaped as it is). [`PgTable`], [`SqliteTable`], [`PgQuery`] and
//! [`SqliteQuery`] name the four combinations. So each dialect's SQL is written once, in its dialect, and each step
//! of the plumbing once, for both: what a table or query was bound with (the quoted names, the catalog's
//! [`TableSchema`]), the value checks and the decoding of rows are dialect-free.
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
//!
//! [`Source`]: strata_core::Source
//! [`Sink`]: strata_core::Sink

use std::sync::Arc;

use strata_core::{SharedError, WriteErrorKind};

mod bound;
pub mod dialect;
pub mod query;
pub mod schema;
mod table;

pub use dialect::{Dialect, Postgres, Sqlite};
pub use query::{PgQuery, Query, SqliteQuery};
pub use schema::{BadValue, KeyError, KeyKind, TableSchema};
pub use table::{PgTable, SqliteTable, Table};

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
                    // The error carries no dialect: each one's codes are asked (see `dialect`).
                    let code = d.code().unwrap_or_default();
                    Postgres::unavailable(&code)
                        .or_else(|| Sqlite::unavailable(&code))
                        .unwrap_or(WriteErrorKind::Failed)
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

//! SQLite's statements, catalog and codes (see [`Sqlite`]).

use std::borrow::Cow;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::Row;
use strata_core::WriteErrorKind;

use super::{
    bind_key, Dialect, Driver, Fenced, FencedBatch, Param, Relation, Statement, WriteColumns,
};
use crate::bound::Bound;
use crate::schema::{ColumnInfo, KeyKind, KeyParams};
use crate::{quote_ident, SqlError};

/// SQLite (bundled, through sqlx): rows read as `json_object('column', column, …)` and written as
/// `json_extract(?2, '$.column')` per column; a batch of keys is one JSON array (`IN (SELECT value FROM
/// json_each(?1))`), integers as JSON numbers so they compare as integers, exactly.
///
/// SQLite has no boolean type: a `bool` column reads back as `0`/`1`, so a `bool` field needs a serde adapter (or
/// an integer field). For the write-behind journal's checkpoint to be safe against power loss, open the pool with
/// `synchronous=FULL`; `NORMAL` in WAL mode survives process crashes only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sqlite;

type Q<'q> = Statement<'q, sqlx::Sqlite>;

/// `, json_extract(?2, '$.a'), …`: the document's fields, in the order of the `INSERT` list.
fn values(columns: &WriteColumns<'_>) -> String {
    // The names are validated identifiers, so they are safe inside the JSON path literal.
    columns
        .names
        .iter()
        .map(|c| format!(", json_extract(?2, '$.{c}')"))
        .collect()
}

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;

    const TABLE: &'static str = "SqliteTable";

    /// `PRAGMA table_info`, which takes no parameter: the table is the quoted name, in the text.
    fn catalog(table: &str) -> (Cow<'static, str>, Option<String>) {
        (format!("PRAGMA table_info({table})").into(), None)
    }

    fn column(r: &SqliteRow) -> ColumnInfo {
        ColumnInfo::sqlite(
            r.get("name"),
            r.get("type"),
            r.get::<i64, _>("notnull") != 0,
            r.get::<Option<String>, _>("dflt_value").is_some(),
        )
    }

    /// `SELECT CAST(t.key AS TEXT), json_object('a', t."a", …) FROM <relation> t WHERE t.key IN (SELECT value FROM
    /// json_each(?1))`; a query's key column without a canonical form compares by its text (`CAST(q.key AS TEXT)`).
    fn load(b: &Bound, from: &Relation<'_>) -> Result<String, SqlError> {
        let Relation {
            from,
            alias,
            columns,
        } = from;
        let mut pairs = Vec::with_capacity(columns.len());
        for c in columns.iter() {
            pairs.push(format!("'{c}', {alias}.{}", quote_ident("column", c)?));
        }
        let key = format!("{alias}.{}", b.key);
        let filter = if *b.schema.key_kind() == KeyKind::TextOutput {
            format!("CAST({key} AS TEXT)")
        } else {
            key.clone()
        };
        Ok(format!(
            "SELECT CAST({key} AS TEXT), json_object({pairs}) FROM {from} {alias} \
             WHERE {filter} IN (SELECT value FROM json_each(?1))",
            pairs = pairs.join(", ")
        ))
    }

    fn placeholder(n: usize, _key: Option<&KeyKind>) -> String {
        format!("?{n}")
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn upsert(b: &Bound, version: &str, columns: &WriteColumns<'_>) -> String {
        format!(
            "INSERT INTO {table} ({key}{insert_cols}, {version}) VALUES (?1{values}, 1) \
             ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = {table}.{version} + 1 \
             RETURNING {version}",
            table = b.table,
            key = b.key,
            insert_cols = columns.list(),
            values = values(columns),
            updates = columns.updates("excluded"),
        )
    }

    fn bind_keys(q: Q<'_>, keys: KeyParams) -> Q<'_> {
        q.bind(keys.json())
    }

    /// One transaction for the whole batch (one commit, one sync), one fenced `INSERT … ON CONFLICT … WHERE
    /// version < excluded.version` per item.
    fn upsert_fenced_many(
        batch: FencedBatch<'_, Self>,
    ) -> BoxFuture<'_, Result<Vec<bool>, SqlError>> {
        async move {
            let (b, version, columns) = (batch.bound, batch.version, &batch.columns);
            let sql = format!(
                "INSERT INTO {table} ({key}{insert_cols}, {version}) VALUES (?1{values}, ?3) \
                 ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = excluded.{version} \
                 WHERE {table}.{version} < excluded.{version} RETURNING 1",
                table = b.table,
                key = b.key,
                insert_cols = columns.list(),
                values = values(columns),
                updates = columns.updates("excluded"),
            );
            let mut tx = batch.pool.begin().await.map_err(|e| b.db(e))?;
            let mut out = Vec::with_capacity(batch.items.len());
            for Fenced {
                key,
                doc,
                version: n,
            } in batch.items
            {
                let v = b.version_i64(key, n)?;
                let param = b.key_param(key)?;
                let row = Self::Db::bind(bind_key(sqlx::query(&sql), param), Param::Doc(doc))
                    .bind(v)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| b.write_error::<Self>(key, e))?;
                out.push(row.is_some());
            }
            tx.commit().await.map_err(|e| b.db(e))?;
            Ok(out)
        }
        .boxed()
    }

    /// Extended codes: 275 `CHECK`, 787 foreign key, 1299 `NOT NULL`, 1555 primary key, 2067 unique, 3091
    /// `STRICT` datatype, 1811 a trigger's `RAISE(ABORT, …)`, 19 any other constraint. SQLite names `table.column`
    /// after the colon for `NOT NULL` and unique.
    fn refusal(d: &dyn sqlx::error::DatabaseError) -> Option<(Option<String>, String)> {
        let code = d.code().unwrap_or_default();
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

    /// `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6): another connection holds the database.
    fn unavailable(code: &str) -> Option<WriteErrorKind> {
        ["5", "6"]
            .contains(&code)
            .then_some(WriteErrorKind::Unavailable { timed_out: false })
    }
}

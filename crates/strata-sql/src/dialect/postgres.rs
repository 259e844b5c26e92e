//! PostgreSQL's statements, catalog and codes (see [`Postgres`]).

use std::borrow::Cow;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::postgres::{PgDatabaseError, PgQueryResult, PgRow};
use sqlx::Row;
use strata_core::WriteErrorKind;

use super::{Dialect, FencedBatch, Relation, Statement, WriteColumns};
use crate::bound::Bound;
use crate::schema::{ColumnInfo, KeyKind, KeyParams};
use crate::SqlError;

/// PostgreSQL (the wire protocol, through sqlx): rows read as `to_jsonb(row)` and written through
/// `jsonb_populate_record(NULL::table, $doc)`, so column types are PostgreSQL's own; keys travel as `$n::int8`,
/// `::text` or `::text::uuid` (arrays of them for batches).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postgres;

type Q<'q> = Statement<'q, sqlx::Postgres>;

/// The SQL spelling of a typed key parameter (`$n` followed by this), by key kind: `(scalar, array)`.
fn casts(kind: &KeyKind) -> (&'static str, &'static str) {
    match kind {
        KeyKind::Integer { .. } => ("::int8", "::int8[]"),
        KeyKind::Uuid => ("::text::uuid", "::text[]::uuid[]"),
        _ => ("::text", "::text[]"),
    }
}

const CATALOG: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                              format_type(a.atttypid, NULL), a.atttypmod, a.attnotnull, \
                              a.atthasdef OR a.attidentity <> '', a.attgenerated <> '' \
                       FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                       ORDER BY a.attnum";

impl Dialect for Postgres {
    type Db = sqlx::Postgres;

    const TABLE: &'static str = "PgTable";

    /// `pg_attribute` of `to_regclass($1)`: a table that does not exist has no column.
    fn catalog(table: &str) -> (Cow<'static, str>, Option<String>) {
        (CATALOG.into(), Some(table.to_owned()))
    }

    fn column(r: &PgRow) -> ColumnInfo {
        ColumnInfo::postgres(
            r.get(0),
            r.get(1),
            &r.get::<String, _>(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        )
    }

    /// `SELECT t.key::text, to_jsonb(t) FROM <relation> t WHERE t.key = ANY($1::int8[])`; a query's key column
    /// without a canonical form compares by its text output (`q.key::text = ANY($1::text[])`).
    fn load(b: &Bound, from: &Relation<'_>) -> Result<String, SqlError> {
        let kind = b.schema.key_kind();
        let Relation { from, alias, .. } = from;
        let key = format!("{alias}.{}", b.key);
        let filter = if *kind == KeyKind::TextOutput {
            format!("{key}::text")
        } else {
            key.clone()
        };
        Ok(format!(
            "SELECT {key}::text, to_jsonb({alias}) FROM {from} {alias} WHERE {filter} = ANY($1{cast})",
            cast = casts(kind).1
        ))
    }

    fn placeholder(n: usize, key: Option<&KeyKind>) -> String {
        format!("${n}{}", key.map_or("", |k| casts(k).0))
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn upsert(b: &Bound, version: &str, columns: &WriteColumns<'_>) -> String {
        let select_cols: String = columns.quoted.iter().map(|c| format!(", r.{c}")).collect();
        format!(
            "INSERT INTO {table} AS t ({key}{insert_cols}, {version}) \
             SELECT $1{kc}{select_cols}, 1 FROM jsonb_populate_record(NULL::{table}, $2::jsonb) r \
             ON CONFLICT ({key}) DO UPDATE SET {updates}{version} = t.{version} + 1 RETURNING t.{version}",
            table = b.table,
            key = b.key,
            insert_cols = columns.list(),
            updates = columns.updates("EXCLUDED"),
            kc = casts(b.schema.key_kind()).0
        )
    }

    fn bind_keys(q: Q<'_>, keys: KeyParams) -> Q<'_> {
        match keys {
            KeyParams::Int(v) => q.bind(v),
            KeyParams::Text(v) => q.bind(v),
        }
    }

    /// One statement for the whole batch: `unnest` of keys, JSON documents and versions, each document turned
    /// into a row by `jsonb_populate_record`, and `ON CONFLICT … DO UPDATE … WHERE t.version < EXCLUDED.version`.
    fn upsert_fenced_many(
        batch: FencedBatch<'_, Self>,
    ) -> BoxFuture<'_, Result<Vec<bool>, SqlError>> {
        async move {
            let (b, version, columns) = (batch.bound, batch.version, &batch.columns);
            let select_cols: String = columns.quoted.iter().map(|c| format!(", r.{c}")).collect();
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
                insert_cols = columns.list(),
                updates = columns.updates("EXCLUDED"),
                ksc = casts(b.schema.key_kind()).1
            );
            let keys: Vec<String> = batch.items.iter().map(|f| f.key.to_owned()).collect();
            let params = b.schema.key_params(&keys)?;
            let versions: Vec<i64> = batch
                .items
                .iter()
                .map(|f| b.version_i64(f.key, f.version))
                .collect::<Result<_, _>>()?;
            let docs: Vec<serde_json::Value> = batch
                .items
                .into_iter()
                .map(|f| serde_json::Value::Object(f.doc))
                .collect();
            let rows = Self::bind_keys(sqlx::query(&sql), params)
                .bind(&docs)
                .bind(&versions)
                .fetch_all(batch.pool)
                .await
                .map_err(|e| {
                    let first = keys.first().map_or("", String::as_str);
                    b.write_error::<Self>(first, e)
                })?;
            let written: std::collections::HashSet<String> =
                rows.iter().map(|r| r.get::<String, _>(0)).collect();
            Ok(keys.iter().map(|k| written.contains(k)).collect())
        }
        .boxed()
    }

    /// Class 22 (data exception: out of range, numeric overflow, malformed input) and class 23 (integrity:
    /// `NOT NULL` 23502, foreign key 23503, unique 23505, `CHECK` 23514, exclusion 23P01). PostgreSQL names the
    /// column for `NOT NULL` and in the detail of unique and foreign keys (`Key (sku)=(x) already exists.`).
    fn refusal(d: &dyn sqlx::error::DatabaseError) -> Option<(Option<String>, String)> {
        let code = d.code().unwrap_or_default();
        let pg = d.try_downcast_ref::<PgDatabaseError>()?;
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
        Some((field, problem))
    }

    /// `query_canceled` (57014, a `statement_timeout`) timed out; connection exceptions (08), out of resources (53)
    /// and shutting down (57P) are unavailable.
    fn unavailable(code: &str) -> Option<WriteErrorKind> {
        if code == "57014" {
            Some(WriteErrorKind::Unavailable { timed_out: true })
        } else if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
            Some(WriteErrorKind::Unavailable { timed_out: false })
        } else {
            None
        }
    }
}

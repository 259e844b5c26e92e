//! What a table (or query) was bound with, and the checks and decoding every dialect shares.
//!
//! A [`Bound`] holds the configured names, quoted once ([`quote_ident`]), the value columns and the catalog's
//! [`TableSchema`]. Everything here is dialect-free: canonical keys ([`Bound::key_param`]), the value check every
//! write runs before SQL ([`Bound::fields`], [`Bound::batch_fields`]), versions as the database's `i64`, and the
//! decoding of loaded rows, where a single-key load only takes the row of its key ([`Bound::one`]) and a batch
//! refuses a row nobody asked for ([`Bound::all`]).

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use strata_core::{Fetched, SharedError};

use crate::dialect::Dialect;
use crate::schema::{ColumnInfo, KeyParam, TableSchema};
use crate::{quote_ident, shared, SqlError, TableSpec};

/// The quoted names, the column list and the catalog's types a table (or query) was bound with.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    /// The names as configured (a query's label as its table).
    pub(crate) spec: TableSpec,
    /// The table, quoted (a query's label: a query has no table to quote).
    pub(crate) table: String,
    /// The key column, quoted.
    pub(crate) key: String,
    /// The version column, quoted; `None` when there is none (no writes).
    pub(crate) version: Option<String>,
    /// Columns other than the key and version, unquoted.
    pub(crate) columns: Vec<String>,
    /// Canonical keys and value checks.
    pub(crate) schema: Arc<TableSchema>,
}

impl Bound {
    pub(crate) fn new(spec: TableSpec, all_columns: Vec<ColumnInfo>) -> Result<Self, SqlError> {
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
    pub(crate) fn for_query(
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

    pub(crate) fn version_or_err(&self) -> Result<&str, SqlError> {
        self.version
            .as_deref()
            .ok_or_else(|| SqlError::NoVersionColumn(self.spec.table.clone()))
    }

    /// The key as a typed parameter, refused unless canonical.
    pub(crate) fn key_param(&self, key: &str) -> Result<KeyParam, SqlError> {
        Ok(self.schema.key_param(key)?)
    }

    /// The value's fields, checked against the columns' types (the key and version columns dropped).
    pub(crate) fn fields<V: Serialize>(
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
    pub(crate) fn batch_fields<V: Serialize>(
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
    pub(crate) fn version_i64(&self, key: &str, version: u64) -> Result<i64, SqlError> {
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
    pub(crate) fn one<V: DeserializeOwned>(
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
    pub(crate) fn all<V: DeserializeOwned>(
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

    pub(crate) fn db(&self, source: sqlx::Error) -> SqlError {
        SqlError::Database {
            table: self.spec.table.clone(),
            source,
        }
    }

    /// A failed write: the database refusing the value (a data exception, `NOT NULL`, `CHECK`, unique, foreign
    /// key) is the value's fault ([`SqlError::BadValue`], naming the column when the database does, as the dialect
    /// reads it); anything else is the database's.
    pub(crate) fn write_error<D: Dialect>(&self, key: &str, source: sqlx::Error) -> SqlError {
        if let sqlx::Error::Database(d) = &source {
            if let Some((field, problem)) = D::refusal(d.as_ref()) {
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
}

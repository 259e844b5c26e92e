//! What the catalog says about a bound table or query, as a [`TableSchema`]: the canonical spelling of its keys and
//! the JSON each column accepts. It is read once, when the table or query is bound ([`crate::PgTable::bind`],
//! [`crate::SqliteTable::bind`], [`crate::PgQuery::bind`], [`crate::SqliteQuery::bind`]), and every read, write and
//! delete goes through it, so a key names exactly one row and a value that does not fit is refused before any SQL.
//!
//! # One key, one row: canonical keys
//! A cache key is the key column's value in one canonical spelling, and only that spelling is accepted: any other
//! is refused ([`KeyError`], naming the key and the expected form), never mapped, so no two keys ever name the
//! same row. The forms ([`KeyKind`]):
//! - **integers** (PostgreSQL `smallint`, `integer`, `bigint`; SQLite columns of INTEGER affinity): decimal digits
//!   with an optional leading `-`; no `+`, no leading zeros, no spaces, no `-0`, no fraction or exponent; within
//!   the column's range (`smallint` −32768…32767, `integer` 32 bits, `bigint` and SQLite 64 bits). `42`, `-7`, `0`
//!   are keys; `042`, `+42`, ` 42`, `42abc`, `42.9` are refused.
//! - **text** (PostgreSQL `text`, `varchar(n)`; SQLite TEXT affinity or no declared type): the string as is
//!   (byte for byte, case and spaces kept), without NUL; for `varchar(n)` at most `n` characters.
//! - **uuid** (PostgreSQL `uuid`; SQLite columns declared `UUID`): lowercase hyphenated `8-4-4-4-12` hex digits;
//!   uppercase, braces or a form without hyphens is refused.
//! - **text output** (query-bound namespaces only, for a key column of any other type): accepted as is and
//!   compared with the column's text output exactly (`q.key::text`, `CAST(q.key AS TEXT)`), so only the spelling
//!   the database prints names the row.
//!
//! A table whose key column has another type (`numeric`, `date`, `character(n)`, …) cannot be bound: its rows
//! would have several spellings. These forms are what PostgreSQL prints for those types (`42`, `-7`, lowercase
//! uuids), so keys built from row values in text format — the CDC consumer's — are canonical as they come.
//!
//! # Values checked against column types
//! [`TableSchema::validate`] checks a value (a JSON object of columns) before any write: every field is a column,
//! neither generated nor `NULL` where the column is `NOT NULL`, and of the column's type — integers (a JSON number
//! without fraction, within the column's range) for integer columns, strings for text (within `varchar(n)`),
//! `true`/`false` for `boolean` (SQLite `BOOL…` columns also take `0`/`1`, which is how SQLite reads them back),
//! numbers for floating-point and `numeric` columns, UUID strings for `uuid`; JSON, date/time, array, enum and
//! other columns are left to the database. Every `NOT NULL` column without a default must be present. The key and
//! version columns are ignored in a value (they come from the key and the write). Sinks call it on every write
//! (plain, fenced, batched), and callers that queue writes (write-behind) call it before queueing, so every path
//! applies the same rule.

use serde_json::Value;

/// The canonical spelling of a key column's values as cache keys (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// An integer column with this range.
    Integer {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// A text column, optionally bounded in characters.
    Text {
        /// `varchar(n)`: at most `n` characters.
        max_chars: Option<usize>,
    },
    /// A uuid column: lowercase hyphenated.
    Uuid,
    /// Any other type, in a query: the key is compared with the column's text output.
    TextOutput,
}

impl KeyKind {
    /// What a key of this kind looks like.
    pub fn expected(&self) -> String {
        match self {
            KeyKind::Integer { min, max } => format!(
                "an integer in canonical decimal form (digits with an optional leading `-`; no `+`, leading zeros \
                 or spaces) between {min} and {max}"
            ),
            KeyKind::Text { max_chars: None } => "text without NUL characters".into(),
            KeyKind::Text { max_chars: Some(n) } => {
                format!("text of at most {n} characters without NUL characters")
            }
            KeyKind::Uuid => "a UUID in lowercase hyphenated form (8-4-4-4-12 hex digits, e.g. \
                              123e4567-e89b-12d3-a456-426614174000)"
                .into(),
            KeyKind::TextOutput => "the key column's value as the database prints it".into(),
        }
    }

    /// The integer range of an integer column of `bits` (16, 32 or 64).
    pub(crate) fn integer(bits: u32) -> Self {
        let max = if bits >= 64 {
            i64::MAX
        } else {
            (1i64 << (bits - 1)) - 1
        };
        KeyKind::Integer { min: -max - 1, max }
    }
}

/// A key that is not the canonical spelling of a value of the key column: refused before the cache or SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?} is not a key of {table}: its key column {column:?} is {column_type}, so a key is {expected}")]
pub struct KeyError {
    /// The key as given.
    pub key: String,
    /// The table (or query).
    pub table: String,
    /// The key column.
    pub column: String,
    /// The key column's type as the catalog names it.
    pub column_type: String,
    /// The expected form, in words.
    pub expected: String,
}

/// A value that does not fit the table's columns: refused before the write is attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadValue {
    /// The table.
    pub table: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What that field (or the whole value) must be.
    pub expected: Option<String>,
    /// What is wrong, naming the field and the expected type.
    pub message: String,
}

/// The JSON a column accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    Integer {
        min: i64,
        max: i64,
    },
    Number,
    /// `true`/`false`; with `ints`, also `0`/`1` (SQLite).
    Bool {
        ints: bool,
    },
    Text {
        max_chars: Option<usize>,
    },
    Uuid,
    /// Left to the database.
    Any,
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Expect::Integer { min, max } => {
                format!("an integer (a JSON number without fraction or exponent) between {min} and {max}")
            }
            Expect::Number => "a JSON number".into(),
            Expect::Bool { ints: false } => "true or false".into(),
            Expect::Bool { ints: true } => "true, false, 0 or 1".into(),
            Expect::Text { max_chars: None } => "a JSON string".into(),
            Expect::Text { max_chars: Some(n) } => {
                format!("a JSON string of at most {n} characters")
            }
            Expect::Uuid => "a UUID string (8-4-4-4-12 hex digits)".into(),
            Expect::Any => "a value the column's type accepts".into(),
        }
    }

    fn accepts(&self, v: &Value) -> bool {
        match self {
            Expect::Integer { min, max } => v.as_i64().is_some_and(|n| (*min..=*max).contains(&n)),
            Expect::Number => v.is_number(),
            Expect::Bool { ints } => {
                v.is_boolean() || (*ints && v.as_i64().is_some_and(|n| n == 0 || n == 1))
            }
            Expect::Text { max_chars } => v.as_str().is_some_and(|s| {
                !s.contains('\0') && max_chars.is_none_or(|n| s.chars().count() <= n)
            }),
            Expect::Uuid => v.as_str().is_some_and(|s| uuid_shape(s, false)),
            Expect::Any => true,
        }
    }
}

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
pub(crate) struct ColumnInfo {
    pub name: String,
    /// The type as the catalog spells it (for messages).
    pub sql_type: String,
    pub expect: Expect,
    /// The canonical key form, when the type has one (`None`: not usable as a table's key).
    pub key: Option<KeyKind>,
    pub not_null: bool,
    pub has_default: bool,
    pub generated: bool,
}

impl ColumnInfo {
    /// A query's column: typed for keys, values left to the database (queries are not written).
    pub(crate) fn of_query(name: String, sql_type: String, key: KeyKind) -> Self {
        Self {
            name,
            sql_type,
            expect: Expect::Any,
            key: Some(key),
            not_null: false,
            has_default: true,
            generated: false,
        }
    }

    /// A PostgreSQL column from `pg_attribute`: `base` is `atttypid::regtype::text`, `typmod` `atttypmod`.
    pub(crate) fn postgres(
        name: String,
        sql_type: String,
        base: &str,
        typmod: i32,
        not_null: bool,
        has_default: bool,
        generated: bool,
    ) -> Self {
        let chars = (typmod >= 4).then(|| (typmod - 4) as usize);
        let (expect, key) = match base {
            "smallint" => (KeyKind::integer(16), true),
            "integer" => (KeyKind::integer(32), true),
            "bigint" => (KeyKind::integer(64), true),
            "text" => (KeyKind::Text { max_chars: None }, true),
            "character varying" => (KeyKind::Text { max_chars: chars }, true),
            "uuid" => (KeyKind::Uuid, true),
            _ => (KeyKind::TextOutput, false),
        };
        let value = match (&expect, base) {
            (KeyKind::Integer { min, max }, _) => Expect::Integer {
                min: *min,
                max: *max,
            },
            (KeyKind::Text { max_chars }, _) => Expect::Text {
                max_chars: *max_chars,
            },
            (KeyKind::Uuid, _) => Expect::Uuid,
            (_, "real" | "double precision" | "numeric") => Expect::Number,
            (_, "boolean") => Expect::Bool { ints: false },
            (_, "character" | "name") => Expect::Text {
                max_chars: if base == "character" { chars } else { None },
            },
            _ => Expect::Any,
        };
        Self {
            name,
            sql_type,
            expect: value,
            key: key.then_some(expect),
            not_null,
            has_default,
            generated,
        }
    }

    /// A SQLite column from `PRAGMA table_info`, by its declared type (SQLite's affinity rules).
    pub(crate) fn sqlite(
        name: String,
        declared: String,
        not_null: bool,
        has_default: bool,
    ) -> Self {
        let (expect, key) = sqlite_types(&declared);
        Self {
            name,
            sql_type: if declared.is_empty() {
                "(no declared type)".into()
            } else {
                declared
            },
            expect,
            key,
            not_null,
            has_default,
            generated: false,
        }
    }
}

/// The value check and key form of a SQLite declared type (affinity rules of SQLite §3.1, in their order).
fn sqlite_types(declared: &str) -> (Expect, Option<KeyKind>) {
    let u = declared.to_ascii_uppercase();
    if u.starts_with("BOOL") {
        (Expect::Bool { ints: true }, None)
    } else if u.contains("INT") {
        let k = KeyKind::integer(64);
        (
            Expect::Integer {
                min: i64::MIN,
                max: i64::MAX,
            },
            Some(k),
        )
    } else if u.contains("CHAR") || u.contains("CLOB") || u.contains("TEXT") {
        (
            Expect::Text { max_chars: None },
            Some(KeyKind::Text { max_chars: None }),
        )
    } else if u.is_empty() || u.contains("BLOB") {
        // No affinity: values are stored as given, so a text key compares as text, exactly.
        (Expect::Any, Some(KeyKind::Text { max_chars: None }))
    } else if u.contains("REAL") || u.contains("FLOA") || u.contains("DOUB") {
        (Expect::Number, None)
    } else if u == "UUID" {
        (Expect::Uuid, Some(KeyKind::Uuid))
    } else if u.starts_with("NUMERIC") || u.starts_with("DECIMAL") {
        (Expect::Number, None)
    } else {
        (Expect::Any, None)
    }
}

/// The key form of a query's key column from the type the database describes (sqlx's type names).
pub(crate) fn query_key_kind(type_name: &str) -> KeyKind {
    match type_name.to_ascii_uppercase().as_str() {
        "INT2" => KeyKind::integer(16),
        "INT4" => KeyKind::integer(32),
        "INT8" | "INTEGER" => KeyKind::integer(64),
        "TEXT" | "VARCHAR" => KeyKind::Text { max_chars: None },
        "UUID" => KeyKind::Uuid,
        _ => KeyKind::TextOutput,
    }
}

/// `8-4-4-4-12` hex digits; with `lowercase`, only `0-9a-f`.
fn uuid_shape(s: &str, lowercase: bool) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => {
                b.is_ascii_digit()
                    || (b'a'..=b'f').contains(&b)
                    || (!lowercase && (b'A'..=b'F').contains(&b))
            }
        })
}

/// `s` as an integer if it is the canonical spelling of one (`-?(0|[1-9][0-9]*)`, not `-0`, within `i64`).
fn canonical_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && !(digits == "0" && s.starts_with('-'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// A key as a typed SQL parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyParam {
    Int(i64),
    Text(String),
}

/// A batch of keys as one typed SQL array parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyParams {
    Int(Vec<i64>),
    Text(Vec<String>),
}

impl KeyParams {
    /// The keys as a JSON array (SQLite's `json_each`): numbers for integer keys, strings otherwise.
    pub(crate) fn json(&self) -> String {
        match self {
            KeyParams::Int(v) => serde_json::to_string(v),
            KeyParams::Text(v) => serde_json::to_string(v),
        }
        .expect("keys serialize")
    }
}

/// A bound table's (or query's) columns, as read from the catalog: canonical keys and value checks.
#[derive(Debug, Clone)]
pub struct TableSchema {
    table: String,
    key_column: String,
    key_type: String,
    key: KeyKind,
    version_column: Option<String>,
    /// Every column but the key and the version.
    columns: Vec<ColumnInfo>,
}

impl TableSchema {
    pub(crate) fn new(
        table: String,
        key_column: &str,
        version_column: Option<&str>,
        all: Vec<ColumnInfo>,
    ) -> Result<Self, crate::SqlError> {
        let key_info = all.iter().find(|c| c.name == key_column).ok_or_else(|| {
            crate::SqlError::NoSuchColumn {
                table: table.clone(),
                column: key_column.to_owned(),
            }
        })?;
        let key = key_info
            .key
            .clone()
            .ok_or_else(|| crate::SqlError::UnsupportedKeyType {
                table: table.clone(),
                column: key_column.to_owned(),
                column_type: key_info.sql_type.clone(),
            })?;
        let key_type = key_info.sql_type.clone();
        Ok(Self {
            key_column: key_column.to_owned(),
            key_type,
            key,
            version_column: version_column.map(str::to_owned),
            columns: all
                .into_iter()
                .filter(|c| c.name != key_column && Some(c.name.as_str()) != version_column)
                .collect(),
            table,
        })
    }

    /// The table (or query) this describes.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The key column.
    pub fn key_column(&self) -> &str {
        &self.key_column
    }

    /// The canonical form of its keys.
    pub fn key_kind(&self) -> &KeyKind {
        &self.key
    }

    /// A JSON Schema of the values [`validate`](Self::validate) accepts (for API documents): an object of the
    /// columns with their JSON types and ranges, `null` where the column allows it, the `NOT NULL` columns
    /// without a default required, no other fields. Rules only the database checks (`CHECK`, unique, foreign
    /// keys) are not in it.
    pub fn value_json_schema(&self) -> Value {
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for c in self.columns.iter().filter(|c| !c.generated) {
            let mut t = match &c.expect {
                Expect::Integer { min, max } => {
                    serde_json::json!({"type": "integer", "minimum": min, "maximum": max})
                }
                Expect::Number => serde_json::json!({"type": "number"}),
                Expect::Bool { ints: false } => serde_json::json!({"type": "boolean"}),
                Expect::Bool { ints: true } => {
                    serde_json::json!({"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]})
                }
                Expect::Text { max_chars } => {
                    let mut t = serde_json::json!({"type": "string", "pattern": "^[^\\u0000]*$"});
                    if let Some(n) = max_chars {
                        t["maxLength"] = (*n).into();
                    }
                    t
                }
                Expect::Uuid => serde_json::json!({"type": "string", "format": "uuid"}),
                Expect::Any => serde_json::json!({}),
            };
            if !c.not_null && c.expect != Expect::Any {
                t = serde_json::json!({"anyOf": [t, {"type": "null"}]});
            }
            if c.not_null && !c.has_default {
                required.push(c.name.clone());
            }
            props.insert(c.name.clone(), t);
        }
        serde_json::json!({"type": "object", "properties": props, "required": required,
                           "additionalProperties": false})
    }

    /// A JSON Schema of the canonical keys (for API documents; a path parameter): integers without sign, zeros
    /// or spaces (at most the digits every value of the column's range has), text without NUL, lowercase uuids.
    pub fn key_json_schema(&self) -> Value {
        match &self.key {
            KeyKind::Integer { min, max } => {
                let digits = max
                    .min(&min.unsigned_abs().try_into().unwrap_or(i64::MAX))
                    .to_string()
                    .len()
                    - 1;
                serde_json::json!({"type": "string",
                    "pattern": format!("^(0|-?[1-9][0-9]{{0,{}}})$", digits.saturating_sub(1)),
                    "description": self.key.expected()})
            }
            KeyKind::Uuid => serde_json::json!({"type": "string",
                "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}),
            KeyKind::Text { max_chars } => {
                let mut t =
                    serde_json::json!({"type": "string", "pattern": "^[^_\\u0000][^\\u0000]*$"});
                if let Some(n) = max_chars {
                    t["maxLength"] = (*n).into();
                }
                t
            }
            _ => serde_json::json!({"type": "string", "pattern": "^[^_]"}),
        }
    }

    /// The columns of a value (all but the key and version), unquoted.
    pub fn value_columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    fn key_error(&self, key: &str) -> KeyError {
        KeyError {
            key: key.to_owned(),
            table: self.table.clone(),
            column: self.key_column.clone(),
            column_type: self.key_type.clone(),
            expected: self.key.expected(),
        }
    }

    /// `key` if it is the canonical spelling of a key of this table; otherwise an error naming it and the form.
    /// Non-canonical spellings (`042` for an integer key) are refused, not mapped: one key, one row.
    pub fn canonical_key(&self, key: &str) -> Result<String, KeyError> {
        self.key_param(key).map(|_| key.to_owned())
    }

    /// The key as a typed parameter; refused unless canonical.
    pub(crate) fn key_param(&self, key: &str) -> Result<KeyParam, KeyError> {
        match &self.key {
            KeyKind::Integer { min, max } => canonical_int(key)
                .filter(|n| (*min..=*max).contains(n))
                .map(KeyParam::Int)
                .ok_or_else(|| self.key_error(key)),
            KeyKind::Text { max_chars } => {
                if key.contains('\0') || max_chars.is_some_and(|n| key.chars().count() > n) {
                    Err(self.key_error(key))
                } else {
                    Ok(KeyParam::Text(key.to_owned()))
                }
            }
            KeyKind::Uuid => {
                if uuid_shape(key, true) {
                    Ok(KeyParam::Text(key.to_owned()))
                } else {
                    Err(self.key_error(key))
                }
            }
            KeyKind::TextOutput => Ok(KeyParam::Text(key.to_owned())),
        }
    }

    /// Every key as one typed array parameter; refused unless each is canonical.
    pub(crate) fn key_params(&self, keys: &[String]) -> Result<KeyParams, KeyError> {
        if matches!(self.key, KeyKind::Integer { .. }) {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                if let KeyParam::Int(n) = self.key_param(k)? {
                    out.push(n);
                }
            }
            Ok(KeyParams::Int(out))
        } else {
            for k in keys {
                self.key_param(k)?;
            }
            Ok(KeyParams::Text(keys.to_vec()))
        }
    }

    fn bad(&self, field: Option<&str>, expected: Option<String>, message: String) -> BadValue {
        BadValue {
            table: self.table.clone(),
            field: field.map(str::to_owned),
            expected,
            message,
        }
    }

    /// Checks a value (a JSON object of columns) against the columns' types (see the module docs). The error
    /// names the field and the expected type. The key and version columns are ignored.
    pub fn validate(&self, value: &Value) -> Result<(), BadValue> {
        let Value::Object(map) = value else {
            return Err(self.bad(
                None,
                Some("a JSON object of the table's columns".into()),
                format!(
                    "the value must be a JSON object of the columns of {} ({}), not {}",
                    self.table,
                    self.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    kind(value)
                ),
            ));
        };
        for (field, v) in map {
            if *field == self.key_column || Some(field) == self.version_column.as_ref() {
                continue;
            }
            let Some(col) = self.columns.iter().find(|c| c.name == *field) else {
                return Err(self.bad(
                    Some(field),
                    None,
                    format!(
                        "field {field:?} is not a column of {} (columns: {})",
                        self.table,
                        self.columns
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let expected = col.expect.describe();
            if col.generated {
                return Err(self.bad(
                    Some(field),
                    None,
                    format!(
                        "field {field:?} is a generated column of {}: it cannot be written",
                        self.table
                    ),
                ));
            }
            if v.is_null() {
                if col.not_null {
                    return Err(self.bad(
                        Some(field),
                        Some(expected.clone()),
                        format!(
                            "field {field:?} is NOT NULL ({}): expected {expected}, got null",
                            col.sql_type
                        ),
                    ));
                }
                continue;
            }
            if !col.expect.accepts(v) {
                return Err(self.bad(
                    Some(field),
                    Some(expected.clone()),
                    format!(
                        "field {field:?} is {}: expected {expected}, got {} {}",
                        col.sql_type,
                        kind(v),
                        short(v)
                    ),
                ));
            }
        }
        if let Some(col) = self
            .columns
            .iter()
            .find(|c| c.not_null && !c.has_default && !c.generated && !map.contains_key(&c.name))
        {
            let expected = col.expect.describe();
            return Err(self.bad(
                Some(&col.name),
                Some(expected.clone()),
                format!(
                    "field {:?} is missing: the column is NOT NULL without a default ({}), expected {expected}",
                    col.name, col.sql_type
                ),
            ));
        }
        Ok(())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(key: KeyKind) -> TableSchema {
        let col = |name: &str, expect: Expect, not_null: bool, has_default: bool| ColumnInfo {
            name: name.into(),
            sql_type: "t".into(),
            expect,
            key: None,
            not_null,
            has_default,
            generated: false,
        };
        let mut k = col("id", Expect::Any, true, false);
        k.key = Some(key);
        TableSchema::new(
            "price".into(),
            "id",
            Some("version"),
            vec![
                k,
                col("cents", int32(), true, false),
                col("currency", Expect::Text { max_chars: Some(3) }, true, true),
                col("on", Expect::Bool { ints: false }, false, false),
                col("version", Expect::Any, true, true),
            ],
        )
        .unwrap()
    }

    fn int32() -> Expect {
        Expect::Integer {
            min: i32::MIN as i64,
            max: i32::MAX as i64,
        }
    }

    #[test]
    fn integer_keys_have_one_spelling() {
        let s = schema(KeyKind::integer(32));
        for ok in ["0", "42", "-7", "2147483647", "-2147483648"] {
            assert_eq!(s.canonical_key(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "042",
            "+42",
            " 42",
            "42 ",
            "42abc",
            "42.9",
            "4e2",
            "-0",
            "00",
            "-",
            "2147483648",
            "٤٢",
            "0x2a",
        ] {
            let e = s.canonical_key(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
            assert!(e.to_string().contains("canonical decimal"), "{e}");
        }
        let s = schema(KeyKind::integer(16));
        assert!(s.canonical_key("32768").is_err());
        assert!(s.canonical_key("-32768").is_ok());
        let s = schema(KeyKind::integer(64));
        assert!(s.canonical_key("9223372036854775807").is_ok());
        assert!(s.canonical_key("9223372036854775808").is_err());
    }

    #[test]
    fn text_and_uuid_keys() {
        let s = schema(KeyKind::Text { max_chars: Some(3) });
        assert_eq!(s.canonical_key(" a").as_deref(), Ok(" a"));
        assert_eq!(s.canonical_key("éé").as_deref(), Ok("éé"));
        assert!(s.canonical_key("abcd").is_err());
        assert!(s.canonical_key("a\0").is_err());
        let s = schema(KeyKind::Uuid);
        assert!(s
            .canonical_key("123e4567-e89b-12d3-a456-426614174000")
            .is_ok());
        for bad in [
            "123E4567-E89B-12D3-A456-426614174000",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
        ] {
            assert!(s.canonical_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_checked_against_the_columns() {
        let s = schema(KeyKind::integer(64));
        assert!(s.validate(&json!({"cents": 5})).is_ok());
        assert!(s
            .validate(&json!({"cents": 5, "currency": "EUR", "on": true, "id": 1, "version": 3}))
            .is_ok());
        for (v, field, want) in [
            (json!({"cents": "abc"}), "cents", "expected an integer"),
            (json!({"cents": 1.5}), "cents", "got a fractional number"),
            (json!({"cents": 5.0}), "cents", "expected an integer"),
            (json!({"cents": 3_000_000_000i64}), "cents", "between"),
            (json!({"cents": null}), "cents", "NOT NULL"),
            (json!({"currency": "EUR"}), "cents", "missing"),
            (
                json!({"cents": 1, "currency": 7}),
                "currency",
                "expected a JSON string",
            ),
            (
                json!({"cents": 1, "currency": "EURO"}),
                "currency",
                "at most 3",
            ),
            (json!({"cents": 1, "on": 1}), "on", "true or false"),
            (
                json!({"cents": 1, "colour": "red"}),
                "colour",
                "not a column",
            ),
        ] {
            let e = s.validate(&v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{v}: {e}");
            assert!(e.message.contains(want), "{v}: {e}");
            assert!(e.message.contains(&format!("{field:?}")), "{v}: {e}");
        }
        assert!(s.validate(&json!([1])).unwrap_err().field.is_none());
    }

    #[test]
    fn sqlite_declared_types_follow_affinity() {
        assert!(matches!(
            sqlite_types("BIGINT").1,
            Some(KeyKind::Integer { .. })
        ));
        assert!(matches!(
            sqlite_types("varchar(20)").1,
            Some(KeyKind::Text { .. })
        ));
        assert!(matches!(sqlite_types("").1, Some(KeyKind::Text { .. })));
        assert_eq!(sqlite_types("UUID").1, Some(KeyKind::Uuid));
        assert_eq!(sqlite_types("REAL").1, None);
        assert_eq!(sqlite_types("BOOLEAN").0, Expect::Bool { ints: true });
    }
}

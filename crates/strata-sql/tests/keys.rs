//! One key, one row; values checked against column types — on SQLite (a file per test) and PostgreSQL (a schema
//! per test).
//!
//! A key is the canonical spelling of the key column's value (`42`, never `042`, `+42`, ` 42`, `42abc`, `42.9`),
//! refused otherwise before the cache or SQL, so a row is never cached under two keys; a value whose fields do not
//! fit their columns is refused before the write on every write path, naming the field and the expected type.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use sqlx::{PgPool, Row, SqlitePool};
use strata::{Cache, Error, Namespace, Policy, WriteMode};
use strata_core::{SharedError, Sink, Source};
use strata_sql::{
    KeyKind, PgQuery, PgTable, SqlError, SqliteQuery, SqliteTable, TableSpec, TypedSource,
};
use strata_testkit::pg::unique_name;

const NON_CANONICAL: &[&str] = &[
    "042", "+42", " 42", "42 ", "42abc", "42.9", "4.2e1", "0x2a", "-0", "00",
];

async fn pg_pool() -> PgPool {
    let url = strata_testkit::pg::url();
    PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {url}: {e}"))
}

/// A fresh schema with `price (id bigint PRIMARY KEY, cents bigint NOT NULL, currency varchar(3) NOT NULL
/// DEFAULT 'EUR', on_sale boolean, note text, version)` and rows 40..=44.
async fn pg_price(test: &str) -> (PgPool, String) {
    let pool = pg_pool().await;
    let schema = unique_name(test);
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {schema}.price (id bigint PRIMARY KEY, cents bigint NOT NULL, \
             currency varchar(3) NOT NULL DEFAULT 'EUR', on_sale boolean, note text, \
             version bigint NOT NULL DEFAULT 1)"
        ),
        format!(
            "INSERT INTO {schema}.price (id, cents) SELECT g, g * 100 FROM generate_series(40, 44) g"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    (pool, format!("{schema}.price"))
}

async fn sqlite_pool(test: &str) -> SqlitePool {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name(test)));
    SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap()
}

/// The same table in SQLite (`INTEGER` key, `BOOLEAN` flag), rows 40..=44.
async fn sqlite_price(test: &str) -> (SqlitePool, String) {
    let pool = sqlite_pool(test).await;
    for sql in [
        "CREATE TABLE price (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL, \
         currency TEXT NOT NULL DEFAULT 'EUR', on_sale BOOLEAN, note TEXT, \
         version INTEGER NOT NULL DEFAULT 1)",
        "WITH RECURSIVE g(n) AS (SELECT 40 UNION ALL SELECT n + 1 FROM g WHERE n < 44) \
         INSERT INTO price (id, cents) SELECT n, n * 100 FROM g",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    (pool, "price".into())
}

fn is_bad_key(e: &SharedError) -> bool {
    matches!(e.downcast_ref::<SqlError>(), Some(SqlError::BadKey(_)))
}

fn is_bad_value(e: &SharedError) -> bool {
    matches!(
        e.downcast_ref::<SqlError>(),
        Some(SqlError::BadValue { .. })
    )
}

/// Every path refuses a non-canonical spelling of row 42 and leaves the row alone; the canonical key reads,
/// writes and deletes it; a namespace never caches row 42 under a second key.
async fn one_key_one_row<S>(store: Arc<S>)
where
    S: Source<Value> + Sink<Value> + TypedSource,
{
    for bad in NON_CANONICAL {
        let e = store.canonical_key(bad).unwrap_err();
        assert!(
            e.to_string().contains(&format!("{bad:?}"))
                && e.to_string().contains("canonical decimal"),
            "{e}"
        );
        let e = store.load(bad).await.unwrap_err();
        assert!(is_bad_key(&e), "load {bad:?}: {e}");
        let e = store
            .load_many(&[(*bad).to_owned(), "42".into()])
            .await
            .unwrap_err();
        assert!(is_bad_key(&e), "load_many {bad:?}: {e}");
        let e = store.delete(bad).await.unwrap_err();
        assert!(is_bad_key(&e), "delete {bad:?}: {e}");
        let e = store.delete_fenced(bad, u64::MAX >> 1).await.unwrap_err();
        assert!(is_bad_key(&e), "delete_fenced {bad:?}: {e}");
        let e = store.upsert(bad, &json!({"cents": 1})).await.unwrap_err();
        assert!(is_bad_key(&e), "upsert {bad:?}: {e}");
        let e = store
            .upsert_fenced(bad, &json!({"cents": 1}), 1 << 40)
            .await
            .unwrap_err();
        assert!(is_bad_key(&e), "upsert_fenced {bad:?}: {e}");
    }
    assert_eq!(store.canonical_key("42").as_deref(), Ok("42"));
    assert_eq!(store.canonical_key("-42").as_deref(), Ok("-42"));
    let row = store.load("42").await.unwrap();
    assert_eq!(row.value.as_ref().unwrap()["cents"], 4200, "{row:?}");
    let many = store
        .load_many(&["41".into(), "42".into(), "99".into()])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);

    // The scenario, through a write-through namespace.
    let ns: Namespace<Value> = Cache::new()
        .namespace::<Value>("price")
        .with_policy(
            Policy::builder()
                .with_write_mode(WriteMode::Through)
                .build()
                .unwrap(),
        )
        .with_store(store.clone())
        .build()
        .unwrap();
    assert!(ns.fetch("42").await.unwrap().value().is_some());
    assert!(matches!(ns.fetch("042").await, Err(Error::Load { .. })));
    ns.write("42", json!({"cents": 4300})).await.unwrap();
    assert!(ns.fetch("042").await.is_err(), "no second key for row 42");
    assert!(ns.get("042").is_none());
    assert!(ns.delete("042").await.is_err());
    assert_eq!(
        ns.fetch("42").await.unwrap().value().unwrap()["cents"],
        4300,
        "a refused DELETE of 042 deleted nothing"
    );
    ns.delete("42").await.unwrap();
    assert!(store.load("42").await.unwrap().value.is_none());
    assert!(ns.fetch("42").await.unwrap().value().is_none());
}

#[tokio::test]
async fn sqlite_integer_keys_have_one_spelling() {
    let (pool, table) = sqlite_price("one_key").await;
    let t = SqliteTable::<Value>::bind(pool, TableSpec::new(&table, "id", "version"))
        .await
        .unwrap();
    assert!(matches!(t.schema().key_kind(), KeyKind::Integer { .. }));
    one_key_one_row(Arc::new(t)).await;
}

#[tokio::test]
async fn postgres_integer_keys_have_one_spelling() {
    let (pool, table) = pg_price("one_key").await;
    let t = PgTable::<Value>::bind(pool, TableSpec::new(&table, "id", "version"))
        .await
        .unwrap();
    one_key_one_row(Arc::new(t)).await;
}

/// Values that do not fit their columns are refused before the write on every write path, naming the field and
/// the expected type; nothing is written.
async fn values_fit_their_columns<S>(store: Arc<S>, sqlite: bool)
where
    S: Source<Value> + Sink<Value> + TypedSource,
{
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"cents": "abc"}), "cents", "expected an integer"),
        (json!({"cents": 1.5}), "cents", "expected an integer"),
        (json!({"cents": 2.0}), "cents", "expected an integer"),
        (json!({"cents": true}), "cents", "expected an integer"),
        (json!({"cents": null}), "cents", "NOT NULL"),
        (json!({"currency": "USD"}), "cents", "missing"),
        (
            json!({"cents": 1, "currency": 978}),
            "currency",
            "expected a JSON string",
        ),
        (
            json!({"cents": 1, "currency": null}),
            "currency",
            "NOT NULL",
        ),
        (
            json!({"cents": 1, "note": 5}),
            "note",
            "expected a JSON string",
        ),
        (json!({"cents": 1, "on_sale": "yes"}), "on_sale", "true"),
        (
            json!({"cents": 1, "colour": "red"}),
            "colour",
            "not a column",
        ),
    ];
    for (value, field, want) in &cases {
        let e = store.validate(value).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(*field), "{value}: {e}");
        assert!(
            e.message.contains(want) && e.message.contains(&format!("{field:?}")),
            "{value}: {e}"
        );
        for e in [
            store.upsert("40", value).await.unwrap_err(),
            store.upsert_fenced("40", value, 1 << 40).await.unwrap_err(),
            store
                .upsert_fenced_many(&[
                    ("41", &json!({"cents": 7}), 1 << 40),
                    ("40", value, 1 << 40),
                ])
                .await
                .unwrap_err(),
        ] {
            assert!(is_bad_value(&e), "{value}: {e}");
            assert!(e.to_string().contains(field), "{value}: {e}");
        }
    }
    let row = store.load("40").await.unwrap();
    assert_eq!(
        row.value.as_ref().unwrap()["cents"],
        4000,
        "nothing was written"
    );
    assert_eq!(row.version, Some(1));
    assert_eq!(
        store.load("41").await.unwrap().version,
        Some(1),
        "the batch wrote nothing"
    );
    if sqlite {
        // SQLite reads booleans back as 0/1, so those are booleans too.
        assert!(store.validate(&json!({"cents": 1, "on_sale": 1})).is_ok());
        assert!(store.validate(&json!({"cents": 1, "on_sale": 2})).is_err());
    } else {
        assert!(store.validate(&json!({"cents": 1, "on_sale": 1})).is_err());
        assert!(
            store
                .validate(&json!({"cents": 1, "currency": "EURO"}))
                .is_err(),
            "varchar(3)"
        );
    }
    // What fits is written, with defaults for what is left out.
    let v = store
        .upsert(
            "40",
            &json!({"cents": 1, "on_sale": true, "note": null, "id": 40, "version": 9}),
        )
        .await
        .unwrap();
    assert_eq!(v, 2);
    let row = store.load("40").await.unwrap().value.unwrap();
    assert_eq!(
        (row["cents"].clone(), row["currency"].clone()),
        (json!(1), json!("EUR"))
    );
}

#[tokio::test]
async fn sqlite_values_are_checked_against_column_types() {
    let (pool, table) = sqlite_price("values").await;
    let t = SqliteTable::<Value>::bind(pool.clone(), TableSpec::new(&table, "id", "version"))
        .await
        .unwrap();
    assert!(t.check_write("40", &json!({"cents": 5})).is_ok());
    assert!(matches!(
        t.check_write("40", &json!({"cents": "abc"})),
        Err(SqlError::BadValue { .. })
    ));
    values_fit_their_columns(Arc::new(t), true).await;
    // Type affinity would have stored the text: it is not there.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM price WHERE typeof(cents) <> 'integer'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn postgres_values_are_checked_against_column_types() {
    let (pool, table) = pg_price("values").await;
    let t = PgTable::<Value>::bind(pool.clone(), TableSpec::new(&table, "id", "version"))
        .await
        .unwrap();
    values_fit_their_columns(Arc::new(t), false).await;
    // What only the database can judge (a CHECK) is still the value's fault, not the database's.
    sqlx::query(&format!("ALTER TABLE {table} ADD CHECK (cents >= 0)"))
        .execute(&pool)
        .await
        .unwrap();
    let t = PgTable::<Value>::bind(pool, TableSpec::new(&table, "id", "version"))
        .await
        .unwrap();
    let e = t.upsert("40", &json!({"cents": -1})).await.unwrap_err();
    assert!(is_bad_value(&e), "{e}");
    // The check a write-behind queue runs before it acknowledges: the same rule, without writing.
    assert!(t.check_write("40", &json!({"cents": 5})).is_ok());
    let e = t.check_write("40", &json!({"cents": "5"})).unwrap_err();
    assert!(
        matches!(e, SqlError::BadValue { .. }) && e.to_string().contains("cents"),
        "{e}"
    );
    let e = t.check_write("040", &json!({"cents": 5})).unwrap_err();
    assert!(matches!(e, SqlError::BadKey(_)), "{e}");
}

/// Key forms of other types: text as is, uuids lowercase, widths checked; types without one spelling are refused
/// at bind; what PostgreSQL prints for a key (what the CDC consumer turns into cache keys) is canonical.
#[tokio::test]
async fn postgres_key_types_and_their_text_output_are_canonical() {
    let pool = pg_pool().await;
    let schema = unique_name("key_types");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.by_int (id integer PRIMARY KEY, n bigint, version bigint NOT NULL DEFAULT 1)"),
        format!("CREATE TABLE {schema}.by_small (id smallint PRIMARY KEY, n bigint, version bigint NOT NULL DEFAULT 1)"),
        format!("CREATE TABLE {schema}.by_uuid (id uuid PRIMARY KEY, n bigint, version bigint NOT NULL DEFAULT 1)"),
        format!("CREATE TABLE {schema}.by_text (id varchar(8) PRIMARY KEY, n bigint, version bigint NOT NULL DEFAULT 1)"),
        format!("CREATE TABLE {schema}.by_char (id char(4) PRIMARY KEY, n bigint, version bigint NOT NULL DEFAULT 1)"),
        format!("CREATE TABLE {schema}.by_numeric (id numeric PRIMARY KEY, n bigint, version bigint NOT NULL DEFAULT 1)"),
        // Spellings a person might type in psql; the database stores the values.
        format!("INSERT INTO {schema}.by_int (id, n) VALUES ('042', 1), ('+7', 2), (' -13 ', 3), (0, 4), (2147483647, 5)"),
        format!("INSERT INTO {schema}.by_small (id, n) VALUES ('-032768', 1)"),
        format!(
            "INSERT INTO {schema}.by_uuid (id, n) VALUES ('{{123E4567-E89B-12D3-A456-426614174000}}', 1), \
             ('a0eebc999c0b4ef8bb6d6bb9bd380a11', 2)"
        ),
        format!("INSERT INTO {schema}.by_text (id, n) VALUES ('Ab c', 1), (' x', 2), ('042', 3)"),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    for table in ["by_int", "by_small", "by_uuid", "by_text"] {
        let t = PgTable::<Value>::bind(
            pool.clone(),
            TableSpec::new(&format!("{schema}.{table}"), "id", "version"),
        )
        .await
        .unwrap();
        // pgoutput sends values in text format: the type's output function, as `::text`.
        let printed: Vec<String> =
            sqlx::query(&format!("SELECT id::text FROM {schema}.{table} ORDER BY n"))
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert!(!printed.is_empty());
        for key in &printed {
            assert_eq!(t.canonical_key(key).as_ref(), Ok(key), "{table}: {key:?}");
            let row = t.load(key).await.unwrap();
            assert!(row.value.is_some(), "{table}: {key:?} reads its row");
        }
        let many = t.load_many(&printed).await.unwrap();
        assert_eq!(many.len(), printed.len(), "{table}");
    }
    let by_int = PgTable::<Value>::bind(
        pool.clone(),
        TableSpec::new(&format!("{schema}.by_int"), "id", "version"),
    )
    .await
    .unwrap();
    assert!(
        by_int.canonical_key("2147483648").is_err(),
        "integer is 32 bits"
    );
    let e = by_int
        .upsert("2147483648", &json!({"n": 1}))
        .await
        .unwrap_err();
    assert!(is_bad_key(&e), "{e}");
    let by_small = PgTable::<Value>::bind(
        pool.clone(),
        TableSpec::new(&format!("{schema}.by_small"), "id", "version"),
    )
    .await
    .unwrap();
    assert!(by_small.canonical_key("32768").is_err());
    let by_uuid = PgTable::<Value>::bind(
        pool.clone(),
        TableSpec::new(&format!("{schema}.by_uuid"), "id", "version"),
    )
    .await
    .unwrap();
    for bad in [
        "123E4567-E89B-12D3-A456-426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "123e4567e89b12d3a456426614174000",
    ] {
        let e = by_uuid.canonical_key(bad).unwrap_err();
        assert!(e.to_string().contains("lowercase hyphenated"), "{e}");
        assert!(is_bad_key(&by_uuid.load(bad).await.unwrap_err()));
    }
    let v = by_uuid
        .upsert("00000000-0000-0000-0000-00000000000a", &json!({"n": 9}))
        .await
        .unwrap();
    assert_eq!(v, 1);
    let by_text = PgTable::<Value>::bind(
        pool.clone(),
        TableSpec::new(&format!("{schema}.by_text"), "id", "version"),
    )
    .await
    .unwrap();
    assert!(
        by_text.load("ab c").await.unwrap().value.is_none(),
        "text keys are exact"
    );
    assert!(by_text.load("x").await.unwrap().value.is_none());
    assert!(by_text.canonical_key("123456789").is_err(), "varchar(8)");
    for table in ["by_char", "by_numeric"] {
        let e = PgTable::<Value>::bind(
            pool.clone(),
            TableSpec::new(&format!("{schema}.{table}"), "id", "version"),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, SqlError::UnsupportedKeyType { .. }), "{e}");
        assert!(e.to_string().contains("no single spelling"), "{e}");
    }
}

/// A query's key follows its column's type too, and is compared as that type (no cast of the column).
#[tokio::test]
async fn query_keys_follow_the_key_column_type() {
    let (pool, table) = pg_price("query_keys").await;
    let q = PgQuery::<Value>::bind(
        pool,
        &format!("SELECT id, cents, version FROM {table}"),
        "id",
        "version",
    )
    .await
    .unwrap();
    assert!(matches!(q.schema().key_kind(), KeyKind::Integer { .. }));
    assert!(q.load("42").await.unwrap().value.is_some());
    for bad in NON_CANONICAL {
        assert!(is_bad_key(&q.load(bad).await.unwrap_err()), "{bad}");
    }

    let (pool, table) = sqlite_price("query_keys").await;
    let q = SqliteQuery::<Value>::bind(
        pool,
        &format!("SELECT id, cents FROM {table}"),
        "id",
        "version",
    )
    .await
    .unwrap();
    assert!(matches!(q.schema().key_kind(), KeyKind::Integer { .. }));
    assert_eq!(q.load("42").await.unwrap().value.unwrap()["cents"], 4200);
    for bad in NON_CANONICAL {
        assert!(is_bad_key(&q.load(bad).await.unwrap_err()), "{bad}");
    }
}

/// Key strings: spellings around the rows' keys (signs, zeros, spaces, fractions, suffixes) and anything at all.
fn key_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ +-]{0,2}0{0,2}[0-9]{1,3}(\\.[0-9])?[a ]?",
        "-?[0-9]{1,20}",
        any::<String>(),
        Just("-0".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
    ]
}

/// For every key: an error (and then the canonical form refuses it too), or exactly the row whose key is that
/// string; and no two distinct accepted strings name the same row.
fn check_keys<S: Source<Value> + TypedSource>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    rows: &[i64],
    keys: &[String],
) -> Result<(), TestCaseError> {
    let mut named: HashMap<i64, String> = HashMap::new();
    for key in keys {
        let canonical = store.canonical_key(key);
        match rt.block_on(store.load(key)) {
            Err(e) => {
                prop_assert!(is_bad_key(&e), "{key:?}: {e}");
                prop_assert!(
                    canonical.is_err(),
                    "{key:?} loads with an error but is canonical"
                );
            }
            Ok(fetched) => {
                prop_assert_eq!(canonical.as_ref(), Ok(key));
                match fetched.value {
                    Some(row) => {
                        let id = row["id"].as_i64().unwrap();
                        prop_assert_eq!(&id.to_string(), key, "the row's own key");
                        if let Some(other) = named.insert(id, key.clone()) {
                            prop_assert_eq!(&other, key, "two spellings for row {}", id);
                        }
                    }
                    None => prop_assert!(
                        key.parse::<i64>().map_or(true, |n| !rows.contains(&n)),
                        "{key:?} names a row but read nothing"
                    ),
                }
            }
        }
    }
    // The batch agrees with the single loads.
    let accepted: Vec<String> = keys
        .iter()
        .filter(|k| store.canonical_key(k).is_ok())
        .cloned()
        .collect();
    let mut unique = accepted.clone();
    unique.sort();
    unique.dedup();
    let many = rt.block_on(store.load_many(&unique)).unwrap();
    for (k, f) in &many {
        prop_assert_eq!(
            f.value
                .as_ref()
                .map(|v| v["id"].as_i64().unwrap().to_string()),
            Some(k.clone())
        );
    }
    prop_assert_eq!(many.len(), named.len());
    Ok(())
}

const ROWS: &[i64] = &[
    -42,
    -7,
    -1,
    0,
    1,
    7,
    9,
    10,
    42,
    99,
    100,
    420,
    999,
    i64::MAX,
    i64::MIN,
];

#[test]
fn proptest_sqlite_any_key_string_is_an_error_or_exactly_its_row() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let pool = sqlite_pool("prop").await;
        sqlx::query(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, version INTEGER NOT NULL DEFAULT 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for id in ROWS {
            sqlx::query("INSERT INTO t (id, v) VALUES (?1, 'x')")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
        SqliteTable::<Value>::bind(pool, TableSpec::new("t", "id", "version"))
            .await
            .unwrap()
    });
    proptest!(ProptestConfig::with_cases(256), |(keys in prop::collection::vec(key_string(), 1..24))| {
        check_keys(&rt, &store, ROWS, &keys)?;
    });
}

#[test]
fn proptest_postgres_any_key_string_is_an_error_or_exactly_its_row() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let pool = pg_pool().await;
        let schema = unique_name("prop");
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!("CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text, version bigint NOT NULL DEFAULT 1)"),
        ] {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
        for id in ROWS {
            sqlx::query(&format!("INSERT INTO {schema}.t (id, v) VALUES ($1, 'x')"))
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
        PgTable::<Value>::bind(pool, TableSpec::new(&format!("{schema}.t"), "id", "version"))
            .await
            .unwrap()
    });
    proptest!(ProptestConfig::with_cases(64), |(keys in prop::collection::vec(key_string(), 1..24))| {
        check_keys(&rt, &store, ROWS, &keys)?;
    });
}

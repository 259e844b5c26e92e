//! The demo catalog behind the embedded default and `strata init`: seven tables, one per classic caching choice,
//! described once ([`CATALOG`]) and created and seeded in SQLite or PostgreSQL from that one description — on the
//! embedded default's first start (SQLite, or PostgreSQL with `strata serve --postgres URL`), and by
//! `strata init --config F` for the tables a config's namespaces name (`examples/strata.toml`), with the key and
//! version columns that config expects. Creating is idempotent (`CREATE TABLE IF NOT EXISTS`) and only empty
//! tables are seeded; in PostgreSQL everything happens in one transaction under an advisory lock, so nodes
//! starting together do not race.
//!
//! | namespace | write mode | TTL | why |
//! |---|---|---|---|
//! | `product` | around | 60 s | listings change rarely; a minute of staleness is fine, writes need not touch the cache |
//! | `price` | through | 10 min | must never be stale after a write: the write sets every tier with its version |
//! | `inventory` | through | 10 min | same; other writers are caught by events (CDC with PostgreSQL) |
//! | `session` | through | 30 min | read after every write by the same user |
//! | `flag` | around | 5 min | feature flags: cheap to serve slightly late |
//! | `counter` | behind | 10 min | page views and likes: many small writes, batched to the database |
//! | `permission` | through | 10 min | (in `examples/strata.toml`) roles per principal, with CDC |

use anyhow::Context;

use crate::state::Pool;

/// The embedded default's configuration (the data directory is set by the caller).
pub const EMBEDDED_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8700"

[l1]
budget = "128MiB"

[sources.catalog]
sqlite = "catalog.db"

[namespaces.product]
description = "Product listings: write-around, TTL 60 s"
source = "catalog"
write = "around"
ttl = "60s"
stale_for = "30s"
fail_safe_for = "10m"
tags = ["product:{key}", "category:{category}"]

[namespaces.product.http]
cache_control = "public, max-age=60, stale-while-revalidate=3600"
cdn_cache_control = "max-age=300"

[namespaces.price]
description = "Prices: write-through, invalidated by events"
source = "catalog"
write = "through"
ttl = "10m"

[namespaces.inventory]
description = "Stock levels: write-through, invalidated by events"
source = "catalog"
write = "through"
ttl = "10m"

[namespaces.session]
description = "Sessions: write-through, 30 min"
source = "catalog"
write = "through"
ttl = "30m"

[namespaces.session.http]
cache_control = "private, no-store"
surrogate_keys = false

[namespaces.flag]
description = "Feature flags: write-around, 5 min"
source = "catalog"
write = "around"
ttl = "5m"

[namespaces.counter]
description = "Counters: write-behind (journaled, batched)"
source = "catalog"
write = "behind"
ttl = "10m"
"#;

/// The replication slot and publication of `strata serve --postgres URL` (override with `--slot`).
pub const DEMO_SLOT: &str = "strata_demo";

const CATEGORIES: &[&str] = &["tv", "audio", "camera", "phone", "laptop"];

/// Which database a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A column's type, spelled per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `INTEGER` / `bigint`.
    Int,
    /// `TEXT` / `text`.
    Text,
}

impl ColumnType {
    fn sql(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (ColumnType::Int, Backend::Sqlite) => "INTEGER",
            (ColumnType::Int, Backend::Postgres) => "bigint",
            (ColumnType::Text, Backend::Sqlite) => "TEXT",
            (ColumnType::Text, Backend::Postgres) => "text",
        }
    }
}

/// A value column (the key and version columns are named by the config and added by [`CatalogTable::create_sql`]).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// `NOT NULL`.
    pub not_null: bool,
    /// A SQL literal valid in both backends (`'EUR'`, `100`).
    pub default: Option<&'static str>,
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        not_null: true,
        default: None,
    }
}

const fn nullable(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        not_null: false,
        default: None,
    }
}

const fn defaulted(name: &'static str, ty: ColumnType, default: &'static str) -> Column {
    Column {
        name,
        ty,
        not_null: true,
        default: Some(default),
    }
}

/// A seed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
}

impl Val {
    fn literal(&self) -> String {
        match self {
            Val::Int(n) => n.to_string(),
            Val::Text(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }
}

/// A seed row: the key, then one value per [`CatalogTable::columns`] entry.
pub type Row = (Val, Vec<Val>);

/// One table of the demo catalog.
#[derive(Debug, Clone, Copy)]
pub struct CatalogTable {
    /// Its name (also the namespace that reads it).
    pub name: &'static str,
    /// The key column's type.
    pub key: ColumnType,
    /// The value columns.
    pub columns: &'static [Column],
    /// The rows an empty table is seeded with.
    pub seed: fn() -> Vec<Row>,
}

/// Where a catalog table goes: its name in the database (optionally `schema.table`) and its key and version
/// columns (the config's `key_column` and `version_column`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The table.
    pub table: String,
    /// The key column.
    pub key_column: String,
    /// The version column.
    pub version_column: String,
}

impl Placement {
    /// The table under its own name with `id` and `version`, as the embedded default uses it.
    pub fn default_for(t: &CatalogTable) -> Self {
        Self {
            table: t.name.into(),
            key_column: "id".into(),
            version_column: "version".into(),
        }
    }
}

fn products() -> Vec<Row> {
    (1..=1000i64)
        .map(|id| {
            let category = CATEGORIES[(id as usize) % CATEGORIES.len()];
            (
                Val::Int(id),
                vec![
                    Val::Text(format!("Product {id}")),
                    Val::Text(category.into()),
                    Val::Text(format!("A fine {category} (demo item {id})")),
                ],
            )
        })
        .collect()
}

fn prices() -> Vec<Row> {
    (1..=1000i64)
        .map(|id| {
            (
                Val::Int(id),
                vec![Val::Int(999 + (id * 37) % 100_000), Val::Text("EUR".into())],
            )
        })
        .collect()
}

fn stock() -> Vec<Row> {
    (1..=1000i64)
        .map(|id| {
            (
                Val::Int(id),
                vec![Val::Int((id * 13) % 250), Val::Text("main".into())],
            )
        })
        .collect()
}

fn flags() -> Vec<Row> {
    [
        ("new-checkout", 1),
        ("dark-mode", 0),
        ("recommendations", 1),
    ]
    .into_iter()
    .map(|(f, on)| (Val::Text(f.into()), vec![Val::Int(on), Val::Int(100)]))
    .collect()
}

fn permissions() -> Vec<Row> {
    [
        ("admin", "read,write,admin"),
        ("editor", "read,write"),
        ("viewer", "read"),
    ]
    .into_iter()
    .map(|(p, roles)| (Val::Text(p.into()), vec![Val::Text(roles.into())]))
    .collect()
}

fn none() -> Vec<Row> {
    Vec::new()
}

/// The demo catalog: one description for SQLite and PostgreSQL.
pub const CATALOG: &[CatalogTable] = &[
    CatalogTable {
        name: "product",
        key: ColumnType::Int,
        columns: &[
            col("name", ColumnType::Text),
            col("category", ColumnType::Text),
            nullable("description", ColumnType::Text),
        ],
        seed: products,
    },
    CatalogTable {
        name: "price",
        key: ColumnType::Int,
        columns: &[
            col("cents", ColumnType::Int),
            defaulted("currency", ColumnType::Text, "'EUR'"),
        ],
        seed: prices,
    },
    CatalogTable {
        name: "inventory",
        key: ColumnType::Int,
        columns: &[
            col("stock", ColumnType::Int),
            defaulted("warehouse", ColumnType::Text, "'main'"),
        ],
        seed: stock,
    },
    CatalogTable {
        name: "session",
        key: ColumnType::Text,
        columns: &[
            nullable("user_id", ColumnType::Int),
            nullable("data", ColumnType::Text),
        ],
        seed: none,
    },
    CatalogTable {
        name: "flag",
        key: ColumnType::Text,
        columns: &[
            col("enabled", ColumnType::Int),
            defaulted("rollout_pct", ColumnType::Int, "100"),
        ],
        seed: flags,
    },
    CatalogTable {
        name: "counter",
        key: ColumnType::Text,
        columns: &[col("n", ColumnType::Int)],
        seed: none,
    },
    CatalogTable {
        name: "permission",
        key: ColumnType::Text,
        columns: &[col("roles", ColumnType::Text)],
        seed: permissions,
    },
];

/// The catalog table called `name` (a `schema.` prefix is ignored).
pub fn table(name: &str) -> Option<&'static CatalogTable> {
    let base = name.rsplit('.').next().unwrap_or(name);
    CATALOG.iter().find(|t| t.name == base)
}

fn ident(what: &'static str, name: &str) -> anyhow::Result<String> {
    Ok(strata_sql::quote_ident(what, name)?)
}

impl CatalogTable {
    /// `CREATE TABLE IF NOT EXISTS …` for `backend`.
    pub fn create_sql(&self, backend: Backend, at: &Placement) -> anyhow::Result<String> {
        let mut cols = vec![format!(
            "{} {} PRIMARY KEY",
            ident("column", &at.key_column)?,
            self.key.sql(backend)
        )];
        for c in self.columns {
            let mut d = format!("{} {}", ident("column", c.name)?, c.ty.sql(backend));
            if c.not_null {
                d.push_str(" NOT NULL");
            }
            if let Some(v) = c.default {
                d.push_str(" DEFAULT ");
                d.push_str(v);
            }
            cols.push(d);
        }
        cols.push(format!(
            "{} {} NOT NULL DEFAULT 1",
            ident("column", &at.version_column)?,
            ColumnType::Int.sql(backend)
        ));
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            ident("table", &at.table)?,
            cols.join(", ")
        ))
    }

    /// The seed rows as `INSERT … ON CONFLICT DO NOTHING` statements (valid in both backends), and how many rows
    /// they insert.
    pub fn seed_sql(&self, at: &Placement) -> anyhow::Result<(Vec<String>, usize)> {
        let rows = (self.seed)();
        let mut names = vec![ident("column", &at.key_column)?];
        for c in self.columns {
            names.push(ident("column", c.name)?);
        }
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            ident("table", &at.table)?,
            names.join(", ")
        );
        let statements = rows
            .chunks(250)
            .map(|chunk| {
                let values = chunk
                    .iter()
                    .map(|(k, vs)| {
                        let all: Vec<String> =
                            std::iter::once(k).chain(vs).map(Val::literal).collect();
                        format!("({})", all.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("{head}{values} ON CONFLICT DO NOTHING")
            })
            .collect();
        Ok((statements, rows.len()))
    }
}

/// What [`install`] did to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The table was created and seeded with this many rows.
    Created(usize),
    /// The table existed but was empty, and was seeded with this many rows.
    Seeded(usize),
    /// The table existed and had rows: left alone.
    Kept,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Installed::Created(0) => write!(f, "created (empty)"),
            Installed::Created(n) => write!(f, "created, seeded {n} rows"),
            Installed::Seeded(0) => write!(f, "exists (empty)"),
            Installed::Seeded(n) => write!(f, "existed empty, seeded {n} rows"),
            Installed::Kept => write!(f, "exists with rows, left alone"),
        }
    }
}

/// Whether `table` (optionally `schema.table`) exists in `pool`.
pub async fn table_exists(pool: &Pool, table: &str) -> anyhow::Result<bool> {
    let quoted = ident("table", table)?;
    match pool {
        Pool::Postgres(p) => Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&quoted)
            .fetch_one(p)
            .await?),
        Pool::Sqlite(p) => {
            let (schema, name) = match table.split_once('.') {
                Some((s, t)) => (format!("{}.", ident("table", s)?), t),
                None => (String::new(), table),
            };
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {schema}sqlite_master WHERE type IN ('table', 'view') AND name = ?"
            ))
            .bind(name)
            .fetch_one(p)
            .await?;
            Ok(n > 0)
        }
    }
}

/// Creates the given catalog tables (if missing) and seeds the empty ones, in one transaction (PostgreSQL: under
/// an advisory lock, so nodes starting together do not race).
pub async fn install(
    pool: &Pool,
    tables: &[(&CatalogTable, Placement)],
) -> anyhow::Result<Vec<Installed>> {
    enum Tx {
        Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
        Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    }
    impl Tx {
        async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
            match self {
                Tx::Sqlite(t) => sqlx::query(sql).execute(&mut **t).await.map(drop),
                Tx::Postgres(t) => sqlx::query(sql).execute(&mut **t).await.map(drop),
            }
        }
        async fn is_empty(&mut self, table: &str) -> Result<bool, sqlx::Error> {
            let sql = format!("SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1) t");
            let n: i64 = match self {
                Tx::Sqlite(t) => sqlx::query_scalar(&sql).fetch_one(&mut **t).await?,
                Tx::Postgres(t) => sqlx::query_scalar(&sql).fetch_one(&mut **t).await?,
            };
            Ok(n == 0)
        }
    }
    let mut existed = Vec::new();
    for (_, at) in tables {
        existed.push(table_exists(pool, &at.table).await?);
    }
    let (mut tx, backend) = match pool {
        Pool::Sqlite(p) => (Tx::Sqlite(p.begin().await?), Backend::Sqlite),
        Pool::Postgres(p) => {
            let mut t = p.begin().await?;
            // Any constant will do: it only has to be the same for every Strata process.
            sqlx::query("SELECT pg_advisory_xact_lock(7473546201)")
                .execute(&mut *t)
                .await?;
            (Tx::Postgres(t), Backend::Postgres)
        }
    };
    let mut out = Vec::new();
    for ((t, at), existed) in tables.iter().zip(existed) {
        tx.execute(&t.create_sql(backend, at)?)
            .await
            .with_context(|| format!("creating table {}", at.table))?;
        let empty = tx
            .is_empty(&ident("table", &at.table)?)
            .await
            .with_context(|| format!("reading table {}", at.table))?;
        let outcome = if empty {
            let (statements, n) = t.seed_sql(at)?;
            for s in statements {
                tx.execute(&s)
                    .await
                    .with_context(|| format!("seeding table {}", at.table))?;
            }
            if existed {
                Installed::Seeded(n)
            } else {
                Installed::Created(n)
            }
        } else {
            Installed::Kept
        };
        out.push(outcome);
    }
    match tx {
        Tx::Sqlite(t) => t.commit().await?,
        Tx::Postgres(t) => t.commit().await?,
    }
    Ok(out)
}

/// Creates and seeds the whole catalog under its own names (the embedded default).
pub async fn install_all(pool: &Pool) -> anyhow::Result<Vec<Installed>> {
    let tables: Vec<_> = CATALOG
        .iter()
        .map(|t| (t, Placement::default_for(t)))
        .collect();
    install(pool, &tables).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_description_spells_both_backends() {
        let t = table("shop.price").unwrap();
        let at = Placement {
            table: "shop.price".into(),
            key_column: "sku".into(),
            version_column: "rev".into(),
        };
        assert_eq!(
            t.create_sql(Backend::Postgres, &at).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"shop\".\"price\" (\"sku\" bigint PRIMARY KEY, \"cents\" bigint NOT NULL, \
             \"currency\" text NOT NULL DEFAULT 'EUR', \"rev\" bigint NOT NULL DEFAULT 1)"
        );
        assert!(t
            .create_sql(Backend::Sqlite, &Placement::default_for(t))
            .unwrap()
            .starts_with("CREATE TABLE IF NOT EXISTS \"price\" (\"id\" INTEGER PRIMARY KEY"));
        let (statements, n) = t.seed_sql(&at).unwrap();
        assert_eq!((statements.len(), n), (4, 1000));
        assert!(statements[0].starts_with(
            "INSERT INTO \"shop\".\"price\" (\"sku\", \"cents\", \"currency\") VALUES (1, 1036, 'EUR'), "
        ));
        assert!(table("nope").is_none());
        for t in CATALOG {
            for (_, values) in (t.seed)() {
                assert_eq!(values.len(), t.columns.len(), "{}", t.name);
            }
        }
    }
}

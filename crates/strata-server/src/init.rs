//! `strata init --config F`: creates the tables a config's namespaces are bound to, from the demo catalog's one
//! description ([`crate::demo::CATALOG`]), with the key and version columns the config names, and seeds the empty
//! ones — so `examples/strata.toml` runs on an empty database. Idempotent: existing tables are left as they are
//! (an existing empty one is seeded). A namespace whose table the catalog does not describe is reported, not
//! guessed at. `strata serve --config F` does not create tables: it names every missing table and this command.

use std::collections::BTreeSet;

use anyhow::Context;

use crate::config::Config;
use crate::demo::{self, Placement};
use crate::state::{bound_tables, connect_sources};

/// What `init` did, one line per table.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `source main: table "price": created, seeded 1000 rows`.
    pub lines: Vec<String>,
    /// Tables the demo catalog does not describe (left for the user), as `namespace (table)`.
    pub skipped: Vec<String>,
}

/// Creates and seeds the demo-catalog tables `config` needs in its sources.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let pools = connect_sources(config).await?;
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    for (source, pool) in &pools {
        let mut wanted = Vec::new();
        for (ns, src, table) in bound_tables(config) {
            if src != *source || !seen.insert((src.clone(), table.clone())) {
                continue;
            }
            let n = config.namespaces[&ns].get_ref();
            match demo::table(&table) {
                Some(t) => wanted.push((
                    t,
                    Placement {
                        table,
                        key_column: n.key_column.clone(),
                        version_column: n.version_column.clone(),
                    },
                )),
                None => report.skipped.push(format!("{ns} (table {table:?})")),
            }
        }
        if wanted.is_empty() {
            continue;
        }
        let done = demo::install(pool, &wanted)
            .await
            .with_context(|| format!("source {source:?}"))?;
        for ((_, at), outcome) in wanted.iter().zip(done) {
            report
                .lines
                .push(format!("source {source}: table {:?}: {outcome}", at.table));
        }
    }
    Ok(report)
}

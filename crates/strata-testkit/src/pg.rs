//! PostgreSQL helpers for tests: the URL, names unique to a test (for a schema, a slot, a publication), and `psql`
//! for changes made entirely outside Strata.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `STRATA_PG_URL`, or the local `test` database.
pub fn url() -> String {
    std::env::var("STRATA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A lowercase identifier unique to this process and call: `strata_t_<name>_<pid>_<nanos>_<n>`. The `strata_t_`
/// prefix lets `scripts/test.sh` drop replication slots an interrupted run left behind.
pub fn unique_name(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "strata_t_{name}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs SQL with the `psql` binary (stopping at the first error); panics with psql's message if it fails.
pub fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url(), "-c", sql])
        .output()
        .expect("psql must be installed (scripts/test.sh installs postgresql-client)");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

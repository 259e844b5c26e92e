//! [`VersionedTable`]: an in-memory source of truth with row versions, readable and writable by every node of a
//! test (a `Source` and a `Sink`), and changeable behind the caches' backs with [`VersionedTable::set`].

use std::collections::HashMap;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use strata_core::{Fetched, SharedError, Sink, Source};

/// Rows `key → (value, version)`; every write bumps the row's version, as `version = version + 1` would.
#[derive(Debug, Default)]
pub struct VersionedTable<V> {
    rows: Mutex<HashMap<String, (V, u64)>>,
}

impl<V: Clone> VersionedTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            rows: Mutex::new(HashMap::new()),
        }
    }

    /// Writes `value` behind the caches' backs (as `psql` would); returns the new version.
    pub fn set(&self, key: &str, value: V) -> u64 {
        let mut rows = self.rows.lock();
        let version = rows.get(key).map_or(1, |(_, v)| v + 1);
        rows.insert(key.to_owned(), (value, version));
        version
    }

    /// The row, if any.
    pub fn get(&self, key: &str) -> Option<(V, u64)> {
        self.rows.lock().get(key).cloned()
    }
}

impl<V: Clone + Send + Sync + 'static> Source<V> for VersionedTable<V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        let row = self.get(key);
        Box::pin(async move {
            Ok(match row {
                Some((v, version)) => Fetched::value(v).with_version(version),
                None => Fetched::absent(),
            })
        })
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        let found = keys
            .iter()
            .filter_map(|k| {
                self.get(k)
                    .map(|(v, ver)| (k.clone(), Fetched::value(v).with_version(ver)))
            })
            .collect();
        Box::pin(async move { Ok(found) })
    }
}

impl<V: Clone + Send + Sync + 'static> Sink<V> for VersionedTable<V> {
    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>> {
        let version = self.set(key, value.clone());
        Box::pin(async move { Ok(version) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        let old = self.rows.lock().remove(key);
        Box::pin(async move { Ok(old.map(|(_, v)| v + 1)) })
    }
}

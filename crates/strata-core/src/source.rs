//! The source of truth as the engine sees it: [`Source`] (reads) and [`Sink`] (writes).
//!
//! A namespace bound to a source reads through it (`Namespace::fetch`) and, bound to a sink, writes through it
//! (`Namespace::write` / `Namespace::delete`) in the namespace's write mode. Versions travel from the source into
//! every tier: a sink returns the version it stored, and an older version never overwrites a newer one.

use std::collections::HashMap;

use futures::future::BoxFuture;

use crate::error::SharedError;
use crate::fetched::Fetched;

/// Reads values (with version and tags) from the source of truth.
pub trait Source<V>: Send + Sync + 'static {
    /// One key; [`Fetched::absent`] when the source has no such key.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>>;

    /// Several keys with one query; keys missing from the map are absent.
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>>;
}

/// Writes values to the source of truth.
pub trait Sink<V>: Send + Sync + 'static {
    /// Inserts or replaces the value of `key`; returns the version the source now holds for it.
    fn upsert<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, Result<u64, SharedError>>;

    /// Deletes `key`; returns the version of the deletion when the source has one.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>>;
}

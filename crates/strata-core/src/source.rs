//! The source of truth as the engine sees it: [`Source`] (reads) and [`Sink`] (writes).
//!
//! A namespace bound to a source reads through it (`Namespace::fetch`) and, bound to a sink, writes through it
//! (`Namespace::write` / `Namespace::delete`) in the namespace's write mode. Versions travel from the source into
//! every tier: a sink returns the version it stored, and an older version never overwrites a newer one.

use std::collections::HashMap;

use futures::future::BoxFuture;

use crate::error::{SharedError, WriteErrorKind};
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

    /// Whose fault one of this sink's errors is: the value's ([`WriteErrorKind::Rejected`], naming the field and
    /// the rule) or the source's (down, slow, failing). The engine puts it in [`crate::Error::Write`], so callers
    /// never need the sink's own error type. The default says [`WriteErrorKind::Failed`] for everything; a sink
    /// whose error type implements [`crate::Rejection`] answers `MyError::classify(error)`.
    fn classify(&self, error: &SharedError) -> WriteErrorKind {
        let _ = error;
        WriteErrorKind::Failed
    }

    /// Checks, without writing, that the source would accept `value` for `key` (columns, types, `NOT NULL`):
    /// write-behind calls it before it acknowledges, so what the source must refuse is refused at once. The
    /// default accepts everything.
    fn check(&self, key: &str, value: &V) -> Result<(), SharedError> {
        let _ = (key, value);
        Ok(())
    }

    /// Writes `value` with the caller's `version` unless the source already holds `version` or a newer one for
    /// `key` (`… WHERE version < $version`): idempotent, and an older write replayed late cannot overwrite a newer
    /// one. Returns whether the row was written. Write-behind flushes through this.
    ///
    /// The default is for sources without versions: a plain [`upsert`](Self::upsert) (unfenced).
    fn upsert_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a V,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>>
    where
        V: Sync,
    {
        let _ = version;
        Box::pin(async move { self.upsert(key, value).await.map(|_| true) })
    }

    /// [`upsert_fenced`](Self::upsert_fenced) for many distinct keys, as one batch (one statement or one
    /// transaction where the source allows): all written or fenced, or an error and — for a transactional
    /// source — nothing written. Returns, per item, whether it was written.
    ///
    /// The default calls `upsert_fenced` per item.
    fn upsert_fenced_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a V, u64)],
    ) -> BoxFuture<'a, Result<Vec<bool>, SharedError>>
    where
        V: Sync,
    {
        Box::pin(async move {
            let mut out = Vec::with_capacity(items.len());
            for (k, v, version) in items {
                out.push(self.upsert_fenced(k, v, *version).await?);
            }
            Ok(out)
        })
    }

    /// Deletes `key` unless the source holds a version newer than `version`. Returns whether a row was deleted.
    ///
    /// The default is a plain [`delete`](Self::delete).
    fn delete_fenced<'a>(
        &'a self,
        key: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        let _ = version;
        Box::pin(async move { self.delete(key).await.map(|v| v.is_some()) })
    }
}

/// A shared source is a source (so an `Arc<dyn Source<V>>` can be wrapped, e.g. in a retrying adapter).
impl<V, S: Source<V> + ?Sized> Source<V> for std::sync::Arc<S> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        (**self).load(key)
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        (**self).load_many(keys)
    }
}

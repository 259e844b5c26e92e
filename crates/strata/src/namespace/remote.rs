//! The remote apply: how another node's bus message (or a gap in the bus) changes this namespace. Nothing here is
//! published again; the cache's bus node routes each message to its namespace through [`ErasedNamespace`].

use futures::future::BoxFuture;
use strata_core::Invalidation;

use super::Namespace;
use crate::stats::NamespaceStats;

/// Type-erased namespace operations for the [`crate::Cache`] registry (invalidation by name, stats).
pub(crate) trait ErasedNamespace: Send + Sync {
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    fn invalidate_all(&self) -> BoxFuture<'_, ()>;
    fn stats(&self) -> NamespaceStats;
    /// Applies another node's invalidation without publishing it again. Returns `true` for a tag invalidation.
    fn apply_remote(&self, what: &Invalidation, version: Option<u64>) -> bool;
    /// Drops every entry without publishing (a bus gap).
    fn flush_local(&self);
}

impl<V: Send + Sync + 'static> ErasedNamespace for Namespace<V> {
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Namespace::invalidate(self, key))
    }
    fn invalidate_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(Namespace::bump_generation(self))
    }
    fn stats(&self) -> NamespaceStats {
        self.inner.stats()
    }
    fn apply_remote(&self, what: &Invalidation, version: Option<u64>) -> bool {
        let inner = &*self.inner;
        match what {
            Invalidation::Delete { key } | Invalidation::Set { key } => {
                inner.invalidate_key(key, version);
                false
            }
            Invalidation::Clear => {
                inner.invalidate_all_local();
                if let Some(l2) = &inner.l2 {
                    l2.forget_barriers();
                }
                false
            }
            Invalidation::Tag { tag } => {
                inner.invalidate_tag_local(tag);
                if let Some(l2) = &inner.l2 {
                    l2.forget_barriers();
                }
                true
            }
            Invalidation::Filled { key } => {
                if let Some(l2) = &inner.l2 {
                    l2.wake(key);
                }
                false
            }
            // Handled by the cache (it owns the feeds), never routed to a namespace.
            Invalidation::FeedMark { .. } => false,
        }
    }
    fn flush_local(&self) {
        self.inner.invalidate_all_local();
        if let Some(l2) = &self.inner.l2 {
            l2.forget_barriers();
        }
    }
}

//! A namespace as seen without its value type: by the cache's registry (`ErasedNamespace`: invalidation by
//! name, stats) and by the bus node for a received message ([`RemoteOps`]: primitive operations that never
//! publish — the message came from the bus).

use futures::future::BoxFuture;
use strata_core::{UnixMillis, SOFT_TAG_PREFIX};

use super::Namespace;
use crate::bus::RemoteOps;
use crate::stats::NamespaceStats;

/// Type-erased namespace operations for the [`crate::Cache`] registry (invalidation by name, stats).
pub(crate) trait ErasedNamespace: Send + Sync {
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    fn invalidate_all(&self) -> BoxFuture<'_, ()>;
    fn invalidate_tag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, ()>;
    fn stats(&self) -> NamespaceStats;
}

impl<V: Send + Sync + 'static> ErasedNamespace for Namespace<V> {
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Namespace::invalidate(self, key))
    }
    fn invalidate_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(Namespace::bump_generation(self))
    }
    fn invalidate_tag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Namespace::invalidate_tag(self, tag))
    }
    fn stats(&self) -> NamespaceStats {
        self.inner.stats()
    }
}

impl<V: Send + Sync + 'static> RemoteOps for Namespace<V> {
    fn drop_key(&self, key: &str, version: Option<u64>) {
        self.inner.invalidate_key(key, version);
    }

    fn drop_tag(&self, tag: &str, sent_at: UnixMillis) {
        let now = self.inner.clock.now();
        let at = if tag.starts_with(SOFT_TAG_PREFIX) {
            sent_at.min(now)
        } else {
            now
        };
        self.inner.invalidate_tag_local(tag, at);
        self.forget_l2_barriers();
    }

    fn drop_all(&self) {
        self.inner.invalidate_all_local();
        self.forget_l2_barriers();
    }

    fn lease_freed(&self, key: &str) {
        if let Some(l2) = &self.inner.l2 {
            l2.wake(key);
        }
    }
}

impl<V: Send + Sync + 'static> Namespace<V> {
    /// Another node raised a barrier (a tag, or a clear): the cached copy of L2's barriers is stale.
    fn forget_l2_barriers(&self) {
        if let Some(l2) = &self.inner.l2 {
            l2.forget_barriers();
        }
    }
}

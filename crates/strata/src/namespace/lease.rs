//! The key's distributed lease, held by a guard: the node that holds it loads the key for every node, and the
//! guard makes sure the lease ends on every path.
//!
//! [`LeaseGuard::end`] is the one place a load task ends its lease: after a stored fill the fill itself ended it
//! in L2, so the guard only tells the waiting nodes (`Filled`); after anything else — a refused fill, a load that
//! failed, a write that overtook the load — it gives the lease back and tells them to look again. The load task
//! awaits `end` before it answers, so the callers it answers find the key free. Were the task to end any other
//! way (a panic, a runtime shutting down), dropping the guard gives the lease back from a task of its own — the
//! way pingora-cache's write permit hands over to the waiters when it is dropped — and the lease's TTL bounds
//! the rest.

use std::sync::Arc;

use strata_core::{Invalidation, LeaseToken};

use super::Inner;

/// This node holds the key's lease.
pub(super) struct LeaseGuard<V: Send + Sync + 'static> {
    inner: Arc<Inner<V>>,
    key: String,
    /// `None` once ended.
    token: Option<LeaseToken>,
}

impl<V: Send + Sync + 'static> LeaseGuard<V> {
    pub(super) fn new(inner: Arc<Inner<V>>, key: &str, token: LeaseToken) -> Self {
        Self {
            inner,
            key: key.to_owned(),
            token: Some(token),
        }
    }

    /// The token, for the fill's fence.
    pub(super) fn token(&self) -> &LeaseToken {
        self.token
            .as_ref()
            .expect("a lease guard holds its token until it ends")
    }

    /// Ends the lease: `filled` — a stored fill ended it in L2 — only tells the waiting nodes; otherwise the lease is
    /// given back first.
    pub(super) async fn end(mut self, filled: bool) {
        let Some(token) = self.token.take() else {
            return;
        };
        if filled {
            self.inner.announce_lease_free(&self.key);
        } else {
            self.inner.give_back(&self.key, token).await;
        }
    }
}

impl<V: Send + Sync + 'static> Drop for LeaseGuard<V> {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (inner, key) = (self.inner.clone(), std::mem::take(&mut self.key));
            runtime.spawn(async move { inner.give_back(&key, token).await });
        }
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Gives back a lease whose load did not fill L2, and tells the waiting nodes to look again.
    async fn give_back(&self, key: &str, token: LeaseToken) {
        let l2 = self.ns_l2();
        let _ = l2
            .link
            .call(l2.link.tier.release(&self.name, key, &token))
            .await;
        self.announce_lease_free(key);
    }

    /// Tells the nodes waiting for `key`'s lease to look again.
    fn announce_lease_free(&self, key: &str) {
        self.publish(
            Invalidation::Filled {
                key: key.to_owned(),
            },
            None,
        );
    }
}

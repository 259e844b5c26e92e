//! Claims: at most one node at a time does a piece of background work for a key — the edge proxy's
//! revalidation of a stale (or soft-purged) response — while the others keep serving what they hold.
//!
//! A claim is a lease in the shared tier under a key of its own (`key␀claim:{what}`), so it never touches the
//! key's load lease or its fence: it only decides who goes to the source. Without L2 every claim is won (the
//! caller's own collapsing is all there is to do), and so is one the shared tier cannot answer: a Redis outage
//! makes every node revalidate for itself — more origin requests, never a wrong answer. A won claim ends with
//! [`Namespace::end_claim`], or with its TTL when the node dies first.

use std::time::Duration;

use strata_core::{LeaseGrant, LeaseToken};

use super::Namespace;

/// The outcome of [`Namespace::claim`].
#[derive(Debug)]
pub enum Claim {
    /// This node does the work; end the claim with [`Namespace::end_claim`] when it is done.
    Won(ClaimToken),
    /// Another node holds the claim: it is doing the work.
    Held,
}

/// A won claim (see [`Claim::Won`]).
#[derive(Debug)]
pub struct ClaimToken {
    key: String,
    token: Option<LeaseToken>,
}

impl<V: Send + Sync + 'static> Namespace<V> {
    /// Claims the work `what` on `key` across the nodes sharing L2, for at most `ttl` (see the module docs of
    /// `claim`): [`Claim::Held`] when another node claimed it and has not ended its claim.
    pub async fn claim(&self, key: &str, what: &str, ttl: Duration) -> Claim {
        let claim_key = format!("{key}\u{0}claim:{what}");
        let Some(l2) = &self.inner.l2 else {
            return Claim::Won(ClaimToken {
                key: claim_key,
                token: None,
            });
        };
        let grant = l2
            .link
            .call(
                l2.link
                    .tier
                    .lease(&self.inner.name, &claim_key, ttl, Duration::ZERO),
            )
            .await;
        match grant {
            Ok(LeaseGrant::Granted(token)) => Claim::Won(ClaimToken {
                key: claim_key,
                token: Some(token),
            }),
            Ok(LeaseGrant::Held | LeaseGrant::RateLimited) => Claim::Held,
            // The shared tier cannot say: do the work here rather than leave it undone.
            Err(_) => Claim::Won(ClaimToken {
                key: claim_key,
                token: None,
            }),
        }
    }

    /// Ends a won claim, so the next one for the key can be won at once.
    pub async fn end_claim(&self, claim: ClaimToken) {
        let (Some(l2), Some(token)) = (&self.inner.l2, claim.token) else {
            return;
        };
        let _ = l2
            .link
            .call(l2.link.tier.release(&self.inner.name, &claim.key, &token))
            .await;
    }
}

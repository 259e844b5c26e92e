//! A bus that refuses to publish while jammed (the consumer of a change cannot finish it, as when the transport is
//! down), and whose subscriptions can be cut (a node stops hearing anything, as when its link is black-holed).

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use strata_core::{Bus, BusEvent, BusMessage, Error, Tier};
use tokio::sync::watch;

/// Wraps a bus; [`jam`](Self::jam) makes every publish fail until [`unjam`](Self::unjam); [`cut`](Self::cut)
/// withholds every subscription event (messages and contact confirmations) until [`restore`](Self::restore),
/// when the withheld ones are delivered.
pub struct JammableBus<B> {
    inner: B,
    jammed: AtomicBool,
    cut: watch::Sender<bool>,
}

impl<B: Bus> JammableBus<B> {
    /// Wraps `inner`, not jammed, not cut.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            jammed: AtomicBool::new(false),
            cut: watch::channel(false).0,
        }
    }

    /// Publishes fail from now on.
    pub fn jam(&self) {
        self.jammed.store(true, Ordering::SeqCst);
    }

    /// Publishes go through again.
    pub fn unjam(&self) {
        self.jammed.store(false, Ordering::SeqCst);
    }

    /// Subscribers hear nothing from now on.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Subscribers hear again, starting with what was withheld.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl<B: Bus> Bus for JammableBus<B> {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>> {
        if self.jammed.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(Error::Unavailable {
                    tier: Tier::L2,
                    message: "the bus is jammed (test)".into(),
                })
            });
        }
        self.inner.publish(msg)
    }

    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        let events = self.inner.subscribe();
        let cut = self.cut.subscribe();
        futures::stream::unfold((events, cut), |(mut events, mut cut)| async move {
            // While cut, nothing is handed over: the inner stream's events wait (a broadcast channel keeps them),
            // and one that arrives as the cut begins waits for the restore.
            let _ = cut.wait_for(|c| !c).await;
            let ev = events.next().await?;
            let _ = cut.wait_for(|c| !c).await;
            Some((ev, (events, cut)))
        })
        .boxed()
    }

    fn liveness_bound(&self) -> Option<std::time::Duration> {
        self.inner.liveness_bound()
    }
}

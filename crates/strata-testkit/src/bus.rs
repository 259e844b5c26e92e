//! A bus that refuses to publish while jammed: the consumer of a change cannot finish it, as when the transport
//! is down.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use strata_core::{Bus, BusEvent, BusMessage, Error, Tier};

/// Wraps a bus; [`jam`](Self::jam) makes every publish fail until [`unjam`](Self::unjam).
pub struct JammableBus<B> {
    inner: B,
    jammed: AtomicBool,
}

impl<B: Bus> JammableBus<B> {
    /// Wraps `inner`, not jammed.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            jammed: AtomicBool::new(false),
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
        self.inner.subscribe()
    }
}

//! The embedded-mode transport: a Tokio broadcast channel in one process.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use strata_core::bus::{Bus, BusEvent};
use strata_core::{BusMessage, Error};
use tokio::sync::broadcast;

/// The embedded-mode bus: a Tokio broadcast channel. A subscriber that falls more than `capacity` messages behind
/// gets a [`BusEvent::Gap`].
#[derive(Clone)]
pub struct InProcessBus {
    tx: broadcast::Sender<BusMessage>,
    heartbeat: Option<Duration>,
}

impl InProcessBus {
    /// A bus buffering up to 4,096 messages per slow subscriber.
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    /// A bus buffering up to `capacity` messages per slow subscriber.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
            heartbeat: None,
        }
    }

    /// Makes subscriptions confirm contact ([`BusEvent::Live`]) after each burst of messages and at least every
    /// `heartbeat`, and reports `2 × heartbeat` as the [`Bus::liveness_bound`] — the in-process stand-in for a
    /// networked bus, so that the trust rule can be tested without one. Without it (the embedded default) the
    /// bus confirms nothing and nodes trust their L1 as a single process may.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = Some(heartbeat.max(Duration::from_millis(1)));
        self
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus for InProcessBus {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>> {
        // No subscriber is not an error: nobody needs telling.
        let _ = self.tx.send(msg);
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        let rx = self.tx.subscribe();
        let heartbeat = self.heartbeat;
        // `owe_live`: confirm contact as soon as the channel is drained (a send is synchronous, so an empty
        // channel means everything published so far was yielded).
        futures::stream::unfold(
            (rx, heartbeat.is_some()),
            move |(mut rx, mut owe_live)| async move {
                loop {
                    if owe_live && rx.is_empty() {
                        let live = BusEvent::Live {
                            behind: Duration::ZERO,
                        };
                        return Some((live, (rx, false)));
                    }
                    let tick = async {
                        match heartbeat {
                            Some(h) => tokio::time::sleep(h).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        r = rx.recv() => {
                            let ev = match r {
                                Ok(m) => BusEvent::Message(m),
                                Err(broadcast::error::RecvError::Lagged(n)) => BusEvent::Gap {
                                    reason: format!("subscriber lagged: {n} messages dropped"),
                                },
                                Err(broadcast::error::RecvError::Closed) => return None,
                            };
                            return Some((ev, (rx, heartbeat.is_some())));
                        }
                        _ = tick => owe_live = true,
                    }
                }
            },
        )
        .boxed()
    }

    fn liveness_bound(&self) -> Option<Duration> {
        self.heartbeat.map(|h| h * 2)
    }
}

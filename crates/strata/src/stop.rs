//! The stop signal of the cache's background tasks: the bus node's two loops, the L2 replay task and the
//! write-behind flushers.
//!
//! One [`Stop`] (held by whatever owns the task) and any number of [`Stopping`] receivers (held by the task).
//! - [`Stop::now`]: stop at the next idle point.
//! - [`Stop::by`]: finish what is queued, but stop by the deadline at the latest (a flusher draining at close).
//! - Dropping the `Stop` counts as [`Stop::now`]: a task never outlives the handle that owns it.
//!
//! The signal only ever gets tighter: a later, earlier deadline replaces the first; a later, later one does not.
//! It is a `watch` channel because tasks await it inside `select!` next to their work and only the latest value
//! matters.

use tokio::sync::watch;
use tokio::time::Instant;

/// The owner's side: asks the task to stop.
#[derive(Debug)]
pub(crate) struct Stop(watch::Sender<Option<Instant>>);

/// The task's side: whether (and by when) it is asked to stop.
#[derive(Debug, Clone)]
pub(crate) struct Stopping(watch::Receiver<Option<Instant>>);

impl Stop {
    /// A signal not yet given, and its receiver.
    pub(crate) fn new() -> (Self, Stopping) {
        let (tx, rx) = watch::channel(None);
        (Self(tx), Stopping(rx))
    }

    /// Asks the task to stop at its next idle point.
    pub(crate) fn now(&self) {
        self.by(Instant::now());
    }

    /// Asks the task to finish what is queued and stop, at `deadline` at the latest.
    pub(crate) fn by(&self, deadline: Instant) {
        self.0
            .send_modify(|d| *d = Some(d.map_or(deadline, |old| old.min(deadline))));
    }

    /// Whether a stop has been asked for.
    pub(crate) fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Another receiver (for a task started later).
    pub(crate) fn subscribe(&self) -> Stopping {
        Stopping(self.0.subscribe())
    }
}

impl Stopping {
    /// `None` while the task may run on; else the instant it must have stopped by (now, once the `Stop` is gone).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let asked = *self.0.borrow();
        match asked {
            Some(d) => Some(d),
            None if self.0.has_changed().is_err() => Some(Instant::now()),
            None => None,
        }
    }

    /// Whether the task must stop now.
    pub(crate) fn is_due(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves once a stop has been asked for (or the `Stop` is gone). The `watch` guard is dropped inside, never
    /// held by the caller across an await.
    pub(crate) async fn requested(&mut self) {
        let _ = self.0.wait_for(Option::is_some).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_stop_only_gets_tighter_and_a_dropped_one_means_now() {
        let (stop, mut rx) = Stop::new();
        assert_eq!(rx.deadline(), None);
        let soon = Instant::now() + Duration::from_secs(1);
        stop.by(soon);
        rx.requested().await;
        assert_eq!(rx.deadline(), Some(soon));
        assert!(!rx.is_due());
        stop.by(soon + Duration::from_secs(5));
        assert_eq!(
            rx.deadline(),
            Some(soon),
            "a later deadline does not loosen it"
        );
        let (stop, mut rx) = Stop::new();
        drop(stop);
        rx.requested().await;
        assert!(rx.is_due());
    }
}

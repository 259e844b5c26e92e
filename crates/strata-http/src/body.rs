//! The bodies the proxy answers with ([`ProxyBody`]), and the tee that streams an origin body to the client
//! while the same bytes are collected for the store ([`tee`]).
//!
//! # Why a tee of its own
//! A fill must not make its client wait for the whole body (the stored copy is written when the last byte is
//! in), and the bytes must be held once: every chunk is a [`Bytes`], shared by the store's buffer and the
//! client's queue (a reference count, not a copy). Two rules bound memory and time:
//! - while the response may still be stored, the producer never waits for the client: the fill is what the
//!   collapsed waiters await, and a slow client must not hold them back. The queue then holds at most what the
//!   store buffer holds anyway (the route's object limit);
//! - once the response cannot be stored (it grew past the limit, or only passes through), the producer waits
//!   while more than [`PASS_BACKLOG`] bytes are queued for the client, so a large download through the proxy
//!   holds a bounded amount of memory, and it stops reading the origin when the client has gone.
//!
//! A body that breaks off ends the client's stream with an error, so hyper aborts the response instead of
//! presenting it as complete (RFC 9112 §6.3: an incomplete message must not look complete).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, Notify};

/// The most bytes queued for a client on a body that is not being stored, before the origin read waits.
pub const PASS_BACKLOG: usize = 256 << 10;

/// Why a streamed body ended early.
#[derive(Debug, Clone, thiserror::Error)]
#[error("origin body incomplete: {0}")]
pub struct BodyError(pub String);

/// A response body from the proxy: whole (stored responses, local answers) or streamed (a fill or a pass).
#[derive(Debug)]
pub enum ProxyBody {
    /// The whole body is at hand.
    Full(Full<Bytes>),
    /// Chunks arrive from a [`Tee`].
    Streamed(Streamed),
}

impl ProxyBody {
    /// A whole body.
    pub fn full(b: Bytes) -> Self {
        Self::Full(Full::new(b))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Full(Full::new(Bytes::new()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Full(f) => Pin::new(f).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Streamed(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(f) => f.is_end_stream(),
            ProxyBody::Streamed(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(f) => f.size_hint(),
            ProxyBody::Streamed(s) => s.size_hint(),
        }
    }
}

struct Shared {
    /// Bytes sent and not yet taken by the client.
    queued: AtomicUsize,
    /// Woken when the client takes a chunk (or goes away).
    taken: Notify,
}

/// The producer side: the origin read sends every chunk here.
pub struct Tee {
    tx: Option<mpsc::UnboundedSender<Result<Bytes, BodyError>>>,
    shared: Arc<Shared>,
}

/// The client side: a body that yields what the [`Tee`] sends.
#[derive(Debug)]
pub struct Streamed {
    rx: mpsc::UnboundedReceiver<Result<Bytes, BodyError>>,
    shared: Arc<Shared>,
    /// The body's length when the origin announced it.
    length: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}

/// A connected tee: what the origin read writes to, and the body the client reads; `length` is the announced
/// `Content-Length`, if any.
pub fn tee(length: Option<u64>) -> (Tee, Streamed) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        taken: Notify::new(),
    });
    (
        Tee {
            tx: Some(tx),
            shared: shared.clone(),
        },
        Streamed {
            rx,
            shared,
            length,
            done: false,
        },
    )
}

impl Tee {
    /// Queues a chunk for the client; false once the client has gone (nothing more is queued then).
    pub fn send(&mut self, chunk: Bytes) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        let n = chunk.len();
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        if tx.send(Ok(chunk)).is_err() {
            self.tx = None;
            return false;
        }
        true
    }

    /// Whether the client is still reading.
    pub fn connected(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Waits while more than `limit` bytes are queued for a client that is still there.
    pub async fn backlog_below(&self, limit: usize) {
        loop {
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.shared.queued.load(Ordering::Acquire) <= limit || !self.connected() {
                return;
            }
            taken.await;
        }
    }

    /// Ends the client's body with an error: the response is aborted, never presented as complete.
    pub fn fail(&mut self, error: BodyError) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(error));
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.shared.queued.fetch_sub(chunk.len(), Ordering::AcqRel);
                this.shared.taken.notify_waiters();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.rx.close();
        self.shared.taken.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_arrive_in_order_and_the_end_is_the_end() {
        let (mut tee, body) = tee(Some(6));
        assert!(tee.send(Bytes::from_static(b"abc")));
        assert!(tee.send(Bytes::from_static(b"def")));
        drop(tee);
        let got = ProxyBody::Streamed(body)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_failure_is_an_error_not_an_end() {
        let (mut tee, body) = tee(None);
        tee.send(Bytes::from_static(b"abc"));
        tee.fail(BodyError("cut".into()));
        assert!(ProxyBody::Streamed(body).collect().await.is_err());
    }

    #[tokio::test]
    async fn a_client_that_went_away_is_seen_and_releases_the_producer() {
        let (mut tee, body) = tee(None);
        assert!(tee.send(Bytes::from(vec![0u8; 1000])));
        drop(body);
        assert!(!tee.connected());
        assert!(!tee.send(Bytes::from_static(b"x")));
        // Would wait forever if a gone client still counted as backlog.
        tokio::time::timeout(std::time::Duration::from_secs(1), tee.backlog_below(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_backlog_wait_ends_when_the_client_reads() {
        let (mut tee, mut body) = tee(None);
        tee.send(Bytes::from(vec![0u8; 1000]));
        let waiter = tokio::spawn(async move {
            tee.backlog_below(10).await;
            tee
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 1000);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}

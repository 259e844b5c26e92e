//! The HTTP/1.1 connection layer: a server that cannot be tied up by clients that connect and never finish.
//!
//! - **Header-read timeout** (`[server] header_read_timeout`, 10 s): a request's head must arrive within this long
//!   of its first byte — and a new connection's first request within this long of the connection — or the
//!   connection is closed (slowloris).
//! - **Idle timeout** (`idle_timeout`, 60 s): a keep-alive connection with no request for this long is closed.
//! - **Connection cap** (`max_connections`, 10,000): past it, a new connection is answered `503` at once and
//!   closed, counted in `strata_http_connections_refused_total`; `strata_http_connections_open` is the gauge of
//!   open ones and `strata_http_connections_closed_total{reason}` counts the ones the timeouts closed.
//! - **Requests per connection** (`max_requests_per_connection`, 10,000): the last one is answered with
//!   `Connection: close`.
//!
//! The proxy's listener ([`serve_edge`]) has the same limits (its own connection cap, counted in the same
//! metrics), with the proxy's request-framing guard ([`strata_http::wire::FramingGuard`]) in front of hyper and
//! hyper's own error answers left as they are (not rewritten to JSON: the proxy speaks plain HTTP).
//!
//! Each connection is served by hyper's HTTP/1.1 server with a watchdog task beside it that knows, from the
//! bytes read and the requests dispatched, whether the connection is reading a head, busy or idle. Shutdown
//! stops accepting, closes every connection that has no request in flight, and waits for the rest to answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// The limits of the connection layer (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See the module docs.
    pub header_read_timeout: Duration,
    /// See the module docs.
    pub idle_timeout: Duration,
    /// See the module docs.
    pub max_connections: usize,
    /// See the module docs.
    pub max_requests_per_connection: u64,
}

impl Limits {
    /// The limits `server` configures.
    pub fn of(server: &crate::config::ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout.0,
            idle_timeout: server.idle_timeout.0,
            max_connections: server.max_connections,
            max_requests_per_connection: server.max_requests_per_connection,
        }
    }
}

/// Open file descriptors the process keeps for itself (sources, Redis, the journal, logs) besides connections.
const FD_RESERVE: u64 = 256;

/// `max` lowered, with a warning, to what the open-file limit leaves for connections.
fn fit_fd_limit(max: usize) -> usize {
    let Ok((soft, _hard)) = rlimit::Resource::NOFILE.get() else {
        return max;
    };
    let room = soft.saturating_sub(FD_RESERVE).max(1);
    if (max as u64) > room {
        tracing::warn!(
            max_connections = max,
            open_file_limit = soft,
            "server.max_connections exceeds what the open-file limit allows; serving at most {room} connections \
             (raise `ulimit -n`)"
        );
        room as usize
    } else {
        max
    }
}

#[derive(Debug)]
struct Phase {
    /// Requests dispatched and not yet answered.
    in_flight: u32,
    /// When the head being read began (its first byte, or the connection's start for the first request).
    head_since: Option<Instant>,
    /// When the connection last finished a request (or started).
    last: Instant,
}

struct ConnState {
    phase: Mutex<Phase>,
    changed: Notify,
    requests: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            phase: Mutex::new(Phase {
                in_flight: 0,
                head_since: Some(now),
                last: now,
            }),
            changed: Notify::new(),
            requests: AtomicU64::new(0),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bytes_read(&self) {
        let mut p = self.phase();
        if p.in_flight == 0 && p.head_since.is_none() {
            p.head_since = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    /// A request was dispatched: returns how many this connection has had.
    fn begin(self: &Arc<Self>) -> (u64, InFlight) {
        let mut p = self.phase();
        p.in_flight += 1;
        p.head_since = None;
        drop(p);
        self.changed.notify_one();
        (
            self.requests.fetch_add(1, Ordering::Relaxed) + 1,
            InFlight(self.clone()),
        )
    }
}

/// Ends a request's in-flight state when its handling ends (or is dropped).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut p = self.0.phase();
        p.in_flight = p.in_flight.saturating_sub(1);
        p.last = Instant::now();
        drop(p);
        self.0.changed.notify_one();
    }
}

/// The socket, telling the watchdog when bytes arrive, and giving hyper's automatic error answers (a head it
/// could not take: 400, 414, 431 with an empty body) a JSON body ([`crate::edge::rewrite_automatic`]).
struct Watched {
    stream: TcpStream,
    state: Arc<ConnState>,
    /// Rewrite hyper's automatic error answers to JSON (the data API; not the proxy).
    json_errors: bool,
    /// A rewritten answer being written: the bytes, how many are written, and how many of hyper's it stands for.
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl Watched {
    /// Writes `buf` — or, when it is hyper's automatic error answer, its JSON version — to the socket.
    fn write_or_rewrite(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if !self.json_errors {
            return None;
        }
        if self.rewrite.is_none() {
            let with_json = crate::edge::rewrite_automatic(buf)?;
            self.rewrite = Some((with_json, 0, buf.len()));
        }
        let (bytes, done, claimed) = self.rewrite.as_mut()?;
        while *done < bytes.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let claimed = *claimed;
        self.rewrite = None;
        Some(Poll::Ready(Ok(claimed)))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(r) = self.write_or_rewrite(cx, buf) {
            return r;
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(first) = first {
            if self.rewrite.is_some() || bufs.iter().map(|b| b.len()).sum::<usize>() == first.len()
            {
                if let Some(r) = self.write_or_rewrite(cx, first) {
                    return r;
                }
            }
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    Shutdown,
}

/// Resolves when the connection has to be closed: its head took too long, it idled too long, or (once shutting
/// down) it is reading a head.
async fn watchdog(
    state: Arc<ConnState>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Closed {
    loop {
        let stopping = *shutdown.borrow();
        let (deadline, reason) = {
            let p = state.phase();
            if p.in_flight > 0 {
                (None, Closed::IdleTimeout)
            } else if stopping && p.head_since.is_some() {
                // Reading a head nobody will answer. (Idle ones hyper closes itself on graceful shutdown; one
                // whose handler just returned still has its response to write.)
                return Closed::Shutdown;
            } else if let Some(t) = p.head_since {
                (Some(t + limits.header_read_timeout), Closed::HeaderTimeout)
            } else {
                (Some(p.last + limits.idle_timeout), Closed::IdleTimeout)
            }
        };
        let notified = state.changed.notified();
        match deadline {
            Some(d) if Instant::now() >= d => return reason,
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d) => {}
                    _ = notified => {}
                    _ = shutdown.changed(), if !stopping => {}
                }
            }
            None => {
                tokio::select! {
                    _ = notified => {}
                    _ = shutdown.changed(), if !stopping => {}
                }
            }
        }
    }
}

/// What a refused connection reads before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 97\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"the server holds server.max_connections; retry later\"}";

/// How a listener's connections are read.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// The data API: hyper's automatic error answers get JSON bodies.
    Api,
    /// The proxy: heads with ambiguous framing (or longer than this) are refused before hyper parses them.
    Edge { max_head: usize },
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves; then stops accepting, closes idle
/// connections, lets in-flight requests finish (up to `drain`) and returns.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    serve_framed(listener, app, limits, shutdown, drain, Framing::Api).await
}

/// Serves the caching reverse proxy on `listener` like [`serve`] does the data API (same limits, same graceful
/// shutdown: in-flight responses finish), behind the proxy's framing guard.
pub async fn serve_edge(
    listener: TcpListener,
    proxy: Arc<strata_http::proxy::Proxy>,
    route_limits: Arc<crate::limits::RouteLimits>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    // The guard's limit is a hard wall well past the proxy's own header limit, which answers first.
    let max_head = proxy.config().max_header_bytes.saturating_mul(2);
    let app = axum::Router::new().fallback(move |req: Request<axum::body::Body>| {
        let (proxy, route_limits) = (proxy.clone(), route_limits.clone());
        async move {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0);
            let decided = if route_limits.by_route.iter().any(Option::is_some) {
                route_limits
                    .admit(&proxy, &req.uri().clone(), &req.headers().clone(), peer)
                    .await
            } else {
                Ok(None)
            };
            match decided {
                Err(refused) => refused,
                Ok(decided) => {
                    let mut r =
                        axum::response::IntoResponse::into_response(proxy.handle(req).await);
                    if let Some((limit, d)) = decided {
                        limit.headers(&d, r.headers_mut());
                    }
                    r
                }
            }
        }
    });
    serve_framed(
        listener,
        app,
        limits,
        shutdown,
        drain,
        Framing::Edge { max_head },
    )
    .await
}

async fn serve_framed(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    framing: Framing,
) -> io::Result<()> {
    let max = fit_fd_limit(limits.max_connections);
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_headers(crate::edge::HYPER_MAX_HEADERS)
        .max_buf_size(crate::edge::HYPER_MAX_BUF);
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok((s, peer)) => (s, peer),
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("strata_http_connections_refused_total").increment(1);
            let _ = stream.try_write(REFUSED);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, stop) = (app.clone(), builder.clone(), stop_rx.clone());
        tokio::spawn(async move {
            metrics::gauge!("strata_http_connections_open").increment(1.0);
            let state = Arc::new(ConnState::new());
            let watched = Watched {
                stream,
                state: state.clone(),
                json_errors: matches!(framing, Framing::Api),
                rewrite: None,
            };
            match framing {
                Framing::Api => connection(watched, app, builder, state, limits, stop, peer).await,
                Framing::Edge { max_head } => {
                    let io = strata_http::wire::FramingGuard::new(watched, max_head);
                    connection(io, app, builder, state, limits, stop, peer).await
                }
            }
            metrics::gauge!("strata_http_connections_open").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain, permits.acquire_many(max as u32)).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("requests still in flight after {drain:?}; closing their connections")
        }
    }
    Ok(())
}

/// Serves one connection until it ends, its watchdog closes it, or (after shutdown) its last request is
/// answered.
async fn connection<I>(
    io: I,
    app: axum::Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    state: Arc<ConnState>,
    limits: Limits,
    stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let per_conn = state.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // The peer, for rate limits keyed by client address (`crate::limits`).
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let (n, guard) = per_conn.begin();
        let app = app.clone();
        async move {
            let mut resp = app.oneshot(req).await?;
            drop(guard);
            if n >= limits.max_requests_per_connection {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut dog = std::pin::pin!(watchdog(state, limits, stop.clone()));
    let mut stop = stop;
    let mut graceful = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            reason = dog.as_mut() => {
                match reason {
                    Closed::HeaderTimeout => metrics::counter!("strata_http_connections_closed_total", "reason" => "header_timeout").increment(1),
                    Closed::IdleTimeout => metrics::counter!("strata_http_connections_closed_total", "reason" => "idle_timeout").increment(1),
                    Closed::Shutdown => {}
                }
                break;
            }
            _ = stop.changed(), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Errors of one incoming connection (it went away before it was accepted), not of the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

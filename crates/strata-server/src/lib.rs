//! `strata-server`: Strata for any language — a data API over HTTP with read-through and per-namespace write
//! policies, Prometheus metrics, a dashboard, and the embedded default (SQLite, L1 only) that needs nothing else.
//!
//! The binary (`strata`) is thin: it parses arguments and calls [`run`] with a bound listener, a [`Config`] and a
//! shutdown future, so tests start real servers on port 0.
//!
//! Consistency: as the engine's (see the `strata` crate): a write through any node is in L2 before its response,
//! and other nodes drop their L1 copies within the bus latency; with `[cdc]`, changes made outside Strata do too.
//!
//! Shutdown ([`run`] after `shutdown` resolves): readiness turns false, in-flight requests finish, the cache
//! closes — the write-behind queue drains (up to 30 s; what remains stays journaled for the next start), the L2
//! replay task stops and the bus node publishes what it has queued and closes — and the CDC consumer stops after
//! its current transaction.

pub mod access;
pub mod api;
pub mod auth;
pub mod bench;
pub mod cdn;
pub mod config;
pub mod conn;
pub mod dead_letters;
pub mod demo;
pub mod edge;
pub mod http_caching;
pub mod init;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod purge;
pub mod slot;
pub mod state;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, Request};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use config::{Config, ConfigError};
pub use state::AppState;

/// How to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Create and seed the demo catalog in every source first (the embedded default does).
    pub seed_demo: bool,
    /// Open a damaged write-behind journal anyway, keeping every intact record (`--recover-journal`); by default
    /// damage stops the start with an error naming the file and byte offset.
    pub recover_journal: bool,
}

/// Builds the state for `config` (connecting sources, Redis, CDC), after the checks of
/// [`Config::check_start`] (the token variable is set; no token only on loopback).
pub async fn build(config: &Config, options: &RunOptions) -> anyhow::Result<Arc<AppState>> {
    config.check_start()?;
    metrics::install();
    AppState::build(config, options).await
}

/// The router with access checks ([`access`]: Host, Origin, JSON bodies), head limits and JSON for every error
/// answer ([`edge`]), request ids and request logs around
/// it, for a server listening on `listen`.
pub fn app(state: Arc<AppState>, listen: std::net::SocketAddr) -> axum::Router {
    let request_id = HeaderName::from_static("x-request-id");
    let rules = Arc::new(access::Access::new(listen, &state.server));
    let head = edge::HeadLimits::for_key_len(state.max_key_len);
    api::router(state)
        .layer(axum::middleware::from_fn_with_state(rules, access::check))
        .layer(axum::middleware::from_fn_with_state(head, edge::check))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Serves `config` on `listener` until `shutdown` resolves, then shuts down gracefully (see the crate docs).
pub async fn run(
    listener: TcpListener,
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build(&config, &options).await?;
    serve(listener, state, shutdown).await
}

/// Serves an already built state (see [`run`]) through the connection layer of [`conn`] (header-read and idle
/// timeouts, a cap on connections and on requests per connection). Refuses a non-loopback `listener` when no
/// token is set and `allow_unauthenticated` is not (protected mode). With `[proxy]`, the proxy is served too, on
/// its configured address (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, None, state, shutdown).await
}

/// Binds the proxy's listener (`[proxy] listen`), when there is a proxy.
pub async fn bind_proxy(state: &AppState) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context;
    match &state.proxy {
        Some(p) => Ok(Some(TcpListener::bind(p.listen).await.with_context(
            || format!("binding the proxy's listener {} ([proxy] listen)", p.listen),
        )?)),
        None => Ok(None),
    }
}

/// [`serve`], with the proxy's listener already bound (else it is bound here, when there is a proxy). The proxy
/// runs beside the data API with the same connection limits; on shutdown both stop accepting and finish their
/// in-flight requests before the cache closes.
pub async fn serve_with(
    listener: TcpListener,
    proxy_listener: Option<TcpListener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if let Some(problem) = config::unauthenticated_problem(
        addr,
        state.token.is_some(),
        state.server.allow_unauthenticated,
    ) {
        anyhow::bail!("{problem}");
    }
    tracing::info!(%addr, namespaces = state.namespaces.len(), "strata serving");
    let publisher = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                metrics::publish(&state);
            }
        })
    };
    let drain = Duration::from_secs(60);
    let limits = conn::Limits::of(&state.server);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    state.cdn.start(&stop_rx);
    let proxy_listener = match proxy_listener {
        Some(l) => Some(l),
        None => bind_proxy(&state).await?,
    };
    let edge = match (proxy_listener, &state.proxy) {
        (Some(l), Some(p)) => {
            tracing::info!(addr = %l.local_addr()?, routes = p.proxy.routes().iter().count(), "strata proxy serving");
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(conn::serve_edge(
                l,
                p.proxy.clone(),
                Arc::new(crate::limits::RouteLimits {
                    by_route: p
                        .rate_limits
                        .iter()
                        .map(|n| {
                            n.as_ref()
                                .and_then(|n| state.limits.by_name.get(n).cloned())
                        })
                        .collect(),
                    trusted: state.limits.trusted.clone(),
                }),
                limits,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
                drain,
            )))
        }
        _ => None,
    };
    let for_shutdown = state.clone();
    let served = conn::serve(
        listener,
        app(state.clone(), addr),
        limits,
        async move {
            shutdown.await;
            for_shutdown.ready.store(false, Ordering::Relaxed);
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_tx.send(true);
        },
        drain,
    )
    .await;
    if let Some(edge) = edge {
        // Stopped with the data API: by the shutdown signal, or (the API's listener failed) by the signal's
        // sender going away.
        match edge.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the proxy's listener failed"),
            Err(e) => tracing::warn!(error = %e, "the proxy's task failed"),
        }
    }
    served?;
    publisher.abort();
    close(&state).await;
    Ok(())
}

/// Closes the cache (write-behind drains for up to 30 s, the bus node publishes what it has queued), then stops
/// CDC.
pub async fn close(state: &AppState) {
    state.cache.close().await;
    let cdc = state.cdc.lock().expect("cdc lock").take();
    if let Some(cdc) = cdc {
        cdc.stop().await;
    }
    tracing::info!("strata stopped");
}

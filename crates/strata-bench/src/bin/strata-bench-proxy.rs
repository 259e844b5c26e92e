//! `strata-bench-proxy`: the edge tier (`strata-http`'s caching reverse proxy) alone in a process, for
//! `strata-bench proxy` and `proxy-stampede`, which start it on a core of its own (`taskset`). It is a binary of
//! its own so that the proxy runs on the system allocator, as a server would, not behind `strata-bench`'s
//! counting allocator (an atomic add on every allocation and free).
//!
//! `strata-bench-proxy --origin 127.0.0.1:PORT [--listen 127.0.0.1:0]`: one route (any host, `/`) to the origin,
//! the default `EdgePolicy` and `ProxyConfig`, an L1-only namespace keeping responses for a day. Prints
//! `listening on ADDR` on stdout, then serves until its stdin closes (the parent went away) or it is killed.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_http::proxy::{edge_namespace, serve, Proxy, ProxyConfig, Route, Routes};

#[derive(Parser)]
#[command(about = "strata-http's proxy alone, for strata-bench proxy (internal)")]
struct Args {
    /// The origin, `host:port`.
    #[arg(long)]
    origin: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The listen backlog (the same as the nginx beside it).
    #[arg(long, default_value_t = 4096)]
    backlog: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As many sockets as the stampede needs: the soft limit up to the hard one (the parent raised both).
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // The default runtime: under `taskset -c N` it has one worker, on that core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cache = strata::Cache::new();
        let ns = edge_namespace(&cache, "edge", Duration::from_secs(86_400), false)?;
        let routes = Routes::new().with(Route::new(&format!("http://{}", args.origin))?);
        let proxy = Proxy::new(routes, ns, ProxyConfig::default());
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(args.listen)?;
        let listener = socket.listen(args.backlog)?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
        let stdin_closed = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            })
            .await;
        };
        serve(listener, proxy, stdin_closed).await;
        Ok::<_, anyhow::Error>(())
    })
    .context("strata-bench-proxy")
}

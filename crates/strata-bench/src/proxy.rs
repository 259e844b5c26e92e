//! `strata bench proxy` and `strata bench proxy-stampede`: the edge tier (`strata-http`) beside nginx's
//! `proxy_cache`, in the same run, over the same origin.
//!
//! - The origin is a small hyper server in this process: `/object` is a 1 KiB (`--object-bytes`) body fresh for an
//!   hour, `/expiring` answers after `--load-ms` and is fresh for one second when first stored, for a minute once
//!   renewed; both carry an `ETag` and answer `If-None-Match` with 304.
//! - The proxy is `strata-bench-proxy` (next to this binary: `strata-http`'s `serve` with one route to the origin
//!   and the default policy), a child process; nginx is Debian's (installed with apt when missing, as
//!   `scripts/test.sh` installs its services) with a configuration written here: `proxy_cache_path … keys_zone`,
//!   `proxy_cache_valid`, `proxy_cache_revalidate on`, no `proxy_cache_lock`, one worker, keep-alive to the
//!   origin, `Cache-Status` from `$upstream_cache_status`. Both run on the last core (`taskset`); this process —
//!   load generator and origin — on the first.
//! - `proxy`: after one miss fills each cache, `--connections` keep-alive HTTP/1.1 connections `GET /object` in a
//!   closed loop for `--seconds`, alternating Strata and nginx for `--rounds` rounds. Every answer must be a hit.
//!   Figures: hits per second (all rounds' hits over all rounds' seconds) and the p99 latency of all rounds'
//!   requests, for each; per-round figures and how busy the server's core was go to stderr.
//! - `proxy-stampede`: `/expiring` is stored, left to expire, then `--requests` clients, each on a keep-alive
//!   connection of its own opened beforehand, request it at once. Figure: how many requests reached the origin
//!   (Strata collapses the revalidations of one stored response; nginx without `proxy_cache_lock` sends each).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, DATE, ETAG, IF_NONE_MATCH};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::loadgen::{hammer, Conn, Load, Pinning};

const OBJECT: &str = "/object";
const EXPIRING: &str = "/expiring";
/// The listen backlog of the origin, the proxy and nginx.
const BACKLOG: u32 = 4096;
/// Connections opened at once when the stampede's clients connect (well inside the backlogs).
const CONNECTING: usize = 256;

/// The figures of `proxy`.
#[derive(Debug, Clone, Copy)]
pub struct HitReport {
    /// Strata's cache hits per second.
    pub hit_rps: f64,
    /// nginx's cache hits per second.
    pub nginx_hit_rps: f64,
    /// Strata's p99 request latency, ms.
    pub p99_ms: f64,
    /// nginx's p99 request latency, ms.
    pub nginx_p99_ms: f64,
}

impl std::fmt::Display for HitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "proxy hit_rps={:.0} nginx_hit_rps={:.0} ratio={:.2} p99_ms={:.2} nginx_p99_ms={:.2}",
            self.hit_rps,
            self.nginx_hit_rps,
            self.hit_rps / self.nginx_hit_rps,
            self.p99_ms,
            self.nginx_p99_ms
        )
    }
}

/// The figures of `proxy-stampede`.
#[derive(Debug, Clone, Copy)]
pub struct StampedeReport {
    /// Concurrent requests for the expired URL.
    pub requests: usize,
    /// Requests that reached the origin through Strata.
    pub origin_requests: u64,
    /// Requests that reached the origin through nginx.
    pub nginx_origin_requests: u64,
}

impl std::fmt::Display for StampedeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "proxy_stampede requests={} origin_requests={} nginx_origin_requests={}",
            self.requests, self.origin_requests, self.nginx_origin_requests
        )
    }
}

/// The programs compared.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    /// The nginx binary. Default: `nginx` on `PATH` or in `/usr/sbin`, installed with apt when missing.
    pub nginx: Option<PathBuf>,
    /// The `strata-bench-proxy` binary. Default: next to this one.
    pub proxy: Option<PathBuf>,
}

/// Runs `proxy`.
pub async fn hits(
    servers: Servers,
    seconds: f64,
    rounds: usize,
    connections: usize,
    object_bytes: usize,
) -> anyhow::Result<HitReport> {
    raise_nofile()?;
    let bench = Bench::start(servers, object_bytes, Duration::ZERO, 1).await?;
    for s in bench.servers() {
        warm(s).await?;
    }
    let mut loads: [Vec<Load>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds.max(1) {
        for (i, s) in bench.servers().into_iter().enumerate() {
            let before = [0, bench.pinning.server_core].map(CoreTime::read);
            let load = hammer(&s.addr, connections, seconds, |_| OBJECT.to_owned()).await?;
            let after = [0, bench.pinning.server_core].map(CoreTime::read);
            let busy = |core: usize| {
                busy_fraction(before[core], after[core])
                    .map_or("?".into(), |b| format!("{:.0}%", b * 100.0))
            };
            if load.other > 0 {
                bail!(
                    "{}: {} of {} answers were not cache hits",
                    s.name,
                    load.other,
                    load.other + load.hits
                );
            }
            eprintln!(
                "proxy round {round} {}: hit_rps={:.0} p99_ms={:.2} server_core_busy={} load_core_busy={}",
                s.name,
                load.hits as f64 / load.elapsed,
                load.hist.value_at_quantile(0.99) as f64 / 1000.0,
                busy(1),
                busy(0),
            );
            loads[i].push(load);
        }
    }
    let total = |loads: &[Load]| {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        for l in loads {
            hist.add(&l.hist).expect("same bounds");
        }
        let hits: u64 = loads.iter().map(|l| l.hits).sum();
        let elapsed: f64 = loads.iter().map(|l| l.elapsed).sum();
        (
            hits as f64 / elapsed,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    let (hit_rps, p99_ms) = total(&loads[0]);
    let (nginx_hit_rps, nginx_p99_ms) = total(&loads[1]);
    Ok(HitReport {
        hit_rps,
        nginx_hit_rps,
        p99_ms,
        nginx_p99_ms,
    })
}

/// Runs `proxy-stampede`.
pub async fn stampede(
    servers: Servers,
    requests: usize,
    load: Duration,
) -> anyhow::Result<StampedeReport> {
    // The clients run in a process of their own, so that a socket per client and (behind nginx) one per origin
    // request are not counted against one process's descriptor limit. nginx gets two workers (on the same core,
    // `reuseport` spreading the connections) for the same reason: one would need a descriptor per client and one
    // per origin request, more than the 20,000 the project machine's hard limit allows.
    raise_nofile()?;
    let bench = Bench::start(servers, 1024, load, 2).await?;
    let [strata, nginx] = bench.servers();
    let origin_requests = stampede_through(strata, &bench.origin, requests).await?;
    let nginx_origin_requests = stampede_through(nginx, &bench.origin, requests).await?;
    Ok(StampedeReport {
        requests,
        origin_requests,
        nginx_origin_requests,
    })
}

/// Stores `/expiring` in `server`, lets it expire, then has `requests` clients (a child process: see
/// [`stampede_clients`]) request it at once; returns how many requests reached the origin.
async fn stampede_through(
    server: &Server,
    origin: &Origin,
    requests: usize,
) -> anyhow::Result<u64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    origin.max_age.store(1, Ordering::SeqCst);
    let stored_at = Instant::now();
    let (status, _) = Conn::open(&server.addr)
        .await?
        .request("GET", EXPIRING, &[])
        .await?;
    if status != 200 {
        bail!("{}: {EXPIRING} answered {status}", server.name);
    }
    let mut clients = tokio::process::Command::new(std::env::current_exe()?)
        .args(["proxy-stampede-clients", "--addr", &server.addr])
        .args(["--requests", &requests.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the stampede's clients")?;
    let mut said = tokio::io::BufReader::new(clients.stdout.take().context("stdout")?).lines();
    let mut go = clients.stdin.take().context("stdin")?;
    if said.next_line().await?.as_deref() != Some("ready") {
        bail!("{}: the stampede's clients did not connect", server.name);
    }
    // Fresh for one second from its `Date` (whole seconds): 2.2 s later it is stale in both caches.
    tokio::time::sleep_until((stored_at + Duration::from_millis(2200)).into()).await;
    // The revalidation renews it for a minute, so a request arriving after it is a hit in both caches.
    origin.max_age.store(60, Ordering::SeqCst);
    origin.expiring.store(0, Ordering::SeqCst);
    go.write_all(b"go\n").await?;
    go.flush().await?;
    let result = said
        .next_line()
        .await?
        .with_context(|| format!("{}: the stampede's clients said nothing", server.name))?;
    let _ = clients.wait().await;
    let reached = origin.expiring.load(Ordering::SeqCst);
    eprintln!(
        "proxy_stampede {}: {result}, {reached} reached the origin",
        server.name
    );
    let field = |name: &str| {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<usize>().ok())
    };
    if field("answered") != Some(requests) {
        bail!(
            "{}: not every stampede request was answered 200: {result}",
            server.name
        );
    }
    Ok(reached)
}

/// The stampede's clients (`strata-bench proxy-stampede-clients`, started by `proxy-stampede`): opens
/// `requests` keep-alive connections to `addr` (so what arrives at once is the requests, not the handshakes),
/// prints `ready`, waits for a line on stdin, then sends `GET /expiring` on every connection at once and prints
/// `answered=… failed=… all_ms=… p50_ms=… max_ms=…`.
pub async fn stampede_clients(addr: String, requests: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let limit = raise_nofile()?;
    if limit < requests as u64 + 64 {
        bail!("{requests} connections need more open files than this process may have ({limit})");
    }
    let conns: Vec<Conn> = futures::stream::iter(0..requests)
        .map(|_| Conn::open(&addr))
        .buffer_unordered(CONNECTING)
        .try_collect()
        .await
        .with_context(|| format!("opening {requests} connections to {addr}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    let (go, gate) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let mut gate = gate.clone();
            tokio::spawn(async move {
                let _ = gate.wait_for(|go| *go).await;
                let started = Instant::now();
                let (status, _) = c.request("GET", EXPIRING, &[]).await?;
                Ok::<_, anyhow::Error>((status, started.elapsed()))
            })
        })
        .collect();
    // Every task reaches the gate before it opens.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    go.send_replace(true);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut failed = 0usize;
    for t in tasks {
        match t.await? {
            Ok((200, took)) => {
                let _ = hist.record(took.as_micros().max(1) as u64);
            }
            Ok(_) | Err(_) => failed += 1,
        }
    }
    println!(
        "answered={} failed={failed} all_ms={:.0} p50_ms={:.1} max_ms={:.1}",
        hist.len(),
        started.elapsed().as_secs_f64() * 1000.0,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    );
    Ok(())
}

/// Fills `server`'s cache with `/object` and checks that the next answer is a hit.
async fn warm(server: &Server) -> anyhow::Result<()> {
    let mut c = Conn::open(&server.addr).await?;
    let (status, _) = c.request("GET", OBJECT, &[]).await?;
    let (again, hit) = c.request("GET", OBJECT, &[]).await?;
    if status != 200 || again != 200 || !hit {
        bail!(
            "{}: {OBJECT} answered {status}, then {again} (hit: {hit}); expected 200 then a 200 hit",
            server.name
        );
    }
    Ok(())
}

/// The origin, Strata's proxy and nginx, started; stopped when dropped.
struct Bench {
    origin: Origin,
    strata: Server,
    nginx: Server,
    pinning: Pinning,
}

impl Bench {
    async fn start(
        servers: Servers,
        object_bytes: usize,
        load: Duration,
        nginx_workers: usize,
    ) -> anyhow::Result<Self> {
        let pinning = Pinning::detect();
        if !pinning.pinned {
            eprintln!(
                "proxy: one core or no taskset: the servers and the load generator share the CPU"
            );
        }
        let proxy = locate_proxy(servers.proxy)?;
        let nginx = locate_nginx(servers.nginx)?;
        let origin = Origin::start(object_bytes, load).await?;
        let strata = Server::strata(&proxy, origin.addr, &pinning)?;
        let nginx = Server::nginx(&nginx, origin.addr, &pinning, nginx_workers).await?;
        pinning.pin_load_generator();
        Ok(Self {
            origin,
            strata,
            nginx,
            pinning,
        })
    }

    fn servers(&self) -> [&Server; 2] {
        [&self.strata, &self.nginx]
    }
}

/// The origin: see the module docs.
struct Origin {
    addr: SocketAddr,
    /// Requests for `/expiring` since last reset.
    expiring: Arc<AtomicU64>,
    /// The `max-age` of `/expiring` answers.
    max_age: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start(object_bytes: usize, load: Duration) -> anyhow::Result<Self> {
        let listener = listen_any(BACKLOG)?;
        let addr = listener.local_addr()?;
        let body = Bytes::from(vec![b'x'; object_bytes]);
        let expiring = Arc::new(AtomicU64::new(0));
        let max_age = Arc::new(AtomicU64::new(1));
        let (counter, age) = (expiring.clone(), max_age.clone());
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of descriptors, say: let the others finish.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (body, counter, age) = (body.clone(), counter.clone(), age.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (body, counter, age) = (body.clone(), counter.clone(), age.clone());
                        async move {
                            Ok::<_, Infallible>(
                                origin_answer(&req, body, &counter, &age, load).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            expiring,
            max_age,
            task,
        })
    }
}

async fn origin_answer(
    req: &Request<Incoming>,
    body: Bytes,
    expiring: &AtomicU64,
    max_age: &AtomicU64,
    load: Duration,
) -> Response<Full<Bytes>> {
    let (age, etag) = match req.uri().path() {
        OBJECT => (3600, "\"object\""),
        EXPIRING => {
            expiring.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(load).await;
            (max_age.load(Ordering::SeqCst), "\"expiring\"")
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let not_modified = req
        .headers()
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut r = Response::new(Full::new(if not_modified { Bytes::new() } else { body }));
    if not_modified {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let h = r.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).expect("header value");
    h.insert(DATE, value(strata_http::freshness::format_http_date(now)));
    h.insert(CACHE_CONTROL, value(format!("max-age={age}")));
    h.insert(ETAG, HeaderValue::from_static(etag));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

fn listen_any(backlog: u32) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(socket.listen(backlog)?)
}

/// A server under test, a child process; stopped (SIGTERM, then waited for) when dropped.
struct Server {
    name: &'static str,
    addr: String,
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: nginx's master stops its worker before it exits (SIGKILL would leave the worker behind).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Server {
    fn strata(bin: &Path, origin: SocketAddr, pinning: &Pinning) -> anyhow::Result<Self> {
        let mut child = pinning
            .server_command(bin)
            .args(["--origin", &origin.to_string()])
            .args(["--backlog", &BACKLOG.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut server = Self {
            name: "strata",
            addr: String::new(),
            child,
            dir: None,
        };
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .context("strata-bench-proxy exited before listening")??;
        server.addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("strata-bench-proxy said {line:?}"))?
            .to_owned();
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(server)
    }

    async fn nginx(
        bin: &Path,
        origin: SocketAddr,
        pinning: &Pinning,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("strata-bench-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::write(
            dir.join("nginx.conf"),
            nginx_config(&dir, port, origin, workers, am_root()),
        )?;
        let log = dir.join("error.log");
        let child = pinning
            .server_command(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            name: "nginx",
            addr: format!("127.0.0.1:{port}"),
            child,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(&server.addr).await.is_ok() {
                return Ok(server);
            }
            let exited = server.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let why = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "nginx did not start ({}): {why}",
                    exited.map_or("no answer in 10 s".into(), |s| s.to_string())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// nginx as a caching reverse proxy of `origin` on `port`, with `workers` workers (`reuseport` with more than
/// one). `user root` as root only so the worker can use the cache directory under the temp dir without a `chown`.
fn nginx_config(dir: &Path, port: u16, origin: SocketAddr, workers: usize, root: bool) -> String {
    let d = dir.display();
    let user = if root { "user root;\n" } else { "" };
    let reuseport = if workers > 1 { " reuseport" } else { "" };
    // As many descriptors as this process may have (its hard limit): nginx cannot raise it either.
    let nofile = rlimit::Resource::NOFILE
        .get()
        .map_or(65_536, |(_, hard)| hard);
    let connections = nofile.min(32_768);
    format!(
        r#"# Written by strata-bench proxy: nginx's proxy_cache beside strata-http, over the same origin.
{user}daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    # Strata's proxy never closes a keep-alive connection on a request count; nginx's default closes every 1000.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=edge:16m max_size=1g inactive=1d use_temp_path=off;
    upstream origin {{
        server {origin};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog={BACKLOG}{reuseport};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_valid 200 304 1m;
            proxy_cache_revalidate on;
            # The stampede baseline: without the lock every request for an expired entry goes to the origin.
            proxy_cache_lock off;
            add_header Cache-Status "nginx; $upstream_cache_status" always;
        }}
    }}
}}
"#
    )
}

fn am_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

fn locate_proxy(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name(format!(
        "strata-bench-proxy{}",
        std::env::consts::EXE_SUFFIX
    ));
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "strata-bench-proxy was not found next to {}: build it with `cargo build --release -p strata-bench`",
        exe.display()
    )
}

fn nginx_on_path() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx, installed from Debian when missing (as `scripts/test.sh` installs redis-server and PostgreSQL).
fn locate_nginx(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit.or_else(nginx_on_path) {
        return Ok(p);
    }
    eprintln!("nginx not found: installing Debian's nginx");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let installed = apt(&["update", "-qq"]).and_then(|_| apt(&["install", "-y", "-qq", "nginx"]));
    match (nginx_on_path(), installed) {
        (Some(p), _) => Ok(p),
        (None, Ok(status)) => bail!(
            "nginx is not installed and `apt-get install nginx` failed ({status}): install nginx or pass --nginx"
        ),
        (None, Err(e)) => {
            bail!("nginx is not installed and apt-get could not run ({e}): install nginx or pass --nginx")
        }
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns the new limit.
fn raise_nofile() -> anyhow::Result<u64> {
    Ok(rlimit::increase_nofile_limit(u64::MAX)?)
}

/// Busy and total time of one core, from `/proc/stat` (clock ticks).
#[derive(Clone, Copy)]
struct CoreTime {
    busy: u64,
    total: u64,
}

impl CoreTime {
    fn read(core: usize) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let name = format!("cpu{core}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        // idle + iowait
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Some(Self {
            busy: total.saturating_sub(idle),
            total,
        })
    }
}

/// The fraction of the time between two readings the core was busy.
fn busy_fraction(before: Option<CoreTime>, after: Option<CoreTime>) -> Option<f64> {
    let (a, b) = (before?, after?);
    let total = b.total.checked_sub(a.total).filter(|t| *t > 0)?;
    Some(b.busy.saturating_sub(a.busy) as f64 / total as f64)
}

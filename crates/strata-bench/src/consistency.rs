//! `consistency`: a Polaris-style consistency checker for a real cluster of `strata serve` processes.
//!
//! The scenario starts its own `redis-server` on a free port (`--save "" --appendonly no`: a restart loses
//! everything), a PostgreSQL schema, replication slot and publication of its own (dropped at the end) with the
//! tables `price` and `inventory`, and N `strata serve` processes (each with its own port and data directory, one
//! config: the same Redis prefix, write-through namespaces, CDC on — every node runs a consumer, one holds the
//! slot, the others wait as standbys).
//!
//! Workload, for `--seconds`: keys `1..=K` of `price` are split between two write paths — odd keys are written
//! through the API (`PUT /v1/price/{k}` on a random node: path `api`), even keys directly in SQL (`UPDATE`
//! on the scenario's own pool: path `sql`, reaching the caches only through CDC). Each key has exactly one writer
//! task, which writes it sequentially with strictly increasing values of `cents` (a per-key counter), so a key's
//! acknowledged values increase with their acknowledgement instants. A write is acknowledged when a 2xx response
//! arrives (API) or the autocommit `UPDATE` returns with one row (SQL); failed writes are not acknowledged (their
//! value may or may not be committed — values only increase, so that does not matter). Write timeouts (15 s) are
//! longer than the `SIGSTOP` fault (5 s), so an unacknowledged write cannot commit after a later acknowledged one
//! of the same key; a key whose write does time out is retired from the workload (logged).
//!
//! Readers `GET /v1/price/{k}` every key on every node, concurrently, recording the read's start instant, the node
//! and the value. A read is *stale after W* if the value it returned is lower than the highest value of its key
//! whose acknowledgement arrived more than W before the read began; counted for W = 100 ms, 1 s and 5 s. Because
//! a key's acknowledged values increase with time, that is the same as: the oldest acknowledged value the read
//! did not reflect was acknowledged more than W before it began; `max_stale_ms` is the largest such age (the
//! read's start minus the acknowledgement instant of the first acknowledged value it missed) over all reads.
//! Reads that fail (connection refused during a fault, a timeout, any non-200 status) are `errors`, not stale.
//!
//! Faults (`--faults`, spread over the run, one at a time, each followed by a quiet period): Redis `kill -9`,
//! restarted empty on the same port ~2 s later; a node that is not the CDC consumer `kill -9`ed and restarted; the
//! CDC consumer's node `kill -9`ed and restarted; the CDC consumer's node `SIGSTOP`ped for 5 s, then `SIGCONT`
//! (taken out of the API writers' rotation 200 ms before and put back after, as a load balancer's health check
//! would: writes go on through the other nodes while it sleeps; its readers go on and fail).
//! The CDC node is found through each node's `/v1/_stats` (`cdc.active`) or `/metrics` (`strata_cdc_active`);
//! without either, through which node's `cdc.transactions` counter rises while the SQL writers commit; failing
//! that, node 0. If the faults do not fit in `--seconds`, the run is extended until the last quiet period ends
//! (logged). Nodes or Redis that exit on their own are logged, counted and restarted.
//!
//! At the end everything is stopped, and for each key the source must hold a value at least as high as the
//! highest acknowledged one: `acked_missing` counts the acknowledged writes above the value the source holds.
//! One line per write path goes to stdout; the fault log and diagnostics go to stderr. All traffic goes to
//! 127.0.0.1 (and the PostgreSQL URL given); every request has a timeout; child processes are killed when the
//! scenario ends, fails or panics.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::FutureExt;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Bound on every read.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on every write: longer than the `SIGSTOP` fault, so a write held by a paused node completes (or fails)
/// before its writer moves on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a stats or metrics request.
const STATS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Redis stays down.
const REDIS_DOWN: Duration = Duration::from_secs(2);
/// How long a node stays stopped.
const PAUSE: Duration = Duration::from_secs(5);
/// Staleness windows, ms.
pub const WINDOWS_MS: [u64; 3] = [100, 1_000, 5_000];

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `strata` binary (default: target/release/strata, then target/debug/strata, then next to this binary).
    pub strata: Option<PathBuf>,
    /// `strata serve` processes.
    pub nodes: usize,
    /// Seconds of workload (extended if the faults need longer).
    pub seconds: f64,
    /// Keys `1..=keys`.
    pub keys: u32,
    /// Inject faults.
    pub faults: bool,
    /// Concurrent reader tasks per node (each with one keep-alive connection, reading every key in turn).
    pub readers: usize,
    /// Writer tasks per write path.
    pub writers: usize,
    /// The `redis-server` binary.
    pub redis_server: String,
    /// PostgreSQL URL (wal_level=logical; the user needs REPLICATION).
    pub pg: String,
}

/// Figures for one write path.
#[derive(Debug, Clone)]
pub struct PathReport {
    /// `api` or `sql`.
    pub path: &'static str,
    /// Nodes.
    pub nodes: usize,
    /// Faults injected.
    pub faults: bool,
    /// Successful reads of this path's keys (each judged).
    pub reads: u64,
    /// Failed reads of this path's keys.
    pub errors: u64,
    /// Acknowledged writes.
    pub writes_acked: u64,
    /// Reads stale after each of [`WINDOWS_MS`].
    pub stale: [u64; 3],
    /// Largest age of the oldest acknowledged value a read missed, ms.
    pub max_stale_ms: f64,
    /// Acknowledged writes above the value the source holds at the end.
    pub acked_missing: u64,
}

impl std::fmt::Display for PathReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "consistency path={} nodes={} faults={} reads={} errors={} writes_acked={} stale_after_100ms={} \
             stale_after_1s={} stale_after_5s={} max_stale_ms={:.1} acked_missing={}",
            self.path,
            self.nodes,
            if self.faults { "on" } else { "off" },
            self.reads,
            self.errors,
            self.writes_acked,
            self.stale[0],
            self.stale[1],
            self.stale[2],
            self.max_stale_ms,
            self.acked_missing
        )
    }
}

/// Microseconds since the run's start.
fn us(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

fn log(t0: Instant, msg: impl std::fmt::Display) {
    eprintln!("consistency t={:.2}s {msg}", t0.elapsed().as_secs_f64());
}

/// The `strata` binary: `explicit`, else target/release/strata, target/debug/strata, or next to this binary.
pub fn locate_strata(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let found = match explicit {
        Some(p) => {
            if !p.is_file() {
                bail!("--strata {}: no such file", p.display());
            }
            p.to_path_buf()
        }
        None => {
            let mut candidates = vec![
                PathBuf::from("target/release/strata"),
                PathBuf::from("target/debug/strata"),
            ];
            if let Ok(exe) = std::env::current_exe() {
                candidates
                    .push(exe.with_file_name(format!("strata{}", std::env::consts::EXE_SUFFIX)));
            }
            candidates.into_iter().find(|p| p.is_file()).context(
                "the strata binary was not found (tried target/release/strata, target/debug/strata and next to \
                 strata-bench); build it with `cargo build --release -p strata-server` or pass --strata PATH",
            )?
        }
    };
    Ok(found.canonicalize().unwrap_or(found))
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Hold every listener until all are chosen, so the ports differ.
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP/1.1 over one keep-alive connection (enough for the server's answers: Content-Length or chunked).

#[derive(Debug)]
enum CallError {
    Timeout,
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => write!(f, "timeout"),
            CallError::Failed(e) => write!(f, "{e}"),
        }
    }
}

struct Http {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            conn: None,
        }
    }

    /// One request, bounded by `limit`; any failure drops the connection.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        limit: Duration,
    ) -> Result<(u16, Vec<u8>), CallError> {
        match tokio::time::timeout(limit, self.call_inner(method, path, token, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(CallError::Failed(format!("{e:#}")))
            }
            Err(_) => {
                self.conn = None;
                Err(CallError::Timeout)
            }
        }
    }

    async fn call_inner(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.context("connect")?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        conn.get_mut().write_all(req.as_bytes()).await?;

        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None::<usize>, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection in the headers");
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = Some(v.trim().parse().context("content-length")?);
            } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            } else if l.starts_with("connection:") && l.contains("close") {
                close = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .context("chunk size")?;
                if size == 0 {
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                anyhow::ensure!(out.len() + size <= 1 << 20, "response body too large");
                let start = out.len();
                out.resize(start + size, 0);
                conn.read_exact(&mut out[start..]).await?;
                line.clear();
                conn.read_line(&mut line).await?;
            }
        } else if let Some(n) = length {
            anyhow::ensure!(n <= 1 << 20, "response body too large");
            out.resize(n, 0);
            conn.read_exact(&mut out).await?;
        } else {
            (&mut *conn).take(1 << 20).read_to_end(&mut out).await?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Child processes.

/// A child process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{sig} {} failed", self.pid);
        Ok(())
    }

    async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// `Some(status)` if the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }
}

async fn redis_ping(port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await?;
    anyhow::ensure!(buf[..n].starts_with(b"+PONG"), "no PONG");
    Ok(())
}

/// The cluster: Redis and the nodes. Dropping it kills every process.
struct Cluster {
    t0: Instant,
    strata: PathBuf,
    redis_server: String,
    config: PathBuf,
    dir: PathBuf,
    redis_port: u16,
    ports: Vec<u16>,
    redis: Option<Proc>,
    nodes: Vec<Option<Proc>>,
    /// Processes that exited without being killed by the scenario.
    unexpected_exits: u64,
    /// Which node was paused, if one is.
    paused: Option<usize>,
    /// Nodes the API writers may send to (a load balancer's view: a paused node is taken out).
    rotation: Arc<Vec<AtomicBool>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(i) = self.paused {
            if let Some(p) = &self.nodes[i] {
                let _ = p.signal("CONT");
            }
        }
        for p in self.nodes.iter_mut().flatten() {
            let _ = p.child.start_kill();
        }
        if let Some(p) = &mut self.redis {
            let _ = p.child.start_kill();
        }
    }
}

impl Cluster {
    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().map_or(0, |p| p.pid)
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    async fn start_redis(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.join("redis.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&self.redis_server)
            .args(["--port", &self.redis_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.redis_server))?;
        let pid = child.id().context("redis-server pid")?;
        let mut p = Proc { child, pid };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = p.exited() {
                bail!(
                    "redis-server exited at start ({status}): {}",
                    tail(&log_path, 5)
                );
            }
            if redis_ping(self.redis_port).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.redis = Some(p);
        Ok(())
    }

    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let data_dir = self.dir.join(format!("node{i}"));
        std::fs::create_dir_all(&data_dir)?;
        let log_path = self.dir.join(format!("node{i}.log"));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = Command::new(&self.strata)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(self.addr(i))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.strata.display()))?;
        let pid = child.id().context("strata pid")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
                if line.starts_with("strata listening on") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let mut p = Proc { child, pid };
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(())) => {
                self.nodes[i] = Some(p);
                Ok(())
            }
            Ok(Err(_)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
                bail!(
                    "node {i} exited before listening ({status:?}); {}: {}",
                    log_path.display(),
                    tail(&log_path, 5)
                )
            }
            Err(_) => bail!(
                "node {i} did not listen within {START_TIMEOUT:?}; {}: {}",
                log_path.display(),
                tail(&log_path, 5)
            ),
        }
    }

    /// Restarts node `i`, retrying a few times (a start can fail while a dependency recovers).
    async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        let mut last = None;
        for attempt in 0..3 {
            match self.start_node(i).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log(
                        self.t0,
                        format!("node {i} restart attempt {} failed: {e:#}", attempt + 1),
                    );
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last.expect("three attempts"))
    }

    async fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill9().await;
        }
    }

    /// Restarts whatever exited on its own.
    async fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &mut self.redis {
            if let Some(status) = p.exited() {
                self.unexpected_exits += 1;
                log(
                    self.t0,
                    format!("redis exited unexpectedly ({status}); restarting"),
                );
                self.redis = None;
                self.start_redis().await?;
            }
        }
        for i in 0..self.nodes.len() {
            let status = self.nodes[i].as_mut().and_then(Proc::exited);
            if let Some(status) = status {
                self.unexpected_exits += 1;
                log(
                    self.t0,
                    format!(
                        "node {i} exited unexpectedly ({status}); restarting; {}",
                        tail(&self.dir.join(format!("node{i}.log")), 3)
                    ),
                );
                self.nodes[i] = None;
                self.restart_node(i).await?;
            }
        }
        Ok(())
    }

    /// Sleeps `d`, healing every 250 ms.
    async fn idle(&mut self, d: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(250))).await;
            self.heal().await?;
        }
        Ok(())
    }

    async fn stats(&self, i: usize) -> Option<Value> {
        let mut h = Http::new(&self.addr(i));
        match h.call("GET", "/v1/_stats", None, "", STATS_TIMEOUT).await {
            Ok((200, body)) => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    /// The node running the CDC consumer, and how it was found.
    async fn cdc_node(&self) -> (usize, &'static str) {
        let n = self.nodes.len();
        // 1. `cdc.active` in /v1/_stats.
        let mut field_seen = false;
        for _ in 0..10 {
            let mut active = Vec::new();
            for i in 0..n {
                if let Some(v) = self.stats(i).await {
                    if let Some(a) = v["cdc"]["active"].as_bool() {
                        field_seen = true;
                        if a {
                            active.push(i);
                        }
                    }
                }
            }
            if active.len() == 1 {
                return (active[0], "/v1/_stats cdc.active");
            }
            if !field_seen {
                break;
            }
            // Between consumers (a standby is taking over), or two claim it: look again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // 2. The `strata_cdc_active` metric.
        let mut active = Vec::new();
        let mut metric_seen = false;
        for i in 0..n {
            let mut h = Http::new(&self.addr(i));
            if let Ok((200, body)) = h.call("GET", "/metrics", None, "", STATS_TIMEOUT).await {
                let text = String::from_utf8_lossy(&body);
                for line in text.lines().filter(|l| l.starts_with("strata_cdc_active")) {
                    metric_seen = true;
                    if line
                        .split_whitespace()
                        .last()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
                    {
                        active.push(i);
                    }
                }
            }
        }
        if active.len() == 1 {
            return (active[0], "strata_cdc_active metric");
        }
        // 3. Whose `cdc.transactions` rises while the SQL writers commit (standbys never apply any).
        let sample = |v: Option<Value>| v.and_then(|v| v["cdc"]["transactions"].as_u64());
        let mut before = Vec::new();
        for i in 0..n {
            before.push(sample(self.stats(i).await));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rising = Vec::new();
        for (i, b) in before.iter().enumerate() {
            if let (Some(b), Some(a)) = (b, sample(self.stats(i).await)) {
                if a > *b {
                    rising.push(i);
                }
            }
        }
        if rising.len() == 1 {
            return (
                rising[0],
                if field_seen || metric_seen {
                    "cdc.transactions rising (active field/metric inconclusive)"
                } else {
                    "cdc.transactions rising (no cdc.active field or strata_cdc_active metric)"
                },
            );
        }
        (
            0,
            "fallback: node 0 (no active field/metric, no single rising counter)",
        )
    }

    /// Kills everything and waits for it.
    async fn shutdown(&mut self) {
        if let Some(i) = self.paused.take() {
            if let Some(p) = &self.nodes[i] {
                let _ = p.signal("CONT");
            }
        }
        for i in 0..self.nodes.len() {
            self.kill_node(i).await;
        }
        if let Some(mut p) = self.redis.take() {
            p.kill9().await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Redis,
    Node,
    CdcNode,
    Pause,
}

async fn inject(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    let t0 = cluster.t0;
    let n = cluster.nodes.len();
    match fault {
        Fault::Redis => {
            let pid = cluster.redis.as_ref().map_or(0, |p| p.pid);
            log(
                t0,
                format!(
                    "fault: redis kill -9 (pid {pid}, port {})",
                    cluster.redis_port
                ),
            );
            if let Some(mut p) = cluster.redis.take() {
                p.kill9().await;
            }
            tokio::time::sleep(REDIS_DOWN).await;
            cluster.start_redis().await?;
            log(t0, "fault: redis restarted (empty) on the same port");
        }
        Fault::Node => {
            let (c, how) = cluster.cdc_node().await;
            let victim = if n > 1 { (c + 1) % n } else { 0 };
            log(
                t0,
                format!(
                    "fault: node {victim} kill -9 (pid {}; not the CDC node: that is node {c}, by {how})",
                    cluster.pid(victim)
                ),
            );
            cluster.kill_node(victim).await;
            let start = Instant::now();
            cluster.restart_node(victim).await?;
            log(
                t0,
                format!(
                    "fault: node {victim} restarted (pid {}, {} ms)",
                    cluster.pid(victim),
                    start.elapsed().as_millis()
                ),
            );
        }
        Fault::CdcNode => {
            let (c, how) = cluster.cdc_node().await;
            log(
                t0,
                format!(
                    "fault: CDC node {c} kill -9 (pid {}, found by {how})",
                    cluster.pid(c)
                ),
            );
            cluster.kill_node(c).await;
            let start = Instant::now();
            cluster.restart_node(c).await?;
            log(
                t0,
                format!(
                    "fault: node {c} restarted (pid {}, {} ms)",
                    cluster.pid(c),
                    start.elapsed().as_millis()
                ),
            );
        }
        Fault::Pause => {
            let (c, how) = cluster.cdc_node().await;
            // Like a load balancer whose health check fails: writers stop sending to the node (reads go on, and
            // fail), so that writes through the other nodes happen while it sleeps.
            cluster.rotation[c].store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let p = cluster.nodes[c]
                .as_ref()
                .context("the node to pause is down")?;
            p.signal("STOP")?;
            cluster.paused = Some(c);
            log(
                t0,
                format!(
                    "fault: node {c} SIGSTOP for {} s (pid {}; the CDC node, by {how})",
                    PAUSE.as_secs(),
                    cluster.pid(c)
                ),
            );
            tokio::time::sleep(PAUSE).await;
            if let Some(p) = &cluster.nodes[c] {
                p.signal("CONT")?;
            }
            cluster.paused = None;
            cluster.rotation[c].store(true, Ordering::Relaxed);
            log(
                t0,
                format!("fault: node {c} SIGCONT (back in the writers' rotation)"),
            );
        }
    }
    Ok(())
}

/// Runs the faults (if any) and heals unexpected exits until at least `seconds` have passed.
async fn supervise(
    cluster: &mut Cluster,
    faults: bool,
    seconds: f64,
    quiet: Duration,
) -> anyhow::Result<()> {
    let t0 = cluster.t0;
    let plan: &[Fault] = if faults {
        &[Fault::Redis, Fault::Node, Fault::CdcNode, Fault::Pause]
    } else {
        &[]
    };
    for (i, &fault) in plan.iter().enumerate() {
        let at = Duration::from_secs_f64(seconds * (0.1 + 0.8 * i as f64 / plan.len() as f64));
        cluster.idle(at.saturating_sub(t0.elapsed())).await?;
        inject(cluster, fault).await?;
        cluster.idle(quiet).await?;
    }
    let end = Duration::from_secs_f64(seconds);
    if t0.elapsed() > end {
        log(
            t0,
            format!(
                "the faults needed {:.1} s: the run was extended past --seconds {seconds}",
                t0.elapsed().as_secs_f64()
            ),
        );
    }
    cluster.idle(end.saturating_sub(t0.elapsed())).await
}

// ---------------------------------------------------------------------------------------------------------------
// Workload.

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
struct Ack {
    key: u32,
    at_us: u64,
    value: i64,
}

/// One read.
#[derive(Debug, Clone, Copy)]
struct Read {
    key: u32,
    node: u8,
    start_us: u64,
    /// `None`: the read failed.
    value: Option<i64>,
}

#[derive(Default)]
struct WriterOut {
    acks: Vec<Ack>,
    failures: BTreeMap<String, u64>,
    retired: Vec<u32>,
}

#[derive(Default)]
struct ReaderOut {
    reads: Vec<Read>,
    failures: BTreeMap<String, u64>,
}

#[derive(Clone)]
enum WritePath {
    Api {
        addrs: Arc<Vec<String>>,
        token: String,
        rotation: Arc<Vec<AtomicBool>>,
    },
    Sql {
        pool: PgPool,
        schema: String,
    },
}

async fn writer(path: WritePath, keys: Vec<u32>, stop: Arc<AtomicBool>, t0: Instant) -> WriterOut {
    let mut out = WriterOut::default();
    let mut next: BTreeMap<u32, i64> = keys.iter().map(|&k| (k, 0)).collect();
    let mut active = keys;
    let mut conns: Vec<Http> = match &path {
        WritePath::Api { addrs, .. } => addrs.iter().map(|a| Http::new(a)).collect(),
        WritePath::Sql { .. } => Vec::new(),
    };
    let sql = match &path {
        WritePath::Sql { schema, .. } => {
            format!("UPDATE {schema}.price SET cents = $1, version = version + 1 WHERE id = $2")
        }
        WritePath::Api { .. } => String::new(),
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && !active.is_empty() {
        let k = active[i % active.len()];
        i += 1;
        let v = next[&k] + 1;
        next.insert(k, v);
        let result: Result<(), String> = match &path {
            WritePath::Api {
                token, rotation, ..
            } => {
                let open: Vec<usize> = (0..conns.len())
                    .filter(|&i| rotation[i].load(Ordering::Relaxed))
                    .collect();
                let node = if open.is_empty() {
                    rand::random_range(0..conns.len())
                } else {
                    open[rand::random_range(0..open.len())]
                };
                let body = format!(r#"{{"cents":{v},"currency":"EUR"}}"#);
                match conns[node]
                    .call(
                        "PUT",
                        &format!("/v1/price/{k}"),
                        Some(token),
                        &body,
                        WRITE_TIMEOUT,
                    )
                    .await
                {
                    Ok((s, _)) if (200..300).contains(&s) => Ok(()),
                    Ok((s, body)) => Err(format!(
                        "status {s} {}",
                        serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|b| b["error"].as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )),
                    Err(CallError::Timeout) => Err("timeout".into()),
                    Err(CallError::Failed(e)) => Err(if e.starts_with("connect") {
                        "connect".into()
                    } else {
                        "io".into()
                    }),
                }
            }
            WritePath::Sql { pool, .. } => {
                match tokio::time::timeout(
                    WRITE_TIMEOUT,
                    sqlx::query(&sql).bind(v).bind(i64::from(k)).execute(pool),
                )
                .await
                {
                    Ok(Ok(r)) if r.rows_affected() == 1 => Ok(()),
                    Ok(Ok(r)) => Err(format!("{} rows updated", r.rows_affected())),
                    Ok(Err(e)) => Err(format!("sql error: {e}")),
                    Err(_) => Err("timeout".into()),
                }
            }
        };
        match result {
            Ok(()) => out.acks.push(Ack {
                key: k,
                at_us: us(t0),
                value: v,
            }),
            Err(e) => {
                if e == "timeout" {
                    // It may still commit later, after a higher value: stop writing this key.
                    log(
                        t0,
                        format!("write of key {k} = {v} timed out; key {k} retired"),
                    );
                    active.retain(|&x| x != k);
                    out.retired.push(k);
                }
                *out.failures.entry(e).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

/// Reads every key in turn from one node (a paused or dead node holds up only its own readers).
async fn reader(
    node: usize,
    id: usize,
    keys: u32,
    addr: String,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> ReaderOut {
    let mut out = ReaderOut::default();
    let mut conn = Http::new(&addr);
    // The node's readers start at different keys.
    let mut i = id * 7919;
    while !stop.load(Ordering::Relaxed) {
        let key = (i % keys as usize) as u32 + 1;
        i += 1;
        let start_us = us(t0);
        let value = match conn
            .call("GET", &format!("/v1/price/{key}"), None, "", READ_TIMEOUT)
            .await
        {
            Ok((200, body)) => match serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["cents"].as_i64())
            {
                Some(v) => Ok(v),
                None => Err("undecodable body".to_owned()),
            },
            Ok((s, _)) => Err(format!("status {s}")),
            Err(CallError::Timeout) => Err("timeout".into()),
            Err(CallError::Failed(e)) => Err(if e.starts_with("connect") {
                "connect".into()
            } else {
                "io".into()
            }),
        };
        out.reads.push(Read {
            key,
            node: node as u8,
            start_us,
            value: value.as_ref().ok().copied(),
        });
        if let Err(e) = value {
            *out.failures.entry(format!("node {node}: {e}")).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out
}

/// The first acknowledged value `read` did not reflect was acknowledged this long before it began (µs), if any.
fn missed_by_us(read: &Read, value: i64, acks: &[Ack]) -> Option<u64> {
    // Values increase with acknowledgement time.
    let j = acks.partition_point(|x| x.value <= value);
    acks.get(j)
        .filter(|m| m.at_us < read.start_us)
        .map(|m| read.start_us - m.at_us)
}

/// Judges the reads of `path`'s keys against the acknowledged writes and the source's final values.
fn judge(
    path: &'static str,
    nodes: usize,
    faults: bool,
    of_path: impl Fn(u32) -> bool,
    acks: &BTreeMap<u32, Vec<Ack>>,
    reads: &[Read],
    source: &BTreeMap<u32, i64>,
) -> PathReport {
    let mut r = PathReport {
        path,
        nodes,
        faults,
        reads: 0,
        errors: 0,
        writes_acked: 0,
        stale: [0; 3],
        max_stale_ms: 0.0,
        acked_missing: 0,
    };
    let empty = Vec::new();
    for read in reads.iter().filter(|r| of_path(r.key)) {
        let Some(value) = read.value else {
            r.errors += 1;
            continue;
        };
        r.reads += 1;
        let a = acks.get(&read.key).unwrap_or(&empty);
        if let Some(age_us) = missed_by_us(read, value, a) {
            r.max_stale_ms = r.max_stale_ms.max(age_us as f64 / 1000.0);
            for (w, count) in WINDOWS_MS.iter().zip(r.stale.iter_mut()) {
                if age_us > w * 1000 {
                    *count += 1;
                }
            }
        }
    }
    for (k, a) in acks.iter().filter(|(k, _)| of_path(**k)) {
        r.writes_acked += a.len() as u64;
        let have = source.get(k).copied().unwrap_or(i64::MIN);
        r.acked_missing += a.iter().filter(|x| x.value > have).count() as u64;
    }
    r
}

// ---------------------------------------------------------------------------------------------------------------
// The run.

/// Runs the scenario: one report per write path (`api`, then `sql`).
pub async fn run(opts: Options) -> anyhow::Result<Vec<PathReport>> {
    anyhow::ensure!((1..=64).contains(&opts.nodes), "--nodes must be 1..=64");
    anyhow::ensure!(
        opts.keys >= 2,
        "--keys must be at least 2 (one per write path)"
    );
    anyhow::ensure!(opts.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(
        opts.readers >= 1 && opts.writers >= 1,
        "need a reader and a writer"
    );
    let strata = locate_strata(opts.strata.as_deref())?;
    let name = strata_testkit::pg::unique_name("consistency");
    let pool = PgPoolOptions::new()
        .max_connections(opts.writers as u32 + 2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&opts.pg)
        .await
        .with_context(|| format!("PostgreSQL at {}", opts.pg))?;
    for sql in [
        format!("CREATE SCHEMA {name}"),
        format!(
            "CREATE TABLE {name}.price (id bigint PRIMARY KEY, cents bigint NOT NULL, currency text NOT NULL \
             DEFAULT 'EUR', version bigint NOT NULL DEFAULT 1)"
        ),
        format!(
            "CREATE TABLE {name}.inventory (id bigint PRIMARY KEY, stock bigint NOT NULL, warehouse text NOT NULL \
             DEFAULT 'main', version bigint NOT NULL DEFAULT 1)"
        ),
        format!(
            "INSERT INTO {name}.price (id, cents) SELECT i, 0 FROM generate_series(1, {}) i",
            opts.keys
        ),
        format!(
            "INSERT INTO {name}.inventory (id, stock) SELECT i, 0 FROM generate_series(1, {}) i",
            opts.keys
        ),
    ] {
        sqlx::query(&sql)
            .execute(&pool)
            .await
            .with_context(|| format!("setting up the schema: {sql}"))?;
    }
    let dir = std::env::temp_dir().join(&name);
    let result = std::panic::AssertUnwindSafe(run_in(&opts, &strata, &name, &dir, &pool))
        .catch_unwind()
        .await;
    let cleaned = cleanup(&pool, &name).await;
    match result {
        Ok(Ok(reports)) => {
            cleaned?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(reports)
        }
        Ok(Err(e)) => {
            if let Err(c) = cleaned {
                eprintln!("consistency: cleanup failed too: {c:#}");
            }
            Err(e.context(format!("logs kept in {}", dir.display())))
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Drops the slot (once no consumer holds it), the publication and the schema.
async fn cleanup(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    for attempt in 0..100 {
        let row =
            sqlx::query("SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        let Some(row) = row else { break };
        let active: bool = row.try_get("active")?;
        if !active {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(name)
                .execute(pool)
                .await?;
            break;
        }
        if attempt >= 25 {
            // The consumers are dead; a walsender that has not noticed yet is ended.
            let pid: Option<i32> = row.try_get("active_pid")?;
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(pool)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query(&format!("DROP PUBLICATION IF EXISTS {name}"))
        .execute(pool)
        .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
        .execute(pool)
        .await?;
    Ok(())
}

fn write_config(
    path: &Path,
    name: &str,
    token: &str,
    redis_port: u16,
    pg: &str,
) -> anyhow::Result<()> {
    let config = format!(
        r#"# Written by `strata-bench consistency`; every node: strata serve --config THIS --listen … --data-dir …
[server]
token = "{token}"

[l1]
budget = "64MiB"

[redis]
url = "redis://127.0.0.1:{redis_port}"
prefix = "{name}"
timeout = "250ms"

[sources.main]
postgres = "{pg}"
max_connections = 4

[namespaces.price]
source = "main"
table = "{name}.price"
write = "through"
ttl = "10m"

[namespaces.inventory]
source = "main"
table = "{name}.inventory"
write = "through"
ttl = "10m"

[cdc]
source = "main"
slot = "{name}"
publication = "{name}"

[[cdc.rules]]
table = "{name}.price"
namespace = "price"
version_column = "version"

[[cdc.rules]]
table = "{name}.inventory"
namespace = "inventory"
version_column = "version"
"#
    );
    std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
}

async fn run_in(
    opts: &Options,
    strata: &Path,
    name: &str,
    dir: &Path,
    pool: &PgPool,
) -> anyhow::Result<Vec<PathReport>> {
    std::fs::create_dir_all(dir)?;
    let t0 = Instant::now();
    let ports = free_ports(opts.nodes + 1)?;
    let token = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let config = dir.join("strata.toml");
    write_config(&config, name, &token, ports[0], &opts.pg)?;
    log(
        t0,
        format!(
            "strata {} ; {} nodes ; redis port {} ; schema/slot/publication/prefix {name} ; files in {}",
            strata.display(),
            opts.nodes,
            ports[0],
            dir.display()
        ),
    );
    let mut cluster = Cluster {
        t0,
        strata: strata.to_path_buf(),
        redis_server: opts.redis_server.clone(),
        config,
        dir: dir.to_path_buf(),
        redis_port: ports[0],
        ports: ports[1..].to_vec(),
        redis: None,
        nodes: (0..opts.nodes).map(|_| None).collect(),
        unexpected_exits: 0,
        paused: None,
        rotation: Arc::new((0..opts.nodes).map(|_| AtomicBool::new(true)).collect()),
    };
    cluster.start_redis().await?;
    // One at a time: the first creates the slot and the publication, the others find them.
    for i in 0..opts.nodes {
        cluster.start_node(i).await?;
    }
    let addrs: Arc<Vec<String>> = Arc::new((0..opts.nodes).map(|i| cluster.addr(i)).collect());
    log(t0, format!("cluster up: nodes at {}", addrs.join(", ")));

    // The workload, timed from here.
    let t0 = Instant::now();
    cluster.t0 = t0;
    let stop = Arc::new(AtomicBool::new(false));
    let api_keys: Vec<u32> = (1..=opts.keys).filter(|k| k % 2 == 1).collect();
    let sql_keys: Vec<u32> = (1..=opts.keys).filter(|k| k % 2 == 0).collect();
    let mut writers = Vec::new();
    for (path, keys) in [
        (
            WritePath::Api {
                addrs: addrs.clone(),
                token: token.clone(),
                rotation: cluster.rotation.clone(),
            },
            &api_keys,
        ),
        (
            WritePath::Sql {
                pool: pool.clone(),
                schema: name.to_owned(),
            },
            &sql_keys,
        ),
    ] {
        for w in 0..opts.writers {
            let mine: Vec<u32> = keys
                .iter()
                .copied()
                .enumerate()
                .filter(|(j, _)| j % opts.writers == w)
                .map(|(_, k)| k)
                .collect();
            if !mine.is_empty() {
                writers.push(tokio::spawn(writer(path.clone(), mine, stop.clone(), t0)));
            }
        }
    }
    let mut readers = Vec::new();
    for node in 0..opts.nodes {
        for id in 0..opts.readers {
            readers.push(tokio::spawn(reader(
                node,
                id,
                opts.keys,
                addrs[node].clone(),
                stop.clone(),
                t0,
            )));
        }
    }

    let quiet = Duration::from_secs_f64((opts.seconds * 0.05).clamp(1.0, 3.0));
    let supervised = tokio::time::timeout(
        Duration::from_secs_f64(opts.seconds) + Duration::from_secs(300),
        supervise(&mut cluster, opts.faults, opts.seconds, quiet),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let join = async {
        let mut w = Vec::new();
        for h in writers {
            w.push(h.await.context("a writer panicked")?);
        }
        let mut r = Vec::new();
        for h in readers {
            r.push(h.await.context("a reader panicked")?);
        }
        anyhow::Ok((w, r))
    };
    let joined = tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(10), join).await;
    cluster.shutdown().await;
    match supervised {
        Ok(r) => r.context("running the cluster")?,
        Err(_) => bail!("the fault schedule did not finish in time"),
    }
    let (writer_outs, reader_outs) = joined.context("the workload did not stop in time")??;
    log(
        t0,
        format!(
            "workload stopped after {:.1} s; everything killed",
            elapsed.as_secs_f64()
        ),
    );

    // The source, once nothing writes any more.
    let rows = sqlx::query(&format!("SELECT id, cents FROM {name}.price"))
        .fetch_all(pool)
        .await
        .context("reading the source")?;
    let mut source = BTreeMap::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let cents: i64 = row.try_get("cents")?;
        source.insert(id as u32, cents);
    }

    let mut acks: BTreeMap<u32, Vec<Ack>> = BTreeMap::new();
    let mut write_failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut retired = Vec::new();
    for w in writer_outs {
        for a in w.acks {
            acks.entry(a.key).or_default().push(a);
        }
        for (e, c) in w.failures {
            *write_failures.entry(e).or_default() += c;
        }
        retired.extend(w.retired);
    }
    for a in acks.values_mut() {
        a.sort_by_key(|x| x.value);
        // One sequential writer per key: acknowledgement instants rise with the values.
        anyhow::ensure!(
            a.windows(2).all(|p| p[0].at_us <= p[1].at_us),
            "acknowledgements of one key out of order (harness bug)"
        );
    }
    let mut reads = Vec::new();
    let mut read_failures: BTreeMap<String, u64> = BTreeMap::new();
    for r in reader_outs {
        reads.extend(r.reads);
        for (e, c) in r.failures {
            *read_failures.entry(e).or_default() += c;
        }
    }

    // Diagnostics.
    let mut per_node = vec![(0u64, 0u64); opts.nodes];
    for r in &reads {
        let e = &mut per_node[r.node as usize];
        if r.value.is_some() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for (i, (ok, err)) in per_node.iter().enumerate() {
        log(t0, format!("node {i}: reads ok={ok} failed={err}"));
    }
    // Acknowledged writes per second of the run, per path (shows what the faults did to the writers).
    for (path, parity) in [("api", 1), ("sql", 0)] {
        let mut by: BTreeMap<u64, u64> = BTreeMap::new();
        for a in acks
            .iter()
            .filter(|(k, _)| *k % 2 == parity)
            .flat_map(|(_, a)| a)
        {
            *by.entry(a.at_us / 1_000_000).or_default() += 1;
        }
        let text: Vec<String> = by.iter().map(|(sec, c)| format!("{sec}s:{c}")).collect();
        log(
            t0,
            format!("{path}: writes acked by second: {}", text.join(" ")),
        );
    }
    // Where and when the reads stale after 100 ms were (second of the run → count, per node and path).
    for (path, parity) in [("api", 1), ("sql", 0)] {
        let mut by: BTreeMap<(u8, u64), u64> = BTreeMap::new();
        for r in reads.iter().filter(|r| r.key % 2 == parity) {
            let (Some(v), Some(a)) = (r.value, acks.get(&r.key)) else {
                continue;
            };
            if missed_by_us(r, v, a).is_some_and(|age| age > WINDOWS_MS[0] * 1000) {
                *by.entry((r.node, r.start_us / 1_000_000)).or_default() += 1;
            }
        }
        if !by.is_empty() {
            let text: Vec<String> = by
                .iter()
                .map(|((node, sec), c)| format!("node{node}@{sec}s:{c}"))
                .collect();
            log(
                t0,
                format!(
                    "{path}: reads stale after 100 ms by node and second: {}",
                    text.join(" ")
                ),
            );
        }
    }
    if !read_failures.is_empty() {
        log(t0, format!("read failures: {read_failures:?}"));
    }
    if !write_failures.is_empty() {
        log(
            t0,
            format!("write failures (not acknowledged): {write_failures:?}"),
        );
    }
    if !retired.is_empty() {
        log(
            t0,
            format!("keys retired after a write timeout: {retired:?}"),
        );
    }
    log(
        t0,
        format!(
            "processes that exited on their own (restarted): {}",
            cluster.unexpected_exits
        ),
    );

    Ok(vec![
        judge(
            "api",
            opts.nodes,
            opts.faults,
            |k| k % 2 == 1,
            &acks,
            &reads,
            &source,
        ),
        judge(
            "sql",
            opts.nodes,
            opts.faults,
            |k| k % 2 == 0,
            &acks,
            &reads,
            &source,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(key: u32, at_ms: u64, value: i64) -> Ack {
        Ack {
            key,
            at_us: at_ms * 1000,
            value,
        }
    }

    fn read(key: u32, start_ms: u64, value: Option<i64>) -> Read {
        Read {
            key,
            node: 0,
            start_us: start_ms * 1000,
            value,
        }
    }

    #[test]
    fn staleness_is_measured_from_the_first_acknowledged_value_a_read_missed() {
        let acks = BTreeMap::from([(1, vec![ack(1, 1000, 1), ack(1, 2000, 2), ack(1, 9000, 3)])]);
        let source = BTreeMap::from([(1, 2)]);
        let reads = [
            read(1, 500, Some(0)),    // nothing acknowledged yet: fresh
            read(1, 1050, Some(0)),   // missed 1, acked 50 ms before: not stale after 100 ms
            read(1, 2500, Some(0)),   // missed 1 (1500 ms): stale after 100 ms and 1 s
            read(1, 8000, Some(2)),   // the newest acknowledged value: fresh
            read(1, 15_000, Some(1)), // missed 2 (13 s): stale in every window
            read(1, 15_000, Some(7)), // newer than anything acknowledged: fresh
            read(1, 15_000, None),    // failed: an error
        ];
        let r = judge("api", 1, false, |_| true, &acks, &reads, &source);
        assert_eq!(r.reads, 6);
        assert_eq!(r.errors, 1);
        assert_eq!(r.stale, [2, 2, 1]);
        assert_eq!(r.max_stale_ms, 13_000.0);
        assert_eq!(r.writes_acked, 3);
        // The source holds 2 but 3 was acknowledged.
        assert_eq!(r.acked_missing, 1);
    }
}

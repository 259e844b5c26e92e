//! The HTTP/1.1 load generator and the core pinning the scenarios over HTTP share (`api`, `proxy`,
//! `proxy-stampede`): a minimal keep-alive client ([`Conn`]), closed-loop load over many connections
//! ([`hammer`]), and `taskset` pinning (the server under test on the last core, the load generator on the first).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    addr: String,
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server answered `Connection: close` (its `max_requests_per_connection`): reconnect first.
    closed: bool,
}

impl Conn {
    /// Connects to `addr` (`host:port`), with `TCP_NODELAY`.
    pub async fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr: addr.to_owned(),
            stream,
            buf: Vec::with_capacity(16 << 10),
            closed: false,
        })
    }

    /// Sends a request and reads the whole response; returns (status, whether `Cache-Status` says hit).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, bool)> {
        if self.closed {
            *self = Self::open(&self.addr).await?;
        }
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        if !body.is_empty() {
            self.stream.write_all(body).await?;
        }
        // Read until the end of the headers, then the body by Content-Length.
        self.buf.clear();
        let header_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..header_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut length = 0usize;
        let mut hit = false;
        for line in head.lines() {
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().context("content-length")?;
            } else if lower.starts_with("cache-status:") {
                hit = lower.contains("; hit");
            } else if lower.starts_with("connection:") && lower.contains("close") {
                self.closed = true;
            }
        }
        let mut have = self.buf.len() - header_end;
        while have < length {
            let mut chunk = vec![0u8; (length - have).min(64 << 10)];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection mid-body");
            }
            have += n;
        }
        Ok((status, hit))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What [`hammer`] measured.
pub struct Load {
    /// Per-request latency, µs.
    pub hist: hdrhistogram::Histogram<u64>,
    /// `200` answers whose `Cache-Status` said hit.
    pub hits: u64,
    /// Every other answer.
    pub other: u64,
    /// Seconds of load (at least the requested duration).
    pub elapsed: f64,
}

/// `connections` keep-alive connections, each sending `GET path(i)` in a closed loop for `seconds`, where `i` is
/// a per-connection pseudo-random number (a 64-bit LCG seeded by the connection's index).
pub async fn hammer(
    addr: &str,
    connections: usize,
    seconds: f64,
    path: impl Fn(u64) -> String + Send + Sync + 'static,
) -> anyhow::Result<Load> {
    let path = Arc::new(path);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..connections.max(1) {
        let addr = addr.to_owned();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await?;
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let (mut hits, mut other) = (0u64, 0u64);
            let mut i = w as u64 * 7919;
            while Instant::now() < until {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let started = Instant::now();
                let (status, hit) = c.request("GET", &path(i), &[]).await?;
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                if status == 200 && hit {
                    hits += 1;
                } else {
                    other += 1;
                }
            }
            Ok::<_, anyhow::Error>((hist, hits, other))
        }));
    }
    let started = Instant::now();
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let (mut hits, mut other) = (0u64, 0u64);
    for t in tasks {
        let (h, a, b) = t.await??;
        hist.add(&h).expect("same bounds");
        hits += a;
        other += b;
    }
    Ok(Load {
        hist,
        hits,
        other,
        elapsed: started.elapsed().as_secs_f64().max(seconds),
    })
}

fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Where the server under test and the load generator run.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// Whether they run on separate cores (more than one core, and `taskset` present).
    pub pinned: bool,
    /// The server's core (the last one).
    pub server_core: usize,
}

impl Pinning {
    /// Decides the pinning for this machine.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            pinned: cores > 1 && have_taskset(),
            server_core: cores.saturating_sub(1),
        }
    }

    /// A command running `exe` on the server's core (under `taskset`, which execs it: the child's id is the
    /// server's).
    pub fn server_command(&self, exe: &std::path::Path) -> Command {
        if self.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", &self.server_core.to_string()]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Moves every thread of this process (`-a`: the runtime's workers too, not only the main thread) to the
    /// first core.
    pub fn pin_load_generator(&self) {
        if self.pinned {
            let _ = Command::new("taskset")
                .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
                .output();
        }
    }
}

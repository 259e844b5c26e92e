//! A server that cannot be tied up: thousands of slow-header and idle keep-alive connections held open while
//! `/healthz` and a cached read still answer quickly (the server is a child process: it and this test each
//! need a file descriptor per connection); the header-read and idle timeouts close stalled connections; the
//! connection cap refuses with 503 and counts it; a connection serves a bounded number of requests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_server::{Config, RunOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-conns-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Reads one response with a Content-Length body; returns its head.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return head;
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A new connection, one request, the time it took and the response head.
async fn timed(addr: SocketAddr, method: &str, path: &str, body: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_response(&mut s).await;
    (started.elapsed(), head)
}

/// Whether the peer closed `s` within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_and_idle_connections_do_not_stop_health_checks_or_reads() {
    // Every connection costs a descriptor here and one in the server: use all the hard limit allows.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    const SLOW: usize = 1_000;
    let idle = 10_000usize.min((limit as usize).saturating_sub(SLOW + 500));
    assert!(
        idle >= 1_000,
        "open-file limit {limit} is too low for this test"
    );
    if idle < 10_000 {
        eprintln!(
            "open-file hard limit {limit}: holding {idle} idle connections instead of 10,000"
        );
    }
    let dir = temp_dir("many");
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 15000\nheader_read_timeout = \"60s\"\n\
         idle_timeout = \"60s\"\n\n[namespaces.kv]\nttl = \"10m\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let child = Child(child);
    let addr: SocketAddr = loop {
        let line = lines.next().expect("the server exited").unwrap();
        if let Some(rest) = line.strip_prefix("strata listening on http://") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            eprintln!("server: {}", l.unwrap_or_default())
        }
    });
    let (_, head) = timed(addr, "PUT", "/v1/kv/a", "{\"v\": 1}").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // 1,000 slow-header connections: half a request, then nothing.
    let opened = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /v1/kv/a HTTP/1.1\r\nhost: {addr}\r\nx-slow: ").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    // Idle keep-alive connections: one request each, then nothing. Opened by a few tasks at a time so the
    // listen backlog does not overflow.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let n = idle / 8 + usize::from(t < idle % 8);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                read_response(&mut s).await;
                out.push(s);
            }
            out
        }));
    }
    let mut idles = Vec::with_capacity(idle);
    for t in tasks {
        idles.extend(t.await.unwrap());
    }
    eprintln!(
        "held {} slow-header and {} idle connections after {:?}",
        slow.len(),
        idles.len(),
        opened.elapsed()
    );

    // Meanwhile: health checks and a cached read, each on a new connection.
    let mut worst = (Duration::ZERO, Duration::ZERO);
    let mut all = Vec::new();
    for _ in 0..20 {
        let (d, head) = timed(addr, "GET", "/healthz", "").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        worst.0 = worst.0.max(d);
        let (d, head) = timed(addr, "GET", "/v1/kv/a", "").await;
        assert!(
            head.starts_with("http/1.1 200") && head.contains("hit"),
            "{head}"
        );
        worst.1 = worst.1.max(d);
        all.push(d);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "slowest /healthz {:?}, slowest cached GET {:?}",
        worst.0, worst.1
    );
    assert!(
        worst.0 < Duration::from_millis(100) && worst.1 < Duration::from_millis(100),
        "{worst:?}"
    );

    // The server counts them and has closed none.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let open: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("strata_http_connections_open "))
        .expect("the open-connections gauge")
        .trim()
        .parse()
        .unwrap();
    assert!(open >= (SLOW + idle) as f64, "{open}");
    for s in slow.iter_mut().take(50).chain(idles.iter_mut().take(50)) {
        assert!(!closed_within(s, Duration::from_millis(1)).await);
    }
    drop((slow, idles));
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}

async fn start(
    server: &str,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let dir = temp_dir("small");
    let src = format!("[server]\n{server}\n\n[namespaces.kv]\nttl = \"10m\"\n");
    let mut config = Config::parse(&src, "test.toml").unwrap();
    config.server.data_dir = dir;
    let state = strata_server::build(&config, &RunOptions::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(strata_server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    (addr, stop, join)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_read_timeout_closes_a_stalled_connection() {
    let (addr, stop, join) = start("header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    // Half a request line, then silence: closed after about a second.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HT").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "still open"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A connection that sends nothing at all is closed the same way.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    // After a request, a keep-alive connection that starts another head and stalls: closed too, while one
    // that simply idles stays open (its idle timeout is 30 s).
    let mut stalls = TcpStream::connect(addr).await.unwrap();
    let mut idles = TcpStream::connect(addr).await.unwrap();
    for s in [&mut stalls, &mut idles] {
        s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(s).await;
    }
    stalls.write_all(b"GET /heal").await.unwrap();
    assert!(closed_within(&mut stalls, Duration::from_secs(5)).await);
    assert!(!closed_within(&mut idles, Duration::from_millis(200)).await);
    // Slowly but in time is fine: a head in pieces over 600 ms.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for part in [
        "GET /healthz HTTP/1.1\r\n",
        &format!("host: {addr}\r\n"),
        "\r\n",
    ] {
        s.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(read_response(&mut s).await.starts_with("http/1.1 200"));
    let _ = stop.send(());
    join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_requests_per_connection_are_bounded() {
    let (addr, stop, join) = start("idle_timeout = \"1s\"\nmax_requests_per_connection = 3").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    for i in 1..=3 {
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_response(&mut s).await;
        assert_eq!(head.contains("connection: close"), i == 3, "{i}: {head}");
    }
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await;
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let _ = stop.send(());
    join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_get_503_and_are_counted() {
    let (addr, stop, join) = start("max_connections = 20").await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut s).await;
        held.push(s);
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    assert!(
        text.starts_with("HTTP/1.1 503") && text.contains("too_many_connections"),
        "{text:?}"
    );
    // One closes: room again, and the refusal is in the metrics.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("strata_http_connections_refused_total "))
        .expect("the refused counter")
        .trim()
        .parse()
        .unwrap();
    assert!(refused >= 1.0);
    // Shutdown with connections still open (idle ones close at once) is graceful and quick.
    let started = Instant::now();
    let _ = stop.send(());
    join.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}

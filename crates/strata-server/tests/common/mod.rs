//! Helpers of the server's tests: a server in this process ([`InProcess`], on port 0), or the `strata` binary on
//! the embedded default ([`serve`]; no services needed).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A fresh data directory under the system's temp dir.
pub fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "strata-bin-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A running `strata serve`, killed (SIGKILL) when dropped — also when a test panics.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The proxy's `http://ADDR`, when it serves one (`--proxy-origin`, `[proxy]`).
    pub proxy: Option<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `strata serve` on `dir`; `Ok(running)` once it listens, `Err(stderr)` if it exits first.
pub fn serve(dir: &Path, extra: &[&str]) -> Result<Running, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("STRATA_TOKEN")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.wait();
            return Err(seen.join("\n"));
        };
        if let Some(rest) = line.strip_prefix("strata listening on ") {
            let base = rest.split_whitespace().next().unwrap().to_owned();
            let proxy = seen.iter().find_map(|l: &String| {
                l.strip_prefix("strata proxy listening on ")
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            });
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Ok(Running { child, base, proxy });
        }
        seen.push(line);
    }
}

/// [`call`] with more header fields.
pub fn call_with(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut resp = agent.run(req.body(body.to_owned()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// One request with a JSON content type; `(status, body)`.
pub fn call(method: &str, url: &str, body: &str) -> (u16, String) {
    call_with(method, url, &[], body)
}

/// A server in this test's process on `127.0.0.1:0`, with the demo catalog seeded.
pub struct InProcess {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Builds and serves `config`.
    pub async fn start(config: &strata_server::Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = strata_server::build(
            config,
            &strata_server::RunOptions {
                seed_demo: true,
                ..strata_server::RunOptions::default()
            },
        )
        .await
        .unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(strata_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            join,
        }
    }

    /// Shuts it down gracefully and checks that it stopped cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        (&mut self.join).await.unwrap().unwrap();
    }
}

/// Parses each mutation of a valid config `example` (`(from, to, marker, field)`: `from` replaced by `to` once, or
/// `to` appended when `from` is empty) and checks that the error names the line of `marker`'s last occurrence, a
/// column on it, `field`, and `file`. Panics listing every mutation that was accepted or badly located.
pub fn assert_mutations_located(example: &str, file: &str, mutations: &[(&str, &str, &str, &str)]) {
    strata_server::Config::parse(example, file).unwrap();
    let mut failures = Vec::new();
    for (from, to, marker, field) in mutations {
        let src = if from.is_empty() {
            format!("{example}{to}")
        } else {
            assert!(example.contains(from), "{from:?} is not in the example");
            example.replacen(from, to, 1)
        };
        let marker_line = line_of(&src, marker);
        let e = match strata_server::Config::parse(&src, file) {
            Ok(_) => {
                failures.push(format!("{from:?} -> {to:?}: accepted"));
                continue;
            }
            Err(e) => e,
        };
        let line_len = src
            .lines()
            .nth(e.line.saturating_sub(1))
            .map_or(0, str::len);
        if e.line != marker_line
            || e.field != *field
            || e.column == 0
            || e.column > line_len.max(1)
            || e.file != file
            || e.message.is_empty()
        {
            failures.push(format!(
                "{to:?}: want line {marker_line} field {field}, got {e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} mutations badly located:\n{}",
        failures.len(),
        mutations.len(),
        failures.join("\n")
    );
}

/// The 1-based line of `marker`'s last occurrence in `src`.
pub fn line_of(src: &str, marker: &str) -> usize {
    let at = src
        .rfind(marker)
        .unwrap_or_else(|| panic!("marker {marker:?} not in the mutated file"));
    src[..at].matches('\n').count() + 1
}

/// The first headless browser on the PATH (Debian's `chromium`, which scripts/test.sh installs); panics without one.
pub fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_owned();
        }
    }
    panic!("no headless browser found: install Debian's `chromium` (scripts/test.sh does)");
}

/// The DOM `browser` renders for `url` after `budget_ms` of virtual time (the page's timers run meanwhile).
pub fn dump_dom(browser: &str, url: &str, budget_ms: u64) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap()
}

/// Serves `app` on `127.0.0.1:0` from a thread of its own (a runtime with two workers) for the rest of the test
/// process: the stand-in origins, endpoints and identity providers of the tests. Returns where it listens.
pub fn spawn_app(app: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

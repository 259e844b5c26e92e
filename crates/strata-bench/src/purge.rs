//! `purge`: how long a tag purge takes to reach every tier — `nodes` `strata serve` processes sharing Redis, each
//! with its proxy in front of one origin, and a stand-in CDN that a `[[cdn]]` webhook hook tells.
//!
//! `objects` URLs, each in `variants` variants (`Vary: X-Variant`) and tagged `obj:<i>` (`Surrogate-Key`), are
//! cached on every node (so every node holds them in its L1: the purge must travel on the bus). Then, `purges`
//! times: the origin's copy of one object changes, a tag purge goes to node 0, and the clock runs until every
//! node answers every variant with the new body (each node and variant polled every millisecond) — and, apart,
//! until the stand-in CDN received the purge (its edge stops serving the old object then). p50/p99 over the
//! purges.
//!
//! The soft purge under load: `soft_objects` other objects (with `stale-while-revalidate`) are read by
//! `clients` tasks across every node and variant while each is soft-purged; the origin requests they cause,
//! divided by the stored responses (object × variant) they covered, is `soft_origin_requests_per_object` (goal:
//! one: each stored response revalidated once, while the readers are answered the stale copy).
//!
//! Prints `purge nodes=… purges=… p50_ms=… p99_ms=… cdn_p99_ms=… soft_origin_requests_per_object=…`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The scenario's knobs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `strata` binary.
    pub strata: Option<PathBuf>,
    /// `strata serve` processes.
    pub nodes: usize,
    /// Objects cached (each in `variants` variants).
    pub objects: usize,
    /// Variants per object.
    pub variants: usize,
    /// Tag purges measured.
    pub purges: usize,
    /// Objects soft-purged under load.
    pub soft_objects: usize,
    /// Reader tasks during the soft purge.
    pub clients: usize,
    /// Redis.
    pub redis: String,
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Purges measured.
    pub purges: usize,
    /// Until every node served every variant anew: p50, p99 (ms).
    pub p50_ms: f64,
    /// p99 of the same.
    pub p99_ms: f64,
    /// Until the stand-in CDN had the purge: p99 (ms).
    pub cdn_p99_ms: f64,
    /// Origin requests per stored response after the soft purges.
    pub soft_origin_requests_per_object: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "purge nodes={} purges={} p50_ms={:.1} p99_ms={:.1} cdn_p99_ms={:.1} soft_origin_requests_per_object={:.2}",
            self.nodes, self.purges, self.p50_ms, self.p99_ms, self.cdn_p99_ms, self.soft_origin_requests_per_object
        )
    }
}

/// The origin: `/obj/<i>` answers `obj <i> v<version> <variant>`, tagged `obj:<i>`, fresh for an hour (objects
/// at or past `soft_from` with a minute of stale-while-revalidate); counts requests per object.
struct Origin {
    addr: SocketAddr,
    versions: Arc<Vec<AtomicU64>>,
    requests: Arc<Vec<AtomicU64>>,
}

impl Origin {
    async fn start(objects: usize, soft_from: usize) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let versions: Arc<Vec<AtomicU64>> =
            Arc::new((0..objects).map(|_| AtomicU64::new(1)).collect());
        let requests: Arc<Vec<AtomicU64>> =
            Arc::new((0..objects).map(|_| AtomicU64::new(0)).collect());
        let (v, r) = (versions.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (v, r) = (v.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (v, r) = (v.clone(), r.clone());
                        async move {
                            let i: Option<usize> = req
                                .uri()
                                .path()
                                .strip_prefix("/obj/")
                                .and_then(|s| s.parse().ok())
                                .filter(|&i| i < v.len());
                            let Some(i) = i else {
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = StatusCode::NOT_FOUND;
                                return Ok::<_, Infallible>(resp);
                            };
                            r[i].fetch_add(1, Ordering::SeqCst);
                            let variant = req
                                .headers()
                                .get("x-variant")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            let version = v[i].load(Ordering::SeqCst);
                            let mut resp = Response::new(Full::new(Bytes::from(format!(
                                "obj {i} v{version} {variant}"
                            ))));
                            let h = resp.headers_mut();
                            let cc = if i >= soft_from {
                                "max-age=3600, stale-while-revalidate=60"
                            } else {
                                "max-age=3600"
                            };
                            h.insert("cache-control", HeaderValue::from_static(cc));
                            h.insert("vary", HeaderValue::from_static("x-variant"));
                            h.insert(
                                "surrogate-key",
                                HeaderValue::from_str(&format!("obj:{i} all")).expect("token"),
                            );
                            Ok(resp)
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
            versions,
            requests,
        })
    }
}

/// The stand-in CDN: a webhook receiver that records when each tag's purge arrived.
struct StandInCdn {
    addr: SocketAddr,
    arrived: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl StandInCdn {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let arrived: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let a = arrived.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let a = a.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let a = a.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let at = Instant::now();
                            let parsed = body
                                .ok()
                                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                            if let Some(v) = parsed {
                                for t in v["values"].as_array().into_iter().flatten() {
                                    if let Some(t) = t.as_str() {
                                        a.lock().push((t.to_string(), at));
                                    }
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, arrived })
    }

    fn arrival(&self, tag: &str) -> Option<Instant> {
        self.arrived
            .lock()
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, at)| *at)
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn locate_strata(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("strata");
    if sibling.exists() {
        return Ok(sibling);
    }
    for p in ["target/release/strata", "target/debug/strata"] {
        if std::path::Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("the strata binary was not found: give --strata or build it (cargo build --release -p strata-server)")
}

struct Node {
    child: Child,
    api: String,
    proxy: String,
}

async fn start_node(
    strata: &PathBuf,
    config: &PathBuf,
    dir: &std::path::Path,
    i: usize,
) -> anyhow::Result<Node> {
    let (api, proxy) = (free_port()?, free_port()?);
    let data = dir.join(format!("node{i}"));
    let child = spawn_serve(
        strata,
        config,
        &data,
        &["--proxy-listen".into(), format!("127.0.0.1:{proxy}")],
        api,
    )
    .await
    .with_context(|| format!("node {i}"))?;
    Ok(Node {
        child,
        api: format!("http://127.0.0.1:{api}"),
        proxy: format!("http://127.0.0.1:{proxy}"),
    })
}

/// Starts `strata serve --config {config} --listen 127.0.0.1:{port} --data-dir {data} {extra}` and waits until it
/// listens (30 s at most); the child is killed when dropped.
pub(crate) async fn spawn_serve(
    strata: &PathBuf,
    config: &PathBuf,
    data: &std::path::Path,
    extra: &[String],
    port: u16,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(data)?;
    let mut child = Command::new(strata)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", strata.display()))?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .context("strata serve did not start within 30 s")??;
        let Some(line) = line else {
            bail!("strata serve exited at start: {}", seen.join("\n"));
        };
        if line.starts_with("strata listening on") {
            break;
        }
        seen.push(line);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn get(
    client: &HttpClient,
    base: &str,
    path: &str,
    variant: usize,
) -> anyhow::Result<String> {
    let req = Request::get(format!("{base}{path}"))
        .header("host", "shop.test")
        .header("x-variant", format!("v{variant}"))
        .body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn post_purge(client: &HttpClient, base: &str, body: &str) -> anyhow::Result<()> {
    let req = Request::post(format!("{base}/v1/_purge"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("purge {body}: {status}: {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the scenario.
pub async fn run(o: Options) -> anyhow::Result<Report> {
    if o.nodes == 0 || o.objects == 0 || o.variants == 0 || o.purges + o.soft_objects > o.objects {
        bail!("need nodes, objects and variants, and purges + soft_objects <= objects");
    }
    let strata = locate_strata(o.strata.clone())?;
    let soft_from = o.objects - o.soft_objects;
    let origin = Origin::start(o.objects, soft_from).await?;
    let cdn = StandInCdn::start().await?;
    let dir = std::env::temp_dir().join(format!("strata-bench-purge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("purge.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{redis}\"\nprefix = \"bench-purge-{pid}\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"\n\n\
             [[proxy.routes]]\nname = \"shop\"\norigin = \"http://{origin}\"\n\n\
             [[cdn]]\nname = \"edge\"\nkind = \"webhook\"\nurl = \"http://{cdn}/purge\"\n",
            redis = o.redis,
            pid = std::process::id(),
            origin = origin.addr,
            cdn = cdn.addr,
        ),
    )?;
    let mut nodes = Vec::new();
    for i in 0..o.nodes {
        nodes.push(start_node(&strata, &config, &dir, i).await?);
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();

    // Warm every node, every object, every variant (node 0 fills L2; the others fill their L1 from it).
    for n in &nodes {
        let n = n.proxy.clone();
        let tasks = (0..32).map(|w| {
            let (client, n) = (client.clone(), n.clone());
            let (objects, variants) = (o.objects, o.variants);
            tokio::spawn(async move {
                let mut i = w;
                while i < objects * variants {
                    get(&client, &n, &format!("/obj/{}", i / variants), i % variants).await?;
                    i += 32;
                }
                anyhow::Ok(())
            })
        });
        for t in futures::future::join_all(tasks).await {
            t??;
        }
    }

    // Hard tag purges, one object at a time.
    let mut all_ms = Vec::new();
    let mut cdn_ms = Vec::new();
    for i in 0..o.purges {
        let version = origin.versions[i].fetch_add(1, Ordering::SeqCst) + 1;
        let want = format!("obj {i} v{version} ");
        let t0 = Instant::now();
        post_purge(&client, &nodes[0].api, &format!("{{\"tag\": \"obj:{i}\"}}")).await?;
        let polls = nodes.iter().flat_map(|n| {
            (0..o.variants).map(|v| {
                let (client, base, want) = (client.clone(), n.proxy.clone(), want.clone());
                tokio::spawn(async move {
                    let deadline = t0 + Duration::from_secs(10);
                    loop {
                        let body = get(&client, &base, &format!("/obj/{i}"), v).await?;
                        if body.starts_with(&want) {
                            return anyhow::Ok(t0.elapsed());
                        }
                        if Instant::now() > deadline {
                            bail!("{base} still served {body:?} 10 s after the purge");
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
        });
        let mut slowest = Duration::ZERO;
        for t in futures::future::join_all(polls.collect::<Vec<_>>()).await {
            slowest = slowest.max(t??);
        }
        all_ms.push(slowest.as_secs_f64() * 1000.0);
        let tag = format!("obj:{i}");
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if let Some(at) = cdn.arrival(&tag) {
                cdn_ms.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("the stand-in CDN never received the purge of {tag}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // Soft purges under load: readers on every node and variant while the soft objects are soft-purged.
    let soft_per_object = if o.soft_objects == 0 {
        f64::NAN
    } else {
        let before: u64 = (soft_from..o.objects)
            .map(|i| origin.requests[i].load(Ordering::SeqCst))
            .sum();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..o.clients)
            .map(|c| {
                let (client, stop) = (client.clone(), stop.clone());
                let bases: Vec<String> = nodes.iter().map(|n| n.proxy.clone()).collect();
                let (objects, soft, variants) = (o.objects, o.soft_objects, o.variants);
                tokio::spawn(async move {
                    let mut k = c;
                    while !stop.load(Ordering::Relaxed) {
                        let i = objects - soft + k % soft;
                        let v = (k / soft) % variants;
                        let _ =
                            get(&client, &bases[k % bases.len()], &format!("/obj/{i}"), v).await;
                        k = k.wrapping_add(7919);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in soft_from..o.objects {
            origin.versions[i].fetch_add(1, Ordering::SeqCst);
            post_purge(
                &client,
                &nodes[i % nodes.len()].api,
                &format!("{{\"tag\": \"obj:{i}\", \"soft\": true}}"),
            )
            .await?;
        }
        // Long enough for every stored response to be read (and revalidated) many times.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let _ = r.await;
        }
        let after: u64 = (soft_from..o.objects)
            .map(|i| origin.requests[i].load(Ordering::SeqCst))
            .sum();
        (after - before) as f64 / (o.soft_objects * o.variants) as f64
    };

    for mut n in nodes {
        let _ = n.child.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    all_ms.sort_by(f64::total_cmp);
    cdn_ms.sort_by(f64::total_cmp);
    Ok(Report {
        nodes: o.nodes,
        purges: o.purges,
        p50_ms: percentile(&all_ms, 0.5),
        p99_ms: percentile(&all_ms, 0.99),
        cdn_p99_ms: percentile(&cdn_ms, 0.99),
        soft_origin_requests_per_object: soft_per_object,
    })
}

//! The edge tier wired into `strata serve`: the binary with `--proxy-origin` / `--proxy-listen` in front of a
//! scripted origin (miss, then hit; `Cache-Status`; a 304 to a client's `If-None-Match`), a config with two
//! routes (a host and a path prefix) to two origins, config errors located like every other, the proxy's
//! counters on `/metrics` and `/v1/_stats`, and a graceful shutdown that finishes an in-flight slow response.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use strata_server::config::ProxySection;
use strata_server::Config;

/// A scripted origin on its own thread and runtime: `/page` (fresh for a minute, `ETag: "v1"`), `/slow` (answers
/// after 1.5 s), anything else echoes its name and path. Counts the requests it receives.
struct Origin {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Requests for `/soft/…` alone.
    soft_hits: Arc<AtomicUsize>,
}

impl Origin {
    fn start(name: &'static str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let counter = hits.clone();
        let soft_hits = Arc::new(AtomicUsize::new(0));
        let soft_counter = soft_hits.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let count = counter.clone();
                let soft_count = soft_counter.clone();
                let app = axum::Router::new()
                    .route(
                        "/page",
                        get(|| async {
                            (
                                [
                                    ("cache-control", "max-age=60"),
                                    ("etag", "\"v1\""),
                                    ("content-type", "text/plain"),
                                ],
                                "hello from the origin\n",
                            )
                        }),
                    )
                    .route(
                        "/collapse",
                        get(|| async {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            ([("cache-control", "max-age=60")], "fetched once\n")
                        }),
                    )
                    .route(
                        "/tagged/{id}",
                        get(
                            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                                (
                                    [
                                        ("cache-control", "max-age=600".to_string()),
                                        ("surrogate-key", format!("product:{id} pages")),
                                    ],
                                    format!("page of product {id}\n"),
                                )
                            },
                        ),
                    )
                    .route(
                        "/soft/{id}",
                        get(
                            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                                (
                                    [
                                        (
                                            "cache-control",
                                            "max-age=600, stale-while-revalidate=600".to_string(),
                                        ),
                                        ("surrogate-key", format!("soft:{id}")),
                                    ],
                                    format!("soft page {id}\n"),
                                )
                            },
                        ),
                    )
                    .route(
                        "/slow",
                        get(|| async {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            ([("cache-control", "max-age=60")], "slow but complete\n")
                        }),
                    )
                    .fallback(move |uri: axum::http::Uri| async move {
                        (
                            [("cache-control", "max-age=60")],
                            format!("{name} {}\n", uri.path()),
                        )
                    })
                    .layer(axum::middleware::from_fn(
                        move |req: axum::extract::Request, next: axum::middleware::Next| {
                            count.fetch_add(1, Ordering::SeqCst);
                            if req.uri().path().starts_with("/soft/") {
                                soft_count.fetch_add(1, Ordering::SeqCst);
                            }
                            next.run(req)
                        },
                    ));
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self {
            addr: rx.recv().unwrap(),
            hits,
            soft_hits,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn soft_hits(&self) -> usize {
        self.soft_hits.load(Ordering::SeqCst)
    }
}

/// One HTTP/1.1 request over a fresh connection with `Host: host` and `extra` header lines; `(status, headers,
/// body)` with header names lowercased.
fn request(
    addr: &str,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, Vec<(String, String)>, String) {
    let addr = addr.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `strata` binary on the embedded default with its proxy in front of `origin` on a port of its own, and its
/// data directory; `extra` arguments go after the proxy's.
fn proxied(name: &str, origin: &Origin, extra: &[&str]) -> (std::path::PathBuf, common::Running) {
    let dir = common::data_dir(name);
    let url = origin.url();
    let mut args = vec![
        "--proxy-origin",
        url.as_str(),
        "--proxy-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let running = common::serve(&dir, &args).unwrap();
    (dir, running)
}

#[test]
fn the_binary_with_proxy_origin_misses_then_hits_and_counts_it() {
    let origin = Origin::start("site");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = common::data_dir("proxy-origin");
    let running = common::serve(
        &dir,
        &["--proxy-origin", &origin.url(), "--proxy-listen", &listen],
    )
    .unwrap();
    let proxy = running.proxy.clone().expect("the proxy's listening line");
    assert_eq!(proxy, format!("http://{listen}"), "--proxy-listen honoured");

    let (status, h, body) = request(&proxy, "localhost", "/page", &[]);
    assert_eq!(status, 200);
    assert_eq!(body, "hello from the origin\n");
    let cs = header(&h, "cache-status");
    assert!(cs.contains("fwd=uri-miss") && cs.contains("stored"), "{cs}");

    let (status, h, body) = request(&proxy, "localhost", "/page", &[]);
    assert_eq!((status, body.as_str()), (200, "hello from the origin\n"));
    let cs = header(&h, "cache-status");
    assert!(cs.starts_with("Strata; hit"), "{cs}");
    assert!(!header(&h, "age").is_empty(), "{h:?}");
    assert_eq!(origin.hits(), 1, "the origin is asked once");

    // The client's own validator is answered from the cache.
    let (status, h, body) = request(&proxy, "localhost", "/page", &["if-none-match: \"v1\""]);
    assert_eq!((status, body.as_str()), (304, ""));
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_eq!(origin.hits(), 1);

    // The data API is where it was, unchanged, with the proxy's counters on /metrics and /v1/_stats.
    let (code, _) = common::call("GET", &format!("{}/v1/product/1", running.base), "");
    assert_eq!(code, 200);
    let (_, metrics) = common::call("GET", &format!("{}/metrics", running.base), "");
    let hit_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("strata_proxy_requests_total{")
                && l.contains("cache=\"hit\"")
                && l.contains("route=\"*/\"")
        })
        .unwrap_or_else(|| panic!("no proxy hit counter in:\n{metrics}"));
    assert!(hit_line.ends_with(" 2"), "{hit_line}");
    assert!(
        metrics.contains("strata_proxy_origin_seconds"),
        "origin latency"
    );
    let (_, stats) = common::call("GET", &format!("{}/v1/_stats", running.base), "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let route = &stats["proxy"]["routes"][0];
    assert_eq!(route["hits"], 2, "{stats}");
    assert_eq!(route["misses"], 1, "{stats}");
    assert_eq!(route["origin_requests"], 1, "{stats}");
    assert_eq!(route["stored_bytes"], 22, "{stats}");
    assert_eq!(stats["proxy"]["listen"], listen.as_str());
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_a_proxy_origin_the_proxy_listen_flag_is_refused() {
    let dir = common::data_dir("proxy-listen-alone");
    let err = common::serve(&dir, &["--proxy-listen", "127.0.0.1:0"]).unwrap_err();
    assert!(err.contains("--proxy-listen needs a proxy"), "{err}");
    let err = common::serve(&dir, &["--proxy-origin", "ftp://nowhere"]).unwrap_err();
    assert!(err.contains("--proxy-origin"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_config_with_two_routes_sends_each_host_and_prefix_to_its_origin() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let dir = common::data_dir("proxy-routes");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[[proxy.routes]]\nname = \"a\"\nhost = \"a.test\"\norigin = \"{}\"\n\n\
             [[proxy.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\norigin = \"{}\"\n",
            a.url(),
            b.url()
        ),
    )
    .unwrap();
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let proxy = running.proxy.clone().unwrap();

    let (status, h, body) = request(&proxy, "a.test", "/api/x", &[]);
    assert_eq!((status, body.as_str()), (200, "a /api/x\n"), "{h:?}");
    let (status, _, body) = request(&proxy, "b.test", "/api/x", &[]);
    assert_eq!((status, body.as_str()), (200, "b /api/x\n"));
    let (status, _, body) = request(&proxy, "a.test:8080", "/other", &[]);
    assert_eq!((status, body.as_str()), (200, "a /other\n"));
    // Nothing serves b.test outside /api/.
    let (status, h, _) = request(&proxy, "b.test", "/other", &[]);
    assert_eq!(status, 404);
    assert!(header(&h, "cache-status").contains("no-route"), "{h:?}");
    assert_eq!((a.hits(), b.hits()), (2, 1));
    // Same URI on another host is another key: b.test/api/x was not a.test/api/x's hit.
    let (_, h, _) = request(&proxy, "b.test", "/api/x", &[]);
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_eq!(b.hits(), 1);

    let (_, stats) = common::call("GET", &format!("{}/v1/_stats", running.base), "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let names: Vec<&str> = stats["proxy"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "api"]);
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

const EDGE: &str = include_str!("../../../examples/edge.toml");

/// As `config_errors.rs` does for `examples/strata.toml`: `(what, replacement, text on the blamed line, field)`.
const MUTATIONS: &[(&str, &str, &str, &str)] = &[
    (
        "url = \"https://api.fastly.com\"",
        "url = \"ftp://api.fastly.com\"",
        "ftp://api.fastly.com",
        "cdn[0].url",
    ),
    (
        "# ca_file = \"/etc/strata/internal-ca.pem\"",
        "ca_file = \"/nonexistent/ca.pem\"",
        "/nonexistent/ca.pem",
        "cdn[1].ca_file",
    ),
    (
        "kind = \"fastly\"",
        "kind = \"akamai\"",
        "akamai",
        "cdn[0].kind",
    ),
    (
        "routes = [\"site\", \"assets\"]",
        "routes = [\"site\", \"nope\"]",
        "nope",
        "cdn[0].routes",
    ),
    (
        "name = \"audit\"",
        "name = \"fastly\"",
        "name = \"fastly\"",
        "cdn[1].name",
    ),
    (
        "max_attempts = 8",
        "max_attempts = 0",
        "max_attempts",
        "cdn[0].max_attempts",
    ),
    (
        "service = \"SERVICE_ID\"",
        "service = \"\"",
        "kind = \"fastly\"",
        "cdn[0].kind",
    ),
    (
        "listen = \"127.0.0.1:8780\"",
        "listen = \"everywhere\"",
        "everywhere",
        "proxy.listen",
    ),
    (
        "origin = \"http://127.0.0.1:8002\"",
        "origin = \"https://127.0.0.1:8002/api\"",
        "https://127.0.0.1:8002/api",
        "proxy.routes[1].origin",
    ),
    (
        "origin = \"http://127.0.0.1:8002\"",
        "origin = \"not a url\"",
        "not a url",
        "proxy.routes[1].origin",
    ),
    (
        "max_object_bytes = \"4MiB\"",
        "max_object_bytes = \"2GiB\"",
        "2GiB",
        "proxy.routes[0].max_object_bytes",
    ),
    (
        "stale_if_error = \"1h\"",
        "stale_if_error = \"11y\"",
        "11y",
        "proxy.routes[0].stale_if_error",
    ),
    (
        "origin_timeout = \"30s\"",
        "origin_timeout = \"2h\"",
        "2h",
        "proxy.origin_timeout",
    ),
    (
        "origin_timeout = \"30s\"",
        "origin_timeout = \"0s\"",
        "origin_timeout = \"0s\"",
        "proxy.origin_timeout",
    ),
    (
        "heuristic_per_mille = 0",
        "heuristic_per_mille = 2000",
        "2000",
        "proxy.routes[1].heuristic_per_mille",
    ),
    (
        "hit_for_pass = \"10s\"",
        "hit_for_pass = \"ten\"",
        "ten",
        "proxy.routes[1].hit_for_pass",
    ),
    (
        "honour_authorization = false",
        "honour_authorisation = false",
        "honour_authorisation",
        "proxy.routes[1].honour_authorisation",
    ),
    (
        "path_prefix = \"/api/\"",
        "path_prefix = \"api/\"",
        "api/",
        "proxy.routes[1].path_prefix",
    ),
    (
        "host = \"static.example.com\"",
        "host = \"https://static.example.com\"",
        "https://static",
        "proxy.routes[0].host",
    ),
    (
        "name = \"site\"",
        "name = \"site\"\npath_prefix = \"/api/\"",
        "path_prefix = \"/api/\"",
        "proxy.routes[2].path_prefix",
    ),
    (
        "[proxy]",
        "[proxy]\nlisten_on = \"x\"",
        "listen_on",
        "proxy.listen_on",
    ),
];

#[test]
fn proxy_config_errors_name_their_line_column_and_field() {
    common::assert_mutations_located(EDGE, "edge.toml", MUTATIONS);
}

#[test]
fn an_empty_route_list_and_a_duplicate_route_say_what_to_do() {
    let e = Config::parse("[proxy]\n", "edge.toml").unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (1, "proxy.routes"), "{e}");
    assert!(e.message.contains("[[proxy.routes]]"), "{e}");
    let src = "[proxy]\n[[proxy.routes]]\nhost = \"A.test\"\norigin = \"http://a\"\n\
               [[proxy.routes]]\nhost = \"a.test\"\norigin = \"http://b\"\n";
    let e = Config::parse(src, "edge.toml").unwrap_err();
    assert_eq!(
        (e.line, e.field.as_str()),
        (6, "proxy.routes[1].host"),
        "{e}"
    );
    assert!(e.message.contains("routes 0 and 1"), "{e}");
}

/// A server in this process (the embedded default, the demo seeded) with its proxy in front of an origin.
struct EdgeServer {
    dir: std::path::PathBuf,
    /// The data API.
    addr: std::net::SocketAddr,
    /// The proxy.
    proxy_addr: String,
    /// Stops the server (it finishes what is in flight).
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl EdgeServer {
    async fn start(name: &str, origin: &Origin) -> Self {
        let dir = common::data_dir(name);
        let mut config = Config::embedded(&dir);
        config.proxy = Some(ProxySection::one_route(
            "127.0.0.1:0".parse().unwrap(),
            &origin.url(),
        ));
        let state = strata_server::build(
            &config,
            &strata_server::RunOptions {
                seed_demo: true,
                ..strata_server::RunOptions::default()
            },
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy_listener = strata_server::bind_proxy(&state).await.unwrap().unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap().to_string();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(strata_server::serve_with(
            listener,
            Some(proxy_listener),
            state,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            dir,
            addr,
            proxy_addr,
            stop,
            server,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_slow_response() {
    let origin = Origin::start("slow");
    let EdgeServer {
        dir,
        proxy_addr,
        stop,
        server,
        ..
    } = EdgeServer::start("proxy-shutdown", &origin).await;
    let addr = proxy_addr.clone();
    let slow = tokio::task::spawn_blocking(move || request(&addr, "localhost", "/slow", &[]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(origin.hits(), 1, "the slow request reached the origin");
    let _ = stop.send(());
    let (status, h, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(body, "slow but complete\n");
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    // Stopped: nothing listens on the proxy's address any more.
    assert!(TcpStream::connect(&proxy_addr).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_data_api_answers_as_before_beside_the_proxy() {
    // The proxy's own answers are plain HTTP; the data API's errors stay JSON.
    let origin = Origin::start("site");
    let (dir, running) = proxied("proxy-api", &origin, &[]);
    let (code, body) = common::call("GET", &format!("{}/v1/prodcut/1", running.base), "");
    assert_eq!(code, 404);
    assert!(body.contains("unknown_namespace"), "{body}");
    let proxy = running.proxy.clone().unwrap();
    let (status, h, _) = request(&proxy, "localhost", "/v1/prodcut/1", &[]);
    assert_eq!(status, 200, "the proxy forwards every path: {h:?}");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_proxy_listener_refuses_ambiguous_framing_before_the_origin_sees_it() {
    let origin = Origin::start("site");
    let (dir, running) = proxied("proxy-framing", &origin, &[]);
    let proxy = running.proxy.clone().unwrap();
    let mut s = TcpStream::connect(proxy.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(origin.hits(), 0, "nothing refused is forwarded");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

/// Two `strata serve` nodes with their proxies in front of `origin`, sharing Redis (`STRATA_REDIS_URL`, default
/// `redis://127.0.0.1:6379`) under a key prefix of this test's own.
fn two_nodes_on_redis(
    origin: &Origin,
    tag: &str,
    names: [&str; 2],
) -> (
    (std::path::PathBuf, common::Running),
    (std::path::PathBuf, common::Running),
) {
    let redis =
        std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let node = |name: &str| {
        proxied(
            name,
            origin,
            &["--redis", &redis, "--redis-prefix", &prefix],
        )
    };
    (node(names[0]), node(names[1]))
}

/// Two nodes on one Redis: a response one node fetched is the other's hit (the proxy's namespace is in L2), and
/// concurrent misses on both nodes make one origin request.
/// Needs Redis (`STRATA_REDIS_URL`, default `redis://127.0.0.1:6379`), as `cluster.rs` does.
#[test]
fn nodes_on_one_redis_share_stored_responses() {
    let origin = Origin::start("site");
    let ((dir_a, a), (dir_b, b)) =
        two_nodes_on_redis(&origin, "strata-proxy-test", ["proxy-l2-a", "proxy-l2-b"]);
    let (status, h, _) = request(a.proxy.as_deref().unwrap(), "shop.test", "/page", &[]);
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("stored"), "{h:?}");
    std::thread::sleep(Duration::from_millis(300));
    let (status, h, body) = request(b.proxy.as_deref().unwrap(), "shop.test", "/page", &[]);
    assert_eq!((status, body.as_str()), (200, "hello from the origin\n"));
    assert!(
        header(&h, "cache-status").starts_with("Strata; hit"),
        "{h:?}"
    );
    assert_eq!(origin.hits(), 1, "the second node answered from L2");
    // Concurrent misses of one URL on both nodes: one origin request in all — each node's single-flight, and
    // the key's lease in Redis between the nodes.
    let proxies = [a.proxy.clone().unwrap(), b.proxy.clone().unwrap()];
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let proxy = proxies[i % 2].clone();
            std::thread::spawn(move || request(&proxy, "shop.test", "/collapse", &[]))
        })
        .collect();
    for c in clients {
        let (status, _, body) = c.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "fetched once\n"));
    }
    assert_eq!(
        origin.hits(),
        2,
        "8 concurrent misses on 2 nodes fetched more than once"
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}

/// A soft purge on nodes sharing Redis: every node keeps answering (stale, inside `stale-while-revalidate`)
/// while exactly one of them revalidates each stored response — the response's claim in Redis, dated by the
/// purge — and afterwards every node serves the revalidated copy fresh.
#[test]
fn a_soft_purge_on_two_nodes_costs_the_origin_one_request_per_response() {
    let origin = Origin::start("site");
    let ((dir_a, a), (dir_b, b)) = two_nodes_on_redis(
        &origin,
        "strata-proxy-soft",
        ["proxy-soft-a", "proxy-soft-b"],
    );
    let proxies = [a.proxy.clone().unwrap(), b.proxy.clone().unwrap()];
    let pages = ["/soft/1", "/soft/2", "/soft/3"];
    for p in pages {
        for proxy in &proxies {
            let (status, _, _) = request(proxy, "localhost", p, &[]);
            assert_eq!(status, 200);
        }
        for proxy in &proxies {
            assert!(is_hit(proxy, p), "{p} is stored on every node");
        }
    }
    assert_eq!(
        origin.soft_hits(),
        pages.len(),
        "one fill per page, shared in L2"
    );

    for round in 1..=2 {
        for (i, p) in pages.iter().enumerate() {
            let (code, v) = purge(
                &a.base,
                &format!(r#"{{"tag": "soft:{}", "soft": true}}"#, i + 1),
            );
            assert_eq!(code, 200, "{v}");
            let _ = p;
        }
        // Readers on both nodes, each page many times over, while the revalidations run.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..6)
            .map(|t| {
                let (proxies, stop) = (proxies.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut served = 0;
                    let mut k = t;
                    while !stop.load(Ordering::Relaxed) {
                        let p = pages[k % pages.len()];
                        let (status, _, body) = request(&proxies[k % 2], "localhost", p, &[]);
                        assert_eq!((status, body), (200, format!("soft page {}\n", &p[6..])));
                        served += 1;
                        k += 5;
                    }
                    served
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, Ordering::Relaxed);
        let served: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(served > 60, "the readers were served: {served}");
        assert_eq!(
            origin.soft_hits(),
            pages.len() * (1 + round),
            "round {round}: one origin request per page and soft purge, across both nodes"
        );
        for p in pages {
            for proxy in &proxies {
                let (_, h, _) = request(proxy, "localhost", p, &[]);
                let cs = header(&h, "cache-status");
                assert!(
                    cs.starts_with("Strata; hit") && !cs.contains("stale"),
                    "{p}: the revalidated copy is fresh on every node: {cs}"
                );
            }
        }
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}

/// The dashboard shows the proxy's routes (in a headless browser, as `dashboard.rs` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_proxy_routes() {
    let browser = common::chromium();
    let origin = Origin::start("site");
    let EdgeServer {
        dir,
        addr,
        proxy_addr,
        stop,
        server,
    } = EdgeServer::start("proxy-dashboard", &origin).await;
    let out = tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            request(&proxy_addr, "localhost", "/page", &[]);
        }
        common::dump_dom(&browser, &format!("http://{addr}/?interval=200"), 2000)
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !dom.is_empty(), "chromium failed");
    let at = dom.find("id=\"proxy-table\"").expect("the proxy table");
    let table = &dom[at..];
    assert!(table.contains("<td>*/</td>"), "{table}");
    assert!(table.contains(&origin.url()), "{table}");
    // Two hits of three: 66.7 %.
    assert!(table.contains("66.7%"), "{table}");
    assert!(!dom.contains("id=\"proxy-card\" style=\"margin-top:1rem;display:none\""));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn per_route_object_limits_and_the_authorization_rule_apply() {
    let origin = Origin::start("site");
    let dir = common::data_dir("proxy-route-policy");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n\n\
             [[proxy.routes]]\npath_prefix = \"/limited/\"\norigin = \"{o}\"\nmax_object_bytes = 5\n\n\
             [[proxy.routes]]\npath_prefix = \"/auth/\"\norigin = \"{o}\"\nhonour_authorization = true\n\n\
             [[proxy.routes]]\norigin = \"{o}\"\n",
            o = origin.url()
        ),
    )
    .unwrap();
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let proxy = running.proxy.clone().unwrap();
    let twice = |path: &str, extra: &[&str]| {
        let first = request(&proxy, "localhost", path, extra);
        let second = request(&proxy, "localhost", path, extra);
        assert_eq!((first.0, second.0), (200, 200));
        (
            header(&first.1, "cache-status").to_owned(),
            header(&second.1, "cache-status").to_owned(),
        )
    };
    // Larger than the route stores: answered, not stored.
    let (first, second) = twice("/limited/x", &[]);
    assert!(first.contains("detail=\"too-large\""), "{first}");
    // … and the URI skips request collapsing for a while (hit-for-pass).
    assert!(second.contains("detail=\"hit-for-miss\""), "{second}");
    assert_eq!(origin.hits(), 2);
    // A response to an authenticated request: stored where the route honours it…
    let (_, second) = twice("/auth/x", &["authorization: Bearer t"]);
    assert!(second.starts_with("Strata; hit"), "{second}");
    assert_eq!(origin.hits(), 3);
    // … and not by default (RFC 9111 §3.5).
    let (first, second) = twice("/other/x", &["authorization: Bearer t"]);
    assert!(first.contains("detail=\"authorization\""), "{first}");
    assert!(!second.starts_with("Strata; hit"), "{second}");
    assert_eq!(origin.hits(), 5);
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

/// `POST /v1/_purge` on `base` with `body`; `(status, JSON answer)`.
fn purge(base: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = common::call("POST", &format!("{base}/v1/_purge"), body);
    // A response stored in the purge's own millisecond counts as purged (stamps have millisecond resolution):
    // step past it, so that the refill the test makes next is not taken for an old one.
    std::thread::sleep(Duration::from_millis(2));
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}")),
    )
}

fn is_hit(proxy: &str, path: &str) -> bool {
    let (status, h, _) = request(proxy, "localhost", path, &[]);
    assert_eq!(status, 200, "{path}");
    header(&h, "cache-status").starts_with("Strata; hit")
}

#[test]
fn purges_over_http_take_proxied_pages_by_tag_url_prefix_and_route_and_data_writes_name_tags() {
    let origin = Origin::start("site");
    let (dir, running) = proxied("proxy-purge", &origin, &[]);
    let proxy = running.proxy.clone().unwrap();
    let base = running.base.clone();
    for p in ["/tagged/42", "/tagged/43", "/page", "/docs/a", "/docs/b"] {
        assert!(!is_hit(&proxy, p), "{p}: first a miss");
        assert!(is_hit(&proxy, p), "{p}: then a hit");
    }
    // The surrogate keys were indexed, and stripped from what the client sees.
    let (_, h, _) = request(&proxy, "localhost", "/tagged/42", &[]);
    assert_eq!(header(&h, "surrogate-key"), "", "{h:?}");

    // By tag: the tagged page goes, on every namespace's barrier (data and edge alike).
    let (code, v) = purge(&base, r#"{"tag": "product:42"}"#);
    assert_eq!(code, 200, "{v}");
    let namespaces: Vec<&str> = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        namespaces.contains(&"_edge") && namespaces.contains(&"price"),
        "{v}"
    );
    assert!(!is_hit(&proxy, "/tagged/42"));
    assert!(is_hit(&proxy, "/tagged/43") && is_hit(&proxy, "/page"));

    // A data API write names tags: the proxied page showing that product goes with it.
    let url = format!("{base}/v1/price/43");
    let (code, text) = common::call_with(
        "PUT",
        &url,
        &[("strata-tags", "product:43")],
        r#"{"cents": 999}"#,
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("product:43"), "{text}");
    assert!(!is_hit(&proxy, "/tagged/43"), "the write purged the page");
    let (code, text) = common::call_with(
        "PUT",
        &url,
        &[(
            "strata-tags",
            &(0..65)
                .map(|i| format!("t{i}"))
                .collect::<Vec<_>>()
                .join(" "),
        )],
        r#"{"cents": 1}"#,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("at most 64"), "{text}");

    // By URL, by prefix (its directory), by route, everything.
    let (code, v) = purge(&base, r#"{"url": "http://LOCALHOST/page"}"#);
    assert_eq!(
        (code, v["purged"]["url"].as_str()),
        (200, Some("http://localhost/page")),
        "{v}"
    );
    assert!(!is_hit(&proxy, "/page"));
    let (code, v) = purge(&base, r#"{"prefix": "http://localhost/docs/"}"#);
    assert_eq!(code, 200, "{v}");
    assert!(!is_hit(&proxy, "/docs/a") && !is_hit(&proxy, "/docs/b"));
    assert!(is_hit(&proxy, "/page"));
    let (code, v) = purge(&base, r#"{"route": "*/"}"#);
    assert_eq!(code, 200, "{v}");
    assert!(!is_hit(&proxy, "/page"));
    let (code, _) = purge(&base, r#"{"all": true}"#);
    assert_eq!(code, 200);
    assert!(!is_hit(&proxy, "/page"));

    // A soft purge removes nothing: without a stale window the page is revalidated before it is answered.
    let (code, v) = purge(&base, r#"{"url": "http://localhost/page", "soft": true}"#);
    assert_eq!((code, &v["soft"]), (200, &serde_json::json!(true)), "{v}");
    let before = origin.hits();
    let (_, h, body) = request(&proxy, "localhost", "/page", &[]);
    assert_eq!(body, "hello from the origin\n");
    assert!(header(&h, "cache-status").contains("fwd=stale"), "{h:?}");
    assert_eq!(origin.hits(), before + 1);

    // Mistakes are 400s that name them.
    for (body, says) in [
        (r#"{}"#, "exactly one"),
        (r#"{"tag": "a", "url": "http://x/"}"#, "exactly one"),
        (r#"{"tag": "two words"}"#, "whitespace"),
        (r#"{"url": "/relative"}"#, "absolute"),
        (r#"{"route": "nope"}"#, "no route is named"),
        (r#"{"tag": "x", "hard": true}"#, "unknown field"),
    ] {
        let (code, v) = purge(&base, body);
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{body}: {v}");
    }

    let (_, metrics) = common::call("GET", &format!("{base}/metrics"), "");
    for kind in ["tag", "url", "prefix", "route", "all", "write_tag"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("strata_purges_total{")
                    && l.contains(&format!("kind=\"{kind}\""))),
            "{kind} in:\n{metrics}"
        );
    }
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_a_proxy_a_tag_purge_reaches_the_data_namespaces_and_url_purges_say_there_is_no_proxy() {
    let dir = common::data_dir("purge-no-proxy");
    let running = common::serve(&dir, &[]).unwrap();
    let (code, v) = purge(&running.base, r#"{"tag": "product:1"}"#);
    assert_eq!(code, 200, "{v}");
    assert!(
        !v["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "_edge"),
        "{v}"
    );
    let (code, v) = purge(&running.base, r#"{"url": "http://localhost/x"}"#);
    assert_eq!((code, v["error"].as_str()), (404, Some("no_proxy")), "{v}");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

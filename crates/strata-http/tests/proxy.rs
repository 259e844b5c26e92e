//! The proxy end to end, over real TCP on port 0: a scripted hyper origin, the proxy on the engine with a
//! manual clock (ages and freshness are exact), and a hyper client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use strata::{Cache, ManualClock};
use strata_http::freshness::format_http_date;
use strata_http::policy::EdgePolicy;
use strata_http::proxy::{edge_namespace, serve, Proxy, ProxyConfig, Route, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// 2023-11-14T22:13:20Z, in ms: the clock every test starts at.
const T0: u64 = 1_700_000_000_000;

/// What the origin saw of a request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

type Script = Box<dyn FnMut(&Seen, u64) -> (u16, Vec<(&'static str, String)>, String) + Send>;

/// A scripted origin: answers with the current script (given the request and the clock's now), records what it
/// saw, and can hold its answers until released.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
    open: tokio::sync::watch::Sender<bool>,
    arrived: Arc<AtomicUsize>,
}

impl Origin {
    async fn start(clock: ManualClock) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Mutex<Script>> =
            Arc::new(Mutex::new(Box::new(|_, _| (200, vec![], String::new()))));
        let (open, open_rx) = tokio::sync::watch::channel(true);
        let arrived = Arc::new(AtomicUsize::new(0));
        let (s2, sc2, a2) = (seen.clone(), script.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, script, arrived, clock) =
                    (s2.clone(), sc2.clone(), a2.clone(), clock.clone());
                let open_rx = open_rx.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (seen, script, arrived, clock) =
                                (seen.clone(), script.clone(), arrived.clone(), clock.clone());
                            let mut open_rx = open_rx.clone();
                            async move {
                                let s = Seen {
                                    method: req.method().clone(),
                                    path: req
                                        .uri()
                                        .path_and_query()
                                        .map_or("/".into(), |p| p.to_string()),
                                    headers: req.headers().clone(),
                                };
                                arrived.fetch_add(1, Ordering::SeqCst);
                                let _ = open_rx.wait_for(|o| *o).await;
                                seen.lock().push(s.clone());
                                let now = strata::Clock::now(&clock);
                                let (status, fields, body) = (script.lock())(&s, now);
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                r.headers_mut().insert(
                                    "date",
                                    HeaderValue::from_str(&format_http_date(now)).unwrap(),
                                );
                                for (n, v) in fields {
                                    r.headers_mut().append(
                                        HeaderName::from_static(n),
                                        HeaderValue::from_str(&v).unwrap(),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            script,
            open,
            arrived,
        }
    }

    fn set(
        &self,
        f: impl FnMut(&Seen, u64) -> (u16, Vec<(&'static str, String)>, String) + Send + 'static,
    ) {
        *self.script.lock() = Box::new(f);
    }

    fn hits(&self) -> usize {
        self.seen.lock().len()
    }

    fn last(&self) -> Seen {
        self.seen.lock().last().cloned().unwrap()
    }
}

struct Harness {
    clock: ManualClock,
    origin: Origin,
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn cache_status(&self) -> String {
        self.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Harness {
    async fn new() -> Self {
        Self::with_policy(EdgePolicy::default()).await
    }

    async fn with_policy(policy: EdgePolicy) -> Self {
        let clock = ManualClock::new(T0);
        let origin = Origin::start(clock.clone()).await;
        let cache = Cache::builder().with_clock(Arc::new(clock.clone())).build();
        let ns = edge_namespace(&cache, "edge", Duration::from_secs(86400), false).unwrap();
        let routes = Routes::new().with(
            Route::new(&format!("http://{}", origin.addr))
                .unwrap()
                .with_policy(policy),
        );
        let proxy = Proxy::new(routes, ns, ProxyConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, proxy.clone(), std::future::pending()));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            clock,
            origin,
            proxy,
            addr,
            client,
        }
    }

    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("host", "site.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        for (n, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let resp = self.client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, path, headers).await
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// Waits (bounded) until `cond` holds: a condition, never a guessed delay.
    async fn until(&self, what: &str, cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

fn fixed(
    status: u16,
    fields: &[(&'static str, &str)],
    body: &str,
) -> impl FnMut(&Seen, u64) -> (u16, Vec<(&'static str, String)>, String) + Send + 'static {
    let fields: Vec<(&'static str, String)> =
        fields.iter().map(|(n, v)| (*n, v.to_string())).collect();
    let body = body.to_string();
    move |_, _| (status, fields.clone(), body.clone())
}

#[tokio::test]
async fn a_miss_is_stored_and_the_next_request_is_a_hit_with_age_via_and_cache_status() {
    let h = Harness::new().await;
    h.origin
        .set(fixed(200, &[("cache-control", "max-age=60")], "hello"));
    let a = h.get("/a", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "hello"));
    assert_eq!(
        a.cache_status(),
        "Strata; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(a.header("via"), Some("1.1 strata"));
    assert_eq!(a.header("age"), Some("0"));
    h.advance(10);
    let b = h.get("/a", &[]).await;
    assert_eq!(b.body, "hello");
    assert_eq!(b.cache_status(), "Strata; hit; ttl=50");
    assert_eq!(b.header("age"), Some("10"));
    assert_eq!(h.origin.hits(), 1);
    // The origin saw Via on the request too.
    assert_eq!(h.origin.last().headers["via"], "1.1 strata");
}

#[tokio::test]
async fn rfc9111_4_3_stale_response_is_revalidated_and_the_304_updates_stored_headers() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        if seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            (
                304,
                vec![
                    ("etag", "\"v1\"".into()),
                    ("cache-control", "max-age=3600".into()),
                    ("x-test", "B".into()),
                ],
                String::new(),
            )
        } else {
            (
                200,
                vec![
                    ("etag", "\"v1\"".into()),
                    ("cache-control", "max-age=10".into()),
                    ("x-test", "A".into()),
                ],
                "body-1".into(),
            )
        }
    });
    assert_eq!(h.get("/r", &[]).await.header("x-test"), Some("A"));
    h.advance(20);
    let a = h.get("/r", &[]).await;
    assert_eq!(
        (a.status, a.body.as_str(), a.header("x-test")),
        (StatusCode::OK, "body-1", Some("B"))
    );
    assert_eq!(
        a.cache_status(),
        "Strata; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(h.origin.last().headers["if-none-match"], "\"v1\"");
    // Stored with the new headers and freshened: a hit an hour's worth of freshness later.
    h.advance(100);
    let b = h.get("/r", &[]).await;
    assert_eq!(
        (b.header("x-test"), b.cache_status().as_str()),
        (Some("B"), "Strata; hit; ttl=3500")
    );
    assert_eq!(h.origin.hits(), 2);
}

#[tokio::test]
async fn rfc9111_4_3_2_client_conditionals_are_answered_from_the_cache() {
    let h = Harness::new().await;
    h.origin.set(fixed(
        200,
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
        "x",
    ));
    h.get("/c", &[]).await;
    let a = h.get("/c", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    assert_eq!(a.header("etag"), Some("\"v1\""));
    assert!(a.cache_status().starts_with("Strata; hit"));
    let b = h.get("/c", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((b.status, b.body.as_str()), (StatusCode::OK, "x"));
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test]
async fn rfc9110_9_3_2_head_is_answered_from_a_stored_get() {
    let h = Harness::new().await;
    h.origin
        .set(fixed(200, &[("cache-control", "max-age=60")], "0123456789"));
    let a = h.send(Method::HEAD, "/h", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(
        h.origin.last().method,
        Method::GET,
        "a HEAD miss loads the GET"
    );
    let b = h.send(Method::HEAD, "/h", &[]).await;
    assert_eq!(b.header("content-length"), Some("10"));
    assert!(b.cache_status().starts_with("Strata; hit"));
    assert_eq!(h.get("/h", &[]).await.body, "0123456789");
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test]
async fn rfc9111_4_1_vary_keeps_several_variants_per_uri() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        (
            200,
            vec![
                ("cache-control", "max-age=60".into()),
                ("vary", "Accept-Language".into()),
            ],
            lang,
        )
    });
    let en = h.get("/v", &[("accept-language", "en")]).await;
    assert_eq!(en.body, "en");
    let fr = h.get("/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "fr");
    assert!(
        fr.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr.cache_status()
    );
    for (lang, want) in [("en", "en"), ("fr", "fr"), ("en", "en")] {
        let a = h.get("/v", &[("accept-language", lang)]).await;
        assert_eq!(a.body, want);
        assert!(
            a.cache_status().starts_with("Strata; hit"),
            "{lang}: {}",
            a.cache_status()
        );
    }
    let none = h.get("/v", &[]).await;
    assert_eq!(none.body, "none");
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test]
async fn rfc9111_4_4_unsafe_methods_invalidate_the_target_and_same_origin_location() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        if seen.method == Method::POST {
            (
                201,
                vec![
                    ("location", "/b".into()),
                    ("content-location", "http://elsewhere.example/c".into()),
                ],
                "created".into(),
            )
        } else {
            (
                200,
                vec![("cache-control", "max-age=600".into())],
                format!("{} {}", seen.path, seen.headers.len()),
            )
        }
    });
    for p in ["/a", "/b", "/c"] {
        h.get(p, &[]).await;
    }
    assert_eq!(h.origin.hits(), 3);
    let post = h.send(Method::POST, "/a", &[]).await;
    assert_eq!(post.status, StatusCode::CREATED);
    assert_eq!(post.cache_status(), "Strata; fwd=method; fwd-status=201");
    // Entries filled in the invalidation's own millisecond count as behind it (the engine's tie rule).
    h.advance(1);
    for p in ["/a", "/b"] {
        assert!(
            h.get(p, &[]).await.cache_status().contains("fwd=uri-miss"),
            "{p}"
        );
    }
    assert!(h
        .get("/c", &[])
        .await
        .cache_status()
        .starts_with("Strata; hit"));
    // An error answer invalidates nothing.
    h.origin.set(fixed(500, &[], "no"));
    h.send(Method::DELETE, "/a", &[]).await;
    assert!(h
        .get("/a", &[])
        .await
        .cache_status()
        .starts_with("Strata; hit"));
}

#[tokio::test]
async fn rfc9111_3_no_store_and_private_are_never_stored() {
    let h = Harness::new().await;
    for cc in ["no-store, max-age=60", "private, max-age=60"] {
        h.origin.set(fixed(200, &[("cache-control", cc)], "secret"));
        let path = format!("/{}", cc.len());
        let a = h.get(&path, &[]).await;
        let b = h.get(&path, &[]).await;
        assert_eq!((a.body.as_str(), b.body.as_str()), ("secret", "secret"));
        assert!(
            b.cache_status().contains("fwd=uri-miss"),
            "{cc}: {}",
            b.cache_status()
        );
    }
    assert_eq!(h.origin.hits(), 4);
}

#[tokio::test]
async fn rfc9111_3_5_authorized_requests_are_stored_only_when_the_response_allows() {
    let h = Harness::new().await;
    h.origin
        .set(fixed(200, &[("cache-control", "max-age=60")], "mine"));
    h.get("/me", &[("authorization", "Bearer a")]).await;
    let b = h.get("/me", &[]).await;
    assert!(
        b.cache_status().contains("fwd=uri-miss"),
        "{}",
        b.cache_status()
    );
    h.origin.set(fixed(
        200,
        &[("cache-control", "public, max-age=60")],
        "shared",
    ));
    h.get("/pub", &[("authorization", "Bearer a")]).await;
    assert!(h
        .get("/pub", &[])
        .await
        .cache_status()
        .starts_with("Strata; hit"));
}

#[tokio::test]
async fn rfc5861_4_stale_if_error_serves_stale_on_origin_errors_only_where_allowed() {
    let h = Harness::new().await;
    h.origin.set(fixed(
        200,
        &[("cache-control", "max-age=1, stale-if-error=60")],
        "old",
    ));
    h.get("/e", &[]).await;
    h.advance(5);
    h.origin.set(fixed(503, &[], "down"));
    let a = h.get("/e", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "old"));
    assert_eq!(
        a.cache_status(),
        "Strata; fwd=stale; fwd-status=503; ttl=-4; detail=\"stale-if-error\""
    );
    assert_eq!(a.header("age"), Some("5"));
    // Past the window the error goes through.
    h.advance(100);
    let b = h.get("/e", &[]).await;
    assert_eq!(
        (b.status, b.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "down")
    );
    // must-revalidate forbids it.
    h.origin.set(fixed(
        200,
        &[(
            "cache-control",
            "max-age=1, stale-if-error=60, must-revalidate",
        )],
        "old",
    ));
    h.get("/m", &[]).await;
    h.advance(5);
    h.origin.set(fixed(503, &[], "down"));
    assert_eq!(
        h.get("/m", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn route_policy_stale_if_error_covers_an_unreachable_origin() {
    let h =
        Harness::with_policy(EdgePolicy::default().with_stale_if_error(Duration::from_secs(60)))
            .await;
    h.origin
        .set(fixed(200, &[("cache-control", "max-age=1")], "kept"));
    h.get("/u", &[]).await;
    h.advance(5);
    h.origin.set(fixed(502, &[], "bad gateway"));
    let a = h.get("/u", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "kept"));
    assert!(a.cache_status().contains("detail=\"stale-if-error\""));
}

#[tokio::test]
async fn rfc5861_3_stale_while_revalidate_answers_stale_and_refreshes_in_the_background() {
    let h = Harness::new().await;
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    h.origin.set(move |_, _| {
        let v = n2.fetch_add(1, Ordering::SeqCst);
        (
            200,
            vec![(
                "cache-control",
                "max-age=1, stale-while-revalidate=60".into(),
            )],
            format!("v{v}"),
        )
    });
    assert_eq!(h.get("/s", &[]).await.body, "v0");
    h.advance(5);
    let a = h.get("/s", &[]).await;
    assert_eq!(a.body, "v0");
    assert_eq!(
        a.cache_status(),
        "Strata; hit; ttl=-4; detail=\"stale-while-revalidate\""
    );
    h.until("the background revalidation", || h.origin.hits() == 2)
        .await;
    h.until("the refreshed entry", || {
        h.proxy
            .namespace()
            .get("http://site.example/s")
            .and_then(|l| l.to_arc())
            .is_some_and(|s| s.body == "v1")
    })
    .await;
    let b = h.get("/s", &[]).await;
    assert_eq!(
        (b.body.as_str(), b.cache_status().as_str()),
        ("v1", "Strata; hit; ttl=1")
    );
}

#[tokio::test]
async fn concurrent_misses_collapse_into_one_origin_request() {
    let h = Arc::new(Harness::new().await);
    h.origin
        .set(fixed(200, &[("cache-control", "max-age=60")], "once"));
    h.origin.open.send_replace(false);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get("/hot", &[]).await }));
    }
    h.until("one origin request and four waiters", || {
        h.origin.arrived.load(Ordering::SeqCst) == 1 && h.proxy.namespace().stats().coalesced == 4
    })
    .await;
    h.origin.open.send_replace(true);
    let mut collapsed = 0;
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.body, "once");
        if a.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!((collapsed, h.origin.hits()), (4, 1));
}

#[tokio::test]
async fn an_uncacheable_answer_is_never_handed_to_collapsed_waiters() {
    let h = Arc::new(Harness::new().await);
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    h.origin.set(move |_, _| {
        let v = n2.fetch_add(1, Ordering::SeqCst);
        (
            200,
            vec![("cache-control", "private".into())],
            format!("user-{v}"),
        )
    });
    h.origin.open.send_replace(false);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get("/private", &[]).await }));
    }
    h.until("one request and two waiters", || {
        h.proxy.namespace().stats().coalesced == 2
    })
    .await;
    h.origin.open.send_replace(true);
    let mut bodies: Vec<String> = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap().body);
    }
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        3,
        "every client got its own answer: {bodies:?}"
    );
    // Hit-for-miss: the next request skips collapsing.
    assert!(h
        .get("/private", &[])
        .await
        .cache_status()
        .contains("hit-for-miss"));
}

#[tokio::test]
async fn headers_outside_the_key_never_reach_the_origin_or_change_a_stored_response() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        let xfh = seen
            .headers
            .get("x-forwarded-host")
            .map_or("-", |v| v.to_str().unwrap())
            .to_string();
        (
            200,
            vec![("cache-control", "max-age=60".into())],
            format!("host={xfh}"),
        )
    });
    let a = h
        .get(
            "/p",
            &[
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "host=evil"),
            ],
        )
        .await;
    assert_eq!(a.body, "host=-");
    assert!(h.origin.last().headers.get("forwarded").is_none());
    assert_eq!(h.get("/p", &[]).await.body, "host=-");
}

/// Sends raw bytes and reads until the proxy closes the connection.
async fn raw(h: &Harness, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn rfc9112_6_3_ambiguous_framing_is_refused_with_400_and_never_smuggles_a_request() {
    let h = Harness::new().await;
    h.origin.set(fixed(200, &[], "ok"));
    // Differing Content-Length values: 400.
    let text = raw(&h, b"POST /x HTTP/1.1\r\nHost: site.example\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Transfer-Encoding that does not end in chunked: 400.
    let text = raw(
        &h,
        b"POST /x HTTP/1.1\r\nHost: site.example\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Both Transfer-Encoding and Content-Length, in either order: 400, and the bytes after the chunked body are
    // never read as a second request.
    for head in [
        &b"Content-Length: 40\r\nTransfer-Encoding: chunked"[..],
        &b"Transfer-Encoding: chunked\r\nContent-Length: 40"[..],
    ] {
        let mut req = b"POST /x HTTP/1.1\r\nHost: site.example\r\n".to_vec();
        req.extend_from_slice(head);
        req.extend_from_slice(
            b"\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: site.example\r\n\r\n",
        );
        let text = raw(&h, &req).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    }
    // A well-framed pipeline still works on one connection.
    let text = raw(
        &h,
        b"POST /x HTTP/1.1\r\nHost: site.example\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /y HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seen = h.origin.seen.lock().clone();
    assert_eq!(
        seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        vec!["/x", "/y"]
    );
}

#[tokio::test]
async fn routes_keys_and_origin_requests_use_the_normalised_path() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        (
            200,
            vec![("cache-control", "max-age=60".into())],
            seen.path.clone(),
        )
    });
    assert_eq!(
        h.get("/api/../admin/%7euser", &[]).await.body,
        "/admin/~user"
    );
    let a = h.get("/admin/~user", &[]).await;
    assert!(
        a.cache_status().starts_with("Strata; hit"),
        "{}",
        a.cache_status()
    );
}

#[tokio::test]
async fn rfc9112_3_2_2_an_absolute_form_target_is_the_host_the_origin_sees() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        let host = seen
            .headers
            .get("host")
            .map_or("-", |v| v.to_str().unwrap())
            .to_string();
        (
            200,
            vec![("cache-control", "max-age=60".into())],
            format!("host={host}"),
        )
    });
    // The key is built from the target's authority; a Host that disagrees must not reach the origin, or its
    // answer (evil's page) would be stored under site.example's key.
    let text = raw(
        &h,
        b"GET http://site.example/p HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(h.origin.last().headers.get("host").unwrap(), "site.example");
    assert_eq!(h.get("/p", &[]).await.body, "host=site.example");
}

#[tokio::test]
async fn rfc9112_3_2_two_host_fields_are_refused() {
    let h = Harness::new().await;
    let text = raw(
        &h,
        b"GET / HTTP/1.1\r\nHost: site.example\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(h.origin.hits(), 0);
}

#[tokio::test]
async fn rfc9111_5_2_2_fields_named_by_no_cache_and_private_are_held_back() {
    let h = Harness::new().await;
    h.origin.set(fixed(
        200,
        &[
            (
                "cache-control",
                "max-age=60, no-cache=\"x-fresh-only\", private=\"x-user\"",
            ),
            ("x-fresh-only", "1"),
            ("x-user", "alice"),
            ("x-shared", "1"),
        ],
        "b",
    ));
    // The request that fetched it gets every field: what is held back is held back from the others.
    let first = h.get("/f", &[]).await;
    assert_eq!(
        (first.header("x-fresh-only"), first.header("x-user")),
        (Some("1"), Some("alice"))
    );
    let hit = h.get("/f", &[]).await;
    assert!(hit.cache_status().starts_with("Strata; hit"));
    // no-cache="…": not sent without validation; private="…": never stored.
    assert_eq!(
        (
            hit.header("x-fresh-only"),
            hit.header("x-user"),
            hit.header("x-shared")
        ),
        (None, None, Some("1"))
    );
}

#[tokio::test]
async fn set_cookie_responses_are_shared_only_when_public() {
    let h = Harness::new().await;
    h.origin.set(fixed(
        200,
        &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        "c",
    ));
    h.get("/cookie", &[]).await;
    let b = h.get("/cookie", &[]).await;
    assert!(
        b.cache_status().contains("fwd=uri-miss"),
        "{}",
        b.cache_status()
    );
    assert!(
        b.cache_status().contains("detail=\"set-cookie\"")
            || b.cache_status().contains("hit-for-miss")
    );
    h.origin.set(fixed(
        200,
        &[
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "s=1"),
        ],
        "c",
    ));
    // `public` shares the response, not the cookie: the client that caused the fetch gets it, no one else.
    let a = h.get("/public-cookie", &[]).await;
    assert_eq!(a.header("set-cookie"), Some("s=1"));
    let b = h.get("/public-cookie", &[]).await;
    assert!(b.cache_status().starts_with("Strata; hit"));
    assert_eq!(b.header("set-cookie"), None);
}

#[tokio::test]
async fn rfc9111_3_1_hop_by_hop_fields_are_neither_stored_nor_forwarded() {
    let h = Harness::new().await;
    h.origin.set(fixed(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=1"),
        ],
        "x",
    ));
    let a = h
        .get(
            "/hop",
            &[
                ("connection", "x-client-hop"),
                ("x-client-hop", "1"),
                ("te", "trailers"),
            ],
        )
        .await;
    assert_eq!(a.header("x-hop"), None);
    let seen = h.origin.last();
    assert!(seen.headers.get("x-client-hop").is_none() && seen.headers.get("te").is_none());
    let b = h.get("/hop", &[]).await;
    assert!(b.cache_status().starts_with("Strata; hit"));
    assert_eq!((b.header("x-hop"), b.header("keep-alive")), (None, None));
}

#[tokio::test]
async fn oversized_header_sections_are_refused_with_400() {
    let h = Harness::new().await;
    let big = "x".repeat(70 * 1024);
    let a = h.get("/big", &[("x-big", &big)]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.cache_status().contains("detail=\"headers-too-large\""),
        "{}",
        a.cache_status()
    );
    assert_eq!(h.origin.hits(), 0);
}

#[tokio::test]
async fn rfc9110_14_a_range_is_cut_from_the_stored_complete_response() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        if seen.headers.contains_key("range") {
            (
                206,
                vec![("content-range", "bytes 0-1/10".into())],
                "01".into(),
            )
        } else {
            (
                200,
                vec![("cache-control", "max-age=60".into())],
                "0123456789".into(),
            )
        }
    });
    // The fill asks for the whole representation; the client gets its range cut from it (RFC 9110 §14.2).
    let a = h.get("/range", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
    assert_eq!(a.header("content-range"), Some("bytes 0-1/10"));
    assert!(!h.origin.last().headers.contains_key("range"));
    let whole = h.get("/range", &[]).await;
    assert_eq!(
        (whole.status, whole.body.as_str()),
        (StatusCode::OK, "0123456789")
    );
    assert!(whole.cache_status().starts_with("Strata; hit"));
    // A stored complete response answers later ranges without the origin.
    let tail = h.get("/range", &[("range", "bytes=-3")]).await;
    assert_eq!(
        (tail.status, tail.body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "789")
    );
    assert!(tail.cache_status().starts_with("Strata; hit"));
    let past = h.get("/range", &[("range", "bytes=10-")]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.header("content-range"), Some("bytes */10"));
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test]
async fn rfc9111_5_2_1_7_only_if_cached_without_a_stored_response_is_504() {
    let h = Harness::new().await;
    let a = h
        .get("/nothing", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(h.origin.hits(), 0);
}

#[tokio::test]
async fn rfc9111_5_2_1_4_request_no_cache_goes_to_the_origin() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        if seen.headers.contains_key("if-none-match") {
            (
                304,
                vec![
                    ("etag", "\"e\"".into()),
                    ("cache-control", "max-age=60".into()),
                ],
                String::new(),
            )
        } else {
            (
                200,
                vec![
                    ("etag", "\"e\"".into()),
                    ("cache-control", "max-age=60".into()),
                ],
                "full".into(),
            )
        }
    });
    h.get("/n", &[]).await;
    let a = h.get("/n", &[("cache-control", "no-cache")]).await;
    assert_eq!(a.body, "full");
    assert_eq!(
        a.cache_status(),
        "Strata; fwd=request; fwd-status=304; stored"
    );
    let b = h.get("/n", &[("pragma", "no-cache")]).await;
    assert!(b.cache_status().contains("fwd=request"));
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test]
async fn rfc9213_cdn_cache_control_overrides_cache_control_for_this_tier() {
    let h = Harness::new().await;
    h.origin.set(fixed(
        200,
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
        "edge",
    ));
    h.get("/cdn", &[]).await;
    let a = h.get("/cdn", &[]).await;
    assert_eq!(a.cache_status(), "Strata; hit; ttl=60");
    assert_eq!(
        a.header("cache-control"),
        Some("no-store"),
        "downstream caches still see Cache-Control"
    );
    h.origin.set(fixed(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("strata-cache-control", "no-store"),
        ],
        "x",
    ));
    h.get("/strata", &[]).await;
    h.origin.set(fixed(
        200,
        &[
            ("cache-control", "no-store"),
            ("strata-cache-control", "max-age=60"),
        ],
        "s",
    ));
    h.get("/strata-fresh", &[]).await;
    let s = h.get("/strata-fresh", &[]).await;
    assert!(s.cache_status().starts_with("Strata; hit"));
    assert_eq!(
        s.header("strata-cache-control"),
        None,
        "targeted at this tier only"
    );
    assert!(h
        .get("/strata", &[])
        .await
        .cache_status()
        .contains("fwd=uri-miss"));
}

#[tokio::test]
async fn rfc9111_4_2_2_no_heuristic_without_last_modified() {
    let h = Harness::new().await;
    h.origin.set(fixed(200, &[("etag", "\"z\"")], "z"));
    h.get("/z", &[]).await;
    // Stored (it has a validator) but never fresh: every use is revalidated.
    let a = h.get("/z", &[]).await;
    assert!(
        a.cache_status().contains("fwd=stale"),
        "{}",
        a.cache_status()
    );
    assert_eq!(h.origin.last().headers["if-none-match"], "\"z\"");
}

// ---- Purge (crate::purge): every selector, fenced, soft.

use strata_http::purge::PurgeTarget;

/// An origin whose body names the path and a counter, so a refetch is visible.
fn counting(
    fields: &'static [(&'static str, &'static str)],
) -> impl FnMut(&Seen, u64) -> (u16, Vec<(&'static str, String)>, String) + Send + 'static {
    let mut n = 0;
    move |seen, _| {
        n += 1;
        let fields = fields.iter().map(|(k, v)| (*k, v.to_string())).collect();
        (200, fields, format!("{} #{n}", seen.path))
    }
}

/// A hard purge, then a millisecond: a response stored in the purge's own millisecond counts as purged (stamps
/// have millisecond resolution; the safe side is one more miss), and the manual clock would not move otherwise.
async fn purge(h: &Harness, target: PurgeTarget) -> String {
    let covers = h.proxy.purge(&target, false).await.unwrap().covers;
    h.clock.advance(Duration::from_millis(1));
    covers
}

#[tokio::test]
async fn a_url_purge_takes_every_variant_and_nothing_else() {
    let h = Harness::new().await;
    h.origin.set(counting(&[
        ("cache-control", "max-age=600"),
        ("vary", "accept-language"),
    ]));
    assert_eq!(
        h.get("/a", &[("accept-language", "en")]).await.body,
        "/a #1"
    );
    assert_eq!(
        h.get("/a", &[("accept-language", "fr")]).await.body,
        "/a #2"
    );
    assert_eq!(
        h.get("/b", &[("accept-language", "en")]).await.body,
        "/b #3"
    );
    assert_eq!(
        h.get("/a", &[("accept-language", "en")]).await.body,
        "/a #1"
    );
    assert_eq!(
        purge(&h, PurgeTarget::Url("http://SITE.example:80/a".into())).await,
        "http://site.example/a"
    );
    let en = h.get("/a", &[("accept-language", "en")]).await;
    assert!(
        en.cache_status().contains("fwd=uri-miss"),
        "{}",
        en.cache_status()
    );
    assert_eq!(en.body, "/a #4");
    assert_eq!(
        h.get("/a", &[("accept-language", "fr")]).await.body,
        "/a #5"
    );
    assert_eq!(
        h.get("/b", &[("accept-language", "en")]).await.body,
        "/b #3"
    );
}

#[tokio::test]
async fn a_tag_purge_takes_what_carries_the_surrogate_key_and_clients_never_see_the_keys() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        let fields = match seen.path.as_str() {
            "/p/42" => vec![("surrogate-key", "product:42 all".to_string())],
            "/list" => vec![("cache-tag", "category:7, product:42".to_string())],
            _ => vec![("surrogate-key", "all".to_string())],
        };
        let mut fields = fields;
        fields.push(("cache-control", "max-age=600".to_string()));
        (200, fields, format!("{} v1", seen.path))
    });
    for p in ["/p/42", "/list", "/p/43"] {
        let a = h.get(p, &[]).await;
        assert_eq!(a.header("surrogate-key"), None, "{p}: stripped");
        assert_eq!(a.header("cache-tag"), None, "{p}: stripped");
    }
    assert_eq!(h.origin.hits(), 3);
    purge(&h, PurgeTarget::Tag("product:42".into())).await;
    for p in ["/p/42", "/list"] {
        assert!(
            h.get(p, &[]).await.cache_status().contains("fwd=uri-miss"),
            "{p}"
        );
    }
    assert!(h.get("/p/43", &[]).await.cache_status().contains("hit"));
    assert_eq!(h.origin.hits(), 5);
    // A tag is matched exactly, never as a pattern or prefix.
    purge(&h, PurgeTarget::Tag("product:4".into())).await;
    assert!(h.get("/p/42", &[]).await.cache_status().contains("hit"));
}

#[tokio::test]
async fn a_prefix_purge_takes_its_directory_and_a_route_or_all_purge_everything() {
    let h = Harness::new().await;
    h.origin.set(counting(&[("cache-control", "max-age=600")]));
    for p in ["/p/1", "/p/2/x", "/q/1"] {
        h.get(p, &[]).await;
    }
    assert_eq!(
        purge(&h, PurgeTarget::Prefix("http://site.example/p/".into())).await,
        "http://site.example/p/"
    );
    assert!(h
        .get("/p/1", &[])
        .await
        .cache_status()
        .contains("fwd=uri-miss"));
    assert!(h
        .get("/p/2/x", &[])
        .await
        .cache_status()
        .contains("fwd=uri-miss"));
    assert!(h.get("/q/1", &[]).await.cache_status().contains("hit"));
    purge(&h, PurgeTarget::Route("*/".into())).await;
    assert!(h
        .get("/q/1", &[])
        .await
        .cache_status()
        .contains("fwd=uri-miss"));
    purge(&h, PurgeTarget::All).await;
    assert!(h
        .get("/q/1", &[])
        .await
        .cache_status()
        .contains("fwd=uri-miss"));
    let e = h
        .proxy
        .purge(&PurgeTarget::Route("nope".into()), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no route is named \"nope\""), "{e}");
}

#[tokio::test]
async fn a_fetch_that_began_before_a_purge_does_not_store_its_response_after_it() {
    for stale_first in [false, true] {
        let h = Arc::new(Harness::new().await);
        h.origin.set(counting(&[
            ("cache-control", "max-age=10"),
            ("etag", "\"v\""),
        ]));
        if stale_first {
            // A stored response gone stale: the next request revalidates it.
            h.get("/a", &[]).await;
            h.advance(20);
        }
        let before = h.origin.arrived.load(Ordering::SeqCst);
        h.origin.open.send_replace(false);
        let task = {
            let h = h.clone();
            tokio::spawn(async move { h.get("/a", &[]).await })
        };
        h.until("the fetch reached the origin", || {
            h.origin.arrived.load(Ordering::SeqCst) == before + 1
        })
        .await;
        h.advance(1);
        purge(&h, PurgeTarget::Url("http://site.example/a".into())).await;
        h.origin.open.send_replace(true);
        let a = task.await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
        // The answer went to the client who asked before the purge, but it was not kept.
        let next = h.get("/a", &[]).await;
        assert!(
            !next.cache_status().contains("hit"),
            "stale_first={stale_first}: {}",
            next.cache_status()
        );
    }
}

#[tokio::test]
async fn a_soft_purge_serves_stale_inside_stale_while_revalidate_while_one_revalidation_runs() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        let fields = vec![
            (
                "cache-control",
                "max-age=600, stale-while-revalidate=30".to_string(),
            ),
            ("etag", "\"v1\"".to_string()),
            ("surrogate-key", "page".to_string()),
        ];
        if seen.headers.get("if-none-match").is_some() {
            (304, fields, String::new())
        } else {
            (200, fields, "body".into())
        }
    });
    h.get("/a", &[]).await;
    h.advance(5);
    h.proxy
        .purge(&PurgeTarget::Tag("page".into()), true)
        .await
        .unwrap();
    h.clock.advance(Duration::from_millis(1));
    let a = h.get("/a", &[]).await;
    assert_eq!(a.body, "body", "nothing was removed");
    assert!(
        a.cache_status().contains("stale-while-revalidate"),
        "{}",
        a.cache_status()
    );
    h.until("the background revalidation", || h.origin.hits() == 2)
        .await;
    assert!(h.origin.last().headers.get("if-none-match").is_some());
    // The 304 freshened it: a fresh hit again, without another origin request.
    h.until("the freshened response", || {
        h.proxy.namespace().stats().inserts >= 1
    })
    .await;
    for _ in 0..50 {
        let b = h.get("/a", &[]).await;
        if b.cache_status() == "Strata; hit; ttl=600" {
            assert_eq!(h.origin.hits(), 2);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the revalidated response never became a fresh hit");
}

#[tokio::test]
async fn a_soft_purge_without_a_stale_window_revalidates_before_answering() {
    let h = Harness::new().await;
    h.origin.set(|seen, _| {
        let fields = vec![
            ("cache-control", "max-age=600".to_string()),
            ("etag", "\"v1\"".to_string()),
        ];
        if seen.headers.get("if-none-match").is_some() {
            (304, fields, String::new())
        } else {
            (200, fields, "body".into())
        }
    });
    h.get("/a", &[]).await;
    h.proxy
        .purge(&PurgeTarget::Url("http://site.example/a".into()), true)
        .await
        .unwrap();
    h.clock.advance(Duration::from_millis(1));
    let a = h.get("/a", &[]).await;
    assert_eq!(a.body, "body");
    assert_eq!(
        a.cache_status(),
        "Strata; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(h.origin.hits(), 2);
    assert!(h.get("/a", &[]).await.cache_status().contains("hit"));
    assert_eq!(h.origin.hits(), 2);
}

//! `HttpSource` against a local endpoint that answers from a script: values, absence, `max-age` as TTL, the key
//! as one path segment, retries through 503s, a budget that caps retries when the endpoint is down, timeouts, and
//! bodies that are not values.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use strata_core::Source;
use strata_http::source::{HttpSource, HttpSourceError, HttpSourceOptions};

type Answer = (
    u16,
    Vec<(&'static str, &'static str)>,
    &'static str,
    Duration,
);
type Script = Box<dyn FnMut(&str) -> Answer + Send>;

/// An endpoint answering each request with `script(path)`: status, headers, body and a delay.
struct Endpoint {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Endpoint {
    async fn start(script: impl FnMut(&str) -> Answer + Send + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        let p2 = paths.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (paths, script) = (p2.clone(), script.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (paths, script) = (paths.clone(), script.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                paths.lock().push(path.clone());
                                let (status, fields, body, delay) = (script.lock())(&path);
                                tokio::time::sleep(delay).await;
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                for (n, v) in fields {
                                    r.headers_mut().append(
                                        HeaderName::from_static(n),
                                        HeaderValue::from_static(v),
                                    );
                                }
                                Ok::<_, Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, paths }
    }

    fn requests(&self) -> usize {
        self.paths.lock().len()
    }
}

fn source(e: &Endpoint, options: HttpSourceOptions) -> HttpSource<serde_json::Value> {
    let client = strata_http::client::https_client(&[]).unwrap();
    HttpSource::new(
        "test",
        &format!("http://{}/items/", e.addr),
        client,
        options,
    )
}

fn quick() -> HttpSourceOptions {
    HttpSourceOptions {
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(5),
        ..HttpSourceOptions::default()
    }
}

fn error(e: strata_core::SharedError) -> String {
    assert!(e.downcast_ref::<HttpSourceError>().is_some(), "{e}");
    e.to_string()
}

#[tokio::test]
async fn values_absence_versions_and_max_age_come_from_the_answer() {
    let e = Endpoint::start(|path| match path {
        "/items/p1" => (
            200,
            vec![
                ("cache-control", "public, max-age=30"),
                ("age", "10"),
                ("etag", "\"17\""),
            ],
            r#"{"price": 12}"#,
            Duration::ZERO,
        ),
        "/items/a%2Fb%20c%3F" => (
            200,
            vec![("cache-control", "no-store")],
            "1",
            Duration::ZERO,
        ),
        _ => (404, vec![], "", Duration::ZERO),
    })
    .await;
    let s = source(
        &e,
        HttpSourceOptions {
            ttl_from_cache_control: true,
            ..quick()
        },
    );
    let f = s.load("p1").await.unwrap();
    assert_eq!(f.value, Some(serde_json::json!({"price": 12})));
    assert_eq!(f.version, Some(17));
    assert_eq!(f.ttl, Some(Duration::from_secs(20)), "max-age less Age");
    let f = s.load("a/b c?").await.unwrap();
    assert_eq!(
        (f.value, f.ttl),
        (Some(serde_json::json!(1)), Some(Duration::ZERO))
    );
    let f = s.load("missing").await.unwrap();
    assert_eq!(f.value, None);
    let many = s
        .load_many(&["p1".to_string(), "missing".to_string()])
        .await
        .unwrap();
    assert_eq!(many.keys().collect::<Vec<_>>(), ["p1"]);
    // Without ttl_from_cache_control the policy alone decides.
    assert_eq!(source(&e, quick()).load("p1").await.unwrap().ttl, None);
}

#[tokio::test]
async fn passing_failures_are_retried_and_the_third_attempt_answers() {
    let mut n = 0;
    let e = Endpoint::start(move |_| {
        n += 1;
        if n <= 2 {
            (503, vec![], "busy", Duration::ZERO)
        } else {
            (200, vec![], "\"ok\"", Duration::ZERO)
        }
    })
    .await;
    let s = source(&e, quick());
    assert_eq!(
        s.load("k").await.unwrap().value,
        Some(serde_json::json!("ok"))
    );
    assert_eq!(e.requests(), 3);
    assert_eq!(s.retry_counts(), (1, 2, 0));
}

#[tokio::test]
async fn when_the_endpoint_is_down_the_budget_keeps_retries_to_a_tenth_of_loads() {
    let e = Endpoint::start(|_| (503, vec![], "down", Duration::ZERO)).await;
    let s = source(
        &e,
        HttpSourceOptions {
            retries: 3,
            ..quick()
        },
    );
    for i in 0..200 {
        let err = error(s.load(&format!("k{i}")).await.unwrap_err());
        assert!(err.contains("503") && err.contains("/items/k"), "{err}");
    }
    let (loads, retries, refused) = s.retry_counts();
    assert_eq!(loads, 200);
    // Without a budget: 200 × (1 + 3) = 800 requests. With it: 200 + a reserve of 3 + 10 % of 200.
    assert!(retries <= 3 + 20, "{retries} retries");
    assert!(refused > 0);
    assert_eq!(e.requests() as u64, loads + retries);
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_an_error_naming_the_url_and_the_timeout() {
    let e = Endpoint::start(|_| (200, vec![], "1", Duration::from_secs(5))).await;
    let s = source(
        &e,
        HttpSourceOptions {
            timeout: Duration::from_millis(100),
            retries: 1,
            ..quick()
        },
    );
    let started = Instant::now();
    let err = error(s.load("slow").await.unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("/items/slow") && err.contains("100ms"),
        "{err}"
    );
    assert_eq!(e.requests(), 2, "one retry");
}

#[tokio::test]
async fn a_body_that_is_not_json_or_a_refusal_is_an_error_at_once() {
    let e = Endpoint::start(|path| match path {
        "/items/html" => (200, vec![], "<html>", Duration::ZERO),
        _ => (403, vec![], "no", Duration::ZERO),
    })
    .await;
    let s = source(&e, quick());
    let err = error(s.load("html").await.unwrap_err());
    assert!(err.contains("not a JSON value"), "{err}");
    let err = error(s.load("secret").await.unwrap_err());
    assert!(err.contains("403"), "{err}");
    assert_eq!(e.requests(), 2, "neither is retried");
    let down = HttpSource::<serde_json::Value>::new(
        "down",
        "http://127.0.0.1:9",
        strata_http::client::https_client(&[]).unwrap(),
        HttpSourceOptions {
            retries: 0,
            ..quick()
        },
    );
    let err = error(down.load("k").await.unwrap_err());
    assert!(
        err.contains("127.0.0.1:9/k") && err.contains("unreachable"),
        "{err}"
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_the_backoff_cap_is_answered_at_once() {
    let e =
        Endpoint::start(|_| (503, vec![("retry-after", "3600")], "later", Duration::ZERO)).await;
    let s = source(&e, quick());
    let started = Instant::now();
    let err = error(s.load("k").await.unwrap_err());
    assert!(err.contains("503"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        e.requests(),
        1,
        "not retried: waiting an hour would hold the load"
    );
}

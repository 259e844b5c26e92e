//! Bodies through the proxy, against an origin that writes raw bytes on the wire: the client gets a fill's
//! head and first bytes while the origin is still sending; a body cut off is never stored; a body past the
//! route's object limit passes through whole and unstored; a leader that goes away does not stop the fill.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strata::Cache;
use strata_http::proxy::{edge_namespace, serve, Proxy, ProxyConfig, Route, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// One step of the origin's answer.
#[derive(Clone)]
enum Step {
    Write(Vec<u8>),
    /// Waits for a permit of the semaphore (the test releases it).
    Hold(Arc<Semaphore>),
}

/// An origin that answers every request with the same steps, then closes the connection.
struct RawOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl RawOrigin {
    async fn start(steps: Vec<Step>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (steps, counted) = (steps.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    for step in steps {
                        match step {
                            Step::Write(b) => {
                                if stream.write_all(&b).await.is_err() {
                                    return;
                                }
                                let _ = stream.flush().await;
                            }
                            Step::Hold(s) => s.acquire().await.unwrap().forget(),
                        }
                    }
                    // Closing ends a message without a length, or cuts one short.
                });
            }
        });
        Self { addr, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn head(fields: &str) -> Step {
    Step::Write(
        format!("HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n{fields}\r\n").into_bytes(),
    )
}

fn chunk(data: &[u8]) -> Step {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    Step::Write(v)
}

fn last_chunk() -> Step {
    Step::Write(b"0\r\n\r\n".to_vec())
}

struct Edge {
    addr: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Edge {
    async fn start(origin: &RawOrigin, max_object_bytes: Option<usize>) -> Self {
        let cache = Cache::builder().build();
        let ns = edge_namespace(&cache, "edge", Duration::from_secs(86400), false).unwrap();
        let mut route = Route::new(&format!("http://{}", origin.addr)).unwrap();
        if let Some(max) = max_object_bytes {
            route = route.with_max_object_bytes(max);
        }
        let proxy = Proxy::new(Routes::new().with(route), ns, ProxyConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, proxy, std::future::pending()));
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn request(&self, path: &str) -> http::Response<hyper::body::Incoming> {
        let req = Request::get(format!("http://{}{path}", self.addr))
            .header("host", "site.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .expect("the head arrives")
            .unwrap()
    }

    async fn get(&self, path: &str) -> (StatusCode, String, Bytes) {
        let r = self.request(path).await;
        let status = r.status();
        let cs = cache_status(&r);
        let body = tokio::time::timeout(Duration::from_secs(5), r.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, cs, body)
    }
}

fn cache_status<B>(r: &http::Response<B>) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn next_data(body: &mut hyper::body::Incoming) -> Bytes {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a chunk arrives while the origin still holds the rest")
            .expect("the body goes on")
            .unwrap();
        if let Ok(d) = frame.into_data() {
            return d;
        }
    }
}

#[tokio::test]
async fn a_fill_streams_to_its_client_and_collapsed_waiters_get_the_stored_whole() {
    let gate = Arc::new(Semaphore::new(0));
    let origin = RawOrigin::start(vec![
        head("transfer-encoding: chunked\r\n"),
        chunk(b"first-"),
        Step::Hold(gate.clone()),
        chunk(b"second"),
        last_chunk(),
    ])
    .await;
    let edge = Edge::start(&origin, None).await;
    let leader = edge.request("/s").await;
    assert_eq!(leader.status(), StatusCode::OK);
    assert!(cache_status(&leader).contains("fwd=uri-miss"));
    let mut body = leader.into_body();
    // The origin has not sent the rest: the client already has what was sent.
    assert_eq!(&next_data(&mut body).await[..], b"first-");
    let waiter = tokio::spawn({
        let (addr, client) = (edge.addr, edge.client.clone());
        async move { Edge { addr, client }.get("/s").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "a waiter awaits the stored whole");
    gate.add_permits(1);
    assert_eq!(&next_data(&mut body).await[..], b"second");
    assert!(body.collect().await.is_ok());
    let (status, cs, whole) = waiter.await.unwrap();
    assert_eq!((status, &whole[..]), (StatusCode::OK, &b"first-second"[..]));
    assert!(cs.contains("collapsed"), "{cs}");
    let (_, cs, whole) = edge.get("/s").await;
    assert!(cs.starts_with("Strata; hit"), "{cs}");
    assert_eq!(&whole[..], b"first-second");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn a_body_cut_off_by_the_origin_is_an_aborted_answer_and_never_stored() {
    for steps in [
        // Shorter than its Content-Length.
        vec![
            head("content-length: 12\r\n"),
            Step::Write(b"first-".to_vec()),
        ],
        // Chunked without its last chunk.
        vec![head("transfer-encoding: chunked\r\n"), chunk(b"first-")],
    ] {
        let origin = RawOrigin::start(steps).await;
        let edge = Edge::start(&origin, None).await;
        let r = edge.request("/cut").await;
        let got = tokio::time::timeout(Duration::from_secs(5), r.into_body().collect())
            .await
            .unwrap();
        assert!(got.is_err(), "a cut body must not look complete");
        let r = edge.request("/cut").await;
        assert!(cache_status(&r).contains("fwd=uri-miss"), "not stored");
        drop(r);
        assert_eq!(origin.requests(), 2);
    }
}

#[tokio::test]
async fn a_body_past_the_object_limit_passes_through_whole_and_unstored() {
    let big = vec![b'x'; 64 * 1024];
    for announced in [true, false] {
        let steps = if announced {
            vec![
                head(&format!("content-length: {}\r\n", big.len() * 4)),
                Step::Write(big.clone()),
                Step::Write(big.clone()),
                Step::Write(big.clone()),
                Step::Write(big.clone()),
            ]
        } else {
            let mut s = vec![head("transfer-encoding: chunked\r\n")];
            s.extend(std::iter::repeat_n(chunk(&big), 4));
            s.push(last_chunk());
            s
        };
        let origin = RawOrigin::start(steps).await;
        let edge = Edge::start(&origin, Some(100 * 1024)).await;
        let (status, cs, body) = edge.get("/big").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 4 * big.len()));
        if announced {
            assert!(
                cs.contains("detail=\"too-large\"") && !cs.contains("stored"),
                "{cs}"
            );
        }
        let (_, cs, body) = edge.get("/big").await;
        assert_eq!(body.len(), 4 * big.len());
        assert!(!cs.starts_with("Strata; hit"), "{cs}");
        assert_eq!(origin.requests(), 2, "announced={announced}");
    }
}

#[tokio::test]
async fn a_leader_that_goes_away_mid_body_does_not_stop_the_fill() {
    let gate = Arc::new(Semaphore::new(0));
    let origin = RawOrigin::start(vec![
        head("content-length: 12\r\n"),
        Step::Write(b"first-".to_vec()),
        Step::Hold(gate.clone()),
        Step::Write(b"second".to_vec()),
    ])
    .await;
    let edge = Edge::start(&origin, None).await;
    let leader = edge.request("/gone").await;
    let mut body = leader.into_body();
    assert_eq!(&next_data(&mut body).await[..], b"first-");
    drop(body);
    gate.add_permits(1);
    // Joins the fill still running (or finds it done): the whole body, from the one origin request.
    let (_, cs, whole) = edge.get("/gone").await;
    assert!(
        cs.contains("collapsed") || cs.starts_with("Strata; hit"),
        "{cs}"
    );
    assert_eq!(&whole[..], b"first-second");
    let (_, cs, _) = edge.get("/gone").await;
    assert!(cs.starts_with("Strata; hit"), "{cs}");
    assert_eq!(origin.requests(), 1);
}

//! CDN purge hooks through the `strata` binary, against a local stand-in CDN that records what it receives and
//! can fail for a while: the request shapes of Fastly, Cloudflare and a signed webhook; retries through 503s and a
//! 429 with `Retry-After`; a refused purge dead-lettered; and purges acknowledged while the CDN was down,
//! delivered after a `kill -9` and a restart.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A stand-in CDN: answers each request with the next scripted status (then 200), and records it.
struct Cdn {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    fail: Arc<Mutex<VecDeque<u16>>>,
}

impl Cdn {
    fn start() -> Self {
        Self::serve(None)
    }

    /// A stand-in that speaks only TLS, with a certificate for 127.0.0.1 issued by a CA of its own; returns the
    /// CA's PEM too.
    fn start_tls() -> (Self, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Strata test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        )
        .unwrap();
        (
            Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))),
            ca.pem(),
        )
    }

    fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let fail: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, f) = (seen.clone(), fail.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let (s, f) = (s.clone(), f.clone());
                    async move {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map_or("/".into(), |p| p.to_string());
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                            .await
                            .unwrap_or_default();
                        let status = f.lock().pop_front().unwrap_or(200);
                        s.lock().push(Seen {
                            path,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        let mut r = axum::response::Response::new(axum::body::Body::from(
                            "{\"status\": \"ok\"}",
                        ));
                        *r.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                        if status == 429 {
                            r.headers_mut()
                                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                        }
                        r
                    }
                });
                let Some(tls) = tls else {
                    axum::serve(listener, app).await.unwrap();
                    return;
                };
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (tls, app) = (tls.clone(), app.clone());
                    tokio::spawn(async move {
                        // A client that refuses the certificate ends here, before any request.
                        let Ok(stream) = tls.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(
                            move |req: axum::http::Request<hyper::body::Incoming>| {
                                tower::ServiceExt::oneshot(
                                    app.clone(),
                                    req.map(axum::body::Body::new),
                                )
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Self {
            addr: rx.recv().unwrap(),
            seen,
            fail,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// Waits (bounded) until it has received `n` requests.
    fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.seen.lock().len() >= n {
                return self.seen();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the CDN received {:?}, not {n} requests", self.seen());
    }
}

fn config(dir: &std::path::Path, hooks: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("cdn.toml");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[[proxy.routes]]\nname = \"site\"\norigin = \"http://127.0.0.1:9\"\n\n{hooks}"
    );
    std::fs::write(&file, text).unwrap();
    file
}

fn purge(base: &str, body: &str) {
    let (code, text) = common::call("POST", &format!("{base}/v1/_purge"), body);
    assert_eq!(code, 200, "{text}");
}

fn metric(base: &str, name: &str, hook: &str) -> f64 {
    let (_, text) = common::call("GET", &format!("{base}/metrics"), "");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("hook=\"{hook}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn every_purge_reaches_fastly_cloudflare_and_a_signed_webhook_in_their_shapes() {
    let cdn = Cdn::start();
    std::env::set_var("STRATA_TEST_CDN_FASTLY_KEY", "fk-1");
    std::env::set_var("STRATA_TEST_CDN_SECRET", "s3cret");
    let dir = common::data_dir("cdn-shapes");
    let file = config(
        &dir,
        &format!(
            "[[cdn]]\nname = \"fastly\"\nkind = \"fastly\"\nurl = \"http://{a}\"\nservice = \"svc1\"\ntoken_env = \"STRATA_TEST_CDN_FASTLY_KEY\"\n\n\
             [[cdn]]\nname = \"cf\"\nkind = \"cloudflare\"\nurl = \"http://{a}/cf\"\nservice = \"zone9\"\n\n\
             [[cdn]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{a}/hook\"\nsecret_env = \"STRATA_TEST_CDN_SECRET\"\n",
            a = cdn.addr
        ),
    );
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    purge(&running.base, r#"{"tag": "product:42"}"#);
    let seen = cdn.wait_for(3, Duration::from_secs(10));
    let by = |p: &str| {
        seen.iter()
            .find(|s| s.path.starts_with(p))
            .unwrap_or_else(|| panic!("{p}: {seen:?}"))
            .clone()
    };
    let fastly = by("/service/svc1/purge");
    assert_eq!(fastly.header("surrogate-key"), "product:42");
    assert_eq!(fastly.header("fastly-key"), "fk-1");
    assert_eq!(fastly.header("fastly-soft-purge"), "");
    let cf = by("/cf/zones/zone9/purge_cache");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&cf.body).unwrap(),
        serde_json::json!({"tags": ["product:42"]})
    );
    let hook = by("/hook");
    let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(
        (body["kind"].as_str(), &body["values"]),
        (Some("tag"), &serde_json::json!(["product:42"]))
    );
    assert_eq!(
        hook.header("strata-signature"),
        format!("sha256={}", strata_server::cdn::sign("s3cret", &hook.body))
    );

    // A soft URL purge: Fastly's soft purge of that URL, Cloudflare's files.
    purge(
        &running.base,
        r#"{"url": "http://localhost/p/1", "soft": true}"#,
    );
    let seen = cdn.wait_for(6, Duration::from_secs(10));
    let fastly = seen
        .iter()
        .find(|s| s.path == "/purge/localhost/p/1")
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(fastly.header("fastly-soft-purge"), "1");
    assert!(
        seen.iter()
            .any(|s| s.body.contains("\"files\":[\"http://localhost/p/1\"]")),
        "{seen:?}"
    );

    let (_, stats) = common::call("GET", &format!("{}/v1/_stats", running.base), "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["cdn"].as_array().unwrap().len(), 3, "{stats}");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_cdn_that_fails_for_a_while_gets_every_purge_and_a_kill_9_loses_none() {
    let cdn = Cdn::start();
    let dir = common::data_dir("cdn-retries");
    let file = config(
        &dir,
        &format!(
            "[[cdn]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{}/hook\"\nmax_attempts = 50\n",
            cdn.addr
        ),
    );
    let args = ["--config", file.to_str().unwrap()];
    let running = common::serve(&dir, &args).unwrap();
    // Two 503s and a 429 (Retry-After: 1), then it is delivered once.
    cdn.fail.lock().extend([503, 503, 429]);
    purge(&running.base, r#"{"tag": "a"}"#);
    let seen = cdn.wait_for(4, Duration::from_secs(15));
    assert!(seen[3].body.contains("\"a\""), "{seen:?}");
    let until = Instant::now() + Duration::from_secs(5);
    while metric(&running.base, "strata_cdn_deliveries_total", "hook") < 1.0
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(&running.base, "strata_cdn_deliveries_total", "hook"),
        1.0
    );
    assert_eq!(
        metric(&running.base, "strata_cdn_failures_total", "hook"),
        3.0
    );

    // The CDN goes down; two purges are acknowledged; the node is killed before it could deliver them.
    cdn.fail.lock().extend(std::iter::repeat_n(503, 1000));
    purge(&running.base, r#"{"tag": "b"}"#);
    purge(&running.base, r#"{"tag": "c"}"#);
    drop(running); // SIGKILL
    cdn.fail.lock().clear();
    let before = cdn.seen().len();
    let running = common::serve(&dir, &args).unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let delivered: Vec<Seen> = cdn.seen().into_iter().skip(before).collect();
        if delivered.iter().any(|s| s.body.contains("\"b\""))
            && delivered.iter().any(|s| s.body.contains("\"c\""))
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "b and c were never delivered: {delivered:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_purge_the_cdn_refuses_is_dead_lettered_and_counted() {
    let cdn = Cdn::start();
    let dir = common::data_dir("cdn-refused");
    let file = config(
        &dir,
        &format!(
            "[[cdn]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{}/hook\"\n",
            cdn.addr
        ),
    );
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    cdn.fail.lock().push_back(400);
    purge(&running.base, r#"{"tag": "refused"}"#);
    cdn.wait_for(1, Duration::from_secs(10));
    let dead = dir.join("cdn").join("hook.dead");
    let until = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&dead).is_ok_and(|t| t.contains("refused")) {
        assert!(
            Instant::now() < until,
            "no dead letter in {}",
            dead.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read_to_string(&dead).unwrap().contains("400"));
    let until = Instant::now() + Duration::from_secs(5);
    while metric(&running.base, "strata_cdn_dead_letters_total", "hook") < 1.0 {
        assert!(Instant::now() < until, "no dead-letter metric");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next purge goes through: one refused batch does not block the queue.
    purge(&running.base, r#"{"tag": "next"}"#);
    let seen = cdn.wait_for(2, Duration::from_secs(10));
    assert!(seen[1].body.contains("\"next\""), "{seen:?}");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_https_cdn_behind_a_private_ca_gets_its_purges_over_verified_tls() {
    let (cdn, ca) = Cdn::start_tls();
    let dir = common::data_dir("cdn-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let file = config(
        &dir,
        &format!(
            "[[cdn]]\nname = \"fastly\"\nkind = \"fastly\"\nurl = \"https://{}\"\nservice = \"svc\"\nca_file = {:?}\n",
            cdn.addr,
            ca_file.to_str().unwrap()
        ),
    );
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    purge(&running.base, r#"{"tag": "product:7", "soft": true}"#);
    let seen = cdn.wait_for(1, Duration::from_secs(10));
    assert_eq!(seen[0].path, "/service/svc/purge", "{seen:?}");
    assert_eq!(seen[0].header("surrogate-key"), "product:7");
    assert_eq!(seen[0].header("fastly-soft-purge"), "1");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_https_cdn_whose_certificate_is_not_trusted_gets_nothing_and_the_purge_is_dead_lettered() {
    let (cdn, _) = Cdn::start_tls();
    let dir = common::data_dir("cdn-tls-untrusted");
    let file = config(
        &dir,
        &format!(
            "[[cdn]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://{}/hook\"\nmax_attempts = 2\n",
            cdn.addr
        ),
    );
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    purge(&running.base, r#"{"tag": "untrusted"}"#);
    let dead = dir.join("cdn").join("hook.dead");
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&dead).is_ok_and(|t| t.contains("untrusted")) {
        assert!(
            Instant::now() < until,
            "no dead letter in {}",
            dead.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(cdn.seen().is_empty(), "{:?}", cdn.seen());
    assert_eq!(
        metric(&running.base, "strata_cdn_failures_total", "hook"),
        2.0
    );
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

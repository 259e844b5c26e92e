//! The gateway tier through the `strata` binary: namespaces reading through an HTTP source, and a sick source
//! shed by its namespace's bulkhead — stale answers where there is a value, `503` + `Retry-After` where there is
//! none, no answer later than the hard timeout — while the namespace beside it is unharmed; and the same for the
//! proxy's routes: a rate limit per route, and a bulkhead in front of a route's origin.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A REST endpoint: `/{path}/{key}` answers `{"path": …, "key": …}` after the delay set for its path's first
/// segment (`users` or `orders`), fresh for 1 s (`max-age=1`); key `missing` is a 404.
struct Endpoint {
    addr: std::net::SocketAddr,
    users_delay_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Endpoint {
    fn start() -> Self {
        let users_delay_ms = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (d, n) = (users_delay_ms.clone(), requests.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (d, n) = (d.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                let mut parts = uri.path().trim_start_matches('/').splitn(2, '/');
                let (path, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                if path == "users" {
                    let ms = d.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let fresh_for = [(axum::http::header::CACHE_CONTROL, "max-age=1")];
                if key == "missing" {
                    return (axum::http::StatusCode::NOT_FOUND, fresh_for, String::new());
                }
                (
                    axum::http::StatusCode::OK,
                    fresh_for,
                    serde_json::json!({"path": path, "key": key}).to_string(),
                )
            }
        });
        let addr = common::spawn_app(app);
        Self {
            addr,
            users_delay_ms,
            requests,
        }
    }
}

fn config(dir: &std::path::Path, endpoint: &Endpoint) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("gateway.toml");
    let text = format!(
        r#"[sources.api]
http = "http://{addr}"
timeout = "20s"
retries = 0

[namespaces.users]
source = "api"
path = "users"
ttl = "300ms"
jitter = 0.0
fail_safe_for = "60s"
hard_timeout = "2s"
max_loads = 1
max_queue = 0
max_wait = "10ms"

[namespaces.orders]
source = "api"
path = "orders"
"#,
        addr = endpoint.addr
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// `(status, the headers asked for, body)`.
fn get(url: &str, names: &[&str]) -> (u16, Vec<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap();
    let headers = names
        .iter()
        .map(|n| {
            resp.headers()
                .get(*n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let status = resp.status().as_u16();
    (
        status,
        headers,
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn a_namespace_reads_through_an_http_source_and_is_read_only() {
    let endpoint = Endpoint::start();
    let dir = common::data_dir("gateway-http-source");
    let file = config(&dir, &endpoint);
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let (status, _, body) = get(&format!("{}/v1/orders/o%2F1", running.base), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        // The key `o/1` travels as one path segment.
        serde_json::json!({"path": "orders", "key": "o%2F1"})
    );
    let (status, headers, _) = get(
        &format!("{}/v1/orders/o%2F1", running.base),
        &["cache-status"],
    );
    assert_eq!(status, 200);
    assert!(headers[0].contains("hit"), "{headers:?}");
    assert_eq!(
        endpoint.requests.load(Ordering::SeqCst),
        1,
        "the second read is a hit"
    );
    let (status, _, body) = get(&format!("{}/v1/orders/missing", running.base), &[]);
    assert_eq!(status, 404, "{body}");
    let (status, body) = common::call("PUT", &format!("{}/v1/orders/o1", running.base), "{}");
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("read_only"), "{body}");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_sick_source_is_shed_with_stale_answers_and_503s_while_its_neighbour_is_unharmed() {
    let endpoint = Endpoint::start();
    let dir = common::data_dir("gateway-shed");
    let file = config(&dir, &endpoint);
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let base = running.base.clone();
    let (status, _, _) = get(&format!("{base}/v1/users/cached"), &[]);
    assert_eq!(status, 200);

    // The users API goes from instant to 12 s; the cached entry expires.
    endpoint.users_delay_ms.store(12_000, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(400));

    // One load takes the namespace's only slot and waits on the sick source.
    let b = base.clone();
    let holder = std::thread::spawn(move || {
        let started = Instant::now();
        let (status, _, body) = get(&format!("{b}/v1/users/slow"), &[]);
        (status, body, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));

    // A key with a value: its stale value at once, marked as shed.
    let started = Instant::now();
    let (status, headers, body) = get(&format!("{base}/v1/users/cached"), &["cache-status"]);
    assert_eq!(status, 200, "{body}");
    assert!(headers[0].contains("stale-overloaded"), "{headers:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // A key without one: 503 with Retry-After, at once.
    let started = Instant::now();
    let (status, headers, body) = get(&format!("{base}/v1/users/new"), &["retry-after"]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overloaded"), "{body}");
    assert_eq!(headers[0], "1");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // The neighbour on the same endpoint answers as before.
    let started = Instant::now();
    let (status, _, _) = get(&format!("{base}/v1/orders/o1"), &[]);
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // The held load answers by the hard timeout (2 s), not after the source's 12 s.
    let (status, body, took) = holder.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(took < Duration::from_millis(2_800), "{took:?}");

    let (_, stats) = common::call("GET", &format!("{base}/v1/users/_stats"), "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let p = &stats["protection"];
    assert!(p["shed"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        ["closed", "open", "half_open"].contains(&p["breaker"].as_str().unwrap()),
        "{stats}"
    );
    let (_, stats) = common::call("GET", &format!("{base}/v1/orders/_stats"), "");
    assert!(stats.contains("\"protection\":null"), "{stats}");
    let (_, stats) = common::call("GET", &format!("{base}/metrics"), "");
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("strata_source_shed_total{") && l.contains("users")),
        "no shed metric"
    );
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_proxy_route_has_its_own_rate_limit_and_a_bulkhead_in_front_of_its_origin() {
    let endpoint = Endpoint::start();
    let dir = common::data_dir("gateway-proxy");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            r#"[limits.per_client]
limit = 2
per = "1m"
key = "ip"

[proxy]
listen = "127.0.0.1:0"
origin_timeout = "2s"

[[proxy.routes]]
name = "orders"
path_prefix = "/orders/"
origin = "http://{addr}"
rate_limit = "per_client"

[[proxy.routes]]
name = "users"
path_prefix = "/users/"
origin = "http://{addr}"
max_loads = 1
stale_if_error = "1h"
"#,
            addr = endpoint.addr
        ),
    )
    .unwrap();
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let proxy = running.proxy.clone().unwrap();

    // The orders route: two requests a minute per client, then 429 with the IETF fields.
    for _ in 0..2 {
        let (status, headers, _) = get(&format!("{proxy}/orders/o1"), &["ratelimit-policy"]);
        assert_eq!(status, 200);
        assert_eq!(headers[0], "\"per_client\";q=2;w=60");
    }
    let (status, headers, body) = get(&format!("{proxy}/orders/o1"), &["retry-after", "ratelimit"]);
    assert_eq!(status, 429, "{body}");
    assert!(
        !headers[0].is_empty() && headers[1].contains("r=0"),
        "{headers:?}"
    );
    assert!(body.contains("rate_limited"), "{body}");
    // The users route is not limited.
    let (status, _, _) = get(&format!("{proxy}/users/cached"), &[]);
    assert_eq!(status, 200);

    // The users origin falls ill; the stored answer goes stale.
    endpoint.users_delay_ms.store(12_000, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1_200));
    let p = proxy.clone();
    let holder = std::thread::spawn(move || {
        let started = Instant::now();
        let (status, _, _) = get(&format!("{p}/users/slow"), &[]);
        (status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (status, headers, body) = get(&format!("{proxy}/users/cached"), &["cache-status"]);
    assert_eq!(status, 200, "{body}");
    assert!(headers[0].contains("stale-if-error"), "{headers:?}");
    let (status, headers, _) = get(
        &format!("{proxy}/users/new"),
        &["retry-after", "cache-status"],
    );
    assert_eq!(status, 503);
    assert_eq!(headers[0], "1");
    assert!(headers[1].contains("overloaded"), "{headers:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let (_, stats) = common::call("GET", &format!("{}/v1/_stats", running.base), "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let routes = stats["proxy"]["routes"].as_array().unwrap();
    assert!(routes[0]["protection"].is_null(), "{stats}");
    assert!(
        routes[1]["protection"]["shed"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    let (status, took) = holder.join().unwrap();
    assert_eq!(status, 504);
    assert!(took < Duration::from_millis(2_800), "{took:?}");
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

/// A stand-in OAuth 2.0 introspection endpoint (RFC 7662): `POST /introspect` with `token=…`; it counts calls and
/// refuses a call without the expected client credentials.
fn start_idp() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/introspect",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Basic c3RyYXRhOnNlY3JldA==");
                let form = headers.get("content-type").and_then(|v| v.to_str().ok())
                    == Some("application/x-www-form-urlencoded");
                if !authorized || !form {
                    return (axum::http::StatusCode::UNAUTHORIZED, "{}".to_string());
                }
                let answer = match body.as_str() {
                    "token=good" => {
                        serde_json::json!({"active": true, "sub": "u1", "exp": now + 2})
                    }
                    "token=a%20b%2Bc" => serde_json::json!({"active": true, "sub": "u2"}),
                    "token=expired" => {
                        serde_json::json!({"active": true, "sub": "u3", "exp": now - 10})
                    }
                    "token=weird" => serde_json::json!({"ok": 1}),
                    "token=broken" => {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops".into())
                    }
                    _ => serde_json::json!({"active": false}),
                };
                (axum::http::StatusCode::OK, answer.to_string())
            }
        }),
    );
    (common::spawn_app(app), calls)
}

#[test]
fn an_auth_namespace_caches_valid_tokens_until_their_expiry_and_invalid_ones_briefly() {
    let (idp, calls) = start_idp();
    std::env::set_var("STRATA_TEST_IDP_AUTH", "Basic c3RyYXRhOnNlY3JldA==");
    let dir = common::data_dir("gateway-auth");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.toml");
    std::fs::write(
        &file,
        format!(
            "[limits.checks]\nlimit = 1000\nper = \"1m\"\nkey = \"ip\"\n\n\
             [namespaces.tokens]\nttl = \"60s\"\nnegative_ttl = \"1s\"\nrate_limit = \"checks\"\n\n[namespaces.tokens.introspection]\n\
             url = \"http://{idp}/introspect\"\nauthorization_env = \"STRATA_TEST_IDP_AUTH\"\nretries = 0\n"
        ),
    )
    .unwrap();
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let check = |token: &str| {
        let body = serde_json::json!({ "token": token }).to_string();
        common::call(
            "POST",
            &format!("{}/v1/tokens/_introspect", running.base),
            &body,
        )
    };
    let n = || calls.load(Ordering::SeqCst);

    // A valid token: asked once, then answered from the cache…
    let (status, body) = check("good");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["active"].as_bool(), v["sub"].as_str()),
        (Some(true), Some("u1"))
    );
    assert_eq!(check("good").0, 200);
    assert_eq!(n(), 1);
    // … but never past its own `exp` (2 s), though the namespace's TTL is 60 s.
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(check("good").0, 200);
    assert_eq!(n(), 2, "the token's exp ends its cached answer");

    // An invalid token: `active: false`, cached for the negative TTL (1 s).
    let (status, body) = check("nope");
    assert_eq!((status, body.as_str()), (200, r#"{"active":false}"#));
    check("nope");
    assert_eq!(n(), 3);
    std::thread::sleep(Duration::from_millis(1_100));
    check("nope");
    assert_eq!(n(), 4);
    // An answer that is active but already expired is an invalid token.
    assert_eq!(check("expired").1, r#"{"active":false}"#);

    // Revocation drops the cached answer; the next check asks again. Tokens travel form-encoded.
    let (status, body) = check("a b+c");
    assert!(status == 200 && body.contains("u2"), "{body}");
    let before = n();
    check("a b+c");
    assert_eq!(n(), before);
    let (status, body) = common::call(
        "POST",
        &format!("{}/v1/tokens/_revoke", running.base),
        r#"{"token": "a b+c"}"#,
    );
    assert_eq!(status, 200, "{body}");
    check("a b+c");
    assert_eq!(n(), before + 1);

    // The endpoint failing is a 502 naming the source; a bad request names the field; no data routes.
    let (status, body) = check("broken");
    assert_eq!(status, 502, "{body}");
    // An answer that is not an introspection answer (no boolean `active`) is the endpoint's failure too.
    let (status, body) = check("weird");
    assert_eq!(status, 502, "{body}");
    let (status, body) = check("");
    assert!(status == 400 && body.contains("bad_token"), "{body}");
    let (status, body) = common::call("GET", &format!("{}/v1/tokens/abc", running.base), "");
    assert!(status == 405 && body.contains("auth_namespace"), "{body}");
    // Token checks pass the namespace's rate limit (an open introspection route must not be a free oracle).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(&format!("{}/v1/tokens/_introspect", running.base))
        .header("content-type", "application/json")
        .send(r#"{"token": "good"}"#)
        .unwrap();
    assert!(
        resp.headers()
            .get("ratelimit-policy")
            .is_some_and(|v| v.to_str().unwrap().contains("checks")),
        "{:?}",
        resp.headers()
    );
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
}

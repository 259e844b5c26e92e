//! Access control from the outside, over raw HTTP/1.1 (so every header is the test's choice): a web page cannot
//! use a browser to write, invalidate, warm or read — foreign `Host` (DNS rebinding) and `Origin` (cross-site)
//! are refused with JSON naming them, bodies must be JSON — while the server's own names, configured ones and
//! health checks answer.

use std::net::SocketAddr;
use std::path::PathBuf;

mod common;

use common::InProcess;
use serde_json::Value;
use strata_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-access-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn start(config: Config) -> (SocketAddr, InProcess) {
    let server = InProcess::start(&config).await;
    (server.addr, server)
}

/// One request with exactly these headers (plus content-length and connection: close): (status, body).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_and_rebinding_requests_cannot_write_invalidate_warm_or_read() {
    let (addr, stop) = start(Config::embedded(&temp_dir("refused"))).await;
    let own = addr.to_string();
    let json = ("content-type", "application/json");
    let price = r#"{"cents": 100, "currency": "EUR"}"#;
    let mutating: [(&str, &str, &str); 5] = [
        ("PUT", "/v1/price/1", price),
        ("DELETE", "/v1/session/1", ""),
        ("POST", "/v1/product/_invalidate", r#"{"all": true}"#),
        ("POST", "/v1/product/_warm", r#"{"keys": ["1"]}"#),
        ("POST", "/v1/product/_bulk", r#"{"keys": ["1"]}"#),
    ];

    // DNS rebinding: a page on evil.example whose name now resolves to this server.
    let rebound = format!("evil.example:{}", addr.port());
    for (m, p, b) in mutating.iter().chain([
        &("GET", "/v1/product/1", ""),
        &("GET", "/v1/_stats", ""),
        &("GET", "/", ""),
    ]) {
        let (status, body) = raw(addr, m, p, &[("host", &rebound), json], b).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden_host")),
            "{m} {p}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("evil.example"),
            "{body}"
        );
    }
    // Health checks answer any Host.
    assert_eq!(
        raw(addr, "GET", "/healthz", &[("host", "lb.internal")], "")
            .await
            .0,
        200
    );
    assert_eq!(
        raw(addr, "GET", "/readyz", &[("host", "lb.internal")], "")
            .await
            .0,
        200
    );

    // Cross-site: the right Host, a foreign Origin.
    for (m, p, b) in &mutating {
        let (status, body) = raw(
            addr,
            m,
            p,
            &[("host", &own), ("origin", "http://evil.example"), json],
            b,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden_origin")),
            "{m} {p}: {body}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("http://evil.example"),
            "{body}"
        );
    }
    // Another local port is another site.
    let (status, _) = raw(
        addr,
        "PUT",
        "/v1/price/1",
        &[("host", &own), ("origin", "http://localhost:3000"), json],
        price,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw(
        addr,
        "PUT",
        "/v1/price/1",
        &[("host", &own), ("origin", "null"), json],
        price,
    )
    .await;
    assert_eq!(status, 403);

    // What an HTML form or a CORS-simple fetch can send is not JSON: refused before any handler.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        for (m, p, b) in mutating.iter().filter(|(m, _, _)| *m != "DELETE") {
            let mut headers = vec![("host", own.as_str())];
            if let Some(ct) = ct {
                headers.push(("content-type", ct));
            }
            let (status, body) = raw(addr, m, p, &headers, b).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (415, Some("unsupported_media_type")),
                "{ct:?} {m} {p}: {body}"
            );
        }
    }

    // The server's own names, with or without the port, and its own origin: accepted.
    for host in [
        own.clone(),
        format!("localhost:{}", addr.port()),
        "127.0.0.1".to_owned(),
    ] {
        let (status, body) = raw(addr, "PUT", "/v1/price/1", &[("host", &host), json], price).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let origin = format!("http://{own}");
    let (status, body) = raw(
        addr,
        "PUT",
        "/v1/price/1",
        &[
            ("host", &own),
            ("origin", &origin),
            ("content-type", "application/json; charset=utf-8"),
        ],
        price,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (m, p, b) in &mutating {
        let (status, body) = raw(addr, m, p, &[("host", &own), json], b).await;
        assert!(status < 300, "{m} {p}: {status} {body}");
    }
    stop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_hosts_and_origins_are_allowed() {
    let mut config = Config::embedded(&temp_dir("allowed"));
    config.server.allowed_hosts = vec!["cache.internal".into()];
    config.server.allowed_origins = vec!["https://admin.example.com".into()];
    let (addr, stop) = start(config).await;
    let json = ("content-type", "application/json");
    let body = r#"{"all": true}"#;
    let (status, b) = raw(
        addr,
        "POST",
        "/v1/product/_invalidate",
        &[("host", "cache.internal:8700"), json],
        body,
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let (status, b) = raw(
        addr,
        "POST",
        "/v1/product/_invalidate",
        &[
            ("host", "cache.internal"),
            ("origin", "https://admin.example.com"),
            json,
        ],
        body,
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let (status, _) = raw(
        addr,
        "POST",
        "/v1/product/_invalidate",
        &[
            ("host", "cache.internal"),
            ("origin", "http://admin.example.com"),
            json,
        ],
        body,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw(
        addr,
        "GET",
        "/v1/product/1",
        &[("host", "other.internal")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    stop.stop().await;
}

//! The data API over real TCP (port 0), on the embedded default (SQLite demo catalog in a temporary data
//! directory): reads with cache headers, every write mode, bulk, invalidation, warm, stats, auth, limits, JSON
//! errors, the OpenAPI document against the router, metrics, and a graceful shutdown that drains write-behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use common::InProcess;
use serde_json::{json, Value};
use strata_server::Config;

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "strata-server-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

struct Server {
    addr: SocketAddr,
    inner: InProcess,
    dir: PathBuf,
}

impl Server {
    async fn start(config: Config) -> Self {
        let inner = InProcess::start(&config).await;
        Self {
            addr: inner.addr,
            inner,
            dir: config.server.data_dir.clone(),
        }
    }

    async fn embedded(name: &str) -> Self {
        Self::start(Config::embedded(&temp_dir(name))).await
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

/// One response: status, headers (lowercase names), body as JSON (or a string when it is not JSON).
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

async fn http(method: &str, url: String, body: Option<Value>, token: Option<&str>) -> Resp {
    let (method, token) = (method.to_owned(), token.map(str::to_owned));
    let body = body.map(|b| b.to_string());
    tokio::task::spawn_blocking(move || raw(&method, &url, body.as_deref(), token.as_deref()))
        .await
        .unwrap()
}

async fn http_raw(method: &str, url: String, body: &str) -> Resp {
    let (method, body) = (method.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || raw(&method, &url, Some(&body), None))
        .await
        .unwrap()
}

fn raw(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> Resp {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.unwrap_or("").to_owned())
        .unwrap();
    let mut resp = agent.run(req).unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Resp {
        status,
        headers,
        body,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    async fn get(&self, path: &str) -> Resp {
        http("GET", self.url(path), None, None).await
    }
    async fn send(&self, method: &str, path: &str, body: Value) -> Resp {
        http(method, self.url(path), Some(body), None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_carry_cache_status_and_age_and_every_write_mode_works() {
    let s = Server::embedded("modes").await;
    let r = s.get("/v1/product/42").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["name"], "Product 42");
    assert!(
        r.body.get("id").is_none() && r.body.get("version").is_none(),
        "{r:?}"
    );
    assert_eq!(r.headers["cache-status"], "strata; fwd=miss; stored");
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert!(r.headers.contains_key("x-request-id"));
    let r = s.get("/v1/product/42").await;
    assert!(
        r.headers["cache-status"].starts_with("strata; hit; ttl="),
        "{r:?}"
    );
    assert!(r.headers["cache-status"].ends_with("detail=l1"), "{r:?}");
    assert_eq!(r.headers["age"], "0");

    // Write-through: the next read is a hit with the new value and version.
    let r = s
        .send(
            "PUT",
            "/v1/price/42",
            json!({"cents": 12900, "currency": "EUR"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["write"].as_str()),
        (200, Some("through")),
        "{r:?}"
    );
    let r = s.get("/v1/price/42").await;
    assert_eq!(r.body, json!({"cents": 12900, "currency": "EUR"}));
    assert!(r.headers["cache-status"].contains("hit"), "{r:?}");
    assert_eq!(r.headers["etag"], "\"v2\"");

    // Write-around: the cached listing stays until its TTL.
    let r = s
        .send(
            "PUT",
            "/v1/product/42",
            json!({"name": "Renamed", "category": "tv", "description": null}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["write"].as_str()),
        (200, Some("around")),
        "{r:?}"
    );
    assert_eq!(s.get("/v1/product/42").await.body["name"], "Product 42");
    // … until invalidated.
    let r = s
        .send("POST", "/v1/product/_invalidate", json!({"key": "42"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.get("/v1/product/42").await.body["name"], "Renamed");

    // Write-behind: acknowledged, readable at once, in the table after the flush.
    let r = s.send("PUT", "/v1/counter/views", json!({"n": 7})).await;
    assert_eq!(
        (r.status, r.body["write"].as_str()),
        (200, Some("behind")),
        "{r:?}"
    );
    assert_eq!(s.get("/v1/counter/views").await.body, json!({"n": 7}));

    // Delete: gone everywhere.
    assert_eq!(
        http("DELETE", s.url("/v1/price/42"), None, None)
            .await
            .status,
        204
    );
    let r = s.get("/v1/price/42").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("not_found")),
        "{r:?}"
    );

    // Bulk, warm, tags and generations, stats.
    let r = s
        .send(
            "POST",
            "/v1/product/_bulk",
            json!({"keys": ["1", "2", "99999"]}),
        )
        .await;
    assert_eq!(r.body["values"]["1"]["name"], "Product 1");
    assert_eq!(r.body["values"]["99999"], Value::Null);
    let r = s
        .send("POST", "/v1/inventory/_warm", json!({"range": [1, 200]}))
        .await;
    assert_eq!(
        (r.body["requested"].as_u64(), r.body["found"].as_u64()),
        (Some(200), Some(200)),
        "{r:?}"
    );
    assert!(s.get("/v1/inventory/150").await.headers["cache-status"].contains("hit"));
    let r = s
        .send("POST", "/v1/inventory/_invalidate", json!({"all": true}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get("/v1/inventory/150").await.headers["cache-status"],
        "strata; fwd=miss; stored"
    );
    let r = s
        .send(
            "POST",
            "/v1/inventory/_invalidate",
            json!({"tag": "warehouse:main"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s.get("/v1/inventory/_stats").await;
    assert!(r.body["misses"].as_u64().unwrap() >= 201, "{r:?}");
    let r = s.get("/v1/_stats").await;
    assert_eq!(r.body["namespaces"].as_array().unwrap().len(), 6);
    assert!(r.body["write_behind"]["acked"].as_u64().unwrap() >= 1);
    let dir = s.dir.clone();
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_mutating_and_admin_routes() {
    let mut config = Config::embedded(&temp_dir("auth"));
    config.server.token = Some("s3cret".into());
    let s = Server::start(config).await;
    let put = |token: Option<&'static str>| {
        http(
            "PUT",
            s.url("/v1/session/abc"),
            Some(json!({"user_id": 1, "data": "{}"})),
            token,
        )
    };
    let r = put(None).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("unauthorized")),
        "{r:?}"
    );
    let r = put(Some("wrong")).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden")),
        "{r:?}"
    );
    assert_eq!(put(Some("s3cret")).await.status, 200);
    for (method, path, body) in [
        ("DELETE", "/v1/session/abc", None),
        (
            "POST",
            "/v1/session/_invalidate",
            Some(json!({"all": true})),
        ),
        ("POST", "/v1/product/_warm", Some(json!({"keys": ["1"]}))),
    ] {
        let r = http(method, s.url(path), body, None).await;
        assert_eq!(r.status, 401, "{method} {path}: {r:?}");
    }
    // Reads need no token.
    assert_eq!(s.get("/v1/session/abc").await.status, 200);
    assert_eq!(s.get("/v1/_stats").await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_that_name_the_problem() {
    let mut config = Config::embedded(&temp_dir("limits"));
    config.server.max_key_len = 16;
    config.server.max_body = strata_server::config::Bytes(256);
    let s = Server::start(config).await;
    let cases: Vec<(Resp, u16, &str)> = vec![
        (
            s.get(&format!("/v1/product/{}", "k".repeat(17))).await,
            400,
            "key_too_long",
        ),
        (s.get("/v1/product/_secret").await, 400, "bad_key"),
        (s.get("/v1/nope/1").await, 404, "unknown_namespace"),
        (s.get("/v2/anything").await, 404, "no_route"),
        (
            s.send("PATCH", "/v1/product/1", json!({})).await,
            405,
            "method_not_allowed",
        ),
        (
            s.send("PUT", "/v1/price/1", json!({"cents": "x".repeat(300)}))
                .await,
            413,
            "body_too_large",
        ),
        (
            http_raw("PUT", s.url("/v1/price/1"), "{oops").await,
            400,
            "bad_json",
        ),
        (
            s.send("PUT", "/v1/price/1", json!([1, 2])).await,
            400,
            "bad_value",
        ),
        (
            s.send("PUT", "/v1/price/1", json!({"cents": 1, "colour": "red"}))
                .await,
            400,
            "bad_value",
        ),
        (
            s.send(
                "POST",
                "/v1/price/_invalidate",
                json!({"key": "1", "all": true}),
            )
            .await,
            400,
            "bad_invalidation",
        ),
        (
            s.send(
                "POST",
                "/v1/price/_bulk",
                json!({"keys": (0..1001).map(|i| i.to_string()).collect::<Vec<_>>()}),
            )
            .await,
            413,
            "body_too_large",
        ),
        (
            s.send("POST", "/v1/price/_warm", json!({"range": [10, 1]}))
                .await,
            400,
            "bad_range",
        ),
    ];
    for (r, status, code) in cases {
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (status, Some(code)),
            "{r:?}"
        );
        assert!(
            !r.body["message"].as_str().unwrap_or("").is_empty(),
            "{r:?}"
        );
    }
    let r = s
        .send("PUT", "/v1/price/1", json!({"cents": 1, "colour": "red"}))
        .await;
    assert!(
        r.body["message"].as_str().unwrap().contains("colour"),
        "{r:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_router() {
    let s = Server::embedded("openapi").await;
    let doc = s.get("/openapi.json").await.body;
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{ns}", "product").replace("{key}", "1");
        for method in ["get", "put", "post", "delete", "patch"] {
            let documented = item.get(method).is_some();
            let body = match method {
                "get" | "delete" => None,
                _ => Some(json!({"keys": ["1"]})),
            };
            let r = http(&method.to_uppercase(), s.url(&concrete), body, None).await;
            let routed = !matches!(
                r.body["error"].as_str(),
                Some("no_route" | "method_not_allowed")
            );
            assert_eq!(
                documented, routed,
                "{method} {path}: documented={documented}, answered {r:?}"
            );
            operations += usize::from(documented);
        }
    }
    assert!(operations >= 13, "{operations}");
    // Nothing under /v1 answers that is not documented.
    for (method, path) in [
        ("GET", "/v1/product"),
        ("POST", "/v1/product/1"),
        ("GET", "/v1/product/1/x"),
    ] {
        let r = http(method, s.url(path), None, None).await;
        assert!(matches!(r.status, 404 | 405), "{method} {path}: {r:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_prometheus_metrics() {
    let s = Server::embedded("metrics").await;
    assert_eq!(s.get("/healthz").await.status, 200);
    assert_eq!(s.get("/readyz").await.status, 200);
    s.get("/v1/flag/dark-mode").await;
    s.get("/v1/flag/dark-mode").await;
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.body.as_str().unwrap().to_owned();
    assert!(text.contains("strata_hits_total"), "{text}");
    assert!(text.contains("namespace=\"flag\""), "{text}");
    assert!(text.contains("strata_uptime_seconds"), "{text}");
    let r = s.get("/").await;
    assert!(r.body.as_str().unwrap().contains("chart-tiers"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_write_behind_into_the_table() {
    let dir = temp_dir("shutdown");
    let s = Server::start(Config::embedded(&dir)).await;
    for i in 0..200 {
        let r = s
            .send("PUT", &format!("/v1/counter/c{}", i % 20), json!({"n": i}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    s.stop().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("catalog.db").display()))
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, n FROM counter ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 20);
    for (id, n) in rows {
        let k: i64 = id[1..].parse().unwrap();
        assert_eq!(n, 180 + k, "{id}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_names_the_file_line_and_field() {
    let dir = temp_dir("check");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[namespaces.price]\nsource = \"main\"\nttl = \"soon\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3:") && err.contains("namespaces.price.ttl"),
        "{err}"
    );
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/strata.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["check-config", good])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("8 namespaces"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_warms_invalidates_and_reads_stats_of_a_running_server() {
    let s = Server::embedded("cli").await;
    let base = format!("http://{}", s.addr);
    let strata = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let out = strata(vec![
        "warm".into(),
        "--ns".into(),
        "inventory".into(),
        "--range".into(),
        "1..50".into(),
        "--server".into(),
        base.clone(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"found\":50"));
    assert!(s.get("/v1/inventory/7").await.headers["cache-status"].contains("hit"));
    let out = strata(vec![
        "invalidate".into(),
        "--ns".into(),
        "inventory".into(),
        "--all".into(),
        "--server".into(),
        base.clone(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.get("/v1/inventory/7").await.headers["cache-status"],
        "strata; fwd=miss; stored"
    );
    let out = strata(vec!["stats".into(), "--server".into(), base.clone()])
        .await
        .unwrap();
    assert!(out.status.success());
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["namespaces"].as_array().unwrap().len(), 6);
    // A bad request is an error exit naming the problem.
    let out = strata(vec![
        "invalidate".into(),
        "--ns".into(),
        "nope".into(),
        "--key".into(),
        "1".into(),
        "--server".into(),
        base,
    ])
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_namespace"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_bound_to_a_query_reads_a_join_and_refuses_writes() {
    let dir = temp_dir("query");
    let src = format!(
        "{}\n[namespaces.listing]\ndescription = \"Product with its price (a join)\"\nsource = \"catalog\"\n\
         query = \"SELECT p.id, p.name, p.category, pr.cents, pr.currency FROM product p JOIN price pr ON pr.id = p.id\"\n\
         ttl = \"30s\"\n",
        strata_server::demo::EMBEDDED_CONFIG
    );
    let mut config = Config::parse(&src, "test.toml").unwrap();
    config.server.data_dir = dir;
    let s = Server::start(config).await;
    let r = s.get("/v1/listing/7").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["name"], "Product 7");
    assert!(r.body["cents"].as_i64().is_some(), "{r:?}");
    assert!(r.body.get("id").is_none());
    assert!(s.get("/v1/listing/7").await.headers["cache-status"].contains("hit"));
    let r = s
        .send(
            "POST",
            "/v1/listing/_bulk",
            json!({"keys": ["1", "2", "5000"]}),
        )
        .await;
    assert_eq!(r.body["values"]["5000"], Value::Null);
    assert_eq!(r.body["values"]["2"]["name"], "Product 2");
    // Writes go to the tables; the join learns by invalidation.
    let r = s.send("PUT", "/v1/listing/7", json!({"name": "x"})).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (405, Some("read_only")),
        "{r:?}"
    );
    assert_eq!(
        http("DELETE", s.url("/v1/listing/7"), None, None)
            .await
            .status,
        405
    );
    s.send(
        "PUT",
        "/v1/price/7",
        json!({"cents": 4242, "currency": "EUR"}),
    )
    .await;
    s.send("POST", "/v1/listing/_invalidate", json!({"key": "7"}))
        .await;
    assert_eq!(s.get("/v1/listing/7").await.body["cents"], 4242);
    // The query's key follows its key column (product.id, an INTEGER): one spelling.
    let r = s.get("/v1/listing/07").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("bad_key")),
        "{r:?}"
    );
    s.stop().await;

    // Config mistakes about queries are located.
    for (extra, want) in [
        ("[namespaces.q]\nquery = \"SELECT 1\"\n", "needs a `source`"),
        (
            "[namespaces.q]\nsource = \"catalog\"\ntable = \"product\"\nquery = \"SELECT 1\"\n",
            "not both",
        ),
        (
            "[namespaces.q]\nsource = \"catalog\"\nwrite = \"through\"\nquery = \"SELECT 1\"\n",
            "read-only",
        ),
    ] {
        let src = format!("{}\n{extra}", strata_server::demo::EMBEDDED_CONFIG);
        let e = Config::parse(&src, "test.toml").unwrap_err();
        assert_eq!(e.field, "namespaces.q.query", "{e}");
        assert!(e.message.contains(want), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_has_one_spelling_and_values_fit_their_columns() {
    let s = Server::embedded("one_key").await;
    let before = s.get("/v1/price/42").await;
    assert_eq!(before.status, 200, "{before:?}");
    // Other spellings of row 42 are refused on every route, naming the key and the expected form.
    for bad in ["042", "%2B42", "%2042", "42abc", "42.9", "-0"] {
        let path = format!("/v1/price/{bad}");
        let shown = bad.replace("%2B", "+").replace("%20", " ");
        for r in [
            s.get(&path).await,
            s.send("PUT", &path, json!({"cents": 1})).await,
            http("DELETE", s.url(&path), None, None).await,
            s.send("POST", "/v1/price/_bulk", json!({"keys": ["42", shown]}))
                .await,
            s.send("POST", "/v1/price/_warm", json!({"keys": [shown]}))
                .await,
            s.send("POST", "/v1/price/_invalidate", json!({"key": shown}))
                .await,
        ] {
            assert_eq!(
                (r.status, r.body["error"].as_str()),
                (400, Some("bad_key")),
                "{bad}: {r:?}"
            );
            let message = r.body["message"].as_str().unwrap();
            assert!(message.contains(&format!("{shown:?}")), "{message}");
            assert!(
                r.body["expected"]
                    .as_str()
                    .unwrap()
                    .contains("canonical decimal"),
                "{r:?}"
            );
        }
    }
    // The scenario: a write to 42, then 042 must not serve the old price; a DELETE of 042 deleted nothing.
    let r = s
        .send(
            "PUT",
            "/v1/price/42",
            json!({"cents": 4242, "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.get("/v1/price/42").await.body["cents"], 4242);
    assert_eq!(s.get("/v1/price/042").await.status, 400);
    // Warm ranges are keys too: beyond the column's range they are refused.
    let r = s
        .send(
            "POST",
            "/v1/price/_warm",
            json!({"range": [9223372036854775807u64, 9223372036854775808u64]}),
        )
        .await;
    assert_eq!(r.body["error"], "bad_key", "{r:?}");
    // Text keys are as they are.
    assert_eq!(s.get("/v1/session/%20abc").await.status, 404);

    // Values are checked against the column types before the write, in every write mode.
    for (path, value, field, want) in [
        ("/v1/price/1", json!({"cents": "abc"}), "cents", "integer"),
        ("/v1/price/1", json!({"cents": 1.5}), "cents", "integer"),
        ("/v1/price/1", json!({"cents": null}), "cents", "NOT NULL"),
        (
            "/v1/price/1",
            json!({"currency": "USD"}),
            "cents",
            "missing",
        ),
        (
            "/v1/price/1",
            json!({"cents": 1, "currency": 978}),
            "currency",
            "string",
        ),
        (
            "/v1/price/1",
            json!({"cents": 1, "colour": "red"}),
            "colour",
            "not a column",
        ),
        ("/v1/counter/views", json!({"n": "7"}), "n", "integer"),
        ("/v1/counter/views", json!({}), "n", "missing"),
        (
            "/v1/flag/dark-mode",
            json!({"enabled": true}),
            "enabled",
            "integer",
        ),
    ] {
        let r = s.send("PUT", path, value.clone()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str(), r.body["field"].as_str()),
            (400, Some("bad_value"), Some(field)),
            "{path} {value}: {r:?}"
        );
        assert!(
            r.body["message"].as_str().unwrap().contains(want)
                && r.body["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{field:?}")),
            "{r:?}"
        );
        assert!(
            r.body["expected"].is_string() || want == "not a column",
            "{r:?}"
        );
    }
    let r = s.get("/v1/price/1").await;
    assert!(r.body["cents"].is_i64(), "nothing was written: {r:?}");
    assert_eq!(
        s.get("/v1/counter/views").await.status,
        404,
        "nothing was queued"
    );
    s.stop().await;
}

/// A GET with extra header fields: `(status, headers, body text)`.
async fn get_with(url: String, fields: &[(&str, &str)]) -> (u16, BTreeMap<String, String>, String) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let mut req = ureq::http::Request::builder().method("GET").uri(url);
        for (k, v) in &fields {
            req = req.header(k, v);
        }
        let mut resp = agent.run(req.body(String::new()).unwrap()).unwrap();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let status = resp.status().as_u16();
        (
            status,
            headers,
            resp.body_mut().read_to_string().unwrap_or_default(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_http_caching_fields_etags_answer_304_and_versioned_urls_are_immutable() {
    let s = Server::embedded("http-caching").await;
    let (code, h, body) = get_with(s.url("/v1/product/42"), &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        h["cache-control"],
        "public, max-age=60, stale-while-revalidate=3600"
    );
    assert_eq!(h["cdn-cache-control"], "max-age=300");
    // The namespace, the entry, and the entry's tags (`tags = ["product:{key}", "category:{category}"]`).
    let keys: Vec<&str> = h["surrogate-key"].split(' ').collect();
    assert_eq!(keys[..2], ["product", "product:42"], "{keys:?}");
    assert!(
        keys[2].starts_with("category:") && keys.len() == 3,
        "{keys:?}"
    );
    assert_eq!(h["etag"], "\"v1\"");

    // The client's validator: 304 with the same fields, no body.
    let (code, h, body) = get_with(s.url("/v1/product/42"), &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!((code, body.as_str()), (304, ""));
    assert_eq!(h["etag"], "\"v1\"");
    assert_eq!(
        h["cache-control"],
        "public, max-age=60, stale-while-revalidate=3600"
    );
    let (code, _, _) = get_with(s.url("/v1/product/42"), &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(code, 200);

    // A versioned URL at the current version never changes.
    let (code, h, _) = get_with(s.url("/v1/product/42?v=1"), &[]).await;
    assert_eq!(code, 200);
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    // A write makes version 2: the old URL points at the new one, and no tier keeps the pointer.
    let r = s.send("PUT", "/v1/price/42", json!({"cents": 4242})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let (_, h, _) = get_with(s.url("/v1/price/42"), &[]).await;
    let v: u64 = h["etag"]
        .trim_matches('"')
        .trim_start_matches('v')
        .parse()
        .unwrap();
    let (code, h, _) = get_with(s.url(&format!("/v1/price/42?v={}", v - 1)), &[]).await;
    assert_eq!(code, 302);
    assert_eq!(h["location"], format!("/v1/price/42?v={v}"));
    assert_eq!(h["cache-control"], "no-cache");
    let (code, _, body) = get_with(s.url("/v1/price/42?v=x"), &[]).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad_version"), "{body}");

    // Private data is never stored downstream and carries no surrogate keys; a namespace without `http` says
    // nothing about caching.
    let r = s
        .send("PUT", "/v1/session/s1", json!({"user_id": 7, "data": "{}"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (code, h, _) = get_with(s.url("/v1/session/s1"), &[]).await;
    assert_eq!(code, 200);
    assert_eq!(h["cache-control"], "private, no-store");
    assert!(!h.contains_key("surrogate-key"), "{h:?}");
    let (_, h, _) = get_with(s.url("/v1/flag/1"), &[]).await;
    assert!(
        !h.contains_key("cache-control") && !h.contains_key("surrogate-key"),
        "{h:?}"
    );
    s.stop().await;
}

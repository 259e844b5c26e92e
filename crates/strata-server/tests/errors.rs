//! Errors say who was wrong: a value the database refuses (CHECK, NOT NULL, unique, foreign key, out of range,
//! numeric overflow) is a 4xx naming the field and the rule — through, aside and the write-behind check, on
//! SQLite and PostgreSQL — never a 502; and every 4xx the edge answers (a path that is not UTF-8, 404, 405, 413,
//! 414, 415, 431, also hyper's own) is JSON with an error code.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;

use common::InProcess;
use serde_json::Value;
use strata_server::Config;

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "strata-errors-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Server {
    addr: SocketAddr,
    inner: InProcess,
}

impl Server {
    async fn start(config: Config) -> Self {
        let inner = InProcess::start(&config).await;
        Self {
            addr: inner.addr,
            inner,
        }
    }

    async fn stop(self) {
        self.inner.stop().await;
    }

    /// One raw HTTP/1.1 request (`head` without the trailing blank line); `(status, content type, body)`.
    async fn raw(&self, head: String, body: Vec<u8>) -> (u16, String, Value) {
        let addr = self.addr;
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = format!("{head}\r\nhost: {addr}\r\nconnection: close\r\n").into_bytes();
            if !body.is_empty() {
                req.extend(format!("content-length: {}\r\n", body.len()).bytes());
            }
            req.extend(b"\r\n");
            req.extend(&body);
            // The server may answer (and close) before it read everything: a refused head or body.
            let _ = s.write_all(&req);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out).into_owned();
            let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let ct = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-type: ")
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
            (status, ct, body)
        })
        .await
        .unwrap()
    }

    async fn put(&self, path: &str, json: &str) -> (u16, Value) {
        let (status, _, body) = self
            .raw(
                format!("PUT {path} HTTP/1.1\r\ncontent-type: application/json"),
                json.as_bytes().to_vec(),
            )
            .await;
        (status, body)
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self
            .raw(format!("DELETE {path} HTTP/1.1"), Vec::new())
            .await;
        (status, body)
    }
}

/// A refusal: 422 `rejected` naming the field (when the database does) and the rule.
#[track_caller]
fn rejected(r: &(u16, Value), field: Option<&str>, rule: &str) {
    assert_eq!(
        (r.0, r.1["error"].as_str()),
        (422, Some("rejected")),
        "{r:?}"
    );
    assert_eq!(r.1["field"].as_str(), field, "{r:?}");
    let got = r.1["rule"].as_str().unwrap_or_default().to_lowercase();
    assert!(got.contains(&rule.to_lowercase()), "rule {rule:?}: {r:?}");
}

#[track_caller]
fn bad_value(r: &(u16, Value), field: &str) {
    assert_eq!(
        (r.0, r.1["error"].as_str(), r.1["field"].as_str()),
        (400, Some("bad_value"), Some(field)),
        "{r:?}"
    );
}

fn config_with(extra: &str, name: &str) -> Config {
    let src = format!("{}\n{extra}", strata_server::demo::EMBEDDED_CONFIG);
    let mut config = Config::parse(&src, "test.toml").unwrap();
    config.server.data_dir = temp_dir(name);
    config
}

/// The namespaces of one table in the three write modes that check before the database (`through`, `aside`)
/// or before the ack (`behind`).
fn namespaces(source: &str, table: &str) -> String {
    ["through", "aside", "behind"]
        .iter()
        .map(|mode| {
            format!(
                "[namespaces.item_{mode}]\ndescription = \"items\"\nsource = \"{source}\"\ntable = \"{table}\"\n\
                 write = \"{mode}\"\nttl = \"1m\"\n"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refusals_are_4xx_naming_field_and_rule() {
    let dir = temp_dir("sqlite-rules");
    let db = dir.join("rules.db");
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE maker (id INTEGER PRIMARY KEY, version INTEGER NOT NULL DEFAULT 1)",
        "INSERT INTO maker (id) VALUES (1)",
        "CREATE TABLE item (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, \
         cents INTEGER NOT NULL CONSTRAINT cents_positive CHECK (cents > 0), \
         maker INTEGER REFERENCES maker(id), version INTEGER NOT NULL DEFAULT 1)",
        "INSERT INTO item (id, sku, cents, maker) VALUES (1, 'a', 100, 1)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let extra = format!(
        "[sources.rules]\nsqlite = \"{}\"\n{}\n[namespaces.maker]\ndescription = \"makers\"\nsource = \"rules\"\n\
         table = \"maker\"\nwrite = \"through\"\nttl = \"1m\"\n",
        db.display(),
        namespaces("rules", "item")
    );
    let s = Server::start(config_with(&extra, "sqlite-rules-data")).await;
    for mode in ["through", "aside"] {
        let ns = format!("/v1/item_{mode}");
        assert_eq!(
            s.put(
                &format!("{ns}/2"),
                r#"{"sku": "b", "cents": 5, "maker": 1}"#
            )
            .await
            .0,
            200
        );
        rejected(
            &s.put(&format!("{ns}/3"), r#"{"sku": "c", "cents": -5}"#)
                .await,
            None,
            "cents_positive",
        );
        rejected(
            &s.put(&format!("{ns}/3"), r#"{"sku": "a", "cents": 5}"#)
                .await,
            Some("sku"),
            "unique",
        );
        rejected(
            &s.put(
                &format!("{ns}/3"),
                r#"{"sku": "d", "cents": 5, "maker": 99}"#,
            )
            .await,
            None,
            "foreign key",
        );
        bad_value(
            &s.put(&format!("{ns}/3"), r#"{"sku": null, "cents": 5}"#)
                .await,
            "sku",
        );
        bad_value(
            &s.put(&format!("{ns}/3"), r#"{"sku": "e", "cents": 1e300}"#)
                .await,
            "cents",
        );
        let r = s
            .put(&format!("{ns}/x"), r#"{"sku": "e", "cents": 5}"#)
            .await;
        assert_eq!(
            (r.0, r.1["error"].as_str()),
            (400, Some("bad_key")),
            "{r:?}"
        );
        s.delete(&format!("{ns}/2")).await;
    }
    // A delete the database refuses: the maker is still referenced.
    rejected(&s.delete("/v1/maker/1").await, None, "foreign key");
    // Write-behind: what the table's columns refuse is refused before the ack.
    bad_value(
        &s.put("/v1/item_behind/5", r#"{"sku": null, "cents": 5}"#)
            .await,
        "sku",
    );
    bad_value(
        &s.put("/v1/item_behind/5", r#"{"sku": "f", "cents": "5"}"#)
            .await,
        "cents",
    );
    bad_value(&s.put("/v1/item_behind/5", r#"{"cents": 5}"#).await, "sku");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusals_are_4xx_naming_field_and_rule() {
    let schema = strata_testkit::pg::unique_name("errors");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&strata_testkit::pg::url())
        .await
        .unwrap();
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.maker (id bigint PRIMARY KEY, version bigint NOT NULL DEFAULT 1)"),
        format!("INSERT INTO {schema}.maker (id) VALUES (1)"),
        format!(
            "CREATE TABLE {schema}.item (id bigint PRIMARY KEY, sku text NOT NULL UNIQUE, \
             cents integer NOT NULL CONSTRAINT cents_positive CHECK (cents > 0), price numeric(5,2), \
             maker bigint REFERENCES {schema}.maker(id), version bigint NOT NULL DEFAULT 1)"
        ),
        format!("INSERT INTO {schema}.item (id, sku, cents, maker) VALUES (1, 'a', 100, 1)"),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let extra = format!(
        "[sources.pg]\npostgres = \"{}\"\nmax_connections = 4\n{}\n[namespaces.maker]\ndescription = \"makers\"\n\
         source = \"pg\"\ntable = \"{schema}.maker\"\nwrite = \"through\"\nttl = \"1m\"\n",
        strata_testkit::pg::url(),
        namespaces("pg", &format!("{schema}.item"))
    );
    let s = Server::start(config_with(&extra, "pg-rules-data")).await;
    for mode in ["through", "aside"] {
        let ns = format!("/v1/item_{mode}");
        let r = s
            .put(
                &format!("{ns}/2"),
                r#"{"sku": "b", "cents": 5, "maker": 1}"#,
            )
            .await;
        assert_eq!(r.0, 200, "{r:?}");
        rejected(
            &s.put(&format!("{ns}/3"), r#"{"sku": "c", "cents": -5}"#)
                .await,
            None,
            "cents_positive",
        );
        rejected(
            &s.put(&format!("{ns}/3"), r#"{"sku": "a", "cents": 5}"#)
                .await,
            Some("sku"),
            "already exists",
        );
        rejected(
            &s.put(
                &format!("{ns}/3"),
                r#"{"sku": "d", "cents": 5, "maker": 99}"#,
            )
            .await,
            Some("maker"),
            "foreign key",
        );
        rejected(
            &s.put(
                &format!("{ns}/3"),
                r#"{"sku": "d", "cents": 5, "price": 12345.678}"#,
            )
            .await,
            None,
            "numeric field overflow",
        );
        bad_value(
            &s.put(&format!("{ns}/3"), r#"{"sku": "d", "cents": 3000000000}"#)
                .await,
            "cents",
        );
        bad_value(
            &s.put(&format!("{ns}/3"), r#"{"sku": null, "cents": 5}"#)
                .await,
            "sku",
        );
        let r = s
            .put(&format!("{ns}/x"), r#"{"sku": "e", "cents": 5}"#)
            .await;
        assert_eq!(
            (r.0, r.1["error"].as_str()),
            (400, Some("bad_key")),
            "{r:?}"
        );
        s.delete(&format!("{ns}/2")).await;
    }
    rejected(&s.delete("/v1/maker/1").await, Some("id"), "foreign key");
    bad_value(
        &s.put("/v1/item_behind/5", r#"{"sku": null, "cents": 5}"#)
            .await,
        "sku",
    );
    bad_value(
        &s.put("/v1/item_behind/5", r#"{"sku": "f", "cents": 3000000000}"#)
            .await,
        "cents",
    );
    s.stop().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_error_is_json_with_a_code() {
    let s = Server::start(config_with("", "edge")).await;
    let long = "1".repeat(20 * 1024);
    let big_header = "x".repeat(40 * 1024);
    let huge_header = "x".repeat(2 << 20);
    let many: String = (0..150).map(|i| format!("\r\nx-h{i}: 1")).collect();
    for (head, body, status, code) in [
        (
            "GET /v1/price/%FF HTTP/1.1".to_owned(),
            Vec::new(),
            400,
            "bad_path",
        ),
        (
            "GET /v1/nope/1/2 HTTP/1.1".to_owned(),
            Vec::new(),
            404,
            "no_route",
        ),
        (
            "PATCH /v1/price/1 HTTP/1.1".to_owned(),
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "PUT / HTTP/1.1\r\ncontent-type: text/plain".to_owned(),
            b"x".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "PUT /v1/price/1 HTTP/1.1\r\ncontent-type: text/plain".to_owned(),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "PUT /v1/price/1 HTTP/1.1\r\ncontent-type: application/json".to_owned(),
            vec![b' '; 2 << 20],
            413,
            "body_too_large",
        ),
        (
            format!("GET /v1/price/{long} HTTP/1.1"),
            Vec::new(),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /v1/price/{} HTTP/1.1", "1".repeat(70_000)),
            Vec::new(),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /v1/price/1 HTTP/1.1\r\nx-big: {big_header}"),
            Vec::new(),
            431,
            "headers_too_large",
        ),
        (
            format!("GET /v1/price/1 HTTP/1.1{many}"),
            Vec::new(),
            431,
            "headers_too_large",
        ),
        (
            format!("GET /v1/price/1 HTTP/1.1\r\nx-big: {huge_header}"),
            Vec::new(),
            431,
            "headers_too_large",
        ),
        (
            "GET /v1/price/1 HTTP/1.1\r\nbad header".to_owned(),
            Vec::new(),
            400,
            "bad_request",
        ),
    ] {
        let shown = head.chars().take(60).collect::<String>();
        let (got, ct, json) = s.raw(head, body).await;
        assert_eq!(
            (got, ct.as_str(), json["error"].as_str()),
            (status, "application/json", Some(code)),
            "{shown}: {json}"
        );
        assert!(json["message"].is_string(), "{shown}: {json}");
    }
    // The document gives the limits this server enforces.
    let (_, _, doc) = s.raw("GET /openapi.json HTTP/1.1".into(), Vec::new()).await;
    let key = &doc["paths"]["/v1/session/{key}"]["parameters"][0]["schema"];
    assert_eq!(key["maxLength"], 512, "{key}");
    let put = &doc["paths"]["/v1/price/{key}"]["put"]["responses"];
    for status in [
        "400", "401", "403", "405", "413", "414", "415", "422", "431", "502", "503", "504",
    ] {
        assert!(put.get(status).is_some(), "PUT documents {status}: {put}");
    }
    s.stop().await;
}

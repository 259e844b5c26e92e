//! Two `strata serve` processes on one Redis and one PostgreSQL (a schema, key prefix and slot of this test's
//! own): a write through either node is seen by the other, and an `UPDATE` made with `psql` reaches both through
//! change data capture (each node runs a consumer; the second waits as a standby while the first holds the slot).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_testkit::pg::{psql, unique_name as unique, url as pg_url};

fn redis_url() -> String {
    std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A `strata serve` child process.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(config: &std::path::Path, data_dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("strata exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("strata listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining its log so the pipe never fills.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self { child, base }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let mut resp = agent.run(req).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn cents(&self, key: &str) -> i64 {
        let (status, body) = self.call("GET", &format!("/v1/price/{key}"), None);
        assert_eq!(status, 200, "{body}");
        body["cents"].as_i64().unwrap()
    }

    /// Waits until this node serves `want` for `key`.
    fn wait_cents(&self, key: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.cents(key);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still serves {got} for {key}, want {want}",
                self.base
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM: graceful shutdown.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn two_servers_on_one_redis_and_postgres_keep_each_others_l1_coherent() {
    let name = unique("cluster");
    psql(&format!(
        "CREATE SCHEMA {name}; \
         CREATE TABLE {name}.price (id bigint PRIMARY KEY, cents bigint NOT NULL, currency text NOT NULL DEFAULT 'EUR', \
         version bigint NOT NULL DEFAULT 1); \
         INSERT INTO {name}.price (id, cents) SELECT i, 100 * i FROM generate_series(1, 10) i"
    ));
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[sources.main]
postgres = "{pg}"
max_connections = 4

[namespaces.price]
source = "main"
table = "{name}.price"
write = "through"
ttl = "10m"

[cdc]
source = "main"
slot = "{name}"
publication = "{name}"

[[cdc.rules]]
table = "{name}.price"
namespace = "price"
version_column = "version"
"#,
            redis = redis_url(),
            pg = pg_url(),
        ),
    )
    .unwrap();
    let a = Node::start(&config, &dir.join("a"));
    let b = Node::start(&config, &dir.join("b"));

    // Both nodes cache the price.
    assert_eq!((a.cents("1"), b.cents("1")), (100, 100));
    assert_eq!((a.cents("2"), b.cents("2")), (200, 200));

    // A write through A: B drops its copy (bus) and reads the new one (L2).
    let (status, body) = a.call(
        "PUT",
        "/v1/price/1",
        Some(json!({"cents": 150, "currency": "EUR"})),
    );
    assert_eq!(status, 200, "{body}");
    b.wait_cents("1", 150);
    assert_eq!(a.cents("1"), 150);

    // And the other way round.
    let (status, _) = b.call(
        "PUT",
        "/v1/price/2",
        Some(json!({"cents": 250, "currency": "EUR"})),
    );
    assert_eq!(status, 200);
    a.wait_cents("2", 250);

    // A change made outside Strata reaches both through CDC.
    psql(&format!(
        "UPDATE {name}.price SET cents = 999, version = version + 1 WHERE id = 1"
    ));
    a.wait_cents("1", 999);
    b.wait_cents("1", 999);

    a.stop();
    b.stop();
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{name}' AND NOT active; \
         DROP PUBLICATION IF EXISTS {name}; DROP SCHEMA {name} CASCADE"
    ));
    let _ = std::fs::remove_dir_all(dir);
}

//! A cluster a newcomer can start, through the `strata` binary: `strata init` creates the example config's tables
//! in an empty schema and `serve --config` then answers from them (and names missing tables before that);
//! `serve --redis --postgres` (no config) takes a token and runs CDC; `strata cdc drop-slot` removes a slot and
//! its publication, refusing while the slot is in use. Each test has its own schema (through the URL's
//! `search_path`), Redis prefix and replication slot.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_testkit::pg::{psql, unique_name as unique, url as pg_url};

fn redis_url() -> String {
    std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test database with `schema` first on the search path.
fn schema_url(schema: &str) -> String {
    let url = pg_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// One scalar from `psql` (unaligned, tuples only).
fn psql_value(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            &pg_url(),
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The example config reads its token from $STRATA_TOKEN; `serve` refuses to start without it.
fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_TOKEN", "newcomer")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `strata serve` child process.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("STRATA_TOKEN")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let base = loop {
            let Some(line) = lines.next() else {
                panic!("strata exited before listening:\n{}", seen.join("\n"));
            };
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("strata listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            seen.push(line);
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self { child, base }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
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

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Waits until `path`'s `field` is `want`.
    fn wait_for(&self, path: &str, field: &str, want: Value) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.get(path)[field].clone();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still serves {field} = {got} for {path}, want {want}",
                self.base
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM: graceful shutdown (the CDC consumer lets go of its slot).
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

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn slot_exists(slot: &str) -> bool {
    psql_value(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    )) == "1"
}

fn publication_exists(publication: &str) -> bool {
    psql_value(&format!(
        "SELECT count(*) FROM pg_publication WHERE pubname = '{publication}'"
    )) == "1"
}

/// `examples/strata.toml`, moved onto this test's schema, Redis prefix and slot (each replacement must apply, so
/// a change to the example shows up here).
fn example_config(name: &str) -> String {
    let mut src = include_str!("../../../examples/strata.toml").to_owned();
    for (from, to) in [
        (
            "postgres = \"postgres://postgres@127.0.0.1:5432/test\"".to_owned(),
            format!("postgres = \"{}\"", schema_url(name)),
        ),
        (
            "url = \"redis://127.0.0.1:6379\"".to_owned(),
            format!("url = \"{}\"", redis_url()),
        ),
        ("prefix = \"shop\"".into(), format!("prefix = \"{name}\"")),
        (
            "slot = \"strata_shop\"".into(),
            format!("slot = \"{name}\""),
        ),
        (
            "publication = \"strata_shop\"".into(),
            format!("publication = \"{name}\""),
        ),
        ("table = \"public.".into(), format!("table = \"{name}.")),
    ] {
        assert!(src.contains(&from), "examples/strata.toml lost {from}");
        src = src.replace(&from, &to);
    }
    src
}

#[test]
fn init_creates_the_example_tables_and_serve_answers_from_them() {
    let name = unique("init");
    psql(&format!("CREATE SCHEMA {name}"));
    let dir = temp_dir(&name);
    let config = dir.join("strata.toml");
    std::fs::write(&config, example_config(&name)).unwrap();
    let config_arg = config.to_str().unwrap();
    let data_dir = dir.join("data");
    let data_arg = data_dir.to_str().unwrap();

    // Before init: serve refuses, naming the missing tables and the command that creates them.
    let out = strata(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config_arg,
        "--data-dir",
        data_arg,
    ]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    for want in [
        "missing tables",
        "\"counter\"",
        "\"price\"",
        "\"permission\"",
    ] {
        assert!(all.contains(want), "{want}: {all}");
    }
    assert!(
        all.contains(&format!("strata init --config {config_arg}")),
        "{all}"
    );

    // init creates and seeds every table the example's namespaces name; a second run changes nothing.
    let out = strata(&["init", "--config", config_arg]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("table \"product\": created, seeded 1000 rows"),
        "{all}"
    );
    assert!(
        all.contains("table \"price\": created, seeded 1000 rows"),
        "{all}"
    );
    assert!(all.contains("table \"counter\": created (empty)"), "{all}");
    assert!(
        all.contains("table \"permission\": created, seeded 3 rows"),
        "{all}"
    );
    let out = strata(&["init", "--config", config_arg]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("table \"price\": exists with rows, left alone"),
        "{all}"
    );
    assert!(!all.contains("created"), "{all}");
    assert_eq!(
        psql_value(&format!("SELECT count(*) FROM {name}.price")),
        "1000"
    );
    let tables = psql_value(&format!(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = '{name}'"
    ));
    assert_eq!(
        tables,
        "counter,flag,inventory,permission,price,product,session"
    );

    // serve on the example config (its token from $STRATA_TOKEN: without it, the start is refused) now
    // answers, from the table, the join and through CDC.
    let node = Node::start(
        &["--config", config_arg, "--data-dir", data_arg],
        &[("STRATA_TOKEN", "newcomer")],
    );
    let price = node.get("/v1/price/1");
    assert_eq!(
        (price["cents"].clone(), price["currency"].clone()),
        (json!(1036), json!("EUR"))
    );
    assert_eq!(node.get("/v1/listing/1")["name"], "Product 1");
    assert_eq!(node.get("/v1/flag/new-checkout")["enabled"], 1);
    let (status, body) = node.call("PUT", "/v1/counter/views", Some(json!({"n": 1})), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = node.call(
        "PUT",
        "/v1/counter/views",
        Some(json!({"n": 1})),
        Some("newcomer"),
    );
    assert!(status < 300, "{status} {body}");
    psql(&format!(
        "UPDATE {name}.price SET cents = 5, version = version + 1 WHERE id = 1"
    ));
    node.wait_for("/v1/price/1", "cents", json!(5));
    drop(node);

    let out = strata(&["cdc", "drop-slot", "--config", config_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!slot_exists(&name));
    psql(&format!("DROP SCHEMA {name} CASCADE"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn serve_without_a_config_takes_a_token_and_runs_cdc() {
    let name = unique("token");
    psql(&format!("CREATE SCHEMA {name}"));
    let dir = temp_dir(&name);
    let pg = schema_url(&name);
    let redis = redis_url();
    let args = |node: &str| -> Vec<String> {
        [
            "--redis",
            redis.as_str(),
            "--redis-prefix",
            name.as_str(),
            "--postgres",
            pg.as_str(),
            "--slot",
            name.as_str(),
            "--data-dir",
            dir.join(node).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a_args = [args("a"), vec!["--token".into(), "secret".into()]].concat();
    let a = Node::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let b_args = args("b");
    let b = Node::start(
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("STRATA_TOKEN", "from-env")],
    );

    let put = |node: &Node, token: Option<&str>| {
        node.call(
            "PUT",
            "/v1/price/1",
            Some(json!({"cents": 4200, "currency": "EUR"})),
            token,
        )
        .0
    };
    // No token: 401; the other node's token: 403.
    assert_eq!(put(&a, None), 401);
    assert_eq!(put(&a, Some("from-env")), 403);
    assert_eq!(put(&b, None), 401);
    assert_eq!(put(&b, Some("secret")), 403);
    assert_eq!(
        a.get("/v1/price/1")["cents"],
        1036,
        "a refused write changed nothing"
    );
    assert_eq!(b.get("/v1/price/1")["cents"], 1036);
    assert_eq!(put(&a, Some("secret")), 200);
    b.wait_for("/v1/price/1", "cents", json!(4200));
    assert_eq!(put(&b, Some("from-env")), 200);

    // The demo catalog's CDC consumer: a change made with psql reaches both nodes.
    psql(&format!(
        "UPDATE {name}.price SET cents = 77, version = version + 1 WHERE id = 2"
    ));
    a.wait_for("/v1/price/2", "cents", json!(77));
    b.wait_for("/v1/price/2", "cents", json!(77));
    drop(a);
    drop(b);

    let out = strata(&["cdc", "drop-slot", "--postgres", &pg, "--slot", &name]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(&format!("dropped replication slot {name}")),
        "{all}"
    );
    assert!(
        all.contains(&format!("dropped publication {name}")),
        "{all}"
    );
    psql(&format!("DROP SCHEMA {name} CASCADE"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn drop_slot_refuses_an_active_slot_and_drops_an_idle_one() {
    let name = unique("dropslot");
    psql(&format!(
        "CREATE SCHEMA {name}; \
         CREATE TABLE {name}.price (id bigint PRIMARY KEY, cents bigint NOT NULL, version bigint NOT NULL DEFAULT 1); \
         INSERT INTO {name}.price (id, cents) VALUES (1, 100)"
    ));
    let dir = temp_dir(&name);
    let config: &Path = &dir.join("strata.toml");
    std::fs::write(
        config,
        format!(
            r#"
[sources.main]
postgres = "{pg}"
max_connections = 2

[namespaces.price]
source = "main"
table = "{name}.price"
write = "through"

[cdc]
source = "main"
slot = "{name}"
publication = "{name}"

[[cdc.rules]]
table = "{name}.price"
namespace = "price"
version_column = "version"
"#,
            pg = pg_url(),
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let data = dir.join("data");
    let node = Node::start(
        &["--config", config_arg, "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_eq!(node.get("/v1/price/1")["cents"], 100);
    // The server's consumer holds the slot once it streams.
    let deadline = Instant::now() + Duration::from_secs(15);
    while psql_value(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}' AND active"
    )) != "1"
    {
        assert!(Instant::now() < deadline, "the slot never became active");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = strata(&["cdc", "drop-slot", "--config", config_arg]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("is active"), "{all}");
    assert!(all.contains("nothing was dropped"), "{all}");
    assert!(slot_exists(&name) && publication_exists(&name));

    drop(node);
    let out = strata(&["cdc", "drop-slot", "--config", config_arg]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(&format!("dropped replication slot {name}")),
        "{all}"
    );
    assert!(
        all.contains(&format!("dropped publication {name}")),
        "{all}"
    );
    assert!(!slot_exists(&name) && !publication_exists(&name));
    // Idempotent.
    let out = strata(&["cdc", "drop-slot", "--config", config_arg]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("no replication slot"), "{all}");

    psql(&format!("DROP SCHEMA {name} CASCADE"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_timeout_names_the_tier_not_a_load() {
    let e = strata_core::Error::Timeout {
        tier: strata_core::Tier::L2,
        after: Duration::from_millis(250),
    };
    assert_eq!(e.to_string(), "the l2 call timed out after 250ms");
}

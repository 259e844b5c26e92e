//! One change, every tier: an `UPDATE` made with `psql` changes a product's price, and — through change data
//! capture, one CDC rule whose tag template (`product:{id}`) is mirrored into the edge tier — the data API on both
//! nodes, the proxied product page on both nodes, and the CDN in front (a stand-in that a `[[cdn]]` webhook
//! tells) all stop serving the old price within the measured window.
//!
//! Two `strata serve` processes on one Redis and one PostgreSQL (a schema, key prefix and slot of this test's own).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_testkit::pg::{psql, unique_name as unique, url as pg_url};

fn redis_url() -> String {
    std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The product page origin (reads the price from PostgreSQL, the source of truth) and a stand-in CDN that records
/// the tags it is told to purge, on one runtime of their own.
fn start_origin_and_cdn(schema: String) -> (SocketAddr, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let purged: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = purged.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&pg_url())
                .await
                .unwrap();
            let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let cdn = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((origin.local_addr().unwrap(), cdn.local_addr().unwrap()))
                .unwrap();
            let page = axum::Router::new().route(
                "/product/{id}",
                axum::routing::get(move |axum::extract::Path(id): axum::extract::Path<i64>| {
                    let (pool, schema) = (pool.clone(), schema.clone());
                    async move {
                        let cents: i64 = sqlx::query_scalar(&format!(
                            "SELECT cents FROM {schema}.price WHERE id = $1"
                        ))
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                        (
                            [
                                ("cache-control", "max-age=3600".to_string()),
                                ("surrogate-key", format!("product:{id}")),
                            ],
                            format!("product {id} costs {cents}"),
                        )
                    }
                }),
            );
            let hook = axum::Router::new().fallback(move |body: String| {
                let p = p.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    for t in v["values"].as_array().into_iter().flatten() {
                        p.lock().push(t.as_str().unwrap_or("").to_string());
                    }
                    "{}"
                }
            });
            tokio::spawn(async move { axum::serve(cdn, hook).await.unwrap() });
            axum::serve(origin, page).await.unwrap();
        });
    });
    let (origin, cdn) = rx.recv().unwrap();
    (origin, cdn, purged)
}

fn get(url: &str) -> (u16, String) {
    common::call("GET", url, "")
}

#[test]
fn an_update_made_with_psql_reaches_the_data_api_the_proxied_page_on_every_node_and_the_cdn() {
    let name = unique("every_tier");
    psql(&format!(
        "CREATE SCHEMA {name}; \
         CREATE TABLE {name}.price (id bigint PRIMARY KEY, cents bigint NOT NULL, currency text NOT NULL DEFAULT 'EUR', \
         version bigint NOT NULL DEFAULT 1); \
         INSERT INTO {name}.price (id, cents) SELECT i, 100 * i FROM generate_series(1, 50) i"
    ));
    let (origin, cdn, purged) = start_origin_and_cdn(name.clone());
    let dir = common::data_dir(&name);
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
tags = ["product:{{id}}"]

[proxy]
listen = "127.0.0.1:0"

[[proxy.routes]]
name = "shop"
origin = "http://{origin}"

[[cdn]]
name = "cdn"
kind = "webhook"
url = "http://{cdn}/purge"
"#,
            redis = redis_url(),
            pg = pg_url(),
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let start = |d: &str| {
        let args = ["--config", &config_arg, "--proxy-listen", "127.0.0.1:0"];
        common::serve(&dir.join(d), &args).unwrap()
    };
    let nodes = [start("a"), start("b")];

    // Every tier holds the old price: the data entry and the page, on both nodes.
    for n in &nodes {
        let (code, body) = get(&format!("{}/v1/price/42", n.base));
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("4200"), "{body}");
        let proxy = n.proxy.clone().unwrap();
        for _ in 0..2 {
            let (code, body) = get(&format!("{proxy}/product/42"));
            assert_eq!((code, body.as_str()), (200, "product 42 costs 4200"));
        }
    }
    let page_hits = |n: &common::Running| {
        let (_, stats) = get(&format!("{}/v1/_stats", n.base));
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        v["proxy"]["routes"][0]["hits"].as_u64().unwrap()
    };
    assert!(
        nodes.iter().all(|n| page_hits(n) >= 1),
        "the page is cached on both nodes"
    );

    // The change, made behind Strata's back.
    let t0 = Instant::now();
    psql(&format!(
        "UPDATE {name}.price SET cents = 4321, version = version + 1 WHERE id = 42"
    ));
    let deadline = t0 + Duration::from_secs(15);
    let mut done = [None::<Duration>; 5];
    while done.iter().any(Option::is_none) {
        for (i, n) in nodes.iter().enumerate() {
            if done[i].is_none() && get(&format!("{}/v1/price/42", n.base)).1.contains("4321") {
                done[i] = Some(t0.elapsed());
            }
            let proxy = n.proxy.clone().unwrap();
            if done[2 + i].is_none()
                && get(&format!("{proxy}/product/42")).1 == "product 42 costs 4321"
            {
                done[2 + i] = Some(t0.elapsed());
            }
        }
        if done[4].is_none() && purged.lock().iter().any(|t| t == "product:42") {
            done[4] = Some(t0.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "not every tier had the new price after 15 s: {done:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = |d: Option<Duration>| d.unwrap().as_secs_f64() * 1000.0;
    println!(
        "psql_to_every_tier data_a_ms={:.0} data_b_ms={:.0} page_a_ms={:.0} page_b_ms={:.0} cdn_ms={:.0}",
        ms(done[0]),
        ms(done[1]),
        ms(done[2]),
        ms(done[3]),
        ms(done[4])
    );
    // Another product's page was not touched.
    let proxy = nodes[0].proxy.clone().unwrap();
    let before = page_hits(&nodes[0]);
    get(&format!("{proxy}/product/7"));
    get(&format!("{proxy}/product/7"));
    assert!(page_hits(&nodes[0]) > before);

    drop(nodes);
    // The killed nodes' walsenders end on their own; drop the slot once it is free.
    for _ in 0..50 {
        let out = std::process::Command::new("psql")
            .arg(pg_url())
            .args(["-tAc", &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}' AND active")])
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{name}' AND NOT active; \
         DROP PUBLICATION IF EXISTS {name}; DROP SCHEMA {name} CASCADE"
    ));
    let _ = std::fs::remove_dir_all(dir);
}

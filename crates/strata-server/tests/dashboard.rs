//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) loads `/` from a server on port 0
//! while traffic runs, lets the page poll for a few (virtual) seconds, and the rendered DOM must hold every chart
//! with data points, the namespace table, and the status line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;

use common::{chromium, dump_dom, InProcess};
use strata_server::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_live_charts_in_a_browser() {
    let browser = chromium();
    let dir = std::env::temp_dir().join(format!("strata-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config::embedded(&dir);
    let server = InProcess::start(&config).await;
    let addr = server.addr;

    // Traffic while the page polls: reads of a few hot products (hits) and some new ones (loads).
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let running = running.clone();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                i += 1;
                let key = if i % 5 == 0 { i % 1000 + 1 } else { i % 10 + 1 };
                let _ = agent.get(&format!("http://{addr}/v1/product/{key}")).call();
                if i % 50 == 0 {
                    let _ = agent
                        .put(&format!("http://{addr}/v1/counter/views"))
                        .header("content-type", "application/json")
                        .send(format!("{{\"n\": {i}}}"));
                }
            }
        })
    };
    let url = format!("http://{addr}/?interval=200");
    let out = tokio::task::spawn_blocking(move || dump_dom(&browser, &url, 4000))
        .await
        .unwrap();
    running.store(false, Ordering::Relaxed);
    traffic.await.unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !dom.is_empty(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        dom.contains("<th>write tag</th>"),
        "the purge counters are on the page:\n{dom}"
    );
    assert!(
        dom.contains("<th>source</th>") && dom.contains("<td>—</td>"),
        "each namespace's source light is on the page (none is protected here):\n{dom}"
    );
    for chart in ["tiers", "namespaces", "loads", "stale", "bus", "behind"] {
        let marker = format!("id=\"chart-{chart}\" data-points=\"");
        let at = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("chart {chart} missing:\n{dom}"));
        let n: usize = dom[at + marker.len()..]
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n >= 3, "chart {chart} has {n} data points");
    }
    // The hit-ratio chart draws real values: some point of the "all" series is above the baseline.
    let all = dom
        .split("data-name=\"all\"")
        .nth(1)
        .and_then(|s| s.split("points=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .expect("the `all` series");
    let ys: Vec<f64> = all
        .split_whitespace()
        .filter_map(|p| p.split(',').nth(1)?.parse().ok())
        .collect();
    assert!(
        ys.len() >= 3 && ys.iter().any(|y| *y < 140.0),
        "hit ratios all zero: {all}"
    );
    assert!(dom.contains("6 namespaces"), "status line: {dom}");
    for ns in [
        "product",
        "price",
        "inventory",
        "session",
        "flag",
        "counter",
    ] {
        assert!(
            dom.contains(&format!("<td>{ns}</td>")),
            "{ns} not in the table"
        );
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

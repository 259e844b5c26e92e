//! Rate limits through the real server: a namespace's `429` with `Retry-After` and the IETF `RateLimit` /
//! `RateLimit-Policy` fields, the limiter as a service (`POST /v1/_limits/{name}`) shared by two nodes on one
//! Redis, clients' mistakes as 4xx that name them, and config errors located.

mod common;

use std::time::Duration;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// `(status, ratelimit, ratelimit-policy, retry-after, body)`.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, String, String, String) {
    let mut req = ureq::http::Request::builder().method("GET").uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut r = agent().run(req.body(String::new()).unwrap()).unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (a, b, c) = (h("ratelimit"), h("ratelimit-policy"), h("retry-after"));
    let status = r.status().as_u16();
    (
        status,
        a,
        b,
        c,
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(&file, text).unwrap();
    file
}

const LIMITED: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[limits.api]
algorithm = "fixed_window"
limit = 3
per = "1m"
key = "ip"

[limits.calls]
algorithm = "token_bucket"
limit = 10
per = "1h"
burst = 5
key = "route"

[namespaces.session]
rate_limit = "api"
"#;

#[test]
fn a_limited_namespace_answers_429_with_retry_after_and_ratelimit_fields() {
    let dir = common::data_dir("limits-ns");
    let file = config(&dir, LIMITED);
    let running = common::serve(&dir, &["--config", file.to_str().unwrap()]).unwrap();
    let url = format!("{}/v1/session/s1", running.base);
    // The client is named by X-Forwarded-For: the peer (127.0.0.1) is a trusted proxy.
    let alice = [("x-forwarded-for", "203.0.113.7")];
    for i in 0..3 {
        let (status, rl, policy, _, _) = get(&url, &alice);
        assert_eq!(status, 404, "request {i}: admitted (the key is absent)");
        assert_eq!(policy, "\"api\";q=3;w=60");
        assert!(rl.starts_with(&format!("\"api\";r={};t=", 2 - i)), "{rl}");
    }
    let (status, rl, _, retry, body) = get(&url, &alice);
    assert_eq!(status, 429, "{body}");
    assert!(rl.starts_with("\"api\";r=0;t="), "{rl}");
    let retry: u64 = retry.parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error"].as_str(), v["limit"].as_str()),
        (Some("rate_limited"), Some("api"))
    );
    // Another client has its own budget.
    let (status, ..) = get(&url, &[("x-forwarded-for", "198.51.100.1")]);
    assert_eq!(status, 404);
    // Namespaces without a limit are not limited.
    let (status, rl, ..) = get(&format!("{}/v1/_stats", running.base), &alice);
    assert_eq!((status, rl.as_str()), (200, ""));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_limiter_as_a_service_is_shared_by_two_nodes_on_one_redis_and_names_mistakes() {
    let redis =
        std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "strata-limits-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let text = format!("{LIMITED}\n[redis]\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n");
    let dir_a = common::data_dir("limits-svc-a");
    let dir_b = common::data_dir("limits-svc-b");
    let (fa, fb) = (config(&dir_a, &text), config(&dir_b, &text));
    let a = common::serve(&dir_a, &["--config", fa.to_str().unwrap()]).unwrap();
    let b = common::serve(&dir_b, &["--config", fb.to_str().unwrap()]).unwrap();
    let take = |base: &str, body: &str| {
        let (code, text) = common::call("POST", &format!("{base}/v1/_limits/calls"), body);
        (
            code,
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|_| panic!("{text}")),
        )
    };
    let mut admitted = 0;
    for i in 0..8 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (code, v) = take(base, r#"{"key": "user-7"}"#);
        assert_eq!(code, 200, "{v}");
        if v["allowed"].as_bool().unwrap() {
            admitted += 1;
        } else {
            assert!(v["retry_after_ms"].as_u64().unwrap() > 0, "{v}");
        }
        assert_eq!(v["fallback"], false, "{v}");
    }
    assert_eq!(admitted, 5, "a burst of 5 across both nodes");
    let (code, v) = take(&a.base, r#"{"key": "user-8", "cost": 5}"#);
    assert_eq!(
        (code, v["allowed"].as_bool(), v["remaining"].as_u64()),
        (200, Some(true), Some(0))
    );

    let (code, v) = take(&a.base, r#"{"key": ""}"#);
    assert_eq!((code, v["error"].as_str()), (400, Some("bad_key")), "{v}");
    let (code, v) = take(&a.base, r#"{"key": "k", "cost": 1000000000}"#);
    assert_eq!((code, v["error"].as_str()), (400, Some("bad_cost")), "{v}");
    let (code, v) = take(&a.base, r#"{"kee": "k"}"#);
    assert_eq!(code, 400, "{v}");
    let (code, text) = common::call(
        "POST",
        &format!("{}/v1/_limits/nope", a.base),
        r#"{"key": "k"}"#,
    );
    assert_eq!(code, 404, "{text}");
    assert!(
        text.contains("unknown_limit") && text.contains("calls"),
        "{text}"
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}

#[test]
fn limit_config_errors_are_located() {
    for (text, field) in [
        (
            "[limits.api]\nlimit = 0\nper = \"1s\"\n",
            "limits.api.limit",
        ),
        (
            "[limits.api]\nlimit = 5\nper = \"1s\"\nkey = \"user\"\n",
            "limits.api.key",
        ),
        (
            "[limits.api]\nlimit = 5\nper = \"1s\"\nalgorithm = \"random\"\n",
            "algorithm",
        ),
        (
            "[namespaces.s]\nrate_limit = \"nope\"\n",
            "namespaces.s.rate_limit",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
            "server.trusted_proxies[0]",
        ),
        ("[namespaces.s]\nmax_loads = 0\n", "namespaces.s.max_loads"),
        (
            "[namespaces.s]\nbreaker_failures = 3\nbreaker_open_for = \"0s\"\n",
            "namespaces.s.breaker_open_for",
        ),
    ] {
        let e = strata_server::Config::parse(text, "limits.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{text}: {e}");
    }
}

//! Config errors are located: examples/strata.toml mutated in many ways, each error checked to name the line
//! (and a column on it) of the key it is about and its dotted field; bounds on durations, sizes and counts; the
//! checks `serve` makes at start (the token variable, protected mode) and what `check-config` says about them.

mod common;

use std::path::PathBuf;

use strata_server::Config;

const EXAMPLE: &str = include_str!("../../../examples/strata.toml");

/// `(what to replace, replacement, the text on the line the error must point at (its last occurrence), field)`.
/// An empty "what" appends the replacement.
const MUTATIONS: &[(&str, &str, &str, &str)] = &[
    // Durations past their bounds: a TTL of 580 billion years used to pass and then panic `serve`; a billion
    // years wrapped the expiry so that every read missed.
    (
        "ttl = \"45s\"",
        "ttl = \"580000000000y\"",
        "580000000000y",
        "namespaces.product.ttl",
    ),
    (
        "ttl = \"30m\"",
        "ttl = \"1000000000y\"",
        "1000000000y",
        "namespaces.session.ttl",
    ),
    (
        "stale_for = \"30s\"",
        "stale_for = \"11y\"",
        "stale_for",
        "namespaces.product.stale_for",
    ),
    (
        "fail_safe_for = \"10m\"",
        "fail_safe_for = \"4000d\"",
        "fail_safe_for",
        "namespaces.product.fail_safe_for",
    ),
    (
        "negative_ttl = \"30s\"",
        "negative_ttl = \"20y\"",
        "negative_ttl",
        "namespaces.permission.negative_ttl",
    ),
    (
        "soft_timeout = \"200ms\"",
        "soft_timeout = \"2h\"",
        "soft_timeout",
        "namespaces.inventory.soft_timeout",
    ),
    (
        "soft_timeout = \"200ms\"",
        "soft_timeout = \"200ms\"\nhard_timeout = \"0s\"",
        "hard_timeout",
        "namespaces.inventory.hard_timeout",
    ),
    (
        "soft_timeout = \"200ms\"",
        "soft_timeout = \"2s\"\nhard_timeout = \"1s\"",
        "soft_timeout",
        "namespaces.inventory.soft_timeout",
    ),
    (
        "timeout = \"250ms\"",
        "timeout = \"0ms\"",
        "timeout = \"0ms\"",
        "redis.timeout",
    ),
    (
        "timeout = \"250ms\"",
        "timeout = \"5h\"",
        "timeout = \"5h\"",
        "redis.timeout",
    ),
    (
        "linger = \"20ms\"",
        "linger = \"2h\"",
        "linger",
        "write_behind.linger",
    ),
    (
        "fsync = \"always\"",
        "fsync = \"2h\"",
        "fsync",
        "write_behind.fsync",
    ),
    (
        "ttl = \"45s\"",
        "ttl = \"soon\"",
        "ttl = \"soon\"",
        "namespaces.product.ttl",
    ),
    // Sizes and counts.
    (
        "max_body = \"1MiB\"",
        "max_body = \"2GiB\"",
        "max_body",
        "server.max_body",
    ),
    (
        "max_body = \"1MiB\"",
        "max_body = 0",
        "max_body",
        "server.max_body",
    ),
    (
        "budget = \"512MiB\"",
        "budget = \"2048GiB\"",
        "budget = \"2048GiB\"",
        "l1.budget",
    ),
    (
        "l1_budget = \"128MiB\"",
        "l1_budget = \"2048GiB\"",
        "l1_budget",
        "namespaces.price.l1_budget",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 0",
        "max_key_len",
        "server.max_key_len",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 100000",
        "max_key_len",
        "server.max_key_len",
    ),
    (
        "max_pending = 100000",
        "max_pending = 0",
        "max_pending",
        "write_behind.max_pending",
    ),
    (
        "max_pending = 100000",
        "max_pending = 1000000000",
        "max_pending",
        "write_behind.max_pending",
    ),
    (
        "max_connections = 16",
        "max_connections = 0",
        "max_connections = 0",
        "sources.main.max_connections",
    ),
    (
        "max_connections = 16",
        "max_connections = 100000",
        "max_connections = 100000",
        "sources.main.max_connections",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 512\nmax_connections = 0",
        "max_connections = 0",
        "server.max_connections",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 512\nmax_requests_per_connection = 0",
        "max_requests_per_connection",
        "server.max_requests_per_connection",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 512\nheader_read_timeout = \"2h\"",
        "header_read_timeout",
        "server.header_read_timeout",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 512\nidle_timeout = \"0s\"",
        "idle_timeout",
        "server.idle_timeout",
    ),
    (
        "ttl = \"45s\"",
        "ttl = \"45s\"\njitter = 3.0",
        "jitter",
        "namespaces.product.jitter",
    ),
    // Access control.
    (
        "token_env = \"STRATA_TOKEN\"",
        "token = \"\"",
        "token = \"\"",
        "server.token",
    ),
    (
        "token_env = \"STRATA_TOKEN\"",
        "token = \"two words\"",
        "two words",
        "server.token",
    ),
    (
        "token_env = \"STRATA_TOKEN\"",
        "token = \"s3cret\"\ntoken_env = \"STRATA_TOKEN\"",
        "token_env",
        "server.token_env",
    ),
    (
        "token_env = \"STRATA_TOKEN\"",
        "token_env = \"\"",
        "token_env",
        "server.token_env",
    ),
    (
        "listen = \"127.0.0.1:8700\"\ntoken_env = \"STRATA_TOKEN\"",
        "listen = \"0.0.0.0:8700\"",
        "0.0.0.0:8700",
        "server.listen",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 512\nallowed_hosts = [\"cache.internal\", \"a b\"]",
        "allowed_hosts",
        "server.allowed_hosts[1]",
    ),
    (
        "max_key_len = 512",
        "max_key_len = 512\nallowed_origins = [\"ftp://files\"]",
        "allowed_origins",
        "server.allowed_origins[0]",
    ),
    // Identifiers, URLs, queries.
    (
        "url = \"redis://127.0.0.1:6379\"",
        "url = \"http://127.0.0.1:6379\"",
        "http://127.0.0.1:6379",
        "redis.url",
    ),
    (
        "url = \"redis://127.0.0.1:6379\"",
        "url = \"redis://127.0.0.1:notaport\"",
        "notaport",
        "redis.url",
    ),
    (
        "prefix = \"shop\"",
        "prefix = \"\"",
        "prefix",
        "redis.prefix",
    ),
    (
        "postgres = \"postgres://postgres@127.0.0.1:5432/test\"",
        "postgres = \"postgres://postgres@127.0.0.1:port/test\"",
        "postgres = ",
        "sources.main.postgres",
    ),
    (
        "postgres = \"postgres://postgres@127.0.0.1:5432/test\"",
        "postgres = \"mysql://x\"",
        "mysql://x",
        "sources.main.postgres",
    ),
    (
        "table = \"permission\"",
        "table = \"perm ission\"",
        "perm ission",
        "namespaces.permission.table",
    ),
    (
        "l1_budget = \"128MiB\"",
        "l1_budget = \"128MiB\"\nkey_column = \"id; drop table price\"",
        "key_column",
        "namespaces.price.key_column",
    ),
    (
        "l1_budget = \"128MiB\"",
        "l1_budget = \"128MiB\"\nversion_column = \"\"",
        "version_column = \"\"",
        "namespaces.price.version_column",
    ),
    (
        "query = \"SELECT p.id",
        "query = \"DELETE FROM product WHERE true OR p.id",
        "DELETE FROM",
        "namespaces.listing.query",
    ),
    (
        "FROM product p JOIN",
        "FROM product p; SELECT 1 FROM product p JOIN",
        "query = ",
        "namespaces.listing.query",
    ),
    (
        "early_refresh = \"xfetch:1.0\"",
        "early_refresh = \"soon\"",
        "early_refresh",
        "namespaces.product.early_refresh",
    ),
    // References between sections.
    (
        "description = \"Sessions\"\nsource = \"main\"",
        "description = \"Sessions\"\nsource = \"mian\"",
        "mian",
        "namespaces.session.source",
    ),
    (
        "namespace = \"inventory\"",
        "namespace = \"stock\"",
        "namespace = \"stock\"",
        "cdc.rules[1].namespace",
    ),
    (
        "[cdc]\nsource = \"main\"",
        "[cdc]\nsource = \"replica\"",
        "replica",
        "cdc.source",
    ),
    (
        "slot = \"strata_shop\"",
        "slot = \"Strata-Shop\"",
        "Strata-Shop",
        "cdc.slot",
    ),
    (
        "publication = \"strata_shop\"",
        "publication = \"\"",
        "publication",
        "cdc.publication",
    ),
    // Structure: duplicates, unknown keys, bad names, sections.
    (
        "",
        "\n[namespaces.price]\nttl = \"1m\"\n",
        "[namespaces.price]",
        "namespaces.price",
    ),
    (
        "ttl = \"45s\"",
        "ttl = \"45s\"\nttl = \"50s\"",
        "ttl = \"50s\"",
        "namespaces.product.ttl",
    ),
    (
        "ttl = \"45s\"",
        "ttll = \"45s\"",
        "ttll",
        "namespaces.product.ttll",
    ),
    (
        "",
        "\n[namespaces._hidden]\nttl = \"1m\"\n",
        "[namespaces._hidden]",
        "namespaces._hidden",
    ),
    (
        "",
        "\n[namespaces.plain]\nwrite = \"through\"\n",
        "write = \"through\"",
        "namespaces.plain.write",
    ),
    (
        "cache_control = \"public, max-age=300, stale-while-revalidate=3600\"",
        "cache_control = \"public, max age=300\"",
        "public, max age=300",
        "namespaces.product.http.cache_control",
    ),
    (
        "cdn_cache_control = \"max-age=600\"",
        "cdn_cache_control = \"\"",
        "cdn_cache_control",
        "namespaces.product.http.cdn_cache_control",
    ),
    (
        "vary = [\"Accept-Language\"]",
        "vary = [\"Accept Language\"]",
        "vary",
        "namespaces.product.http.vary",
    ),
    (
        "surrogate_keys = false\n",
        "surrogate_key = false\n",
        "surrogate_key = false",
        "namespaces.session.http.surrogate_key",
    ),
    (
        "",
        "\n[sources.both]\nsqlite = \"a.db\"\npostgres = \"postgres://x/y\"\n",
        "[sources.both]",
        "sources.both",
    ),
];

#[test]
fn every_error_in_a_mutated_example_names_its_line_column_and_field() {
    common::assert_mutations_located(EXAMPLE, "strata.toml", MUTATIONS);
}

#[test]
fn bounds_are_generous_enough_for_real_configs() {
    // At the bounds: 10 years of TTL, 1 h timeouts, 1 TiB budgets.
    let src = EXAMPLE
        .replacen("ttl = \"45s\"", "ttl = \"3650d\"", 1)
        .replacen("stale_for = \"30s\"", "stale_for = \"3650d\"", 1)
        .replacen("fail_safe_for = \"10m\"", "fail_safe_for = \"3650d\"", 1)
        .replacen("timeout = \"250ms\"", "timeout = \"1h\"", 1)
        .replacen("budget = \"512MiB\"", "budget = \"1024GiB\"", 1);
    Config::parse(&src, "strata.toml").unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn strata(args: &[&str], env: &[(&str, Option<&str>)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.args(args);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.output().unwrap()
}

#[test]
fn an_unset_token_variable_stops_the_start_and_check_config_says_so() {
    let dir = temp_dir("token-env");
    let file = dir.join("strata.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"STRATA_TEST_TOKEN_UNSET\"\n\n[namespaces.kv]\nttl = \"1m\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    for value in [None, Some("")] {
        let out = strata(
            &["serve", "--config", f, "--data-dir", data],
            &[("STRATA_TEST_TOKEN_UNSET", value)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value:?}: {err}");
        assert!(
            err.contains("$STRATA_TEST_TOKEN_UNSET is")
                && err.contains("strata.toml:3:")
                && err.contains("server.token_env"),
            "{value:?}: {err}"
        );
    }
    // check-config: the file is valid, and it says the variable is missing here.
    let out = strata(&["check-config", f], &[("STRATA_TEST_TOKEN_UNSET", None)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("$STRATA_TEST_TOKEN_UNSET") && text.contains("not set"),
        "{text}"
    );
    let out = strata(
        &["check-config", f],
        &[("STRATA_TEST_TOKEN_UNSET", Some("x"))],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(set here)"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_non_loopback_listener_needs_a_token_or_allow_unauthenticated() {
    let dir = temp_dir("protected");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    // The embedded default on every interface, without a token: refused before binding.
    let out = strata(
        &["serve", "--listen", "0.0.0.0:0", "--data-dir", data],
        &[("STRATA_TOKEN", None)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("without a token") && err.contains("allow_unauthenticated"),
        "{err}"
    );
    // An empty token is no token.
    let out = strata(
        &["serve", "--listen", "0.0.0.0:0", "--data-dir", data],
        &[("STRATA_TOKEN", Some(""))],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    // A config file: located at `listen`, by check-config too.
    let file = dir.join("strata.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"0.0.0.0:8799\"\n\n[namespaces.kv]\nttl = \"1m\"\n",
    )
    .unwrap();
    let out = strata(&["check-config", file.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("strata.toml:2:") && err.contains("server.listen"),
        "{err}"
    );
    // With allow_unauthenticated it is accepted.
    std::fs::write(
        &file,
        "[server]\nlisten = \"0.0.0.0:8799\"\nallow_unauthenticated = true\n\n[namespaces.kv]\nttl = \"1m\"\n",
    )
    .unwrap();
    let out = strata(&["check-config", file.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_to_serve_a_non_loopback_listener_without_a_token() {
    let dir = temp_dir("protected-lib");
    let mut config = Config::embedded(&dir);
    let seed = strata_server::RunOptions {
        seed_demo: true,
        ..Default::default()
    };
    let state = strata_server::build(&config, &seed).await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = strata_server::serve(listener, state, async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without a token"), "{err}");
    // An explicit opt-out serves (and stops at once here).
    config.server.allow_unauthenticated = true;
    config.server.data_dir = dir.join("b");
    let state = strata_server::build(&config, &seed).await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    strata_server::serve(listener, state, async {})
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

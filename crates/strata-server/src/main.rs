//! The `strata` binary: argument parsing over the `strata_server` library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strata_server::{Config, RunOptions};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a multi-tier cache over your database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the data API. Without --config: the embedded default (SQLite demo catalog, L1 only).
    Serve {
        /// A TOML config (see examples/strata.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address (overrides the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides the config). Default: strata-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Embedded default only: use Redis as L2 and bus (run several nodes).
        #[arg(long)]
        redis: Option<String>,
        /// With --redis: the key prefix (one per deployment; the bus stream is PREFIX:bus).
        #[arg(long, default_value = "strata")]
        redis_prefix: String,
        /// Embedded default only: keep the demo catalog in PostgreSQL instead of SQLite, with a CDC consumer
        /// (PostgreSQL needs wal_level=logical) so changes made outside Strata reach every node.
        #[arg(long)]
        postgres: Option<String>,
        /// With --postgres: the CDC replication slot and publication (one name for both; clean up with
        /// `strata cdc drop-slot --postgres URL --slot NAME`).
        #[arg(long, default_value = strata_server::demo::DEMO_SLOT)]
        slot: String,
        /// With --postgres: do not run the CDC consumer.
        #[arg(long)]
        no_cdc: bool,
        /// Bearer token for PUT, DELETE, _invalidate and _warm (overrides the config's). Without --config the
        /// default is $STRATA_TOKEN; with one, the config's `token` / `token_env` decide.
        #[arg(long)]
        token: Option<String>,
        /// Listen on a non-loopback address without a token (a trusted network only). Without it, `serve`
        /// refuses to (like Redis's protected mode); the config's `allow_unauthenticated = true` says the same.
        #[arg(long)]
        allow_unauthenticated: bool,
        /// Start even if the write-behind journal is damaged, keeping every intact record (the damaged files
        /// are kept as *.damaged). Without it, damage stops the start and names the file and byte offset.
        #[arg(long)]
        recover_journal: bool,
        /// Also serve the edge tier: an RFC 9111 caching reverse proxy in front of this origin
        /// (`http://host[:port]`), one route for every host and path (replacing the config's `[proxy]` routes).
        #[arg(long)]
        proxy_origin: Option<String>,
        /// The proxy's listen address (overrides `[proxy] listen`). Default: 127.0.0.1:8780.
        #[arg(long)]
        proxy_listen: Option<SocketAddr>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Create the tables a config's namespaces need (from the demo catalog: product, price, inventory, session,
    /// flag, counter, permission) with the configured key and version columns, and seed the empty ones.
    /// Idempotent. `serve --config F` needs them and names any that is missing.
    Init {
        /// The TOML config (e.g. examples/strata.toml).
        #[arg(long)]
        config: PathBuf,
        /// Data directory, where relative SQLite files live (overrides the config, as for `serve`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Change data capture administration.
    Cdc {
        #[command(subcommand)]
        command: CdcCommand,
    },
    /// Validate a config file; errors name the line and the field.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Load keys into a running server's caches.
    Warm {
        /// Namespace.
        #[arg(long)]
        ns: String,
        /// Keys (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Integer key range FROM..=TO, e.g. 1..1000.
        #[arg(long)]
        range: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Invalidate a key, a tag or a whole namespace on a running server (every node hears it).
    Invalidate {
        /// Namespace.
        #[arg(long)]
        ns: String,
        /// One key.
        #[arg(long, group = "what")]
        key: Option<String>,
        /// Every entry with this tag.
        #[arg(long, group = "what")]
        tag: Option<String>,
        /// The whole namespace.
        #[arg(long, group = "what")]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Purge the edge tier on every node: one URL (every variant), a tag (proxied pages and data entries), a
    /// URL prefix, a route, or everything.
    Purge {
        /// One URL, e.g. `http://shop.example/p/42`.
        #[arg(long, group = "what")]
        url: Option<String>,
        /// Every proxied response and data entry with this tag (surrogate key).
        #[arg(long, group = "what")]
        tag: Option<String>,
        /// Every URL under this prefix's directory, e.g. `http://shop.example/p/`.
        #[arg(long, group = "what")]
        prefix: Option<String>,
        /// Everything stored through this route.
        #[arg(long, group = "what")]
        route: Option<String>,
        /// Everything the proxy stored.
        #[arg(long, group = "what")]
        all: bool,
        /// Mark stale instead of removing (served inside stale-while-revalidate / stale-if-error while it
        /// revalidates).
        #[arg(long)]
        soft: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a running server's counters.
    Stats {
        #[command(flatten)]
        remote: Remote,
    },
    /// The write-behind writes a running server parked after the source kept refusing them.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run a scenario benchmark.
    Bench {
        #[command(subcommand)]
        scenario: strata_server::bench::Scenario,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List them (namespace, key, seq, op, value, attempts, last error).
    List,
    /// Write one again through its namespace (validated and journaled like any write), then remove it.
    Retry {
        /// Its seq (from `list`).
        seq: u64,
    },
    /// Drop one for good.
    Discard {
        /// Its seq (from `list`).
        seq: u64,
    },
}

#[derive(Subcommand)]
enum CdcCommand {
    /// Drop the replication slot and the publication (a slot nobody reads keeps PostgreSQL's WAL forever).
    /// Refuses when the slot is still active after 5 s: stop every node first.
    DropSlot {
        /// Take the PostgreSQL source, slot and publication from this config's `[cdc]`.
        #[arg(long, conflicts_with_all = ["postgres", "slot"], required_unless_present = "postgres")]
        config: Option<PathBuf>,
        /// Or: the database (as given to `serve --postgres`).
        #[arg(long)]
        postgres: Option<String>,
        /// With --postgres: the slot and publication name.
        #[arg(long, default_value = strata_server::demo::DEMO_SLOT)]
        slot: String,
    },
}

#[derive(clap::Args)]
struct Remote {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8700")]
    server: String,
    /// Bearer token (default: $STRATA_TOKEN).
    #[arg(long, env = "STRATA_TOKEN")]
    token: Option<String>,
}

impl Remote {
    /// Any method, with the token; fails on a non-2xx answer, showing its body.
    fn call(&self, method: &str, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut resp = agent
            .run(req.body(String::new())?)
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string()?;
        anyhow::ensure!(status.is_success(), "{method} {url}: {status}: {text}");
        Ok(text)
    }

    fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut req = ureq::post(&url).header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut resp = req
            .config()
            .http_status_as_error(false)
            .build()
            .send(body.to_string())
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string()?;
        anyhow::ensure!(status.is_success(), "{url}: {status}: {text}");
        Ok(text)
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut resp = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string()?;
        anyhow::ensure!(status.is_success(), "{url}: {status}: {text}");
        Ok(text)
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            redis,
            redis_prefix,
            postgres,
            slot,
            no_cdc,
            token,
            allow_unauthenticated,
            recover_journal,
            proxy_origin,
            proxy_listen,
            json_logs,
        } => {
            init_logs(json_logs);
            anyhow::ensure!(
                token.as_deref() != Some(""),
                "--token (or $STRATA_TOKEN) is empty, which would switch access control off: give a secret"
            );
            let (mut config, seed_demo) = match config {
                Some(path) => {
                    anyhow::ensure!(
                        redis.is_none() && postgres.is_none(),
                        "--redis and --postgres apply to the embedded default; put them in the config file"
                    );
                    anyhow::ensure!(
                        slot == strata_server::demo::DEMO_SLOT && !no_cdc && redis_prefix == "strata",
                        "--slot, --no-cdc and --redis-prefix apply to the embedded default; set [cdc] and \
                         [redis] in the config file"
                    );
                    let mut config = Config::load(&path)?;
                    if token.is_some() {
                        config.server.token = token;
                    }
                    (config, false)
                }
                None => {
                    let dir = data_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("strata-data"));
                    let mut config =
                        Config::embedded_with(&dir, redis.as_deref(), postgres.as_deref());
                    config.set_cdc_slot(&slot);
                    if let Some(r) = &mut config.redis {
                        r.prefix = redis_prefix;
                    }
                    if no_cdc {
                        config.cdc = None;
                    }
                    config.server.token = token.or_else(|| std::env::var("STRATA_TOKEN").ok());
                    (config, true)
                }
            };
            if let Some(l) = listen {
                config.server.listen = l;
            }
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            if allow_unauthenticated {
                config.server.allow_unauthenticated = true;
            }
            if let Some(origin) = &proxy_origin {
                let listen = proxy_listen
                    .or(config.proxy.as_ref().map(|p| p.listen))
                    .unwrap_or_else(strata_server::config::ProxySection::default_listen);
                let section = match config.proxy.take() {
                    Some(mut p) => {
                        p.routes = vec![strata_server::config::ProxyRouteConfig::to(origin)];
                        p.listen = listen;
                        p
                    }
                    None => strata_server::config::ProxySection::one_route(listen, origin),
                };
                section
                    .routes()
                    .map_err(|(_, e)| anyhow::anyhow!("--proxy-origin: {e}"))?;
                config.proxy = Some(section);
            } else if let Some(l) = proxy_listen {
                match &mut config.proxy {
                    Some(p) => p.listen = l,
                    None => anyhow::bail!(
                        "--proxy-listen needs a proxy: give --proxy-origin URL, or a config with a [proxy] section"
                    ),
                }
            }
            // Before binding or connecting anything: the token variable, protected mode.
            if let Err(e) = config.check_start() {
                if seed_demo {
                    anyhow::bail!("{}", e.message);
                }
                anyhow::bail!("{e}");
            }
            // Each connection is a file descriptor: use all the hard limit allows (as Go's runtime does).
            if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
                tracing::debug!(open_file_limit = n, "raised the open-file limit");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("binding {}", config.server.listen))?;
                let options = RunOptions {
                    seed_demo,
                    recover_journal,
                };
                let state = strata_server::build(&config, &options).await?;
                let proxy_listener = strata_server::bind_proxy(&state).await?;
                if let (Some(l), Some(p)) = (&proxy_listener, &config.proxy) {
                    let origins: Vec<&str> = p.routes.iter().map(|r| r.origin.as_str()).collect();
                    eprintln!(
                        "strata proxy listening on http://{} ({} route{}: {})",
                        l.local_addr()?,
                        origins.len(),
                        if origins.len() == 1 { "" } else { "s" },
                        origins.join(", ")
                    );
                }
                // Printed once the server can answer: scripts and tests wait for this line.
                eprintln!(
                    "strata listening on http://{} ({})",
                    listener.local_addr()?,
                    match (seed_demo, config.cdc.is_some()) {
                        (false, _) => "config",
                        (true, false) => "embedded default: demo catalog, L1 only unless --redis",
                        (true, true) => "embedded default: demo catalog in PostgreSQL, with CDC",
                    }
                );
                strata_server::serve_with(listener, proxy_listener, state, shutdown_signal()).await
            })
        }
        Command::Init { config, data_dir } => {
            let mut config = Config::load(&config)?;
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(strata_server::init::run(&config))?;
            for line in &report.lines {
                println!("{line}");
            }
            for s in &report.skipped {
                println!("skipped namespace {s}: not a demo catalog table; create it yourself");
            }
            if report.lines.is_empty() && report.skipped.is_empty() {
                println!("{}: no namespace is bound to a table", config.origin);
            }
            Ok(())
        }
        Command::Cdc {
            command:
                CdcCommand::DropSlot {
                    config,
                    postgres,
                    slot,
                },
        } => {
            let (url, slot, publication) = match (config, postgres) {
                (Some(path), _) => {
                    let c = Config::load(&path)?;
                    let cdc = c.cdc.as_ref().with_context(|| {
                        format!("{}: no [cdc] section, so no slot to drop", path.display())
                    })?;
                    let url = c.sources[cdc.source.get_ref()]
                        .get_ref()
                        .postgres
                        .clone()
                        .expect("validated: CDC reads a PostgreSQL source");
                    (url, cdc.slot.clone(), cdc.publication.clone())
                }
                (None, Some(url)) => (url, slot.clone(), slot),
                (None, None) => anyhow::bail!("give --config FILE or --postgres URL"),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let grace = std::time::Duration::from_secs(5);
            for line in rt.block_on(strata_server::slot::drop_slot(
                &url,
                &slot,
                &publication,
                grace,
            ))? {
                println!("{line}");
            }
            Ok(())
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} namespaces, {} sources{}{}{})",
                    file.display(),
                    c.namespaces.len(),
                    c.sources.len(),
                    if c.redis.is_some() { ", Redis" } else { "" },
                    if c.cdc.is_some() { ", CDC" } else { "" },
                    c.proxy.as_ref().map_or(String::new(), |p| format!(
                        ", proxy on {} with {} route{}",
                        p.listen,
                        p.routes.len(),
                        if p.routes.len() == 1 { "" } else { "s" }
                    ))
                );
                // The file is valid; what depends on the environment is checked when `serve` starts, and said
                // here so a missing secret is not a surprise.
                if let Some(var) = &c.server.token_env {
                    match std::env::var(var) {
                        Ok(v) if !v.is_empty() => println!("token: from ${var} (set here)"),
                        _ => println!(
                            "note: ${var} (server.token_env) is not set here; `serve` refuses to start until it is \
                             (checked at start)"
                        ),
                    }
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        Command::Warm {
            ns,
            keys,
            range,
            remote,
        } => {
            let range = match range {
                Some(r) => {
                    let (a, b) = r
                        .split_once("..")
                        .with_context(|| format!("--range {r:?}: write FROM..TO"))?;
                    let b = b.trim_start_matches('=');
                    Some((a.parse::<u64>()?, b.parse::<u64>()?))
                }
                None => None,
            };
            let body = serde_json::json!({"keys": keys, "range": range});
            println!("{}", remote.post(&format!("/v1/{ns}/_warm"), body)?);
            Ok(())
        }
        Command::Invalidate {
            ns,
            key,
            tag,
            all,
            remote,
        } => {
            let body = match (key, tag, all) {
                (Some(k), None, false) => serde_json::json!({"key": k}),
                (None, Some(t), false) => serde_json::json!({"tag": t}),
                (None, None, true) => serde_json::json!({"all": true}),
                _ => anyhow::bail!("give exactly one of --key, --tag, --all"),
            };
            println!("{}", remote.post(&format!("/v1/{ns}/_invalidate"), body)?);
            Ok(())
        }
        Command::Purge {
            url,
            tag,
            prefix,
            route,
            all,
            soft,
            remote,
        } => {
            let mut body = match (url, tag, prefix, route, all) {
                (Some(u), None, None, None, false) => serde_json::json!({"url": u}),
                (None, Some(t), None, None, false) => serde_json::json!({"tag": t}),
                (None, None, Some(p), None, false) => serde_json::json!({"prefix": p}),
                (None, None, None, Some(r), false) => serde_json::json!({"route": r}),
                (None, None, None, None, true) => serde_json::json!({"all": true}),
                _ => anyhow::bail!("give exactly one of --url, --tag, --prefix, --route, --all"),
            };
            body["soft"] = serde_json::json!(soft);
            println!("{}", remote.post("/v1/_purge", body)?);
            Ok(())
        }
        Command::Stats { remote } => {
            let text = remote.get("/v1/_stats")?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::DeadLetters { command, remote } => {
            let text = match command {
                DeadLetterCommand::List => remote.call("GET", "/v1/_dead_letters")?,
                DeadLetterCommand::Retry { seq } => {
                    remote.call("POST", &format!("/v1/_dead_letters/{seq}/retry"))?
                }
                DeadLetterCommand::Discard { seq } => {
                    remote.call("DELETE", &format!("/v1/_dead_letters/{seq}"))?
                }
            };
            let v: serde_json::Value = serde_json::from_str(&text)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Bench { scenario } => strata_server::bench::run(scenario),
    }
}

//! `strata-bench`: run one scenario and print its figures.

use std::time::Duration;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

#[derive(Parser)]
#[command(about = "Strata scenario benchmarks")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Concurrent requests for one key at expiry: single-flight vs naive vs stale-while-revalidate.
    Stampede {
        /// Concurrent requests.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Source latency in milliseconds.
        #[arg(long, default_value_t = 50)]
        load_ms: u64,
        /// Nodes. With more than one, the nodes share Redis (leases, L2, bus) and the naive baseline is
        /// cache-aside over the same Redis.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Redis URL (with `--nodes` > 1).
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
    /// One hot key read on every node with L1 off: Redis reads with and without hot-key pinning.
    Hotkey {
        /// Nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Reads per variant over all nodes.
        #[arg(long, default_value_t = 1_000_000)]
        reads: usize,
    },
    /// Source calls per expiry at 1,000 req/s: TTL only, XFetch alone, XFetch with single-flight.
    Xfetch {
        /// Virtual seconds to simulate.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// L2 read latency beside a raw Redis GET, same connection, same run.
    L2 {
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Reads of each kind.
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
    },
    /// Time from an invalidation on one node to eviction on all others, through the Redis bus.
    Invalidation {
        /// Nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Invalidations to time.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
    },
    /// Write throughput to PostgreSQL: write-through (baseline) against write-behind, and write-behind's lag.
    Writes {
        /// PostgreSQL URL. Default: STRATA_PG_URL or the local `test`.
        #[arg(long)]
        pg: Option<String>,
        /// Concurrent writers (a busy service: many requests writing at once).
        #[arg(long, default_value_t = 128)]
        writers: usize,
        /// Distinct keys written.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Time from a commit in PostgreSQL to eviction on every node, through the CDC consumer.
    Cdc {
        /// Nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// PostgreSQL URL (wal_level=logical; the user needs REPLICATION). Default: STRATA_PG_URL or the local `test`.
        #[arg(long)]
        pg: Option<String>,
        /// Commits to time.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// L1 hits through the data API (a `strata serve` child on its own core, the load generator on another) and
    /// the server's memory with its L1 budget full.
    Api {
        /// The `strata` binary. Default: next to this one, else target/release/strata, else target/debug/strata.
        #[arg(long)]
        strata: Option<std::path::PathBuf>,
        /// Seconds of load.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// The L1 budget, MiB.
        #[arg(long, default_value_t = 256)]
        budget_mib: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
    },
    /// Cache hits through the edge tier (`strata-bench-proxy`, on its own core) beside nginx's `proxy_cache` (same
    /// origin, same run, alternating rounds): hits per second and p99 for one object over keep-alive connections.
    Proxy {
        /// Seconds of load per round and server.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds (each: Strata, then nginx).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Bytes of the object.
        #[arg(long, default_value_t = 1024)]
        object_bytes: usize,
        /// The nginx binary. Default: `nginx` on PATH or in /usr/sbin (installed with apt when missing).
        #[arg(long)]
        nginx: Option<std::path::PathBuf>,
        /// The `strata-bench-proxy` binary. Default: next to this one.
        #[arg(long)]
        proxy: Option<std::path::PathBuf>,
    },
    /// Concurrent requests for a just-expired URL through the edge tier and through nginx without
    /// `proxy_cache_lock`: how many reach the origin.
    ProxyStampede {
        /// Concurrent requests (each on a keep-alive connection of its own).
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Origin latency in milliseconds.
        #[arg(long, default_value_t = 50)]
        load_ms: u64,
        /// The nginx binary. Default: `nginx` on PATH or in /usr/sbin (installed with apt when missing).
        #[arg(long)]
        nginx: Option<std::path::PathBuf>,
        /// The `strata-bench-proxy` binary. Default: next to this one.
        #[arg(long)]
        proxy: Option<std::path::PathBuf>,
    },
    /// The clients of `proxy-stampede` (internal).
    #[command(hide = true)]
    ProxyStampedeClients {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        requests: usize,
    },
    /// A child writing through write-behind is SIGKILLed at random moments; no acknowledged write may be lost.
    WriteBehindCrash {
        /// Kill cycles.
        #[arg(long, default_value_t = 50)]
        cycles: usize,
        /// Working directory (default: a fresh one under the temp dir).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// The child of `write-behind-crash` (internal).
    #[command(hide = true)]
    WriteBehindChild {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        start: i64,
    },
    /// One slow dependency (200 ms → 12 s) beside a healthy one on one server: naive, then with a bulkhead, a
    /// breaker and a hard timeout; the healthy namespace's p99 and the sick one's slowest answer.
    SlowDependency {
        /// The `strata` binary. Default: next to this one, else target/release/strata or target/debug/strata.
        #[arg(long)]
        strata: Option<std::path::PathBuf>,
        /// Seconds before the outage.
        #[arg(long, default_value_t = 5.0)]
        before: f64,
        /// Seconds of outage.
        #[arg(long, default_value_t = 10.0)]
        during: f64,
        /// Seconds after the heal.
        #[arg(long, default_value_t = 5.0)]
        after: f64,
        /// The sick source's latency during the outage (ms).
        #[arg(long, default_value_t = 12_000)]
        sick_ms: u64,
        /// The healthy source's latency (ms).
        #[arg(long, default_value_t = 5)]
        healthy_ms: u64,
        /// Requests per second to the healthy namespace.
        #[arg(long, default_value_t = 200)]
        healthy_rate: u64,
        /// Requests per second to the sick namespace.
        #[arg(long, default_value_t = 50)]
        sick_rate: u64,
        /// `server.max_connections` (the finite resource a hung dependency exhausts).
        #[arg(long, default_value_t = 200)]
        max_connections: usize,
        /// The protected run's hard timeout (ms).
        #[arg(long, default_value_t = 1_000)]
        hard_timeout_ms: u64,
    },
    /// The cluster-wide rate limiter: accuracy of every algorithm with `nodes` nodes on one Redis under a burst
    /// and under steady overload, and the cost of a decision beside one plain `INCR`.
    Ratelimit {
        /// Redis.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Nodes (connections) sharing each limit.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// The quota's limit.
        #[arg(long, default_value_t = 500)]
        limit: u64,
        /// Whole 1-second windows of steady overload.
        #[arg(long, default_value_t = 4)]
        windows: u64,
        /// Concurrent requests per node in the burst.
        #[arg(long, default_value_t = 8)]
        tasks: usize,
        /// Sequential decisions (and INCRs) for the cost.
        #[arg(long, default_value_t = 2000)]
        cost_samples: usize,
        /// Only this algorithm (token_bucket, leaky_bucket, fixed_window, sliding_window, sliding_log).
        #[arg(long)]
        only: Option<String>,
    },
    /// Tag purges across `nodes` `strata serve` processes (proxy, shared Redis) and a stand-in CDN: time until no
    /// node serves the old object in any variant, and until the CDN has the purge; then soft purges under load
    /// (origin requests per stored response).
    Purge {
        /// The `strata` binary. Default: next to this one, else target/release/strata or target/debug/strata.
        #[arg(long)]
        strata: Option<std::path::PathBuf>,
        /// `strata serve` processes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Objects cached on every node.
        #[arg(long, default_value_t = 1000)]
        objects: usize,
        /// Variants per object (`Vary: X-Variant`).
        #[arg(long, default_value_t = 5)]
        variants: usize,
        /// Tag purges measured.
        #[arg(long, default_value_t = 200)]
        purges: usize,
        /// Objects soft-purged under load.
        #[arg(long, default_value_t = 100)]
        soft_objects: usize,
        /// Reader tasks during the soft purges.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Redis.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
    /// A cluster of `strata serve` processes under writes (API and SQL) and reads, with optional faults (Redis
    /// and node kill -9, SIGSTOP): counts reads older than acknowledged writes, and acknowledged writes the source
    /// lost. One line per write path.
    Consistency {
        /// The `strata` binary. Default: target/release/strata, else target/debug/strata.
        #[arg(long)]
        strata: Option<std::path::PathBuf>,
        /// `strata serve` processes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds of workload (extended when the faults need longer).
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Keys 1..=K (odd ones written through the API, even ones in SQL).
        #[arg(long, default_value_t = 50)]
        keys: u32,
        /// Inject faults: Redis kill -9 + restart, a node kill -9, the CDC node kill -9, a node SIGSTOP 5 s.
        #[arg(long)]
        faults: bool,
        /// Concurrent readers per node (each reads every key in turn).
        #[arg(long, default_value_t = 4)]
        readers: usize,
        /// Writer tasks per write path.
        #[arg(long, default_value_t = 2)]
        writers: usize,
        /// The redis-server binary (started on a free port of its own).
        #[arg(long, default_value = "redis-server")]
        redis_server: String,
        /// PostgreSQL URL (wal_level=logical; the user needs REPLICATION). Default: STRATA_PG_URL or the local `test`.
        #[arg(long)]
        pg: Option<String>,
    },
    /// L1 hit ratios, throughput and memory beside moka and quick_cache.
    L1 {
        /// Gets per thread in the throughput runs.
        #[arg(long, default_value_t = 5_000_000)]
        ops: usize,
        /// Run one section only: `hit`, `speed` or `memory`.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() {
    match Args::parse().scenario {
        Scenario::WriteBehindCrash { cycles, dir } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let report = rt.block_on(strata_bench::behind_crash::run(cycles, dir));
            println!("{report}");
            if report.lost_acked_writes > 0 {
                std::process::exit(1);
            }
        }
        Scenario::WriteBehindChild { dir, start } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(strata_bench::behind_crash::child(dir, start));
        }
        Scenario::Stampede {
            requests,
            load_ms,
            nodes,
            redis,
        } if nodes > 1 => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let load = Duration::from_millis(load_ms);
            match rt.block_on(strata_bench::cluster::stampede(
                &redis, nodes, requests, load,
            )) {
                Ok(report) => println!("{report}"),
                Err(e) => {
                    eprintln!("stampede: {e}");
                    std::process::exit(1);
                }
            }
        }
        Scenario::Hotkey {
            nodes,
            redis,
            reads,
        } => {
            report(
                "hotkey",
                strata_bench::cluster::hotkey(&redis, nodes, reads),
            );
        }
        Scenario::Stampede {
            requests, load_ms, ..
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let report = rt.block_on(strata_bench::stampede::run(
                requests,
                Duration::from_millis(load_ms),
            ));
            println!("{report}");
        }
        Scenario::Xfetch { seconds } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            println!("{}", rt.block_on(strata_bench::xfetch::run(seconds)));
        }
        Scenario::L2 { redis, samples } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            match rt.block_on(strata_bench::l2::run(&redis, samples)) {
                Ok(report) => println!("{report}"),
                Err(e) => {
                    eprintln!("l2: {e}");
                    std::process::exit(1);
                }
            }
        }
        Scenario::Writes {
            pg,
            writers,
            keys,
            seconds,
        } => {
            let pg = pg.unwrap_or_else(|| {
                std::env::var("STRATA_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
            });
            report(
                "writes",
                strata_bench::writes::run(&pg, writers, keys, seconds),
            );
        }
        Scenario::Cdc {
            nodes,
            redis,
            pg,
            samples,
        } => {
            let pg = pg.unwrap_or_else(|| {
                std::env::var("STRATA_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
            });
            report("cdc", strata_bench::cdc::run(&redis, &pg, nodes, samples));
        }
        Scenario::Invalidation {
            nodes,
            redis,
            samples,
        } => {
            report(
                "invalidation",
                strata_bench::invalidation::run(&redis, nodes, samples),
            );
        }
        Scenario::Api {
            strata,
            seconds,
            connections,
            budget_mib,
            value_bytes,
        } => {
            // Next to this binary first: `strata bench api` from target/debug pairs debug with debug.
            let sibling = std::env::current_exe()
                .ok()
                .map(|e| e.with_file_name(format!("strata{}", std::env::consts::EXE_SUFFIX)))
                .filter(|p| p.is_file());
            let strata = match strata.or(sibling) {
                Some(p) => p,
                None => strata_bench::consistency::locate_strata(None).unwrap_or_else(|e| {
                    eprintln!("api: {e}");
                    std::process::exit(1);
                }),
            };
            report(
                "api",
                strata_bench::api::run(&strata, seconds, connections, budget_mib, value_bytes),
            );
        }
        Scenario::Proxy {
            seconds,
            rounds,
            connections,
            object_bytes,
            nginx,
            proxy,
        } => {
            let servers = strata_bench::proxy::Servers { nginx, proxy };
            report(
                "proxy",
                strata_bench::proxy::hits(servers, seconds, rounds, connections, object_bytes),
            );
        }
        Scenario::ProxyStampede {
            requests,
            load_ms,
            nginx,
            proxy,
        } => {
            let servers = strata_bench::proxy::Servers { nginx, proxy };
            report(
                "proxy-stampede",
                strata_bench::proxy::stampede(servers, requests, Duration::from_millis(load_ms)),
            );
        }
        Scenario::ProxyStampedeClients { addr, requests } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            if let Err(e) = rt.block_on(strata_bench::proxy::stampede_clients(addr, requests)) {
                eprintln!("proxy-stampede-clients: {e:#}");
                std::process::exit(1);
            }
        }
        Scenario::Consistency {
            strata,
            nodes,
            seconds,
            keys,
            faults,
            readers,
            writers,
            redis_server,
            pg,
        } => {
            let pg = pg.unwrap_or_else(|| {
                std::env::var("STRATA_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
            });
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = strata_bench::consistency::Options {
                strata,
                nodes,
                seconds,
                keys,
                faults,
                readers,
                writers,
                redis_server,
                pg,
            };
            let result = rt.block_on(strata_bench::consistency::run(options));
            // Every child process is gone before the runtime is.
            drop(rt);
            match result {
                Ok(reports) => {
                    for r in reports {
                        println!("{r}");
                    }
                }
                Err(e) => {
                    eprintln!("consistency: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Scenario::Ratelimit {
            redis,
            nodes,
            limit,
            windows,
            tasks,
            cost_samples,
            only,
        } => {
            let only = match only
                .as_deref()
                .map(|a| (a, strata::limit::Algorithm::parse(a)))
            {
                None => None,
                Some((_, Some(a))) => Some(a),
                Some((a, None)) => {
                    eprintln!("ratelimit: unknown algorithm {a:?}");
                    std::process::exit(2);
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = strata_bench::ratelimit::Options {
                redis,
                nodes,
                limit,
                windows,
                tasks,
                cost_samples,
                only,
            };
            match rt.block_on(strata_bench::ratelimit::run(options)) {
                Ok(reports) => {
                    for r in reports {
                        println!("{r}");
                    }
                }
                Err(e) => {
                    eprintln!("ratelimit: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Scenario::SlowDependency {
            strata,
            before,
            during,
            after,
            sick_ms,
            healthy_ms,
            healthy_rate,
            sick_rate,
            max_connections,
            hard_timeout_ms,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = strata_bench::slow_dependency::Options {
                strata,
                before,
                during,
                after,
                sick_ms,
                healthy_ms,
                healthy_rate,
                sick_rate,
                max_connections,
                hard_timeout_ms,
            };
            let result = rt.block_on(strata_bench::slow_dependency::run(options));
            drop(rt);
            match result {
                Ok(r) => println!("{r}"),
                Err(e) => {
                    eprintln!("slow-dependency: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Scenario::Purge {
            strata,
            nodes,
            objects,
            variants,
            purges,
            soft_objects,
            clients,
            redis,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = strata_bench::purge::Options {
                strata,
                nodes,
                objects,
                variants,
                purges,
                soft_objects,
                clients,
                redis,
            };
            let result = rt.block_on(strata_bench::purge::run(options));
            drop(rt);
            match result {
                Ok(r) => println!("{r}"),
                Err(e) => {
                    eprintln!("purge: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Scenario::L1 { ops, only } => {
            let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
            if run("hit") {
                strata_bench::l1::hit_ratios();
            }
            if run("speed") {
                strata_bench::l1::speed(ops);
            }
            if run("memory") {
                strata_bench::l1::memory(&ALLOC);
            }
        }
    }
}

/// Runs a scenario on a multi-threaded runtime and prints its report line, or says why it failed and exits 1.
fn report<R: std::fmt::Display, E: std::fmt::Display>(
    scenario: &str,
    run: impl std::future::Future<Output = Result<R, E>>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("{scenario}: {e:#}");
            std::process::exit(1);
        }
    }
}

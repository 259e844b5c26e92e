//! A multi-node harness: N engine instances ("nodes") in one process, each with its own Redis connections (L2 and
//! bus) and, optionally, its own [`FaultProxy`] between it and Redis, so a test can cut, delay or black-hole one
//! node's link while the others keep theirs.
//!
//! Every cluster gets a unique key prefix and bus stream, so tests run in parallel without seeing each other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata::codec::Codec;
use strata::{BreakerOptions, Cache, Error, Namespace, Policy};
use strata_redis::{L2Options, RedisBus, RedisBusOptions, RedisL2};

use crate::proxy::{FaultProxy, LinkMode};

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes. Default: 2.
    pub nodes: usize,
    /// Redis URL (`redis://ip:port`). Default: `STRATA_REDIS_URL` or `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Put a [`FaultProxy`] in front of each node's Redis links. Default: `false`.
    pub proxied: bool,
    /// Attach a Redis bus to each node. Default: `true`.
    pub bus: bool,
    /// The bus heartbeat (bounds how long a dead link goes unnoticed). Default: 300 ms.
    pub heartbeat: Duration,
    /// The bound on each Redis call. Default: 250 ms.
    pub timeout: Duration,
    /// The breaker around each node's L2. Default: opens after 3 failures for 300 ms.
    pub breaker: BreakerOptions,
    /// A name for the key prefix (the test's name).
    pub name: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            redis_url: redis_url(),
            proxied: false,
            bus: true,
            heartbeat: Duration::from_millis(300),
            timeout: Duration::from_millis(250),
            breaker: BreakerOptions {
                failure_threshold: 3,
                open_for: Duration::from_millis(300),
            },
            name: "cluster".into(),
        }
    }
}

/// One node of a [`Cluster`].
pub struct Node {
    /// The node's cache (L2 and bus attached).
    pub cache: Cache,
    /// The node's own L2 client (for its counters, or raw commands in tests).
    pub l2: RedisL2,
    /// The proxy in front of the node's Redis links, if the cluster is proxied.
    pub proxy: Option<FaultProxy>,
}

impl Node {
    /// Cuts (or restores, with [`LinkMode::Pass`]) this node's links to Redis. Panics if the cluster is not proxied.
    pub fn set_link(&self, mode: LinkMode) {
        self.proxy
            .as_ref()
            .expect("the cluster was built with proxied: true")
            .set_mode(mode);
    }

    /// The node's bus counters, if it has a bus.
    pub fn bus_stats(&self) -> Option<strata::bus::BusStats> {
        self.cache.bus_stats()
    }
}

/// N nodes sharing one Redis.
pub struct Cluster {
    /// The nodes, in creation order.
    pub nodes: Vec<Node>,
    /// The key prefix every node uses.
    pub prefix: String,
}

impl Cluster {
    /// Starts the nodes. Fails loudly (naming the URL) when Redis cannot be reached.
    pub async fn start(options: ClusterOptions) -> Result<Self, Error> {
        let prefix = unique_prefix(&options.name);
        let mut nodes = Vec::with_capacity(options.nodes);
        for _ in 0..options.nodes {
            let (url, proxy) = if options.proxied {
                let proxy = FaultProxy::start(redis_addr(&options.redis_url))
                    .await
                    .map_err(|e| Error::Unavailable {
                        tier: strata::Tier::L2,
                        message: format!("starting the fault proxy: {e}"),
                    })?;
                (format!("redis://{}", proxy.addr()), Some(proxy))
            } else {
                (options.redis_url.clone(), None)
            };
            let l2 = RedisL2::connect(
                &url,
                L2Options {
                    prefix: prefix.clone(),
                    timeout: options.timeout,
                },
            )
            .await?;
            let mut builder = Cache::builder()
                .with_shared_tier(Arc::new(l2.clone()))
                .with_breaker(options.breaker);
            if options.bus {
                let bus = RedisBus::connect(
                    &url,
                    RedisBusOptions {
                        stream: format!("{prefix}:bus"),
                        heartbeat: options.heartbeat,
                        timeout: options.timeout,
                        ..RedisBusOptions::default()
                    },
                )
                .await?;
                builder = builder.with_bus(Arc::new(bus));
            }
            nodes.push(Node {
                cache: builder.build(),
                l2,
                proxy,
            });
        }
        let cluster = Self { nodes, prefix };
        cluster.wait_for_contact().await?;
        Ok(cluster)
    }

    /// Waits (up to 5 s) until every node has confirmed contact with the bus, so that its L1 is trusted and what it
    /// fills is not capped at the bus's bound (see `strata::bus`).
    pub async fn wait_for_contact(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let live = self.nodes.iter().all(|n| {
                n.bus_stats()
                    .is_none_or(|s| match (s.contact_age_ms, s.bound_ms) {
                        (Some(age), Some(bound)) => age < bound / 2,
                        _ => s.bound_ms.is_none(),
                    })
            });
            if live {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    tier: strata::Tier::L2,
                    message: "the nodes did not confirm bus contact within 5 s".into(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Registers the namespace on every node; returns the handles in node order.
    pub fn namespace<V>(
        &self,
        name: &str,
        policy: Policy,
        codec: impl Codec<V> + Clone,
    ) -> Vec<Namespace<V>>
    where
        V: Send + Sync + 'static,
    {
        self.nodes
            .iter()
            .map(|n| {
                n.cache
                    .namespace::<V>(name)
                    .with_policy(policy.clone())
                    .with_codec(codec.clone())
                    .build()
                    .expect("namespace registers on every node")
            })
            .collect()
    }

    /// L2 calls made by all nodes (lookups that reached Redis: hits + misses).
    pub fn l2_reads(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| {
                let s = n.l2.stats();
                s.hits + s.misses
            })
            .sum()
    }

    /// Closes every node's cache (its bus node and L2 replay task).
    pub async fn shutdown(self) {
        for n in self.nodes {
            n.cache.close().await;
        }
    }
}

/// The Redis URL of the tests: `STRATA_REDIS_URL` or `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn redis_addr(url: &str) -> SocketAddr {
    let host_port = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default();
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("a proxied cluster needs an ip:port Redis URL, got {url:?}"))
}

/// A key prefix unique to this process and call.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "strata-test:{name}:{}:{nanos}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sets every node's link (proxied clusters only).
pub fn set_all_links(cluster: &Cluster, mode: LinkMode) {
    for n in &cluster.nodes {
        n.set_link(mode);
    }
}

//! The [`Cache`] facade: a registry of namespaces sharing one clock.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::RwLock;
use strata_core::{Clock, Error, Policy, SystemClock};

use crate::namespace::{ErasedNamespace, Namespace, Weigher};
use crate::stats::{publish, NamespaceStats};

/// A Strata cache: namespaces, each with its own policy, value type and L1 budget.
///
/// ```
/// # async fn demo() -> Result<(), strata::Error> {
/// use std::time::Duration;
/// use strata::{Cache, Policy, Status};
///
/// let cache = Cache::new();
/// let prices = cache
///     .namespace::<u64>("price")
///     .with_policy(Policy::builder().with_ttl(Duration::from_secs(30)).build()?)
///     .build()?;
/// let first = prices.get_or_load("sku-1", || async { Some(129) }).await?;
/// assert_eq!(first.status(), Status::Miss);
/// let again = prices.get_or_load("sku-1", || async { Some(0) }).await?;
/// assert_eq!((again.value(), again.status()), (Some(&129), Status::Hit(strata::Tier::L1)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    clock: Arc<dyn Clock>,
    namespaces: RwLock<HashMap<String, Registered>>,
}

struct Registered {
    typed: Arc<dyn Any + Send + Sync>,
    erased: Arc<dyn ErasedNamespace>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// A cache on the system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder { clock: None }
    }

    /// The cache's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Starts registering a namespace holding values of type `V`.
    pub fn namespace<V: Send + Sync + 'static>(&self, name: &str) -> NamespaceBuilder<V> {
        NamespaceBuilder {
            cache: self.clone(),
            name: name.to_owned(),
            policy: Policy::default(),
            weigher: Arc::new(|_| std::mem::size_of::<V>()),
            _v: PhantomData,
        }
    }

    /// The handle of a registered namespace.
    pub fn get_namespace<V: Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Namespace<V>, Error> {
        let map = self.inner.namespaces.read();
        let reg = map
            .get(name)
            .ok_or_else(|| Error::UnknownNamespace(name.to_owned()))?;
        reg.typed
            .clone()
            .downcast::<Namespace<V>>()
            .map(|ns| (*ns).clone())
            .map_err(|_| Error::NamespaceTypeMismatch(name.to_owned()))
    }

    /// The names of the registered namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.namespaces.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Invalidates one key of a namespace by name.
    pub fn invalidate(&self, namespace: &str, key: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate(key);
        Ok(())
    }

    /// Invalidates every key of a namespace by name.
    pub fn invalidate_namespace(&self, namespace: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate_all();
        Ok(())
    }

    /// Counters of every namespace, sorted by name.
    pub fn stats(&self) -> Vec<NamespaceStats> {
        let mut all: Vec<NamespaceStats> = self
            .inner
            .namespaces
            .read()
            .values()
            .map(|r| r.erased.stats())
            .collect();
        all.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        all
    }

    /// Pushes every namespace's counters to the `metrics` facade (call before a scrape renders).
    pub fn publish_metrics(&self) {
        self.stats().iter().for_each(publish);
    }

    fn erased(&self, namespace: &str) -> Result<Arc<dyn ErasedNamespace>, Error> {
        self.inner
            .namespaces
            .read()
            .get(namespace)
            .map(|r| r.erased.clone())
            .ok_or_else(|| Error::UnknownNamespace(namespace.to_owned()))
    }
}

/// Builds a [`Cache`].
#[must_use]
pub struct CacheBuilder {
    clock: Option<Arc<dyn Clock>>,
}

impl CacheBuilder {
    /// The time source. Default: [`SystemClock`]. Tests under `tokio::time::pause` use [`strata_core::TokioClock`].
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        Cache {
            inner: Arc::new(CacheInner {
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
                namespaces: RwLock::new(HashMap::new()),
            }),
        }
    }
}

/// Registers a namespace; see [`Cache::namespace`].
#[must_use]
pub struct NamespaceBuilder<V> {
    cache: Cache,
    name: String,
    policy: Policy,
    weigher: Weigher<V>,
    _v: PhantomData<fn() -> V>,
}

impl<V: Send + Sync + 'static> NamespaceBuilder<V> {
    /// The policy. Default: [`Policy::default`].
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Estimates a value's heap and inline bytes for the L1 budget (the key and per-entry overhead are added).
    /// Default: `size_of::<V>()`, which undercounts values that own heap memory (`String`, `Vec`): set it for them.
    pub fn with_weigher(mut self, weigher: impl Fn(&V) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Arc::new(weigher);
        self
    }

    /// Validates the policy and registers the namespace. Fails if the name is taken.
    pub fn build(self) -> Result<Namespace<V>, Error> {
        self.policy.validate()?;
        let mut map = self.cache.inner.namespaces.write();
        if map.contains_key(&self.name) {
            return Err(Error::NamespaceExists(self.name));
        }
        let ns = Namespace::new(
            self.name.clone(),
            self.policy,
            self.cache.inner.clock.clone(),
            self.weigher,
        );
        map.insert(
            self.name,
            Registered {
                typed: Arc::new(ns.clone()),
                erased: Arc::new(ns.clone()),
            },
        );
        Ok(ns)
    }
}

//! Test tools for Strata: a loader that fails, delays, hangs or blocks on command, and counts its calls; and a TCP
//! [`proxy::FaultProxy`] that delays, black-holes or cuts a link to a service; a [`bus::JammableBus`]; PostgreSQL
//! helpers ([`pg`]).
//!
//! [`FaultyLoader`] reads its answer when a call *starts* and applies the fault afterwards, so a test can let a
//! load read an old value, change the source, and only then let the load finish: exactly the interleaving of the
//! stale-set races the engine must survive.

pub mod bus;
pub mod cluster;
pub mod pg;
pub mod proxy;
pub mod table;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// What the next calls of a [`FaultyLoader`] do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer at once.
    None,
    /// Fail with this message.
    Fail(String),
    /// Answer after this delay (Tokio time, so `tokio::time::pause` applies).
    Delay(Duration),
    /// Never answer.
    Hang,
    /// Wait until [`FaultyLoader::release`] grants a permit, then answer.
    Gate,
    /// Panic.
    Panic,
}

/// The error a [`FaultyLoader`] returns in [`Fault::Fail`] mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure: {0}")]
pub struct Injected(pub String);

/// A key-value source with injectable faults. Clones share state.
#[derive(Clone)]
pub struct FaultyLoader<V> {
    state: Arc<State<V>>,
}

struct State<V> {
    values: Mutex<HashMap<String, V>>,
    fault: Mutex<Fault>,
    calls: AtomicUsize,
    polled: AtomicUsize,
    keys_loaded: AtomicUsize,
    gate: Semaphore,
}

impl<V: Clone + Send + Sync + 'static> Default for FaultyLoader<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone + Send + Sync + 'static> FaultyLoader<V> {
    /// An empty source that answers at once.
    pub fn new() -> Self {
        Self {
            state: Arc::new(State {
                values: Mutex::new(HashMap::new()),
                fault: Mutex::new(Fault::None),
                calls: AtomicUsize::new(0),
                polled: AtomicUsize::new(0),
                keys_loaded: AtomicUsize::new(0),
                gate: Semaphore::new(0),
            }),
        }
    }

    /// The source's current value of `key`, without counting a call.
    pub fn peek(&self, key: &str) -> Option<V> {
        self.state.values.lock().get(key).cloned()
    }

    /// Sets the source's value of `key`.
    pub fn set(&self, key: impl Into<String>, value: V) {
        self.state.values.lock().insert(key.into(), value);
    }

    /// Removes a key from the source.
    pub fn remove(&self, key: &str) {
        self.state.values.lock().remove(key);
    }

    /// Sets what the following calls do.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock() = fault;
    }

    /// Lets `n` gated calls proceed.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// How many loader calls were made (a batch call counts once).
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// How many calls' futures were polled: loads that actually reached the source. With a shared tier the engine
    /// may call the loader and then drop its future unpolled, because L2 had the value.
    pub fn source_loads(&self) -> usize {
        self.state.polled.load(Ordering::SeqCst)
    }

    /// How many keys were requested over all calls.
    pub fn keys_loaded(&self) -> usize {
        self.state.keys_loaded.load(Ordering::SeqCst)
    }

    /// Loads one key: `Ok(None)` when the source has no such key.
    pub fn load(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<V>, Injected>> + Send + 'static {
        let value = self.state.values.lock().get(key).cloned();
        let fault = self.begin(1);
        let state = self.state.clone();
        async move {
            apply(&state, fault).await?;
            Ok(value)
        }
    }

    /// Loads several keys with one call; absent keys are missing from the map.
    pub fn load_many(
        &self,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<HashMap<String, V>, Injected>> + Send + 'static {
        let found: HashMap<String, V> = {
            let values = self.state.values.lock();
            keys.iter()
                .filter_map(|k| values.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        };
        let fault = self.begin(keys.len());
        let state = self.state.clone();
        async move {
            apply(&state, fault).await?;
            Ok(found)
        }
    }

    fn begin(&self, keys: usize) -> Fault {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        self.state.keys_loaded.fetch_add(keys, Ordering::SeqCst);
        self.state.fault.lock().clone()
    }
}

async fn apply<V>(state: &State<V>, fault: Fault) -> Result<(), Injected> {
    state.polled.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::None => Ok(()),
        Fault::Fail(msg) => Err(Injected(msg)),
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Fault::Hang => std::future::pending().await,
        Fault::Gate => {
            state
                .gate
                .acquire()
                .await
                .expect("gate is never closed")
                .forget();
            Ok(())
        }
        Fault::Panic => panic!("injected panic"),
    }
}

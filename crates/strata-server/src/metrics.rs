//! Prometheus exposition: the `metrics` facade's recorder is installed once per process (every server in the
//! process shares it), and each scrape first publishes the engine's counters.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application's): then this one only renders
        // what is published to it directly, which is nothing; say so in the log.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Installs the recorder (idempotent).
pub fn install() {
    let _ = handle();
}

/// Pushes the engine's counters to the recorder.
pub fn publish(state: &AppState) {
    state.cache.publish_metrics();
    if let Some(wb) = &state.write_behind {
        wb.publish_metrics();
    }
    // The proxy's per-route counters (`strata_proxy_*`, see `strata_http::stats`).
    if let Some(edge) = &state.proxy {
        edge.proxy.publish_metrics();
    }
    state.purges.publish();
    state.cdn.publish();
    metrics::gauge!("strata_uptime_seconds").set(state.started.elapsed().as_secs_f64());
    // 1 on the node whose CDC consumer holds the slot and streams, 0 on standbys.
    let cdc_active = state
        .cdc
        .lock()
        .expect("cdc lock")
        .as_ref()
        .map(|c| c.is_active());
    if let Some(active) = cdc_active {
        metrics::gauge!("strata_cdc_active").set(if active { 1.0 } else { 0.0 });
    }
}

/// The Prometheus text format.
pub fn render() -> String {
    handle().render()
}

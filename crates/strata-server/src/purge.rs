//! Purge over HTTP: one request takes responses out of the edge tier on every node, and a tag out of every tier.
//!
//! `POST /v1/_purge` (needs the token, like every mutating route) with exactly one of
//! - `{"url": "http://shop.example/p/42"}`: every `Vary` variant and every stale copy of that URL;
//! - `{"tag": "product:42"}`: every proxied response carrying the surrogate key (`Surrogate-Key`, `Cache-Tag`)
//!   **and** every data entry tagged so, in every namespace — one tag covers a cached row, the listing built from
//!   it and the pages that show it;
//! - `{"prefix": "http://shop.example/p/"}`: every URL under that directory (see [`strata_http::purge`] for the
//!   directory granularity; the answer's `covers` says what went);
//! - `{"route": "shop"}`: everything stored through that route;
//! - `{"all": true}`: everything the proxy stored.
//!
//! With `"soft": true` nothing is removed from the edge tier: what the purge covers reads as stale from then on
//! — answered only inside its `stale-while-revalidate` / `stale-if-error` windows while one revalidation runs,
//! freshened again by a `304` — so a purge under load costs the origin one request per object instead of a
//! stampede of misses. Data entries have no such windows: a soft tag purge invalidates them like a hard one.
//!
//! The answer (`200`) comes once the purge is in L2 and on the bus (each namespace's tag barrier; see
//! [`strata::Namespace::invalidate_tag`]): a node that reads after it, and a fetch that began before it, cannot
//! serve or store the old response. A target that cannot be purged is `400 bad_purge` naming what is wrong; a
//! URL, prefix, route or `all` purge without `[proxy]` is `404 no_proxy`.
//!
//! The data API's writes name tags too: `PUT`/`DELETE /v1/{ns}/{key}` with `Strata-Tags: product:42 listing:7`
//! invalidate those tags everywhere once the write is acknowledged ([`invalidate_write_tags`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use strata_http::purge::PurgeTarget;

use crate::cdn::EventKind;

use crate::api::{authorize, engine_error, json_body, ApiError};
use crate::state::{AppState, EDGE_NAMESPACE};

/// The request field naming the tags a data API write invalidates everywhere.
pub const STRATA_TAGS: &str = "strata-tags";

/// Most tags one write may name.
pub const MAX_WRITE_TAGS: usize = 64;

/// The purge route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/_purge", post(purge))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    soft: bool,
}

impl PurgeBody {
    fn target(self) -> Result<PurgeTarget, ApiError> {
        let given = [
            self.url.as_ref(),
            self.tag.as_ref(),
            self.prefix.as_ref(),
            self.route.as_ref(),
        ]
        .iter()
        .filter(|v| v.is_some())
        .count()
            + usize::from(self.all);
        if given != 1 {
            return Err(ApiError::bad(
                "bad_purge",
                format!(
                    "give exactly one of \"url\", \"tag\", \"prefix\", \"route\" or \"all\": true ({given} given)"
                ),
            ));
        }
        Ok(match (self.url, self.tag, self.prefix, self.route) {
            (Some(u), ..) => PurgeTarget::Url(u),
            (_, Some(t), ..) => PurgeTarget::Tag(t),
            (_, _, Some(p), _) => PurgeTarget::Prefix(p),
            (_, _, _, Some(r)) => PurgeTarget::Route(r),
            _ => PurgeTarget::All,
        })
    }
}

async fn purge(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = json_body::<PurgeBody>(&state, body).await?;
    let soft = body.soft;
    let target = body.target()?;
    let bad = |e: strata_http::purge::PurgeError| ApiError::bad("bad_purge", e.to_string());
    if let PurgeTarget::Tag(tag) = &target {
        // Checked like a proxy tag even without a proxy: a tag with whitespace is never stored.
        strata_http::purge::plan(&target, std::iter::empty()).map_err(bad)?;
        let namespaces = if soft {
            // Soft applies to the edge tier's HTTP staleness; data entries have none, so they go.
            let mut names = Vec::new();
            for ns in state.cache.namespaces() {
                if ns == EDGE_NAMESPACE {
                    if let Some(edge) = &state.proxy {
                        edge.proxy.purge(&target, true).await.map_err(bad)?;
                    }
                } else {
                    state
                        .cache
                        .invalidate_tag(&ns, tag)
                        .await
                        .map_err(engine_error)?;
                }
                names.push(ns);
            }
            names
        } else {
            state.cache.invalidate_tag_everywhere(tag).await
        };
        state.purges.inc(PurgeKind::Tag);
        hooks(
            &state,
            EventKind::Tag,
            std::slice::from_ref(tag),
            soft,
            None,
        )?;
        return Ok(
            Json(json!({"purged": {"tag": tag}, "soft": soft, "namespaces": namespaces}))
                .into_response(),
        );
    }
    let Some(edge) = &state.proxy else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_proxy",
            "no [proxy] is configured: only {\"tag\": …} purges apply (to the data namespaces)",
        ));
    };
    let plan = edge.proxy.purge(&target, soft).await.map_err(bad)?;
    let kind = match target {
        PurgeTarget::Url(_) => PurgeKind::Url,
        PurgeTarget::Prefix(_) => PurgeKind::Prefix,
        PurgeTarget::Route(_) => PurgeKind::Route,
        _ => PurgeKind::All,
    };
    state.purges.inc(kind);
    let (event, route) = match &target {
        PurgeTarget::Url(u) => (EventKind::Url, edge.proxy.route_name_of(u)),
        PurgeTarget::Prefix(p) => (EventKind::Prefix, edge.proxy.route_name_of(p)),
        PurgeTarget::Route(r) => (EventKind::Route, Some(r.clone())),
        _ => (EventKind::All, None),
    };
    let values = match &target {
        PurgeTarget::All => Vec::new(),
        _ => vec![plan.covers.clone()],
    };
    hooks(&state, event, &values, soft, route.as_deref())?;
    let what = kind.label();
    Ok(Json(json!({"purged": {what: plan.covers}, "soft": soft})).into_response())
}

/// The tags a write's `Strata-Tags` field names (space- or comma-separated), checked: each a single token.
pub fn write_tags(headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
    let mut tags: Vec<String> = Vec::new();
    for v in headers.get_all(STRATA_TAGS) {
        let s = v
            .to_str()
            .map_err(|_| ApiError::bad("bad_tags", "`Strata-Tags` must be visible ASCII"))?;
        for t in s.split([' ', ',', '\t']).filter(|t| !t.is_empty()) {
            if !tags.iter().any(|o| o == t) {
                tags.push(t.to_string());
            }
        }
    }
    if tags.len() > MAX_WRITE_TAGS {
        return Err(ApiError::bad(
            "bad_tags",
            format!(
                "`Strata-Tags` names {} tags; at most {MAX_WRITE_TAGS}",
                tags.len()
            ),
        ));
    }
    Ok(tags)
}

/// Invalidates a write's tags in every namespace (the data entries and the proxied pages that carry them), and
/// queues them for the CDNs in front.
pub async fn invalidate_write_tags(state: &AppState, tags: &[String]) -> Result<(), ApiError> {
    for t in tags {
        state.cache.invalidate_tag_everywhere(t).await;
        state.purges.inc(PurgeKind::WriteTag);
    }
    if !tags.is_empty() {
        hooks(state, EventKind::Tag, tags, false, None)?;
    }
    Ok(())
}

/// Queues a purge for every CDN hook that takes it, durably: an outbox that cannot be written fails the request
/// (500 `cdn_outbox`) rather than let a CDN keep the old object unknown to anyone.
pub fn hooks(
    state: &AppState,
    kind: EventKind,
    values: &[String],
    soft: bool,
    route: Option<&str>,
) -> Result<(), ApiError> {
    state.cdn.enqueue(kind, values, soft, route).map_err(|e| {
        tracing::error!(error = %e, "could not queue a CDN purge");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cdn_outbox",
            "the purge is done here, but the CDN purge could not be queued (the outbox could not be written); retry",
        )
    })
}

/// What was purged, counted by kind (`strata_purges_total{kind=…}` on `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeKind {
    /// `{"url": …}`.
    Url,
    /// `{"tag": …}`.
    Tag,
    /// `{"prefix": …}`.
    Prefix,
    /// `{"route": …}`.
    Route,
    /// `{"all": true}`.
    All,
    /// A tag named by a data API write's `Strata-Tags`.
    WriteTag,
}

impl PurgeKind {
    const ALL: [PurgeKind; 6] = [
        PurgeKind::Url,
        PurgeKind::Tag,
        PurgeKind::Prefix,
        PurgeKind::Route,
        PurgeKind::All,
        PurgeKind::WriteTag,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            PurgeKind::Url => "url",
            PurgeKind::Tag => "tag",
            PurgeKind::Prefix => "prefix",
            PurgeKind::Route => "route",
            PurgeKind::All => "all",
            PurgeKind::WriteTag => "write_tag",
        }
    }
}

/// Purge counters by kind.
#[derive(Debug, Default)]
pub struct PurgeCounters([AtomicU64; 6]);

impl PurgeCounters {
    /// Counts one purge of `kind`.
    pub fn inc(&self, kind: PurgeKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The purges of `kind` so far.
    pub fn get(&self, kind: PurgeKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    /// The counters by kind, for `/v1/_stats`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            PurgeKind::ALL
                .iter()
                .map(|k| (k.label().to_string(), self.get(*k).into()))
                .collect(),
        )
    }

    /// Publishes the counters to the `metrics` recorder.
    pub fn publish(&self) {
        for k in PurgeKind::ALL {
            metrics::counter!("strata_purges_total", "kind" => k.label()).absolute(self.get(k));
        }
    }
}

//! Downstream CDN purge hooks (`[[cdn]]`): every purge Strata carries out (`POST /v1/_purge`, a data write's
//! `Strata-Tags`, a write to a namespace whose answers HTTP caches hold, the tags a CDC change takes out of the
//! proxy — queued by the CDC applier's observer before the batch is applied) is also sent to the CDNs in front,
//! so the browser-facing edge stops serving the old object too.
//!
//! # Delivery: at least once
//! - **Durable outbox.** An event is appended to `{data_dir}/cdn/{hook}.outbox` and `fsync`ed before the purge
//!   is acknowledged; a line is `crc32(json) json`. The last delivered sequence number is kept in
//!   `{hook}.acked` (written to a temporary file, `fsync`ed, renamed). After `kill -9` every event past the
//!   acked one is sent again — a CDN purge is idempotent, so a repeat costs nothing but a request.
//! - **Damage is loud.** A line whose checksum or JSON does not hold is never skipped silently: it is logged as an
//!   error, counted (`strata_cdn_outbox_damaged_total`) and copied into the dead-letter file; the lines after it
//!   are delivered. Since the damaged event cannot be known, the hook then purges everything once (a superset
//!   of what was lost).
//! - **Batching.** Pending events of one kind are merged into one request (Fastly up to 256 surrogate keys,
//!   Cloudflare up to 30 tags or files, the webhook up to `max_batch` values).
//! - **Retries.** A connection error, a timeout or a 5xx is retried with exponential backoff and full jitter
//!   (100 ms doubling to 30 s); a `429` waits at least its `Retry-After` (seconds or an HTTP date). After
//!   `max_attempts` (default 8), or at once on another 4xx (the CDN refused the request itself), the batch goes
//!   to `{hook}.dead` (JSON lines with the error) and `strata_cdn_dead_letters_total` counts it.
//!
//! # Request shapes
//! - **Fastly**: tags `POST {url}/service/{service}/purge` with `Surrogate-Key: k1 k2 …`; a URL
//!   `POST {url}/purge/{host}{path}`; a prefix, a route or everything `POST {url}/service/{service}/purge_all`;
//!   `Fastly-Key: {token}`; a soft purge adds `Fastly-Soft-Purge: 1`.
//! - **Cloudflare**: `POST {url}/zones/{service}/purge_cache` with `Authorization: Bearer {token}` and
//!   `{"tags": […]}`, `{"files": […]}`, `{"prefixes": […]}` or `{"purge_everything": true}` (Cloudflare has no
//!   soft purge: a soft one is sent hard, the safe side).
//! - **Webhook**: `POST {url}` with `{"kind": "tag"|"url"|"prefix"|"route"|"all", "values": […], "soft": …,
//!   "seq": …}` and `Strata-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`.
//!
//! # Transport
//! [`strata_http::client`]: HTTP/1.1, over TLS for an `https://` URL (the real CDN APIs), verified against
//! Mozilla's roots plus the PEM certificates of the hook's `ca_file` (an internal webhook behind a private CA).
//! A TLS failure is a connection error: retried with backoff, then dead-lettered with the reason.
//!
//! Hand-written because no crate delivers CDN purges; the outbox is a few dozen lines on `std::fs`, where a
//! queue crate would add a storage engine for one append-only file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_http::client::{causes, HttpsClient};
use tokio::sync::Notify;

/// What a purge covers, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Surrogate keys.
    Tag,
    /// Absolute URLs.
    Url,
    /// Absolute URL prefixes.
    Prefix,
    /// Route names.
    Route,
    /// Everything.
    All,
}

/// One purge to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the hook's outbox.
    pub seq: u64,
    /// What it covers.
    pub kind: EventKind,
    /// The tags, URLs, prefixes or route names (empty for `all`).
    pub values: Vec<String>,
    /// Mark stale instead of removing, where the CDN can.
    pub soft: bool,
    /// The route it concerns, when it concerns one (URL, prefix and route purges).
    #[serde(default)]
    pub route: Option<String>,
}

/// Which CDN API a hook speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// Fastly's purge API.
    Fastly,
    /// Cloudflare's `purge_cache`.
    Cloudflare,
    /// A JSON webhook with an HMAC signature.
    Webhook,
}

/// A hook as configured and resolved (secrets read from the environment).
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// Its name (files, metrics).
    pub name: String,
    /// The API.
    pub kind: HookKind,
    /// `http[s]://host[:port]` (and a path for a webhook).
    pub url: String,
    /// Trust anchors beyond Mozilla's, for an `https://` URL (from `ca_file`).
    pub roots: Vec<strata_http::client::CertificateDer<'static>>,
    /// Fastly's service id or Cloudflare's zone id.
    pub service: String,
    /// Fastly's key, Cloudflare's token (none for a webhook).
    pub token: Option<String>,
    /// The webhook's HMAC secret.
    pub secret: Option<String>,
    /// The routes whose purges it gets (empty: all). Tag and everything purges reach every hook.
    pub routes: Vec<String>,
    /// Most values per request.
    pub max_batch: usize,
    /// Attempts before a batch is dead-lettered.
    pub max_attempts: u32,
    /// How long one request may take.
    pub timeout: Duration,
}

/// A hook's counters.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Requests the CDN accepted.
    pub delivered: AtomicU64,
    /// Attempts that failed (and were retried or dead-lettered).
    pub failures: AtomicU64,
    /// Batches dead-lettered.
    pub dead_letters: AtomicU64,
    /// Outbox lines that did not read back.
    pub damaged: AtomicU64,
}

/// One hook: its outbox and its delivery task.
pub struct Hook {
    spec: HookSpec,
    client: HttpsClient,
    dir: PathBuf,
    queue: Mutex<Queue>,
    notify: Notify,
    stats: HookStats,
}

struct Queue {
    /// Events not yet delivered, in order, with when they were queued (ms).
    pending: VecDeque<(Event, u64)>,
    next_seq: u64,
    outbox: File,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn line_of(event: &Event) -> String {
    let json = serde_json::to_string(event).expect("an event serialises");
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

/// Parses an outbox line: `Err` says what is wrong with it.
fn parse_line(line: &str) -> Result<Event, String> {
    let (crc, json) = line
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_string())?;
    let want = u32::from_str_radix(crc, 16).map_err(|_| format!("checksum {crc:?}"))?;
    if crc32fast::hash(json.as_bytes()) != want {
        return Err("the checksum does not match".into());
    }
    serde_json::from_str(json).map_err(|e| format!("not an event: {e}"))
}

impl Hook {
    /// Opens (creating) the hook's outbox under `dir` and reads back what was not delivered.
    pub fn open(spec: HookSpec, dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let outbox_path = dir.join(format!("{}.outbox", spec.name));
        let acked = std::fs::read_to_string(dir.join(format!("{}.acked", spec.name)))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let stats = HookStats::default();
        let mut pending = VecDeque::new();
        let mut last = acked;
        let mut damaged = Vec::new();
        if let Ok(f) = File::open(&outbox_path) {
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        damaged.push((i + 1, format!("unreadable: {e}"), String::new()));
                        continue;
                    }
                };
                if line.is_empty() {
                    continue;
                }
                match parse_line(&line) {
                    Ok(e) => {
                        last = last.max(e.seq);
                        if e.seq > acked {
                            pending.push_back((e, now_ms()));
                        }
                    }
                    Err(why) => damaged.push((i + 1, why, line)),
                }
            }
        }
        let hook_dead = dir.join(format!("{}.dead", spec.name));
        for (line_no, why, raw) in &damaged {
            tracing::error!(
                hook = %spec.name,
                file = %outbox_path.display(),
                line = line_no,
                problem = %why,
                "CDN outbox line damaged: dead-lettered, and everything will be purged once"
            );
            stats.damaged.fetch_add(1, Ordering::Relaxed);
            append_dead(
                &hook_dead,
                &serde_json::json!({"damaged_line": line_no, "problem": why, "raw": raw}),
            );
        }
        if !damaged.is_empty() {
            last += 1;
            pending.push_back((
                Event {
                    seq: last,
                    kind: EventKind::All,
                    values: Vec::new(),
                    soft: false,
                    route: None,
                },
                now_ms(),
            ));
        }
        // Rewrite the outbox with only what is pending (compaction, and the damaged lines gone: they are in the
        // dead-letter file).
        let tmp = dir.join(format!("{}.outbox.tmp", spec.name));
        {
            let mut f = File::create(&tmp)?;
            for (e, _) in &pending {
                f.write_all(line_of(e).as_bytes())?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &outbox_path)?;
        sync_dir(dir);
        let outbox = OpenOptions::new().append(true).open(&outbox_path)?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            queue: Mutex::new(Queue {
                pending,
                next_seq: last + 1,
                outbox,
            }),
            notify: Notify::new(),
            stats,
            client: strata_http::client::https_client(&spec.roots)?,
            spec,
        }))
    }

    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its counters.
    pub fn stats(&self) -> &HookStats {
        &self.stats
    }

    /// Events waiting, and the age of the oldest (ms).
    pub fn backlog(&self) -> (usize, u64) {
        let q = self.queue.lock();
        let age = q
            .pending
            .front()
            .map_or(0, |(_, at)| now_ms().saturating_sub(*at));
        (q.pending.len(), age)
    }

    /// Whether the hook takes purges of `route` (`None`: purges that concern every route).
    fn wants(&self, route: Option<&str>) -> bool {
        match route {
            None => true,
            Some(r) => self.spec.routes.is_empty() || self.spec.routes.iter().any(|x| x == r),
        }
    }

    /// Queues a purge durably (appended and `fsync`ed); returns once it survives a crash.
    pub fn enqueue(
        &self,
        kind: EventKind,
        values: Vec<String>,
        soft: bool,
        route: Option<String>,
    ) -> std::io::Result<bool> {
        if !self.wants(route.as_deref()) {
            return Ok(false);
        }
        {
            let mut q = self.queue.lock();
            let event = Event {
                seq: q.next_seq,
                kind,
                values,
                soft,
                route,
            };
            q.outbox.write_all(line_of(&event).as_bytes())?;
            q.outbox.sync_data()?;
            q.next_seq += 1;
            q.pending.push_back((event, now_ms()));
        }
        self.notify.notify_one();
        Ok(true)
    }

    /// Records that every event up to `seq` is delivered (or dead-lettered).
    fn ack(&self, seq: u64) {
        let path = self.dir.join(format!("{}.acked", self.spec.name));
        let tmp = self.dir.join(format!("{}.acked.tmp", self.spec.name));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(seq.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            // Not lost: the events are sent again after a restart.
            tracing::warn!(hook = %self.spec.name, error = %e, "could not record a CDN delivery");
        }
        let mut q = self.queue.lock();
        while q.pending.front().is_some_and(|(e, _)| e.seq <= seq) {
            q.pending.pop_front();
        }
    }

    /// The next batch: the oldest pending event and the ones after it of the same kind and softness, up to the
    /// API's limit.
    fn next_batch(&self) -> Option<(Vec<Event>, u64)> {
        let q = self.queue.lock();
        let (first, _) = q.pending.front()?;
        let limit = match (self.spec.kind, first.kind) {
            (_, EventKind::All | EventKind::Route) => usize::MAX,
            (HookKind::Fastly, EventKind::Url) => 1,
            (HookKind::Fastly, _) => 256.min(self.spec.max_batch),
            (HookKind::Cloudflare, _) => 30.min(self.spec.max_batch),
            (HookKind::Webhook, _) => self.spec.max_batch,
        };
        let mut batch = Vec::new();
        let mut values = 0;
        for (e, _) in &q.pending {
            if e.kind != first.kind || e.soft != first.soft {
                break;
            }
            if !batch.is_empty() && values + e.values.len() > limit {
                break;
            }
            values += e.values.len();
            batch.push(e.clone());
        }
        let last = batch.last().map(|e| e.seq)?;
        Some((batch, last))
    }

    /// Delivers until stopped: one batch at a time, retried as the module docs say.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let client = self.client.clone();
        let mut attempt: u32 = 0;
        loop {
            let Some((batch, last)) = self.next_batch() else {
                tokio::select! {
                    _ = self.notify.notified() => continue,
                    _ = stop.changed() => return,
                }
            };
            let outcome = self.send(&client, &batch).await;
            let wait = match outcome {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    self.ack(last);
                    attempt = 0;
                    continue;
                }
                Err(Failure::Permanent(why)) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.dead_letter(&batch, &why);
                    self.ack(last);
                    attempt = 0;
                    continue;
                }
                Err(Failure::Retry { why, at_least }) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    if attempt >= self.spec.max_attempts {
                        self.dead_letter(&batch, &why);
                        self.ack(last);
                        attempt = 0;
                        continue;
                    }
                    tracing::warn!(hook = %self.spec.name, attempt, error = %why, "CDN purge failed; retrying");
                    backoff(attempt).max(at_least)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn dead_letter(&self, batch: &[Event], why: &str) {
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        tracing::error!(hook = %self.spec.name, error = %why, events = batch.len(), "CDN purge dead-lettered");
        append_dead(
            &self.dir.join(format!("{}.dead", self.spec.name)),
            &serde_json::json!({"events": batch, "error": why, "at_ms": now_ms()}),
        );
    }

    async fn send(&self, client: &HttpsClient, batch: &[Event]) -> Result<(), Failure> {
        let requests = self.requests(batch);
        for req in requests {
            let resp = tokio::time::timeout(self.spec.timeout, client.request(req))
                .await
                .map_err(|_| Failure::Retry {
                    why: "timed out".into(),
                    at_least: Duration::ZERO,
                })?
                .map_err(|e| Failure::Retry {
                    why: format!("unreachable: {}", causes(&e)),
                    at_least: Duration::ZERO,
                })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            if status.is_success() {
                continue;
            }
            let text = body
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned())
                .unwrap_or_default();
            let why = format!("{status}: {text}");
            return Err(
                if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
                    Failure::Retry {
                        why,
                        at_least: retry_after.unwrap_or(Duration::ZERO),
                    }
                } else {
                    Failure::Permanent(why)
                },
            );
        }
        Ok(())
    }

    /// The HTTP requests that deliver `batch` (one, except Fastly URL purges: one per URL).
    fn requests(&self, batch: &[Event]) -> Vec<http::Request<Full<Bytes>>> {
        let first = &batch[0];
        let values: Vec<String> = batch.iter().flat_map(|e| e.values.clone()).collect();
        let base = self.spec.url.trim_end_matches('/');
        let service = &self.spec.service;
        let json = |v: serde_json::Value| Full::new(Bytes::from(v.to_string()));
        let mut out = Vec::new();
        match self.spec.kind {
            HookKind::Fastly => {
                let builder = |uri: String| {
                    let mut b = http::Request::post(uri);
                    if let Some(t) = &self.spec.token {
                        b = b.header("fastly-key", t);
                    }
                    if first.soft {
                        b = b.header("fastly-soft-purge", "1");
                    }
                    b
                };
                match first.kind {
                    EventKind::Tag => out.push(
                        builder(format!("{base}/service/{service}/purge"))
                            .header("surrogate-key", values.join(" "))
                            .body(Full::new(Bytes::new())),
                    ),
                    EventKind::Url => {
                        for u in &values {
                            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
                            out.push(
                                builder(format!("{base}/purge/{rest}"))
                                    .body(Full::new(Bytes::new())),
                            );
                        }
                    }
                    EventKind::Prefix | EventKind::Route | EventKind::All => out.push(
                        builder(format!("{base}/service/{service}/purge_all"))
                            .body(Full::new(Bytes::new())),
                    ),
                }
            }
            HookKind::Cloudflare => {
                let body = match first.kind {
                    EventKind::Tag => serde_json::json!({"tags": values}),
                    EventKind::Url => serde_json::json!({"files": values}),
                    EventKind::Prefix => serde_json::json!({"prefixes": values}),
                    EventKind::Route | EventKind::All => {
                        serde_json::json!({"purge_everything": true})
                    }
                };
                let mut b = http::Request::post(format!("{base}/zones/{service}/purge_cache"))
                    .header("content-type", "application/json");
                if let Some(t) = &self.spec.token {
                    b = b.header("authorization", format!("Bearer {t}"));
                }
                out.push(b.body(json(body)));
            }
            HookKind::Webhook => {
                let body = serde_json::json!({
                    "kind": first.kind,
                    "values": values,
                    "soft": first.soft,
                    "seq": batch.last().map(|e| e.seq),
                })
                .to_string();
                let mut b = http::Request::post(base).header("content-type", "application/json");
                if let Some(secret) = &self.spec.secret {
                    b = b.header(
                        "strata-signature",
                        format!("sha256={}", sign(secret, &body)),
                    );
                }
                out.push(b.body(Full::new(Bytes::from(body))));
            }
        }
        out.into_iter().filter_map(Result::ok).collect()
    }
}

/// Why a delivery failed.
enum Failure {
    /// Try again (after at least `at_least`).
    Retry { why: String, at_least: Duration },
    /// The CDN refused the request itself: retrying cannot help.
    Permanent(String),
}

/// `attempt`'s wait: full jitter over an exponential cap (100 ms · 2^(attempt-1), at most 30 s).
fn backoff(attempt: u32) -> Duration {
    let cap = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(30_000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    if let Ok(s) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(s.min(3600)));
    }
    let at = strata_http::freshness::parse_http_date(v.trim().as_bytes())?;
    Some(Duration::from_secs(
        at.saturating_sub(now_ms() / 1000).min(3600),
    ))
}

/// The webhook signature: hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn append_dead(path: &Path, v: &serde_json::Value) {
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(format!("{v}\n").as_bytes())?;
        f.sync_data()
    };
    if let Err(e) = write() {
        tracing::error!(file = %path.display(), error = %e, "could not write a CDN dead letter");
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Every hook of a server (cheap to clone: the hooks are shared).
#[derive(Default, Clone)]
pub struct Hooks(Vec<Arc<Hook>>);

impl Hooks {
    /// Opens every hook's outbox under `dir`.
    pub fn open(specs: Vec<HookSpec>, dir: &Path) -> anyhow::Result<Self> {
        let mut hooks = Vec::new();
        for s in specs {
            let name = s.name.clone();
            hooks.push(
                Hook::open(s, dir)
                    .map_err(|e| anyhow::anyhow!("cdn hook {name:?}: opening its outbox: {e}"))?,
            );
        }
        Ok(Self(hooks))
    }

    /// The hooks.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Hook>> {
        self.0.iter()
    }

    /// Starts every hook's delivery task; they end when `stop` turns true.
    pub fn start(&self, stop: &tokio::sync::watch::Receiver<bool>) {
        for h in &self.0 {
            tokio::spawn(h.clone().run(stop.clone()));
        }
    }

    /// Queues a purge on every hook that takes it (durably: see the module docs). Fails when an outbox cannot
    /// be written — the purge is then not acknowledged.
    pub fn enqueue(
        &self,
        kind: EventKind,
        values: &[String],
        soft: bool,
        route: Option<&str>,
    ) -> std::io::Result<()> {
        for h in &self.0 {
            h.enqueue(kind, values.to_vec(), soft, route.map(str::to_owned))?;
        }
        Ok(())
    }

    /// Publishes the counters to the `metrics` recorder.
    pub fn publish(&self) {
        for h in &self.0 {
            let name = h.name().to_string();
            let s = h.stats();
            let (depth, lag) = h.backlog();
            metrics::counter!("strata_cdn_deliveries_total", "hook" => name.clone())
                .absolute(s.delivered.load(Ordering::Relaxed));
            metrics::counter!("strata_cdn_failures_total", "hook" => name.clone())
                .absolute(s.failures.load(Ordering::Relaxed));
            metrics::counter!("strata_cdn_dead_letters_total", "hook" => name.clone())
                .absolute(s.dead_letters.load(Ordering::Relaxed));
            metrics::counter!("strata_cdn_outbox_damaged_total", "hook" => name.clone())
                .absolute(s.damaged.load(Ordering::Relaxed));
            metrics::gauge!("strata_cdn_queue_depth", "hook" => name.clone()).set(depth as f64);
            metrics::gauge!("strata_cdn_lag_seconds", "hook" => name).set(lag as f64 / 1000.0);
        }
    }

    /// The hooks' state for `/v1/_stats`.
    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.0
                .iter()
                .map(|h| {
                    let s = h.stats();
                    let (depth, lag) = h.backlog();
                    serde_json::json!({
                        "hook": h.name(),
                        "kind": format!("{:?}", h.spec.kind).to_lowercase(),
                        "delivered": s.delivered.load(Ordering::Relaxed),
                        "failures": s.failures.load(Ordering::Relaxed),
                        "dead_letters": s.dead_letters.load(Ordering::Relaxed),
                        "damaged": s.damaged.load(Ordering::Relaxed),
                        "queue_depth": depth,
                        "lag_ms": lag,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: HookKind) -> HookSpec {
        HookSpec {
            name: "h".into(),
            kind,
            url: "http://cdn.test".into(),
            roots: vec![],
            service: "svc".into(),
            token: Some("tok".into()),
            secret: Some("s3cret".into()),
            routes: vec![],
            max_batch: 100,
            max_attempts: 3,
            timeout: Duration::from_secs(1),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("strata-cdn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn lines_carry_a_checksum_that_catches_one_flipped_byte() {
        let e = Event {
            seq: 7,
            kind: EventKind::Tag,
            values: vec!["product:42".into()],
            soft: true,
            route: None,
        };
        let line = line_of(&e);
        assert_eq!(parse_line(line.trim_end()).unwrap(), e);
        let mut bad = line.trim_end().as_bytes().to_vec();
        let i = bad.len() - 5;
        bad[i] ^= 1;
        assert!(parse_line(&String::from_utf8_lossy(&bad)).is_err());
        assert!(parse_line("zz {}").is_err());
        assert!(parse_line("nochecksum").is_err());
    }

    #[test]
    fn the_outbox_survives_a_reopen_and_acked_events_are_not_sent_again() {
        let d = dir("reopen");
        let h = Hook::open(spec(HookKind::Webhook), &d).unwrap();
        h.enqueue(EventKind::Tag, vec!["a".into()], false, None)
            .unwrap();
        h.enqueue(EventKind::Tag, vec!["b".into()], false, None)
            .unwrap();
        h.enqueue(EventKind::Url, vec!["http://x/1".into()], false, None)
            .unwrap();
        let (batch, last) = h.next_batch().unwrap();
        assert_eq!(batch.len(), 2, "the two tag purges go in one request");
        h.ack(last);
        drop(h);
        let h = Hook::open(spec(HookKind::Webhook), &d).unwrap();
        let (batch, _) = h.next_batch().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].kind, EventKind::Url);
        // New events continue the numbering.
        h.enqueue(EventKind::Tag, vec!["c".into()], false, None)
            .unwrap();
        assert!(h.queue.lock().pending.back().unwrap().0.seq > batch[0].seq);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_damaged_line_is_dead_lettered_counted_and_answered_with_a_purge_of_everything() {
        let d = dir("damaged");
        let h = Hook::open(spec(HookKind::Fastly), &d).unwrap();
        h.enqueue(EventKind::Tag, vec!["a".into()], false, None)
            .unwrap();
        h.enqueue(EventKind::Tag, vec!["b".into()], false, None)
            .unwrap();
        drop(h);
        let path = d.join("h.outbox");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"a\"", "\"A\"", 1)).unwrap();
        let h = Hook::open(spec(HookKind::Fastly), &d).unwrap();
        assert_eq!(h.stats().damaged.load(Ordering::Relaxed), 1);
        let dead = std::fs::read_to_string(d.join("h.dead")).unwrap();
        assert!(dead.contains("checksum"), "{dead}");
        let kinds: Vec<EventKind> = h.queue.lock().pending.iter().map(|(e, _)| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Tag, EventKind::All],
            "b survives; everything is purged once"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn requests_have_each_cdns_shape() {
        let ev = |kind, values: &[&str], soft| Event {
            seq: 1,
            kind,
            values: values.iter().map(|s| s.to_string()).collect(),
            soft,
            route: None,
        };
        let d = dir("shapes");
        let f = Hook::open(spec(HookKind::Fastly), &d).unwrap();
        let r = f.requests(&[ev(EventKind::Tag, &["a", "b"], true)]);
        assert_eq!(r[0].uri(), "http://cdn.test/service/svc/purge");
        assert_eq!(r[0].headers()["surrogate-key"], "a b");
        assert_eq!(r[0].headers()["fastly-key"], "tok");
        assert_eq!(r[0].headers()["fastly-soft-purge"], "1");
        let r = f.requests(&[ev(
            EventKind::Url,
            &["https://www.example.com/p/1?x"],
            false,
        )]);
        assert_eq!(r[0].uri(), "http://cdn.test/purge/www.example.com/p/1?x");
        assert!(r[0].headers().get("fastly-soft-purge").is_none());
        let r = f.requests(&[ev(EventKind::Prefix, &["http://h/p/"], false)]);
        assert_eq!(r[0].uri(), "http://cdn.test/service/svc/purge_all");
        drop(f);
        let _ = std::fs::remove_dir_all(&d);
        let c = Hook::open(spec(HookKind::Cloudflare), &d).unwrap();
        let r = c.requests(&[ev(EventKind::Url, &["http://h/a"], false)]);
        assert_eq!(r[0].uri(), "http://cdn.test/zones/svc/purge_cache");
        assert_eq!(r[0].headers()["authorization"], "Bearer tok");
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(
            sign("key", "The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
            "RFC 4231-style known answer (the HMAC-SHA256 example from Wikipedia)"
        );
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_by_name() {
        let d = dir("ca-file");
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = strata_http::client::load_roots(&f).unwrap_err();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = strata_http::client::load_roots(&d.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_backoff_is_capped() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert!(retry_after("soon").is_none());
        for a in 1..40 {
            assert!(backoff(a) <= Duration::from_secs(30));
        }
        assert!(backoff(1) <= Duration::from_millis(100));
    }
}

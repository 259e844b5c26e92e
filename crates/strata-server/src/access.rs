//! Access control at the edge of the router, before any handler: who may reach the API from a web page.
//!
//! A bearer token (see [`crate::api`]) keeps strangers from writing; these checks keep *web pages* from using a
//! browser that can reach the server (a developer's laptop, a node on the office network) as a proxy:
//!
//! - **Host** (DNS rebinding: a page on `evil.example` re-resolves its name to `127.0.0.1` and reads or writes
//!   "same-origin"): every route but `/healthz` and `/readyz` needs a `Host` the server answers to — the listen
//!   address, `localhost`, `127.0.0.1` and `[::1]` with the listen port, any IP address with the listen port
//!   when listening on `0.0.0.0`/`[::]` (a rebinding page always sends its own name, never an address), and
//!   `[server] allowed_hosts` (`"name"`: any port, `"name:port"`, `"*"`: no check). A `Host` without a port is
//!   compared by name. Otherwise: `403 forbidden_host`, naming it.
//! - **Origin** (cross-site requests): when a request carries `Origin`, it must be the server's own
//!   (`http://` or `https://` plus an allowed Host, as the request addressed it) or one of
//!   `[server] allowed_origins`. Otherwise: `403 forbidden_origin`, naming it. No CORS headers are ever sent, so
//!   a browser lets no other page read an answer either.
//! - **Content-Type**: `POST` and `PUT` need `Content-Type: application/json` (`415 unsupported_media_type`), so no
//!   HTML form or CORS-"simple" request (`text/plain`, form encodings) can write, invalidate, warm or bulk-load;
//!   a JSON request from another origin needs a preflight, which the server never grants. `DELETE` is not a
//!   simple method either.
//!
//! Health and readiness stay open to any Host: load balancers and orchestrators probe by address or by names the
//! server does not know, and they reveal nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::ServerConfig;

/// One allowed `Host`: a name (or address) with or without a port, or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// `*`: no Host check.
    Any,
    /// A host name or address (lowercase, IPv6 without brackets), with the port it must carry, if any.
    Name(String, Option<u16>),
}

impl HostRule {
    /// Parses `name`, `name:port`, `[v6]`, `[v6]:port` or `*`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "*" {
            return Some(Self::Any);
        }
        let (name, port) = split_host(s)?;
        Some(Self::Name(name, port))
    }

    fn matches(&self, name: &str, port: Option<u16>) -> bool {
        match self {
            Self::Any => true,
            Self::Name(n, p) => n == name && (p.is_none() || port.is_none() || *p == port),
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into a lowercase name without brackets or a trailing dot, and the
/// port. `None` when it is not a plausible host.
fn split_host(s: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (v6.to_owned(), port)
    } else {
        match s.rsplit_once(':') {
            Some((n, p)) => (n.to_owned(), Some(p.parse::<u16>().ok()?)),
            None => (s.to_owned(), None),
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let plausible = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'));
    plausible.then_some((name, port))
}

/// `scheme://host[:port]` with the scheme's default port made explicit, lowercase; `None` when `s` is not an
/// http(s) origin.
pub fn normalize_origin(s: &str) -> Option<(String, String, u16)> {
    let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.contains('/') || rest.contains('@') {
        return None;
    }
    let (name, port) = split_host(rest)?;
    Some((scheme.to_owned(), name, port.unwrap_or(default)))
}

/// The allowed Hosts and Origins of one listening server.
#[derive(Debug, Clone)]
pub struct Access {
    hosts: Vec<HostRule>,
    /// Listening on `0.0.0.0`/`[::]`: any IP address with this port is a Host the server answers to.
    any_ip_port: Option<u16>,
    origins: Vec<(String, String, u16)>,
}

impl Access {
    /// The rules for a server listening on `listen` (the bound address: the real port) with `server`'s lists.
    pub fn new(listen: SocketAddr, server: &ServerConfig) -> Self {
        let port = listen.port();
        let mut hosts: Vec<HostRule> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|n| HostRule::Name((*n).to_owned(), Some(port)))
            .collect();
        let ip = listen.ip();
        if !ip.is_unspecified() {
            hosts.push(HostRule::Name(
                ip.to_string().to_ascii_lowercase(),
                Some(port),
            ));
        }
        hosts.extend(
            server
                .allowed_hosts
                .iter()
                .filter_map(|h| HostRule::parse(h)),
        );
        Self {
            hosts,
            any_ip_port: ip.is_unspecified().then_some(port),
            origins: server
                .allowed_origins
                .iter()
                .filter_map(|o| normalize_origin(o))
                .collect(),
        }
    }

    /// Whether the server answers to `host` (a `Host` header's value).
    pub fn host_allowed(&self, host: &str) -> bool {
        if self.hosts.contains(&HostRule::Any) {
            return true;
        }
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if let Some(p) = self.any_ip_port {
            if name.parse::<IpAddr>().is_ok() && port.is_none_or(|q| q == p) {
                return true;
            }
        }
        self.hosts.iter().any(|r| r.matches(&name, port))
    }

    /// Whether `origin` may send requests to this server, addressed as `host` (already allowed).
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let Some((scheme, name, port)) = normalize_origin(origin) else {
            return false;
        };
        let default = if scheme == "https" { 443 } else { 80 };
        let same = host
            .and_then(split_host)
            .is_some_and(|(h, hp)| h == name && hp.unwrap_or(default) == port);
        same || self
            .origins
            .iter()
            .any(|(s, n, p)| *s == scheme && *n == name && *p == port)
    }
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// The middleware: Host and Origin checks (see the module docs); [`json_only`] is the Content-Type check.
pub async fn check(State(access): State<Arc<Access>>, req: Request<Body>, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    if let Some(h) = &host {
        if !access.host_allowed(h) {
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "this server does not answer to Host {h:?} (a page on another name that resolves here, i.e. \
                     DNS rebinding, looks like this); add it to `allowed_hosts` in [server] if clients really \
                     address the server so"
                ),
            );
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("\u{fffd}");
        if !access.origin_allowed(o, host.as_deref()) {
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "requests from web origin {o:?} are refused (cross-site); add it to `allowed_origins` in \
                     [server] if that page may use this server"
                ),
            );
        }
    }
    next.run(req).await
}

/// The Content-Type check (see the module docs), as a route layer: it runs once the route and method matched,
/// so an unknown route is 404 and an undeclared method 405 whatever the body. A request without a body (no
/// `Content-Type`, `Content-Length` 0 or none, no `Transfer-Encoding`: the dead-letter retry) carries no form to
/// refuse.
pub async fn json_only(req: Request<Body>, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::CONTENT_TYPE)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            let given = if ct.is_empty() {
                "none".to_owned()
            } else {
                format!("{ct:?}")
            };
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "{} needs `Content-Type: application/json` (given: {given}); with curl: -H 'content-type: \
                     application/json'",
                    req.method()
                ),
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, hosts: &[&str], origins: &[&str]) -> Access {
        let server = ServerConfig {
            allowed_hosts: hosts.iter().map(|s| (*s).to_owned()).collect(),
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            ..ServerConfig::default()
        };
        Access::new(listen.parse().unwrap(), &server)
    }

    #[test]
    fn hosts_are_the_listen_address_loopback_names_and_the_list() {
        let a = access("127.0.0.1:8700", &["cache.internal", "edge:9000"], &[]);
        for ok in [
            "127.0.0.1:8700",
            "localhost:8700",
            "LOCALHOST:8700",
            "[::1]:8700",
            "localhost",
            "127.0.0.1",
            "cache.internal:1234",
            "cache.internal",
            "edge:9000",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8700",
            "localhost:8701",
            "10.0.0.5:8700",
            "edge:9001",
            "",
            "a b",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let any = access("0.0.0.0:8700", &[], &[]);
        assert!(any.host_allowed("10.0.0.5:8700") && any.host_allowed("[fe80::1]:8700"));
        assert!(!any.host_allowed("10.0.0.5:8701") && !any.host_allowed("evil.example:8700"));
        assert!(access("127.0.0.1:1", &["*"], &[]).host_allowed("whatever:2"));
    }

    #[test]
    fn origins_are_the_servers_own_and_the_list() {
        let a = access("127.0.0.1:8700", &[], &["https://admin.example.com"]);
        assert!(a.origin_allowed("http://localhost:8700", Some("localhost:8700")));
        assert!(a.origin_allowed("http://127.0.0.1:8700", Some("127.0.0.1:8700")));
        assert!(a.origin_allowed("https://admin.example.com", Some("localhost:8700")));
        assert!(a.origin_allowed("https://admin.example.com:443/", None));
        assert!(!a.origin_allowed("http://localhost:3000", Some("localhost:8700")));
        assert!(!a.origin_allowed("http://evil.example", Some("localhost:8700")));
        assert!(!a.origin_allowed("null", Some("localhost:8700")));
        assert!(!a.origin_allowed("http://admin.example.com", Some("localhost:8700")));
        assert_eq!(normalize_origin("ftp://x"), None);
        assert_eq!(
            normalize_origin("HTTP://Example.com"),
            Some(("http".into(), "example.com".into(), 80))
        );
    }
}

//! The edge of every request: the request-head limits, and a JSON body for every error — also the ones no
//! handler wrote (an extractor's rejection such as a path that is not UTF-8, axum's own 4xx) and the ones hyper
//! answers by itself before a request exists (a head past hyper's buffer, a URI past its hard limit, a request
//! that is not HTTP/1.1: [`rewrite_automatic`], used by [`crate::conn`]).
//!
//! - **URI** at most [`HeadLimits::max_uri`] bytes (8 KiB, or `3 × max_key_len + 1 KiB` when that is larger —
//!   a key may be percent-encoded — up to 65,000): else `414 uri_too_long`.
//! - **Headers** at most [`HeadLimits::max_headers`] (100) fields and [`HeadLimits::max_header_bytes`] (32 KiB,
//!   names and values): else `431 headers_too_large`. hyper's own limits are set well above these
//!   ([`HYPER_MAX_HEADERS`], [`HYPER_MAX_BUF`]), so the JSON answers come from here; past hyper's limits, its
//!   empty answers are rewritten to JSON by the connection layer.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Header fields hyper accepts in one head (past it hyper answers 431 itself).
pub const HYPER_MAX_HEADERS: usize = 1000;
/// hyper's read buffer: the largest head it parses (past it hyper answers 431 itself).
pub const HYPER_MAX_BUF: usize = 1 << 20;

/// The request-head limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request target (path and query), in bytes.
    pub max_uri: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Most bytes of header names and values together.
    pub max_header_bytes: usize,
}

impl HeadLimits {
    /// The limits for a server whose keys are at most `max_key_len` bytes.
    pub fn for_key_len(max_key_len: usize) -> Self {
        Self {
            max_uri: (3 * max_key_len + 1024).clamp(8 * 1024, 65_000),
            max_headers: 100,
            max_header_bytes: 32 * 1024,
        }
    }
}

/// The JSON error answer `{"error": code, "message": message}` with `status`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// The error code of a status when no handler named one.
fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "no_route",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        431 => "headers_too_large",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// The middleware: head limits first, then the request; an error answer without a JSON body gets one.
pub async fn check(State(limits): State<HeadLimits>, req: Request<Body>, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > limits.max_uri {
        return error(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {target} bytes; at most {} (keys are at most server.max_key_len bytes)",
                limits.max_uri
            ),
        );
    }
    let fields = req.headers().len();
    let bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if fields > limits.max_headers || bytes > limits.max_header_bytes {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "{fields} header fields of {bytes} bytes; at most {} fields and {} bytes",
                limits.max_headers, limits.max_header_bytes
            ),
        );
    }
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    // An answer no handler wrote (an extractor's rejection, axum's own): keep its text as the message.
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = if status == StatusCode::BAD_REQUEST && text.starts_with("Invalid URL") {
        "bad_path"
    } else {
        code_of(status)
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else if code == "bad_path" {
        format!("{text} (paths are percent-encoded UTF-8)")
    } else {
        text
    };
    let mut out = error(status, code, message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// hyper's automatic answer to a head it could not take (`400`, `414`, `431` with an empty body, written
/// before any request exists) as the same status with a JSON body; `None` for anything else. `head` is what hyper
/// writes: the whole answer (a status line and headers, no body).
pub fn rewrite_automatic(head: &[u8]) -> Option<Vec<u8>> {
    let status = match head.get(..12)? {
        b"HTTP/1.1 400" | b"HTTP/1.0 400" => 400,
        b"HTTP/1.1 414" | b"HTTP/1.0 414" => 414,
        b"HTTP/1.1 431" | b"HTTP/1.0 431" => 431,
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let (fields, rest) = text.split_once("\r\n\r\n")?;
    let empty = fields
        .lines()
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if !rest.is_empty() || !empty {
        return None;
    }
    let (code, message) = match status {
        400 => (
            "bad_request",
            "the request is not valid HTTP/1.1 (request line or a header)",
        ),
        414 => ("uri_too_long", "the request target is too long"),
        _ => (
            "headers_too_large",
            "the request head (request line and headers) is too large",
        ),
    };
    let body = json!({"error": code, "message": message}).to_string();
    let reason = StatusCode::from_u16(status)
        .ok()?
        .canonical_reason()
        .unwrap_or("");
    let date = fields
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("date:"))
        .map_or(String::new(), |l| format!("{l}\r\n"));
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n{date}\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

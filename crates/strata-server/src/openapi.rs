//! The OpenAPI 3.1 document served at `/openapi.json`, built per server from its state: the configured namespaces
//! (`ns` is one of them), the enforced limits (`max_key_len`, `max_body`, the head limits of [`crate::edge`]) and
//! every status each route answers with. Written by hand next to the router; a test requests every operation it
//! lists and checks that the router knows it (and nothing it does not list is routed under `/v1`), and
//! `scripts/test.sh` runs schemathesis against it (every answer as documented, no 5xx on any input).

use serde_json::{json, Map, Value};

use crate::edge::HeadLimits;
use crate::state::{AppState, NsHandle};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

/// `responses` with the errors every route but health can answer (Host/Origin checks, head limits).
fn responses(own: Value, body: bool) -> Value {
    let mut m: Map<String, Value> = own.as_object().cloned().unwrap_or_default();
    let mut add = |status: &str, description: &str| {
        if let Some(Value::Object(r)) = m.get_mut(status) {
            let d = r["description"].as_str().unwrap_or("").to_owned();
            r.insert("description".into(), format!("{d}; {description}").into());
        } else {
            m.insert(status.into(), error_response(description));
        }
    };
    add(
        "403",
        "`forbidden_host` (a Host the server does not answer to) or `forbidden_origin` (a foreign Origin)",
    );
    add(
        "414",
        "`uri_too_long`: the request target is longer than the limit",
    );
    add(
        "431",
        "`headers_too_large`: too many header fields, or too many bytes of them",
    );
    if body {
        add("400", "`bad_json`: the body is not the expected JSON");
        add(
            "413",
            "`body_too_large`: the body is larger than server.max_body",
        );
        add(
            "415",
            "`unsupported_media_type`: the body is not `Content-Type: application/json`",
        );
    }
    Value::Object(m)
}

fn key_param(state: &AppState, h: &NsHandle) -> Value {
    let mut schema = match &h.schema {
        Some(s) => s.key_json_schema(),
        None => json!({"type": "string", "pattern": "^[^_]"}),
    };
    schema["minLength"] = 1.into();
    let max = schema["maxLength"]
        .as_u64()
        .map_or(state.max_key_len, |n| (n as usize).min(state.max_key_len));
    schema["maxLength"] = max.into();
    json!({"name": "key", "in": "path", "required": true,
           "schema": schema,
           "description": format!("The key: at most {} bytes (server.max_key_len), not starting with `_`; in a \
               namespace bound to a table, the canonical spelling of the key column's value (else 400 `bad_key`)",
               state.max_key_len)})
}

fn seq_param() -> Value {
    json!({"name": "seq", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}, "description": "A dead letter's journal sequence number"})
}

/// The answers of a route that needs the token.
fn auth_errors(m: &mut Value) {
    let o = m.as_object_mut().expect("responses");
    o.insert("401".into(), error_response("`unauthorized`: no token"));
    o.insert(
        "403".into(),
        error_response("`forbidden` (wrong token), `forbidden_host` or `forbidden_origin`"),
    );
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// The document for the server of `state`.
pub fn document(state: &AppState) -> Value {
    let auth = json!([{"bearer": []}]);
    let head = HeadLimits::for_key_len(state.max_key_len);
    let max_body = state.max_body;
    let info = format!(
        "Read-through cache over your database, per-namespace write policies, invalidation by key, tag or \
         namespace. Every error is JSON `{{\"error\": code, \"message\": …}}`; a value the source refuses is 422 \
         `rejected` with `field` and `rule`; 5xx say which dependency failed. Limits: keys {} bytes, bodies {} \
         bytes, request targets {} bytes, {} header fields of {} bytes together.",
        state.max_key_len, max_body, head.max_uri, head.max_headers, head.max_header_bytes
    );
    let read_5xx = |m: &mut Value| {
        let o = m.as_object_mut().expect("responses");
        o.insert(
            "502".into(),
            error_response("`source_failed`: the source (database) failed to answer"),
        );
        o.insert("503".into(), error_response(
            "`source_unavailable`/`unavailable`: the source or the shared tier is down; `overloaded`: a queue is full"));
        o.insert("429".into(), error_response(
            "`rate_limited`: the namespace's `rate_limit` refused this client (`limit`, `key`); headers Retry-After, RateLimit, RateLimit-Policy"));
        o.insert(
            "504".into(),
            error_response("`timeout`/`source_timeout`: the source did not answer in time"),
        );
    };
    let mut get_value = responses(
        json!({
            "200": {"description": "The value; headers Cache-Status (RFC 9211), Age, ETag",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Value"}}}},
            "302": {"description": "`?v=N` is not the current version: `Location` names the current one (`Cache-Control: no-cache`)"},
            "304": {"description": "`If-None-Match` matches the current `ETag`: the same fields, no body"},
            "400": error_response("`bad_key` (not the canonical spelling; `expected` says the form), `bad_path` (not UTF-8), `bad_version` (`?v=` is not an integer) or `unversioned` (the namespace has no versions)"),
            "404": error_response("`unknown_namespace`, or `not_found`: the key does not exist"),
        }),
        false,
    );
    read_5xx(&mut get_value);
    let mut purge = responses(
        json!({
            "200": ok_json("Purged on every node: {\"purged\": {kind: what it covers}, \"soft\": bool}"),
            "400": error_response("`bad_purge` (not exactly one target; a URL that is not absolute http(s); a tag with whitespace; an unknown route) or `bad_json`"),
            "404": error_response("`no_proxy`: a URL, prefix, route or `all` purge without `[proxy]`"),
            "500": error_response("`cdn_outbox`: purged here, but a CDN hook's outbox could not be written (retry)"),
        }),
        false,
    );
    auth_errors(&mut purge);
    let mut limits = responses(
        json!({
            "200": ok_json("The decision: {\"allowed\", \"limit\", \"remaining\", \"reset_ms\", \"retry_after_ms\" (null when allowed), \"fallback\" (decided from this node's share: Redis failed)}; headers RateLimit, RateLimit-Policy"),
            "400": error_response("`bad_key` (empty or too long), `bad_cost` (above 1000000) or `bad_json`"),
            "404": error_response("`unknown_limit`: no such name under `[limits]`"),
        }),
        false,
    );
    auth_errors(&mut limits);
    let write_errors = |m: &mut Value| {
        read_5xx(m);
        auth_errors(m);
        let o = m.as_object_mut().expect("responses");
        o.insert("503".into(), error_response(
            "`source_unavailable`: the source is down; `overloaded`: the write-behind queue is full; \
             `not_propagated`: committed, but the other nodes could not be told in time (not acknowledged)"));
    };
    let mut put_value = responses(
        json!({
            "200": ok_json("Written; the body has the version and the write mode"),
            "400": error_response("`bad_key`, `bad_path`, `bad_json`, `bad_tags` (`Strata-Tags`: more than 64, or not visible ASCII), or `bad_value` (`field` and `expected`: a type, NOT NULL, an unknown or missing column)"),
            "404": error_response("`unknown_namespace`"),
            "405": error_response("`read_only`: the namespace is bound to a query or an HTTP source"),
            "422": error_response("`rejected`: the source refused the value (`field` when the source names it, and `rule`: a CHECK, unique or foreign key, a value out of range)"),
        }),
        true,
    );
    write_errors(&mut put_value);
    let mut delete_value = responses(
        json!({
            "204": {"description": "Deleted"},
            "400": error_response("`bad_key`, `bad_path` or `bad_tags` (`Strata-Tags`: more than 64, or not visible ASCII)"),
            "404": error_response("`unknown_namespace`"),
            "405": error_response("`read_only`: the namespace is bound to a query or an HTTP source"),
            "422": error_response("`rejected`: the source refused the delete (a foreign key still references the row)"),
        }),
        false,
    );
    write_errors(&mut delete_value);
    let mut bulk = responses(
        json!({
            "200": ok_json("{\"values\": {key: value or null}}"),
            "400": error_response("`bad_key`, `too_many_keys`, `bad_path`"),
            "404": error_response("`unknown_namespace`"),
        }),
        true,
    );
    read_5xx(&mut bulk);
    let invalidate = {
        let mut r = responses(
            json!({
                "200": ok_json("Invalidated on every node"),
                "400": error_response("`bad_invalidation` (not exactly one of key, tag, all), `bad_key`, `bad_path`"),
                "404": error_response("`unknown_namespace`"),
            }),
            true,
        );
        write_errors(&mut r);
        r.as_object_mut()
            .expect("responses")
            .retain(|k, _| !matches!(k.as_str(), "502" | "504"));
        r.as_object_mut().expect("responses").remove("503");
        r
    };
    let mut warm = responses(
        json!({
            "200": ok_json("How many were requested and found"),
            "400": error_response("`bad_key`, `bad_range`, `too_many_keys`, `no_source`, `bad_path`"),
            "404": error_response("`unknown_namespace`"),
        }),
        true,
    );
    write_errors(&mut warm);
    let ns_stats = responses(
        json!({
        "200": ok_json("Counters"),
        "400": error_response("`bad_path`"),
        "404": error_response("`unknown_namespace`")}),
        false,
    );
    let all_stats = responses(json!({"200": ok_json("Counters")}), false);
    let mut introspect = responses(
        json!({
            "200": ok_json("The introspection answer (RFC 7662): `{\"active\": true, …claims}` or `{\"active\": false}`; headers Cache-Status, Cache-Control: private, no-store"),
            "400": error_response("`bad_token` (empty or longer than 8192 bytes), `bad_path`"),
            "404": error_response("`unknown_namespace`"),
        }),
        true,
    );
    read_5xx(&mut introspect);
    let mut revoke = responses(
        json!({
            "200": ok_json("The token's cached answer is dropped on every node"),
            "400": error_response("`bad_token` (empty or longer than 8192 bytes), `bad_path`"),
            "404": error_response("`unknown_namespace`"),
        }),
        true,
    );
    auth_errors(&mut revoke);
    let token_body = json_body(
        json!({"type": "object", "required": ["token"], "additionalProperties": false,
        "properties": {"token": {"type": "string", "minLength": 1, "maxLength": crate::auth::MAX_TOKEN}}}),
    );
    let store_500 = |m: &mut Value| {
        m.as_object_mut().expect("responses").insert(
            "500".into(),
            error_response(
                "`dead_letter_store`: the dead-letter file could not be read or written",
            ),
        );
    };
    let mut dl_list = responses(
        json!({
        "200": ok_json("{\"dead_letters\": [{namespace, key, seq, op, value, attempts, error}]}")}),
        false,
    );
    auth_errors(&mut dl_list);
    store_500(&mut dl_list);
    let mut dl_retry = responses(
        json!({
            "200": ok_json("Written again (journaled)"),
            "400": error_response("`bad_seq`, or `bad_value`: the value is refused again (the dead letter stays)"),
            "404": error_response("`no_such_dead_letter`, `no_write_behind` (no namespace writes behind), or `unknown_namespace`"),
            "422": error_response("`rejected` (refused again; the dead letter stays) or `bad_dead_letter`"),
        }),
        false,
    );
    write_errors(&mut dl_retry);
    store_500(&mut dl_retry);
    let mut dl_discard = responses(
        json!({
            "200": ok_json("Discarded"),
            "400": error_response("`bad_seq`"),
            "404": error_response("`no_such_dead_letter`, or `no_write_behind` (no namespace writes behind)"),
        }),
        false,
    );
    auth_errors(&mut dl_discard);
    store_500(&mut dl_discard);
    let text = |d: &str, media: &str| json!({"description": d, "content": {media: {"schema": {"type": "string"}}}});
    let metrics = responses(
        json!({"200": text("Prometheus text format 0.0.4", "text/plain")}),
        false,
    );
    let openapi = responses(json!({"200": ok_json("OpenAPI 3.1")}), false);
    let dashboard = responses(json!({"200": text("The dashboard", "text/html")}), false);
    let mut healthz = json!({"200": text("ok", "text/plain")});
    let mut readyz = json!({"200": text("ready", "text/plain"),
        "503": error_response("`source_unavailable` (a source does not answer) or `shutting_down`")});
    for r in [&mut healthz, &mut readyz] {
        let o = r.as_object_mut().expect("responses");
        o.insert("414".into(), error_response("`uri_too_long`"));
        o.insert("431".into(), error_response("`headers_too_large`"));
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Strata data API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": info,
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"}}},
                "Value": {"description": "A JSON document; for a table, an object of its columns"},
            },
        },
        "paths": {
            "/v1/_purge": {
                "post": {
                    "summary": "Purge the edge tier on every node (a URL with every variant, a surrogate-key tag — also in every data namespace —, a URL prefix, a route, or everything); `soft` marks stale instead of removing",
                    "security": auth,
                    "requestBody": json_body(json!({"oneOf": [
                        {"type": "object", "required": ["url"], "additionalProperties": false,
                         "properties": {"url": {"type": "string"}, "soft": {"type": "boolean"}}},
                        {"type": "object", "required": ["tag"], "additionalProperties": false,
                         "properties": {"tag": {"type": "string", "minLength": 1, "pattern": "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$"}, "soft": {"type": "boolean"}}},
                        {"type": "object", "required": ["prefix"], "additionalProperties": false,
                         "properties": {"prefix": {"type": "string"}, "soft": {"type": "boolean"}}},
                        {"type": "object", "required": ["route"], "additionalProperties": false,
                         "properties": {"route": {"type": "string"}, "soft": {"type": "boolean"}}},
                        {"type": "object", "required": ["all"], "additionalProperties": false,
                         "properties": {"all": {"const": true}, "soft": {"type": "boolean"}}},
                    ]})),
                    "responses": purge,
                }
            },
            "/v1/_limits/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "A limit under `[limits]`"}],
                "post": {
                    "summary": "Take `cost` units (default 1) for `key` from a configured rate limit, shared by every node on the same Redis",
                    "security": auth,
                    "requestBody": json_body(json!({"type": "object", "required": ["key"], "additionalProperties": false,
                        "properties": {"key": {"type": "string", "minLength": 1}, "cost": {"type": "integer", "minimum": 0, "maximum": 1_000_000}}})),
                    "responses": limits,
                }
            },
            "/v1/_stats": {
                "get": {"summary": "Every namespace's counters, the bus, write-behind, CDC and the proxy's routes", "responses": all_stats}
            },
            "/v1/_dead_letters": {
                "get": {"summary": "Write-behind writes the source kept refusing (parked after max_attempts)",
                    "security": auth, "responses": dl_list}
            },
            "/v1/_dead_letters/{seq}/retry": {
                "parameters": [seq_param()],
                "post": {"summary": "Write a dead letter again through its namespace, then remove it",
                    "security": auth, "responses": dl_retry}
            },
            "/v1/_dead_letters/{seq}": {
                "parameters": [seq_param()],
                "delete": {"summary": "Drop a dead letter for good", "security": auth, "responses": dl_discard}
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": healthz}},
            "/readyz": {"get": {"summary": "Readiness: every source answers", "responses": readyz}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": metrics}},
            "/openapi.json": {"get": {"summary": "This document", "responses": openapi}},
            "/": {"get": {"summary": "The dashboard", "responses": dashboard}},
        }
    });
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (name, h) in &state.namespaces {
        let key = key_param(state, h);
        let value = match (&h.schema, h.has_source) {
            (Some(schema), true) => schema.value_json_schema(),
            _ => json!({"$ref": "#/components/schemas/Value"}),
        };
        let item = |p: &str| format!("/v1/{name}/{p}");
        if h.introspector.is_some() {
            // An auth namespace: tokens in, introspection answers out; no data routes.
            paths.insert(item("_introspect"), json!({"post": {
                "summary": format!("Check a token against {name}'s introspection endpoint (cached until its exp)"),
                "requestBody": token_body.clone(),
                "responses": introspect,
            }}));
            paths.insert(
                item("_revoke"),
                json!({"post": {
                    "summary": "Drop a token's cached answer on every node",
                    "security": auth,
                    "requestBody": token_body.clone(),
                    "responses": revoke,
                }}),
            );
        }
        let data_routes = h.introspector.is_none();
        paths.insert(item("{key}"), json!({
            "parameters": [key],
            "get": {"summary": format!("Read a value of {name} (read-through)"), "responses": get_value,
                    "parameters": [
                        {"name": "v", "in": "query", "required": false,
                         "description": "A version: at the current one the answer is immutable, at another a 302 to it",
                         "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}},
                    ]},
            "put": {
                "summary": format!("Write a value of {name} ({} write)", format!("{:?}", h.mode).to_lowercase()),
                "security": auth,
                "requestBody": json_body(value),
                "responses": put_value,
            },
            "delete": {"summary": format!("Delete a value of {name} (source and every tier)"), "security": auth,
                       "responses": delete_value},
        }));
        let key_schema = key["schema"].clone();
        if !data_routes {
            paths.remove(&item("{key}"));
        }
        paths.insert(item("_bulk"), json!({"post": {
            "summary": "Read up to 1000 keys (misses load with one query)",
            "requestBody": json_body(json!({"type": "object", "required": ["keys"], "additionalProperties": false,
                "properties": {"keys": {"type": "array", "items": key_schema, "maxItems": 1000}}})),
            "responses": bulk,
        }}));
        paths.insert(item("_invalidate"), json!({"post": {
            "summary": "Invalidate a key, a tag, or the whole namespace (generation bump): exactly one of them",
            "security": auth,
            "requestBody": json_body(json!({"oneOf": [
                {"type": "object", "required": ["key"], "additionalProperties": false, "properties": {"key": key_schema}},
                {"type": "object", "required": ["tag"], "additionalProperties": false,
                 "properties": {"tag": {"type": "string", "minLength": 1}}},
                {"type": "object", "required": ["all"], "additionalProperties": false,
                 "properties": {"all": {"const": true}}},
            ]})),
            "responses": invalidate,
        }}));
        paths.insert(item("_warm"), json!({"post": {
            "summary": "Load keys into the caches ahead of traffic (at most 100,000; a namespace with a source)",
            "security": auth,
            "requestBody": json_body(json!({"type": "object", "additionalProperties": false, "properties": {
                "keys": {"type": "array", "items": key_schema, "maxItems": 100_000},
                "range": {"anyOf": [{"type": "null"}, {"type": "array",
                          "items": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
                          "minItems": 2, "maxItems": 2}],
                          "description": "An inclusive integer key range [from, to] of at most 100,000 keys"}}})),
            "responses": warm,
        }}));
        if !data_routes {
            paths.remove(&item("_bulk"));
            paths.remove(&item("_warm"));
        }
        paths.insert(
            item("_stats"),
            json!({"get": {"summary": format!("{name}'s counters"), "responses": ns_stats}}),
        );
    }
    doc
}

//! The OpenAPI 3.1 document served at `/openapi.json`. Written by hand next to the router; a test requests every
//! operation it lists and checks that the router knows it (and nothing it does not list is routed under `/v1`).

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ns_param() -> Value {
    json!({"name": "ns", "in": "path", "required": true, "schema": {"type": "string"}, "description": "A configured namespace"})
}

fn key_param() -> Value {
    json!({"name": "key", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 65536}, "description": "The key (not starting with `_`)"})
}

fn seq_param() -> Value {
    json!({"name": "seq", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}, "description": "A dead letter's journal sequence number"})
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// The document.
pub fn document() -> Value {
    let auth = json!([{"bearer": []}]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Strata data API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read-through cache over your database, per-namespace write policies, invalidation by key, tag or namespace."
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
            "/v1/{ns}/{key}": {
                "parameters": [ns_param(), key_param()],
                "get": {
                    "summary": "Read a value (read-through)",
                    "responses": {
                        "200": {"description": "The value; headers Cache-Status (RFC 9211), Age, ETag",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Value"}}}},
                        "400": error_response("Bad key"),
                        "404": error_response("Unknown namespace, or the key does not exist"),
                        "502": error_response("The source failed"),
                    }
                },
                "put": {
                    "summary": "Write a value with the namespace's write mode",
                    "security": auth,
                    "requestBody": json_body(json!({"$ref": "#/components/schemas/Value"})),
                    "responses": {
                        "200": {"description": "Written; the body has the version",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": error_response("Bad key, JSON or value"),
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                        "405": error_response("The namespace is bound to a query (read-only)"),
                        "413": error_response("Body too large"),
                        "503": error_response("Write-behind queue full"),
                    }
                },
                "delete": {
                    "summary": "Delete a value (source and every tier)",
                    "security": auth,
                    "responses": {
                        "204": {"description": "Deleted"},
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                        "405": error_response("The namespace is bound to a query (read-only)"),
                    }
                }
            },
            "/v1/{ns}/_bulk": {
                "parameters": [ns_param()],
                "post": {
                    "summary": "Read up to 1000 keys (misses load with one query)",
                    "requestBody": json_body(json!({"type": "object", "required": ["keys"],
                        "properties": {"keys": {"type": "array", "items": {"type": "string"}, "maxItems": 1000}}})),
                    "responses": {
                        "200": {"description": "{\"values\": {key: value or null}}",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": error_response("Bad request"),
                    }
                }
            },
            "/v1/{ns}/_invalidate": {
                "parameters": [ns_param()],
                "post": {
                    "summary": "Invalidate a key, a tag, or the whole namespace (generation bump)",
                    "security": auth,
                    "requestBody": json_body(json!({"type": "object", "properties": {
                        "key": {"type": "string"}, "tag": {"type": "string"}, "all": {"type": "boolean"}}})),
                    "responses": {
                        "200": {"description": "Invalidated on every node", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": error_response("Not exactly one of key, tag, all"),
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                    }
                }
            },
            "/v1/{ns}/_warm": {
                "parameters": [ns_param()],
                "post": {
                    "summary": "Load keys into the caches ahead of traffic",
                    "security": auth,
                    "requestBody": json_body(json!({"type": "object", "properties": {
                        "keys": {"type": "array", "items": {"type": "string"}},
                        "range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}}})),
                    "responses": {
                        "200": {"description": "How many were requested and found", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": error_response("Bad request"),
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                    }
                }
            },
            "/v1/{ns}/_stats": {
                "parameters": [ns_param()],
                "get": {"summary": "One namespace's counters", "responses": {
                    "200": {"description": "Counters", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "404": error_response("Unknown namespace")}}
            },
            "/v1/_stats": {
                "get": {"summary": "Every namespace's counters, the bus, write-behind and CDC", "responses": {
                    "200": {"description": "Counters", "content": {"application/json": {"schema": {"type": "object"}}}}}}
            },
            "/v1/_dead_letters": {
                "get": {"summary": "Write-behind writes the source kept refusing (parked after max_attempts)",
                    "security": auth,
                    "responses": {
                        "200": {"description": "{\"dead_letters\": [{namespace, key, seq, op, value, attempts, error}]}",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                    }}
            },
            "/v1/_dead_letters/{seq}/retry": {
                "parameters": [seq_param()],
                "post": {"summary": "Write a dead letter again through its namespace, then remove it",
                    "security": auth,
                    "responses": {
                        "200": {"description": "Written again (journaled)", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": error_response("Bad seq, or the value is refused again (the dead letter stays)"),
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                        "404": error_response("No such dead letter, or no namespace writes behind"),
                    }}
            },
            "/v1/_dead_letters/{seq}": {
                "parameters": [seq_param()],
                "delete": {"summary": "Drop a dead letter for good",
                    "security": auth,
                    "responses": {
                        "200": {"description": "Discarded", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": error_response("Bad seq"),
                        "401": error_response("No token"),
                        "403": error_response("Wrong token"),
                        "404": error_response("No such dead letter, or no namespace writes behind"),
                    }}
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness: every source answers", "responses": {
                "200": {"description": "ready"}, "503": error_response("A source does not answer, or shutting down")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text format 0.0.4"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/": {"get": {"summary": "The dashboard", "responses": {"200": {"description": "HTML"}}}},
        }
    })
}

//! Dead letters over HTTP: the write-behind writes the source kept refusing (after `max_attempts` flushes) are
//! listed, retried and discarded here — the "manual remediation" of a dead-letter queue.
//!
//! - `GET /v1/_dead_letters`: every parked write (namespace, key, journal `seq`, op, value, attempts, error).
//! - `POST /v1/_dead_letters/{seq}/retry`: writes it again through its namespace (journaled anew, validated like
//!   any write, flushed later), then removes it; if the write is refused, the dead letter stays and the answer
//!   says why.
//! - `DELETE /v1/_dead_letters/{seq}`: drops it for good.
//!
//! All three need the token: a dead letter holds user data.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use strata::behind::{DeadLetter, WriteBehind};

use crate::api::{authorize, engine_error, namespace, ApiError};
use crate::state::AppState;

/// The dead-letter routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/_dead_letters", get(list))
        .route("/v1/_dead_letters/{seq}/retry", post(retry))
        .route("/v1/_dead_letters/{seq}", delete(discard))
}

fn queue(state: &AppState) -> Result<&WriteBehind, ApiError> {
    state.write_behind.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_write_behind",
            "no namespace writes behind, so there are no dead letters",
        )
    })
}

fn store_error(e: strata::Error) -> ApiError {
    tracing::error!(error = %e, "dead-letter store");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "dead_letter_store",
        format!("the dead-letter store could not be read or written: {e}"),
    )
}

fn parse_seq(seq: &str) -> Result<u64, ApiError> {
    seq.parse().map_err(|_| {
        ApiError::bad(
            "bad_seq",
            format!(
                "{seq:?} is not a dead letter's seq (a whole number, from GET /v1/_dead_letters)"
            ),
        )
    })
}

fn find(wb: &WriteBehind, seq: u64) -> Result<DeadLetter, ApiError> {
    wb.dead_letters()
        .map_err(store_error)?
        .into_iter()
        .find(|d| d.seq == seq)
        .ok_or_else(|| no_such(seq))
}

fn no_such(seq: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_dead_letter",
        format!("there is no dead letter with seq {seq}"),
    )
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let letters = match &state.write_behind {
        Some(wb) => wb.dead_letters().map_err(store_error)?,
        None => Vec::new(),
    };
    Ok(Json(json!({"dead_letters": letters})).into_response())
}

async fn retry(
    State(state): State<Arc<AppState>>,
    Path(seq): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let seq = parse_seq(&seq)?;
    let wb = queue(&state)?;
    let letter = find(wb, seq)?;
    let h = namespace(&state, &letter.namespace)?;
    let version = match letter.op.as_str() {
        "delete" => {
            h.ns.delete(&letter.key).await.map_err(engine_error)?;
            None
        }
        _ => {
            let value: Value = serde_json::from_str(&letter.value).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_dead_letter",
                    format!("dead letter {seq}'s value is not JSON ({e}): discard it instead"),
                )
            })?;
            Some(h.ns.write(&letter.key, value).await.map_err(engine_error)?)
        }
    };
    // Written again (journaled): only now may the dead letter go.
    wb.discard_dead_letter(seq).map_err(store_error)?;
    Ok(Json(json!({
        "retried": seq, "namespace": letter.namespace, "key": letter.key, "version": version,
    }))
    .into_response())
}

async fn discard(
    State(state): State<Arc<AppState>>,
    Path(seq): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let seq = parse_seq(&seq)?;
    let wb = queue(&state)?;
    if !wb.discard_dead_letter(seq).map_err(store_error)? {
        return Err(no_such(seq));
    }
    Ok(Json(json!({"discarded": seq})).into_response())
}

//! Locks: `POST /v1/lock/{name}/acquire` (answers once the caller holds the lock),
//! `POST /v1/lock/{name}/release`, and `GET /v1/lock/{name}` (the holder, or a long poll for a
//! change with `?after=TOKEN:REVISION`).
//!
//! Lock `NAME` is the election `lock:NAME` (see [`super::election`]; the client's
//! `client::lock`): the caller owns a lease and keeps it alive, waiting holders are served in
//! the order they asked, and the answer's `token` is the fencing token, larger for every new
//! holder. The caller holds the lock until it releases it or its own deadline passes (the send
//! time of its last successful keep-alive, or grant, plus the TTL). An acquire whose lease dies
//! while it waits answers 409 `not_leading`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::Json;

use crate::client::lock_election;
use crate::core::lease_hex;

use super::election::{leader_of, ElectionBody, LeaderJson};
use super::error::ApiError;
use super::lease::lease_id;
use super::state::Gateway;

/// `POST /v1/lock/{name}/acquire` with `{"lease"}` and optionally `"value"` or `"value_b64"`
/// (what the holder shows, e.g. its host): `{"leader": holder}` once the caller holds it.
pub async fn acquire(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<LeaderJson>, ApiError> {
    let election = lock_election(&name)?;
    let req = ElectionBody::parse(&body)?;
    let lease = lease_id(&req.lease)?;
    let value = req.value_or_none()?.unwrap_or_default();
    let client = gw.client()?;
    let me = client.join_election(&election, &value, lease).await?;
    let held = client.wait_for_leadership(&me).await?;
    Ok(Json(LeaderJson::of(Some(&held))))
}

/// `POST /v1/lock/{name}/release` with `{"lease", "token"}`: the holder (or a waiter) leaves
/// the line (done also when it was already gone). Answers `{"released": token}`.
pub async fn release(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let election = lock_election(&name)?;
    let req = ElectionBody::parse(&body)?;
    let lease = lease_id(&req.lease)?;
    let token = req.token()?;
    gw.client()?.resign(&election, token, lease).await?;
    Ok(Json(serde_json::json!({ "released": lease_hex(token) })))
}

/// `GET /v1/lock/{name}`: `{"leader": holder or null}`; with `?after=TOKEN:REVISION` (or
/// `none`) and `wait_ms`, a long poll as for elections.
pub async fn holder(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<LeaderJson>, ApiError> {
    let election = lock_election(&name)?;
    leader_of(&gw, &election, query.as_deref()).await
}

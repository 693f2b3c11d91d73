//! `GET /healthz` (liveness) and `GET /readyz` (readiness), for load balancers and
//! orchestrators.
//!
//! Liveness only says the process answers HTTP: restarting a node because its partitions
//! have no leader would make things worse. Readiness says whether this node can serve every
//! partition it holds a replica of right now: it is part of a cluster and each of its groups
//! knows a leader.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::wire::StatusReport;

use super::error::ApiError;
use super::state::Gateway;

/// `GET /healthz`: always `200 {"status": "ok"}` while the gateway runs.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: `200 {"ready": true}`, or 503 `not_ready` with the reason.
pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Result<Json<Value>, ApiError> {
    let report = gw.report().await?;
    match not_ready_reason(&report) {
        None => Ok(Json(json!({ "ready": true }))),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            reason,
        )),
    }
}

/// Why the node is not ready, if it is not.
pub fn not_ready_reason(r: &StatusReport) -> Option<String> {
    if r.cluster_id.is_none() {
        return Some("the node is not part of a cluster yet".into());
    }
    let leaderless: Vec<String> = r
        .groups
        .iter()
        .filter(|g| g.leader.is_none())
        .map(|g| g.group.to_string())
        .collect();
    if leaderless.is_empty() {
        None
    } else {
        Some(format!(
            "{} of {} local groups have no known leader (groups {})",
            leaderless.len(),
            r.groups.len(),
            leaderless.join(", ")
        ))
    }
}

//! `GET /healthz` (liveness) and `GET /readyz` (readiness), for load balancers and
//! orchestrators.
//!
//! Liveness says the process answers HTTP and its storage works: restarting a node because its
//! partitions have no leader would make things worse, but a node whose disk fails is unhealthy
//! (it refuses everything until the storage works again, and says so). Readiness says whether
//! this node can serve every partition it holds a replica of right now: it is part of a
//! cluster, its storage works and each of its groups knows a leader.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::wire::StatusReport;

use super::error::ApiError;
use super::state::Gateway;
use super::ErrorCode;

/// `GET /healthz`: `200 {"status": "ok"}`, or 503 `storage_failed` while the node's storage
/// fails.
pub async fn healthz(State(gw): State<Arc<Gateway>>) -> Result<Json<Value>, ApiError> {
    // A gateway that cannot get a report from its node still answers: liveness is about
    // this process, and the report's own failure says nothing about the disk.
    if let Ok(report) = gw.report().await {
        if let Some(e) = report.storage_error {
            return Err(ApiError::new(ErrorCode::STORAGE_FAILED, format!("the node's storage failed ({e}); it refuses every request until it works again"),
            ));
        }
    }
    Ok(Json(json!({ "status": "ok" })))
}

/// `GET /readyz`: `200 {"ready": true}`, or 503 `not_ready` with the reason.
pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Result<Json<Value>, ApiError> {
    let report = gw.report().await?;
    match not_ready_reason(&report) {
        None => Ok(Json(json!({ "ready": true }))),
        Some(reason) => Err(ApiError::new(ErrorCode::NOT_READY, reason)),
    }
}

/// Why the node is not ready, if it is not.
pub fn not_ready_reason(r: &StatusReport) -> Option<String> {
    if let Some(e) = &r.storage_error {
        return Some(format!("the node's storage failed: {e}"));
    }
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

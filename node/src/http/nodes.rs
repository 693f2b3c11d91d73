//! `POST /v1/nodes/{node}/decommission`: drains a node out of the cluster, as
//! `swarmkv decommission` does.
//!
//! The node id is the 16-hex-digit form `/v1/status` and the CLI print (a `0x` prefix and
//! fewer digits are accepted). The request is passed to the meta leader, which marks the node
//! decommissioning; its replicas then move off it in the background (watch `/v1/status`).
//! Decommissioning is idempotent: asking again for a node already draining or drained answers
//! 200 as well.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use crate::core::NodeId;
use crate::driver::DecommissionError;

use super::error::{node_hex, ApiError};
use super::state::Gateway;
use super::ErrorCode;

/// How long the gateway keeps asking while the cluster cannot take the request (no meta
/// leader known yet, leadership moving) before it answers 503. Retrying is safe because
/// decommissioning is idempotent.
pub const DECOMMISSION_RETRY: Duration = Duration::from_secs(5);

/// The pause between two attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The JSON of a successful decommission.
#[derive(Debug, Serialize)]
pub struct DecommissionJson {
    /// The node now draining, as 16 hex digits.
    pub decommissioning: String,
}

/// `POST /v1/nodes/{node}/decommission`.
pub async fn decommission(
    State(gw): State<Arc<Gateway>>,
    Path(node): Path<String>,
) -> Result<Json<DecommissionJson>, ApiError> {
    let id = parse_node_id(&node)?;
    let client = gw.client()?;
    let until = Instant::now() + DECOMMISSION_RETRY;
    loop {
        match client.decommission(id).await {
            Ok(()) => {
                return Ok(Json(DecommissionJson {
                    decommissioning: node_hex(id),
                }))
            }
            Err(DecommissionError::Unavailable(_)) if Instant::now() + RETRY_PAUSE < until => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl From<DecommissionError> for ApiError {
    fn from(e: DecommissionError) -> ApiError {
        let message = e.to_string();
        match e {
            DecommissionError::UnknownNode(_) => ApiError::new(ErrorCode::UNKNOWN_NODE, message),
            DecommissionError::Unavailable(_) => ApiError::new(
                ErrorCode::UNAVAILABLE,
                format!("{message}; retrying is safe"),
            ),
        }
    }
}

/// A node id from the path: hex, 1 to 16 digits, optionally `0x`-prefixed, not 0 (no node
/// has id 0).
pub fn parse_node_id(text: &str) -> Result<NodeId, ApiError> {
    let bad = |why: &str| {
        ApiError::new(ErrorCode::BAD_NODE_ID, format!("{text:?} is not a node id ({why}); node ids are 16 hex digits as /v1/status prints them"),
        )
    };
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("not 1 to 16 hex digits"));
    }
    match u64::from_str_radix(digits, 16) {
        Ok(0) => Err(bad("0 is no node's id")),
        Ok(id) => Ok(id),
        Err(_) => Err(bad("not hex")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn node_ids_parse_from_the_hex_status_prints() {
        assert_eq!(
            parse_node_id(&node_hex(0xdead_beef)).ok(),
            Some(0xdead_beef)
        );
        assert_eq!(parse_node_id("0xFF").ok(), Some(0xff));
        assert_eq!(
            parse_node_id("ffffffffffffffff").ok(),
            Some(u64::MAX),
            "the largest id"
        );
        for bad in [
            "",
            "0",
            "0x",
            "xyz",
            "+1",
            "-1",
            "1ffffffffffffffff",
            "12 3",
        ] {
            let e = parse_node_id(bad).expect_err(bad);
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_node_id"));
        }
    }

    #[test]
    fn decommission_errors_map_to_404_and_503() {
        let unknown = ApiError::from(DecommissionError::UnknownNode(7));
        assert_eq!(
            (unknown.status, unknown.code),
            (StatusCode::NOT_FOUND, "unknown_node")
        );
        let busy = ApiError::from(DecommissionError::Unavailable("no meta leader".into()));
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(busy.message.contains("no meta leader"), "{}", busy.message);
    }
}

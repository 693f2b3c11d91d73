//! `GET /metrics`: the node's metrics in the Prometheus text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::Gateway;

/// Served only by a gateway on a node (made for one, or on an in-process client): a gateway
/// on a remote client has no node to measure.
pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    let Some(node) = gw.node() else {
        return Err(ApiError::not_found("this gateway serves no node's metrics"));
    };
    let text = node.metrics().encode();
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

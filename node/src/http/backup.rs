//! `GET /v1/backup`: a backup of the whole cluster, streamed as the file `swarmkv backup`
//! writes (the format is in `crate::backup::format`).
//!
//! The gateway takes the backup through its client (`crate::backup::take`) and streams each
//! section as it is made, through a channel of a few sections, so the node holds about one
//! snapshot chunk of it at a time. Errors before the first byte are the usual JSON errors; a
//! failure part way aborts the response, and the file the caller has is incomplete, which
//! any reader of the format refuses.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use hyper::body::Bytes;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::state::Gateway;
use crate::backup::take::take;

/// Sections in flight between the backup and the connection.
const SECTIONS_BUFFERED: usize = 4;

pub async fn backup(State(gw): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    let client = gw.client()?.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(SECTIONS_BUFFERED);
    let task = tokio::spawn(async move { take(&client, tx).await });
    let stream = futures::stream::unfold((rx, Some(task)), |(mut rx, task)| async move {
        if let Some(bytes) = rx.recv().await {
            return Some((Ok(bytes), (rx, task)));
        }
        // The channel closed: the backup ended; a failure aborts the body.
        let outcome = match task?.await {
            Ok(Ok(summary)) => {
                log::info!("backup of {} groups served", summary.groups.len());
                return None;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        log::warn!("backup failed: {outcome}");
        Some((Err(std::io::Error::other(outcome)), (rx, None)))
    });
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"swarmkv.backup\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

//! Request bodies: read whole under a bound, and refused in a way every client can read.
//!
//! A client may send its whole body before it reads anything (Python's `urllib`, most simple
//! clients; only some, like curl, send `Expect: 100-continue` and wait). Answering such a
//! client 413 and closing the connection while its body is still arriving makes the kernel
//! reset the connection: the client sees a broken pipe, never the answer. So an oversized body
//! is read and thrown away, up to [`DRAIN_MAX`] bytes and for at most [`DRAIN_TIME`], before
//! the refusal is sent; only a body larger than that (or slower) still costs the client a
//! reset. A client that asked `Expect: 100-continue` is refused from its headers alone, and
//! never sends the body.

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, EXPECT};
use axum::http::HeaderMap;
use futures::StreamExt;

use super::error::ApiError;

/// The largest refused body read and discarded so that its sender gets the 413.
pub const DRAIN_MAX: u64 = 8 << 20;
/// How long a refused body may take to arrive before the connection is closed on it.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the whole body, refusing (413) as soon as it passes `max` bytes, so an oversized
/// upload is neither buffered nor proposed to Raft. A declared `Content-Length` over the limit
/// is refused before anything is kept.
pub async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    if declared_len(headers).is_some_and(|len| len > max as u64) {
        return Err(refuse(headers, body, max).await);
    }
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if out.len() + chunk.len() > max {
            drain(stream, DRAIN_MAX.saturating_sub(out.len() as u64)).await;
            return Err(ApiError::body_too_large(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The 413 for a body over `max`, after reading and discarding the body when its sender may be
/// sending it without waiting for an answer (see the module documentation).
pub async fn refuse(headers: &HeaderMap, body: Body, max: usize) -> ApiError {
    let waits_for_continue = headers
        .get(EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let drainable = declared_len(headers).is_none_or(|len| len <= DRAIN_MAX);
    if !waits_for_continue && drainable {
        drain(body.into_data_stream(), DRAIN_MAX).await;
    }
    ApiError::body_too_large(max)
}

/// The body's declared length, if it has a readable one.
fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads and discards what is left of a body, up to `budget` bytes and [`DRAIN_TIME`].
async fn drain(mut stream: axum::body::BodyDataStream, budget: u64) {
    let discard = async {
        let mut left = budget;
        while let Some(Ok(chunk)) = stream.next().await {
            match left.checked_sub(chunk.len() as u64) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

//! The gateway's own admission control: what it buffers at once, whatever the clients do.
//!
//! A `PUT` body is read whole before the value goes to the node, so without a bound, N
//! clients uploading 1 MiB each cost N MiB of memory before the node's own admission (see
//! `driver::admission`) ever sees them. Every request therefore reserves, before its body is
//! read, its declared body size (or, for a body without `Content-Length`, the largest body
//! any route reads) plus a fixed cost, from one budget shared by all connections; a request
//! that does not fit is answered 429 `busy` with `Retry-After` at once, and its body is never
//! read. A body declared larger than any route accepts is refused 413 `body_too_large` right
//! here, without reserving anything (its bytes are discarded as they arrive, see
//! [`super::body`]), so a flood of oversized uploads costs nothing but the refusals.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Semaphore;

use super::{body, ApiError, MAX_CAS_BODY};

/// What one request costs besides its body (headers, the handler's state, the answer).
const REQUEST_COST: usize = 4 << 10;
/// The budget is counted in units of this many bytes (a semaphore permit each).
const UNIT: usize = 1 << 10;

/// The gateway's budget: bytes of request bodies and request costs held at once.
#[derive(Clone, Debug)]
pub struct GatewayLimits {
    /// Bytes held at once, all requests together (default 64 MiB: 64 largest values, or
    /// about 16,000 small requests).
    pub max_bytes: usize,
    /// What a refused client is told to wait, in milliseconds.
    pub retry_after_ms: u64,
}

impl Default for GatewayLimits {
    fn default() -> GatewayLimits {
        GatewayLimits {
            max_bytes: 64 << 20,
            retry_after_ms: 1000,
        }
    }
}

#[derive(Clone)]
struct Budget {
    units: Arc<Semaphore>,
    retry_after_ms: u64,
}

/// `router` with every request held to `limits`.
pub fn limit(router: Router, limits: &GatewayLimits) -> Router {
    let budget = Budget {
        // Never below one largest request, which would then be refused forever.
        units: Arc::new(Semaphore::new(
            limits.max_bytes.max(MAX_CAS_BODY + REQUEST_COST) / UNIT,
        )),
        retry_after_ms: limits.retry_after_ms,
    };
    router.layer(axum::middleware::from_fn_with_state(budget, admit))
}

/// What `request` reserves, or `None` when its declared body is larger than any route reads.
fn cost(request: &Request) -> Option<usize> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match declared {
        Some(len) if len > MAX_CAS_BODY as u64 => return None,
        Some(len) => len as usize,
        // Chunked, or no body at all on a method that may carry one: assume the largest.
        None if request.method() == axum::http::Method::PUT
            || request.method() == axum::http::Method::POST =>
        {
            MAX_CAS_BODY
        }
        None => 0,
    };
    Some(body + REQUEST_COST)
}

async fn admit(State(budget): State<Budget>, request: Request, next: Next) -> Response {
    let Some(bytes) = cost(&request) else {
        let (parts, body) = request.into_parts();
        return body::refuse(&parts.headers, body, MAX_CAS_BODY)
            .await
            .into_response();
    };
    let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
    let Ok(_permit) = budget.units.clone().try_acquire_many_owned(units) else {
        return ApiError::busy(
            budget.retry_after_ms,
            "the gateway holds as many requests as it may; retry later",
        )
        .into_response();
    };
    next.run(request).await
}

//! The gateway's errors: every failure becomes `{"error": {"code", "message", ...}}` with the
//! HTTP status a client can act on.
//!
//! The mapping keeps the promise of [`ClientError`]: a caller must be able to tell "nothing
//! happened, retry" (503) from "a write may or may not have applied" (503/504 with a message
//! saying so) from "your request is wrong" (4xx, retrying cannot help).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use swarmkv_store::KvError;

use crate::core::{ClientError, NodeId};

use super::encoding::RecordJson;

/// A failed request, ready to be rendered as JSON.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable, stable: `bad_request`, `bad_encoding`, `empty_key`, `not_found`,
    /// `cas_conflict`, `key_too_large`, `value_too_large`, `body_too_large`, `unavailable`,
    /// `not_leader`, `timeout`, `leader_changed`, `disconnected`, `storage`, `stale_retry`,
    /// `not_ready`, `method_not_allowed`, `bad_node_id`, `unknown_node`, `busy`,
    /// `unauthorized`.
    pub code: &'static str,
    pub message: String,
    /// The node believed to lead the key's partition, when known (16 hex digits, as the CLI
    /// prints node ids): where a client that can reach nodes directly may retry.
    pub leader: Option<NodeId>,
    /// Seconds after which a refused caller should try again (the `Retry-After` header of a
    /// 429 `busy`).
    pub retry_after: Option<u64>,
}

/// The JSON body of an error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            leader: None,
            retry_after: None,
        }
    }

    /// 429 `busy` with `Retry-After`: the node or the gateway holds as many requests as it
    /// may; nothing was done.
    pub fn busy(retry_after_ms: u64, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_ms.div_ceil(1000).max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn bad_encoding(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_encoding", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn body_too_large(max: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the limit of {max} bytes"),
        )
    }

    /// Whether this error means the partition had no reachable leader (a hint is worth
    /// looking up).
    pub fn wants_leader_hint(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE && self.leader.is_none()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        use StatusCode as S;
        let message = e.to_string();
        match e {
            ClientError::NotLeader { leader } => ApiError {
                leader,
                ..ApiError::new(S::SERVICE_UNAVAILABLE, "not_leader", message)
            },
            ClientError::Unavailable { .. } => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ClientError::ProposalDropped => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            // The three ambiguous failures: the message of each says the write may or may
            // not have applied. Only a timeout is a 504: the others are losses of the path to
            // the leader, i.e. the service being unavailable.
            ClientError::Timeout => ApiError::new(S::GATEWAY_TIMEOUT, "timeout", message),
            ClientError::LeaderChanged => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "leader_changed", message)
            }
            ClientError::Disconnected(_) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "disconnected",
                format!("{message}; a write may or may not have been applied"),
            ),
            ClientError::Rejected(KvError::EmptyKey) => {
                ApiError::new(S::BAD_REQUEST, "empty_key", message)
            }
            ClientError::Rejected(KvError::KeyTooLarge { .. }) => {
                ApiError::new(S::PAYLOAD_TOO_LARGE, "key_too_large", message)
            }
            ClientError::Rejected(KvError::ValueTooLarge { .. }) => {
                ApiError::new(S::PAYLOAD_TOO_LARGE, "value_too_large", message)
            }
            // The gateway's client numbers its own writes; a stale retry means a resend raced
            // its own answer. The write happened once, earlier.
            ClientError::Rejected(KvError::StaleRetry { .. }) => {
                ApiError::new(S::CONFLICT, "stale_retry", message)
            }
            ClientError::LeaseNotFound(_)
            | ClientError::Rejected(KvError::LeaseNotFound { .. }) => {
                ApiError::new(S::NOT_FOUND, "lease_not_found", message)
            }
            ClientError::BadRequest(_) => ApiError::new(S::BAD_REQUEST, "bad_request", message),
            // Ambiguous like the three above; the node refuses everything after it.
            ClientError::Storage(_) => ApiError::new(S::SERVICE_UNAVAILABLE, "storage", message),
            ClientError::Busy { retry_after_ms } => ApiError::busy(retry_after_ms, message),
            // An election candidate that does not lead: it must campaign (again) first.
            ClientError::NotLeading { .. } => ApiError::new(S::CONFLICT, "not_leading", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorFields {
                code: self.code,
                message: &self.message,
                leader: self.leader.map(node_hex),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// A failed compare-and-swap: 409, with the record the caller should retry against.
#[derive(Debug)]
pub struct CasConflict {
    pub current: Option<RecordJson>,
}

impl IntoResponse for CasConflict {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "succeeded": false,
            "current": self.current,
            "error": {
                "code": "cas_conflict",
                "message": "the comparison did not hold; nothing was written",
            },
        });
        (StatusCode::CONFLICT, Json(body)).into_response()
    }
}

/// A node id as text: 16 hex digits, as `swarmkv status` prints it (a JSON number would lose
/// precision above 2^53 in JavaScript).
pub fn node_hex(id: NodeId) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_statuses_a_caller_can_act_on() {
        let cases = [
            (
                ClientError::NotLeader { leader: Some(7) },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ClientError::Unavailable { reason: "x".into() },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (ClientError::Timeout, StatusCode::GATEWAY_TIMEOUT),
            (ClientError::LeaderChanged, StatusCode::SERVICE_UNAVAILABLE),
            (
                ClientError::Rejected(KvError::EmptyKey),
                StatusCode::BAD_REQUEST,
            ),
            (
                ClientError::Rejected(KvError::ValueTooLarge { len: 2, max: 1 }),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                ClientError::Rejected(KvError::KeyTooLarge { len: 2, max: 1 }),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e.clone()).status, status, "{e:?}");
        }
        assert_eq!(
            ApiError::from(ClientError::NotLeader { leader: Some(7) }).leader,
            Some(7)
        );
    }

    #[test]
    fn ambiguous_failures_say_the_write_may_have_applied() {
        for e in [
            ClientError::Timeout,
            ClientError::LeaderChanged,
            ClientError::Disconnected("gone".into()),
        ] {
            let api = ApiError::from(e);
            assert!(api.message.contains("may or may not"), "{}", api.message);
        }
    }
}

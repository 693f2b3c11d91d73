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

/// One error code of the API, with the status it always comes with.
///
/// [`ErrorCode::ALL`] is the whole list: `docs/openapi.yaml` and the error table of
/// `docs/http-api.md` are checked against it (`tests/openapi.rs`), so the documented contract
/// cannot drift from what the gateway answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode {
    pub status: StatusCode,
    pub code: &'static str,
}

impl ErrorCode {
    const fn of(status: StatusCode, code: &'static str) -> ErrorCode {
        ErrorCode { status, code }
    }

    /// Malformed JSON or base64, an unknown or invalid query parameter, a bad argument.
    pub const BAD_REQUEST: ErrorCode = ErrorCode::of(StatusCode::BAD_REQUEST, "bad_request");
    /// A `%` not followed by two hex digits in a path or query.
    pub const BAD_ENCODING: ErrorCode = ErrorCode::of(StatusCode::BAD_REQUEST, "bad_encoding");
    pub const EMPTY_KEY: ErrorCode = ErrorCode::of(StatusCode::BAD_REQUEST, "empty_key");
    pub const BAD_LEASE_ID: ErrorCode = ErrorCode::of(StatusCode::BAD_REQUEST, "bad_lease_id");
    pub const BAD_NODE_ID: ErrorCode = ErrorCode::of(StatusCode::BAD_REQUEST, "bad_node_id");
    pub const UNAUTHORIZED: ErrorCode = ErrorCode::of(StatusCode::UNAUTHORIZED, "unauthorized");
    /// No such key, or no such endpoint.
    pub const NOT_FOUND: ErrorCode = ErrorCode::of(StatusCode::NOT_FOUND, "not_found");
    pub const LEASE_NOT_FOUND: ErrorCode = ErrorCode::of(StatusCode::NOT_FOUND, "lease_not_found");
    pub const UNKNOWN_NODE: ErrorCode = ErrorCode::of(StatusCode::NOT_FOUND, "unknown_node");
    pub const METHOD_NOT_ALLOWED: ErrorCode =
        ErrorCode::of(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    pub const CAS_CONFLICT: ErrorCode = ErrorCode::of(StatusCode::CONFLICT, "cas_conflict");
    /// A resend of a write its partition had already answered: it applied once, earlier.
    pub const STALE_RETRY: ErrorCode = ErrorCode::of(StatusCode::CONFLICT, "stale_retry");
    pub const NOT_LEADING: ErrorCode = ErrorCode::of(StatusCode::CONFLICT, "not_leading");
    pub const KEY_TOO_LARGE: ErrorCode =
        ErrorCode::of(StatusCode::PAYLOAD_TOO_LARGE, "key_too_large");
    pub const VALUE_TOO_LARGE: ErrorCode =
        ErrorCode::of(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large");
    pub const BODY_TOO_LARGE: ErrorCode =
        ErrorCode::of(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    /// Nothing was done; comes with `Retry-After`.
    pub const BUSY: ErrorCode = ErrorCode::of(StatusCode::TOO_MANY_REQUESTS, "busy");
    /// Nothing happened; retry.
    pub const UNAVAILABLE: ErrorCode =
        ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    /// Nothing happened; the answer names the leader when known.
    pub const NOT_LEADER: ErrorCode = ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "not_leader");
    /// Ambiguous: a write may or may not have applied.
    pub const LEADER_CHANGED: ErrorCode =
        ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "leader_changed");
    /// Ambiguous: a write may or may not have applied.
    pub const DISCONNECTED: ErrorCode =
        ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "disconnected");
    /// Ambiguous: the node's storage failed while the request was in flight.
    pub const STORAGE: ErrorCode = ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "storage");
    /// `/healthz` of a node whose storage has failed.
    pub const STORAGE_FAILED: ErrorCode =
        ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "storage_failed");
    /// `/readyz` of a node that cannot serve yet.
    pub const NOT_READY: ErrorCode = ErrorCode::of(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    /// Ambiguous: no answer within the deadline.
    pub const TIMEOUT: ErrorCode = ErrorCode::of(StatusCode::GATEWAY_TIMEOUT, "timeout");

    /// Every code the gateway answers with.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BAD_REQUEST,
        ErrorCode::BAD_ENCODING,
        ErrorCode::EMPTY_KEY,
        ErrorCode::BAD_LEASE_ID,
        ErrorCode::BAD_NODE_ID,
        ErrorCode::UNAUTHORIZED,
        ErrorCode::NOT_FOUND,
        ErrorCode::LEASE_NOT_FOUND,
        ErrorCode::UNKNOWN_NODE,
        ErrorCode::METHOD_NOT_ALLOWED,
        ErrorCode::CAS_CONFLICT,
        ErrorCode::STALE_RETRY,
        ErrorCode::NOT_LEADING,
        ErrorCode::KEY_TOO_LARGE,
        ErrorCode::VALUE_TOO_LARGE,
        ErrorCode::BODY_TOO_LARGE,
        ErrorCode::BUSY,
        ErrorCode::UNAVAILABLE,
        ErrorCode::NOT_LEADER,
        ErrorCode::LEADER_CHANGED,
        ErrorCode::DISCONNECTED,
        ErrorCode::STORAGE,
        ErrorCode::STORAGE_FAILED,
        ErrorCode::NOT_READY,
        ErrorCode::TIMEOUT,
    ];
}

/// A failed request, ready to be rendered as JSON.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable and stable: one of [`ErrorCode::ALL`].
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
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: code.status,
            code: code.code,
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
            ..ApiError::new(ErrorCode::BUSY, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BAD_REQUEST, message)
    }

    pub fn bad_encoding(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BAD_ENCODING, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NOT_FOUND, message)
    }

    pub fn body_too_large(max: usize) -> ApiError {
        ApiError::new(
            ErrorCode::BODY_TOO_LARGE,
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
        let message = e.to_string();
        match e {
            ClientError::NotLeader { leader } => ApiError {
                leader,
                ..ApiError::new(ErrorCode::NOT_LEADER, message)
            },
            ClientError::Unavailable { .. } => ApiError::new(ErrorCode::UNAVAILABLE, message),
            ClientError::ProposalDropped => ApiError::new(ErrorCode::UNAVAILABLE, message),
            // The three ambiguous failures: the message of each says the write may or may
            // not have applied. Only a timeout is a 504: the others are losses of the path to
            // the leader, i.e. the service being unavailable.
            ClientError::Timeout => ApiError::new(ErrorCode::TIMEOUT, message),
            ClientError::LeaderChanged => ApiError::new(ErrorCode::LEADER_CHANGED, message),
            ClientError::Disconnected(_) => ApiError::new(
                ErrorCode::DISCONNECTED,
                format!("{message}; a write may or may not have been applied"),
            ),
            ClientError::Rejected(KvError::EmptyKey) => {
                ApiError::new(ErrorCode::EMPTY_KEY, message)
            }
            ClientError::Rejected(KvError::KeyTooLarge { .. }) => {
                ApiError::new(ErrorCode::KEY_TOO_LARGE, message)
            }
            ClientError::Rejected(KvError::ValueTooLarge { .. }) => {
                ApiError::new(ErrorCode::VALUE_TOO_LARGE, message)
            }
            // The gateway's client numbers its own writes; a stale retry means a resend raced
            // its own answer. The write happened once, earlier.
            ClientError::Rejected(KvError::StaleRetry { .. }) => {
                ApiError::new(ErrorCode::STALE_RETRY, message)
            }
            ClientError::LeaseNotFound(_)
            | ClientError::Rejected(KvError::LeaseNotFound { .. }) => {
                ApiError::new(ErrorCode::LEASE_NOT_FOUND, message)
            }
            ClientError::Rejected(KvError::TooManyOps { .. })
            | ClientError::Rejected(KvError::DuplicateTxnKey { .. }) => {
                ApiError::new(ErrorCode::BAD_REQUEST, message)
            }
            ClientError::Rejected(KvError::TxnTooLarge { .. }) => {
                ApiError::new(ErrorCode::VALUE_TOO_LARGE, message)
            }
            ClientError::BadRequest(_) => ApiError::new(ErrorCode::BAD_REQUEST, message),
            // Ambiguous like the three above; the node refuses everything after it.
            ClientError::Storage(_) => ApiError::new(ErrorCode::STORAGE, message),
            ClientError::Busy { retry_after_ms } => ApiError::busy(retry_after_ms, message),
            // An election candidate that does not lead: it must campaign (again) first.
            ClientError::NotLeading { .. } => ApiError::new(ErrorCode::NOT_LEADING, message),
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
                "code": ErrorCode::CAS_CONFLICT.code,
                "message": "the comparison did not hold; nothing was written",
            },
        });
        (ErrorCode::CAS_CONFLICT.status, Json(body)).into_response()
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

//! Leases: `POST /v1/lease` grants, `POST /v1/lease/{id}/keepalive` restarts the TTL,
//! `DELETE /v1/lease/{id}` revokes (the lease's keys are deleted), `GET /v1/lease/{id}` tells
//! the time left. Keys are attached with `PUT /v1/kv/{key}?lease={id}` (see [`super::kv`]).
//!
//! Lease ids are 16 hex digits in JSON strings (a JSON number cannot carry 63 bits exactly in
//! most parsers). A lease that was never granted, was revoked or expired answers 404
//! `lease_not_found`. The gateway's client retries while the meta group has no leader, so an
//! election shows as latency, then as 503.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::core::{lease_hex, parse_lease_id, LeaseId, LeaseInfo};

use super::error::ApiError;
use super::state::Gateway;
use super::ErrorCode;

/// The longest TTL granted: a day (a longer-lived handle is a key without a lease).
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;

/// The body of `POST /v1/lease`: the TTL in seconds (`ttl`) or milliseconds (`ttl_ms`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub ttl: Option<u64>,
    pub ttl_ms: Option<u64>,
}

impl GrantRequest {
    /// The TTL in ms, or a 400 saying what is wrong.
    pub fn ttl_ms(&self) -> Result<u64, ApiError> {
        let ms = match (self.ttl, self.ttl_ms) {
            (Some(s), None) => s.saturating_mul(1000),
            (None, Some(ms)) => ms,
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of ttl (seconds) and ttl_ms",
                ))
            }
        };
        if ms == 0 || ms > MAX_TTL_MS {
            return Err(ApiError::bad_request(format!(
                "the TTL must be between 1 ms and {} s",
                MAX_TTL_MS / 1000
            )));
        }
        Ok(ms)
    }
}

/// A lease in JSON.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseJson {
    /// 16 hex digits.
    pub id: String,
    /// The TTL granted, in whole seconds (rounded up).
    pub ttl: u64,
    pub ttl_ms: u64,
    /// Time left on the coordinator's clock.
    pub remaining_ms: u64,
}

impl From<LeaseInfo> for LeaseJson {
    fn from(i: LeaseInfo) -> LeaseJson {
        LeaseJson {
            id: lease_hex(i.id),
            ttl: i.ttl_ms.div_ceil(1000),
            ttl_ms: i.ttl_ms,
            remaining_ms: i.remaining_ms,
        }
    }
}

/// A lease id from a path or query, or a 400 `bad_lease_id`.
pub fn lease_id(text: &str) -> Result<LeaseId, ApiError> {
    parse_lease_id(text).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BAD_LEASE_ID,
            format!("{text:?} is not a lease id (1 to 16 hex digits, not 0)"),
        )
    })
}

/// `POST /v1/lease` with `{"ttl": seconds}` or `{"ttl_ms": ms}`: the new lease.
pub async fn grant(
    State(gw): State<Arc<Gateway>>,
    body: Bytes,
) -> Result<Json<LeaseJson>, ApiError> {
    let req: GrantRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let ttl_ms = req.ttl_ms()?;
    let client = gw.client()?;
    let info = client
        .grant(std::time::Duration::from_millis(ttl_ms))
        .await?;
    Ok(Json(info.into()))
}

/// `POST /v1/lease/{id}/keepalive`: the TTL restarts; answers the lease.
pub async fn keep_alive(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<LeaseJson>, ApiError> {
    let id = lease_id(&id)?;
    Ok(Json(gw.client()?.keep_alive_once(id).await?.into()))
}

/// `GET /v1/lease/{id}`: the lease and its time left.
pub async fn time_to_live(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<LeaseJson>, ApiError> {
    let id = lease_id(&id)?;
    Ok(Json(gw.client()?.time_to_live(id).await?.into()))
}

/// `DELETE /v1/lease/{id}`: revokes the lease; its keys are deleted. Answers
/// `{"revoked": id}`.
pub async fn revoke(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = lease_id(&id)?;
    gw.client()?.revoke(id).await?;
    Ok(Json(serde_json::json!({ "revoked": lease_hex(id) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_is_given_once_in_seconds_or_milliseconds() -> Result<(), ApiError> {
        let s = GrantRequest {
            ttl: Some(5),
            ttl_ms: None,
        };
        assert_eq!(s.ttl_ms()?, 5000);
        let ms = GrantRequest {
            ttl: None,
            ttl_ms: Some(1500),
        };
        assert_eq!(ms.ttl_ms()?, 1500);
        for bad in [
            GrantRequest::default(),
            GrantRequest {
                ttl: Some(1),
                ttl_ms: Some(1),
            },
            GrantRequest {
                ttl: Some(0),
                ttl_ms: None,
            },
            GrantRequest {
                ttl: Some(u64::MAX),
                ttl_ms: None,
            },
        ] {
            assert!(bad.ttl_ms().is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn a_lease_prints_its_id_as_hex_and_its_ttl_rounded_up() {
        let j = LeaseJson::from(LeaseInfo {
            id: 0x2a,
            ttl_ms: 1500,
            remaining_ms: 1200,
        });
        assert_eq!(j.id, "000000000000002a");
        assert_eq!(j.ttl, 2);
        assert!(lease_id("zz").is_err());
        assert!(matches!(lease_id("2a"), Ok(0x2a)));
    }
}

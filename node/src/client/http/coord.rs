//! Leases and elections through the gateway's `/v1/lease` and `/v1/election` routes.
//!
//! One difference from the other transports: the gateway's campaign route answers once the
//! candidate is elected, so over HTTP [`crate::Client::join_election`] returns only then.
//! [`crate::Client::campaign`] behaves the same over every transport.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::kv::from_b64;
use super::{encode, Asked, HttpTransport};
use crate::core::election::MAX_OBSERVE_WAIT_MS;
use crate::core::{
    lease_hex, parse_lease_id, Candidate, ClientError, ElectionRequest, LeaseInfo, LeaseRequest,
    Reply, Response,
};
use crate::http::election::{CandidateJson, LeaderJson};
use crate::http::encoding::b64;
use crate::http::lease::LeaseJson;

fn bad_answer(what: &str, text: &str) -> ClientError {
    ClientError::Disconnected(format!("the gateway answered a bad {what}: {text:?}"))
}

fn candidate_of(j: CandidateJson) -> Result<Candidate, ClientError> {
    Ok(Candidate {
        token: parse_lease_id(&j.token).ok_or_else(|| bad_answer("token", &j.token))?,
        lease: parse_lease_id(&j.lease).ok_or_else(|| bad_answer("lease id", &j.lease))?,
        value: from_b64(&j.value_b64, "value_b64")?,
        revision: j.revision,
        name: j.name,
    })
}

fn election_path(name: &str, verb: &str) -> String {
    format!("/v1/election/{}{verb}", encode(name.as_bytes(), false))
}

impl HttpTransport {
    /// A lease request: `POST /v1/lease`, `POST /v1/lease/{id}/keepalive`, `DELETE` or `GET
    /// /v1/lease/{id}`.
    pub(crate) async fn lease(&self, req: &LeaseRequest) -> Reply {
        let (method, path, body, id) = match req {
            LeaseRequest::Grant { ttl_ms } => (
                Method::POST,
                "/v1/lease".to_string(),
                Some((
                    "application/json",
                    json!({ "ttl_ms": ttl_ms }).to_string().into_bytes(),
                )),
                None,
            ),
            LeaseRequest::KeepAlive { id } => (
                Method::POST,
                format!("/v1/lease/{}/keepalive", lease_hex(*id)),
                None,
                Some(*id),
            ),
            LeaseRequest::Revoke { id } => (
                Method::DELETE,
                format!("/v1/lease/{}", lease_hex(*id)),
                None,
                Some(*id),
            ),
            LeaseRequest::TimeToLive { id } => (
                Method::GET,
                format!("/v1/lease/{}", lease_hex(*id)),
                None,
                Some(*id),
            ),
        };
        let answer = self.call(method, &path, body).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&Asked {
                lease: id,
                ..Asked::default()
            }));
        }
        if let LeaseRequest::Revoke { id } = req {
            return Ok(Response::Lease(LeaseInfo {
                id: *id,
                ttl_ms: 0,
                remaining_ms: 0,
            }));
        }
        let wire: LeaseJson = answer.json()?;
        let id = parse_lease_id(&wire.id).ok_or_else(|| bad_answer("lease id", &wire.id))?;
        Ok(Response::Lease(LeaseInfo {
            id,
            ttl_ms: wire.ttl_ms,
            remaining_ms: wire.remaining_ms,
        }))
    }

    /// An election request: campaign, proclaim and resign are `POST
    /// /v1/election/{name}/...`; leader and observe are `GET /v1/election/{name}`, observe
    /// with `?after=TOKEN:REVISION` (a long poll).
    pub(crate) async fn election(&self, req: &ElectionRequest) -> Reply {
        let json_body =
            |v: serde_json::Value| Some(("application/json", v.to_string().into_bytes()));
        let (method, path, body, candidate) = match req {
            ElectionRequest::Campaign { name, value, lease } => (
                Method::POST,
                election_path(name, "/campaign"),
                json_body(json!({ "lease": lease_hex(*lease), "value_b64": b64(value) })),
                None,
            ),
            ElectionRequest::Proclaim {
                name,
                token,
                lease,
                value,
            } => (
                Method::POST,
                election_path(name, "/proclaim"),
                json_body(json!({
                    "lease": lease_hex(*lease),
                    "token": lease_hex(*token),
                    "value_b64": b64(value),
                })),
                Some((name.clone(), *token)),
            ),
            ElectionRequest::Resign { name, token, lease } => (
                Method::POST,
                election_path(name, "/resign"),
                json_body(json!({ "lease": lease_hex(*lease), "token": lease_hex(*token) })),
                Some((name.clone(), *token)),
            ),
            ElectionRequest::Leader { name } => (Method::GET, election_path(name, ""), None, None),
            ElectionRequest::Observe {
                name,
                known,
                wait_ms,
            } => {
                let after = match known {
                    Some((token, rev)) => format!("{token:x}:{rev}"),
                    None => "none".to_string(),
                };
                let wait_ms = (*wait_ms).min(MAX_OBSERVE_WAIT_MS);
                let path = format!(
                    "{}?after={}&wait_ms={wait_ms}",
                    election_path(name, ""),
                    encode(after.as_bytes(), false)
                );
                (Method::GET, path, None, None)
            }
        };
        let answer = self.call(method, &path, body).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&Asked {
                candidate,
                ..Asked::default()
            }));
        }
        if matches!(req, ElectionRequest::Resign { .. }) {
            return Ok(Response::Election(None));
        }
        let wire: LeaderJson = answer.json()?;
        Ok(Response::Election(
            wire.leader.map(candidate_of).transpose()?,
        ))
    }
}

//! Elections: `POST /v1/election/{name}/campaign` (answers once the caller leads),
//! `POST /v1/election/{name}/proclaim`, `POST /v1/election/{name}/resign`,
//! `GET /v1/election/{name}` (the leader) and `GET /v1/election/{name}/observe` (the leaders
//! as server-sent events).
//!
//! Over HTTP the caller owns the lease, as with etcd's gateway: it grants one
//! (`POST /v1/lease`), keeps it alive (`POST /v1/lease/{id}/keepalive`) and campaigns with
//! its id. It leads from the campaign's answer until it resigns or its own deadline passes:
//! the send time of its last successful keep-alive (or grant) plus the TTL. The cluster never
//! expires the lease before that deadline and elects nobody else before it expired, so a
//! caller that stops acting as the leader at its deadline never overlaps with the next leader
//! (see `core::election`). A campaign whose lease dies while it waits answers 409
//! `not_leading`.
//!
//! Tokens and lease ids are 16 hex digits in JSON strings. Values are UTF-8 text in `value`
//! or any bytes in `value_b64`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::core::election::validate_name;
use crate::core::{lease_hex, Candidate};

use super::encoding::{b64, from_b64, parse_query, text};
use super::error::ApiError;
use super::lease::lease_id;
use super::state::Gateway;

/// A candidate in JSON.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CandidateJson {
    pub name: String,
    /// The fencing token, 16 hex digits: larger for every new leadership of the election.
    pub token: String,
    /// The lease, 16 hex digits.
    pub lease: String,
    /// The value when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub value_b64: String,
    /// Revision of the record's last write (changes with every proclaim).
    pub revision: u64,
}

impl From<&Candidate> for CandidateJson {
    fn from(c: &Candidate) -> CandidateJson {
        CandidateJson {
            name: c.name.clone(),
            token: lease_hex(c.token),
            lease: lease_hex(c.lease),
            value: text(&c.value),
            value_b64: b64(&c.value),
            revision: c.revision,
        }
    }
}

/// `{"leader": candidate or null}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderJson {
    pub leader: Option<CandidateJson>,
}

impl LeaderJson {
    pub(super) fn of(c: Option<&Candidate>) -> LeaderJson {
        LeaderJson {
            leader: c.map(CandidateJson::from),
        }
    }
}

/// The body of campaign, proclaim and resign.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionBody {
    /// The caller's lease (hex).
    pub lease: String,
    /// The candidate's token (hex): proclaim and resign.
    pub token: Option<String>,
    pub value: Option<String>,
    pub value_b64: Option<String>,
}

impl ElectionBody {
    pub(super) fn parse(body: &[u8]) -> Result<ElectionBody, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }

    /// The value: exactly one of `value` and `value_b64`.
    fn value(&self) -> Result<Vec<u8>, ApiError> {
        self.value_or_none()?
            .ok_or_else(|| ApiError::bad_request("give exactly one of value and value_b64"))
    }

    /// The value when one is given; both at once is a 400.
    pub(super) fn value_or_none(&self) -> Result<Option<Vec<u8>>, ApiError> {
        match (&self.value, &self.value_b64) {
            (Some(v), None) => Ok(Some(v.clone().into_bytes())),
            (None, Some(b)) => from_b64(b, "value_b64").map(Some),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "give exactly one of value and value_b64",
            )),
        }
    }

    pub(super) fn token(&self) -> Result<u64, ApiError> {
        let t = self
            .token
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("token is missing"))?;
        crate::core::parse_lease_id(t).ok_or_else(|| {
            ApiError::bad_request(format!("{t:?} is not a token (1 to 16 hex digits)"))
        })
    }
}

fn name_of(name: &str) -> Result<String, ApiError> {
    validate_name(name).map_err(ApiError::bad_request)?;
    Ok(name.to_string())
}

/// `POST /v1/election/{name}/campaign` with `{"lease", "value" | "value_b64"}`: answers
/// `{"leader": candidate}` once the caller leads (waiting candidates are served in the order
/// they campaigned). A second campaign of the same lease is the same candidacy.
pub async fn campaign(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<LeaderJson>, ApiError> {
    let name = name_of(&name)?;
    let req = ElectionBody::parse(&body)?;
    let lease = lease_id(&req.lease)?;
    let value = req.value()?;
    let client = gw.client()?;
    let me = client.join_election(&name, &value, lease).await?;
    let elected = client.wait_for_leadership(&me).await?;
    Ok(Json(LeaderJson::of(Some(&elected))))
}

/// `POST /v1/election/{name}/proclaim` with `{"lease", "token", "value" | "value_b64"}`:
/// the leader's new record; 409 `not_leading` unless that candidate leads.
pub async fn proclaim(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<LeaderJson>, ApiError> {
    let name = name_of(&name)?;
    let req = ElectionBody::parse(&body)?;
    let lease = lease_id(&req.lease)?;
    let token = req.token()?;
    let value = req.value()?;
    let c = gw.client()?.proclaim(&name, token, lease, &value).await?;
    Ok(Json(LeaderJson::of(Some(&c))))
}

/// `POST /v1/election/{name}/resign` with `{"lease", "token"}`: the candidate leaves the
/// election (done also when it was already gone). Answers `{"resigned": token}`.
pub async fn resign(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = name_of(&name)?;
    let req = ElectionBody::parse(&body)?;
    let lease = lease_id(&req.lease)?;
    let token = req.token()?;
    gw.client()?.resign(&name, token, lease).await?;
    Ok(Json(serde_json::json!({ "resigned": lease_hex(token) })))
}

/// `GET /v1/election/{name}`: `{"leader": candidate or null}` (a linearizable read).
///
/// With `?after=TOKEN:REVISION` (or `?after=none`) it is a long poll: the answer comes when
/// the leader is no longer that one (that token at that revision, or no leader), or after
/// `wait_ms` (default and most 2000) with the leader as it is then. A client that cannot read
/// server-sent events observes with it.
pub async fn leader(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<LeaderJson>, ApiError> {
    let name = name_of(&name)?;
    leader_of(&gw, &name, query.as_deref()).await
}

/// The leader of election `name`, or a long poll for a change of it (see [`leader`]).
pub(super) async fn leader_of(
    gw: &Gateway,
    name: &str,
    query: Option<&str>,
) -> Result<Json<LeaderJson>, ApiError> {
    let mut after = None;
    let mut wait_ms = None;
    for (k, v) in parse_query(query)? {
        let v = String::from_utf8(v).map_err(|_| ApiError::bad_request("query not UTF-8"))?;
        match k.as_str() {
            "after" => after = Some(parse_after(&v)?),
            "wait_ms" => {
                wait_ms =
                    Some(v.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("wait_ms {v:?} is not a number"))
                    })?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    let client = gw.client()?;
    let l = match after {
        None => client.leader(name).await?,
        Some(known) => {
            let wait = wait_ms.map(Duration::from_millis);
            client.observe_once(name, known, wait).await?
        }
    };
    Ok(Json(LeaderJson::of(l.as_ref())))
}

/// `TOKEN:REVISION` (hex token, decimal revision) or `none`.
fn parse_after(v: &str) -> Result<Option<(u64, u64)>, ApiError> {
    if v == "none" {
        return Ok(None);
    }
    let bad = || ApiError::bad_request(format!("after={v:?} is not TOKEN:REVISION or none"));
    let (t, r) = v.split_once(':').ok_or_else(bad)?;
    let token = u64::from_str_radix(t, 16).map_err(|_| bad())?;
    let rev = r.parse::<u64>().map_err(|_| bad())?;
    Ok(Some((token, rev)))
}

/// `GET /v1/election/{name}/observe`: server-sent events, one `leader` event with
/// `{"leader": candidate or null}` for the current leader, then one per change (a new leader,
/// a proclaimed value, no leader). An `error` event tells the cluster did not answer; the
/// stream goes on.
pub async fn observe(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let name = name_of(&name)?;
    let observer = gw.client()?.observe(&name);
    let events = futures::stream::unfold(observer, |mut observer| async move {
        let event = match observer.next().await {
            Ok(l) => Event::default()
                .event("leader")
                .json_data(LeaderJson::of(l.as_ref()))
                .unwrap_or_else(|_| Event::default().event("leader").data("{}")),
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Event::default().event("error").data(e.to_string())
            }
        };
        Some((Ok(event), observer))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_prints_hex_ids_and_both_value_forms() {
        let c = Candidate {
            name: "db".into(),
            token: 0x2a,
            lease: 0x7,
            value: b"primary-1".to_vec(),
            revision: 42,
        };
        let j = CandidateJson::from(&c);
        assert_eq!(j.token, "000000000000002a");
        assert_eq!(j.lease, "0000000000000007");
        assert_eq!(j.value.as_deref(), Some("primary-1"));
        assert_eq!(j.value_b64, "cHJpbWFyeS0x");
    }

    #[test]
    fn bodies_need_one_value_and_a_hex_token() -> Result<(), ApiError> {
        let b = ElectionBody::parse(br#"{"lease":"7","token":"2a","value":"x"}"#)?;
        assert_eq!((b.token()?, b.value()?), (0x2a, b"x".to_vec()));
        let b = ElectionBody::parse(br#"{"lease":"7","value_b64":"eA=="}"#)?;
        assert_eq!(b.value()?, b"x".to_vec());
        assert!(b.token().is_err());
        let both = ElectionBody::parse(br#"{"lease":"7","value":"x","value_b64":"eA=="}"#)?;
        assert!(both.value().is_err());
        assert!(ElectionBody::parse(br#"{"lease":"7","extra":1}"#).is_err());
        assert!(name_of("a/b").is_err());
        assert_eq!(parse_after("none")?, None);
        assert_eq!(parse_after("2a:17")?, Some((0x2a, 17)));
        assert!(parse_after("2a").is_err() && parse_after("x:1").is_err());
        Ok(())
    }
}

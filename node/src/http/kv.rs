//! One key: `GET`, `PUT`, `DELETE /v1/kv/{key}` and `POST /v1/kv/{key}/cas`.
//!
//! The key is everything after `/v1/kv/` in the raw request path, percent-decoded into bytes
//! by the gateway (see [`super::encoding`]): `/` inside stays part of the key, as in Consul's
//! KV API (`PUT /v1/kv/config/db/host` writes the key `config/db/host`).
//!
//! Compare-and-swap is the only use of `POST`, and for `POST` the last path segment is always
//! the verb `cas`: `POST /v1/kv/a/cas/cas` swaps the key `a/cas`. `GET`, `PUT` and `DELETE`
//! never strip anything, so no key ever needs escaping to avoid the suffix.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use swarmkv_store::{CasAction, Compare};

use crate::core::routing::partition_of;
use crate::core::{group_of_partition, ClientError, Consistency};
use crate::Client;

use super::body::read_body;
use super::encoding::{flag, from_b64, parse_query, percent_decode, RecordJson};
use super::error::{ApiError, CasConflict};
use super::state::Gateway;
use super::ErrorCode;
use super::{MAX_CAS_BODY, MAX_PUT_BODY};

/// The path prefix of single-key routes.
pub const KV_PREFIX: &str = "/v1/kv/";

/// `GET /v1/kv/{key}[?serializable=true]`: the record, or 404.
pub async fn get(State(gw): State<Arc<Gateway>>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, false)?;
    let client = gw.client()?;
    let mut consistency = Consistency::Linearizable;
    for (name, value) in parse_query(uri.query())? {
        match name.as_str() {
            "serializable" if flag(&name, &value)? => consistency = Consistency::Serializable,
            "serializable" => {}
            _ => return Err(unknown_parameter(&name)),
        }
    }
    match client.get_with(&key, consistency).await {
        Ok(Some(record)) => Ok(Json(RecordJson::new(&key, &record)).into_response()),
        Ok(None) => Err(ApiError::not_found("no such key")),
        Err(e) => Err(with_leader_hint(client, &key, e).await),
    }
}

/// `PUT /v1/kv/{key}[?lease={id}][&prev_kv=true]`: the body, whatever its content type, is
/// the value. Answers `{rev}`, and with `prev_kv` also `prev`, the record it replaced (null if
/// none). With a lease, the key is deleted when the lease ends; a lease that does not exist
/// answers 404 `lease_not_found`.
pub async fn put(
    State(gw): State<Arc<Gateway>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&uri, false)?;
    let mut lease = 0;
    let mut prev_kv = false;
    for (name, value) in parse_query(uri.query())? {
        match name.as_str() {
            "lease" => lease = super::lease::lease_id(&String::from_utf8_lossy(&value))?,
            "prev_kv" => prev_kv = flag(&name, &value)?,
            _ => return Err(unknown_parameter(&name)),
        }
    }
    let value = read_body(&headers, body, MAX_PUT_BODY).await?;
    let client = gw.client()?;
    match client
        .put_with_lease_prev(&key, &value, lease, prev_kv)
        .await
    {
        Ok((rev, _)) if !prev_kv => Ok(Json(serde_json::json!({ "rev": rev })).into_response()),
        Ok((rev, prev)) => {
            let prev = prev.map(|r| RecordJson::new(&key, &r));
            Ok(Json(serde_json::json!({ "rev": rev, "prev": prev })).into_response())
        }
        Err(e) => Err(with_leader_hint(client, &key, e).await),
    }
}

/// `DELETE /v1/kv/{key}[?prev_kv=true]`: answers `{deleted}`, whether the key existed (200
/// either way: the key is absent afterwards, which is what was asked), and with `prev_kv` also
/// `prev`, the record removed (null if none).
pub async fn delete(State(gw): State<Arc<Gateway>>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, false)?;
    let mut prev_kv = false;
    for (name, value) in parse_query(uri.query())? {
        match name.as_str() {
            "prev_kv" => prev_kv = flag(&name, &value)?,
            _ => return Err(unknown_parameter(&name)),
        }
    }
    let client = gw.client()?;
    let answer = if prev_kv {
        client.delete_prev(&key).await.map(|prev| {
            let prev = prev.map(|r| RecordJson::new(&key, &r));
            serde_json::json!({ "deleted": prev.is_some(), "prev": prev })
        })
    } else {
        client
            .delete(&key)
            .await
            .map(|deleted| serde_json::json!({ "deleted": deleted }))
    };
    match answer {
        Ok(json) => Ok(Json(json).into_response()),
        Err(e) => Err(with_leader_hint(client, &key, e).await),
    }
}

/// The body of `POST /v1/kv/{key}/cas`: exactly one comparison and exactly one action.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasRequest {
    pub expect_mod_rev: Option<u64>,
    pub expect_value: Option<String>,
    pub expect_value_b64: Option<String>,
    pub expect_absent: Option<bool>,
    pub value: Option<String>,
    pub value_b64: Option<String>,
    /// Delete the key instead of writing a value.
    pub delete: Option<bool>,
}

impl CasRequest {
    /// The comparison and action, or a 400 saying what is missing or doubled.
    pub fn decode(self) -> Result<(Compare, CasAction), ApiError> {
        let mut compares = Vec::new();
        if let Some(rev) = self.expect_mod_rev {
            compares.push(Compare::ModRevision(rev));
        }
        if let Some(v) = self.expect_value {
            compares.push(Compare::Value(v.into_bytes()));
        }
        if let Some(v) = self.expect_value_b64 {
            compares.push(Compare::Value(from_b64(&v, "expect_value_b64")?));
        }
        match self.expect_absent {
            Some(true) => compares.push(Compare::Absent),
            Some(false) => {
                return Err(ApiError::bad_request(
                    "expect_absent can only be true; to expect a present key use expect_mod_rev or expect_value",
                ))
            }
            None => {}
        }
        let mut actions = Vec::new();
        if let Some(v) = self.value {
            actions.push(CasAction::Put(v.into_bytes()));
        }
        if let Some(v) = self.value_b64 {
            actions.push(CasAction::Put(from_b64(&v, "value_b64")?));
        }
        match self.delete {
            Some(true) => actions.push(CasAction::Delete),
            Some(false) => return Err(ApiError::bad_request("delete can only be true")),
            None => {}
        }
        let (Ok([compare]), Ok([action])) = (
            <[Compare; 1]>::try_from(compares),
            <[CasAction; 1]>::try_from(actions),
        ) else {
            return Err(ApiError::bad_request(
                "give exactly one of expect_mod_rev, expect_value, expect_value_b64, expect_absent \
                 and exactly one of value, value_b64, delete",
            ));
        };
        Ok((compare, action))
    }
}

/// `POST /v1/kv/{key}/cas`: `{succeeded: true, rev, current}`, or 409 with `current` when the
/// comparison did not hold.
pub async fn cas(
    State(gw): State<Arc<Gateway>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&uri, true)?;
    no_parameters(&uri)?;
    let body = read_body(&headers, body, MAX_CAS_BODY).await?;
    let request: CasRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let (compare, action) = request.decode()?;
    let client = gw.client()?;
    match client.cas(&key, compare, action).await {
        Ok(r) => {
            let current = r.current.as_ref().map(|rec| RecordJson::new(&key, rec));
            if r.succeeded {
                Ok(Json(serde_json::json!({
                    "succeeded": true,
                    "rev": r.revision,
                    "current": current,
                }))
                .into_response())
            } else {
                Ok(CasConflict { current }.into_response())
            }
        }
        Err(e) => Err(with_leader_hint(client, &key, e).await),
    }
}

/// The key of a single-key route, decoded to bytes. With `cas`, the path must end in `/cas`,
/// which is not part of the key.
pub fn key_of(uri: &Uri, cas: bool) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(KV_PREFIX)
        .ok_or_else(|| ApiError::not_found("not a key path"))?;
    let raw = if cas {
        raw.strip_suffix("/cas").ok_or_else(|| {
            ApiError::new(
                ErrorCode::METHOD_NOT_ALLOWED,
                "POST is only for compare-and-swap: POST /v1/kv/{key}/cas",
            )
        })?
    } else {
        raw
    };
    let key = percent_decode(raw, "key")?;
    if key.is_empty() {
        return Err(ApiError::new(ErrorCode::EMPTY_KEY, "the key is empty"));
    }
    Ok(key)
}

/// Refuses query parameters on routes that take none: a typo (`?serialisable`) must not be
/// silently ignored.
fn no_parameters(uri: &Uri) -> Result<(), ApiError> {
    match parse_query(uri.query())?.first() {
        Some((name, _)) => Err(unknown_parameter(name)),
        None => Ok(()),
    }
}

pub fn unknown_parameter(name: &str) -> ApiError {
    ApiError::bad_request(format!("unknown query parameter {name:?}"))
}

/// The error of a single-key request, with the leader this node knows for the key's
/// partition when the request found no leader to serve it.
pub async fn with_leader_hint(client: &Client, key: &[u8], e: ClientError) -> ApiError {
    let mut api = ApiError::from(e);
    if api.wants_leader_hint() {
        if let Ok(report) = client.status().await {
            let group = group_of_partition(partition_of(key, client.partitions()));
            api.leader = report
                .groups
                .iter()
                .find(|g| g.group == group)
                .and_then(|g| g.leader);
        }
    }
    api
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_needs_exactly_one_comparison_and_one_action() {
        let both = CasRequest {
            expect_mod_rev: Some(1),
            expect_absent: Some(true),
            value: Some("v".into()),
            ..CasRequest::default()
        };
        assert!(both.decode().is_err());
        let no_action = CasRequest {
            expect_mod_rev: Some(1),
            ..CasRequest::default()
        };
        assert!(no_action.decode().is_err());
        let ok = CasRequest {
            expect_value_b64: Some("/wA=".into()),
            value: Some("v".into()),
            ..CasRequest::default()
        };
        assert!(matches!(
            ok.decode(),
            Ok((Compare::Value(v), CasAction::Put(_))) if v == [0xff, 0x00]
        ));
    }

    #[test]
    fn the_cas_suffix_is_stripped_only_for_post() -> Result<(), ApiError> {
        let uri: Uri = "/v1/kv/a/cas/cas"
            .parse()
            .map_err(|_| ApiError::bad_request("uri"))?;
        assert_eq!(key_of(&uri, true)?, b"a/cas");
        assert_eq!(key_of(&uri, false)?, b"a/cas/cas");
        Ok(())
    }
}

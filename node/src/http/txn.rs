//! `POST /v1/txn`: a transaction within one partition, in etcd's shape.
//!
//! ```json
//! {"compare": [{"key": "{acct}/a", "mod_rev": 7, "op": "="}],
//!  "success": [{"put": {"key": "{acct}/a", "value": "3"}}, {"get": {"key": "{acct}/b"}}],
//!  "failure": [{"get": {"key": "{acct}/a"}}]}
//! ```
//!
//! Each compare names a key (`key` as text or `key_b64`), an `op` (`=`, `!=`, `<`, `>`) and
//! exactly one target: `value` / `value_b64`, `version`, `create_rev`, `mod_rev` or `lease`
//! (hex id). A missing key has version, revisions and lease 0 and no value, so "the key is
//! absent" is `version = 0` and no value compare on it holds. Operations are `put` (with an
//! optional `lease`), `delete`, `get` and `delete_range` (`prefix`, or `start` and `end`, each
//! also as `_b64`). The answer is `{succeeded, rev, results}`, one result per operation of the
//! list that ran. Every single key must share a partition (a common hash tag `{...}`); a
//! transaction that spans partitions is a 400 naming them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use swarmkv_store::{CompareOp, CompareTarget, Txn, TxnCompare, TxnOp, TxnOpResult};

use super::body::read_body;
use super::encoding::{from_b64, RecordJson};
use super::error::ApiError;
use super::lease::lease_id;
use super::state::Gateway;
use super::MAX_CAS_BODY;

/// The largest body read: a transaction's keys and values together are limited to one
/// value's size by the store, base64 makes them 4/3 larger, plus room for the JSON around them.
pub const MAX_TXN_BODY: usize = MAX_CAS_BODY;

/// The request body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<CompareJson>,
    #[serde(default)]
    pub success: Vec<OpJson>,
    #[serde(default)]
    pub failure: Vec<OpJson>,
}

/// One compare: a key, an operator and exactly one target.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareJson {
    pub key: Option<String>,
    pub key_b64: Option<String>,
    pub op: String,
    pub value: Option<String>,
    pub value_b64: Option<String>,
    pub version: Option<u64>,
    pub create_rev: Option<u64>,
    pub mod_rev: Option<u64>,
    pub lease: Option<String>,
}

/// One operation, named by its only field.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OpJson {
    Put(PutJson),
    Delete(KeyJson),
    Get(KeyJson),
    DeleteRange(RangeJson),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutJson {
    pub key: Option<String>,
    pub key_b64: Option<String>,
    pub value: Option<String>,
    pub value_b64: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyJson {
    pub key: Option<String>,
    pub key_b64: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeJson {
    pub prefix: Option<String>,
    pub prefix_b64: Option<String>,
    pub start: Option<String>,
    pub start_b64: Option<String>,
    pub end: Option<String>,
    pub end_b64: Option<String>,
}

/// One operation's result in the answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResultJson {
    Put {},
    Delete { deleted: bool },
    Get { record: Option<RecordJson> },
    DeleteRange { deleted: u64 },
}

/// Bytes given as text or as base64, at most one of the two; `None` when neither.
fn bytes_of(
    text: Option<String>,
    b64: Option<String>,
    field: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give {field} or {field}_b64, not both"
        ))),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => from_b64(&b, &format!("{field}_b64")).map(Some),
        (None, None) => Ok(None),
    }
}

fn required(text: Option<String>, b64: Option<String>, field: &str) -> Result<Vec<u8>, ApiError> {
    bytes_of(text, b64, field)?
        .ok_or_else(|| ApiError::bad_request(format!("{field} (or {field}_b64) is missing")))
}

impl CompareJson {
    fn decode(self) -> Result<TxnCompare, ApiError> {
        let key = required(self.key, self.key_b64, "key")?;
        let op = match self.op.as_str() {
            "=" | "==" | "equal" => CompareOp::Equal,
            "!=" | "not_equal" => CompareOp::NotEqual,
            "<" | "less" => CompareOp::Less,
            ">" | "greater" => CompareOp::Greater,
            other => {
                return Err(ApiError::bad_request(format!(
                    "compare op {other:?}: give one of =, !=, <, >"
                )))
            }
        };
        let mut targets = Vec::new();
        if let Some(v) = bytes_of(self.value, self.value_b64, "value")? {
            targets.push(CompareTarget::Value(v));
        }
        targets.extend(self.version.map(CompareTarget::Version));
        targets.extend(self.create_rev.map(CompareTarget::CreateRevision));
        targets.extend(self.mod_rev.map(CompareTarget::ModRevision));
        if let Some(l) = self.lease {
            targets.push(CompareTarget::Lease(lease_or_zero(&l)?));
        }
        let Ok([target]) = <[CompareTarget; 1]>::try_from(targets) else {
            return Err(ApiError::bad_request(
                "a compare takes exactly one of value, value_b64, version, create_rev, mod_rev, lease",
            ));
        };
        Ok(TxnCompare { key, target, op })
    }
}

/// A lease id, where "0" means "no lease" (a compare on a key without one).
fn lease_or_zero(text: &str) -> Result<u64, ApiError> {
    if text == "0" {
        return Ok(0);
    }
    lease_id(text)
}

impl OpJson {
    fn decode(self) -> Result<TxnOp, ApiError> {
        Ok(match self {
            OpJson::Put(p) => TxnOp::Put {
                key: required(p.key, p.key_b64, "key")?,
                value: required(p.value, p.value_b64, "value")?,
                lease: match p.lease {
                    Some(l) => lease_id(&l)?,
                    None => 0,
                },
            },
            OpJson::Delete(k) => TxnOp::Delete {
                key: required(k.key, k.key_b64, "key")?,
            },
            OpJson::Get(k) => TxnOp::Get {
                key: required(k.key, k.key_b64, "key")?,
            },
            OpJson::DeleteRange(r) => {
                let prefix = bytes_of(r.prefix, r.prefix_b64, "prefix")?;
                let start = bytes_of(r.start, r.start_b64, "start")?;
                let end = bytes_of(r.end, r.end_b64, "end")?;
                let (start, end) = match prefix {
                    Some(_) if start.is_some() || end.is_some() => {
                        return Err(ApiError::bad_request(
                            "delete_range takes either prefix or start/end, not both",
                        ))
                    }
                    Some(p) if p.is_empty() => return Err(ApiError::bad_request(
                        "delete_range with an empty prefix would delete everything; give a bound",
                    )),
                    Some(p) => {
                        let end = swarmkv_store::keys::prefix_end(&p);
                        (p, end)
                    }
                    None if start.is_none() && end.is_none() => {
                        return Err(ApiError::bad_request(
                            "delete_range needs a bound: prefix, start or end",
                        ))
                    }
                    None => (start.unwrap_or_default(), end),
                };
                TxnOp::DeleteRange { start, end }
            }
        })
    }
}

impl TxnRequest {
    /// The transaction, or a 400 saying which part is malformed.
    pub fn decode(self) -> Result<Txn, ApiError> {
        let ops = |list: Vec<OpJson>| -> Result<Vec<TxnOp>, ApiError> {
            list.into_iter().map(OpJson::decode).collect()
        };
        Ok(Txn {
            compares: self
                .compare
                .into_iter()
                .map(CompareJson::decode)
                .collect::<Result<_, _>>()?,
            success: ops(self.success)?,
            failure: ops(self.failure)?,
        })
    }
}

/// The JSON of one result; a get's record is shown under the key the operation named.
fn result_json(op: &TxnOp, result: &TxnOpResult) -> OpResultJson {
    match result {
        TxnOpResult::Put => OpResultJson::Put {},
        TxnOpResult::Delete { deleted } => OpResultJson::Delete { deleted: *deleted },
        TxnOpResult::Get(record) => OpResultJson::Get {
            record: record
                .as_ref()
                .map(|r| RecordJson::new(op.key().unwrap_or_default(), r)),
        },
        TxnOpResult::DeleteRange { deleted } => OpResultJson::DeleteRange { deleted: *deleted },
    }
}

/// `POST /v1/txn`: `{succeeded, rev, results}`.
pub async fn txn(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&headers, body, MAX_TXN_BODY).await?;
    let request: TxnRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let txn = request.decode()?;
    let client = gw.client()?;
    let ran = txn.clone();
    let r = client.txn(txn).await?;
    let branch = if r.succeeded {
        &ran.success
    } else {
        &ran.failure
    };
    let results: Vec<OpResultJson> = branch
        .iter()
        .zip(&r.results)
        .map(|(op, result)| result_json(op, result))
        .collect();
    Ok(Json(serde_json::json!({
        "succeeded": r.succeeded,
        "rev": r.revision,
        "results": results,
    }))
    .into_response())
}

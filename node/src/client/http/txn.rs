//! Transactions through the gateway: `POST /v1/txn`, with every key and value in base64 so
//! that any bytes cross unchanged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use swarmkv_store::{CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult};

use super::kv::RecordWire;
use super::{Asked, HttpTransport};
use crate::client::TxnResponse;
use crate::core::{lease_hex, ClientError};

/// The answer of `POST /v1/txn`.
#[derive(Deserialize)]
struct TxnWire {
    succeeded: bool,
    rev: u64,
    results: Vec<ResultWire>,
}

/// One result, named by its only field.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResultWire {
    Put {},
    Delete { deleted: bool },
    Get { record: Option<RecordWire> },
    DeleteRange { deleted: u64 },
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn op_json(op: &TxnOp) -> Value {
    match op {
        TxnOp::Put { key, value, lease } => {
            let mut put = json!({"key_b64": b64(key), "value_b64": b64(value)});
            if *lease != 0 {
                put["lease"] = json!(lease_hex(*lease));
            }
            json!({ "put": put })
        }
        TxnOp::Delete { key } => json!({"delete": {"key_b64": b64(key)}}),
        TxnOp::Get { key } => json!({"get": {"key_b64": b64(key)}}),
        TxnOp::DeleteRange { start, end } => {
            let mut range = json!({"start_b64": b64(start)});
            if let Some(end) = end {
                range["end_b64"] = json!(b64(end));
            }
            json!({ "delete_range": range })
        }
    }
}

/// The JSON body of `txn`.
fn txn_body(txn: &Txn) -> Value {
    let compares: Vec<Value> = txn
        .compares
        .iter()
        .map(|c| {
            let op = match c.op {
                CompareOp::Equal => "=",
                CompareOp::NotEqual => "!=",
                CompareOp::Less => "<",
                CompareOp::Greater => ">",
            };
            let mut compare = json!({"key_b64": b64(&c.key), "op": op});
            let (field, given) = match &c.target {
                CompareTarget::Value(v) => ("value_b64", json!(b64(v))),
                CompareTarget::Version(n) => ("version", json!(n)),
                CompareTarget::CreateRevision(n) => ("create_rev", json!(n)),
                CompareTarget::ModRevision(n) => ("mod_rev", json!(n)),
                CompareTarget::Lease(0) => ("lease", json!("0")),
                CompareTarget::Lease(l) => ("lease", json!(lease_hex(*l))),
            };
            compare[field] = given;
            compare
        })
        .collect();
    let ops = |list: &[TxnOp]| list.iter().map(op_json).collect::<Vec<_>>();
    json!({
        "compare": compares,
        "success": ops(&txn.success),
        "failure": ops(&txn.failure),
    })
}

impl HttpTransport {
    pub(crate) async fn txn(&self, txn: &Txn) -> Result<TxnResponse, ClientError> {
        let body = txn_body(txn).to_string().into_bytes();
        let answer = self
            .call(Method::POST, "/v1/txn", Some(("application/json", body)))
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&Asked::default()));
        }
        let wire: TxnWire = answer.json()?;
        let results = wire
            .results
            .into_iter()
            .map(|r| {
                Ok(match r {
                    ResultWire::Put {} => TxnOpResult::Put,
                    ResultWire::Delete { deleted } => TxnOpResult::Delete { deleted },
                    ResultWire::Get { record } => TxnOpResult::Get(
                        record.map(|r| r.decode().map(|(_, rec)| rec)).transpose()?,
                    ),
                    ResultWire::DeleteRange { deleted } => TxnOpResult::DeleteRange { deleted },
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(TxnResponse {
            succeeded: wire.succeeded,
            revision: wire.rev,
            results,
        })
    }
}

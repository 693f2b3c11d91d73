//! Keys, scans, compare-and-swap, status and decommission through the gateway.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use swarmkv_store::{CasAction, Compare, KvRecord};

use super::{encode, Asked, HttpTransport};
use crate::client::{CasResult, Scan};
use crate::core::{lease_hex, ClientError, Consistency, NodeId};
use crate::driver::DecommissionError;
use crate::http::scan::MAX_LIMIT;
use crate::wire::{GroupReport, StatusReport};

/// The JSON of a record, as the gateway writes it (only the fields that carry exact bytes).
#[derive(Deserialize)]
pub(super) struct RecordWire {
    key_b64: String,
    value_b64: String,
    create_rev: u64,
    mod_rev: u64,
    version: u64,
}

impl RecordWire {
    /// The key and its record. The gateway does not say which lease a key is attached to:
    /// `lease` is 0.
    pub(super) fn decode(self) -> Result<(Vec<u8>, KvRecord), ClientError> {
        Ok((
            from_b64(&self.key_b64, "key_b64")?,
            KvRecord {
                value: from_b64(&self.value_b64, "value_b64")?,
                create_rev: self.create_rev,
                mod_rev: self.mod_rev,
                version: self.version,
                lease: 0,
            },
        ))
    }
}

pub(super) fn from_b64(text: &str, field: &str) -> Result<Vec<u8>, ClientError> {
    STANDARD.decode(text).map_err(|e| {
        ClientError::Disconnected(format!(
            "the gateway sent a {field} that is not base64: {e}"
        ))
    })
}

/// `{"rev": N}`, with `"prev"` (a record or null) when the put asked for it.
#[derive(Deserialize)]
struct PutWire {
    rev: u64,
    #[serde(default)]
    prev: Option<RecordWire>,
}

/// `{"deleted": bool}`.
#[derive(Deserialize)]
struct DeletedWire {
    deleted: bool,
    /// With `prev_kv=true`: the record removed (null when the key did not exist).
    #[serde(default)]
    prev: Option<RecordWire>,
}

/// `{"deleted": N}`, the answer of a range delete.
#[derive(Deserialize)]
struct DeletedCountWire {
    deleted: u64,
}

/// The answer of `POST .../cas`, 200 or 409.
#[derive(Deserialize)]
struct CasWire {
    succeeded: bool,
    rev: Option<u64>,
    current: Option<RecordWire>,
}

/// The answer of `GET /v1/kv`.
#[derive(Deserialize)]
struct ScanWire {
    records: Vec<RecordWire>,
    more: bool,
    /// Per partition (as text: JSON object keys), the revision it was read at.
    #[serde(default)]
    revisions: BTreeMap<String, u64>,
}

/// The parts of `GET /v1/status` that make a [`StatusReport`].
#[derive(Deserialize)]
struct StatusWire {
    node: String,
    peer: String,
    cluster_id: Option<String>,
    partitions: Option<u32>,
    is_meta_leader: bool,
    peers: Vec<String>,
    foreign: Vec<ForeignWire>,
    groups: Vec<GroupWire>,
    #[serde(default)]
    storage_error: Option<String>,
}

#[derive(Deserialize)]
struct ForeignWire {
    peer: String,
    cluster_name: String,
    cluster_id: Option<String>,
}

#[derive(Deserialize)]
struct GroupWire {
    group: u64,
    role: String,
    leader: Option<String>,
    voters: Vec<String>,
    term: u64,
    commit: u64,
    applied: u64,
}

/// A node id (or cluster id) as the gateway writes it: 16 hex digits.
fn id_of(text: &str) -> Result<u64, ClientError> {
    u64::from_str_radix(text, 16).map_err(|e| {
        ClientError::Disconnected(format!("the gateway sent {text:?} as a node id: {e}"))
    })
}

impl StatusWire {
    fn report(self) -> Result<StatusReport, ClientError> {
        let ids = |v: &[String]| v.iter().map(|t| id_of(t)).collect::<Result<Vec<_>, _>>();
        Ok(StatusReport {
            node: id_of(&self.node)?,
            peer: self.peer,
            cluster_id: self.cluster_id.as_deref().map(id_of).transpose()?,
            partitions: self.partitions,
            meta_leader: self.is_meta_leader,
            groups: self
                .groups
                .into_iter()
                .map(|g| {
                    Ok(GroupReport {
                        group: g.group,
                        role: g.role,
                        term: g.term,
                        leader: g.leader.as_deref().map(id_of).transpose()?,
                        voters: ids(&g.voters)?,
                        commit: g.commit,
                        applied: g.applied,
                    })
                })
                .collect::<Result<_, ClientError>>()?,
            peers: ids(&self.peers)?,
            foreign: self
                .foreign
                .into_iter()
                .map(|f| {
                    Ok((
                        f.peer,
                        f.cluster_name,
                        f.cluster_id.as_deref().map(id_of).transpose()?,
                    ))
                })
                .collect::<Result<_, ClientError>>()?,
            storage_error: self.storage_error,
        })
    }
}

/// The report in a `GET /v1/status` answer.
pub(super) fn status_report(answer: &super::Answer) -> Result<StatusReport, ClientError> {
    answer.json::<StatusWire>()?.report()
}

/// The JSON body of a compare-and-swap. Bytes go as base64, so any value round-trips.
fn cas_body(compare: &Compare, action: &CasAction) -> Value {
    let mut body = match action {
        CasAction::Put(value) => json!({ "value_b64": STANDARD.encode(value) }),
        CasAction::Delete => json!({ "delete": true }),
    };
    let (field, expected) = match compare {
        Compare::ModRevision(rev) => ("expect_mod_rev", json!(rev)),
        Compare::Value(v) => ("expect_value_b64", json!(STANDARD.encode(v))),
        Compare::Absent => ("expect_absent", json!(true)),
    };
    body[field] = expected;
    body
}

fn key_path(key: &[u8]) -> String {
    format!("/v1/kv/{}", encode(key, true))
}

impl HttpTransport {
    pub(crate) async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<KvRecord>, ClientError> {
        let mut path = key_path(key);
        if consistency == Consistency::Serializable {
            path.push_str("?serializable=true");
        }
        // A serializable read is served by whichever gateway is in use.
        let answer = if consistency == Consistency::Serializable {
            self.call(Method::GET, &path, None).await?
        } else {
            self.call_for_key(key, Method::GET, &path, None).await?
        };
        match answer.status {
            StatusCode::OK => Ok(Some(answer.json::<RecordWire>()?.decode()?.1)),
            // Only the gateway's own `not_found` means "no such key"; a 404 from something
            // else (a proxy, a path the gateway does not know) is an error.
            StatusCode::NOT_FOUND if answer.code().as_deref() == Some("not_found") => Ok(None),
            _ => Err(answer.error(&Asked::default())),
        }
    }

    /// Writes the key, attached to `lease` unless it is 0 (`PUT
    /// /v1/kv/{key}?lease={id}&prev_kv=true`); the revision, and the record it replaced when
    /// `prev_kv` asks for it.
    pub(crate) async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: u64,
        prev_kv: bool,
    ) -> Result<(u64, Option<KvRecord>), ClientError> {
        let body = Some(("application/octet-stream", value.to_vec()));
        let mut query = Vec::new();
        if lease != 0 {
            query.push(format!("lease={}", lease_hex(lease)));
        }
        if prev_kv {
            query.push("prev_kv=true".to_string());
        }
        let mut path = key_path(key);
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let answer = self.call_for_key(key, Method::PUT, &path, body).await?;
        match answer.status {
            StatusCode::OK => {
                let wire: PutWire = answer.json()?;
                let prev = wire.prev.map(|r| r.decode().map(|(_, r)| r)).transpose()?;
                Ok((wire.rev, prev))
            }
            _ => Err(answer.error(&Asked {
                lease: Some(lease),
                ..Asked::default()
            })),
        }
    }

    pub(crate) async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let answer = self
            .call_for_key(key, Method::DELETE, &key_path(key), None)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(answer.json::<DeletedWire>()?.deleted),
            _ => Err(answer.error(&Asked::default())),
        }
    }

    /// `DELETE /v1/kv/{key}?prev_kv=true`: the record removed, if the key existed.
    pub(crate) async fn delete_prev(&self, key: &[u8]) -> Result<Option<KvRecord>, ClientError> {
        let path = format!("{}?prev_kv=true", key_path(key));
        let answer = self.call(Method::DELETE, &path, None).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&Asked::default()));
        }
        let wire: DeletedWire = answer.json()?;
        match (wire.deleted, wire.prev) {
            (true, Some(prev)) => Ok(Some(prev.decode()?.1)),
            (false, None) => Ok(None),
            (deleted, prev) => Err(ClientError::Disconnected(format!(
                "the gateway answered deleted={deleted} with{} a previous record",
                if prev.is_some() { "" } else { "out" }
            ))),
        }
    }

    /// Deletes the keys of `[start, end)` (`DELETE /v1/kv?start=&end=`); how many were
    /// deleted.
    pub(crate) async fn delete_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<u64, ClientError> {
        let mut path = format!("/v1/kv?start={}", encode(start, false));
        if let Some(end) = end {
            path.push_str(&format!("&end={}", encode(end, false)));
        }
        let answer = self.call(Method::DELETE, &path, None).await?;
        match answer.status {
            StatusCode::OK => Ok(answer.json::<DeletedCountWire>()?.deleted),
            _ => Err(answer.error(&Asked::default())),
        }
    }

    /// A compare-and-swap. The gateway does not give the revision of a failed comparison:
    /// `revision` is 0 then.
    pub(crate) async fn cas(
        &self,
        key: &[u8],
        compare: &Compare,
        action: &CasAction,
    ) -> Result<CasResult, ClientError> {
        let body = cas_body(compare, action).to_string().into_bytes();
        let path = format!("{}/cas", key_path(key));
        let answer = self
            .call_for_key(key, Method::POST, &path, Some(("application/json", body)))
            .await?;
        let conflict = answer.status == StatusCode::CONFLICT
            && answer.code().as_deref() == Some("cas_conflict");
        if answer.status != StatusCode::OK && !conflict {
            return Err(answer.error(&Asked::default()));
        }
        let wire: CasWire = answer.json()?;
        let current = wire
            .current
            .map(|r| r.decode().map(|(_, record)| record))
            .transpose()?;
        match (wire.succeeded, wire.rev) {
            (true, Some(revision)) => Ok(CasResult {
                succeeded: true,
                revision,
                current,
            }),
            (true, None) => Err(ClientError::Disconnected(
                "the gateway reported a swap without its revision".into(),
            )),
            (false, _) => Ok(CasResult {
                succeeded: false,
                revision: 0,
                current,
            }),
        }
    }

    /// Pages through `GET /v1/kv` (at most [`MAX_LIMIT`] records a request), going on after
    /// the last key of each page, until `limit` records (0: all) or the end of the range.
    pub(crate) async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<(Vec<u8>, KvRecord)>, ClientError> {
        let mut out: Vec<(Vec<u8>, KvRecord)> = Vec::new();
        let mut start = start.to_vec();
        loop {
            let page = match limit {
                0 => MAX_LIMIT,
                l => (l - out.len()).min(MAX_LIMIT),
            };
            let wire = self.scan_page(&start, end, page, consistency).await?;
            for r in wire.records {
                out.push(r.decode()?);
            }
            let done = limit != 0 && out.len() >= limit;
            match out.last() {
                Some((last, _)) if wire.more && !done => {
                    // The smallest key after the last one: the same bytes and a zero byte.
                    start = last.clone();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// One `GET /v1/kv` of `[start, end)`, at most `page` records.
    async fn scan_page(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        page: usize,
        consistency: Consistency,
    ) -> Result<ScanWire, ClientError> {
        let mut path = format!("/v1/kv?start={}&limit={page}", encode(start, false));
        if let Some(end) = end {
            path.push_str(&format!("&end={}", encode(end, false)));
        }
        if consistency == Consistency::Serializable {
            path.push_str("&serializable=true");
        }
        let answer = self.call(Method::GET, &path, None).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&Asked::default()));
        }
        answer.json()
    }

    /// One `GET /v1/kv` of at most [`MAX_LIMIT`] records (`limit` 0 or larger: that many):
    /// pages read one after the other would be read at different revisions, so the scan is
    /// not paged.
    pub(crate) async fn scan_with_cursor(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Scan, ClientError> {
        let page = match limit {
            0 => MAX_LIMIT,
            l => l.min(MAX_LIMIT),
        };
        let wire = self.scan_page(start, end, page, consistency).await?;
        if wire.revisions.is_empty() {
            return Err(ClientError::Disconnected(
                "the gateway's scan answer has no revisions (an older swarmkv)".into(),
            ));
        }
        let revisions = wire
            .revisions
            .into_iter()
            .map(|(p, rev)| {
                p.parse::<u32>().map(|p| (p, rev)).map_err(|_| {
                    ClientError::Disconnected(format!("the gateway named partition {p:?}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let records = wire
            .records
            .into_iter()
            .map(RecordWire::decode)
            .collect::<Result<_, _>>()?;
        Ok(Scan {
            records,
            more: wire.more,
            revisions,
        })
    }

    /// `GET /v1/status`: the report, and the body as the gateway wrote it (which has more:
    /// the node's state, a health summary, the cluster view).
    pub(crate) async fn status(&self) -> Result<(StatusReport, Value), ClientError> {
        let answer = self.call(Method::GET, "/v1/status", None).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&Asked::default()));
        }
        let json: Value = answer.json()?;
        Ok((status_report(&answer)?, json))
    }

    pub(crate) async fn decommission(&self, node: NodeId) -> Result<(), DecommissionError> {
        let path = format!("/v1/nodes/{node:016x}/decommission");
        let answer = self
            .call(Method::POST, &path, None)
            .await
            .map_err(|e| DecommissionError::Unavailable(e.to_string()))?;
        match answer.status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND if answer.code().as_deref() == Some("unknown_node") => {
                Err(DecommissionError::UnknownNode(node))
            }
            _ => Err(DecommissionError::Unavailable(
                answer.error(&Asked::default()).to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Endpoint, HttpOptions};
    use super::*;
    use crate::http::encoding::{parse_query, RecordJson};

    #[test]
    fn cas_bodies_carry_one_expectation_and_one_action_as_base64() {
        assert_eq!(
            cas_body(&Compare::ModRevision(7), &CasAction::Put(b"v".to_vec())),
            json!({"expect_mod_rev": 7, "value_b64": "dg=="})
        );
        assert_eq!(
            cas_body(&Compare::Value(vec![0xff]), &CasAction::Put(vec![0x00])),
            json!({"expect_value_b64": "/w==", "value_b64": "AA=="})
        );
        assert_eq!(
            cas_body(&Compare::Absent, &CasAction::Put(Vec::new())),
            json!({"expect_absent": true, "value_b64": ""})
        );
        assert_eq!(
            cas_body(&Compare::ModRevision(3), &CasAction::Delete),
            json!({"expect_mod_rev": 3, "delete": true})
        );
    }

    /// A stand-in for the gateway's `GET /v1/kv` over a fixed set of keys (each its own
    /// value) that answers at most 7 records a page, whatever the limit asked: the client
    /// must go on after the last key until it has what it asked for.
    async fn fake_scan(
        axum::extract::State(keys): axum::extract::State<std::sync::Arc<Vec<Vec<u8>>>>,
        uri: hyper::Uri,
    ) -> axum::Json<Value> {
        let mut start = Vec::new();
        let mut end = None;
        let mut limit = 100;
        for (name, value) in parse_query(uri.query()).expect("the client's query parses") {
            match name.as_str() {
                "start" => start = value,
                "end" => end = Some(value),
                "limit" => {
                    limit = String::from_utf8_lossy(&value)
                        .parse()
                        .expect("a numeric limit")
                }
                other => panic!("unexpected parameter {other}"),
            }
        }
        let in_range: Vec<&Vec<u8>> = keys
            .iter()
            .filter(|k| **k >= start && end.as_ref().is_none_or(|e| *k < e))
            .collect();
        let page = limit.min(7);
        let records: Vec<RecordJson> = in_range
            .iter()
            .take(page)
            .map(|k| {
                let rec = KvRecord {
                    value: k.to_vec(),
                    create_rev: 1,
                    mod_rev: 1,
                    version: 1,
                    lease: 0,
                };
                RecordJson::new(k, &rec)
            })
            .collect();
        axum::Json(json!({ "records": records, "more": in_range.len() > page }))
    }

    #[tokio::test]
    async fn scan_pages_on_after_the_last_key_until_the_limit_or_the_end() -> anyhow::Result<()> {
        // Keys that are prefixes of each other (and differ by zero bytes) test the "last key
        // plus a zero byte" step.
        let mut keys: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0".to_vec(),
            b"ab".to_vec(),
            vec![0xff, 0x00],
        ];
        keys.extend((0..20).map(|i| format!("k/{i:02}").into_bytes()));
        keys.sort();
        let app = axum::Router::new()
            .route("/v1/kv", axum::routing::get(fake_scan))
            .with_state(std::sync::Arc::new(keys.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let endpoint: Endpoint = format!("http://{addr}").parse()?;
        let client = HttpTransport::new(vec![endpoint], HttpOptions::default());
        let got = |records: Vec<(Vec<u8>, KvRecord)>| -> Vec<Vec<u8>> {
            records
                .into_iter()
                .map(|(k, r)| {
                    assert_eq!(k, r.value);
                    k
                })
                .collect()
        };
        let lin = Consistency::Linearizable;
        assert_eq!(got(client.scan(b"", None, 0, lin).await?), keys);
        assert_eq!(
            got(client.scan(b"", None, 12, lin).await?),
            keys[..12].to_vec()
        );
        assert_eq!(
            got(client.scan(b"", None, 3, lin).await?),
            keys[..3].to_vec()
        );
        let expected: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| k.as_slice() >= b"a\0".as_slice() && k.as_slice() < b"k/15".as_slice())
            .cloned()
            .collect();
        assert_eq!(
            got(client.scan(b"a\0", Some(b"k/15"), 0, lin).await?),
            expected
        );
        server.abort();
        Ok(())
    }

    #[test]
    fn gateway_status_json_becomes_the_report() -> Result<(), ClientError> {
        let json = json!({
            "node": "00000000000000ab", "peer": "12D3KooW", "cluster_id": "000000000000005f",
            "state": "ready", "partitions": 8, "meta_leader": "00000000000000ab",
            "is_meta_leader": true, "peers": ["00000000000000cd"],
            "foreign": [{"peer": "12D3x", "cluster_name": "other", "cluster_id": null}],
            "groups": [{"group": 0, "partition": null, "role": "Leader",
                        "leader": "00000000000000ab", "voters": ["00000000000000ab"],
                        "term": 2, "commit": 5, "applied": 5}],
            "summary": {"groups": 1, "with_leader": 1, "under_replicated": 1}
        });
        let wire: StatusWire =
            serde_json::from_value(json).map_err(|e| ClientError::BadRequest(e.to_string()))?;
        let r = wire.report()?;
        assert_eq!(
            (r.node, r.cluster_id, r.partitions),
            (0xab, Some(0x5f), Some(8))
        );
        assert!(r.meta_leader);
        assert_eq!(r.peers, vec![0xcd]);
        assert_eq!(r.foreign, vec![("12D3x".into(), "other".into(), None)]);
        assert_eq!(r.groups[0].leader, Some(0xab));
        Ok(())
    }
}

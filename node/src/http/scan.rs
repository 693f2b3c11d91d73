//! `GET /v1/kv?prefix=&start=&end=&limit=&serializable=&keys_only=&count=`: keys in order,
//! across every partition; `DELETE /v1/kv?prefix=` (or `start=&end=`): every key in a range.
//!
//! Either `prefix`, or a range `[start, end)` (either bound may be left out), or nothing (the
//! whole keyspace). Bounds are percent-encoded bytes, like keys in paths. At most `limit`
//! records come back (default 100, at most 10 000); `more` says whether the scan was cut, and
//! a caller pages on by asking again with `start` set to the last key plus a zero byte
//! (`%00`). `keys_only=true` answers the keys without their values; `count=true` answers only
//! how many keys the range holds (all of them: `limit` does not apply).
//!
//! A range delete needs a bound: `DELETE /v1/kv` alone, or with an empty prefix, is refused, so
//! that a mistyped request cannot empty the store (`start=%00` deletes everything on purpose).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::client::Scan;
use crate::core::Consistency;

use super::encoding::{b64, flag, parse_query, text, RecordJson};
use super::error::ApiError;
use super::kv::unknown_parameter;
use super::state::Gateway;

/// Records per scan unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`: a bound on what one request may make the node gather and send.
pub const MAX_LIMIT: usize = 10_000;

/// The answer to a scan.
#[derive(Debug, Serialize)]
pub struct ScanJson {
    pub records: Vec<RecordJson>,
    /// True when more records follow the last one returned.
    pub more: bool,
    #[serde(flatten)]
    pub at: ReadAt,
}

/// The answer to a `keys_only` scan.
#[derive(Debug, Serialize)]
pub struct KeysJson {
    pub keys: Vec<KeyJson>,
    /// True when more keys follow the last one returned.
    pub more: bool,
    #[serde(flatten)]
    pub at: ReadAt,
}

/// Where a scan was read: the watch cursor right after it (`GET /v1/watch?from=CURSOR`
/// delivers every later change once and none the scan showed), and the revision each
/// partition was read at.
#[derive(Debug, Serialize)]
pub struct ReadAt {
    pub cursor: String,
    pub revisions: BTreeMap<u32, u64>,
}

impl ReadAt {
    fn of(scan: &Scan) -> ReadAt {
        ReadAt {
            cursor: scan.cursor().to_string(),
            revisions: scan.revisions.clone(),
        }
    }
}

/// A key as JSON: `key` is left out when the bytes are not UTF-8.
#[derive(Debug, Serialize)]
pub struct KeyJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub key_b64: String,
}

/// What a scan asks for, from its query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanQuery {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub limit: usize,
    pub consistency: Consistency,
    pub keys_only: bool,
    pub count: bool,
}

/// The `prefix`, `start` and `end` parameters of a range, as they arrive.
#[derive(Default)]
struct RangeParams {
    prefix: Option<Vec<u8>>,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
}

impl RangeParams {
    /// Takes `value` if `name` is a range parameter; gives it back if it is not one.
    fn take(&mut self, name: &str, value: Vec<u8>) -> Option<Vec<u8>> {
        let slot = match name {
            "prefix" => &mut self.prefix,
            "start" => &mut self.start,
            "end" => &mut self.end,
            _ => return Some(value),
        };
        *slot = Some(value);
        None
    }

    /// `[start, end)`: a prefix's range, or the bounds given (either may be missing).
    fn range(self) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
        match self.prefix {
            Some(_) if self.start.is_some() || self.end.is_some() => Err(ApiError::bad_request(
                "give either prefix or start/end, not both",
            )),
            Some(p) => {
                let end = swarmkv_store::keys::prefix_end(&p);
                Ok((p, end))
            }
            None => Ok((self.start.unwrap_or_default(), self.end)),
        }
    }
}

impl ScanQuery {
    pub fn parse(query: Option<&str>) -> Result<ScanQuery, ApiError> {
        let mut range = RangeParams::default();
        let mut limit = DEFAULT_LIMIT;
        let mut consistency = Consistency::Linearizable;
        let mut keys_only = false;
        let mut count = false;
        for (name, value) in parse_query(query)? {
            let Some(value) = range.take(&name, value) else {
                continue;
            };
            match name.as_str() {
                "limit" => {
                    limit = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok())
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be a number from 1 to {MAX_LIMIT}"
                            ))
                        })?;
                }
                "serializable" => {
                    if flag(&name, &value)? {
                        consistency = Consistency::Serializable;
                    }
                }
                "keys_only" => keys_only = flag(&name, &value)?,
                "count" => count = flag(&name, &value)?,
                _ => return Err(unknown_parameter(&name)),
            }
        }
        let (start, end) = range.range()?;
        if keys_only && count {
            return Err(ApiError::bad_request(
                "give at most one of keys_only and count",
            ));
        }
        Ok(ScanQuery {
            start,
            end,
            limit,
            consistency,
            keys_only,
            count,
        })
    }
}

/// The range of a `DELETE /v1/kv`: `prefix` (not empty) or `start` and an optional `end`.
fn delete_range_of(query: Option<&str>) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
    let mut range = RangeParams::default();
    for (name, value) in parse_query(query)? {
        if range.take(&name, value).is_some() {
            return Err(unknown_parameter(&name));
        }
    }
    if range.prefix.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "an empty prefix would delete every key: give start=%00 to mean that",
        ));
    }
    if range.prefix.is_none() && range.start.is_none() {
        return Err(ApiError::bad_request(
            "a range delete needs prefix or start (start=%00 deletes every key)",
        ));
    }
    range.range()
}

/// `GET /v1/kv`: `{records: [...], more, cursor, revisions}`, `{keys: [...], more, cursor,
/// revisions}` or `{count}`.
pub async fn scan(State(gw): State<Arc<Gateway>>, uri: Uri) -> Result<Response, ApiError> {
    let q = ScanQuery::parse(uri.query())?;
    let client = gw.client()?;
    if q.count {
        return Ok(Json(serde_json::json!({ "count": count(client, &q).await? })).into_response());
    }
    // One record more than asked tells whether the scan was cut.
    let mut scan = client
        .scan_with_cursor(&q.start, q.end.as_deref(), q.limit + 1, q.consistency)
        .await?;
    let more = scan.records.len() > q.limit;
    scan.records.truncate(q.limit);
    let at = ReadAt::of(&scan);
    if q.keys_only {
        let keys = scan
            .records
            .iter()
            .map(|(k, _)| KeyJson {
                key: text(k),
                key_b64: b64(k),
            })
            .collect();
        return Ok(Json(KeysJson { keys, more, at }).into_response());
    }
    Ok(Json(ScanJson {
        records: scan
            .records
            .iter()
            .map(|(k, rec)| RecordJson::new(k, rec))
            .collect(),
        more,
        at,
    })
    .into_response())
}

/// How many keys `q`'s range holds, read page by page.
async fn count(client: &crate::Client, q: &ScanQuery) -> Result<u64, ApiError> {
    let mut start = q.start.clone();
    let mut total = 0u64;
    loop {
        let page = client
            .scan(&start, q.end.as_deref(), MAX_LIMIT, q.consistency)
            .await?;
        total += page.len() as u64;
        match page.last() {
            Some((last, _)) if page.len() == MAX_LIMIT => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(total),
        }
    }
}

/// `DELETE /v1/kv?prefix=P` or `?start=S[&end=E]`: deletes every key of the range in every
/// partition; answers `{deleted}`, how many keys were removed.
pub async fn delete_range(State(gw): State<Arc<Gateway>>, uri: Uri) -> Result<Response, ApiError> {
    let (start, end) = delete_range_of(uri.query())?;
    let deleted = gw.client()?.delete_range(&start, end.as_deref()).await?;
    Ok(Json(serde_json::json!({ "deleted": deleted })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_becomes_a_range_and_limits_are_bounded() -> Result<(), ApiError> {
        let q = ScanQuery::parse(Some("prefix=user%2F&limit=5"))?;
        assert_eq!(q.start, b"user/");
        assert_eq!(q.end.as_deref(), Some(&b"user0"[..]));
        assert_eq!(q.limit, 5);
        assert_eq!(ScanQuery::parse(None)?.limit, DEFAULT_LIMIT);
        for bad in [
            "limit=0",
            "limit=10001",
            "limit=x",
            "prefix=a&start=b",
            "bogus=1",
            "keys_only=true&count=true",
        ] {
            assert!(ScanQuery::parse(Some(bad)).is_err(), "{bad} was accepted");
        }
        Ok(())
    }

    #[test]
    fn a_range_delete_needs_a_bound() -> Result<(), ApiError> {
        assert_eq!(
            delete_range_of(Some("prefix=a%2F"))?,
            (b"a/".to_vec(), Some(b"a0".to_vec()))
        );
        assert_eq!(
            delete_range_of(Some("start=b&end=c"))?,
            (b"b".to_vec(), Some(b"c".to_vec()))
        );
        assert_eq!(delete_range_of(Some("start=%00"))?, (vec![0], None));
        for bad in [
            None,
            Some("prefix="),
            Some("prefix=a&start=b"),
            Some("prefix=a&end=b"),
            Some("limit=3"),
        ] {
            assert!(delete_range_of(bad).is_err(), "{bad:?} was accepted");
        }
        Ok(())
    }
}

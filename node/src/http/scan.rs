//! `GET /v1/kv?prefix=&start=&end=&limit=&serializable=`: keys in order, across every
//! partition.
//!
//! Either `prefix`, or a range `[start, end)` (either bound may be left out), or nothing (the
//! whole keyspace). Bounds are percent-encoded bytes, like keys in paths. At most `limit`
//! records come back (default 100, at most 10 000); `more` says whether the scan was cut, and
//! a caller pages on by asking again with `start` set to the last key plus a zero byte
//! (`%00`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::Serialize;

use crate::core::Consistency;

use super::encoding::{flag, parse_query, RecordJson};
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
}

/// What a scan asks for, from its query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanQuery {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub limit: usize,
    pub consistency: Consistency,
}

impl ScanQuery {
    pub fn parse(query: Option<&str>) -> Result<ScanQuery, ApiError> {
        let mut prefix = None;
        let mut start = None;
        let mut end = None;
        let mut limit = DEFAULT_LIMIT;
        let mut consistency = Consistency::Linearizable;
        for (name, value) in parse_query(query)? {
            match name.as_str() {
                "prefix" => prefix = Some(value),
                "start" => start = Some(value),
                "end" => end = Some(value),
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
                _ => return Err(unknown_parameter(&name)),
            }
        }
        let (start, end) = match prefix {
            Some(_) if start.is_some() || end.is_some() => {
                return Err(ApiError::bad_request(
                    "give either prefix or start/end, not both",
                ))
            }
            Some(p) => {
                let end = swarmkv_store::keys::prefix_end(&p);
                (p, end)
            }
            None => (start.unwrap_or_default(), end),
        };
        Ok(ScanQuery {
            start,
            end,
            limit,
            consistency,
        })
    }
}

/// `GET /v1/kv`: `{records: [...], more}`.
pub async fn scan(State(gw): State<Arc<Gateway>>, uri: Uri) -> Result<Json<ScanJson>, ApiError> {
    let q = ScanQuery::parse(uri.query())?;
    let client = gw.client()?;
    // One record more than asked tells whether the scan was cut.
    let mut records = client
        .scan(&q.start, q.end.as_deref(), q.limit + 1, q.consistency)
        .await?;
    let more = records.len() > q.limit;
    records.truncate(q.limit);
    Ok(Json(ScanJson {
        records: records
            .iter()
            .map(|(k, rec)| RecordJson::new(k, rec))
            .collect(),
        more,
    }))
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
        ] {
            assert!(ScanQuery::parse(Some(bad)).is_err(), "{bad} was accepted");
        }
        Ok(())
    }
}

//! `GET /v1/watch?prefix=P` or `?key=K`, with `from=REV` or `cursor=C`: the changes of a key
//! or prefix as server-sent events.
//!
//! The stream opens with an `event: start` whose `id:` is the cursor of the starting position
//! (so a client disconnected before any change can still resume exactly), then one
//! `event: put` or `event: delete` per change, whose `id:` is the cursor *after* that change.
//! A browser's `EventSource` resends the last id as `Last-Event-ID` when it reconnects, and
//! the gateway resumes from it: with every event exactly once, through this or any other
//! node's gateway. `Last-Event-ID` wins over `from` and `cursor`. Without any of them the
//! watch starts now.
//!
//! Each event's data is JSON: `{partition, revision, key, key_b64, value, value_b64,
//! create_rev, version, lease}` (`key`/`value` only when UTF-8; a delete has an empty value
//! and zero `create_rev`/`version`/`lease`). Revisions are per partition: the order guarantee
//! (per partition, not across) is the one of [`crate::client::Watch`].
//!
//! When the start position was compacted away, the stream sends `event: error` with
//! `{"error": {"code": "compacted", "message", "partition", "requested", "compacted"}}` and
//! ends: the client must re-read the current state and watch from now. A partition that no
//! node can serve for a minute ends the stream the same way with code `unavailable`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};
use swarmkv_store::EventKind;

use crate::client::{Cursor, Watch, WatchError, WatchEvent, WatchOptions, WatchTarget};

use super::encoding::{b64, parse_query, text};
use super::error::ApiError;
use super::kv::unknown_parameter;
use super::state::Gateway;
use super::ErrorCode;

/// An event's data as the gateway sends it (an SSE event's `data:`), and as
/// `swarmkv watch --json` prints it over either transport, so that both read the same.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventJson {
    partition: u32,
    revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    key_b64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    value_b64: String,
    create_rev: u64,
    version: u64,
    lease: u64,
}

impl EventJson {
    /// The JSON form of a change the Rust client's watch delivered.
    pub fn new(e: &WatchEvent) -> EventJson {
        let ev = &e.event;
        EventJson {
            partition: e.partition,
            revision: ev.revision,
            key: text(&ev.key),
            key_b64: b64(&ev.key),
            value: text(&ev.value),
            value_b64: b64(&ev.value),
            create_rev: ev.create_rev,
            version: ev.version,
            lease: ev.lease,
        }
    }

    /// The key and the value back from their base64 form, for a reader of the event stream.
    pub fn key_and_value(&self) -> Result<(Vec<u8>, Vec<u8>), base64::DecodeError> {
        use base64::Engine as _;
        let decode = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
        Ok((decode(&self.key_b64)?, decode(&self.value_b64)?))
    }
}

/// What a watch asks for, from the query string and `Last-Event-ID`.
#[derive(Debug, PartialEq, Eq)]
pub struct WatchQuery {
    pub target: WatchTarget,
    pub from: Cursor,
}

impl WatchQuery {
    pub fn parse(query: Option<&str>, last_event_id: Option<&str>) -> Result<WatchQuery, ApiError> {
        let mut target = None;
        let mut from = None;
        for (name, value) in parse_query(query)? {
            let set_target = |t: WatchTarget, target: &mut Option<WatchTarget>| {
                if target.replace(t).is_some() {
                    return Err(ApiError::bad_request("give one of key or prefix"));
                }
                Ok(())
            };
            match name.as_str() {
                "key" if value.is_empty() => {
                    return Err(ApiError::new(ErrorCode::EMPTY_KEY, "the key is empty"))
                }
                "key" => set_target(WatchTarget::Key(value), &mut target)?,
                "prefix" => set_target(WatchTarget::Prefix(value), &mut target)?,
                "from" | "cursor" if from.is_some() => {
                    return Err(ApiError::bad_request("give one of from or cursor"))
                }
                "from" => {
                    let rev = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| ApiError::bad_request("from must be a revision number"))?;
                    from = Some(Cursor::from_revision(rev));
                }
                "cursor" => from = Some(parse_cursor(&String::from_utf8_lossy(&value))?),
                _ => return Err(unknown_parameter(&name)),
            }
        }
        let target = target.ok_or_else(|| {
            ApiError::bad_request("give key=K or prefix=P (prefix= watches every key)")
        })?;
        let from = match last_event_id {
            Some(id) => parse_cursor(id)?,
            None => from.unwrap_or_else(Cursor::now),
        };
        Ok(WatchQuery { target, from })
    }
}

fn parse_cursor(text: &str) -> Result<Cursor, ApiError> {
    text.parse::<Cursor>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn error_event(e: &WatchError) -> SseEvent {
    let body = match e {
        WatchError::Compacted {
            partition,
            requested,
            compacted,
        } => serde_json::json!({"error": {
            "code": "compacted",
            "message": e.to_string(),
            "partition": partition,
            "requested": requested,
            "compacted": compacted,
        }}),
        WatchError::Unavailable { partition, .. } => serde_json::json!({"error": {
            "code": "unavailable",
            "message": e.to_string(),
            "partition": partition,
        }}),
        WatchError::BadRequest(_) => serde_json::json!({"error": {
            "code": "bad_request",
            "message": e.to_string(),
        }}),
    };
    SseEvent::default().event("error").data(body.to_string())
}

/// The SSE stream of a started watch: `start`, then the changes, then an `error` if any.
fn events(watch: Watch) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let start = SseEvent::default()
        .event("start")
        .id(watch.cursor().to_string())
        .data("{}");
    futures::stream::unfold((Some(watch), Some(start)), |(watch, start)| async move {
        if let Some(s) = start {
            return Some((Ok(s), (watch, None)));
        }
        let mut watch = watch?;
        match watch.next().await {
            Some(Ok(e)) => {
                let kind = match e.event.kind {
                    EventKind::Put => "put",
                    EventKind::Delete => "delete",
                };
                let data = serde_json::to_string(&EventJson::new(&e)).unwrap_or_default();
                let sse = SseEvent::default()
                    .event(kind)
                    .id(watch.cursor().to_string())
                    .data(data);
                Some((Ok(sse), (Some(watch), None)))
            }
            Some(Err(e)) => Some((Ok(error_event(&e)), (None, None))),
            None => None,
        }
    })
}

/// `GET /v1/watch`.
pub async fn watch(
    State(gw): State<Arc<Gateway>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))
        })
        .transpose()?;
    let q = WatchQuery::parse(uri.query(), last)?;
    let client = gw.client()?;
    let watch = Watch::start(
        vec![client.clone()],
        q.target,
        q.from,
        WatchOptions::default(),
    )
    .await
    .map_err(|e| match e {
        WatchError::BadRequest(m) => ApiError::bad_request(m),
        other => ApiError::new(ErrorCode::UNAVAILABLE, other.to_string()),
    })?;
    Ok(Sse::new(events(watch))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_a_target_and_a_start_and_last_event_id_wins() {
        let q = WatchQuery::parse(Some("prefix=a%2F&from=7"), None).expect("parse");
        assert_eq!(q.target, WatchTarget::Prefix(b"a/".to_vec()));
        assert_eq!(q.from, Cursor::from_revision(7));
        let q = WatchQuery::parse(Some("key=k&cursor=*%3D3,1%3D9"), Some("2=5")).expect("parse");
        assert_eq!(q.target, WatchTarget::Key(b"k".to_vec()));
        assert_eq!(q.from, "2=5".parse::<Cursor>().expect("cursor"));
        let q = WatchQuery::parse(Some("prefix="), None).expect("parse");
        assert_eq!(q.from, Cursor::now());
        for bad in [
            "",
            "key=",
            "key=a&prefix=b",
            "prefix=a&from=x",
            "prefix=a&from=1&cursor=now",
            "prefix=a&cursor=bad",
            "prefix=a&limit=3",
        ] {
            assert!(
                WatchQuery::parse(Some(bad), None).is_err(),
                "{bad} accepted"
            );
        }
    }
}

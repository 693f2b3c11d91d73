//! A watch through the gateway: its server-sent events (`GET /v1/watch`).
//!
//! The stream opens with an `event: start` whose `id:` is the cursor of the starting
//! position, then sends one `put` or `delete` event per change, each with the cursor after it
//! as its `id:`. When the connection breaks, the watch reconnects with `Last-Event-ID` set to
//! the last id, so the gateway resumes exactly there: nothing is lost or repeated. It gives up
//! after [`WatchOptions::give_up`] without a working connection.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::ACCEPT;
use hyper::Method;
use serde::Deserialize;
use serde_json::Value;
use swarmkv_store::{Event, EventKind};
use tokio::sync::mpsc;

use super::kv::from_b64;
use super::{encode, Answer, Asked, HttpTransport};
use crate::client::watch::{Item, Watch};
use crate::client::{Cursor, WatchError, WatchEvent, WatchOptions, WatchTarget};

/// How long to wait before reconnecting a broken stream.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// One event of the stream.
#[derive(Debug, Default, PartialEq, Eq)]
struct Block {
    event: String,
    id: Option<String>,
    data: String,
}

impl Block {
    /// An event's lines (`event:`, `id:`, `data:`); comments and unknown fields are skipped.
    fn parse(block: &[u8]) -> Block {
        let mut b = Block {
            event: "message".to_string(),
            ..Block::default()
        };
        for line in String::from_utf8_lossy(block).lines() {
            if let Some(v) = line.strip_prefix("event:") {
                b.event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                b.id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                b.data.push_str(v.trim_start());
            }
        }
        b
    }

    /// The cursor in the event's id.
    fn cursor(&self) -> Result<Cursor, WatchError> {
        let id = self.id.as_deref().unwrap_or_default();
        id.parse::<Cursor>()
            .map_err(|e| WatchError::Gateway(format!("the gateway sent a bad event id: {e}")))
    }
}

/// A change's data as the gateway sends it.
#[derive(Deserialize)]
struct EventWire {
    partition: u32,
    revision: u64,
    key_b64: String,
    value_b64: String,
    create_rev: u64,
    version: u64,
    lease: u64,
}

impl EventWire {
    fn decode(kind: EventKind, data: &str) -> Result<WatchEvent, WatchError> {
        let bad = |e: &dyn std::fmt::Display| {
            WatchError::Gateway(format!("a malformed watch event ({e}): {data}"))
        };
        let w: EventWire = serde_json::from_str(data).map_err(|e| bad(&e))?;
        Ok(WatchEvent {
            partition: w.partition,
            event: Event {
                kind,
                key: from_b64(&w.key_b64, "key_b64").map_err(|e| bad(&e))?,
                value: from_b64(&w.value_b64, "value_b64").map_err(|e| bad(&e))?,
                revision: w.revision,
                create_rev: w.create_rev,
                version: w.version,
                lease: w.lease,
            },
        })
    }
}

/// The error an `event: error` carries: `{"error": {"code", "message", ...}}`.
fn error_event(data: &str) -> WatchError {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let e = &v["error"];
    let message = e["message"].as_str().unwrap_or(data).to_string();
    let number = |field: &str| e[field].as_u64();
    let partition = number("partition").and_then(|p| u32::try_from(p).ok());
    match (e["code"].as_str(), partition) {
        (Some("compacted"), Some(partition)) => WatchError::Compacted {
            partition,
            requested: number("requested").unwrap_or_default(),
            compacted: number("compacted").unwrap_or_default(),
        },
        (Some("unavailable"), Some(partition)) => WatchError::Unavailable {
            partition,
            reason: message,
        },
        (Some("unavailable"), None) => WatchError::Unreachable { reason: message },
        (Some("bad_request"), _) => WatchError::BadRequest(message),
        _ => WatchError::Gateway(message),
    }
}

/// The events of one connection, block by block.
struct Reader {
    body: Incoming,
    buf: Vec<u8>,
}

impl Reader {
    /// The next event; `Err` with why when the stream broke or ended.
    async fn next(&mut self) -> Result<Block, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(Block::parse(&block));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(format!("the stream broke: {e}")),
                None => return Err("the stream ended".into()),
            }
        }
    }
}

/// How opening one connection went.
enum Opened {
    Stream(Reader),
    /// No stream now (no connection, 502/503/504): worth trying again.
    Broke(String),
    /// Refused for good.
    Failed(WatchError),
}

async fn open(http: &HttpTransport, query: &str, last_id: Option<&str>) -> Opened {
    let mut request = http
        .request(Method::GET, &format!("/v1/watch?{query}"))
        .header(ACCEPT, "text/event-stream");
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let request = match request.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return Opened::Failed(WatchError::BadRequest(e.to_string())),
    };
    let response = match http.client.request(request).await {
        Ok(r) => r,
        Err(e) => return Opened::Broke(http.send_error(&e).to_string()),
    };
    let status = response.status();
    if status.is_success() {
        return Opened::Stream(Reader {
            body: response.into_body(),
            buf: Vec::new(),
        });
    }
    let answer = Answer::collect(response).await;
    let message = answer.error(&Asked::default()).to_string();
    match status.as_u16() {
        502..=504 => Opened::Broke(message),
        400 => Opened::Failed(WatchError::BadRequest(message)),
        _ => Opened::Failed(WatchError::Gateway(message)),
    }
}

/// Starts a watch through the gateway: returns once the gateway fixed the start position
/// (its `start` event), so that every change after the return is seen.
pub(in crate::client) async fn watch(
    http: &HttpTransport,
    target: WatchTarget,
    from: Cursor,
    options: WatchOptions,
) -> Result<Watch, WatchError> {
    let mut query = match &target {
        WatchTarget::Key(k) => format!("key={}", encode(k, false)),
        WatchTarget::Prefix(p) => format!("prefix={}", encode(p, false)),
    };
    query.push_str(&format!(
        "&cursor={}",
        encode(from.to_string().as_bytes(), false)
    ));
    let mut reader = match open(http, &query, None).await {
        Opened::Stream(r) => r,
        Opened::Broke(reason) => return Err(WatchError::Unreachable { reason }),
        Opened::Failed(e) => return Err(e),
    };
    let start = loop {
        match reader.next().await {
            Ok(b) if b.event == "start" => break b,
            Ok(b) if b.event == "error" => return Err(error_event(&b.data)),
            Ok(_) => {}
            Err(reason) => return Err(WatchError::Unreachable { reason }),
        }
    };
    let cursor = start.cursor()?;
    let (tx, rx) = mpsc::channel(64);
    let follow = Follow {
        http: http.clone(),
        query,
        last_id: start.id.unwrap_or_default(),
        give_up: options.give_up,
        tx,
    };
    Ok(Watch::of_stream(
        rx,
        tokio::spawn(follow.run(reader)),
        cursor,
    ))
}

/// The task that reads the stream and resumes it.
struct Follow {
    http: HttpTransport,
    query: String,
    /// The id of the last event seen: where a new connection resumes.
    last_id: String,
    give_up: Duration,
    tx: mpsc::Sender<Item>,
}

impl Follow {
    async fn run(mut self, mut reader: Reader) {
        loop {
            let why = match self.read(&mut reader).await {
                Ok(()) => return,
                Err(why) => why,
            };
            match self.reconnect(why).await {
                Some(r) => reader = r,
                None => return,
            }
        }
    }

    /// Passes on the events of one connection; `Ok` when the watch is over (ended by an
    /// error event, or dropped), `Err` with why the connection broke.
    async fn read(&mut self, reader: &mut Reader) -> Result<(), String> {
        loop {
            let block = reader.next().await?;
            let kind = match block.event.as_str() {
                "put" => EventKind::Put,
                "delete" => EventKind::Delete,
                "start" => {
                    if let Some(id) = block.id {
                        self.last_id = id;
                    }
                    continue;
                }
                "error" => {
                    let _ = self.tx.send(Item::Failed(error_event(&block.data))).await;
                    return Ok(());
                }
                // Keep-alive comments and unknown events carry no change.
                _ => continue,
            };
            let item = EventWire::decode(kind, &block.data).and_then(|event| {
                let cursor = block.cursor()?;
                Ok(Item::Sse { event, cursor })
            });
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    let _ = self.tx.send(Item::Failed(e)).await;
                    return Ok(());
                }
            };
            if self.tx.send(item).await.is_err() {
                return Ok(());
            }
            if let Some(id) = block.id {
                self.last_id = id;
            }
        }
    }

    /// A new connection resuming after the last event, tried until [`Follow::give_up`]; `None`
    /// when the watch is over.
    async fn reconnect(&self, mut why: String) -> Option<Reader> {
        let since = Instant::now();
        loop {
            if since.elapsed() > self.give_up {
                let reason = format!("{why} (gave up reconnecting)");
                let _ = self
                    .tx
                    .send(Item::Failed(WatchError::Unreachable { reason }))
                    .await;
                return None;
            }
            log::warn!("watch via {}: {why}; reconnecting", self.http.endpoint());
            tokio::time::sleep(RECONNECT_PAUSE).await;
            match open(&self.http, &self.query, Some(&self.last_id)).await {
                Opened::Stream(r) => return Some(r),
                Opened::Broke(w) => why = w,
                Opened::Failed(e) => {
                    let _ = self.tx.send(Item::Failed(e)).await;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_blocks_give_their_kind_id_and_data() {
        let b = Block::parse(b"event: put\nid: 1=5\ndata: {\"a\":1}\n\n");
        assert_eq!(
            b,
            Block {
                event: "put".into(),
                id: Some("1=5".into()),
                data: "{\"a\":1}".into()
            }
        );
        assert_eq!(Block::parse(b": keep-alive\n\n").event, "message");
    }

    #[test]
    fn error_events_become_the_watch_errors_of_the_other_transports() {
        let compacted = r#"{"error":{"code":"compacted","message":"m","partition":3,"requested":4,"compacted":9}}"#;
        assert_eq!(
            error_event(compacted),
            WatchError::Compacted {
                partition: 3,
                requested: 4,
                compacted: 9
            }
        );
        let unavailable = r#"{"error":{"code":"unavailable","message":"m","partition":1}}"#;
        assert_eq!(
            error_event(unavailable),
            WatchError::Unavailable {
                partition: 1,
                reason: "m".into()
            }
        );
        assert_eq!(
            error_event(r#"{"error":{"code":"bad_request","message":"m"}}"#),
            WatchError::BadRequest("m".into())
        );
        assert_eq!(error_event("junk"), WatchError::Gateway("junk".into()));
    }

    #[test]
    fn change_events_decode_to_bytes() -> Result<(), WatchError> {
        let data = r#"{"partition":2,"revision":7,"key_b64":"/w==","value_b64":"dg==","create_rev":5,"version":2,"lease":0}"#;
        let e = EventWire::decode(EventKind::Put, data)?;
        assert_eq!(e.partition, 2);
        assert_eq!((e.event.key, e.event.value), (vec![0xff], b"v".to_vec()));
        assert_eq!((e.event.revision, e.event.version), (7, 2));
        assert!(EventWire::decode(EventKind::Put, "{}").is_err());
        Ok(())
    }
}

//! `swarmkv watch PREFIX [--from REV | --cursor C]`: prints the changes of every key that
//! starts with PREFIX (or of one key, with `--key`) as they happen, until Ctrl-C or `--count`.
//!
//! Over HTTP it reads the gateway's server-sent events (`GET /v1/watch`) and, when the
//! connection breaks, reconnects with `Last-Event-ID` so nothing is lost or repeated; over
//! `--peer` it runs the Rust client's watch. Either way it ends by printing, on stderr, the
//! cursor to resume from (`--cursor`), and the order guarantee is the one of
//! `swarmkv::client::Watch`: revision order per partition, none across partitions.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use swarmkv::client::{Cursor, Watch, WatchError, WatchOptions, WatchTarget};
use swarmkv::http::watch::EventJson;
use swarmkv_store::EventKind;

use super::endpoint::{encode, Endpoint};
use super::transport::{Need, Target, TransportArgs};
use super::{say, show, CliError};

/// How long the HTTP watch keeps reconnecting to a gateway that went away before it gives up
/// (exit 3).
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Print the changes of a prefix (or a key) as they happen
///
/// One line per change: `put KEY VALUE` or `delete KEY` (values as text if UTF-8, else 0x and
/// hex), or with --json one JSON object per line. Revisions are per partition: changes come
/// in revision order within a partition, in no defined order across partitions. Runs until
/// Ctrl-C (or --count changes), then prints on stderr the cursor to resume from with --cursor.
/// A start position whose events were compacted away exits 1: re-read, then watch from now.
#[derive(Args, Debug)]
pub struct WatchCmd {
    /// The prefix to watch ("" watches every key).
    pub prefix: OsString,
    /// Watch exactly this key instead of a prefix.
    #[arg(long)]
    pub key: bool,
    /// Start at this revision (inclusive) in every partition, instead of now.
    #[arg(long, value_name = "REV", conflicts_with = "cursor")]
    pub from: Option<u64>,
    /// Resume from a cursor an earlier watch printed (or an SSE event id).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Stop after this many changes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line: {type, partition, revision, key, key_b64, value, value_b64,
    /// create_rev, version, lease, cursor} (key/value only when UTF-8).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// One change, whichever transport brought it.
#[derive(Debug, Serialize)]
struct Line {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    event: EventJson,
    cursor: String,
    #[serde(skip)]
    key_bytes: Vec<u8>,
    #[serde(skip)]
    value_bytes: Vec<u8>,
}

impl Line {
    fn print(&self, json: bool) -> Result<(), CliError> {
        if json {
            say(serde_json::to_string(self).map_err(anyhow::Error::from)?)?;
        } else if self.kind == "delete" {
            say(format!("delete {}", show(&self.key_bytes)))?;
        } else {
            say(format!(
                "put {} {}",
                show(&self.key_bytes),
                show(&self.value_bytes)
            ))?;
        }
        Ok(())
    }

    /// A change from a server-sent event's JSON data.
    fn from_sse(kind: &'static str, id: &str, data: &str) -> Result<Line, CliError> {
        let event: EventJson = serde_json::from_str(data).map_err(|e| {
            CliError::Other(anyhow::anyhow!("a malformed watch event ({e}): {data}"))
        })?;
        let (key_bytes, value_bytes) = event.key_and_value().map_err(|e| {
            CliError::Other(anyhow::anyhow!("bad base64 in a watch event ({e}): {data}"))
        })?;
        Ok(Line {
            kind,
            event,
            cursor: id.to_string(),
            key_bytes,
            value_bytes,
        })
    }
}

/// Prints the cursor to resume from, on stderr (stdout carries only changes).
fn resume_hint(cursor: &str) {
    eprintln!("resume with: --cursor '{cursor}'");
}

impl WatchCmd {
    fn target(&self) -> WatchTarget {
        let bytes = self.prefix.as_bytes().to_vec();
        if self.key {
            WatchTarget::Key(bytes)
        } else {
            WatchTarget::Prefix(bytes)
        }
    }

    fn start(&self) -> Result<Cursor, CliError> {
        match (&self.cursor, self.from) {
            (Some(c), _) => c
                .parse::<Cursor>()
                .map_err(|e| CliError::Usage(e.to_string())),
            (None, Some(rev)) => Ok(Cursor::from_revision(rev)),
            (None, None) => Ok(Cursor::now()),
        }
    }

    pub async fn run(self) -> Result<(), CliError> {
        if self.key && self.prefix.is_empty() {
            return Err(CliError::Usage("the key is empty".into()));
        }
        if self.count == Some(0) {
            return Ok(());
        }
        let from = self.start()?;
        match self.transport.connect(Need::Keys).await? {
            Target::Http(_) => self.run_http(from).await,
            Target::Peer { client, addr } => self.run_peer(Arc::new(client), &addr, from).await,
        }
    }

    async fn run_peer(
        &self,
        client: Arc<swarmkv::Client>,
        addr: &swarmkv_net::Multiaddr,
        from: Cursor,
    ) -> Result<(), CliError> {
        let mut watch = Watch::start(vec![client], self.target(), from, WatchOptions::default())
            .await
            .map_err(|e| watch_error(e, addr))?;
        let mut printed = 0;
        loop {
            let item = tokio::select! {
                item = watch.next() => item,
                _ = tokio::signal::ctrl_c() => {
                    resume_hint(&watch.cursor().to_string());
                    return Ok(());
                }
            };
            let e = match item {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    resume_hint(&watch.cursor().to_string());
                    return Err(watch_error(e, addr));
                }
                None => return Ok(()),
            };
            let line = Line {
                kind: match e.event.kind {
                    EventKind::Put => "put",
                    EventKind::Delete => "delete",
                },
                event: EventJson::new(&e),
                cursor: watch.cursor().to_string(),
                key_bytes: e.event.key.clone(),
                value_bytes: e.event.value.clone(),
            };
            line.print(self.json)?;
            printed += 1;
            if self.count.is_some_and(|n| printed >= n) {
                resume_hint(&line.cursor);
                return Ok(());
            }
        }
    }

    async fn run_http(&self, from: Cursor) -> Result<(), CliError> {
        let endpoint: &Endpoint = &self.transport.endpoint;
        let mut query = match self.target() {
            WatchTarget::Key(k) => format!("key={}", encode(&k, false)),
            WatchTarget::Prefix(p) => format!("prefix={}", encode(&p, false)),
        };
        query.push_str(&format!(
            "&cursor={}",
            encode(from.to_string().as_bytes(), false)
        ));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(connector);
        let mut last_id: Option<String> = None;
        let mut printed = 0u64;
        let mut broken_since: Option<Instant> = None;
        loop {
            let mut request = Request::get(format!("{endpoint}/v1/watch?{query}"))
                .header(hyper::header::ACCEPT, "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id.as_str());
            }
            if let Some(t) = &self.transport.http_token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| CliError::Other(e.into()))?;
            let outcome = tokio::select! {
                r = self.read_stream(&http, request, &mut last_id, &mut printed) => r,
                _ = tokio::signal::ctrl_c() => {
                    if let Some(id) = &last_id {
                        resume_hint(id);
                    }
                    return Ok(());
                }
            };
            let why = match outcome {
                Stream::Done => return Ok(()),
                Stream::Failed(e) => return Err(e),
                Stream::Broke(why) => why,
            };
            // The first connection must work; later ones resume for a while.
            let Some(id) = &last_id else {
                return Err(CliError::Unavailable(format!(
                    "watch via {endpoint}: {why}"
                )));
            };
            let since = *broken_since.get_or_insert_with(Instant::now);
            if since.elapsed() > RECONNECT_FOR {
                resume_hint(id);
                return Err(CliError::Unavailable(format!(
                    "watch via {endpoint}: {why} (gave up reconnecting)"
                )));
            }
            eprintln!("watch via {endpoint}: {why}; reconnecting");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads one SSE connection until it ends, breaks, or the watch is done.
    async fn read_stream(
        &self,
        http: &hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>,
        request: Request<Empty<Bytes>>,
        last_id: &mut Option<String>,
        printed: &mut u64,
    ) -> Stream {
        let response = match http.request(request).await {
            Ok(r) => r,
            Err(e) => return Stream::Broke(format!("cannot connect: {e}")),
        };
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            let message = format!("watch: {status}: {message}");
            return match status.as_u16() {
                503 | 504 => Stream::Broke(message),
                400 => Stream::Failed(CliError::Usage(message)),
                _ => Stream::Failed(CliError::Rejected(message)),
            };
        }
        let mut body = response.into_body();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Stream::Broke(format!("the stream broke: {e}")),
                None => return Stream::Broke("the stream ended".into()),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                match self.on_event(&block, last_id, printed) {
                    Ok(true) => {}
                    Ok(false) => return Stream::Done,
                    Err(e) => return Stream::Failed(e),
                }
            }
        }
    }

    /// Handles one SSE event block; `Ok(false)` when the watch is done.
    fn on_event(
        &self,
        block: &[u8],
        last_id: &mut Option<String>,
        printed: &mut u64,
    ) -> Result<bool, CliError> {
        let (mut event, mut id, mut data) = ("message".to_string(), None, String::new());
        for line in String::from_utf8_lossy(block).lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        let kind = match event.as_str() {
            "start" => {
                if let Some(id) = id {
                    *last_id = Some(id);
                }
                return Ok(true);
            }
            "put" => "put",
            "delete" => "delete",
            "error" => {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                let message = v["error"]["message"].as_str().unwrap_or(&data).to_string();
                if let Some(id) = last_id.as_deref() {
                    resume_hint(id);
                }
                return Err(match v["error"]["code"].as_str() {
                    Some("unavailable") => CliError::Unavailable(message),
                    _ => CliError::Rejected(message),
                });
            }
            // Keep-alive comments and unknown events carry no change.
            _ => return Ok(true),
        };
        let id = id.unwrap_or_default();
        let line = Line::from_sse(kind, &id, &data)?;
        line.print(self.json)?;
        *last_id = Some(id);
        *printed += 1;
        if self.count.is_some_and(|n| *printed >= n) {
            resume_hint(&line.cursor);
            return Ok(false);
        }
        Ok(true)
    }
}

/// How one SSE connection ended.
enum Stream {
    /// The watch printed what was asked.
    Done,
    /// The connection broke or could not be made: resume.
    Broke(String),
    /// The watch failed for good.
    Failed(CliError),
}

fn watch_error(e: WatchError, addr: &swarmkv_net::Multiaddr) -> CliError {
    let message = format!("watch via {addr}: {e}");
    match e {
        WatchError::Compacted { .. } => CliError::Rejected(message),
        WatchError::Unavailable { .. } => CliError::Unavailable(message),
        WatchError::BadRequest(_) => CliError::Usage(message),
    }
}

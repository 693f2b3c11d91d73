//! The HTTP transport of the Rust client: every call is a request to a node's JSON gateway
//! (`swarmkv start` serves it on `http://127.0.0.1:7380`; the routes are in `docs/openapi.yaml`).
//!
//! # Layout
//! - this file: the gateway's address ([`Endpoint`]), the options ([`HttpOptions`]), sending
//!   one request, and the gateway's error answers as [`ClientError`]s.
//! - [`kv`]: keys, scans, compare-and-swap, status and decommission.
//! - [`leaders`]: with several gateways, which one leads each key's partition.
//! - [`coord`]: leases and elections.
//! - [`sse`]: reading server-sent events, for watches.
//!
//! The gateway routes each key to its partition's leader and retries what is safe to retry
//! with its own deadline, so this transport sends each call once and reports the answer: the
//! retry loops of the other transports would only stack a second deadline on the gateway's.
//! Given the gateways of several nodes, it sends each write and linearizable read of a key to
//! the gateway of the key's partition's leader ([`leaders`]), sparing the gateway's follower
//! the detour through Raft.
//!
//! Keys and values are bytes end to end. A key goes into the URL percent-encoded byte by byte
//! ([`encode`]), which the gateway decodes back into the same bytes; a value goes as the raw
//! `PUT` body, or base64 in JSON; values and keys come back from the `*_b64` fields of the
//! JSON, never from its text fields, so non-UTF-8 bytes survive.
//!
//! # Errors
//! An error answer (`{"error": {"code", "message", "leader"?}}`) becomes the [`ClientError`]
//! the other transports give for the same failure, so a caller acts on it the same way:
//! 503 `not_leader` is [`ClientError::NotLeader`] (with the hint), other 503s and 502 are
//! [`ClientError::Unavailable`] (nothing was done), except the ambiguous `leader_changed`,
//! `disconnected` and `storage`; 504 is [`ClientError::Timeout`]; 429 is
//! [`ClientError::Busy`]; `lease_not_found` and `not_leading` are their own variants; any
//! other refusal (4xx) is [`ClientError::BadRequest`] carrying the status, message and code.
//! A connection that cannot be made is "unavailable" (nothing was sent); one that breaks
//! before the answer is complete is [`ClientError::Disconnected`] (a write may have applied).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::core::ClientError;

pub(super) mod backup;
mod coord;
mod kv;
mod leaders;
pub(super) mod sse;
mod txn;

/// Where a node's gateway listens unless told otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7380";

/// A gateway's address: `http://HOST:PORT` (or just `HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT`, as given (`[::1]:7380` for IPv6).
    authority: String,
}

/// Text that is not a gateway address, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointError(String);

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Endpoint, EndpointError> {
        let bad = |why: String| Err(EndpointError(why));
        let uri: hyper::Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => return bad(format!("{text:?} is not a URL: {e}")),
        };
        match uri.scheme_str() {
            Some("http") | None => {}
            Some("https") => {
                return bad(
                    "https is not supported: the gateway speaks plain HTTP (use http://)".into(),
                )
            }
            Some(other) => return bad(format!("unsupported scheme {other:?}: use http://")),
        }
        let Some(authority) = uri.authority() else {
            return bad(format!("{text:?} has no host: use http://HOST:PORT"));
        };
        if authority.as_str().contains('@') {
            return bad(format!(
                "{text:?}: the gateway takes no user name or password"
            ));
        }
        if authority.port_u16().is_none() {
            return bad(format!(
                "{text:?} has no port: use http://HOST:PORT (a node's gateway is on port 7380 unless configured otherwise)"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return bad(format!(
                "{text:?}: give only http://HOST:PORT, without a path"
            ));
        }
        Ok(Endpoint {
            authority: authority.as_str().to_string(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// How the HTTP transport talks to its gateway.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// The gateway's bearer token (a node started with `--http-token`), sent with every
    /// request as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// How long making a TCP connection may take: a host that drops packets must give an
    /// "unavailable" well before any caller's overall timeout.
    pub connect_timeout: Duration,
    /// How long a call keeps trying while every answer certainly did nothing: no gateway
    /// accepted the connection, or one answered 503 `unavailable` or `not_leader` (a node that
    /// is starting and not part of a cluster yet, a partition without a leader). A node that
    /// was just started answers like that for its first seconds. Zero sends each call once
    /// (to each gateway once). Nothing else is retried: an answer that may have done
    /// something is the caller's to judge.
    pub retry_for: Duration,
    /// Called once per client with one line when a call starts to wait (the CLI prints it on
    /// stderr), so a person sees why the command has not answered yet.
    pub notice: Option<fn(&str)>,
}

/// How long a call waits for a starting node unless told otherwise.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(10);

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            token: None,
            connect_timeout: Duration::from_secs(10),
            retry_for: DEFAULT_RETRY_FOR,
            notice: None,
        }
    }
}

/// Percent-encodes bytes for a URL path or query: letters, digits, `-`, `_`, `~` and `/`
/// stand for themselves, every other byte becomes `%XX`. The gateway decodes any `%XX` to its
/// byte, so every key round-trips; `/` stays readable (`config/db/host`), and `.` is encoded
/// so that no key ever forms a `.`/`..` path segment that something on the way might
/// normalise. `/` is kept only in paths; in a query it is encoded too.
pub(crate) fn encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type HyperClient<B> = hyper_util::client::legacy::Client<HttpConnector, B>;

/// One or more gateways of a cluster, and a pool of keep-alive connections (clones share the
/// pool and the choice of gateway). Calls go to one gateway until it cannot be reached, then
/// to the next.
#[derive(Clone)]
pub(crate) struct HttpTransport {
    endpoints: Arc<[Endpoint]>,
    /// The index in `endpoints` of the gateway in use.
    current: Arc<AtomicUsize>,
    client: HyperClient<Full<Bytes>>,
    /// `Authorization` header value, when the gateway wants a token.
    authorization: Option<String>,
    retry_for: Duration,
    notice: Option<fn(&str)>,
    /// Whether `notice` was called already.
    noticed: Arc<AtomicBool>,
    /// With more than one gateway: which one leads each key's partition.
    leaders: Option<Arc<leaders::Leaders>>,
}

/// A gateway's answer: status, headers and the whole body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// `{"error": {"code", "message", "leader"?}}`.
#[derive(Deserialize)]
struct ErrorWire {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
    leader: Option<String>,
}

/// What the caller knows of a request that the error answer does not repeat: the lease or
/// the election candidate it named, so `lease_not_found` and `not_leading` become their typed
/// variants.
#[derive(Clone, Debug, Default)]
pub(crate) struct Asked {
    pub(crate) lease: Option<u64>,
    pub(crate) candidate: Option<(String, u64)>,
}

impl Answer {
    /// Reads the whole of an answer that is not a stream (an error answer to a streaming
    /// request); a body that breaks off counts as empty.
    pub(crate) async fn collect(response: hyper::Response<hyper::body::Incoming>) -> Answer {
        let status = response.status();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Answer {
            status,
            headers: parts.headers,
            body,
        }
    }

    /// Whether the answer says that nothing was done, so that the request may go again (to
    /// this gateway or another): 503 `unavailable` or `not_leader`.
    fn did_nothing(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(self.code().as_deref(), Some("unavailable" | "not_leader"))
    }

    /// The body as JSON of type `T`; a body that is not is a broken answer (its outcome is
    /// unknown, as after a lost connection).
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Disconnected(format!(
                "the gateway's answer (status {}) is not what was expected ({e}): {}",
                self.status.as_u16(),
                String::from_utf8_lossy(&self.body)
            ))
        })
    }

    /// The `error.code` of an error answer, if it is the gateway's JSON.
    pub(crate) fn code(&self) -> Option<String> {
        serde_json::from_slice::<ErrorWire>(&self.body)
            .ok()
            .map(|e| e.error.code)
    }

    /// The [`ClientError`] of an error answer (see the module docs for the mapping).
    pub(crate) fn error(&self, asked: &Asked) -> ClientError {
        let parsed = serde_json::from_slice::<ErrorWire>(&self.body).ok();
        let status = self.status;
        let (code, detail, leader) = match parsed {
            Some(ErrorWire { error }) => {
                let leader = error
                    .leader
                    .as_deref()
                    .and_then(|l| u64::from_str_radix(l, 16).ok());
                let mut d = format!("{} {} ({})", status.as_u16(), error.message, error.code);
                if let Some(l) = &error.leader {
                    d.push_str(&format!("; the partition's leader is node {l}"));
                }
                (error.code, d, leader)
            }
            // Not the gateway's JSON (a proxy's page, say): the status says enough.
            None => (
                String::new(),
                format!(
                    "{} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("unexpected status")
                ),
                None,
            ),
        };
        match (status, code.as_str()) {
            (StatusCode::TOO_MANY_REQUESTS, _) => ClientError::Busy {
                retry_after_ms: retry_after_ms(&self.headers),
            },
            (StatusCode::SERVICE_UNAVAILABLE, "not_leader") => ClientError::NotLeader { leader },
            (StatusCode::SERVICE_UNAVAILABLE, "leader_changed") => ClientError::LeaderChanged,
            (StatusCode::SERVICE_UNAVAILABLE, "disconnected") => ClientError::Disconnected(detail),
            (StatusCode::SERVICE_UNAVAILABLE, "storage") => ClientError::Storage(detail),
            (StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY, _) => {
                ClientError::Unavailable { reason: detail }
            }
            (StatusCode::GATEWAY_TIMEOUT, _) => ClientError::Timeout,
            (StatusCode::NOT_FOUND, "lease_not_found") => match asked.lease {
                Some(id) => ClientError::LeaseNotFound(id),
                None => ClientError::BadRequest(detail),
            },
            (StatusCode::CONFLICT, "not_leading") => match &asked.candidate {
                Some((name, token)) => ClientError::NotLeading {
                    name: name.clone(),
                    token: *token,
                },
                None => ClientError::BadRequest(detail),
            },
            (s, _) if s.is_client_error() => ClientError::BadRequest(detail),
            // Any other server error: what it did is unknown.
            _ => ClientError::Disconnected(detail),
        }
    }
}

/// The wait a 429 asks for (`Retry-After`, whole seconds), 1 s when it names none.
fn retry_after_ms(headers: &HeaderMap) -> u64 {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(1000, |s| s.saturating_mul(1000))
}

/// An error with its sources, on one line (hyper's "client error (Connect)" alone says
/// little; its source says "Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl HttpTransport {
    /// A transport to the first of `endpoints` (which must not be empty), moving on to the
    /// next one whenever a gateway cannot be reached.
    pub(crate) fn new(endpoints: Vec<Endpoint>, options: HttpOptions) -> HttpTransport {
        HttpTransport {
            client: hyper_client(options.connect_timeout),
            authorization: options.token.map(|t| format!("Bearer {t}")),
            leaders: (endpoints.len() > 1).then(Arc::default),
            endpoints: endpoints.into(),
            current: Arc::new(AtomicUsize::new(0)),
            retry_for: options.retry_for,
            notice: options.notice,
            noticed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The gateway in use.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len().max(1);
        &self.endpoints[i]
    }

    /// Moves on from `from` (the gateway that could not serve) to the next one; a no-op when
    /// another call moved on already.
    fn move_on(&self, from: &Endpoint) {
        let i = self.current.load(Ordering::Relaxed);
        if self.endpoints.get(i % self.endpoints.len().max(1)) == Some(from) {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.endpoints.len().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A request to the gateway in use, with the token if there is one.
    fn request(&self, method: Method, path_and_query: &str) -> hyper::http::request::Builder {
        self.request_to(self.endpoint(), method, path_and_query)
    }

    fn request_to(
        &self,
        endpoint: &Endpoint,
        method: Method,
        path_and_query: &str,
    ) -> hyper::http::request::Builder {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{endpoint}{path_and_query}"));
        if let Some(value) = &self.authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request
    }

    /// Sends a request and reads the whole answer. Failing to connect is "unavailable"
    /// (nothing was sent); losing the connection before the answer is complete is
    /// "disconnected": for a write the outcome is then unknown.
    ///
    /// While the answer certainly did nothing (no connection, or [`Answer::did_nothing`]),
    /// the request goes to the next gateway at once, and after a round of all of them it is
    /// sent again with a growing pause until `retry_for` has passed; the first pause is
    /// announced through `notice`. Any other answer, and every failure that may have done
    /// something, is returned as it is.
    pub(crate) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Answer, ClientError> {
        self.call_from(None, method, path_and_query, body).await
    }

    /// [`HttpTransport::call`] for a write or linearizable read of `key`: first to the gateway
    /// of the node that leads its partition, when the client has several gateways and knows
    /// which (see [`leaders`]), otherwise as `call` does.
    pub(crate) async fn call_for_key(
        &self,
        key: &[u8],
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Answer, ClientError> {
        let first = match &self.leaders {
            Some(leaders) => {
                self.refresh_leaders(leaders).await;
                leaders
                    .gateway_for(key)
                    .and_then(|i| Some((i, self.endpoints.get(i)?.clone())))
            }
            None => None,
        };
        self.call_from(first, method, path_and_query, body).await
    }

    /// Reads every gateway's status into `leaders` when it is due; a gateway that does not
    /// answer is left out (the table is only a hint), and if it is the one in use, the client
    /// moves on from it as a failed request would.
    async fn refresh_leaders(&self, leaders: &leaders::Leaders) {
        let Ok(_guard) = leaders.refreshing.try_lock() else {
            return;
        };
        if !leaders.claim_refresh(Instant::now()) {
            return;
        }
        let asks = self.endpoints.iter().map(|e| async move {
            let answer = self
                .send(e, Method::GET, "/v1/status", None, Bytes::new())
                .await;
            answer.ok().filter(|a| a.status == StatusCode::OK)
        });
        let answers = futures::future::join_all(asks).await;
        for (i, answer) in answers.into_iter().enumerate() {
            match answer.map(|a| kv::status_report(&a)) {
                Some(Ok(report)) => leaders.take(i, &report),
                _ => self.move_on(&self.endpoints[i]),
            }
        }
    }

    /// [`HttpTransport::call`], its first attempt to `first` (an index in the endpoints, and
    /// the endpoint) when given.
    async fn call_from(
        &self,
        first: Option<(usize, Endpoint)>,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Answer, ClientError> {
        let mut first = first;
        let (content_type, body) = match body {
            Some((content_type, bytes)) => (Some(content_type), Bytes::from(bytes)),
            None => (None, Bytes::new()),
        };
        let until = Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(100);
        let mut left_this_round = self.endpoints.len();
        loop {
            let leader = first.take();
            let endpoint = match &leader {
                Some((_, e)) => e.clone(),
                None => self.endpoint().clone(),
            };
            let outcome = self
                .send(
                    &endpoint,
                    method.clone(),
                    path_and_query,
                    content_type,
                    body.clone(),
                )
                .await;
            let why = match &outcome {
                Err(e @ ClientError::Unavailable { .. }) => e.to_string(),
                Ok(answer) if answer.did_nothing() => answer.error(&Asked::default()).to_string(),
                _ => return outcome,
            };
            if let (Some((i, _)), Some(leaders)) = (leader, &self.leaders) {
                // Not chosen again before the table is read again.
                leaders.forget_gateway(i);
            }
            self.move_on(&endpoint);
            left_this_round = left_this_round.saturating_sub(1);
            if left_this_round > 0 {
                continue;
            }
            left_this_round = self.endpoints.len();
            if Instant::now() + pause > until {
                return outcome;
            }
            if let Some(notice) = self.notice {
                if !self.noticed.swap(true, Ordering::Relaxed) {
                    notice(&format!(
                        "waiting up to {} s for the cluster: {why}",
                        self.retry_for.as_secs_f32()
                    ));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Sends one request to `endpoint` and reads the whole answer.
    async fn send(
        &self,
        endpoint: &Endpoint,
        method: Method,
        path_and_query: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        let mut request = self.request_to(endpoint, method, path_and_query);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::BadRequest(format!("cannot make the request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| send_error(endpoint, &e))?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| {
                ClientError::Disconnected(format!(
                    "the answer from {endpoint} broke off: {}",
                    chain(&e)
                ))
            })?
            .to_bytes();
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    }

    /// The error of a request to the gateway in use that got no answer; a gateway that
    /// cannot be connected to is left for the next one.
    pub(super) fn send_error(&self, e: &hyper_util::client::legacy::Error) -> ClientError {
        let endpoint = self.endpoint().clone();
        let error = send_error(&endpoint, e);
        if let ClientError::Unavailable { .. } = error {
            self.move_on(&endpoint);
        }
        error
    }
}

/// The error of a request to `endpoint` that got no answer.
fn send_error(endpoint: &Endpoint, e: &hyper_util::client::legacy::Error) -> ClientError {
    if e.is_connect() {
        ClientError::Unavailable {
            reason: format!("cannot connect to {endpoint}: {}", chain(e)),
        }
    } else {
        ClientError::Disconnected(format!("lost the connection to {endpoint}: {}", chain(e)))
    }
}

fn hyper_client<B>(connect_timeout: Duration) -> HyperClient<B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::encoding::percent_decode;
    use serde_json::json;

    #[test]
    fn every_byte_round_trips_through_the_gateways_decoder() -> anyhow::Result<()> {
        let all: Vec<u8> = (0..=255).collect();
        for keep_slash in [true, false] {
            let encoded = encode(&all, keep_slash);
            assert!(encoded.is_ascii());
            assert_eq!(
                percent_decode(&encoded, "key").map_err(|e| anyhow::anyhow!("{e}"))?,
                all
            );
        }
        // Random keys, replayable: SWARMKV_TEST_SEED=<seed>.
        let seed = std::env::var("SWARMKV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        println!("seed {seed}");
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..1000 {
            let len = rng.gen_range(1..40);
            let key: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let decoded =
                percent_decode(&encode(&key, true), "key").map_err(|e| anyhow::anyhow!("{e}"))?;
            assert_eq!(decoded, key, "seed {seed}");
        }
        Ok(())
    }

    #[test]
    fn encoding_keeps_slashes_in_paths_only_and_never_leaves_dot_segments() {
        assert_eq!(encode(b"config/db/host", true), "config/db/host");
        assert_eq!(encode(b"config/db", false), "config%2Fdb");
        assert_eq!(encode(b"a/../b", true), "a/%2E%2E/b");
        assert_eq!(
            encode(b"a+b c&d=e?f#g%", false),
            "a%2Bb%20c%26d%3De%3Ff%23g%25"
        );
        assert_eq!(encode(&[0x00, 0xff], true), "%00%FF");
    }

    #[test]
    fn endpoints_are_http_host_and_port() -> Result<(), EndpointError> {
        let e: Endpoint = "http://127.0.0.1:7380".parse()?;
        assert_eq!(e.to_string(), "http://127.0.0.1:7380");
        assert_eq!("http://127.0.0.1:7380/".parse::<Endpoint>()?, e);
        assert_eq!("127.0.0.1:7380".parse::<Endpoint>()?, e);
        assert_eq!(
            "http://[::1]:9000".parse::<Endpoint>()?.to_string(),
            "http://[::1]:9000"
        );
        assert_eq!(
            "http://node2.lan:7380".parse::<Endpoint>()?.to_string(),
            "http://node2.lan:7380"
        );
        for bad in [
            "https://127.0.0.1:7380",
            "ftp://h:1",
            "http://127.0.0.1",
            "http://127.0.0.1:7380/v1",
            "http://u:p@127.0.0.1:7380",
            "not a url",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} was accepted");
        }
        Ok(())
    }

    fn answer(status: u16, body: String, headers: HeaderMap) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            headers,
            body: Bytes::from(body),
        }
    }

    #[test]
    fn gateway_errors_become_the_client_errors_of_the_other_transports() {
        let body = |code: &str| {
            json!({"error": {"code": code, "message": "m", "leader": "000000000000000a"}})
                .to_string()
        };
        let asked = Asked {
            lease: Some(7),
            candidate: Some(("jobs".into(), 0x2a)),
        };
        let of = |status: u16, b: String| answer(status, b, HeaderMap::new()).error(&asked);
        assert_eq!(
            of(503, body("not_leader")),
            ClientError::NotLeader { leader: Some(10) }
        );
        assert!(matches!(
            of(503, body("unavailable")),
            ClientError::Unavailable { reason } if reason.contains("503") && reason.contains("000000000000000a")
        ));
        assert!(matches!(
            of(502, "<html>bad gateway</html>".into()),
            ClientError::Unavailable { .. }
        ));
        assert_eq!(of(503, body("leader_changed")), ClientError::LeaderChanged);
        assert!(matches!(
            of(503, body("disconnected")),
            ClientError::Disconnected(_)
        ));
        assert!(matches!(of(503, body("storage")), ClientError::Storage(_)));
        assert_eq!(of(504, body("timeout")), ClientError::Timeout);
        assert_eq!(
            of(404, body("lease_not_found")),
            ClientError::LeaseNotFound(7)
        );
        assert_eq!(
            of(409, body("not_leading")),
            ClientError::NotLeading {
                name: "jobs".into(),
                token: 0x2a
            }
        );
        for (status, code) in [
            (400, "bad_encoding"),
            (404, "unknown_node"),
            (409, "stale_retry"),
            (413, "key_too_large"),
        ] {
            let e = of(status, body(code));
            assert!(
                matches!(&e, ClientError::BadRequest(m) if m.contains(&status.to_string()) && m.contains(code)),
                "{status} {code}: {e:?}"
            );
        }
        assert!(matches!(
            of(500, body("internal")),
            ClientError::Disconnected(_)
        ));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, hyper::header::HeaderValue::from(3u64));
        assert_eq!(
            answer(429, body("busy"), headers).error(&asked),
            ClientError::Busy {
                retry_after_ms: 3000
            }
        );
        // Not the gateway's JSON: the status decides.
        assert!(matches!(
            of(400, "oops".into()),
            ClientError::BadRequest(m) if m.starts_with("400 Bad Request")
        ));
    }
}

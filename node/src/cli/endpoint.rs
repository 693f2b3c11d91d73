//! The HTTP transport: the client verbs as requests to a node's JSON gateway
//! (`swarmkv start` serves it on `http://127.0.0.1:7380`; see `docs/openapi.yaml`).
//!
//! Keys and values are bytes end to end. A key goes into the URL percent-encoded byte by
//! byte ([`encode`]), which the gateway decodes back into the same bytes; a value goes as the
//! raw `PUT` body, or base64 in a compare-and-swap's JSON; values and keys come back from the
//! `*_b64` fields of the JSON, never from its text fields, so non-UTF-8 bytes survive.
//!
//! HTTP statuses become [`CliError`]s the same way libp2p errors do: 503 and 504 (and a
//! connection that cannot be made or breaks) are "unavailable", other 4xx are "rejected".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};
use swarmkv::core::{lease_hex, parse_lease_id, LeaseInfo, LeaseRequest};
use swarmkv::http::lease::LeaseJson;
use swarmkv::http::scan::MAX_LIMIT;
use swarmkv::wire::{GroupReport, StatusReport};

use super::error::CliError;
use super::transport::{CasOutcome, Expect, KeyRange, Record, StatusView};
use super::{node_hex, show};

/// Where client verbs go unless told otherwise: the local node's gateway.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7380";

/// How long making a TCP connection may take: a host that drops packets must give an
/// "unavailable" well before the verb's overall timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway's address: `http://HOST:PORT` (or just `HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT`, as given (`[::1]:7380` for IPv6).
    authority: String,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | None => {}
            Some("https") => {
                return Err(
                    "https is not supported: the gateway speaks plain HTTP (use http://)".into(),
                )
            }
            Some(other) => return Err(format!("unsupported scheme {other:?}: use http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host: use http://HOST:PORT"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: the gateway takes no user name or password"
            ));
        }
        if authority.port_u16().is_none() {
            return Err(format!(
                "{text:?} has no port: use http://HOST:PORT (a node's gateway is on port 7380 unless configured otherwise)"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
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

/// Percent-encodes bytes for a URL path or query: letters, digits, `-`, `_`, `~` and `/`
/// stand for themselves, every other byte becomes `%XX`. The gateway decodes any `%XX` to its
/// byte, so every key round-trips; `/` stays readable (`config/db/host`), and `.` is encoded
/// so that no key ever forms a `.`/`..` path segment that something on the way might
/// normalise. `/` is kept only in paths; in a query it is encoded too.
pub fn encode(bytes: &[u8], keep_slash: bool) -> String {
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

/// A client of one gateway.
pub struct HttpClient {
    endpoint: Endpoint,
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    /// `Authorization` header value for a gateway started with `--http-token`.
    authorization: Option<String>,
}

/// A gateway's answer: status and body.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    /// The body as JSON of type `T`; a body that is not is a failure of the server (exit 1).
    fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, CliError> {
        serde_json::from_slice(&self.body)
            .with_context(|| {
                format!(
                    "the gateway's answer to {what} is not what was expected (status {}): {}",
                    self.status,
                    String::from_utf8_lossy(&self.body)
                )
            })
            .map_err(CliError::Other)
    }
}

/// The JSON of a record, as the gateway writes it (only the fields that carry exact bytes).
#[derive(Deserialize)]
struct RecordWire {
    key_b64: String,
    value_b64: String,
    create_rev: u64,
    mod_rev: u64,
    version: u64,
}

impl RecordWire {
    fn decode(self) -> Result<Record, CliError> {
        Ok(Record {
            key: from_b64(&self.key_b64, "key_b64")?,
            value: from_b64(&self.value_b64, "value_b64")?,
            create_rev: self.create_rev,
            mod_rev: self.mod_rev,
            version: self.version,
        })
    }
}

fn from_b64(text: &str, field: &str) -> Result<Vec<u8>, CliError> {
    STANDARD.decode(text).map_err(|e| {
        CliError::Other(anyhow!(
            "the gateway sent a {field} that is not base64: {e}"
        ))
    })
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

/// The CLI error for a gateway's error answer. `doing` says what was asked (`get "k"`).
fn error_of(status: StatusCode, body: &[u8], doing: &str) -> CliError {
    let detail = match serde_json::from_slice::<ErrorWire>(body) {
        Ok(ErrorWire { error }) => {
            let mut d = format!("{} ({})", error.message, error.code);
            if let Some(leader) = error.leader {
                d.push_str(&format!("; the partition's leader is node {leader}"));
            }
            d
        }
        // Not the gateway's JSON (a proxy's page, say): the status says enough.
        Err(_) => status
            .canonical_reason()
            .unwrap_or("unexpected status")
            .to_string(),
    };
    let message = format!("{doing}: {} {detail}", status.as_u16());
    match status {
        // 429: the node is busy, nothing was done; like a 503, retrying later may succeed.
        StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::BAD_GATEWAY
        | StatusCode::TOO_MANY_REQUESTS => CliError::Unavailable(message),
        s if s.is_client_error() => CliError::Rejected(message),
        _ => CliError::Other(anyhow!(message)),
    }
}

/// [`error_of`], except that the gateway's `lease_not_found` is "not found" (as over libp2p),
/// which `lease keep-alive` takes as the loss of the lease.
fn lease_error_of(status: StatusCode, body: &[u8], doing: &str) -> CliError {
    let e = error_of(status, body, doing);
    if status == StatusCode::NOT_FOUND && error_code(body).as_deref() == Some("lease_not_found") {
        return CliError::NotFound(e.to_string());
    }
    e
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

/// `{"rev": N}`.
#[derive(Deserialize)]
struct RevWire {
    rev: u64,
}

/// `{"deleted": bool}`.
#[derive(Deserialize)]
struct DeletedWire {
    deleted: bool,
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
}

/// The parts of `GET /v1/status` the table shows.
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
fn id_of(text: &str) -> Result<u64, CliError> {
    u64::from_str_radix(text, 16)
        .map_err(|e| CliError::Other(anyhow!("the gateway sent {text:?} as a node id: {e}")))
}

impl StatusWire {
    fn report(self) -> Result<StatusReport, CliError> {
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
                .collect::<Result<_, CliError>>()?,
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
                .collect::<Result<_, CliError>>()?,
            storage_error: self.storage_error,
        })
    }
}

impl HttpClient {
    pub fn new(endpoint: Endpoint) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        HttpClient {
            endpoint,
            client,
            authorization: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request (a gateway started with
    /// `--http-token`).
    pub fn with_token(mut self, token: Option<&str>) -> HttpClient {
        self.authorization = token.map(|t| format!("Bearer {t}"));
        self
    }

    /// Sends one request and reads the whole answer. Failing to connect, or losing the
    /// connection before the answer is complete, is "unavailable": for a write the outcome is
    /// then unknown, as after a 503 `disconnected`.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Vec<u8>)>,
        doing: &str,
    ) -> Result<Answer, CliError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.endpoint));
        if let Some(value) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, value);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .with_context(|| format!("cannot make the request for {doing}"))?;
        let response = self.client.request(request).await.map_err(|e| {
            let what = if e.is_connect() {
                "cannot connect to"
            } else {
                "lost the connection to"
            };
            CliError::Unavailable(format!("{doing}: {what} {}: {}", self.endpoint, chain(&e)))
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                CliError::Unavailable(format!(
                    "{doing}: the answer from {} broke off: {}",
                    self.endpoint,
                    chain(&e)
                ))
            })?
            .to_bytes();
        Ok(Answer { status, body })
    }

    fn key_path(key: &[u8]) -> String {
        format!("/v1/kv/{}", encode(key, true))
    }

    pub async fn get(&self, key: &[u8], serializable: bool) -> Result<Option<Record>, CliError> {
        let doing = format!("get {}", show(key));
        let mut path = Self::key_path(key);
        if serializable {
            path.push_str("?serializable=true");
        }
        let answer = self.call(Method::GET, &path, None, &doing).await?;
        match answer.status {
            StatusCode::OK => answer.json::<RecordWire>(&doing)?.decode().map(Some),
            // Only the gateway's own `not_found` means "no such key"; a 404 from something
            // else (a proxy, a path the gateway does not know) is an error.
            StatusCode::NOT_FOUND if error_code(&answer.body).as_deref() == Some("not_found") => {
                Ok(None)
            }
            status => Err(error_of(status, &answer.body, &doing)),
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, CliError> {
        let doing = format!("put {}", show(key));
        let body = Some(("application/octet-stream", value.to_vec()));
        let answer = self
            .call(Method::PUT, &Self::key_path(key), body, &doing)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(answer.json::<RevWire>(&doing)?.rev),
            status => Err(error_of(status, &answer.body, &doing)),
        }
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, CliError> {
        let doing = format!("del {}", show(key));
        let answer = self
            .call(Method::DELETE, &Self::key_path(key), None, &doing)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(answer.json::<DeletedWire>(&doing)?.deleted),
            status => Err(error_of(status, &answer.body, &doing)),
        }
    }

    pub async fn cas(
        &self,
        key: &[u8],
        expect: &Expect,
        value: &[u8],
    ) -> Result<CasOutcome, CliError> {
        let doing = format!("cas {}", show(key));
        let body = cas_body(expect, value);
        let path = format!("{}/cas", Self::key_path(key));
        let answer = self
            .call(
                Method::POST,
                &path,
                Some(("application/json", body.to_string().into_bytes())),
                &doing,
            )
            .await?;
        let conflict = answer.status == StatusCode::CONFLICT
            && error_code(&answer.body).as_deref() == Some("cas_conflict");
        if answer.status != StatusCode::OK && !conflict {
            return Err(error_of(answer.status, &answer.body, &doing));
        }
        let wire: CasWire = answer.json(&doing)?;
        match (wire.succeeded, wire.rev) {
            (true, Some(rev)) => Ok(CasOutcome::Swapped { rev }),
            (true, None) => Err(CliError::Other(anyhow!(
                "{doing}: the gateway reported success without a revision"
            ))),
            (false, _) => Ok(CasOutcome::Failed {
                current: wire.current.map(RecordWire::decode).transpose()?,
            }),
        }
    }

    /// Pages through `GET /v1/kv` (at most [`MAX_LIMIT`] records a request), going on after
    /// the last key of each page, until `limit` records (0: all) or the end of the range.
    pub async fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<Record>, CliError> {
        let mut out: Vec<Record> = Vec::new();
        let mut start = range.start.clone();
        loop {
            let page = match limit {
                0 => MAX_LIMIT,
                l => (l - out.len()).min(MAX_LIMIT),
            };
            let mut path = format!("/v1/kv?start={}&limit={page}", encode(&start, false));
            if let Some(end) = &range.end {
                path.push_str(&format!("&end={}", encode(end, false)));
            }
            let answer = self.call(Method::GET, &path, None, "scan").await?;
            if answer.status != StatusCode::OK {
                return Err(error_of(answer.status, &answer.body, "scan"));
            }
            let wire: ScanWire = answer.json("scan")?;
            for r in wire.records {
                out.push(r.decode()?);
            }
            let done = limit != 0 && out.len() >= limit;
            match out.last() {
                Some(last) if wire.more && !done => {
                    // The smallest key after the last one: the same bytes and a zero byte.
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    pub async fn status(&self) -> Result<StatusView, CliError> {
        let doing = format!("status of {}", self.endpoint);
        let answer = self.call(Method::GET, "/v1/status", None, &doing).await?;
        if answer.status != StatusCode::OK {
            return Err(error_of(answer.status, &answer.body, &doing));
        }
        let json: Value = answer.json(&doing)?;
        let wire: StatusWire = answer.json(&doing)?;
        Ok(StatusView {
            report: wire.report()?,
            json,
        })
    }

    /// Writes the key attached to `lease` (`PUT /v1/kv/{key}?lease={id}`).
    pub async fn put_with_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: u64,
    ) -> Result<u64, CliError> {
        let doing = format!("put {}", show(key));
        let body = Some(("application/octet-stream", value.to_vec()));
        let path = format!("{}?lease={}", Self::key_path(key), lease_hex(lease));
        let answer = self.call(Method::PUT, &path, body, &doing).await?;
        match answer.status {
            StatusCode::OK => Ok(answer.json::<RevWire>(&doing)?.rev),
            status => Err(lease_error_of(status, &answer.body, &doing)),
        }
    }

    /// A lease request through the gateway's `/v1/lease` routes.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseInfo, CliError> {
        let (method, path, body, doing) = match req {
            LeaseRequest::Grant { ttl_ms } => (
                Method::POST,
                "/v1/lease".to_string(),
                Some((
                    "application/json",
                    json!({ "ttl_ms": ttl_ms }).to_string().into_bytes(),
                )),
                "lease grant".to_string(),
            ),
            LeaseRequest::KeepAlive { id } => (
                Method::POST,
                format!("/v1/lease/{}/keepalive", lease_hex(*id)),
                None,
                format!("lease keep-alive {}", lease_hex(*id)),
            ),
            LeaseRequest::Revoke { id } => (
                Method::DELETE,
                format!("/v1/lease/{}", lease_hex(*id)),
                None,
                format!("lease revoke {}", lease_hex(*id)),
            ),
            LeaseRequest::TimeToLive { id } => (
                Method::GET,
                format!("/v1/lease/{}", lease_hex(*id)),
                None,
                format!("lease ttl {}", lease_hex(*id)),
            ),
        };
        let answer = self.call(method, &path, body, &doing).await?;
        if answer.status != StatusCode::OK {
            return Err(lease_error_of(answer.status, &answer.body, &doing));
        }
        if let LeaseRequest::Revoke { id } = req {
            return Ok(LeaseInfo {
                id: *id,
                ttl_ms: 0,
                remaining_ms: 0,
            });
        }
        let wire: LeaseJson = answer.json(&doing)?;
        let id = parse_lease_id(&wire.id).ok_or_else(|| {
            CliError::Other(anyhow!(
                "{doing}: the gateway answered a bad lease id {:?}",
                wire.id
            ))
        })?;
        Ok(LeaseInfo {
            id,
            ttl_ms: wire.ttl_ms,
            remaining_ms: wire.remaining_ms,
        })
    }

    pub async fn decommission(&self, node: u64) -> Result<(), CliError> {
        let doing = format!("decommission {}", node_hex(node));
        let path = format!("/v1/nodes/{}/decommission", node_hex(node));
        let answer = self.call(Method::POST, &path, None, &doing).await?;
        match answer.status {
            StatusCode::OK => Ok(()),
            status => Err(error_of(status, &answer.body, &doing)),
        }
    }
}

/// The JSON body of a compare-and-swap. Bytes go as base64, so any value round-trips.
fn cas_body(expect: &Expect, value: &[u8]) -> Value {
    let mut body = json!({ "value_b64": STANDARD.encode(value) });
    let (field, expected) = match expect {
        Expect::ModRev(rev) => ("expect_mod_rev", json!(rev)),
        Expect::Value(v) => ("expect_value_b64", json!(STANDARD.encode(v))),
        Expect::Absent => ("expect_absent", json!(true)),
    };
    body[field] = expected;
    body
}

/// The `error.code` of an error answer, if it is the gateway's JSON.
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorWire>(body)
        .ok()
        .map(|e| e.error.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmkv::http::encoding::{parse_query, percent_decode, RecordJson};
    use swarmkv_store::KvRecord;

    #[test]
    fn every_byte_round_trips_through_the_gateways_decoder() -> anyhow::Result<()> {
        let all: Vec<u8> = (0..=255).collect();
        for keep_slash in [true, false] {
            let encoded = encode(&all, keep_slash);
            assert!(encoded.is_ascii());
            assert_eq!(
                percent_decode(&encoded, "key").map_err(|e| anyhow!("{e}"))?,
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
            let decoded = percent_decode(&encode(&key, true), "key").map_err(|e| anyhow!("{e}"))?;
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
    fn endpoints_are_http_host_and_port() -> Result<(), String> {
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

    #[test]
    fn gateway_statuses_map_to_the_exit_codes_of_the_contract() {
        let body = |code: &str| {
            json!({"error": {"code": code, "message": "m", "leader": "000000000000000a"}})
                .to_string()
        };
        let cases = [
            (503, body("unavailable"), 3),
            (503, body("not_leader"), 3),
            (504, body("timeout"), 3),
            (502, "<html>bad gateway</html>".to_string(), 3),
            (400, body("bad_encoding"), 1),
            (404, body("unknown_node"), 1),
            (409, body("stale_retry"), 1),
            (413, body("value_too_large"), 1),
            (503, body("storage"), 3),
            (500, body("internal"), 1),
        ];
        for (status, body, code) in cases {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
            let e = error_of(status, body.as_bytes(), "get \"k\"");
            assert_eq!(e.exit_code(), code, "{status}: {e}");
            assert!(e.to_string().starts_with("get \"k\": "), "{e}");
        }
        let e = error_of(
            StatusCode::SERVICE_UNAVAILABLE,
            body("not_leader").as_bytes(),
            "put",
        );
        assert!(
            e.to_string().contains("000000000000000a"),
            "the leader hint is shown: {e}"
        );
    }

    #[test]
    fn cas_bodies_carry_one_expectation_and_the_value_as_base64() {
        assert_eq!(
            cas_body(&Expect::ModRev(7), b"v"),
            json!({"expect_mod_rev": 7, "value_b64": "dg=="})
        );
        assert_eq!(
            cas_body(&Expect::Value(vec![0xff]), &[0x00]),
            json!({"expect_value_b64": "/w==", "value_b64": "AA=="})
        );
        assert_eq!(
            cas_body(&Expect::Absent, b""),
            json!({"expect_absent": true, "value_b64": ""})
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
        let client = HttpClient::new(
            format!("http://{addr}")
                .parse()
                .map_err(|e: String| anyhow!(e))?,
        );
        let got = |records: Vec<Record>| -> Vec<Vec<u8>> {
            records
                .into_iter()
                .map(|r| {
                    assert_eq!(r.key, r.value);
                    r.key
                })
                .collect()
        };

        let everything = KeyRange::default();
        assert_eq!(got(client.scan(&everything, 0).await?), keys);
        assert_eq!(
            got(client.scan(&everything, 12).await?),
            keys[..12].to_vec()
        );
        assert_eq!(got(client.scan(&everything, 3).await?), keys[..3].to_vec());
        let range = KeyRange {
            start: b"a\0".to_vec(),
            end: Some(b"k/15".to_vec()),
        };
        let expected: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| k.as_slice() >= b"a\0".as_slice() && k.as_slice() < b"k/15".as_slice())
            .cloned()
            .collect();
        assert_eq!(got(client.scan(&range, 0).await?), expected);
        server.abort();
        Ok(())
    }

    #[test]
    fn gateway_status_json_becomes_the_report_the_table_draws() -> Result<(), CliError> {
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
            serde_json::from_value(json).map_err(|e| CliError::Other(e.into()))?;
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

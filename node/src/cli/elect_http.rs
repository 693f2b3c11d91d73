//! The election routes of the gateway (`/v1/election/{name}...`) for the CLI's `elect`,
//! `leader` and `observe` verbs over HTTP. Leases go through the ordinary lease routes of
//! [`super::endpoint`]; observing uses the long-poll form of `GET /v1/election/{name}`
//! (`?after=TOKEN:REVISION`), which needs no streaming.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use swarmkv::core::{lease_hex, parse_lease_id, Candidate, LeaseId};
use swarmkv::http::election::{CandidateJson, LeaderJson};
use swarmkv::http::encoding::b64;

use super::endpoint::encode;
use super::error::CliError;
use super::transport::TransportArgs;

/// How long making a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway's election routes.
pub struct ElectHttp {
    base: String,
    authorization: Option<String>,
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

fn candidate_of(j: CandidateJson) -> Result<Candidate, CliError> {
    let bad = |what: &str| CliError::Other(anyhow::anyhow!("the gateway answered a bad {what}"));
    Ok(Candidate {
        name: j.name,
        token: parse_lease_id(&j.token).ok_or_else(|| bad("token"))?,
        lease: parse_lease_id(&j.lease).ok_or_else(|| bad("lease id"))?,
        value: swarmkv::http::encoding::from_b64(&j.value_b64, "value_b64")
            .map_err(|_| bad("value"))?,
        revision: j.revision,
    })
}

/// The error an election route answered: 409 `not_leading` and 404 are "no" (exit 1), 503
/// and 504 "unavailable" (exit 3), other 4xx "rejected".
fn error_of(status: StatusCode, body: &[u8], doing: &str) -> CliError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{} ({})",
                e.get("message")?.as_str()?,
                e.get("code")?.as_str()?
            ))
        })
        .unwrap_or_else(|| status.to_string());
    let text = format!("{doing}: {message}");
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            CliError::Unavailable(text)
        }
        StatusCode::NOT_FOUND | StatusCode::CONFLICT => CliError::NotFound(text),
        s if s.is_client_error() => CliError::Rejected(text),
        _ => CliError::Other(anyhow::anyhow!(text)),
    }
}

impl ElectHttp {
    /// The election routes of the gateway the flags name.
    pub fn new(args: &TransportArgs) -> ElectHttp {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        ElectHttp {
            base: args.endpoint.to_string(),
            authorization: args.http_token.as_ref().map(|t| format!("Bearer {t}")),
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        doing: &str,
    ) -> Result<Value, CliError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base.trim_end_matches('/')));
        if let Some(a) = &self.authorization {
            request = request.header(AUTHORIZATION, a);
        }
        let body = match body {
            Some(v) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| CliError::Other(anyhow::anyhow!("{doing}: {e}")))?;
        let unavailable = |e: &dyn std::fmt::Display| {
            CliError::Unavailable(format!("{doing}: {}: {e}", self.base))
        };
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(&e))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(error_of(status, &bytes, doing));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "{doing}: the gateway's answer is not JSON: {e}"
            ))
        })
    }

    fn path(name: &str, verb: &str) -> String {
        format!("/v1/election/{}{verb}", encode(name.as_bytes(), false))
    }

    fn leader_of(v: Value, doing: &str) -> Result<Option<Candidate>, CliError> {
        let l: LeaderJson = serde_json::from_value(v).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "{doing}: the gateway's answer is not a leader: {e}"
            ))
        })?;
        l.leader.map(candidate_of).transpose()
    }

    /// The leader of `name`; with `after`, once it differs from that (a long poll of at most
    /// 2 s).
    pub async fn leader(
        &self,
        name: &str,
        after: Option<Option<(u64, u64)>>,
    ) -> Result<Option<Candidate>, CliError> {
        let doing = format!("leader {name}");
        let mut path = Self::path(name, "");
        if let Some(known) = after {
            match known {
                Some((token, rev)) => path.push_str(&format!("?after={token:x}:{rev}")),
                None => path.push_str("?after=none"),
            }
        }
        let v = self.call(Method::GET, &path, None, &doing).await?;
        Self::leader_of(v, &doing)
    }

    /// Campaigns on `lease`; answers once elected.
    pub async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<Candidate, CliError> {
        let doing = format!("elect {name}");
        let body = json!({ "lease": lease_hex(lease), "value_b64": b64(value) });
        let v = self
            .call(
                Method::POST,
                &Self::path(name, "/campaign"),
                Some(body),
                &doing,
            )
            .await?;
        Self::leader_of(v, &doing)?
            .ok_or_else(|| CliError::Other(anyhow::anyhow!("{doing}: elected without a candidate")))
    }

    /// Resigns candidate `token` on `lease`.
    pub async fn resign(&self, name: &str, token: u64, lease: LeaseId) -> Result<(), CliError> {
        let doing = format!("resign {name}");
        let body = json!({ "lease": lease_hex(lease), "token": lease_hex(token) });
        self.call(
            Method::POST,
            &Self::path(name, "/resign"),
            Some(body),
            &doing,
        )
        .await
        .map(|_| ())
    }
}

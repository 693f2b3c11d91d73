//! Who may use the gateway: a bearer token, and the rule that decides when one is required.
//!
//! The gateway serves every key of the cluster to whoever can reach it, so where it listens
//! decides who that is. On a loopback address only local processes can; on any other address
//! the whole LAN can, so `swarmkv start` refuses such an address unless a token is set
//! (`--http-token`) or the operator says explicitly that the network is trusted
//! (`--http-insecure`). See [`check_exposure`].
//!
//! With a token, every request must carry `Authorization: Bearer <token>`; anything else is
//! answered 401 `unauthorized` before a handler runs. Three routes are exempt, so that
//! supervisors and load balancers can probe without holding the secret: `/healthz` and
//! `/readyz`, which say only whether the process serves and whether it can serve keys now (no
//! key, no value, no cluster layout), and `/`, the status page, which is a static file: its
//! data comes from `/v1/status`, which needs the token (the page takes it from the address's
//! fragment, `/#token=...`, which the browser never sends to the server). The
//! token is compared in constant time ([`subtle`]), so response timing does not reveal how
//! many leading bytes of a guess were right. There is no TLS: on an untrusted network, put
//! the gateway behind a TLS-terminating proxy, or keep it on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;

use super::ApiError;
use super::ErrorCode;

/// The shortest token accepted: a token is only as good as it is hard to guess.
pub const MIN_TOKEN_LEN: usize = 16;

/// The paths served without a token (see the module documentation for why).
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/"];

/// The shared secret every request must present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: never in logs.
        write!(f, "BearerToken(<{} bytes>)", self.0.len())
    }
}

/// Why a gateway configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A token too short to resist guessing, or with characters a header cannot carry.
    #[error(
        "the HTTP token must be at least {MIN_TOKEN_LEN} visible ASCII characters with no \
         spaces (e.g. `openssl rand -hex 32`)"
    )]
    WeakToken,
    /// A non-loopback address with neither a token nor an explicit opt-out.
    #[error(
        "refusing to serve HTTP on {0}: it is reachable from other machines and the API has \
         no authentication; set --http-token (or SWARMKV_HTTP_TOKEN), or pass --http-insecure \
         if this network is trusted, or listen on 127.0.0.1"
    )]
    Exposed(SocketAddr),
}

impl BearerToken {
    /// A token from its text; refuses short ones and ones a header cannot carry verbatim.
    pub fn new(text: &str) -> Result<BearerToken, AuthError> {
        let printable = text.bytes().all(|b| b.is_ascii_graphic());
        if text.len() < MIN_TOKEN_LEN || !printable {
            return Err(AuthError::WeakToken);
        }
        Ok(BearerToken(text.as_bytes().into()))
    }

    /// Whether an `Authorization` header value presents this token. The comparison takes
    /// the same time wherever the first wrong byte is (only the length may show).
    pub fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some(presented) = strip_bearer(value) else {
            return false;
        };
        bool::from(presented.ct_eq(&self.0))
    }

    /// The header value a client sends.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }
}

/// The credentials after `Bearer ` (the scheme is case-insensitive, RFC 7235).
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

/// Decides whether the gateway may listen on `addr`: loopback always; any other address
/// only with a token or with `insecure` set by the operator.
pub fn check_exposure(
    addr: SocketAddr,
    token: Option<&BearerToken>,
    insecure: bool,
) -> Result<(), AuthError> {
    if addr.ip().is_loopback() || token.is_some() || insecure {
        Ok(())
    } else {
        Err(AuthError::Exposed(addr))
    }
}

/// `router` with every route but [`OPEN_PATHS`] behind `token`.
pub fn require_token(router: Router, token: BearerToken) -> Router {
    router.layer(axum::middleware::from_fn_with_state(token, check_token))
}

async fn check_token(State(token): State<BearerToken>, request: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&request.uri().path())
        || token.admits(request.headers().get(AUTHORIZATION))
    {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        ErrorCode::UNAUTHORIZED,
        "this gateway requires `Authorization: Bearer <token>` (the node's --http-token)",
    )
    .into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"swarmkv\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-secret";

    #[test]
    fn only_the_exact_token_is_admitted() -> anyhow::Result<()> {
        let token = BearerToken::new(TOKEN)?;
        let admits = |v: &str| token.admits(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(admits(&format!("Bearer {TOKEN}")));
        assert!(admits(&format!("bearer {TOKEN}")));
        assert!(!admits(&format!("Bearer {TOKEN}x")));
        assert!(!admits(&format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])));
        assert!(!admits(&format!("Basic {TOKEN}")));
        assert!(!admits(TOKEN));
        assert!(!admits("Bearer "));
        assert!(!token.admits(None));
        assert_eq!(token.header_value(), format!("Bearer {TOKEN}"));
        Ok(())
    }

    #[test]
    fn weak_tokens_are_refused_and_never_printed() -> anyhow::Result<()> {
        assert_eq!(BearerToken::new("short").err(), Some(AuthError::WeakToken));
        assert_eq!(
            BearerToken::new("has a space in it, long enough").err(),
            Some(AuthError::WeakToken)
        );
        let shown = format!("{:?}", BearerToken::new(TOKEN)?);
        assert!(!shown.contains("secret"), "{shown}");
        Ok(())
    }

    #[test]
    fn only_loopback_is_served_without_a_token_or_an_explicit_opt_out() -> anyhow::Result<()> {
        let token = BearerToken::new(TOKEN)?;
        let lan: SocketAddr = "0.0.0.0:7380".parse()?;
        let v6: SocketAddr = "[::]:7380".parse()?;
        for local in ["127.0.0.1:7380", "127.0.0.2:1", "[::1]:7380"] {
            check_exposure(local.parse()?, None, false)?;
        }
        assert_eq!(
            check_exposure(lan, None, false),
            Err(AuthError::Exposed(lan))
        );
        assert_eq!(check_exposure(v6, None, false), Err(AuthError::Exposed(v6)));
        check_exposure(lan, Some(&token), false)?;
        check_exposure(lan, None, true)?;
        Ok(())
    }
}

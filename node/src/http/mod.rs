//! The HTTP gateway: JSON over HTTP/1.1 (axum) in front of a [`Client`], so anything that
//! speaks curl can use the store. `swarmkv start` serves it on `127.0.0.1:7380` by default.
//!
//! # Layout
//! - [`page`]: `GET /`, the live status page (one embedded HTML file).
//! - [`kv`]: one key: `GET`/`PUT`/`DELETE /v1/kv/{key}`, `POST /v1/kv/{key}/cas`.
//! - [`txn`]: `POST /v1/txn`, a transaction: compares, then one of two operation lists.
//! - [`scan`]: `GET /v1/kv?prefix=&start=&end=&limit=&keys_only=&count=`, and `DELETE
//!   /v1/kv?prefix=` (or `start=&end=`), a range delete.
//! - [`status`]: `GET /v1/status`, the node's report and a replica-health summary.
//! - [`watch`]: `GET /v1/watch`, the changes of a key or prefix as server-sent events.
//! - [`cluster`]: the `cluster` part of the status: every node and partition, with health.
//! - [`nodes`]: `POST /v1/nodes/{node}/decommission`, draining a node out of the cluster.
//! - [`lease`]: `POST /v1/lease`, `POST /v1/lease/{id}/keepalive`, `GET`/`DELETE
//!   /v1/lease/{id}`: leases, which keys attach to with `PUT /v1/kv/{key}?lease={id}`.
//! - [`election`]: `POST /v1/election/{name}/campaign|proclaim|resign`, `GET
//!   /v1/election/{name}` (the leader) and `GET /v1/election/{name}/observe` (server-sent
//!   events): leader election on a lease the caller keeps alive.
//! - [`lock`]: `POST /v1/lock/{name}/acquire|release`, `GET /v1/lock/{name}`: locks with
//!   fencing tokens, on a lease the caller keeps alive (lock `NAME` is election `lock:NAME`).
//! - [`backup`]: `GET /v1/backup`, a backup of the whole cluster, streamed as a file.
//! - [`health`]: `GET /healthz` (liveness) and `GET /readyz` (readiness).
//! - [`metrics`]: `GET /metrics`, the node's Prometheus metrics.
//! - [`auth`]: the bearer token (`--http-token`) and when the gateway may leave loopback.
//! - [`limit`]: the gateway's budget of requests and bodies held at once (429 `busy`).
//! - [`body`]: bodies read under a bound; a refused body is drained so its sender reads the 413.
//! - [`state`]: what handlers share: the client, made once the node is part of a cluster.
//! - [`encoding`]: bytes in and out: percent-decoded paths and queries, UTF-8 + base64 JSON.
//! - [`error`]: [`ClientError`](crate::core::ClientError) to HTTP status and
//!   `{"error": {"code", "message"}}`.
//!
//! The API is described in `docs/openapi.yaml` and, with curl examples, in `docs/http-api.md`.
//!
//! The gateway keeps no data of its own: every request is one or a few calls on the
//! [`Client`] (an in-process client on the node's handle in `swarmkv start`), which routes,
//! forwards and retries; the gateway only translates.

pub mod auth;
pub mod backup;
pub mod body;
pub mod cluster;
pub mod election;
pub mod encoding;
pub mod error;
pub mod health;
pub mod kv;
pub mod lease;
pub mod limit;
pub mod lock;
pub mod metrics;
pub mod nodes;
pub mod page;
pub mod scan;
pub mod state;
pub mod status;
pub mod txn;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::driver::NodeHandle;
use crate::Client;

pub use error::{ApiError, ErrorCode};
pub use state::Gateway;

/// The address `swarmkv start` serves the gateway on: loopback only, because the API has no
/// authentication; exposing it is an explicit choice (`--http 0.0.0.0:7380`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7380";

/// The largest value the store accepts (1 MiB, the store's default limit).
pub const MAX_VALUE: usize = 1024 * 1024;

/// The largest `PUT` body read: the largest value plus a margin, so a value slightly over the
/// limit still reaches the store and gets its precise `value_too_large` answer, while a huge
/// upload is cut off (413 `body_too_large`) before it is buffered, let alone replicated.
pub const MAX_PUT_BODY: usize = MAX_VALUE + 64 * 1024;

/// The largest `POST .../cas` body: base64 makes a value 4/3 larger, and a swap may carry
/// both the expected and the new value.
pub const MAX_CAS_BODY: usize = 2 * (MAX_VALUE * 4 / 3) + 64 * 1024;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address is taken, not local, or not allowed.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped on an I/O error.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// How long the gateway's client of a node keeps retrying one request (no leader yet, a
/// leader change) before answering 503/504: long enough to ride out an election.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// The gateway's routes, serving `client`.
pub fn router(client: Arc<Client>) -> Router {
    routes(Gateway::new(client))
}

/// The gateway's routes for a node that may not be part of a cluster yet: health, readiness
/// and status answer at once; key requests answer 503 until the node is in a cluster. Must be
/// called inside a tokio runtime.
pub fn router_for_node(node: NodeHandle) -> Router {
    routes(Gateway::for_node(node, REQUEST_DEADLINE))
}

fn routes(gateway: Gateway) -> Router {
    let routes = Router::new()
        .route("/", get(page::status_page))
        .route("/v1/kv", get(scan::scan).delete(scan::delete_range))
        // `{*key}` does not match an empty key: say so rather than 404.
        .route(
            "/v1/kv/",
            any(|| async { ApiError::new(ErrorCode::EMPTY_KEY, "the key is empty") }),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete).post(kv::cas),
        )
        .route("/v1/txn", post(txn::txn))
        .route("/v1/status", get(status::status))
        .route("/v1/backup", get(backup::backup))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/nodes/{node}/decommission", post(nodes::decommission))
        .route("/v1/lease", post(lease::grant))
        .route(
            "/v1/lease/{id}",
            get(lease::time_to_live).delete(lease::revoke),
        )
        .route("/v1/lease/{id}/keepalive", post(lease::keep_alive))
        .route("/v1/election/{name}", get(election::leader))
        .route("/v1/election/{name}/campaign", post(election::campaign))
        .route("/v1/election/{name}/proclaim", post(election::proclaim))
        .route("/v1/election/{name}/resign", post(election::resign))
        .route("/v1/election/{name}/observe", get(election::observe))
        .route("/v1/lock/{name}", get(lock::holder))
        .route("/v1/lock/{name}/acquire", post(lock::acquire))
        .route("/v1/lock/{name}/release", post(lock::release))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this path",
            )
        })
        .with_state(Arc::new(gateway));
    limit::limit(routes, &limit::GatewayLimits::default())
}

/// Binds the gateway's listener. Separate from [`serve_on`] so a caller learns the address
/// (port 0 in tests) and reports a taken port before anything else starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves the gateway on `listener` until `shutdown` completes; requests in flight then
/// finish before this returns.
pub async fn serve_on(
    listener: TcpListener,
    client: Arc<Client>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, router(client))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

/// Serves [`router_for_node`] on `listener` until `shutdown` completes: what `swarmkv start`
/// runs, from the moment the node starts.
pub async fn serve_node(
    listener: TcpListener,
    node: NodeHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, router_for_node(node))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

/// [`serve_node`], with every route but `/healthz` behind `token` when one is given (see
/// [`auth`]): what `swarmkv start` runs.
pub async fn serve_node_with_token(
    listener: TcpListener,
    node: NodeHandle,
    token: Option<auth::BearerToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let router = match token {
        Some(token) => auth::require_token(router_for_node(node), token),
        None => router_for_node(node),
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

/// Binds `addr` and serves the gateway until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    client: Arc<Client>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_on(bind(addr).await?, client, shutdown).await
}

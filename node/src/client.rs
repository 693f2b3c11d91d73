//! The Rust client, over one of three transports: in-process on a node's handle
//! ([`Client::in_process`]), remote over libp2p's `/swarmkv/kv-stream/1` ([`Client::connect`]), or
//! through a node's HTTP gateway ([`Client::http`]). The same calls give the same results and
//! the same [`ClientError`]s over all three.
//!
//! In process and over libp2p it routes each key to its partition, retries what is safe to
//! retry (no leader yet, a leader change, a dropped proposal) with backoff until its
//! deadline, and otherwise returns the typed error. Over libp2p it also sends each write and
//! linearizable read straight to its partition's leader by a routing table it keeps
//! ([`Routing`], [`routes`]); a stale table costs a hop or a retry, never a wrong answer.
//! Multi-partition calls (scan, delete-range) run on every partition; a scan merges the
//! answers in key order. Over HTTP the gateway does the routing and the retrying, so each
//! call is one request (a scan pages through the range). Reads are linearizable unless asked
//! otherwise.
//!
//! # Layout
//! - this file: the client, its transports, and the key-value calls.
//! - [`lease`]: leases and puts attached to them; [`election`]: leader election.
//! - [`watch`]: watches of a key or a prefix.
//! - [`http`]: the HTTP transport ([`Endpoint`], [`HttpOptions`]).
//! - [`routes`]: the libp2p transport's table of partition leaders ([`Routing`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use swarmkv_net::{Keypair, Multiaddr, NetConfig, NetHandle, PeerId};
use swarmkv_store::{CasAction, Compare, KvOp, KvOutcome, KvRecord, Session};
use tokio::task::JoinHandle;

use crate::core::routing::partition_of;
use crate::core::{ClientError, Consistency, Reply, Request, RequestBody, Response};
use crate::driver::NodeHandle;
use crate::wire::{Answer, Call, KvAnswer, KvCall, StatusReport};
use http::HttpTransport;

mod backup;
mod election;
mod http;
mod lease;
mod lock;
mod routes;
mod scan;
pub use backup::Frozen;
pub use election::{CampaignError, Leadership, LeadershipLoss, LossReason, Observer};
pub use http::backup::BackupStream;
pub use http::{Endpoint, EndpointError, HttpOptions, DEFAULT_ENDPOINT, DEFAULT_RETRY_FOR};
pub use lease::{KeepAlive, LeaseLost};
pub use lock::{lock_election, LockGuard, LOCK_PREFIX};
pub use routes::Routing;
use routes::{Routes, Target};
pub use scan::Scan;
mod txn;
pub use txn::{txn_partition, TxnResponse};
mod watch;
pub use watch::{
    Cursor, CursorParseError, Position, Watch, WatchError, WatchEvent, WatchOptions, WatchTarget,
};

/// Result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the comparison held and the action was applied.
    pub succeeded: bool,
    /// The revision of this operation.
    pub revision: u64,
    /// The record before the operation (what a failed caller retries against).
    pub current: Option<KvRecord>,
}

enum Transport {
    Local(NodeHandle),
    Remote {
        net: NetHandle,
        peer: PeerId,
        routes: std::sync::Arc<Routes>,
        event_loop: JoinHandle<()>,
        events: JoinHandle<()>,
    },
    Http(HttpTransport),
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Transport::Remote {
            event_loop, events, ..
        } = self
        {
            event_loop.abort();
            events.abort();
        }
    }
}

/// Numbers this client's writes so that resending one after an ambiguous failure (timeout,
/// leader change, lost connection) is recognised by the partition and never applied twice.
struct Sessions {
    client: u64,
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl Sessions {
    fn new() -> Sessions {
        Sessions {
            client: rand::random::<u64>().max(1),
            next: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    fn begin(&self) -> Session {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.insert(seq);
        let first_incomplete = f.first().copied().unwrap_or(seq);
        Session {
            client: self.client,
            seq,
            first_incomplete,
        }
    }

    fn end(&self, seq: u64) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
    }
}

/// A node's status report, and the JSON document it came as: the gateway's `GET /v1/status`
/// body over HTTP (with the node's state, a health summary and the cluster view), the report
/// itself serialized over the other transports.
#[derive(Clone, Debug)]
pub struct StatusDocument {
    pub report: StatusReport,
    pub json: serde_json::Value,
}

/// A swarmkv client.
pub struct Client {
    transport: Transport,
    partitions: u32,
    deadline: Duration,
    sessions: Sessions,
}

/// How long one attempt over libp2p may wait for its answer before the client takes the node
/// for gone and tries another. A node that stopped answering without closing its connection
/// (cut off, hung) would otherwise hold the request for the network's request timeout (10 s),
/// the whole deadline of a call. Longer than a node's own request timeout (5 s), by which a
/// live node answers; a write resent after it carries its session, so it cannot apply twice.
const ROUTED_ATTEMPT_LIMIT: Duration = Duration::from_secs(6);

fn unavailable(reason: impl Into<String>) -> ClientError {
    ClientError::Unavailable {
        reason: reason.into(),
    }
}

/// The refusal of a call the HTTP gateway has no route for.
fn not_over_http(what: &str) -> ClientError {
    ClientError::BadRequest(format!("{what}: not offered by the HTTP gateway"))
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Disconnected(format!("unexpected response {r:?}"))
}

impl Client {
    /// A client that talks to the node behind `handle`, in the same process.
    pub async fn in_process(handle: NodeHandle) -> Result<Client, ClientError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let partitions = loop {
            let status = handle
                .status()
                .await
                .map_err(|e| ClientError::Disconnected(e.to_string()))?;
            if let Some(s) = status.settings {
                break s.partitions;
            }
            if Instant::now() > deadline {
                return Err(unavailable("the node is not part of a cluster"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Client {
            transport: Transport::Local(handle),
            partitions,
            deadline: Duration::from_secs(10),
            sessions: Sessions::new(),
        })
    }

    /// A light client: its own short-lived libp2p identity, dialing `addr` (a node of cluster
    /// `cluster_name`). It reads the cluster's nodes and partition leaders from that node,
    /// dials the other nodes, and sends each write and linearizable read to its partition's
    /// leader ([`Routing::Leader`]; [`Client::with_routing`] chooses the old way, every
    /// request to the dialed node).
    pub async fn connect(
        addr: Multiaddr,
        cluster_name: &str,
        psk: Option<swarmkv_net::PreSharedKey>,
    ) -> Result<Client, ClientError> {
        let mut client = Client::connect_admin(addr, cluster_name, psk).await?;
        let until = Instant::now() + client.deadline;
        loop {
            match client.remote_call(Call::Info).await? {
                Answer::Info(info) => {
                    if let Some(p) = info.partitions {
                        client.partitions = p;
                        client.refresh_routes().await;
                        if let Transport::Remote { routes, .. } = &client.transport {
                            // The first requests go to the leaders, not through this node.
                            routes.dials_settled(Duration::from_secs(2)).await;
                        }
                        return Ok(client);
                    }
                }
                other => {
                    return Err(ClientError::Disconnected(format!("unexpected {other:?}")));
                }
            }
            if Instant::now() > until {
                return Err(unavailable("the node is not part of a cluster"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A light client for administration: like [`Client::connect`] but it does not wait for
    /// the node to be part of a cluster (so it can ask an unformed node for its status).
    pub async fn connect_admin(
        addr: Multiaddr,
        cluster_name: &str,
        psk: Option<swarmkv_net::PreSharedKey>,
    ) -> Result<Client, ClientError> {
        // A light client only dials out: it listens on nothing, never multicasts and stays
        // out of the membership gossip (see `NetConfig::light_client`).
        let mut config = NetConfig::light_client(Keypair::generate_ed25519());
        config.cluster_name = cluster_name.to_string();
        config.psk = psk;
        config.max_kv_frame = 4 << 20;
        let (net, mut events, event_loop) =
            swarmkv_net::new(config).map_err(|e| ClientError::Disconnected(e.to_string()))?;
        let event_loop = tokio::spawn(event_loop.run());
        // Nobody reads a light client's events but they must not back up.
        let events = tokio::spawn(async move { while events.recv().await.is_some() {} });
        let peer = match net.dial(addr.clone()).await {
            Ok(p) => p,
            Err(e) => {
                event_loop.abort();
                events.abort();
                return Err(ClientError::Disconnected(format!("dialing {addr}: {e}")));
            }
        };
        let routes = std::sync::Arc::new(Routes::new(Routing::Leader, peer));
        Ok(Client {
            transport: Transport::Remote {
                net,
                peer,
                routes,
                event_loop,
                events,
            },
            partitions: 0,
            deadline: Duration::from_secs(10),
            sessions: Sessions::new(),
        })
    }

    /// A client of the node whose HTTP gateway listens at `endpoint`. Nothing is sent yet:
    /// each call makes (or reuses) a connection, so a gateway that is down shows in the
    /// first call's error ([`ClientError::Unavailable`], "cannot connect").
    ///
    /// Over HTTP, [`Client::partitions`] is 0 (the gateway routes keys),
    /// [`Client::cluster_view`], [`Client::call`] and [`Client::txn`] are refused with
    /// [`ClientError::BadRequest`] (the cluster view is inside [`Client::status_document`]'s
    /// JSON; a transaction goes to `POST /v1/txn` as JSON), and records come without their
    /// lease (0).
    pub fn http(endpoint: Endpoint, options: HttpOptions) -> Client {
        Client {
            transport: Transport::Http(HttpTransport::new(vec![endpoint], options)),
            partitions: 0,
            deadline: Duration::from_secs(10),
            sessions: Sessions::new(),
        }
    }

    /// A client of several gateways of one cluster: calls go to the first of `endpoints`
    /// until it cannot be reached (the connection is refused or not accepted within
    /// `connect_timeout`), then to the next, and so on round the list. A request moves on
    /// only when it certainly did nothing (no connection, or a 503 saying so), never after
    /// one that may have applied. `BadRequest` when `endpoints` is empty. Otherwise as
    /// [`Client::http`].
    pub fn http_failover(
        endpoints: Vec<Endpoint>,
        options: HttpOptions,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::BadRequest("no gateway to talk to".into()));
        }
        Ok(Client {
            transport: Transport::Http(HttpTransport::new(endpoints, options)),
            partitions: 0,
            deadline: Duration::from_secs(10),
            sessions: Sessions::new(),
        })
    }

    /// The status report of the node this client talks to.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        match &self.transport {
            Transport::Local(h) => h
                .report()
                .await
                .map_err(|e| ClientError::Disconnected(e.to_string())),
            Transport::Remote { .. } => match self.remote_call(Call::Status).await? {
                Answer::Status(r) => Ok(r),
                other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
            },
            Transport::Http(h) => h.status().await.map(|(report, _)| report),
        }
    }

    /// [`Client::status`] with the JSON document it came as (see [`StatusDocument`]).
    pub async fn status_document(&self) -> Result<StatusDocument, ClientError> {
        if let Transport::Http(h) = &self.transport {
            let (report, json) = h.status().await?;
            return Ok(StatusDocument { report, json });
        }
        let report = self.status().await?;
        let json = serde_json::to_value(&report)
            .map_err(|e| ClientError::BadRequest(format!("the report is not JSON: {e}")))?;
        Ok(StatusDocument { report, json })
    }

    /// The view of the whole cluster of the node this client talks to: every node with its
    /// registry state and reachability, every group's voters (what `swarmkv repair` checks
    /// before it removes a node).
    pub async fn cluster_view(&self) -> Result<crate::driver::ClusterView, ClientError> {
        match &self.transport {
            Transport::Local(h) => h
                .cluster_view()
                .await
                .map_err(|e| ClientError::Disconnected(e.to_string())),
            Transport::Remote { .. } => match self.remote_call(Call::ClusterView).await? {
                Answer::ClusterView(v) => Ok(v),
                other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
            },
            Transport::Http(_) => Err(not_over_http(
                "the cluster view (it is the `cluster` part of the status document)",
            )),
        }
    }

    /// Asks the cluster to drain `node` (the node passes it to the meta leader).
    pub async fn decommission(
        &self,
        node: crate::core::NodeId,
    ) -> Result<(), crate::driver::DecommissionError> {
        use crate::driver::DecommissionError;
        match &self.transport {
            Transport::Local(h) => h.decommission(node).await,
            Transport::Remote { .. } => match self.remote_call(Call::Decommission { node }).await {
                Ok(Answer::Ok) => Ok(()),
                Ok(Answer::UnknownNode(n)) => Err(DecommissionError::UnknownNode(n)),
                Ok(other) => Err(DecommissionError::Unavailable(format!("{other:?}"))),
                Err(e) => Err(DecommissionError::Unavailable(e.to_string())),
            },
            Transport::Http(h) => h.decommission(node).await,
        }
    }

    /// The node an in-process client runs on (`None` for a remote client): the gateway reads
    /// the node's cluster view through it.
    pub fn local_node(&self) -> Option<&NodeHandle> {
        match &self.transport {
            Transport::Local(h) => Some(h),
            Transport::Remote { .. } | Transport::Http(_) => None,
        }
    }

    /// How a libp2p client chooses the node of each request (default [`Routing::Leader`]).
    /// Without effect on the other transports: in process the node routes, over HTTP the
    /// gateway does.
    pub fn with_routing(self, routing: Routing) -> Client {
        if let Transport::Remote { routes, .. } = &self.transport {
            routes.set_routing(routing);
        }
        self
    }

    /// How this client chooses the node of each request: `None` for the transports where
    /// the node or the gateway routes (in process, HTTP).
    pub fn routing(&self) -> Option<Routing> {
        match &self.transport {
            Transport::Remote { routes, .. } => Some(routes.routing()),
            Transport::Local(_) | Transport::Http(_) => None,
        }
    }

    /// Reads the routing table again from the dialed node's cluster view (libp2p, leader
    /// routing only; a failure leaves it as it was).
    async fn refresh_routes(&self) {
        let Transport::Remote {
            net, peer, routes, ..
        } = &self.transport
        else {
            return;
        };
        if routes.routing() != Routing::Leader {
            return;
        }
        let view = async {
            match self.remote_call_to(*peer, Call::ClusterView).await {
                Ok(Answer::ClusterView(v)) => Some(v),
                _ => None,
            }
        };
        routes.refresh(net, view).await;
    }

    /// How long a call may keep retrying before it fails (default 10 s).
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    /// The gateway an HTTP client talks to now (`None` for the other transports).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        match &self.transport {
            Transport::Http(h) => Some(h.endpoint()),
            Transport::Local(_) | Transport::Remote { .. } => None,
        }
    }

    /// The number of partitions of the cluster (0 over HTTP: the gateway routes keys).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn remote_call(&self, call: Call) -> Result<Answer, ClientError> {
        let Transport::Remote { peer, .. } = &self.transport else {
            return Err(ClientError::BadRequest("not a remote client".into()));
        };
        self.remote_call_to(*peer, call).await
    }

    async fn remote_call_to(&self, peer: PeerId, call: Call) -> Result<Answer, ClientError> {
        let Transport::Remote { net, .. } = &self.transport else {
            return Err(ClientError::BadRequest("not a remote client".into()));
        };
        let bytes = net
            .kv_request(peer, KvCall::V1(call).encode())
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        match KvAnswer::decode(&bytes)? {
            KvAnswer::V2(a) => Ok(a),
        }
    }

    async fn send_once(&self, req: Request) -> Reply {
        match &self.transport {
            Transport::Local(h) => h.request(req).await,
            Transport::Remote { routes, .. } => self.send_routed(routes, req, 1).await,
            Transport::Http(_) => Err(not_over_http("requests addressed to a partition")),
        }
    }

    /// Sends `req` over libp2p to the node the routing table chooses (see [`routes`]). A
    /// `NotLeader` answer that teaches the table a leader it can reach sends the request there
    /// at once, up to `redirects` times (it did nothing where it was refused).
    async fn send_routed(&self, routes: &Routes, req: Request, redirects: u8) -> Reply {
        let partition = req.partition;
        let by_leader = !matches!(
            req.body,
            RequestBody::Get {
                consistency: Consistency::Serializable,
                ..
            } | RequestBody::Scan {
                consistency: Consistency::Serializable,
                ..
            }
        );
        if by_leader && routes.wants_refresh(partition, Instant::now()) {
            self.refresh_routes().await;
        }
        let (call, node, peer, at_leader) = match routes.target(partition, by_leader) {
            Target::Leader { node, peer } => {
                (Call::AtLeader { req: req.clone() }, node, peer, true)
            }
            Target::Any { node, peer } => (
                Call::Request {
                    req: req.clone(),
                    hops: 0,
                },
                node,
                peer,
                false,
            ),
        };
        let sent = tokio::time::timeout(ROUTED_ATTEMPT_LIMIT, self.remote_call_to(peer, call));
        let answer = sent.await.unwrap_or(Err(ClientError::Timeout));
        let reply = match answer {
            Ok(Answer::Reply(r)) => r,
            // A node that predates `AtLeader` did nothing: send it the plain request.
            Ok(Answer::Malformed(_)) if at_leader => {
                routes.at_leader_unsupported();
                return Box::pin(self.send_routed(routes, req, redirects)).await;
            }
            Ok(Answer::Malformed(m)) => Err(ClientError::BadRequest(m)),
            Ok(other) => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
            Err(e) => {
                routes.node_failed(node);
                Err(e)
            }
        };
        match &reply {
            Err(ClientError::NotLeader { leader: Some(l) })
                if routes.learn(partition, *l) && redirects > 0 =>
            {
                Box::pin(self.send_routed(routes, req, redirects - 1)).await
            }
            Err(ClientError::NotLeader { leader: None } | ClientError::Unavailable { .. })
                if at_leader =>
            {
                routes.forget(partition);
                reply
            }
            _ => reply,
        }
    }

    /// Sends `req`, retrying what is safe to retry until the deadline: refusals that did
    /// nothing, any failure of a read, and ambiguous failures of a write that carries a session
    /// (the partition recognises the resend).
    pub async fn call(&self, req: Request) -> Reply {
        let until = Instant::now() + self.deadline;
        let resendable = match &req.body {
            RequestBody::Write { session, .. } => session.is_some(),
            _ => true,
        };
        let is_write = matches!(req.body, RequestBody::Write { .. });
        // The first ambiguous failure of a write: once an attempt may have applied, a later
        // attempt's refusal ("not the leader", "unavailable") no longer proves that nothing
        // happened, so the caller must hear "maybe" and not "no".
        let mut maybe_applied: Option<ClientError> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let reply = self.send_once(req.clone()).await;
            let retry = match &reply {
                Err(e) if e.is_retryable() => true,
                Err(e) if e.is_ambiguous() => resendable,
                _ => false,
            };
            if let Err(e) = &reply {
                if is_write && e.is_ambiguous() && maybe_applied.is_none() {
                    maybe_applied = Some(e.clone());
                }
            }
            // `Busy` is not retried here: the node asked for less load, so the caller hears it
            // (HTTP 429 with Retry-After) instead of adding resends to the flood.
            if !retry {
                return match (reply, maybe_applied) {
                    (Err(e), Some(earlier))
                        if e.is_retryable() || matches!(e, ClientError::Busy { .. }) =>
                    {
                        Err(earlier)
                    }
                    (reply, _) => reply,
                };
            }
            if Instant::now() + backoff > until {
                return match (reply, maybe_applied) {
                    (Err(e), Some(earlier)) if e.is_retryable() => Err(earlier),
                    (Err(ClientError::NotLeader { .. }), None)
                    | (Err(ClientError::ProposalDropped), None) => Err(unavailable(
                        "no leader could take the request before the deadline",
                    )),
                    (other, _) => other,
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn route(&self, key: &[u8], body: RequestBody) -> Request {
        Request {
            partition: partition_of(key, self.partitions),
            body,
        }
    }

    async fn write_to(&self, partition: u32, op: KvOp) -> Result<KvOutcome, ClientError> {
        let session = self.sessions.begin();
        let req = Request {
            partition,
            body: RequestBody::Write {
                op,
                session: Some(session),
            },
        };
        let reply = self.call(req).await;
        self.sessions.end(session.seq);
        match reply? {
            Response::Write(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    async fn write(&self, key: &[u8], op: KvOp) -> Result<KvOutcome, ClientError> {
        self.write_to(partition_of(key, self.partitions), op).await
    }

    /// Reads a key, linearizably.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KvRecord>, ClientError> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads a key with the given consistency.
    pub async fn get_with(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<KvRecord>, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.get(key, consistency).await;
        }
        let body = RequestBody::Get {
            key: key.to_vec(),
            consistency,
        };
        match self.call(self.route(key, body)).await? {
            Response::Get(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a key; returns the revision.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        Ok(self.put_prev(key, value, false).await?.0)
    }

    /// Writes a key; returns the revision and, if `prev_kv`, the record it replaced.
    pub async fn put_prev(
        &self,
        key: &[u8],
        value: &[u8],
        prev_kv: bool,
    ) -> Result<(u64, Option<KvRecord>), ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.put(key, value, 0, prev_kv).await;
        }
        let op = KvOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: 0,
            prev_kv,
        };
        match self.write(key, op).await? {
            KvOutcome::Put { revision, prev } => Ok((revision, prev)),
            other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
        }
    }

    /// Deletes a key; true if it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.delete(key).await;
        }
        let op = KvOp::Delete {
            key: key.to_vec(),
            prev_kv: false,
        };
        match self.write(key, op).await? {
            KvOutcome::Delete { deleted, .. } => Ok(deleted),
            other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
        }
    }

    /// Deletes a key; the record it removed (`None`: the key did not exist).
    pub async fn delete_prev(&self, key: &[u8]) -> Result<Option<KvRecord>, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.delete_prev(key).await;
        }
        let op = KvOp::Delete {
            key: key.to_vec(),
            prev_kv: true,
        };
        match self.write(key, op).await? {
            KvOutcome::Delete { prev, .. } => Ok(prev),
            other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
        }
    }

    /// Compare-and-swap on one key.
    pub async fn cas(
        &self,
        key: &[u8],
        compare: Compare,
        action: CasAction,
    ) -> Result<CasResult, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.cas(key, &compare, &action).await;
        }
        let op = KvOp::Cas {
            key: key.to_vec(),
            compare,
            action,
        };
        match self.write(key, op).await? {
            KvOutcome::Cas {
                revision,
                succeeded,
                current,
            } => Ok(CasResult {
                succeeded,
                revision,
                current,
            }),
            other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
        }
    }

    /// Deletes every key in `[start, end)` (`end = None`: to the end), on every partition;
    /// returns how many were deleted. Each partition deletes atomically; the whole is not.
    pub async fn delete_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<u64, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.delete_range(start, end).await;
        }
        let calls = (0..self.partitions).map(|p| {
            let op = KvOp::DeleteRange {
                start: start.to_vec(),
                end: end.map(<[u8]>::to_vec),
            };
            self.write_to(p, op)
        });
        let mut total = 0;
        for r in join_all(calls).await {
            match r? {
                KvOutcome::DeleteRange { deleted, .. } => total += deleted,
                other => return Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
            }
        }
        Ok(total)
    }

    /// The first `limit` keys (0: all) of `[start, end)` across every partition, in key order.
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<(Vec<u8>, KvRecord)>, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.scan(start, end, limit, consistency).await;
        }
        Ok(self
            .scan_with_cursor(start, end, limit, consistency)
            .await?
            .records)
    }

    /// The first `limit` keys (0: all) starting with `prefix`, in key order.
    pub async fn scan_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, KvRecord)>, ClientError> {
        let end = swarmkv_store::keys::prefix_end(prefix);
        self.scan(prefix, end.as_deref(), limit, Consistency::Linearizable)
            .await
    }
}

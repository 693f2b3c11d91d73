//! The node driver: the only async part of a node. One task owns the [`Core`] and runs the
//! node loop: take inbound Raft batches, client requests and clock ticks; let the core step
//! every group and persist all their Readies with one fsync; send each peer one batch with
//! every group's messages; stream snapshots; answer or forward requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use swarmkv_net::{KvResponder, Multiaddr, NetConfig, NetEvents, NetHandle, PeerId, PreSharedKey};
use swarmkv_store::{SledBackend, SledStore, Store, StoreConfig, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::core::{
    ClusterSettings, Core, CoreConfig, CoreError, GroupId, NodeId, Reply, Request, RequestId,
    SyncDone,
};
use crate::metrics::{op_of, Metrics};
use crate::wire::{Answer, KvAnswer};

mod admission;
mod backup;
mod commands;
mod control;
mod election;
mod events;
mod lease;
mod limits;
mod node;
mod storage_fault;
mod turn;
mod view;
mod watch;
use crate::core::control::Control;
pub use control::ControlConfig;
pub use limits::NodeLimits;
pub use node::{Node, NodeHandle, NodeStatus};
pub use view::{ClusterView, GroupView, NodeView};

const PEERS_META: &str = "peers";
/// Raft batches to one peer are split so that no frame nears the transport's limit.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// How long a forwarded request may take before the caller hears `Disconnected` (and, for a
/// write with a session, resends it).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a graceful shutdown waits for leaderships to move away.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The Raft id a PeerId maps to: stable, so a node keeps it across restarts.
pub fn node_id_of(peer: &PeerId) -> NodeId {
    let h = xxhash_rust::xxh3::xxh3_64(&peer.to_bytes());
    h.max(1)
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("store: {0}")]
    Store(#[from] swarmkv_store::StoreError),
    #[error("network: {0}")]
    Net(#[from] swarmkv_net::NetError),
    #[error("core: {0}")]
    Core(#[from] CoreError),
    #[error("the node has stopped")]
    Stopped,
    /// The node's storage failed; it refuses everything until its storage works again
    /// (it retries by itself).
    #[error("storage failed: {0}; the node is sidelined until its storage works again")]
    StorageFailed(String),
    #[error("unknown peer {0}: it must be connected before it can be named")]
    UnknownPeer(PeerId),
    /// The backup a restored data directory holds could not be staged.
    #[error("restoring the backup in the data directory: {0}")]
    Restore(#[from] crate::backup::BackupError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl NodeError {
    /// True when the node's stored data is damaged or incomplete (a corrupt record, writes
    /// lost from the log, an unreadable identity): it must not run on it, and retrying
    /// cannot help; `swarmkv repair --from-peers` rebuilds it from its peers.
    pub fn is_damage(&self) -> bool {
        match self {
            NodeError::Store(e) | NodeError::Core(CoreError::Store(e)) => e.is_damage(),
            NodeError::Core(CoreError::CorruptMeta(_)) => true,
            NodeError::Core(CoreError::Raft(swarmkv_store::raft::Error::Store(
                swarmkv_store::raft::StorageError::Other(e),
            ))) => e
                .downcast_ref::<swarmkv_store::StoreError>()
                .is_some_and(swarmkv_store::StoreError::is_damage),
            NodeError::Net(swarmkv_net::NetError::IdentityCorrupt { .. }) => true,
            _ => false,
        }
    }
}

pub use crate::core::control::DecommissionError;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Holds the identity key and the store.
    pub data_dir: PathBuf,
    /// Cluster name: nodes of other names are refused.
    pub cluster_name: String,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses to dial at start (where multicast is absent).
    pub join: Vec<Multiaddr>,
    /// LAN discovery. Off in tests (multicast must not reach real interfaces).
    pub mdns: bool,
    /// Private network key.
    pub psk: Option<PreSharedKey>,
    /// Short network timers, for in-process tests.
    pub fast_timers: bool,
    pub core: CoreConfig,
    pub store: StoreConfig,
    /// Formation and coordination.
    pub control: ControlConfig,
    /// Resource limits and who may connect (see `driver/limits.rs`).
    pub limits: NodeLimits,
}

impl NodeConfig {
    /// Product defaults for a node keeping its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            cluster_name: swarmkv_net::DEFAULT_CLUSTER_NAME.to_string(),
            listen: vec!["/ip4/0.0.0.0/tcp/0"
                .parse()
                .unwrap_or_else(|_| Multiaddr::empty())],
            join: Vec::new(),
            mdns: true,
            psk: None,
            fast_timers: false,
            core: CoreConfig::default(),
            // The state flushes run beside the node loop (see StoreConfig).
            store: StoreConfig {
                state_flush_in_background: true,
                ..StoreConfig::default()
            },
            control: ControlConfig::default(),
            limits: NodeLimits::default(),
        }
    }

    /// A node for in-process tests: 127.0.0.1 only, no mDNS, short timers.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> NodeConfig {
        let mut c = NodeConfig::new(data_dir);
        c.listen = vec!["/ip4/127.0.0.1/tcp/0"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty())];
        c.mdns = false;
        c.fast_timers = true;
        c.core.tick_ms = 50;
        // In-process tests bootstrap explicitly unless they ask for zero-config formation.
        c.control.auto_form = false;
        c.control.discovery = Duration::from_millis(600);
        c.control.dead_after = Duration::from_secs(3);
        c
    }

    fn net_config(&self, keypair: swarmkv_net::Keypair) -> NetConfig {
        let mut n = if self.fast_timers {
            NetConfig::loopback(keypair)
        } else {
            NetConfig::new(keypair)
        };
        n.cluster_name = self.cluster_name.clone();
        n.listen_addrs = self.listen.clone();
        n.join_addrs = self.join.clone();
        n.enable_mdns = self.mdns;
        n.psk = self.psk;
        n.max_connections = self.limits.max_connections;
        n.software_version = crate::VERSION.to_string();
        // Room for the largest value plus its key and framing.
        n.max_kv_frame = n
            .max_kv_frame
            .max(self.store.limits.max_value + self.store.limits.max_key + 64 * 1024);
        n
    }
}

enum Cmd {
    Request {
        req: Request,
        reply: oneshot::Sender<Reply>,
    },
    Bootstrap {
        peers: Vec<PeerId>,
        partitions: u32,
        replication: usize,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Report {
        reply: oneshot::Sender<crate::wire::StatusReport>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    Isolate {
        isolated: bool,
    },
    Decommission {
        node: NodeId,
        reply: oneshot::Sender<Result<(), DecommissionError>>,
    },
    View {
        reply: oneshot::Sender<ClusterView>,
    },
    Lease {
        req: crate::core::LeaseRequest,
        reply: oneshot::Sender<Reply>,
    },
    Election {
        req: crate::core::ElectionRequest,
        reply: oneshot::Sender<Reply>,
    },
    Watch {
        req: crate::wire::WatchRequest,
        reply: oneshot::Sender<crate::wire::WatchReply>,
    },
    BackupFreeze {
        group: GroupId,
        reply: oneshot::Sender<crate::wire::BackupReply>,
    },
    BackupChunk {
        node: NodeId,
        group: GroupId,
        index: u64,
        seq: u32,
        reply: oneshot::Sender<crate::wire::BackupReply>,
    },
}

enum Internal {
    SnapshotDone {
        group: u64,
        to: NodeId,
        ok: bool,
    },
    Joined(Option<ClusterSettings>),
    /// These partitions deleted the keys of this revoked lease.
    LeaseDeleted {
        lease: crate::core::LeaseId,
        confirmed: Vec<u32>,
    },
}

/// Where an answer goes: a caller in this process, or a peer's kv stream.
pub(crate) enum Origin<R = Reply> {
    Local(oneshot::Sender<R>),
    Remote(KvResponder),
}

/// An answer a kv stream carries to the peer that asked.
pub(crate) trait IntoAnswer {
    fn into_answer(self) -> Answer;
}

impl IntoAnswer for Reply {
    fn into_answer(self) -> Answer {
        Answer::Reply(self)
    }
}

impl<R: IntoAnswer> Origin<R> {
    fn deliver(self, reply: R) {
        match self {
            Origin::Local(tx) => {
                let _ = tx.send(reply);
            }
            Origin::Remote(responder) => respond(responder, reply.into_answer()),
        }
    }
}

struct Pending {
    origin: Origin,
    req: Request,
    /// How many nodes passed it on already.
    hops: u8,
    started: Instant,
    /// Its share of the admission budget, given back when the request is answered.
    _permit: admission::Permit,
}

#[derive(Serialize, Deserialize, Default)]
struct PeerTable {
    peers: Vec<(NodeId, Vec<u8>, Vec<String>)>,
}

/// sled keeps a lock on its directory until the previous instance is fully dropped; a node
/// restarted right after a crash in the same process may have to wait a moment.
async fn open_store(dir: &Path, config: StoreConfig) -> Result<SledStore, NodeError> {
    let path = dir.join("store");
    let mut attempt = 0;
    loop {
        match Store::<SledBackend>::open(&path, config.clone()) {
            Ok(s) => return Ok(s),
            // Damage does not go away by waiting (sled's lock does).
            Err(e) if attempt < 50 && !e.is_damage() => {
                log::debug!("store at {} not ready yet: {e}", path.display());
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The node loop's state: its storage, which a storage failure discards and recovery
/// rebuilds as one value (see [`storage_fault`]), and everything else, which outlives it.
struct Driver {
    disk: Disk,
    io: Io,
}

/// The core and the store it persists to: both hold the sled database, so both go when the
/// storage fails.
struct Disk {
    core: Core<SledBackend>,
    store: SledStore,
}

/// Everything of the node loop but its storage: the network and the channels, the requests
/// waiting for answers, what the control plane heard.
struct Io {
    net: NetHandle,
    events: NetEvents,
    cmds: mpsc::Receiver<Cmd>,
    internal: mpsc::Receiver<Internal>,
    internal_tx: mpsc::Sender<Internal>,
    pending: HashMap<RequestId, Pending>,
    next_id: RequestId,
    node: NodeId,
    peers: HashMap<NodeId, PeerId>,
    addrs: HashMap<NodeId, Vec<String>>,
    start: Instant,
    isolated: bool,
    control: Control,
    metrics: Arc<Metrics>,
    /// Peers of other clusters seen (reported in the status).
    foreign: Vec<(PeerId, String, Option<u64>)>,
    /// A graceful shutdown in progress: leaderships are handed away until this deadline.
    draining: Option<Instant>,
    stopped: Vec<oneshot::Sender<()>>,
    /// Lease requests in flight and revoked leases being cleaned up.
    leases: lease::LeaseDriver,
    /// Admission budget, snapshot slots, the closed registry.
    limits: limits::Limits,
    /// What the node was started with: a sidelined node reopens its store with it.
    config: NodeConfig,
}

impl Driver {
    fn report(&self) -> crate::wire::StatusReport {
        crate::wire::StatusReport {
            node: self.io.node,
            peer: self.io.net.local_peer_id().to_string(),
            cluster_id: self.disk.core.settings().map(|s| s.cluster_id),
            partitions: self.disk.core.settings().map(|s| s.partitions),
            meta_leader: self.disk.core.is_leader(crate::core::META_GROUP),
            groups: self
                .disk
                .core
                .groups()
                .into_iter()
                .filter_map(|g| self.disk.core.group_status(g))
                .map(|g| crate::wire::GroupReport {
                    group: g.group,
                    role: g.role,
                    term: g.term,
                    leader: g.leader,
                    voters: g.voters,
                    commit: g.commit,
                    applied: g.applied,
                })
                .collect(),
            peers: self
                .io
                .control
                .fresh(self.now_ms())
                .map(|(_, a)| a.node)
                .collect(),
            foreign: self
                .io
                .foreign
                .iter()
                .map(|(p, n, id)| (p.to_string(), n.clone(), *id))
                .collect(),
            storage_error: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.io.start.elapsed().as_millis() as u64
    }

    /// Runs the node until it stops. A storage failure does not stop it: the node is
    /// sidelined (see [`storage_fault`]) and comes back once its storage works again.
    async fn run(mut self) {
        loop {
            match self.serve().await {
                Ok(()) => break,
                Err(e) => match self.sideline(e).await {
                    Some(recovered) => self = recovered,
                    None => return,
                },
            }
        }
        if let Err(e) = self.disk.store.sync() {
            log::warn!("final sync failed: {e}");
        }
        let _ = self.io.net.shutdown().await;
        for s in self.io.stopped.drain(..) {
            let _ = s.send(());
        }
    }

    /// The node loop. `Ok` when the node stopped as asked; `Err` when its storage failed (the
    /// requests in flight have been answered with the ambiguous [`ClientError::Storage`]).
    async fn serve(&mut self) -> Result<(), CoreError> {
        let tick = Duration::from_millis(self.disk.core.tick_ms().max(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The Raft log's sync in flight (`core/pipeline.rs`): the writer runs it on a thread
        // that may block while turns go on here.
        let mut writer: Option<tokio::task::JoinHandle<SyncDone>> = None;
        loop {
            let synced = async {
                match writer.as_mut() {
                    Some(job) => job.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = synced => {
                    writer = None;
                    let done = done.map_err(|e| StoreError::Io {
                        during: "syncing the raft log",
                        source: std::io::Error::other(e.to_string()),
                    })?;
                    self.disk.core.advance_clock(self.now_ms());
                    self.disk.core.on_synced(done)?;
                }
                _ = ticker.tick() => {
                    let now = self.now_ms();
                    self.disk.core.handle_tick(now);
                    self.io.metrics.set_quiesced_groups(self.disk.core.quiesced_groups());
                    self.control_tick().await;
                    self.refresh_allowed_peers().await;
                }
                cmd = self.io.cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => return Ok(()),
                },
                ev = self.io.events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return Ok(()),
                },
                Some(i) = self.io.internal.recv() => self.on_internal(i),
            }
            // Take whatever else is already waiting, so one turn serves many inputs.
            self.take_waiting();
            let turn = self.turn().await;
            self.io.metrics.observe_core(self.disk.core.stats());
            self.io.metrics.observe_net(self.io.net.stats());
            turn?;
            if writer.is_none() {
                if let Some(job) = self.disk.core.take_sync_job()? {
                    writer = Some(tokio::task::spawn_blocking(move || job.run()));
                }
            }
            if self.io.draining.is_some() && self.drain_step() {
                // Let the transfers' messages leave before the network stops.
                let _ = self.turn().await;
                return Ok(());
            }
        }
    }

    /// Takes the events and commands already waiting (up to a bound), so that one turn
    /// serves many inputs.
    fn take_waiting(&mut self) {
        for _ in 0..256 {
            let mut progressed = false;
            if let Some(Some(ev)) = self.io.events.recv().now_or_never() {
                self.on_event(ev);
                progressed = true;
            }
            if let Ok(cmd) = self.io.cmds.try_recv() {
                self.on_cmd(cmd);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn save_peers(&self) -> Result<(), NodeError> {
        let table = PeerTable {
            peers: self
                .io
                .peers
                .iter()
                .map(|(id, p)| {
                    (
                        *id,
                        p.to_bytes(),
                        self.io.addrs.get(id).cloned().unwrap_or_default(),
                    )
                })
                .collect(),
        };
        let bytes = postcard::to_stdvec(&table).unwrap_or_default();
        self.disk.store.put_meta(PEERS_META, &bytes)?;
        Ok(())
    }

    fn submit(&mut self, req: Request, origin: Origin, hops: u8) {
        if let Some(id) = self.admit(&req, origin, hops) {
            self.disk.core.handle_request(id, req);
        }
    }

    /// A [`Call::AtLeader`]: only a leader takes it, and its `NotLeader` answer goes back to
    /// the caller as it is (the pending entry has no hops left, so it is never forwarded).
    fn submit_at_leader(&mut self, req: Request, origin: Origin) {
        if let Some(id) = self.admit(&req, origin, crate::wire::MAX_HOPS) {
            self.disk.core.handle_request_at_leader(id, req);
        }
    }

    /// Takes `req` into the admission budget and the pending table; `None` when the node is
    /// too busy (the origin has been answered `Busy`).
    fn admit(&mut self, req: &Request, origin: Origin, hops: u8) -> Option<RequestId> {
        // Refused before it costs anything: no pending entry, no proposal, no forward.
        let permit = match self.io.limits.admit(req) {
            Ok(permit) => permit,
            Err(busy) => {
                self.io
                    .metrics
                    .observe_request(op_of(&req.body), Duration::ZERO);
                deliver(origin, Err(busy));
                return None;
            }
        };
        let id = self.io.next_id;
        self.io.next_id += 1;
        self.io.pending.insert(
            id,
            Pending {
                origin,
                req: req.clone(),
                hops,
                started: Instant::now(),
                _permit: permit,
            },
        );
        Some(id)
    }
}

fn deliver(origin: Origin, reply: Reply) {
    origin.deliver(reply);
}

fn respond(responder: KvResponder, answer: Answer) {
    if let Err(e) = responder.respond(KvAnswer::V2(answer).encode()) {
        log::debug!("kv answer not delivered: {e}");
    }
}

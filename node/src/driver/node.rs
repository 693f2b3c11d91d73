//! The public face of a node: [`Node`] starts the network and the node loop on a data
//! directory; [`NodeHandle`] is the cheap handle in-process clients and tests talk to it with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use swarmkv_net::{Multiaddr, NetHandle, PeerId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    lease, limits, node_id_of, open_store, ClusterView, Cmd, DecommissionError, Disk, Driver, Io,
    NodeConfig, NodeError, PeerTable, PEERS_META,
};
use crate::core::control::{Control, PeerInfo};
use crate::core::{ClientError, ClusterSettings, Core, GroupStatus, NodeId, Reply, Request};
use crate::metrics::Metrics;

/// What a node reports about itself.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node: NodeId,
    pub peer: PeerId,
    pub settings: Option<ClusterSettings>,
    pub meta_leader: bool,
    pub groups: Vec<GroupStatus>,
    pub peers: Vec<(NodeId, PeerId)>,
}

/// A cheap handle on a running node, for in-process clients and tests.
#[derive(Clone)]
pub struct NodeHandle {
    cmds: mpsc::Sender<Cmd>,
    metrics: Arc<Metrics>,
    net: NetHandle,
    peer: PeerId,
    node: NodeId,
    cluster_name: Arc<str>,
}

impl NodeHandle {
    /// The name of the cluster this node belongs to or will form (`--cluster`).
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The cluster as this node sees it: nodes with their registry state, groups with their
    /// leaders (what the status page draws).
    pub async fn cluster_view(&self) -> Result<ClusterView, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::View { reply: tx })
            .await
            .map_err(|_| NodeError::Stopped)?;
        let mut view = rx.await.map_err(|_| NodeError::Stopped)?;
        // The driver learns other nodes' addresses from their heartbeats; its own come from
        // the network layer.
        if let Some(me) = view.nodes.iter_mut().find(|n| n.id == self.node) {
            if me.addrs.is_empty() {
                if let Ok(addrs) = self.net.listen_addrs().await {
                    me.addrs = addrs.iter().map(|a| a.to_string()).collect();
                }
            }
        }
        Ok(view)
    }

    /// The node's metrics (what the gateway serves at `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The node's network handle (to dial, list addresses).
    pub fn net(&self) -> &NetHandle {
        &self.net
    }

    /// Sends one request to this node (it forwards to the partition's leader when needed).
    pub async fn request(&self, req: Request) -> Reply {
        self.ask(|reply| Cmd::Request { req, reply }).await
    }

    /// Sends a command that answers a [`Reply`]; a stopped node answers `Disconnected`.
    async fn ask(&self, cmd: impl FnOnce(oneshot::Sender<Reply>) -> Cmd) -> Reply {
        let stopped = || Err(ClientError::Disconnected("the node has stopped".into()));
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(cmd(tx)).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Creates a cluster from connected peers (this node included or not). Every initial node
    /// must be called with the same list; the order does not matter.
    pub async fn bootstrap(
        &self,
        peers: Vec<PeerId>,
        partitions: u32,
        replication: usize,
    ) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Bootstrap {
                peers,
                partitions,
                replication,
                reply: tx,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// The node's view of itself and its groups.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Status { reply: tx })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The node's status report (what `swarmkv status` prints).
    pub async fn report(&self) -> Result<crate::wire::StatusReport, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Report { reply: tx })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Drains `node` (any node's handle works if it is the meta leader; others answer an
    /// error naming the problem).
    pub async fn decommission(&self, node: NodeId) -> Result<(), DecommissionError> {
        let stopped = || DecommissionError::Unavailable("the node has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Decommission { node, reply: tx })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// A lease request, served by the meta leader (this node passes it on when it does not
    /// lead the meta group).
    pub async fn lease(&self, req: crate::core::LeaseRequest) -> Reply {
        self.ask(|reply| Cmd::Lease { req, reply }).await
    }

    /// An election request, served by the meta leader (this node passes it on when it does
    /// not lead the meta group).
    pub async fn election(&self, req: crate::core::ElectionRequest) -> Reply {
        self.ask(|reply| Cmd::Election { req, reply }).await
    }

    /// One watch long-poll (see `driver/watch.rs`), served by this node's replica of the
    /// partition or passed to one.
    pub async fn watch(&self, req: crate::wire::WatchRequest) -> crate::wire::WatchReply {
        use crate::wire::WatchReply;
        let stopped = || WatchReply::Unavailable("the node has stopped".into());
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Watch { req, reply: tx }).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Freezes `group` for a backup on a replica after a linearizable barrier (see
    /// `driver/backup.rs`).
    pub async fn backup_freeze(&self, group: crate::core::GroupId) -> crate::wire::BackupReply {
        self.backup_ask(|reply| Cmd::BackupFreeze { group, reply })
            .await
    }

    /// Chunk `seq` of the copy of `group` frozen at `index` on `node`.
    pub async fn backup_chunk(
        &self,
        node: NodeId,
        group: crate::core::GroupId,
        index: u64,
        seq: u32,
    ) -> crate::wire::BackupReply {
        self.backup_ask(|reply| Cmd::BackupChunk {
            node,
            group,
            index,
            seq,
            reply,
        })
        .await
    }

    async fn backup_ask(
        &self,
        cmd: impl FnOnce(oneshot::Sender<crate::wire::BackupReply>) -> Cmd,
    ) -> crate::wire::BackupReply {
        use crate::wire::BackupReply;
        let stopped = || BackupReply::Unavailable("the node has stopped".into());
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(cmd(tx)).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Test hook: drop all Raft traffic to and from this node (a network partition that
    /// leaves client access to it intact), or restore it.
    #[doc(hidden)]
    pub async fn set_isolated(&self, isolated: bool) {
        let _ = self.cmds.send(Cmd::Isolate { isolated }).await;
    }
}

/// A running node: its driver task and its network task.
pub struct Node {
    handle: NodeHandle,
    driver: JoinHandle<()>,
    net_loop: JoinHandle<()>,
}

impl Node {
    /// Opens the data directory (identity, store), starts the network and the node loop.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let keypair = swarmkv_net::load_or_create_identity(&config.data_dir)?;
        let peer = keypair.public().to_peer_id();
        let node = node_id_of(&peer);
        let store = open_store(&config.data_dir, config.store.clone()).await?;
        let metrics = Arc::new(Metrics::new());
        {
            let m = metrics.clone();
            store.set_sync_observer(Arc::new(move |d| m.observe_sync(d)));
        }
        let start = Instant::now();
        let mut core = Core::new(node, store.clone(), config.core.clone(), 0)?;
        let mut config = config;
        if let Some(partitions) = seed_restore(&mut core, &store, &config.data_dir)? {
            config.control.partitions = partitions;
        }
        let mut net_config = config.net_config(keypair);
        // A node that resumes its cluster says so at every hello from the first moment: a
        // peer of another cluster (an old cluster's node pointed at a restored one, say) is
        // refused, not taken for a node that has not formed yet.
        net_config.cluster_id = core.settings().map(|s| s.cluster_id);
        let (net, events, event_loop) = swarmkv_net::new(net_config)?;
        let net_loop = tokio::spawn(event_loop.run());
        let table: PeerTable = store
            .get_meta(PEERS_META)?
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default();
        let mut peers = HashMap::new();
        for (id, bytes, addrs) in &table.peers {
            if let Ok(p) = PeerId::from_bytes(bytes) {
                peers.insert(*id, p);
                if p != peer {
                    for a in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                        let net = net.clone();
                        tokio::spawn(async move {
                            let _ = net.dial(a).await;
                        });
                    }
                }
            }
        }
        let mut control = Control::new(
            node,
            peer.to_bytes(),
            config.control.params(),
            rand::random(),
            0,
        );
        for (id, bytes, addrs) in &table.peers {
            let info = PeerInfo {
                peer: bytes.clone(),
                addrs: addrs.clone(),
            };
            if *id == node {
                control.set_own_addrs(info.addrs);
            } else {
                control.handle_peer_info(*id, info);
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (int_tx, int_rx) = mpsc::channel(1024);
        let io = Io {
            net: net.clone(),
            events,
            cmds: cmd_rx,
            internal: int_rx,
            internal_tx: int_tx,
            pending: HashMap::new(),
            next_id: 1,
            node,
            peers,
            addrs: table.peers.into_iter().map(|(id, _, a)| (id, a)).collect(),
            start,
            isolated: false,
            control,
            metrics: metrics.clone(),
            foreign: Vec::new(),
            leases: lease::LeaseDriver::default(),
            limits: limits::Limits::new(&config.limits),
            draining: None,
            stopped: Vec::new(),
            config: config.clone(),
        };
        let driver = Driver {
            disk: Disk { core, store },
            io,
        };
        let driver = tokio::spawn(driver.run());
        Ok(Node {
            handle: NodeHandle {
                cmds: cmd_tx,
                metrics,
                net,
                peer,
                node,
                cluster_name: config.cluster_name.as_str().into(),
            },
            driver,
            net_loop,
        })
    }

    /// A handle for clients and tests.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node gracefully: hands every leadership it holds to another replica (so
    /// clients see no election timeout), makes everything durable, then stops.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self
            .handle
            .cmds
            .send(Cmd::Shutdown { reply: tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let _ = self.driver.await;
        self.net_loop.abort();
        let _ = self.net_loop.await;
    }

    /// Stops the node abruptly (as a crash would, minus the OS): tasks are aborted, nothing
    /// is handed over. What was acknowledged is on disk already.
    pub async fn kill(self) {
        self.driver.abort();
        self.net_loop.abort();
        let _ = self.driver.await;
        let _ = self.net_loop.await;
    }
}

/// If `data_dir` holds a restored backup and the node has no cluster yet, stages the backup's
/// groups in `store` and hands them to `core` (it then forms a new cluster from them); returns
/// the backup's partition count, which the new cluster must have. A backup left behind by a
/// node that formed from it already is removed.
pub(super) fn seed_restore(
    core: &mut Core<swarmkv_store::SledBackend>,
    store: &swarmkv_store::SledStore,
    data_dir: &std::path::Path,
) -> Result<Option<u32>, NodeError> {
    let Some(path) = crate::backup::restore::pending(data_dir) else {
        return Ok(None);
    };
    if core.settings().is_some() {
        // The cluster formed from it already (the node stopped before removing it).
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let (manifest, seed) = crate::backup::restore::stage(store, &path)?;
    log::info!(
        "restoring the backup of cluster {:x} ({} partitions, {} groups staged): this node \
         forms a new cluster from it",
        manifest.cluster_id,
        manifest.partitions,
        seed.len()
    );
    core.set_restore_seed(seed);
    Ok(Some(manifest.partitions))
}

//! The libp2p client's routing table: which node leads each partition, and how to reach every
//! node, so that a write or a linearizable read goes straight to its partition's leader
//! instead of taking a follower's detour (the follower proposes, raft-rs passes the proposal
//! on, and the follower answers only once it has applied the entry; a follower's read asks the
//! leader for its commit index first). TiKV's clients keep the same kind of cache of region
//! leaders.
//!
//! The table is a hint and nothing depends on it being right. A request sent by the table goes
//! as [`Call::AtLeader`](crate::wire::Call::AtLeader): the node serves it only if it leads the
//! partition, and otherwise does nothing and answers `NotLeader` with the leader it knows,
//! which the table takes. A write that reached a leader that was deposed before it committed
//! comes back ambiguous (`LeaderChanged`, a lost connection, a timeout) and is resent with the
//! same session, which the partition recognises, so it never applies twice. Where the table
//! knows no reachable leader, the request goes to the node the client dialed (or another
//! reachable node) as a plain [`Call::Request`](crate::wire::Call::Request), which that node
//! serves or passes on as it does for any client.
//!
//! The table is filled from the dialed node's cluster view when the client connects, again at
//! most every [`REFRESH_EVERY`] when a request finds no leader in it, and from every
//! `NotLeader` answer that names a node it can reach. A node whose connection failed is not
//! chosen until a dial of it succeeds again; the dials run in the background, so a node that
//! is gone never holds up a request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmkv_net::{Multiaddr, NetHandle, PeerId};

use crate::core::{partition_of_group, NodeId};
use crate::driver::ClusterView;

/// How a libp2p client picks the node for each request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Routing {
    /// Writes and linearizable reads go to their partition's leader, by the routing table;
    /// serializable reads and everything the table cannot place go to the dialed node.
    #[default]
    Leader,
    /// Every request goes to the dialed node, which serves it through Raft or passes it on.
    OneNode,
}

/// The table is read again from a node's cluster view at most this often.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How long the dial of one node may take while the table is refreshed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// To `node`, as the partition's leader ([`Call::AtLeader`](crate::wire::Call::AtLeader)).
    Leader { node: NodeId, peer: PeerId },
    /// To any node, which serves it or passes it on ([`Call::Request`](crate::wire::Call::Request)).
    Any { node: NodeId, peer: PeerId },
}

/// One node as the client reaches it.
struct NodeRoute {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    /// A connection to it was made and has not failed since (the dialed node: until a
    /// request to it fails).
    connected: bool,
    /// A dial of it is under way.
    dialing: bool,
}

struct Table {
    routing: Routing,
    leaders: BTreeMap<u32, NodeId>,
    nodes: BTreeMap<NodeId, NodeRoute>,
    refreshed: Option<Instant>,
    /// The nodes answered a `Call::AtLeader` as undecodable (they predate it).
    no_at_leader: bool,
}

/// The routing table of one libp2p client (see the module documentation).
pub(super) struct Routes {
    /// The node the client dialed.
    home: NodeId,
    home_peer: PeerId,
    table: Mutex<Table>,
    /// Held while the table is refreshed, so concurrent calls refresh it once.
    refreshing: tokio::sync::Mutex<()>,
}

impl Routes {
    pub(super) fn new(routing: Routing, home_peer: PeerId) -> Routes {
        let home = crate::driver::node_id_of(&home_peer);
        let mut table = Table {
            routing,
            leaders: BTreeMap::new(),
            nodes: BTreeMap::new(),
            refreshed: None,
            no_at_leader: false,
        };
        table.nodes.insert(
            home,
            NodeRoute {
                peer: home_peer,
                addrs: Vec::new(),
                connected: true,
                dialing: false,
            },
        );
        Routes {
            home,
            home_peer,
            table: Mutex::new(table),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn routing(&self) -> Routing {
        self.lock().routing
    }

    pub(super) fn set_routing(&self, routing: Routing) {
        self.lock().routing = routing;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a request for `partition` goes now; `by_leader` is false for what any replica
    /// serves (serializable reads).
    pub(super) fn target(&self, partition: u32, by_leader: bool) -> Target {
        let t = self.lock();
        if by_leader && t.routing == Routing::Leader && !t.no_at_leader {
            if let Some((node, r)) = t
                .leaders
                .get(&partition)
                .and_then(|l| t.nodes.get(l).map(|r| (*l, r)))
            {
                if r.connected {
                    return Target::Leader { node, peer: r.peer };
                }
            }
        }
        let any = t
            .nodes
            .get(&self.home)
            .filter(|r| r.connected)
            .map(|r| (self.home, r))
            .or_else(|| {
                t.nodes
                    .iter()
                    .find(|(_, r)| r.connected)
                    .map(|(n, r)| (*n, r))
            });
        match any {
            Some((node, r)) => Target::Any { node, peer: r.peer },
            // Every node failed a moment ago: try the dialed one again.
            None => Target::Any {
                node: self.home,
                peer: self.home_peer,
            },
        }
    }

    /// Whether the table should be read again before `partition`'s next request: it names no
    /// leader for it and the last refresh is older than [`REFRESH_EVERY`].
    pub(super) fn wants_refresh(&self, partition: u32, now: Instant) -> bool {
        let t = self.lock();
        if t.routing != Routing::Leader {
            return false;
        }
        !t.leaders
            .get(&partition)
            .is_some_and(|l| t.nodes.get(l).is_some_and(|r| r.connected))
            && t.refreshed
                .is_none_or(|r| now.duration_since(r) >= REFRESH_EVERY)
    }

    /// A `NotLeader` answer named `leader` for `partition`. True when the table now points
    /// somewhere new that it can reach (the request is worth resending there at once).
    pub(super) fn learn(&self, partition: u32, leader: NodeId) -> bool {
        let mut t = self.lock();
        if !t.nodes.get(&leader).is_some_and(|r| r.connected) {
            // A node the table cannot reach: ask the dialed node at the next refresh.
            t.leaders.remove(&partition);
            return false;
        }
        t.leaders.insert(partition, leader) != Some(leader)
    }

    /// The table's leader of `partition` did not serve it (no leader known there, or an
    /// election): requests go to any node until the table learns better.
    pub(super) fn forget(&self, partition: u32) {
        self.lock().leaders.remove(&partition);
    }

    /// A request to `node` failed on the way (no connection, or it broke): other nodes are
    /// chosen until a dial of it succeeds again (the home node is dialed again too).
    pub(super) fn node_failed(&self, node: NodeId) {
        if let Some(r) = self.lock().nodes.get_mut(&node) {
            r.connected = false;
        }
    }

    /// The nodes do not know `Call::AtLeader`: every request goes as a plain one.
    pub(super) fn at_leader_unsupported(&self) {
        self.lock().no_at_leader = true;
    }

    /// Reads the table again from `view` (the dialed node's cluster view), and dials in the
    /// background the nodes it names that the client has no working connection to. Does
    /// nothing when another call is already refreshing it. A failure leaves the table as it
    /// was: it is only a hint.
    pub(super) async fn refresh(
        self: &Arc<Self>,
        net: &NetHandle,
        view: impl std::future::Future<Output = Option<ClusterView>>,
    ) {
        let Ok(_guard) = self.refreshing.try_lock() else {
            return;
        };
        self.lock().refreshed = Some(Instant::now());
        let Some(view) = view.await else {
            return;
        };
        for (node, peer, addrs) in self.take_view(&view) {
            let (routes, net) = (self.clone(), net.clone());
            tokio::spawn(async move {
                let mut ok = false;
                for addr in addrs {
                    let dial = tokio::time::timeout(DIAL_TIMEOUT, net.dial(addr));
                    if let Ok(Ok(p)) = dial.await {
                        ok = p == peer;
                        break;
                    }
                }
                let mut t = routes.lock();
                if let Some(r) = t.nodes.get_mut(&node) {
                    r.dialing = false;
                    r.connected = ok;
                }
            });
        }
    }

    /// Waits (at most `limit`) until no dial started by [`Routes::refresh`] is under way.
    pub(super) async fn dials_settled(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.lock().nodes.values().any(|r| r.dialing) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes the nodes and leaders of `view`; returns the nodes to dial (with addresses).
    fn take_view(&self, view: &ClusterView) -> Vec<(NodeId, PeerId, Vec<Multiaddr>)> {
        let mut t = self.lock();
        for n in &view.nodes {
            let Some(peer) = n.peer.as_deref().and_then(|p| p.parse::<PeerId>().ok()) else {
                continue;
            };
            let addrs: Vec<Multiaddr> = n
                .addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .collect();
            let r = t.nodes.entry(n.id).or_insert(NodeRoute {
                peer,
                addrs: Vec::new(),
                connected: false,
                dialing: false,
            });
            if r.peer != peer {
                r.peer = peer;
                r.connected = false;
            }
            if !addrs.is_empty() {
                r.addrs = addrs;
            }
        }
        for g in &view.groups {
            let (Some(p), Some(l)) = (partition_of_group(g.group), g.leader) else {
                continue;
            };
            if t.nodes.contains_key(&l) {
                t.leaders.insert(p, l);
            }
        }
        let mut to_dial = Vec::new();
        for (n, r) in t.nodes.iter_mut() {
            if !r.connected && !r.dialing && !r.addrs.is_empty() {
                r.dialing = true;
                to_dial.push((*n, r.peer, r.addrs.clone()));
            }
        }
        to_dial
    }
}

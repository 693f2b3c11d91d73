//! The event loop: the one task that owns the swarm.
//!
//! It `select!`s between swarm events, commands from handles, a housekeeping tick (failure
//! detector, redials, timeouts) and the heartbeat timer. Handlers are synchronous and queue
//! the events they produce; the loop hands queued events to the application after each step,
//! waiting when the application is slow. That wait is the backpressure: while the loop waits
//! it acknowledges nothing, so senders slow down instead of memory growing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::request_response::{self, InboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::codec::{Frame, OversizedFrame};
use crate::dialer::Dialer;
use crate::event::{KvResponder, NetEvent, Responder};
use crate::handle::{Command, RawProtocol, Reply};
use crate::kv_stream::{self, KvLink};
use crate::membership::{FailureDetector, Liveness};
use crate::outbox::Outbox;
use crate::protocol::{
    decode, encode, heartbeat_topic, same_cluster, Ack, HeartbeatFrame, Hello, HelloFrame,
    KvRequestFrame, KvResponseFrame, PeerInfo, RaftBatch, RaftFrame, SnapshotFrame,
};
use crate::raft_stream::{self, LinkFrame, RAFT_STREAM_PROTOCOL_NAME};
use crate::rate::RateLimiter;
use crate::{NetConfig, NetError};

/// How often the failure detector, the redial schedule and the timeouts are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Inbound requests held per peer while it has not said hello yet, by count...
const MAX_HELD: usize = 256;
/// ... and by bytes: a stranger must not make us buffer much before it proves anything.
const MAX_HELD_BYTES: usize = 16 << 20;
/// How long a foreign peer's connection stays open so that our hello answer reaches it.
const FOREIGN_GRACE: Duration = Duration::from_millis(100);
/// How long a foreign peer is remembered (to report it once, not on every reconnect).
const FOREIGN_MEMORY: Duration = Duration::from_secs(60);
/// Frame refusals per second and peer handed to the application (bursts of twice that).
const REJECT_REPORTS_PER_SEC: u32 = 5;
/// A peer whose gossip exceeds its rate by this many times its per-second allowance within
/// one report window is a flooder...
const FLOOD_FACTOR: u64 = 10;
/// ...and is disconnected and refused for this long.
const FLOOD_BAN: Duration = Duration::from_secs(60);
/// How often gossip dropped by the rate limit is summed up in the log.
const GOSSIP_REPORT_EVERY: Duration = Duration::from_secs(10);
/// At most this many listen addresses go into a heartbeat or the dial list of a peer.
const MAX_ADDRS: usize = 8;

/// An inbound request from a peer that has not proven its cluster yet.
enum Held {
    Raft(Vec<u8>, ResponseChannel<Vec<u8>>),
    /// A frame read from the peer's Raft stream (nothing to answer).
    RaftStream(Vec<u8>),
    /// A request read from one of the peer's kv streams: its id, payload and answer writer.
    KvStream(u64, Vec<u8>, mpsc::UnboundedSender<Vec<u8>>),
    Kv(Vec<u8>, ResponseChannel<Vec<u8>>),
    Snapshot(Vec<u8>, ResponseChannel<Vec<u8>>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Raft(b, _) | Held::Kv(b, _) | Held::Snapshot(b, _) => b.len(),
            Held::RaftStream(b) | Held::KvStream(_, b, _) => b.len(),
        }
    }
}

/// A request sent on a kv link and not answered yet.
struct PendingKv {
    peer: PeerId,
    generation: u64,
    deadline: Instant,
    reply: Reply<Vec<u8>>,
}

/// An outbound request waiting for its peer to connect and say hello.
enum Outbound {
    Kv(Vec<u8>, Reply<Vec<u8>>),
    Snapshot(Vec<u8>, Reply<()>),
    Raw(RawProtocol, Vec<u8>, Reply<Vec<u8>>),
}

impl Outbound {
    fn fail(self, err: NetError) {
        // The caller may have given up waiting; nobody to tell then.
        match self {
            Outbound::Kv(_, reply) | Outbound::Raw(_, _, reply) => {
                let _ = reply.send(Err(err));
            }
            Outbound::Snapshot(_, reply) => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

#[derive(Default)]
struct Peer {
    connections: HashSet<ConnectionId>,
    connected_since: Option<Instant>,
    verified: bool,
    hello: Option<Hello>,
    foreign_since: Option<Instant>,
    held: Vec<Held>,
    outbox: Outbox,
    /// The writer task of our Raft stream to it (`raft_stream.rs`), started on first use.
    link: Option<mpsc::UnboundedSender<LinkFrame>>,
    /// Our kv stream to it (`kv_stream.rs`), opened on the first request.
    kv_link: Option<KvLink>,
    addrs: Vec<Multiaddr>,
}

impl Peer {
    fn ready(&self) -> bool {
        self.verified && !self.connections.is_empty()
    }

    fn remember_addr(&mut self, addr: Multiaddr) {
        if !self.addrs.contains(&addr) {
            if self.addrs.len() >= MAX_ADDRS {
                self.addrs.remove(0);
            }
            self.addrs.push(addr);
        }
    }
}

/// Owns the swarm; run it on its own task with `tokio::spawn(event_loop.run())`.
///
/// It stops when every [`crate::NetHandle`] has been dropped or on
/// [`crate::NetHandle::shutdown`]; dropping it closes every connection.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    weak_commands: mpsc::WeakSender<Command>,
    events: mpsc::Sender<NetEvent>,
    out: VecDeque<NetEvent>,
    config: NetConfig,
    local: PeerId,
    cluster_id: Option<u64>,
    app: Vec<u8>,
    heartbeat_seq: u64,
    topic: IdentTopic,
    peers: HashMap<PeerId, Peer>,
    detector: FailureDetector,
    dialer: Dialer,
    /// Opens the peers' Raft streams and accepts theirs.
    streams: libp2p_stream::Control,
    /// The id of the next Raft frame handed to a link.
    next_frame_id: u64,
    /// Requests sent on kv links, by id, until answered, failed or timed out.
    pending_kv_stream: HashMap<u64, PendingKv>,
    /// The id of the next kv request, and of the next kv link.
    next_kv_id: u64,
    next_kv_generation: u64,
    pending_snapshot: HashMap<OutboundRequestId, (PeerId, Reply<()>)>,
    pending_raw_raft: HashMap<OutboundRequestId, Reply<Vec<u8>>>,
    pending_raw_kv: HashMap<OutboundRequestId, Reply<Vec<u8>>>,
    pending_dials: HashMap<ConnectionId, (Multiaddr, Reply<PeerId>)>,
    join_dials: HashMap<ConnectionId, Multiaddr>,
    parked: Vec<(PeerId, Instant, Outbound)>,
    stopping: Option<Reply<()>>,
    /// Bytes of requests held for unverified peers, all together (`max_held_bytes`).
    held_total: usize,
    /// Gossip messages each relaying peer may make us process.
    gossip_rate: RateLimiter,
    /// When dropped gossip was last reported in the log.
    gossip_report: Instant,
    /// Frame refusals reported to the application per peer (the rest are counted).
    reject_reports: RateLimiter,
    /// Gossip dropped over the rate per peer in the current window: (window start, count).
    gossip_excess: HashMap<PeerId, (Instant, u64)>,
}

fn ack(result: Result<(), String>) -> Vec<u8> {
    // Encoding a small enum into a Vec cannot fail; an empty answer would be refused anyway.
    encode(&Ack::V1(result)).unwrap_or_default()
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        weak_commands: mpsc::WeakSender<Command>,
        events: mpsc::Sender<NetEvent>,
        config: NetConfig,
    ) -> Self {
        let now = Instant::now();
        let gossip_rate = RateLimiter::new(config.gossip_rate_per_peer);
        let streams = swarm.behaviour().streams.new_control();
        Self {
            local: *swarm.local_peer_id(),
            swarm,
            commands,
            weak_commands,
            events,
            out: VecDeque::new(),
            cluster_id: config.cluster_id,
            app: Vec::new(),
            heartbeat_seq: 0,
            topic: IdentTopic::new(heartbeat_topic(&config.cluster_name)),
            peers: HashMap::new(),
            detector: FailureDetector::new(config.suspect_timeout, config.down_timeout),
            dialer: Dialer::new(
                &config.join_addrs,
                config.reconnect_min,
                config.reconnect_max,
                now,
            ),
            config,
            streams,
            next_frame_id: 0,
            pending_kv_stream: HashMap::new(),
            next_kv_id: 0,
            next_kv_generation: 0,
            pending_snapshot: HashMap::new(),
            pending_raw_raft: HashMap::new(),
            pending_raw_kv: HashMap::new(),
            pending_dials: HashMap::new(),
            join_dials: HashMap::new(),
            parked: Vec::new(),
            stopping: None,
            held_total: 0,
            gossip_rate,
            gossip_report: now,
            reject_reports: RateLimiter::new(REJECT_REPORTS_PER_SEC),
            gossip_excess: HashMap::new(),
        }
    }

    /// Runs until every handle is dropped or shutdown is requested.
    pub async fn run(mut self) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.config.light_client {
            // Errors are only possible if a protocol were registered twice; frames then fail
            // to reach us and our peers report it, as for an unreachable node.
            if let Err(e) = raft_stream::spawn_acceptor(
                self.streams.clone(),
                self.weak_commands.clone(),
                self.config.max_raft_frame,
            ) {
                log::error!("{e}");
            }
            if let Err(e) = kv_stream::spawn_acceptor(
                self.streams.clone(),
                self.weak_commands.clone(),
                self.config.max_kv_frame,
            ) {
                log::error!("{e}");
            }
        }
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = housekeeping.tick() => self.housekeeping(Instant::now()),
                _ = heartbeat.tick(), if !self.config.light_client => self.publish_heartbeat(),
            }
            while let Some(event) = self.out.pop_front() {
                if self.events.send(event).await.is_err() {
                    // Nobody listens any more; keep serving handles without events.
                    self.out.clear();
                }
            }
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(Ok(()));
                break;
            }
        }
        log::debug!("net event loop of {} stopped", self.local);
    }

    fn emit(&mut self, event: NetEvent) {
        // A peer sending garbage in a loop must not turn into one event (and one log line
        // in the application) per frame: past a few a second, refusals are only counted.
        if let NetEvent::FrameRejected { peer, .. } = &event {
            if !self.reject_reports.allow(*peer, Instant::now()) {
                return;
            }
        }
        self.out.push_back(event);
    }

    // ---------------------------------------------------------------- commands

    fn on_command(&mut self, command: Command) {
        match command {
            Command::SendRaft { peer, batch } => self.queue_raft(peer, batch),
            Command::RaftWritten { peer, id, result } => self.raft_frame_done(peer, id, result),
            Command::RaftInbound { peer, frame } => self.on_inbound(peer, Held::RaftStream(frame)),
            Command::StreamFrameRefused {
                peer,
                protocol,
                reason,
            } => {
                log::debug!("{protocol} frame from {peer} refused: {reason}");
                self.emit(NetEvent::FrameRejected {
                    peer,
                    protocol,
                    reason,
                });
            }
            Command::KvAnswer { peer, id, result } => {
                if let Some(p) = self.pending_kv_stream.remove(&id) {
                    let _ = p
                        .reply
                        .send(result.map_err(|reason| NetError::Rejected { peer, reason }));
                }
            }
            Command::KvLinkBroken {
                peer,
                generation,
                reason,
                opened,
            } => self.kv_link_broken(peer, generation, reason, opened),
            Command::KvStreamRequest {
                peer,
                id,
                payload,
                answers,
            } => self.on_inbound(peer, Held::KvStream(id, payload, answers)),
            Command::Kv {
                peer,
                payload,
                reply,
            } => self.send_or_park(peer, Outbound::Kv(payload, reply)),
            Command::RespondKv { channel, frame } => {
                let _ = self.swarm.behaviour_mut().kv.send_response(channel, frame);
            }
            Command::Snapshot { peer, chunk, reply } => match encode(&SnapshotFrame::V1(chunk)) {
                Ok(frame) => self.send_or_park(peer, Outbound::Snapshot(frame, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Raw {
                peer,
                protocol,
                bytes,
                reply,
            } => self.send_or_park(peer, Outbound::Raw(protocol, bytes, reply)),
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id()
                    .address(addr.clone())
                    .allocate_new_port()
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial {
                            target: addr.to_string(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::SetClusterId { id, reply } => {
                self.set_cluster_id(id);
                let _ = reply.send(Ok(()));
            }
            Command::SetAppPayload { app, reply } => {
                self.app = app;
                let _ = reply.send(Ok(()));
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(Ok(self.swarm.listeners().cloned().collect()));
            }
            Command::ClusterPeers { reply } => {
                let peers = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.ready())
                    .map(|(id, _)| *id)
                    .collect();
                let _ = reply.send(Ok(peers));
            }
            Command::Shutdown { reply } => self.stopping = Some(reply),
            Command::SetAllowedPeers { allowed, reply } => {
                self.set_allowed_peers(allowed);
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn queue_raft(&mut self, peer: PeerId, batch: RaftBatch) {
        // Encoded now, while an earlier frame may be on the wire (see `outbox`).
        let encoded = match encode(&batch) {
            Ok(encoded) => encoded,
            Err(e) => {
                self.emit(NetEvent::RaftSendFailed {
                    peer,
                    batches: 1,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let limit = self.config.raft_queue_limit;
        let reachable = self.dialer.knows(&peer);
        let entry = self.peers.entry(peer).or_default();
        let refusal = if peer == self.local {
            Some("cannot send to self".to_string())
        } else if entry.foreign_since.is_some() {
            Some(NetError::ForeignPeer(peer).to_string())
        } else if entry.connections.is_empty() && !reachable {
            Some(NetError::NotConnected(peer).to_string())
        } else if !entry.outbox.push(encoded, limit) {
            Some(NetError::QueueFull { peer, limit }.to_string())
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.emit(NetEvent::RaftSendFailed {
                peer,
                batches: 1,
                reason,
            });
            return;
        }
        if entry.connections.is_empty() {
            self.dialer.hurry(&peer, Instant::now());
        }
        self.pump(peer);
    }

    /// Sends the next raft frame to `peer` if it is ready and has none in flight.
    fn pump(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.ready() || p.outbox.busy() {
            return;
        }
        let Some((parts, n)) = p.outbox.next_frame(self.config.max_raft_frame) else {
            return;
        };
        let id = self.next_frame_id;
        self.next_frame_id += 1;
        let link = p.link.get_or_insert_with(|| {
            raft_stream::spawn_link(
                self.streams.clone(),
                peer,
                self.weak_commands.clone(),
                self.config.request_timeout,
            )
        });
        if let Err(mpsc::error::SendError((_, parts))) = link.send((id, parts)) {
            // The task is gone (only if it panicked): start another for this frame.
            let link = raft_stream::spawn_link(
                self.streams.clone(),
                peer,
                self.weak_commands.clone(),
                self.config.request_timeout,
            );
            let _ = link.send((id, parts));
            p.link = Some(link);
        }
        p.outbox.sent(id, n);
    }

    fn send_or_park(&mut self, peer: PeerId, request: Outbound) {
        let reachable = self.dialer.knows(&peer);
        let Some(p) = self.peers.get(&peer).filter(|p| !p.connections.is_empty()) else {
            if reachable {
                self.dialer.hurry(&peer, Instant::now());
                self.parked.push((peer, Instant::now(), request));
            } else {
                request.fail(NetError::NotConnected(peer));
            }
            return;
        };
        if p.foreign_since.is_some() {
            request.fail(NetError::ForeignPeer(peer));
        } else if p.verified {
            self.dispatch(peer, request);
        } else {
            self.parked.push((peer, Instant::now(), request));
        }
    }

    fn dispatch(&mut self, peer: PeerId, request: Outbound) {
        let behaviour = self.swarm.behaviour_mut();
        match request {
            Outbound::Kv(payload, reply) => self.send_kv(peer, payload, reply),
            Outbound::Snapshot(frame, reply) => {
                let id = behaviour.snapshot.send_request(&peer, Frame::Data(frame));
                self.pending_snapshot.insert(id, (peer, reply));
            }
            Outbound::Raw(RawProtocol::Raft, bytes, reply) => {
                let id = behaviour.raft.send_request(&peer, Frame::Data(bytes));
                self.pending_raw_raft.insert(id, reply);
            }
            Outbound::Raw(RawProtocol::Kv, bytes, reply) => {
                let id = behaviour.kv.send_request(&peer, Frame::Data(bytes));
                self.pending_raw_kv.insert(id, reply);
            }
            Outbound::Raw(
                protocol @ (RawProtocol::RaftStream | RawProtocol::KvStream),
                bytes,
                reply,
            ) => {
                let control = self.streams.clone();
                let (protocol, wait) = match protocol {
                    RawProtocol::KvStream => {
                        (kv_stream::KV_STREAM_PROTOCOL, Duration::from_secs(2))
                    }
                    _ => (raft_stream::RAFT_STREAM_PROTOCOL, Duration::ZERO),
                };
                tokio::spawn(async move {
                    let sent = raft_stream::send_raw(control, peer, protocol, bytes, wait).await;
                    let _ = reply.send(sent);
                });
            }
        }
    }

    /// Sends a request on the peer's kv link, opening one if there is none.
    fn send_kv(&mut self, peer: PeerId, payload: Vec<u8>, reply: Reply<Vec<u8>>) {
        let id = self.next_kv_id;
        self.next_kv_id += 1;
        let frame = match kv_stream::encode_request(id, payload) {
            Ok(frame) => frame,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            let _ = reply.send(Err(NetError::NotConnected(peer)));
            return;
        };
        let mut frame = Some(frame);
        // A link whose tasks ended (its report may still be on the way) takes nothing: the
        // second attempt goes to a new one.
        for _ in 0..2 {
            let link = p.kv_link.get_or_insert_with(|| {
                self.next_kv_generation += 1;
                kv_stream::spawn_link(
                    self.streams.clone(),
                    peer,
                    self.next_kv_generation,
                    self.weak_commands.clone(),
                    self.config.max_kv_frame,
                    self.config.request_timeout,
                )
            });
            let Some(f) = frame.take() else { break };
            match link.tx.send(f) {
                Ok(()) => {
                    self.pending_kv_stream.insert(
                        id,
                        PendingKv {
                            peer,
                            generation: link.generation,
                            deadline: Instant::now() + self.config.request_timeout,
                            reply,
                        },
                    );
                    return;
                }
                Err(mpsc::error::SendError(f)) => {
                    frame = Some(f);
                    p.kv_link = None;
                }
            }
        }
        let _ = reply.send(Err(NetError::Unreachable {
            peer,
            reason: "kv link could not be started".to_string(),
        }));
    }

    /// A kv link ended: forget it and fail what waits on it.
    fn kv_link_broken(&mut self, peer: PeerId, generation: u64, reason: String, opened: bool) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.kv_link.as_ref().map(|l| l.generation) == Some(generation) {
                p.kv_link = None;
            }
        }
        let failed: Vec<u64> = self
            .pending_kv_stream
            .iter()
            .filter(|(_, p)| p.peer == peer && p.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(p) = self.pending_kv_stream.remove(&id) {
                let reason = reason.clone();
                // Never written if the stream never opened: safe to retry elsewhere.
                let err = if opened {
                    NetError::RequestFailed { peer, reason }
                } else {
                    NetError::Unreachable { peer, reason }
                };
                let _ = p.reply.send(Err(err));
            }
        }
    }

    /// Opens or closes the gate (see `gate.rs`), and drops connected peers it now refuses.
    fn set_allowed_peers(&mut self, allowed: Option<HashSet<PeerId>>) {
        let gate = &mut self.swarm.behaviour_mut().gate;
        gate.set_allowed(allowed);
        let refused: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, p)| !p.connections.is_empty() && !gate.admits(peer))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in refused {
            log::info!("disconnecting {peer}: no longer allowed (not in the registry)");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn set_cluster_id(&mut self, id: Option<u64>) {
        self.cluster_id = id;
        let mut foreign = Vec::new();
        for (peer, p) in &mut self.peers {
            // A peer refused under the old id may be a member under the new one.
            p.foreign_since = None;
            if let Some(h) = &p.hello {
                if !same_cluster(&self.config.cluster_name, id, &h.cluster_name, h.cluster_id) {
                    foreign.push((*peer, h.cluster_name.clone(), h.cluster_id));
                }
            }
        }
        for (peer, name, cid) in foreign {
            self.mark_foreign(peer, name, cid);
        }
        let connected: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.connections.is_empty() && p.foreign_since.is_none())
            .map(|(peer, _)| *peer)
            .collect();
        for peer in connected {
            self.send_hello(peer);
        }
    }

    // ---------------------------------------------------------------- swarm events

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                self.emit(NetEvent::Listening { addr: address });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                log::debug!("connection to {peer_id} closed: {cause:?}");
                self.on_disconnected(peer_id, connection_id, num_established);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                log::debug!("dial of {peer_id:?} failed: {error}");
                self.join_dials.remove(&connection_id);
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        target: addr.to_string(),
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                log::debug!("incoming connection failed: {error}");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let now = Instant::now();
        if let Some((_, reply)) = self.pending_dials.remove(&id) {
            let _ = reply.send(Ok(peer));
        }
        if let Some(addr) = self.join_dials.remove(&id) {
            self.dialer.join_reached(&addr);
        }
        let p = self.peers.entry(peer).or_default();
        if let ConnectedPoint::Dialer { address, .. } = &endpoint {
            p.remember_addr(address.clone());
        }
        let first = p.connections.is_empty();
        p.connections.insert(id);
        if first {
            p.connected_since = Some(now);
            self.send_hello(peer);
        }
    }

    fn on_disconnected(&mut self, peer: PeerId, id: ConnectionId, remaining: u32) {
        let unreachable = !self.dialer.knows(&peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.connections.remove(&id);
        if remaining > 0 || !p.connections.is_empty() {
            return;
        }
        p.connected_since = None;
        p.verified = false;
        // Held requests die with their connection (their channels are dropped).
        let released: usize = p.held.drain(..).map(|h| h.len()).sum();
        self.held_total = self.held_total.saturating_sub(released);
        if unreachable {
            // Nobody will reconnect to it: what waits for it can only fail.
            let dropped = p.outbox.clear();
            if dropped > 0 {
                self.out.push_back(NetEvent::RaftSendFailed {
                    peer,
                    batches: dropped,
                    reason: NetError::NotConnected(peer).to_string(),
                });
            }
            self.fail_parked(peer, || NetError::NotConnected(peer));
        }
        if self.detector.connection_lost(&peer) == Some(Liveness::Suspect) {
            self.emit(NetEvent::PeerSuspect { peer });
        }
    }

    fn send_hello(&mut self, peer: PeerId) {
        let hello = HelloFrame::V1(self.local_hello());
        match encode(&hello) {
            Ok(frame) => {
                self.swarm
                    .behaviour_mut()
                    .hello
                    .send_request(&peer, Frame::Data(frame));
            }
            Err(e) => log::warn!("cannot encode hello: {e}"),
        }
    }

    fn local_hello(&self) -> Hello {
        Hello {
            cluster_name: self.config.cluster_name.clone(),
            cluster_id: self.cluster_id,
            software_version: self.config.software_version.clone(),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Limits(never) | BehaviourEvent::Gate(never) => match never {},
            BehaviourEvent::Streams(()) => {}
            BehaviourEvent::Raft(event) => self.on_raft_event(event),
            BehaviourEvent::Kv(event) => self.on_kv_event(event),
            BehaviourEvent::Snapshot(event) => self.on_snapshot_event(event),
            BehaviourEvent::Hello(event) => self.on_hello_event(event),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                // Gossipsub forwards a message only once we accept it, so nothing a member
                // would refuse travels further through this node.
                let verdict = self.on_gossip(propagation_source, message);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let now = Instant::now();
                for (peer, addr) in found {
                    if peer == self.local {
                        continue;
                    }
                    // Only the lower PeerId dials at once; the other waits a little, so two
                    // nodes that see each other at the same moment do not both dial.
                    let delay = if self.local < peer {
                        Duration::ZERO
                    } else {
                        self.config.reconnect_min * 4
                    };
                    self.dialer.learn(peer, addr, now, delay);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let p = self.peers.entry(peer_id).or_default();
                for addr in info.listen_addrs.into_iter().take(MAX_ADDRS) {
                    p.remember_addr(addr);
                }
                if p.ready() {
                    let addrs = p.addrs.clone();
                    let now = Instant::now();
                    for addr in addrs {
                        self.dialer
                            .learn(peer_id, addr, now, self.config.reconnect_min);
                    }
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            }) => {
                // A dead TCP connection can stay "open" for minutes; close it so the peer is
                // reported suspect and redialed.
                log::debug!("ping to {peer} failed ({e}); closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Ping(_) => {}
        }
    }

    fn on_raft_event(&mut self, event: request_response::Event<Frame, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => match request.into_bytes() {
                    Ok(frame) => self.on_inbound(peer, Held::Raft(frame, channel)),
                    Err(o) => {
                        let reason = self.oversized(peer, "/swarmkv/raft/1", o);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .raft
                            .send_response(channel, ack(Err(reason)));
                    }
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_raw_raft.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                        return;
                    }
                    // Our own Raft frames travel on streams; any other answer is stale.
                    log::trace!(
                        "unexpected raft answer from {peer} ({} bytes)",
                        response.len()
                    );
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_raw_raft.remove(&request_id) {
                    let _ = reply.send(Err(outbound_error(peer, &error)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.inbound_failure(peer, "/swarmkv/raft/1", &error)
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn raft_frame_done(&mut self, peer: PeerId, id: u64, result: Result<(), String>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(batches) = p.outbox.finished(id) else {
            return;
        };
        if let Err(reason) = result {
            self.emit(NetEvent::RaftSendFailed {
                peer,
                batches,
                reason,
            });
        }
        self.pump(peer);
    }

    fn inbound_failure(&mut self, peer: PeerId, protocol: &'static str, error: &InboundFailure) {
        // Timeouts, closed connections and failed response writes: nothing the application can
        // act on (unreadable requests never get here; see `codec::Frame`).
        log::debug!("inbound {protocol} request from {peer} failed: {error}");
    }

    /// Reports an oversized inbound request and returns the refusal sent back.
    fn oversized(&mut self, peer: PeerId, protocol: &'static str, o: OversizedFrame) -> String {
        let reason = o.to_string();
        self.emit(NetEvent::FrameRejected {
            peer,
            protocol,
            reason: reason.clone(),
        });
        reason
    }

    fn on_kv_event(&mut self, event: request_response::Event<Frame, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => match request.into_bytes() {
                    Ok(frame) => self.on_inbound(peer, Held::Kv(frame, channel)),
                    Err(o) => {
                        let reason = self.oversized(peer, "/swarmkv/kv/1", o);
                        let answer = encode(&KvResponseFrame::V1(Err(reason))).unwrap_or_default();
                        let _ = self.swarm.behaviour_mut().kv.send_response(channel, answer);
                    }
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    // Our own kv requests travel on kv streams: only raw ones get answers here.
                    if let Some(reply) = self.pending_raw_kv.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let err = outbound_error(peer, &error);
                if let Some(reply) = self.pending_raw_kv.remove(&request_id) {
                    let _ = reply.send(Err(err));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.inbound_failure(peer, "/swarmkv/kv/1", &error)
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_snapshot_event(&mut self, event: request_response::Event<Frame, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => match request.into_bytes() {
                    Ok(frame) => self.on_inbound(peer, Held::Snapshot(frame, channel)),
                    Err(o) => {
                        let reason = self.oversized(peer, "/swarmkv/snapshot/1", o);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .snapshot
                            .send_response(channel, ack(Err(reason)));
                    }
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((peer, reply)) = self.pending_snapshot.remove(&request_id) {
                        let result = match decode::<Ack>(&response) {
                            Ok(Ack::V1(Ok(()))) => Ok(()),
                            Ok(Ack::V1(Err(reason))) | Err(reason) => {
                                Err(NetError::Rejected { peer, reason })
                            }
                        };
                        let _ = reply.send(result);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, reply)) = self.pending_snapshot.remove(&request_id) {
                    let _ = reply.send(Err(outbound_error(peer, &error)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.inbound_failure(peer, "/swarmkv/snapshot/1", &error)
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_hello_event(&mut self, event: request_response::Event<Frame, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Ok(request) = request.into_bytes() else {
                        // Dropping the channel closes the stream: no answer to a giant hello.
                        log::debug!("oversized hello from {peer}");
                        return;
                    };
                    // Always answer, so a foreign peer learns why it is being dropped.
                    if let Ok(frame) = encode(&HelloFrame::V1(self.local_hello())) {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .hello
                            .send_response(channel, frame);
                    }
                    self.on_hello(peer, &request);
                }
                request_response::Message::Response { response, .. } => {
                    self.on_hello(peer, &response)
                }
            },
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.inbound_failure(peer, "/swarmkv/hello/1", &error)
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                log::debug!("hello to {peer} failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_hello(&mut self, peer: PeerId, frame: &[u8]) {
        let hello = match decode::<HelloFrame>(frame) {
            Ok(HelloFrame::V1(hello)) => hello,
            Err(reason) => {
                self.emit(NetEvent::FrameRejected {
                    peer,
                    protocol: "/swarmkv/hello/1",
                    reason,
                });
                return;
            }
        };
        if same_cluster(
            &self.config.cluster_name,
            self.cluster_id,
            &hello.cluster_name,
            hello.cluster_id,
        ) {
            self.verify(peer, hello);
        } else {
            self.mark_foreign(peer, hello.cluster_name, hello.cluster_id);
        }
    }

    fn verify(&mut self, peer: PeerId, hello: Hello) {
        let now = Instant::now();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.connections.is_empty() {
            return;
        }
        p.hello = Some(hello);
        p.foreign_since = None;
        let newly = !p.verified;
        p.verified = true;
        let held = std::mem::take(&mut p.held);
        let released: usize = held.iter().map(Held::len).sum();
        self.held_total = self.held_total.saturating_sub(released);
        let addrs = p.addrs.clone();
        if newly {
            for addr in addrs {
                self.dialer
                    .learn(peer, addr, now, self.config.reconnect_min);
            }
            self.dialer.connected(&peer);
        }
        if self.detector.heard(peer, now) == Some(Liveness::Up) {
            self.emit(NetEvent::PeerUp { peer });
        }
        for request in held {
            self.deliver(peer, request);
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(p, _, _)| *p == peer);
        self.parked = waiting;
        for (_, _, request) in ready {
            self.dispatch(peer, request);
        }
        self.pump(peer);
    }

    fn mark_foreign(&mut self, peer: PeerId, cluster_name: String, cluster_id: Option<u64>) {
        let now = Instant::now();
        let p = self.peers.entry(peer).or_default();
        let known_before = p.foreign_since.is_some();
        p.foreign_since = Some(now);
        p.verified = false;
        p.hello = None;
        // Dropping held requests drops their channels: the sender sees a refusal.
        let released: usize = p.held.drain(..).map(|h| h.len()).sum();
        self.held_total = self.held_total.saturating_sub(released);
        let dropped = p.outbox.clear();
        if dropped > 0 {
            self.emit(NetEvent::RaftSendFailed {
                peer,
                batches: dropped,
                reason: NetError::ForeignPeer(peer).to_string(),
            });
        }
        self.fail_parked(peer, || NetError::ForeignPeer(peer));
        if matches!(
            self.detector.liveness(&peer),
            Some(Liveness::Up | Liveness::Suspect)
        ) {
            self.emit(NetEvent::PeerDown { peer });
        }
        self.detector.forget(&peer);
        self.dialer.forget(&peer);
        if !known_before {
            log::info!("peer {peer} belongs to cluster {cluster_name} {cluster_id:?}; dropping it");
            self.emit(NetEvent::ForeignPeer {
                peer,
                cluster_name,
                cluster_id,
            });
        }
    }

    /// Fails every request parked for `peer`.
    fn fail_parked(&mut self, peer: PeerId, err: impl Fn() -> NetError) {
        let (gone, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(p, _, _)| *p == peer);
        self.parked = waiting;
        for (_, _, request) in gone {
            request.fail(err());
        }
    }

    fn on_inbound(&mut self, peer: PeerId, request: Held) {
        let p = self.peers.entry(peer).or_default();
        if p.ready() {
            self.deliver(peer, request);
            return;
        }
        let held_bytes: usize = p.held.iter().map(Held::len).sum();
        if p.foreign_since.is_none()
            && p.held.len() < MAX_HELD
            && held_bytes + request.len() <= MAX_HELD_BYTES
            && self.held_total + request.len() <= self.config.max_held_bytes
        {
            self.held_total += request.len();
            p.held.push(request);
            return;
        }
        // Otherwise the request is dropped with its channel: the sender sees a failure. A kv
        // stream's requester only learns it from an answer.
        if let Held::KvStream(id, _, answers) = request {
            let reason = "refused: too much held for a peer that has not said hello".to_string();
            if let Ok(frame) = kv_stream::encode_answer(id, Err(reason)) {
                let _ = answers.send(frame);
            }
        }
    }

    /// Decodes a Raft frame and hands its batches to the application, or reports it refused.
    fn deliver_raft(
        &mut self,
        peer: PeerId,
        frame: &[u8],
        protocol: &'static str,
    ) -> Result<(), String> {
        match decode::<RaftFrame>(frame) {
            Ok(RaftFrame::V1 { batches }) => {
                for batch in batches {
                    self.emit(NetEvent::Raft { peer, batch });
                }
                Ok(())
            }
            Err(reason) => {
                self.emit(NetEvent::FrameRejected {
                    peer,
                    protocol,
                    reason: reason.clone(),
                });
                Err(reason)
            }
        }
    }

    fn deliver(&mut self, peer: PeerId, request: Held) {
        match request {
            Held::Raft(frame, channel) => {
                let result = self.deliver_raft(peer, &frame, "/swarmkv/raft/1");
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .raft
                    .send_response(channel, ack(result));
            }
            Held::RaftStream(frame) => {
                // A frame that does not decode is skipped: the stream stays in step.
                let _ = self.deliver_raft(peer, &frame, RAFT_STREAM_PROTOCOL_NAME);
            }
            Held::Kv(frame, channel) => match decode::<KvRequestFrame>(&frame) {
                Ok(KvRequestFrame::V1 { payload }) => {
                    let responder = KvResponder {
                        to: Responder::Channel {
                            channel,
                            commands: self.weak_commands.upgrade(),
                        },
                    };
                    self.emit(NetEvent::KvRequest {
                        peer,
                        payload,
                        responder,
                    });
                }
                Err(reason) => {
                    self.emit(NetEvent::FrameRejected {
                        peer,
                        protocol: "/swarmkv/kv/1",
                        reason: reason.clone(),
                    });
                    let answer = encode(&KvResponseFrame::V1(Err(reason))).unwrap_or_default();
                    let _ = self.swarm.behaviour_mut().kv.send_response(channel, answer);
                }
            },
            Held::KvStream(id, payload, answers) => self.emit(NetEvent::KvRequest {
                peer,
                payload,
                responder: KvResponder {
                    to: Responder::Stream { id, answers },
                },
            }),
            Held::Snapshot(frame, channel) => {
                let result = match decode::<SnapshotFrame>(&frame) {
                    Ok(SnapshotFrame::V1(chunk)) => {
                        self.emit(NetEvent::SnapshotChunk { peer, chunk });
                        Ok(())
                    }
                    Err(reason) => {
                        self.emit(NetEvent::FrameRejected {
                            peer,
                            protocol: "/swarmkv/snapshot/1",
                            reason: reason.clone(),
                        });
                        Err(reason)
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .snapshot
                    .send_response(channel, ack(result));
            }
        }
    }

    // ---------------------------------------------------------------- membership

    fn publish_heartbeat(&mut self) {
        self.heartbeat_seq += 1;
        let info = PeerInfo {
            peer: self.local,
            listen_addrs: self.swarm.listeners().take(MAX_ADDRS).cloned().collect(),
            cluster_name: self.config.cluster_name.clone(),
            cluster_id: self.cluster_id,
            software_version: self.config.software_version.clone(),
            seq: self.heartbeat_seq,
            app: self.app.clone(),
        };
        let frame = match encode(&HeartbeatFrame::from_info(&info)) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("cannot encode heartbeat: {e}");
                return;
            }
        };
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), frame)
        {
            // Normal while no peer is connected yet.
            log::trace!("heartbeat not published: {e}");
        }
    }

    /// Handles a membership heartbeat and says whether gossipsub may forward it.
    fn on_gossip(&mut self, via: PeerId, message: gossipsub::Message) -> MessageAcceptance {
        if message.topic != self.topic.hash() {
            return MessageAcceptance::Ignore;
        }
        let Some(source) = message.source else {
            return MessageAcceptance::Reject;
        };
        if source == self.local {
            return MessageAcceptance::Ignore;
        }
        // Before any decoding: a member flooding gossip costs a counter, not a decode.
        let now = Instant::now();
        if !self.gossip_rate.allow(via, now) {
            self.on_gossip_over_rate(via, now);
            return MessageAcceptance::Ignore;
        }
        // Only members relay membership: a stranger cannot inject heartbeats.
        if !self.peers.get(&via).is_some_and(|p| p.ready()) {
            log::debug!("ignoring heartbeat relayed by unverified peer {via}");
            return MessageAcceptance::Ignore;
        }
        let info = match decode::<HeartbeatFrame>(&message.data).and_then(|f| f.into_info()) {
            Ok(info) if info.peer == source => info,
            Ok(_) => {
                self.emit(NetEvent::FrameRejected {
                    peer: via,
                    protocol: "heartbeat",
                    reason: format!("heartbeat signed by {source} names another peer"),
                });
                return MessageAcceptance::Reject;
            }
            Err(reason) => {
                self.emit(NetEvent::FrameRejected {
                    peer: via,
                    protocol: "heartbeat",
                    reason,
                });
                return MessageAcceptance::Reject;
            }
        };
        if !same_cluster(
            &self.config.cluster_name,
            self.cluster_id,
            &info.cluster_name,
            info.cluster_id,
        ) {
            if self
                .peers
                .get(&source)
                .is_some_and(|p| !p.connections.is_empty())
            {
                self.mark_foreign(source, info.cluster_name, info.cluster_id);
            }
            return MessageAcceptance::Ignore;
        }
        let now = Instant::now();
        if self.detector.heard(source, now) == Some(Liveness::Up) {
            self.emit(NetEvent::PeerUp { peer: source });
        }
        for addr in info.listen_addrs.iter().take(MAX_ADDRS) {
            self.dialer.learn(source, addr.clone(), now, Duration::ZERO);
        }
        self.emit(NetEvent::Heartbeat { info });
        MessageAcceptance::Accept
    }

    /// Counts a gossip message dropped over `via`'s rate; a peer that keeps far above it
    /// (gossipsub has already decoded and checked the signature of each message, which is
    /// what the flood costs) is disconnected and refused for [`FLOOD_BAN`].
    fn on_gossip_over_rate(&mut self, via: PeerId, now: Instant) {
        let window = GOSSIP_REPORT_EVERY;
        let entry = self.gossip_excess.entry(via).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        let limit = u64::from(self.config.gossip_rate_per_peer) * FLOOD_FACTOR;
        if entry.1 < limit {
            return;
        }
        self.gossip_excess.remove(&via);
        log::warn!(
            "peer {via} sent {limit} gossip messages over its rate ({}/s) within {} s; disconnecting it and refusing it for {} s",
            self.config.gossip_rate_per_peer,
            window.as_secs(),
            FLOOD_BAN.as_secs()
        );
        self.swarm.behaviour_mut().gate.ban(via, now + FLOOD_BAN);
        let _ = self.swarm.disconnect_peer_id(via);
    }

    // ---------------------------------------------------------------- housekeeping

    fn housekeeping(&mut self, now: Instant) {
        if now.saturating_duration_since(self.gossip_report) >= GOSSIP_REPORT_EVERY {
            self.gossip_report = now;
            self.gossip_excess.retain(|_, (since, _)| {
                now.saturating_duration_since(*since) < GOSSIP_REPORT_EVERY
            });
            let dropped = self.gossip_rate.take_dropped();
            if dropped > 0 {
                log::warn!(
                    "dropped {dropped} gossip messages over the per-peer rate limit ({}/s) in the last {} s",
                    self.config.gossip_rate_per_peer,
                    GOSSIP_REPORT_EVERY.as_secs()
                );
            }
            let unreported = self.reject_reports.take_dropped();
            if unreported > 0 {
                log::warn!(
                    "refused {unreported} more malformed or oversized frames in the last {} s (not reported one by one)",
                    GOSSIP_REPORT_EVERY.as_secs()
                );
            }
        }
        let expired: Vec<u64> = self
            .pending_kv_stream
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending_kv_stream.remove(&id) {
                let _ = p.reply.send(Err(NetError::RequestFailed {
                    peer: p.peer,
                    reason: format!("no answer within {:?}", self.config.request_timeout),
                }));
            }
        }
        for (peer, liveness) in self.detector.tick(now) {
            match liveness {
                Liveness::Suspect => self.emit(NetEvent::PeerSuspect { peer }),
                Liveness::Down => {
                    self.emit(NetEvent::PeerDown { peer });
                    if let Some(p) = self.peers.get_mut(&peer) {
                        let dropped = p.outbox.clear();
                        if dropped > 0 {
                            self.out.push_back(NetEvent::RaftSendFailed {
                                peer,
                                batches: dropped,
                                reason: "peer is down".to_string(),
                            });
                        }
                    }
                }
                Liveness::Up => {}
            }
        }

        let mut close = Vec::new();
        for (peer, p) in &self.peers {
            if p.connections.is_empty() {
                continue;
            }
            let foreign_done = p
                .foreign_since
                .is_some_and(|t| now.saturating_duration_since(t) >= FOREIGN_GRACE);
            let hello_late = !p.verified
                && p.connected_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.config.hello_timeout);
            if foreign_done || hello_late {
                close.push(*peer);
            }
        }
        for peer in close {
            let _ = self.swarm.disconnect_peer_id(peer);
        }

        let timeout = self.config.request_timeout;
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, since, _)| now.saturating_duration_since(*since) >= timeout);
        self.parked = waiting;
        for (peer, _, request) in expired {
            request.fail(NetError::Unreachable {
                peer,
                reason: "peer did not become reachable in time".to_string(),
            });
        }

        let swarm = &self.swarm;
        let (peers, joins) = self.dialer.due(now, |p| swarm.is_connected(p));
        for (peer, addrs) in peers {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .allocate_new_port()
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                log::trace!("redial of {peer} not started: {e}");
            }
        }
        for addr in joins {
            let opts = DialOpts::unknown_peer_id()
                .address(addr.clone())
                .allocate_new_port()
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.join_dials.insert(id, addr);
                }
                Err(e) => log::debug!("join dial of {addr} not started: {e}"),
            }
        }

        self.peers.retain(|_, p| {
            !p.connections.is_empty()
                || !p.outbox.is_idle()
                || p.foreign_since
                    .is_some_and(|t| now.saturating_duration_since(t) < FOREIGN_MEMORY)
        });
    }
}

/// Whether an outbound failure means the request never left (safe to retry) or may have been
/// processed by the peer.
fn outbound_error(peer: PeerId, error: &request_response::OutboundFailure) -> NetError {
    use request_response::OutboundFailure as F;
    match error {
        F::DialFailure | F::UnsupportedProtocols => NetError::Unreachable {
            peer,
            reason: error.to_string(),
        },
        _ => NetError::RequestFailed {
            peer,
            reason: error.to_string(),
        },
    }
}

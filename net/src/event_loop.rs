//! The event loop: the one task that owns the swarm, dispatching to one handler per protocol.
//!
//! It `select!`s between swarm events, commands from handles (and from the stream tasks), a
//! housekeeping tick and the heartbeat timer, and hands each to its handler:
//!
//! - `admission.rs`: the hello exchange and the gate; holds inbound frames and parks outbound
//!   requests until a peer has proven its cluster.
//! - `gossip.rs`: the membership heartbeats.
//! - `raft.rs`: Raft batches, on the long-lived Raft streams.
//! - `kv.rs`: client requests, on the long-lived kv streams.
//! - `snapshot.rs`: snapshot chunks.
//! - `housekeeping.rs`: dials, redials, discovery, dead connections, the failure detector.
//!
//! Handlers are synchronous and share what they must through [`Shared`]; where one handler's
//! outcome is another's input (a peer admitted: its held frames go to their protocols' handlers)
//! the loop passes it on. Handlers queue the events they produce; the loop hands them to the
//! application after each step, waiting when the application is slow. That wait is the
//! backpressure: while the loop waits it reads nothing, so senders slow down instead of memory
//! growing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, PeerId, Swarm};
use tokio::sync::mpsc;

use crate::admission::{Admission, Foreign, Held, HelloOutcome, Outbound};
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::gossip::Gossip;
use crate::handle::{Command, RawProtocol, Reply};
use crate::housekeeping::Housekeeping;
use crate::kv::Kv;
use crate::protocol::{encode, SnapshotFrame, KV_STREAM_PROTOCOL, RAFT_STREAM_PROTOCOL};
use crate::raft::Raft;
use crate::shared::Shared;
use crate::snapshot::Snapshots;
use crate::stats::Counters;
use crate::{kv_stream, raft_stream, stream, NetConfig, NetError, NetEvent};

/// How often the failure detector, the redial schedule and the timeouts are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// How long a raw kv stream frame (tests only) waits for what the peer writes back.
const RAW_KV_WAIT: Duration = Duration::from_secs(2);

/// Owns the swarm; run it on its own task with `tokio::spawn(event_loop.run())`.
///
/// It stops when every [`crate::NetHandle`] has been dropped or on
/// [`crate::NetHandle::shutdown`]; dropping it closes every connection.
pub struct EventLoop {
    shared: Shared,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    stopping: Option<Reply<()>>,
    admission: Admission,
    gossip: Gossip,
    raft: Raft,
    kv: Kv,
    snapshots: Snapshots,
    housekeeping: Housekeeping,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        weak_commands: mpsc::WeakSender<Command>,
        events: mpsc::Sender<NetEvent>,
        config: NetConfig,
        counters: Arc<Counters>,
    ) -> Self {
        let now = Instant::now();
        Self {
            gossip: Gossip::new(&config, now),
            housekeeping: Housekeeping::new(now),
            shared: Shared::new(swarm, config, weak_commands, counters, now),
            commands,
            events,
            stopping: None,
            admission: Admission::default(),
            raft: Raft::default(),
            kv: Kv::default(),
            snapshots: Snapshots::default(),
        }
    }

    /// Runs until every handle is dropped or shutdown is requested.
    pub async fn run(mut self) {
        let config = &self.shared.config;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let light_client = config.light_client;
        if !light_client {
            self.accept_streams();
        }
        loop {
            tokio::select! {
                event = self.shared.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = housekeeping.tick() => self.housekeeping(Instant::now()),
                _ = heartbeat.tick(), if !light_client => self.gossip.publish(&mut self.shared),
            }
            while let Some(event) = self.shared.next_event() {
                if self.events.send(event).await.is_err() {
                    // Nobody listens any more; keep serving handles without events.
                    self.shared.clear_events();
                }
            }
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(Ok(()));
                break;
            }
        }
        log::debug!("net event loop of {} stopped", self.shared.local);
    }

    /// Starts the tasks that take the peers' Raft and kv streams (a light client serves
    /// nothing).
    fn accept_streams(&self) {
        let sh = &self.shared;
        // Errors are only possible if a protocol were registered twice; frames then fail to
        // reach us and our peers report it, as for an unreachable node.
        if let Err(e) = raft_stream::spawn_acceptor(
            sh.streams.clone(),
            sh.commands.clone(),
            sh.config.max_raft_frame,
        ) {
            log::error!("{e}");
        }
        if let Err(e) = kv_stream::spawn_acceptor(
            sh.streams.clone(),
            sh.commands.clone(),
            sh.config.max_kv_frame,
            Arc::clone(&sh.counters.kv),
        ) {
            log::error!("{e}");
        }
    }

    fn on_command(&mut self, command: Command) {
        let sh = &mut self.shared;
        match command {
            Command::SendRaft { peer, batch } => self.raft.queue(sh, &self.admission, peer, batch),
            Command::RaftWritten { peer, id, result } => {
                self.raft.written(sh, &self.admission, peer, id, result)
            }
            Command::RaftInbound { peer, frame } => self.inbound(peer, Held::Raft(frame)),
            Command::StreamFrameRefused {
                peer,
                protocol,
                reason,
            } => sh.reject(peer, protocol, reason),
            Command::KvAnswer { peer, id, result } => self.kv.answer(peer, id, result),
            Command::KvLinkBroken {
                peer,
                generation,
                reason,
                opened,
            } => self.kv.link_broken(peer, generation, reason, opened),
            Command::KvStreamRequest {
                peer,
                id,
                payload,
                answers,
            } => self.inbound(
                peer,
                Held::Kv {
                    id,
                    payload,
                    answers,
                },
            ),
            Command::Kv {
                peer,
                payload,
                reply,
            } => self.outbound(peer, Outbound::Kv(payload, reply)),
            Command::Snapshot { peer, chunk, reply } => match encode(&SnapshotFrame::V1(chunk)) {
                Ok(frame) => self.outbound(peer, Outbound::Snapshot(frame, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Raw {
                peer,
                protocol,
                bytes,
                reply,
            } => self.outbound(peer, Outbound::Raw(protocol, bytes, reply)),
            Command::Dial { addr, reply } => self.housekeeping.dial(sh, addr, reply),
            Command::SetClusterId { id, reply } => {
                for foreign in self.admission.set_cluster_id(sh, id) {
                    self.foreign(foreign);
                }
                self.admission.greet_connected(&mut self.shared);
                let _ = reply.send(Ok(()));
            }
            Command::SetAppPayload { app, reply } => {
                self.gossip.set_app_payload(app);
                let _ = reply.send(Ok(()));
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(Ok(sh.swarm.listeners().cloned().collect()));
            }
            Command::ClusterPeers { reply } => {
                let _ = reply.send(Ok(self.admission.ready_peers()));
            }
            Command::Shutdown { reply } => self.stopping = Some(reply),
            Command::SetAllowedPeers { allowed, reply } => {
                self.admission.set_allowed_peers(sh, allowed);
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let sh = &mut self.shared;
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                sh.emit(NetEvent::Listening { addr: address });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.housekeeping.on_connected(sh, peer_id, connection_id);
                self.admission
                    .on_connected(sh, peer_id, connection_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                log::debug!("connection to {peer_id} closed: {cause:?}");
                let gone =
                    self.admission
                        .on_disconnected(sh, peer_id, connection_id, num_established);
                if gone {
                    // Nobody will reconnect to it: what waits for it can only fail.
                    self.raft
                        .drop_queued(sh, peer_id, NetError::NotConnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self
                .housekeeping
                .on_dial_failed(connection_id, peer_id, &error),
            SwarmEvent::IncomingConnectionError { error, .. } => {
                log::debug!("incoming connection failed: {error}");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        let sh = &mut self.shared;
        match event {
            BehaviourEvent::Limits(never) | BehaviourEvent::Gate(never) => match never {},
            BehaviourEvent::Streams(()) => {}
            BehaviourEvent::Hello(event) => match self.admission.on_hello_event(sh, event) {
                Some(HelloOutcome::Admitted { peer, held, parked }) => {
                    self.gossip.greet(sh, &self.admission, &peer);
                    for frame in held {
                        self.deliver(peer, frame);
                    }
                    for request in parked {
                        self.send(peer, request);
                    }
                    self.raft.pump(&mut self.shared, &self.admission, peer);
                }
                Some(HelloOutcome::Foreign(foreign)) => self.foreign(foreign),
                None => {}
            },
            BehaviourEvent::Snapshot(event) => {
                if let Some((peer, chunk)) = self.snapshots.on_event(sh, event) {
                    self.inbound(peer, chunk);
                }
            }
            BehaviourEvent::Gossipsub(event) => {
                if let Some(foreign) = self.gossip.on_event(sh, &self.admission, event) {
                    self.foreign(foreign);
                }
            }
            BehaviourEvent::Mdns(event) => self.housekeeping.on_mdns(sh, event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.admission
                    .remember_addrs(sh, peer_id, info.listen_addrs);
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(event) => self.housekeeping.on_ping(sh, event),
        }
    }

    /// An inbound frame: delivered by its protocol's handler once its peer is admitted.
    fn inbound(&mut self, peer: PeerId, frame: Held) {
        let max_held_bytes = self.shared.config.max_held_bytes;
        if let Some(frame) = self.admission.inbound(max_held_bytes, peer, frame) {
            self.deliver(peer, frame);
        }
    }

    fn deliver(&mut self, peer: PeerId, frame: Held) {
        let sh = &mut self.shared;
        match frame {
            Held::Raft(frame) => self.raft.deliver(sh, peer, &frame),
            Held::Kv {
                id,
                payload,
                answers,
            } => self.kv.deliver(sh, peer, id, payload, answers),
            Held::Snapshot(frame, channel) => self.snapshots.deliver(sh, peer, &frame, channel),
        }
    }

    /// An outbound request: sent by its protocol's handler once its peer is admitted.
    fn outbound(&mut self, peer: PeerId, request: Outbound) {
        if let Some(request) = self.admission.outbound(&mut self.shared, peer, request) {
            self.send(peer, request);
        }
    }

    fn send(&mut self, peer: PeerId, request: Outbound) {
        let sh = &mut self.shared;
        match request {
            Outbound::Kv(payload, reply) => self.kv.send(sh, peer, payload, reply),
            Outbound::Snapshot(frame, reply) => self.snapshots.send(sh, peer, frame, reply),
            Outbound::Raw(RawProtocol::Snapshot, bytes, reply) => {
                self.snapshots.send_raw(sh, peer, bytes, reply)
            }
            Outbound::Raw(
                protocol @ (RawProtocol::RaftStream | RawProtocol::KvStream),
                bytes,
                reply,
            ) => {
                let (protocol, wait) = match protocol {
                    RawProtocol::KvStream => (KV_STREAM_PROTOCOL, RAW_KV_WAIT),
                    _ => (RAFT_STREAM_PROTOCOL, Duration::ZERO),
                };
                let control = sh.streams.clone();
                tokio::spawn(async move {
                    let sent = stream::send_raw(control, peer, protocol, bytes, wait).await;
                    let _ = reply.send(sent);
                });
            }
        }
    }

    /// A peer of another cluster: nothing queued for it will be delivered.
    fn foreign(&mut self, foreign: Foreign) {
        let sh = &mut self.shared;
        let peer = foreign.peer;
        self.raft.drop_queued(sh, peer, NetError::ForeignPeer(peer));
        self.admission.mark_foreign(sh, foreign);
    }

    fn housekeeping(&mut self, now: Instant) {
        let sh = &mut self.shared;
        self.gossip.tick(sh, now);
        self.kv.tick(sh, &self.admission, now);
        for peer in self.housekeeping.tick(sh, now) {
            self.raft.drop_queued(sh, peer, "peer is down");
        }
        self.admission.tick(sh, now);
        self.raft.retain(&self.admission);
    }
}

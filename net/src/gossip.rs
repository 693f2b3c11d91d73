//! The membership handler: heartbeats published on and read from the cluster's gossipsub
//! topic (addresses, version, the application's payload), feeding the failure detector.
//!
//! Only members relay membership: a heartbeat relayed by a peer that has not proven its
//! cluster is ignored, and a member relaying more than its rate is dropped before decoding
//! and, far above it, disconnected and refused for a while. Gossipsub forwards a message only
//! once we accept it, so nothing a member would refuse travels further through this node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::PeerId;

use crate::admission::{Admission, Foreign, MAX_ADDRS};
use crate::membership::Liveness;
use crate::protocol::{decode, encode, heartbeat_topic, HeartbeatFrame, PeerInfo};
use crate::rate::RateLimiter;
use crate::shared::Shared;
use crate::{NetConfig, NetEvent};

/// A peer whose gossip exceeds its rate by this many times its per-second allowance within
/// one report window is a flooder...
const FLOOD_FACTOR: u64 = 10;
/// ...and is disconnected and refused for this long.
const FLOOD_BAN: Duration = Duration::from_secs(60);
/// How often gossip dropped by the rate limit is summed up in the log.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The protocol name frame refusals of heartbeats carry.
const HEARTBEAT: &str = "heartbeat";

pub(crate) struct Gossip {
    topic: IdentTopic,
    /// The sequence number of our last heartbeat.
    seq: u64,
    /// The application's payload in our heartbeats.
    app: Vec<u8>,
    /// Gossip messages each relaying peer may make us process.
    rate: RateLimiter,
    /// Gossip dropped over the rate per peer in the current window: (window start, count).
    excess: HashMap<PeerId, (Instant, u64)>,
    /// When dropped gossip was last reported in the log.
    reported: Instant,
}

impl Gossip {
    pub(crate) fn new(config: &NetConfig, now: Instant) -> Self {
        Self {
            topic: IdentTopic::new(heartbeat_topic(&config.cluster_name)),
            seq: 0,
            app: Vec::new(),
            rate: RateLimiter::new(config.gossip_rate_per_peer),
            excess: HashMap::new(),
            reported: now,
        }
    }

    /// Sets the payload of the next heartbeats.
    pub(crate) fn set_app_payload(&mut self, app: Vec<u8>) {
        self.app = app;
    }

    /// Publishes our heartbeat: on the heartbeat timer, and at once when a peer becomes able
    /// to take it ([`Gossip::greet`]), so that nodes starting together hear each other as
    /// soon as they connect rather than up to a heartbeat interval later: formation waits on
    /// that (`core/control/formation.rs` in the node).
    pub(crate) fn publish(&mut self, sh: &mut Shared) {
        self.seq += 1;
        let info = PeerInfo {
            peer: sh.local,
            listen_addrs: sh.swarm.listeners().take(MAX_ADDRS).cloned().collect(),
            cluster_name: sh.config.cluster_name.clone(),
            cluster_id: sh.cluster_id,
            software_version: sh.config.software_version.clone(),
            seq: self.seq,
            app: self.app.clone(),
        };
        let frame = match encode(&HeartbeatFrame::from_info(&info)) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("cannot encode heartbeat: {e}");
                return;
            }
        };
        if let Err(e) = sh
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), frame)
        {
            // Normal while no peer is connected yet.
            log::trace!("heartbeat not published: {e}");
        }
    }

    /// Publishes our heartbeat at once if `peer` can now take it: it has proven its cluster
    /// and subscribed to the membership topic (this is called on both, as they come in
    /// either order). A light client publishes nothing.
    pub(crate) fn greet(&mut self, sh: &mut Shared, admission: &Admission, peer: &PeerId) {
        let topic = self.topic.hash();
        let subscribed = sh
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .any(|(p, topics)| p == peer && topics.contains(&&topic));
        if subscribed && admission.ready(peer) && !sh.config.light_client {
            self.publish(sh);
        }
    }

    /// Handles a gossipsub event: a heartbeat is checked, reported and accepted or refused
    /// for forwarding. Returns the connected peer it shows to be of another cluster, if so.
    pub(crate) fn on_event(
        &mut self,
        sh: &mut Shared,
        admission: &Admission,
        event: gossipsub::Event,
    ) -> Option<Foreign> {
        if let gossipsub::Event::Subscribed { peer_id, .. } = event {
            self.greet(sh, admission, &peer_id);
            return None;
        }
        let gossipsub::Event::Message {
            propagation_source: via,
            message_id,
            message,
        } = event
        else {
            return None;
        };
        let (verdict, foreign) = self.on_message(sh, admission, via, message);
        let _ = sh
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &via, verdict);
        foreign
    }

    fn on_message(
        &mut self,
        sh: &mut Shared,
        admission: &Admission,
        via: PeerId,
        message: gossipsub::Message,
    ) -> (MessageAcceptance, Option<Foreign>) {
        if message.topic != self.topic.hash() {
            return (MessageAcceptance::Ignore, None);
        }
        let Some(source) = message.source else {
            return (MessageAcceptance::Reject, None);
        };
        if source == sh.local {
            return (MessageAcceptance::Ignore, None);
        }
        // Before any decoding: a member flooding gossip costs a counter, not a decode.
        let now = Instant::now();
        if !self.rate.allow(via, now) {
            self.over_rate(sh, via, now);
            return (MessageAcceptance::Ignore, None);
        }
        // Only members relay membership: a stranger cannot inject heartbeats.
        if !admission.ready(&via) {
            log::debug!("ignoring heartbeat relayed by unverified peer {via}");
            return (MessageAcceptance::Ignore, None);
        }
        let info = match decode::<HeartbeatFrame>(&message.data).and_then(|f| f.into_info()) {
            Ok(info) if info.peer == source => info,
            Ok(_) => {
                let reason = format!("heartbeat signed by {source} names another peer");
                sh.reject(via, HEARTBEAT, reason);
                return (MessageAcceptance::Reject, None);
            }
            Err(reason) => {
                sh.reject(via, HEARTBEAT, reason);
                return (MessageAcceptance::Reject, None);
            }
        };
        if !sh.same_cluster(&info.cluster_name, info.cluster_id) {
            let foreign = admission.connected(&source).then_some(Foreign {
                peer: source,
                cluster_name: info.cluster_name,
                cluster_id: info.cluster_id,
            });
            return (MessageAcceptance::Ignore, foreign);
        }
        if sh.detector.heard(source, now) == Some(Liveness::Up) {
            sh.emit(NetEvent::PeerUp { peer: source });
        }
        for addr in info.listen_addrs.iter().take(MAX_ADDRS) {
            sh.dialer.learn(source, addr.clone(), now, Duration::ZERO);
        }
        sh.emit(NetEvent::Heartbeat { info });
        (MessageAcceptance::Accept, None)
    }

    /// Counts a gossip message dropped over `via`'s rate; a peer that keeps far above it
    /// (gossipsub has already decoded and checked the signature of each message, which is
    /// what the flood costs) is disconnected and refused for [`FLOOD_BAN`].
    fn over_rate(&mut self, sh: &mut Shared, via: PeerId, now: Instant) {
        let entry = self.excess.entry(via).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= REPORT_EVERY {
            *entry = (now, 0);
        }
        entry.1 += 1;
        let rate = sh.config.gossip_rate_per_peer;
        let limit = u64::from(rate) * FLOOD_FACTOR;
        if entry.1 < limit {
            return;
        }
        self.excess.remove(&via);
        log::warn!(
            "peer {via} sent {limit} gossip messages over its rate ({rate}/s) within {} s; disconnecting it and refusing it for {} s",
            REPORT_EVERY.as_secs(),
            FLOOD_BAN.as_secs()
        );
        sh.swarm.behaviour_mut().gate.ban(via, now + FLOOD_BAN);
        let _ = sh.swarm.disconnect_peer_id(via);
    }

    /// Sums up dropped gossip in the log once per [`REPORT_EVERY`] and ends old windows.
    pub(crate) fn tick(&mut self, sh: &Shared, now: Instant) {
        if now.saturating_duration_since(self.reported) < REPORT_EVERY {
            return;
        }
        self.reported = now;
        self.excess
            .retain(|_, (since, _)| now.saturating_duration_since(*since) < REPORT_EVERY);
        let dropped = self.rate.take_dropped();
        if dropped > 0 {
            log::warn!(
                "dropped {dropped} gossip messages over the per-peer rate limit ({}/s) in the last {} s",
                sh.config.gossip_rate_per_peer,
                REPORT_EVERY.as_secs()
            );
        }
    }
}

//! What the protocol handlers share: the swarm, the configuration, the failure detector, the
//! redial schedule and the events waiting for the application.
//!
//! The event loop owns one [`Shared`] and lends it to whichever handler it dispatches to, so
//! each handler keeps only its own protocol's state and nothing is locked.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use libp2p::{PeerId, Swarm};
use tokio::sync::mpsc;

use crate::behaviour::Behaviour;
use crate::dialer::Dialer;
use crate::handle::Command;
use crate::membership::FailureDetector;
use crate::protocol::same_cluster;
use crate::rate::RateLimiter;
use crate::stats::Counters;
use crate::{NetConfig, NetEvent};

/// Frame refusals per second and peer handed to the application (bursts of twice that).
const REJECT_REPORTS_PER_SEC: u32 = 5;

pub(crate) struct Shared {
    pub swarm: Swarm<Behaviour>,
    pub config: NetConfig,
    pub local: PeerId,
    /// Our cluster id, once the cluster has formed (see [`crate::NetHandle::set_cluster_id`]).
    pub cluster_id: Option<u64>,
    /// Up / Suspect / Down of every cluster peer.
    pub detector: FailureDetector,
    /// Which peers and join addresses to redial, and when.
    pub dialer: Dialer,
    /// Opens the peers' long-lived streams.
    pub streams: libp2p_stream::Control,
    /// Where the stream tasks report; weak, so the loop still stops once every handle is gone.
    pub commands: mpsc::WeakSender<Command>,
    /// What the stream tasks write, also read by the handles.
    pub counters: Arc<Counters>,
    /// Events for the application, handed over after each step of the loop.
    out: VecDeque<NetEvent>,
    /// Frame refusals reported to the application per peer (the rest are counted).
    reject_reports: RateLimiter,
}

impl Shared {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: NetConfig,
        commands: mpsc::WeakSender<Command>,
        counters: Arc<Counters>,
        now: Instant,
    ) -> Self {
        let streams = swarm.behaviour().streams.new_control();
        Self {
            local: *swarm.local_peer_id(),
            swarm,
            cluster_id: config.cluster_id,
            detector: FailureDetector::new(config.suspect_timeout, config.down_timeout),
            dialer: Dialer::new(
                &config.join_addrs,
                config.reconnect_min,
                config.reconnect_max,
                now,
            ),
            config,
            streams,
            commands,
            counters,
            out: VecDeque::new(),
            reject_reports: RateLimiter::new(REJECT_REPORTS_PER_SEC),
        }
    }

    /// Queues an event for the application.
    pub(crate) fn emit(&mut self, event: NetEvent) {
        // A peer sending garbage in a loop must not turn into one event (and one log line
        // in the application) per frame: past a few a second, refusals are only counted.
        if let NetEvent::FrameRejected { peer, .. } = &event {
            if !self.reject_reports.allow(*peer, Instant::now()) {
                return;
            }
        }
        self.out.push_back(event);
    }

    /// Reports a frame from `peer` refused for `reason`.
    pub(crate) fn reject(&mut self, peer: PeerId, protocol: &'static str, reason: String) {
        log::debug!("{protocol} frame from {peer} refused: {reason}");
        self.emit(NetEvent::FrameRejected {
            peer,
            protocol,
            reason,
        });
    }

    /// The oldest event not handed to the application yet.
    pub(crate) fn next_event(&mut self) -> Option<NetEvent> {
        self.out.pop_front()
    }

    /// Drops the queued events (nobody listens any more).
    pub(crate) fn clear_events(&mut self) {
        self.out.clear();
    }

    /// How many frame refusals were counted but not reported since the last call.
    pub(crate) fn take_unreported_rejects(&mut self) -> u64 {
        self.reject_reports.take_dropped()
    }

    /// Whether a peer announcing this cluster name and id belongs to our cluster.
    pub(crate) fn same_cluster(&self, name: &str, id: Option<u64>) -> bool {
        same_cluster(&self.config.cluster_name, self.cluster_id, name, id)
    }
}

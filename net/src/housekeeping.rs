//! The housekeeping handler: keeping connections to the cluster. Explicit and join dials,
//! redials with backoff (`dialer.rs`), discovery (mDNS), dead connections (ping), and the
//! failure detector's timeouts (`membership.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{mdns, ping, Multiaddr, PeerId};

use crate::gossip::REPORT_EVERY;
use crate::handle::Reply;
use crate::membership::Liveness;
use crate::shared::Shared;
use crate::{NetError, NetEvent};

pub(crate) struct Housekeeping {
    /// Dials from [`crate::NetHandle::dial`], answered once connected or failed.
    dials: HashMap<ConnectionId, (Multiaddr, Reply<PeerId>)>,
    /// Dials of join addresses (whose PeerId is unknown until they answer).
    join_dials: HashMap<ConnectionId, Multiaddr>,
    /// When unreported frame refusals were last summed up in the log.
    reported: Instant,
}

impl Housekeeping {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            dials: HashMap::new(),
            join_dials: HashMap::new(),
            reported: now,
        }
    }

    /// Dials `addr`; `reply` gets the PeerId that answers.
    pub(crate) fn dial(&mut self, sh: &mut Shared, addr: Multiaddr, reply: Reply<PeerId>) {
        let opts = DialOpts::unknown_peer_id()
            .address(addr.clone())
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        match sh.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (addr, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    target: addr.to_string(),
                    reason: e.to_string(),
                }));
            }
        }
    }

    /// A connection is up: answers the dial that made it, if any.
    pub(crate) fn on_connected(&mut self, sh: &mut Shared, peer: PeerId, id: ConnectionId) {
        if let Some((_, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Ok(peer));
        }
        if let Some(addr) = self.join_dials.remove(&id) {
            sh.dialer.join_reached(&addr);
        }
    }

    /// A dial failed.
    pub(crate) fn on_dial_failed(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        error: &DialError,
    ) {
        log::debug!("dial of {peer:?} failed: {error}");
        self.join_dials.remove(&id);
        if let Some((addr, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Err(NetError::Dial {
                target: addr.to_string(),
                reason: error.to_string(),
            }));
        }
    }

    /// Peers found by mDNS go to the dialer.
    pub(crate) fn on_mdns(&mut self, sh: &mut Shared, event: mdns::Event) {
        let mdns::Event::Discovered(found) = event else {
            return;
        };
        let now = Instant::now();
        for (peer, addr) in found {
            if peer == sh.local {
                continue;
            }
            // Only the lower PeerId dials at once; the other waits a little, so two nodes that
            // see each other at the same moment do not both dial.
            let delay = if sh.local < peer {
                Duration::ZERO
            } else {
                sh.config.reconnect_min * 4
            };
            sh.dialer.learn(peer, addr, now, delay);
        }
    }

    /// A failed ping closes its connection: a dead TCP connection can stay "open" for
    /// minutes, and closing it lets the peer be reported suspect and redialed.
    pub(crate) fn on_ping(&mut self, sh: &mut Shared, event: ping::Event) {
        if let Err(e) = event.result {
            log::debug!(
                "ping to {} failed ({e}); closing the connection",
                event.peer
            );
            sh.swarm.close_connection(event.connection);
        }
    }

    /// Runs the failure detector (emitting Suspect and Down) and the due redials. Returns the
    /// peers that just went down.
    pub(crate) fn tick(&mut self, sh: &mut Shared, now: Instant) -> Vec<PeerId> {
        if now.saturating_duration_since(self.reported) >= REPORT_EVERY {
            self.reported = now;
            let unreported = sh.take_unreported_rejects();
            if unreported > 0 {
                log::warn!(
                    "refused {unreported} more malformed or oversized frames in the last {} s (not reported one by one)",
                    REPORT_EVERY.as_secs()
                );
            }
        }
        let mut down = Vec::new();
        for (peer, liveness) in sh.detector.tick(now) {
            match liveness {
                Liveness::Suspect => sh.emit(NetEvent::PeerSuspect { peer }),
                Liveness::Down => {
                    sh.emit(NetEvent::PeerDown { peer });
                    down.push(peer);
                }
                Liveness::Up => {}
            }
        }

        let swarm = &sh.swarm;
        let (peers, joins) = sh.dialer.due(now, |p| swarm.is_connected(p));
        for (peer, addrs) in peers {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .allocate_new_port()
                .build();
            if let Err(e) = sh.swarm.dial(opts) {
                log::trace!("redial of {peer} not started: {e}");
            }
        }
        for addr in joins {
            let opts = DialOpts::unknown_peer_id()
                .address(addr.clone())
                .allocate_new_port()
                .build();
            let id = opts.connection_id();
            match sh.swarm.dial(opts) {
                Ok(()) => {
                    self.join_dials.insert(id, addr);
                }
                Err(e) => log::debug!("join dial of {addr} not started: {e}"),
            }
        }
        down
    }
}

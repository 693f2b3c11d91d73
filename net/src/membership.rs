//! Failure detector: turns heartbeats heard and connections lost into liveness changes.
//!
//! Pure state with time passed in (no clock, no IO), so its rules are unit-tested directly.
//! Rules: any sign of life (heartbeat, hello) makes a peer Up. A peer whose last connection
//! closes becomes Suspect at once. A peer not heard from for `suspect_timeout` becomes Suspect,
//! and for `down_timeout` becomes Down. A Down peer comes back Up when heard from again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Liveness of a peer as judged by the local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently.
    Up,
    /// Silent for a while, or its connection closed: may be gone.
    Suspect,
    /// Silent for longer than the down timeout.
    Down,
}

#[derive(Debug)]
struct Entry {
    last_heard: Instant,
    state: Liveness,
}

/// Tracks every peer ever heard from, with the time it was last heard.
#[derive(Debug)]
pub(crate) struct FailureDetector {
    peers: HashMap<PeerId, Entry>,
    suspect_timeout: Duration,
    down_timeout: Duration,
}

impl FailureDetector {
    pub(crate) fn new(suspect_timeout: Duration, down_timeout: Duration) -> Self {
        Self {
            peers: HashMap::new(),
            suspect_timeout,
            down_timeout,
        }
    }

    /// Records a sign of life; returns `Some(Up)` if the peer was not Up before.
    pub(crate) fn heard(&mut self, peer: PeerId, now: Instant) -> Option<Liveness> {
        let entry = self.peers.entry(peer).or_insert(Entry {
            last_heard: now,
            state: Liveness::Down,
        });
        entry.last_heard = entry.last_heard.max(now);
        if entry.state == Liveness::Up {
            None
        } else {
            entry.state = Liveness::Up;
            Some(Liveness::Up)
        }
    }

    /// The last connection to `peer` closed; an Up peer becomes Suspect.
    pub(crate) fn connection_lost(&mut self, peer: &PeerId) -> Option<Liveness> {
        let entry = self.peers.get_mut(peer)?;
        if entry.state == Liveness::Up {
            entry.state = Liveness::Suspect;
            Some(Liveness::Suspect)
        } else {
            None
        }
    }

    /// Forgets a peer (foreign, or decommissioned); no more events about it.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Current liveness of a peer, `None` if never heard from.
    pub(crate) fn liveness(&self, peer: &PeerId) -> Option<Liveness> {
        self.peers.get(peer).map(|e| e.state)
    }

    /// Applies the timeouts; returns the transitions in no particular order.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<(PeerId, Liveness)> {
        let mut changes = Vec::new();
        for (peer, entry) in &mut self.peers {
            let silent = now.saturating_duration_since(entry.last_heard);
            let target = if silent >= self.down_timeout {
                Liveness::Down
            } else if silent >= self.suspect_timeout {
                Liveness::Suspect
            } else {
                continue;
            };
            let worse = matches!(
                (entry.state, target),
                (Liveness::Up, Liveness::Suspect | Liveness::Down)
                    | (Liveness::Suspect, Liveness::Down)
            );
            if worse {
                entry.state = target;
                changes.push((*peer, target));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> FailureDetector {
        FailureDetector::new(Duration::from_secs(3), Duration::from_secs(8))
    }

    #[test]
    fn silence_makes_a_peer_suspect_then_down_and_a_heartbeat_brings_it_back() {
        let mut fd = detector();
        let p = PeerId::random();
        let t0 = Instant::now();
        assert_eq!(fd.heard(p, t0), Some(Liveness::Up));
        assert_eq!(fd.heard(p, t0 + Duration::from_secs(1)), None);
        assert!(fd.tick(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(
            fd.tick(t0 + Duration::from_secs(4)),
            vec![(p, Liveness::Suspect)]
        );
        assert!(fd.tick(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            fd.tick(t0 + Duration::from_secs(9)),
            vec![(p, Liveness::Down)]
        );
        assert!(fd.tick(t0 + Duration::from_secs(20)).is_empty());
        assert_eq!(
            fd.heard(p, t0 + Duration::from_secs(21)),
            Some(Liveness::Up)
        );
    }

    #[test]
    fn a_long_gap_goes_straight_to_down() {
        let mut fd = detector();
        let p = PeerId::random();
        let t0 = Instant::now();
        fd.heard(p, t0);
        assert_eq!(
            fd.tick(t0 + Duration::from_secs(60)),
            vec![(p, Liveness::Down)]
        );
    }

    #[test]
    fn a_lost_connection_makes_an_up_peer_suspect_at_once() {
        let mut fd = detector();
        let p = PeerId::random();
        let t0 = Instant::now();
        fd.heard(p, t0);
        assert_eq!(fd.connection_lost(&p), Some(Liveness::Suspect));
        assert_eq!(fd.connection_lost(&p), None);
        assert_eq!(fd.liveness(&p), Some(Liveness::Suspect));
        assert_eq!(fd.connection_lost(&PeerId::random()), None);
    }
}

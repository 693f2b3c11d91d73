//! Who to dial and when: known cluster peers and join addresses, with exponential backoff.
//!
//! mDNS reports a peer once and never dials, and a lost connection is not re-established by
//! libp2p, so the node redials known cluster peers itself. Pure state with time passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// At most this many addresses are remembered per peer (newest kept).
const MAX_ADDRS_PER_PEER: usize = 8;

#[derive(Debug)]
struct Known {
    addrs: Vec<Multiaddr>,
    backoff: Duration,
    next_dial: Instant,
}

#[derive(Debug)]
struct JoinTarget {
    addr: Multiaddr,
    backoff: Duration,
    next_dial: Instant,
    reached: bool,
}

/// Redial schedule for cluster peers and join addresses.
#[derive(Debug)]
pub(crate) struct Dialer {
    peers: HashMap<PeerId, Known>,
    joins: Vec<JoinTarget>,
    min: Duration,
    max: Duration,
}

impl Dialer {
    pub(crate) fn new(
        join_addrs: &[Multiaddr],
        min: Duration,
        max: Duration,
        now: Instant,
    ) -> Self {
        Self {
            peers: HashMap::new(),
            joins: join_addrs
                .iter()
                .map(|addr| JoinTarget {
                    addr: addr.clone(),
                    backoff: min,
                    next_dial: now,
                    reached: false,
                })
                .collect(),
            min,
            max,
        }
    }

    /// Remembers an address of a cluster peer; the first dial happens after `delay`.
    pub(crate) fn learn(&mut self, peer: PeerId, addr: Multiaddr, now: Instant, delay: Duration) {
        let min = self.min;
        let known = self.peers.entry(peer).or_insert_with(|| Known {
            addrs: Vec::new(),
            backoff: min,
            next_dial: now + delay,
        });
        if !known.addrs.contains(&addr) {
            if known.addrs.len() >= MAX_ADDRS_PER_PEER {
                known.addrs.remove(0);
            }
            known.addrs.push(addr);
        }
    }

    /// Whether any address is known for the peer.
    pub(crate) fn knows(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|k| !k.addrs.is_empty())
    }

    /// Makes the next dial of a known peer due now (someone wants to talk to it).
    pub(crate) fn hurry(&mut self, peer: &PeerId, now: Instant) {
        if let Some(known) = self.peers.get_mut(peer) {
            known.next_dial = known.next_dial.min(now);
        }
    }

    /// A connection to the peer was established: the next loss starts from a short backoff.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        if let Some(known) = self.peers.get_mut(peer) {
            known.backoff = self.min;
        }
    }

    /// Forgets a peer (foreign or decommissioned): it is not redialed any more.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// A join address was reached; it is not dialed again (its peer is known from then on).
    pub(crate) fn join_reached(&mut self, addr: &Multiaddr) {
        for join in &mut self.joins {
            if &join.addr == addr {
                join.reached = true;
            }
        }
    }

    /// Peers and join addresses whose dial is due. `is_connected` filters peers that are
    /// connected already. Each returned target is rescheduled with a doubled backoff.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> (Vec<(PeerId, Vec<Multiaddr>)>, Vec<Multiaddr>) {
        let mut peers = Vec::new();
        for (peer, known) in &mut self.peers {
            if known.next_dial > now || known.addrs.is_empty() || is_connected(peer) {
                continue;
            }
            peers.push((*peer, known.addrs.clone()));
            known.next_dial = now + known.backoff;
            known.backoff = (known.backoff * 2).min(self.max);
        }
        let mut joins = Vec::new();
        for join in &mut self.joins {
            if join.reached || join.next_dial > now {
                continue;
            }
            joins.push(join.addr.clone());
            join.next_dial = now + join.backoff;
            join.backoff = (join.backoff * 2).min(self.max);
        }
        (peers, joins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets_on_connect() -> anyhow::Result<()> {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Dialer::new(&[], ms(100), ms(350), t0);
        let p = PeerId::random();
        d.learn(p, "/ip4/127.0.0.1/tcp/1".parse()?, t0, Duration::ZERO);
        let due_at = |d: &mut Dialer, t| d.due(t, |_| false).0.len();
        assert_eq!(due_at(&mut d, t0), 1);
        assert_eq!(due_at(&mut d, t0 + ms(99)), 0);
        assert_eq!(due_at(&mut d, t0 + ms(100)), 1); // next after 200
        assert_eq!(due_at(&mut d, t0 + ms(299)), 0);
        assert_eq!(due_at(&mut d, t0 + ms(300)), 1); // next after 350 (capped)
        assert_eq!(due_at(&mut d, t0 + ms(650)), 1);
        d.connected(&p);
        assert_eq!(due_at(&mut d, t0 + ms(1000)), 1); // next after 100 again
        assert_eq!(due_at(&mut d, t0 + ms(1100)), 1);
        Ok(())
    }

    #[test]
    fn connected_peers_and_reached_joins_are_not_dialed() -> anyhow::Result<()> {
        let t0 = Instant::now();
        let join: Multiaddr = "/ip4/127.0.0.1/tcp/2".parse()?;
        let mut d = Dialer::new(
            std::slice::from_ref(&join),
            Duration::from_millis(10),
            Duration::from_secs(1),
            t0,
        );
        let p = PeerId::random();
        d.learn(p, "/ip4/127.0.0.1/tcp/1".parse()?, t0, Duration::ZERO);
        let (peers, joins) = d.due(t0, |_| true);
        assert!(peers.is_empty());
        assert_eq!(joins, vec![join.clone()]);
        d.join_reached(&join);
        let (_, joins) = d.due(t0 + Duration::from_secs(5), |_| true);
        assert!(joins.is_empty());
        d.forget(&p);
        assert!(!d.knows(&p));
        Ok(())
    }
}

//! Per-peer token buckets, sans-IO: how many messages a peer may make us process per second.
//!
//! Gossip is the one input every connected member can push at will (request-response has
//! one stream per request and the yamux stream limit; gossip is fire-and-forget). A bucket
//! per relaying peer holds `2 x rate` tokens and refills `rate` a second; a message without a
//! token is dropped before it is decoded, so a flooding peer costs us a counter increment per
//! message instead of a decode, a signature check downstream and an event.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// Peers tracked at most: buckets of peers that have gone quiet are dropped first.
const MAX_PEERS: usize = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by peer.
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<PeerId, Bucket>,
    /// Messages dropped since the last [`RateLimiter::take_dropped`].
    dropped: u64,
}

impl RateLimiter {
    /// `rate` messages a second per peer, bursts of twice that.
    pub fn new(rate: u32) -> RateLimiter {
        let rate = f64::from(rate.max(1));
        RateLimiter {
            rate,
            burst: rate * 2.0,
            buckets: HashMap::new(),
            dropped: 0,
        }
    }

    /// Takes a token for one message from `peer`; `false` means drop the message.
    pub fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.buckets.len() >= MAX_PEERS && !self.buckets.contains_key(&peer) {
            // Forget buckets that are full again: those peers are within their rate.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_PEERS {
                // Every tracked peer is busy: cannot happen with the connection limits
                // (relaying peers are connected peers); start over rather than grow.
                self.buckets.clear();
            }
        }
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// How many messages were dropped since the last call (for a periodic log line).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let mut limiter = RateLimiter::new(10);
        let flooder = PeerId::random();
        let honest = PeerId::random();
        let t0 = Instant::now();
        let first = (0..100).filter(|_| limiter.allow(flooder, t0)).count();
        assert_eq!(first, 20, "the burst is twice the rate");
        assert!(limiter.allow(honest, t0), "another peer has its own bucket");
        let t1 = t0 + Duration::from_secs(1);
        let next = (0..100).filter(|_| limiter.allow(flooder, t1)).count();
        assert_eq!(next, 10, "one second refills the rate");
        assert_eq!(limiter.take_dropped(), 170);
        assert_eq!(limiter.take_dropped(), 0);
    }

    #[test]
    fn the_number_of_buckets_is_bounded() {
        let mut limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        for _ in 0..MAX_PEERS * 2 {
            limiter.allow(PeerId::random(), t0);
        }
        assert!(limiter.buckets.len() <= MAX_PEERS);
        // Once the tracked peers are back within their rate, a new peer makes room.
        limiter.allow(PeerId::random(), t0 + Duration::from_secs(10));
        assert!(limiter.buckets.len() <= 2);
    }
}

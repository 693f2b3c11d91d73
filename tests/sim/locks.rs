//! Simulated lock holders, built the way `Client::lock` is: a lease, a candidacy in the
//! election named `lock:` plus the lock's name, a linearizable read of the election's leader
//! to learn that the candidacy holds the lock, keep-alives, and a resignation after a while.
//! A holder believes it holds from the answer that says so until it sends its resignation, or
//! until its lease's local deadline (when the last grant or keep-alive that succeeded was
//! sent, plus the TTL) less a safety margin, as the CLI's `lock` and `elect` stop. Those
//! beliefs are spans of virtual time; two holders' spans never overlap, and each new holder's
//! fencing token is larger than every earlier one's.

use rand::rngs::StdRng;
use rand::Rng;
use swarmkv::core::{
    ClientError, ElectionRequest, LeaseId, LeaseRequest, NodeId, Reply, RequestId, Response,
};

/// The lock every lock client competes for.
pub const LOCK: &str = "lock:sim";
/// How long a call may go unanswered before the client gives up on it.
const CALL_TIMEOUT_MS: u64 = 3_000;

/// A call of a lock client.
#[derive(Clone, Debug)]
pub enum LockCall {
    Lease(LeaseRequest),
    Election(ElectionRequest),
}

/// A span of virtual time during which `client` believed it held the lock with `token`.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    pub client: u64,
    pub token: u64,
    pub from: u64,
    pub to: u64,
}

/// A client that takes, holds and gives back the lock, over and over.
pub struct LockClient {
    pub id: u64,
    ttl_ms: u64,
    lease: Option<LeaseId>,
    /// The lease's local deadline.
    deadline: u64,
    last_keepalive: u64,
    token: Option<u64>,
    /// Holding since, and until when it means to hold.
    holding: Option<(u64, u64)>,
    /// The call in flight: its request id, what it asks, when it was sent, and when the
    /// client gives up on it (an answer that comes later belongs to no call and is ignored).
    in_flight: Option<(RequestId, LockCall, u64, u64)>,
    next_at: u64,
    /// The node that answered last (the meta leader, most likely).
    pub hint: Option<NodeId>,
    pub holds: Vec<Hold>,
}

impl LockClient {
    pub fn new(id: u64, ttl_ms: u64) -> LockClient {
        LockClient {
            id,
            ttl_ms,
            lease: None,
            deadline: 0,
            last_keepalive: 0,
            token: None,
            holding: None,
            in_flight: None,
            next_at: 0,
            hint: None,
            holds: Vec::new(),
        }
    }

    /// The belief ends this long before the lease's local deadline.
    fn margin(&self) -> u64 {
        self.ttl_ms / 10
    }

    /// Ends the current hold at `at`, if there is one.
    fn release(&mut self, at: u64) {
        if let (Some((from, _)), Some(token)) = (self.holding.take(), self.token) {
            self.holds.push(Hold {
                client: self.id,
                token,
                from,
                to: at.max(from),
            });
        }
    }

    /// The lease is gone (or its deadline passed): the hold ends by its deadline at the
    /// latest, and the client starts over with a new lease.
    fn lose_lease(&mut self, now: u64) {
        let end = now.min(self.deadline.saturating_sub(self.margin()));
        self.release(end);
        self.lease = None;
        self.token = None;
    }

    /// Whether the client has nothing in flight and holds nothing.
    pub fn idle(&self) -> bool {
        self.in_flight.is_none() && self.holding.is_none()
    }

    /// The next call to send at `now`, as request `rid`, if any (`issuing`: the workload is
    /// still running; once it stops, a holder resigns and the client starts nothing new).
    pub fn poll(
        &mut self,
        now: u64,
        rng: &mut StdRng,
        issuing: bool,
        rid: RequestId,
    ) -> Option<LockCall> {
        if self.lease.is_some() && now + self.margin() >= self.deadline {
            self.lose_lease(now);
        }
        if let Some((_, _, _, give_up)) = &self.in_flight {
            if now < *give_up {
                return None;
            }
            self.in_flight = None;
        }
        if now < self.next_at {
            return None;
        }
        let call = match (self.lease, self.token, self.holding) {
            (None, _, _) if !issuing => return None,
            (None, _, _) => LockCall::Lease(LeaseRequest::Grant {
                ttl_ms: self.ttl_ms,
            }),
            (Some(lease), Some(token), Some((_, until))) if now >= until || !issuing => {
                self.release(now);
                LockCall::Election(ElectionRequest::Resign {
                    name: LOCK.into(),
                    token,
                    lease,
                })
            }
            (Some(_), _, None) if !issuing => return None,
            (Some(id), _, _) if now >= self.last_keepalive + self.ttl_ms / 3 => {
                self.last_keepalive = now;
                LockCall::Lease(LeaseRequest::KeepAlive { id })
            }
            (Some(lease), None, _) => LockCall::Election(ElectionRequest::Campaign {
                name: LOCK.into(),
                value: self.id.to_be_bytes().to_vec(),
                lease,
            }),
            (Some(_), Some(_), Some(_)) => return None,
            (Some(_), Some(_), None) => {
                self.next_at = now + rng.gen_range(20..200);
                LockCall::Election(ElectionRequest::Leader { name: LOCK.into() })
            }
        };
        self.in_flight = Some((rid, call.clone(), now, now + CALL_TIMEOUT_MS));
        Some(call)
    }

    /// Takes the answer from `node` to request `rid`, if that is the call in flight.
    pub fn on_answer(
        &mut self,
        now: u64,
        node: NodeId,
        rid: RequestId,
        reply: &Reply,
        rng: &mut StdRng,
    ) {
        if !matches!(&self.in_flight, Some((r, ..)) if *r == rid) {
            return;
        }
        let Some((_, call, sent, _)) = self.in_flight.take() else {
            return;
        };
        match reply {
            Err(ClientError::NotLeader { leader }) => self.hint = *leader,
            Err(_) => {}
            Ok(_) => self.hint = Some(node),
        }
        let retry = |c: &mut LockClient, rng: &mut StdRng| c.next_at = now + rng.gen_range(20..200);
        match (call, reply) {
            (LockCall::Lease(LeaseRequest::Grant { .. }), Ok(Response::Lease(info))) => {
                self.lease = Some(info.id);
                self.deadline = sent + self.ttl_ms;
                self.last_keepalive = sent;
            }
            (LockCall::Lease(LeaseRequest::KeepAlive { id }), Ok(Response::Lease(info)))
                if Some(id) == self.lease && info.remaining_ms > 0 =>
            {
                self.deadline = self.deadline.max(sent + self.ttl_ms);
            }
            (LockCall::Lease(LeaseRequest::KeepAlive { id }), Ok(_))
            | (
                LockCall::Lease(LeaseRequest::KeepAlive { id }),
                Err(ClientError::LeaseNotFound(_)),
            ) if Some(id) == self.lease => {
                self.lose_lease(now);
            }
            (
                LockCall::Election(ElectionRequest::Campaign { lease, .. }),
                Ok(Response::Election(Some(c))),
            ) if Some(lease) == self.lease => self.token = Some(c.token),
            (
                LockCall::Election(ElectionRequest::Campaign { lease, .. }),
                Err(ClientError::LeaseNotFound(_)),
            ) if Some(lease) == self.lease => self.lose_lease(now),
            (LockCall::Election(ElectionRequest::Leader { .. }), Ok(Response::Election(l))) => {
                let mine = l
                    .as_ref()
                    .is_some_and(|c| Some(c.token) == self.token && Some(c.lease) == self.lease);
                if mine && self.holding.is_none() && now + self.margin() < self.deadline {
                    self.holding = Some((now, now + rng.gen_range(300..3_000)));
                }
            }
            (LockCall::Election(ElectionRequest::Resign { token, .. }), Ok(_))
                if Some(token) == self.token =>
            {
                self.token = None;
                self.next_at = now + rng.gen_range(100..1_000);
            }
            _ => retry(self, rng),
        }
    }

    /// Ends an open hold at the end of the run.
    pub fn finish(&mut self, now: u64) {
        let end = now.min(self.deadline.saturating_sub(self.margin()));
        self.release(end);
    }
}

/// Checks the holds of every client: no two overlap, and tokens increase from one holder to
/// the next (a client that holds again with the same candidacy keeps its token).
pub fn check(mut holds: Vec<Hold>) -> Result<(), String> {
    holds.sort_by_key(|h| (h.from, h.to));
    for w in holds.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.from < a.to {
            return Err(format!("two holders at once: {a:?} and {b:?}"));
        }
        let same = a.client == b.client && a.token == b.token;
        if !same && b.token <= a.token {
            return Err(format!(
                "a later holder has a token no larger than an earlier one's: {a:?} then {b:?}"
            ));
        }
    }
    Ok(())
}

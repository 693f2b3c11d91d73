//! Leader election in the Rust client: campaign on a kept-alive lease, hold a [`Leadership`]
//! that reports its loss at once, proclaim, resign, ask who leads, observe the leaders.
//!
//! # When the application may act as the leader
//! [`Leadership::is_leader`] is true from the moment [`Client::campaign`] returns until the
//! earliest of: [`Leadership::resign`] (false before the resignation is sent), the loss of the
//! lease reported by its keep-alive, the candidate's record seen gone (someone revoked the
//! lease or resigned for it), and the lease's *client-local deadline*: the send time of the
//! last confirmed keep-alive (or of the grant) plus the TTL. The cluster expires the lease no
//! earlier than that deadline, and the next leader is elected only after the cluster deleted
//! this candidate's record, so no two candidates are ever leaders at the same instant (the
//! argument is in `core::election`). `is_leader` compares the deadline with the clock when it
//! is called, so it turns false on time even when the background watcher is late.
//!
//! Every request is idempotent: a campaign is one candidacy per (election, lease), a resend of
//! a resignation of a gone candidate succeeds, and reads are reads. So requests are retried
//! after any failure until the client's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::{KeepAlive, KeepAliveState, LeaseLost};
use super::{unexpected, Client, Transport};
use crate::core::election::MAX_OBSERVE_WAIT_MS;
use crate::core::{Candidate, ClientError, ElectionRequest, LeaseId, Reply, Response};
use crate::wire::{Answer, Call};

/// Why a campaign ended without leadership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// The candidate's lease was lost (or may have expired): it stopped campaigning.
    #[error("the lease was lost while campaigning: {0:?}")]
    LeaseLost(LeaseLost),
    /// The candidate's record is gone (resigned or deleted with its lease elsewhere).
    #[error("the candidate was removed from the election before it was elected")]
    Removed,
    /// The cluster refused or did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Why a leadership ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// [`Leadership::resign`] was called.
    Resigned,
    /// The lease's keep-alive reported it gone or unconfirmed for a TTL.
    LeaseLost(LeaseLost),
    /// No keep-alive was confirmed in time: the client-local deadline passed.
    DeadlineMissed,
    /// The election's leader is no longer this candidate (its record is gone).
    Replaced,
}

/// The end of a leadership: why, and the instant from which the application had to stop
/// acting as the leader ([`Leadership::is_leader`] was false from then on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadershipLoss {
    pub reason: LossReason,
    pub at: Instant,
}

/// The leadership of one election, held while its lease is kept alive. Dropping it stops the
/// watcher but does not resign: the candidacy then ends with the lease (or call
/// [`Leadership::resign`]).
pub struct Leadership {
    client: Arc<Client>,
    me: Candidate,
    ttl: Duration,
    lease: watch::Receiver<KeepAliveState>,
    loss_tx: Arc<watch::Sender<Option<LeadershipLoss>>>,
    loss: watch::Receiver<Option<LeadershipLoss>>,
    watcher: JoinHandle<()>,
}

fn election_answer(reply: Reply) -> Result<Option<Candidate>, ClientError> {
    match reply? {
        Response::Election(c) => Ok(c),
        other => Err(unexpected(other)),
    }
}

/// The lease's client-local deadline as the keep-alive last reported it.
fn lease_deadline(lease: &watch::Receiver<KeepAliveState>, ttl: Duration) -> Instant {
    lease.borrow().last_sent + ttl
}

/// Resolves when the lease is lost or its local deadline passes, with the reason and the
/// instant the leadership (or campaign) had to end.
async fn lease_end(mut lease: watch::Receiver<KeepAliveState>, ttl: Duration) -> LeadershipLoss {
    loop {
        let deadline = lease_deadline(&lease, ttl);
        let now = Instant::now();
        if let Some(l) = lease.borrow_and_update().lost.clone() {
            return LeadershipLoss {
                reason: LossReason::LeaseLost(l),
                at: now.min(deadline),
            };
        }
        if now >= deadline {
            return LeadershipLoss {
                reason: LossReason::DeadlineMissed,
                at: deadline,
            };
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            changed = lease.changed() => {
                if changed.is_err() {
                    // The keep-alive task is gone (its handle dropped): nothing renews the
                    // lease any more; the deadline stands.
                    tokio::time::sleep_until(deadline.into()).await;
                    return LeadershipLoss {
                        reason: LossReason::DeadlineMissed,
                        at: deadline,
                    };
                }
            }
        }
    }
}

impl Client {
    async fn election_once(&self, req: ElectionRequest) -> Reply {
        match &self.transport {
            Transport::Local(h) => h.election(req).await,
            Transport::Remote { .. } => {
                match self.remote_call(Call::Election { req, hops: 0 }).await? {
                    Answer::Reply(r) => r,
                    Answer::Malformed(m) => Err(ClientError::BadRequest(m)),
                    other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
                }
            }
            Transport::Http(h) => h.election(&req).await,
        }
    }

    /// Sends an election request, retrying refusals and ambiguous failures until the
    /// client's deadline (every election request is idempotent).
    async fn election_call(&self, req: ElectionRequest) -> Result<Option<Candidate>, ClientError> {
        let until = Instant::now() + self.deadline;
        let mut backoff = Duration::from_millis(20);
        loop {
            let reply = self.election_once(req.clone()).await;
            let retry = matches!(&reply, Err(e) if e.is_retryable() || e.is_ambiguous());
            if !retry || Instant::now() + backoff > until {
                return election_answer(reply);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Enters election `name` with `value` on `lease` and returns the candidate record at
    /// once, elected or not (its token says its place in line). A lease already in the
    /// election gets its existing record back. [`Client::campaign`] is the usual entry.
    pub async fn join_election(
        &self,
        name: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<Candidate, ClientError> {
        let req = ElectionRequest::Campaign {
            name: name.to_string(),
            value: value.to_vec(),
            lease,
        };
        self.election_call(req).await?.ok_or_else(|| {
            ClientError::Disconnected("the campaign was answered without a candidate".into())
        })
    }

    /// Waits until candidate `me` leads its election and returns its record as read then.
    /// `Err(NotLeading)` when the record is gone (resigned, or its lease ended). Waits as long
    /// as it takes: bound it with the lease (as [`Client::campaign`] does) or a timeout.
    pub async fn wait_for_leadership(&self, me: &Candidate) -> Result<Candidate, ClientError> {
        let mut known = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.observe_once(&me.name, known, None).await {
                Ok(Some(c)) if c.token == me.token => return Ok(c),
                // Someone campaigned earlier and still leads: wait for the next change.
                Ok(Some(c)) if c.token < me.token => {
                    known = Some((c.token, c.revision));
                    backoff = Duration::from_millis(20);
                }
                // No leader, or a later candidate leads: this record is gone.
                Ok(_) => {
                    return Err(ClientError::NotLeading {
                        name: me.name.clone(),
                        token: me.token,
                    })
                }
                Err(e) => {
                    log::debug!("election {}: waiting for leadership: {e}", me.name);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Campaigns in election `name` with `value`, on the lease `lease` keeps alive, and
    /// resolves when this candidate leads: waiting candidates are served in the order they
    /// campaigned. Ends with [`CampaignError::LeaseLost`] as soon as the lease is lost or its
    /// local deadline passes (the candidacy is withdrawn, best effort; it ends with the lease
    /// anyway). Dropping the future leaves the candidacy in line until the lease ends.
    pub async fn campaign(
        self: &Arc<Self>,
        name: &str,
        value: &[u8],
        lease: &KeepAlive,
    ) -> Result<Leadership, CampaignError> {
        let ttl = lease.ttl();
        let state = lease.subscribe();
        let lease_id = lease.id();
        let campaign = async {
            let me = self.join_election(name, value, lease_id).await?;
            match self.wait_for_leadership(&me).await {
                Ok(c) => Ok(c),
                Err(ClientError::NotLeading { .. }) => Err(CampaignError::Removed),
                Err(e) => Err(CampaignError::Client(e)),
            }
        };
        let elected = tokio::select! {
            r = campaign => r?,
            end = lease_end(state.clone(), ttl) => {
                let reason = match end.reason {
                    LossReason::LeaseLost(l) => l,
                    _ => LeaseLost::Unconfirmed {
                        error: ClientError::Timeout,
                    },
                };
                self.withdraw(name, lease_id);
                return Err(CampaignError::LeaseLost(reason));
            }
        };
        if Instant::now() >= lease_deadline(&state, ttl) {
            // Elected by a read that came back after the lease's local deadline: the cluster
            // may already have expired the lease, so this candidate must not lead.
            self.withdraw(name, lease_id);
            return Err(CampaignError::LeaseLost(LeaseLost::Unconfirmed {
                error: ClientError::Timeout,
            }));
        }
        Ok(Leadership::start(Arc::clone(self), elected, ttl, state))
    }

    /// Resigns the candidacy of `lease` in `name` in the background, best effort (it ends
    /// with the lease in any case).
    fn withdraw(self: &Arc<Self>, name: &str, lease: LeaseId) {
        let client = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move {
            if let Ok(Some(c)) = client
                .election_call(ElectionRequest::Leader { name: name.clone() })
                .await
            {
                if c.lease == lease {
                    let _ = client.resign(&name, c.token, lease).await;
                    return;
                }
            }
            // Not the leader: find the record by campaigning again (idempotent per lease).
            if let Ok(c) = client.join_election(&name, &[], lease).await {
                let _ = client.resign(&name, c.token, lease).await;
            }
        });
    }

    /// Replaces the value of candidate `token` (on `lease`) of `name`, which must lead it:
    /// `Err(NotLeading)` otherwise. Returns the record as written.
    pub async fn proclaim(
        &self,
        name: &str,
        token: u64,
        lease: LeaseId,
        value: &[u8],
    ) -> Result<Candidate, ClientError> {
        let req = ElectionRequest::Proclaim {
            name: name.to_string(),
            token,
            lease,
            value: value.to_vec(),
        };
        self.election_call(req)
            .await?
            .ok_or_else(|| ClientError::NotLeading {
                name: name.to_string(),
                token,
            })
    }

    /// Withdraws candidate `token` (on `lease`) from `name`: the next candidate in line is
    /// elected if it led. Succeeds when the candidate is already gone.
    pub async fn resign(&self, name: &str, token: u64, lease: LeaseId) -> Result<(), ClientError> {
        let req = ElectionRequest::Resign {
            name: name.to_string(),
            token,
            lease,
        };
        self.election_call(req).await.map(|_| ())
    }

    /// The leader of election `name` (a linearizable read), if it has one.
    pub async fn leader(&self, name: &str) -> Result<Option<Candidate>, ClientError> {
        self.election_call(ElectionRequest::Leader {
            name: name.to_string(),
        })
        .await
    }

    /// One long poll: the leader of `name` once it is not `known` (token, revision), or after
    /// `wait` (at most 2 s, the default) whatever it is.
    pub async fn observe_once(
        &self,
        name: &str,
        known: Option<(u64, u64)>,
        wait: Option<Duration>,
    ) -> Result<Option<Candidate>, ClientError> {
        let wait_ms = wait.map_or(MAX_OBSERVE_WAIT_MS, |w| {
            (w.as_millis() as u64).min(MAX_OBSERVE_WAIT_MS)
        });
        self.election_call(ElectionRequest::Observe {
            name: name.to_string(),
            known,
            wait_ms,
        })
        .await
    }

    /// The leaders of election `name` as they change: [`Observer::next`] yields the current
    /// leader first, then each new leader (or new value, or no leader) once.
    pub fn observe(self: &Arc<Self>, name: &str) -> Observer {
        Observer {
            client: Arc::clone(self),
            name: name.to_string(),
            known: None,
            started: false,
        }
    }
}

/// A stream of the leaders of one election (see [`Client::observe`]).
pub struct Observer {
    client: Arc<Client>,
    name: String,
    known: Option<(u64, u64)>,
    started: bool,
}

impl Observer {
    /// The next leader: the current one on the first call, then the next change (a new
    /// leader, a proclaimed value, or no leader). Errors when the cluster did not answer
    /// within the client's deadline; calling again resumes.
    pub async fn next(&mut self) -> Result<Option<Candidate>, ClientError> {
        loop {
            let leader = if self.started {
                self.client
                    .observe_once(&self.name, self.known, None)
                    .await?
            } else {
                self.client.leader(&self.name).await?
            };
            let now = leader.as_ref().map(|c| (c.token, c.revision));
            if !self.started || now != self.known {
                self.started = true;
                self.known = now;
                return Ok(leader);
            }
        }
    }
}

impl Leadership {
    fn start(
        client: Arc<Client>,
        me: Candidate,
        ttl: Duration,
        lease: watch::Receiver<KeepAliveState>,
    ) -> Leadership {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let watcher = tokio::spawn(watch_leadership(
            Arc::clone(&client),
            me.clone(),
            ttl,
            lease.clone(),
            Arc::clone(&tx),
        ));
        Leadership {
            client,
            me,
            ttl,
            lease,
            loss_tx: tx,
            loss: rx,
            watcher,
        }
    }

    /// The fencing token of this leadership: larger than every earlier leader's of the same
    /// election. Pass it to the resources the leader writes to, and let them refuse smaller
    /// ones.
    pub fn token(&self) -> u64 {
        self.me.token
    }

    /// The record as elected (or last proclaimed).
    pub fn candidate(&self) -> &Candidate {
        &self.me
    }

    /// Until when this leadership holds at the latest, unless a keep-alive confirms the
    /// lease again: the lease's client-local deadline.
    pub fn valid_until(&self) -> Instant {
        lease_deadline(&self.lease, self.ttl)
    }

    /// Whether this candidate leads now. Checked against the lease's local deadline at the
    /// call, so it is false from the deadline on even before the watcher noticed.
    pub fn is_leader(&self) -> bool {
        self.loss.borrow().is_none() && Instant::now() < self.valid_until()
    }

    /// The loss, once the leadership ended.
    pub fn loss(&self) -> Option<LeadershipLoss> {
        self.loss.borrow().clone()
    }

    /// Resolves when the leadership ends (at once if it has).
    pub async fn lost(&mut self) -> LeadershipLoss {
        self.lost_before(Duration::ZERO).await
    }

    /// Resolves when the leadership ends, or `margin` before the lease's local deadline,
    /// whichever comes first; the leadership counts as lost from then on
    /// ([`Leadership::is_leader`] is false). A process that must have stopped acting as the
    /// leader by the deadline (a child it has to terminate, a clock that may run slow) gives
    /// itself that margin.
    pub async fn lost_before(&mut self, margin: Duration) -> LeadershipLoss {
        loop {
            if let Some(l) = self.loss.borrow_and_update().clone() {
                return l;
            }
            let now = Instant::now();
            let stop = self.valid_until().checked_sub(margin).unwrap_or(now);
            if now >= stop {
                return self.end(LossReason::DeadlineMissed, stop);
            }
            tokio::select! {
                changed = self.loss.changed() => {
                    if changed.is_err() {
                        // Cannot happen while `self` holds the sender; stop at the deadline.
                        tokio::time::sleep_until(stop.into()).await;
                        return self.end(LossReason::DeadlineMissed, stop);
                    }
                }
                // A confirmed keep-alive moves the deadline on: the loop looks again.
                _ = tokio::time::sleep_until(stop.into()) => {}
            }
        }
    }

    /// Records the end of the leadership (the first one recorded stands).
    fn end(&self, reason: LossReason, at: Instant) -> LeadershipLoss {
        self.loss_tx.send_if_modified(|l| {
            if l.is_none() {
                *l = Some(LeadershipLoss { reason, at });
                true
            } else {
                false
            }
        });
        self.loss.borrow().clone().unwrap_or(LeadershipLoss {
            reason: LossReason::DeadlineMissed,
            at,
        })
    }

    /// Replaces the leader's value. `Err(NotLeading)` when this candidate no longer leads
    /// (checked here against the local deadline, and by the cluster against its record).
    pub async fn proclaim(&mut self, value: &[u8]) -> Result<(), ClientError> {
        if !self.is_leader() {
            return Err(ClientError::NotLeading {
                name: self.me.name.clone(),
                token: self.me.token,
            });
        }
        let c = self
            .client
            .proclaim(&self.me.name, self.me.token, self.me.lease, value)
            .await?;
        self.me = c;
        Ok(())
    }

    /// Gives the leadership up: [`Leadership::is_leader`] turns false before the
    /// resignation is sent (the instant is in [`Leadership::loss`]), and the next candidate
    /// in line is elected once it applied. Resigning again is harmless.
    pub async fn resign(&mut self) -> Result<(), ClientError> {
        self.end(LossReason::Resigned, Instant::now());
        self.client
            .resign(&self.me.name, self.me.token, self.me.lease)
            .await
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Watches a leadership until it ends: the lease lost or past its local deadline, or the
/// election's leader seen to be someone else. Records the loss in `loss`.
async fn watch_leadership(
    client: Arc<Client>,
    me: Candidate,
    ttl: Duration,
    lease: watch::Receiver<KeepAliveState>,
    loss: Arc<watch::Sender<Option<LeadershipLoss>>>,
) {
    let record = async {
        let mut known = Some((me.token, me.revision));
        loop {
            match client.observe_once(&me.name, known, None).await {
                Ok(Some(c)) if c.token == me.token => known = Some((c.token, c.revision)),
                Ok(_) => return Instant::now(),
                Err(e) => {
                    log::debug!("election {}: watching the leader: {e}", me.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let end = tokio::select! {
        end = lease_end(lease.clone(), ttl) => end,
        seen = record => LeadershipLoss {
            reason: LossReason::Replaced,
            at: seen.min(lease_deadline(&lease, ttl)),
        },
    };
    loss.send_if_modified(|l| {
        if l.is_none() {
            *l = Some(end);
            true
        } else {
            false
        }
    });
}

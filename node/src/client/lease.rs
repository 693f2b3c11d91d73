//! Leases in the Rust client: grant, keep alive (once, or in the background with loss
//! reported), revoke, time-to-live, and puts attached to a lease.
//!
//! A lease request goes to the node the client talks to, which passes it to the meta leader.
//! Refusals that did nothing are retried until the client's deadline; a grant whose answer was
//! lost is not resent (a second lease would be granted; the first simply expires).

use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmkv_store::{KvError, KvOp, KvOutcome, KvRecord};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{unexpected, Client, Transport};
use crate::core::{ClientError, LeaseId, LeaseInfo, LeaseRequest, Reply, Response};
use crate::wire::{Answer, Call};

/// Why a background keep-alive stopped: the application must assume the lease is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseLost {
    /// The cluster says the lease does not exist any more (expired or revoked).
    Gone,
    /// No keep-alive succeeded for a whole TTL: the lease may have expired. `error` is the
    /// last failure.
    Unconfirmed { error: ClientError },
}

/// A lease kept alive by a background task. Dropping it stops the keep-alives (the lease then
/// expires after its TTL unless revoked).
pub struct KeepAlive {
    id: LeaseId,
    ttl: Duration,
    task: JoinHandle<()>,
    state: watch::Receiver<KeepAliveState>,
}

/// What the background keep-alive knows.
#[derive(Clone, Debug)]
pub(crate) struct KeepAliveState {
    /// When the last keep-alive was confirmed (sent at or after this instant).
    pub(crate) last_sent: Instant,
    pub(crate) lost: Option<LeaseLost>,
}

impl KeepAlive {
    /// The lease kept alive.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// When the last confirmed keep-alive was sent: the lease lives at least a TTL past it.
    pub fn last_confirmed(&self) -> Instant {
        self.state.borrow().last_sent
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The client-local deadline: [`KeepAlive::last_confirmed`] + TTL. The cluster cannot
    /// expire the lease before it (it times the TTL from after the keep-alive was sent).
    pub fn deadline(&self) -> Instant {
        self.last_confirmed() + self.ttl
    }

    /// A view of the keep-alive's state that outlives borrows of the handle (the elections
    /// watch it).
    pub(crate) fn subscribe(&self) -> watch::Receiver<KeepAliveState> {
        self.state.clone()
    }

    /// The loss, if the lease was lost.
    pub fn lost_now(&self) -> Option<LeaseLost> {
        self.state.borrow().lost.clone()
    }

    /// Resolves when the lease is lost (at once if it already is).
    pub async fn lost(&mut self) -> LeaseLost {
        loop {
            if let Some(l) = self.state.borrow_and_update().lost.clone() {
                return l;
            }
            if self.state.changed().await.is_err() {
                // The task ended without a verdict: it was aborted, so nothing keeps the
                // lease alive any more.
                return self
                    .state
                    .borrow()
                    .lost
                    .clone()
                    .unwrap_or(LeaseLost::Unconfirmed {
                        error: ClientError::Disconnected("keep-alive task stopped".into()),
                    });
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lease_info(reply: Reply) -> Result<LeaseInfo, ClientError> {
    match reply? {
        Response::Lease(info) => Ok(info),
        other => Err(unexpected(other)),
    }
}

impl Client {
    async fn lease_once(&self, req: LeaseRequest) -> Reply {
        match &self.transport {
            Transport::Local(h) => h.lease(req).await,
            Transport::Remote { .. } => {
                match self.remote_call(Call::Lease { req, hops: 0 }).await? {
                    Answer::Reply(r) => r,
                    Answer::Malformed(m) => Err(ClientError::BadRequest(m)),
                    other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
                }
            }
        }
    }

    /// Sends a lease request, retrying what is safe until `deadline` passes: refusals always,
    /// ambiguous failures for every request but a grant (keep-alive and revoke are
    /// idempotent).
    async fn lease_call(&self, req: LeaseRequest, deadline: Duration) -> Reply {
        let until = Instant::now() + deadline;
        let resendable = !matches!(req, LeaseRequest::Grant { .. });
        let mut backoff = Duration::from_millis(20);
        loop {
            let reply = self.lease_once(req.clone()).await;
            let retry = match &reply {
                Err(e) if e.is_retryable() => true,
                Err(e) if e.is_ambiguous() => resendable,
                _ => false,
            };
            if !retry || Instant::now() + backoff > until {
                return reply;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Grants a lease of `ttl` (rounded to ms, at least 1 ms).
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseInfo, ClientError> {
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        lease_info(
            self.lease_call(LeaseRequest::Grant { ttl_ms }, self.deadline)
                .await,
        )
    }

    /// Restarts the lease's TTL once. `LeaseNotFound` when it expired or was revoked.
    pub async fn keep_alive_once(&self, id: LeaseId) -> Result<LeaseInfo, ClientError> {
        lease_info(
            self.lease_call(LeaseRequest::KeepAlive { id }, self.deadline)
                .await,
        )
    }

    /// Revokes the lease: its keys are deleted. `LeaseNotFound` when it does not exist.
    pub async fn revoke(&self, id: LeaseId) -> Result<(), ClientError> {
        lease_info(
            self.lease_call(LeaseRequest::Revoke { id }, self.deadline)
                .await,
        )
        .map(|_| ())
    }

    /// The lease's TTL and time left, as the meta leader sees it.
    pub async fn time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, ClientError> {
        lease_info(
            self.lease_call(LeaseRequest::TimeToLive { id }, self.deadline)
                .await,
        )
    }

    /// Writes a key attached to `lease`: it is deleted when the lease expires or is revoked.
    /// `LeaseNotFound` when the lease does not exist (checked with the meta leader first; a
    /// lease revoked between that check and the write is caught by the partition, which
    /// refuses puts naming a lease it already deleted the keys of).
    pub async fn put_with_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
    ) -> Result<u64, ClientError> {
        self.put_with_lease_prev(key, value, lease, false)
            .await
            .map(|(revision, _)| revision)
    }

    /// [`Client::put_with_lease`] that also answers the record it replaced when `prev_kv` is
    /// set (`None` when the key was absent). A lease of 0 writes a key without a lease.
    pub async fn put_with_lease_prev(
        &self,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
        prev_kv: bool,
    ) -> Result<(u64, Option<KvRecord>), ClientError> {
        if lease == 0 {
            return self.put_prev(key, value, prev_kv).await;
        }
        self.time_to_live(lease).await?;
        let op = KvOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            prev_kv,
        };
        match self.write(key, op).await {
            Ok(KvOutcome::Put { revision, prev }) => Ok((revision, prev)),
            Ok(other) => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
            Err(ClientError::Rejected(KvError::LeaseNotFound { lease })) => {
                Err(ClientError::LeaseNotFound(lease))
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps lease `id` (of TTL `ttl`) alive in the background, a keep-alive every third of
    /// the TTL, until the returned handle is dropped. The handle reports the loss of the lease:
    /// at once when the cluster says it is gone, or when no keep-alive succeeded for a whole
    /// TTL (it may have expired: the application must act as if it had).
    ///
    /// The lease counts as confirmed from now: when the lease was granted earlier, use
    /// [`Client::keep_alive_since`] with the time its grant was sent, or
    /// [`Client::grant_kept_alive`], so that [`KeepAlive::deadline`] is never after the
    /// cluster's expiry.
    pub fn keep_alive(self: &Arc<Self>, id: LeaseId, ttl: Duration) -> KeepAlive {
        self.keep_alive_since(id, ttl, Instant::now())
    }

    /// Grants a lease of `ttl` and keeps it alive in the background (see
    /// [`Client::keep_alive`]); its deadline counts from when the grant was sent.
    pub async fn grant_kept_alive(
        self: &Arc<Self>,
        ttl: Duration,
    ) -> Result<KeepAlive, ClientError> {
        let sent = Instant::now();
        let info = self.grant(ttl).await?;
        Ok(self.keep_alive_since(info.id, Duration::from_millis(info.ttl_ms), sent))
    }

    /// [`Client::keep_alive`] of a lease last confirmed by a request sent at `since` (its
    /// grant, or a keep-alive): the lease is known to live until `since + ttl`, no longer.
    pub fn keep_alive_since(
        self: &Arc<Self>,
        id: LeaseId,
        ttl: Duration,
        since: Instant,
    ) -> KeepAlive {
        let started = since;
        let (tx, rx) = watch::channel(KeepAliveState {
            last_sent: started,
            lost: None,
        });
        let client = Arc::clone(self);
        let period = (ttl / 3).max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut last_ok = started;
            loop {
                let sent = Instant::now();
                // Each attempt may retry only until the lease could be lost.
                let budget = (last_ok + ttl).saturating_duration_since(sent);
                let r = client
                    .lease_call(LeaseRequest::KeepAlive { id }, budget.max(period))
                    .await;
                match lease_info(r) {
                    Ok(_) => {
                        last_ok = sent;
                        tx.send_modify(|s| s.last_sent = sent);
                    }
                    Err(ClientError::LeaseNotFound(_)) => {
                        tx.send_modify(|s| s.lost = Some(LeaseLost::Gone));
                        return;
                    }
                    Err(error) if Instant::now() >= last_ok + ttl => {
                        tx.send_modify(|s| s.lost = Some(LeaseLost::Unconfirmed { error }));
                        return;
                    }
                    Err(e) => log::debug!("keep-alive of lease {id:x} failed, retrying: {e}"),
                }
                let next = (sent + period).min(last_ok + ttl);
                tokio::time::sleep_until(next.into()).await;
            }
        });
        KeepAlive {
            id,
            ttl,
            task,
            state: rx,
        }
    }
}

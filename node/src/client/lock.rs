//! Locks in the Rust client: [`Client::lock`] waits in line for a named lock and returns a
//! [`LockGuard`] with a fencing token; [`LockGuard::unlock`] releases it.
//!
//! A lock is an election: lock `NAME` is the election `lock:NAME` (so `swarmkv observe
//! lock:NAME` and `GET /v1/election/lock:NAME` show its holder), the holder is the elected
//! candidate, waiting holders are served in the order they asked, and the fencing token is the
//! candidate's token, larger for every new holder of the lock. Everything
//! [`Leadership`](super::Leadership) guarantees holds: the guard is held from `lock`'s answer
//! until `unlock`, the lease's loss, or the lease's client-local deadline, whichever is first,
//! and the cluster never lets the next holder in before that instant. A resource the holder
//! writes to should refuse tokens smaller than the largest it has seen.

use std::sync::Arc;
use std::time::Instant;

use super::election::{CampaignError, Leadership, LeadershipLoss};
use super::lease::KeepAlive;
use super::Client;
use crate::core::election::validate_name;
use crate::core::{Candidate, ClientError};

/// The election names locks live under: lock `NAME` is election `lock:NAME`.
pub const LOCK_PREFIX: &str = "lock:";

/// The election of lock `name`, or why `name` cannot be a lock's.
pub fn lock_election(name: &str) -> Result<String, ClientError> {
    if name.is_empty() {
        return Err(ClientError::BadRequest(
            "a lock name may not be empty".into(),
        ));
    }
    let election = format!("{LOCK_PREFIX}{name}");
    validate_name(&election)
        .map_err(|e| ClientError::BadRequest(format!("lock name {name:?}: {e}")))?;
    Ok(election)
}

/// A held lock. Dropping it does not release the lock: the lock then ends with the lease
/// (or call [`LockGuard::unlock`]).
pub struct LockGuard {
    leadership: Leadership,
}

impl Client {
    /// Waits for lock `name` on the lease `lease` keeps alive and returns it held; `holder`
    /// is what [`Client::lock_holder`] shows while it is held (a host name, say). Ends with
    /// [`CampaignError::LeaseLost`] as soon as the lease is lost while waiting.
    pub async fn lock(
        self: &Arc<Self>,
        name: &str,
        holder: &[u8],
        lease: &KeepAlive,
    ) -> Result<LockGuard, CampaignError> {
        let election = lock_election(name)?;
        let leadership = self.campaign(&election, holder, lease).await?;
        Ok(LockGuard { leadership })
    }

    /// Who holds lock `name` now (a linearizable read), if anyone.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<Candidate>, ClientError> {
        self.leader(&lock_election(name)?).await
    }
}

impl LockGuard {
    /// The fencing token: larger than every earlier holder's of this lock.
    pub fn token(&self) -> u64 {
        self.leadership.token()
    }

    /// The holder's record (its election name is `lock:NAME`).
    pub fn holder(&self) -> &Candidate {
        self.leadership.candidate()
    }

    /// Whether the lock is held now: false from the lease's local deadline on, even before
    /// anything noticed.
    pub fn is_held(&self) -> bool {
        self.leadership.is_leader()
    }

    /// Until when the lock holds at the latest, unless a keep-alive confirms the lease again.
    pub fn valid_until(&self) -> Instant {
        self.leadership.valid_until()
    }

    /// Resolves when the lock is lost (at once if it is): stop using what it protects.
    pub async fn lost(&mut self) -> LeadershipLoss {
        self.leadership.lost().await
    }

    /// Releases the lock: [`LockGuard::is_held`] turns false before the release is sent, and
    /// the next in line gets the lock once it applied. Releasing again is harmless.
    pub async fn unlock(&mut self) -> Result<(), ClientError> {
        self.leadership.resign().await
    }
}

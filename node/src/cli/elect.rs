//! `swarmkv elect NAME VALUE [--ttl T]`: campaign for the leadership of election NAME and
//! hold it until Ctrl-C or SIGTERM, then resign.
//!
//! The verb grants a lease of the TTL and keeps it alive, campaigns with it, prints the
//! fencing token (16 hex digits) on stdout once elected, and holds the leadership while the
//! lease lives. It resigns and revokes the lease on Ctrl-C/SIGTERM (exit 0), and exits 1 when
//! the leadership is lost: the lease expired or was revoked, no keep-alive was confirmed
//! within a TTL (the lease's local deadline, after which the cluster may elect someone else),
//! or the candidacy was removed. Over `--peer` it uses the Rust client's `Leadership`; over
//! HTTP the same rules with the gateway's lease and election routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use swarmkv::core::{lease_hex, Candidate, LeaseId, LeaseRequest};
use swarmkv::{CampaignError, Client};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::elect_http::ElectHttp;
use super::lease::parse_ttl;
use super::transport::{Need, Target, TransportArgs};
use super::{say, CliError};

/// Campaign for leadership of an election; hold it until Ctrl-C or SIGTERM
///
/// Prints the fencing token once elected (it grows with every new leadership of NAME: pass
/// it to what the leader writes to). Exits 0 after resigning on Ctrl-C or SIGTERM, 1 when the
/// leadership is lost.
#[derive(Args, Debug)]
pub struct Elect {
    /// The election.
    pub name: String,
    /// The value to lead with (this instance's address, say).
    pub value: String,
    /// The lease's TTL (seconds, or 500ms, 10s, 2m): how long after this process stops
    /// keeping it alive another candidate may be elected.
    #[arg(long, default_value = "10s", value_parser = parse_ttl)]
    pub ttl: Duration,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn interrupted() -> Result<(), CliError> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::Other(anyhow!("cannot watch for SIGTERM: {e}")))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.map_err(|e| CliError::Other(anyhow!("cannot watch for Ctrl-C: {e}")))
        }
        _ = term.recv() => Ok(()),
    }
}

fn lost(name: &str, why: impl std::fmt::Display) -> CliError {
    CliError::Other(anyhow!("leadership of {name} lost: {why}"))
}

impl Elect {
    pub async fn run(self) -> Result<(), CliError> {
        let value = self.value.clone().into_bytes();
        let target =
            tokio::time::timeout(Duration::from_secs(30), self.transport.connect(Need::Keys))
                .await
                .map_err(|_| CliError::Unavailable("no connection within 30 s".into()))??;
        match target {
            Target::Peer { client, .. } => {
                run_peer(Arc::new(client), &self.name, &value, self.ttl).await
            }
            http @ Target::Http(_) => {
                let elections = ElectHttp::new(&self.transport);
                run_http(Arc::new(http), elections, &self.name, &value, self.ttl).await
            }
        }
    }
}

/// Over libp2p: the Rust client's campaign and leadership.
async fn run_peer(
    client: Arc<Client>,
    name: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<(), CliError> {
    let lease = client
        .grant_kept_alive(ttl)
        .await
        .map_err(|e| CliError::from_client(e, "lease grant"))?;
    let lease_id = lease.id();
    eprintln!("campaigning for {name} on lease {}", lease_hex(lease_id));
    let signal = interrupted();
    tokio::pin!(signal);
    let campaign = tokio::select! {
        r = client.campaign(name, value, &lease) => r,
        s = &mut signal => {
            let _ = client.revoke(lease_id).await;
            return s;
        }
    };
    let mut leadership = match campaign {
        Ok(l) => l,
        Err(CampaignError::Client(e)) => {
            let _ = client.revoke(lease_id).await;
            return Err(CliError::from_client(e, format!("elect {name}")));
        }
        Err(e) => {
            let _ = client.revoke(lease_id).await;
            return Err(lost(name, e));
        }
    };
    say(lease_hex(leadership.token()))?;
    eprintln!("leading {name}; Ctrl-C resigns");
    tokio::select! {
        loss = leadership.lost() => {
            let _ = client.revoke(lease_id).await;
            Err(lost(name, format!("{:?}", loss.reason)))
        }
        s = &mut signal => {
            s?;
            let resigned = leadership.resign().await;
            let _ = client.revoke(lease_id).await;
            resigned.map_err(|e| CliError::from_client(e, format!("resign {name}")))?;
            eprintln!("resigned");
            Ok(())
        }
    }
}

/// What the HTTP keep-alive knows: when the last confirmed keep-alive (or the grant) was
/// sent, and whether the cluster said the lease is gone.
#[derive(Clone, Copy, Debug)]
struct LeaseState {
    last_sent: Instant,
    gone: bool,
}

/// Keeps `lease` alive through the gateway, a keep-alive every third of the TTL.
async fn keep_alive(
    target: Arc<Target>,
    lease: LeaseId,
    ttl: Duration,
    state: watch::Sender<LeaseState>,
) {
    let period = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let sent = Instant::now();
        let req = LeaseRequest::KeepAlive { id: lease };
        match tokio::time::timeout(ttl, target.lease(&req)).await {
            Ok(Ok(_)) => state.send_modify(|s| s.last_sent = s.last_sent.max(sent)),
            Ok(Err(CliError::NotFound(_))) => {
                state.send_modify(|s| s.gone = true);
                return;
            }
            Ok(Err(e)) => log::debug!("keep-alive of {} failed: {e}", lease_hex(lease)),
            Err(_) => log::debug!("keep-alive of {} timed out", lease_hex(lease)),
        }
    }
}

/// Resolves when the lease is gone or its local deadline passed, with why.
async fn lease_end(mut state: watch::Receiver<LeaseState>, ttl: Duration) -> &'static str {
    loop {
        let s = *state.borrow_and_update();
        if s.gone {
            return "the lease expired or was revoked";
        }
        let deadline = s.last_sent + ttl;
        if Instant::now() >= deadline {
            return "no keep-alive was confirmed within the TTL";
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            r = state.changed() => if r.is_err() {
                tokio::time::sleep_until(deadline.into()).await;
                return "the keep-alive stopped";
            },
        }
    }
}

/// Resolves when the leader of the election is no longer `me`.
async fn replaced(elections: &ElectHttp, me: &Candidate) {
    let mut known = (me.token, me.revision);
    loop {
        match elections.leader(&me.name, Some(Some(known))).await {
            Ok(Some(c)) if c.token == me.token => known = (c.token, c.revision),
            Ok(_) => return,
            Err(e) => {
                log::debug!("watching {}: {e}", me.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Over HTTP: the gateway's lease routes keep the lease alive; the campaign route answers
/// once elected; the long poll of the leader route tells a removal.
async fn run_http(
    target: Arc<Target>,
    elections: ElectHttp,
    name: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<(), CliError> {
    let sent = Instant::now();
    let ttl_ms = (ttl.as_millis() as u64).max(1);
    let info = target.lease(&LeaseRequest::Grant { ttl_ms }).await?;
    let lease = info.id;
    let (tx, rx) = watch::channel(LeaseState {
        last_sent: sent,
        gone: false,
    });
    let keeper = tokio::spawn(keep_alive(Arc::clone(&target), lease, ttl, tx));
    let revoke = || async {
        keeper.abort();
        let _ = target.lease(&LeaseRequest::Revoke { id: lease }).await;
    };
    eprintln!("campaigning for {name} on lease {}", lease_hex(lease));
    let signal = interrupted();
    tokio::pin!(signal);
    let me = tokio::select! {
        r = elections.campaign(name, value, lease) => r,
        why = lease_end(rx.clone(), ttl) => Err(lost(name, why)),
        s = &mut signal => {
            revoke().await;
            return s;
        }
    };
    let me = match me {
        Ok(me) if Instant::now() < rx.borrow().last_sent + ttl => me,
        Ok(_) => {
            revoke().await;
            return Err(lost(name, "elected after the lease's deadline"));
        }
        Err(e) => {
            revoke().await;
            return Err(e);
        }
    };
    say(lease_hex(me.token))?;
    eprintln!("leading {name}; Ctrl-C resigns");
    let end = tokio::select! {
        why = lease_end(rx.clone(), ttl) => Err(lost(name, why)),
        _ = replaced(&elections, &me) => Err(lost(name, "the candidacy was removed")),
        s = &mut signal => {
            s?;
            let r = elections.resign(name, me.token, lease).await;
            if r.is_ok() {
                eprintln!("resigned");
            }
            r
        }
    };
    revoke().await;
    end
}

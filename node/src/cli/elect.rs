//! `swarmkv elect NAME VALUE [--ttl T]`: campaign for the leadership of election NAME and
//! hold it until Ctrl-C or SIGTERM, then resign.
//!
//! The verb grants a lease of the TTL and keeps it alive, campaigns with it, prints the
//! fencing token (16 hex digits) on stdout once elected, and holds the leadership while the
//! lease lives. It resigns and revokes the lease on Ctrl-C/SIGTERM (exit 0), and exits 1 when
//! the leadership is lost: the lease expired or was revoked, no keep-alive was confirmed
//! within a TTL (the lease's local deadline, after which the cluster may elect someone else),
//! or the candidacy was removed. It is the Rust client's [`Leadership`](swarmkv::Leadership),
//! over either transport.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use swarmkv::core::lease_hex;
use swarmkv::{CampaignError, Client};
use tokio::signal::unix::{signal, SignalKind};

use super::lease::parse_ttl;
use super::transport::{Need, TransportArgs};
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
        campaign(target.client, &self.name, &value, self.ttl).await
    }
}

/// Campaigns with a kept-alive lease, holds the leadership until a signal (then resigns) or
/// its loss; revokes the lease in every case.
async fn campaign(
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

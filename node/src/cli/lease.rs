//! `swarmkv lease grant TTL | keep-alive ID | revoke ID | ttl ID`: leases, over either
//! transport (the gateway's `/v1/lease` routes, or libp2p with `--peer`).
//!
//! Keys are attached with `swarmkv put KEY VALUE --lease ID`; they are deleted when the lease
//! expires or is revoked.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use swarmkv::core::{lease_hex, parse_lease_id, LeaseId, LeaseInfo, LeaseRequest};
use swarmkv::http::lease::LeaseJson;

use super::transport::{Need, TransportArgs};
use super::{say, say_json, with_timeout, CliError};

/// Grant, keep alive, revoke or inspect a lease
///
/// A lease is a time-to-live handle kept by the cluster's coordinator; keys written with
/// `swarmkv put KEY VALUE --lease ID` are deleted when it expires or is revoked.
#[derive(Args, Debug)]
pub struct Lease {
    #[command(subcommand)]
    pub verb: LeaseVerb,
}

/// What to do with a lease.
#[derive(Subcommand, Debug)]
pub enum LeaseVerb {
    /// Grant a lease of TTL (seconds, or with a unit: 500ms, 10s, 2m); prints its id
    Grant {
        #[arg(value_name = "TTL", value_parser = parse_ttl)]
        ttl: Duration,
        /// Print the lease as JSON ({id, ttl, ttl_ms, remaining_ms}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        transport: TransportArgs,
    },
    /// Keep a lease alive until Ctrl-C (a keep-alive every third of its TTL)
    ///
    /// Exits 1 when the lease is lost (revoked, expired, or no keep-alive succeeded for a
    /// whole TTL), 0 on Ctrl-C.
    #[command(name = "keep-alive")]
    KeepAlive {
        #[arg(value_name = "LEASE_ID", value_parser = parse_id)]
        id: LeaseId,
        /// Send one keep-alive and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        transport: TransportArgs,
    },
    /// Revoke a lease: its keys are deleted
    Revoke {
        #[arg(value_name = "LEASE_ID", value_parser = parse_id)]
        id: LeaseId,
        #[command(flatten)]
        transport: TransportArgs,
    },
    /// Show a lease's TTL and time left
    Ttl {
        #[arg(value_name = "LEASE_ID", value_parser = parse_id)]
        id: LeaseId,
        /// Print the lease as JSON ({id, ttl, ttl_ms, remaining_ms}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        transport: TransportArgs,
    },
}

impl Lease {
    /// The connection flags of the verb (the CLI's parsing tests check them).
    #[cfg(test)]
    pub fn transport(&self) -> &TransportArgs {
        match &self.verb {
            LeaseVerb::Grant { transport, .. }
            | LeaseVerb::KeepAlive { transport, .. }
            | LeaseVerb::Revoke { transport, .. }
            | LeaseVerb::Ttl { transport, .. } => transport,
        }
    }

    pub async fn run(self) -> Result<(), CliError> {
        match self.verb {
            LeaseVerb::Grant {
                ttl,
                json,
                transport,
            } => {
                with_timeout(async move {
                    let target = transport.connect(Need::Keys).await?;
                    let ttl_ms = ttl.as_millis() as u64;
                    let info = target.lease(&LeaseRequest::Grant { ttl_ms }).await?;
                    print_lease(info, json, false)
                })
                .await
            }
            LeaseVerb::KeepAlive {
                id,
                once,
                transport,
            } => {
                if once {
                    return with_timeout(async move {
                        let target = transport.connect(Need::Keys).await?;
                        let info = target.lease(&LeaseRequest::KeepAlive { id }).await?;
                        print_lease(info, false, true)
                    })
                    .await;
                }
                keep_alive(id, transport).await
            }
            LeaseVerb::Revoke { id, transport } => {
                with_timeout(async move {
                    let target = transport.connect(Need::Keys).await?;
                    target.lease(&LeaseRequest::Revoke { id }).await?;
                    say(format!("revoked {}", lease_hex(id)))?;
                    Ok(())
                })
                .await
            }
            LeaseVerb::Ttl {
                id,
                json,
                transport,
            } => {
                with_timeout(async move {
                    let target = transport.connect(Need::Keys).await?;
                    let info = target.lease(&LeaseRequest::TimeToLive { id }).await?;
                    print_lease(info, json, true)
                })
                .await
            }
        }
    }
}

/// Prints a lease: its id alone (`grant`, for `ID=$(swarmkv lease grant 10)`), one line
/// with the time left, or JSON.
fn print_lease(info: LeaseInfo, json: bool, with_time: bool) -> Result<(), CliError> {
    if json {
        say_json(&LeaseJson::from(info))?;
    } else if with_time {
        say(format!(
            "lease {}: {} left of a {} TTL",
            lease_hex(info.id),
            show_ms(info.remaining_ms),
            show_ms(info.ttl_ms)
        ))?;
    } else {
        say(lease_hex(info.id))?;
    }
    Ok(())
}

fn show_ms(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// How long connecting and the first keep-alive may take.
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps the lease alive until Ctrl-C; an error once it is lost.
async fn keep_alive(id: LeaseId, transport: TransportArgs) -> Result<(), CliError> {
    let first_call = async {
        let target = transport.connect(Need::Keys).await?;
        let first = target.lease(&LeaseRequest::KeepAlive { id }).await?;
        Ok::<_, CliError>((target, first))
    };
    let (target, first) = tokio::time::timeout(FIRST_CALL_TIMEOUT, first_call)
        .await
        .map_err(|_| {
            CliError::Unavailable(format!(
                "no answer within {} s",
                FIRST_CALL_TIMEOUT.as_secs()
            ))
        })??;
    let ttl = Duration::from_millis(first.ttl_ms.max(1));
    let period = (ttl / 3).max(Duration::from_millis(10));
    print_lease(first, false, true)?;
    let mut last_ok = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(period) => {}
        }
        let sent = Instant::now();
        let req = LeaseRequest::KeepAlive { id };
        match tokio::time::timeout(period, target.lease(&req)).await {
            Ok(Ok(info)) => {
                last_ok = sent;
                print_lease(info, false, true)?;
            }
            Ok(Err(e @ CliError::NotFound(_))) => return Err(e),
            Ok(Err(e)) if sent >= last_ok + ttl => {
                return Err(CliError::Unavailable(format!(
                    "lease {} may have expired: no keep-alive succeeded for a whole TTL ({e})",
                    lease_hex(id)
                )))
            }
            Err(_) if sent >= last_ok + ttl => {
                return Err(CliError::Unavailable(format!(
                    "lease {} may have expired: no keep-alive succeeded for a whole TTL",
                    lease_hex(id)
                )))
            }
            Ok(Err(e)) => log::debug!("keep-alive failed, retrying: {e}"),
            Err(_) => log::debug!("keep-alive took longer than {period:?}, retrying"),
        }
    }
}

/// A lease id as printed by `lease grant`: hex, with or without `0x`.
pub fn parse_id(text: &str) -> anyhow::Result<LeaseId> {
    parse_lease_id(text).ok_or_else(|| anyhow!("{text:?} is not a lease id (1 to 16 hex digits)"))
}

/// A TTL: whole seconds, or a number with `ms`, `s` or `m`.
pub(super) fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let (digits, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1000)
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a TTL (e.g. 10, 10s, 500ms, 2m)"))?;
    let ms = n.saturating_mul(unit_ms);
    if ms == 0 || ms > swarmkv::http::lease::MAX_TTL_MS {
        return Err(anyhow!("the TTL must be between 1 ms and 24 h"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_seconds_or_a_unit() -> anyhow::Result<()> {
        assert_eq!(parse_ttl("10")?, Duration::from_secs(10));
        assert_eq!(parse_ttl("10s")?, Duration::from_secs(10));
        assert_eq!(parse_ttl("500ms")?, Duration::from_millis(500));
        assert_eq!(parse_ttl("2m")?, Duration::from_secs(120));
        for bad in ["", "0", "x", "10h", "-1", "100000000m"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn lease_ids_parse_from_what_grant_prints() -> anyhow::Result<()> {
        assert_eq!(parse_id(&lease_hex(0xbeef))?, 0xbeef);
        assert!(parse_id("nope").is_err());
        Ok(())
    }
}

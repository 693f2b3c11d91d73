//! `swarmkv elect NAME VALUE [--ttl T] [-- COMMAND...]`: campaign for the leadership of
//! election NAME and hold it until Ctrl-C or SIGTERM (then resign), or run COMMAND while this
//! process leads.
//!
//! The verb grants a lease of the TTL and keeps it alive, campaigns with it, prints the
//! fencing token (16 hex digits) on stdout once elected, and holds the leadership while the
//! lease lives. It is the Rust client's [`Leadership`](swarmkv::Leadership), over either
//! transport.
//!
//! # When the leadership ends
//! The cluster may elect another candidate once the lease expired, which it cannot do before
//! the lease's *local deadline*: the send time of the last confirmed keep-alive plus the TTL,
//! on this process's monotonic clock. The verb stops acting as the leader a safety margin
//! before that deadline ([`safety_margin`]: a tenth of the TTL, 0.1-1 s, for a clock that runs
//! slower than the cluster's and for scheduling delays), or as soon as the lease is reported
//! gone or the candidacy removed, whichever comes first. It then prints the loss and exits at
//! once: revoking the lease is tried for [`CLEANUP`] at most, since a node that is cut off
//! would hold the process for the gateway's whole deadline.
//!
//! # With a command (`-- COMMAND...`)
//! As `consul lock` and `etcdctl lock`, the command runs while this process leads: it starts
//! once elected, in a process group of its own, and is sent SIGTERM `--kill-after` before the
//! moment leadership may be lost, then SIGKILL at that moment if it is still running, so it
//! is gone before any other candidate can be elected. Ctrl-C or SIGTERM to `elect` is passed
//! on the same way. Exit status (see `docs/leases-and-elections.md`):
//! - the command's own status when it ends by itself (128+N when a signal N ended it); the
//!   leadership is resigned first;
//! - [`EXIT_LOST`] (124) when the leadership was lost (or may have been) and the command was
//!   stopped for it;
//! - 126 when the command cannot be started, 127 when it is not found;
//! - before the command starts: the CLI's usual 1 (refused), 2 (usage), 3 (unavailable).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Child, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use swarmkv::core::lease_hex;
use swarmkv::{CampaignError, Client, LeadershipLoss, LossReason};
use tokio::signal::unix::{signal, SignalKind};

use super::error::EXIT_FAILED;
use super::lease::parse_ttl;
use super::transport::{Need, TransportArgs};
use super::{say, CliError};

/// Exit status of `elect -- COMMAND` when the leadership was lost and the command stopped.
pub const EXIT_LOST: u8 = 124;
/// Exit status when the command exists but cannot be started.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: u8 = 127;
/// How long the lease's revocation may take once the leadership is lost: the process must
/// exit at once, and an unrevoked lease simply expires.
pub const CLEANUP: Duration = Duration::from_millis(500);

/// Campaign for leadership of an election; hold it, or run a command while leading
///
/// Prints the fencing token once elected (it grows with every new leadership of NAME: pass
/// it to what the leader writes to). Without a command: exits 0 after resigning on Ctrl-C or
/// SIGTERM, 1 when the leadership is lost. With `-- COMMAND...`: runs it while leading, stops
/// it (SIGTERM, then SIGKILL) before the leadership may be lost, and exits with its status,
/// or 124 when the leadership was lost.
#[derive(Args, Debug)]
pub struct Elect {
    /// The election.
    pub name: String,
    /// The value to lead with (this instance's address, say).
    pub value: String,
    #[command(flatten)]
    pub hold: HoldArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The command to run while this process leads (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// How a leadership (or a lock) is held: the lease's TTL and the command's grace.
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// The lease's TTL (seconds, or 500ms, 10s, 2m): how long after this process stops
    /// keeping it alive another candidate may be elected.
    #[arg(long, default_value = "10s", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// With a command: how long it has between SIGTERM and SIGKILL. SIGTERM is sent this
    /// long before the leadership may be lost, so it is at most half the TTL less the
    /// safety margin.
    #[arg(long, default_value = "1s", value_parser = parse_ttl, value_name = "DURATION")]
    pub kill_after: Duration,
}

/// How long before the lease's local deadline the leadership counts as lost: a tenth of the
/// TTL, at least 100 ms and at most 1 s. It covers a local clock that runs a little slower
/// than the meta leader's and the delay between the deadline and this process acting on it.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
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

/// Why a leadership ended, for a person.
fn describe(loss: &LeadershipLoss) -> String {
    match &loss.reason {
        LossReason::Resigned => "resigned".into(),
        LossReason::LeaseLost(l) => format!("the lease is lost ({l:?})"),
        LossReason::DeadlineMissed => {
            "no keep-alive was confirmed in time: the lease may expire".into()
        }
        LossReason::Replaced => "the candidacy was removed from the election".into(),
    }
}

/// Revokes the lease for at most [`CLEANUP`]; what does not finish is left to the TTL.
async fn revoke_briefly(client: &Client, lease: u64) {
    let _ = tokio::time::timeout(CLEANUP, client.revoke(lease)).await;
}

impl Elect {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let margin = safety_margin(self.hold.ttl);
        let running = !self.command.is_empty();
        if running && margin + self.hold.kill_after > self.hold.ttl / 2 {
            return Err(CliError::Usage(format!(
                "--kill-after {:?} is too long for --ttl {:?}: with the safety margin of {:?} \
                 it must be at most half the TTL",
                self.hold.kill_after, self.hold.ttl, margin
            )));
        }
        let value = self.value.clone().into_bytes();
        let target =
            tokio::time::timeout(Duration::from_secs(30), self.transport.connect(Need::Keys))
                .await
                .map_err(|_| CliError::Unavailable("no connection within 30 s".into()))??;
        let client = target.client;
        let lease = client
            .grant_kept_alive(self.hold.ttl)
            .await
            .map_err(|e| CliError::from_client(e, "lease grant"))?;
        let lease_id = lease.id();
        let name = self.name.as_str();
        eprintln!("campaigning for {name} on lease {}", lease_hex(lease_id));
        let signal = interrupted();
        tokio::pin!(signal);
        let campaign = tokio::select! {
            r = client.campaign(name, &value, &lease) => r,
            s = &mut signal => {
                revoke_briefly(&client, lease_id).await;
                return s.map(|()| ExitCode::SUCCESS);
            }
        };
        let mut leadership = match campaign {
            Ok(l) => l,
            Err(CampaignError::Client(e)) => {
                revoke_briefly(&client, lease_id).await;
                return Err(CliError::from_client(e, format!("elect {name}")));
            }
            Err(e) => {
                revoke_briefly(&client, lease_id).await;
                return Err(lost(name, e));
            }
        };
        say(lease_hex(leadership.token()))?;
        if !running {
            eprintln!("leading {name}; Ctrl-C resigns");
            return tokio::select! {
                loss = leadership.lost_before(margin) => {
                    eprintln!("error: leadership of {name} lost: {}", describe(&loss));
                    revoke_briefly(&client, lease_id).await;
                    Ok(ExitCode::from(EXIT_FAILED))
                }
                s = &mut signal => {
                    s?;
                    let resigned = leadership.resign().await;
                    let _ = client.revoke(lease_id).await;
                    resigned.map_err(|e| CliError::from_client(e, format!("resign {name}")))?;
                    eprintln!("resigned");
                    Ok(ExitCode::SUCCESS)
                }
            };
        }

        let mut child = match spawn(&self.command) {
            Ok(c) => c,
            Err((code, e)) => {
                eprintln!("error: cannot run {:?}: {e}", self.command[0]);
                let _ = leadership.resign().await;
                revoke_briefly(&client, lease_id).await;
                return Ok(ExitCode::from(code));
            }
        };
        eprintln!("leading {name}; running {:?}", self.command[0]);
        // The command must be gone by the stop instant: SIGTERM `kill_after` before it.
        let ended = tokio::select! {
            status = exited(&mut child) => Ended::Exited(status),
            loss = leadership.lost_before(margin + self.hold.kill_after) => Ended::Lost(loss),
            s = &mut signal => Ended::Interrupted(s),
        };
        match ended {
            Ended::Exited(status) => {
                let status = status.map_err(|e| CliError::Other(anyhow!("waiting: {e}")))?;
                let resigned = leadership.resign().await;
                revoke_briefly(&client, lease_id).await;
                resigned.map_err(|e| CliError::from_client(e, format!("resign {name}")))?;
                Ok(exit_code(status))
            }
            Ended::Lost(loss) => {
                eprintln!(
                    "error: leadership of {name} lost: {}; stopping the command",
                    describe(&loss)
                );
                stop(&mut child, self.hold.kill_after).await;
                revoke_briefly(&client, lease_id).await;
                Ok(ExitCode::from(EXIT_LOST))
            }
            Ended::Interrupted(s) => {
                let status = stop(&mut child, self.hold.kill_after).await;
                let resigned = leadership.resign().await;
                revoke_briefly(&client, lease_id).await;
                s?;
                resigned.map_err(|e| CliError::from_client(e, format!("resign {name}")))?;
                eprintln!("resigned");
                Ok(status.map_or(ExitCode::from(EXIT_FAILED), exit_code))
            }
        }
    }
}

/// How the command's run ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Lost(LeadershipLoss),
    Interrupted(Result<(), CliError>),
}

/// Starts the command in a process group of its own (so that stopping it reaches what it
/// started too); on failure, the exit status that says why (126 or 127).
fn spawn(command: &[OsString]) -> Result<Child, (u8, std::io::Error)> {
    let (program, args) = match command.split_first() {
        Some(split) => split,
        None => {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command");
            return Err((EXIT_NOT_FOUND, e));
        }
    };
    std::process::Command::new(program)
        .args(args)
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => (EXIT_NOT_FOUND, e),
            _ => (EXIT_CANNOT_RUN, e),
        })
}

/// Resolves when the command exits. Polled rather than waited for on a thread: this task is
/// the only one that reaps the child, so its pid (and group) cannot be reused while the
/// signals of [`stop`] may still be sent to it.
async fn exited(child: &mut Child) -> std::io::Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `signal` to the command's process group (to the command alone if the group is
/// gone). Only called while the command is unreaped.
fn signal_group(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) with a pid (group) this process started and has not reaped.
    unsafe {
        if libc::kill(-pid, signal) != 0 {
            libc::kill(pid, signal);
        }
    }
}

/// Stops the command: SIGTERM, then SIGKILL once `grace` has passed. Its status, unless
/// waiting for it failed.
async fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal_group(child, libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break,
        }
    }
    signal_group(child, libc::SIGKILL);
    exited(child).await.ok()
}

/// The exit status that reports the command's: its code, or 128+N when signal N ended it.
fn exit_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(EXIT_FAILED),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(EXIT_FAILED),
        (None, None) => EXIT_FAILED,
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    ExitCode::from(exit_status(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_of_the_ttl_within_bounds() {
        assert_eq!(
            safety_margin(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
        assert_eq!(
            safety_margin(Duration::from_millis(500)),
            Duration::from_millis(100)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn a_command_that_ignores_sigterm_is_killed_after_the_grace() -> anyhow::Result<()> {
        let command: Vec<OsString> = ["sh", "-c", "trap '' TERM; sleep 30"]
            .iter()
            .map(OsString::from)
            .collect();
        let mut child = spawn(&command).map_err(|(_, e)| e)?;
        // Give the shell time to install its trap.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let status = stop(&mut child, Duration::from_millis(300))
            .await
            .ok_or_else(|| anyhow!("no status"))?;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        Ok(())
    }

    #[test]
    fn a_missing_command_is_127_and_statuses_pass_through() {
        let missing = spawn(&[OsString::from("/nonexistent/swarmkv-test")]);
        assert!(matches!(missing, Err((EXIT_NOT_FOUND, _))));
        assert_eq!(exit_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_status(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}

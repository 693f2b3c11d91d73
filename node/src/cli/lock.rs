//! `swarmkv lock NAME [--holder H] [--ttl T] [-- COMMAND...]`: take lock NAME and hold it
//! until Ctrl-C or SIGTERM (then release it), or run COMMAND while holding it.
//!
//! A lock is an election (the client's `lock` module): lock NAME is the election `lock:NAME`,
//! so this verb is `elect lock:NAME HOLDER` with everything that says, and waiting holders are
//! served in the order they asked. It prints the fencing token once it holds the lock; with a
//! command, it stops the command (SIGTERM, then SIGKILL) before the lock may be lost, and
//! exits as `elect` does: the command's status, 124 when the lock was lost.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Args;
use swarmkv::client::lock_election;

use super::elect::{Elect, HoldArgs};
use super::transport::TransportArgs;
use super::CliError;

/// Take a lock; hold it, or run a command while holding it
///
/// Waits in line for lock NAME, prints the fencing token once it holds it (larger for every
/// new holder of NAME: pass it to what the holder writes to). Without a command: releases the
/// lock and exits 0 on Ctrl-C or SIGTERM, exits 1 when the lock is lost. With `-- COMMAND...`:
/// runs it while holding the lock, stops it (SIGTERM, then SIGKILL) before the lock may be
/// lost, and exits with its status, or 124 when the lock was lost. `swarmkv leader lock:NAME`
/// shows the holder.
#[derive(Args, Debug)]
pub struct Lock {
    /// The lock.
    pub name: String,
    /// What the holder shows to `swarmkv leader lock:NAME` (default: empty).
    #[arg(long, default_value = "")]
    pub holder: String,
    #[command(flatten)]
    pub hold: HoldArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The command to run while this process holds the lock (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

impl Lock {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let name = lock_election(&self.name).map_err(|e| CliError::Usage(e.to_string()))?;
        Elect {
            name,
            value: self.holder,
            hold: self.hold,
            transport: self.transport,
            command: self.command,
        }
        .run()
        .await
    }
}

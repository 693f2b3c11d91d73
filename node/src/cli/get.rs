//! `swarmkv get KEY`: reads one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use swarmkv::core::Consistency;

use super::{say, show, ConnectArgs};

/// Read a key
///
/// Prints its value (as text if it is UTF-8, else as 0x and hex). A missing key prints nothing
/// on stdout and exits 1, so a script can tell "absent" from "empty".
#[derive(Args, Debug)]
pub struct Get {
    /// The key.
    pub key: OsString,
    /// Answer from the nearest replica without confirming leadership: faster, may be stale.
    #[arg(long)]
    pub serializable: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl Get {
    pub async fn run(self) -> Result<ExitCode> {
        let client = self.connect.client().await?;
        let consistency = if self.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        let record = client
            .get_with(self.key.as_bytes(), consistency)
            .await
            .with_context(|| format!("get {:?}", self.key))?;
        match record {
            Some(r) => {
                say(show(&r.value))?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("{:?}: no such key", self.key);
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

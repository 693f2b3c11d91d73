//! `swarmkv put KEY VALUE`: writes one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{say, ConnectArgs};

/// Write a key
///
/// Acknowledged once a quorum of the key's replicas has it on disk.
#[derive(Args, Debug)]
pub struct Put {
    /// The key (the argument's bytes as given).
    pub key: OsString,
    /// The value (the argument's bytes as given).
    pub value: OsString,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl Put {
    pub async fn run(self) -> Result<ExitCode> {
        let client = self.connect.client().await?;
        let revision = client
            .put(self.key.as_bytes(), self.value.as_bytes())
            .await
            .with_context(|| format!("put {:?}", self.key))?;
        say(format!("OK (revision {revision})"))?;
        Ok(ExitCode::SUCCESS)
    }
}

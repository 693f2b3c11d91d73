//! `swarmkv delete KEY`: deletes one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{say, ConnectArgs};

/// Delete a key
///
/// Deleting a missing key is not an error: the end state is the one asked for.
#[derive(Args, Debug)]
pub struct Delete {
    /// The key.
    pub key: OsString,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl Delete {
    pub async fn run(self) -> Result<ExitCode> {
        let client = self.connect.client().await?;
        let existed = client
            .delete(self.key.as_bytes())
            .await
            .with_context(|| format!("delete {:?}", self.key))?;
        if existed {
            say("deleted")?;
        } else {
            say("not found (nothing to delete)")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

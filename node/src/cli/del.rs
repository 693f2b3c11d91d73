//! `swarmkv del KEY` (or `delete`): deletes one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;

use super::transport::{Need, TransportArgs};
use super::{say, CliError};

/// Delete a key
///
/// Deleting a missing key is not an error (exit 0): the end state is the one asked for. Prints
/// `deleted`, or `not found (nothing to delete)`.
#[derive(Args, Debug)]
pub struct Del {
    /// The key.
    pub key: OsString,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Del {
    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Keys).await?;
        if target.delete(self.key.as_bytes()).await? {
            say("deleted")?;
        } else {
            say("not found (nothing to delete)")?;
        }
        Ok(())
    }
}

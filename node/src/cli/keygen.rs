//! `swarmkv keygen [PATH]`: creates the cluster's pre-shared key file.
//!
//! With a key (`--psk-file` on `start` and on every client verb), a connection begins with a
//! libp2p private-network handshake before anything else: a machine without the key cannot
//! complete it, so it can neither join, read, write nor even learn that a swarmkv node
//! listens. It is the recommended setting for any LAN that is not entirely trusted.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;

use super::{say, CliError};

/// The file name `keygen` writes when given no path.
pub const DEFAULT_KEY_FILE: &str = "swarm.key";

/// Create a pre-shared key file for a private cluster
///
/// Writes 32 random bytes in the standard `/key/swarm/psk/1.0.0/` format with mode 0600.
/// Copy the file to every machine and pass `--psk-file FILE` to `start` and to client verbs.
/// An existing file is never replaced unless --force is given: a new key locks every node
/// that still has the old one out.
#[derive(Args, Debug)]
pub struct Keygen {
    /// Where to write the key.
    #[arg(value_name = "PATH", default_value = DEFAULT_KEY_FILE)]
    pub path: PathBuf,
    /// Replace an existing key file.
    #[arg(long)]
    pub force: bool,
}

impl Keygen {
    pub fn run(self) -> Result<(), CliError> {
        let key = swarmkv_net::generate_psk_file(&self.path, self.force).map_err(|e| match e {
            // Refusing to overwrite is the user's call to make again, with --force.
            e @ swarmkv_net::NetError::PskExists { .. } => CliError::Usage(e.to_string()),
            e => CliError::Other(anyhow!("{e}")),
        })?;
        say(format!(
            "wrote {} (fingerprint {}); copy it to every node and pass --psk-file {} to start \
             and to client verbs",
            self.path.display(),
            key.fingerprint(),
            self.path.display()
        ))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_loadable_key_and_refuses_to_replace_it_without_force() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        let keygen = |force| Keygen {
            path: path.clone(),
            force,
        };
        keygen(false).run()?;
        let first = swarmkv_net::load_psk(&path)?.fingerprint().to_string();
        let refused = keygen(false).run();
        assert!(
            matches!(&refused, Err(CliError::Usage(m)) if m.contains("--force")),
            "{refused:?}"
        );
        assert_eq!(
            swarmkv_net::load_psk(&path)?.fingerprint().to_string(),
            first
        );
        keygen(true).run()?;
        assert_ne!(
            swarmkv_net::load_psk(&path)?.fingerprint().to_string(),
            first
        );
        Ok(())
    }
}

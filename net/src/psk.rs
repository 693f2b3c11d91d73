//! Pre-shared key files for private networks (libp2p pnet, TCP only).

use std::fs;
use std::path::Path;
use std::str::FromStr;

use libp2p::pnet::PreSharedKey;
use rand::RngCore;

use crate::NetError;

/// Reads a 32-byte pre-shared key in the standard `/key/swarm/psk/1.0.0/` base16 format.
///
/// With a key configured, every connection starts with a pnet handshake before noise: a peer
/// without the same key cannot even finish the handshake, so strangers on the LAN cannot talk
/// to the cluster at all. The format is the one go-ipfs and rust-libp2p share, so existing
/// tools can create it.
pub fn load_psk(path: &Path) -> Result<PreSharedKey, NetError> {
    let text = fs::read_to_string(path).map_err(|source| NetError::PskIo {
        path: path.to_path_buf(),
        source,
    })?;
    PreSharedKey::from_str(&text).map_err(|e| NetError::PskInvalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Creates a fresh random key, writes it to `path` in the standard format and returns it.
///
/// Operators copy the resulting file to every node of the cluster.
pub fn generate_psk_file(path: &Path) -> Result<PreSharedKey, NetError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = PreSharedKey::new(bytes);
    fs::write(path, key.to_string()).map_err(|source| NetError::PskIo {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_file_loads_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("swarm.key");
        let key = generate_psk_file(&path)?;
        let text = fs::read_to_string(&path)?;
        assert!(
            text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
            "{text}"
        );
        assert_eq!(
            load_psk(&path)?.fingerprint().to_string(),
            key.fingerprint().to_string()
        );
        Ok(())
    }

    #[test]
    fn malformed_key_file_is_a_typed_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("swarm.key");
        fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nnothex")?;
        assert!(matches!(load_psk(&path), Err(NetError::PskInvalid { .. })));
        Ok(())
    }
}

//! Pre-shared key files for private networks (libp2p pnet, TCP only).

use std::fs;
use std::io::Write;
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
/// Operators copy the resulting file to every node of the cluster. The file is created with
/// mode 0600 (the key is the cluster's only secret), and an existing file is never replaced
/// unless `overwrite` is set: replacing the key of a running cluster locks its nodes out of
/// each other, so that must be a deliberate act ([`NetError::PskExists`] otherwise).
pub fn generate_psk_file(path: &Path, overwrite: bool) -> Result<PreSharedKey, NetError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = PreSharedKey::new(bytes);
    let io = |source| NetError::PskIo {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            NetError::PskExists {
                path: path.to_path_buf(),
            }
        } else {
            io(source)
        }
    })?;
    // `mode` applies only to a file this call creates: an overwritten file keeps its own
    // permissions, so tighten them explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(key.to_string().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_file_loads_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("swarm.key");
        let key = generate_psk_file(&path, false)?;
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

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_and_never_silently_replaced() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("swarm.key");
        let first = generate_psk_file(&path, false)?;
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert!(matches!(
            generate_psk_file(&path, false),
            Err(NetError::PskExists { .. })
        ));
        assert_eq!(
            load_psk(&path)?.fingerprint().to_string(),
            first.fingerprint().to_string(),
            "a refused overwrite must leave the old key in place"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        let second = generate_psk_file(&path, true)?;
        assert_ne!(
            second.fingerprint().to_string(),
            first.fingerprint().to_string()
        );
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
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

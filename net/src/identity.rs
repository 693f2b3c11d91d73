//! Persistent node identity: the ed25519 keypair that gives a node its PeerId.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

use crate::NetError;

/// Name of the key file inside the node's data directory.
pub const IDENTITY_FILE: &str = "node.key";

/// Loads the node's keypair from `data_dir`, creating and saving a new one on first start.
///
/// The PeerId is the node's identity in the cluster registry, so it must survive restarts:
/// the key is stored (protobuf encoding, file mode 0600) as `data_dir/node.key`. A file that
/// exists but cannot be decoded is reported as [`NetError::IdentityCorrupt`] and is never
/// silently replaced, since replacing it would turn the node into a stranger to its cluster.
pub fn load_or_create_identity(data_dir: &Path) -> Result<Keypair, NetError> {
    let path = data_dir.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(data_dir, &path),
        Err(source) => Err(NetError::IdentityIo { path, source }),
    }
}

pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<Keypair, NetError> {
    let keypair =
        Keypair::from_protobuf_encoding(bytes).map_err(|e| NetError::IdentityCorrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if keypair.clone().try_into_ed25519().is_err() {
        return Err(NetError::IdentityCorrupt {
            path: path.to_path_buf(),
            reason: format!("key type {:?} is not ed25519", keypair.key_type()),
        });
    }
    Ok(keypair)
}

fn create(data_dir: &Path, path: &Path) -> Result<Keypair, NetError> {
    let io_err = |source| NetError::IdentityIo {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(io_err)?;
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| NetError::IdentityCorrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // Write to a temporary file and rename, so a crash never leaves a half-written key.
    let tmp: PathBuf = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = open_private(&tmp).map_err(io_err)?;
    file.write_all(&bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)?;
    Ok(keypair)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_a_restart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = load_or_create_identity(dir.path())?;
        let second = load_or_create_identity(dir.path())?;
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn identity_file_is_private() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        load_or_create_identity(dir.path())?;
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn corrupt_identity_is_a_typed_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join(IDENTITY_FILE), b"not a key")?;
        let err = load_or_create_identity(dir.path()).err();
        assert!(
            matches!(err, Some(NetError::IdentityCorrupt { .. })),
            "{err:?}"
        );
        Ok(())
    }
}

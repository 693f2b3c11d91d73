//! A small tmpfs the test mounts itself (root only), to give nodes a disk that fills up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A tmpfs of a fixed size on a fresh directory; unmounted (lazily) and removed on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB. Needs root.
    pub fn mount(mib: u64) -> Result<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("swarmkv-tmpfs-")
            .tempdir()
            .context("mount point")?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount tmpfs on {}: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system: writes a filler file until the disk refuses more, down to
    /// 4 KiB writes. Returns its path and how many bytes it took.
    pub fn fill(&self) -> Result<(PathBuf, u64)> {
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).context("filler")?;
        let mut written = 0u64;
        let mut chunk = vec![0x5au8; 1 << 20];
        while chunk.len() >= 4096 {
            match f.write(&chunk) {
                Ok(0) => chunk.truncate(chunk.len() / 2),
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => chunk.truncate(chunk.len() / 2),
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
        let _ = f.sync_all();
        Ok((path, written))
    }

    /// Bytes still free.
    pub fn free_bytes(&self) -> Result<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.dir.path())
            .output()
            .context("running df")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("df output")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

//! Detecting a store that lost writes it had made durable.
//!
//! # Why
//! sled 0.34 takes a damaged record in its log for a torn tail write: at open it drops the log
//! from that record on, silently. A node could then come back without Raft entries or votes it
//! had fsynced and acknowledged, and vote or serve as if it never had them: a Raft safety
//! hazard. Putting back an older copy of the directory (a backup, a snapshot of a VM disk) has
//! the same effect. sled cannot tell us, so the store keeps its own evidence.
//!
//! # How
//! Two numbers that can only grow:
//! - a *sequence* kept inside sled (key `durable_seq` of the `meta` tree), advanced by a tiny
//!   write of its own about once a second while the node writes, and
//! - the *durable mark*, a small file beside the sled directory (`<dir>.durable-mark`) that
//!   records a sequence known to be durable in sled: it is written only after a sync that
//!   followed the sequence's write returned.
//!
//! At open, a sequence in sled below the mark means the store lost a write it had made
//! durable: [`StoreError::LostWrites`], naming both paths and both numbers, and the node
//! refuses to start. Nothing is added to the write path: the sequence write is a separate
//! unsynced write (the node's next group commit makes it durable), and the mark file is
//! written (temporary file, fsync, rename, fsync of the directory) by a background thread,
//! at most once per [`MARK_INTERVAL`], only while the node writes.
//!
//! # What is detected and what is not
//! - Detected: a loss of the log that reaches back to before the sequence write the mark
//!   records, i.e. losing anything older than roughly the last one to two seconds of writes
//!   before the mark was last written; an older copy of the sled directory put back after the
//!   mark moved past it; the sled directory deleted or replaced by an empty one while the mark
//!   stays. A store closed cleanly (dropped) writes a final mark covering every write it made,
//!   so any later loss of it at all is detected.
//! - Not detected: after a crash, the loss of only the writes made since the sequence write
//!   the mark records (at most about the last second or two before the crash, plus the time
//!   to the next sync); damage to the mark file together with the store; a mark deleted by
//!   hand (the next open recreates it and warns). A damaged record that sled itself reports
//!   is [`StoreError::Corrupt`] as before.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Result, StoreError};

/// The key of the sequence in sled's `meta` tree (outside the `app/` names of node records).
pub const SEQ_KEY: &[u8] = b"durable_seq";

/// The least time between two sequence writes, hence between two mark writes.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);

const MAGIC: &str = "swarmkv durable mark 1";

/// Where the mark of the sled directory `store_dir` lives: beside it, so that replacing the
/// directory (or its files) does not replace the mark.
pub fn mark_path(store_dir: &Path) -> PathBuf {
    let mut name = store_dir.as_os_str().to_owned();
    name.push(".durable-mark");
    PathBuf::from(name)
}

/// Reads the mark: `None` when there is none.
pub fn read_mark(path: &Path) -> Result<Option<u64>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("reading the durable mark")(e)),
    };
    decode(&text)
        .map(Some)
        .map_err(|detail| StoreError::Corrupt {
            tree: "(durable mark)",
            location: path.display().to_string(),
            detail: format!(
                "{detail}; if the store itself is intact, delete this file and start again, \
             otherwise rebuild the node from its peers (`swarmkv repair --from-peers`)"
            ),
        })
}

/// Writes the mark durably: a temporary file, fsync, rename over the old mark, fsync of the
/// directory. A crash leaves either the old mark or the new one.
pub fn write_mark(path: &Path, seq: u64) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = StoreError::io("writing the durable mark");
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(encode(seq).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("writing the durable mark"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(StoreError::io("renaming the durable mark"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync of the durable mark's directory"))
}

fn encode(seq: u64) -> String {
    format!("{MAGIC}\nseq {seq}\ncrc {:08x}\n", checksum(seq))
}

fn checksum(seq: u64) -> u32 {
    crc32fast::hash(&seq.to_be_bytes())
}

fn decode(bytes: &[u8]) -> std::result::Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the durable mark is not text")?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("the durable mark does not start with {MAGIC:?}"));
    }
    let seq = lines
        .next()
        .and_then(|l| l.strip_prefix("seq "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or("the durable mark has no valid `seq` line")?;
    let crc = lines
        .next()
        .and_then(|l| l.strip_prefix("crc "))
        .and_then(|n| u32::from_str_radix(n, 16).ok())
        .ok_or("the durable mark has no valid `crc` line")?;
    if crc != checksum(seq) {
        return Err(format!(
            "the durable mark's checksum does not match seq {seq}"
        ));
    }
    Ok(seq)
}

/// Encodes a sequence as sled stores it.
pub(crate) fn seq_bytes(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes the sequence sled holds (`None`: none yet).
pub(crate) fn seq_from(path: &Path, raw: Option<&[u8]>) -> Result<Option<u64>> {
    raw.map(|v| {
        <[u8; 8]>::try_from(v)
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                tree: "meta",
                location: format!("{} key durable_seq", path.display()),
                detail: format!("{} bytes, expected 8", v.len()),
            })
    })
    .transpose()
}

/// Compares sled's sequence with the mark at open: an error when the store lost durable
/// writes. `has_data` tells a store that existed before this open from a fresh one.
pub fn check(store_dir: &Path, found: Option<u64>, has_data: bool) -> Result<Option<u64>> {
    let path = mark_path(store_dir);
    let mark = read_mark(&path)?;
    match mark {
        Some(expected) if found.unwrap_or(0) < expected => Err(StoreError::LostWrites {
            path: store_dir.to_path_buf(),
            mark: path,
            expected,
            found: found.unwrap_or(0),
        }),
        None if has_data => {
            log::warn!(
                "{} has no durable mark beside it (first start of this version, or the mark \
                 was deleted): creating one now; a loss of writes made before now cannot be \
                 detected",
                store_dir.display()
            );
            Ok(None)
        }
        m => Ok(m),
    }
}

/// What the keeper knows; shared by the backend (which syncs) and the keeper thread.
#[derive(Debug)]
struct State {
    /// The highest sequence written into sled (perhaps not durable yet).
    written: u64,
    /// The highest sequence a successful sync covered.
    durable: u64,
    /// The sequence the mark file records.
    marked: u64,
    /// When `written` was last advanced.
    last_write: Instant,
    /// Set when the last attempt failed (logged once per streak).
    failing: bool,
    /// After a failure, nothing is tried again before this time (and the next sync).
    retry_after: Instant,
    stop: bool,
}

impl State {
    /// Whether the keeper thread has something to do.
    fn work_due(&self) -> bool {
        if self.stop {
            return true;
        }
        if Instant::now() < self.retry_after {
            return false;
        }
        self.durable > self.marked
            || (self.durable == self.written && self.last_write.elapsed() >= MARK_INTERVAL)
    }
}

/// Keeps the sequence and the mark moving while the store syncs (see the module docs).
pub(crate) struct MarkKeeper {
    shared: Arc<(Mutex<State>, Condvar)>,
    mark: PathBuf,
    thread: Option<JoinHandle<()>>,
}

/// How the keeper writes the sequence into sled (a closure, so this file knows no sled).
pub(crate) type SeqWriter = Box<dyn Fn(u64) -> Result<()> + Send>;

impl MarkKeeper {
    /// Starts the keeper for a store whose sled holds `written` and whose mark records
    /// `marked`, both already durable.
    pub(crate) fn start(store_dir: &Path, durable: u64, write_seq: SeqWriter) -> MarkKeeper {
        let shared = Arc::new((
            Mutex::new(State {
                written: durable,
                durable,
                marked: durable,
                last_write: Instant::now(),
                failing: false,
                retry_after: Instant::now(),
                stop: false,
            }),
            Condvar::new(),
        ));
        let mark = mark_path(store_dir);
        let thread = {
            let shared = shared.clone();
            let mark = mark.clone();
            std::thread::Builder::new()
                .name("swarmkv-durable-mark".into())
                .spawn(move || keep(&shared, &mark, &write_seq))
                .map_err(|e| log::warn!("cannot start the durable mark's thread: {e}"))
                .ok()
        };
        MarkKeeper {
            shared,
            mark,
            thread,
        }
    }

    /// The sequence a sync starting now will cover.
    pub(crate) fn before_sync(&self) -> u64 {
        lock(&self.shared.0).written
    }

    /// A sync that started after `covered` was written succeeded.
    pub(crate) fn after_sync(&self, covered: u64) {
        let (m, cv) = &*self.shared;
        let mut st = lock(m);
        st.durable = st.durable.max(covered);
        if st.work_due() {
            cv.notify_one();
        }
    }

    /// Stops the thread; then, if `final_sync` makes everything durable, records the last
    /// sequence in the mark so that a cleanly closed store is covered entirely.
    pub(crate) fn close(
        &mut self,
        write_seq: impl FnOnce(u64) -> Result<()>,
        final_sync: impl FnOnce() -> Result<()>,
    ) {
        {
            let (m, cv) = &*self.shared;
            lock(m).stop = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let next = lock(&self.shared.0).written + 1;
        let r = write_seq(next)
            .and_then(|()| final_sync())
            .and_then(|()| write_mark(&self.mark, next));
        if let Err(e) = r {
            log::warn!("closing the store without a final durable mark: {e}");
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One step of the keeper thread.
enum Job {
    /// A sync covered this sequence: record it in the mark.
    Mark(u64),
    /// The mark is current and an interval passed: write this next sequence into sled.
    Seq(u64),
}

/// The keeper thread: writes the mark when a sync covered a newer sequence, and the next
/// sequence when the previous one is marked and an interval has passed.
fn keep(shared: &(Mutex<State>, Condvar), mark: &Path, write_seq: &SeqWriter) {
    let (m, cv) = shared;
    loop {
        let job = {
            let mut st = lock(m);
            while !st.work_due() {
                st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop {
                return;
            }
            if st.durable > st.marked {
                Job::Mark(st.durable)
            } else {
                Job::Seq(st.written + 1)
            }
        };
        let r = match job {
            Job::Mark(seq) => write_mark(mark, seq).map(|()| lock(m).marked = seq),
            Job::Seq(seq) => write_seq(seq).map(|()| {
                let mut st = lock(m);
                st.written = seq;
                st.last_write = Instant::now();
            }),
        };
        let mut st = lock(m);
        match r {
            Ok(()) => st.failing = false,
            Err(e) => {
                if !st.failing {
                    log::warn!("cannot advance the durable mark {}: {e}", mark.display());
                }
                st.failing = true;
                // Tried again at a sync after a pause, not in a loop (a full disk, say).
                st.retry_after = Instant::now() + MARK_INTERVAL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_what_was_written() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir"))?;
        let path = mark_path(&dir.path().join("store"));
        assert_eq!(read_mark(&path)?, None);
        write_mark(&path, 42)?;
        assert_eq!(read_mark(&path)?, Some(42));
        write_mark(&path, u64::MAX)?;
        assert_eq!(read_mark(&path)?, Some(u64::MAX));
        Ok(())
    }

    #[test]
    fn a_damaged_mark_is_corrupt_and_names_its_path() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir"))?;
        let path = mark_path(&dir.path().join("store"));
        for bad in [
            "".to_string(),
            "hello".to_string(),
            encode(7).replace("seq 7", "seq 8"),
            encode(7).replace("crc ", "crc x"),
        ] {
            std::fs::write(&path, &bad).map_err(StoreError::io("write"))?;
            match read_mark(&path) {
                Err(StoreError::Corrupt { location, .. }) => {
                    assert_eq!(location, path.display().to_string())
                }
                other => panic!("{bad:?} read as {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn the_mark_sits_beside_the_store_directory() {
        assert_eq!(
            mark_path(Path::new("/data/swarmkv/store")),
            PathBuf::from("/data/swarmkv/store.durable-mark")
        );
    }
}

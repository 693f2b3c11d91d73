//! Where the raft log's segment files live: a directory on disk ([`DirFs`]) or memory with
//! simulated crashes ([`MemFs`]). The log is written against [`LogFs`] so that its crash
//! behaviour can be tested deterministically, the way `mem_backend` does for sled.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, StoreError};

/// The files of a raft log, named by segment id. The contract is the one of POSIX files: a
/// `write_at` is durable only after a `sync` of that segment returned; `create` and `remove`
/// are durable when they return.
pub trait LogFs: Send + Sync + 'static {
    /// Segment ids present, ascending.
    fn list(&self) -> Result<Vec<u64>>;
    /// Creates segment `id`, zero-filled to `prealloc` bytes; the file and its directory entry
    /// are durable when this returns (a crash cannot leave a log that skips a segment).
    fn create(&self, id: u64, prealloc: u64) -> Result<()>;
    /// The segment's length in bytes (at least its preallocated length).
    fn len(&self, id: u64) -> Result<u64>;
    /// Up to `len` bytes at `offset`: fewer when the segment ends first.
    fn read_at(&self, id: u64, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Writes `data` at `offset` with one positioned write (looping only on a short write).
    fn write_at(&self, id: u64, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes every write to the segment durable (fdatasync).
    fn sync(&self, id: u64) -> Result<()>;
    /// A sync of the segment to run later, on another thread: it makes durable at least every
    /// write that returned before the call to this method. The segment may be removed
    /// meanwhile (the log syncs a segment before it leaves it, and removes only old ones):
    /// the sync then has nothing left to do.
    fn syncer(&self, id: u64) -> Result<Syncer>;
    /// Deletes the segment.
    fn remove(&self, id: u64) -> Result<()>;
    /// How to name the segment in an error message (its path).
    fn describe(&self, id: u64) -> String;
}

/// A deferred sync (see [`LogFs::syncer`]).
pub type Syncer = Box<dyn FnOnce() -> Result<()> + Send>;

/// Segment files `{id:016x}.log` in one directory, with their handles kept open (one open
/// per segment per process rather than one per write or read).
pub struct DirFs {
    dir: PathBuf,
    files: Mutex<HashMap<u64, Arc<File>>>,
}

/// A poisoned lock still holds consistent data here: every critical section is a map
/// lookup or insert that does not panic midway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirFs {
    /// Opens (creating it if needed) the directory of a raft log.
    pub fn open(dir: &Path) -> Result<DirFs> {
        std::fs::create_dir_all(dir).map_err(StoreError::io("creating the raft log directory"))?;
        Ok(DirFs {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.log"))
    }

    fn file(&self, id: u64) -> Result<Arc<File>> {
        let mut files = lock(&self.files);
        if let Some(f) = files.get(&id) {
            return Ok(f.clone());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(id))
            .map_err(StoreError::io("opening a raft log segment"))?;
        let f = Arc::new(f);
        files.insert(id, f.clone());
        Ok(f)
    }

    /// A new directory entry (or a removed one) is durable only once the directory is synced.
    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("syncing the raft log directory"))
    }
}

impl LogFs for DirFs {
    fn list(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let read = std::fs::read_dir(&self.dir).map_err(StoreError::io("listing the raft log"))?;
        for entry in read {
            let entry = entry.map_err(StoreError::io("listing the raft log"))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            if hex.len() == 16 {
                if let Ok(id) = u64::from_str_radix(hex, 16) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn create(&self, id: u64, prealloc: u64) -> Result<()> {
        let during = "creating a raft log segment";
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(id))
            .map_err(StoreError::io(during))?;
        if prealloc > 0 {
            let len = libc::off_t::try_from(prealloc).unwrap_or(libc::off_t::MAX);
            // SAFETY: `f` is an open file descriptor for the duration of the call.
            let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
            if rc != 0 {
                return Err(StoreError::Io {
                    during,
                    source: std::io::Error::from_raw_os_error(rc),
                });
            }
        }
        f.sync_all().map_err(StoreError::io(during))?;
        self.sync_dir()?;
        lock(&self.files).insert(id, Arc::new(f));
        Ok(())
    }

    fn len(&self, id: u64) -> Result<u64> {
        Ok(self
            .file(id)?
            .metadata()
            .map_err(StoreError::io("reading a raft log segment's length"))?
            .len())
    }

    fn read_at(&self, id: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.file(id)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("reading the raft log")(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn write_at(&self, id: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.file(id)?
            .write_all_at(data, offset)
            .map_err(StoreError::io("writing the raft log"))
    }

    fn sync(&self, id: u64) -> Result<()> {
        self.file(id)?
            .sync_data()
            .map_err(StoreError::io("syncing the raft log"))
    }

    fn syncer(&self, id: u64) -> Result<Syncer> {
        // The handle itself: an fdatasync of a removed file still succeeds.
        let f = self.file(id)?;
        Ok(Box::new(move || {
            f.sync_data()
                .map_err(StoreError::io("syncing the raft log"))
        }))
    }

    fn remove(&self, id: u64) -> Result<()> {
        lock(&self.files).remove(&id);
        std::fs::remove_file(self.path(id))
            .map_err(StoreError::io("removing a raft log segment"))?;
        self.sync_dir()
    }

    fn describe(&self, id: u64) -> String {
        self.path(id).display().to_string()
    }
}

/// Segments in memory, modelling what survives a crash: the bytes of a segment as of its
/// last sync, plus the writes since then ("unsynced"), which [`MemFs::crash`] loses except
/// for a prefix. Clones share the same files (a test keeps one to crash or corrupt them).
#[derive(Clone, Default)]
pub struct MemFs {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    segments: BTreeMap<u64, MemSegment>,
    /// Orders unsynced writes across segments: a crash keeps a prefix in this order.
    next_seq: u64,
    /// Syncs so far.
    syncs: u64,
}

#[derive(Default)]
struct MemSegment {
    /// Preallocation is virtual: reads past `durable` return zeros up to this length.
    prealloc: u64,
    durable: Vec<u8>,
    /// (write sequence number, offset, bytes) since the last sync, in write order.
    unsynced: Vec<(u64, u64, Vec<u8>)>,
}

fn overwrite(dst: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    if dst.len() < start + data.len() {
        dst.resize(start + data.len(), 0);
    }
    dst[start..start + data.len()].copy_from_slice(data);
}

impl MemSegment {
    /// A sync: every write so far becomes durable.
    fn sync(&mut self) {
        for (_, offset, data) in std::mem::take(&mut self.unsynced) {
            overwrite(&mut self.durable, offset, &data);
        }
    }

    fn len(&self) -> u64 {
        let written = self.unsynced.iter().map(|(_, o, d)| o + d.len() as u64);
        written
            .chain([self.prealloc, self.durable.len() as u64])
            .max()
            .unwrap_or(0)
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> MemFs {
        MemFs::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        lock(&self.inner)
    }

    fn missing(id: u64) -> StoreError {
        StoreError::Io {
            during: "using a memory raft log segment",
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("segment {id} does not exist"),
            ),
        }
    }

    /// Number of segment syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.state().syncs
    }

    /// Simulates a power loss: every write since the last sync of its segment is lost, except
    /// the first `keep_unsynced_bytes` bytes in write order (the last kept write may be cut
    /// in the middle: a torn tail).
    pub fn crash(&self, keep_unsynced_bytes: usize) {
        let mut st = self.state();
        let mut writes: Vec<(u64, u64, u64, Vec<u8>)> = Vec::new();
        for (id, seg) in st.segments.iter_mut() {
            for (seq, offset, data) in seg.unsynced.drain(..) {
                writes.push((seq, *id, offset, data));
            }
        }
        writes.sort_by_key(|w| w.0);
        let mut budget = keep_unsynced_bytes;
        for (_, id, offset, data) in writes {
            if budget == 0 {
                break;
            }
            let kept = data.len().min(budget);
            budget -= kept;
            if let Some(seg) = st.segments.get_mut(&id) {
                overwrite(&mut seg.durable, offset, &data[..kept]);
            }
        }
    }

    /// Bytes written that no sync has made durable yet.
    pub fn unsynced_bytes(&self) -> usize {
        let st = self.state();
        let writes = st.segments.values().flat_map(|s| &s.unsynced);
        writes.map(|(_, _, d)| d.len()).sum()
    }

    /// XORs the byte at `offset` of segment `id` with `byte` (damage, for tests).
    pub fn corrupt(&self, id: u64, offset: u64, byte: u8) {
        let mut st = self.state();
        let Some(seg) = st.segments.get_mut(&id) else {
            return;
        };
        let mut current = [0u8];
        if let Some(b) = seg.durable.get(offset as usize) {
            current[0] = *b;
        }
        current[0] ^= byte;
        overwrite(&mut seg.durable, offset, &current);
        for (_, o, data) in seg.unsynced.iter_mut() {
            if (*o..*o + data.len() as u64).contains(&offset) {
                data[(offset - *o) as usize] ^= byte;
            }
        }
    }

    /// Segment ids present, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.state().segments.keys().copied().collect()
    }
}

impl LogFs for MemFs {
    fn list(&self) -> Result<Vec<u64>> {
        Ok(self.ids())
    }

    fn create(&self, id: u64, prealloc: u64) -> Result<()> {
        let mut st = self.state();
        if st.segments.contains_key(&id) {
            return Err(StoreError::Io {
                during: "creating a memory raft log segment",
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("segment {id} exists"),
                ),
            });
        }
        let seg = MemSegment {
            prealloc,
            ..MemSegment::default()
        };
        st.segments.insert(id, seg);
        Ok(())
    }

    fn len(&self, id: u64) -> Result<u64> {
        let st = self.state();
        Ok(st.segments.get(&id).ok_or_else(|| Self::missing(id))?.len())
    }

    fn read_at(&self, id: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let st = self.state();
        let seg = st.segments.get(&id).ok_or_else(|| Self::missing(id))?;
        let end = seg.len().min(offset.saturating_add(len as u64));
        let mut out = vec![0u8; end.saturating_sub(offset) as usize];
        let mut copy = |o: u64, data: &[u8]| {
            let (lo, hi) = (o.max(offset), (o + data.len() as u64).min(end));
            if lo < hi {
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - o) as usize..(hi - o) as usize]);
            }
        };
        copy(0, &seg.durable);
        for (_, o, data) in &seg.unsynced {
            copy(*o, data);
        }
        Ok(out)
    }

    fn write_at(&self, id: u64, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        let seg = st.segments.get_mut(&id).ok_or_else(|| Self::missing(id))?;
        seg.unsynced.push((seq, offset, data.to_vec()));
        Ok(())
    }

    fn sync(&self, id: u64) -> Result<()> {
        let mut st = self.state();
        st.syncs += 1;
        st.segments
            .get_mut(&id)
            .ok_or_else(|| Self::missing(id))?
            .sync();
        Ok(())
    }

    fn syncer(&self, id: u64) -> Result<Syncer> {
        let fs = self.clone();
        Ok(Box::new(move || {
            let mut st = fs.state();
            st.syncs += 1;
            if let Some(seg) = st.segments.get_mut(&id) {
                seg.sync();
            }
            Ok(())
        }))
    }

    fn remove(&self, id: u64) -> Result<()> {
        self.state()
            .segments
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| Self::missing(id))
    }

    fn describe(&self, id: u64) -> String {
        format!("mem:{id:016x}.log")
    }
}

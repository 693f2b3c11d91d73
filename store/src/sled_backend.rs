//! The durable [`Backend`]: one sled database per node, one sled tree per [`TreeId`].
//!
//! # Durability
//! sled 0.34.7's `flush()` writes its log buffers and waits on `sync_file_range`, which survives
//! a killed process but not a power loss: it neither flushes the device cache nor the file's
//! metadata, and sled's real `fsync` only runs in its background flusher. fsync acts on the
//! inode, not on a descriptor, so [`SledBackend::sync`] calls `flush()` and then `sync_data()`
//! (fdatasync) on a second handle to sled's data file `db`: one real fdatasync per sync however
//! many groups and trees the synced batches touched. Values above sled's blob threshold
//! (a quarter of a segment, about 128 KiB) live in files of their own under `blobs/` that sled
//! never syncs; a sync also fdatasyncs any blob file created since the previous sync, and the
//! `blobs` directory, so large values are as durable as small ones.
//!
//! # Lost writes
//! sled drops a damaged log's tail without an error. [`crate::durable_mark`] keeps a sequence
//! in sled and a mark file beside its directory; [`SledBackend::open`] refuses a store whose
//! sequence is behind its mark with [`StoreError::LostWrites`] (see that module for exactly
//! which losses it catches).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backend::{range_is_empty, Backend, BackendBatch, Scan, TreeId, Visitor};
use crate::durable_mark::{self, MarkKeeper, SEQ_KEY};
use crate::error::{Result, StoreError};

/// Tuning of the sled engine.
#[derive(Clone, Debug)]
pub struct SledConfig {
    /// Page cache size in bytes.
    pub cache_capacity: u64,
    /// sled's background flush period; `None` leaves durability to explicit syncs only.
    pub flush_every_ms: Option<u64>,
}

impl Default for SledConfig {
    fn default() -> SledConfig {
        SledConfig {
            cache_capacity: 256 * 1024 * 1024,
            flush_every_ms: None,
        }
    }
}

/// sled on disk, with a real fdatasync behind [`Backend::sync`].
pub struct SledBackend {
    path: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// A second handle to sled's log file, only used for `sync_data`.
    data_file: File,
    /// Blob files already made durable.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Names of the trees that existed before this open created missing ones.
    preexisting: HashSet<&'static str>,
    /// Advances the durable sequence and its mark (`None` only while opening).
    keeper: Option<MarkKeeper>,
}

impl SledBackend {
    /// Opens (creating if needed) the database in directory `path`.
    pub fn open(path: &Path, config: &SledConfig) -> Result<SledBackend> {
        std::fs::create_dir_all(path).map_err(StoreError::io("creating the data directory"))?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(config.flush_every_ms)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| engine_error(path, e))?;
        let names: HashSet<Vec<u8>> = db.tree_names().iter().map(|n| n.to_vec()).collect();
        let preexisting: HashSet<&'static str> = TreeId::ALL
            .iter()
            .map(|t| t.name())
            .filter(|n| names.contains(n.as_bytes()))
            .collect();
        let mut trees = Vec::with_capacity(TreeId::ALL.len());
        for t in TreeId::ALL {
            trees.push(db.open_tree(t.name()).map_err(|e| engine_error(path, e))?);
        }
        // Refuse a store that lost writes it had made durable, before writing anything.
        let meta = trees[TreeId::Meta.index()].clone();
        let found = durable_mark::seq_from(
            path,
            meta.get(SEQ_KEY)
                .map_err(|e| engine_error(path, e))?
                .as_deref(),
        )?;
        durable_mark::check(path, found, preexisting.contains(TreeId::Meta.name()))?;
        let data_file =
            File::open(path.join("db")).map_err(StoreError::io("opening sled's data file"))?;
        let mut backend = SledBackend {
            path: path.to_path_buf(),
            db,
            trees,
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
            preexisting,
            keeper: None,
        };
        // The next sequence, made durable with the files sled just created, then marked: from
        // here on a loss of anything this open found is detected.
        let start = found.unwrap_or(0) + 1;
        write_seq(&meta, path, start)?;
        // Make the files sled just created reachable after a power loss, once.
        backend.sync()?;
        for dir in [path.to_path_buf(), path.join("blobs")] {
            if dir.is_dir() {
                sync_dir(&dir)?;
            }
        }
        durable_mark::write_mark(&durable_mark::mark_path(path), start)?;
        let seq_path = path.to_path_buf();
        backend.keeper = Some(MarkKeeper::start(
            path,
            start,
            Box::new(move |seq| write_seq(&meta, &seq_path, seq)),
        ));
        Ok(backend)
    }

    /// sled's flush, then a real fdatasync (see the module docs).
    fn sync_engine(&self) -> Result<()> {
        // Blobs are written when a batch is written, before the log record that points to
        // them: make them durable first so that a durable log never points to a lost blob.
        self.sync_new_blobs()?;
        self.db.flush().map_err(|e| self.err(e))?;
        self.data_file
            .sync_data()
            .map_err(StoreError::io("fdatasync of sled's data file"))
    }

    fn tree(&self, t: TreeId) -> &sled::Tree {
        &self.trees[t.index()]
    }

    fn err(&self, e: sled::Error) -> StoreError {
        engine_error(&self.path, e)
    }

    /// fdatasyncs blob files created since the last call, then the blob directory.
    fn sync_new_blobs(&self) -> Result<()> {
        let dir = self.path.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("listing sled's blob directory")(e)),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("listing sled's blob directory"))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f
                        .sync_data()
                        .map_err(StoreError::io("fdatasync of a blob"))?,
                    // sled garbage-collected it in between: nothing left to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("opening a blob")(e)),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            sync_dir(&dir)?;
        }
        *synced = present;
        Ok(())
    }
}

/// Writes the durable sequence (not synced: the next sync covers it).
fn write_seq(meta: &sled::Tree, path: &Path, seq: u64) -> Result<()> {
    meta.insert(SEQ_KEY, &durable_mark::seq_bytes(seq))
        .map(|_| ())
        .map_err(|e| engine_error(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync of a directory"))
}

fn engine_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(source) => StoreError::Io {
            during: "a sled operation",
            source,
        },
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            tree: "(sled log)",
            location: match at {
                Some(ptr) => format!("{} at {ptr:?}", path.join("db").display()),
                None => path.join("db").display().to_string(),
            },
            detail: "sled detected a damaged record".into(),
        },
        other => StoreError::Engine {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = self.tree(tree).get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: TreeId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        if range_is_empty(start, end) {
            return Ok(());
        }
        let iter = self.tree(tree).range::<&[u8], _>((start, end));
        let mut step = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<Scan> {
            let (k, v) = item.map_err(|e| self.err(e))?;
            visit(&k, &v)
        };
        if reverse {
            for item in iter.rev() {
                if step(item)? == Scan::Stop {
                    break;
                }
            }
        } else {
            for item in iter {
                if step(item)? == Scan::Stop {
                    break;
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: &BackendBatch) -> Result<()> {
        // One key is atomic on its own, and a plain insert skips what a batch costs: sled
        // writes its log buffer out twice, synchronously, to place the batch's marker.
        if let [(tree, k, v)] = batch.writes.as_slice() {
            let t = self.tree(*tree);
            return match v {
                Some(v) => t.insert(k.as_slice(), v.as_slice()).map(|_| ()),
                None => t.remove(k.as_slice()).map(|_| ()),
            }
            .map_err(|e| self.err(e));
        }
        let mut per_tree: Vec<(TreeId, sled::Batch)> = Vec::new();
        for (tree, k, v) in &batch.writes {
            let pos = match per_tree.iter().position(|(t, _)| t == tree) {
                Some(p) => p,
                None => {
                    per_tree.push((*tree, sled::Batch::default()));
                    per_tree.len() - 1
                }
            };
            let b = &mut per_tree[pos].1;
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        match per_tree.len() {
            0 => Ok(()),
            1 => {
                let (tree, b) = per_tree.remove(0);
                self.tree(tree).apply_batch(b).map_err(|e| self.err(e))
            }
            _ => {
                // Several trees: a sled transaction is the only atomic write across trees.
                let trees: Vec<&sled::Tree> = per_tree.iter().map(|(t, _)| self.tree(*t)).collect();
                use sled::Transactional;
                trees
                    .as_slice()
                    .transaction(|views| {
                        for (view, (_, b)) in views.iter().zip(&per_tree) {
                            view.apply_batch(b)?;
                        }
                        Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| match e {
                        sled::transaction::TransactionError::Storage(e) => self.err(e),
                        sled::transaction::TransactionError::Abort(()) => StoreError::Engine {
                            path: self.path.clone(),
                            message: "transaction aborted".into(),
                        },
                    })
            }
        }
    }

    fn sync(&self) -> Result<()> {
        let covered = self.keeper.as_ref().map(MarkKeeper::before_sync);
        self.sync_engine()?;
        if let (Some(keeper), Some(covered)) = (&self.keeper, covered) {
            keeper.after_sync(covered);
        }
        Ok(())
    }

    fn has_tree(&self, tree: TreeId) -> bool {
        self.preexisting.contains(tree.name())
    }

    /// `wal/` inside the store's directory, beside sled's own files.
    fn raft_log_fs(&self) -> Result<Box<dyn crate::raft_log::LogFs>> {
        Ok(Box::new(crate::raft_log::DirFs::open(
            &self.path.join("wal"),
        )?))
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

impl Drop for SledBackend {
    /// A store closed cleanly leaves a mark that covers every write it made.
    fn drop(&mut self) {
        if let Some(mut keeper) = self.keeper.take() {
            let meta = self.tree(TreeId::Meta).clone();
            keeper.close(
                |seq| write_seq(&meta, &self.path, seq),
                || self.sync_engine(),
            );
        }
    }
}

//! The state machines' recent writes, held in memory in front of the engine and written to it
//! in batches.
//!
//! # Why
//! A write to sled costs far more than its bytes: every batch reserves log space, updates pages
//! and, when synced, rolls sled's IO buffers. Writing each turn's applies to sled made sled
//! half of a busy node's CPU. The state machine does not need to be durable per write: the Raft
//! log is, and a restart re-applies the log from the applied index that sled holds (etcd's
//! bbolt backend and TiKV's kv engine are committed the same way, lazily, behind their logs).
//! So the partitions' writes (the `kv` tree) collect here and reach sled as one batch every
//! ~100 ms, at a memory bound, at a snapshot install or at shutdown ([`Layered::flush`]); every
//! reader sees this layer first, so nothing observable changes.
//!
//! # Contract
//! [`Layered`] is itself a [`Backend`] over the engine `B`:
//! - writes to [`TreeId::Kv`] only go to the layer: visible at once, durable after the next
//!   [`Layered::flush`] (not after [`Backend::sync`]);
//! - writes to other trees go straight to `B`, and `sync` syncs `B`;
//! - a batch that touches the `kv` tree and another tree (a snapshot install, a replica's
//!   removal) first moves the layer into `B`, then goes to `B` as one atomic write, so that it
//!   stays atomic and nothing in the layer can shadow it.
//!
//! A crash loses the layer: the store then holds each partition as of its last flush, with the
//! applied index written in the same batch, and replays the Raft log from there.
//!
//! State kept outside the layer that must reach the engine in the same batch as the layer's
//! writes made with it (the client sessions, [`crate::sessions`]) joins each take through the
//! layer's [`Companion`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::{range_is_empty, Backend, BackendBatch, Scan, TreeId, Visitor};
use crate::error::Result;

type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct Layer {
    /// Writes since the last flush began (`None`: a deletion).
    live: Writes,
    /// Writes a flush in progress is moving into the engine: still read from here until the
    /// engine has them.
    flushing: Arc<Writes>,
    /// Approximate bytes of `live`.
    live_bytes: usize,
}

/// What a flush moved into the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Keys written or deleted.
    pub keys: usize,
    /// Approximate bytes of keys and values.
    pub bytes: usize,
}

/// `kv` writes by key (`None`: a deletion).
pub type KvWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// State kept outside the layer whose changes must reach the engine in the same batch as the
/// layer's writes made with them.
pub trait Companion: Send + Sync {
    /// Calls `take` once with the companion's changes as `kv` writes (`None`: a deletion),
    /// holding whatever keeps them consistent with the layer until `take` returns: `take`
    /// moves them and the layer's writes into the engine's next batch.
    fn around_take(&self, take: &mut dyn FnMut(KvWrites));
}

/// An engine with the `kv` tree's recent writes in memory in front of it (see the module docs).
pub struct Layered<B> {
    inner: B,
    layer: RwLock<Layer>,
    /// One flush at a time (a flush and a mixed write both move the layer).
    flush_lock: Mutex<()>,
    companion: Option<Arc<dyn Companion>>,
}

impl<B: Backend> Layered<B> {
    /// `inner` with an empty layer.
    pub fn new(inner: B) -> Layered<B> {
        Layered {
            inner,
            layer: RwLock::new(Layer::default()),
            flush_lock: Mutex::new(()),
            companion: None,
        }
    }

    /// `inner` with an empty layer, whose takes include `companion`'s changes.
    pub fn with_companion(inner: B, companion: Arc<dyn Companion>) -> Layered<B> {
        Layered {
            companion: Some(companion),
            ..Layered::new(inner)
        }
    }

    /// The engine underneath.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Approximate bytes waiting in the layer.
    pub fn pending_bytes(&self) -> usize {
        self.read().live_bytes
    }

    fn read(&self) -> RwLockReadGuard<'_, Layer> {
        // Only this file mutates the layer, without panicking midway: a poisoned lock still
        // guards consistent data.
        self.layer.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_layer(&self) -> RwLockWriteGuard<'_, Layer> {
        self.layer.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the layer's writes (and the companion's changes) to `flushing`.
    fn take(&self) -> Arc<Writes> {
        let mut taken = None;
        let mut take = |extra: KvWrites| {
            let mut layer = self.write_layer();
            let mut live = std::mem::take(&mut layer.live);
            live.extend(extra);
            layer.live_bytes = 0;
            layer.flushing = Arc::new(live);
            taken = Some(layer.flushing.clone());
        };
        match &self.companion {
            Some(c) => c.around_take(&mut take),
            None => take(Vec::new()),
        }
        // A companion calls `take` exactly once; were it not to, nothing was taken.
        taken.unwrap_or_default()
    }

    /// Moves the layer into the engine (one atomic write) without syncing it.
    fn drain(&self) -> Result<FlushStats> {
        let flushing = self.take();
        let mut batch = BackendBatch::default();
        for (k, v) in flushing.iter() {
            match v {
                Some(v) => batch.put(TreeId::Kv, k.clone(), v.clone()),
                None => batch.delete(TreeId::Kv, k.clone()),
            }
        }
        let stats = FlushStats {
            keys: batch.len(),
            bytes: batch.bytes(),
        };
        let written = if batch.is_empty() {
            Ok(())
        } else {
            self.inner.write(&batch)
        };
        let mut layer = self.write_layer();
        match written {
            Ok(()) => layer.flushing = Arc::new(Writes::new()),
            Err(e) => {
                // Nothing may be lost: what failed to move goes back under the newer writes.
                let failed = std::mem::take(&mut layer.flushing);
                let newer = std::mem::take(&mut layer.live);
                let mut live = Arc::try_unwrap(failed).unwrap_or_else(|a| (*a).clone());
                live.extend(newer);
                layer.live_bytes = live.iter().map(|(k, v)| entry_bytes(k, v)).sum();
                layer.live = live;
                return Err(e);
            }
        }
        Ok(stats)
    }

    /// Writes everything in the layer to the engine as one batch and syncs the engine: on
    /// return, every `kv` write made before the call is durable.
    pub fn flush(&self) -> Result<FlushStats> {
        let _one = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let stats = self.drain()?;
        self.inner.sync()?;
        Ok(stats)
    }

    /// The layer's records in `[start, end)`, newest write per key, in key order.
    fn layered_range<'a>(
        layer: &'a Layer,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Vec<(&'a [u8], Option<&'a [u8]>)> {
        let range = (start, end);
        let mut out: BTreeMap<&'a [u8], Option<&'a [u8]>> = BTreeMap::new();
        for (k, v) in layer.flushing.range::<[u8], _>(range) {
            out.insert(k.as_slice(), v.as_deref());
        }
        for (k, v) in layer.live.range::<[u8], _>(range) {
            out.insert(k.as_slice(), v.as_deref());
        }
        out.into_iter().collect()
    }
}

/// Shows a layer record to a scan's visitor; a deletion hides the key.
fn emit(v: Option<&[u8]>, k: &[u8], visit: &mut Visitor<'_>) -> Result<Scan> {
    match v {
        Some(v) => visit(k, v),
        None => Ok(Scan::Continue),
    }
}

fn entry_bytes(k: &[u8], v: &Option<Vec<u8>>) -> usize {
    k.len() + v.as_ref().map_or(0, Vec::len) + 32
}

impl<B: Backend> Backend for Layered<B> {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if tree == TreeId::Kv {
            let layer = self.read();
            if let Some(v) = layer.live.get(key).or_else(|| layer.flushing.get(key)) {
                return Ok(v.clone());
            }
        }
        self.inner.get(tree, key)
    }

    fn scan(
        &self,
        tree: TreeId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        if tree != TreeId::Kv || range_is_empty(start, end) {
            return self.inner.scan(tree, start, end, reverse, visit);
        }
        let layer = self.read();
        let mut mine = Self::layered_range(&layer, start, end);
        if mine.is_empty() {
            return self.inner.scan(tree, start, end, reverse, visit);
        }
        if reverse {
            mine.reverse();
        }
        // Merge: the engine's records in order, with the layer's records slotted in before
        // them and replacing (or, for a deletion, hiding) those with the same key.
        let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
        let mut next = 0;
        let mut stopped = false;
        self.inner.scan(tree, start, end, reverse, &mut |k, v| {
            while let Some((mk, mv)) = mine.get(next).copied() {
                if !before(mk, k) {
                    break;
                }
                next += 1;
                if emit(mv, mk, visit)? == Scan::Stop {
                    stopped = true;
                    return Ok(Scan::Stop);
                }
            }
            let step = match mine.get(next).copied() {
                Some((mk, mv)) if mk == k => {
                    next += 1;
                    emit(mv, mk, visit)?
                }
                _ => visit(k, v)?,
            };
            if step == Scan::Stop {
                stopped = true;
            }
            Ok(step)
        })?;
        if !stopped {
            for (mk, mv) in &mine[next..] {
                if emit(*mv, mk, visit)? == Scan::Stop {
                    break;
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: &BackendBatch) -> Result<()> {
        let kv = batch
            .writes
            .iter()
            .filter(|(t, _, _)| *t == TreeId::Kv)
            .count();
        if kv == 0 {
            return self.inner.write(batch);
        }
        if kv < batch.writes.len() {
            // Atomic across trees: only the engine can do that, and the layer must not shadow
            // what it writes.
            let _one = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.drain()?;
            return self.inner.write(batch);
        }
        let mut layer = self.write_layer();
        for (_, k, v) in &batch.writes {
            layer.live_bytes += entry_bytes(k, v);
            if let Some(old) = layer.live.insert(k.clone(), v.clone()) {
                // A rewrite (a history chunk, a hot key) replaces what it counted.
                layer.live_bytes -= entry_bytes(k, &old);
            }
        }
        Ok(())
    }

    /// Syncs the engine; the layer's writes become durable only with [`Layered::flush`].
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    fn has_tree(&self, tree: TreeId) -> bool {
        self.inner.has_tree(tree)
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.inner.path()
    }

    fn raft_log_fs(&self) -> Result<Box<dyn crate::raft_log::LogFs>> {
        self.inner.raft_log_fs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_backend::MemBackend;

    fn collect(b: &impl Backend, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        b.scan(
            TreeId::Kv,
            Bound::Unbounded,
            Bound::Unbounded,
            reverse,
            &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(Scan::Continue)
            },
        )
        .expect("scan");
        out
    }

    fn put(b: &impl Backend, k: &str, v: Option<&str>) {
        let mut batch = BackendBatch::default();
        match v {
            Some(v) => batch.put(TreeId::Kv, k.into(), v.into()),
            None => batch.delete(TreeId::Kv, k.into()),
        }
        b.write(&batch).expect("write");
    }

    #[test]
    fn reads_see_the_layer_over_the_engine_in_both_directions() {
        let mem = MemBackend::new();
        let l = Layered::new(mem.clone());
        for k in ["a", "c", "e"] {
            put(&l, k, Some("old"));
        }
        l.flush().expect("flush");
        put(&l, "b", Some("new"));
        put(&l, "c", None);
        put(&l, "e", Some("new"));
        put(&l, "f", Some("new"));
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            [("a", "old"), ("b", "new"), ("e", "new"), ("f", "new")]
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
        assert_eq!(collect(&l, false), want);
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(collect(&l, true), rev);
        assert_eq!(l.get(TreeId::Kv, b"c").expect("get"), None);
        assert_eq!(l.get(TreeId::Kv, b"a").expect("get"), Some(b"old".to_vec()));
        // The engine has not seen the layer's writes yet; after a flush it has all of them.
        assert_eq!(collect(&mem, false).len(), 3);
        l.flush().expect("flush");
        assert_eq!(collect(&mem, false), want);
        assert_eq!(l.pending_bytes(), 0);
    }

    #[test]
    fn a_scan_stopped_early_sees_no_more_records() {
        let l = Layered::new(MemBackend::new());
        put(&l, "a", Some("1"));
        l.flush().expect("flush");
        put(&l, "b", Some("2"));
        put(&l, "c", Some("3"));
        let mut seen = Vec::new();
        l.scan(
            TreeId::Kv,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &mut |k, _| {
                seen.push(k.to_vec());
                Ok(if seen.len() == 2 {
                    Scan::Stop
                } else {
                    Scan::Continue
                })
            },
        )
        .expect("scan");
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn a_crash_loses_the_unflushed_layer_and_keeps_the_flushed_one() {
        let mem = MemBackend::new();
        let l = Layered::new(mem.clone());
        put(&l, "kept", Some("1"));
        l.flush().expect("flush");
        put(&l, "lost", Some("2"));
        drop(l);
        mem.crash(0);
        let keys: Vec<Vec<u8>> = collect(&mem, false).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"kept".to_vec()]);
    }

    #[test]
    fn a_write_across_trees_moves_the_layer_first_so_nothing_shadows_it() {
        let mem = MemBackend::new();
        let l = Layered::new(mem.clone());
        put(&l, "k", Some("layer"));
        let mut batch = BackendBatch::default();
        batch.put(TreeId::Kv, b"k".to_vec(), b"install".to_vec());
        batch.put(TreeId::Meta, b"m".to_vec(), b"1".to_vec());
        l.write(&batch).expect("write");
        assert_eq!(
            l.get(TreeId::Kv, b"k").expect("get"),
            Some(b"install".to_vec())
        );
        assert_eq!(l.pending_bytes(), 0);
    }
}

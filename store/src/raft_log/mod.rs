//! A log built for Raft, after etcd's `server/storage/wal`: the hard states, configurations,
//! entries and compactions of every Raft group of a node, appended as CRC-framed records to
//! preallocated segment files, with one write and at most one fsync per batch.
//!
//! - Segments are numbered from 1 and preallocated to [`RaftLogConfig::segment_bytes`]: an
//!   append then writes into allocated blocks, and a zero length marks the end of the data.
//! - A batch is written as one buffer with one `write_at`, and never spans segments: when it
//!   does not fit, the log rolls to a new segment that starts with a header and a checkpoint
//!   (hard state, configuration and truncation point of every group), so that once older
//!   segments are purged, replay from the oldest remaining segment rebuilds every group.
//! - Replay at open applies a batch only when its last record was read (see `record`): a
//!   crash leaves every batch whole or absent. A bad record at the end of the last segment is
//!   a torn write and is cut; any other bad record is [`StoreError::LogDamaged`].
//! - In memory: per group its state and the location of every live entry, so that `term`
//!   never reads the disk and an entry is one positioned read.

mod fs;
mod record;

use std::collections::{BTreeMap, HashMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};

use crate::error::{Result, StoreError};
pub use fs::{DirFs, LogFs, MemFs, Syncer};
use record::{Frame, Kind, Payload};

/// How the log lays out its files.
#[derive(Clone, Debug)]
pub struct RaftLogConfig {
    /// Size each segment is preallocated to; a batch that does not fit starts a new segment
    /// (a batch larger than this makes its segment longer).
    pub segment_bytes: u64,
}

impl Default for RaftLogConfig {
    fn default() -> Self {
        RaftLogConfig {
            segment_bytes: 16 << 20,
        }
    }
}

/// What the log holds for one group, as replayed or as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupLog {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The log starts after this (compaction or snapshot point).
    pub truncated_index: u64,
    pub truncated_term: u64,
    /// Equal to the truncation point when the log holds no entry.
    pub last_index: u64,
    pub last_term: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    Compact(u64, u64),
    Reset(u64, u64),
    RemoveGroup,
}

/// Changes to any number of groups, written by [`RaftLog::write`] as one unit: after a crash
/// the whole batch is in the log or none of it. Operations apply in the order they were added.
#[derive(Default, Debug, Clone)]
pub struct RaftLogBatch {
    ops: Vec<(u64, Op)>,
}

impl RaftLogBatch {
    /// Appends consecutive entries; a first index at or below the last one replaces the
    /// conflicting suffix of the log from there.
    pub fn append(&mut self, group: u64, entries: &[Entry]) {
        if !entries.is_empty() {
            self.ops.push((group, Op::Append(entries.to_vec())));
        }
    }

    pub fn set_hard_state(&mut self, group: u64, hs: &HardState) {
        self.ops.push((group, Op::HardState(hs.clone())));
    }

    pub fn set_conf_state(&mut self, group: u64, cs: &ConfState) {
        self.ops.push((group, Op::ConfState(cs.clone())));
    }

    /// Entries up to `index` are gone and the log starts after `(index, term)`; a no-op when
    /// `index` is not past the truncation point, and past the last index it empties the log.
    pub fn compact(&mut self, group: u64, index: u64, term: u64) {
        self.ops.push((group, Op::Compact(index, term)));
    }

    /// A snapshot at `(index, term)` was installed: every entry is gone and the log restarts
    /// after it.
    pub fn reset(&mut self, group: u64, index: u64, term: u64) {
        self.ops.push((group, Op::Reset(index, term)));
    }

    /// The group's replica is destroyed: the log forgets it entirely.
    pub fn remove_group(&mut self, group: u64) {
        self.ops.push((group, Op::RemoveGroup));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Removes every operation, keeping the allocation.
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

/// What one [`RaftLog::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes written, including a new segment's header and checkpoint.
    pub bytes: u64,
    /// Records of the batch.
    pub records: usize,
    pub entries: usize,
    pub synced: bool,
    /// The batch started a new segment.
    pub rolled: bool,
}

/// What [`RaftLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    /// Records replayed.
    pub records: usize,
    /// The torn final write that was cut: file, offset, bytes discarded.
    pub torn_tail: Option<(String, u64, u64)>,
}

/// Where a live entry's record is. The term is kept so that `term` never reads the disk.
#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    term: u64,
}

#[derive(Clone, Debug, Default)]
struct GroupIndex {
    log: GroupLog,
    /// Index of `entries[0]`.
    first: u64,
    entries: VecDeque<Loc>,
}

/// One record's effect on the in-memory index, shared by writing and replaying.
enum Change {
    None,
    Entry { index: u64, loc: Loc },
    HardState(HardState),
    ConfState(ConfState),
    Compact(u64, u64),
    Reset(u64, u64),
    Remove,
}

fn apply(groups: &mut BTreeMap<u64, GroupIndex>, group: u64, change: Change) {
    match change {
        Change::None => return,
        Change::Remove => {
            groups.remove(&group);
            return;
        }
        _ => {}
    }
    let g = groups.entry(group).or_default();
    let l = &mut g.log;
    match change {
        Change::None | Change::Remove => {}
        Change::Entry { index, loc } => {
            if !g.entries.is_empty() && index >= g.first && index <= l.last_index.saturating_add(1)
            {
                g.entries.truncate((index - g.first) as usize);
            } else {
                // Either the log was empty, or (replaying from after a purge) the entries
                // before this one are in a deleted segment: a later compaction must cover
                // them, which `check_shape` verifies at the end of the replay.
                g.entries.clear();
                g.first = index;
            }
            g.entries.push_back(loc);
            (l.last_index, l.last_term) = (index, loc.term);
        }
        Change::HardState(hs) => l.hard_state = hs,
        Change::ConfState(cs) => l.conf_state = cs,
        // `>=`: a checkpoint restates the truncation point, which must also set the term
        // of a group that replay from this segment creates (a written compaction is always
        // past the truncation point).
        Change::Compact(index, term) if index >= l.truncated_index => {
            (l.truncated_index, l.truncated_term) = (index, term);
            while !g.entries.is_empty() && g.first <= index {
                g.entries.pop_front();
                g.first += 1;
            }
            if index >= l.last_index {
                (l.last_index, l.last_term) = (index, term);
                g.entries.clear();
            }
        }
        Change::Compact(..) => {}
        Change::Reset(index, term) => {
            g.entries.clear();
            (l.truncated_index, l.truncated_term) = (index, term);
            (l.last_index, l.last_term) = (index, term);
        }
    }
}

/// How a replayed segment ends.
#[derive(Clone, Copy)]
struct Scan {
    /// One past the last complete batch: where writing continues.
    end: u64,
    /// One past the header and checkpoint (0 when even those are incomplete).
    prologue_end: u64,
    /// One past the last non-zero byte.
    data_end: u64,
}

/// The Raft log of every group of a node. Not thread-safe by itself: the owner serialises
/// writes (one writer per node, as in a Ready loop) and may share reads behind a lock.
pub struct RaftLog {
    fs: Box<dyn LogFs>,
    config: RaftLogConfig,
    groups: BTreeMap<u64, GroupIndex>,
    /// Segment ids, ascending; the last one is active (written to).
    segments: Vec<u64>,
    active_offset: u64,
    active_prologue_end: u64,
    /// The active segment has writes not yet synced in place (a deferred sync does not
    /// clear this: the log syncs a segment again before it leaves it).
    unsynced: bool,
    /// Writes so far, and how many of them a sync has made durable (in place, or deferred
    /// and reported through [`RaftLog::synced`]).
    writes: u64,
    synced_writes: u64,
    bytes_written: u64,
    report: OpenReport,
    /// A write or sync failed: what reached the file is unknown (fsync errors may even have
    /// dropped pages), so writing on could leave a mix; the log must be reopened, as etcd and
    /// PostgreSQL treat a failed fsync.
    failed: bool,
}

impl RaftLog {
    /// Opens the log in `fs`, replaying every segment; creates segment 1 when there is none.
    pub fn open(fs: Box<dyn LogFs>, config: RaftLogConfig) -> Result<RaftLog> {
        let ids = fs.list()?;
        let mut log = RaftLog {
            fs,
            config,
            groups: BTreeMap::new(),
            segments: Vec::new(),
            active_offset: 0,
            active_prologue_end: 0,
            unsynced: false,
            writes: 0,
            synced_writes: 0,
            bytes_written: 0,
            report: OpenReport::default(),
            failed: false,
        };
        if let Some(w) = ids.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(log.damage(
                w[0] + 1,
                0,
                format!("missing (the log goes on at {})", w[1]),
            ));
        }
        let mut scans = Vec::with_capacity(ids.len());
        for (n, &id) in ids.iter().enumerate() {
            let len = log.fs.len(id)?;
            let len = usize::try_from(len)
                .map_err(|_| log.damage(id, 0, format!("{len} bytes do not fit in memory")))?;
            let buf = log.fs.read_at(id, 0, len)?;
            scans.push(log.replay_segment(id, &buf, n + 1 == ids.len())?);
            log.segments.push(id);
        }
        log.check_shape()?;
        log.repair_tail(&mut scans)?;
        log.report.segments = log.segments.len();
        Ok(log)
    }

    fn damage(&self, segment: u64, offset: u64, detail: impl Into<String>) -> StoreError {
        StoreError::LogDamaged {
            file: self.fs.describe(segment),
            offset,
            detail: detail.into(),
        }
    }

    /// Applies the complete batches of one segment. In the last segment a bad record that
    /// looks torn (see `record::looks_torn`) ends the replay there; anywhere else it is damage.
    fn replay_segment(&mut self, id: u64, buf: &[u8], last: bool) -> Result<Scan> {
        let data_end = buf.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        let mut pending: Vec<(u64, Change)> = Vec::new();
        let (mut off, mut end, mut prologue_end) = (0usize, 0usize, 0usize);
        loop {
            let (kind, batch_end, group, payload, next) = match record::parse(buf, off) {
                Frame::End if pending.is_empty() => break,
                Frame::End if last => break,
                Frame::End => return Err(self.damage(id, off as u64, "segment ends mid-batch")),
                Frame::Bad { end: claimed, .. }
                    if last && record::looks_torn(buf, off, claimed, data_end) =>
                {
                    break
                }
                Frame::Bad { detail, .. } => return Err(self.damage(id, off as u64, detail)),
                Frame::Good {
                    kind,
                    batch_end,
                    group,
                    payload,
                    next,
                } => (kind, batch_end, group, payload, next),
            };
            let payload =
                record::decode(kind, payload).map_err(|d| self.damage(id, off as u64, d))?;
            let change = match payload {
                Payload::Header { segment } if off == 0 && segment == id => Change::None,
                Payload::Header { segment } => {
                    let d = format!("unexpected header of segment {segment}");
                    return Err(self.damage(id, off as u64, d));
                }
                _ if off == 0 => return Err(self.damage(id, 0, "no segment header")),
                Payload::Entry(e) => Change::Entry {
                    index: e.index,
                    loc: Loc {
                        segment: id,
                        offset: off as u64,
                        len: (next - off) as u32,
                        term: e.term,
                    },
                },
                Payload::HardState(hs) => Change::HardState(hs),
                Payload::ConfState(cs) => Change::ConfState(cs),
                Payload::Compact { index, term } => Change::Compact(index, term),
                Payload::Reset { index, term } => Change::Reset(index, term),
                Payload::RemoveGroup => Change::Remove,
            };
            pending.push((group, change));
            off = next;
            if batch_end {
                self.report.records += pending.len();
                for (group, change) in pending.drain(..) {
                    apply(&mut self.groups, group, change);
                }
                end = off;
                if prologue_end == 0 {
                    prologue_end = off;
                }
            }
        }
        if !last && prologue_end == 0 {
            return Err(self.damage(id, 0, "segment has no complete header"));
        }
        Ok(Scan {
            end: end as u64,
            prologue_end: prologue_end as u64,
            data_end: data_end as u64,
        })
    }

    /// After replay every group's live entries must be exactly `(truncated, last]`.
    fn check_shape(&self) -> Result<()> {
        for (&group, g) in &self.groups {
            let l = &g.log;
            let ok = match g.entries.is_empty() {
                true => l.last_index == l.truncated_index,
                false => {
                    l.last_index > l.truncated_index
                        && g.first == l.truncated_index.saturating_add(1)
                }
            };
            if !ok {
                return Err(StoreError::LogHole {
                    group,
                    expected: l.truncated_index.saturating_add(1),
                    found: if g.entries.is_empty() {
                        l.last_index
                    } else {
                        g.first
                    },
                });
            }
        }
        Ok(())
    }

    /// Makes the end of the log writable: a last segment whose header and checkpoint are
    /// incomplete (a crash while rolling) is removed, bytes after the last complete batch
    /// (a torn write) are zeroed so that they cannot resurface behind later batches, and the
    /// segment is synced. Creates segment 1 in an empty log.
    fn repair_tail(&mut self, scans: &mut Vec<Scan>) -> Result<()> {
        if let (Some(&id), Some(scan)) = (self.segments.last(), scans.last()) {
            if scan.prologue_end == 0 {
                self.note_torn(id, 0, scan.data_end);
                self.fs.remove(id)?;
                self.segments.pop();
                scans.pop();
                if self.segments.is_empty() {
                    // Nothing was replayed: start afresh under the same id.
                    return self.start_segment(id);
                }
            }
        }
        let (Some(&id), Some(scan)) = (self.segments.last(), scans.last()) else {
            return self.start_segment(1);
        };
        if scan.data_end > scan.end {
            self.note_torn(id, scan.end, scan.data_end - scan.end);
            let zeros = vec![0u8; (scan.data_end - scan.end) as usize];
            self.fs.write_at(id, scan.end, &zeros)?;
        }
        // What was replayed may still be only in the page cache (the last process exited
        // without a sync): make it durable before building on it, or a later power loss
        // could tear it out from under segments written after it.
        self.fs.sync(id)?;
        self.active_offset = scan.end;
        self.active_prologue_end = scan.prologue_end;
        Ok(())
    }

    fn note_torn(&mut self, id: u64, offset: u64, bytes: u64) {
        let file = self.fs.describe(id);
        log::warn!("raft log: cutting a torn write of {bytes} bytes at {file} offset {offset}");
        self.report.torn_tail = Some((file, offset, bytes));
    }

    /// Creates segment `id` holding only its prologue, synced.
    fn start_segment(&mut self, id: u64) -> Result<()> {
        let prologue = self.prologue(id)?;
        self.fs.create(id, self.config.segment_bytes)?;
        self.fs.write_at(id, 0, &prologue)?;
        self.fs.sync(id)?;
        self.segments.push(id);
        self.active_offset = prologue.len() as u64;
        self.active_prologue_end = self.active_offset;
        self.bytes_written += self.active_offset;
        Ok(())
    }

    /// A segment's header and checkpoint, as one batch: every group's hard state,
    /// configuration and truncation point, as they are before the batch that rolls.
    fn prologue(&self, id: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut last = record::put_header(&mut buf, id)?;
        for (&group, g) in &self.groups {
            let l = &g.log;
            record::put_message(&mut buf, Kind::HardState, group, &l.hard_state)?;
            record::put_message(&mut buf, Kind::ConfState, group, &l.conf_state)?;
            last = record::put_pair(
                &mut buf,
                Kind::Compact,
                group,
                l.truncated_index,
                l.truncated_term,
            )?;
        }
        record::end_batch(&mut buf, last);
        Ok(buf)
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Groups the log holds, ascending.
    pub fn groups(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    pub fn group(&self, group: u64) -> Option<GroupLog> {
        self.groups.get(&group).map(|g| g.log.clone())
    }

    /// Validates the whole batch first (an append must continue the log: first index in
    /// `(truncated, last + 1]`, consecutive); on a validation error nothing is written and the
    /// in-memory state is unchanged. Otherwise encodes every record into one buffer, writes it
    /// with one `write_at`, then (if `sync`) syncs once, then updates the in-memory index.
    /// After an I/O error the log refuses further writes: reopen it.
    pub fn write(&mut self, batch: &RaftLogBatch, sync: bool) -> Result<WriteStats> {
        if self.failed {
            return Err(StoreError::Io {
                during: "writing the raft log",
                source: std::io::Error::other("an earlier write or sync failed: reopen the log"),
            });
        }
        let mut stats = WriteStats::default();
        let mut buf = Vec::new();
        let mut changes = Vec::with_capacity(batch.ops.len());
        // Every record makes one change: `changes` is empty exactly when `buf` is.
        let mut last_record = 0;
        // (truncated, last) of each group as the batch goes.
        let mut sim: HashMap<u64, (u64, u64)> = HashMap::new();
        for &(group, ref op) in &batch.ops {
            let (truncated, last) = sim.entry(group).or_insert_with(|| {
                let g = self.groups.get(&group).map(|g| &g.log);
                g.map_or((0, 0), |l| (l.truncated_index, l.last_index))
            });
            let change = match op {
                Op::Append(ents) => {
                    let Some(first) = ents.first().map(|e| e.index) else {
                        continue;
                    };
                    if first <= *truncated || first > last.saturating_add(1) {
                        return Err(StoreError::BadAppend {
                            group,
                            index: first,
                            first: truncated.saturating_add(1),
                            last: *last,
                        });
                    }
                    for (i, e) in ents.iter().enumerate() {
                        if e.index.checked_sub(first) != Some(i as u64) {
                            let index = e.index;
                            return Err(StoreError::NonConsecutiveAppend { group, index });
                        }
                        last_record = record::put_message(&mut buf, Kind::Entry, group, e)?;
                        let len = (buf.len() - last_record) as u32;
                        let (offset, term) = (last_record as u64, e.term);
                        let loc = Loc {
                            segment: 0,
                            offset,
                            len,
                            term,
                        };
                        changes.push((
                            group,
                            Change::Entry {
                                index: e.index,
                                loc,
                            },
                        ));
                    }
                    stats.entries += ents.len();
                    *last = ents.last().map_or(*last, |e| e.index);
                    continue;
                }
                Op::HardState(hs) => {
                    last_record = record::put_message(&mut buf, Kind::HardState, group, hs)?;
                    Change::HardState(hs.clone())
                }
                Op::ConfState(cs) => {
                    last_record = record::put_message(&mut buf, Kind::ConfState, group, cs)?;
                    Change::ConfState(cs.clone())
                }
                Op::Compact(index, _) if *index <= *truncated => continue,
                &Op::Compact(index, term) => {
                    (*truncated, *last) = (index, (*last).max(index));
                    last_record = record::put_pair(&mut buf, Kind::Compact, group, index, term)?;
                    Change::Compact(index, term)
                }
                &Op::Reset(index, term) => {
                    (*truncated, *last) = (index, index);
                    last_record = record::put_pair(&mut buf, Kind::Reset, group, index, term)?;
                    Change::Reset(index, term)
                }
                Op::RemoveGroup => {
                    (*truncated, *last) = (0, 0);
                    last_record = record::put(&mut buf, Kind::RemoveGroup, group, |_| Ok(()))?;
                    Change::Remove
                }
            };
            changes.push((group, change));
        }
        stats.records = changes.len();
        if changes.is_empty() {
            // Nothing to write (an empty batch, or only no-op compactions).
            if sync {
                self.sync()?;
                stats.synced = true;
            }
            return Ok(stats);
        }
        record::end_batch(&mut buf, last_record);

        let active = self.segments.last().copied().unwrap_or(1);
        let roll = self.active_offset + buf.len() as u64 > self.config.segment_bytes
            && self.active_offset > self.active_prologue_end;
        let (segment, offset, prologue_len, data) = if roll {
            let mut data = self.prologue(active.saturating_add(1))?;
            let prologue_len = data.len() as u64;
            data.extend_from_slice(&buf);
            (active.saturating_add(1), 0, prologue_len, data)
        } else {
            (active, self.active_offset, 0, buf)
        };
        if let Err(e) = self.write_out(roll, segment, offset, &data, sync) {
            self.failed = true;
            return Err(e);
        }
        if roll {
            self.segments.push(segment);
            self.active_prologue_end = prologue_len;
        }
        self.active_offset = offset + data.len() as u64;
        self.unsynced = !sync;
        self.writes += 1;
        if sync {
            self.synced_writes = self.writes;
        }
        self.bytes_written += data.len() as u64;
        stats.bytes = data.len() as u64;
        stats.synced = sync;
        stats.rolled = roll;
        for (group, mut change) in changes {
            if let Change::Entry { loc, .. } = &mut change {
                loc.segment = segment;
                loc.offset += offset + prologue_len;
            }
            apply(&mut self.groups, group, change);
        }
        Ok(stats)
    }

    /// The I/O of a write: when rolling, the old segment is synced first (so that segments
    /// before the active one are always whole on disk) and the new one created.
    fn write_out(
        &mut self,
        roll: bool,
        segment: u64,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<()> {
        if roll {
            if self.unsynced {
                self.fs.sync(segment - 1)?;
                self.unsynced = false;
                self.synced_writes = self.writes;
            }
            self.fs.create(segment, self.config.segment_bytes)?;
        }
        self.fs.write_at(segment, offset, data)?;
        if sync {
            self.fs.sync(segment)?;
        }
        Ok(())
    }

    /// Makes every write so far durable (a no-op when the active segment has no unsynced
    /// write: the older ones were synced when the log rolled past them).
    pub fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let active = self.segments.last().copied().unwrap_or(1);
        if let Err(e) = self.fs.sync(active) {
            self.failed = true;
            return Err(e);
        }
        self.unsynced = false;
        self.synced_writes = self.writes;
        Ok(())
    }

    /// Whether the active segment has writes no in-place sync covered.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// A sync of every write so far to run on another thread while the log takes more
    /// writes, with the number of writes it covers (report them through [`RaftLog::synced`]
    /// once it returned `Ok`); `None` when every write is durable already. Writes before the
    /// active segment need none: the log synced each segment before it left it.
    pub fn syncer(&self) -> Result<Option<(u64, Syncer)>> {
        if self.failed {
            return Err(StoreError::Io {
                during: "syncing the raft log",
                source: std::io::Error::other("an earlier write or sync failed: reopen the log"),
            });
        }
        if self.synced_writes >= self.writes {
            return Ok(None);
        }
        let active = self.segments.last().copied().unwrap_or(1);
        Ok(Some((self.writes, self.fs.syncer(active)?)))
    }

    /// A deferred sync from [`RaftLog::syncer`] covering the first `writes` writes returned
    /// `Ok`; after an error, the log refuses further writes, as after its own.
    pub fn synced(&mut self, writes: std::result::Result<u64, ()>) {
        match writes {
            Ok(w) => self.synced_writes = self.synced_writes.max(w),
            Err(()) => self.failed = true,
        }
    }

    /// Entries `[lo, hi)` of `group`: at least one when `lo < hi`, then as many as fit in
    /// `max_size` bytes (`Entry::compute_size`). The errors raft-rs reacts to: `Compacted`
    /// below the log, `Unavailable` past its end.
    pub fn entries(
        &self,
        group: u64,
        lo: u64,
        hi: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>> {
        let empty = GroupIndex::default();
        let g = self.groups.get(&group).unwrap_or(&empty);
        let l = &g.log;
        if lo <= l.truncated_index {
            return Err(StoreError::Compacted {
                group,
                index: lo,
                first: l.truncated_index.saturating_add(1),
            });
        }
        if hi > l.last_index.saturating_add(1) {
            return Err(StoreError::Unavailable {
                group,
                index: hi - 1,
                last: l.last_index,
            });
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in lo..hi {
            let e = self.read_entry(group, g, index)?;
            size += u64::from(e.compute_size());
            if max_size.is_some_and(|max| !out.is_empty() && size > max) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Reads one live entry's record and checks it is the one the index says.
    fn read_entry(&self, group: u64, g: &GroupIndex, index: u64) -> Result<Entry> {
        let loc = index
            .checked_sub(g.first)
            .and_then(|i| g.entries.get(i as usize))
            .ok_or(StoreError::LogHole {
                group,
                expected: index,
                found: g.first,
            })?;
        let buf = self.fs.read_at(loc.segment, loc.offset, loc.len as usize)?;
        let bad = |detail: String| self.damage(loc.segment, loc.offset, detail);
        let (kind, rec_group, payload) = match record::parse(&buf, 0) {
            Frame::Good {
                kind,
                group,
                payload,
                ..
            } => (kind, group, payload),
            Frame::Bad { detail, .. } => return Err(bad(detail)),
            Frame::End => return Err(bad("no record where an entry was written".into())),
        };
        match record::decode(kind, payload).map_err(bad)? {
            Payload::Entry(e) if rec_group == group && e.index == index => Ok(e),
            _ => Err(bad(format!("expected entry {index} of group {group}"))),
        }
    }

    /// The term of entry `index`, from memory: `Compacted` below the truncation point,
    /// `Unavailable` past the last entry.
    pub fn term(&self, group: u64, index: u64) -> Result<u64> {
        let empty = GroupIndex::default();
        let g = self.groups.get(&group).unwrap_or(&empty);
        let l = &g.log;
        if index == l.truncated_index {
            return Ok(l.truncated_term);
        }
        if index < l.truncated_index {
            return Err(StoreError::Compacted {
                group,
                index,
                first: l.truncated_index.saturating_add(1),
            });
        }
        if index > l.last_index {
            return Err(StoreError::Unavailable {
                group,
                index,
                last: l.last_index,
            });
        }
        index
            .checked_sub(g.first)
            .and_then(|i| g.entries.get(i as usize))
            .map(|loc| loc.term)
            .ok_or(StoreError::LogHole {
                group,
                expected: index,
                found: g.first,
            })
    }

    /// Deletes the segments no group needs any more: those before the segment of the oldest
    /// live entry of any group, and never the active one (whose checkpoint, synced first,
    /// then carries what they held of hard states, configurations and truncation points).
    /// Returns how many files were deleted.
    pub fn purge(&mut self) -> Result<usize> {
        let active = self.segments.last().copied().unwrap_or(1);
        let keep_from = self
            .groups
            .values()
            .filter_map(|g| g.entries.front().map(|loc| loc.segment))
            .fold(active, u64::min);
        let doomed = self
            .segments
            .iter()
            .take_while(|id| **id < keep_from)
            .count();
        if doomed == 0 {
            return Ok(0);
        }
        self.sync()?;
        // Oldest first: a crash midway leaves a suffix of segments, which replays as well.
        for _ in 0..doomed {
            self.fs.remove(self.segments[0])?;
            self.segments.remove(0);
        }
        Ok(doomed)
    }

    /// Segment files present.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes written since the log was opened (records, segment headers and checkpoints).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index} of term {term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
        (lo..hi).map(|i| entry(i, term)).collect()
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn conf_state(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        }
    }

    fn open_mem(fs: &MemFs, segment_bytes: u64) -> Result<RaftLog> {
        RaftLog::open(Box::new(fs.clone()), RaftLogConfig { segment_bytes })
    }

    /// Every group's state and live entries, read back through the public API.
    fn contents(log: &RaftLog) -> Result<BTreeMap<u64, (GroupLog, Vec<Entry>)>> {
        let mut out = BTreeMap::new();
        for g in log.groups() {
            let Some(l) = log.group(g) else { continue };
            let ents = log.entries(g, l.truncated_index + 1, l.last_index + 1, None)?;
            for e in &ents {
                assert_eq!(log.term(g, e.index)?, e.term);
            }
            out.insert(g, (l, ents));
        }
        Ok(out)
    }

    fn write(log: &mut RaftLog, sync: bool, f: impl FnOnce(&mut RaftLogBatch)) -> Result<()> {
        let mut b = RaftLogBatch::default();
        f(&mut b);
        log.write(&b, sync).map(|_| ())
    }

    #[test]
    fn appends_hard_state_and_conf_state_survive_reopen() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        write(&mut log, true, |b| {
            b.append(1, &entries(1, 4, 1));
            b.set_hard_state(1, &hard_state(1, 2, 3));
            b.set_conf_state(1, &conf_state(&[1, 2, 3]));
            b.append(2, &entries(1, 2, 5));
        })?;
        let before = contents(&log)?;
        drop(log);
        let log = open_mem(&fs, 1 << 20)?;
        assert_eq!(contents(&log)?, before);
        let g1 = log.group(1).unwrap_or_default();
        assert_eq!(g1.hard_state, hard_state(1, 2, 3));
        assert_eq!(g1.conf_state, conf_state(&[1, 2, 3]));
        assert_eq!((g1.truncated_index, g1.last_index, g1.last_term), (0, 3, 1));
        assert_eq!(log.entries(1, 1, 4, None)?, entries(1, 4, 1));
        assert_eq!(log.groups(), vec![1, 2]);
        assert_eq!(log.open_report().torn_tail, None);
        Ok(())
    }

    #[test]
    fn conflicting_suffix_is_replaced_also_after_reopen() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        write(&mut log, true, |b| b.append(1, &entries(1, 6, 1)))?;
        write(&mut log, true, |b| b.append(1, &entries(3, 5, 2)))?;
        let want = [entries(1, 3, 1), entries(3, 5, 2)].concat();
        assert_eq!(log.entries(1, 1, 5, None)?, want);
        assert!(matches!(
            log.term(1, 5),
            Err(StoreError::Unavailable { last: 4, .. })
        ));
        drop(log);
        let log = open_mem(&fs, 1 << 20)?;
        assert_eq!(log.entries(1, 1, 5, None)?, want);
        assert_eq!(
            log.group(1).map(|g| (g.last_index, g.last_term)),
            Some((4, 2))
        );
        Ok(())
    }

    #[test]
    fn entries_stop_at_max_size_and_name_compacted_and_unavailable() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        write(&mut log, true, |b| {
            b.append(1, &entries(1, 11, 1));
            b.compact(1, 3, 1);
        })?;
        let one = u64::from(entry(4, 1).compute_size());
        assert_eq!(log.entries(1, 4, 11, Some(0))?.len(), 1);
        assert_eq!(log.entries(1, 4, 11, Some(3 * one))?.len(), 3);
        assert!(log.entries(1, 4, 4, None)?.is_empty());
        assert!(matches!(
            log.entries(1, 3, 5, None),
            Err(StoreError::Compacted { first: 4, .. })
        ));
        assert!(matches!(
            log.entries(1, 4, 12, None),
            Err(StoreError::Unavailable { .. })
        ));
        assert_eq!(log.term(1, 3)?, 1);
        assert!(matches!(log.term(1, 2), Err(StoreError::Compacted { .. })));
        Ok(())
    }

    #[test]
    fn compact_and_purge_delete_old_segments_and_reopen_keeps_the_state() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 4096)?;
        for i in 1..=200 {
            write(&mut log, true, |b| {
                b.append(1, &[entry(i, 2)]);
                b.append(2, &[entry(i, 3)]);
                b.set_hard_state(1, &hard_state(2, 1, i));
            })?;
        }
        write(&mut log, true, |b| {
            b.set_conf_state(2, &conf_state(&[4, 5]))
        })?;
        assert!(log.segment_count() > 5, "{} segments", log.segment_count());
        // Nothing compacted yet: every segment holds live entries.
        assert_eq!(log.purge()?, 0);
        write(&mut log, true, |b| {
            b.compact(1, 190, 2);
            b.compact(2, 180, 3);
        })?;
        let before = contents(&log)?;
        let purged = log.purge()?;
        assert!(purged > 3, "purged {purged}");
        assert_eq!(log.segment_count(), fs.ids().len());
        assert_eq!(contents(&log)?, before);
        drop(log);
        let log = open_mem(&fs, 4096)?;
        assert_eq!(contents(&log)?, before);
        let g2 = log.group(2).unwrap_or_default();
        assert_eq!(
            (g2.truncated_index, g2.truncated_term, g2.last_index),
            (180, 3, 200)
        );
        assert_eq!(g2.conf_state, conf_state(&[4, 5]));
        assert_eq!(
            log.group(1).map(|g| g.hard_state),
            Some(hard_state(2, 1, 200))
        );
        Ok(())
    }

    #[test]
    fn reset_drops_every_entry_and_restarts_the_log_after_the_snapshot() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        write(&mut log, true, |b| b.append(1, &entries(1, 6, 1)))?;
        write(&mut log, true, |b| {
            b.reset(1, 50, 4);
            b.set_conf_state(1, &conf_state(&[7]));
        })?;
        let check = |log: &RaftLog| -> Result<()> {
            let g = log.group(1).unwrap_or_default();
            assert_eq!((g.truncated_index, g.truncated_term), (50, 4));
            assert_eq!((g.last_index, g.last_term), (50, 4));
            assert!(matches!(
                log.entries(1, 3, 4, None),
                Err(StoreError::Compacted { .. })
            ));
            assert_eq!(log.term(1, 50)?, 4);
            Ok(())
        };
        check(&log)?;
        let mut bad = RaftLogBatch::default();
        bad.append(1, &entries(6, 7, 1));
        assert!(matches!(
            log.write(&bad, true),
            Err(StoreError::BadAppend { first: 51, .. })
        ));
        drop(log);
        let mut log = open_mem(&fs, 1 << 20)?;
        check(&log)?;
        write(&mut log, true, |b| b.append(1, &entries(51, 53, 4)))?;
        assert_eq!(log.entries(1, 51, 53, None)?, entries(51, 53, 4));
        Ok(())
    }

    #[test]
    fn remove_group_forgets_the_group_across_reopen_and_purge() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 4096)?;
        for i in 1..=100 {
            write(&mut log, true, |b| {
                b.append(1, &[entry(i, 1)]);
                b.append(2, &[entry(i, 1)]);
            })?;
        }
        write(&mut log, true, |b| {
            b.remove_group(1);
            b.compact(2, 100, 1);
        })?;
        assert_eq!(log.groups(), vec![2]);
        assert!(log.purge()? > 0);
        drop(log);
        let mut log = open_mem(&fs, 4096)?;
        assert_eq!(log.groups(), vec![2]);
        // A new replica of the group starts from scratch.
        write(&mut log, true, |b| b.append(1, &entries(1, 2, 9)))?;
        assert_eq!(log.group(1).map(|g| g.last_index), Some(1));
        Ok(())
    }

    #[test]
    fn torn_tail_is_cut_and_the_log_keeps_working() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        write(&mut log, true, |b| b.append(1, &entries(1, 4, 1)))?;
        let durable = contents(&log)?;
        write(&mut log, false, |b| {
            b.append(1, &entries(4, 8, 1));
            b.set_hard_state(1, &hard_state(1, 1, 7));
        })?;
        drop(log);
        fs.crash(60); // part of the batch's first records, not all of it
        let mut log = open_mem(&fs, 1 << 20)?;
        let torn = log.open_report().torn_tail.clone();
        assert!(matches!(&torn, Some((_, _, cut)) if *cut == 60), "{torn:?}");
        assert_eq!(contents(&log)?, durable);
        write(&mut log, true, |b| b.append(1, &entries(4, 6, 2)))?;
        let after = contents(&log)?;
        drop(log);
        let log = open_mem(&fs, 1 << 20)?;
        assert_eq!(log.open_report().torn_tail, None);
        assert_eq!(contents(&log)?, after);
        Ok(())
    }

    #[test]
    fn crash_while_rolling_drops_the_incomplete_segment() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 4096)?;
        let mut i = 1;
        while log.segment_count() == 1 {
            write(&mut log, true, |b| b.append(1, &[entry(i, 1)]))?;
            i += 1;
        }
        // Undo the roll: find the batch that rolls, and lose all but the new file's first bytes.
        let durable_before_roll = {
            drop(log);
            fs.remove(2)?;
            let mut log = open_mem(&fs, 4096)?;
            let state = contents(&log)?;
            let mut b = RaftLogBatch::default();
            b.append(1, &[entry(i - 1, 1)]);
            let stats = log.write(&b, false)?;
            assert!(stats.rolled);
            state
        };
        fs.crash(10);
        let mut log = open_mem(&fs, 4096)?;
        assert_eq!(fs.ids(), vec![1]);
        assert!(log.open_report().torn_tail.is_some());
        assert_eq!(contents(&log)?, durable_before_roll);
        write(&mut log, true, |b| b.append(1, &[entry(i - 1, 1)]))?;
        assert_eq!(fs.ids(), vec![1, 2]);
        Ok(())
    }

    #[test]
    fn flipped_byte_in_an_earlier_segment_is_damage() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 4096)?;
        for i in 1..=200 {
            write(&mut log, true, |b| b.append(1, &[entry(i, 1)]))?;
        }
        assert!(log.segment_count() > 2);
        let loc = log.groups[&1].entries[3];
        assert_eq!(loc.segment, 1);
        drop(log);
        fs.corrupt(1, loc.offset + 20, 0x40);
        match open_mem(&fs, 4096) {
            Err(e @ StoreError::LogDamaged { .. }) => {
                assert!(e.is_damage());
                let StoreError::LogDamaged { file, offset, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(
                    (file.as_str(), *offset),
                    ("mem:0000000000000001.log", loc.offset)
                );
                assert!(e.to_string().contains("swarmkv repair --from-peers"), "{e}");
            }
            other => panic!("expected LogDamaged, got {:?}", other.map(|_| ())),
        }
        Ok(())
    }

    #[test]
    fn flipped_byte_in_a_non_last_record_of_the_last_segment_is_damage() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        for i in 1..=5 {
            write(&mut log, true, |b| b.append(1, &[entry(i, 1)]))?;
        }
        let loc = log.groups[&1].entries[2];
        // A read of the damaged entry is refused too, before any reopen.
        fs.corrupt(1, loc.offset + 25, 0x01);
        assert!(matches!(
            log.entries(1, 3, 4, None),
            Err(StoreError::LogDamaged { .. })
        ));
        assert_eq!(log.entries(1, 4, 6, None)?.len(), 2);
        drop(log);
        match open_mem(&fs, 1 << 20) {
            Err(StoreError::LogDamaged { offset, .. }) => assert_eq!(offset, loc.offset),
            other => panic!("expected LogDamaged, got {:?}", other.map(|_| ())),
        }
        Ok(())
    }

    #[test]
    fn validation_error_writes_nothing() -> Result<()> {
        let fs = MemFs::new();
        let mut log = open_mem(&fs, 1 << 20)?;
        write(&mut log, true, |b| b.append(1, &entries(1, 3, 1)))?;
        let (before, written) = (contents(&log)?, log.bytes_written());
        let mut b = RaftLogBatch::default();
        b.set_hard_state(1, &hard_state(5, 5, 5));
        b.append(2, &entries(1, 2, 1));
        b.append(1, &[entry(3, 1), entry(5, 1)]);
        assert!(matches!(
            log.write(&b, true),
            Err(StoreError::NonConsecutiveAppend { index: 5, .. })
        ));
        b.clear();
        b.append(1, &entries(5, 6, 1));
        assert!(matches!(
            log.write(&b, true),
            Err(StoreError::BadAppend {
                index: 5,
                last: 2,
                ..
            })
        ));
        assert_eq!(
            (contents(&log)?, log.bytes_written()),
            (before.clone(), written)
        );
        drop(log);
        assert_eq!(contents(&open_mem(&fs, 1 << 20)?)?, before);
        Ok(())
    }

    #[test]
    fn dir_fs_round_trip_purge_and_torn_tail() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir"))?;
        let open = || {
            RaftLog::open(
                Box::new(DirFs::open(dir.path())?),
                RaftLogConfig {
                    segment_bytes: 8192,
                },
            )
        };
        let mut log = open()?;
        for i in 1..=300 {
            write(&mut log, true, |b| {
                b.append(3, &[entry(i, 1)]);
                b.set_hard_state(3, &hard_state(1, 3, i));
            })?;
        }
        write(&mut log, true, |b| b.compact(3, 290, 1))?;
        assert!(log.purge()? > 0);
        let durable = contents(&log)?;
        let last_segment = log.segments.last().copied().unwrap_or(0);
        let end = log.active_offset;
        write(&mut log, true, |b| b.append(3, &entries(301, 303, 1)))?;
        drop(log);
        // Tear the last batch: its last 30 bytes never reached the disk.
        let path = dir.path().join(format!("{last_segment:016x}.log"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open"))?;
        let fs = DirFs::open(dir.path())?;
        let len = fs
            .read_at(last_segment, end, 4096)?
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |p| p + 1);
        std::os::unix::fs::FileExt::write_all_at(&file, &[0; 30], end + len as u64 - 30)
            .map_err(StoreError::io("tear"))?;
        let log = open()?;
        assert!(log.open_report().torn_tail.is_some());
        assert_eq!(contents(&log)?, durable);
        assert_eq!(fs.list()?.len(), log.segment_count());
        Ok(())
    }

    /// The model: what each group must hold, with the same semantics, kept naively.
    type Model = BTreeMap<u64, (GroupLog, Vec<Entry>)>;

    fn model_apply(m: &mut Model, batch: &RaftLogBatch) {
        for (group, op) in &batch.ops {
            let t = m.get(group).map_or(0, |g| g.0.truncated_index);
            if matches!(op, Op::Compact(i, _) if *i <= t) {
                continue;
            }
            if let Op::RemoveGroup = op {
                m.remove(group);
                continue;
            }
            let (l, ents) = m.entry(*group).or_default();
            match op {
                Op::Append(new) => {
                    ents.retain(|e| e.index < new[0].index);
                    ents.extend_from_slice(new);
                    (l.last_index, l.last_term) =
                        (ents[ents.len() - 1].index, ents[ents.len() - 1].term);
                }
                Op::HardState(hs) => l.hard_state = hs.clone(),
                Op::ConfState(cs) => l.conf_state = cs.clone(),
                Op::Compact(i, t) => {
                    (l.truncated_index, l.truncated_term) = (*i, *t);
                    ents.retain(|e| e.index > *i);
                    if *i >= l.last_index {
                        (l.last_index, l.last_term) = (*i, *t);
                    }
                }
                Op::Reset(i, t) => {
                    ents.clear();
                    (
                        l.truncated_index,
                        l.truncated_term,
                        l.last_index,
                        l.last_term,
                    ) = (*i, *t, *i, *t);
                }
                Op::RemoveGroup => {}
            }
        }
    }

    /// One line per group, entries as (index, term, data length): readable on a failure.
    fn summary(m: &Model) -> String {
        let mut out = String::new();
        for (g, (l, ents)) in m {
            let ents: Vec<_> = ents
                .iter()
                .map(|e| (e.index, e.term, e.data.len()))
                .collect();
            out += &format!(
                "group {g}: truncated ({}, {}) last ({}, {}) hard state ({}, {}, {}) voters {:?} entries {ents:?}\n",
                l.truncated_index,
                l.truncated_term,
                l.last_index,
                l.last_term,
                l.hard_state.term,
                l.hard_state.vote,
                l.hard_state.commit,
                l.conf_state.voters,
            );
        }
        out
    }

    /// A random valid batch against `m` (applied to it as it is built).
    fn random_batch(rng: &mut StdRng, m: &Model) -> RaftLogBatch {
        let mut m = m.clone();
        let mut b = RaftLogBatch::default();
        for _ in 0..rng.gen_range(1..=4) {
            let g = rng.gen_range(1..=4u64);
            let (t, last) = m
                .get(&g)
                .map_or((0, 0), |g| (g.0.truncated_index, g.0.last_index));
            let mut one = RaftLogBatch::default();
            match rng.gen_range(0..100) {
                0..=49 => {
                    let first = if rng.gen_bool(0.7) {
                        last + 1
                    } else {
                        rng.gen_range(t + 1..=last + 1)
                    };
                    let term = rng.gen_range(1..5);
                    let ents: Vec<Entry> = (first..first + rng.gen_range(1..=4))
                        .map(|index| Entry {
                            index,
                            term,
                            data: (0..rng.gen_range(0..200))
                                .map(|_| rng.gen::<u8>())
                                .collect::<Vec<u8>>()
                                .into(),
                            ..Default::default()
                        })
                        .collect();
                    one.append(g, &ents);
                }
                50..=64 => one.set_hard_state(
                    g,
                    &hard_state(
                        rng.gen_range(0..9),
                        rng.gen_range(0..4),
                        rng.gen_range(0..99),
                    ),
                ),
                65..=74 => {
                    one.set_conf_state(g, &conf_state(&[rng.gen_range(1..4), rng.gen_range(4..8)]))
                }
                75..=91 => one.compact(g, rng.gen_range(t..=last + 2), rng.gen_range(1..5)),
                92..=97 => one.reset(g, rng.gen_range(last..last + 10), rng.gen_range(1..5)),
                _ => one.remove_group(g),
            }
            model_apply(&mut m, &one);
            b.ops.extend(one.ops);
        }
        b
    }

    #[test]
    fn randomized_log_matches_a_model_through_crashes_and_reopens() -> Result<()> {
        let seed = std::env::var("SWARMKV_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                t.map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("raft log model test: seed {seed} (replay with SWARMKV_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        let fs = MemFs::new();
        let segment_bytes = 4096;
        let mut log = open_mem(&fs, segment_bytes)?;
        let mut model = Model::new();
        // States the log may come back in after a crash: the durable one, then one per
        // unsynced batch written since.
        let mut candidates = vec![model.clone()];
        let (mut crashes, mut torn, mut purged, mut rejected) = (0, 0, 0, 0);
        for step in 0..1500 {
            match rng.gen_range(0..100) {
                0..=79 => {
                    let sync = rng.gen_bool(0.5);
                    let batch = random_batch(&mut rng, &model);
                    log.write(&batch, sync)?;
                    model_apply(&mut model, &batch);
                    if sync {
                        candidates.clear();
                    }
                    candidates.push(model.clone());
                }
                80..=82 => {
                    let g = rng.gen_range(1..=4u64);
                    let last = model.get(&g).map_or(0, |g| g.0.last_index);
                    let mut b = RaftLogBatch::default();
                    b.append(g, &entries(last + 2, last + 3, 1));
                    assert!(matches!(
                        log.write(&b, true),
                        Err(StoreError::BadAppend { .. })
                    ));
                    rejected += 1;
                }
                83..=86 => {
                    log.sync()?;
                    candidates = vec![model.clone()];
                }
                87..=91 => {
                    if log.purge()? > 0 {
                        purged += 1;
                        candidates = vec![model.clone()];
                    }
                }
                92..=96 => {
                    drop(log);
                    fs.crash(rng.gen_range(0..1500));
                    log = open_mem(&fs, segment_bytes)?;
                    let got = contents(&log)?;
                    let Some(found) = candidates.iter().position(|c| *c == got) else {
                        eprintln!("got:\n{}", summary(&got));
                        for c in &candidates {
                            eprintln!("allowed:\n{}", summary(c));
                        }
                        panic!("seed {seed} step {step}: state after the crash is none of the {} allowed", candidates.len());
                    };
                    crashes += 1;
                    torn += usize::from(log.open_report().torn_tail.is_some());
                    model = candidates[found].clone();
                    candidates = vec![model.clone()];
                }
                _ => {
                    // A clean restart: the reopened log syncs what it replayed.
                    drop(log);
                    log = open_mem(&fs, segment_bytes)?;
                    candidates = vec![model.clone()];
                }
            }
            if contents(&log)? != model {
                let got = summary(&contents(&log)?);
                panic!(
                    "seed {seed} step {step}\nlog:\n{got}model:\n{}",
                    summary(&model)
                );
            }
            assert_eq!(
                log.segment_count(),
                fs.ids().len(),
                "seed {seed} step {step}"
            );
        }
        eprintln!("{crashes} crashes ({torn} torn tails), {purged} purges, {rejected} rejected appends, {} segments", log.segment_count());
        assert!(
            crashes > 10 && torn > 0 && purged > 0,
            "seed {seed}: the run exercised too little"
        );
        Ok(())
    }
}

//! Raft log syncs off the turn: a turn writes its Readies to the log without syncing, tells
//! raft-rs they are written ([`raft::RawNode::advance_append_async`]), and goes on; the
//! driver's writer runs one sync at a time ([`SyncJob`]) while the next turns take in messages
//! and requests and write theirs; when it returns, [`Core::on_synced`] tells raft-rs which
//! Readies are durable ([`raft::RawNode::on_persist_ready`]) and releases the messages that
//! had to wait for it. A sync covers every write made before it started, so writes that pile
//! up behind a sync in flight share the next one (group commit without a timer).
//!
//! What Raft requires still holds: a follower's acknowledgement, a vote and every other
//! message of a replica that is not leader leave only once the writes before them are durable
//! (raft-rs puts them all among a Ready's "persisted messages"); raft-rs counts a leader's own
//! copy and hands out committed entries to apply only up to what was reported durable. A
//! crash loses the writes whose sync had not returned, and nothing was acknowledged on them.
//!
//! Some Readies are persisted in place, as before: a snapshot install, a configuration change
//! to apply, leases to reload, and any turn when the core is not configured to pipeline. Such
//! a turn first settles everything still waiting (its sync covers it), because raft-rs's
//! synchronous advance reports every earlier Ready of the group persisted, and because
//! raft-rs looks up a leader's own progress when told of its persisted entries, which a
//! configuration change may remove.

use raft::eraftpb::Message;
use swarmkv_store::{Backend, StoreError};

use super::{Core, CoreError, GroupId};

/// A Ready written to the log and waiting for a sync: its number (for raft-rs) and the
/// messages that may leave only once it is durable.
struct Waiting {
    group: GroupId,
    number: u64,
    messages: Vec<Message>,
}

/// The Readies waiting for a sync, and the sync in flight.
#[derive(Default)]
pub(super) struct Pipeline {
    /// Written since the last sync started, in write order.
    waiting: Vec<Waiting>,
    /// The sync in flight (its ticket) and the Readies it covers; the list is emptied when
    /// an in-place sync settled them first.
    syncing: Option<(u64, Vec<Waiting>)>,
    next_ticket: u64,
}

impl Pipeline {
    /// Some Ready waits for a sync.
    pub(super) fn busy(&self) -> bool {
        !self.waiting.is_empty() || self.syncing.as_ref().is_some_and(|(_, w)| !w.is_empty())
    }

    /// Some Ready of `group` waits for a sync.
    pub(super) fn holds(&self, group: GroupId) -> bool {
        let in_flight = self.syncing.iter().flat_map(|(_, w)| w);
        self.waiting
            .iter()
            .chain(in_flight)
            .any(|w| w.group == group)
    }
}

/// One sync of the Raft log for the driver to run off the core, on a thread that may block
/// (see the module documentation); its outcome goes back through [`Core::on_synced`].
#[must_use = "a sync job must be run and its outcome reported"]
pub struct SyncJob {
    ticket: u64,
    writes: u64,
    sync: swarmkv_store::Syncer,
}

/// What a [`SyncJob`] did.
#[derive(Debug)]
pub struct SyncDone {
    ticket: u64,
    writes: u64,
    result: Result<(), StoreError>,
}

impl SyncJob {
    /// Runs the sync (an `fdatasync`: it blocks on the disk).
    pub fn run(self) -> SyncDone {
        SyncDone {
            ticket: self.ticket,
            writes: self.writes,
            result: (self.sync)(),
        }
    }
}

impl<B: Backend> Core<B> {
    /// The next sync for the driver's writer, when Readies wait for one and none is in
    /// flight. An error is a storage failure: the node must stop acknowledging anything.
    pub fn take_sync_job(&mut self) -> Result<Option<SyncJob>, CoreError> {
        if self.pipeline.syncing.is_some() || self.pipeline.waiting.is_empty() {
            return Ok(None);
        }
        let Some((writes, sync)) = self.store.log_syncer()? else {
            // Everything written is durable already (an in-place sync came after them).
            let waiting = std::mem::take(&mut self.pipeline.waiting);
            self.settle(waiting);
            return Ok(None);
        };
        let ticket = self.pipeline.next_ticket;
        self.pipeline.next_ticket += 1;
        let waiting = std::mem::take(&mut self.pipeline.waiting);
        self.pipeline.syncing = Some((ticket, waiting));
        Ok(Some(SyncJob {
            ticket,
            writes,
            sync,
        }))
    }

    /// A sync job ended: the Readies it covers are durable, raft-rs hears so, and their
    /// messages are queued (the next turn sends them and hands out what follows). An error is
    /// a storage failure: the node must stop acknowledging anything.
    pub fn on_synced(&mut self, done: SyncDone) -> Result<(), CoreError> {
        let Some((ticket, _)) = &self.pipeline.syncing else {
            return Ok(());
        };
        if *ticket != done.ticket {
            return Ok(());
        }
        let covered = self
            .pipeline
            .syncing
            .take()
            .map(|(_, w)| w)
            .unwrap_or_default();
        if let Err(e) = done.result {
            self.store.log_synced(done.writes, false);
            return Err(e.into());
        }
        self.store.log_synced(done.writes, true);
        self.stats.log_syncs += 1;
        self.settle(covered);
        Ok(())
    }

    /// Whether the driver's writer has a sync in flight.
    pub fn sync_in_flight(&self) -> bool {
        self.pipeline.syncing.is_some()
    }

    /// Makes every write so far durable in place and settles every Ready waiting for a sync
    /// (see the module documentation for when a turn must).
    pub(super) fn settle_in_place(&mut self) -> Result<(), CoreError> {
        if !self.pipeline.busy() {
            return Ok(());
        }
        if self.store.sync_log()? {
            self.stats.log_syncs += 1;
        }
        let in_flight = self
            .pipeline
            .syncing
            .as_mut()
            .map(|(_, w)| std::mem::take(w))
            .unwrap_or_default();
        let waiting = std::mem::take(&mut self.pipeline.waiting);
        self.settle(in_flight);
        self.settle(waiting);
        Ok(())
    }

    /// A Ready of `group` is written, to be reported to raft-rs and its messages released once
    /// a sync covers it.
    pub(super) fn wait_for_sync(&mut self, group: GroupId, number: u64, messages: Vec<Message>) {
        self.pipeline.waiting.push(Waiting {
            group,
            number,
            messages,
        });
    }

    /// A replica is gone: its Readies' numbers mean nothing to a replica created later.
    pub(super) fn forget_waiting(&mut self, group: GroupId) {
        self.pipeline.waiting.retain(|w| w.group != group);
        if let Some((_, w)) = &mut self.pipeline.syncing {
            w.retain(|w| w.group != group);
        }
    }

    /// Tells raft-rs, in write order, that these Readies are durable, and queues what they
    /// held back.
    fn settle(&mut self, durable: Vec<Waiting>) {
        for w in durable {
            let Some(r) = self.replicas.get_mut(&w.group) else {
                continue;
            };
            r.node.on_persist_ready(w.number);
            self.queue_messages(w.group, w.messages);
        }
    }
}

//! One turn of the node loop, in the one order every user of the core follows: the node's
//! driver, the simulator, the core tests and the fuzzers. As in raft-rs's Ready protocol, a
//! turn is:
//!
//! 1. [`Core::begin_turn`]: take every group's Ready and stage its writes in one batch.
//! 2. [`Turn::poll_transmit`] and [`Turn::poll_reply`]: hand out what may leave before the
//!    Readies are durable: a leader's appends and heartbeats (raft-rs counts the leader's own
//!    copy only once it is persisted, so sending first lets the followers' fsyncs overlap the
//!    leader's), and the answers to committed writes and confirmed reads (already durable on
//!    a quorum). The caller queues them without waiting for the network.
//! 3. [`Turn::persist`]: write the batch with one sync, apply, and serve the reads that
//!    caught up. This is the step that waits for the disk ([`Turn::needs_sync`] says whether
//!    it will, so the driver can take it off its async worker).
//! 4. [`Persisted`]: hand out what may only leave after the sync (messages, snapshots to
//!    stream, answers) and take the peers the caller could not address
//!    ([`Persisted::report_unreachable`]).
//!
//! The control plane's actions ([`super::control::Control::poll_action`]) follow the turn.
//!
//! A [`Turn`] borrows the core mutably, so nothing else can reach the core between the stage
//! and the persist, which the Ready protocol requires; the types make the order the only one
//! that compiles.

use raft::eraftpb::Message;
use swarmkv_store::Backend;

use super::{Core, CoreError, GroupId, NodeId, Reply, RequestId, SnapshotSend, Staged};

/// A turn between its stage and its persist (see the module documentation).
#[must_use = "a staged turn must be persisted"]
pub struct Turn<'a, B: Backend> {
    core: &'a mut Core<B>,
    staged: Staged,
}

/// A turn after its sync: what is left to hand out.
pub struct Persisted<'a, B: Backend> {
    core: &'a mut Core<B>,
}

impl<B: Backend> Core<B> {
    /// Starts a turn: takes every group's Ready. An error is a storage failure: the node must
    /// stop acknowledging anything.
    pub fn begin_turn(&mut self) -> Result<Turn<'_, B>, CoreError> {
        let staged = self.stage()?;
        Ok(Turn { core: self, staged })
    }
}

impl<'a, B: Backend> Turn<'a, B> {
    /// Whether [`Turn::persist`] waits for the disk; a turn that only applies and answers
    /// does not.
    pub fn needs_sync(&self) -> bool {
        self.staged.needs_sync()
    }

    /// The next batch of Raft messages that may leave before the sync, for one peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<(GroupId, Message)>)> {
        self.core.poll_transmit()
    }

    /// The next answer that may leave before the sync.
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(RequestId, Reply)> {
        self.core.poll_reply()
    }

    /// Persists the staged Readies with one sync, applies, and serves the reads that caught
    /// up. An error is a storage failure: the node must stop acknowledging anything.
    pub fn persist(self) -> Result<Persisted<'a, B>, CoreError> {
        let Turn { core, staged } = self;
        core.persist(staged)?;
        core.serve_caught_up_reads();
        Ok(Persisted { core })
    }
}

impl<B: Backend> Persisted<'_, B> {
    /// The next batch of Raft messages for one peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<(GroupId, Message)>)> {
        self.core.poll_transmit()
    }

    /// The next snapshot to stream to a peer.
    #[must_use]
    pub fn poll_snapshot(&mut self) -> Option<SnapshotSend> {
        self.core.poll_snapshot()
    }

    /// The next answer to a request.
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(RequestId, Reply)> {
        self.core.poll_reply()
    }

    /// A peer the caller could not send this turn's messages to (no address, or gone).
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.core.report_unreachable(to);
    }

    /// The core, for reading its state once the turn's output is handed out.
    pub fn core(&self) -> &Core<B> {
        self.core
    }
}

//! The durable state of a swarmkv node: every Raft group's log in a log of its own, with group
//! commit (one write and one fdatasync for any number of groups), and every partition's
//! key-value state machine in sled, written in batches behind the log; chunked snapshots. No
//! networking here.
//!
//! # Layout
//! - [`backend`]: the ordered, atomic engine trait the state machines are written against.
//! - [`sled_backend`]: sled on disk, with a real fdatasync (see its docs for why).
//! - [`durable_mark`]: detecting at open a store that lost writes it had made durable.
//! - [`mem_backend`]: memory, with simulated crashes, for the simulator and fast tests.
//! - [`keys`]: the `[group id BE][tag][rest]` key layout of every tree.
//! - [`store`]: opening a store, group handles, reads (get, scan).
//! - [`group`]: one group's cached log state and its `raft::Storage` implementation.
//! - [`log_batch`]: group commit of appends, hard/conf states, snapshots and compaction.
//! - [`raft_log`]: a segmented, preallocated log file of every group's Raft state (etcd's WAL).
//! - [`kv`]: the partition data model: operations, records with revisions, limits.
//! - [`txn`]: transactions within a partition: compares, then one of two operation lists.
//! - [`sessions`]: what partitions remember of clients' writes (retries applied once), in memory.
//! - [`apply`]: applying committed entries, atomically with the applied index.
//! - [`apply_wait`]: a future that resolves when a group applies past an index.
//! - [`history`]: each partition's recent events (what watches read), written by the apply.
//! - [`state_layer`]: the partitions' recent writes in memory, written to sled in batches.
//! - [`snapshot`] / [`snapshot_io`]: chunk formats; freezing, serving, staging, installing.
//! - [`error`]: the typed [`StoreError`].

pub mod apply;
pub mod apply_wait;
pub mod backend;
pub mod durable_mark;
pub mod error;
pub mod group;
pub mod history;
pub mod keys;
pub mod kv;
pub mod log_batch;
pub mod mem_backend;
pub mod raft_log;
pub mod sessions;
pub mod sled_backend;
pub mod snapshot;
pub mod snapshot_io;
pub mod state_layer;
pub mod store;
pub mod txn;

pub use apply::{ApplyBatch, ApplyEntry, ApplyOp};
pub use apply_wait::AppliedPast;
pub use backend::{Backend, BackendBatch, Scan, TreeId};
pub use error::{Result, StoreError};
pub use group::{check_conf_state, ApplyState, GroupStorage};
pub use history::{Event, EventKind, HistoryPage, HistoryQuery, HistoryRead};
pub use kv::{CasAction, Compare, KvError, KvOp, KvOutcome, KvRecord, KvResult, Limits, Session};
pub use log_batch::{CommitStats, LogBatch};
pub use mem_backend::MemBackend;
pub use raft_log::{DirFs, GroupLog, LogFs, MemFs, RaftLog, RaftLogBatch, RaftLogConfig, Syncer};
pub use sled_backend::{SledBackend, SledConfig};
pub use snapshot::{ChunkProgress, DiscardedSnapshot, SnapshotChunk, SnapshotDescriptor};
pub use snapshot_io::StagedSnapshot;
pub use state_layer::FlushStats;
pub use store::{
    ApplyObserver, MemStore, ScanPage, SledStore, Store, StoreConfig, SyncObserver, FORMAT_VERSION,
};
pub use txn::{CompareOp, CompareTarget, Txn, TxnCompare, TxnOp, TxnOpResult};

/// Re-exported so callers name the same raft-rs types the store uses.
pub use raft;

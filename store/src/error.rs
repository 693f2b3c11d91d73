//! Typed errors of the durable store.

use std::path::PathBuf;

/// Everything that can go wrong in the store, with enough context (group, index, key, file) for
/// an operator or the node layer to act: retry, rebuild the replica from peers, or reject input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine (sled) failed; `path` is the database directory.
    #[error("storage engine error in {path}: {message}")]
    Engine { path: PathBuf, message: String },

    /// An operating-system I/O call failed (fdatasync, reading a directory, opening a file).
    #[error("I/O error during {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A stored record failed to decode: the file is damaged or was written by another program.
    /// `location` names the tree and key (group, index or user key) of the bad record.
    #[error("corrupt record in tree `{tree}` at {location}: {detail}")]
    Corrupt {
        tree: &'static str,
        location: String,
        detail: String,
    },

    /// The store holds less than it had made durable: its durable sequence (in sled) is
    /// behind the durable mark beside it. sled dropped a damaged log's tail, or an older copy
    /// of the directory was put back. Raft state (votes, acknowledged entries) may be missing,
    /// so the node must not serve or vote from it (see `durable_mark`).
    #[error(
        "the store at {path} lost writes it had made durable: its durable mark {mark} \
         records sequence {expected} but the store holds only {found} (sled dropped a damaged \
         log's tail, or an older copy of the directory was put back); the node must not serve \
         or vote from it: rebuild it from its peers with `swarmkv repair --from-peers`"
    )]
    LostWrites {
        path: PathBuf,
        mark: PathBuf,
        expected: u64,
        found: u64,
    },

    /// A tree that an initialised database must have is missing: the directory was tampered
    /// with or is not a swarmkv database.
    #[error("database at {path} is missing tree `{tree}`")]
    MissingTree { path: PathBuf, tree: &'static str },

    /// The database was written by an on-disk format this build does not read (newer, or
    /// older than it upgrades).
    #[error(
        "database at {path} has format version {found}, this build reads versions {oldest} to \
         {supported}: run the build that wrote it, or rebuild this node from its peers \
         (`swarmkv repair --from-peers`)"
    )]
    FormatVersion {
        path: PathBuf,
        found: u32,
        /// The oldest version this build opens (and upgrades).
        oldest: u32,
        supported: u32,
    },

    /// Entries between `first` and `last` are expected to be contiguous but one is missing.
    #[error("raft log of group {group} has a hole: expected index {expected}, found {found}")]
    LogHole {
        group: u64,
        expected: u64,
        found: u64,
    },

    /// Entries asked for were compacted away; the caller needs a snapshot instead.
    #[error("raft log of group {group}: index {index} is compacted (first index {first})")]
    Compacted { group: u64, index: u64, first: u64 },

    /// Entries asked for are past the end of the log.
    #[error("raft log of group {group}: index {index} is unavailable (last index {last})")]
    Unavailable { group: u64, index: u64, last: u64 },

    /// An append would leave a gap after the current last index or rewrite compacted entries.
    #[error("raft log of group {group}: cannot append at {index} (first {first}, last {last})")]
    BadAppend {
        group: u64,
        index: u64,
        first: u64,
        last: u64,
    },

    /// Entries handed to one append are not consecutive.
    #[error("raft log of group {group}: appended entries are not consecutive at {index}")]
    NonConsecutiveAppend { group: u64, index: u64 },

    /// Compaction may only drop entries the state machine has applied (and past the last index
    /// there is nothing to drop).
    #[error("group {group}: cannot compact to {index} (applied {applied}, last {last})")]
    BadCompact {
        group: u64,
        index: u64,
        applied: u64,
        last: u64,
    },

    /// Entries must be applied exactly once, in order: a caller skipped or repeated one.
    #[error("group {group}: apply out of order, expected index {expected}, got {got}")]
    ApplyOutOfOrder { group: u64, expected: u64, got: u64 },

    /// A snapshot older than what the log already holds.
    #[error("group {group}: snapshot at {index} is older than the log (first index {first})")]
    SnapshotOutOfDate { group: u64, index: u64, first: u64 },

    /// Not every chunk of a snapshot has been received yet.
    #[error("group {group}: snapshot at {index} incomplete, {have} of {want} chunks staged")]
    SnapshotIncomplete {
        group: u64,
        index: u64,
        have: u32,
        want: u32,
    },

    /// A snapshot chunk or the assembled snapshot does not match its checksum or descriptor.
    #[error("group {group}: snapshot at {index} is invalid: {detail}")]
    SnapshotInvalid {
        group: u64,
        index: u64,
        detail: String,
    },

    /// A requested snapshot chunk is not (or no longer) available.
    #[error("group {group}: no snapshot chunk {seq} at index {index}")]
    SnapshotNotFound { group: u64, index: u64, seq: u32 },

    /// A record of the raft log (`raft_log`) fails its checksum or cannot be decoded where a
    /// torn final write cannot explain it (an earlier segment, or a record with data after it):
    /// acknowledged Raft state may be lost, so the node must not start on it.
    #[error(
        "the raft log is damaged at {file} offset {offset}: {detail}; rebuild this node from \
         its peers with `swarmkv repair --from-peers`"
    )]
    LogDamaged {
        file: String,
        offset: u64,
        detail: String,
    },

    /// Input bytes (a chunk from a peer, an encoded record) are larger than allowed.
    #[error("{what} is {len} bytes, the limit is {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl StoreError {
    /// True when the error means the stored data is damaged or incomplete (a corrupt record,
    /// lost durable writes, a hole in a log, a damaged raft log, a missing tree, a store in a
    /// format this build does not read): retrying cannot help, and the node must be rebuilt
    /// from its peers rather than started on it.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::LostWrites { .. }
                | StoreError::LogHole { .. }
                | StoreError::LogDamaged { .. }
                | StoreError::MissingTree { .. }
                | StoreError::FormatVersion { .. }
        )
    }

    pub(crate) fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| StoreError::Io { during, source }
    }

    pub(crate) fn corrupt(
        tree: &'static str,
        location: impl Into<String>,
        detail: impl ToString,
    ) -> StoreError {
        StoreError::Corrupt {
            tree,
            location: location.into(),
            detail: detail.to_string(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<StoreError> for raft::Error {
    /// raft-rs distinguishes "compacted" and "unavailable" (it reacts to them, e.g. by sending a
    /// snapshot); every other failure makes the raft instance inoperable, as its docs say.
    fn from(e: StoreError) -> raft::Error {
        use raft::StorageError as S;
        match e {
            StoreError::Compacted { .. } => raft::Error::Store(S::Compacted),
            StoreError::Unavailable { .. } => raft::Error::Store(S::Unavailable),
            StoreError::SnapshotOutOfDate { .. } => raft::Error::Store(S::SnapshotOutOfDate),
            other => raft::Error::Store(S::Other(Box::new(other))),
        }
    }
}

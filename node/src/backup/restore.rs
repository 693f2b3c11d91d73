//! Restoring a backup as a new cluster.
//!
//! `swarmkv restore FILE --data DIR` checks the whole file first (nothing is written for a
//! file that is damaged, truncated or of another format), then copies it into a new data
//! directory as [`PENDING`] (a temporary name, fsync, rename, fsync of the directory). When
//! `swarmkv start` finds that file in a directory whose node has no cluster yet, it reads the
//! file again (checking it again), stages every group's records in the store as the chunks
//! of a snapshot (`Store::stage_local_chunk`), and hands them to the core: the node then forms
//! a new cluster alone, with a new random cluster id, and each group starts from its staged
//! snapshot at the backup's index (see `core::backup`). Once the cluster has formed the file
//! is removed. Other nodes join that cluster as new nodes and receive their replicas from it.
//!
//! What comes back: every partition as it was at its backup index (keys with their values,
//! revisions, versions and leases; the client sessions that deduplicate retried writes; the
//! marks of leases whose keys were deleted), and in the meta group the leases, election
//! candidates and lock holders as they were. A lease's time to live starts again when the
//! restored node leads the meta group, as etcd does on restore: its holder has that long to
//! keep it alive, or it expires and its keys, candidacies and locks go with it. The old
//! cluster's registry of nodes, replica targets and settings are left out: the new cluster
//! writes its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};

use swarmkv_store::keys::TAG_DATA;
use swarmkv_store::{SledStore, SnapshotDescriptor, StagedSnapshot};

use super::format::{verify, BackupError, BackupReader, Item, Manifest, Summary};
use crate::core::{GroupId, MetaState, INITIAL_INDEX, INITIAL_TERM, META_GROUP};

/// The backup a restored data directory holds until its node has formed its cluster.
pub const PENDING: &str = "restore.swkvbak";

/// Checks the backup at `path` end to end.
pub fn verify_file(path: &Path) -> Result<(Manifest, Summary), BackupError> {
    let file = File::open(path).map_err(|e| BackupError::Target {
        path: path.to_path_buf(),
        detail: format!("cannot open: {e}"),
    })?;
    verify(BufReader::with_capacity(1 << 20, file))
}

/// Whether `dir` already holds a node (an identity or a store): a restore never writes over
/// one.
fn holds_a_node(dir: &Path) -> bool {
    ["node.key", "store", PENDING]
        .iter()
        .any(|name| dir.join(name).exists())
}

/// Checks the backup at `file` and prepares `dir` (new, or empty) to start a new cluster
/// from it. Returns what the backup holds.
pub fn prepare(file: &Path, dir: &Path) -> Result<(Manifest, Summary), BackupError> {
    let checked = verify_file(file)?;
    let target = |detail: String| BackupError::Target {
        path: dir.to_path_buf(),
        detail,
    };
    if holds_a_node(dir) {
        return Err(target(
            "already holds a node (node.key, store or a pending restore): restore into a new \
             or empty directory"
                .into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| target(format!("cannot create: {e}")))?;
    let part: PathBuf = dir.join(format!("{PENDING}.part"));
    let copy = || -> std::io::Result<()> {
        let mut from = File::open(file)?;
        let mut to = File::create(&part)?;
        std::io::copy(&mut from, &mut to)?;
        to.flush()?;
        to.sync_all()?;
        std::fs::rename(&part, dir.join(PENDING))?;
        File::open(dir)?.sync_all()
    };
    copy().map_err(|e| target(format!("cannot write the backup into it: {e}")))?;
    Ok(checked)
}

/// The pending backup of a data directory, if it has one.
pub fn pending(dir: &Path) -> Option<PathBuf> {
    let p = dir.join(PENDING);
    p.exists().then_some(p)
}

/// Stages every group of the backup at `path` in `store`, as the snapshots the new cluster's
/// groups start from. The meta group keeps its leases, elections and locks, not the old
/// cluster's registry, targets and settings.
pub fn stage(
    store: &SledStore,
    path: &Path,
) -> Result<(Manifest, BTreeMap<GroupId, SnapshotDescriptor>), BackupError> {
    let file = File::open(path)?;
    let mut reader = BackupReader::open(BufReader::with_capacity(1 << 20, file))?;
    let mut seed = BTreeMap::new();
    let mut current: Option<(GroupId, StagedSnapshot)> = None;
    let mut left = 0u32;
    while let Some(item) = reader.next_item()? {
        match item {
            Item::Group(h) => {
                // Raft's first index of a new group is INITIAL_INDEX; a real backup is past it.
                let staged = StagedSnapshot::new(
                    h.group,
                    h.index.max(INITIAL_INDEX),
                    h.term.max(INITIAL_TERM),
                    h.chunks,
                );
                current = Some((h.group, staged));
                left = h.chunks;
            }
            Item::Records(mut records) => {
                let Some((group, staged)) = current.as_mut() else {
                    continue;
                };
                if *group == META_GROUP {
                    records.retain(|(k, _)| match k.split_first() {
                        Some((&TAG_DATA, key)) => !MetaState::is_cluster_record(key),
                        _ => true,
                    });
                }
                store.stage_local_chunk(staged, records)?;
                left -= 1;
                if left == 0 {
                    if let Some((group, staged)) = current.take() {
                        seed.insert(group, staged.finish()?);
                    }
                }
            }
            Item::Manifest(_) | Item::Summary(_) => {}
        }
    }
    let manifest = reader.manifest().cloned().ok_or(BackupError::Truncated {
        offset: reader.offset(),
        what: "the file".into(),
    })?;
    Ok((manifest, seed))
}

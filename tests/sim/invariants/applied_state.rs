//! State machine safety: replicas of a group that applied the same index hold the same data.
//! Each replica's key-value state is digested whenever its applied index moves, and compared
//! with the digest any other replica had at that index.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use swarmkv::core::{GroupId, NodeId};
use swarmkv_store::{MemBackend, Store};

use super::Violation;

/// Digest of every (group, applied index) seen, and the last index looked at per replica.
#[derive(Default)]
pub struct AppliedState {
    digests: HashMap<(GroupId, u64), (u64, NodeId)>,
    last: BTreeMap<(NodeId, u64, GroupId), u64>,
    /// How many (replica, index) states were compared.
    pub compared: u64,
}

/// A digest of every record of `group` (values and revisions).
fn digest(store: &Store<MemBackend>, group: GroupId) -> Result<u64, Violation> {
    let page = store
        .scan(group, b"", None, 0)
        .map_err(|e| Violation::new("storage", format!("scan of group {group}: {e}")))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, r) in &page.records {
        k.hash(&mut h);
        r.value.hash(&mut h);
        (r.create_rev, r.mod_rev, r.version, r.lease).hash(&mut h);
    }
    Ok(h.finish())
}

impl AppliedState {
    /// Looks at `node`'s replica of `group`, applied up to `index`.
    pub fn observe(
        &mut self,
        store: &Store<MemBackend>,
        group: GroupId,
        index: u64,
        node: NodeId,
        incarnation: u64,
    ) -> Result<(), Violation> {
        let last = self.last.entry((node, incarnation, group)).or_insert(0);
        if *last == index {
            return Ok(());
        }
        *last = index;
        let d = digest(store, group)?;
        self.compared += 1;
        let (first, holder) = *self.digests.entry((group, index)).or_insert((d, node));
        if first != d {
            return Err(Violation::new(
                "applied state equal across replicas",
                format!(
                    "group {group} applied index {index}: {holder:x} and {node:x} hold \
                     different data"
                ),
            ));
        }
        Ok(())
    }
}

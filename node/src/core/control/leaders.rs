//! Where group leaderships go: a node leading clearly more groups than its share hands one
//! away per round, and a draining node hands all of them away before it stops.

use std::collections::BTreeMap;

use swarmkv_store::Backend;

use super::gossip::Gossip;
use crate::core::{Core, GroupId, NodeId};

/// Hands one leadership to a voter that leads fewer groups when this node leads more than
/// its share. Returns true when a transfer started.
pub(super) fn balance<B: Backend>(core: &mut Core<B>, gossip: &Gossip, now: u64) -> bool {
    let me = core.id();
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for a in gossip.reachable(now) {
        led.insert(a.node, a.led.len());
    }
    let mine: Vec<GroupId> = core
        .groups()
        .into_iter()
        .filter(|g| core.is_leader(*g))
        .collect();
    led.insert(me, mine.len());
    let total: usize = led.values().sum();
    let nodes = led.len().max(1);
    let share = total.div_ceil(nodes);
    if mine.len() <= share {
        return false;
    }
    for g in mine.iter().copied() {
        let Some(status) = core.group_status(g) else {
            continue;
        };
        // A group on its way to a new replica set keeps its leader, which carries the move
        // out. Handed away, the leadership may land on a voter the move removes, which cannot
        // propose its own removal until it has applied its first entry as leader, and is then
        // handed the leadership back by the next round: the move never finishes.
        let settled = core.targets().get(&g).is_some_and(|t| {
            let mut want = t.replicas.clone();
            let mut have = status.voters.clone();
            want.sort_unstable();
            have.sort_unstable();
            want == have
        });
        if !settled {
            continue;
        }
        let target = status
            .voters
            .iter()
            .filter(|v| **v != me && !gossip.unreachable.contains(v))
            .filter(|v| core.can_take_leadership(g, **v))
            .filter_map(|v| led.get(v).map(|l| (*l, *v)))
            .filter(|(l, _)| l + 1 < mine.len())
            .min();
        if let Some((_, to)) = target {
            if core.transfer_leader(g, to) {
                log::info!("group {g}: handing leadership to {to:x} to balance leaders");
                return true;
            }
        }
    }
    false
}

/// One step of a graceful shutdown: asks every group this node leads to hand leadership to
/// another reachable voter, one that Raft replicates to normally and heard from lately if
/// there is one (see [`Core::can_take_leadership`]: a voter cut off but not yet judged down
/// would hold the group's proposals for an election timeout). Returns true when nothing is
/// left to hand over (a group with no other reachable voter has nobody to hand over to, and
/// is not waited for).
pub(super) fn drain_step<B: Backend>(core: &mut Core<B>, gossip: &Gossip) -> bool {
    let me = core.id();
    let mut leading = 0;
    for g in core.groups() {
        if !core.is_leader(g) {
            continue;
        }
        let Some(s) = core.group_status(g) else {
            continue;
        };
        let reachable: Vec<NodeId> = s
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me && !gossip.unreachable.contains(v))
            .collect();
        let to = reachable
            .iter()
            .find(|v| core.can_take_leadership(g, **v))
            .or(reachable.first());
        if let Some(to) = to {
            leading += 1;
            core.transfer_leader(g, *to);
        }
    }
    leading == 0
}

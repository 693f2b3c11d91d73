//! The node's replicas, and which of them may have work for the next turn.
//!
//! raft-rs's readiness (`RawNode::has_ready`) changes only through the `RawNode`'s own methods:
//! a step, a proposal, a tick, an advance. Each needs the replica mutably, so a replica that
//! nobody reached mutably since the last turn looked at it has nothing new to hand out. A turn
//! therefore asks only the replicas reached since ([`Replicas::take_touched`]) instead of every
//! awake one: with hundreds of partitions, one put's few messages would otherwise pay a
//! readiness check of every partition in every turn. The turn's own look uses
//! [`Replicas::get_mut_untouched`]; whatever the turn then does to a replica (persist, apply)
//! goes through [`Replicas::get_mut`] and has the next turn look again.

use std::collections::BTreeMap;

use swarmkv_store::Backend;

use super::replica::Replica;
use super::types::GroupId;

/// The local replicas by group, with the ones reached mutably since the last turn.
pub(crate) struct Replicas<B: Backend> {
    map: BTreeMap<GroupId, Slot<B>>,
    /// The groups whose slot is marked, in the order they were reached.
    touched: Vec<GroupId>,
}

struct Slot<B: Backend> {
    replica: Replica<B>,
    /// In `touched` (a flag, so that marking costs no search on the paths every message takes).
    touched: bool,
}

impl<B: Backend> Replicas<B> {
    pub fn new() -> Replicas<B> {
        Replicas {
            map: BTreeMap::new(),
            touched: Vec::new(),
        }
    }

    pub fn get(&self, group: &GroupId) -> Option<&Replica<B>> {
        self.map.get(group).map(|s| &s.replica)
    }

    /// The replica, for a change: the next turn asks it for a Ready.
    pub fn get_mut(&mut self, group: &GroupId) -> Option<&mut Replica<B>> {
        let slot = self.map.get_mut(group)?;
        if !slot.touched {
            slot.touched = true;
            self.touched.push(*group);
        }
        Some(&mut slot.replica)
    }

    /// The replica, for the turn that is asking it for its Ready (which must then reach it
    /// through [`Replicas::get_mut`] for whatever it leaves to do).
    pub fn get_mut_untouched(&mut self, group: &GroupId) -> Option<&mut Replica<B>> {
        self.map.get_mut(group).map(|s| &mut s.replica)
    }

    /// The groups reached mutably since the last call, in group order.
    pub fn take_touched(&mut self) -> Vec<GroupId> {
        let mut groups = std::mem::take(&mut self.touched);
        groups.retain(|g| match self.map.get_mut(g) {
            Some(slot) => std::mem::replace(&mut slot.touched, false),
            None => false,
        });
        groups.sort_unstable();
        groups
    }

    pub fn contains_key(&self, group: &GroupId) -> bool {
        self.map.contains_key(group)
    }

    pub fn keys(&self) -> impl Iterator<Item = &GroupId> + '_ {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&GroupId, &Replica<B>)> + '_ {
        self.map.iter().map(|(g, s)| (g, &s.replica))
    }

    /// Every replica, for a change: the next turn asks each for a Ready.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&GroupId, &mut Replica<B>)> + '_ {
        let touched = &mut self.touched;
        self.map.iter_mut().map(move |(g, s)| {
            if !s.touched {
                s.touched = true;
                touched.push(*g);
            }
            (g, &mut s.replica)
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn insert(&mut self, group: GroupId, replica: Replica<B>) -> Option<Replica<B>> {
        self.touched.push(group);
        let slot = Slot {
            replica,
            touched: true,
        };
        self.map.insert(group, slot).map(|s| s.replica)
    }

    /// Removes the replica (its mark, if any, is dropped at the next
    /// [`Replicas::take_touched`]).
    pub fn remove(&mut self, group: &GroupId) -> Option<Replica<B>> {
        self.map.remove(group).map(|s| s.replica)
    }
}

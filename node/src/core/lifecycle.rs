//! Replicas come and go: opening them at start, the bootstrap layout, creating one when a
//! leader first addresses this node, dropping one the cluster no longer wants here, and the
//! tombstone a dropped replica leaves so that a recreated one never goes back on its vote.

use raft::eraftpb::{HardState, Message, MessageType, Snapshot};
use raft::RawNode;
use swarmkv_store::{Backend, LogBatch};

use super::replica::Replica;
use super::{
    partition_of_group, ClientError, ClusterLayout, ClusterSettings, Core, CoreError, GroupId,
    RequestId, INITIAL_INDEX, INITIAL_TERM, LAYOUT_TARGETS_META, META_GROUP,
};

impl<B: Backend> Core<B> {
    fn raft_config(&mut self, applied: u64) -> raft::Config {
        let base = self.config.election_ticks.max(2);
        raft::Config {
            id: self.id,
            election_tick: base,
            heartbeat_tick: self.config.heartbeat_ticks.max(1),
            min_election_tick: base,
            max_election_tick: 2 * base,
            applied,
            max_size_per_msg: self.config.max_size_per_msg,
            max_inflight_msgs: self.config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        }
    }

    pub(super) fn open_replica(&mut self, group: GroupId) -> Result<(), CoreError> {
        let storage = self.store.group(group)?;
        let hs = storage.hard_state();
        let applied = storage.apply_state().index.min(hs.commit);
        let cfg = self.raft_config(applied);
        let node = RawNode::new(&cfg, storage, &self.logger)?;
        let mut replica = Replica::new(node);
        replica.conf_applied_ms = self.now_ms;
        replica.vote_floor = self.tombstone(group)?.map(|t| (t.last_term, t.last_index));
        self.replicas.insert(group, replica);
        self.quiesce.awake.insert(group);
        Ok(())
    }

    /// What this node remembers of its last destroyed replica of `group`, if any.
    fn tombstone(&self, group: GroupId) -> Result<Option<Tombstone>, CoreError> {
        let Some(b) = self.store.get_meta(&tombstone_meta(group))? else {
            return Ok(None);
        };
        // Tombstones written before the log position was kept hold (term, vote) only.
        let tomb = postcard::from_bytes::<Tombstone>(&b).or_else(|_| {
            postcard::from_bytes::<(u64, u64)>(&b).map(|(term, vote)| Tombstone {
                term,
                vote,
                last_term: 0,
                last_index: 0,
            })
        });
        tomb.map(Some)
            .map_err(|e| CoreError::CorruptMeta(format!("tombstone of group {group}: {e}")))
    }

    /// Creates this node's replicas of a new cluster (the meta group and the partitions the
    /// layout places here). Every initial node calls it with the same layout; calling it again
    /// (or after a restart) changes nothing.
    pub fn bootstrap(&mut self, layout: ClusterLayout, cluster_id: u64) -> Result<(), CoreError> {
        if layout.nodes.is_empty() || layout.partitions == 0 || layout.replication == 0 {
            return Err(CoreError::BadLayout(format!("{layout:?}")));
        }
        let seed = match &self.restore_seed {
            Some(_) if self.settings.is_some() => None,
            Some(seed) => {
                if layout.nodes != [self.id] {
                    return Err(CoreError::BadLayout(format!(
                        "this node restores a backup and forms a cluster alone, not with {:x?}",
                        layout.nodes
                    )));
                }
                let want = u64::from(layout.partitions) + 1;
                if seed.len() as u64 != want || seed.keys().any(|g| *g >= want) {
                    return Err(CoreError::BadLayout(format!(
                        "the backup holds {} groups; a cluster of {} partitions has {want}",
                        seed.len(),
                        layout.partitions
                    )));
                }
                Some(seed.clone())
            }
            None => None,
        };
        self.join(ClusterSettings {
            cluster_id,
            partitions: layout.partitions,
            replication: layout.replication,
        })?;
        let targets = layout.targets();
        let encoded =
            postcard::to_stdvec(&targets).map_err(|e| CoreError::BadLayout(e.to_string()))?;
        self.store.put_meta(LAYOUT_TARGETS_META, &encoded)?;
        let mut batch = LogBatch::new();
        let mut new_groups = Vec::new();
        for (g, t) in &targets {
            if !t.replicas.contains(&self.id) || self.replicas.contains_key(g) {
                continue;
            }
            let mut snap = Snapshot::default();
            // A restored group starts where its backup was taken, so the revisions of its
            // records stay below every later write's.
            match seed.as_ref().and_then(|s| s.get(g)) {
                Some(d) => {
                    snap.data = d.encode().into();
                    let m = snap.mut_metadata();
                    m.index = d.index;
                    m.term = d.term;
                }
                None => {
                    let m = snap.mut_metadata();
                    m.index = INITIAL_INDEX;
                    m.term = INITIAL_TERM;
                }
            }
            snap.mut_metadata().mut_conf_state().voters = t.replicas.clone();
            batch.apply_snapshot(*g, snap);
            new_groups.push((*g, t.replicas[0] == self.id));
        }
        self.store.commit(&batch)?;
        let election_ms = self.config.election_ticks.max(2) as u64 * self.config.tick_ms.max(1);
        for (g, preferred) in new_groups {
            self.open_replica(g)?;
            if preferred {
                // The preferred leader campaigns at once so a new cluster serves quickly;
                // pre-vote makes this harmless if it loses.
                let until = self.now_ms + election_ms;
                if let Some(r) = self.replicas.get_mut(&g) {
                    r.node.campaign()?;
                    r.opening_until = Some(until);
                }
            }
        }
        if self.targets.is_empty() {
            self.targets = targets;
        }
        if seed.is_some() {
            // The meta group started from the backup's leases and elections.
            self.restore_seed = None;
            self.reload_leases()?;
            self.reload_elections()?;
        }
        Ok(())
    }

    /// Repeats the pre-vote of each group this node bootstrapped as its preferred leader while
    /// the group has no leader yet (see [`Replica::opening_until`]). Only a pre-candidate
    /// repeats: a pre-vote changes no term, so repeating it disturbs nobody, while a candidate
    /// has already won the pre-vote of a majority and waits for their votes.
    pub(super) fn repeat_opening_campaigns(&mut self) {
        let now = self.now_ms;
        let opening: Vec<GroupId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.opening_until.is_some())
            .map(|(g, _)| *g)
            .collect();
        for g in opening {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            let Some(until) = r.opening_until else {
                continue;
            };
            let raft = &r.node.raft;
            if now >= until || raft.leader_id != raft::INVALID_ID {
                r.opening_until = None;
                continue;
            }
            if raft.state == raft::StateRole::PreCandidate {
                if let Err(e) = r.node.campaign() {
                    log::debug!("group {g}: repeating the first pre-vote failed: {e}");
                }
            }
        }
    }

    /// Creates an empty replica of `group` for `msg`'s leader. If this node held a replica of
    /// the group before (it was removed, or dropped a leftover), the new one starts from the
    /// old one's term and vote, and a message of an older term creates nothing (returns
    /// false): a leader of an older configuration that never learned of the removal must not
    /// find a blank voter to count toward its quorum, nor may a vote be given twice in a term.
    pub(super) fn create_replica(
        &mut self,
        group: GroupId,
        msg: &Message,
    ) -> Result<bool, CoreError> {
        if let Some(Tombstone { term, vote, .. }) = self.tombstone(group)? {
            if msg.term < term {
                return Ok(false);
            }
            let mut batch = LogBatch::new();
            batch.set_hard_state(
                group,
                HardState {
                    term,
                    vote,
                    commit: 0,
                    ..Default::default()
                },
            );
            self.store.commit(&batch)?;
        }
        self.open_replica(group)?;
        Ok(true)
    }

    /// Destroys a local replica and its data, keeping its term and vote as a tombstone (see
    /// [`Core::create_replica`]).
    fn destroy_replica(&mut self, group: GroupId, r: Replica<B>) -> Result<(), CoreError> {
        self.forget_waiting(group);
        let hs = r.node.raft.hard_state();
        let log = &r.node.raft.raft_log;
        let mut tomb = Tombstone {
            term: hs.term,
            vote: hs.vote,
            last_term: log.last_term(),
            last_index: log.last_index(),
        };
        // A replica recreated and destroyed again before it caught up keeps the older,
        // further position: its acknowledgements are what the floor protects.
        if let Some(old) = self.tombstone(group)? {
            if (old.last_term, old.last_index) > (tomb.last_term, tomb.last_index) {
                tomb.last_term = old.last_term;
                tomb.last_index = old.last_index;
            }
        }
        drop(r);
        let tomb = postcard::to_stdvec(&tomb).unwrap_or_default();
        self.store.put_meta(&tombstone_meta(group), &tomb)?;
        self.store.destroy_group(group)?;
        Ok(())
    }

    pub(super) fn may_create(&self, group: GroupId, msg: &Message) -> bool {
        let Some(settings) = &self.settings else {
            return false;
        };
        let valid_group = group == META_GROUP
            || partition_of_group(group).is_some_and(|p| p < settings.partitions);
        valid_group
            && msg.to == self.id
            && msg.term > 0
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            )
    }

    /// Drops this node's replica of `group` and its data, because the group's leader reports
    /// a configuration without this node (a replica removed while its node was down never
    /// hears of its removal). The caller must know that from the leader, not guess it.
    pub fn drop_replica(&mut self, group: GroupId) -> Result<(), CoreError> {
        if self.replicas.get(&group).is_some_and(|r| r.is_leader) {
            return Ok(());
        }
        // A learner being brought in is missing from the leader's voters too, yet the leader
        // counts on what it acknowledged (it promotes it on that): never drop a replica whose
        // configuration names this node a learner.
        // Nor one whose configuration is joint with this node among the outgoing voters: the
        // leader that announced the new configuration may have committed the change to leave
        // the joint configuration without the new voters knowing it yet. They still need the
        // outgoing voters' majority to elect a leader, and if that leader is gone for good the
        // group could never elect one again.
        if self.replicas.get(&group).is_some_and(|r| {
            let cs = r.node.raft.prs().conf().to_conf_state();
            cs.learners.contains(&self.id)
                || cs.learners_next.contains(&self.id)
                || cs.voters_outgoing.contains(&self.id)
        }) {
            return Ok(());
        }
        if let Some(mut r) = self.replicas.remove(&group) {
            self.quiesce.awake.remove(&group);
            log::info!(
                "node {:x}: dropping leftover replica of group {group}",
                self.id
            );
            for (_, p) in std::mem::take(&mut r.proposals) {
                self.reply(p.request, Err(ClientError::LeaderChanged));
            }
            self.fail_replica_follower_ops(&mut r);
            let reads: Vec<RequestId> = r
                .reads_next
                .drain(..)
                .map(|(id, _)| id)
                .chain(r.reads_ready.drain(..).map(|rr| rr.request))
                .collect();
            for id in reads {
                self.reply(
                    id,
                    Err(ClientError::Unavailable {
                        reason: format!("this node's replica of group {group} was dropped"),
                    }),
                );
            }
            self.destroy_replica(group, r)?;
        }
        Ok(())
    }
}

/// What a node keeps of a replica it destroyed: the term and vote it must not go back on,
/// and how far its log reached (see `Replica::vote_floor`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Tombstone {
    term: u64,
    vote: u64,
    last_term: u64,
    last_index: u64,
}

/// The store meta record of a dropped replica's last term and vote.
fn tombstone_meta(group: GroupId) -> String {
    format!("tombstone/{group}")
}

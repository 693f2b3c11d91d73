//! Applying committed entries to the state machines: writes, configuration changes, the
//! meta group's records, leases and elections, and the requests waiting on them.

use super::requests::serve_read;
use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{StateRole, Storage};
use swarmkv_store::{ApplyEntry, ApplyOp, Backend};

use super::{
    election_core, lease_core, ClientError, Command, Core, CoreError, GroupId, Origin, RequestId,
    Response, META_GROUP,
};

impl<B: Backend> Core<B> {
    pub(super) fn apply_committed(
        &mut self,
        g: GroupId,
        entries: Vec<Entry>,
    ) -> Result<(), CoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // The applied index read below must be the group's latest.
        if self.applies.contains(g) {
            self.write_applies()?;
        }
        let Some(r) = self.replicas.get_mut(&g) else {
            return Ok(());
        };
        let applied = r.node.store().apply_state().index;
        enum Decoded {
            Noop,
            Kv(swarmkv_store::KvOp, Option<swarmkv_store::Session>),
            Bad(String),
            Conf(raft::eraftpb::ConfState),
        }
        let mut decoded = Vec::with_capacity(entries.len());
        // Entries this node proposed as a follower, by index, to answer once applied.
        let mut mine: BTreeMap<u64, RequestId> = BTreeMap::new();
        for e in &entries {
            if e.index <= applied {
                // Re-delivered after a restart: the state machine already has it.
                continue;
            }
            if let Some(o) = Origin::decode(&e.context) {
                if o.node == self.id && o.boot == self.boot && r.follower_writes.remove(&o.request)
                {
                    mine.insert(e.index, o.request);
                }
            }
            let d = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => Decoded::Noop,
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Ok(Command::Kv { op, session }) => Decoded::Kv(op, session),
                    Err(err) => Decoded::Bad(err.to_string()),
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(raft::Error::from)?;
                    Decoded::Conf(r.node.apply_conf_change(&cc)?)
                }
                EntryType::EntryConfChangeV2 => {
                    // Includes the empty entry that leaves a joint configuration.
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(raft::Error::from)?;
                    match r.node.apply_conf_change(&cc) {
                        Ok(cs) => Decoded::Conf(cs),
                        Err(err) => {
                            // Refused (e.g. it no longer fits the configuration): a no-op on
                            // every replica alike.
                            log::warn!("group {g}: conf change at {} refused: {err}", e.index);
                            Decoded::Noop
                        }
                    }
                }
            };
            decoded.push((e.index, e.term, d));
        }
        let apply: Vec<ApplyEntry<'_>> = decoded
            .iter()
            .map(|(index, term, d)| ApplyEntry {
                index: *index,
                term: *term,
                op: match d {
                    Decoded::Noop | Decoded::Bad(_) => ApplyOp::Noop,
                    Decoded::Kv(op, None) => ApplyOp::Kv(op),
                    Decoded::Kv(op, Some(s)) => ApplyOp::KvOnce(op, *s),
                    Decoded::Conf(cs) => ApplyOp::ConfChange(cs),
                },
            })
            .collect();
        let results = self.store.apply_into(&mut self.applies, g, &apply)?;
        self.stats.applied += apply.len() as u64;
        if g == META_GROUP {
            let leader_term = r.is_leader.then(|| r.node.raft.term);
            for ((index, term, d), result) in decoded.iter().zip(&results) {
                if let Decoded::Kv(op, _) = d {
                    lease_core::note_meta_write(
                        &mut self.leases,
                        (*index, *term),
                        op,
                        result.as_ref(),
                        self.now_ms,
                        leader_term,
                    );
                    election_core::note_meta_write(
                        &mut self.elections,
                        *index,
                        op,
                        result.as_ref(),
                    );
                }
            }
        }
        let me = self.id;
        let still_member = |cs: &raft::eraftpb::ConfState| {
            cs.voters.contains(&me)
                || cs.learners.contains(&me)
                || cs.voters_outgoing.contains(&me)
                || cs.learners_next.contains(&me)
        };
        if let Some((_, _, Decoded::Conf(cs))) = decoded
            .iter()
            .rev()
            .find(|(_, _, d)| matches!(d, Decoded::Conf(_)))
        {
            r.conf_applied_ms = self.now_ms;
            // Removed: the replica stays, passive (raft-rs never lets a node outside the
            // configuration campaign), until a leader of the group reports a configuration
            // without it and the target does not want it either (`Core::drop_replica`). Its
            // vote may still be needed: the others apply the change only once they learn that
            // it committed, and until then they count the configuration before it. A leader
            // that left a joint configuration it was only an outgoing voter of, and dropped its
            // replica at once, left the followers that had not yet heard of the commit in the
            // joint configuration, whose outgoing half then had only one live voter: no
            // election could succeed again (sim seed 401311).
            if !still_member(cs) {
                log::info!(
                    "node {:x}: no longer in group {g}'s configuration; the replica stays until \
                     the group's leader reports that",
                    self.id
                );
            }
            // A leader the configuration no longer counts as a voter (it was elected on a
            // configuration it had not yet seen replaced, e.g. after a restart that lost its
            // applied state) would lead a group it is not part of for good: raft-rs leaves
            // that to the application. Step down, as etcd does, so that the voters elect one
            // of themselves and the leader's reconcile can add this node back.
            // (After this turn's advance: raft-rs forbids a term change inside a Ready.)
            let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
            r.step_down = !voter && r.node.raft.state == StateRole::Leader;
        }
        let mut answers = Vec::new();
        for ((index, term, d), result) in decoded.iter().zip(results) {
            let applied_reply = || match (result.clone(), d) {
                (Some(Ok(outcome)), _) => Ok(Response::Write(outcome)),
                (Some(Err(e)), _) => Err(ClientError::Rejected(e)),
                (None, Decoded::Bad(why)) => Err(ClientError::BadRequest(why.clone())),
                (None, _) => Err(ClientError::ProposalDropped),
            };
            // Every proposal at or below this index is settled now.
            while let Some((&pi, &p)) = r.proposals.first_key_value() {
                if pi > *index {
                    break;
                }
                r.proposals.remove(&pi);
                let reply = if pi == *index && p.term == *term {
                    applied_reply()
                } else {
                    Err(ClientError::ProposalDropped)
                };
                answers.push((p.request, reply));
            }
            if let Some(request) = mine.remove(index) {
                answers.push((request, applied_reply()));
            }
        }
        // Compact once enough applied entries piled up.
        let applied_now = decoded.last().map_or(applied, |(i, _, _)| *i);
        let first = r.node.store().first_index().unwrap_or(1);
        if applied_now.saturating_sub(first) >= self.config.compact_threshold {
            r.compact_to = Some(
                applied_now
                    .saturating_sub(self.config.compact_keep)
                    .max(first),
            );
        }
        // Serve the reads the state machine has now caught up with.
        let mut still = Vec::new();
        let mut reads = Vec::new();
        for rr in r.reads_ready.drain(..) {
            if rr.index <= applied_now {
                reads.push(rr);
            } else {
                still.push(rr);
            }
        }
        r.reads_ready = still;
        for (id, reply) in answers {
            self.reply(id, reply);
        }
        if !reads.is_empty() {
            // The reads must see these applies, which are only gathered so far: a read whose
            // index is among them would otherwise miss a write it must see (followers' reads
            // often wait for exactly the entries this apply brings).
            self.write_applies()?;
        }
        for rr in reads {
            let reply = serve_read(&self.store, g, &rr.body);
            self.reply(rr.request, reply);
        }
        if g == META_GROUP {
            // Observers whose leader just changed get their answer now, not at the next tick.
            self.wake_observers();
        }
        Ok(())
    }
}

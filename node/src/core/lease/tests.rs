//! The lease table's unit tests: deadlines, grace periods, checkpoints, revocations and
//! the chaining of a leader's writes in flight.

use super::*;

const E: u64 = 1000;

fn apply(t: &mut LeaseTable, index: u64, term: u64, r: &LeaseRecord, now: u64, lt: Option<u64>) {
    let v = postcard::to_stdvec(r).unwrap();
    t.on_apply(
        (index, term),
        &LeaseRecord::key(r.id),
        LeaseWrite::Put(&v),
        now,
        lt,
    );
}

fn fresh(id: LeaseId, ttl_ms: u64) -> LeaseRecord {
    LeaseTable::fresh(id, ttl_ms)
}

/// The record a proposed write carries, and the revision it expects.
fn decode(op: &KvOp) -> (LeaseRecord, Option<u64>) {
    match op {
        KvOp::Cas {
            compare,
            action: CasAction::Put(v),
            ..
        } => {
            let rev = match compare {
                Compare::ModRevision(r) => Some(*r),
                _ => None,
            };
            (postcard::from_bytes(v).unwrap(), rev)
        }
        other => panic!("not a lease write: {other:?}"),
    }
}

#[test]
fn leader_deadline_counts_from_the_proposal_not_the_apply() {
    let mut t = LeaseTable::new(E);
    t.note_appended(10, 1_000);
    apply(&mut t, 10, 2, &fresh(7, 5_000), 1_030, Some(2));
    assert_eq!(t.info(7, 1_030).map(|i| i.remaining_ms), Some(4_970));
    assert_eq!(t.info(7, 5_999).map(|i| i.remaining_ms), Some(1));
    assert_eq!(t.info(7, 6_000), None, "expired exactly at proposal + TTL");
}

#[test]
fn new_leader_carries_the_remaining_ttl_plus_at_most_one_election_timeout() {
    // Old leader: keep-alive proposed at 10_000 (its clock), TTL 5_000: deadline 15_000.
    // Follower (different clock, offset 500_000): the entry arrives 20 ms after the
    // proposal, applies 100 ms after it.
    let off = 500_000;
    let mut f = LeaseTable::new(E);
    f.note_appended(42, off + 10_020);
    apply(&mut f, 42, 3, &fresh(9, 5_000), off + 10_100, None);
    // The old leader dies at 12_000; the follower wins the election at 13_500.
    f.on_become_leader();
    let now = off + 13_500;
    let left = f.info(9, now).unwrap().remaining_ms;
    // Without failover 1_500 ms were left; never less, at most E + the 20 ms delay more.
    assert!(left >= 1_500, "shortened: {left}");
    assert!(left <= 1_500 + E + 20, "extended too much: {left}");
    assert_eq!(left, 1_500 + E + 20);
    // Nothing is due before the carried deadline (no checkpoint during the grace either).
    assert!(f.due(off + 16_019).is_empty());
    let due = f.due(off + 16_020);
    assert_eq!(due.len(), 1);
    let (r, rev) = decode(&due[0].1);
    assert!(r.revoked && r.id == 9 && due[0].2);
    assert_eq!(rev, Some(42), "conditional on the record it saw");
}

#[test]
fn the_full_ttl_is_never_restored_by_a_leader_change() {
    // A lease granted long ago and checkpointed: the checkpoint's remaining TTL is what a
    // new leader carries, not the TTL.
    let mut f = LeaseTable::new(E);
    let cp = LeaseRecord {
        id: 3,
        ttl_ms: 60_000,
        remaining_ms: 2_000,
        revoked: false,
        graced: false,
    };
    f.note_appended(5, 100);
    apply(&mut f, 5, 1, &cp, 120, None);
    f.on_become_leader();
    assert_eq!(f.info(3, 200).unwrap().remaining_ms, 100 + 2_000 + E - 200);
    // Leadership flapping back and forth does not stack grace periods for one record.
    f.on_lose_leadership();
    f.on_become_leader();
    assert_eq!(f.info(3, 200).unwrap().remaining_ms, 100 + 2_000 + E - 200);
}

#[test]
fn grace_periods_of_successive_coordinators_never_add_up() {
    // TTL 10 s from 0 on every clock (no delays): deadline 10_000. Coordinators change
    // every 700 ms and each checkpoints what it carries; the lease must still end by
    // 10_000 + E.
    let mut t = LeaseTable::new(E);
    t.note_appended(1, 0);
    apply(&mut t, 1, 1, &fresh(1, 10_000), 0, None);
    let mut index = 1;
    let mut now = 0;
    let mut expired_at = None;
    for term in 2..100 {
        t.on_become_leader();
        for _ in 0..7 {
            now += 100;
            for (_, op, revoking) in t.due(now) {
                if revoking {
                    expired_at.get_or_insert(now);
                } else {
                    let (r, _) = decode(&op);
                    index += 1;
                    t.note_appended(index, now);
                    apply(&mut t, index, term, &r, now, Some(term));
                }
            }
        }
        t.on_lose_leadership();
        if expired_at.is_some() {
            break;
        }
    }
    let at = expired_at.expect("the lease expires");
    // Checkpoints keep the grace: the lease ends exactly one E late, not earlier.
    assert_eq!(at, 10_000 + E, "expired at {at}");
}

#[test]
fn a_record_of_the_leaders_own_term_clears_the_grace() {
    let mut t = LeaseTable::new(E);
    t.note_appended(1, 0);
    apply(&mut t, 1, 1, &fresh(4, 3_000), 5, None);
    t.on_become_leader();
    // An older-term entry applied by the new leader (term 2) keeps the grace...
    t.note_appended(2, 10);
    apply(&mut t, 2, 1, &fresh(4, 3_000), 500, Some(2));
    assert_eq!(t.info(4, 500).unwrap().remaining_ms, 10 + 3_000 + E - 500);
    // ...its own keep-alive does not need it.
    t.note_appended(3, 600);
    apply(&mut t, 3, 2, &fresh(4, 3_000), 610, Some(2));
    assert_eq!(t.info(4, 610).unwrap().remaining_ms, 600 + 3_000 - 610);
}

#[test]
fn restart_and_snapshot_count_from_now() {
    let r = LeaseRecord {
        id: 8,
        ttl_ms: 10_000,
        remaining_ms: 4_000,
        revoked: false,
        graced: false,
    };
    let k = LeaseRecord::key(8);
    let v = postcard::to_stdvec(&r).unwrap();
    let mut t = LeaseTable::new(E);
    t.reload(
        [
            (k.as_slice(), v.as_slice(), 3),
            (b"meta/other".as_slice(), b"x".as_slice(), 4),
        ],
        77,
    );
    assert_eq!(t.info(8, 77).unwrap().remaining_ms, 4_000);
    assert_eq!(t.info(8, 77).unwrap().ttl_ms, 10_000);
}

#[test]
fn checkpoints_carry_the_remaining_ttl_and_revocations_are_proposed_once() {
    let mut t = LeaseTable::new(E);
    t.note_appended(1, 0);
    apply(&mut t, 1, 1, &fresh(2, 10_000), 0, Some(1));
    assert!(t.due(500).is_empty());
    let cp = t.due(1_000);
    assert_eq!(cp.len(), 1);
    let (cp_rec, cp_rev) = decode(&cp[0].1);
    assert!(!cp[0].2 && !cp_rec.revoked);
    assert_eq!(cp_rec.remaining_ms, 9_000);
    assert_eq!(cp_rev, Some(1));
    t.note_proposed(2, 2, false, 1_000);
    // In flight: not proposed again until it applies or a grace period passes.
    assert!(t.due(1_500).is_empty());
    t.note_appended(2, 1_000);
    apply(&mut t, 2, 1, &cp_rec, 1_010, Some(1));
    assert_eq!(t.info(2, 1_010).unwrap().remaining_ms, 8_990);
    // Expired: one revocation, then nothing while it is in flight; no keep-alive either.
    let due = t.due(10_000);
    assert!(due.len() == 1 && due[0].2);
    let (revoked, rev) = decode(&due[0].1);
    assert_eq!(rev, Some(2));
    t.note_proposed(2, 3, true, 10_000);
    assert!(t.due(10_100).is_empty());
    assert_eq!(t.keep_alive(2, 9_000), Err(LeaseMiss::NotFound));
    apply(&mut t, 3, 1, &revoked, 10_050, Some(1));
    assert_eq!(t.revoked(), vec![2]);
    assert!(t.due(20_000).is_empty());
    assert!(matches!(
        t.forget(2),
        Some(KvOp::Cas {
            compare: Compare::ModRevision(3),
            action: CasAction::Delete,
            ..
        })
    ));
    t.on_apply(
        (4, 1),
        &LeaseRecord::key(2),
        LeaseWrite::Delete,
        20_000,
        Some(1),
    );
    assert!(!t.contains(2));
}

#[test]
fn lease_writes_chain_and_a_lost_race_starts_over_from_the_stored_record() {
    let mut t = LeaseTable::new(E);
    apply(&mut t, 5, 1, &fresh(6, 10_000), 0, Some(1));
    // Two keep-alives in flight: the second expects the first's revision, not the stored
    // one, so they do not refuse each other.
    let (_, rev) = decode(&t.keep_alive(6, 10).unwrap());
    assert_eq!(rev, Some(5));
    t.note_proposed(6, 6, false, 10);
    let (_, rev) = decode(&t.keep_alive(6, 11).unwrap());
    assert_eq!(rev, Some(6));
    t.note_proposed(6, 7, false, 11);
    // A revocation proposed now expects the last keep-alive's revision: it applies after
    // them and wins.
    let (r, rev) = decode(&t.revoke(6).unwrap());
    assert!(r.revoked);
    assert_eq!(rev, Some(7));
    t.note_proposed(6, 8, true, 12);
    assert_eq!(t.keep_alive(6, 13), Err(LeaseMiss::NotFound));
    // The first keep-alive lost a race (say, with a previous leader's write): the ones
    // chained after it will be refused too; the next write expects the stored record.
    t.on_apply(
        (6, 1),
        &LeaseRecord::key(6),
        LeaseWrite::Refused,
        20,
        Some(1),
    );
    let (_, rev) = decode(&t.keep_alive(6, 21).unwrap());
    assert_eq!(rev, Some(5));
    // A grant is conditional on the id being free.
    assert!(matches!(
        LeaseTable::grant(9, 1_000),
        KvOp::Cas {
            compare: Compare::Absent,
            ..
        }
    ));
}

#[test]
fn no_checkpoint_is_proposed_while_a_keep_alive_is_in_flight() {
    let mut t = LeaseTable::new(E);
    apply(&mut t, 5, 1, &fresh(6, 10_000), 0, Some(1));
    // A checkpoint is due 2 s after the grant, and a keep-alive is proposed then. A
    // checkpoint computed now (8 s left) would be chained after the keep-alive and cut
    // the lease back to its old deadline once both applied.
    t.keep_alive(6, 2_000).unwrap();
    t.note_proposed(6, 6, false, 2_000);
    assert!(t.due(2_000).is_empty());
    // Once the keep-alive applied, checkpoints resume from its deadline.
    apply(&mut t, 6, 1, &fresh(6, 10_000), 2_000, Some(1));
    assert!(t.due(2_500).is_empty());
    let due = t.due(3_000);
    assert_eq!(due.len(), 1);
    let (r, rev) = decode(&due[0].1);
    assert_eq!((r.remaining_ms, r.revoked, rev), (9_000, false, Some(6)));
}

#[test]
fn no_revocation_is_chained_after_a_keep_alive_in_flight() {
    let mut t = LeaseTable::new(E);
    apply(&mut t, 5, 1, &fresh(6, 10_000), 0, Some(1));
    // A keep-alive accepted 100 ms before the deadline, still in flight at the deadline:
    // a revocation chained after it would revoke the lease its caller hears is renewed.
    t.keep_alive(6, 9_900).unwrap();
    t.note_proposed(6, 6, false, 9_900);
    assert!(t.due(10_000).is_empty());
    assert!(t.due(10_500).is_empty());
    // It applies: the lease lives on from there.
    t.note_appended(6, 9_900);
    apply(&mut t, 6, 1, &fresh(6, 10_000), 10_600, Some(1));
    assert!(t.due(10_700).is_empty());
    assert!(t.info(6, 19_800).is_some());

    // A keep-alive that never applies (lost with a leader change the table did not hear
    // of) holds the revocation back for one grace period, no longer.
    t.keep_alive(6, 19_850).unwrap();
    t.note_proposed(6, 7, false, 19_850);
    assert!(t.due(19_950).is_empty());
    let due = t.due(19_850 + E);
    assert_eq!(due.len(), 1);
    let (r, rev) = decode(&due[0].1);
    assert_eq!((r.revoked, rev, due[0].2), (true, Some(7), true));
}

#[test]
fn lease_ids_print_and_parse_as_hex() {
    assert_eq!(lease_hex(0xab), "00000000000000ab");
    assert_eq!(parse_lease_id("00000000000000ab"), Some(0xab));
    assert_eq!(parse_lease_id("0xAB"), Some(0xab));
    for bad in ["", "0", "0x", "xyz", "12345678901234567", "-1"] {
        assert_eq!(parse_lease_id(bad), None, "{bad:?}");
    }
}

#[test]
fn keys_round_trip() {
    assert_eq!(
        LeaseRecord::id_of_key(&LeaseRecord::key(0xdead)),
        Some(0xdead)
    );
    assert_eq!(LeaseRecord::id_of_key(b"meta/node/01"), None);
    assert!(LeaseRecord::key(1).starts_with(crate::core::MetaState::prefix()));
}

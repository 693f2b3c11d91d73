//! A linearizability checker for one key's history, in the style of Wing & Gong with Lowe's
//! just-in-time linearization (the algorithm of porcupine's `checkSingle`): a depth-first
//! search over the history's call/return events that linearizes one pending call at a time,
//! backtracks when a return is reached whose call was not linearized yet, and memoises every
//! (set of linearized operations, model state) it has explored.
//!
//! The model is an object of two registers with the semantics of swarmkv's key-value state
//! machine (`store/src/kv.rs`). A single key is the first register: put, get, delete (reports
//! whether the key existed) and compare-and-swap (on absence or on the current value; a compare
//! on a revision is given to the checker as a compare on the value that revision wrote, since
//! every write's value is unique) that puts or deletes and reports whether it held and the
//! value before it. Two keys of one hash tag are the two registers of one object, changed
//! together by transactions (compares on either, then writes to either, and a read of both),
//! so a transaction seen half-applied, or applied at two points, has no linearization.
//!
//! Operations whose outcome is unknown (a timeout, a leader change after proposing) are
//! ambiguous: they may take effect at any point after their call, or never. They are given a
//! return time of infinity and accept any output, so the search may linearize them anywhere
//! after their call, including after every other operation, which is the same as never.
//! Operations that failed definitely are left out of the history by the caller.
//!
//! Self-contained (std only) so other tests can include it with `#[path]`.

use std::collections::HashSet;

/// A value written to the register; callers map each unique written value to one id.
pub type Value = u64;

/// What a compare-and-swap compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists and holds this value.
    Value(Value),
}

/// What an operation asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Put(Value),
    Delete,
    /// If `expect` holds: write `then` (`None`: delete).
    Cas {
        expect: Expect,
        then: Option<Value>,
    },
    /// A transaction over both registers: if every `expect` that is set holds, write every
    /// `then` that is set (`Some(None)`: delete); either way, read both afterwards.
    Txn {
        expect: [Option<Expect>; 2],
        then: [Option<Option<Value>>; 2],
    },
}

/// What an operation answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Get(Option<Value>),
    Put,
    Delete {
        deleted: bool,
    },
    Cas {
        succeeded: bool,
        before: Option<Value>,
    },
    Txn {
        succeeded: bool,
        after: State,
    },
}

/// One operation of a key's history. Times are in any monotonic unit; `ret = None` means
/// ambiguous (completion at infinity, output unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub call: u64,
    /// Completion time and output, or `None` when the outcome is unknown.
    pub ret: Option<(u64, Output)>,
    pub input: Input,
}

/// The object's state: the current value of each register, if its key exists. A single key
/// is register 0; register 1 stays absent.
pub type State = [Option<Value>; 2];

fn holds(expect: Expect, value: Option<Value>) -> bool {
    match expect {
        Expect::Absent => value.is_none(),
        Expect::Value(v) => value == Some(v),
    }
}

/// Applies `input` to `state`; returns the new state if `output` (when known) is what the
/// object would answer.
fn step(state: State, input: Input, output: Option<Output>) -> Option<State> {
    let [first, second] = state;
    let (next, answer) = match input {
        Input::Get => (state, Output::Get(first)),
        Input::Put(v) => ([Some(v), second], Output::Put),
        Input::Delete => (
            [None, second],
            Output::Delete {
                deleted: first.is_some(),
            },
        ),
        Input::Cas { expect, then } => {
            let held = holds(expect, first);
            (
                if held { [then, second] } else { state },
                Output::Cas {
                    succeeded: held,
                    before: first,
                },
            )
        }
        Input::Txn { expect, then } => {
            let held = (0..2).all(|i| expect[i].is_none_or(|e| holds(e, state[i])));
            let mut next = state;
            if held {
                for i in 0..2 {
                    if let Some(v) = then[i] {
                        next[i] = v;
                    }
                }
            }
            (
                next,
                Output::Txn {
                    succeeded: held,
                    after: next,
                },
            )
        }
    };
    match output {
        Some(o) if o != answer => None,
        _ => Some(next),
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history. `longest` is the largest set of operations (indices into
    /// the history) the search managed to linearize, for diagnostics.
    NotLinearizable {
        longest: Vec<usize>,
    },
    /// The search gave up after this many steps (neither proven nor refuted).
    Unknown {
        steps: u64,
    },
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call, the index of its return event.
    partner: usize,
}

/// Checks one key's history, starting from `initial`, with a budget of search steps.
pub fn check(history: &[Operation], initial: Option<Value>, max_steps: u64) -> Verdict {
    check_object(history, [initial, None], max_steps)
}

/// Checks the history of an object (one key, or the two keys of a pair), starting from
/// `initial`, with a budget of search steps.
pub fn check_object(history: &[Operation], initial: State, max_steps: u64) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events sorted by time; at equal times calls come first, so operations that touch are
    // treated as concurrent (the lenient choice: the simulator's clock is coarse).
    let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        order.push((op.call, 0, i, true));
        let t = op.ret.map_or(u64::MAX, |(t, _)| t.max(op.call));
        order.push((t, 1, i, false));
    }
    order.sort_unstable();
    let mut events: Vec<Event> = order
        .iter()
        .map(|&(_, _, op, is_call)| Event {
            op,
            is_call,
            partner: usize::MAX,
        })
        .collect();
    let mut ret_pos = vec![0usize; n];
    for (pos, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_pos[e.op] = pos;
        }
    }
    for e in events.iter_mut() {
        if e.is_call {
            e.partner = ret_pos[e.op];
        }
    }
    // Doubly linked list over event positions, with a head sentinel at index `len`.
    let len = events.len();
    let head = len;
    let mut next: Vec<usize> = (0..=len).map(|i| i + 1).collect();
    let mut prev: Vec<usize> = (0..=len).map(|i| i.wrapping_sub(1)).collect();
    next[head] = 0;
    prev[0] = head;
    next[len - 1] = usize::MAX;
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize, partner: usize| {
        for p in [pos, partner] {
            let (a, b) = (prev[p], next[p]);
            next[a] = b;
            if b != usize::MAX {
                prev[b] = a;
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize, partner: usize| {
        for p in [partner, pos] {
            let (a, b) = (prev[p], next[p]);
            next[a] = p;
            if b != usize::MAX {
                prev[b] = p;
            }
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
    let mut longest: Vec<usize> = Vec::new();
    let mut cursor = next[head];
    let mut steps = 0u64;
    while next[head] != usize::MAX {
        steps += 1;
        if steps > max_steps {
            return Verdict::Unknown { steps };
        }
        let e = events[cursor];
        if e.is_call {
            let op = &history[e.op];
            let out = op.ret.map(|(_, o)| o);
            if let Some(new_state) = step(state, op.input, out) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((lin.clone(), new_state)) {
                    stack.push((cursor, state));
                    state = new_state;
                    linearized = lin;
                    lift(&mut next, &mut prev, cursor, e.partner);
                    cursor = next[head];
                    continue;
                }
            }
            cursor = next[cursor];
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            if stack.len() > longest.len() {
                longest = stack.iter().map(|(pos, _)| events[*pos].op).collect();
            }
            let Some((pos, old_state)) = stack.pop() else {
                return Verdict::NotLinearizable { longest };
            };
            let op = events[pos].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = old_state;
            unlift(&mut next, &mut prev, pos, events[pos].partner);
            cursor = next[pos];
        }
        if cursor == usize::MAX {
            // Only reachable if the list ends with a call, which cannot happen (every call's
            // return follows it); stop defensively rather than loop.
            return Verdict::Unknown { steps };
        }
    }
    Verdict::Linearizable
}

/// Small histories with a known verdict: the checker's own tests, run by every test binary
/// that includes this file.
pub fn known_histories() -> Vec<(&'static str, Vec<Operation>, bool)> {
    let ok = |client, call, ret, input, out| Operation {
        client,
        call,
        ret: Some((ret, out)),
        input,
    };
    let amb = |client, call, input| Operation {
        client,
        call,
        ret: None,
        input,
    };
    vec![
        (
            "sequential put then get",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                ok(2, 20, 30, Input::Get, Output::Get(Some(1))),
            ],
            true,
        ),
        (
            "stale read after an acknowledged overwrite",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                ok(1, 20, 30, Input::Put(2), Output::Put),
                ok(2, 40, 50, Input::Get, Output::Get(Some(1))),
            ],
            false,
        ),
        (
            "concurrent read may see either value",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                ok(1, 20, 60, Input::Put(2), Output::Put),
                ok(2, 30, 40, Input::Get, Output::Get(Some(1))),
                ok(3, 45, 50, Input::Get, Output::Get(Some(2))),
            ],
            true,
        ),
        (
            "reads going back in time",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                ok(1, 20, 60, Input::Put(2), Output::Put),
                ok(2, 30, 40, Input::Get, Output::Get(Some(2))),
                ok(3, 45, 50, Input::Get, Output::Get(Some(1))),
            ],
            false,
        ),
        (
            "lost write: acknowledged, then never seen",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                ok(2, 20, 30, Input::Get, Output::Get(None)),
            ],
            false,
        ),
        (
            "ambiguous write that appears later",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                amb(2, 20, Input::Put(2)),
                ok(3, 30, 40, Input::Get, Output::Get(Some(1))),
                ok(3, 100, 110, Input::Get, Output::Get(Some(2))),
            ],
            true,
        ),
        (
            "ambiguous write that never appears",
            vec![
                amb(2, 0, Input::Put(2)),
                ok(3, 30, 40, Input::Get, Output::Get(None)),
                ok(3, 100, 110, Input::Get, Output::Get(None)),
            ],
            true,
        ),
        (
            "ambiguous write seen before it was issued",
            vec![
                ok(3, 0, 10, Input::Get, Output::Get(Some(2))),
                amb(2, 20, Input::Put(2)),
            ],
            false,
        ),
        (
            "ambiguous write that flickers (seen, then gone, with no other write)",
            vec![
                ok(1, 0, 10, Input::Put(1), Output::Put),
                amb(2, 20, Input::Put(2)),
                ok(3, 30, 40, Input::Get, Output::Get(Some(2))),
                ok(3, 50, 60, Input::Get, Output::Get(Some(1))),
            ],
            false,
        ),
        (
            "compare-and-swap chain",
            vec![
                ok(
                    1,
                    0,
                    10,
                    Input::Cas {
                        expect: Expect::Absent,
                        then: Some(1),
                    },
                    Output::Cas {
                        succeeded: true,
                        before: None,
                    },
                ),
                ok(
                    2,
                    5,
                    15,
                    Input::Cas {
                        expect: Expect::Absent,
                        then: Some(2),
                    },
                    Output::Cas {
                        succeeded: false,
                        before: Some(1),
                    },
                ),
                ok(
                    3,
                    20,
                    30,
                    Input::Cas {
                        expect: Expect::Value(1),
                        then: None,
                    },
                    Output::Cas {
                        succeeded: true,
                        before: Some(1),
                    },
                ),
                ok(1, 40, 50, Input::Delete, Output::Delete { deleted: false }),
            ],
            true,
        ),
        (
            "two compare-and-swaps on absence both succeed",
            vec![
                ok(
                    1,
                    0,
                    10,
                    Input::Cas {
                        expect: Expect::Absent,
                        then: Some(1),
                    },
                    Output::Cas {
                        succeeded: true,
                        before: None,
                    },
                ),
                ok(
                    2,
                    5,
                    15,
                    Input::Cas {
                        expect: Expect::Absent,
                        then: Some(2),
                    },
                    Output::Cas {
                        succeeded: true,
                        before: None,
                    },
                ),
            ],
            false,
        ),
        (
            "delete reports a key that was never written",
            vec![ok(
                1,
                0,
                10,
                Input::Delete,
                Output::Delete { deleted: true },
            )],
            false,
        ),
        (
            "a pair transaction read back whole",
            vec![
                ok(1, 0, 10, write_both(1, 2), txn_out(true, 1, 2)),
                ok(2, 20, 30, read_both(), txn_out(true, 1, 2)),
            ],
            true,
        ),
        (
            "a pair transaction seen half-applied",
            vec![
                ok(1, 0, 10, write_both(1, 2), txn_out(true, 1, 2)),
                amb(1, 20, write_both(3, 4)),
                ok(2, 30, 40, read_both(), txn_out(true, 3, 2)),
            ],
            false,
        ),
        (
            "two transfers from one state: one holds, the other sees its result",
            vec![
                ok(1, 0, 10, write_both(1, 2), txn_out(true, 1, 2)),
                ok(2, 20, 40, transfer(1, 2, 3, 4), txn_out(true, 3, 4)),
                ok(3, 25, 45, transfer(1, 2, 5, 6), txn_out(false, 3, 4)),
            ],
            true,
        ),
        (
            "two transfers from one state both hold",
            vec![
                ok(1, 0, 10, write_both(1, 2), txn_out(true, 1, 2)),
                ok(2, 20, 40, transfer(1, 2, 3, 4), txn_out(true, 3, 4)),
                ok(3, 25, 45, transfer(1, 2, 5, 6), txn_out(true, 5, 6)),
            ],
            false,
        ),
        (
            "a failed compare on the second key leaves the first unwritten",
            vec![
                ok(1, 0, 10, write_both(1, 2), txn_out(true, 1, 2)),
                ok(2, 20, 30, transfer(1, 9, 3, 4), txn_out(false, 1, 2)),
                ok(3, 40, 50, read_both(), txn_out(true, 3, 2)),
            ],
            false,
        ),
    ]
}

/// A transaction that writes `a` and `b` without a compare.
fn write_both(a: Value, b: Value) -> Input {
    Input::Txn {
        expect: [None, None],
        then: [Some(Some(a)), Some(Some(b))],
    }
}

/// A transaction that only reads both registers.
fn read_both() -> Input {
    Input::Txn {
        expect: [None, None],
        then: [None, None],
    }
}

/// A transaction that moves the pair from `(a, b)` to `(c, d)`.
fn transfer(a: Value, b: Value, c: Value, d: Value) -> Input {
    Input::Txn {
        expect: [Some(Expect::Value(a)), Some(Expect::Value(b))],
        then: [Some(Some(c)), Some(Some(d))],
    }
}

fn txn_out(succeeded: bool, a: Value, b: Value) -> Output {
    Output::Txn {
        succeeded,
        after: [Some(a), Some(b)],
    }
}

//! A linearizability checker for one key's history, in the style of Wing & Gong with Lowe's
//! just-in-time linearization (the algorithm of porcupine's `checkSingle`): a depth-first
//! search over the history's call/return events that linearizes one pending call at a time,
//! backtracks when a return is reached whose call was not linearized yet, and memoises every
//! (set of linearized operations, model state) it has explored.
//!
//! The model is one register with the semantics of swarmkv's key-value state machine
//! (`store/src/kv.rs`): put, get, delete (reports whether the key existed) and compare-and-swap
//! (on absence or on the current value; a compare on a revision is given to the checker as a
//! compare on the value that revision wrote, since every write's value is unique) that puts or
//! deletes and reports whether it held and the value before it.
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

/// The register's state: the current value, if the key exists.
type State = Option<Value>;

/// Applies `input` to `state`; returns the new state if `output` (when known) is what the
/// register would answer.
fn step(state: State, input: Input, output: Option<Output>) -> Option<State> {
    let (next, answer) = match input {
        Input::Get => (state, Output::Get(state)),
        Input::Put(v) => (Some(v), Output::Put),
        Input::Delete => (
            None,
            Output::Delete {
                deleted: state.is_some(),
            },
        ),
        Input::Cas { expect, then } => {
            let holds = match expect {
                Expect::Absent => state.is_none(),
                Expect::Value(v) => state == Some(v),
            };
            (
                if holds { then } else { state },
                Output::Cas {
                    succeeded: holds,
                    before: state,
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
pub fn check(history: &[Operation], initial: State, max_steps: u64) -> Verdict {
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
    ]
}

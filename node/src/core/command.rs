//! The payload of a data group's Raft entries, and the origin a follower's proposal carries
//! in the entry's context.

use serde::{Deserialize, Serialize};
use swarmkv_store::{KvOp, Session};

use super::types::{NodeId, RequestId};

/// Version byte in front of every encoded command; part of the on-disk format (entries live in
/// the Raft log) and of the wire format.
pub const COMMAND_FORMAT: u8 = 1;

/// What a normal entry of a data group asks the state machine to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A key-value operation; with a session, a retry of it is applied at most once.
    Kv { op: KvOp, session: Option<Session> },
}

/// Why an entry's payload could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("unknown command format {0}")]
    Format(u8),
    #[error("empty command")]
    Empty,
    #[error("undecodable command: {0}")]
    Decode(String),
}

impl Command {
    /// Encodes for a Raft entry.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![COMMAND_FORMAT];
        // Serializing plain enums into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Decodes a Raft entry's payload.
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        match bytes.split_first() {
            None => Err(CommandError::Empty),
            Some((&COMMAND_FORMAT, rest)) => {
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))
            }
            Some((v, _)) => Err(CommandError::Format(*v)),
        }
    }
}

/// Version byte in front of an entry's origin (see [`Origin`]).
pub const ORIGIN_FORMAT: u8 = 1;
const ORIGIN_LEN: usize = 1 + 3 * 8;

/// Who proposed an entry, when a follower did: raft-rs forwards a follower's proposal to the
/// leader without telling the follower where it lands in the log, so the follower recognises
/// its entry by this when it applies it, and answers its caller then.
///
/// It travels in the Raft entry's `context`, not in the [`Command`]: the command's encoding,
/// and so every entry already in a log, stays as it was, and a node that does not know
/// origins applies the entry all the same (it ignores the context).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub node: NodeId,
    /// The proposing node's boot count: request ids start over at each start, and an entry
    /// proposed before a restart must not answer a new request that reuses its id.
    pub boot: u64,
    pub request: RequestId,
}

impl Origin {
    /// Encodes for a Raft entry's context.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ORIGIN_LEN);
        out.push(ORIGIN_FORMAT);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.request.to_be_bytes());
        out
    }

    /// Decodes a Raft entry's context; `None` for an empty or unknown one (an entry a leader
    /// proposed itself, or a later format), which then answers nobody.
    pub fn decode(bytes: &[u8]) -> Option<Origin> {
        if bytes.len() != ORIGIN_LEN || bytes[0] != ORIGIN_FORMAT {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[1 + 8 * i..9 + 8 * i]);
            u64::from_be_bytes(w)
        };
        Some(Origin {
            node: word(0),
            boot: word(1),
            request: word(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_round_trip_and_foreign_contexts() {
        let o = Origin {
            node: 0xfeed_beef,
            boot: 3,
            request: u64::MAX,
        };
        assert_eq!(Origin::decode(&o.encode()), Some(o));
        assert_eq!(Origin::decode(&[]), None);
        let mut later = o.encode();
        later[0] = ORIGIN_FORMAT + 1;
        assert_eq!(Origin::decode(&later), None);
        assert_eq!(Origin::decode(&o.encode()[..ORIGIN_LEN - 1]), None);
    }

    #[test]
    fn round_trip_and_garbage() {
        let c = Command::Kv {
            op: KvOp::Delete {
                key: b"k".to_vec(),
                prev_kv: true,
            },
            session: Some(Session {
                client: 1,
                seq: 2,
                first_incomplete: 2,
            }),
        };
        assert_eq!(Command::decode(&c.encode()), Ok(c));
        assert_eq!(Command::decode(&[]), Err(CommandError::Empty));
        assert_eq!(Command::decode(&[9, 1]), Err(CommandError::Format(9)));
        assert!(matches!(
            Command::decode(&[COMMAND_FORMAT, 0xff, 0xff]),
            Err(CommandError::Decode(_))
        ));
    }
}

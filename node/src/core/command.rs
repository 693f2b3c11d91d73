//! The payload of a data group's Raft entries.

use serde::{Deserialize, Serialize};
use swarmkv_store::{KvOp, Session};

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

#[cfg(test)]
mod tests {
    use super::*;

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

//! The client protocol: the kv stream's request and answer frames around a payload, the
//! postcard call or answer inside it, and the command a write becomes in a Raft entry (read
//! back from the log on every replica).

use swarmkv::core::Command;
use swarmkv::wire::{KvAnswer, KvCall};
use swarmkv_net::fuzzing;

/// Decodes `data` as each of the client protocol's layers and checks the round trips.
pub fn check(data: &[u8]) {
    if let Ok((id, payload)) = fuzzing::decode_kv_stream_request(data) {
        let again =
            fuzzing::encode_kv_stream_request(id, payload.clone()).expect("a request encodes");
        assert_eq!(
            fuzzing::decode_kv_stream_request(&again),
            Ok((id, payload.clone()))
        );
        check_payload(&payload);
    }
    if let Ok((id, answer)) = fuzzing::decode_kv_stream_answer(data) {
        let again =
            fuzzing::encode_kv_stream_answer(id, answer.clone()).expect("an answer encodes");
        assert_eq!(
            fuzzing::decode_kv_stream_answer(&again),
            Ok((id, answer.clone()))
        );
        if let Ok(payload) = answer {
            check_payload(&payload);
        }
    }
    check_payload(data);
}

/// Checks a kv payload as a call (what a node receives), an answer (what a client receives)
/// and an entry's command (what a replica applies).
pub fn check_payload(payload: &[u8]) {
    if let Ok(call) = KvCall::decode(payload) {
        assert_eq!(KvCall::decode(&call.encode()), Ok(call));
    }
    if let Ok(answer) = KvAnswer::decode(payload) {
        let encoded = answer.encode();
        match KvAnswer::decode(&encoded) {
            Ok(again) => assert_eq!(again, answer),
            Err(e) => panic!("an encoded answer does not decode: {e}"),
        }
    }
    if let Ok(command) = Command::decode(payload) {
        assert_eq!(Command::decode(&command.encode()), Ok(command));
    }
}

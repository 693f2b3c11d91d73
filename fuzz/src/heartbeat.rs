//! Membership gossip and connection setup: the heartbeat any peer on the LAN can publish on
//! the cluster's topic, the node's announcement inside it, the hello both ends of a new
//! connection exchange, and the ack of a raft frame or snapshot chunk.

use swarmkv::wire::Announce;
use swarmkv_net::fuzzing;

/// Decodes `data` as each message and checks the round trips.
pub fn check(data: &[u8]) {
    if let Ok(info) = fuzzing::decode_heartbeat(data) {
        let again = fuzzing::encode_heartbeat(&info).expect("a heartbeat encodes");
        assert_eq!(fuzzing::decode_heartbeat(&again).as_ref(), Ok(&info));
        check_announce(&info.app);
    }
    check_announce(data);
    if let Ok(hello) = fuzzing::decode_hello(data) {
        let again = fuzzing::encode_hello(hello.clone()).expect("a hello encodes");
        assert_eq!(fuzzing::decode_hello(&again), Ok(hello));
    }
    if let Ok(ack) = fuzzing::decode_ack(data) {
        let again = fuzzing::encode_ack(ack.clone()).expect("an ack encodes");
        assert_eq!(fuzzing::decode_ack(&again), Ok(ack));
    }
}

/// The node layer's payload of a heartbeat.
pub fn check_announce(bytes: &[u8]) {
    if let Some(announce) = Announce::decode(bytes) {
        assert_eq!(Announce::decode(&announce.encode()), Some(announce));
    }
}

//! Raft traffic as a peer sends it: a length-prefixed frame on its Raft stream, a postcard raft
//! frame of `(group, message bytes)` batches, and each message's protobuf.

use protobuf::Message as _;
use swarmkv_net::fuzzing;
use swarmkv_store::raft::eraftpb::Message;

/// The frame limit the codec is exercised with (small, so that oversized frames are found).
const LIMIT: usize = 1 << 16;

/// Checks the frame reader on `data` as a stream, then `data` as a frame body.
pub fn check(data: &[u8]) {
    let read = fuzzing::read_stream_frame(data, LIMIT);
    // The request-response codec (snapshots, hello) frames the same way.
    match (&read, fuzzing::read_request(data, LIMIT)) {
        (Ok(stream), Ok(request)) => assert_eq!(stream, &request),
        (Err(_), Err(_)) => {}
        (stream, request) => panic!("stream reader {stream:?}, request codec {request:?}"),
    }
    match read {
        Ok(Ok(body)) => {
            // What was read is the body the prefix announced, and writing it again gives the
            // same bytes back (the prefix is exactly the body's length).
            assert!(body.len() <= LIMIT);
            let framed = fuzzing::frame_bytes(&body).expect("a frame under the limit is written");
            assert_eq!(framed.as_slice(), &data[..framed.len()]);
            check_body(&body);
        }
        Ok(Err((size, limit))) => assert!(size > limit, "{size} refused under {limit}"),
        Err(_) => {}
    }
    check_body(data);
}

/// Checks one frame body: the raft frame and the Raft messages inside.
pub fn check_body(body: &[u8]) {
    let Ok(batches) = fuzzing::decode_raft_frame(body) else {
        return;
    };
    let again = fuzzing::encode_raft_frame(batches.clone()).expect("a decoded frame encodes");
    assert_eq!(fuzzing::decode_raft_frame(&again).as_ref(), Ok(&batches));
    // The sender writes a frame as parts without joining them: the same bytes on the wire.
    let parts = vec![
        again[..again.len() / 2].to_vec(),
        again[again.len() / 2..].to_vec(),
    ];
    let joined = fuzzing::frame_parts_bytes(&parts).expect("parts are written");
    let single = fuzzing::frame_bytes(&again).expect("a frame is written");
    assert_eq!(joined, single);
    for (_group, bytes) in batches.iter().flatten() {
        check_message(bytes);
    }
}

/// Checks one Raft message as the driver decodes it before stepping it.
pub fn check_message(bytes: &[u8]) {
    let Ok(msg) = Message::parse_from_bytes(bytes) else {
        return;
    };
    let encoded = msg.write_to_bytes().expect("a decoded message encodes");
    let again = Message::parse_from_bytes(&encoded).expect("an encoded message decodes");
    // The known fields (what raft-rs reads) must come back; they are what the text format
    // shows. Unknown fields are kept too, but `==` tells an empty set of them from none (a
    // quirk of rust-protobuf 2, found by this target), so they are compared by content.
    assert_eq!(format!("{again:?}"), format!("{msg:?}"));
    assert_eq!(unknown(&again), unknown(&msg));
}

/// The unknown fields of a message and of its nested messages, in field order.
fn unknown(msg: &Message) -> Vec<String> {
    let snapshot = msg.get_snapshot();
    let meta = snapshot.get_metadata();
    let mut sets = vec![
        msg.get_unknown_fields(),
        snapshot.get_unknown_fields(),
        meta.get_unknown_fields(),
        meta.get_conf_state().get_unknown_fields(),
    ];
    sets.extend(msg.get_entries().iter().map(|e| e.get_unknown_fields()));
    sets.into_iter()
        .map(|set| {
            let mut fields: Vec<String> = set.iter().map(|(n, v)| format!("{n}:{v:?}")).collect();
            fields.sort();
            fields.join(",")
        })
        .collect()
}

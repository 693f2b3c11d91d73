//! What the HTTP gateway decodes itself from a client's request: the JSON bodies of
//! compare-and-swap and lease grants, query strings (scan parameters), percent-encoded key
//! paths, base64 fields and lease ids. (axum parses the HTTP framing; these are ours.)

use axum::http::Uri;
use swarmkv::core::parse_lease_id;
use swarmkv::http::encoding::{b64, from_b64, parse_query, percent_decode};
use swarmkv::http::kv::{key_of, CasRequest};
use swarmkv::http::lease::GrantRequest;
use swarmkv::http::scan::ScanQuery;

/// Feeds `data` to every gateway decoder, and checks the decoders against reference encodings.
pub fn check(data: &[u8]) {
    if let Ok(cas) = serde_json::from_slice::<CasRequest>(data) {
        let _ = cas.decode();
    }
    if let Ok(grant) = serde_json::from_slice::<GrantRequest>(data) {
        if let Ok(ms) = grant.ttl_ms() {
            assert!(ms > 0);
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(q) = ScanQuery::parse(Some(&text)) {
        assert!(q.limit >= 1);
    }
    let _ = parse_query(Some(&text));
    let _ = percent_decode(&text, "fuzz");
    if let Ok(uri) = Uri::try_from(format!("/v1/kv/{text}")) {
        if let Ok(key) = key_of(&uri, false) {
            assert!(!key.is_empty());
        }
        let _ = key_of(&uri, true);
    }
    if let Some(id) = parse_lease_id(&text) {
        assert_ne!(id, 0);
        assert_eq!(parse_lease_id(&swarmkv::core::lease_hex(id)), Some(id));
    }
    let _ = from_b64(&text, "fuzz");
    round_trips(data);
}

/// Any bytes, escaped as `%XX` each, decode back to themselves as a query value and as a key
/// path; base64 of any bytes decodes back to them.
pub fn round_trips(bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut escaped = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        escaped.push('%');
        escaped.push(char::from(HEX[usize::from(b >> 4)]));
        escaped.push(char::from(HEX[usize::from(b & 15)]));
    }
    match percent_decode(&escaped, "fuzz") {
        Ok(decoded) => assert_eq!(decoded, bytes),
        Err(e) => panic!("escaped bytes refused: {e:?}"),
    }
    match parse_query(Some(&format!("k={escaped}"))) {
        Ok(params) => assert_eq!(params, vec![("k".to_string(), bytes.to_vec())]),
        Err(e) => panic!("an escaped query value refused: {e:?}"),
    }
    if !bytes.is_empty() {
        let uri = Uri::try_from(format!("/v1/kv/{escaped}")).expect("an escaped path is a URI");
        match key_of(&uri, false) {
            Ok(key) => assert_eq!(key, bytes),
            Err(e) => panic!("an escaped key refused: {e:?}"),
        }
    }
    match from_b64(&b64(bytes), "fuzz") {
        Ok(decoded) => assert_eq!(decoded, bytes),
        Err(e) => panic!("base64 of bytes refused: {e:?}"),
    }
}

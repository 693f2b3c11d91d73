//! Bytes in and out of HTTP: keys from percent-encoded paths and query strings, values and
//! keys into JSON.
//!
//! Keys and values are arbitrary bytes, but URLs and JSON strings are text. Going in, the
//! gateway percent-decodes the raw path or query itself, into bytes, so `%00`..`%FF` reach any
//! byte (axum's own extractors decode into `String` and would refuse a non-UTF-8 key).
//! Going out, JSON carries each byte string twice: as text when it is valid UTF-8, and always
//! as standard base64, so a client never has to guess which one it got.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use swarmkv_store::KvRecord;

use super::error::ApiError;

/// Decodes `%XX` escapes into bytes; every other byte stands for itself. Strict, unlike a
/// browser: a `%` not followed by two hex digits is an error (400), because guessing what a
/// malformed key meant could read or overwrite the wrong key.
pub fn percent_decode(raw: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => {
                    return Err(ApiError::bad_encoding(format!(
                        "bad percent-encoding in the {what} at byte {i}: '%' must be followed by two hex digits"
                    )))
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The parameters of a query string, in order, values decoded to bytes. As in HTML forms
/// (and `URLSearchParams`), `+` stands for a space in a query; a literal `+` is `%2B`.
pub fn parse_query(raw: Option<&str>) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut params = Vec::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(&name.replace('+', " "), "query")?)
            .map_err(|_| ApiError::bad_request("a query parameter name is not UTF-8"))?;
        let value = percent_decode(&value.replace('+', " "), "query")?;
        params.push((name, value));
    }
    Ok(params)
}

/// A boolean query flag: present with no value, `true` or `1` is true; `false` or `0` false.
pub fn flag(name: &str, value: &[u8]) -> Result<bool, ApiError> {
    match value {
        b"" | b"true" | b"1" => Ok(true),
        b"false" | b"0" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "query parameter {name} must be true or false"
        ))),
    }
}

/// Standard base64 (with padding) of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64; a malformed string is a 400 naming the field.
pub fn from_b64(text: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD
        .decode(text)
        .map_err(|e| ApiError::bad_request(format!("{field} is not valid base64: {e}")))
}

/// The text of `bytes` when they are UTF-8.
pub fn text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

/// A record as JSON: `{key, key_b64, value, value_b64, create_rev, mod_rev, version}`, where
/// `key` and `value` are left out when the bytes are not UTF-8.
#[derive(Debug, Serialize)]
pub struct RecordJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub key_b64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub value_b64: String,
    pub create_rev: u64,
    pub mod_rev: u64,
    pub version: u64,
}

impl RecordJson {
    pub fn new(key: &[u8], record: &KvRecord) -> RecordJson {
        RecordJson {
            key: text(key),
            key_b64: b64(key),
            value: text(&record.value),
            value_b64: b64(&record.value),
            create_rev: record.create_rev,
            mod_rev: record.mod_rev,
            version: record.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_reaches_every_byte_and_keeps_slashes() -> Result<(), ApiError> {
        assert_eq!(percent_decode("config/db/host", "key")?, b"config/db/host");
        assert_eq!(percent_decode("%00%ff%FFa%2Fb", "key")?, b"\x00\xff\xffa/b");
        Ok(())
    }

    #[test]
    fn a_truncated_or_non_hex_escape_is_refused() {
        for bad in ["%", "a%4", "%zz", "%g0"] {
            assert!(percent_decode(bad, "key").is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn query_plus_is_a_space_and_escapes_decode_to_bytes() -> Result<(), ApiError> {
        let q = parse_query(Some("prefix=a+b%2B%FF&limit=5&serializable"))?;
        assert_eq!(
            q,
            vec![
                ("prefix".to_string(), b"a b+\xff".to_vec()),
                ("limit".to_string(), b"5".to_vec()),
                ("serializable".to_string(), Vec::new()),
            ]
        );
        Ok(())
    }

    #[test]
    fn records_carry_text_only_when_utf8_and_base64_always() -> Result<(), serde_json::Error> {
        let rec = KvRecord {
            value: vec![0xff, 0x00],
            create_rev: 1,
            mod_rev: 2,
            version: 3,
            lease: 0,
        };
        let json = serde_json::to_value(RecordJson::new(b"k", &rec))?;
        assert_eq!(json["key"], "k");
        assert_eq!(json["value_b64"], "/wA=");
        assert!(json.get("value").is_none());
        Ok(())
    }
}

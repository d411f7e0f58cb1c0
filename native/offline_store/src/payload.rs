//! Lossless MQTT payloads in the `payload text` column.
//!
//! MQTT payloads are arbitrary bytes, but the fixed table stores them as `text`, which
//! Cassandra only accepts as valid UTF-8. The policy:
//!
//! * a payload that is valid UTF-8 is stored **as is**, so `SELECT payload` in cqlsh shows
//!   what was published (the common case: JSON, plain text);
//! * any other payload is stored as [`BINARY_MARKER`] followed by its standard base64
//!   (with padding). `U+FDD0` is a Unicode *noncharacter*, reserved for internal use, so
//!   real text practically never starts with it;
//! * a UTF-8 payload that itself starts with `U+FDD0` is also base64-encoded, so decoding
//!   is never ambiguous and every payload round-trips byte for byte.

use base64::Engine;
use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;

use crate::error::StoreError;

/// Prefix of a base64-encoded (non-UTF-8) payload in the `payload` column.
pub const BINARY_MARKER: &str = "\u{FDD0}b64:";

/// The text to store for `payload`: the payload itself when it is text (no copy).
pub fn encode(payload: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.starts_with('\u{FDD0}') => Cow::Borrowed(text),
        _ => {
            let mut out =
                String::with_capacity(BINARY_MARKER.len() + payload.len().div_ceil(3) * 4);
            out.push_str(BINARY_MARKER);
            STANDARD.encode_string(payload, &mut out);
            Cow::Owned(out)
        }
    }
}

/// Size of `encode(payload)` in bytes, without building it.
pub fn encoded_len(payload: &[u8]) -> usize {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.starts_with('\u{FDD0}') => payload.len(),
        _ => BINARY_MARKER.len() + payload.len().div_ceil(3) * 4,
    }
}

/// The original payload bytes of a stored `payload` value.
pub fn decode(stored: &str) -> Result<Vec<u8>, StoreError> {
    match stored.strip_prefix(BINARY_MARKER) {
        Some(b64) => STANDARD.decode(b64).map_err(|e| {
            StoreError::InvalidRow(format!("payload has the binary marker but bad base64: {e}"))
        }),
        None => Ok(stored.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: deterministic random bytes without a dependency.
    fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn utf8_is_stored_as_is() {
        for text in ["", "hello", "{\"t\":21.5}", "温度 ≥ 30°C 🔥"] {
            assert_eq!(encode(text.as_bytes()), text);
            assert_eq!(decode(text).unwrap(), text.as_bytes());
            assert_eq!(encoded_len(text.as_bytes()), text.len());
        }
    }

    #[test]
    fn binary_gets_marker_and_round_trips() {
        let bytes = [0xff, 0x00, 0xfe, 0x80];
        let stored = encode(&bytes);
        assert_eq!(stored, format!("{BINARY_MARKER}/wD+gA=="));
        assert_eq!(decode(&stored).unwrap(), bytes);
        assert_eq!(encoded_len(&bytes), stored.len());
    }

    #[test]
    fn text_starting_with_marker_char_is_not_ambiguous() {
        let tricky = format!("{BINARY_MARKER}AAAA");
        let stored = encode(tricky.as_bytes());
        assert_ne!(stored, tricky);
        assert_eq!(decode(&stored).unwrap(), tricky.as_bytes());
    }

    #[test]
    fn random_payloads_round_trip() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for len in (0..2000).step_by(7) {
            let bytes = random_bytes(&mut seed, len);
            let stored = encode(&bytes);
            assert_eq!(decode(&stored).unwrap(), bytes, "len {len}");
            assert_eq!(encoded_len(&bytes), stored.len());
        }
    }

    #[test]
    fn corrupt_base64_is_a_clear_error() {
        let err = decode(&format!("{BINARY_MARKER}!!!")).unwrap_err();
        assert_eq!(err.kind(), "invalid_row");
    }
}

//! Message ids as stored in the `msgid` column.
//!
//! An EMQX message id is a 128-bit GUID: 64 bits of publish time in microseconds, 48 bits
//! of node/process id, 16 bits of sequence. It is stored as 32 **upper-case** hex digits,
//! the form EMQX 4.x wrote (`emqx_guid:to_hexstr/1`). Fixed width and one case make the
//! lexical order of the text equal to publish order, so clustering order is time order and
//! a time range is a msgid range. Input in either case is accepted and normalised.

use std::fmt;

use crate::error::StoreError;

/// A validated message id: 32 upper-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId([u8; 32]);

impl MsgId {
    /// Parses 32 hex digits, any case.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(StoreError::InvalidMsgId(s.chars().take(64).collect()));
        }
        let mut out = [0u8; 32];
        for (o, b) in out.iter_mut().zip(bytes) {
            *o = b.to_ascii_uppercase();
        }
        Ok(MsgId(out))
    }

    /// An id read back from the table, when it is exactly the form EMQX writes: 32
    /// upper-case hex digits. Anything else (lower case, another width, not hex) is `None`:
    /// a delete addresses the row by this text, so an id that `parse` would normalise to
    /// another key could never be deleted (see `reads` for what replay does with those rows).
    pub fn parse_stored(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        let canonical = bytes.len() == 32
            && bytes
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
        canonical.then(|| {
            let mut out = [0u8; 32];
            out.copy_from_slice(bytes);
            MsgId(out)
        })
    }

    /// The id of the raw 16-byte EMQX GUID.
    pub fn from_guid(guid: u128) -> Self {
        Self::from_guid_bytes(&guid.to_be_bytes())
    }

    /// The id of the GUID as EMQX keeps it (`emqx_message:id/1`, 16 bytes): the hooks pass
    /// it as it is, so the BEAM does not hex-encode every stored and acked message.
    pub fn from_guid_bytes(guid: &[u8; 16]) -> Self {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 32];
        for (pair, b) in out.chunks_exact_mut(2).zip(guid) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0F)];
        }
        MsgId(out)
    }

    /// The 16-byte GUID this id spells (what `emqx_message:id/1` holds): a replayed row's
    /// message gets it without the BEAM decoding hex.
    pub fn guid_bytes(&self) -> [u8; 16] {
        // Upper-case hex digits by construction (`parse` normalises, the others write them).
        let digit = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'A' + 10,
        };
        let mut out = [0u8; 16];
        for (o, pair) in out.iter_mut().zip(self.0.chunks_exact(2)) {
            *o = (digit(pair[0]) << 4) | digit(pair[1]);
        }
        out
    }

    /// Builds an id the way EMQX does: publish time (µs), node part (48 bits), sequence.
    pub fn new(timestamp_us: u64, node: u64, seq: u16) -> Self {
        Self::from_guid(
            ((timestamp_us as u128) << 64)
                | (((node & 0xFFFF_FFFF_FFFF) as u128) << 16)
                | seq as u128,
        )
    }

    /// The publish time inside the GUID, in microseconds since the epoch.
    pub fn timestamp_us(&self) -> u64 {
        // Safe: the 16 leading bytes are validated hex digits.
        u64::from_str_radix(&self.as_str()[..16], 16).unwrap_or(0)
    }

    /// The smallest id a message published at or after `ms` can have: the lower bound of a
    /// time-range read.
    pub fn lower_bound_for_time_ms(ms: i64) -> Self {
        Self::new((ms.max(0) as u64).saturating_mul(1000), 0, 0)
    }

    pub fn as_str(&self) -> &str {
        // The bytes are ASCII hex digits by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_case_and_rejects_garbage() {
        let id = MsgId::parse("0005f1a2b3c4d5e6f708192a3b4c5d6e").unwrap();
        assert_eq!(id.as_str(), "0005F1A2B3C4D5E6F708192A3B4C5D6E");
        for bad in [
            "",
            "xyz",
            "0005F1A2B3C4D5E6F708192A3B4C5D6",
            "0005F1A2B3C4D5E6F708192A3B4C5D6EE",
            "0005F1A2B3C4D5E6F708192A3B4C5D6G",
        ] {
            assert_eq!(
                MsgId::parse(bad).unwrap_err().kind(),
                "invalid_msgid",
                "{bad}"
            );
        }
    }

    #[test]
    fn the_16_byte_guid_and_its_hex_are_one_id_both_ways() {
        let guid: [u8; 16] = [
            0x00, 0x05, 0xF1, 0xA2, 0xB3, 0xC4, 0xD5, 0xE6, 0xF7, 0x08, 0x19, 0x2A, 0x3B, 0x4C,
            0x5D, 0x6E,
        ];
        let id = MsgId::from_guid_bytes(&guid);
        assert_eq!(id.as_str(), "0005F1A2B3C4D5E6F708192A3B4C5D6E");
        assert_eq!(id, MsgId::from_guid(u128::from_be_bytes(guid)));
        assert_eq!(id.guid_bytes(), guid);
        assert_eq!(
            MsgId::parse("0005f1a2b3c4d5e6f708192a3b4c5d6e")
                .unwrap()
                .guid_bytes(),
            guid
        );
        for b in [[0u8; 16], [0xFF; 16]] {
            assert_eq!(MsgId::from_guid_bytes(&b).guid_bytes(), b);
        }
    }

    #[test]
    fn a_stored_id_must_be_exactly_what_emqx_writes() {
        let id = "0005F1A2B3C4D5E6F708192A3B4C5D6E";
        assert_eq!(MsgId::parse_stored(id).unwrap().as_str(), id);
        for other in [
            "0005f1a2b3c4d5e6f708192a3b4c5d6e",
            "0005F1A2B3C4D5E6F708192A3B4C5D6",
            "0005F1A2B3C4D5E6F708192A3B4C5D6EE",
            "0005F1A2B3C4D5E6F708192A3B4C5D6G",
            "msg-1",
            "",
        ] {
            assert_eq!(MsgId::parse_stored(other), None, "{other}");
        }
    }

    #[test]
    fn text_order_is_publish_order() {
        let mut ids: Vec<MsgId> = (0..1000u64)
            .map(|i| {
                MsgId::new(
                    1_700_000_000_000_000 + i * 997 % 1000 * 1000 + i,
                    0xABCDEF,
                    (i % 7) as u16,
                )
            })
            .collect();
        let mut by_time = ids.clone();
        by_time.sort_by_key(|m| (m.timestamp_us(), m.as_str().to_string()));
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(ids, by_time);
    }

    #[test]
    fn timestamp_and_bounds() {
        let id = MsgId::new(1_700_000_000_123_456, 42, 7);
        assert_eq!(id.timestamp_us(), 1_700_000_000_123_456);
        let bound = MsgId::lower_bound_for_time_ms(1_700_000_000_123);
        assert!(bound <= id);
        assert!(MsgId::lower_bound_for_time_ms(1_700_000_000_124) > id);
        assert_eq!(MsgId::from_guid(u128::MAX).as_str(), "F".repeat(32));
    }
}

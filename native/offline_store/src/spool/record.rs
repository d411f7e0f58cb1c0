//! One spool record on disk: `length (u32 LE) | crc32 (u32 LE) | body`, the body being an
//! encoded write (`Op`). The checksum covers the length too, so a torn or garbled header is
//! caught like a torn body. A reader stops at the first record that does not check out:
//! after a crash that is the tail the kernel had not written yet.

use crate::msgid::MsgId;
use crate::types::Message;
use crate::write::Op;

/// Bytes before a record's body.
pub(crate) const HEADER_BYTES: usize = 8;

/// The largest body a record may claim: a 10 MiB payload (the core's limit) plus topic,
/// client id and fields, with room. A longer length is garbage, not a record.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const INSERT: u8 = 1;
const DELETE: u8 = 2;

/// CRC-32 (IEEE 802.3, reflected), slicing by 8 (eight bytes per step through eight const
/// tables): several gigabytes a second, far above what the disk takes, and no dependency.
pub(crate) fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLES: [[u32; 256]; 8] = {
        let mut t = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[0][i] = c;
            i += 1;
        }
        let mut i = 0;
        while i < 256 {
            let mut s = 1;
            while s < 8 {
                let prev = t[s - 1][i];
                t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
                s += 1;
            }
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for part in parts {
        let mut chunks = part.chunks_exact(8);
        for c in &mut chunks {
            let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            crc = TABLES[7][(lo & 0xFF) as usize]
                ^ TABLES[6][((lo >> 8) & 0xFF) as usize]
                ^ TABLES[5][((lo >> 16) & 0xFF) as usize]
                ^ TABLES[4][(lo >> 24) as usize]
                ^ TABLES[3][(hi & 0xFF) as usize]
                ^ TABLES[2][((hi >> 8) & 0xFF) as usize]
                ^ TABLES[1][((hi >> 16) & 0xFF) as usize]
                ^ TABLES[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            crc = TABLES[0][((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

/// Appends `op` as one record (header and body) to `out`; returns the record's length.
pub(crate) fn encode(op: &Op, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    match op {
        Op::Insert(m) => {
            out.push(INSERT);
            out.extend_from_slice(m.msgid.as_str().as_bytes());
            out.push(m.qos);
            out.push(m.retain as u8);
            out.extend_from_slice(&m.arrived_ms.to_le_bytes());
            match m.ttl_secs {
                Some(ttl) => {
                    out.push(1);
                    out.extend_from_slice(&ttl.to_le_bytes());
                }
                None => out.push(0),
            }
            put_bytes(out, m.topic.as_bytes());
            put_bytes(out, m.sender.as_bytes());
            put_bytes(out, &m.payload);
        }
        Op::Delete {
            topic,
            msgid,
            written_us,
        } => {
            out.push(DELETE);
            out.extend_from_slice(msgid.as_str().as_bytes());
            put_bytes(out, topic.as_bytes());
            match written_us {
                Some(us) => {
                    out.push(1);
                    out.extend_from_slice(&us.to_le_bytes());
                }
                None => out.push(0),
            }
        }
    }
    let body_len = (out.len() - start - HEADER_BYTES) as u32;
    let len = body_len.to_le_bytes();
    let crc = crc32(&[&len, &out[start + HEADER_BYTES..]]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What the front of a buffer holds.
pub(crate) enum Read {
    /// A whole record that checks out, and its length on disk.
    Record(Op, usize),
    /// Not enough bytes for the record the header announces (or for a header): at the end
    /// of a file this is a torn tail.
    Short,
    /// Bytes that are not a record: a bad checksum, an impossible length, or a body that
    /// does not decode.
    Bad,
}

/// Reads the record at the front of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Read {
    if buf.len() < HEADER_BYTES {
        return Read::Short;
    }
    let len_bytes: [u8; 4] = buf[0..4].try_into().unwrap_or_default();
    let body_len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    if body_len == 0 || body_len > MAX_BODY_BYTES {
        return Read::Bad;
    }
    let Some(body) = buf.get(HEADER_BYTES..HEADER_BYTES + body_len) else {
        return Read::Short;
    };
    if crc32(&[&len_bytes, body]) != crc {
        return Read::Bad;
    }
    match decode_body(body) {
        Some(op) => Read::Record(op, HEADER_BYTES + body_len),
        None => Read::Bad,
    }
}

/// The length of the record at the front of `buf` as its header claims it (to know how much
/// to read), or `None` without a whole header.
pub(crate) fn claimed_len(buf: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    Some(HEADER_BYTES + len.min(MAX_BODY_BYTES))
}

fn decode_body(body: &[u8]) -> Option<Op> {
    let mut r = Reader(body);
    let kind = r.u8()?;
    let msgid = MsgId::parse_stored(std::str::from_utf8(r.take(32)?).ok()?)?;
    let op = match kind {
        INSERT => {
            let qos = r.u8()?;
            let retain = r.u8()? != 0;
            let arrived_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
            let ttl_secs = match r.u8()? {
                0 => None,
                _ => Some(u32::from_le_bytes(r.take(4)?.try_into().ok()?)),
            };
            let topic = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            let sender = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            let payload = r.bytes()?.to_vec();
            Op::Insert(Message {
                topic,
                msgid,
                sender,
                qos,
                retain,
                payload,
                arrived_ms,
                ttl_secs,
            })
        }
        DELETE => Op::Delete {
            msgid,
            topic: String::from_utf8(r.bytes()?.to_vec()).ok()?,
            written_us: match r.u8()? {
                0 => None,
                _ => Some(i64::from_le_bytes(r.take(8)?.try_into().ok()?)),
            },
        },
        _ => return None,
    };
    r.0.is_empty().then_some(op)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn message(topic: &str, us: u64, payload: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            msgid: MsgId::new(us, 7, 3),
            sender: "client-1".into(),
            qos: 2,
            retain: true,
            payload: payload.to_vec(),
            arrived_ms: (us / 1000) as i64,
            ttl_secs: Some(3600),
        }
    }

    fn same(a: &Op, b: &Op) -> bool {
        match (a, b) {
            (Op::Insert(x), Op::Insert(y)) => x == y,
            (
                Op::Delete {
                    topic: t1,
                    msgid: m1,
                    written_us: w1,
                },
                Op::Delete {
                    topic: t2,
                    msgid: m2,
                    written_us: w2,
                },
            ) => t1 == t2 && m1 == m2 && w1 == w2,
            _ => false,
        }
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b""]), 0);
        // Long inputs (the eight-byte steps) against the bit-by-bit definition.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut bitwise = !0u32;
        for &b in &data {
            bitwise ^= b as u32;
            for _ in 0..8 {
                bitwise = if bitwise & 1 != 0 {
                    0xEDB8_8320 ^ (bitwise >> 1)
                } else {
                    bitwise >> 1
                };
            }
        }
        for split in [0, 1, 7, 8, 9, 500, 999] {
            assert_eq!(
                crc32(&[&data[..split], &data[split..]]),
                !bitwise,
                "split {split}"
            );
        }
    }

    #[test]
    fn writes_come_back_as_written() {
        let mut no_ttl = message("a/b", 1_700_000_000_000_000, &[0, 0xFF, 1]);
        no_ttl.ttl_secs = None;
        no_ttl.retain = false;
        let ops = [
            Op::Insert(message("t/ü", 1_700_000_000_000_001, b"hello")),
            Op::Insert(no_ttl),
            Op::Delete {
                topic: "a/b".into(),
                msgid: MsgId::new(1_700_000_000_000_000, 7, 3),
                written_us: None,
            },
            Op::Delete {
                topic: "a/b".into(),
                msgid: MsgId::new(1_700_000_000_000_000, 7, 4),
                written_us: Some(1_700_000_000_500_000),
            },
            Op::Insert(message("empty", 5, b"")),
        ];
        let mut buf = Vec::new();
        let lens: Vec<usize> = ops.iter().map(|op| encode(op, &mut buf)).collect();
        let mut at = 0;
        for (op, len) in ops.iter().zip(lens) {
            match decode(&buf[at..]) {
                Read::Record(back, n) => {
                    assert!(same(op, &back));
                    assert_eq!(n, len);
                    assert_eq!(claimed_len(&buf[at..]), Some(len));
                }
                _ => panic!("record {at} not read back"),
            }
            at += len;
        }
        assert!(matches!(decode(&buf[at..]), Read::Short));
    }

    #[test]
    fn a_record_cut_short_is_short_and_a_changed_byte_is_bad() {
        let mut buf = Vec::new();
        let len = encode(&Op::Insert(message("t", 9, b"payload")), &mut buf);
        for cut in [1, HEADER_BYTES - 1, HEADER_BYTES, len - 1] {
            assert!(matches!(decode(&buf[..cut]), Read::Short), "cut at {cut}");
        }
        for i in 0..len {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            // A changed length may also claim more than there is (short): never a record.
            assert!(
                !matches!(decode(&bad), Read::Record(..)),
                "byte {i} changed and still read"
            );
        }
        let mut zeros = vec![0u8; 64];
        assert!(matches!(decode(&zeros), Read::Bad));
        zeros[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&zeros), Read::Bad));
    }
}

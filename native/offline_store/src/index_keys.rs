//! Where the topic index keeps a topic, and which key ranges a subscription filter reads.
//!
//! A topic's index row lives in partition (first level, bucket of its second level). A
//! filter whose first two levels are literal (`devices/d99999/#`) therefore reads one
//! partition, and in it only the range of topics that start with its literal prefix; a
//! filter with a wildcard second level (`devices/+/cmd`) reads each bucket of its first
//! level. Pure functions: the reads themselves are in `index_reads`.

/// Buckets per first level. Part of the stored layout: changing it needs a new table.
pub const BUCKETS: i32 = 16;

/// The bucket of a level. FNV-1a, written out here because the result is stored: it must
/// be the same on every node, platform and version (std's hasher promises none of that).
pub fn bucket_of(level: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in level.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % BUCKETS as u32) as i32
}

/// The index partition of a topic: its first level and the bucket of its second level (of
/// `""` for a topic with one level).
pub fn partition_of(topic: &str) -> (&str, i32) {
    let mut levels = topic.split('/');
    let root = levels.next().unwrap_or("");
    (root, bucket_of(levels.next().unwrap_or("")))
}

/// Past the last Unicode scalar value: an open upper end of a [`KeyRange::Under`].
const END: u32 = 0x11_0000;

/// A contiguous range of topics in one index partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// The topic `prefix` itself.
    Exact(String),
    /// Topics `prefix` + c + anything, for characters `from <= c < to` (code points); `from`
    /// 0 also holds `prefix` itself (U+0000 never occurs in a topic, so 0 stands for "no
    /// more characters").
    Under { prefix: String, from: u32, to: u32 },
}

impl KeyRange {
    /// Every topic that starts with `prefix`, `prefix` itself included.
    pub fn under(prefix: impl Into<String>) -> KeyRange {
        KeyRange::Under {
            prefix: prefix.into(),
            from: 0,
            to: END,
        }
    }

    /// The range as CQL bounds: `topic >= lo` and, when there is one, `topic < hi`. Text
    /// compares by its UTF-8 bytes, which is code point order.
    pub fn bounds(&self) -> (String, Option<String>) {
        match self {
            KeyRange::Exact(t) => (t.clone(), Some(format!("{t}\u{1}"))),
            KeyRange::Under { prefix, from, to } => {
                let lo = match from {
                    0 => prefix.clone(),
                    c => format!("{prefix}{}", char_at_or_after(*c)),
                };
                let hi = if *to >= END {
                    successor(prefix)
                } else {
                    Some(format!("{prefix}{}", char_at_or_after(*to)))
                };
                (lo, hi)
            }
        }
    }

    /// Narrower ranges covering the same topics, in key order, for a read Cassandra
    /// aborted (tombstones of expired topics): halves of the next character's span, and a
    /// single character becomes that longer prefix (the prefix alone: one topic). `None`
    /// for one topic.
    pub fn split(&self) -> Option<Vec<KeyRange>> {
        let KeyRange::Under { prefix, from, to } = self else {
            return None;
        };
        let (from, to) = (*from, *to);
        if to - from <= 1 {
            return Some(vec![match from {
                0 => KeyRange::Exact(prefix.clone()),
                c => KeyRange::under(format!("{prefix}{}", char_at_or_after(c))),
            }]);
        }
        // ASCII first: most topics are ASCII, so its span is where tombstones pile up.
        let mid = if from < 0x80 && to > 0x80 {
            0x80
        } else {
            from + (to - from) / 2
        };
        let part = |from, to| KeyRange::Under {
            prefix: prefix.clone(),
            from,
            to,
        };
        Some(
            [part(from, mid), part(mid, to)]
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect(),
        )
    }

    /// True for a span of surrogate code points only: no text falls in it.
    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Under { from, to, .. }
            if *from >= SURROGATES.start && *to <= SURROGATES.end)
    }
}

/// Code points that are not characters (UTF-16 surrogates).
const SURROGATES: std::ops::Range<u32> = 0xD800..0xE000;

/// The first character at or after code point `cp` (surrogates are skipped).
fn char_at_or_after(cp: u32) -> char {
    let cp = if SURROGATES.contains(&cp) {
        SURROGATES.end
    } else {
        cp
    };
    char::from_u32(cp).unwrap_or(char::MAX)
}

/// The least text above every text that starts with `prefix`: its last character raised
/// by one (`None`: no such text, `prefix` ends in U+10FFFF only).
fn successor(prefix: &str) -> Option<String> {
    let mut s = prefix.to_owned();
    while let Some(last) = s.pop() {
        if (last as u32) < char::MAX as u32 {
            s.push(char_at_or_after(last as u32 + 1));
            return Some(s);
        }
    }
    None
}

/// What a filter with a literal first level reads in that level's partitions.
#[derive(Debug, PartialEq, Eq)]
pub struct Reads {
    /// The one bucket holding every topic the filter can match; `None`: each bucket.
    pub bucket: Option<i32>,
    /// Key ranges to read in it (them), in key order.
    pub ranges: Vec<KeyRange>,
}

/// The index reads of `filter`, whose first level is literal: the range of its literal
/// prefix and `/` (which holds `a/` itself: `a/+` and `a/#` match it), plus the prefix
/// itself when `#` follows it (`a/#` matches `a`). Topics in the ranges still have to be
/// matched against the filter.
pub fn reads_for(filter: &str) -> Reads {
    let levels: Vec<&str> = filter.split('/').collect();
    let literal = levels
        .iter()
        .position(|l| *l == "+" || *l == "#")
        .unwrap_or(levels.len());
    if literal == levels.len() {
        let (_, bucket) = partition_of(filter);
        return Reads {
            bucket: Some(bucket),
            ranges: vec![KeyRange::Exact(filter.to_owned())],
        };
    }
    let prefix = levels[..literal].join("/");
    let bucket = (literal >= 2).then(|| bucket_of(levels[1]));
    let mut ranges = Vec::with_capacity(2);
    if levels[literal] == "#" {
        ranges.push(KeyRange::Exact(prefix.clone()));
    }
    ranges.push(KeyRange::under(format!("{prefix}/")));
    Reads { bucket, ranges }
}

/// `filter` (which starts with `+` or `#`) with `root` as its first level: what it can
/// match under that root.
pub fn rooted(filter: &str, root: &str) -> String {
    match filter.split_once('/') {
        _ if filter == "#" => format!("{root}/#"),
        Some((_, rest)) => format!("{root}/{rest}"),
        None => root.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(prefix: &str) -> KeyRange {
        KeyRange::under(prefix)
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Stored values: these must never change.
        let pinned = ["", "d1", "d99999", "cmd", "é"].map(bucket_of);
        assert_eq!(pinned, [5, 6, 10, 11, 1]);
        assert_eq!(partition_of("devices/d1/cmd"), ("devices", bucket_of("d1")));
        assert_eq!(partition_of("devices"), ("devices", bucket_of("")));
        assert_eq!(partition_of("/a"), ("", bucket_of("a")));
        let mut counts = [0; BUCKETS as usize];
        for i in 0..16_000 {
            counts[bucket_of(&format!("d{i:05}")) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (700..1300).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_filter_reads_the_range_of_its_literal_prefix() {
        assert_eq!(
            reads_for("devices/d99999/#"),
            Reads {
                bucket: Some(bucket_of("d99999")),
                ranges: vec![
                    KeyRange::Exact("devices/d99999".into()),
                    under("devices/d99999/")
                ]
            }
        );
        assert_eq!(
            reads_for("devices/d1/+/cmd"),
            Reads {
                bucket: Some(bucket_of("d1")),
                ranges: vec![under("devices/d1/")]
            }
        );
        assert_eq!(
            reads_for("devices/+/cmd"),
            Reads {
                bucket: None,
                ranges: vec![under("devices/")]
            }
        );
        assert_eq!(
            reads_for("devices/#"),
            Reads {
                bucket: None,
                ranges: vec![KeyRange::Exact("devices".into()), under("devices/")]
            }
        );
        assert_eq!(
            reads_for("a/b"),
            Reads {
                bucket: Some(bucket_of("b")),
                ranges: vec![KeyRange::Exact("a/b".into())]
            }
        );
        assert_eq!(reads_for("a").bucket, Some(bucket_of("")));
        assert_eq!(rooted("#", "r"), "r/#");
        assert_eq!(rooted("+", "r"), "r");
        assert_eq!(rooted("+/x/#", "r"), "r/x/#");
    }

    #[test]
    fn bounds_hold_exactly_the_range() {
        let (lo, hi) = under("devices/d1/").bounds();
        assert_eq!(lo, "devices/d1/");
        assert_eq!(hi.as_deref(), Some("devices/d10"));
        let (lo, hi) = KeyRange::Exact("a/b".into()).bounds();
        assert_eq!((lo.as_str(), hi.as_deref()), ("a/b", Some("a/b\u{1}")));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{10FFFF}"), None);
        assert_eq!(successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        // Each topic starting with the prefix is inside, the neighbours are not.
        let inside = |t: &str, r: &KeyRange| {
            let (lo, hi) = r.bounds();
            t >= lo.as_str() && hi.is_none_or(|h| t < h.as_str())
        };
        let r = under("devices/d1/");
        for t in [
            "devices/d1/x",
            "devices/d1/\u{10FFFF}",
            "devices/d1//",
            "devices/d1/",
        ] {
            assert!(inside(t, &r), "{t}");
        }
        for t in [
            "devices/d1",
            "devices/d10/x",
            "devices/d1.x/y",
            "devices/d1-x",
        ] {
            assert!(!inside(t, &r), "{t}");
        }
    }

    /// Splitting the ranges that hold more than one topic (as a read that Cassandra
    /// aborts is split) ends with one topic per range, and every step covers each topic
    /// exactly once, in key order.
    #[test]
    fn splits_cover_the_range_once_and_narrow_down() {
        let topics: Vec<String> = [
            "",
            "a",
            "a/b",
            "a/c",
            "z",
            "é",
            "\u{E000}x",
            "\u{10FFFF}",
            "~~",
        ]
        .iter()
        .map(|s| format!("p/{s}"))
        .collect();
        let holds = |r: &KeyRange, t: &str| {
            let (lo, hi) = r.bounds();
            t >= lo.as_str() && hi.is_none_or(|h| t < h.as_str())
        };
        let held = |r: &KeyRange| topics.iter().filter(|t| holds(r, t)).count();
        let mut ranges = vec![under("p/")];
        for _ in 0..200 {
            for t in &topics {
                let n = ranges.iter().filter(|r| holds(r, t)).count();
                assert_eq!(n, 1, "{t} in {n} of {ranges:?}");
            }
            let keys: Vec<String> = ranges.iter().map(|r| r.bounds().0).collect();
            assert!(keys.is_sorted(), "in key order: {keys:?}");
            if ranges.iter().all(|r| held(r) <= 1) {
                break;
            }
            ranges = ranges
                .iter()
                .flat_map(|r| match held(r) {
                    0 | 1 => vec![r.clone()],
                    _ => r.split().expect("a range of two topics splits"),
                })
                .collect();
        }
        assert!(ranges.iter().all(|r| held(r) <= 1), "{ranges:?}");
        let one_char = KeyRange::Under {
            prefix: "p/".into(),
            from: 'a' as u32,
            to: 'b' as u32,
        };
        assert_eq!(one_char.split(), Some(vec![under("p/a")]));
        let no_more = KeyRange::Under {
            prefix: "p/".into(),
            from: 0,
            to: 1,
        };
        assert_eq!(no_more.split(), Some(vec![KeyRange::Exact("p/".into())]));
        assert_eq!(KeyRange::Exact("x".into()).split(), None);
    }
}

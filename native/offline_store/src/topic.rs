//! MQTT topic names and filters, as far as the store needs them: matching a stored topic
//! against a subscription filter, and the first level that partitions the topic index.

/// True if `filter` contains `+` or `#` levels.
pub fn is_wildcard(filter: &str) -> bool {
    filter.split('/').any(|level| level == "+" || level == "#")
}

/// The first level of a topic or filter (`"t"` for `"t/1/x"`, `""` for `"/a"`).
pub fn root(topic: &str) -> &str {
    topic.split('/').next().unwrap_or("")
}

/// MQTT 3.1.1 / 5 matching (section 4.7): `+` matches one level, `#` the rest including
/// the parent level; a filter starting with a wildcard never matches a topic starting
/// with `$`.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_mqtt_spec() {
        let cases = [
            ("t/1", "t/1", true),
            ("t/1", "t/+", true),
            ("t/1", "t/#", true),
            ("t", "t/#", true),
            ("t/2/x", "t/#", true),
            ("t/2/x", "t/+", false),
            ("t/2/x", "t/+/x", true),
            ("t/2/y", "t/+/x", false),
            ("t/1", "#", true),
            ("t/1", "+/+", true),
            ("t/1", "+", false),
            ("/a", "+/a", true),
            ("/a", "/a", true),
            ("t//x", "t/+/x", true),
            ("$SYS/x", "#", false),
            ("$SYS/x", "+/x", false),
            ("$SYS/x", "$SYS/#", true),
            ("u/1", "t/#", false),
            ("t/1/", "t/1", false),
            ("t/1/", "t/1/+", true),
        ];
        for (topic, filter, want) in cases {
            assert_eq!(matches(topic, filter), want, "{topic} vs {filter}");
        }
    }

    #[test]
    fn wildcards_and_roots() {
        assert!(is_wildcard("t/+"));
        assert!(is_wildcard("#"));
        assert!(!is_wildcard("t/a+b"));
        assert_eq!(root("t/1/x"), "t");
        assert_eq!(root("t"), "t");
        assert_eq!(root("/a"), "");
    }
}

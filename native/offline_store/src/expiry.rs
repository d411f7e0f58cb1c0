//! How long a stored row lives. A message's expiry counts from its publish, so the time it
//! waited in the buffer comes off its TTL, and one that expired while waiting is not written
//! at all. The TTL stays within what the Cassandra the store talks to accepts: a publisher's
//! Message-Expiry-Interval of 0xFFFFFFFF is clamped, never refused (a refused TTL would sink
//! every row of its batch).

/// Cassandra's largest TTL on every version (20 years): above it the write is refused with
/// "ttl is too large".
pub const MAX_TTL_SECS: i64 = 630_720_000;

/// Before 5.0 a row may not expire after 2038-01-19T03:14:06Z (`Cell.MAX_DELETION_TIME`,
/// `Integer.MAX_VALUE - 1` seconds since the epoch; CASSANDRA-14092): the write is refused.
const LEGACY_LAST_EXPIRY_SECS: i64 = 2_147_483_646;

/// Room for the coordinator's clock running ahead of ours: a row clamped by the 2038 limit
/// expires a day before it.
const LEGACY_MARGIN_SECS: i64 = 86_400;

/// What limits a row's expiry on the cluster the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryLimit {
    /// Every node 5.0 or later with `storage_compatibility_mode: NONE`: only
    /// `MAX_TTL_SECS`.
    MaxTtl,
    /// Anything else: `MAX_TTL_SECS`, and no expiry after 2038-01-19. That includes 5.0 in
    /// its default `CASSANDRA_4` (or `UPGRADING`) storage compatibility mode, which keeps
    /// the 4.x limit (measured on 5.0.9: a TTL of 630,720,000 s is refused there).
    Before2038,
}

impl ExpiryLimit {
    /// The limit for a cluster whose nodes report these `release_version`s and whose
    /// coordinator runs in `compatibility_mode` (`system_views.settings`, 4.0+; `None`
    /// when it could not be read). The strictest wins, so a cluster in the middle of an
    /// upgrade is served right; what cannot be read counts as old: clamping too early costs
    /// little, a refused write costs its batch.
    pub(crate) fn of_cluster<'a>(
        versions: impl IntoIterator<Item = &'a str>,
        compatibility_mode: Option<&str>,
    ) -> ExpiryLimit {
        let mut seen = false;
        for version in versions {
            seen = true;
            if major(version).is_none_or(|m| m < 5) {
                return ExpiryLimit::Before2038;
            }
        }
        let extended = compatibility_mode.is_some_and(|m| m.trim().eq_ignore_ascii_case("NONE"));
        if seen && extended {
            ExpiryLimit::MaxTtl
        } else {
            ExpiryLimit::Before2038
        }
    }
}

fn major(version: &str) -> Option<u32> {
    version.trim().split('.').next()?.parse().ok()
}

/// The TTL a row is written with at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowTtl {
    /// No expiry: kept until acknowledged (TTL 0).
    Forever,
    /// Its expiry has passed: not to be written.
    Expired,
    /// Seconds left, within what Cassandra accepts (at least 1).
    Secs(i32),
}

impl RowTtl {
    /// The value bound to `USING TTL ?`. `Expired` becomes 1 s: a write that expired
    /// between the writer's check and a retry lives at most a second.
    pub(crate) fn bound(self) -> i32 {
        match self {
            RowTtl::Forever => 0,
            RowTtl::Expired => 1,
            RowTtl::Secs(s) => s,
        }
    }
}

/// The TTL of a message published at `arrived_ms` with an expiry of `ttl_secs` (from its
/// publish), written at `now_ms`: the expiry less the time since the publish, rounded up to
/// whole seconds (Cassandra's unit), then clamped to what `limit` allows. A publish time in
/// the future (clock skew) takes nothing off.
pub(crate) fn row_ttl(
    ttl_secs: Option<u32>,
    arrived_ms: i64,
    now_ms: i64,
    limit: ExpiryLimit,
) -> RowTtl {
    let Some(expiry) = ttl_secs.filter(|t| *t > 0) else {
        return RowTtl::Forever;
    };
    let waited_ms = now_ms.saturating_sub(arrived_ms).max(0);
    let left_ms = i64::from(expiry) * 1000 - waited_ms;
    if left_ms <= 0 {
        return RowTtl::Expired;
    }
    RowTtl::Secs(clamp_secs((left_ms + 999) / 1000, now_ms, limit))
}

/// A TTL of `secs` (> 0) written at `now_ms`, within what `limit` allows, at least 1 s.
/// Also used for the topic index rows, which outlive their messages.
pub(crate) fn clamp_secs(secs: i64, now_ms: i64, limit: ExpiryLimit) -> i32 {
    let max = match limit {
        ExpiryLimit::MaxTtl => MAX_TTL_SECS,
        ExpiryLimit::Before2038 => {
            MAX_TTL_SECS.min(LEGACY_LAST_EXPIRY_SECS - LEGACY_MARGIN_SECS - now_ms.div_euclid(1000))
        }
    };
    secs.min(max).max(1) as i32
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::ExpiryLimit::{Before2038, MaxTtl};
    use super::*;

    /// 2026-11-28T00:00:00Z.
    const NOW_MS: i64 = 1_795_824_000_000;

    #[test]
    fn the_time_waited_in_the_buffer_comes_off_the_ttl() {
        let ttl = |expiry, waited_ms| row_ttl(Some(expiry), NOW_MS - waited_ms, NOW_MS, MaxTtl);
        assert_eq!(ttl(60, 0), RowTtl::Secs(60));
        assert_eq!(ttl(60, 5), RowTtl::Secs(60), "rounded up to whole seconds");
        assert_eq!(ttl(60, 10_500), RowTtl::Secs(50));
        assert_eq!(ttl(60, 59_001), RowTtl::Secs(1));
        assert_eq!(ttl(60, 59_999), RowTtl::Secs(1));
        assert_eq!(ttl(60, 60_000), RowTtl::Expired);
        assert_eq!(ttl(60, 70_000), RowTtl::Expired);
        assert_eq!(ttl(1, 0), RowTtl::Secs(1));
        // A publish time ahead of our clock takes nothing off.
        assert_eq!(
            row_ttl(Some(60), NOW_MS + 5_000, NOW_MS, MaxTtl),
            RowTtl::Secs(60)
        );
        assert_eq!(row_ttl(Some(60), i64::MIN, NOW_MS, MaxTtl), RowTtl::Expired);
    }

    #[test]
    fn no_expiry_is_forever() {
        assert_eq!(row_ttl(None, 0, NOW_MS, Before2038), RowTtl::Forever);
        assert_eq!(row_ttl(Some(0), 0, NOW_MS, Before2038), RowTtl::Forever);
        assert_eq!(RowTtl::Forever.bound(), 0);
        assert_eq!(RowTtl::Expired.bound(), 1);
        assert_eq!(RowTtl::Secs(42).bound(), 42);
    }

    #[test]
    fn the_largest_expiry_is_clamped_to_what_cassandra_accepts() {
        // 5.0+ without compatibility mode: 20 years at most.
        assert_eq!(
            row_ttl(Some(u32::MAX), NOW_MS, NOW_MS, MaxTtl),
            RowTtl::Secs(630_720_000)
        );
        assert_eq!(
            row_ttl(Some(630_720_001), NOW_MS, NOW_MS, MaxTtl),
            RowTtl::Secs(630_720_000)
        );
        assert_eq!(
            row_ttl(Some(630_720_000), NOW_MS, NOW_MS, MaxTtl),
            RowTtl::Secs(630_720_000)
        );
        // Otherwise: a day before 2038-01-19T03:14:06Z, counted from now.
        let cap = 2_147_483_646 - 86_400 - NOW_MS / 1000;
        assert_eq!(cap, 351_573_246);
        assert_eq!(
            row_ttl(Some(u32::MAX), NOW_MS, NOW_MS, Before2038),
            RowTtl::Secs(cap as i32)
        );
        assert_eq!(
            row_ttl(Some(500_000_000), NOW_MS, NOW_MS, Before2038),
            RowTtl::Secs(cap as i32)
        );
        // Below the cap nothing changes.
        assert_eq!(
            row_ttl(Some(86_400), NOW_MS, NOW_MS, Before2038),
            RowTtl::Secs(86_400)
        );
        // Past the 2038 limit an old Cassandra takes no expiry: at least 1 s is sent.
        let after_2038 = 2_200_000_000_000;
        assert_eq!(
            row_ttl(Some(600), after_2038, after_2038, Before2038),
            RowTtl::Secs(1)
        );
    }

    #[test]
    fn index_ttls_are_clamped_the_same_way() {
        assert_eq!(clamp_secs(i64::from(i32::MAX), NOW_MS, MaxTtl), 630_720_000);
        assert_eq!(
            clamp_secs(i64::from(i32::MAX), NOW_MS, Before2038),
            351_573_246
        );
        assert_eq!(clamp_secs(86_400, NOW_MS, Before2038), 86_400);
        assert_eq!(clamp_secs(0, NOW_MS, MaxTtl), 1);
    }

    #[test]
    fn only_a_whole_5_0_cluster_out_of_compatibility_mode_goes_past_2038() {
        let none = Some("NONE");
        assert_eq!(ExpiryLimit::of_cluster(["5.0.9"], none), MaxTtl);
        assert_eq!(
            ExpiryLimit::of_cluster(["5.0.9", "5.1-SNAPSHOT"], none),
            MaxTtl
        );
        // 5.0's default keeps the 4.x limit.
        assert_eq!(
            ExpiryLimit::of_cluster(["5.0.9"], Some("CASSANDRA_4")),
            Before2038
        );
        assert_eq!(
            ExpiryLimit::of_cluster(["5.0.9"], Some("UPGRADING")),
            Before2038
        );
        assert_eq!(ExpiryLimit::of_cluster(["5.0.9"], None), Before2038);
        assert_eq!(ExpiryLimit::of_cluster(["4.1.10"], none), Before2038);
        assert_eq!(ExpiryLimit::of_cluster(["3.11.19"], None), Before2038);
        assert_eq!(
            ExpiryLimit::of_cluster(["5.0.9", "4.1.10"], none),
            Before2038
        );
        assert_eq!(ExpiryLimit::of_cluster(["banana"], none), Before2038);
        assert_eq!(ExpiryLimit::of_cluster([], none), Before2038);
    }
}

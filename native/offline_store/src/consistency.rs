//! Which pairs of write and read consistency levels let a read see every acknowledged
//! write. The replay floor depends on it: a floor scan that misses a stored row moves the
//! floor past it, and every later replay starts above it (docs/tombstones.md, "Consistency
//! and datacenters"). Without the floor a missed row only shows up later; with it, never.
//!
//! The replication factor is not known when the config is checked, so a pair counts as
//! overlapping only if `W + R > RF` holds for every replication factor, within the scope
//! that matters: one datacenter, or with several datacenters every replica anywhere.

use scylla::statement::Consistency;

/// Where the brokers' reads and writes may be coordinated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The keyspace lives in one datacenter: LOCAL_QUORUM is QUORUM.
    OneDatacenter,
    /// Several datacenters: a LOCAL_* level counts replicas of the coordinator's datacenter
    /// only, and a write coordinated in one datacenter is not seen by a LOCAL_* read in another.
    SeveralDatacenters,
}

/// LOCAL_ONE and LOCAL_QUORUM: levels whose meaning depends on the coordinator's datacenter.
pub fn is_local(c: Consistency) -> bool {
    matches!(c, Consistency::LocalOne | Consistency::LocalQuorum)
}

/// True when a read at `read` always meets at least one replica that acknowledged a write
/// at `write`, whatever the replication factor.
///
/// - ANY never: such a write may exist only as a hint on a node that is no replica.
/// - ALL on either side with anything else (but ANY) on the other: it touches every replica.
/// - Majorities: QUORUM and EACH_QUORUM overlap each other (both are a majority of all
///   replicas; EACH_QUORUM one in every datacenter), EACH_QUORUM and LOCAL_QUORUM overlap in
///   the local datacenter, and LOCAL_QUORUM with LOCAL_QUORUM or QUORUM only in one datacenter.
/// - ONE, TWO, THREE, LOCAL_ONE with anything short of ALL: not for every replication factor.
pub fn reads_see_writes(write: Consistency, read: Consistency, scope: Scope) -> bool {
    use Consistency::*;
    match (write, read) {
        (Any, _) | (_, Any) => false,
        (All, _) | (_, All) => true,
        (Quorum | EachQuorum, Quorum | EachQuorum) => true,
        (EachQuorum, LocalQuorum) | (LocalQuorum, EachQuorum) => true,
        (LocalQuorum, LocalQuorum | Quorum) | (Quorum, LocalQuorum) => {
            scope == Scope::OneDatacenter
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::Scope::{OneDatacenter, SeveralDatacenters};
    use super::*;
    use Consistency::*;

    const LEVELS: [Consistency; 9] = [
        Any,
        One,
        Two,
        Three,
        Quorum,
        All,
        LocalQuorum,
        EachQuorum,
        LocalOne,
    ];

    /// The rule checked against the definition for small clusters: every way the replicas
    /// acknowledging a write and those answering a read can be chosen, in one and in two
    /// datacenter of 1..=7 replicas and in two of 1..=4 each, the coordinator's datacenter
    /// either one (enough for TWO and THREE to miss: they do from 4 and 6 replicas).
    #[test]
    fn agrees_with_every_placement_of_small_clusters() {
        for scope in [OneDatacenter, SeveralDatacenters] {
            for w in LEVELS {
                for r in LEVELS {
                    let expected = overlaps_in_every_placement(w, r, scope);
                    assert_eq!(
                        reads_see_writes(w, r, scope),
                        expected,
                        "write {w:?}, read {r:?}, {scope:?}"
                    );
                }
            }
        }
    }

    /// Replicas one request must reach at `c`, per datacenter, when the coordinator is in
    /// datacenter `local`; `None` when the level cannot be met (the request fails, so it
    /// constrains nothing) or promises no replica at all (ANY).
    fn acks(c: Consistency, rf: &[usize], local: usize) -> Option<Vec<usize>> {
        let total: usize = rf.iter().sum();
        let majority = |n: usize| n / 2 + 1;
        let anywhere = |n: usize| (n <= total).then(|| vec![n]);
        match c {
            Any => None,
            One => anywhere(1),
            Two => anywhere(2),
            Three => anywhere(3),
            Quorum => anywhere(majority(total)),
            All => Some(rf.to_vec()),
            EachQuorum => Some(rf.iter().map(|&n| majority(n)).collect()),
            LocalQuorum => Some(
                (0..rf.len())
                    .map(|d| if d == local { majority(rf[d]) } else { 0 })
                    .collect(),
            ),
            LocalOne => Some((0..rf.len()).map(|d| usize::from(d == local)).collect()),
            _ => unreachable!(),
        }
    }

    /// Can a write and a read be answered by disjoint replica sets? A level given as one
    /// number may take its replicas from any datacenter; per-datacenter counts are fixed.
    fn can_miss(w: &[usize], r: &[usize], rf: &[usize]) -> bool {
        match (w.len(), r.len()) {
            (1, 1) => w[0] + r[0] <= rf.iter().sum(),
            (1, _) => w[0] + r.iter().sum::<usize>() <= rf.iter().sum(),
            (_, 1) => r[0] + w.iter().sum::<usize>() <= rf.iter().sum(),
            _ => w.iter().zip(r).zip(rf).all(|((w, r), n)| w + r <= *n),
        }
    }

    fn overlaps_in_every_placement(w: Consistency, r: Consistency, scope: Scope) -> bool {
        if w == Any || r == Any {
            return false;
        }
        let mut layouts: Vec<Vec<usize>> = (1..=7).map(|n| vec![n]).collect();
        if scope == SeveralDatacenters {
            for a in 1..=4 {
                for b in 1..=4 {
                    layouts.push(vec![a, b]);
                }
            }
        }
        for rf in &layouts {
            for write_dc in 0..rf.len() {
                for read_dc in 0..rf.len() {
                    let (Some(wa), Some(ra)) = (acks(w, rf, write_dc), acks(r, rf, read_dc)) else {
                        continue;
                    };
                    if can_miss(&wa, &ra, rf) {
                        return false;
                    }
                }
            }
        }
        true
    }

    #[test]
    fn local_levels_are_the_local_ones() {
        let local: Vec<Consistency> = LEVELS.into_iter().filter(|c| is_local(*c)).collect();
        assert_eq!(local, vec![LocalQuorum, LocalOne]);
    }
}

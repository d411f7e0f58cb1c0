//! Cluster-wide claims on a shared group's replay (`claims`): two stores stand for two EMQX
//! nodes against one Cassandra. Exactly one of two claims made at the same moment wins; the
//! holder's refresh keeps it, the other's fails; a release hands it on; a holder that died
//! (stopped refreshing) loses it when the TTL runs out. Needs the local Cassandra.

mod common;

use std::time::Duration;

use common::*;
use offline_store::Claim;

fn group() -> String {
    format!("g{}", next_msgid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_wins_a_group_and_hands_it_on() {
    let (a, b) = tokio::join!(connect(), connect());
    let g = group();
    let ttl = Duration::from_secs(60);
    // Both at once: Paxos lets exactly one in.
    let (ca, cb) = tokio::join!(
        a.claim_replay(&g, "t/#", "node-a", ttl),
        b.claim_replay(&g, "t/#", "node-b", ttl)
    );
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let (winner, loser, won_by, lost_by) = match (&ca, &cb) {
        (Claim::Held, Claim::HeldBy(h)) => (&a, &b, "node-a", h.clone()),
        (Claim::HeldBy(h), Claim::Held) => (&b, &a, "node-b", h.clone()),
        other => panic!("exactly one claim must win: {other:?}"),
    };
    assert_eq!(lost_by, won_by);
    let lost_name = if won_by == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    // The same node claiming again (another member there) still holds it.
    assert_eq!(
        winner.claim_replay(&g, "t/#", won_by, ttl).await.unwrap(),
        Claim::Held
    );
    // Another filter of the same group is another claim.
    assert_eq!(
        loser.claim_replay(&g, "u/#", lost_name, ttl).await.unwrap(),
        Claim::Held
    );
    assert!(
        winner
            .refresh_replay_claim(&g, "t/#", won_by, ttl)
            .await
            .unwrap()
    );
    assert!(
        !loser
            .refresh_replay_claim(&g, "t/#", lost_name, ttl)
            .await
            .unwrap()
    );
    // A release by the loser changes nothing; the holder's hands it on.
    loser
        .release_replay_claim(&g, "t/#", lost_name)
        .await
        .unwrap();
    assert_eq!(
        loser.claim_replay(&g, "t/#", lost_name, ttl).await.unwrap(),
        Claim::HeldBy(won_by.into())
    );
    winner
        .release_replay_claim(&g, "t/#", won_by)
        .await
        .unwrap();
    assert_eq!(
        loser.claim_replay(&g, "t/#", lost_name, ttl).await.unwrap(),
        Claim::Held
    );
    loser
        .release_replay_claim(&g, "t/#", lost_name)
        .await
        .unwrap();
    loser
        .release_replay_claim(&g, "u/#", lost_name)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_loses_its_claim_when_the_ttl_runs_out() {
    let (a, b) = tokio::join!(connect(), connect());
    let g = group();
    let short = Duration::from_secs(2);
    assert_eq!(
        a.claim_replay(&g, "t/#", "node-a", short).await.unwrap(),
        Claim::Held
    );
    assert_eq!(
        b.claim_replay(&g, "t/#", "node-b", short).await.unwrap(),
        Claim::HeldBy("node-a".into())
    );
    // node-a dies: no refresh, no release.
    drop(a);
    let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(15));
    loop {
        match b.claim_replay(&g, "t/#", "node-b", short).await.unwrap() {
            Claim::Held => break,
            Claim::HeldBy(h) => {
                assert_eq!(h, "node-a");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the claim of a dead holder must end with its TTL"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    b.release_replay_claim(&g, "t/#", "node-b").await.unwrap();
}

//! The fenced L2 protocol against a real Redis: leases, tombstones, and fills that lose to anything newer.

mod common;

use std::time::Duration;

use common::{envelope, l2, now_ms};
use strata_core::{Compression, EnvelopeKind};
use strata_redis::{Fence, FillOutcome, LeaseGrant, LeaseToken, RedisL2};

const HOLD: Duration = Duration::from_secs(5);

fn versioned(value: &[u8], version: u64) -> strata_core::Envelope {
    let mut e = envelope(value, now_ms(), 60_000);
    e.version = Some(version);
    e
}

fn unversioned(value: &[u8]) -> strata_core::Envelope {
    let mut e = envelope(value, now_ms(), 60_000);
    e.version = None;
    e
}

/// Race (the stale set): node A looks up a miss and starts loading x=42; node B's write commits x=43 and
/// invalidates; A's load finishes and fills. Interleaving: lookup(A) → invalidate(B) → fill(A). A's fill must be
/// refused, and a load that starts after the invalidation must be accepted.
#[tokio::test]
async fn stale_set_race_a_fill_that_began_before_invalidate_never_lands() {
    let a = l2("stale_set").await;
    let (_, started) = a.lookup("price", "x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    a.invalidate("price", "x", None, HOLD, now_ms())
        .await
        .unwrap();
    let late = a
        .fill(
            "price",
            "x",
            &unversioned(b"42"),
            Compression::None,
            now_ms(),
            Fence {
                started_at: Some(started),
                lease: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(late, FillOutcome::Superseded);
    let got = a.get("price", "x").await.unwrap().unwrap();
    assert_eq!(got.kind, EnvelopeKind::Tombstone, "the old value landed");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (_, fresh_start) = a.lookup("price", "x").await.unwrap();
    let ok = a
        .fill(
            "price",
            "x",
            &unversioned(b"43"),
            Compression::None,
            now_ms(),
            Fence {
                started_at: Some(fresh_start),
                lease: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ok, FillOutcome::Stored);
    assert_eq!(
        a.get("price", "x").await.unwrap().unwrap().kind,
        EnvelopeKind::Value(b"43".to_vec())
    );
}

/// Race: a load starts, another node writes a newer value (write-through), the load fills. Without versions the
/// write's later stamp wins.
#[tokio::test]
async fn a_fill_loses_to_a_write_made_after_its_load_began() {
    let l2 = l2("fill_vs_write").await;
    let (_, started) = l2.lookup("p", "k").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(
        l2.write("p", "k", &unversioned(b"new"), Compression::None, now_ms())
            .await
            .unwrap(),
        FillOutcome::Stored
    );
    let late = l2
        .fill(
            "p",
            "k",
            &unversioned(b"old"),
            Compression::None,
            now_ms(),
            Fence {
                started_at: Some(started),
                lease: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(late, FillOutcome::Superseded);
    assert_eq!(
        l2.get("p", "k").await.unwrap().unwrap().kind,
        EnvelopeKind::Value(b"new".to_vec())
    );
}

#[tokio::test]
async fn versions_decide_when_both_sides_have_one() {
    let l2 = l2("versions").await;
    let now = now_ms();
    assert_eq!(
        l2.write("p", "k", &versioned(b"v5", 5), Compression::None, now)
            .await
            .unwrap(),
        FillOutcome::Stored
    );
    assert_eq!(
        l2.write("p", "k", &versioned(b"v4", 4), Compression::None, now)
            .await
            .unwrap(),
        FillOutcome::Superseded
    );
    // A fill whose lookup came before the v5 write but which read v6 from the source is newer: it lands.
    let v6 = l2
        .fill(
            "p",
            "k",
            &versioned(b"v6", 6),
            Compression::None,
            now,
            Fence {
                started_at: Some(0),
                lease: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(v6, FillOutcome::Stored);
    l2.invalidate("p", "k", Some(9), HOLD, now).await.unwrap();
    let (_, started) = l2.lookup("p", "k").await.unwrap();
    let fence = Fence {
        started_at: Some(started),
        lease: None,
    };
    assert_eq!(
        l2.fill(
            "p",
            "k",
            &versioned(b"v8", 8),
            Compression::None,
            now,
            fence
        )
        .await
        .unwrap(),
        FillOutcome::Superseded
    );
    assert_eq!(
        l2.fill(
            "p",
            "k",
            &versioned(b"v9", 9),
            Compression::None,
            now,
            fence
        )
        .await
        .unwrap(),
        FillOutcome::Stored
    );
}

#[tokio::test]
async fn a_fill_whose_start_is_unknown_never_overwrites_but_fills_an_empty_key() {
    let l2 = l2("unknown_start").await;
    let unknown = Fence {
        started_at: None,
        lease: None,
    };
    assert_eq!(
        l2.fill(
            "p",
            "empty",
            &unversioned(b"v"),
            Compression::None,
            now_ms(),
            unknown
        )
        .await
        .unwrap(),
        FillOutcome::Stored
    );
    assert_eq!(
        l2.fill(
            "p",
            "empty",
            &unversioned(b"w"),
            Compression::None,
            now_ms(),
            unknown
        )
        .await
        .unwrap(),
        FillOutcome::Superseded
    );
}

#[tokio::test]
async fn the_tombstone_expires_after_its_hold_off() {
    let l2 = l2("hold_off").await;
    let (_, started) = l2.lookup("p", "k").await.unwrap();
    l2.invalidate("p", "k", None, Duration::from_millis(150), now_ms())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        l2.get("p", "k").await.unwrap(),
        None,
        "the tombstone outlived its hold-off"
    );
    // With the tombstone gone, even the old load could fill; the hold-off bounds how long loads are fenced.
    let fence = Fence {
        started_at: Some(started),
        lease: None,
    };
    assert_eq!(
        l2.fill(
            "p",
            "k",
            &unversioned(b"v"),
            Compression::None,
            now_ms(),
            fence
        )
        .await
        .unwrap(),
        FillOutcome::Stored
    );
}

/// The lease of `p/k` for `ttl`, if nobody holds it (no grant interval).
async fn take_lease(l2: &RedisL2, ttl: Duration) -> Option<LeaseToken> {
    match l2.lease("p", "k", ttl, Duration::ZERO).await.unwrap() {
        LeaseGrant::Granted(token) => Some(token),
        LeaseGrant::Held | LeaseGrant::RateLimited => None,
    }
}

#[tokio::test]
async fn one_lease_per_key_released_by_the_fill_voided_by_invalidate() {
    let node_a = l2("lease").await;
    let ttl = Duration::from_secs(5);
    let lease = take_lease(&node_a, ttl).await.expect("first lease");
    assert!(take_lease(&node_a, ttl).await.is_none(), "a second holder");
    let (_, started) = node_a.lookup("p", "k").await.unwrap();
    let fence = Fence {
        started_at: Some(started),
        lease: Some(&lease),
    };
    assert_eq!(
        node_a
            .fill(
                "p",
                "k",
                &unversioned(b"v"),
                Compression::None,
                now_ms(),
                fence
            )
            .await
            .unwrap(),
        FillOutcome::Stored
    );
    // The fill released the lease.
    let lease2 = take_lease(&node_a, ttl)
        .await
        .expect("lease after the fill");
    node_a
        .invalidate("p", "k", None, HOLD, now_ms())
        .await
        .unwrap();
    let fence = Fence {
        started_at: Some(now_ms() + 60_000),
        lease: Some(&lease2),
    };
    assert_eq!(
        node_a
            .fill(
                "p",
                "k",
                &unversioned(b"old"),
                Compression::None,
                now_ms(),
                fence
            )
            .await
            .unwrap(),
        FillOutcome::LeaseLost
    );
}

#[tokio::test]
async fn a_dead_holders_lease_expires_and_the_next_reader_takes_over() {
    let l2 = l2("dead_holder").await;
    let _dead = take_lease(&l2, Duration::from_millis(100))
        .await
        .expect("lease");
    assert!(take_lease(&l2, Duration::from_millis(100)).await.is_none());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        take_lease(&l2, Duration::from_secs(5)).await.is_some(),
        "expired lease not taken over"
    );
}

#[tokio::test]
async fn lease_grants_are_rate_limited_per_key_and_release_checks_the_token() {
    let l2 = l2("lease_rate").await;
    let interval = Duration::from_millis(300);
    let ttl = Duration::from_secs(5);
    let LeaseGrant::Granted(first) = l2.lease("p", "k", ttl, interval).await.unwrap() else {
        panic!("the first lease must be granted");
    };
    assert_eq!(
        l2.lease("p", "k", ttl, interval).await.unwrap(),
        LeaseGrant::Held
    );
    // A foreign token does not release it; the holder's does.
    let LeaseGrant::Granted(other) = l2.lease("p", "other", ttl, interval).await.unwrap() else {
        panic!("another key has its own lease");
    };
    l2.release("p", "k", &other).await.unwrap();
    assert_eq!(
        l2.lease("p", "k", ttl, interval).await.unwrap(),
        LeaseGrant::Held
    );
    l2.release("p", "k", &first).await.unwrap();
    // Released, but a lease was granted less than `interval` ago.
    assert_eq!(
        l2.lease("p", "k", ttl, interval).await.unwrap(),
        LeaseGrant::RateLimited
    );
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    assert!(matches!(
        l2.lease("p", "k", ttl, interval).await.unwrap(),
        LeaseGrant::Granted(_)
    ));
}

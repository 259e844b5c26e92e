//! Write-behind acknowledges only what the source will accept, and what it still refuses later is parked, dropped
//! from the caches, and manageable (list, retry, discard).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::{Cache, Error, Status};
use strata_testkit::table::VersionedTable;

use common::{fresh_dir, written_behind, Strict};

fn counters(cache: &Cache, strict: &Arc<Strict>, wb: &WriteBehind) -> strata::Namespace<i64> {
    written_behind(cache.namespace("counter").with_store(strict.clone()), wb)
}

#[tokio::test]
async fn a_value_the_source_must_refuse_is_refused_before_the_ack() {
    let strict = Arc::new(Strict {
        table: VersionedTable::new(),
        failing: AtomicBool::new(false),
    });
    let wb = WriteBehind::open(fresh_dir("dlq-check"), WriteBehindOptions::default()).unwrap();
    let cache = Cache::new();
    let ns = counters(&cache, &strict, &wb);
    let err = ns.write("views", -1).await.unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err}");
    assert!(err.to_string().contains("must be ≥ 0"), "{err}");
    assert_eq!(wb.stats().acked, 0, "a refused value was journaled");
    assert!(
        ns.get("views").is_none(),
        "a refused value reached the cache"
    );
}

#[tokio::test]
async fn a_parked_write_leaves_the_caches_and_can_be_listed_retried_and_discarded() {
    let strict = Arc::new(Strict {
        table: VersionedTable::new(),
        failing: AtomicBool::new(true),
    });
    strict.table.set("views", 1);
    let options = WriteBehindOptions {
        max_attempts: 2,
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(10),
        linger: Duration::from_millis(1),
        ..WriteBehindOptions::default()
    };
    let wb = WriteBehind::open(fresh_dir("dlq-park"), options).unwrap();
    let cache = Cache::new();
    let ns = counters(&cache, &strict, &wb);
    ns.write("views", 7).await.unwrap();
    assert_eq!(ns.fetch("views").await.unwrap().value(), Some(&7));
    assert!(
        wb.drain(Duration::from_secs(5)).await,
        "the write never settled"
    );
    assert_eq!(wb.stats().dead_lettered, 1);
    // The value will never be persisted: from the moment it is a dead letter, the caches serve the source's row
    // again — the first read after the park is a load, not the parked value.
    let got = ns.fetch("views").await.unwrap();
    assert_eq!(got.value(), Some(&1), "the parked value is still served");
    assert_ne!(got.status(), Status::Hit(strata::Tier::L1));
    let letters = wb.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (
            letter.namespace.as_str(),
            letter.key.as_str(),
            letter.value.as_str()
        ),
        ("counter", "views", "7")
    );
    assert!(letter.error.contains("check constraint"), "{letter:?}");

    // Retry: take it out and write it again once the source accepts it.
    strict.failing.store(false, Ordering::SeqCst);
    let taken = wb.take_dead_letter(letter.seq).unwrap().unwrap();
    let value: i64 = serde_json::from_str(&taken.value).unwrap();
    ns.write(&taken.key, value).await.unwrap();
    assert!(wb.drain(Duration::from_secs(5)).await);
    assert_eq!(strict.table.get("views").map(|(v, _)| v), Some(7));
    assert!(wb.dead_letters().unwrap().is_empty());

    // Discard: park another, then drop it for good.
    strict.failing.store(true, Ordering::SeqCst);
    ns.write("likes", 3).await.unwrap();
    assert!(wb.drain(Duration::from_secs(5)).await);
    let seq = wb.dead_letters().unwrap()[0].seq;
    assert!(wb.discard_dead_letter(seq).unwrap());
    assert!(!wb.discard_dead_letter(seq).unwrap());
    assert!(wb.dead_letters().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_sees_the_parked_value_once_the_dead_letter_is_listed() {
    let strict = Arc::new(Strict {
        table: VersionedTable::new(),
        failing: AtomicBool::new(true),
    });
    strict.table.set("views", 1);
    let options = WriteBehindOptions {
        max_attempts: 1,
        linger: Duration::from_millis(1),
        ..WriteBehindOptions::default()
    };
    let wb = WriteBehind::open(fresh_dir("dlq-order"), options).unwrap();
    let cache = Cache::new();
    let ns = counters(&cache, &strict, &wb);
    ns.write("views", 7).await.unwrap();
    // Watch as closely as a reader can: the instant the letter is listed, the cached value must be gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while wb.stats().dead_lettered == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::task::yield_now().await;
    }
    assert!(
        ns.get("views").is_none_or(|l| l.value() != Some(&7)),
        "the dead letter was listed while L1 still served the parked value"
    );
    assert_eq!(ns.fetch("views").await.unwrap().value(), Some(&1));
}

use super::*;
use crate::batching::BatchError;
use sluice_runtime::CallError;
use sluice_types::Dtype;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

fn tensor(data: Vec<u8>) -> Tensor {
    Tensor {
        name: "y".into(),
        dtype: Dtype::Uint8,
        shape: vec![data.len() as u32],
        data,
    }
}

fn key(n: u8) -> CacheKey {
    CacheKey {
        model: "m".into(),
        version: "1".into(),
        input: [n; 16],
    }
}

#[test]
fn the_digest_tells_shapes_and_names_apart() {
    let flat = tensor(vec![1, 2, 3, 4]);
    let mut square = flat.clone();
    square.shape = vec![2, 2];
    let mut renamed = flat.clone();
    renamed.name = "z".into();
    let digests = [&flat, &square, &renamed].map(|t| digest_inputs(std::slice::from_ref(t)));
    assert_ne!(digests[0], digests[1]);
    assert_ne!(digests[0], digests[2]);
    assert_eq!(digests[0], digest_inputs(std::slice::from_ref(&flat)));
}

#[test]
fn least_recently_used_entries_go_first_when_over_budget() {
    let one_entry = entry_bytes(&[tensor(vec![0; 100])]);
    let cache = PredictionCache::new(2 * one_entry);
    cache.insert(key(1), Arc::new(vec![tensor(vec![1; 100])]));
    cache.insert(key(2), Arc::new(vec![tensor(vec![2; 100])]));
    assert!(
        cache.get(&key(1)).is_some(),
        "touch 1 so that 2 is the oldest"
    );
    cache.insert(key(3), Arc::new(vec![tensor(vec![3; 100])]));
    assert!(cache.get(&key(2)).is_none(), "2 was least recently used");
    assert!(cache.get(&key(1)).is_some());
    assert!(cache.get(&key(3)).is_some());
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bytes), (2, 2 * one_entry));
    // Larger than the whole budget: not stored, nothing evicted.
    cache.insert(key(4), Arc::new(vec![tensor(vec![4; 10_000])]));
    assert!(cache.get(&key(4)).is_none());
    assert_eq!(cache.stats().entries, 2);
}

#[tokio::test]
async fn a_hit_does_not_compute_and_bypass_does() {
    let cache = PredictionCache::new(1 << 20);
    let runs = AtomicUsize::new(0);
    let compute = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(vec![tensor(vec![7])])
    };
    assert_eq!(
        cache.get_or_compute(key(1), false, compute).await.1,
        Lookup::Miss
    );
    assert_eq!(
        cache.get_or_compute(key(1), false, compute).await.1,
        Lookup::Hit
    );
    assert_eq!(
        cache.get_or_compute(key(1), true, compute).await.1,
        Lookup::Miss
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_in_flight_run_once() {
    let cache = Arc::new(PredictionCache::new(1 << 20));
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (cache, runs, release) = (cache.clone(), runs.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute(key(1), false, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok(vec![tensor(vec![9])])
                    })
                    .await
            })
        })
        .collect();
    // Wait until the leader runs and every other caller is parked on it.
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    release.notify_one();
    let mut lookups = Vec::new();
    for call in calls {
        let (result, lookup) = call.await.unwrap();
        assert_eq!(result.unwrap()[0].data, vec![9]);
        lookups.push(lookup);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "computed once");
    assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
    // The others waited on the leader (or, if scheduled after it finished, hit the cache).
    assert!(lookups.contains(&Lookup::Coalesced));
}

#[tokio::test]
async fn failures_reach_the_waiters_and_are_not_cached() {
    let cache = PredictionCache::new(1 << 20);
    let failing = || async {
        Err(RegistryError::Call {
            model: "m".into(),
            error: BatchError::Call(CallError::Trapped("boom".into())),
        })
    };
    let (result, _) = cache.get_or_compute(key(1), false, failing).await;
    assert!(result.unwrap_err().to_string().contains("boom"));
    assert_eq!(cache.stats().entries, 0);
    let (result, lookup) = cache
        .get_or_compute(key(1), false, || async { Ok(vec![tensor(vec![1])]) })
        .await;
    assert!(result.is_ok());
    assert_eq!(lookup, Lookup::Miss, "the failure was not remembered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let cache = Arc::new(PredictionCache::new(1 << 20));
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(1), false, std::future::pending)
                .await
        })
    };
    while cache.lock().in_flight.is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let follower = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(1), false, || async { Ok(vec![tensor(vec![5])]) })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    let (result, lookup) = follower.await.unwrap();
    assert_eq!(result.unwrap()[0].data, vec![5]);
    assert_eq!(lookup, Lookup::Miss, "the follower became the leader");
    assert!(cache.lock().in_flight.is_empty());
}

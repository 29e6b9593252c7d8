//! A bounded cache of review answers with single flight, as the API server caches its
//! own webhook token reviews: a wave of calls with one token (an ESO reconcile of many
//! ExternalSecrets in one namespace, all with the namespace's token) costs one
//! TokenReview, not one per call.
//!
//! Keys are SHA-256 digests (of the token, or of a review's attributes), never the
//! token. Each entry lives for the time its writer gives it, which the caller bounds by
//! the token's `exp`. One review per key at a time: later arrivals wait for the first
//! and take its answer; if the first is dropped (its caller hung up), the next goes
//! ahead.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A digest that names a review.
pub type Key = [u8; 32];

/// Review answers by key.
pub struct Reviews<V> {
    capacity: usize,
    entries: Mutex<Entries<V>>,
    flights: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

struct Entries<V> {
    by_key: HashMap<Key, (V, Instant)>,
    /// Insertion order, for evicting the oldest when full.
    order: VecDeque<Key>,
}

impl<V: Clone> Reviews<V> {
    /// A cache of at most `capacity` answers.
    pub fn new(capacity: usize) -> Self {
        Reviews {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                order: VecDeque::new(),
            }),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`: cached, else from `review` (which returns the answer and
    /// how long it may be reused; zero: not at all). `true` with it when it was cached.
    pub async fn get_or_review<F, Fut>(&self, key: Key, review: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (V, Duration)>,
    {
        if let Some(answer) = self.lookup(&key) {
            return (answer, true);
        }
        let flight = self
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let _turn = flight.lock().await;
        if let Some(answer) = self.lookup(&key) {
            return (answer, true);
        }
        let (answer, ttl) = review().await;
        if !ttl.is_zero() {
            self.store(key, answer.clone(), ttl);
        }
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        (answer, false)
    }

    fn lookup(&self, key: &Key) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (answer, until) = entries.by_key.get(key)?;
        (Instant::now() < *until).then(|| answer.clone())
    }

    fn store(&self, key: Key, answer: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.by_key.len() >= self.capacity {
            entries.by_key.retain(|_, (_, until)| *until > now);
        }
        while entries.by_key.len() >= self.capacity {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.by_key.remove(&oldest);
        }
        if entries.by_key.insert(key, (answer, now + ttl)).is_none() {
            entries.order.push_back(key);
        }
        // Keys evicted by expiry stay in `order` until popped; keep it bounded too.
        if entries.order.len() > 2 * self.capacity {
            let live: std::collections::HashSet<Key> = entries.by_key.keys().copied().collect();
            entries.order.retain(|k| live.contains(k));
        }
    }

    /// How many answers are cached (for metrics and tests).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }
}

/// The digest of `parts`, each length-prefixed so that no two lists share one.
pub fn key(parts: &[&[u8]]) -> Key {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_wave_of_one_key_reviews_once() {
        let reviews = Arc::new(Reviews::<u32>::new(8));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (reviews, calls) = (reviews.clone(), calls.clone());
            set.spawn(async move {
                reviews
                    .get_or_review(key(&[b"token"]), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        (7, Duration::from_secs(60))
                    })
                    .await
                    .0
            });
        }
        let answers = set.join_all().await;
        assert_eq!(answers, vec![7; 20]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn entries_expire_are_bounded_and_zero_ttl_is_not_kept() {
        let reviews = Reviews::<u32>::new(2);
        let review = |v: u32, ttl: u64| move || async move { (v, Duration::from_millis(ttl)) };
        assert_eq!(
            reviews.get_or_review(key(&[b"a"]), review(1, 0)).await,
            (1, false)
        );
        assert_eq!(
            reviews.get_or_review(key(&[b"a"]), review(2, 30)).await,
            (2, false)
        );
        assert_eq!(
            reviews.get_or_review(key(&[b"a"]), review(3, 30)).await,
            (2, true)
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            reviews.get_or_review(key(&[b"a"]), review(4, 60_000)).await,
            (4, false)
        );
        for k in [b"b", b"c", b"d"] {
            reviews.get_or_review(key(&[k]), review(5, 60_000)).await;
        }
        assert_eq!(reviews.len(), 2, "bounded");
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }
}

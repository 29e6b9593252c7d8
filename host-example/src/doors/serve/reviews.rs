//! A bounded cache of review answers with single flight, as the API server caches its
//! own webhook token reviews: a wave of calls with one token (an ESO reconcile of many
//! ExternalSecrets in one namespace, all with the namespace's token) costs one
//! TokenReview, not one per call.
//!
//! Keys are SHA-256 digests (of the token, or of a review's attributes), never the
//! token. Each entry lives for the time its writer gives it, which the caller bounds by
//! the token's `exp`. Answers that let a caller in and refusals are kept apart, each
//! with its own bound: a flood of refused tokens evicts only refusals, never the
//! answers of callers who were let in.
//!
//! One review per key at a time: later arrivals wait for the first and take its answer;
//! if the first is dropped (its caller hung up), the next goes ahead. A key's flight
//! lives exactly as long as someone is reviewing or waiting for it: the last to leave,
//! answered or dropped, removes it, so callers that hang up mid-review leave nothing
//! behind ([`Reviews::in_flight`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A digest that names a review.
pub type Key = [u8; 32];

/// Which store an answer is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// An answer that lets the caller in.
    Allowed,
    /// A refusal.
    Refused,
}

/// How long an answer may be reused (zero: not at all), and in which store.
pub type Reuse = (Duration, Kept);

type Flights = Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>;

/// Review answers by key.
pub struct Reviews<V> {
    capacity: usize,
    allowed: Mutex<Entries<V>>,
    refused: Mutex<Entries<V>>,
    flights: Flights,
}

struct Entries<V> {
    by_key: HashMap<Key, (V, Instant)>,
    /// Insertion order, for evicting the oldest when full.
    order: VecDeque<Key>,
}

impl<V> Entries<V> {
    fn new() -> Self {
        Entries {
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V: Clone> Reviews<V> {
    /// A cache of at most `capacity` answers of each kind.
    pub fn new(capacity: usize) -> Self {
        Reviews {
            capacity: capacity.max(1),
            allowed: Mutex::new(Entries::new()),
            refused: Mutex::new(Entries::new()),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`: cached, else from `review` (which returns the answer and
    /// how long, and as what, it may be reused). `true` with it when it was cached.
    pub async fn get_or_review<F, Fut>(&self, key: Key, review: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (V, Reuse)>,
    {
        if let Some(answer) = self.lookup(&key) {
            return (answer, true);
        }
        // Declared before the turn, so dropped after it (locals drop in reverse order,
        // and a cancelled future drops them the same way).
        let seat = Seat::take(&self.flights, key);
        let _turn = seat.flight.clone().lock_owned().await;
        if let Some(answer) = self.lookup(&key) {
            return (answer, true);
        }
        let (answer, (ttl, kept)) = review().await;
        if !ttl.is_zero() {
            self.store(key, answer.clone(), ttl, kept);
        }
        (answer, false)
    }

    /// A cached answer for `key`, of either kind.
    pub fn lookup(&self, key: &Key) -> Option<V> {
        let now = Instant::now();
        for entries in [&self.allowed, &self.refused] {
            let entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((answer, until)) = entries.by_key.get(key) {
                if now < *until {
                    return Some(answer.clone());
                }
            }
        }
        None
    }

    fn store(&self, key: Key, answer: V, ttl: Duration, kept: Kept) {
        let store = match kept {
            Kept::Allowed => &self.allowed,
            Kept::Refused => &self.refused,
        };
        let mut entries = store.lock().unwrap_or_else(|p| p.into_inner());
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
        [&self.allowed, &self.refused]
            .iter()
            .map(|e| e.lock().unwrap_or_else(|p| p.into_inner()).by_key.len())
            .sum()
    }

    /// How many keys have a review under way or callers waiting for one (for metrics
    /// and tests): zero whenever no caller is in a review, hung up or not.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One caller's place in a key's flight; the last to leave removes the flight.
struct Seat<'a> {
    flights: &'a Flights,
    key: Key,
    flight: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Seat<'a> {
    fn take(flights: &'a Flights, key: Key) -> Self {
        let flight = flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        Seat { flights, key, flight }
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        // Under the map's lock, where every seat is taken: the map's own handle and this
        // seat's are the last two when no one else reviews or waits (a waiter's turn
        // holds a handle of its own until it is dropped, before its seat).
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight) && Arc::strong_count(f) == 2)
        {
            flights.remove(&self.key);
        }
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

    const KEEP: Reuse = (Duration::from_secs(60), Kept::Allowed);

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
                        (7, KEEP)
                    })
                    .await
                    .0
            });
        }
        let answers = set.join_all().await;
        assert_eq!(answers, vec![7; 20]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(reviews.in_flight(), 0);
    }

    #[tokio::test]
    async fn entries_expire_are_bounded_and_zero_ttl_is_not_kept() {
        let reviews = Reviews::<u32>::new(2);
        let review =
            |v: u32, ttl: u64| move || async move { (v, (Duration::from_millis(ttl), Kept::Allowed)) };
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

    /// Refusals evict refusals only: a flood of bad tokens leaves the answers of the
    /// callers who were let in where they were.
    #[tokio::test]
    async fn refusals_never_evict_allowed_answers() {
        let reviews = Reviews::<u32>::new(4);
        for k in 0..4u32 {
            reviews
                .get_or_review(key(&[&k.to_le_bytes()]), || async { (1, KEEP) })
                .await;
        }
        for k in 100..10_000u32 {
            let refused = (Duration::from_secs(60), Kept::Refused);
            reviews
                .get_or_review(key(&[&k.to_le_bytes()]), || async move { (0, refused) })
                .await;
        }
        for k in 0..4u32 {
            let (answer, cached) = reviews
                .get_or_review(key(&[&k.to_le_bytes()]), || async { (9, KEEP) })
                .await;
            assert_eq!((answer, cached), (1, true), "key {k}");
        }
        assert_eq!(reviews.len(), 8);
    }

    /// Leaders that hang up mid-review (their future dropped) leave no flight behind,
    /// and a caller waiting behind one takes over.
    #[tokio::test]
    async fn flights_of_callers_that_hang_up_are_removed() {
        let reviews = Arc::new(Reviews::<u32>::new(16));
        let mut set = tokio::task::JoinSet::new();
        for n in 0..10_000u32 {
            let reviews = reviews.clone();
            set.spawn(async move {
                reviews
                    .get_or_review(key(&[&n.to_le_bytes()]), std::future::pending)
                    .await
            });
        }
        // Every leader is in its review (the only await left) once the map holds them all.
        while reviews.in_flight() < 10_000 {
            tokio::task::yield_now().await;
        }
        set.abort_all();
        while set.join_next().await.is_some() {}
        assert_eq!(reviews.in_flight(), 0, "every flight went with its caller");

        // A leader dropped while others wait: the next takes over and answers them all.
        let k = key(&[b"shared"]);
        let leader = {
            let reviews = reviews.clone();
            tokio::spawn(async move { reviews.get_or_review(k, std::future::pending).await })
        };
        while reviews.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let reviews = reviews.clone();
                tokio::spawn(async move { reviews.get_or_review(k, || async { (5, KEEP) }).await })
            })
            .collect();
        tokio::task::yield_now().await;
        leader.abort();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().0, 5);
        }
        assert_eq!(reviews.in_flight(), 0);
    }
}

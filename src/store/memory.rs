//! The in-memory store: GCRA (the generic cell rate algorithm, as in ATM networks and
//! `governor`) per key. One instant per key, the key's "theoretical arrival time"; a request
//! passes when that time is at most `burst` intervals ahead of now, and pushes it one interval
//! further.
//!
//! Memory is bounded however many distinct keys arrive. Keys are kept by a 64-bit keyed hash,
//! with their time as nanoseconds (16 bytes a key), in [`SHARDS`] maps. A key whose time has
//! passed is idle (indistinguishable from a new one): a shard drops its idle keys when it has
//! doubled since its last sweep, so a sweep's cost is paid for by the keys that grew it
//! (amortised O(1) a request, never a full scan per request). A shard holds at most
//! [`SHARD_CAP`] keys (some 18 MB for the whole store): when it is full of busy keys, it
//! forgets the half closest to idle, which then start again with a full allowance.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::{Decision, Rate};

const SHARDS: usize = 16;
/// Keys per shard at most: 7/8 of 65,536, exactly what a table of 65,536 buckets holds, so a
/// full shard is about 1.1 MB. 917,504 keys in all.
const SHARD_CAP: usize = 65_536 / 8 * 7;
/// A shard sweeps no more often than every this many new keys.
const MIN_SWEEP: usize = 1024;

struct Shard {
    /// Key hash -> theoretical arrival time, in nanoseconds after [`MemoryStore::epoch`].
    keys: HashMap<u64, u64>,
    /// The size at which a new key makes this shard sweep.
    sweep_at: usize,
}

impl Shard {
    /// Drops the idle keys; if busy ones still fill half the shard, the half closest to idle.
    fn sweep(&mut self, now: u64) {
        self.keys.retain(|_, tat| *tat > now);
        if self.keys.len() >= SHARD_CAP / 2 {
            let mut tats: Vec<u64> = self.keys.values().copied().collect();
            let mid = tats.len() / 2;
            let (_, cut, _) = tats.select_nth_unstable(mid);
            let cut = *cut;
            self.keys.retain(|_, tat| *tat > cut);
        }
        self.sweep_at = (2 * self.keys.len()).clamp(MIN_SWEEP, SHARD_CAP);
    }
}

pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    /// Times are kept as nanoseconds after this.
    epoch: Instant,
    created: SystemTime,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        keys: HashMap::new(),
                        sweep_at: MIN_SWEEP,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            created: SystemTime::now(),
        }
    }
}

impl MemoryStore {
    pub fn rate_limit(&self, key: &[u8], rate: Rate, now: Instant) -> Decision {
        let h = self.hasher.hash_one(key);
        let shard = &self.shards[(h as usize) % SHARDS];
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let now = nanos(now.saturating_duration_since(self.epoch));
        let t = nanos(rate.interval()).max(1);
        let tolerance = t.saturating_mul(u64::from(rate.burst));
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.keys.len() >= shard.sweep_at && !shard.keys.contains_key(&h) {
            shard.sweep(now);
        }
        let tat = shard.keys.get(&h).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            // Refused: it would pass once `tat - tolerance` is reached.
            return Decision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(ahead),
                retry_after: Duration::from_nanos(ahead - tolerance),
            };
        }
        let new_tat = tat.saturating_add(t);
        shard.keys.insert(h, new_tat);
        let used = new_tat - now;
        let left = tolerance.saturating_add(t).saturating_sub(used);
        Decision {
            allowed: true,
            remaining: u32::try_from(left / t).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(used),
            retry_after: Duration::ZERO,
        }
    }

    /// Keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.keys.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys the maps have room for without growing: what their memory is sized by.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.keys.capacity()).unwrap_or(0))
            .sum()
    }

    /// When this store was made (the memory store is always up).
    pub fn created(&self) -> SystemTime {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: u32, burst: u32) -> Rate {
        Rate {
            limit,
            period: Duration::from_secs(1),
            burst,
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let s = MemoryStore::default();
        let t0 = Instant::now();
        let r = rate(10, 4);
        // 1 + burst pass at once.
        let passed = (0..10)
            .filter(|_| s.rate_limit(b"k", r, t0).allowed)
            .count();
        assert_eq!(passed, 5);
        let d = s.rate_limit(b"k", r, t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        // One interval later, one more.
        assert!(
            s.rate_limit(b"k", r, t0 + Duration::from_millis(100))
                .allowed
        );
        assert!(
            !s.rate_limit(b"k", r, t0 + Duration::from_millis(100))
                .allowed
        );
        // Another key is not affected.
        assert!(s.rate_limit(b"other", r, t0).allowed);
    }

    #[test]
    fn remaining_counts_down() {
        let s = MemoryStore::default();
        let t0 = Instant::now();
        let r = rate(100, 2);
        let rem: Vec<u32> = (0..3)
            .map(|_| s.rate_limit(b"k", r, t0).remaining)
            .collect();
        assert_eq!(rem, [2, 1, 0]);
    }

    /// A million distinct keys, each idle a second after it came, arriving 10,000 a second:
    /// the idle ones are swept as new ones come, so the store holds about the keys of the last
    /// second or two, never the million.
    #[test]
    fn a_million_keys_that_go_idle_stay_bounded() {
        let s = MemoryStore::default();
        let t0 = Instant::now();
        let r = rate(1, 0);
        let mut most = 0;
        for i in 0u32..1_000_000 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            assert!(s.rate_limit(&i.to_le_bytes(), r, now).allowed);
            if i % 10_000 == 0 {
                most = most.max(s.len());
            }
        }
        // 10,000 keys are busy at any time; each shard sweeps at twice what it kept.
        assert!(most <= 3 * 10_000 + SHARDS * MIN_SWEEP, "{most} keys held");
        assert!(s.capacity() <= 2 * (3 * 10_000 + SHARDS * MIN_SWEEP));
        // Long after, the old keys are all idle: the next new keys sweep them away.
        let later = t0 + Duration::from_secs(1000);
        for i in 0u32..(SHARDS * MIN_SWEEP * 2) as u32 {
            s.rate_limit(&(u32::MAX - i).to_le_bytes(), r, later);
        }
        assert!(s.len() <= SHARDS * MIN_SWEEP * 2, "{} keys held", s.len());
        // A key that went idle starts again with a full allowance.
        assert!(s.rate_limit(&7u32.to_le_bytes(), r, later).allowed);
    }

    /// A million distinct keys that all stay busy (one an hour): a shard never holds more
    /// than its cap, and it forgets the keys closest to idle first.
    #[test]
    fn a_million_busy_keys_never_pass_the_cap() {
        let s = MemoryStore::default();
        let t0 = Instant::now();
        let r = Rate {
            limit: 1,
            period: Duration::from_secs(3600),
            burst: 0,
        };
        for i in 0u32..1_000_000 {
            let now = t0 + Duration::from_micros(u64::from(i));
            assert!(s.rate_limit(&i.to_le_bytes(), r, now).allowed);
            if i % 50_000 == 0 {
                assert!(s.len() <= SHARDS * SHARD_CAP, "{} keys held", s.len());
            }
        }
        assert!(s.len() <= SHARDS * SHARD_CAP, "{} keys held", s.len());
        assert!(
            s.capacity() <= SHARDS * SHARD_CAP,
            "room for {}",
            s.capacity()
        );
        // The newest keys are still counted; the oldest were forgotten.
        let now = t0 + Duration::from_secs(1);
        assert!(!s.rate_limit(&999_999u32.to_le_bytes(), r, now).allowed);
        assert!(s.rate_limit(&0u32.to_le_bytes(), r, now).allowed);
    }
}

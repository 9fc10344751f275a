//! The in-memory store: GCRA (the generic cell rate algorithm, as in ATM networks and
//! `governor`) per key. One instant per key, the key's "theoretical arrival time"; a request
//! passes when that time is at most `burst` intervals ahead of now, and pushes it one interval
//! further. Keys are kept by a 64-bit keyed hash in sharded maps; a key whose time has passed is
//! idle (indistinguishable from a new one) and is dropped when its shard grows, so memory stays
//! bounded however many distinct keys arrive.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Decision, Rate};

const SHARDS: usize = 16;
/// Keys per shard before idle ones are swept; at twice this, the oldest are dropped.
#[cfg(not(test))]
const SHARD_SWEEP_AT: usize = 64 * 1024;
/// Small in tests, so a million keys show the bound.
#[cfg(test)]
const SHARD_SWEEP_AT: usize = 1024;

pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<u64, Instant>>>,
    hasher: RandomState,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl MemoryStore {
    pub fn rate_limit(&self, key: &[u8], rate: Rate, now: Instant) -> Decision {
        let h = self.hasher.hash_one(key);
        let shard = &self.shards[(h as usize) % SHARDS];
        let t = rate.interval();
        let tolerance = t * rate.burst;
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SHARD_SWEEP_AT && !map.contains_key(&h) {
            map.retain(|_, tat| *tat > now);
            if map.len() >= 2 * SHARD_SWEEP_AT {
                // Every key busy: forget the ones closest to idle.
                let mut tats: Vec<Instant> = map.values().copied().collect();
                tats.sort_unstable();
                let cut = tats[tats.len() / 2];
                map.retain(|_, tat| *tat > cut);
            }
        }
        let tat = map.get(&h).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            // Refused: it would pass once `tat - tolerance` is reached.
            return Decision {
                allowed: false,
                remaining: 0,
                reset: ahead,
                retry_after: ahead - tolerance,
            };
        }
        let new_tat = tat + t;
        map.insert(h, new_tat);
        let used = new_tat - now;
        let left = (tolerance + t).saturating_sub(used);
        Decision {
            allowed: true,
            remaining: (left.as_nanos() / t.as_nanos().max(1)) as u32,
            reset: used,
            retry_after: Duration::ZERO,
        }
    }

    /// Keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn a_million_keys_stay_bounded() {
        let s = MemoryStore::default();
        let t0 = Instant::now();
        let r = rate(1, 0);
        for i in 0u32..1_000_000 {
            // Each key idles after one second; the clock moves on as keys arrive (10,000 new
            // keys a second).
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            s.rate_limit(&i.to_le_bytes(), r, now);
        }
        assert!(
            s.len() <= SHARDS * 2 * SHARD_SWEEP_AT,
            "{} keys held",
            s.len()
        );
    }
}

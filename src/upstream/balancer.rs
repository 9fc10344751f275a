//! Picking a target for one request. Called by `Upstream::select` with a filter of the targets
//! that may take it (weight above 0, not ejected, not already tried by this request).
//!
//! - `round_robin`: smooth weighted round robin (nginx's): over any sum(weights) picks each
//!   target gets exactly its weight, spread out, not bunched.
//! - `random`: weighted random.
//! - `least_request`: power of two choices: two weighted-random candidates, the one with fewer
//!   requests in flight per unit of weight wins.
//! - `ewma`: power of two choices on peak-EWMA latency × (in flight + 1) / weight, as Linkerd
//!   and Finagle do: a target that turns slow loses traffic within a few requests.
//! - `hash`: a consistent-hash ring (100 virtual nodes per unit of weight) on a request key, so
//!   adding or removing one of N targets moves only about 1/N of the keys.
//!
//! No lock is held across an await; the round-robin lock is held for a few nanoseconds.

use std::sync::Mutex;

use super::Target;

/// A request key for `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

pub enum Balancer {
    /// Shared with the same upstream in later configs while its targets and weights stay.
    RoundRobin(std::sync::Arc<SmoothWeighted>),
    Random,
    LeastRequest,
    Ewma,
    Hash {
        ring: Ring,
        on: HashOn,
    },
}

impl Balancer {
    pub fn name(&self) -> &'static str {
        match self {
            Balancer::RoundRobin(_) => "round_robin",
            Balancer::Random => "random",
            Balancer::LeastRequest => "least_request",
            Balancer::Ewma => "ewma",
            Balancer::Hash { .. } => "hash",
        }
    }

    /// The index of the target for this request among those `ok` allows. `key` is the hash
    /// key for `hash` (a request without one is placed at random).
    pub fn pick(
        &self,
        targets: &[Target],
        ok: &dyn Fn(usize) -> bool,
        key: Option<u64>,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.next(targets, ok),
            Balancer::Random => weighted_random(targets, ok, None),
            // Candidates are drawn by weight and ties go to the first, so idle targets share
            // traffic by weight; under load the one with fewer requests per unit of weight wins.
            Balancer::LeastRequest => p2c(targets, ok, |t| {
                t.live.in_flight() as f64 / t.effective_weight() as f64
            }),
            Balancer::Ewma => {
                let now = std::time::Instant::now();
                // A target not measured yet is assumed as fast as the average of the others:
                // neither flooded nor starved until its first answers come back.
                let measured: Vec<f64> = targets.iter().filter_map(|t| t.live.ewma(now)).collect();
                let default = if measured.is_empty() {
                    0.0
                } else {
                    measured.iter().sum::<f64>() / measured.len() as f64
                };
                p2c(targets, ok, |t| {
                    let latency = t.live.ewma(now).unwrap_or(default);
                    (latency + 1e-6) * (t.live.in_flight() as f64 + 1.0)
                        / t.effective_weight() as f64
                })
            }
            Balancer::Hash { ring, .. } => match key {
                Some(k) => ring.lookup(k, ok),
                None => weighted_random(targets, ok, None),
            },
        }
    }
}

fn weighted_random(
    targets: &[Target],
    ok: &dyn Fn(usize) -> bool,
    not: Option<usize>,
) -> Option<usize> {
    let allowed = |i: usize| ok(i) && Some(i) != not && targets[i].weight > 0;
    let total: u64 = (0..targets.len())
        .filter(|&i| allowed(i))
        .map(|i| targets[i].effective_weight())
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    let mut last = None;
    for i in (0..targets.len()).filter(|&i| allowed(i)) {
        let w = targets[i].effective_weight();
        if r < w {
            return Some(i);
        }
        r -= w;
        last = Some(i);
    }
    // A slow-start weight can grow between the two passes: the last candidate takes the rest.
    last
}

/// Power of two choices: the cheaper of two distinct weighted-random candidates.
fn p2c(
    targets: &[Target],
    ok: &dyn Fn(usize) -> bool,
    cost: impl Fn(&Target) -> f64,
) -> Option<usize> {
    let a = weighted_random(targets, ok, None)?;
    let Some(b) = weighted_random(targets, ok, Some(a)) else {
        return Some(a);
    };
    if cost(&targets[b]) < cost(&targets[a]) {
        Some(b)
    } else {
        Some(a)
    }
}

/// Smooth weighted round robin over the targets `ok` allows at each pick.
pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
    /// The targets (address, weight) this rotation is for: a config with the same keeps it.
    key: Vec<(String, u32)>,
}

impl SmoothWeighted {
    pub fn new(key: Vec<(String, u32)>) -> Self {
        SmoothWeighted {
            current: Mutex::new(vec![0; key.len()]),
            key,
        }
    }

    pub fn key(&self) -> &[(String, u32)] {
        &self.key
    }

    fn next(&self, targets: &[Target], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, t) in targets.iter().enumerate() {
            if t.weight == 0 || !ok(i) {
                continue;
            }
            let w = i64::try_from(t.effective_weight()).unwrap_or(i64::MAX);
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cur[b] -= total;
        Some(b)
    }
}

/// A consistent-hash ring: points sorted by hash, each owned by a target.
pub struct Ring {
    points: Vec<(u64, u32)>,
}

/// Virtual nodes per unit of weight: enough for an even spread over a few dozen targets.
const VNODES: u32 = 100;

impl Ring {
    pub fn new(targets: &[(String, u32)]) -> Ring {
        let mut points = Vec::new();
        for (i, (name, weight)) in targets.iter().enumerate() {
            for v in 0..weight.saturating_mul(VNODES).min(100_000) {
                points.push((hash_bytes(format!("{name}#{v}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first target clockwise from `key` that `ok` allows.
    fn lookup(&self, key: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < key);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| ok(i))
    }
}

/// A stable 64-bit hash (FNV-1a with a final mix), the same in every build and process.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: spreads FNV's weak low bits over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(n: usize) -> (Ring, Vec<String>) {
        let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        let with_w: Vec<(String, u32)> = names.iter().map(|n| (n.clone(), 1)).collect();
        (Ring::new(&with_w), names)
    }

    #[test]
    fn removing_one_of_ten_remaps_about_a_tenth() {
        let (ten, names) = ring_of(10);
        let nine_names: Vec<(String, u32)> = names[..9].iter().map(|n| (n.clone(), 1)).collect();
        let nine = Ring::new(&nine_names);
        let all = |_: usize| true;
        let keys = 20_000u64;
        let mut moved = 0;
        let mut counts = [0u32; 10];
        for k in 0..keys {
            let h = hash_bytes(format!("user-{k}").as_bytes());
            let a = ten.lookup(h, &all).unwrap();
            counts[a] += 1;
            let b = nine.lookup(h, &all).unwrap();
            if names[a] != nine_names[b].0 {
                moved += 1;
            }
        }
        let frac = moved as f64 / keys as f64;
        assert!((0.07..0.13).contains(&frac), "moved {frac}");
        // Even spread: every target within ±30% of its share.
        for c in counts {
            assert!((1400..2600).contains(&c), "uneven ring: {counts:?}");
        }
    }

    #[test]
    fn skips_targets_not_allowed() {
        let (ring, _) = ring_of(3);
        let h = hash_bytes(b"k");
        let first = ring.lookup(h, &|_| true).unwrap();
        let other = ring.lookup(h, &|i| i != first).unwrap();
        assert_ne!(first, other);
        assert_eq!(ring.lookup(h, &|_| false), None);
    }
}

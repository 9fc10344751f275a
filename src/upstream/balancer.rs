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
        weights: &Weights,
        ok: &dyn Fn(usize) -> bool,
        key: Option<u64>,
    ) -> Option<usize> {
        let draw = Draw {
            targets,
            weights,
            ok,
        };
        match self {
            Balancer::RoundRobin(rr) => rr.next(targets, ok),
            Balancer::Random => draw.weighted_random(None),
            // Candidates are drawn by weight and ties go to the first, so idle targets share
            // traffic by weight; under load the one with fewer requests per unit of weight wins.
            Balancer::LeastRequest => {
                draw.p2c(|t| t.live.in_flight() as f64 / t.effective_weight() as f64)
            }
            Balancer::Ewma => {
                let now = std::time::Instant::now();
                // A target not measured yet is assumed as fast as the average of the others:
                // neither flooded nor starved until its first answers come back. Worked out
                // only when a candidate needs it (a scan of every target).
                let default = std::cell::OnceCell::new();
                let average = || {
                    *default.get_or_init(|| {
                        // At most 8 targets, spread over the list: an estimate, so a large
                        // upstream costs no more than a small one.
                        let step = targets.len().div_ceil(8).max(1);
                        let measured: Vec<f64> = targets
                            .iter()
                            .step_by(step)
                            .filter_map(|t| t.live.ewma(now))
                            .collect();
                        if measured.is_empty() {
                            0.0
                        } else {
                            measured.iter().sum::<f64>() / measured.len() as f64
                        }
                    })
                };
                draw.p2c(|t| {
                    let latency = t.live.ewma(now).unwrap_or_else(average);
                    (latency + 1e-6) * (t.live.in_flight() as f64 + 1.0)
                        / t.effective_weight() as f64
                })
            }
            Balancer::Hash { ring, .. } => match key {
                Some(k) => ring.lookup(k, ok),
                None => draw.weighted_random(None),
            },
        }
    }
}

/// The configured weights' running sums, made once per upstream: a weighted draw is a binary
/// search instead of a pass over every target.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    /// `cum[i]`: the sum of the configured weights (in thousandths) of targets `0..=i`.
    cum: Vec<u64>,
}

impl Weights {
    pub fn new(targets: &[Target]) -> Weights {
        let mut sum = 0u64;
        Weights {
            cum: targets
                .iter()
                .map(|t| {
                    sum += u64::from(t.weight) * 1000;
                    sum
                })
                .collect(),
        }
    }
}

/// Below this many targets, a pass over them is as cheap as anything.
const SCAN_BELOW: usize = 8;
/// The largest sum of weights a round-robin schedule is laid out for.
const SCHEDULE_MAX: u64 = 100_000;
/// Draws tried before falling back to the exact pass (many targets out of the running).
const TRIES: usize = 16;

struct Draw<'a> {
    targets: &'a [Target],
    weights: &'a Weights,
    ok: &'a dyn Fn(usize) -> bool,
}

impl Draw<'_> {
    /// A target drawn by effective weight among those allowed (not `not`).
    ///
    /// With many targets: draw by configured weight (a binary search in the running sums), and
    /// keep the draw with probability effective / configured weight (slow start) if the target
    /// is allowed, else draw again. Each kept draw, and the exact pass that follows
    /// [`TRIES`] refused ones, picks target `i` with probability proportional to its effective
    /// weight among the allowed: the distribution is exactly the pass's.
    fn weighted_random(&self, not: Option<usize>) -> Option<usize> {
        let targets = self.targets;
        let allowed = |i: usize| (self.ok)(i) && Some(i) != not && targets[i].weight > 0;
        let total_static = self.weights.cum.last().copied().unwrap_or(0);
        if targets.len() >= SCAN_BELOW
            && total_static > 0
            && self.weights.cum.len() == targets.len()
        {
            for _ in 0..TRIES {
                let r = fastrand::u64(0..total_static);
                let i = self.weights.cum.partition_point(|c| *c <= r);
                if i >= targets.len() || !allowed(i) {
                    continue;
                }
                let configured = u64::from(targets[i].weight) * 1000;
                let effective = targets[i].effective_weight();
                if effective >= configured || fastrand::u64(0..configured) < effective {
                    return Some(i);
                }
            }
        }
        weighted_random(targets, &allowed)
    }

    /// Power of two choices: the cheaper of two distinct weighted-random candidates.
    fn p2c(&self, cost: impl Fn(&Target) -> f64) -> Option<usize> {
        let a = self.weighted_random(None)?;
        let Some(b) = self.weighted_random(Some(a)) else {
            return Some(a);
        };
        if cost(&self.targets[b]) < cost(&self.targets[a]) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

/// The exact weighted draw: a pass over every target.
fn weighted_random(targets: &[Target], allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
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

/// Smooth weighted round robin over the targets `ok` allows at each pick.
pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
    /// The targets (address, weight) this rotation is for: a config with the same keeps it.
    key: Vec<(String, u32)>,
    /// For a large upstream: the smooth sequence over the configured weights, laid out once
    /// (one full rotation), walked with a counter: a pick costs the same for 1,000 targets as
    /// for 2. Empty below [`SCAN_BELOW`] targets or past [`SCHEDULE_MAX`] total weight.
    schedule: Vec<u32>,
    at: std::sync::atomic::AtomicUsize,
}

impl SmoothWeighted {
    pub fn new(key: Vec<(String, u32)>) -> Self {
        let total: u64 = key.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut schedule = Vec::new();
        if key.len() >= SCAN_BELOW && total > 0 && total <= SCHEDULE_MAX {
            // nginx's smooth weighted round robin, run for one rotation (sum of weights picks).
            let mut cur = vec![0i64; key.len()];
            schedule.reserve(total as usize);
            for _ in 0..total {
                let mut best = 0;
                for (i, (_, w)) in key.iter().enumerate() {
                    cur[i] += i64::from(*w);
                    if cur[i] > cur[best] {
                        best = i;
                    }
                }
                cur[best] -= total as i64;
                schedule.push(best as u32);
            }
        }
        SmoothWeighted {
            current: Mutex::new(vec![0; key.len()]),
            key,
            schedule,
            at: std::sync::atomic::AtomicUsize::new(fastrand::usize(..)),
        }
    }

    pub fn key(&self) -> &[(String, u32)] {
        &self.key
    }

    fn next(&self, targets: &[Target], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if !self.schedule.is_empty() {
            // The laid-out rotation: skip a target that may not take this request, and keep a
            // slow-starting one with probability effective / configured weight; after
            // [`TRIES`] skips, the exact pass below decides.
            for _ in 0..TRIES {
                let n = self.at.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let i = self.schedule[n % self.schedule.len()] as usize;
                let Some(t) = targets.get(i) else { break };
                if t.weight == 0 || !ok(i) {
                    continue;
                }
                let configured = u64::from(t.weight) * 1000;
                let effective = t.effective_weight();
                if effective >= configured || fastrand::u64(0..configured) < effective {
                    return Some(i);
                }
            }
        }
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

    /// An upstream of `weights.len()` targets compiled from a config, with this balancer.
    fn upstream(balance: &str, weights: &[u32]) -> std::sync::Arc<crate::upstream::Upstream> {
        let targets: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{ url: \"http://127.0.0.1:{}\", weight: {w} }}",
                    30_000 + i
                )
            })
            .collect();
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\nupstreams:\n  u:\n    balance: {balance}\n    targets: [{}]\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
            targets.join(", ")
        );
        let cfg = crate::config::parse_str(&yaml, &|_| None).unwrap();
        let rt = crate::compile::compile(&cfg, &Default::default()).unwrap();
        rt.upstreams["u"].clone()
    }

    /// The draws large upstreams use (running sums, a laid-out rotation) keep the shares the
    /// exact passes give: by weight, never to a target that may not take the request.
    #[test]
    fn large_upstreams_keep_their_shares() {
        let weights: Vec<u32> = (0..20).map(|i| 1 + (i % 4)).collect();
        let total: u32 = weights.iter().sum();
        let tried = [3usize];
        for balance in ["random", "least_request", "round_robin"] {
            let u = upstream(balance, &weights);
            let rounds = 100_000;
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..rounds {
                counts[u.select(None, &tried).unwrap()] += 1;
            }
            assert_eq!(counts[3], 0, "{balance}: a tried target was picked");
            let allowed_total = f64::from(total - weights[3]);
            for (i, c) in counts.iter().enumerate() {
                if i == 3 {
                    continue;
                }
                let want = f64::from(weights[i]) / allowed_total * f64::from(rounds);
                let got = f64::from(*c);
                assert!(
                    (got - want).abs() < want * 0.15 + 50.0,
                    "{balance}: target {i} (weight {}) got {c}, want about {want:.0}",
                    weights[i]
                );
            }
        }
        // The rotation is exact: every `total` picks, each target exactly its weight.
        let u = upstream("round_robin", &weights);
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..total * 3 {
            counts[u.select(None, &[]).unwrap()] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            assert_eq!(*c, weights[i] * 3, "target {i}");
        }
    }
}

//! The live state of one target that balancers and health logic read: requests in flight, a
//! peak-EWMA of its latency, and its passive-health (outlier) record. Kept per (upstream,
//! target) beside its metrics, so it survives reloads for targets that remain.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Decay time of the latency EWMA: a sample's weight halves in about 7 s.
const EWMA_TAU: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct TargetLive {
    in_flight: AtomicI64,
    ewma: Mutex<Option<PeakEwma>>,
    passive: Mutex<Passive>,
    active: Mutex<Active>,
    // Read on every pick without a lock; written under the mutexes above.
    /// End of the current ejection, in nanoseconds since [`epoch`] (0 = none).
    ejected_until_ns: AtomicU64,
    down: AtomicBool,
}

/// A fixed point in time for instants stored in atomics.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Active health: healthy until `unhealthy_threshold` failed checks in a row.
#[derive(Default)]
struct Active {
    down: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// When the target last passed back to healthy.
    recovered_at: Option<Instant>,
}

struct PeakEwma {
    /// Seconds.
    value: f64,
    stamp: Instant,
}

#[derive(Default)]
struct Passive {
    consecutive_failures: u32,
    consecutive_successes: u32,
    /// Ejections so far; each one lasts twice as long as the last (capped).
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// When a target is ejected for failing, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassivePolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

impl TargetLive {
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed).max(0)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Feeds a response time into the peak EWMA: a slower sample takes over at once (peak),
    /// faster ones pull it down with a weight that grows with the time since the last one.
    pub fn observe_latency(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_secs_f64();
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        match e.as_mut() {
            None => {
                *e = Some(PeakEwma {
                    value: sample,
                    stamp: now,
                })
            }
            Some(p) => {
                if sample > p.value {
                    p.value = sample;
                } else {
                    let dt = now.saturating_duration_since(p.stamp).as_secs_f64();
                    let w = (-dt / EWMA_TAU.as_secs_f64()).exp();
                    p.value = p.value * w + sample * (1.0 - w);
                }
                p.stamp = now;
            }
        }
    }

    /// The EWMA latency in seconds, decayed towards zero for the time since the last sample
    /// (so a target that was slow once is tried again, and measured, after a quiet while);
    /// `None` before the first response.
    pub fn ewma(&self, now: Instant) -> Option<f64> {
        self.ewma.lock().ok().and_then(|e| {
            e.as_ref().map(|p| {
                let dt = now.saturating_duration_since(p.stamp).as_secs_f64();
                p.value * (-dt / EWMA_TAU.as_secs_f64()).exp()
            })
        })
    }

    /// Records one active check; returns the new state when it changed (true = healthy).
    pub fn record_probe(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            a.fail_streak = 0;
            a.ok_streak = a.ok_streak.saturating_add(1);
            if a.down && a.ok_streak >= healthy_threshold {
                a.down = false;
                self.down.store(false, Ordering::Release);
                a.recovered_at = Some(Instant::now());
                return Some(true);
            }
        } else {
            a.ok_streak = 0;
            a.fail_streak = a.fail_streak.saturating_add(1);
            if !a.down && a.fail_streak >= unhealthy_threshold {
                a.down = true;
                self.down.store(true, Ordering::Release);
                return Some(false);
            }
        }
        None
    }

    /// The share of its weight a recovering target gets: from 10% right after it came back
    /// (from an ejection or failed checks) to 100% after `slow_start`.
    pub fn ramp(&self, now: Instant, slow_start: Duration) -> f64 {
        let active = self.active.lock().ok().and_then(|a| a.recovered_at);
        let passive = self
            .passive
            .lock()
            .ok()
            .and_then(|p| p.ejected_until)
            .filter(|t| *t <= now);
        let Some(back) = active.max(passive) else {
            return 1.0;
        };
        let f = now.saturating_duration_since(back).as_secs_f64() / slow_start.as_secs_f64();
        f.clamp(0.1, 1.0)
    }

    /// Failed its active health checks.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Forgets the active-check state (its checks were turned off).
    pub fn reset_active(&self) {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        *a = Active::default();
        self.down.store(false, Ordering::Release);
    }

    /// Whether the target has been ejected at some time (a cheap check before [`is_ejected`]).
    pub fn ever_ejected(&self) -> bool {
        self.ejected_until_ns.load(Ordering::Relaxed) != 0
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until_ns.load(Ordering::Acquire) > nanos(now)
    }

    /// Until when the target is ejected, if it is.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.passive
            .lock()
            .ok()
            .and_then(|p| p.ejected_until.filter(|t| *t > now))
    }

    /// Records a success: clears the failure streak; after a streak as long as the ejection
    /// threshold, the next ejection starts from the base time again.
    pub fn record_success(&self, policy: &PassivePolicy) {
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        p.consecutive_failures = 0;
        p.consecutive_successes = p.consecutive_successes.saturating_add(1);
        if p.consecutive_successes >= policy.consecutive_failures {
            p.ejections = 0;
        }
    }

    /// Records a failure. Returns true when this failure completes a streak that calls for
    /// ejection; the caller decides (it knows how many targets are already out) and calls
    /// [`TargetLive::eject`].
    pub fn record_failure(&self, policy: &PassivePolicy, now: Instant) -> bool {
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        p.consecutive_successes = 0;
        p.consecutive_failures = p.consecutive_failures.saturating_add(1);
        policy.consecutive_failures > 0
            && p.consecutive_failures >= policy.consecutive_failures
            && p.ejected_until.is_none_or(|t| t <= now)
    }

    /// Ejects for base × 2^(ejections so far), capped, unless it is already ejected. Returns
    /// the ejection's length.
    pub fn eject(&self, policy: &PassivePolicy, now: Instant) -> Option<Duration> {
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        if p.ejected_until.is_some_and(|t| t > now) {
            return None;
        }
        let factor = 1u32 << p.ejections.min(16);
        let len = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        p.ejections = p.ejections.saturating_add(1);
        p.ejected_until = Some(now + len);
        self.ejected_until_ns
            .store(nanos(now + len), Ordering::Release);
        p.consecutive_failures = 0;
        Some(len)
    }
}

/// A request in flight to a target; counted down when dropped (at the end of the response
/// body, or when the exchange fails).
pub struct InFlight(std::sync::Arc<TargetLive>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy() -> PassivePolicy {
        PassivePolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejection_grows_and_is_capped() {
        let t = TargetLive::default();
        let now = Instant::now();
        assert!(!t.record_failure(&policy(), now));
        assert!(!t.record_failure(&policy(), now));
        assert!(t.record_failure(&policy(), now));
        assert_eq!(t.eject(&policy(), now), Some(Duration::from_secs(10)));
        assert_eq!(t.eject(&policy(), now), None, "already ejected");
        assert!(t.is_ejected(now + Duration::from_secs(9)));
        assert!(!t.is_ejected(now + Duration::from_secs(11)));
        let later = now + Duration::from_secs(11);
        for _ in 0..2 {
            assert!(!t.record_failure(&policy(), later));
        }
        assert!(t.record_failure(&policy(), later));
        assert_eq!(t.eject(&policy(), later), Some(Duration::from_secs(20)));
        let much_later = later + Duration::from_secs(21);
        for _ in 0..3 {
            t.record_failure(&policy(), much_later);
        }
        assert_eq!(
            t.eject(&policy(), much_later),
            Some(Duration::from_secs(25)),
            "capped"
        );
        // A success streak as long as the threshold resets the growth.
        for _ in 0..3 {
            t.record_success(&policy());
        }
        let again = much_later + Duration::from_secs(30);
        for _ in 0..3 {
            t.record_failure(&policy(), again);
        }
        assert_eq!(t.eject(&policy(), again), Some(Duration::from_secs(10)));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t = TargetLive::default();
        let now = Instant::now();
        t.observe_latency(Duration::from_millis(10), now);
        t.observe_latency(Duration::from_millis(100), now + Duration::from_millis(1));
        assert!(
            (t.ewma(now + Duration::from_millis(1)).unwrap() - 0.1).abs() < 1e-4,
            "peaks at once"
        );
        t.observe_latency(Duration::from_millis(10), now + Duration::from_secs(30));
        let at = now + Duration::from_secs(30);
        assert!(
            t.ewma(at).unwrap() < 0.02,
            "decays after a quiet period: {}",
            t.ewma(at).unwrap()
        );
        // Without samples, the estimate fades: a slow target gets tried again.
        assert!(t.ewma(at + Duration::from_secs(60)).unwrap() < 0.0001);
    }

    #[test]
    fn slow_start_ramps_after_an_ejection() {
        let t = TargetLive::default();
        let now = Instant::now();
        assert_eq!(
            t.ramp(now, Duration::from_secs(10)),
            1.0,
            "never out: full weight"
        );
        for _ in 0..3 {
            t.record_failure(&policy(), now);
        }
        let _ = t.eject(&policy(), now);
        let back = now + Duration::from_secs(10);
        assert!((t.ramp(back, Duration::from_secs(10)) - 0.1).abs() < 1e-9);
        assert!(
            (t.ramp(back + Duration::from_secs(5), Duration::from_secs(10)) - 0.5).abs() < 1e-9
        );
        assert_eq!(
            t.ramp(back + Duration::from_secs(20), Duration::from_secs(10)),
            1.0
        );
    }

    #[test]
    fn in_flight_guard() {
        let t = Arc::new(TargetLive::default());
        let a = t.start();
        let b = t.start();
        assert_eq!(t.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(t.in_flight(), 0);
    }
}

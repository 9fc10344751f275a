//! Retries: which failures may be retried, how long to wait, and a budget so that retries
//! cannot multiply the load on an upstream that is already failing.
//!
//! The budget (as in Finagle and Linkerd): every request deposits `percent`/100 of a token
//! (lock-free, since this runs for every request), every retry withdraws one, and
//! `min_per_second` tokens are added each second whatever the traffic, so low traffic can still
//! retry. The balance is capped, so a quiet hour does not bank a storm of retries.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

#[derive(Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on_timeout: bool,
    pub on_reset: bool,
    pub statuses: Vec<StatusCode>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_body: u64,
    /// Shared with the same upstream in later configs while its budget settings stay.
    pub budget: std::sync::Arc<RetryBudget>,
}

impl RetryPolicy {
    /// Whether a retry may resend this request at all (beyond connection failures, which are
    /// always safe: nothing was sent).
    pub fn may_resend(&self, method: &Method, route_allows_unsafe: bool) -> bool {
        self.attempts > 1
            && (route_allows_unsafe
                || matches!(
                    *method,
                    Method::GET
                        | Method::HEAD
                        | Method::OPTIONS
                        | Method::PUT
                        | Method::DELETE
                        | Method::TRACE
                ))
    }

    pub fn retries_status(&self, s: StatusCode) -> bool {
        self.statuses.contains(&s)
    }

    /// Full jitter: a random wait up to base × 2^(retry-1), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    /// The settings it was made with (percent in thousandths, floor): a config with the same
    /// keeps it, balance and all.
    pub params: (u64, u32),
    /// What one request earns, in thousandths of a retry.
    earn: u64,
    min_per_second: f64,
    /// The balance, in thousandths of a retry: every request deposits, without a lock.
    balance: AtomicU64,
    cap: u64,
    /// When the per-second floor was last added (only retries take this lock).
    refilled: Mutex<Instant>,
}

impl RetryBudget {
    pub fn new(percent: f64, min_per_second: u32) -> Self {
        let ratio = percent / 100.0;
        let min = f64::from(min_per_second);
        // At most ten seconds of the floor plus a hundred requests' worth.
        let cap = ((min * 10.0 + ratio * 100.0) * 1000.0) as u64;
        RetryBudget {
            params: ((percent * 1000.0).round() as u64, min_per_second),
            earn: (ratio * 1000.0).round() as u64,
            min_per_second: min,
            balance: AtomicU64::new((min * 1000.0) as u64),
            cap,
            refilled: Mutex::new(Instant::now()),
        }
    }

    /// Every request (first tries only) earns the budget its share.
    pub fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + self.earn).min(self.cap))
            });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let refill = {
            let mut last = self.refilled.lock().unwrap_or_else(|e| e.into_inner());
            let elapsed = now.saturating_duration_since(*last).as_secs_f64();
            *last = now.max(*last);
            (elapsed * self.min_per_second * 1000.0) as u64
        };
        if refill > 0 {
            let _ = self
                .balance
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some((b + refill).min(self.cap))
                });
        }
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1000))
            .is_ok()
    }
}

/// Parses `20%` (or a bare number) into a percentage.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%').trim();
    let v: f64 = t
        .parse()
        .map_err(|_| format!("invalid percentage {s:?} (expected e.g. \"20%\")"))?;
    if !(0.0..=1000.0).contains(&v) {
        return Err(format!("percentage {s:?} must be between 0% and 1000%"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_retries_to_a_share_plus_a_floor() {
        let b = RetryBudget::new(20.0, 10);
        let start = Instant::now();
        // Drain the initial floor allowance.
        let mut initial = 0;
        while b.withdraw(start) {
            initial += 1;
        }
        assert_eq!(initial, 10);
        // 1000 requests in the same instant earn 200 retries (20%), minus the cap.
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw(start) {
                granted += 1;
            }
        }
        assert!((195..=205).contains(&granted), "granted {granted}");
        // Time adds the floor: one second later, 10 more.
        let later = start + Duration::from_secs(1);
        let mut floor = 0;
        while b.withdraw(later) {
            floor += 1;
        }
        assert_eq!(floor, 10);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = RetryPolicy {
            attempts: 3,
            on_timeout: false,
            on_reset: false,
            statuses: vec![],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(100),
            max_body: 0,
            budget: std::sync::Arc::new(RetryBudget::new(20.0, 10)),
        };
        for retry in 1..10 {
            assert!(p.backoff(retry) <= Duration::from_millis(100));
        }
        assert!(p.may_resend(&Method::GET, false));
        assert!(!p.may_resend(&Method::POST, false));
        assert!(p.may_resend(&Method::POST, true));
        assert_eq!(parse_percent("20%"), Ok(20.0));
        assert!(parse_percent("x").is_err());
    }
}

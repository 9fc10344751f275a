//! Upstreams: named groups of targets, each with its connection pool and balancer. Chosen by
//! the route; `select` picks the target for one request, the pool sends it.
//!
//! What outlives a reload (pools, balancer positions, retry budgets, each target's health and
//! load) is claimed by name from the [`crate::registry`] when a config compiles, so a reload
//! keeps what still fits.

pub mod balancer;
pub mod connector;
pub mod dns;
pub mod exchange;
pub mod health;
pub mod http1;
pub mod pool;
pub mod retry;
pub mod send;
pub mod state;
pub mod transport;
mod upgrade;

pub use send::{Call, send};

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::uri::{Authority, Scheme};

use crate::observe::metrics::TargetStats;
use pool::{TargetPool, UpstreamPool};

/// Documented defaults (README "Timeouts").
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// `timeouts.read`: as Envoy's stream idle timeout (nginx's `proxy_read_timeout` is 60 s; a
/// stream with rarer heartbeats needs a longer one).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Circuit-breaking limits of one upstream (`limits:`); `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_pending: usize,
    pub max_in_flight: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub idle: Duration,
    /// Longest pause in an HTTP/1.1 response body after its head.
    pub read: Duration,
}

pub struct Target {
    /// As written in the config, for logs and `explain` (for a resolved name, the name).
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `host:port` of the target, sent as Host when the upstream does not preserve the client's.
    pub host_header: HeaderValue,
    pub weight: u32,
    /// Keep-alive connections to this target (shared with the previous config's same target).
    pub pool: Arc<TargetPool>,
    /// Load, ejection and health: owned here, kept across reloads while the target stays,
    /// read by the balancers, the admin API and the metrics.
    pub live: Arc<state::TargetLive>,
    /// Metric handles, attached when the config goes live (`State::adopt`).
    pub stats: OnceLock<Arc<TargetStats>>,
    /// `health.slow_start` of its upstream (zero = off).
    pub slow_start: Duration,
}

impl Target {
    /// Counts one exchange in the target's metrics (once the config is live).
    pub fn record(&self, outcome: crate::observe::metrics::UpstreamOutcome, elapsed: Duration) {
        if let Some(s) = self.stats.get() {
            s.record(outcome, elapsed);
        }
    }

    /// The weight balancers use, in thousandths: the configured weight, ramped up over
    /// `slow_start` after the target comes back from an ejection or failed health checks
    /// (from 10% of it), so a recovered target is not flooded.
    pub fn effective_weight(&self) -> u64 {
        let w = u64::from(self.weight) * 1000;
        if w == 0 || self.slow_start.is_zero() {
            return w;
        }
        let ramp = self.live.ramp(Instant::now(), self.slow_start);
        ((w as f64 * ramp).round() as u64).max(1)
    }
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub balancer: balancer::Balancer,
    /// The targets' configured weights, summed for weighted draws.
    pub weights: balancer::Weights,
    pub pool: Arc<UpstreamPool>,
    pub timeouts: Timeouts,
    pub preserve_host: bool,
    pub rewrite_redirects: bool,
    pub passive: state::PassivePolicy,
    pub active: Option<health::ActivePolicy>,
    pub retry: retry::RetryPolicy,
    pub limits: Limits,
    /// Host-name targets (`host:port`) to re-resolve, and how often.
    pub names: Vec<String>,
    pub dns_refresh: Duration,
    /// Serialises passive-health ejections (count, then eject).
    pub ejecting: Mutex<()>,
}

impl Upstream {
    /// Picks the target for one try of a request: among the targets with weight that are not
    /// ejected, not failing their active checks, and not yet `tried` by this request. When every target is out, all of them are
    /// tried anyway (panic mode): a wrongly ejected set must not fail every request.
    pub fn select(&self, key: Option<u64>, tried: &[usize]) -> Option<usize> {
        // The clock is read only if a target has been ejected at some time.
        let now = std::cell::OnceCell::new();
        let healthy = |i: usize| {
            let live = &self.targets[i].live;
            let ejected = live.ever_ejected() && live.is_ejected(*now.get_or_init(Instant::now));
            !ejected && !live.is_down()
        };
        if let Some(i) = self.balancer.pick(
            &self.targets,
            &self.weights,
            &|i| !tried.contains(&i) && healthy(i),
            key,
        ) {
            return Some(i);
        }
        // Panic mode only when no target is healthy at all (not merely when the healthy ones
        // were tried): then every target is tried rather than failing the request.
        let any_healthy = (0..self.targets.len()).any(|i| self.targets[i].weight > 0 && healthy(i));
        if any_healthy {
            return None;
        }
        self.balancer
            .pick(&self.targets, &self.weights, &|i| !tried.contains(&i), key)
    }

    /// Whether a try could still go to a target this request has not tried.
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        (0..self.targets.len()).any(|i| self.targets[i].weight > 0 && !tried.contains(&i))
    }

    /// Passive health: what one try of a request to target `i` came to. A failure streak
    /// ejects the target, unless that would put more than `max_ejected_percent` of the
    /// targets out.
    pub fn report(&self, i: usize, ok: bool) {
        let Some(t) = self.targets.get(i) else { return };
        if ok {
            t.live.record_success(&self.passive);
            return;
        }
        let now = Instant::now();
        if !t.live.record_failure(&self.passive, now) {
            return;
        }
        // Count and eject under one lock, so concurrent reports cannot both fit under the cap.
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let out = self
            .targets
            .iter()
            .filter(|t| t.live.is_ejected(now))
            .count();
        if (out + 1) * 100 <= self.targets.len() * self.passive.max_ejected_percent as usize
            && let Some(len) = t.live.eject(&self.passive, now)
        {
            if let Some(s) = t.stats.get() {
                s.ejected();
            }
            tracing::warn!(upstream = %self.name, target = %t.authority, seconds = len.as_secs(), "target ejected after consecutive failures");
        }
    }
}

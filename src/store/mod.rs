//! The shared store: what rate limits (and, next, the response cache) keep between requests.
//! One small interface with a memory implementation (this process) and a Redis one (every
//! gateway instance sharing one budget, through one Redis node or a Redis Cluster). Policies
//! talk to the store, never to Redis.

pub mod cache;
pub mod memory;
pub mod redis;
mod redis_cache;

use std::time::Duration;

/// A rate: `limit` requests per `period`, with `burst` more allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// The time one request costs: `period / limit` (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        self.period / self.limit.max(1)
    }
}

/// What the store decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still pass right now.
    pub remaining: u32,
    /// When the key is back to its full allowance.
    pub reset: Duration,
    /// For a refused request: when one would pass.
    pub retry_after: Duration,
}

/// The shared store could not decide (Redis failed, was too slow, or is known to be down); the
/// call is already counted and the outage logged. The caller falls back to the local limits
/// ([`Store::rate_limit_local`]) or refuses the request (a `fail_closed` limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// How the store is doing, for the admin status, the dashboard and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// `memory`, `redis` or `redis_cluster`.
    pub kind: &'static str,
    /// False from a failed call until the next call that succeeds.
    pub up: bool,
    /// Calls that Redis did not answer (failed, timed out, or skipped while it was down),
    /// since this store was made.
    pub errors: u64,
    pub last_error: Option<String>,
    /// When `up` last changed (or the store was made).
    pub since: std::time::SystemTime,
}

/// Where the counters live.
pub enum Store {
    Memory(memory::MemoryStore),
    /// Boxed: much larger than the memory store, and one per config.
    Redis(Box<redis::RedisStore>),
}

impl Default for Store {
    fn default() -> Self {
        Store::Memory(memory::MemoryStore::default())
    }
}

impl Store {
    /// Counts one request under `key` at `rate`, when the store answers at once (memory).
    pub fn rate_limit_now(&self, key: &[u8], rate: Rate) -> Option<Decision> {
        match self {
            Store::Memory(m) => Some(m.rate_limit(key, rate, std::time::Instant::now())),
            Store::Redis(_) => None,
        }
    }

    /// Counts one request under `key` at `rate`. Only a shared store can be
    /// [`Unavailable`]; memory always decides.
    pub async fn rate_limit(&self, key: &[u8], rate: Rate) -> Result<Decision, Unavailable> {
        match self {
            Store::Memory(m) => Ok(m.rate_limit(key, rate, std::time::Instant::now())),
            Store::Redis(r) => r.rate_limit(key, rate).await,
        }
    }

    /// Counts one request in this process only: what a limit falls back to while the shared
    /// store is [`Unavailable`].
    pub fn rate_limit_local(&self, key: &[u8], rate: Rate) -> Decision {
        let now = std::time::Instant::now();
        match self {
            Store::Memory(m) => m.rate_limit(key, rate, now),
            Store::Redis(r) => r.local().rate_limit(key, rate, now),
        }
    }

    /// What the store is, for logs and the admin API.
    pub fn describe(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(r) => r.kind(),
        }
    }

    /// Up or down, errors, the last one, and since when.
    pub fn status(&self) -> StoreStatus {
        match self {
            Store::Memory(m) => StoreStatus {
                kind: "memory",
                up: true,
                errors: 0,
                last_error: None,
                since: m.created(),
            },
            Store::Redis(r) => r.status(),
        }
    }
}

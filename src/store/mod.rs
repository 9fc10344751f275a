//! The shared store: what rate limits (and, next, the response cache) keep between requests.
//! One small interface with a memory implementation (this process) and, next, a Redis one
//! (every gateway instance sharing one budget). Policies talk to the store, never to Redis.

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

    /// Counts one request under `key` at `rate`.
    pub async fn rate_limit(&self, key: &[u8], rate: Rate) -> Decision {
        match self {
            Store::Memory(m) => m.rate_limit(key, rate, std::time::Instant::now()),
            Store::Redis(r) => r.rate_limit(key, rate).await,
        }
    }

    /// What the store is, for logs and the admin API.
    pub fn describe(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

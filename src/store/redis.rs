//! The Redis store: one GCRA decision per request in one Lua script (one round trip, atomic,
//! exact across every gateway instance sharing the Redis), on Redis's own clock (`TIME`), so
//! the instances' clocks do not matter. The key is wrapped in a hash tag, so with Redis
//! Cluster it stays on one slot.
//!
//! Redis trouble never takes the gateway down: a call that fails or takes longer than the
//! timeout is decided by the local (memory) store instead, the outage is logged once per
//! [`REPORT_EVERY`] and counted, and the next call tries Redis again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::memory::MemoryStore;
use super::{Decision, Rate};

const REPORT_EVERY: Duration = Duration::from_secs(30);

/// KEYS[1]: the key. ARGV: emission interval and tolerance, in microseconds. Returns
/// {allowed, remaining, reset_us, retry_after_us}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then
  return {0, 0, ahead, ahead - tolerance}
end
local new_tat = tat + interval
local used = new_tat - now
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor(used / 1000) + 1)
local left = tolerance + interval - used
return {1, math.floor(left / interval), used, 0}
";

pub struct RedisStore {
    client: redis::Client,
    /// Connected on first use (compiling a config does no I/O); reconnects by itself.
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    script: redis::Script,
    /// Decides while Redis cannot.
    local: MemoryStore,
    last_report: Mutex<Option<Instant>>,
    /// Calls that fell back to the local store.
    pub errors: std::sync::atomic::AtomicU64,
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL ({e})"))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            timeout,
            script: redis::Script::new(GCRA),
            local: MemoryStore::default(),
            last_report: Mutex::new(None),
            errors: Default::default(),
        })
    }

    pub async fn rate_limit(&self, key: &[u8], rate: Rate) -> Decision {
        match tokio::time::timeout(self.timeout, self.remote(key, rate)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => self.fall_back(key, rate, &e),
            Err(_) => self.fall_back(key, rate, &format!("no answer within {:?}", self.timeout)),
        }
    }

    /// The shared connection, made on first use; the cache and the rate limits both use it
    /// (through any `redis::aio::ConnectionLike` call), and it reconnects by itself.
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, String> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                ConnectionManager::new(self.client.clone())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        Ok(conn.clone())
    }

    /// The longest wait for one call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Counts a failed call and logs the outage once per [`REPORT_EVERY`]; `what` says what
    /// the gateway does meanwhile.
    pub(crate) fn report(&self, why: &str, what: &str) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(error = %why, "Redis store unavailable: {what} until it answers again");
        }
    }

    async fn remote(&self, key: &[u8], rate: Rate) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let interval = rate.interval().as_micros().max(1) as u64;
        let tolerance = (rate.interval() * rate.burst).as_micros() as u64;
        let mut k = Vec::with_capacity(key.len() * 2 + 16);
        k.extend_from_slice(b"gatehouse:rl:{");
        // Hex: binary-safe, and never a `}` that would end the hash tag early.
        for b in key {
            k.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        k.push(b'}');
        let (allowed, remaining, reset, retry): (i64, i64, i64, i64) = self
            .script
            .key(k)
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: us(reset),
            retry_after: us(retry),
        })
    }

    fn fall_back(&self, key: &[u8], rate: Rate, why: &str) -> Decision {
        self.report(why, "rate limits are decided locally");
        self.local.rate_limit(key, rate, Instant::now())
    }
}

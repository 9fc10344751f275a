//! The Redis store: one GCRA decision per request in one Lua script (one round trip, atomic,
//! exact across every gateway instance sharing the Redis), on Redis's own clock (`TIME`), so
//! the instances' clocks do not matter. One node (`url`, `redis://` or `rediss://`) or a Redis
//! Cluster (`cluster`: seed node URLs); the key is wrapped in a hash tag, so in a cluster it
//! stays on one slot. Either way the callers see one [`RedisConnection`].
//!
//! Redis trouble never takes the gateway down. A call that fails or takes longer than the
//! timeout is [`Unavailable`]: the caller decides locally (or refuses, for a `fail_closed`
//! limit), the call is counted, and the outage is logged once per [`REPORT_EVERY`]. While Redis
//! is down, calls do not wait for it: one call per [`RedisStore::retry_every`] tries it, the rest
//! fall back at once. The first call that succeeds marks the store up again (and says so in the
//! log); the connection reconnects by itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::memory::MemoryStore;
use super::{Decision, Rate, StoreStatus, Unavailable};

pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// What [`RedisStore::connection`] answers while Redis is down and no try is due: such a call
/// is counted when reported, but neither delays the next try nor hides the last real error.
const SKIPPED: &str = "Redis is down; the next try is due shortly";

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

/// Where the store connects, as compiled from `store.redis`.
#[derive(Clone)]
pub struct RedisSettings {
    /// One node's URL, or the cluster's seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// The longest wait for one call.
    pub timeout: Duration,
    /// `store.redis.tls`: the CA to trust instead of the system's, and a client certificate.
    pub tls: Option<redis::TlsCertificates>,
    /// Multiplexed connections, used in turn (`store.redis.pool`, at least 1).
    pub pool: usize,
}

/// One node or a cluster: how to make the connection. One per store, made once: its size
/// does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Node(redis::Client),
    Cluster(ClusterClient),
}

pub struct RedisStore {
    target: Target,
    /// `store.redis.pool` connections, each made on first use (compiling a config does no
    /// I/O, and needs no runtime); each connects in the background and reconnects by itself,
    /// and carries many calls at once (multiplexed). Calls take them in turn.
    conns: Vec<OnceLock<Conn>>,
    next: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    script: redis::Script,
    /// Decides while Redis cannot.
    local: MemoryStore,
    health: Arc<Health>,
}

impl RedisStore {
    /// Checks the settings (URLs, certificates) without connecting. `errors` counts the
    /// calls that fell back (the `gatehouse_store_errors` counter).
    pub fn new(s: &RedisSettings, errors: Counter) -> Result<RedisStore, String> {
        // The redis crate builds its rustls config on the process's default provider: make it
        // the gateway's own (aws-lc-rs), whatever feature unification might choose. A provider
        // installed before stays (the call then fails harmlessly).
        if s.tls.is_some() || s.urls.iter().any(|u| u.starts_with("rediss:")) {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let connect_timeout = s.timeout.max(Duration::from_secs(1));
        let target = if s.cluster {
            let mut b = ClusterClient::builder(s.urls.iter().map(String::as_str))
                .connection_timeout(connect_timeout)
                .response_timeout(s.timeout)
                .retries(2);
            if let Some(tls) = &s.tls {
                b = b.certs(tls.clone());
            }
            let client = b
                .build()
                .map_err(|e| format!("invalid Redis Cluster ({e})"))?;
            Target::Cluster(client)
        } else {
            let url = s.urls.first().ok_or("no Redis URL")?;
            let client = match &s.tls {
                Some(tls) => redis::Client::build_with_tls(url.as_str(), tls.clone()),
                None => redis::Client::open(url.as_str()),
            };
            Target::Node(client.map_err(|e| format!("invalid Redis URL ({e})"))?)
        };
        Ok(RedisStore {
            target,
            conns: (0..s.pool.max(1)).map(|_| OnceLock::new()).collect(),
            next: Default::default(),
            timeout: s.timeout,
            script: redis::Script::new(GCRA),
            local: MemoryStore::default(),
            health: Arc::new(Health::new(
                errors,
                s.timeout.max(Duration::from_millis(100)),
            )),
        })
    }

    /// Counts one request under `key` at `rate`, in Redis.
    pub async fn rate_limit(&self, key: &[u8], rate: Rate) -> Result<Decision, Unavailable> {
        let why = match tokio::time::timeout(self.timeout(), self.remote(key, rate)).await {
            Ok(Ok(d)) => return Ok(d),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.timeout()),
        };
        self.report(
            &why,
            "rate limits are decided locally (or refused, where fail_closed)",
        );
        Err(Unavailable)
    }

    /// The local store that decides while Redis cannot.
    pub fn local(&self) -> &MemoryStore {
        &self.local
    }

    /// `redis` or `redis_cluster`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Node(_) => "redis",
            Target::Cluster(_) => "redis_cluster",
        }
    }

    pub fn status(&self) -> StoreStatus {
        let st = self.health.state();
        StoreStatus {
            kind: self.kind(),
            up: self.health.up.load(Ordering::Relaxed),
            errors: self.health.errors.load(Ordering::Relaxed),
            last_error: st.last_error.clone(),
            since: st.since,
        }
    }

    /// The shared connection; the cache and the rate limits both use it (through any
    /// `redis::aio::ConnectionLike` call), one node or a cluster alike. Every reply it gets
    /// marks the store up. While the store is down, this fails at once except for one call
    /// per [`Self::retry_every`], which tries Redis again.
    pub(crate) async fn connection(&self) -> Result<RedisConnection, String> {
        if !self.health.may_try() {
            return Err(SKIPPED.into());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let slot = &self.conns[i];
        let conn = match slot.get() {
            Some(c) => c.clone(),
            None => {
                let made = self.connect()?;
                slot.get_or_init(|| made).clone()
            }
        };
        Ok(RedisConnection {
            conn,
            health: self.health.clone(),
        })
    }

    /// While Redis is down, one call this often tries it.
    pub fn retry_every(&self) -> Duration {
        self.health.retry_every
    }

    /// A connection that connects in the background (no I/O here, so no wait a timeout could
    /// cut short halfway).
    fn connect(&self) -> Result<Conn, String> {
        let connect_timeout = self.timeout.max(Duration::from_secs(1));
        match &self.target {
            Target::Node(client) => {
                // Reconnecting backs off at most a second, gives up after two tries, and the
                // next call starts again: Redis is found within about a second of coming back.
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(client.clone(), cfg)
                    .map(Conn::Node)
                    .map_err(|e| e.to_string())
            }
            Target::Cluster(client) => {
                let cfg = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(self.timeout);
                Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(cfg),
                ))
            }
        }
    }

    /// The longest wait for one call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Counts a failed call, marks the store down and logs the outage once per
    /// [`REPORT_EVERY`]; `what` says what the gateway does meanwhile.
    pub(crate) fn report(&self, why: &str, what: &str) {
        self.health.failed(why, what);
    }

    async fn remote(&self, key: &[u8], rate: Rate) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let interval = rate.interval().as_micros().max(1) as u64;
        let tolerance = (rate.interval() * rate.burst).as_micros() as u64;
        let mut k = Vec::with_capacity(key.len() * 2 + 16);
        k.extend_from_slice(b"gatehouse:rl:{");
        // Hex: binary-safe, and never a `}` that would end the hash tag early.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in key {
            k.push(HEX[usize::from(b >> 4)]);
            k.push(HEX[usize::from(b & 15)]);
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
}

#[derive(Clone)]
enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The store's connection to one Redis node or to a cluster (commands go to the node that
/// owns their key's slot). Cheap to clone; use it with any `redis` async call
/// (`cmd.query_async(&mut conn)`, `script.invoke_async(&mut conn)`, pipelines whose keys
/// share a slot).
#[derive(Clone)]
pub struct RedisConnection {
    conn: Conn,
    health: Arc<Health>,
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = match &mut self.conn {
                Conn::Node(c) => c.req_packed_command(cmd).await,
                Conn::Cluster(c) => c.req_packed_command(cmd).await,
            };
            if r.is_ok() {
                self.health.ok();
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = match &mut self.conn {
                Conn::Node(c) => c.req_packed_commands(pipeline, offset, count).await,
                Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
            };
            if r.is_ok() {
                self.health.ok();
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Up or down, and what the admin status shows about it.
struct Health {
    up: AtomicBool,
    errors: AtomicU64,
    counter: Counter,
    retry_every: Duration,
    /// While down: milliseconds after `epoch` before which no call tries Redis.
    next_try: AtomicU64,
    epoch: Instant,
    state: Mutex<HealthState>,
}

struct HealthState {
    last_error: Option<String>,
    since: SystemTime,
    down_at: Option<Instant>,
    last_report: Option<Instant>,
}

impl Health {
    fn new(counter: Counter, retry_every: Duration) -> Health {
        Health {
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            counter,
            retry_every,
            next_try: AtomicU64::new(0),
            epoch: Instant::now(),
            state: Mutex::new(HealthState {
                last_error: None,
                since: SystemTime::now(),
                down_at: None,
                last_report: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may try Redis: always while it is up; while it is down, one call per
    /// `retry_every`.
    fn may_try(&self) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let next = self.next_try.load(Ordering::Relaxed);
        now >= next
            && self
                .next_try
                .compare_exchange(
                    next,
                    now + self.retry_every.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// A reply came: the store is up (again).
    fn ok(&self) {
        if self.up.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.state();
        if self.up.swap(true, Ordering::Relaxed) {
            return;
        }
        st.since = SystemTime::now();
        let down_for = st.down_at.take().map(|t| t.elapsed()).unwrap_or_default();
        tracing::info!(
            down_for = ?down_for,
            "Redis store answers again: shared state is used again"
        );
    }

    fn failed(&self, why: &str, what: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.counter.inc();
        if why == SKIPPED {
            return;
        }
        self.next_try.store(
            self.now_ms() + self.retry_every.as_millis() as u64,
            Ordering::Relaxed,
        );
        let mut st = self.state();
        if st.last_error.as_deref() != Some(why) {
            st.last_error = Some(why.to_owned());
        }
        if self.up.swap(false, Ordering::Relaxed) {
            st.since = SystemTime::now();
            st.down_at = Some(Instant::now());
        }
        if st.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            st.last_report = Some(Instant::now());
            tracing::warn!(error = %why, "Redis store unavailable: {what} until it answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            urls: vec![url.to_owned()],
            cluster: false,
            timeout: Duration::from_millis(50),
            tls: None,
            pool: 1,
        }
    }

    #[test]
    fn down_then_up_with_one_try_per_interval() {
        let h = Health::new(Counter::default(), Duration::from_millis(100));
        assert!(h.may_try());
        h.failed("refused", "x");
        assert!(!h.up.load(Ordering::Relaxed));
        assert_eq!(h.errors.load(Ordering::Relaxed), 1);
        assert_eq!(h.counter.get(), 1);
        assert!(!h.may_try(), "no try right after a failure");
        h.next_try.store(0, Ordering::Relaxed);
        assert!(h.may_try(), "one try when it is due");
        assert!(!h.may_try(), "and only one");
        // Calls skipped meanwhile are counted, but neither delay the next try nor hide the
        // last real error.
        h.failed(SKIPPED, "x");
        assert_eq!(h.errors.load(Ordering::Relaxed), 2);
        h.next_try.store(0, Ordering::Relaxed);
        h.failed(SKIPPED, "x");
        assert!(h.may_try());
        h.ok();
        assert!(h.up.load(Ordering::Relaxed));
        assert!(h.may_try());
        assert_eq!(h.state().last_error.as_deref(), Some("refused"));
    }

    #[tokio::test]
    async fn a_dead_redis_is_unavailable_within_the_timeout() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let s = RedisStore::new(
            &settings(&format!("redis://127.0.0.1:{port}/0")),
            Counter::default(),
        )
        .unwrap();
        let r = Rate {
            limit: 10,
            period: Duration::from_secs(1),
            burst: 0,
        };
        let t = Instant::now();
        assert_eq!(s.rate_limit(b"k", r).await, Err(Unavailable));
        assert!(t.elapsed() < Duration::from_secs(1));
        let st = s.status();
        assert!(!st.up);
        assert_eq!(st.errors, 1);
        assert!(st.last_error.is_some());
        // While down, calls fall back at once.
        let t = Instant::now();
        assert_eq!(s.rate_limit(b"k", r).await, Err(Unavailable));
        assert!(t.elapsed() < Duration::from_millis(20));
    }

    #[test]
    fn bad_urls_are_refused_without_connecting() {
        assert!(RedisStore::new(&settings("http://x"), Counter::default()).is_err());
        let mut tls = settings("redis://127.0.0.1:1/0");
        tls.tls = Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: None,
        });
        assert!(
            RedisStore::new(&tls, Counter::default()).is_err(),
            "TLS settings need rediss://"
        );
    }
}

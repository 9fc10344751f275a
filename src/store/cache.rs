//! What the response cache keeps: stored answers ([`Entry`]), and the markers that say an
//! answer varies by request headers ([`Stored::Vary`]). The memory backend is a moka cache
//! (TinyLFU admission and eviction, bounded by total bytes, each item expiring on its own
//! lifetime); the Redis backend keeps the same bytes ([`encode`]) under `SET .. PX`, so an
//! answer stored through one gateway instance is served by all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};

/// One stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: StatusCode,
    /// The end-to-end headers as the upstream sent them (less `Age`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// When the answer arrived (RFC 9111 `response_time`), in ms since the epoch.
    pub stored_ms: u64,
    /// Its age when it arrived (the upstream's `Age`), in seconds.
    pub initial_age: u64,
    /// How long it is fresh from its age 0, in seconds.
    pub fresh_for: u64,
    /// How long past its freshness it may be served while one request refreshes it.
    pub stale_while_revalidate: u64,
    /// How long past its freshness it may be served when the upstream fails.
    pub stale_if_error: u64,
    /// `must-revalidate` or `no-cache`: never served stale, `no-cache` never served unchecked.
    pub must_revalidate: bool,
}

/// What is kept under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Response(Entry),
    /// The answers for this key vary by these request headers; each variant is kept under
    /// the key extended with this marker's generation and the request's values of them.
    /// Dropping the marker (invalidation, purge) orphans every variant at once: the next
    /// marker has another generation.
    Vary(Vec<HeaderName>, u64),
}

/// The largest delta-seconds value taken from a message (RFC 9111 §1.2.2: 2^31); larger ones,
/// and an `Age` past it, count as this.
pub const MAX_DELTA: u64 = 1 << 31;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Entry {
    /// Its current age in seconds (RFC 9111 §4.2.3, with the gateway as the only clock).
    pub fn age(&self, now_ms: u64) -> u64 {
        self.initial_age
            .min(MAX_DELTA)
            .saturating_add(now_ms.saturating_sub(self.stored_ms) / 1000)
    }

    /// Seconds of freshness left (negative: stale for that long).
    pub fn ttl(&self, now_ms: u64) -> i64 {
        self.fresh_for.min(MAX_DELTA) as i64 - self.age(now_ms).min(1 << 40) as i64
    }

    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// How long to keep it: fresh, then stale for as long as it may still be served, or
    /// (with a validator, so a conditional request can renew it) as long again as it was
    /// fresh, at least a minute and at most a day.
    pub fn lifetime(&self) -> Duration {
        let fresh = self
            .fresh_for
            .min(MAX_DELTA)
            .saturating_sub(self.initial_age);
        let mut stale = self
            .stale_while_revalidate
            .max(self.stale_if_error)
            .min(MAX_DELTA);
        if self.header(&http::header::ETAG).is_some()
            || self.header(&http::header::LAST_MODIFIED).is_some()
        {
            stale = stale.max(self.fresh_for.clamp(60, 86_400));
        }
        Duration::from_secs(fresh.saturating_add(stale).max(1))
    }

    /// Bytes it takes, roughly: what the memory bound counts.
    pub fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + 96
    }
}

impl Stored {
    pub fn weight(&self) -> usize {
        match self {
            Stored::Response(e) => e.weight(),
            Stored::Vary(names, _) => 64 + names.iter().map(|n| n.as_str().len()).sum::<usize>(),
        }
    }

    pub fn lifetime(&self) -> Duration {
        match self {
            Stored::Response(e) => e.lifetime(),
            // Outlives its variants' freshness in the common case; a lost marker only costs
            // one miss.
            Stored::Vary(..) => Duration::from_secs(86_400),
        }
    }
}

const MAGIC: &[u8; 3] = b"GHC";
const VERSION: u8 = 2;

/// The stored form: binary-safe, length-prefixed, versioned.
pub fn encode(s: &Stored) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(s.weight() + 16);
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    match s {
        Stored::Vary(names, generation) => {
            b.put_u8(b'V');
            b.put_u64(*generation);
            b.put_u32(names.len() as u32);
            for n in names {
                put_bytes(&mut b, n.as_str().as_bytes());
            }
        }
        Stored::Response(e) => {
            b.put_u8(b'R');
            b.put_u16(e.status.as_u16());
            b.put_u64(e.stored_ms);
            b.put_u64(e.initial_age);
            b.put_u64(e.fresh_for);
            b.put_u64(e.stale_while_revalidate);
            b.put_u64(e.stale_if_error);
            b.put_u8(u8::from(e.must_revalidate));
            b.put_u32(e.headers.len() as u32);
            for (n, v) in &e.headers {
                put_bytes(&mut b, n.as_str().as_bytes());
                put_bytes(&mut b, v.as_bytes());
            }
            put_bytes(&mut b, &e.body);
        }
    }
    b.to_vec()
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

/// Reads what [`encode`] wrote; `None` for anything else (another version, a damaged or
/// foreign value), which the cache treats as a miss.
pub fn decode(raw: Bytes) -> Option<Stored> {
    let mut b = raw;
    if b.remaining() < 5 || &b[..3] != MAGIC || b[3] != VERSION {
        return None;
    }
    b.advance(4);
    match b.get_u8() {
        b'V' => {
            let generation = get_u64(&mut b)?;
            if b.remaining() < 4 {
                return None;
            }
            let n = b.get_u32() as usize;
            let mut names = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                names.push(HeaderName::from_bytes(&get_bytes(&mut b)?).ok()?);
            }
            Some(Stored::Vary(names, generation))
        }
        b'R' => {
            if b.remaining() < 2 {
                return None;
            }
            let status = StatusCode::from_u16(b.get_u16()).ok()?;
            let stored_ms = get_u64(&mut b)?;
            let initial_age = get_u64(&mut b)?;
            let fresh_for = get_u64(&mut b)?;
            let stale_while_revalidate = get_u64(&mut b)?;
            let stale_if_error = get_u64(&mut b)?;
            if b.remaining() < 5 {
                return None;
            }
            let must_revalidate = b.get_u8() == 1;
            let n = b.get_u32() as usize;
            let mut headers = Vec::with_capacity(n.min(128));
            for _ in 0..n {
                let name = HeaderName::from_bytes(&get_bytes(&mut b)?).ok()?;
                let value = HeaderValue::from_maybe_shared(get_bytes(&mut b)?).ok()?;
                headers.push((name, value));
            }
            let body = get_bytes(&mut b)?;
            Some(Stored::Response(Entry {
                status,
                headers,
                body,
                stored_ms,
                initial_age,
                fresh_for,
                stale_while_revalidate,
                stale_if_error,
                must_revalidate,
            }))
        }
        _ => None,
    }
}

/// The memory backend: one per process, kept across reloads, bounded by total bytes.
pub struct MemoryCache {
    cache: moka::sync::Cache<Box<[u8]>, Arc<Stored>>,
    pub evictions: Arc<AtomicU64>,
    pub max_size: u64,
}

struct PerItem;

impl moka::Expiry<Box<[u8]>, Arc<Stored>> for PerItem {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Arc<Stored>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime())
    }

    fn expire_after_update(
        &self,
        _key: &Box<[u8]>,
        value: &Arc<Stored>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime())
    }
}

impl MemoryCache {
    // moka's weigher is called with `&K`, and K is a `Box<[u8]>`.
    #[allow(clippy::borrowed_box)]
    pub fn new(max_size: u64) -> MemoryCache {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|k: &Box<[u8]>, v: &Arc<Stored>| {
                u32::try_from(k.len() + v.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(PerItem)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        MemoryCache {
            cache,
            evictions,
            max_size,
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<Stored>> {
        self.cache.get(key)
    }

    pub fn put(&self, key: &[u8], value: Stored) {
        self.cache.insert(Box::from(key), Arc::new(value));
    }

    pub fn remove(&self, key: &[u8]) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Removes every key `matches` accepts; returns how many.
    pub fn purge(&self, matches: &dyn Fn(&[u8]) -> bool) -> usize {
        let keys: Vec<Arc<Box<[u8]>>> = self
            .cache
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        keys.iter().filter(|k| self.remove(k)).count()
    }

    /// Bytes held (after pending maintenance).
    pub fn size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache::new(64 * 1024 * 1024)
    }
}

/// What a message's `Cache-Control` says, from all its field values: the one parser the cache
/// policy and aggregation share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub private: bool,
    pub no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// The first `max-age`.
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> CacheControl {
        let mut c = CacheControl::default();
        for v in values {
            for (name, arg) in directives(v) {
                let n = || delta_seconds(arg);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => c.no_store = true,
                    "private" => c.private = true,
                    "no-cache" => c.no_cache = true,
                    "must-revalidate" | "proxy-revalidate" => c.must_revalidate = true,
                    "max-age" => c.max_age = c.max_age.or(n()),
                    "s-maxage" => c.s_maxage = n(),
                    "stale-while-revalidate" => c.stale_while_revalidate = n(),
                    "stale-if-error" => c.stale_if_error = n(),
                    _ => {}
                }
            }
        }
        c
    }

    /// The freshness it states for a shared cache: `s-maxage`, else 0 for `no-cache`, else
    /// `max-age`.
    pub fn shared_max_age(&self) -> Option<u64> {
        self.s_maxage
            .or(if self.no_cache { Some(0) } else { self.max_age })
    }
}

/// One `Cache-Control` field value's directives: `(name, argument)`.
pub fn directives(v: &HeaderValue) -> impl Iterator<Item = (&str, Option<&str>)> {
    v.to_str().unwrap_or("").split(',').filter_map(|d| {
        let d = d.trim();
        if d.is_empty() {
            return None;
        }
        Some(match d.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (d, None),
        })
    })
}

/// A delta-seconds argument (RFC 9111 §1.2.2): past 2^31 counts as 2^31; one that is not a
/// number (`-1`, `soon`) counts as 0, so the answer is stale at once.
pub fn delta_seconds(arg: Option<&str>) -> Option<u64> {
    arg.map(|a| {
        let a = a.trim_matches('"');
        match a.parse::<u64>() {
            Ok(v) => v.min(MAX_DELTA),
            Err(_) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => MAX_DELTA,
            Err(_) => 0,
        }
    })
}

/// Separates a key's parts: the route, then the URL, then the other parts. No URL, header
/// value or route name holds it.
pub const SEP: u8 = 0x1f;

/// A route's name as the first part of its cache keys: control bytes (the separators among
/// them) and `%` percent-encoded, so no name can reach into the next part.
pub fn route_part(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    for b in name.bytes() {
        if b < 0x20 || b == b'%' {
            k.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            k.push(b);
        }
    }
    k
}

/// Whether a stored key (`route SEP rest`) is one a purge names.
pub fn purge_matches(k: &[u8], route: Option<&str>, what: &[u8], exact: bool) -> bool {
    let Some(i) = k.iter().position(|b| *b == SEP) else {
        return false;
    };
    let (r, rest) = (&k[..i], &k[i + 1..]);
    if route.is_some_and(|want| route_part(want) != r) {
        return false;
    }
    if exact {
        rest == what
    } else {
        rest.starts_with(what)
    }
}

/// Where a route's cache lives: this process, or the Redis every instance shares.
#[derive(Clone)]
pub enum Backend {
    Memory(Arc<MemoryCache>),
    Redis(Arc<super::Store>),
}

/// A store call that failed or timed out (the cache is bypassed meanwhile).
#[derive(Debug)]
pub struct Unavailable;

impl Backend {
    fn redis(&self) -> Option<&super::redis::RedisStore> {
        match self {
            Backend::Redis(s) => match &**s {
                super::Store::Redis(r) => Some(r),
                _ => None,
            },
            Backend::Memory(_) => None,
        }
    }

    pub fn is_shared(&self) -> bool {
        self.redis().is_some()
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Arc<Stored>>, Unavailable> {
        match self {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(_) => match self.redis() {
                Some(r) => r.cache_get(key).await.map(|o| o.map(Arc::new)),
                None => Ok(None),
            },
        }
    }

    pub async fn put(&self, key: &[u8], value: Stored) -> Result<(), Unavailable> {
        match self {
            Backend::Memory(m) => {
                m.put(key, value);
                Ok(())
            }
            Backend::Redis(_) => match self.redis() {
                Some(r) => r.cache_put(key, &value).await,
                None => Ok(()),
            },
        }
    }

    pub async fn remove(&self, key: &[u8]) -> Result<bool, Unavailable> {
        match self {
            Backend::Memory(m) => Ok(m.remove(key)),
            Backend::Redis(_) => match self.redis() {
                Some(r) => r.cache_remove(key).await,
                None => Ok(false),
            },
        }
    }

    /// Removes what a purge names: the answers whose key, after the route part, is `what`
    /// (`exact`) or starts with it; on one route, or on all.
    pub async fn purge(
        &self,
        route: Option<&str>,
        what: &[u8],
        exact: bool,
    ) -> Result<usize, Unavailable> {
        if let (true, Some(r)) = (exact, route) {
            // One key, named whole: no scan (and, in a Redis Cluster, the right node).
            let mut k = route_part(r);
            k.push(SEP);
            k.extend_from_slice(what);
            return self.remove(&k).await.map(usize::from);
        }
        let matches = |k: &[u8]| purge_matches(k, route, what, exact);
        match self {
            Backend::Memory(m) => Ok(m.purge(&matches)),
            Backend::Redis(_) => match self.redis() {
                Some(r) => r.cache_purge(route, what, &matches).await,
                None => Ok(0),
            },
        }
    }

    /// Takes the shared fill lock for `key` (Redis only; in memory, the caller's own
    /// in-process coalescing is the lock). `Ok(None)`: another instance holds it.
    pub async fn lock(&self, key: &[u8], ttl: Duration) -> Result<Option<u64>, Unavailable> {
        match self.redis() {
            Some(r) => r.cache_lock(key, ttl).await,
            None => Ok(Some(0)),
        }
    }

    /// Whether another instance still holds the fill lock for `key`.
    pub async fn locked(&self, key: &[u8]) -> Result<bool, Unavailable> {
        match self.redis() {
            Some(r) => r.cache_locked(key).await,
            None => Ok(false),
        }
    }

    /// Releases a lock [`Backend::lock`] took, if it is still ours.
    pub async fn unlock(&self, key: &[u8], token: u64) {
        if let Some(r) = self.redis() {
            r.cache_unlock(key, token).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8]) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (http::header::ETAG, HeaderValue::from_static("\"v1\"")),
            ],
            body: Bytes::from_static(body),
            stored_ms: 1_700_000_000_000,
            initial_age: 3,
            fresh_for: 60,
            stale_while_revalidate: 5,
            stale_if_error: 300,
            must_revalidate: false,
        }
    }

    #[test]
    fn stored_form_round_trips_binary_bodies() {
        let e = Stored::Response(entry(b"\0\xff\r\n binary \x00"));
        assert_eq!(decode(Bytes::from(encode(&e))), Some(e));
        let v = Stored::Vary(vec![http::header::ACCEPT_ENCODING, http::header::ACCEPT], 7);
        assert_eq!(decode(Bytes::from(encode(&v))), Some(v));
    }

    #[test]
    fn damaged_or_foreign_values_are_misses() {
        let full = encode(&Stored::Response(entry(b"hello")));
        for cut in 0..full.len() {
            assert_eq!(decode(Bytes::copy_from_slice(&full[..cut])), None, "{cut}");
        }
        assert_eq!(decode(Bytes::from_static(b"hello world")), None);
        let mut other = full.clone();
        other[3] = 9;
        assert_eq!(decode(Bytes::from(other)), None);
    }

    #[test]
    fn cache_control_parses_once_for_everyone() {
        let v = [
            HeaderValue::from_static("public, max-age=60, max-age=5, S-MaxAge=\"30\""),
            HeaderValue::from_static("stale-while-revalidate=99999999999, stale-if-error=-1"),
        ];
        let c = CacheControl::parse(&v);
        assert_eq!(c.max_age, Some(60), "the first max-age");
        assert_eq!(c.s_maxage, Some(30));
        assert_eq!(c.shared_max_age(), Some(30));
        assert_eq!(c.stale_while_revalidate, Some(MAX_DELTA));
        assert_eq!(c.stale_if_error, Some(0), "not a number: stale at once");
        let nc = CacheControl::parse(&[HeaderValue::from_static("no-cache, max-age=60")]);
        assert_eq!(nc.shared_max_age(), Some(0));
        let p = CacheControl::parse(&[HeaderValue::from_static("Private, NO-STORE")]);
        assert!(p.private && p.no_store);
        assert_eq!(CacheControl::parse(&[]), CacheControl::default());
    }

    #[test]
    fn age_ttl_and_lifetime() {
        let e = entry(b"x");
        assert_eq!(e.age(e.stored_ms + 10_500), 13);
        assert_eq!(e.ttl(e.stored_ms + 10_500), 47);
        assert_eq!(e.ttl(e.stored_ms + 100_000), -43);
        // Fresh 57 s more, then kept for stale-if-error's 300 s.
        assert_eq!(e.lifetime(), Duration::from_secs(357));
    }

    #[test]
    fn memory_is_bounded_by_bytes() {
        let c = MemoryCache::new(100_000);
        let body: &'static [u8] = Box::leak(vec![7u8; 1000].into_boxed_slice());
        for i in 0..1000u32 {
            c.put(&i.to_be_bytes(), Stored::Response(entry(body)));
        }
        assert!(c.size() <= 100_000, "{} bytes", c.size());
        assert!(c.evictions.load(Ordering::Relaxed) > 0 || c.entries() < 1000);
        let c = MemoryCache::new(1_000_000);
        c.put(b"r1\x1fapi/a", Stored::Response(entry(b"a")));
        c.put(b"r2\x1fapi/b", Stored::Response(entry(b"b")));
        c.put(b"r1\x1fweb/a", Stored::Response(entry(b"c")));
        assert_eq!(
            c.purge(&|k| purge_matches(k, Some("r1"), b"api/", false)),
            1
        );
        assert_eq!(c.purge(&|k| purge_matches(k, None, b"api/b", true)), 1);
        assert_eq!(c.purge(&|k| purge_matches(k, None, b"web/", true)), 0);
        assert!(c.get(b"r1\x1fweb/a").is_some());
    }
}

//! `cache`: a shared HTTP cache (RFC 9111) in front of the route's upstream, kept in the store
//! (memory, or the Redis every instance shares).
//!
//! - Only GET answers are stored (HEAD is served from them); only the statuses listed
//!   (default: RFC 9110's heuristically cacheable ones); never an answer with `Set-Cookie`,
//!   `Cache-Control: no-store` or `private`, or `Vary: *`; never one to a request with
//!   `Authorization` unless the route allows it; never a body past `max_object_size`.
//! - Freshness: `s-maxage`, then `max-age`, then `Expires`, then the route's `ttl`
//!   (`force_ttl` puts the route's first). `no-cache` and `must-revalidate` are honoured.
//! - Every answer says what happened in `Cache-Status` (RFC 9211) and a stored one carries
//!   `Age`. Conditional requests (`If-None-Match`, `If-Modified-Since`) get 304 from the cache;
//!   a stale answer with a validator is revalidated with a conditional request.
//! - `stale-while-revalidate`: the stale answer is served at once and one request refreshes
//!   it in the background. `stale-if-error`: the stale answer replaces a 5xx or a failure.
//! - Coalescing: concurrent misses for one key wait for the first one's answer, in this
//!   process and, with the Redis store, across instances (a short fill lock in Redis; the
//!   waiters elsewhere read the shared cache).
//! - Unsafe methods (POST, PUT, PATCH, DELETE) that succeed drop the stored answer for their
//!   key (RFC 9111 §4.4).
//! - A store that fails or is slow is bypassed: the request goes to the upstream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use tokio::sync::watch;

use super::{Flow, Phase, Policy, PolicyCx, RequestCtx, Step};
use crate::body::{Body, BoxError};
use crate::config::ConfigError;
use crate::config::model::{CacheConfig, PolicySetConfig};
use crate::error::GatewayError;
use crate::hop::is_hop_by_hop;
use crate::observe::metrics::Metrics;
use crate::store::cache::{Backend, CacheControl, Entry, MAX_DELTA, SEP, Stored, now_ms};

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const DEFAULT_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
/// How often a waiter on another instance's fill looks at the shared cache.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Method,
    Host,
    Path,
    Query,
    Header(HeaderName),
    Consumer,
}

pub struct CachePolicy {
    backend: Backend,
    parts: Vec<KeyPart>,
    ttl: u64,
    force_ttl: bool,
    statuses: Vec<u16>,
    swr: u64,
    sie: u64,
    max_object: u64,
    allow_authorization: bool,
    coalesce: Duration,
    /// Keys being filled by a request of this process (waiters subscribe), and keys whose
    /// last answer could not be stored (requests for them do not wait for one another).
    inflight: Arc<Mutex<Fills>>,
    metrics: Arc<Metrics>,
}

/// The `cache` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Policy>> {
    let c = set.cache.as_ref()?;
    let p = format!("{path}.cache");
    CachePolicy::compile(c, cx, &p, errors).map(|r| Arc::new(r) as Arc<dyn Policy>)
}

impl CachePolicy {
    fn compile(
        c: &CacheConfig,
        cx: &PolicyCx<'_>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<CachePolicy> {
        let before = errors.len();
        let mut parts = Vec::new();
        match &c.key {
            None => parts.extend([KeyPart::Host, KeyPart::Path, KeyPart::Query]),
            Some(ks) if ks.is_empty() => errors.push(ConfigError::new(
                format!("{path}.key"),
                "list at least one of method, host, path, query, header:NAME, consumer",
            )),
            Some(ks) => {
                for (i, k) in ks.iter().enumerate() {
                    let part = match k.as_str() {
                        "method" => KeyPart::Method,
                        "host" => KeyPart::Host,
                        "path" => KeyPart::Path,
                        "query" => KeyPart::Query,
                        "consumer" => KeyPart::Consumer,
                        other => match other.strip_prefix("header:") {
                            Some(h) => match HeaderName::from_bytes(h.trim().as_bytes()) {
                                Ok(n) => KeyPart::Header(n),
                                Err(_) => {
                                    errors.push(ConfigError::new(
                                        format!("{path}.key[{i}]"),
                                        format!("invalid header name {h:?}"),
                                    ));
                                    continue;
                                }
                            },
                            None => {
                                errors.push(ConfigError::new(
                                    format!("{path}.key[{i}]"),
                                    format!(
                                        "unknown key part {other:?} (expected method, host, path, query, header:NAME or consumer)"
                                    ),
                                ));
                                continue;
                            }
                        },
                    };
                    if parts.contains(&part) {
                        errors.push(ConfigError::new(
                            format!("{path}.key[{i}]"),
                            format!("{k:?} is listed twice"),
                        ));
                    }
                    parts.push(part);
                }
            }
        }
        let statuses = c
            .statuses
            .clone()
            .unwrap_or_else(|| DEFAULT_STATUSES.to_vec());
        for (i, s) in statuses.iter().enumerate() {
            if !(200..600).contains(s) || *s == 206 || *s == 304 {
                errors.push(ConfigError::new(
                    format!("{path}.statuses[{i}]"),
                    format!(
                        "{s} cannot be cached (use final statuses 200-599 other than 206 and 304)"
                    ),
                ));
            }
        }
        let secs = |d: Option<crate::config::units::DurationStr>, default: u64| {
            d.map_or(default, |d| d.0.as_secs())
        };
        let ttl = secs(c.ttl, 60);
        if c.ttl.is_some_and(|d| d.0.is_zero()) && c.force_ttl {
            errors.push(ConfigError::new(
                format!("{path}.ttl"),
                "must be at least 1s with force_ttl",
            ));
        }
        let max_object = c.max_object_size.map_or(1024 * 1024, |s| s.0);
        if max_object == 0 {
            errors.push(ConfigError::new(
                format!("{path}.max_object_size"),
                "must be more than 0",
            ));
        }
        if errors.len() > before {
            return None;
        }
        Some(CachePolicy {
            backend: cx.cache.clone(),
            parts,
            ttl,
            force_ttl: c.force_ttl,
            statuses,
            swr: secs(c.stale_while_revalidate, 0),
            sie: secs(c.stale_if_error, 0),
            max_object,
            allow_authorization: c.allow_authorization,
            coalesce: c.coalesce_timeout.map_or(Duration::from_secs(5), |d| d.0),
            inflight: Arc::default(),
            metrics: cx.metrics.clone(),
        })
    }

    /// The request's primary key: the route's name, then the URL as it reads
    /// (`example.com/items?a=1&b=2`, what an operator purges by), then the other parts, all
    /// separated by [`SEP`], a byte no URL, header value or route name holds. So no request
    /// can make another route's key, or another part's.
    fn key(&self, req: &Request<Body>, cx: &RequestCtx) -> Vec<u8> {
        let mut k = Vec::with_capacity(128);
        k.extend(crate::store::cache::route_part(
            cx.route.as_deref().unwrap_or(""),
        ));
        k.push(SEP);
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0
                && !matches!(
                    (&self.parts[i - 1], p),
                    (KeyPart::Host, KeyPart::Path) | (KeyPart::Path, KeyPart::Query)
                )
            {
                k.push(SEP);
            }
            match p {
                KeyPart::Method => k.extend_from_slice(req.method().as_str().as_bytes()),
                KeyPart::Host => {
                    let host = req
                        .uri()
                        .authority()
                        .map(|a| a.as_str().as_bytes())
                        .or_else(|| req.headers().get(header::HOST).map(|h| h.as_bytes()))
                        .unwrap_or_default();
                    k.extend(host.iter().map(u8::to_ascii_lowercase));
                }
                KeyPart::Path => k.extend_from_slice(req.uri().path().as_bytes()),
                KeyPart::Query => {
                    if let Some(q) = req.uri().query() {
                        let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
                        // By name only, and stably: `?id=b&id=a` keeps its order of values.
                        pairs.sort_by_key(|p| p.split('=').next().unwrap_or(""));
                        if !pairs.is_empty() {
                            k.push(b'?');
                            k.extend_from_slice(pairs.join("&").as_bytes());
                        }
                    }
                }
                KeyPart::Header(h) => {
                    k.extend_from_slice(h.as_str().as_bytes());
                    k.push(b'=');
                    let mut first = true;
                    for v in req.headers().get_all(h) {
                        if !first {
                            k.push(b',');
                        }
                        first = false;
                        k.extend_from_slice(v.as_bytes());
                    }
                }
                KeyPart::Consumer => {
                    k.extend_from_slice(b"consumer=");
                    if let Some(c) = &cx.consumer {
                        // Control bytes escaped: an id can never hold the separators.
                        for b in c.id.bytes() {
                            if b < 0x20 || b == b'%' {
                                k.extend_from_slice(format!("%{b:02X}").as_bytes());
                            } else {
                                k.push(b);
                            }
                        }
                    }
                }
            }
        }
        k
    }
}

/// The request headers an answer's `Vary` lists, each once; `Err("vary-star")` for `*` or
/// anything that is not a header name (such an answer varies on what no key can hold, so it is
/// not stored).
pub(crate) fn vary_names<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Result<Vec<HeaderName>, &'static str> {
    let mut vary = Vec::new();
    for v in values {
        for n in v.to_str().unwrap_or("*").split(',') {
            let n = n.trim();
            if n.is_empty() {
                continue;
            }
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(name) if n != "*" => {
                    if !vary.contains(&name) {
                        vary.push(name)
                    }
                }
                _ => return Err("vary-star"),
            }
        }
    }
    Ok(vary)
}

/// A variant's key: the primary key, NUL (which no key part holds), the Vary marker's
/// generation, and the request's values of the headers the answer varies by (whitespace
/// around commas ignored), each after a NUL. A header
/// the request does not have is written without `=`, so that it matches only requests that
/// lack it too, not ones that send it empty (RFC 9111 4.1).
pub(crate) fn variant_key(
    primary: &[u8],
    names: &[HeaderName],
    generation: u64,
    headers: &HeaderMap,
) -> Vec<u8> {
    let mut k = primary.to_vec();
    k.push(0);
    k.extend_from_slice(format!("{generation:016x}").as_bytes());
    for n in names {
        k.push(0);
        k.extend_from_slice(n.as_str().as_bytes());
        let mut values = headers.get_all(n).iter().peekable();
        if values.peek().is_some() {
            k.push(b'=');
        }
        let mut first = true;
        for v in values {
            for part in v.as_bytes().split(|b| *b == b',') {
                if !first {
                    k.push(b',');
                }
                first = false;
                k.extend_from_slice(part.trim_ascii());
            }
        }
    }
    k
}

/// What the request hook left for the response hook.
enum Slot {
    /// Answered from the cache.
    Served,
    /// Not looked up; the `fwd` and `detail` of Cache-Status.
    Bypass(&'static str, &'static str),
    /// An unsafe method: when it succeeds, the answer stored for its key is dropped.
    Invalidate(Vec<u8>),
    /// Sent to the upstream for this key.
    Fetch(Box<Fetch>),
}

struct Fetch {
    key: Vec<u8>,
    /// The request's headers, for the variant key of an answer that has `Vary`.
    req_headers: HeaderMap,
    /// The stale answer, for a 304 from the upstream and for stale-if-error.
    stale: Option<(Vec<u8>, Arc<Entry>)>,
    /// The gateway added the conditional headers (so a 304 is for the stale answer).
    revalidating: bool,
    fwd: &'static str,
    /// The client asked with HEAD (it gets no body).
    head: bool,
    /// What went upstream was a HEAD: its answer has no body to store.
    sent_head: bool,
    /// The generation of the key's Vary marker, when one was found.
    vary_generation: Option<u64>,
    /// A background refresh: no client reads the body.
    background: bool,
    /// The fill lock for this key (in-process, and in Redis with the shared store).
    leader: Option<Leader>,
}

/// How long requests for a key whose answer could not be stored (`private`, `Set-Cookie`, an
/// error) go straight to the upstream instead of waiting for one another.
const PASS_FOR: Duration = Duration::from_secs(10);
/// Entries in the fill map past which expired pass marks are swept.
const SWEEP_AT: usize = 10_000;
/// Entries past which no pass mark is added (fills still are: they are bounded by the
/// requests in flight).
const PASS_CAP: usize = 100_000;
/// At most one sweep this often, so a flood of distinct keys does not make every miss scan.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The keys being filled in this process, and those passing through.
struct Fills {
    map: HashMap<Vec<u8>, Fill>,
    last_sweep: std::time::Instant,
}

impl Default for Fills {
    fn default() -> Self {
        Fills {
            map: HashMap::new(),
            last_sweep: std::time::Instant::now(),
        }
    }
}

enum Fill {
    /// Being filled: the value turns `true` when the answer is stored; the sender is dropped
    /// when the fill ends either way.
    Filling(watch::Receiver<bool>),
    Pass(std::time::Instant),
}

/// What a request found in the fill map.
enum Wait {
    Fill(watch::Receiver<bool>),
    Pass,
}

/// Holds a key's fill: waiters in this process subscribe to `done`; dropping it ends the fill
/// (stored or not, see [`Leader::stored`]) and releases the Redis lock, if any.
struct Leader {
    key: Vec<u8>,
    inflight: Arc<Mutex<Fills>>,
    done: watch::Sender<bool>,
    shared: Option<(Backend, u64)>,
}

impl Leader {
    /// The answer is in the store: waiters read it there.
    fn stored(&self) {
        self.done.send_replace(true);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let stored = *self.done.borrow();
        let mut fills = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Fill::Filling(rx)) = fills.map.get(&self.key)
            && rx.same_channel(&self.done.subscribe())
        {
            if stored || fills.map.len() >= PASS_CAP {
                fills.map.remove(&self.key);
            } else {
                fills.map.insert(
                    self.key.clone(),
                    Fill::Pass(std::time::Instant::now() + PASS_FOR),
                );
            }
        }
        drop(fills);
        if let Some((backend, token)) = self.shared.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let key = std::mem::take(&mut self.key);
            rt.spawn(async move { backend.unlock(&key, token).await });
        }
    }
}

/// How another instance's fill ended, for a waiter.
enum Elsewhere {
    /// The answer is in the shared cache.
    Landed,
    /// The lock is gone and no answer came (not storable there).
    Ended,
    /// The wait is over, or the store failed.
    GaveUp,
}

/// What a lookup found.
enum Found {
    None,
    /// A stored answer, under this key (the primary or a variant's).
    Entry(Vec<u8>, Arc<Entry>),
}

impl CachePolicy {
    /// Looks `key` up, following a Vary marker to the request's variant; also returns the
    /// marker's generation, when there is one.
    async fn lookup(
        &self,
        key: &[u8],
        headers: &HeaderMap,
    ) -> Result<(Found, Option<u64>), crate::store::cache::Unavailable> {
        match self.backend.get(key).await?.as_deref() {
            None => Ok((Found::None, None)),
            Some(Stored::Response(e)) => {
                Ok((Found::Entry(key.to_vec(), Arc::new(e.clone())), None))
            }
            Some(Stored::Vary(names, generation)) => {
                let vk = variant_key(key, names, *generation, headers);
                match self.backend.get(&vk).await?.as_deref() {
                    Some(Stored::Response(e)) => {
                        Ok((Found::Entry(vk, Arc::new(e.clone())), Some(*generation)))
                    }
                    _ => Ok((Found::None, Some(*generation))),
                }
            }
        }
    }

    /// Becomes the key's filler in this process, or returns the fill to wait for (or that
    /// the key's answers are not stored, so there is nothing to wait for).
    fn lead(&self, key: &[u8]) -> Result<Leader, Wait> {
        let mut fills = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match fills.map.get(key) {
            Some(Fill::Filling(rx)) => return Err(Wait::Fill(rx.clone())),
            Some(Fill::Pass(until)) if *until > now => return Err(Wait::Pass),
            _ => {}
        }
        if fills.map.len() >= SWEEP_AT && now.duration_since(fills.last_sweep) >= SWEEP_EVERY {
            fills.last_sweep = now;
            fills.map.retain(|_, f| match f {
                Fill::Filling(_) => true,
                Fill::Pass(until) => *until > now,
            });
        }
        let (tx, rx) = watch::channel(false);
        fills.map.insert(key.to_vec(), Fill::Filling(rx));
        Ok(Leader {
            key: key.to_vec(),
            inflight: self.inflight.clone(),
            done: tx,
            shared: None,
        })
    }

    fn count(&self, cx: &RequestCtx, result: &'static str) {
        self.metrics.cache(cx.route.as_ref(), result);
    }

    async fn request(&self, req: &mut Request<Body>, cx: &mut RequestCtx) -> Flow {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            if !method.is_safe() {
                // The answer for the GET key; with `method` in the key, the GET's.
                let mut probe = Request::new(Body::empty());
                *probe.uri_mut() = req.uri().clone();
                *probe.headers_mut() = req.headers().clone();
                *probe.method_mut() = Method::GET;
                cx.put(Slot::Invalidate(self.key(&probe, cx)));
            } else {
                cx.put(Slot::Bypass("method", ""));
            }
            return Flow::Continue;
        }
        if req.headers().contains_key(header::AUTHORIZATION) && !self.allow_authorization {
            self.count(cx, "bypass");
            cx.put(Slot::Bypass("bypass", "authorization"));
            return Flow::Continue;
        }
        // An authenticated request (an API key, a cookie checked by forward_auth, a client
        // certificate) may get an answer meant for its consumer only: shared only when the key
        // tells consumers apart, or the route says answers are the same for all.
        if cx.consumer.is_some()
            && !self.allow_authorization
            && !self.parts.contains(&KeyPart::Consumer)
        {
            self.count(cx, "bypass");
            cx.put(Slot::Bypass("bypass", "consumer"));
            return Flow::Continue;
        }
        // A request's own `no-store` (RFC 9111 5.2.1.5): nothing of its exchange is stored,
        // but a fresh answer already stored may serve it, so clients cannot send every request
        // through to the upstream by asking for it.
        let no_store = CacheControl::parse(req.headers().get_all(header::CACHE_CONTROL)).no_store;
        let head = method == Method::HEAD;
        let key = self.key(req, cx);
        let deadline = tokio::time::Instant::now() + self.coalesce;
        let mut collapsed = false;
        // When this request started waiting for another's fill: an answer stored since then is
        // that fill's, and serves it even if it is stale already (`no-cache`, `max-age=0`).
        let mut waited_since = None;
        let mut leader = None;
        // Bounded: each turn either answers, leads, or waits until `deadline`.
        let (found, varied) = loop {
            let (found, varied) = match self.lookup(&key, req.headers()).await {
                Ok(x) => x,
                Err(_) => {
                    self.count(cx, "bypass");
                    cx.put(Slot::Bypass("bypass", "store-unavailable"));
                    return Flow::Continue;
                }
            };
            let now = now_ms();
            if let Found::Entry(_, e) = &found
                && (fresh(e, now) || waited_since.is_some_and(|t| e.stored_ms >= t))
            {
                self.count(cx, if collapsed { "collapsed" } else { "hit" });
                cx.put(Slot::Served);
                let detail = if collapsed { "; collapsed" } else { "" };
                let status = format!("Gatehouse; hit; ttl={}{detail}", e.ttl(now));
                return respond(e, req, head, &status);
            }
            if no_store {
                // No fresh answer: to the upstream, nothing stored (RFC 9211: `stale` if one
                // is held, else `miss`).
                self.count(cx, "bypass");
                let fwd = if matches!(found, Found::Entry(..)) {
                    "stale"
                } else {
                    "miss"
                };
                cx.put(Slot::Bypass(fwd, "no-store"));
                return Flow::Continue;
            }
            if let Found::Entry(k, e) = &found
                && usable_stale(e, now, e.stale_while_revalidate)
            {
                // Served stale; one request (this one, if no fill is running) refreshes it.
                self.count(cx, "stale");
                let status = format!(
                    "Gatehouse; hit; ttl={}; detail=stale-while-revalidate",
                    e.ttl(now)
                );
                let resp = respond(e, req, head, &status);
                let Ok(l) = self.lead(&key) else {
                    // A refresh is running already.
                    cx.put(Slot::Served);
                    return resp;
                };
                let Flow::Respond(resp) = resp else {
                    return resp;
                };
                *req.method_mut() = Method::GET;
                *req.body_mut() = Body::empty();
                req.headers_mut().remove(header::IF_NONE_MATCH);
                req.headers_mut().remove(header::IF_MODIFIED_SINCE);
                let revalidating = add_validators(req.headers_mut(), e);
                cx.put(Slot::Fetch(Box::new(Fetch {
                    key: key.clone(),
                    req_headers: req.headers().clone(),
                    stale: Some((k.clone(), e.clone())),
                    revalidating,
                    fwd: "stale",
                    head: false,
                    sent_head: false,
                    vary_generation: varied,
                    background: true,
                    leader: Some(l),
                })));
                return Flow::Background(resp);
            }
            if self.coalesce.is_zero() {
                break (found, varied);
            }
            match self.lead(&key) {
                Ok(mut l) => {
                    if self.backend.is_shared() {
                        let ttl = self.coalesce.max(Duration::from_secs(1));
                        match self.backend.lock(&key, ttl).await {
                            Ok(Some(token)) => l.shared = Some((self.backend.clone(), token)),
                            Ok(None) => {
                                // Another instance fills it: read the shared cache until it
                                // lands, the lock goes, or the wait is over.
                                collapsed = true;
                                waited_since.get_or_insert_with(now_ms);
                                match self.wait_elsewhere(&key, req.headers(), deadline).await {
                                    Elsewhere::Landed => l.stored(),
                                    Elsewhere::Ended => {}
                                    Elsewhere::GaveUp => break (found, varied),
                                }
                                // Look again (this process's waiters too).
                                drop(l);
                                continue;
                            }
                            Err(_) => {}
                        }
                    }
                    leader = Some(l);
                    break (found, varied);
                }
                Err(Wait::Pass) => break (found, varied),
                Err(Wait::Fill(mut rx)) => {
                    collapsed = true;
                    waited_since.get_or_insert_with(now_ms);
                    // Wakes when the answer is stored or the fill ends without storing it.
                    let woke =
                        tokio::time::timeout_at(deadline, rx.wait_for(|stored| *stored)).await;
                    if !matches!(woke, Ok(Ok(_))) {
                        // Not stored (or too slow): to the upstream, not one by one.
                        break (found, varied);
                    }
                }
            }
        };
        let sent_head = head && leader.is_none();
        let mut fetch = Fetch {
            key,
            req_headers: req.headers().clone(),
            stale: None,
            revalidating: false,
            fwd: if varied.is_some() {
                "vary-miss"
            } else {
                "miss"
            },
            head,
            sent_head,
            vary_generation: varied,
            background: false,
            leader,
        };
        if let Found::Entry(k, e) = found {
            fetch.fwd = "stale";
            if !req.headers().contains_key(header::IF_NONE_MATCH)
                && !req.headers().contains_key(header::IF_MODIFIED_SINCE)
            {
                fetch.revalidating = add_validators(req.headers_mut(), &e);
            }
            fetch.stale = Some((k, e));
        }
        if head && fetch.leader.is_some() {
            // Fill with a GET, so the answer can be stored; the client still gets no body.
            *req.method_mut() = Method::GET;
        }
        cx.put(Slot::Fetch(Box::new(fetch)));
        Flow::Continue
    }

    /// Waits for another instance's fill of `key`, reading the shared cache.
    async fn wait_elsewhere(
        &self,
        key: &[u8],
        headers: &HeaderMap,
        deadline: tokio::time::Instant,
    ) -> Elsewhere {
        while tokio::time::Instant::now() + POLL < deadline {
            tokio::time::sleep(POLL).await;
            match self.lookup(key, headers).await {
                Ok((Found::Entry(_, e), _)) if fresh(&e, now_ms()) => return Elsewhere::Landed,
                Ok(_) => {}
                Err(_) => return Elsewhere::GaveUp,
            }
            match self.backend.locked(key).await {
                Ok(true) => {}
                Ok(false) => return Elsewhere::Ended,
                Err(_) => return Elsewhere::GaveUp,
            }
        }
        Elsewhere::GaveUp
    }

    fn response(&self, resp: &mut Response<Body>, cx: &mut RequestCtx) {
        let Some(slot) = cx.take::<Slot>() else {
            return;
        };
        let fetch = match slot {
            Slot::Served => return,
            Slot::Bypass(fwd, detail) => {
                let v = if detail.is_empty() {
                    format!("Gatehouse; fwd={fwd}")
                } else {
                    format!("Gatehouse; fwd={fwd}; detail={detail}")
                };
                set_status(resp, &v);
                return;
            }
            Slot::Invalidate(key) => {
                // Dropping the primary key drops a Vary marker with it, and so every variant
                // (their keys hold the marker's generation).
                if resp.status().is_success() || resp.status().is_redirection() {
                    let backend = self.backend.clone();
                    tokio::spawn(async move {
                        let _ = backend.remove(&key).await;
                    });
                }
                return;
            }
            Slot::Fetch(f) => f,
        };
        let mut fetch = *fetch;
        let status = resp.status();
        let now = now_ms();
        let upstream_status = resp.headers().get(&CACHE_STATUS).cloned();
        // The upstream confirmed the stale answer: renew it, and answer from it.
        if status == StatusCode::NOT_MODIFIED
            && fetch.revalidating
            && let Some((k, stale)) = fetch.stale.take()
        {
            let mut e = (*stale).clone();
            // The 304's end-to-end headers update the stored ones (RFC 9111 §4.3.4), except
            // what must never be stored or would change what the entry is for: a cookie is
            // one client's, and a new Vary would be another key.
            let updates = |n: &HeaderName| {
                !is_hop_by_hop(n)
                    && n != header::CONTENT_LENGTH
                    && n != header::AGE
                    && n != header::SET_COOKIE
                    && n != header::VARY
                    && *n != CACHE_STATUS
            };
            for n in resp.headers().keys() {
                if updates(n) {
                    e.headers.retain(|(m, _)| m != n);
                }
            }
            for (n, v) in resp.headers() {
                if updates(n) {
                    e.headers.push((n.clone(), v.clone()));
                }
            }
            let merged: HeaderMap = e.headers.iter().cloned().collect();
            if let Ok(f) = self.freshness(&merged) {
                e.stored_ms = now;
                e.initial_age = age_header(resp.headers());
                e.fresh_for = f.fresh_for;
                e.stale_while_revalidate = f.swr;
                e.stale_if_error = f.sie;
                e.must_revalidate = f.must_revalidate;
                self.store(k, Stored::Response(e.clone()), fetch.leader.take());
            }
            self.count(cx, "revalidated");
            // This client's cookie, if the 304 set one, goes to this client only.
            let cookies: Vec<HeaderValue> = resp
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            let mut req = Request::new(Body::empty());
            *req.headers_mut() = std::mem::take(&mut fetch.req_headers);
            let fresh = format!("Gatehouse; fwd=stale; fwd-status=304; ttl={}", e.ttl(now));
            if let Flow::Respond(r) = respond(&e, &req, fetch.head, &fresh) {
                *resp = *r;
                for c in cookies {
                    resp.headers_mut().append(header::SET_COOKIE, c);
                }
            }
            return;
        }
        // The upstream failed: a stale answer still within stale-if-error replaces the error.
        if matches!(status.as_u16(), 500 | 502 | 503 | 504)
            && let Some((_, stale)) = &fetch.stale
            && usable_stale(stale, now, stale.stale_if_error.max(self.sie))
        {
            self.count(cx, "stale_if_error");
            let mut req = Request::new(Body::empty());
            *req.headers_mut() = std::mem::take(&mut fetch.req_headers);
            let v = format!(
                "Gatehouse; fwd=stale; fwd-status={}; ttl={}; detail=stale-if-error",
                status.as_u16(),
                stale.ttl(now)
            );
            if let Flow::Respond(r) = respond(stale, &req, fetch.head, &v) {
                *resp = *r;
            }
            return;
        }
        self.count(cx, "miss");
        let why = self.storable(&fetch, resp);
        let mut v = format!("Gatehouse; fwd={}", fetch.fwd);
        if fetch.fwd == "stale" {
            v.push_str(&format!("; fwd-status={}", status.as_u16()));
        }
        match why {
            Err(detail) => {
                if !detail.is_empty() {
                    v.push_str("; detail=");
                    v.push_str(detail);
                }
                set_status(resp, &v);
            }
            Ok(plan) => {
                v.push_str("; stored");
                set_status(resp, &v);
                self.tee(resp, fetch, plan, upstream_status);
            }
        }
    }

    /// Whether the answer may be stored, and how (its freshness and key); or why not.
    fn storable(&self, fetch: &Fetch, resp: &Response<Body>) -> Result<Plan, &'static str> {
        let h = resp.headers();
        if fetch.sent_head {
            // The answer to a HEAD has no body to store.
            return Err("method");
        }
        if !self.statuses.contains(&resp.status().as_u16()) {
            return Err("status");
        }
        if h.contains_key(header::SET_COOKIE) {
            return Err("set-cookie");
        }
        let vary = vary_names(h.get_all(header::VARY))?;
        let f = self.freshness(h)?;
        if h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > self.max_object)
        {
            return Err("too-large");
        }
        let has_validator = h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED);
        if f.fresh_for == 0 && f.swr == 0 && f.sie == 0 && !has_validator {
            return Err("not-fresh");
        }
        // Variants go under the key's marker generation (a new one when there is no marker).
        let generation = fetch.vary_generation.unwrap_or_else(|| fastrand::u64(..));
        let key = if vary.is_empty() {
            fetch.key.clone()
        } else {
            variant_key(&fetch.key, &vary, generation, &fetch.req_headers)
        };
        Ok(Plan {
            key,
            vary,
            generation,
            f,
        })
    }

    /// The answer's freshness from its headers; or why it must not be stored (`no-store`,
    /// `private`).
    fn freshness(&self, h: &HeaderMap) -> Result<Fresh, &'static str> {
        let mut f = Fresh {
            fresh_for: self.ttl,
            swr: self.swr,
            sie: self.sie,
            must_revalidate: false,
        };
        let cc = CacheControl::parse(h.get_all(header::CACHE_CONTROL));
        if cc.no_store {
            return Err("no-store");
        }
        if cc.private {
            return Err("private");
        }
        // `no-cache`: stored, but checked before every use; `s-maxage` implies
        // `proxy-revalidate`.
        f.must_revalidate = cc.must_revalidate || cc.no_cache || cc.s_maxage.is_some();
        f.swr = cc.stale_while_revalidate.unwrap_or(f.swr);
        f.sie = cc.stale_if_error.unwrap_or(f.sie);
        let explicit = cc.shared_max_age().or_else(|| expires(h));
        if !self.force_ttl
            && let Some(e) = explicit
        {
            f.fresh_for = e;
        }
        if f.must_revalidate {
            f.swr = 0;
            f.sie = 0;
        }
        Ok(f)
    }

    /// Streams the answer to the client and stores a copy when it ends complete and within
    /// `max_object_size`; the fill lock is held until then.
    fn tee(
        &self,
        resp: &mut Response<Body>,
        fetch: Fetch,
        plan: Plan,
        upstream_status: Option<HeaderValue>,
    ) {
        // The upstream's own Cache-Status (a cache behind this one) is kept; this cache's
        // member is added to it on each answer.
        let mut headers: Vec<(HeaderName, HeaderValue)> = resp
            .headers()
            .iter()
            .filter(|(n, _)| !is_hop_by_hop(n) && *n != header::AGE && *n != CACHE_STATUS)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        if let Some(v) = upstream_status {
            headers.push((CACHE_STATUS.clone(), v));
        }
        let entry = Entry {
            status: resp.status(),
            headers,
            body: Bytes::new(),
            stored_ms: now_ms(),
            initial_age: age_header(resp.headers()),
            fresh_for: plan.f.fresh_for,
            stale_while_revalidate: plan.f.swr,
            stale_if_error: plan.f.sie,
            must_revalidate: plan.f.must_revalidate,
        };
        let this = Filler {
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
            primary: fetch.key,
            plan,
            entry,
            leader: fetch.leader,
        };
        // The declared length, or the body's own exact size (a gateway-made body, whose
        // length the server writes from it).
        let expected = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| http_body::Body::size_hint(resp.body()).exact());
        if expected == Some(0) {
            // Nothing to copy (and an empty body may never be polled).
            this.finish(Bytes::new());
            return;
        }
        let inner = std::mem::replace(resp.body_mut(), Body::empty());
        if let Some(n) = expected.filter(|n| *n <= self.max_object) {
            // A body of known size that fits: read whole by a task of its own (as nginx's
            // proxy buffering does), stored, then sent. The fill, and the requests waiting on
            // it, never wait for a slow client; a client that leaves does not end the fill.
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                use http_body_util::BodyExt;
                let read = tokio::time::timeout(FILL_READ, inner.collect()).await;
                let got = match read {
                    Ok(Ok(c)) if c.trailers().is_none() => {
                        let b = c.to_bytes();
                        if b.len() as u64 == n {
                            this.finish(b.clone());
                        }
                        Ok(b)
                    }
                    Ok(Ok(c)) => Ok(c.to_bytes()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(BoxError::from("the upstream's answer did not end in time")),
                };
                let _ = tx.send(got);
            });
            if !fetch.head {
                *resp.body_mut() = Body::Upstream(Box::pin(Buffered {
                    rx: Some(rx),
                    size: n,
                }));
            }
            return;
        }
        *resp.body_mut() = Body::Upstream(Box::pin(TeeBody {
            inner,
            expected,
            buf: BytesMut::new(),
            limit: self.max_object,
            filler: Some(this),
            detached: fetch.head || fetch.background,
        }));
        if fetch.head {
            // A HEAD filled with a GET: the client gets the headers only. The body is still
            // read (and stored) by the filler's task.
            let body = std::mem::replace(resp.body_mut(), Body::empty());
            tokio::spawn(drain(body));
        }
    }

    fn store(&self, key: Vec<u8>, value: Stored, leader: Option<Leader>) {
        let backend = self.backend.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Stored::Response(e) = &value {
                metrics.cache_stored(e.weight());
            }
            if backend.put(&key, value).await.is_ok()
                && let Some(l) = &leader
            {
                l.stored();
            }
            drop(leader);
        });
    }
}

struct Plan {
    key: Vec<u8>,
    vary: Vec<HeaderName>,
    generation: u64,
    f: Fresh,
}

#[derive(Clone, Copy)]
struct Fresh {
    fresh_for: u64,
    swr: u64,
    sie: u64,
    must_revalidate: bool,
}

/// Stores the answer once its body is complete.
struct Filler {
    backend: Backend,
    metrics: Arc<Metrics>,
    primary: Vec<u8>,
    plan: Plan,
    entry: Entry,
    leader: Option<Leader>,
}

impl Filler {
    fn finish(mut self, body: Bytes) {
        // The stored length is the body's, whatever framing it came with.
        self.entry
            .headers
            .retain(|(n, _)| n != header::CONTENT_LENGTH);
        self.entry
            .headers
            .push((header::CONTENT_LENGTH, HeaderValue::from(body.len())));
        self.entry.body = body;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            self.metrics.cache_stored(self.entry.weight());
            if !self.plan.vary.is_empty() {
                let _ = self
                    .backend
                    .put(
                        &self.primary,
                        Stored::Vary(self.plan.vary.clone(), self.plan.generation),
                    )
                    .await;
            }
            let stored = self
                .backend
                .put(&self.plan.key, Stored::Response(self.entry))
                .await;
            // Waiters look again only now that the answer is in the store.
            if stored.is_ok()
                && let Some(l) = &self.leader
            {
                l.stored();
            }
            drop(self.leader);
        });
    }
}

/// Longest a fill reads an answer it buffers.
const FILL_READ: Duration = Duration::from_secs(60);

/// A body read whole by a fill task: sent when it has arrived.
struct Buffered {
    rx: Option<tokio::sync::oneshot::Receiver<Result<Bytes, BoxError>>>,
    size: u64,
}

impl http_body::Body for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let got = match Pin::new(rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.rx = None;
        Poll::Ready(Some(match got {
            Ok(Ok(b)) => Ok(Frame::data(b)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BoxError::from("the fill ended without an answer")),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.size)
    }
}

/// The upstream body, passed through frame by frame, with a copy kept for the cache.
struct TeeBody {
    inner: Body,
    /// The declared length: the copy is complete when it is reached (the server stops
    /// polling a body once its length is written, so the end may never be seen).
    expected: Option<u64>,
    buf: BytesMut,
    limit: u64,
    /// Taken when the copy is stored or abandoned (too large, error, trailers).
    filler: Option<Filler>,
    /// No client reads this body (a HEAD filled with a GET, a background refresh): once the
    /// copy is stored or abandoned, the rest is not read.
    detached: bool,
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.detached && this.filler.is_none() {
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if this.filler.is_some() {
                        if (this.buf.len() + d.len()) as u64 > this.limit {
                            this.filler = None;
                            this.buf = BytesMut::new();
                        } else {
                            this.buf.extend_from_slice(d);
                            if this.expected == Some(this.buf.len() as u64)
                                && let Some(f) = this.filler.take()
                            {
                                f.finish(std::mem::take(&mut this.buf).freeze());
                            }
                        }
                    }
                } else {
                    // Trailers are not stored: an answer without them would be incomplete.
                    this.filler = None;
                }
            }
            Poll::Ready(Some(Err(_))) => this.filler = None,
            Poll::Ready(None) => {
                if let Some(f) = this.filler.take()
                    && this.expected.is_none_or(|n| n == this.buf.len() as u64)
                {
                    f.finish(std::mem::take(&mut this.buf).freeze());
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        // While copying, never claimed early: the end must be polled to store the copy.
        self.filler.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a body to its end (a background refresh, a HEAD filled with a GET), bounded by the
/// body's own timeouts and a minute.
pub async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

fn fresh(e: &Entry, now: u64) -> bool {
    e.ttl(now) > 0
}

/// Stale, but within `window` seconds past its freshness, and allowed to be served stale.
fn usable_stale(e: &Entry, now: u64, window: u64) -> bool {
    let ttl = e.ttl(now);
    ttl <= 0 && !e.must_revalidate && (-ttl) < window as i64
}

/// The upstream's `Age`, at most 2^31 (a longer run of digits counts as that).
fn age_header(h: &HeaderMap) -> u64 {
    let Some(v) = h.get(header::AGE).and_then(|v| v.to_str().ok()) else {
        return 0;
    };
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(n) => n.min(MAX_DELTA),
        Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => MAX_DELTA,
        Err(_) => 0,
    }
}

fn expires(h: &HeaderMap) -> Option<u64> {
    let exp = h.get(header::EXPIRES)?.to_str().ok()?;
    // An invalid date (such as "0") means already expired.
    let Ok(exp) = httpdate::parse_http_date(exp) else {
        return Some(0);
    };
    let base = h
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    Some(exp.duration_since(base).map_or(0, |d| d.as_secs()))
}

/// Adds the stored answer's validators to a request that revalidates it.
fn add_validators(h: &mut HeaderMap, e: &Entry) -> bool {
    let mut added = false;
    if let Some(etag) = e.header(&header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
        added = true;
    }
    if let Some(lm) = e.header(&header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
        added = true;
    }
    added
}

/// Adds this cache's member to `Cache-Status` (RFC 9211 §2: after the members of the caches
/// nearer the origin).
fn set_status(resp: &mut Response<Body>, v: &str) {
    add_status(resp.headers_mut(), v);
}

fn add_status(h: &mut HeaderMap, v: &str) {
    let combined = match h.get(&CACHE_STATUS).and_then(|e| e.to_str().ok()) {
        Some(e) if !e.trim().is_empty() => format!("{e}, {v}"),
        _ => v.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&combined) {
        h.insert(CACHE_STATUS.clone(), v);
    }
}

/// Whether a client's conditional request matches the stored answer (RFC 9110 §13.2.2:
/// `If-None-Match` first, weak comparison; `If-Modified-Since` only without it).
fn not_modified(req: &HeaderMap, e: &Entry) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH) {
        let Some(etag) = e.header(&header::ETAG) else {
            return false;
        };
        let weak = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
        let ours = weak(etag.as_bytes().trim_ascii());
        return inm.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || weak(t) == ours
        });
    }
    if let Some(ims) = req.get(header::IF_MODIFIED_SINCE)
        && let Some(lm) = e.header(&header::LAST_MODIFIED)
        && let (Some(ims), Some(lm)) = (
            ims.to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok()),
            lm.to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok()),
        )
    {
        return lm <= ims;
    }
    false
}

/// The client's answer from a stored one: the whole answer with `Age` (no body for HEAD), or
/// 304 when its conditional matches.
fn respond<B>(e: &Entry, req: &Request<B>, head: bool, cache_status: &str) -> Flow {
    let now = now_ms();
    let mut b = Response::builder();
    let not_mod = e.status == StatusCode::OK && not_modified(req.headers(), e);
    let Some(h) = b.headers_mut() else {
        return Flow::Continue;
    };
    for (n, v) in &e.headers {
        if not_mod
            && !matches!(
                n.as_str(),
                "cache-control"
                    | "content-location"
                    | "date"
                    | "etag"
                    | "expires"
                    | "vary"
                    | "last-modified"
            )
        {
            continue;
        }
        h.append(n.clone(), v.clone());
    }
    h.insert(header::AGE, HeaderValue::from(e.age(now)));
    add_status(h, cache_status);
    let (status, body) = if not_mod {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else if head {
        (e.status, Body::empty())
    } else {
        (e.status, Body::full(e.body.clone()))
    };
    match b.status(status).body(body) {
        Ok(r) => Flow::Respond(Box::new(r)),
        Err(_) => Flow::Continue,
    }
}

impl Policy for CachePolicy {
    fn kind(&self) -> &'static str {
        "cache"
    }

    fn phase(&self) -> Phase {
        Phase::Cache
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        Step::Wait(Box::pin(async move { Ok(self.request(req, cx).await) }))
    }

    fn on_response<'a>(
        &'a self,
        resp: &'a mut Response<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, ()> {
        self.response(resp, cx);
        Step::Done(Ok::<(), GatewayError>(()))
    }
}

//! Aggregation: one client request answered by several upstream calls, composed into one JSON
//! document. The calls form a dependency graph (a call that uses `{user.address_id}` waits for
//! `user`); every call whose dependencies are done starts at once, so independent calls run
//! concurrently. Each call goes through [`crate::upstream::send`] (balancing, health, retries,
//! the upstream's timeouts), with its own timeout, under the route's overall deadline.
//!
//! A required call that fails fails the request (502, or 504 for a timeout; 400 when the
//! client's own value cannot be put in the call), naming the call; an optional one is left out
//! of the document, named under `_errors`, and the answer carries `X-Gatehouse-Degraded`.

pub mod compose;
pub mod template;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use crate::body::{Body, Tally};
use crate::context::{Consumer, Downstream};
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;
use crate::store::cache::CacheControl;
use crate::upstream::Upstream;
use compose::Shape;
use template::{Ref, Template};

pub static DEGRADED: HeaderName = HeaderName::from_static("x-gatehouse-degraded");

/// A composite route's plan, compiled once.
pub struct Aggregate {
    /// In the order the config lists them (the order answers merge in).
    pub calls: Vec<CallPlan>,
    /// The whole request's deadline.
    pub deadline: Duration,
}

pub struct CallPlan {
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub method: Method,
    /// The `path` as written (for `explain` and the admin API).
    pub source: String,
    pub path: Template,
    pub query: Option<Template>,
    pub headers: Vec<(HeaderName, Template)>,
    pub forward: Vec<HeaderName>,
    pub timeout: Option<Duration>,
    pub required: bool,
    /// The calls whose answers this one's templates use.
    pub deps: Vec<usize>,
    pub shape: Shape,
    pub merge: bool,
    pub max_body: u64,
    /// Keep answers in the store, fresh this long unless they say otherwise.
    pub cache_ttl: Option<u64>,
    /// What an optional call's failure puts in its place.
    pub default: Option<Value>,
}

/// Why a call has no answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The upstream could not be reached or failed (the gateway's own error for it).
    Upstream {
        timeout: bool,
        message: String,
    },
    Timeout(Duration),
    Status(u16),
    NotJson,
    TooLarge(u64),
    /// A call it needs failed.
    Dependency(Arc<str>),
    /// A value could not be put in the call; `client`: it was the client's.
    Value {
        client: bool,
        message: String,
    },
    /// The route's deadline passed first.
    Deadline,
}

impl CallError {
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Upstream { timeout: true, .. } | CallError::Timeout(_) => "timeout",
            CallError::Upstream { .. } => "upstream_error",
            CallError::Status(_) => "bad_status",
            CallError::NotJson => "not_json",
            CallError::TooLarge(_) => "too_large",
            CallError::Dependency(_) => "dependency_failed",
            CallError::Value { .. } => "bad_value",
            CallError::Deadline => "deadline",
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::Upstream { message, .. } => message.clone(),
            CallError::Timeout(d) => format!("no answer within {d:?}"),
            CallError::Status(s) => format!("the upstream answered {s}"),
            CallError::NotJson => "the answer is not JSON".to_owned(),
            CallError::TooLarge(n) => format!("the answer is larger than {n} bytes"),
            CallError::Dependency(d) => format!("it needs the call {d:?}, which failed"),
            CallError::Value { message, .. } => message.clone(),
            CallError::Deadline => "the route's deadline passed first".to_owned(),
        }
    }

    /// The status a request failed by this call gets.
    pub fn status(&self) -> StatusCode {
        match self {
            CallError::Upstream { timeout: true, .. }
            | CallError::Timeout(_)
            | CallError::Deadline => StatusCode::GATEWAY_TIMEOUT,
            CallError::Value { client: true, .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// One call as the access log shows it: `user:200:12ms`, `orders:timeout:300ms`.
pub struct CallRecord {
    pub name: Arc<str>,
    pub outcome: String,
    pub took: Duration,
}

/// What a request brings to its calls.
pub struct Inputs<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    pub params: &'a [(String, String)],
    pub consumer: Option<&'a Consumer>,
    pub route: &'a Arc<str>,
    pub down: &'a Downstream<'a>,
    pub request_id: &'a HeaderValue,
    pub traceparent: Option<&'a HeaderValue>,
    pub body_timeout: Duration,
    pub tally: &'a Tally,
    pub metrics: &'a Metrics,
    /// Where calls with `cache:` keep their answers.
    pub cache: &'a crate::store::cache::Backend,
    /// Adds the forwarding headers (`X-Forwarded-*`, `X-Request-Id`, `Via`) to a call, as
    /// the proxy does to a forwarded request.
    pub forwarding: &'a (dyn Fn(&mut Request<Body>) + Sync),
}

struct Done {
    value: Value,
    cache_control: Option<HeaderValue>,
    /// Served from the store.
    cached: bool,
    /// How old the answer is already (its `Age`, or its age in the store), in seconds.
    age: u64,
}

/// Runs the plan and composes the answer.
pub async fn run(
    agg: &Aggregate,
    input: &Inputs<'_>,
    records: &mut Vec<CallRecord>,
) -> Result<Response<Body>, GatewayError> {
    let n = agg.calls.len();
    let deadline = tokio::time::Instant::now() + agg.deadline;
    let mut results: Vec<Option<Result<Done, CallError>>> = (0..n).map(|_| None).collect();
    let mut started = vec![false; n];
    let mut running = FuturesUnordered::new();
    // Bounded: every turn starts at least one call or finishes one; there are `n`.
    loop {
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                let plan = &agg.calls[i];
                if started[i] || plan.deps.iter().any(|d| results[*d].is_none()) {
                    continue;
                }
                started[i] = true;
                if let Some(d) = plan
                    .deps
                    .iter()
                    .find(|d| matches!(results[**d], Some(Err(_))))
                {
                    results[i] = Some(Err(CallError::Dependency(agg.calls[*d].name.clone())));
                    progressed = true;
                    continue;
                }
                match build(plan, input, &results) {
                    Ok((req, path)) => running.push(async move {
                        (i, Instant::now(), call(plan, req, path, input).await)
                    }),
                    Err(e) => {
                        results[i] = Some(Err(e));
                        progressed = true;
                    }
                }
            }
        }
        if let Some(failed) = first_required_failure(agg, &results) {
            return Err(fail(agg, failed, &results));
        }
        if running.is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, running.next()).await {
            Ok(Some((i, t0, r))) => {
                let took = t0.elapsed();
                let plan = &agg.calls[i];
                let outcome = match &r {
                    Ok(d) if d.cached => "cache_hit",
                    Ok(_) => "ok",
                    Err(e) => e.kind(),
                };
                input
                    .metrics
                    .aggregate_call(input.route, &plan.name, outcome, took);
                records.push(CallRecord {
                    name: plan.name.clone(),
                    outcome: outcome.to_owned(),
                    took,
                });
                results[i] = Some(r);
            }
            Ok(None) => break,
            Err(_) => {
                // The deadline: every call still out is failed by it.
                for (i, r) in results.iter_mut().enumerate() {
                    if r.is_none() {
                        *r = Some(Err(CallError::Deadline));
                        records.push(CallRecord {
                            name: agg.calls[i].name.clone(),
                            outcome: "deadline".to_owned(),
                            took: agg.deadline,
                        });
                        input.metrics.aggregate_call(
                            input.route,
                            &agg.calls[i].name,
                            "deadline",
                            agg.deadline,
                        );
                    }
                }
                break;
            }
        }
    }
    drop(running);
    if let Some(failed) = first_required_failure(agg, &results) {
        return Err(fail(agg, failed, &results));
    }
    Ok(compose_answer(agg, results))
}

/// The call graph, one line per call in the order they can start (each after the calls it
/// needs): `address: GET geo /addresses/{user.address_id}, after user; optional; timeout 300ms`.
pub fn describe(agg: &Aggregate) -> Vec<String> {
    let mut order: Vec<usize> = Vec::new();
    // Bounded: each pass places at least one call (the graph has no cycle).
    for _ in 0..agg.calls.len() {
        for (i, c) in agg.calls.iter().enumerate() {
            if !order.contains(&i) && c.deps.iter().all(|d| order.contains(d)) {
                order.push(i);
            }
        }
    }
    order
        .iter()
        .map(|&i| {
            let c = &agg.calls[i];
            let mut s = format!("{}: {} {} {}", c.name, c.method, c.upstream.name, c.source);
            if !c.deps.is_empty() {
                let after: Vec<&str> = c.deps.iter().map(|d| &*agg.calls[*d].name).collect();
                s.push_str(&format!(", after {}", after.join(" and ")));
            } else {
                s.push_str(", at once");
            }
            if !c.required {
                s.push_str("; optional");
            }
            if let Some(t) = c.timeout {
                s.push_str(&format!("; timeout {t:?}"));
            }
            if c.merge {
                s.push_str("; merged into the root");
            }
            s
        })
        .collect()
}

fn first_required_failure(
    agg: &Aggregate,
    results: &[Option<Result<Done, CallError>>],
) -> Option<usize> {
    (0..agg.calls.len()).find(|i| agg.calls[*i].required && matches!(results[*i], Some(Err(_))))
}

/// The request's error for a failed required call. A dependency failure names the call that
/// failed first (the root cause).
fn fail(
    agg: &Aggregate,
    mut i: usize,
    results: &[Option<Result<Done, CallError>>],
) -> GatewayError {
    // Bounded by the number of calls: each step goes to an earlier failure.
    for _ in 0..agg.calls.len() {
        match &results[i] {
            Some(Err(CallError::Dependency(d))) => {
                match agg.calls.iter().position(|c| c.name == *d) {
                    Some(j) => i = j,
                    None => break,
                }
            }
            _ => break,
        }
    }
    let e = match &results[i] {
        Some(Err(e)) => e.clone(),
        _ => CallError::Deadline,
    };
    GatewayError::AggregateCall {
        call: agg.calls[i].name.to_string(),
        status: e.status(),
        kind: e.kind(),
        message: e.message(),
    }
}

/// The call's request: its path and query rendered, its headers set and forwarded.
fn build(
    plan: &CallPlan,
    input: &Inputs<'_>,
    results: &[Option<Result<Done, CallError>>],
) -> Result<(Request<Body>, http::uri::PathAndQuery), CallError> {
    let mut lookup = |r: &Ref| -> Option<String> {
        match r {
            Ref::Param(p) => input
                .params
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| template::decode(v, false)),
            Ref::Query(q) => input.query.and_then(|qs| {
                qs.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (template::decode(k, true) == *q).then(|| template::decode(v, true))
                })
            }),
            Ref::Header(h) => input
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Ref::ConsumerId => input.consumer.map(|c| c.id.to_string()),
            Ref::Claim(path) => input.consumer.and_then(|c| {
                let (first, rest) = path.split_first()?;
                template::field(c.claims.get(first)?, rest).and_then(template::json_text)
            }),
            Ref::Call(i, path) => match &results[*i] {
                Some(Ok(d)) => template::field(&d.value, path).and_then(template::json_text),
                _ => None,
            },
        }
    };
    let bad = |t: &Template, message: String| CallError::Value {
        // A value from another call's answer is the upstream's doing, not the client's.
        client: t.deps().next().is_none(),
        message,
    };
    let mut pq = plan
        .path
        .render(&mut lookup)
        .map_err(|m| bad(&plan.path, m))?;
    if let Some(q) = &plan.query {
        let rendered = q.render(&mut lookup).map_err(|m| bad(q, m))?;
        if !rendered.is_empty() {
            pq.push('?');
            pq.push_str(&rendered);
        }
    }
    let path = http::uri::PathAndQuery::try_from(pq.as_str()).map_err(|_| CallError::Value {
        client: false,
        message: "the call's path is not valid".to_owned(),
    })?;
    let mut req = Request::new(Body::empty());
    *req.method_mut() = plan.method.clone();
    let h = req.headers_mut();
    for name in &plan.forward {
        for v in input.headers.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    for (name, t) in &plan.headers {
        let v = t.render(&mut lookup).map_err(|m| bad(t, m))?;
        let v = HeaderValue::from_str(&v).map_err(|_| CallError::Value {
            client: t.deps().next().is_none(),
            message: format!("header {name} cannot hold the value"),
        })?;
        h.insert(name.clone(), v);
    }
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(tp) = input.traceparent {
        h.insert(crate::observe::trace::TRACEPARENT.clone(), tp.clone());
    }
    (input.forwarding)(&mut req);
    Ok((req, path))
}

/// One call: sent through the upstream's `send`, its answer read (up to `max_body`) and
/// parsed.
async fn call(
    plan: &CallPlan,
    req: Request<Body>,
    path: http::uri::PathAndQuery,
    input: &Inputs<'_>,
) -> Result<Done, CallError> {
    let key = plan.cache_ttl.map(|_| cache_key(plan, &req, &path));
    if let Some(k) = &key
        && let Ok(Some(stored)) = input.cache.get(k).await
        && let crate::store::cache::Stored::Response(e) = &*stored
        && e.ttl(crate::store::cache::now_ms()) > 0
        && let Ok(value) = parse_json(&e.body)
    {
        return Ok(Done {
            value,
            cache_control: e.header(&header::CACHE_CONTROL).cloned(),
            cached: true,
            age: e.age(crate::store::cache::now_ms()),
        });
    }
    let done = fetch(plan, req, path, input).await?;
    if let (Some(k), Some(ttl)) = (key, plan.cache_ttl) {
        keep(input.cache, k, &done, ttl);
    }
    Ok(done.0)
}

/// A cached call's key: the upstream, method, path and query, and the headers the call sends
/// that its configuration chose (forwarded or set), which may change the answer.
fn cache_key(plan: &CallPlan, req: &Request<Body>, path: &http::uri::PathAndQuery) -> Vec<u8> {
    use sha2::Digest;
    // The route part (before the separator) is `aggregate:` and the upstream: no route's
    // cache key starts so (a route's part is its name, which cannot hold the separator, and
    // names with `aggregate:` are refused). The headers chosen (credentials among them) are
    // hashed, length-prefixed, never kept as they are.
    let mut k = format!("aggregate:{}", plan.upstream.name).into_bytes();
    k.push(crate::store::cache::SEP);
    k.extend_from_slice(format!("{} {}", plan.method, path).as_bytes());
    let mut h = sha2::Sha256::new();
    let chosen = plan
        .forward
        .iter()
        .chain(plan.headers.iter().map(|(n, _)| n));
    for name in chosen {
        for v in req.headers().get_all(name) {
            h.update((name.as_str().len() as u64).to_le_bytes());
            h.update(name.as_str().as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    k.push(crate::store::cache::SEP);
    for b in h.finalize().iter().take(16) {
        k.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    k
}

/// Stores a call's answer unless it says not to (`no-store`, `private`); fresh for its
/// `s-maxage` or `max-age`, else `ttl`.
fn keep(cache: &crate::store::cache::Backend, key: Vec<u8>, done: &(Done, Bytes, u64), ttl: u64) {
    let (d, body, age) = done;
    let cc = CacheControl::parse(d.cache_control.iter());
    if cc.no_store || cc.private {
        return;
    }
    let fresh_for = cc.shared_max_age().unwrap_or(ttl);
    if fresh_for <= *age {
        return;
    }
    let entry = crate::store::cache::Entry {
        status: StatusCode::OK,
        headers: d
            .cache_control
            .iter()
            .map(|v| (header::CACHE_CONTROL, v.clone()))
            .collect(),
        body: body.clone(),
        stored_ms: crate::store::cache::now_ms(),
        initial_age: *age,
        fresh_for,
        stale_while_revalidate: 0,
        stale_if_error: 0,
        must_revalidate: false,
    };
    let cache = cache.clone();
    tokio::spawn(async move {
        let _ = cache
            .put(&key, crate::store::cache::Stored::Response(entry))
            .await;
    });
}

/// Sends the call and reads its answer: the parsed answer, its bytes and its `Age`.
async fn fetch(
    plan: &CallPlan,
    req: Request<Body>,
    path: http::uri::PathAndQuery,
    input: &Inputs<'_>,
) -> Result<(Done, Bytes, u64), CallError> {
    let work = async {
        let c = crate::upstream::Call {
            path,
            down: input.down,
            key: None,
            retry_non_idempotent: false,
            max_body_size: None,
            body_timeout: input.body_timeout,
            tally: input.tally,
            metrics: input.metrics,
        };
        let (resp, slot) = crate::upstream::send(&plan.upstream, req, None, &c, &mut |_| {})
            .await
            .map_err(|e| {
                tracing::debug!(call = %plan.name, error = %e, "aggregate call failed");
                CallError::Upstream {
                    timeout: matches!(e, GatewayError::UpstreamTimeout(_)),
                    message: e.public_message(),
                }
            })?;
        let status = resp.status();
        let cache_control = resp.headers().get(header::CACHE_CONTROL).cloned();
        let age = resp
            .headers()
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > plan.max_body) {
            return Err(CallError::TooLarge(plan.max_body));
        }
        let body = http_body_util::Limited::new(resp.into_body(), plan.max_body as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CallError::TooLarge(plan.max_body)
                } else {
                    tracing::debug!(call = %plan.name, error = %e, "reading an aggregate call's answer failed");
                    CallError::Upstream {
                        timeout: false,
                        message: "reading the answer failed".to_owned(),
                    }
                }
            })?
            .to_bytes();
        drop(slot);
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16()));
        }
        let value = parse_json(&body)?;
        Ok((
            Done {
                value,
                cache_control,
                cached: false,
                age,
            },
            body,
            age,
        ))
    };
    match plan.timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(CallError::Timeout(t))),
        None => work.await,
    }
}

fn parse_json(body: &Bytes) -> Result<Value, CallError> {
    serde_json::from_slice(body).map_err(|_| CallError::NotJson)
}

/// The document: each answer shaped and placed in config order; optional failures under
/// `_errors`; `Cache-Control` no longer than the shortest part's.
fn compose_answer(
    agg: &Aggregate,
    results: Vec<Option<Result<Done, CallError>>>,
) -> Response<Body> {
    let mut doc = Map::new();
    let mut errors = Map::new();
    let mut degraded: Vec<&str> = Vec::new();
    let mut freshness = Freshness::default();
    for (plan, r) in agg.calls.iter().zip(results) {
        let r = r.unwrap_or(Err(CallError::Deadline));
        let shaped = r.and_then(|d| {
            freshness.add(d.cache_control.as_ref(), d.age);
            plan.shape.apply(d.value).map_err(|m| CallError::Value {
                client: false,
                message: m,
            })
        });
        match shaped {
            Ok(v) => {
                compose::place(&mut doc, &plan.name, v, plan.merge);
            }
            Err(e) => {
                if let Some(d) = &plan.default {
                    compose::place(&mut doc, &plan.name, d.clone(), plan.merge);
                }
                degraded.push(&plan.name);
                errors.insert(
                    plan.name.to_string(),
                    serde_json::json!({"error": e.kind(), "message": e.message()}),
                );
            }
        }
    }
    if !errors.is_empty() {
        doc.insert("_errors".to_owned(), Value::Object(errors));
    }
    let body = serde_json::to_vec(&Value::Object(doc)).unwrap_or_default();
    let mut resp = Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !degraded.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&degraded.join(", ")) {
            h.insert(DEGRADED.clone(), v);
        }
        // A partial answer is not kept by caches.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else if let Some(cc) = freshness.header() {
        h.insert(header::CACHE_CONTROL, cc);
    }
    resp
}

/// The composite's freshness: the strictest of its parts.
#[derive(Default)]
struct Freshness {
    no_store: bool,
    private: bool,
    max_age: Option<u64>,
}

impl Freshness {
    /// One part: its `Cache-Control`, and how old it is already (what is left of its
    /// freshness is what counts).
    fn add(&mut self, cc: Option<&HeaderValue>, age: u64) {
        let cc = CacheControl::parse(cc);
        self.no_store |= cc.no_store;
        self.private |= cc.private;
        if let Some(a) = cc.shared_max_age() {
            let left = a.saturating_sub(age);
            self.max_age = Some(self.max_age.map_or(left, |m| m.min(left)));
        }
    }

    fn header(&self) -> Option<HeaderValue> {
        if self.no_store {
            return Some(HeaderValue::from_static("no-store"));
        }
        let v = match (self.max_age, self.private) {
            (Some(age), true) => format!("private, max-age={age}"),
            (Some(age), false) => format!("max-age={age}"),
            (None, true) => "private".to_owned(),
            (None, false) => return None,
        };
        HeaderValue::from_str(&v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_the_strictest_part() {
        let cc = HeaderValue::from_static;
        let mut f = Freshness::default();
        f.add(Some(&cc("max-age=60")), 0);
        f.add(Some(&cc("public, s-maxage=20, max-age=300")), 0);
        f.add(None, 0);
        assert_eq!(f.header().unwrap(), "max-age=20");
        // What is left of an older part's freshness counts.
        f.add(Some(&cc("max-age=30")), 25);
        assert_eq!(f.header().unwrap(), "max-age=5");
        f.add(Some(&cc("private, max-age=100")), 0);
        assert_eq!(f.header().unwrap(), "private, max-age=5");
        f.add(Some(&cc("no-store")), 0);
        assert_eq!(f.header().unwrap(), "no-store");
        assert!(Freshness::default().header().is_none());
        let mut p = Freshness::default();
        p.add(Some(&cc("private")), 0);
        assert_eq!(
            p.header().unwrap(),
            "private",
            "private stays without a max-age"
        );
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(CallError::Timeout(Duration::from_secs(1)).status(), 504);
        assert_eq!(CallError::Deadline.status(), 504);
        assert_eq!(CallError::NotJson.status(), 502);
        assert_eq!(
            CallError::Value {
                client: true,
                message: String::new()
            }
            .status(),
            400
        );
    }
}

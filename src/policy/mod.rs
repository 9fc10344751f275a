//! The policy chain: small objects with one job each, compiled once per route and called in a
//! fixed order after routing and before the upstream (`on_request`), then in reverse order on
//! the response (`on_response`). A policy lets the request continue (possibly changed) or
//! answers it; it never knows which policy runs before or after it.
//!
//! A route's chain is: `global` (its `use:` list, then its inline kinds), then the route's
//! `use:` list, then the route's inline kinds. Within one policy set, kinds run in a fixed
//! order (today only `headers`; auth, rate limits and caching will slot in before it).

pub mod headers;

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};

use crate::body::Body;
use crate::error::GatewayError;

/// Per-request facts the policies may read or record.
pub struct RequestCtx {
    pub request_id: http::HeaderValue,
    pub route: std::sync::Arc<str>,
    pub params: Vec<(String, String)>,
    pub client_addr: std::net::SocketAddr,
}

pub enum Flow {
    Continue,
    /// Boxed: rare, and a response is much larger than `Continue`.
    Respond(Box<Response<Body>>),
}

pub type PolicyFuture<'a> = Pin<Box<dyn Future<Output = Result<Flow, GatewayError>> + Send + 'a>>;

/// What `on_request` returns: synchronous policies answer at once (no allocation); those that
/// must wait (a store, a hash on the blocking pool) return a future.
pub enum Step<'a> {
    Done(Result<Flow, GatewayError>),
    Wait(PolicyFuture<'a>),
}

pub trait Policy: Send + Sync {
    /// The kind, e.g. `headers`; used by `explain` and logs.
    fn kind(&self) -> &'static str;

    fn on_request<'a>(&'a self, req: &'a mut Request<Body>, cx: &'a mut RequestCtx) -> Step<'a>;

    fn on_response(&self, _resp: &mut Response<Body>, _cx: &RequestCtx) {}
}

/// A compiled policy and where it came from (for `explain`).
pub struct Bound {
    pub policy: std::sync::Arc<dyn Policy>,
    /// `global`, `policies.<name>` or `inline`.
    pub source: String,
}

/// Runs the request side of the chain in order. Returns a response if a policy answered.
pub async fn run_request(
    chain: &[Bound],
    req: &mut Request<Body>,
    cx: &mut RequestCtx,
) -> Result<Option<Response<Body>>, GatewayError> {
    for b in chain {
        let flow = match b.policy.on_request(req, cx) {
            Step::Done(r) => r?,
            Step::Wait(f) => f.await?,
        };
        if let Flow::Respond(resp) = flow {
            return Ok(Some(*resp));
        }
    }
    Ok(None)
}

/// Runs the response side of the chain, innermost (route inline) first.
pub fn run_response(chain: &[Bound], resp: &mut Response<Body>, cx: &RequestCtx) {
    for b in chain.iter().rev() {
        b.policy.on_response(resp, cx);
    }
}

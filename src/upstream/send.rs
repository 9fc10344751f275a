//! `send`: one request to one upstream, from admission to the response head. It owns what
//! happens between the route and the wire: the `limits.max_in_flight` admission, the retry
//! budget, target selection (skipping targets already tried), retries with backoff on the
//! upstream's retry conditions, small-body replay for them, passive health reports, and the
//! split between the client's faults and the upstream's. Proxying uses it; aggregation and
//! the like will too.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header;
use http::uri::PathAndQuery;
use http::{Request, Response};

use crate::body::{Body, Tally};
use crate::context::{Downstream, Upgrade};
use crate::error::{GatewayError, Retry};
use crate::observe::metrics::Metrics;

use super::exchange::TryError;

use super::pool::UpstreamSlot;
use super::transport::Protocol;
use super::{Target, Upstream};

/// What one call needs besides the request: where it goes, on whose behalf, and what to count.
pub struct Call<'a> {
    /// Path and query to send (after `strip_prefix` or `rewrite`).
    pub path: PathAndQuery,
    pub down: &'a Downstream<'a>,
    /// The `balance: hash` key, if the upstream hashes and the request has one.
    pub key: Option<u64>,
    pub retry_non_idempotent: bool,
    /// The route's body limit, to tell a body cut off by it from an upstream failure.
    pub max_body_size: Option<u64>,
    pub body_timeout: Duration,
    pub tally: &'a Tally,
    pub metrics: &'a Metrics,
}

/// Sends `req` to `upstream`: the response (its body streams from the target) and the
/// admission slot, to be held until the response body ends. `on_target` hears of every target
/// tried, for the access log.
pub async fn send(
    upstream: &Upstream,
    req: Request<Body>,
    upgrade: Option<Upgrade>,
    call: &Call<'_>,
    on_target: &mut (dyn FnMut(&Target) + Send),
) -> Result<(Response<Body>, Option<UpstreamSlot>), GatewayError> {
    // Circuit breaking: refuse at once, with Retry-After, beyond `limits.max_in_flight`.
    let slot = match upstream.pool.admit(upstream.limits.max_in_flight) {
        Ok(slot) => slot,
        Err(e) => {
            call.metrics.overloaded(&upstream.name, "max_in_flight");
            return Err(e);
        }
    };
    // An HTTP/2 connection cannot carry an HTTP/1.1 upgrade, and RFC 8441 WebSockets over
    // HTTP/2 are not implemented: refused before any target is tried, so no target's health
    // pays for it. Logged by the gateway with this reason.
    if upgrade.is_some() && upstream.pool.transport().protocol == Protocol::Http2 {
        return Err(GatewayError::UpstreamFailed(
            format!(
                "upstream {} speaks HTTP/2 (protocol: h2): a WebSocket upgrade cannot be forwarded to it",
                upstream.name
            )
            .into(),
        ));
    }
    let retry = &upstream.retry;
    retry.budget.deposit();
    // Keep a copy to resend only if a retry on status, timeout or reset could use it.
    let resendable = upgrade.is_none()
        && (retry.on_timeout || retry.on_reset || !retry.statuses.is_empty())
        && retry.may_resend(req.method(), call.retry_non_idempotent);
    let (req, replay) = if resendable {
        Replay::keep(req, retry.max_body).await.map_err(|e| {
            if call.tally.client_body_timeout.load(Ordering::Relaxed) {
                GatewayError::ClientTimeout(call.body_timeout)
            } else {
                e
            }
        })?
    } else {
        (req, None)
    };

    let mut req = Some(req);
    let mut upgrade = upgrade;
    let mut tried = [0usize; 10];
    let mut n = 0;
    let mut last_error = None;
    loop {
        let Some(i) = upstream.select(call.key, &tried[..n]) else {
            return Err(last_error.unwrap_or_else(|| GatewayError::NoTarget {
                upstream: upstream.name.to_string(),
            }));
        };
        tried[n] = i;
        n += 1;
        let target = &upstream.targets[i];
        on_target(target);
        let Some(this_try) = req.take().or_else(|| replay.as_ref().map(Replay::request)) else {
            return Err(last_error.unwrap_or(GatewayError::Internal("no request to send".into())));
        };
        let more = (n as u32) < retry.attempts.min(tried.len() as u32);
        let reason = match super::exchange::forward(
            upstream,
            target,
            this_try,
            call.path.clone(),
            call.down,
            &mut upgrade,
        )
        .await
        {
            Ok(resp) => {
                upstream.report(i, !resp.status().is_server_error());
                let status = resp.status();
                // Retry only if another target can still be tried: otherwise this answer is
                // the best there is, and goes to the client as it is.
                if !(more
                    && replay.is_some()
                    && retry.retries_status(status)
                    && upstream.has_untried(&tried[..n]))
                {
                    return Ok((resp, slot));
                }
                if !retry.budget.withdraw(Instant::now()) {
                    call.metrics.retry_budget_exhausted(&upstream.name);
                    return Ok((resp, slot));
                }
                // The answer is dropped unread; its connection closes with it.
                last_error = Some(GatewayError::UpstreamFailed(
                    format!("upstream answered {status}").into(),
                ));
                "status"
            }
            Err(TryError::NotSent(e, back)) => {
                if e.retry() == Retry::Never {
                    if let GatewayError::Overloaded { .. } = e {
                        call.metrics.overloaded(&upstream.name, "max_connections");
                    }
                    return Err(e);
                }
                // Nothing was sent: always safe to try another target.
                upstream.report(i, false);
                if !more || !upstream.has_untried(&tried[..n]) {
                    return Err(e);
                }
                req = Some(*back);
                last_error = Some(e);
                "connect"
            }
            Err(TryError::Sent(e)) => {
                // The upstream call failed because our body limit cut the request off.
                if call.tally.body_too_large.load(Ordering::Relaxed) {
                    return Err(GatewayError::BodyTooLarge {
                        limit: call.max_body_size.unwrap_or(0),
                    });
                }
                // A failure the client caused (a malformed body, or one that broke off) says
                // nothing about the target, and is answered as the client's fault.
                if call.tally.client_body_timeout.load(Ordering::Relaxed) {
                    return Err(GatewayError::ClientTimeout(call.body_timeout));
                }
                if call.tally.client_body_error.load(Ordering::Relaxed) {
                    return Err(GatewayError::BadRequest(
                        "the request body is malformed or incomplete",
                    ));
                }
                upstream.report(i, false);
                let (retryable, reason) = match e.retry() {
                    Retry::OnTimeout => (retry.on_timeout, "timeout"),
                    Retry::OnReset => (retry.on_reset, "reset"),
                    Retry::NotSent => (true, "connect"),
                    Retry::Never => (false, "failed"),
                };
                if !(more && retryable && replay.is_some() && upstream.has_untried(&tried[..n])) {
                    return Err(e);
                }
                if !retry.budget.withdraw(Instant::now()) {
                    call.metrics.retry_budget_exhausted(&upstream.name);
                    return Err(e);
                }
                last_error = Some(e);
                reason
            }
        };
        call.metrics.retry(&upstream.name, reason);
        tokio::time::sleep(retry.backoff(n as u32)).await;
    }
}

/// A request kept so it can be sent again: its head, and its body if it was small enough.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Replay {
    /// Reads a small body whole (a `Content-Length` of at most `max_body`); a larger or
    /// chunked body is left streaming and the request is not kept.
    async fn keep(
        req: Request<Body>,
        max_body: u64,
    ) -> Result<(Request<Body>, Option<Replay>), GatewayError> {
        use http_body::Body as _;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let small = req.body().is_end_stream() || declared.is_some_and(|n| n <= max_body);
        if !small {
            return Ok((req, None));
        }
        let (parts, body) = req.into_parts();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|_| GatewayError::BadRequest("the request body could not be read"))?
            .to_bytes();
        let replay = Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: bytes.clone(),
        };
        Ok((Request::from_parts(parts, Body::full(bytes)), Some(replay)))
    }

    fn request(&self) -> Request<Body> {
        let mut r = Request::new(Body::full(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        *r.version_mut() = http::Version::HTTP_11;
        r
    }
}

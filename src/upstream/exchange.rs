//! One try of a request to one target: take a connection (HTTP/1.1) or a stream on a shared
//! connection (HTTP/2) from the pool, send the request (origin form on HTTP/1.1, `:authority`
//! instead of Host on HTTP/2), wait for the response head (the response timeout starts once
//! the request body is sent), refuse ambiguous upstream framing, hand the body back streaming,
//! and splice WebSockets. Called by [`super::send`] once per try.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::context::{Downstream, Upgrade};
use crate::error::{GatewayError, is_unprocessed};
use crate::observe::metrics::UpstreamOutcome;

use super::pool::h1::SendError;
use super::pool::{H2Body, H2Stream, PooledConn, UpstreamBody};
use super::transport::Protocol;
use super::{Target, Upstream};

/// How one try ended when it did not produce a response.
pub enum TryError {
    /// Nothing reached the upstream (the connection could not be made): the request comes
    /// back, and sending it to another target cannot duplicate it.
    NotSent(GatewayError, Box<Request<Body>>),
    /// The request was (or may have been) sent.
    Sent(GatewayError),
}

/// What a request is sent on: its own HTTP/1.1 connection, or a stream of a shared HTTP/2
/// one. It travels with the response body until that ends.
enum Conn {
    H1(PooledConn),
    H2(H2Stream),
}

/// The response head; the body streams from `Conn` on HTTP/1.1, from the `Incoming` on HTTP/2.
type Exchanged = Result<(Conn, Response<Option<Incoming>>), TryError>;

/// Sends one try of the request to `target` and returns the upstream's response head (body
/// streaming). `upgrade` is taken when the upstream switches protocols.
pub async fn forward(
    upstream: &Upstream,
    target: &Target,
    mut req: Request<Body>,
    path: PathAndQuery,
    down: &Downstream<'_>,
    upgrade: &mut Option<Upgrade>,
) -> Result<Response<Body>, TryError> {
    let host = match (upstream.preserve_host, down.host) {
        (true, Some(h)) => h.clone(),
        _ => target.host_header.clone(),
    };
    let protocol = target.pool.protocol();
    match protocol {
        Protocol::Http1 => {
            req.headers_mut().insert(header::HOST, host);
            if let Some(u) = upgrade.as_ref() {
                req.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                req.headers_mut().insert(header::UPGRADE, u.proto.clone());
            }
            *req.uri_mut() = super::connector::origin_form(path);
        }
        Protocol::Http2 => h2_request(&mut req, target, host, path, down.te_trailers),
    }

    let timeout = upstream.timeouts.response;
    let started = std::time::Instant::now();
    let _in_flight = target.live.start();
    let checkout = async {
        match protocol {
            Protocol::Http1 => target.pool.checkout().await.map(Conn::H1),
            Protocol::Http2 => target.pool.checkout_h2().await.map(Conn::H2),
        }
    };
    let conn = match tokio::time::timeout(timeout, checkout).await {
        Ok(Ok(c)) => c,
        // At the upstream's connection cap: not the target's fault.
        Ok(Err(e @ GatewayError::Overloaded { .. })) => {
            return Err(TryError::NotSent(e, Box::new(req)));
        }
        Ok(Err(e)) => {
            target.record(UpstreamOutcome::ConnectError, started.elapsed());
            return Err(TryError::NotSent(e, Box::new(req)));
        }
        Err(_) => {
            target.record(UpstreamOutcome::ConnectError, started.elapsed());
            return Err(TryError::NotSent(
                GatewayError::UpstreamTimeout(timeout),
                Box::new(req),
            ));
        }
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    let client_body = req.body().pending_client_body().cloned();
    // The exchange owns the connection and hands it back with the response head.
    let exchange = async move {
        match conn {
            Conn::H1(c) => exchange_h1(target, c, req).await,
            Conn::H2(s) => exchange_h2(target, s, req).await,
        }
    };
    let result = match &client_body {
        None => tokio::time::timeout(remaining, exchange)
            .await
            .map_err(|_| ()),
        Some(tally) => response_after_body(std::pin::pin!(exchange), tally, timeout).await,
    };
    let outcome = match &result {
        Ok(Ok(_)) => UpstreamOutcome::Response,
        Ok(Err(TryError::NotSent(..))) => UpstreamOutcome::ConnectError,
        Ok(Err(_)) => UpstreamOutcome::Failed,
        Err(_) => UpstreamOutcome::Timeout,
    };
    let now = std::time::Instant::now();
    let elapsed = now.saturating_duration_since(started);
    // An exchange the client broke (its body was malformed, paused too long, or cut off) is
    // not the target's failure, in the metrics either.
    let client_fault = client_body.as_ref().is_some_and(|t| {
        t.client_body_error
            .load(std::sync::atomic::Ordering::Relaxed)
            || t.body_too_large.load(std::sync::atomic::Ordering::Relaxed)
    });
    if !(client_fault && matches!(outcome, UpstreamOutcome::Failed)) {
        target.record(outcome, elapsed);
    }
    let (conn, mut resp) = match result {
        Err(_) => {
            // A timeout counts as a very slow answer for the latency-aware balancer.
            target.live.observe_latency(timeout, now);
            return Err(TryError::Sent(GatewayError::UpstreamTimeout(timeout)));
        }
        Ok(r) => r?,
    };
    target.live.observe_latency(elapsed, now);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(u), Conn::H1(conn)) = (upgrade.take(), conn) else {
            return Err(TryError::Sent(GatewayError::UpstreamFailed(
                "upstream switched protocols without being asked".into(),
            )));
        };
        // The connection is never pooled again: its stream now carries the new protocol.
        tokio::spawn(super::upgrade::splice(
            u.on,
            conn.into_upgraded(),
            down.conn_slot.clone(),
            down.upgrade_idle,
        ));
        let (mut parts, _) = resp.into_parts();
        // Keep Connection/Upgrade: they are the point of a 101.
        parts.headers.remove(header::TRANSFER_ENCODING);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    // HTTP/1.1 heads were checked as they were parsed.
    if matches!(conn, Conn::H2(_))
        && let Err(why) = super::http1::framing(resp.headers_mut())
    {
        // The connection's remaining bytes cannot be trusted: it closes with `conn` (an
        // HTTP/2 stream is reset as it drops; the connection's other streams go on).
        drop(conn);
        return Err(TryError::Sent(GatewayError::UpstreamFailed(why.into())));
    }
    // The gateway speaks its own protocol version to the client and keeps each side's
    // persistence separate (RFC 9110 6.2): an HTTP/1.0 upstream does not make the client's
    // connection HTTP/1.0 or close it.
    *resp.version_mut() = Version::HTTP_11;
    let (mut parts, body) = resp.into_parts();
    crate::hop::remove_hop_by_hop(&mut parts.headers);
    if upstream.rewrite_redirects {
        rewrite_redirects(&mut parts.headers, target, down);
    }
    let body = match (conn, body) {
        (Conn::H1(c), _) => Body::Upstream(Box::pin(UpstreamBody::new(
            c,
            target.pool.clone(),
            target.live.start(),
            upstream.timeouts.read,
        ))),
        (Conn::H2(s), Some(body)) => Body::Upstream(Box::pin(H2Body::new(
            body,
            s,
            target.live.start(),
            upstream.timeouts.read,
        ))),
        (Conn::H2(_), None) => Body::Empty,
    };
    Ok(Response::from_parts(parts, body))
}

/// Shapes a request for HTTP/2: the host goes in `:authority` (RFC 9113 8.3.1), not in a
/// Host field; `:path` is the origin form; `TE: trailers` is kept when the client sent
/// exactly that (gRPC needs it; it is the only TE value HTTP/2 allows).
fn h2_request(
    req: &mut Request<Body>,
    target: &Target,
    host: HeaderValue,
    path: PathAndQuery,
    te_trailers: bool,
) {
    req.headers_mut().remove(header::HOST);
    let authority = Authority::try_from(host.as_bytes())
        .or_else(|_| Authority::try_from(target.host_header.as_bytes()))
        .unwrap_or_else(|_| target.authority.clone());
    *req.uri_mut() =
        super::connector::h2_target(&target.pool.endpoint().transport, authority, path);
    *req.version_mut() = Version::HTTP_2;
    if te_trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// One HTTP/1.1 exchange on `conn`, with the two safe ways to send again on a fresh
/// connection: a request that was never written, and (below) a close that raced the request.
async fn exchange_h1(target: &Target, mut conn: PooledConn, req: Request<Body>) -> Exchanged {
    // A reused keep-alive connection can be closed by the upstream just as it is taken (its
    // idle timeout raced our request). A body-less idempotent request that then got no answer
    // at all is sent again on a fresh connection, as browsers and Go's client do: the
    // upstream closed without reading it.
    // Nothing of the request is kept for it: a body-less request is in the connection's
    // write buffer whole, and those bytes are written again.
    let again = (conn.reused
        && http_body::Body::is_end_stream(req.body())
        && matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT
        ))
    .then(|| req.method().clone());
    let sent_at = std::time::Instant::now();
    match conn.send(req).await {
        Ok(resp) => Ok((Conn::H1(conn), resp.map(|()| None))),
        // At once: a close that raced the request, not an upstream that took the request
        // and failed later (which is not safe to send again).
        Err(SendError::Incomplete(e))
            if again.is_some()
                && conn.whole_written()
                && sent_at.elapsed() < std::time::Duration::from_millis(100) =>
        {
            tracing::debug!(target = %target.authority, error = %e, "reused connection closed by the target as the request went out: sending it on a new one");
            let method = again.unwrap_or(Method::GET);
            // Boxed: a rare path, kept out of the size of every request's future.
            let written = conn.take_written();
            drop(conn);
            Box::pin(resend_fresh(target, written, method)).await
        }
        // Never written (the pooled connection was not usable after all): sending it on a
        // fresh connection cannot duplicate it. The dead one goes first, so it does not hold
        // a slot under the connection cap.
        Err(SendError::NotWritten(req, _)) => {
            drop(conn);
            Box::pin(send_fresh(target, *req)).await
        }
        Err(SendError::Incomplete(e) | SendError::Failed(e)) => {
            Err(TryError::Sent(GatewayError::UpstreamFailed(e)))
        }
    }
}

/// Sends `req` on a new connection to `target` (never a pooled one): for a request the
/// connection it was meant for could not take.
async fn send_fresh(target: &Target, req: Request<Body>) -> Exchanged {
    let mut fresh = match target.pool.connect().await {
        Ok(c) => c,
        Err(e) => return Err(TryError::NotSent(e, Box::new(req))),
    };
    match fresh.send(req).await {
        Ok(resp) => Ok((Conn::H1(fresh), resp.map(|()| None))),
        Err(SendError::NotWritten(_, e) | SendError::Incomplete(e) | SendError::Failed(e)) => {
            Err(TryError::Sent(GatewayError::UpstreamFailed(e)))
        }
    }
}

/// Writes `written` (a body-less request, as a connection wrote it) again, byte for byte, on a
/// new connection to `target`.
async fn resend_fresh(target: &Target, written: Vec<u8>, method: Method) -> Exchanged {
    let mut fresh = match target.pool.connect().await {
        Ok(c) => c,
        Err(e) => return Err(TryError::Sent(e)),
    };
    match fresh.resend(written, &method).await {
        Ok(resp) => Ok((Conn::H1(fresh), resp.map(|()| None))),
        Err(SendError::NotWritten(_, e) | SendError::Incomplete(e) | SendError::Failed(e)) => {
            Err(TryError::Sent(GatewayError::UpstreamFailed(e)))
        }
    }
}

/// One HTTP/2 exchange on `stream`. A request the target refused unprocessed (a GOAWAY that
/// did not cover it, REFUSED_STREAM) or that never left (the connection had stopped taking
/// requests) is sent once more, on another connection; see [`is_unprocessed`].
async fn exchange_h2(target: &Target, mut stream: H2Stream, req: Request<Body>) -> Exchanged {
    // A request whose body is already in memory (none, or one kept for retries) can be
    // rebuilt if the stream is refused; a streamed body cannot.
    let copy = resend_copy(&req);
    let mut e = match stream.send(req).await {
        Ok(resp) => return Ok((Conn::H2(stream), resp.map(Some))),
        Err(e) => e,
    };
    let (again, e) = match e.take_message() {
        Some(req) => (Some(req), e.into_error()),
        None if is_unprocessed(e.error()) => (copy, e.into_error()),
        None => {
            return Err(TryError::Sent(GatewayError::UpstreamFailed(Box::new(
                e.into_error(),
            ))));
        }
    };
    stream.retire();
    drop(stream);
    let Some(req) = again else {
        // Unprocessed, but its body is gone: `send` may retry it from its replay copy.
        return Err(TryError::Sent(GatewayError::UpstreamFailed(Box::new(e))));
    };
    tracing::debug!(target = %target.authority, error = %e, "HTTP/2 request not processed by the target: sending it on another connection");
    // Boxed: a rare path, kept out of the size of every request's future.
    Box::pin(send_h2_again(target, req)).await
}

/// [`exchange_h2`]'s second try, on another connection.
async fn send_h2_again(target: &Target, req: Request<Body>) -> Exchanged {
    let mut fresh = match target.pool.checkout_h2().await {
        Ok(s) => s,
        Err(e) => return Err(TryError::NotSent(e, Box::new(req))),
    };
    match fresh.send(req).await {
        Ok(resp) => Ok((Conn::H2(fresh), resp.map(Some))),
        Err(mut e) => {
            if is_unprocessed(e.error()) {
                fresh.retire();
            }
            match e.take_message() {
                Some(req) => Err(TryError::NotSent(
                    GatewayError::UpstreamConnect(Box::new(e.into_error())),
                    Box::new(req),
                )),
                None => Err(TryError::Sent(GatewayError::UpstreamFailed(Box::new(
                    e.into_error(),
                )))),
            }
        }
    }
}

/// A copy of `req` to send again, when its body is in memory.
fn resend_copy(req: &Request<Body>) -> Option<Request<Body>> {
    let body = match req.body() {
        Body::Full(Some(b)) => Body::Full(Some(b.clone())),
        b if http_body::Body::is_end_stream(b) => Body::Empty,
        Body::Empty | Body::Full(None) | Body::Request { .. } | Body::Upstream(_) => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Waits for the response head of a request whose body the client is still sending. The
/// response timeout starts only once the body has been sent whole: a slow client is timed by
/// its own `server.request_body_timeout` (and answered 408), never counted against the
/// target. Meanwhile the target is timed out only if it takes none of the body for `timeout`
/// while the client has bytes waiting.
async fn response_after_body<F: std::future::Future>(
    mut exchange: std::pin::Pin<&mut F>,
    tally: &crate::body::Tally,
    timeout: std::time::Duration,
) -> Result<F::Output, ()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut done = std::pin::pin!(tally.body_done.notified());
    let mut seen = tally.bytes_in.load(Relaxed);
    loop {
        tokio::select! {
            r = exchange.as_mut() => return Ok(r),
            _ = done.as_mut() => break,
            _ = tokio::time::sleep(timeout) => {
                let now = tally.bytes_in.load(Relaxed);
                if now == seen && !tally.awaiting_client.load(Relaxed) {
                    return Err(());
                }
                seen = now;
            }
        }
    }
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ())
}

/// nginx's default `proxy_redirect` and a `proxy_cookie_domain`: a `Location` whose authority
/// is the target's own (`http://10.0.0.5:8080/login`) becomes the client's scheme and host
/// (`https://api.example.com/login`), and a `Set-Cookie` `Domain=10.0.0.5` becomes the client's
/// host. Anything else, relative locations included, is left as it is.
fn rewrite_redirects(h: &mut HeaderMap, target: &Target, down: &Downstream<'_>) {
    // Only a plain `host[:port]` is written into these fields: a Host with sub-delims
    // (`x;Domain=evil`) must not add a cookie attribute or bend a URL.
    let Some(client) = down.host.and_then(|v| v.to_str().ok()).filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
    }) else {
        return;
    };
    let ours = target.authority.as_str();
    if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok())
        && let Ok(uri) = loc.parse::<Uri>()
        && uri
            .authority()
            .is_some_and(|a| a.as_str().eq_ignore_ascii_case(ours))
    {
        let rest = uri.path_and_query().map_or("/", |p| p.as_str());
        // Under `strip_prefix` the client's path had the prefix: put it back.
        let prefix = down.prefix.unwrap_or("");
        if let Ok(v) = HeaderValue::from_str(&format!("{}://{client}{prefix}{rest}", down.proto)) {
            h.insert(header::LOCATION, v);
        }
    }
    let target_host = target.authority.host();
    let names_target = |v: &HeaderValue| {
        v.to_str().is_ok_and(|s| {
            s.split(';').any(|a| {
                a.split_once('=').is_some_and(|(k, d)| {
                    k.trim().eq_ignore_ascii_case("domain")
                        && d.trim()
                            .trim_start_matches('.')
                            .eq_ignore_ascii_case(target_host)
                })
            })
        })
    };
    if !h.get_all(header::SET_COOKIE).iter().any(names_target) {
        return;
    }
    let client_host = crate::router::host_key(client);
    let cookies: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| {
            let Ok(s) = v.to_str() else { return v.clone() };
            let mut changed = false;
            let parts: Vec<String> = s
                .split(';')
                .map(|attr| {
                    let t = attr.trim();
                    match t.split_once('=') {
                        Some((k, d))
                            if k.trim().eq_ignore_ascii_case("domain")
                                && d.trim()
                                    .trim_start_matches('.')
                                    .eq_ignore_ascii_case(target_host) =>
                        {
                            changed = true;
                            format!(" Domain={client_host}")
                        }
                        _ => attr.to_owned(),
                    }
                })
                .collect();
            if changed {
                HeaderValue::from_str(&parts.join(";")).unwrap_or_else(|_| v.clone())
            } else {
                v.clone()
            }
        })
        .collect();
    h.remove(header::SET_COOKIE);
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
}

//! Forwarding one request to one target: the upstream URI and path (strip/rewrite), hop-by-hop
//! header removal (RFC 9110 7.6.1), `X-Forwarded-*`, Host, the response-head timeout, and
//! protocol upgrades (WebSocket) spliced byte for byte. Runs after the policy chain.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::server::conn::ConnSlot;

use crate::body::Body;
use crate::config::compile::PathAction;
use crate::error::GatewayError;
use crate::observe::metrics::UpstreamOutcome;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::{Target, Upstream};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The path and query to send upstream: the client's bytes unless the route changes them, or
/// unless normalisation changed the segment structure (`normalized` is then `Some`): the
/// upstream must see the resource the route was chosen for, not `/public/../admin`.
pub fn upstream_path(
    action: &PathAction,
    original: &Uri,
    normalized: Option<&str>,
    params: &[(String, String)],
) -> Result<PathAndQuery, GatewayError> {
    let pq = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path = normalized.unwrap_or(pq.path());
    match action {
        PathAction::Keep if normalized.is_none() => Ok(pq),
        PathAction::Keep => join_query(path, pq.query()),
        PathAction::StripPrefix(prefix) => {
            let rest = match path
                .strip_prefix(prefix.as_str())
                .filter(|r| prefix != "/" && (r.is_empty() || r.starts_with('/')))
            {
                Some(rest) => Cow::Borrowed(rest),
                None if prefix == "/" => Cow::Borrowed(path),
                // The raw path spells the prefix differently (escapes): strip from the
                // normalised form, which is what matched.
                None => {
                    let norm = crate::router::normalize(path);
                    Cow::Owned(
                        norm.strip_prefix(prefix.as_str())
                            .unwrap_or(&norm)
                            .to_owned(),
                    )
                }
            };
            join_query(if rest.is_empty() { "/" } else { &rest }, pq.query())
        }
        PathAction::Rewrite(t) => {
            let rendered = t.render(params).map_err(GatewayError::BadRequest)?;
            // A rewrite may carry its own query; the client's is appended to it.
            match (rendered.split_once('?'), pq.query()) {
                (Some((p, tq)), Some(cq)) => join_query(p, Some(&format!("{tq}&{cq}"))),
                (Some(_), None) => join_query(&rendered, None),
                (None, q) => join_query(&rendered, q),
            }
        }
    }
}

fn join_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, GatewayError> {
    let s = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(s)
        .map_err(|_| GatewayError::BadRequest("rewritten path is not a valid URI path"))
}

/// A WebSocket upgrade the client asked for, taken from the request before its hop-by-hop
/// headers are removed.
pub struct Upgrade {
    proto: HeaderValue,
    on: hyper::upgrade::OnUpgrade,
}

/// Takes the client's upgrade, if it is an HTTP/1.1 `Connection: upgrade` request for
/// `websocket`. Other protocols (notably `h2c`, which would open a tunnel around the router)
/// are not forwarded: their `Upgrade` header is dropped with the other hop-by-hop headers.
pub fn take_upgrade<B>(req: &mut Request<B>) -> Option<Upgrade> {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return None;
    }
    let proto = req.headers().get(header::UPGRADE)?.clone();
    let websocket = proto
        .to_str()
        .ok()?
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    if !websocket {
        return None;
    }
    Some(Upgrade {
        proto,
        on: hyper::upgrade::on(req),
    })
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: the fixed list and every header named in `Connection`. Runs on
/// the request before the policy chain (so a client's `Connection: x-api-key` cannot remove a
/// header a policy adds) and on every response.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, and ten hashed
    // removals per message showed up in profiles.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        // The gateway's own fields (Host, X-Forwarded-*, X-Request-Id, Via) are set after
        // this runs, so naming them here removes only what the sender had put there.
        for n in named {
            h.remove(&n);
        }
        h.remove(header::CONNECTION);
    }
    for n in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        h.remove(n);
    }
    h.remove(header::TE);
    h.remove(header::TRAILER);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::UPGRADE);
    h.remove(header::PROXY_AUTHORIZATION);
}

/// Drops request fields whose names contain `_` (nginx's default): CGI and WSGI backends map
/// `X_Forwarded_Proto` and `X-Forwarded-Proto` to the same variable, so a client could
/// smuggle one past the gateway as the other.
pub fn remove_underscored(h: &mut HeaderMap) {
    if !h.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for n in names {
        h.remove(&n);
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRAILER
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

/// Facts about the client side that forwarding needs.
pub struct Downstream<'a> {
    /// The client's IP, formatted for `X-Forwarded-For`.
    pub forwarded_for: &'a HeaderValue,
    pub proto: &'static str,
    /// The host the request was routed by, as the client wrote it (URI authority or Host).
    pub host: Option<&'a HeaderValue>,
    /// Held by an upgraded connection for as long as it lives, so WebSockets count against
    /// `server.max_connections` too.
    pub conn_slot: Option<Arc<ConnSlot>>,
    /// `server.upgrade_idle_timeout`: an upgraded connection idle both ways this long closes.
    pub upgrade_idle: std::time::Duration,
    /// The port the client connected to, for `X-Forwarded-Port`.
    pub port: &'a HeaderValue,
    /// The client is one of `server.trusted_proxies`: its forwarding fields are kept.
    pub trusted: bool,
    /// The prefix `strip_prefix` removed, for `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
}

/// Adds the headers that describe this hop, once per request (not per try).
pub fn add_forwarding_headers(
    req: &mut Request<Body>,
    down: &Downstream<'_>,
    request_id: &HeaderValue,
) {
    let headers = req.headers_mut();
    append_forwarded(headers, &X_FORWARDED_FOR, down.forwarded_for);
    // The rest describe the client's hop. From an untrusted client they are replaced (a
    // client-sent `X-Forwarded-Host: evil.com` must not reach a service that builds links
    // from it) or dropped; from a trusted proxy, what it says of its own client is kept.
    let keep = |h: &HeaderMap, n: &HeaderName| down.trusted && h.contains_key(n);
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(down.proto),
        );
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match down.host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        headers.insert(X_FORWARDED_PORT.clone(), down.port.clone());
    }
    if !keep(headers, &X_REAL_IP) {
        headers.insert(X_REAL_IP.clone(), down.forwarded_for.clone());
    }
    if !down.trusted {
        headers.remove(&FORWARDED);
    }
    // A trusted proxy's own prefix comes first: it stripped it before this gateway did.
    let outer = if down.trusted {
        headers
            .get(&X_FORWARDED_PREFIX)
            .and_then(|v| v.to_str().ok())
            .map(|p| p.trim_end_matches('/').to_owned())
    } else {
        None
    };
    let prefix = down
        .prefix
        .and_then(|p| HeaderValue::from_str(&format!("{}{p}", outer.unwrap_or_default())).ok());
    match prefix {
        Some(p) => {
            headers.insert(X_FORWARDED_PREFIX.clone(), p);
        }
        None if !down.trusted => {
            headers.remove(&X_FORWARDED_PREFIX);
        }
        None => {}
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    // RFC 9110 7.6.3: a gateway adds itself to Via on the requests it forwards, with the
    // protocol it received them in.
    let via = match req.version() {
        Version::HTTP_10 => &VIA_10,
        Version::HTTP_2 => &VIA_2,
        _ => &VIA_11,
    };
    append_forwarded(req.headers_mut(), &header::VIA, via);
    // The gateway answered `Expect: 100-continue` itself (hyper sends the 100 when the body is
    // first read); the upstream gets the body without waiting for one of its own.
    req.headers_mut().remove(header::EXPECT);
    *req.version_mut() = Version::HTTP_11;
}

static VIA_10: HeaderValue = HeaderValue::from_static("1.0 gatehouse");
static VIA_11: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
static VIA_2: HeaderValue = HeaderValue::from_static("2 gatehouse");

/// How one try ended when it did not produce a response.
pub enum TryError {
    /// Nothing reached the upstream (the connection could not be made): the request comes
    /// back, and sending it to another target cannot duplicate it.
    NotSent(GatewayError, Box<Request<Body>>),
    /// The request was (or may have been) sent.
    Sent(GatewayError),
}

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
    req.headers_mut().insert(header::HOST, host);
    if let Some(u) = upgrade.as_ref() {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, u.proto.clone());
    }
    *req.uri_mut() = crate::upstream::connector::origin_form(path);

    let timeout = upstream.timeouts.response;
    let started = std::time::Instant::now();
    let _in_flight = target.stats.live.start();
    let mut conn = match tokio::time::timeout(timeout, target.pool.checkout()).await {
        Ok(Ok(c)) => c,
        // At the upstream's connection cap: not the target's fault.
        Ok(Err(e @ GatewayError::Overloaded { .. })) => {
            return Err(TryError::NotSent(e, Box::new(req)));
        }
        Ok(Err(e)) => {
            target
                .stats
                .record(UpstreamOutcome::ConnectError, started.elapsed());
            return Err(TryError::NotSent(e, Box::new(req)));
        }
        Err(_) => {
            target
                .stats
                .record(UpstreamOutcome::ConnectError, started.elapsed());
            return Err(TryError::NotSent(
                GatewayError::UpstreamTimeout(timeout),
                Box::new(req),
            ));
        }
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    let client_body = req.body().pending_client_body().cloned();
    // The exchange owns the connection and hands it back with the response head.
    // A reused keep-alive connection can be closed by the upstream just as it is taken (its
    // idle timeout raced our request). A body-less idempotent request that then got no answer
    // at all is sent again on a fresh connection, as browsers and Go's client do: the
    // upstream closed without reading it.
    let again = (conn.reused
        && http_body::Body::is_end_stream(req.body())
        && matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT
        ))
    .then(|| {
        (
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        )
    });
    let exchange = async move {
        match conn.send(req).await {
            Ok(resp) => Ok((conn, resp)),
            Err(e) if again.is_some() && e.error().is_incomplete_message() => {
                drop(conn);
                let Some((method, uri, headers)) = again else {
                    return Err(TryError::Sent(GatewayError::Internal("no head".into())));
                };
                let mut req = Request::new(Body::empty());
                *req.method_mut() = method;
                *req.uri_mut() = uri;
                *req.headers_mut() = headers;
                send_fresh(target, req).await
            }
            Err(mut e) => match e.take_message() {
                // Never written (the pooled connection was not usable after all): sending it
                // on a fresh connection cannot duplicate it. The dead one goes first, so it
                // does not hold a slot under the connection cap.
                Some(req) => {
                    drop(conn);
                    send_fresh(target, req).await
                }
                None => Err(TryError::Sent(GatewayError::UpstreamFailed(Box::new(
                    e.into_error(),
                )))),
            },
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
    let elapsed = started.elapsed();
    // An exchange the client broke (its body was malformed, paused too long, or cut off) is
    // not the target's failure, in the metrics either.
    let client_fault = client_body.as_ref().is_some_and(|t| {
        t.client_body_error
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    if !(client_fault && matches!(outcome, UpstreamOutcome::Failed)) {
        target.stats.record(outcome, elapsed);
    }
    let (conn, mut resp) = match result {
        Err(_) => {
            // A timeout counts as a very slow answer for the latency-aware balancer.
            target
                .stats
                .live
                .observe_latency(timeout, std::time::Instant::now());
            return Err(TryError::Sent(GatewayError::UpstreamTimeout(timeout)));
        }
        Ok(r) => r?,
    };
    target
        .stats
        .live
        .observe_latency(elapsed, std::time::Instant::now());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(u) = upgrade.take() else {
            return Err(TryError::Sent(GatewayError::UpstreamFailed(
                "upstream switched protocols without being asked".into(),
            )));
        };
        let up_up = hyper::upgrade::on(&mut resp);
        // The connection must be driven to hand over the upgraded stream; it is never pooled.
        conn.spawn();
        tokio::spawn(splice(
            u.on,
            up_up,
            down.conn_slot.clone(),
            down.upgrade_idle,
        ));
        let (mut parts, _) = resp.into_parts();
        // Keep Connection/Upgrade: they are the point of a 101.
        parts.headers.remove(header::TRANSFER_ENCODING);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    if let Err(why) = check_response_framing(resp.headers_mut()) {
        // The connection's remaining bytes cannot be trusted: it closes with `conn`.
        drop(conn);
        return Err(TryError::Sent(GatewayError::UpstreamFailed(why.into())));
    }
    // The gateway speaks its own protocol version to the client and keeps each side's
    // persistence separate (RFC 9110 6.2): an HTTP/1.0 upstream does not make the client's
    // connection HTTP/1.0 or close it.
    *resp.version_mut() = Version::HTTP_11;
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    if upstream.rewrite_redirects {
        rewrite_redirects(&mut parts.headers, target, down);
    }
    let body = UpstreamBody::new(body, conn, target.pool.clone(), target.stats.live.start());
    Ok(Response::from_parts(parts, Body::Upstream(Box::new(body))))
}

/// Sends `req` on a new connection to `target` (never a pooled one): for a request the
/// connection it was meant for could not take.
async fn send_fresh(
    target: &Target,
    req: Request<Body>,
) -> Result<
    (
        crate::upstream::pool::PooledConn,
        Response<hyper::body::Incoming>,
    ),
    TryError,
> {
    let mut fresh = match target.pool.connect().await {
        Ok(c) => c,
        Err(e) => return Err(TryError::NotSent(e, Box::new(req))),
    };
    match fresh.send(req).await {
        Ok(resp) => Ok((fresh, resp)),
        Err(e) => Err(TryError::Sent(GatewayError::UpstreamFailed(Box::new(
            e.into_error(),
        )))),
    }
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

/// Refuses an upstream response whose body length could be read two ways (RFC 9112 6.3): both
/// Content-Length and Transfer-Encoding, a transfer coding other than `chunked` (its bytes would
/// reach the client without the coding that gives them meaning), or Content-Length lines that
/// disagree or are not a number. Identical repeated Content-Length values are folded into one.
/// hyper reads such a response by one rule and keeps the other header, so a client would get
/// `Content-Length: 3` with five bytes after it.
fn check_response_framing(h: &mut HeaderMap) -> Result<(), &'static str> {
    let mut te = h.get_all(header::TRANSFER_ENCODING).iter();
    let has_te = match te.next() {
        Some(v) if te.next().is_none() && v.as_bytes().eq_ignore_ascii_case(b"chunked") => true,
        Some(_) => return Err("upstream response has a transfer coding other than chunked"),
        None => false,
    };
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = cl.next() else {
        return Ok(());
    };
    if has_te {
        return Err("upstream response has both Content-Length and Transfer-Encoding");
    }
    let digits = |v: &HeaderValue| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
    if !digits(first) {
        return Err("upstream response has an invalid Content-Length");
    }
    let mut repeated = false;
    for v in cl {
        if v != first {
            return Err("upstream response has conflicting Content-Length values");
        }
        repeated = true;
    }
    if repeated {
        let one = first.clone();
        h.insert(header::CONTENT_LENGTH, one);
    }
    Ok(())
}

/// Copies bytes both ways between an upgraded client connection and upstream connection until
/// either side closes, or until no byte has moved either way for `idle`. Holds the client
/// connection's slot until then.
async fn splice(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    _slot: Option<Arc<ConnSlot>>,
    idle: std::time::Duration,
) {
    let (down, up) = match tokio::join!(down, up) {
        (Ok(d), Ok(u)) => (d, u),
        (d, u) => {
            tracing::debug!(
                downstream_ok = d.is_ok(),
                upstream_ok = u.is_ok(),
                "upgrade failed"
            );
            return;
        }
    };
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut down = Counted::new(TokioIo::new(down), moved.clone());
    let mut up = Counted::new(TokioIo::new(up), moved.clone());
    let mut copy = std::pin::pin!(tokio::io::copy_bidirectional(&mut down, &mut up));
    // Checked every quarter of `idle`: closed within 1.25 × `idle` of the last byte.
    let tick = (idle / 4).max(std::time::Duration::from_millis(10));
    let mut seen = 0;
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = copy.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(tick) => {
                let now = moved.load(std::sync::atomic::Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    quiet_since = tokio::time::Instant::now();
                } else if quiet_since.elapsed() >= idle {
                    tracing::debug!(?idle, "upgraded connection idle both ways: closed");
                    return;
                }
            }
        }
    }
}

/// An upgraded stream that counts the bytes read from it (in either direction's copy).
struct Counted<T> {
    inner: T,
    moved: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Counted<T> {
    fn new(inner: T, moved: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Counted { inner, moved }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.moved
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn append_forwarded(h: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let mut lines = h.get_all(name).iter().filter(|v| !v.is_empty());
    let Some(first) = lines.next() else {
        h.insert(name.clone(), value.clone());
        return;
    };
    // Every earlier line is kept, in order, folded with this hop's value into one line.
    let mut v = Vec::with_capacity(first.len() + 2 + value.len());
    v.extend_from_slice(first.as_bytes());
    for more in lines {
        v.extend_from_slice(b", ");
        v.extend_from_slice(more.as_bytes());
    }
    v.extend_from_slice(b", ");
    v.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        h.insert(name.clone(), v);
    }
}

pub fn ip_value(addr: SocketAddr) -> HeaderValue {
    let ip = addr.ip().to_canonical();
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RewriteTemplate;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret, x-request-id"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-request-id", HeaderValue::from_static("keep"));
        h.insert("x-app", HeaderValue::from_static("keep"));
        remove_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-app"],
            "the sender's own fields named in Connection go too"
        );
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        append_forwarded(
            &mut h,
            &X_FORWARDED_FOR,
            &HeaderValue::from_static("127.0.0.1"),
        );
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_forwarded(&mut h, &X_FORWARDED_FOR, &HeaderValue::from_static("::1"));
        assert_eq!(
            h.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["10.0.0.1, 127.0.0.1, 10.0.0.2, ::1"],
            "every line is kept, folded into one"
        );
        append_forwarded(
            &mut h,
            &X_FORWARDED_PROTO,
            &HeaderValue::from_static("http"),
        );
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "http");
    }

    fn u_with(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn paths_sent_upstream() {
        let uri: Uri = "/api/users/7?x=1".parse().unwrap();
        let strip = PathAction::StripPrefix("/api".into());
        assert_eq!(
            upstream_path(&strip, &uri, None, &[]).unwrap().as_str(),
            "/users/7?x=1"
        );
        let exact: Uri = "/api".parse().unwrap();
        assert_eq!(
            upstream_path(&strip, &exact, None, &[]).unwrap().as_str(),
            "/"
        );
        let escaped: Uri = "/%61pi/users".parse().unwrap();
        assert_eq!(
            upstream_path(&strip, &escaped, None, &[]).unwrap().as_str(),
            "/users"
        );
        let keep = PathAction::Keep;
        let raw: Uri = "/a/%7e/b?q".parse().unwrap();
        assert_eq!(
            upstream_path(&keep, &raw, None, &[]).unwrap().as_str(),
            "/a/%7e/b?q",
            "escapes alone do not change what is forwarded"
        );
        let dotted: Uri = "/a/%2e%2e/b?q".parse().unwrap();
        assert_eq!(
            upstream_path(&keep, &dotted, Some("/b"), &[])
                .unwrap()
                .as_str(),
            "/b?q",
            "resolved dot segments are forwarded resolved"
        );
        let q = PathAction::Rewrite(RewriteTemplate::parse("/orders?user={id}", &["id"]).unwrap());
        assert_eq!(
            upstream_path(
                &q,
                &u_with("/u/7?page=2"),
                None,
                &[("id".into(), "7".into())]
            )
            .unwrap()
            .as_str(),
            "/orders?user=7&page=2"
        );
        let rw = PathAction::Rewrite(RewriteTemplate::parse("/v2/users/{id}", &["id"]).unwrap());
        let u: Uri = "/users/7?expand=1".parse().unwrap();
        assert_eq!(
            upstream_path(&rw, &u, None, &[("id".into(), "7".into())])
                .unwrap()
                .as_str(),
            "/v2/users/7?expand=1"
        );
    }
}

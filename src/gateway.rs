//! `handle`: the request path, top to bottom. Load the runtime snapshot once, refuse malformed
//! framing, find the route, run its policy chain, forward to a target, run the response
//! policies, and hand back a body that writes the access-log line when it ends.

use std::sync::Arc;

use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response};

use crate::body::{Body, ClientBody, Tally};
pub use crate::context::ConnInfo;
use crate::error::GatewayError;
use crate::observe::access_log::{AccessLog, LoggedBody, Pending, Record};
use crate::observe::metrics::Metrics;
use crate::observe::trace;
use crate::policy::{self, RequestCtx};
use crate::proxy::{self, Downstream, X_REQUEST_ID};
use crate::router;
use crate::runtime::Action;
use crate::runtime::Runtime;
use crate::upstream::balancer::{Balancer, HashOn, hash_bytes};

/// What every request handler shares: the current config, the log sink, the metrics.
pub struct Gateway {
    pub runtime: ArcSwap<Runtime>,
    pub access_log: arc_swap::ArcSwapOption<AccessLog>,
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// The shared gateway state for a runtime (starting the access-log writer).
    pub fn new(rt: Runtime, metrics: Arc<Metrics>) -> std::io::Result<Arc<Gateway>> {
        let access_log = match &rt.access_log {
            Some(cfg) => Some(Arc::new(AccessLog::start(cfg)?)),
            None => None,
        };
        Ok(Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(rt),
            access_log: arc_swap::ArcSwapOption::new(access_log),
            metrics,
        }))
    }
}

/// `ambiguous_framing`: the connection's framing watch saw both Content-Length and
/// Transfer-Encoding on this request (hyper hides that; see `server::framing`).
pub async fn handle(
    gw: &Gateway,
    req: Request<ClientBody>,
    conn: &ConnInfo,
    ambiguous_framing: bool,
) -> Response<LoggedBody> {
    let start = Instant::now();
    let rt = gw.runtime.load_full();
    let request_id = request_id(req.headers());
    let tally = Arc::new(Tally::default());
    // The request's outcome (metrics, access-log line): handed to the response body, or
    // accounted by the guard (as 499) if the client goes away before a response exists.
    let access_log = gw.access_log.load();
    let mut line = Pending::new(
        &gw.metrics,
        req.method(),
        start,
        &tally,
        access_log.as_deref(),
        || Record {
            start,
            time: SystemTime::now(),
            client: conn.client_addr,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            host: match req.uri().authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => req.headers().get(header::HOST).cloned(),
            },
            route: None,
            target: None,
            status: http::StatusCode::OK,
            error: None,
            reason: None,
            request_id: request_id.clone(),
            trace: None,
            calls: None,
            tally: tally.clone(),
        },
    );

    // A credential in the query (an API key) never reaches the access log, whatever answers
    // the request: a refusal before routing, a 404, a redirect or any policy.
    if let Some(p) = policy::log_path(&rt.query_secrets, req.uri())
        && let Some(r) = line.record()
    {
        r.path = Some(p);
    }
    let grpc = crate::error::is_grpc(req.headers());
    let result = if ambiguous_framing {
        gw.metrics.rejected("ambiguous_framing");
        Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ))
    } else {
        route_and_forward(&rt, &gw.metrics, req, conn, &request_id, &tally, &mut line).await
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => error_response(
            &gw.metrics,
            e,
            &request_id,
            &mut line,
            !ambiguous_framing,
            grpc,
        ),
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(hsts) = &conn.hsts {
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
    let outcome = line.respond(resp.status());
    resp.map(|b| LoggedBody::new(b, outcome))
}

async fn route_and_forward(
    rt: &Runtime,
    metrics: &Arc<Metrics>,
    req: Request<ClientBody>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    tally: &Arc<Tally>,
    line: &mut Pending,
) -> Result<Response<Body>, GatewayError> {
    check_target(&req)?;
    check_framing(req.headers())?;
    if rt.server.strict_paths
        && let Some(why) = router::path::strict_violation(req.uri().path())
    {
        return Err(GatewayError::BadRequest(why));
    }
    let client_host = client_host(&req)?;
    // The exemption is judged on the normalised path: `/.well-known/acme-challenge/../x`
    // is `/x`, and redirected.
    if let Some((port, status)) = conn.redirect_https
        && !router::normalize_ext(req.uri().path())
            .0
            .starts_with("/.well-known/acme-challenge/")
    {
        return https_redirect(client_host.as_ref(), port, status, req.uri());
    }

    let host = client_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(router::host_key);
    let (path, restructured) = router::normalize_ext(req.uri().path());
    let found = rt
        .router
        .find(host.as_deref(), &path, req.method(), req.headers());
    let client_ip = proxy::client_ip(
        req.headers(),
        conn.client_addr.ip(),
        &rt.server.trusted_proxies,
    );
    let mut cx = RequestCtx::new(request_id.clone(), conn.client_addr, client_ip);
    cx.client_cert = conn.client_cert.clone();
    cx.grpc = crate::error::is_grpc(req.headers());
    cx.proto = conn.proto;
    let body_timeout = rt.server.request_body_timeout;
    let Some(found) = found else {
        // No route: the global policies still run (an IP rule refuses, a rate limit counts
        // the scanner), and their response hooks see the 404.
        let mut req =
            req.map(|b| Body::request(b, rt.server.max_body_size, body_timeout, tally.clone()));
        let answer = match rt.global.run_request(&mut req, &mut cx).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(GatewayError::NoRoute),
            Err(e) => Err(e),
        };
        return Ok(answer_through(&rt.global, answer, &mut cx, metrics, line).await);
    };
    let route = found.route.clone();
    cx.route = Some(route.name.clone());
    cx.params = found.params;
    // When normalisation resolved dot segments or merged slashes, forward what was routed.
    let normalized = restructured.then(|| path.into_owned());
    drop(host);
    if let Some(stats) = route.stats.get() {
        line.set_route(stats);
    }
    if let Some(r) = line.record() {
        r.route = Some(route.name.clone());
    }

    if let Some(limit) = route.max_body_size {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
    }
    let mut req = req.map(|b| Body::request(b, route.max_body_size, body_timeout, tally.clone()));
    // Before the policies: a client's `Connection: x-api-key` must not remove what a policy adds.
    let upgrade = proxy::take_upgrade(&mut req);
    let te_trailers = proxy::te_is_trailers(req.headers());
    proxy::remove_hop_by_hop(req.headers_mut());
    if !rt.server.allow_underscores_in_headers {
        proxy::remove_underscored(req.headers_mut());
    }
    // Only the gateway says who a client is: every identity header of the config (a client
    // certificate's on any listener, since routes are shared by all listeners; what any route's
    // auth tells its upstream) is removed from every request, then this connection's verified
    // certificate identity, if any, is written. The route's own auth writes its headers later.
    for name in &rt.identity_headers {
        req.headers_mut().remove(name);
    }
    if let Some(name) = &conn.forward_identity
        && let Some(v) = conn.client_cert.as_ref().and_then(|c| c.forward_value())
    {
        req.headers_mut().insert(name.clone(), v);
    }

    // Everything after routing answers through one place, so the route's response-phase
    // policies run on every answer: the upstream's, a policy's, and the gateway's own errors.
    let fwd = Forward {
        conn,
        client_host,
        normalized,
        request_id: request_id.clone(),
        upgrade_idle: rt.server.upgrade_idle_timeout,
        body_timeout,
        te_trailers,
        cache: matches!(route.action, Action::Aggregate(_)).then(|| rt.cache.clone()),
    };
    let answer: Result<Response<Body>, GatewayError> = async {
        match route.chain.run_request_from(0, &mut req, &mut cx).await? {
            policy::Early::Continue => {}
            policy::Early::Respond(r) => return Ok(r),
            policy::Early::Background { resp, next, cx: bg } => {
                background(&route, req, next, *bg, &fwd, metrics);
                return Ok(resp);
            }
        }
        forward(
            &route,
            req,
            upgrade,
            (&cx.params, cx.grpc, cx.consumer.clone()),
            &fwd,
            tally,
            metrics,
            line,
        )
        .await
    }
    .await;
    Ok(answer_through(&route.chain, answer, &mut cx, metrics, line).await)
}

/// What forwarding needs of the client side, owned, so a background request can carry it.
struct Forward<'c> {
    conn: &'c ConnInfo,
    client_host: Option<HeaderValue>,
    /// The routed (normalised) path, when normalisation changed it.
    normalized: Option<String>,
    request_id: HeaderValue,
    upgrade_idle: std::time::Duration,
    body_timeout: std::time::Duration,
    te_trailers: bool,
    /// The store's cache, for an aggregate route's cached calls.
    cache: Option<crate::store::cache::Backend>,
}

/// Carries a request on in the background after a policy answered the client (a cache
/// refresh): the rest of the chain, the action, the response hooks, and the body read to its
/// end. Not in the access log (the client's request is); bounded by the route's timeouts.
fn background(
    route: &Arc<crate::runtime::Route>,
    mut req: Request<Body>,
    next: usize,
    mut cx: RequestCtx,
    fwd: &Forward<'_>,
    metrics: &Arc<Metrics>,
) {
    let route = route.clone();
    let metrics = metrics.clone();
    // Not the client's connection slot: the refresh must not count against its
    // `max_connections_per_ip` after the client is gone.
    let mut conn = fwd.conn.clone();
    conn.slot = None;
    let client_host = fwd.client_host.clone();
    let normalized = fwd.normalized.clone();
    let request_id = fwd.request_id.clone();
    let (upgrade_idle, body_timeout, te_trailers) =
        (fwd.upgrade_idle, fwd.body_timeout, fwd.te_trailers);
    let cache = fwd.cache.clone();
    tokio::spawn(async move {
        let fwd = Forward {
            conn: &conn,
            client_host,
            normalized,
            request_id,
            upgrade_idle,
            body_timeout,
            te_trailers,
            cache,
        };
        let tally = Arc::new(Tally::default());
        let mut line = Pending::detached();
        let answer = async {
            match route
                .chain
                .run_request_from(next, &mut req, &mut cx)
                .await?
            {
                policy::Early::Continue => {}
                policy::Early::Respond(r) | policy::Early::Background { resp: r, .. } => {
                    return Ok(r);
                }
            }
            forward(
                &route,
                req,
                None,
                (&cx.params, cx.grpc, cx.consumer.clone()),
                &fwd,
                &tally,
                &metrics,
                &mut line,
            )
            .await
        }
        .await;
        let resp = answer_through(&route.chain, answer, &mut cx, &metrics, &mut line).await;
        crate::policy::cache::drain(resp.into_body()).await;
    });
}

/// What the action needs of the request context: the path params, whether it is gRPC, and the
/// consumer (the context itself is not `Sync`, so it cannot be borrowed across the action).
type Who<'a> = (
    &'a [(String, String)],
    bool,
    Option<Arc<crate::context::Consumer>>,
);

/// The route's action for a request the policies let through: forward it upstream (or answer
/// it, or redirect it).
#[allow(clippy::too_many_arguments)]
async fn forward(
    route: &crate::runtime::Route,
    mut req: Request<Body>,
    upgrade: Option<crate::context::Upgrade>,
    (params, grpc, consumer): Who<'_>,
    fwd: &Forward<'_>,
    tally: &Arc<Tally>,
    metrics: &Metrics,
    line: &mut Pending,
) -> Result<Response<Body>, GatewayError> {
    let conn = fwd.conn;
    let upstream = match &route.action {
        Action::Proxy(u) => Some(u),
        Action::Respond(r) => return Ok(r.response()),
        Action::Redirect(r) => return r.response(params, req.uri().query()),
        Action::Aggregate(_) => None,
    };
    let trace = trace::continue_or_start(req.headers().get(&trace::TRACEPARENT));
    if !trace.continued {
        // `tracestate` belongs to the trace it came with, which was not continued.
        req.headers_mut().remove(&trace::TRACESTATE);
    }
    if let Some(r) = line.record() {
        r.trace = trace.trace_id().as_bytes().try_into().ok();
    }
    req.headers_mut()
        .insert(trace::TRACEPARENT.clone(), trace.header);
    let Some(upstream) = upstream else {
        let (Action::Aggregate(agg), Some(cache)) = (&route.action, fwd.cache.as_ref()) else {
            return Err(GatewayError::Internal("no action".into()));
        };
        // A call is the gateway's own request to another service: it carries the target's
        // Host (the client's names the gateway), whatever `preserve_host` says.
        let down = Downstream {
            forwarded_for: &conn.forwarded_for,
            proto: conn.proto,
            host: None,
            conn_slot: None,
            upgrade_idle: fwd.upgrade_idle,
            port: &conn.port,
            trusted: conn.trusted,
            prefix: None,
            te_trailers: false,
        };
        let input = crate::aggregate::Inputs {
            headers: req.headers(),
            query: req.uri().query(),
            params,
            consumer: consumer.as_deref(),
            route: &route.name,
            down: &down,
            request_id: &fwd.request_id,
            traceparent: req.headers().get(&trace::TRACEPARENT),
            body_timeout: fwd.body_timeout,
            tally,
            metrics,
            cache,
            forwarding: &|r: &mut Request<Body>| {
                proxy::add_forwarding_headers(r, &down, &fwd.request_id)
            },
        };
        let mut records = Vec::new();
        let answer = crate::aggregate::run(agg, &input, &mut records).await;
        if let Some(r) = line.record() {
            r.calls = Some(
                records
                    .iter()
                    .map(|c| format!("{}:{}:{}ms", c.name, c.outcome, c.took.as_millis()))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        return answer;
    };
    let upstream_path = proxy::upstream_path(
        &route.path_action,
        req.uri(),
        fwd.normalized.as_deref(),
        params,
    )?;
    let down = Downstream {
        forwarded_for: &conn.forwarded_for,
        proto: conn.proto,
        host: fwd.client_host.as_ref(),
        conn_slot: conn.slot.clone(),
        upgrade_idle: fwd.upgrade_idle,
        port: &conn.port,
        trusted: conn.trusted,
        prefix: match &route.path_action {
            crate::runtime::PathAction::StripPrefix(p) if p != "/" => Some(p.as_str()),
            _ => None,
        },
        te_trailers: fwd.te_trailers,
    };
    proxy::add_forwarding_headers(&mut req, &down, &fwd.request_id);
    let key = match &upstream.balancer {
        Balancer::Hash { on, .. } => hash_key(on, &req, conn),
        _ => None,
    };
    let call = crate::upstream::Call {
        path: upstream_path,
        down: &down,
        key,
        retry_non_idempotent: route.retry_non_idempotent,
        max_body_size: route.max_body_size,
        body_timeout: fwd.body_timeout,
        tally,
        metrics,
    };
    // A gRPC call's own deadline bounds the wait for the upstream's answer.
    let deadline = if grpc {
        req.headers()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()))
    } else {
        None
    };
    let mut on_target = |t: &crate::upstream::Target| {
        if let Some(r) = line.record() {
            r.target = Some(t.authority.clone());
        }
    };
    let sent = crate::upstream::send(upstream, req, upgrade, &call, &mut on_target);
    let (resp, slot) = match deadline {
        None => sent.await?,
        Some(d) => tokio::time::timeout(d, sent)
            .await
            .map_err(|_| GatewayError::UpstreamTimeout(d))??,
    };
    line.hold(slot);
    Ok(resp)
}

/// The answer a request gets once routing is done: the action's, a policy's, or the error's,
/// with the chain's response hooks run on it.
async fn answer_through(
    chain: &policy::Chain,
    answer: Result<Response<Body>, GatewayError>,
    cx: &mut RequestCtx,
    metrics: &Metrics,
    line: &mut Pending,
) -> Response<Body> {
    let request_id = cx.request_id.clone();
    let grpc = cx.grpc;
    let mut to_response = |e| error_response(metrics, e, &request_id, line, true, grpc);
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => to_response(e),
    };
    if !chain.is_empty() {
        chain.run_response(&mut resp, cx, &mut to_response).await;
    }
    resp
}

/// The gateway's own answer to a request that failed: logged when it is not the client's
/// fault, counted with the parser's rejections when it is a malformed or refused request
/// (`count_rejection`), recorded for the access log, and closing the connection when the rest
/// of it cannot be trusted.
fn error_response(
    metrics: &Metrics,
    e: GatewayError,
    request_id: &HeaderValue,
    line: &mut Pending,
    count_rejection: bool,
    grpc: bool,
) -> Response<Body> {
    if e.logged() {
        tracing::warn!(
            request_id = %request_id_str(request_id),
            error = %e,
            source = ?std::error::Error::source(&e),
            "request failed"
        );
    }
    if count_rejection && e.is_rejection() {
        metrics.rejected(e.code());
    }
    if let Some(r) = line.record() {
        r.error = Some(e.code());
        r.reason = e.reason();
    }
    let close = e.closes_connection();
    let mut resp = if grpc {
        e.into_grpc_response(request_id_str(request_id))
    } else {
        e.into_response(request_id_str(request_id))
    };
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `grpc-timeout` (`1*8DIGIT` and a unit: `H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(v: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A plain listener's answer with `redirect_https`: the same host and path, over HTTPS.
fn https_redirect(
    host: Option<&HeaderValue>,
    port: Option<u16>,
    status: http::StatusCode,
    uri: &http::Uri,
) -> Result<Response<Body>, GatewayError> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .ok_or(GatewayError::BadRequest("no Host to redirect to"))?;
    // The host without the plain port: `[::1]:8080` -> `[::1]`, `a.com:80` -> `a.com`.
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let mut location = String::with_capacity(name.len() + 64);
    location.push_str("https://");
    location.push_str(name);
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p.to_string());
    }
    location.push_str(uri.path_and_query().map_or("/", |p| p.as_str()));
    let location = HeaderValue::from_str(&location)
        .map_err(|_| GatewayError::BadRequest("the request cannot be redirected"))?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

/// The key `balance: hash` places a request by; `None` (placed at random) when it is absent.
fn hash_key(on: &HashOn, req: &Request<Body>, conn: &ConnInfo) -> Option<u64> {
    match on {
        HashOn::ClientIp => Some(hash_bytes(conn.forwarded_for.as_bytes())),
        HashOn::Path => Some(hash_bytes(req.uri().path().as_bytes())),
        HashOn::Header(name) => req.headers().get(name).map(|v| hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
    }
}

/// The host the client addressed, exactly as written: the URI authority when there is one
/// (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target, where RFC 9112 3.2.2 says Host
/// is ignored), else the one Host header. Routing and forwarding both use this value.
///
/// Refuses what RFC 9112 3.2 says a server must answer 400: an HTTP/1.1 request without Host,
/// more than one Host, or a Host that is not `host[:port]` (a space, a `/`, userinfo).
fn client_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    if let Some(h) = first
        && !h.is_empty()
        && !valid_authority(h.as_bytes())
    {
        return Err(GatewayError::BadRequest("invalid Host header"));
    }
    if first.is_none() && req.version() == http::Version::HTTP_11 {
        // Even with an absolute-form target (RFC 9112 3.2: "any HTTP/1.1 request").
        return Err(GatewayError::BadRequest("HTTP/1.1 request without Host"));
    }
    match req.uri().authority() {
        Some(a) => {
            if !valid_authority(a.as_str().as_bytes()) {
                return Err(GatewayError::BadRequest(
                    "invalid authority in request target",
                ));
            }
            // RFC 9113 8.3.1: a Host naming another site than `:authority` is malformed (in
            // HTTP/1.1 absolute form, Host is simply ignored).
            if req.version() == http::Version::HTTP_2
                && first.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()))
            {
                return Err(GatewayError::BadRequest("Host disagrees with :authority"));
            }
            Ok(HeaderValue::from_str(a.as_str()).ok())
        }
        None => Ok(first.filter(|h| !h.is_empty()).cloned()),
    }
}

/// `uri-host [":" port]` (RFC 9110 4.2.3, 7.2): a reg-name, IPv4 or bracketed IPv6 literal,
/// and an optional all-digit port. No userinfo, no path, no whitespace.
fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = match a.iter().rposition(|&b| b == b':') {
        Some(i) if !a.starts_with(b"[") || a[..i].ends_with(b"]") => (&a[..i], Some(&a[i + 1..])),
        _ => (a, None),
    };
    if port.is_some_and(|p| {
        p.len() > 5
            || !p.iter().all(u8::is_ascii_digit)
            || std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_none_or(|n| n > 65535)
    }) {
        return false;
    }
    if let Some(v6) = host.strip_prefix(b"[") {
        return v6.strip_suffix(b"]").is_some_and(|v| {
            !v.is_empty() && v.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        });
    }
    // reg-name: unreserved / pct-encoded / sub-delims (RFC 3986 3.2.2).
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
}

/// What the gateway refuses before routing, whatever the route: methods and request-target
/// forms a reverse proxy does not forward (RFC 9112 3.2).
fn check_target<B>(req: &Request<B>) -> Result<(), GatewayError> {
    if req.method() == http::Method::CONNECT {
        return Err(GatewayError::NotImplemented(
            "CONNECT: Gatehouse is a reverse proxy, not a tunnel",
        ));
    }
    let uri = req.uri();
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(GatewayError::BadRequest(
            "request target scheme is not http or https",
        ));
    }
    // Origin form (`/path`), or the path of an absolute-form target. Asterisk form (`*`)
    // addresses the server as a whole, not a route.
    if !uri.path().starts_with('/') {
        return Err(GatewayError::BadRequest(
            "request target is not an absolute path",
        ));
    }
    Ok(())
}

/// Request smuggling defences on top of hyper's parser: a request whose body length could be
/// read two ways is refused, never forwarded.
fn check_framing(h: &http::HeaderMap) -> Result<(), GatewayError> {
    let te = h.get_all(header::TRANSFER_ENCODING);
    let mut te_count = 0;
    for v in te.iter() {
        te_count += 1;
        if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GatewayError::BadRequest(
                "unsupported or obfuscated Transfer-Encoding",
            ));
        }
    }
    if te_count > 1 {
        return Err(GatewayError::BadRequest(
            "Transfer-Encoding given more than once",
        ));
    }
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = cl.next() {
        if te_count > 0 {
            return Err(GatewayError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if cl.any(|v| v != first) {
            return Err(GatewayError::BadRequest(
                "conflicting Content-Length headers",
            ));
        }
        if first.is_empty() || !first.as_bytes().iter().all(u8::is_ascii_digit) {
            return Err(GatewayError::BadRequest("invalid Content-Length"));
        }
    }
    Ok(())
}

/// The client's `X-Request-Id` if it is sane, else a new random 128-bit id in hex.
fn request_id(h: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn request_id_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn framing() {
        assert!(check_framing(&h(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&h(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&h(&[("transfer-encoding", "Chunked")])).is_ok());
        for bad in [
            vec![("content-length", "5"), ("transfer-encoding", "chunked")],
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("transfer-encoding", "chunked, identity")],
            vec![("transfer-encoding", "xchunked")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("content-length", "+5")],
        ] {
            assert!(check_framing(&h(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids() {
        let id = request_id(&HeaderMap::new());
        assert_eq!(id.len(), 32);
        assert_eq!(request_id(&h(&[("x-request-id", "abc-1")])), "abc-1");
        assert_ne!(
            request_id(&h(&[("x-request-id", "has space")])),
            "has space"
        );
    }

    #[test]
    fn grpc_timeouts() {
        use std::time::Duration;
        assert_eq!(grpc_timeout(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        for bad in [&b"m"[..], b"123456789m", b"10x", b"-1S", b""] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_host_for_routing_and_forwarding() {
        let req = Request::get("http://public.example.com/x")
            .header("host", "admin.example.com")
            .body(())
            .unwrap();
        assert_eq!(client_host(&req).unwrap().unwrap(), "public.example.com");
        let two = Request::get("/x")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert!(client_host(&two).is_err());
    }
}

//! `forward_auth` policy (phase authentication): asks an external service whether a request
//! may pass, as Traefik's ForwardAuth and nginx's `auth_request` do. For each request it sends
//! `GET url` with the configured request headers (default `authorization`, `cookie`) and
//! `X-Forwarded-Method/-Proto/-Host/-Uri/-For`, never the body.
//!
//! - 2xx: the request continues, with the configured `response_headers` of that answer copied
//!   onto it (a client's own copies of those headers are always removed first, so only the
//!   auth service can set them).
//! - any other answer (401 with `WWW-Authenticate`, 302 to a login page, 403): returned to the
//!   client as it is, body included up to [`MAX_DENIAL_BODY`].
//! - no answer within `timeout` (connect refused, slow, broken): 503 `auth_unavailable`,
//!   logged. It fails closed.
//!
//! Connections go through the upstream [`Endpoint`] (TCP, or TLS verified against the system
//! trust store), HTTP/1.1, kept alive and reused. Compiling does no I/O: the TLS client of an
//! `https://` service is built on its first request.
//!
//! `cache: 30s` keeps allow decisions (with the headers to copy) keyed by a SHA-256 of the
//! forwarded request headers, at most [`CACHE_ENTRIES`] of them; denials are never cached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

use super::{Flow, Phase, Policy, PolicyCx, RequestCtx, Step};
use crate::body::Body;
use crate::config::ConfigError;
use crate::config::model::{ForwardAuthConfig, PolicySetConfig};
use crate::error::{BoxError, GatewayError};
use crate::upstream::connector::Endpoint;
use crate::upstream::transport::{
    DEFAULT_MAX_CONCURRENT_STREAMS, Protocol, TlsClient, Transport, Trust,
};

/// Default `timeout`: the whole exchange with the auth service, connect included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest denial body passed on to the client; a larger one is dropped (the status and
/// headers still go through) and logged.
pub const MAX_DENIAL_BODY: usize = 64 * 1024;
/// Cached allow decisions per policy, at most.
pub const CACHE_ENTRIES: usize = 10_000;
/// Idle connections to the auth service kept for reuse, at most.
const MAX_IDLE: usize = 16;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The `forward_auth` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    _cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Policy>> {
    let cfg = set.forward_auth.as_ref()?;
    let p = ForwardAuth::compile(cfg, &format!("{path}.forward_auth"), errors)?;
    Some(Arc::new(p))
}

type Sender = SendRequest<Empty<Bytes>>;
type Copied = Arc<[(HeaderName, HeaderValue)]>;

pub struct ForwardAuth {
    /// As configured, for logs.
    url: Arc<str>,
    path: PathAndQuery,
    /// The `Host` sent: the URL's authority as written.
    host: HeaderValue,
    /// `host:port` to connect to.
    connect_to: String,
    /// For `https://`: the name verified in the service's certificate.
    server_name: Option<ServerName<'static>>,
    /// Built at compile time for `http://`; on first use for `https://` (reading the system
    /// trust store is I/O).
    endpoint: OnceLock<Result<Endpoint, String>>,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    timeout: Duration,
    cache: Option<DecisionCache>,
    idle: Mutex<Vec<Sender>>,
}

/// What the auth service said.
enum Answer {
    Allow(Copied),
    Deny(Response<Body>),
}

impl ForwardAuth {
    pub fn compile(
        cfg: &ForwardAuthConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ForwardAuth> {
        let before = errors.len();
        let url_path = format!("{path}.url");
        let target = parse_url(&cfg.url).map_err(|e| errors.push(ConfigError::new(&url_path, e)));
        let names = |list: &[String], key: &str, errors: &mut Vec<ConfigError>| {
            let mut out: Vec<HeaderName> = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let at = format!("{path}.{key}[{i}]");
                match HeaderName::from_bytes(n.trim().as_bytes()) {
                    Ok(h) if key == "response_headers" && super::headers::is_managed(&h) => {
                        errors.push(ConfigError::new(
                            at,
                            format!("{n:?} is managed by the gateway (hop-by-hop or framing) and cannot be copied"),
                        ))
                    }
                    Ok(h) if !out.contains(&h) => out.push(h),
                    Ok(_) => {}
                    Err(_) => errors.push(ConfigError::new(
                        at,
                        format!("{n:?} is not a header name"),
                    )),
                }
            }
            out
        };
        let request_headers = if cfg.request_headers.is_empty() {
            vec![header::AUTHORIZATION, header::COOKIE]
        } else {
            names(&cfg.request_headers, "request_headers", errors)
        };
        let response_headers = names(&cfg.response_headers, "response_headers", errors);
        let timeout = cfg.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "must be more than 0",
            ));
        }
        let cache = match cfg.cache {
            Some(d) if d.0.is_zero() => {
                errors.push(ConfigError::new(
                    format!("{path}.cache"),
                    "must be more than 0 (leave `cache` out to ask the service every time)",
                ));
                None
            }
            Some(d) => Some(DecisionCache::new(d.0, CACHE_ENTRIES)),
            None => None,
        };
        let target = target.ok()?;
        if errors.len() > before {
            return None;
        }
        let endpoint = OnceLock::new();
        if target.server_name.is_none() {
            let _ = endpoint.set(Ok(Endpoint {
                authority: target.connect_to.clone(),
                server_name: None,
                transport: Arc::new(Transport::plain_http1()),
            }));
        }
        Some(ForwardAuth {
            url: cfg.url.as_str().into(),
            path: target.path,
            host: target.host,
            connect_to: target.connect_to,
            server_name: target.server_name,
            endpoint,
            request_headers,
            response_headers,
            timeout,
            cache,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn endpoint(&self) -> Result<&Endpoint, BoxError> {
        self.endpoint
            .get_or_init(|| {
                let tls = TlsClient::new(
                    Trust::Roots(crate::tls::system_roots()),
                    None,
                    Protocol::Http1,
                    [0; 32],
                )
                .map_err(|e| e.to_string())?;
                Ok(Endpoint {
                    authority: self.connect_to.clone(),
                    server_name: self.server_name.clone(),
                    transport: Arc::new(Transport {
                        protocol: Protocol::Http1,
                        max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
                        tls: Some(tls),
                    }),
                })
            })
            .as_ref()
            .map_err(|e| format!("TLS client for {}: {e}", self.url).into())
    }

    /// The headers sent to the auth service: the configured ones of the client's request, and
    /// where the request was going.
    fn auth_headers(&self, req: &Request<Body>, cx: &RequestCtx) -> HeaderMap {
        let mut out = HeaderMap::new();
        let h = &mut out;
        h.insert(header::HOST, self.host.clone());
        for n in &self.request_headers {
            for v in req.headers().get_all(n) {
                h.append(n.clone(), v.clone());
            }
        }
        h.insert(
            X_FORWARDED_METHOD,
            HeaderValue::from_str(req.method().as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("GET")),
        );
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(cx.proto));
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        if let Some(host) = host {
            h.insert(X_FORWARDED_HOST, host);
        }
        let uri = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        if let Ok(v) = HeaderValue::from_str(uri) {
            h.insert(X_FORWARDED_URI, v);
        }
        if let Ok(v) = HeaderValue::from_str(&cx.client_ip.to_string()) {
            h.insert(X_FORWARDED_FOR, v);
        }
        out
    }

    /// The cache key: the forwarded request headers, names and values.
    fn cache_key(&self, h: &HeaderMap) -> [u8; 32] {
        let mut d = Sha256::new();
        for n in &self.request_headers {
            d.update(n.as_str());
            for v in h.get_all(n) {
                d.update([0]);
                d.update(v.as_bytes());
            }
            d.update([1]);
        }
        d.finalize().into()
    }

    /// An idle connection that is still usable, or a new one.
    async fn connection(&self) -> Result<(Sender, bool), BoxError> {
        loop {
            let parked = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(mut s) = parked else { break };
            if !s.is_closed() && s.ready().await.is_ok() {
                return Ok((s, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// A new connection; its task ends when the connection closes.
    async fn connect(&self) -> Result<Sender, BoxError> {
        let (mut sender, conn) = self.endpoint()?.http1::<Empty<Bytes>>(self.timeout).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.ready().await?;
        Ok(sender)
    }

    fn auth_request(&self, headers: &HeaderMap) -> Request<Empty<Bytes>> {
        let mut out = Request::new(Empty::new());
        *out.uri_mut() = Uri::from(self.path.clone());
        *out.headers_mut() = headers.clone();
        out
    }

    async fn exchange(&self, headers: HeaderMap) -> Result<Answer, BoxError> {
        let (mut sender, reused) = self.connection().await?;
        let resp = match sender.send_request(self.auth_request(&headers)).await {
            Ok(r) => r,
            // A kept-alive connection the service closed meanwhile: the check is a GET, safe
            // to send again, once, on a new connection.
            Err(_) if reused => {
                let mut fresh = self.connect().await?;
                let r = fresh.send_request(self.auth_request(&headers)).await?;
                sender = fresh;
                r
            }
            Err(e) => return Err(e.into()),
        };
        let (parts, mut body) = resp.into_parts();
        let mut buf = BytesMut::new();
        let mut complete = true;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > MAX_DENIAL_BODY {
                    complete = false;
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        if complete
            && !sender.is_closed()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(sender);
        }
        if parts.status.is_success() {
            let copied: Vec<(HeaderName, HeaderValue)> = self
                .response_headers
                .iter()
                .flat_map(|n| {
                    parts
                        .headers
                        .get_all(n)
                        .iter()
                        .map(|v| (n.clone(), v.clone()))
                })
                .collect();
            return Ok(Answer::Allow(copied.into()));
        }
        let mut headers = parts.headers;
        for n in [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
            header::TE,
            header::TRAILER,
            header::UPGRADE,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ] {
            headers.remove(n);
        }
        let body = if complete {
            Body::full(buf.freeze())
        } else {
            tracing::warn!(
                url = %self.url,
                status = parts.status.as_u16(),
                "forward_auth: the denial's body is larger than 64 KiB and was dropped"
            );
            headers.remove(header::CONTENT_TYPE);
            Body::empty()
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = parts.status;
        *resp.headers_mut() = headers;
        Ok(Answer::Deny(resp))
    }
}

impl Policy for ForwardAuth {
    fn credential_headers(&self) -> Vec<HeaderName> {
        self.request_headers.clone()
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.response_headers.clone()
    }

    fn kind(&self) -> &'static str {
        "forward_auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authentication
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        // Only the auth service says what these headers hold, whatever it answers.
        for n in &self.response_headers {
            req.headers_mut().remove(n);
        }
        let key = self.cache.as_ref().map(|_| self.cache_key(req.headers()));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(copied) = cache.get(key, Instant::now())
        {
            copy(req.headers_mut(), &copied);
            return Step::Done(Ok(Flow::Continue));
        }
        let headers = self.auth_headers(req, cx);
        Step::Wait(Box::pin(async move {
            let answer = tokio::time::timeout(self.timeout, self.exchange(headers))
                .await
                .map_err(|_| {
                    GatewayError::AuthUnavailable(
                        format!("{} did not answer within {:?}", self.url, self.timeout).into(),
                    )
                })?
                .map_err(|e| GatewayError::AuthUnavailable(format!("{}: {e}", self.url).into()))?;
            match answer {
                Answer::Allow(copied) => {
                    if let (Some(cache), Some(key)) = (&self.cache, key) {
                        cache.insert(key, copied.clone(), Instant::now());
                    }
                    copy(req.headers_mut(), &copied);
                    Ok(Flow::Continue)
                }
                Answer::Deny(resp) => Ok(Flow::Respond(Box::new(resp))),
            }
        }))
    }
}

fn copy(h: &mut HeaderMap, copied: &[(HeaderName, HeaderValue)]) {
    for (n, v) in copied {
        h.append(n.clone(), v.clone());
    }
}

struct Target {
    path: PathAndQuery,
    host: HeaderValue,
    connect_to: String,
    server_name: Option<ServerName<'static>>,
}

/// `http://host[:port]/path?query` or `https://...`; no userinfo, no fragment.
fn parse_url(url: &str) -> Result<Target, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL (write http://host:port/path)"))?;
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => false,
        Some(s) if *s == Scheme::HTTPS => true,
        _ => return Err(format!("{url:?}: the scheme must be http:// or https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?}: credentials in the URL are not supported (the service sees the client's headers)"
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let server_name = if https {
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Some(
            ServerName::try_from(name)
                .map_err(|_| format!("{url:?}: {host:?} is not a DNS name or IP address"))?,
        )
    } else {
        None
    };
    Ok(Target {
        path: uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        host: HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{url:?}: invalid host"))?,
        connect_to: format!("{host}:{port}"),
        server_name,
    })
}

/// Allow decisions for `ttl`, at most `max` of them; the oldest go first when it is full.
/// Every entry lives equally long, so insertion order is expiry order.
struct DecisionCache {
    ttl: Duration,
    max: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<[u8; 32], (Instant, Copied)>,
    /// Keys with the expiry they were inserted with; an entry replaced since is stale here.
    order: VecDeque<([u8; 32], Instant)>,
}

impl DecisionCache {
    fn new(ttl: Duration, max: usize) -> DecisionCache {
        DecisionCache {
            ttl,
            max,
            inner: Mutex::default(),
        }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Copied> {
        let inner = self.inner.lock().ok()?;
        inner
            .map
            .get(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, c)| c.clone())
    }

    fn insert(&self, key: [u8; 32], copied: Copied, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        while let Some((k, expires)) = inner.order.front().copied() {
            let full = inner.map.len() >= self.max || inner.order.len() >= 2 * self.max;
            if expires > now && !full {
                break;
            }
            inner.order.pop_front();
            if inner.map.get(&k).is_some_and(|(e, _)| *e == expires) {
                inner.map.remove(&k);
            }
        }
        let expires = now + self.ttl;
        inner.map.insert(key, (expires, copied));
        inner.order.push_back((key, expires));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_expires_and_stays_bounded() {
        let c = DecisionCache::new(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        let none: Copied = Arc::from(Vec::new());
        c.insert([1; 32], none.clone(), t0);
        assert!(c.get(&[1; 32], t0 + Duration::from_secs(29)).is_some());
        assert!(c.get(&[1; 32], t0 + Duration::from_secs(30)).is_none());
        for i in 2..=4u8 {
            c.insert(
                [i; 32],
                none.clone(),
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(c.len(), 3, "the oldest went first");
        assert!(c.get(&[1; 32], t0).is_none());
        assert!(c.get(&[4; 32], t0 + Duration::from_secs(5)).is_some());
        // Expired entries are dropped on the next insert.
        c.insert([9; 32], none, t0 + Duration::from_secs(100));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn config_errors_name_their_key() {
        let cfg = ForwardAuthConfig {
            url: "ftp://auth".into(),
            request_headers: vec!["authorization".into(), "bad header".into()],
            response_headers: vec!["x-user".into(), "transfer-encoding".into()],
            ..ForwardAuthConfig::default()
        };
        let mut errors = Vec::new();
        assert!(ForwardAuth::compile(&cfg, "routes[0].forward_auth", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].forward_auth.url",
                "routes[0].forward_auth.request_headers[1]",
                "routes[0].forward_auth.response_headers[1]"
            ]
        );
        for bad in [
            "not a url",
            "http://user:pw@auth/check",
            "/check",
            "https://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let t = parse_url("https://auth.example.com/check?x=1").unwrap();
        assert_eq!(t.connect_to, "auth.example.com:443");
        assert_eq!(t.path.as_str(), "/check?x=1");
        let t = parse_url("http://[::1]:9000").unwrap();
        assert_eq!(t.connect_to, "[::1]:9000");
        assert_eq!(t.path.as_str(), "/");
    }
}

//! Forwarding one request to one target: the upstream URI and path (strip/rewrite), hop-by-hop
//! header removal (RFC 9110 7.6.1), `X-Forwarded-*`, Host, the response-head timeout, and
//! protocol upgrades (WebSocket) spliced byte for byte. Runs after the policy chain.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::body::Body;
use crate::config::compile::PathAction;
use crate::error::GatewayError;
use crate::upstream::{Target, Upstream};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The path and query to send upstream. The client's bytes unless the route changes them.
pub fn upstream_path(
    action: &PathAction,
    original: &Uri,
    params: &[(String, String)],
) -> Result<PathAndQuery, GatewayError> {
    let pq = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let new_path = match action {
        PathAction::Keep => return Ok(pq),
        PathAction::StripPrefix(prefix) => {
            let path = pq.path();
            let rest = if prefix == "/" {
                path
            } else if let Some(rest) = path
                .strip_prefix(prefix.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
            {
                rest
            } else {
                // The raw path differs from the normalised one the route matched (escapes, dot
                // segments): strip from the normalised form, which is what matched.
                let norm = crate::router::normalize(path);
                let stripped = norm
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(&norm)
                    .to_owned();
                return join_query(
                    if stripped.is_empty() { "/" } else { &stripped },
                    pq.query(),
                );
            };
            if rest.is_empty() { "/" } else { rest }.to_owned()
        }
        PathAction::Rewrite(t) => t.render(params),
    };
    join_query(&new_path, pq.query())
}

fn join_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, GatewayError> {
    let s = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(s)
        .map_err(|_| GatewayError::BadRequest("rewritten path is not a valid URI path"))
}

/// True for an HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header.
pub fn is_upgrade(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: the fixed list and every header named in `Connection`.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            // Never let a client strip the gateway's own headers this way.
            if n != X_REQUEST_ID && n != X_FORWARDED_FOR {
                h.remove(&n);
            }
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

/// Facts about the client connection the forwarded headers need.
pub struct Downstream<'a> {
    pub client_addr: SocketAddr,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
}

/// Sends the request to `target` and returns the upstream's response head (body streaming).
pub async fn forward(
    upstream: &Upstream,
    target: &Target,
    mut req: Request<Body>,
    path: PathAndQuery,
    down: &Downstream<'_>,
    request_id: &HeaderValue,
) -> Result<Response<Body>, GatewayError> {
    let upgrade = is_upgrade(&req);
    let upgrade_proto = if upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let downstream_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };

    let client_host = down.host.cloned();
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    append_forwarded(headers, &X_FORWARDED_FOR, &ip_value(down.client_addr));
    append_forwarded(
        headers,
        &X_FORWARDED_PROTO,
        &HeaderValue::from_static(down.proto),
    );
    if let Some(h) = &client_host {
        append_forwarded(headers, &X_FORWARDED_HOST, h);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    let host = match (upstream.preserve_host, client_host) {
        (true, Some(h)) => h,
        _ => target.host_header.clone(),
    };
    headers.insert(header::HOST, host);
    if let Some(p) = upgrade_proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, p);
    }

    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(path);
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|e| GatewayError::Internal(format!("upstream uri: {e}")))?;
    *req.version_mut() = Version::HTTP_11;

    let timeout = upstream.timeouts.response;
    let mut resp = match tokio::time::timeout(timeout, upstream.client.request(req)).await {
        Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
        Ok(Err(e)) if e.is_connect() => return Err(GatewayError::UpstreamConnect(Box::new(e))),
        Ok(Err(e)) => return Err(GatewayError::UpstreamFailed(Box::new(e))),
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down_up) = downstream_upgrade
    {
        let up_up = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice(down_up, up_up));
        let (mut parts, _) = resp.into_parts();
        // Keep Connection/Upgrade: they are the point of a 101.
        parts.headers.remove(header::TRANSFER_ENCODING);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::Incoming(body)))
}

/// Copies bytes both ways between an upgraded client connection and upstream connection until
/// either side closes.
async fn splice(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
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
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn append_forwarded(h: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match h.get(name).map(|v| v.as_bytes()) {
        Some(prev) if !prev.is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + value.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(name.clone(), v);
            }
        }
        _ => {
            h.insert(name.clone(), value.clone());
        }
    }
    // Several header lines of the same name are folded into the one just written.
}

fn ip_value(addr: SocketAddr) -> HeaderValue {
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
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key("x-app") && h.contains_key("x-request-id"));
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
        append_forwarded(
            &mut h,
            &X_FORWARDED_PROTO,
            &HeaderValue::from_static("http"),
        );
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "http");
    }

    #[test]
    fn paths_sent_upstream() {
        let uri: Uri = "/api/users/7?x=1".parse().unwrap();
        let strip = PathAction::StripPrefix("/api".into());
        assert_eq!(
            upstream_path(&strip, &uri, &[]).unwrap().as_str(),
            "/users/7?x=1"
        );
        let exact: Uri = "/api".parse().unwrap();
        assert_eq!(upstream_path(&strip, &exact, &[]).unwrap().as_str(), "/");
        let escaped: Uri = "/%61pi/users".parse().unwrap();
        assert_eq!(
            upstream_path(&strip, &escaped, &[]).unwrap().as_str(),
            "/users"
        );
        let keep = PathAction::Keep;
        let raw: Uri = "/a/%2e%2e/b?q".parse().unwrap();
        assert_eq!(
            upstream_path(&keep, &raw, &[]).unwrap().as_str(),
            "/a/%2e%2e/b?q"
        );
        let rw = PathAction::Rewrite(RewriteTemplate::parse("/v2/users/{id}", &["id"]).unwrap());
        let u: Uri = "/users/7?expand=1".parse().unwrap();
        assert_eq!(
            upstream_path(&rw, &u, &[("id".into(), "7".into())])
                .unwrap()
                .as_str(),
            "/v2/users/7?expand=1"
        );
    }
}

//! The message transforms of forwarding, before `upstream::send`: the path sent upstream
//! (strip/rewrite), hop-by-hop removal (RFC 9110 7.6.1), `X-Forwarded-*`, `Via`, the client's
//! upgrade request. Sending one try to one target lives in `upstream::exchange`.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};

use crate::body::Body;
pub use crate::context::{Downstream, Upgrade, ip_value};
use crate::error::GatewayError;
pub use crate::hop::{remove_hop_by_hop, te_is_trailers};
use crate::runtime::{Cidr, PathAction};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

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
    let on = req
        .extensions_mut()
        .remove::<crate::context::PendingUpgrade>()?
        .take()?;
    Some(Upgrade { proto, on })
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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

/// The client's address as policies see it (IP rules, rate limits by client): the peer,
/// unless the peer is one of `server.trusted_proxies`. Then `X-Forwarded-For` is read from the
/// right, skipping addresses that are trusted proxies too, and the first other address is the
/// client (nginx's `real_ip_recursive on`). An element that is not an address ends the walk at
/// the last trusted hop: what is left of it was written by the client and proves nothing.
pub fn client_ip(h: &HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let lines: Vec<&HeaderValue> = h.get_all(&X_FORWARDED_FOR).iter().collect();
    for line in lines.into_iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for element in line.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(element.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RewriteTemplate;

    #[test]
    fn client_ip_is_read_through_trusted_proxies_only() {
        let trusted = [
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_str(l).unwrap());
            }
            h
        };
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(&xff(&["1.1.1.1"]), ip("192.0.2.9"), &trusted),
            ip("192.0.2.9")
        );
        // Through two trusted hops to the first untrusted one; what the client wrote to the
        // left of it does not count.
        assert_eq!(
            client_ip(
                &xff(&["6.6.6.6, 203.0.113.7", "10.1.1.1:5000"]),
                ip("10.0.0.2"),
                &trusted
            ),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(&xff(&["[2001:db8::7]:443"]), ip("::1"), &trusted),
            ip("2001:db8::7")
        );
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            client_ip(&xff(&["1.1.1.1, junk"]), ip("10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        // No header: the trusted peer itself.
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
    }

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

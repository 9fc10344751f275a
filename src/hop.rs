//! Hop-by-hop header fields (RFC 9110 7.6.1): what belongs to one connection and never
//! crosses the gateway, in either direction. `proxy` strips them from requests, `upstream` from
//! responses.

use http::header::{self, HeaderMap, HeaderName};

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

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

/// Whether the request carries exactly one `TE: trailers` (case-insensitive), the one TE value
/// HTTP/2 allows (RFC 9113 8.2.2): what is forwarded to an HTTP/2 upstream after the
/// hop-by-hop fields are gone.
pub fn te_is_trailers(h: &HeaderMap) -> bool {
    let mut te = h.get_all(header::TE).iter();
    matches!((te.next(), te.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

pub fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRAILER
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

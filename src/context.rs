//! Per-request facts shared by the layers of the request path: what the gateway knows of the
//! client side, for the message transforms (`proxy`) and for sending (`upstream`). A low
//! module: it imports neither.

use std::sync::Arc;

use http::HeaderValue;

/// A WebSocket upgrade the client asked for, taken from the request before its hop-by-hop
/// headers are removed.
pub struct Upgrade {
    pub proto: HeaderValue,
    pub on: hyper::upgrade::OnUpgrade,
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
    pub conn_slot: Option<Arc<dyn Send + Sync>>,
    /// `server.upgrade_idle_timeout`: an upgraded connection idle both ways this long closes.
    pub upgrade_idle: std::time::Duration,
    /// The port the client connected to, for `X-Forwarded-Port`.
    pub port: &'a HeaderValue,
    /// The client is one of `server.trusted_proxies`: its forwarding fields are kept.
    pub trusted: bool,
    /// The prefix `strip_prefix` removed, for `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
}

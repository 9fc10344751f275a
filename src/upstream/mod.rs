//! Upstreams: named groups of targets, each with its connection pool and balancer. Chosen by
//! the route; `select` picks the target for one request, the pool sends it.
//!
//! Pools live in a [`Pools`] registry keyed by upstream name so that a recompiled config (hot
//! reload) keeps the warm connections of upstreams whose settings did not change.

pub mod balancer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;

pub type HttpClient = Client<HttpConnector, Body>;

/// Documented defaults (README "Timeouts").
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub idle: Duration,
}

pub struct Target {
    /// As written in the config, for logs and `explain`.
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `host:port` of the target, sent as Host when the upstream does not preserve the client's.
    pub host_header: HeaderValue,
    pub weight: u32,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub balancer: balancer::SmoothWeighted,
    pub client: HttpClient,
    pub timeouts: Timeouts,
    pub preserve_host: bool,
}

impl Upstream {
    /// Picks the target for one request.
    pub fn select(&self) -> Option<&Target> {
        self.balancer.next().and_then(|i| self.targets.get(i))
    }
}

/// Connection pools by upstream name, reused across recompiles when the settings match.
#[derive(Default)]
pub struct Pools {
    inner: Mutex<HashMap<String, (Timeouts, HttpClient)>>,
}

impl Pools {
    pub fn client(&self, upstream: &str, t: Timeouts) -> HttpClient {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((tt, c)) = map.get(upstream)
            && *tt == t
        {
            return c.clone();
        }
        let c = build_client(t);
        map.insert(upstream.to_owned(), (t, c.clone()));
        c
    }

    /// Drops pools of upstreams that no longer exist.
    pub fn retain(&self, names: &[&str]) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| names.contains(&k.as_str()));
    }
}

fn build_client(t: Timeouts) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(t.connect));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(t.idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // The gateway writes Host itself (preserved or the target's).
        .set_host(false)
        .build(connector)
}

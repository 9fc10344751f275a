//! The compiled, immutable types the request path reads: the [`Runtime`] snapshot, its routes
//! and their actions, the server settings. Built by `config::compile`; nothing here depends on
//! the YAML file format.

pub mod action;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Re-exported: the server settings and the policies both use it.
pub use crate::cidr::Cidr;
pub use action::{Action, Redirect, Respond};

use crate::config::ConfigError;
use crate::config::model::AccessLogConfig;
use crate::observe::metrics::RouteStats;
use crate::policy::Chain;
use crate::registry::Claims;
use crate::router::{Matcher, RewriteTemplate, Routable, Router};
use crate::upstream::Upstream;

/// The compiled, immutable form of a config. A request loads one and uses it to the end.
pub struct Runtime {
    /// In config order.
    pub listeners: Vec<ListenerSettings>,
    pub admin: Option<AdminSettings>,
    pub router: Router<Route>,
    /// In config order.
    pub routes: Vec<Arc<Route>>,
    /// The `global` policies: part of every route's chain, and run alone on requests that
    /// match no route.
    pub global: Chain,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub access_log: Option<AccessLogConfig>,
    /// Shared: every connection holds them (a reference, not a copy, in its task).
    pub server: Arc<ServerSettings>,
    /// See [`worker_count`].
    pub workers: Option<usize>,
    pub scheduler: Scheduler,
    pub warnings: Vec<ConfigError>,
    /// Every filesystem path the config names, `(key path, path)`.
    pub file_paths: Vec<(String, String)>,
    /// The long-lived resources this config uses (pools, balancer positions, budgets, target
    /// health): the live ones it keeps and the new ones it makes. [`crate::State::adopt`]
    /// makes them the live set when this config goes live.
    pub claims: Claims,
    /// Headers only the gateway says: every listener's `client_auth.forward_header` and what
    /// every `auth` and `forward_auth` policy tells upstreams (`identity_headers`, JWT
    /// `forward_claims`, `response_headers`). A client's copies are removed from every request,
    /// whichever listener it came in on and whichever route it takes.
    pub identity_headers: Vec<http::HeaderName>,
    /// Every query parameter a policy of the config reads a credential from (`api_key.query`):
    /// removed from the path every access-log line shows, whatever answered the request.
    pub query_secrets: Vec<String>,
    /// The shared store (`store:`) the policies use, for the admin status and the metrics.
    pub store: Arc<crate::store::Store>,
    /// Where the response cache lives (the admin API purges it, metrics read its size).
    pub cache: crate::store::cache::Backend,
}

/// One proxy listener: its address, and what it does besides plain HTTP.
#[derive(Clone)]
pub struct ListenerSettings {
    pub addr: SocketAddr,
    pub tls: Option<Arc<TlsListener>>,
    pub redirect_https: Option<RedirectHttps>,
}

/// A listener that terminates TLS.
pub struct TlsListener {
    /// Certificates by SNI, versions, ALPN (`h2`, `http/1.1`), client verification, session
    /// tickets. A new connection takes the current one, so a reload swaps certificates
    /// without touching open connections.
    pub config: Arc<rustls::ServerConfig>,
    /// Where the verified client certificate's identity goes upstream (mutual TLS).
    pub forward_identity: Option<http::HeaderName>,
    /// `Strict-Transport-Security`, when configured.
    pub hsts: Option<http::HeaderValue>,
}

/// A plain listener that sends clients to HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectHttps {
    /// `None`: the default port 443, left out of the URL.
    pub port: Option<u16>,
    pub status: http::StatusCode,
}

impl Runtime {
    /// The settings of the listener bound for `addr` (as configured).
    pub fn listener(&self, addr: SocketAddr) -> Option<&ListenerSettings> {
        self.listeners.iter().find(|l| l.addr == addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_body_size: Option<u64>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub shutdown_timeout: Duration,
    pub request_body_timeout: Duration,
    pub send_timeout: Duration,
    pub upgrade_idle_timeout: Duration,
    pub trusted_proxies: Vec<Cidr>,
    pub allow_underscores_in_headers: bool,
    pub strict_paths: bool,
}

pub enum PathAction {
    /// Forward the client's path and query as they came.
    Keep,
    /// Remove this prefix from the path.
    StripPrefix(String),
    /// Replace the path (the query is kept).
    Rewrite(RewriteTemplate),
}

pub struct Route {
    pub name: Arc<str>,
    pub index: usize,
    pub matcher: Matcher,
    /// Forward, answer, or redirect.
    pub action: crate::runtime::Action,
    pub path_action: PathAction,
    /// Global, `use:` and inline policies, ordered by phase.
    pub chain: Chain,
    pub max_body_size: Option<u64>,
    pub retry_non_idempotent: bool,
    /// Metric handles, shared with same-named routes of earlier and later configs. Set when
    /// the config goes live ([`crate::State::adopt`]): compiling registers no series.
    pub stats: OnceLock<Arc<RouteStats>>,
}

impl Routable for Route {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// How the workers share the connections (the config's `scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// One multi-threaded runtime (tokio's work stealing).
    WorkStealing,
    /// One single-threaded runtime per worker, each with its own socket of every listener.
    PerCore,
}

/// The number of worker threads: `workers`, else the CPUs this process may run on
/// (`available_parallelism` honours CPU affinity and cgroup quotas).
pub fn worker_count(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

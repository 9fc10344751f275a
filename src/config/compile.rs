//! Config (plain data) -> Runtime (validated, precompiled, immutable). Every check that needs
//! more than one key lives here, and every problem is collected with its key path; nothing
//! half-valid ever runs. Warnings (routes that can never match, unused upstreams) do not stop
//! the config from loading.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Uri};

use super::ConfigError;
use super::model::*;
use crate::State;
use crate::observe::metrics::RouteStats;
use crate::policy::{self, Bound, Chain, Policy};
use crate::router::{HostPattern, Matcher, PathPattern, RewriteTemplate, Routable, Router};
use crate::upstream::balancer::{Balancer, HashOn, Ring};
use crate::upstream::health::ActivePolicy;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::state::PassivePolicy;
use crate::upstream::{self, Limits, Target, Timeouts, Upstream, dns};

pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's `client_body_timeout` and `send_timeout`.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Long enough for WebSocket clients that ping every minute or so.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
/// hyper's read buffer cannot be smaller than this.
const MIN_HEADER_SIZE: u64 = 8 * 1024;

/// The compiled, immutable form of a config. A request loads one and uses it to the end.
pub struct Runtime {
    pub listeners: Vec<SocketAddr>,
    pub admin: Option<AdminSettings>,
    pub router: Router<Route>,
    /// In config order.
    pub routes: Vec<Arc<Route>>,
    /// The `global` policies: part of every route's chain, and run alone on requests that
    /// match no route.
    pub global: Chain,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub access_log: Option<AccessLogConfig>,
    pub server: ServerSettings,
    pub workers: Option<usize>,
    pub warnings: Vec<ConfigError>,
    /// Every filesystem path the config names, `(key path, path)` ([`Config::file_paths`]).
    pub file_paths: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";

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

/// An address block, `10.0.0.0/8` or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 block `10.0.0.0/8`: clients are compared in
        // their canonical form.
        match net.to_canonical() {
            v4 @ std::net::IpAddr::V4(_) if net.is_ipv6() && bits >= 96 => Ok(Cidr {
                net: v4,
                bits: bits - 96,
            }),
            _ => Ok(Cidr { net, bits }),
        }
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
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
    /// Metric handles, shared with same-named routes of earlier and later configs.
    pub stats: Arc<RouteStats>,
}

impl Routable for Route {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// A route's action: exactly one of `upstream` (already resolved, when it exists), `respond`
/// and `redirect`.
fn compile_action(
    r: &crate::config::model::RouteConfig,
    upstream: Option<Arc<Upstream>>,
    params: &[&str],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::runtime::Action> {
    use crate::runtime::{Action, Redirect, Respond};
    let given = usize::from(r.upstream.is_some())
        + usize::from(r.respond.is_some())
        + usize::from(r.redirect.is_some());
    if given != 1 {
        let name = r
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        errors.push(ConfigError::new(
            path.to_owned(),
            format!(
                "route{name} needs exactly one of `upstream`, `respond` and `redirect` (it has {})",
                if given == 0 {
                    "none".to_owned()
                } else {
                    given.to_string()
                }
            ),
        ));
        return None;
    }
    if r.upstream.is_some() {
        return upstream.map(Action::Proxy);
    }
    if let Some(c) = &r.respond {
        return match Respond::compile(c.status, c.body.as_deref(), &c.headers) {
            Ok(a) => Some(Action::Respond(a)),
            Err((key, e)) => {
                errors.push(ConfigError::new(format!("{path}.respond.{key}"), e));
                None
            }
        };
    }
    let c = r.redirect.as_ref()?;
    match Redirect::compile(&c.to, c.status, params) {
        Ok(a) => Some(Action::Redirect(a)),
        Err((key, e)) => {
            errors.push(ConfigError::new(format!("{path}.redirect.{key}"), e));
            None
        }
    }
}

/// Compiles a parsed config. `pools` keeps connection pools across recompiles.
pub fn compile(cfg: &Config, state: &State) -> Result<Runtime, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let listeners = compile_listeners(&cfg.listen, &mut errors);
    let admin = cfg
        .admin
        .as_ref()
        .and_then(|a| compile_admin(a, &listeners, &mut errors));
    let server = compile_server(&cfg.server, &mut errors);

    if let Some(w) = cfg.workers
        && (w == 0 || w > 1024)
    {
        errors.push(ConfigError::new(
            "workers",
            format!("must be between 1 and 1024, got {w}"),
        ));
    }

    let mut upstreams = BTreeMap::new();
    for (name, u) in &cfg.upstreams {
        if let Some(up) = compile_upstream(name, u, state, &mut errors) {
            upstreams.insert(name.clone(), Arc::new(up));
        }
    }

    // Named policies compile once and are shared by every route that uses them.
    let mut named: BTreeMap<&str, Vec<Arc<dyn Policy>>> = BTreeMap::new();
    for (name, p) in &cfg.policies {
        named.insert(
            name.as_str(),
            policy::compile_set(p, &format!("policies.{name}"), &mut errors),
        );
    }
    let known_policies = || {
        cfg.policies
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let resolve_uses = |uses: &[String], path: &str, errors: &mut Vec<ConfigError>| -> Vec<Bound> {
        let mut chain = Vec::new();
        for (i, u) in uses.iter().enumerate() {
            match named.get(u.as_str()) {
                Some(ps) => {
                    let source: Arc<str> = format!("policies.{u}").into();
                    chain.extend(ps.iter().map(|p| Bound {
                        policy: p.clone(),
                        source: source.clone(),
                    }))
                }
                None => errors.push(ConfigError::new(
                    format!("{path}[{i}]"),
                    if cfg.policies.is_empty() {
                        format!("no policy named {u:?} (there is no `policies:` section)")
                    } else {
                        format!("no policy named {u:?} (known: {})", known_policies())
                    },
                )),
            }
        }
        chain
    };
    let inline =
        |set: &PolicySetConfig, path: &str, source: &str, errors: &mut Vec<ConfigError>| {
            let source: Arc<str> = source.into();
            policy::compile_set(set, path, errors)
                .into_iter()
                .map(move |p| Bound {
                    policy: p,
                    source: source.clone(),
                })
        };

    // In source order; `Chain::new` orders by phase.
    let mut global_bound = Vec::new();
    if let Some(g) = &cfg.global {
        global_bound.extend(resolve_uses(&g.uses, "global.use", &mut errors));
        global_bound.extend(inline(
            &g.inline_policies(),
            "global",
            "global",
            &mut errors,
        ));
    }

    let mut routes = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut used_upstreams: HashSet<&str> = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let matcher = compile_matcher(&r.matcher, &format!("{path}.match"), &mut errors);
        let upstream = match r.upstream.as_deref() {
            None => None,
            Some(name) => match upstreams.get(name) {
                Some(u) => Some(u.clone()),
                None => {
                    if !cfg.upstreams.contains_key(name) {
                        let known: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
                        errors.push(ConfigError::new(
                            format!("{path}.upstream"),
                            if known.is_empty() {
                                format!(
                                    "no upstream named {name:?} (there is no `upstreams:` section)"
                                )
                            } else {
                                format!("no upstream named {name:?} (known: {})", known.join(", "))
                            },
                        ));
                    }
                    None
                }
            },
        };
        if let Some(name) = r.upstream.as_deref() {
            used_upstreams.insert(name);
        }

        let name = match &r.name {
            Some(n) => {
                if n.trim().is_empty() {
                    errors.push(ConfigError::new(
                        format!("{path}.name"),
                        "must not be empty",
                    ));
                }
                if !names.insert(n.clone()) {
                    errors.push(ConfigError::new(
                        format!("{path}.name"),
                        format!("duplicate route name {n:?}"),
                    ));
                }
                n.clone()
            }
            None => {
                let mut n = matcher
                    .as_ref()
                    .map_or_else(|| format!("routes[{i}]"), derive_name);
                if names.contains(&n) {
                    n = format!("{n} #{i}");
                }
                names.insert(n.clone());
                n
            }
        };

        let path_action = match (&r.rewrite, r.strip_prefix) {
            (Some(_), true) => {
                errors.push(ConfigError::new(
                    format!("{path}.rewrite"),
                    "use either `rewrite` or `strip_prefix`, not both",
                ));
                PathAction::Keep
            }
            (Some(t), false) => match RewriteTemplate::parse(
                t,
                &matcher
                    .as_ref()
                    .map(|m| m.path.param_names())
                    .unwrap_or_default(),
            ) {
                Ok(t) => PathAction::Rewrite(t),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{path}.rewrite"), e));
                    PathAction::Keep
                }
            },
            (None, true) => match matcher.as_ref().map(|m| &m.path) {
                Some(PathPattern::Prefix(p)) => PathAction::StripPrefix(p.clone()),
                None => PathAction::Keep,
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.strip_prefix"),
                        "needs `match.path_prefix` (with `match.path`, use `rewrite`)",
                    ));
                    PathAction::Keep
                }
            },
            (None, false) => PathAction::Keep,
        };

        let mut bound = global_bound.clone();
        bound.extend(resolve_uses(&r.uses, &format!("{path}.use"), &mut errors));
        bound.extend(inline(&r.inline_policies(), &path, "inline", &mut errors));
        let chain = Chain::new(bound);

        let params = matcher
            .as_ref()
            .map(|m| m.path.param_names())
            .unwrap_or_default();
        let action = compile_action(r, upstream, &params, &path, &mut errors);
        if !matches!(action, Some(crate::runtime::Action::Proxy(_)))
            && (r.strip_prefix || r.rewrite.is_some())
            && action.is_some()
        {
            errors.push(ConfigError::new(
                format!(
                    "{path}.{}",
                    if r.strip_prefix {
                        "strip_prefix"
                    } else {
                        "rewrite"
                    }
                ),
                "only applies to a route that forwards to an `upstream`",
            ));
        }
        if let (Some(action), Some(matcher)) = (action, matcher) {
            let name: Arc<str> = name.into();
            routes.push(Arc::new(Route {
                stats: state.metrics.route(&name),
                name,
                index: i,
                matcher,
                action,
                path_action,
                chain,
                max_body_size: r.max_body_size.map(|b| b.0).or(server.max_body_size),
                retry_non_idempotent: r.retry_non_idempotent,
            }));
        }
    }

    for name in cfg.upstreams.keys() {
        if !used_upstreams.contains(name.as_str()) {
            warnings.push(ConfigError::new(
                format!("upstreams.{name}"),
                "is not used by any route",
            ));
        }
    }
    if cfg.routes.is_empty() {
        warnings.push(ConfigError::new(
            "routes",
            "no routes: every request will get 404",
        ));
    }

    if !errors.is_empty() {
        return Err(cfg.redactions.scrub_all(errors));
    }

    let router = Router::new(routes.clone());
    for s in router.shadowed() {
        // Every route compiled (there were no errors), so `routes[i].index == i`.
        let (a, b) = (&routes[s.index], routes.get(s.by));
        warnings.push(ConfigError::new(
            format!("routes[{}]", a.index),
            match b {
                Some(b) => format!(
                    "route {:?} can never match: route {:?} (routes[{}]) matches every request it would, and is at least as specific",
                    a.name, b.name, b.index
                ),
                None => format!("route {:?} can never match", a.name),
            },
        ));
    }

    let access_log = match &cfg.access_log {
        None => Some(AccessLogConfig::default()),
        Some(AccessLogSetting::Switch(Switch::Bool(false) | Switch::Word(OnOff::Off))) => None,
        Some(AccessLogSetting::Switch(Switch::Bool(true) | Switch::Word(OnOff::On))) => {
            Some(AccessLogConfig::default())
        }
        Some(AccessLogSetting::Config(c)) => Some(c.clone()),
    };

    Ok(Runtime {
        listeners,
        admin,
        router,
        routes,
        global: Chain::new(global_bound),
        upstreams,
        access_log,
        server,
        workers: cfg.workers,
        warnings: cfg.redactions.scrub_all(warnings),
        file_paths: cfg.file_paths(),
    })
}

/// What a config applied through the admin API may not do: add a filesystem path or change
/// one (`running` holds the running config's). A path the admin API could choose is a file
/// it could write (the access log) or read (certificates, keys): paths change only in the
/// file on disk. Removing a path (`access_log: off`, back to `stdout`) is allowed.
pub fn file_path_changes(
    running: &[(String, String)],
    new: &[(String, String)],
) -> Vec<ConfigError> {
    new.iter()
        .filter(|(key, p)| !running.iter().any(|(k, q)| k == key && q == p))
        .map(|(key, _)| {
            ConfigError::new(
                key.clone(),
                "a filesystem path cannot be added or changed through the admin API; edit the config file on disk and reload",
            )
        })
        .collect()
}

fn derive_name(m: &Matcher) -> String {
    let mut s = String::new();
    if !m.methods.is_empty() {
        s.push_str(
            &m.methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
        );
        s.push(' ');
    }
    if let Some(h) = m.hosts.first()
        && *h != HostPattern::Any
    {
        s.push_str(&h.display());
    }
    s.push_str(&m.path.display());
    if matches!(m.path, PathPattern::Prefix(_)) && !s.ends_with('/') {
        s.push_str("/*");
    } else if matches!(m.path, PathPattern::Prefix(_)) {
        s.push('*');
    }
    s
}

fn compile_listeners(l: &ListenConfig, errors: &mut Vec<ConfigError>) -> Vec<SocketAddr> {
    let entries: Vec<(String, &str)> = match l {
        ListenConfig::One(s) => vec![("listen".into(), s.as_str())],
        ListenConfig::Many(v) => v
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                ListenerEntry::Addr(s) => (format!("listen[{i}]"), s.as_str()),
                ListenerEntry::Full(f) => (format!("listen[{i}].addr"), f.addr.as_str()),
            })
            .collect(),
    };
    if entries.is_empty() {
        errors.push(ConfigError::new(
            "listen",
            "at least one listener is needed",
        ));
    }
    let mut out = Vec::new();
    for (path, s) in entries {
        match parse_listen_addr(s) {
            Ok(a) => {
                if out.contains(&a) {
                    errors.push(ConfigError::new(
                        path,
                        format!("address {a} is listed twice"),
                    ));
                } else {
                    out.push(a);
                }
            }
            Err(e) => errors.push(ConfigError::new(path, e)),
        }
    }
    out
}

/// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all interfaces), `localhost:8080`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(format!(
        "invalid listen address {s:?} (expected IP:PORT such as \"127.0.0.1:8080\" or \"[::]:8080\")"
    ))
}

fn compile_admin(
    a: &AdminConfig,
    listeners: &[SocketAddr],
    errors: &mut Vec<ConfigError>,
) -> Option<AdminSettings> {
    let addr = match parse_listen_addr(a.addr.as_deref().unwrap_or(DEFAULT_ADMIN_ADDR)) {
        Ok(addr) => addr,
        Err(e) => {
            errors.push(ConfigError::new("admin.addr", e));
            return None;
        }
    };
    if listeners.contains(&addr) && addr.port() != 0 {
        errors.push(ConfigError::new(
            "admin.addr",
            format!("{addr} is also a proxy listener; the admin API needs its own"),
        ));
    }
    let token = a.token.clone().filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        errors.push(ConfigError::new(
            "admin.token",
            format!("required when the admin API listens beyond loopback ({addr})"),
        ));
    }
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        errors.push(ConfigError::new(
            "admin.token",
            "must be at least 16 characters",
        ));
    }
    Some(AdminSettings { addr, token })
}

fn compile_server(s: &ServerConfig, errors: &mut Vec<ConfigError>) -> ServerSettings {
    let max_header_size = s.max_header_size.map_or(DEFAULT_MAX_HEADER_SIZE, |b| b.0);
    if !(MIN_HEADER_SIZE..=16 * 1024 * 1024).contains(&max_header_size) {
        errors.push(ConfigError::new(
            "server.max_header_size",
            "must be between 8KiB and 16MiB",
        ));
    }
    let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        errors.push(ConfigError::new(
            "server.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let request_header_timeout = s
        .request_header_timeout
        .map_or(DEFAULT_REQUEST_HEADER_TIMEOUT, |d| d.0);
    if request_header_timeout.is_zero() {
        errors.push(ConfigError::new(
            "server.request_header_timeout",
            "must be more than 0",
        ));
    }
    let idle_timeout = s.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0);
    if idle_timeout.is_zero() {
        errors.push(ConfigError::new(
            "server.idle_timeout",
            "must be more than 0",
        ));
    }
    let max_connections_per_ip = s
        .max_connections_per_ip
        .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP);
    if max_connections_per_ip == 0 {
        errors.push(ConfigError::new(
            "server.max_connections_per_ip",
            "must be at least 1",
        ));
    }
    let mut positive = |key: &str, v: Option<crate::config::units::DurationStr>, default| {
        let d = v.map_or(default, |d| d.0);
        if d.is_zero() {
            errors.push(ConfigError::new(
                format!("server.{key}"),
                "must be more than 0",
            ));
        }
        d
    };
    let request_body_timeout = positive(
        "request_body_timeout",
        s.request_body_timeout,
        DEFAULT_REQUEST_BODY_TIMEOUT,
    );
    let send_timeout = positive("send_timeout", s.send_timeout, DEFAULT_SEND_TIMEOUT);
    let upgrade_idle_timeout = positive(
        "upgrade_idle_timeout",
        s.upgrade_idle_timeout,
        DEFAULT_UPGRADE_IDLE_TIMEOUT,
    );
    let mut trusted_proxies = Vec::new();
    for (i, t) in s.trusted_proxies.iter().flatten().enumerate() {
        match Cidr::parse(t) {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => errors.push(ConfigError::new(format!("server.trusted_proxies[{i}]"), e)),
        }
    }
    ServerSettings {
        trusted_proxies,
        allow_underscores_in_headers: s.allow_underscores_in_headers.unwrap_or(false),
        strict_paths: s.path_normalization == Some(crate::config::model::PathNormalization::Strict),
        request_header_timeout,
        idle_timeout,
        max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
        max_body_size: s.max_body_size.map(|b| b.0),
        max_connections,
        max_connections_per_ip,
        shutdown_timeout: s.shutdown_timeout.map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
        request_body_timeout,
        send_timeout,
        upgrade_idle_timeout,
    }
}

fn compile_upstream(
    name: &str,
    u: &UpstreamConfig,
    state: &State,
    errors: &mut Vec<ConfigError>,
) -> Option<Upstream> {
    let path = format!("upstreams.{name}");
    let before = errors.len();
    if u.targets.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.targets"),
            "at least one target is needed",
        ));
    }
    let mut targets = Vec::new();
    let mut names = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let (url, weight, tpath) = match t {
            TargetConfig::Url(s) => (s.as_str(), 1, format!("{path}.targets[{i}]")),
            TargetConfig::Weighted(w) => (
                w.url.as_str(),
                w.weight.unwrap_or(1),
                format!("{path}.targets[{i}].url"),
            ),
        };
        if weight > 1000 {
            errors.push(ConfigError::new(
                format!("{path}.targets[{i}].weight"),
                format!("must be 0..=1000, got {weight}"),
            ));
        }
        match parse_target_url(url) {
            Ok((scheme, authority)) => {
                let Ok(host_header) = HeaderValue::from_str(authority.as_str()) else {
                    errors.push(ConfigError::new(tpath, format!("invalid host in {url:?}")));
                    continue;
                };
                if targets
                    .iter()
                    .any(|t: &TargetParts| t.authority == authority)
                {
                    errors.push(ConfigError::new(
                        tpath,
                        format!("target {url:?} is listed twice"),
                    ));
                    continue;
                }
                // A host name that has been resolved: one target per address, each sent the
                // name as its Host.
                if dns::is_name(&authority) {
                    names.push(authority.to_string());
                    if let Some(addrs) = state.dns.get(authority.as_str()) {
                        for addr in addrs {
                            let Ok(a) = addr.to_string().parse::<Authority>() else {
                                continue;
                            };
                            if targets.iter().any(|t: &TargetParts| t.authority == a) {
                                continue;
                            }
                            targets.push(TargetParts {
                                url: url.to_owned(),
                                scheme: scheme.clone(),
                                authority: a,
                                host_header: host_header.clone(),
                                weight,
                            });
                        }
                        continue;
                    }
                }
                targets.push(TargetParts {
                    url: url.to_owned(),
                    scheme,
                    authority,
                    host_header,
                    weight,
                });
            }
            Err(e) => errors.push(ConfigError::new(tpath, e)),
        }
    }
    if !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
        errors.push(ConfigError::new(
            format!("{path}.targets"),
            "every target has weight 0: none could take traffic",
        ));
    }
    let timeouts = Timeouts {
        connect: u
            .timeouts
            .connect
            .map_or(upstream::DEFAULT_CONNECT_TIMEOUT, |d| d.0),
        response: u
            .timeouts
            .response
            .map_or(upstream::DEFAULT_RESPONSE_TIMEOUT, |d| d.0),
        idle: u
            .timeouts
            .idle
            .map_or(upstream::DEFAULT_IDLE_TIMEOUT, |d| d.0),
    };
    for (k, d) in [
        ("connect", timeouts.connect),
        ("response", timeouts.response),
    ] {
        if d.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeouts.{k}"),
                "must be more than 0",
            ));
        }
    }
    let balancer = compile_balancer(name, u, &path, &targets, state, errors);
    let passive = compile_passive(u, &path, errors);
    let active = compile_active(u, &path, errors);
    let retry = compile_retries(name, u, &path, state, errors);
    if errors.len() > before {
        return None;
    }
    let (Some(balancer), Some(passive), Some(retry), Some(active)) =
        (balancer, passive, retry, active)
    else {
        return None;
    };
    // Reads the pool registry only: `State::adopt` records what a live config uses.
    if u.dns_refresh.is_some_and(|d| d.0 < Duration::from_secs(1)) {
        errors.push(ConfigError::new(
            format!("{path}.dns_refresh"),
            "must be at least 1s",
        ));
        return None;
    }
    let limits = Limits {
        max_connections: u.limits.as_ref().and_then(|l| l.max_connections),
        max_pending: u.limits.as_ref().and_then(|l| l.max_pending).unwrap_or(100),
        max_in_flight: u.limits.as_ref().and_then(|l| l.max_in_flight),
    };
    if limits.max_connections == Some(0) || limits.max_in_flight == Some(0) {
        errors.push(ConfigError::new(
            format!("{path}.limits"),
            "limits must be at least 1 (leave a limit out for none)",
        ));
        return None;
    }
    let pool = state.pools.upstream(name, timeouts, &limits);
    let upstream_name: Arc<str> = name.into();
    let targets = targets
        .into_iter()
        .map(|t| Target {
            pool: pool.target(t.authority.as_str()),
            stats: state
                .metrics
                .target(&upstream_name, &Arc::from(t.authority.as_str())),
            slow_start: u
                .health
                .as_ref()
                .and_then(|h| h.slow_start)
                .map_or(Duration::ZERO, |d| d.0),
            url: t.url,
            scheme: t.scheme,
            authority: t.authority,
            host_header: t.host_header,
            weight: t.weight,
        })
        .collect();
    Some(Upstream {
        name: upstream_name,
        balancer,
        targets,
        pool,
        timeouts,
        preserve_host: u.preserve_host.unwrap_or(true),
        rewrite_redirects: u.rewrite_redirects.unwrap_or(true),
        passive,
        active,
        retry,
        limits,
        names,
        dns_refresh: u.dns_refresh.map_or(DEFAULT_DNS_REFRESH, |d| d.0),
        ejecting: std::sync::Mutex::new(()),
    })
}

pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

fn compile_active(
    u: &UpstreamConfig,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Option<ActivePolicy>> {
    let Some(a) = u.health.as_ref().and_then(|h| h.active.as_ref()) else {
        return Some(None);
    };
    let p = format!("{path}.health.active");
    let before = errors.len();
    if !a.path.starts_with('/') || http::uri::PathAndQuery::try_from(a.path.as_str()).is_err() {
        errors.push(ConfigError::new(
            format!("{p}.path"),
            format!("invalid path {:?} (e.g. \"/healthz\")", a.path),
        ));
    }
    let interval = a.interval.map_or(Duration::from_secs(5), |d| d.0);
    let timeout = a.timeout.map_or(Duration::from_secs(2), |d| d.0);
    if interval < Duration::from_millis(100) {
        errors.push(ConfigError::new(
            format!("{p}.interval"),
            "must be at least 100ms",
        ));
    }
    if timeout.is_zero() || timeout > interval {
        errors.push(ConfigError::new(
            format!("{p}.timeout"),
            "must be more than 0 and at most the interval",
        ));
    }
    let expected = match a
        .expected_status
        .as_deref()
        .unwrap_or("200-399")
        .split_once('-')
    {
        None => a
            .expected_status
            .as_deref()
            .unwrap_or("")
            .trim()
            .parse::<u16>()
            .ok()
            .map(|c| (c, c)),
        Some((lo, hi)) => lo
            .trim()
            .parse::<u16>()
            .ok()
            .zip(hi.trim().parse::<u16>().ok()),
    };
    let expected = match expected {
        Some((lo, hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => (lo, hi),
        _ => {
            errors.push(ConfigError::new(
                format!("{p}.expected_status"),
                "expected a status or range such as 200 or 200-399",
            ));
            (200, 399)
        }
    };
    let healthy_threshold = a.healthy_threshold.unwrap_or(2).max(1);
    let unhealthy_threshold = a.unhealthy_threshold.unwrap_or(3).max(1);
    (errors.len() == before).then_some(Some(ActivePolicy {
        path: a.path.clone(),
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        expected,
    }))
}

pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_RETRY_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub const DEFAULT_RETRY_MAX_BODY: u64 = 64 * 1024;

fn compile_balancer(
    name: &str,
    u: &UpstreamConfig,
    path: &str,
    targets: &[TargetParts],
    state: &State,
    errors: &mut Vec<ConfigError>,
) -> Option<Balancer> {
    if u.hash_on.is_some() && u.balance != BalanceConfig::Hash {
        errors.push(ConfigError::new(
            format!("{path}.hash_on"),
            "only used with `balance: hash`",
        ));
        return None;
    }
    Some(match u.balance {
        BalanceConfig::RoundRobin => Balancer::RoundRobin(
            state.kept.round_robin(
                name,
                targets
                    .iter()
                    .map(|t| (t.authority.to_string(), t.weight))
                    .collect(),
            ),
        ),
        BalanceConfig::Random => Balancer::Random,
        BalanceConfig::LeastRequest => Balancer::LeastRequest,
        BalanceConfig::Ewma => Balancer::Ewma,
        BalanceConfig::Hash => {
            let spec = u.hash_on.as_deref().unwrap_or("client_ip");
            let on = match spec.split_once(':') {
                None if spec == "client_ip" => HashOn::ClientIp,
                None if spec == "path" => HashOn::Path,
                Some(("header", name)) => {
                    match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                        Ok(n) => HashOn::Header(n),
                        Err(_) => {
                            errors.push(ConfigError::new(
                                format!("{path}.hash_on"),
                                format!("invalid header name {name:?}"),
                            ));
                            return None;
                        }
                    }
                }
                Some(("cookie", name)) if !name.trim().is_empty() => {
                    HashOn::Cookie(name.trim().to_owned())
                }
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.hash_on"),
                        format!("invalid {spec:?} (expected client_ip, path, header:NAME or cookie:NAME)"),
                    ));
                    return None;
                }
            };
            let names: Vec<(String, u32)> = targets
                .iter()
                .map(|t| (t.authority.to_string(), t.weight))
                .collect();
            Balancer::Hash {
                ring: Ring::new(&names),
                on,
            }
        }
    })
}

fn compile_passive(
    u: &UpstreamConfig,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<PassivePolicy> {
    let p = u
        .health
        .as_ref()
        .and_then(|h| h.passive.clone())
        .unwrap_or_default();
    let policy = PassivePolicy {
        consecutive_failures: p
            .consecutive_failures
            .unwrap_or(DEFAULT_CONSECUTIVE_FAILURES),
        base_ejection: p.base_ejection.map_or(DEFAULT_BASE_EJECTION, |d| d.0),
        max_ejection: p.max_ejection.map_or(DEFAULT_MAX_EJECTION, |d| d.0),
        max_ejected_percent: p.max_ejected_percent.unwrap_or(DEFAULT_MAX_EJECTED_PERCENT),
    };
    if policy.max_ejected_percent > 100 {
        errors.push(ConfigError::new(
            format!("{path}.health.passive.max_ejected_percent"),
            "must be 0..=100",
        ));
        return None;
    }
    if policy.max_ejection < policy.base_ejection {
        errors.push(ConfigError::new(
            format!("{path}.health.passive.max_ejection"),
            "must not be shorter than base_ejection",
        ));
        return None;
    }
    Some(policy)
}

fn compile_retries(
    name: &str,
    u: &UpstreamConfig,
    path: &str,
    state: &State,
    errors: &mut Vec<ConfigError>,
) -> Option<RetryPolicy> {
    let r = u.retries.clone().unwrap_or_default();
    let attempts = r.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
    let before = errors.len();
    if !(1..=10).contains(&attempts) {
        errors.push(ConfigError::new(
            format!("{path}.retries.attempts"),
            "must be 1..=10 (tries in all, the first included)",
        ));
    }
    let (mut on_timeout, mut on_reset, mut statuses) = (false, false, Vec::new());
    for (i, o) in r.on.iter().enumerate() {
        let word = match o {
            RetryOnConfig::Status(code) => code.to_string(),
            RetryOnConfig::Word(w) => w.trim().to_owned(),
        };
        match word.as_str() {
            "connect_failure" => {}
            "timeout" => on_timeout = true,
            "reset" => on_reset = true,
            "5xx" => statuses.extend([500, 502, 503, 504].iter().filter_map(|c| http::StatusCode::from_u16(*c).ok())),
            code => match code.parse::<u16>().ok().and_then(|c| http::StatusCode::from_u16(c).ok()) {
                Some(s) if s.is_server_error() || s.as_u16() == 429 => statuses.push(s),
                _ => errors.push(ConfigError::new(
                    format!("{path}.retries.on[{i}]"),
                    format!("invalid {code:?} (expected connect_failure, timeout, reset, 5xx, 429 or a 5xx status)"),
                )),
            },
        }
    }
    let percent = match r
        .budget
        .as_deref()
        .map(crate::upstream::retry::parse_percent)
    {
        None => DEFAULT_RETRY_BUDGET_PERCENT,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            errors.push(ConfigError::new(format!("{path}.retries.budget"), e));
            0.0
        }
    };
    let backoff = r.backoff.unwrap_or_default();
    let policy = RetryPolicy {
        attempts,
        on_timeout,
        on_reset,
        statuses,
        backoff_base: backoff.base.map_or(DEFAULT_BACKOFF_BASE, |d| d.0),
        backoff_max: backoff.max.map_or(DEFAULT_BACKOFF_MAX, |d| d.0),
        max_body: r.max_body.map_or(DEFAULT_RETRY_MAX_BODY, |b| b.0),
        budget: state.kept.budget(
            name,
            percent,
            r.min_per_second.unwrap_or(DEFAULT_RETRY_MIN_PER_SECOND),
        ),
    };
    (errors.len() == before).then_some(policy)
}

/// A target as parsed, before it gets its connection pool.
struct TargetParts {
    url: String,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    weight: u32,
}

/// `http://host:port` (port defaults to 80). No path, query or user info.
pub fn parse_target_url(url: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("URL {url:?} needs a scheme, e.g. \"http://{url}\""))?;
    if scheme != Scheme::HTTP {
        return Err(if scheme == Scheme::HTTPS {
            format!(
                "URL {url:?}: https targets are not supported yet (TLS to upstreams is a later capability); use http://"
            )
        } else {
            format!("URL {url:?}: unsupported scheme {scheme} (use http://)")
        });
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("URL {url:?} must not contain user info"));
    }
    if authority.host().is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
    {
        return Err(format!(
            "URL {url:?} must not have a path or query (use the route's `rewrite` to change paths)"
        ));
    }
    let authority = if authority.port().is_none() {
        format!("{}:80", authority.host())
            .parse::<Authority>()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?
    } else {
        authority
    };
    // Host names are resolved when connecting, not here.
    Ok((scheme, authority))
}

fn compile_matcher(m: &MatchConfig, path: &str, errors: &mut Vec<ConfigError>) -> Option<Matcher> {
    let before = errors.len();
    let pattern = match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                format!("{path}.path"),
                "use either `path` or `path_prefix`, not both",
            ));
            None
        }
        (Some(p), None) => PathPattern::parse_path(p)
            .map_err(|e| errors.push(ConfigError::new(format!("{path}.path"), e)))
            .ok(),
        (None, Some(p)) => PathPattern::parse_prefix(p)
            .map_err(|e| errors.push(ConfigError::new(format!("{path}.path_prefix"), e)))
            .ok(),
        (None, None) => Some(PathPattern::Prefix("/".into())),
    };
    let mut hosts = Vec::new();
    for (i, h) in m.hosts.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(p) => {
                if hosts.contains(&p) {
                    errors.push(ConfigError::new(
                        format!("{path}.hosts[{i}]"),
                        format!("host {h:?} is listed twice"),
                    ));
                } else {
                    hosts.push(p);
                }
            }
            Err(e) => errors.push(ConfigError::new(format!("{path}.hosts[{i}]"), e)),
        }
    }
    if hosts.contains(&HostPattern::Any) {
        hosts.clear();
    }
    let mut methods = Vec::new();
    for (i, s) in m.methods.iter().enumerate() {
        let up = s.to_ascii_uppercase();
        match Method::from_bytes(up.as_bytes()) {
            Ok(me) if up.bytes().all(|b| b.is_ascii_uppercase()) => {
                if !methods.contains(&me) {
                    methods.push(me);
                }
            }
            _ => errors.push(ConfigError::new(
                format!("{path}.methods[{i}]"),
                format!("invalid method {s:?}"),
            )),
        }
    }
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        let name = HeaderName::from_bytes(k.as_bytes());
        let value = HeaderValue::from_str(v);
        match (name, value) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => errors.push(ConfigError::new(
                format!("{path}.headers.{k}"),
                format!("invalid header name {k:?}"),
            )),
            (_, Err(_)) => errors.push(ConfigError::new(
                format!("{path}.headers.{k}"),
                "invalid header value",
            )),
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(Matcher {
        hosts,
        path: pattern?,
        methods,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn compile_yaml(y: &str) -> Result<Runtime, Vec<ConfigError>> {
        let cfg = parse_str(y, &|_| None)?;
        compile(&cfg, &State::default())
    }

    fn errors_of(y: &str) -> Vec<(String, String)> {
        match compile_yaml(y) {
            Ok(_) => panic!("expected errors for:\n{y}"),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    const MINIMAL: &str = r#"
listen: "127.0.0.1:8080"
upstreams:
  echo:
    targets: ["http://127.0.0.1:9001"]
routes:
  - match: { path_prefix: "/" }
    upstream: echo
"#;

    #[test]
    fn minimal_config_compiles() {
        let rt = compile_yaml(MINIMAL).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(rt.listeners, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(rt.routes.len(), 1);
        assert!(rt.warnings.is_empty(), "{:?}", rt.warnings);
        assert!(rt.access_log.is_some());
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let errs = errors_of(
            r#"
listen: "nope"
upstreams:
  a:
    targets: ["ftp://x", {url: "http://127.0.0.1:1", weight: 5000}, "127.0.0.1:2"]
  b:
    targets: []
routes:
  - name: r
    match: { path_prefix: "/a" }
    upstream: a
  - name: r
    match: { path_prefix: "/b", hosts: ["a:1"], methods: ["G T"] }
    upstream: user
  - match: { path: "/x/{id}", path_prefix: "/x" }
    upstream: a
  - match: { path: "/x/{id}" }
    upstream: a
    rewrite: "/y/{nope}"
    use: [missing]
"#,
        );
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "listen",
            "upstreams.a.targets[0]",
            "upstreams.a.targets[1].weight",
            "upstreams.a.targets[2]",
            "upstreams.b.targets",
            "routes[1].name",
            "routes[1].match.hosts[0]",
            "routes[1].match.methods[0]",
            "routes[1].upstream",
            "routes[2].match.path",
            "routes[3].rewrite",
            "routes[3].use[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
        let dangling = errs
            .iter()
            .find(|(p, _)| p == "routes[1].upstream")
            .unwrap();
        assert!(
            dangling.1.contains("no upstream named \"user\""),
            "{}",
            dangling.1
        );
    }

    #[test]
    fn warns_about_shadowed_routes() {
        let rt = compile_yaml(
            r#"
listen: "127.0.0.1:8080"
upstreams:
  a: { targets: ["http://127.0.0.1:1"] }
routes:
  - { name: first, match: { path_prefix: "/users" }, upstream: a }
  - { name: twin, match: { path_prefix: "/users/" }, upstream: a }
  - { name: get, match: { path_prefix: "/users", methods: [GET] }, upstream: a }
"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(rt.warnings.len(), 1, "{:?}", rt.warnings);
        assert_eq!(rt.warnings[0].path, "routes[1]");
        assert!(rt.warnings[0].message.contains("\"first\""));
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.9.8.7".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.1.2.3".parse().unwrap()),
            "v4-mapped v6"
        );
        let one = Cidr::parse("192.168.1.5").unwrap();
        assert!(one.contains("192.168.1.5".parse().unwrap()));
        assert!(!one.contains("192.168.1.6".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains("10.1.2.3".parse().unwrap()));
        assert!(!mapped.contains("11.1.2.3".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strip_prefix_needs_a_prefix() {
        let errs = errors_of(
            r#"
listen: "127.0.0.1:8080"
upstreams: { a: { targets: ["http://127.0.0.1:1"] } }
routes:
  - { match: { path: "/x" }, upstream: a, strip_prefix: true }
"#,
        );
        assert_eq!(errs[0].0, "routes[0].strip_prefix");
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token() {
        let base = "listen: \"127.0.0.1:8080\"\n";
        let errs = errors_of(&format!("{base}admin: {{ addr: \"0.0.0.0:9901\" }}\n"));
        assert_eq!(errs[0].0, "admin.token");
        let errs = errors_of(&format!(
            "{base}admin: {{ addr: \"127.0.0.1:9901\", token: short }}\n"
        ));
        assert_eq!(errs[0].0, "admin.token");
        let errs = errors_of(&format!("{base}admin: {{ addr: \"127.0.0.1:8080\" }}\n"));
        assert_eq!(errs[0].0, "admin.addr");
        let rt = compile_yaml(&format!("{base}admin: {{}}\n")).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(rt.admin.unwrap().addr, "127.0.0.1:9901".parse().unwrap());
        let rt = compile_yaml(&format!(
            "{base}admin: {{ addr: \"0.0.0.0:9901\", token: 0123456789abcdef }}\n"
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(rt.admin.unwrap().token.is_some());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("localhost:81").unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert!(parse_listen_addr("127.0.0.1").is_err());
    }

    #[test]
    fn target_urls() {
        assert_eq!(parse_target_url("http://a").unwrap().1.as_str(), "a:80");
        assert!(parse_target_url("http://a:1/x").is_err());
        assert!(parse_target_url("https://a").is_err());
        assert!(parse_target_url("http://u@a").is_err());
        assert!(parse_target_url("a:1").is_err());
    }

    #[test]
    fn policies_chain_in_order() {
        let rt = compile_yaml(
            r#"
listen: "127.0.0.1:8080"
upstreams: { a: { targets: ["http://127.0.0.1:1"] } }
policies:
  p1: { headers: { request: { set: { x-p1: "1" } } } }
global:
  use: [p1]
routes:
  - match: { path_prefix: "/" }
    upstream: a
    use: [p1]
    headers: { response: { remove: [server] } }
"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let sources: Vec<&str> = rt.routes[0].chain.iter().map(|b| &*b.source).collect();
        assert_eq!(sources, ["policies.p1", "policies.p1", "inline"]);
    }
}

//! One upstream: targets (resolved names too), balancer, health, retries, limits, transport
//! (`transport.rs`: protocol and TLS), and the long-lived resources it claims.

mod transport;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use crate::config::ConfigError;
use crate::config::model::*;
use crate::registry::Claims;
use crate::state::State;
use crate::upstream::balancer::SmoothWeighted;
use crate::upstream::balancer::{Balancer, HashOn, Ring};
use crate::upstream::health::ActivePolicy;
use crate::upstream::pool::{PoolSettings, UpstreamPool};
use crate::upstream::retry::{RetryBudget, RetryPolicy};
use crate::upstream::state::PassivePolicy;
use crate::upstream::state::TargetLive;
use crate::upstream::{self, Limits, Target, Timeouts, Upstream, dns};
use std::sync::OnceLock;

pub(super) fn compile_upstream(
    name: &str,
    u: &UpstreamConfig,
    state: &State,
    claims: &mut Claims,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
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
    // The scheme every target must share, from the first one that parsed.
    let mut scheme: Option<(Scheme, usize)> = None;
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
            Ok((target_scheme, authority)) => {
                match &scheme {
                    None => scheme = Some((target_scheme.clone(), i)),
                    Some((first, at)) if *first != target_scheme => {
                        errors.push(ConfigError::new(
                            tpath,
                            format!(
                                "all targets of an upstream use one scheme: targets[{at}] is {first}://, this one {target_scheme}://"
                            ),
                        ));
                        continue;
                    }
                    Some(_) => {}
                }
                let scheme = target_scheme;
                let url_host = authority.host().to_owned();
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
                                url_host: url_host.clone(),
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
                    url_host,
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
        read: u
            .timeouts
            .read
            .map_or(upstream::DEFAULT_READ_TIMEOUT, |d| d.0),
    };
    for (k, d) in [
        ("connect", timeouts.connect),
        ("response", timeouts.response),
        ("read", timeouts.read),
    ] {
        if d.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeouts.{k}"),
                "must be more than 0",
            ));
        }
    }
    let balancer = compile_balancer(name, u, &path, &targets, state, claims, errors);
    let passive = compile_passive(u, &path, errors);
    let active = compile_active(u, &path, errors);
    let retry = compile_retries(name, u, &path, state, claims, errors);
    let transport =
        transport::compile_transport(u, &path, scheme.as_ref().map(|(s, _)| s), errors, warnings);
    if errors.len() > before {
        return None;
    }
    if let (Some(Some(a)), Some(t)) = (&active, &transport)
        && a.grpc_service.is_some()
        && t.protocol != upstream::transport::Protocol::Http2
    {
        errors.push(ConfigError::new(
            format!("{path}.health.active.grpc"),
            "gRPC health checks need an HTTP/2 upstream (h2c:// targets, or protocol: h2)",
        ));
        return None;
    }
    let (Some(balancer), Some(passive), Some(retry), Some(active), Some(transport)) =
        (balancer, passive, retry, active, transport)
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
    // Over TLS, the name each target's connections send and verify.
    let server_names: Vec<_> = targets
        .iter()
        .map(|t| {
            transport
                .tls
                .as_ref()
                .map(|_| transport::server_name(u.tls.as_ref(), &t.url_host))
        })
        .collect();
    if let Some(t) = targets
        .iter()
        .zip(&server_names)
        .find_map(|(t, n)| matches!(n, Some(None)).then_some(t))
    {
        errors.push(ConfigError::new(
            format!("{path}.targets"),
            format!(
                "the host of {:?} is not a name TLS can verify; set `tls.server_name`",
                t.url
            ),
        ));
        return None;
    }
    let reg = &state.registry;
    let settings = PoolSettings {
        connect_timeout: timeouts.connect,
        idle_timeout: timeouts.idle,
        max_connections: limits.max_connections,
        max_pending: limits.max_pending,
        transport,
    };
    // Kept while these settings stay: a new CA, client certificate or protocol means new
    // connections.
    let pool = claims.claim(
        reg,
        name,
        |p: &UpstreamPool| p.same_settings(&settings),
        || UpstreamPool::new(settings.clone()),
    );
    let upstream_name: Arc<str> = name.into();
    let targets: Vec<Target> = targets
        .into_iter()
        .zip(server_names)
        .map(|(t, server_name)| Target {
            pool: pool.target(t.authority.as_str(), server_name.flatten()),
            // Kept while the target stays in this upstream, whatever else changes (other
            // targets, DNS answers, settings): its ejection, health and load.
            live: claims.claim(
                reg,
                &format!("{name}/{}", t.authority),
                |_: &TargetLive| true,
                TargetLive::default,
            ),
            stats: OnceLock::new(),
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
        weights: crate::upstream::balancer::Weights::new(&targets),
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

const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

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
    let check_path = match (&a.path, &a.grpc) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                p.clone(),
                "use either `path` (an HTTP GET) or `grpc` (the gRPC health protocol), not both",
            ));
            String::new()
        }
        (None, None) => {
            errors.push(ConfigError::new(
                format!("{p}.path"),
                "needs a `path` to GET (e.g. \"/healthz\"), or `grpc: {}` for gRPC targets",
            ));
            String::new()
        }
        (None, Some(_)) => GRPC_HEALTH_PATH.to_owned(),
        (Some(path), None) => {
            if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
                errors.push(ConfigError::new(
                    format!("{p}.path"),
                    format!("invalid path {path:?} (e.g. \"/healthz\")"),
                ));
            }
            path.clone()
        }
    };
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
        path: check_path,
        grpc_service: a
            .grpc
            .as_ref()
            .map(|g| g.service.clone().unwrap_or_default()),
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
    claims: &mut Claims,
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
        BalanceConfig::RoundRobin => {
            let key: Vec<(String, u32)> = targets
                .iter()
                .map(|t| (t.authority.to_string(), t.weight))
                .collect();
            // The rotation goes on where it was while the targets and weights stay.
            Balancer::RoundRobin(claims.claim(
                &state.registry,
                name,
                |rr: &SmoothWeighted| rr.key() == key.as_slice(),
                || SmoothWeighted::new(key.clone()),
            ))
        }
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
    claims: &mut Claims,
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
        budget: {
            let fresh = RetryBudget::new(
                percent,
                r.min_per_second.unwrap_or(DEFAULT_RETRY_MIN_PER_SECOND),
            );
            // The budget's window of recent requests and retries is kept while its settings
            // stay.
            let params = fresh.params;
            claims.claim(
                &state.registry,
                name,
                |b: &RetryBudget| b.params == params,
                || fresh,
            )
        },
    };
    (errors.len() == before).then_some(policy)
}

/// A target as parsed, before it gets its connection pool.
struct TargetParts {
    url: String,
    scheme: Scheme,
    authority: Authority,
    /// The host as the URL wrote it (the name, for a target resolved into addresses): the
    /// default TLS server name.
    url_host: String,
    host_header: HeaderValue,
    weight: u32,
}

/// `http://host:port`, `https://host:port` or `h2c://host:port` (the port defaults to 80, 443
/// and 80). No path, query or user info.
pub fn parse_target_url(url: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("URL {url:?} needs a scheme, e.g. \"http://{url}\""))?;
    let default_port = match scheme.as_str() {
        "http" | transport::H2C => 80,
        "https" => 443,
        other => {
            return Err(format!(
                "URL {url:?}: unsupported scheme {other} (use http://, https:// or h2c://)"
            ));
        }
    };
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
        format!("{}:{default_port}", authority.host())
            .parse::<Authority>()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?
    } else {
        authority
    };
    // Host names are resolved when connecting, not here.
    Ok((scheme, authority))
}

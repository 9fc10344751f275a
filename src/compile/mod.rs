//! Config (plain data) -> Runtime (validated, precompiled, immutable). Every check that needs
//! more than one key lives here, and every problem is collected with its key path; nothing
//! half-valid ever runs. Warnings (routes that can never match, unused upstreams) do not stop
//! the config from loading.
//!
//! Compiling is pure: it reads the live state (to keep pools, balancer positions, budgets and
//! target health whose settings still fit) and records what it uses in the runtime's claims;
//! nothing live changes until [`crate::State::adopt`] takes a runtime live.
//!
//! `server.rs` compiles listeners, the admin listener and `server:`; `upstream.rs` the
//! upstreams; `routes.rs` each route's matcher and action; this file puts them together.

mod aggregate;
mod routes;
mod server;
#[cfg(test)]
mod tests;
mod tls;
mod upstream;

use routes::{compile_action, compile_matcher, derive_name};
pub use server::*;
use upstream::compile_upstream;
pub use upstream::{DEFAULT_DNS_REFRESH, parse_target_url};

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::config::ConfigError;
use crate::config::model::*;
use crate::policy::{self, Bound, Chain, Policy};
use crate::registry::Claims;
use crate::router::{PathPattern, RewriteTemplate, Router};
use crate::runtime::{PathAction, Route, Runtime};
use crate::state::State;

/// Compiles a parsed config. `state` is only read: see the module comment.
pub fn compile(cfg: &Config, state: &State) -> Result<Runtime, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut claims = Claims::default();

    let listeners = compile_listeners(&cfg.listen, state, &mut claims, &mut errors);
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
        if let Some(up) = compile_upstream(name, u, state, &mut claims, &mut errors, &mut warnings)
        {
            upstreams.insert(name.clone(), Arc::new(up));
        }
    }

    let consumers = Arc::new(policy::consumers::Consumers::compile(
        &cfg.consumers,
        &mut errors,
    ));
    let store = compile_store(cfg.store.as_ref(), state, &mut claims, &mut errors);
    let cache = compile_cache(cfg.store.as_ref(), &store, state, &mut claims, &mut errors);
    let policy_claims = std::sync::Mutex::new(Claims::default());
    let policy_warnings = std::sync::Mutex::new(Vec::new());
    let pcx = policy::PolicyCx {
        consumers: &consumers,
        registry: &state.registry,
        metrics: &state.metrics,
        store: &store,
        cache: &cache,
        claims: &policy_claims,
        warnings: &policy_warnings,
    };
    // Named policies compile once and are shared by every route that uses them.
    let mut named: BTreeMap<&str, Vec<Arc<dyn Policy>>> = BTreeMap::new();
    for (name, p) in &cfg.policies {
        named.insert(
            name.as_str(),
            policy::compile_set(p, &pcx, &format!("policies.{name}"), &mut errors),
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
            policy::compile_set(set, &pcx, path, errors)
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
                if n.starts_with("aggregate:") {
                    errors.push(ConfigError::new(
                        format!("{path}.name"),
                        "must not start with `aggregate:` (the response cache's own namespace)",
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
        let aggregate = r.aggregate.as_ref().and_then(|calls| {
            for (_, c) in &calls.0 {
                used_upstreams.insert(c.upstream.as_str());
            }
            let known: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
            aggregate::compile_aggregate(r, calls, &upstreams, &known, &params, &path, &mut errors)
        });
        if r.timeout.is_some() && r.aggregate.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "applies to `aggregate` routes; a proxied route's timeouts are its upstream's (`upstreams.<name>.timeouts`)",
            ));
        }
        let action = compile_action(r, upstream, aggregate, &params, &path, &mut errors);
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
                stats: std::sync::OnceLock::new(),
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

    claims.absorb(policy_claims.into_inner().unwrap_or_default());
    warnings.extend(policy_warnings.into_inner().unwrap_or_default());
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

    // What every route's policies need of every request: identity headers removed, and the
    // query credentials kept out of the access log.
    let mut query_secrets: Vec<String> = Vec::new();
    let identity_headers = {
        let mut names: Vec<http::HeaderName> = Vec::new();
        let certs = listeners
            .iter()
            .filter_map(|l| l.tls.as_ref().and_then(|t| t.forward_identity.clone()));
        let bound = || {
            routes
                .iter()
                .flat_map(|r| r.chain.iter())
                .chain(global_bound.iter())
        };
        // A name some policy reads a credential from stays the business of the routes whose
        // policies write it (they remove the client's copy themselves).
        let mut credentials = vec![
            http::header::AUTHORIZATION,
            http::header::PROXY_AUTHORIZATION,
            http::header::COOKIE,
        ];
        credentials.extend(bound().flat_map(|b| b.policy.credential_headers()));
        for q in bound().filter_map(|b| b.policy.query_secret()) {
            if !query_secrets.iter().any(|s| s == q) {
                query_secrets.push(q.to_owned());
            }
        }
        let policies = bound()
            .flat_map(|b| b.policy.identity_headers())
            .filter(|n| !credentials.contains(n));
        for n in certs.chain(policies) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    };
    Ok(Runtime {
        listeners,
        admin,
        router,
        routes,
        global: Chain::new(global_bound),
        upstreams,
        access_log,
        server: Arc::new(server),
        workers: cfg.workers,
        scheduler: match cfg.scheduler.unwrap_or_default() {
            crate::config::model::Scheduler::WorkStealing => {
                crate::runtime::Scheduler::WorkStealing
            }
            crate::config::model::Scheduler::PerCore => crate::runtime::Scheduler::PerCore,
        },
        warnings: cfg.redactions.scrub_all(warnings),
        file_paths: cfg.file_paths(),
        claims,
        cache,
        identity_headers,
        query_secrets,
        store,
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

/// Where the response cache lives: in the Redis store when there is one, else in a memory
/// cache of `store.memory.cache_size`, claimed so its answers outlive reloads.
fn compile_cache(
    cfg: Option<&StoreConfig>,
    store: &Arc<crate::store::Store>,
    state: &State,
    claims: &mut Claims,
    errors: &mut Vec<ConfigError>,
) -> crate::store::cache::Backend {
    use crate::store::cache::{Backend, MemoryCache};
    let memory = cfg.and_then(|s| s.memory.as_ref());
    if let (Some(_), Some(_)) = (memory, cfg.and_then(|s| s.redis.as_ref())) {
        errors.push(ConfigError::new(
            "store.memory",
            "set either `memory` or `redis`, not both (with Redis, the cache lives in Redis)",
        ));
    }
    if matches!(**store, crate::store::Store::Redis(_)) {
        return Backend::Redis(store.clone());
    }
    let size = memory
        .and_then(|m| m.cache_size)
        .map_or(64 * 1024 * 1024, |s| s.0);
    if size < 1024 {
        errors.push(ConfigError::new(
            "store.memory.cache_size",
            "must be at least 1KiB",
        ));
    }
    Backend::Memory(claims.claim(
        &state.registry,
        &format!("cache|memory|{size}"),
        |_: &MemoryCache| true,
        || MemoryCache::new(size),
    ))
}

/// `store:`: the memory store, or a Redis one (one node or a cluster), claimed from the
/// registry so the counters (or the connection) outlive reloads while the settings stay.
fn compile_store(
    cfg: Option<&StoreConfig>,
    state: &State,
    claims: &mut Claims,
    errors: &mut Vec<ConfigError>,
) -> Arc<crate::store::Store> {
    use crate::store::Store;
    use crate::store::redis::RedisStore;
    let Some(r) = cfg.and_then(|s| s.redis.as_ref()) else {
        return claims.claim(
            &state.registry,
            "store",
            |s: &Store| matches!(s, Store::Memory(_)),
            Store::default,
        );
    };
    let Some(settings) = redis_settings(r, errors) else {
        return Arc::new(Store::default());
    };
    let counter = state.metrics.store_errors();
    match RedisStore::new(&settings, counter.clone()) {
        Ok(_) => {
            // The name holds every setting (and a digest of the certificates' contents), so a
            // changed one makes a new store and an unchanged one keeps its connection.
            let mut name = format!(
                "redis|{:?}|{}|{:?}|{}",
                settings.urls, settings.cluster, settings.timeout, settings.pool
            );
            if let Some(t) = &settings.tls {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                for part in [
                    t.root_cert.as_deref(),
                    t.client_tls.as_ref().map(|c| c.client_cert.as_slice()),
                    t.client_tls.as_ref().map(|c| c.client_key.as_slice()),
                ] {
                    let part = part.unwrap_or_default();
                    h.update((part.len() as u64).to_le_bytes());
                    h.update(part);
                }
                let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                name.push_str(&format!("|tls:{digest}"));
            }
            claims.claim(
                &state.registry,
                &name,
                |s: &Store| matches!(s, Store::Redis(_)),
                || match RedisStore::new(&settings, counter) {
                    Ok(s) => Store::Redis(Box::new(s)),
                    Err(_) => Store::default(),
                },
            )
        }
        Err(e) => {
            let key = if settings.cluster {
                "store.redis.cluster"
            } else {
                "store.redis.url"
            };
            errors.push(ConfigError::new(key, e));
            Arc::new(Store::default())
        }
    }
}

/// `store.redis`, checked: `url` or `cluster` (not both), URLs the redis crate reads, one
/// scheme across a cluster, and `tls` files read and parsed (only with `rediss://`).
fn redis_settings(
    r: &RedisStoreConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::store::redis::RedisSettings> {
    let before = errors.len();
    let timeout = r
        .timeout
        .map_or(std::time::Duration::from_millis(50), |d| d.0);
    if timeout.is_zero() {
        errors.push(ConfigError::new(
            "store.redis.timeout",
            "must be more than 0",
        ));
    }
    let (urls, cluster): (Vec<(String, &String)>, bool) = match (&r.url, &r.cluster) {
        (Some(u), None) => (vec![("store.redis.url".to_owned(), u)], false),
        (None, Some(list)) => {
            if list.is_empty() {
                errors.push(ConfigError::new(
                    "store.redis.cluster",
                    "list at least one node URL",
                ));
            }
            let urls = list
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("store.redis.cluster[{i}]"), u))
                .collect();
            (urls, true)
        }
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                "store.redis",
                "set either `url` (one Redis node) or `cluster` (the URLs of a Redis Cluster's nodes), not both",
            ));
            return None;
        }
        (None, None) => {
            errors.push(ConfigError::new(
                "store.redis",
                "set `url` (one Redis node) or `cluster` (the URLs of a Redis Cluster's nodes)",
            ));
            return None;
        }
    };
    let mut schemes = Vec::new();
    for (key, u) in &urls {
        match redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
            Ok(info) => {
                let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
                schemes.push(tls);
                if cluster && info.redis_settings().db() != 0 {
                    errors.push(ConfigError::new(
                        key.clone(),
                        "a Redis Cluster has only database 0",
                    ));
                }
                if matches!(info.addr(), redis::ConnectionAddr::Unix(_)) && cluster {
                    errors.push(ConfigError::new(
                        key.clone(),
                        "cluster nodes are reached over TCP (redis:// or rediss://)",
                    ));
                }
            }
            Err(e) => errors.push(ConfigError::new(
                key.clone(),
                format!("not a Redis URL ({e}); expected redis://host:port/db or rediss://..."),
            )),
        }
    }
    let any_tls = schemes.iter().any(|t| *t);
    if cluster && any_tls && !schemes.iter().all(|t| *t) {
        errors.push(ConfigError::new(
            "store.redis.cluster",
            "use one scheme for every node: all redis:// or all rediss://",
        ));
    }
    let tls = match &r.tls {
        None => None,
        Some(_) if !any_tls && errors.len() == before => {
            errors.push(ConfigError::new(
                "store.redis.tls",
                "TLS settings need a rediss:// URL",
            ));
            None
        }
        Some(t) => redis_tls(t, errors),
    };
    let pool = r.pool.unwrap_or(1);
    if !(1..=64).contains(&pool) {
        errors.push(ConfigError::new(
            "store.redis.pool",
            "must be between 1 and 64",
        ));
    }
    (errors.len() == before).then(|| crate::store::redis::RedisSettings {
        urls: urls.into_iter().map(|(_, u)| u.clone()).collect(),
        cluster,
        timeout,
        tls,
        pool: pool as usize,
    })
}

/// `store.redis.tls`: the files read and parsed now, so a bad one is a config error.
fn redis_tls(t: &RedisTlsConfig, errors: &mut Vec<ConfigError>) -> Option<redis::TlsCertificates> {
    let before = errors.len();
    let read = |key: &str, path: &crate::config::units::FilePath, errors: &mut Vec<ConfigError>| {
        match std::fs::read(path.as_str()) {
            Ok(b) => Some(b),
            Err(e) => {
                errors.push(ConfigError::new(
                    key,
                    format!("cannot read {}: {e}", path.as_str()),
                ));
                None
            }
        }
    };
    let root_cert = t.ca.as_ref().and_then(|p| {
        let pem = read("store.redis.tls.ca", p, errors)?;
        match crate::tls::certs_from_pem(&pem) {
            Ok(_) => Some(pem),
            Err(e) => {
                errors.push(ConfigError::new(
                    "store.redis.tls.ca",
                    format!("{}: {e}", p.as_str()),
                ));
                None
            }
        }
    });
    let client_tls = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => {
            let cert = read("store.redis.tls.cert", c, errors).and_then(|pem| {
                match crate::tls::certs_from_pem(&pem) {
                    Ok(_) => Some(pem),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            "store.redis.tls.cert",
                            format!("{}: {e}", c.as_str()),
                        ));
                        None
                    }
                }
            });
            let key = read("store.redis.tls.key", k, errors).and_then(|pem| {
                match <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(&pem) {
                    Ok(_) => Some(pem),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            "store.redis.tls.key",
                            format!("{}: no usable PEM private key ({e})", k.as_str()),
                        ));
                        None
                    }
                }
            });
            cert.zip(key)
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                })
        }
        (None, None) => None,
        (Some(_), None) => {
            errors.push(ConfigError::new(
                "store.redis.tls.key",
                "a client certificate needs its key",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                "store.redis.tls.cert",
                "a client key needs its certificate",
            ));
            None
        }
    };
    (errors.len() == before).then_some(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

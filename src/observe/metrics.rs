//! Prometheus metrics: one registry for the process, outliving every config reload. All metric
//! names are here, `gatehouse_*`, with bounded labels (route and upstream names come from the
//! config, methods are folded to a fixed set, statuses to their class; never raw paths).
//!
//! Per-route and per-target handles are looked up once, when a config is compiled, and kept in
//! the compiled route and target, so the request path does no label lookups of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds, from half a millisecond to 10 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A label value shared without copying (route, upstream and target names).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Name,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: Name,
    target: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetErrorLabels {
    upstream: Name,
    target: Name,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    upstream: Name,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    upstream: Name,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u16,
}

/// See [`Metrics::accept_series`].
pub struct AcceptSeries {
    accepted: Counter,
    active: Gauge,
    worker: Option<Counter>,
}

impl AcceptSeries {
    /// Counts an accepted connection; the gauge returned is decremented when it closes.
    pub fn opened(&self) -> Gauge {
        self.accepted.inc();
        if let Some(w) = &self.worker {
            w.inc();
        }
        self.active.inc();
        self.active.clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    route: Name,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    route: Name,
    call: Name,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallRouteLabels {
    route: Name,
    call: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    route: Name,
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// (upstream, target address)
type TargetKey = (Arc<str>, Arc<str>);

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    upstream_duration: HistogramFamily<TargetLabels>,
    upstream_errors: Family<TargetErrorLabels, Counter>,
    ejections: Family<TargetLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<UpstreamLabels, Counter>,
    overloaded: Family<LimitLabels, Counter>,
    target_healthy: Family<TargetLabels, Gauge>,
    connections_active: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    worker_connections: Family<WorkerLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    auth: Family<AuthLabels, Counter>,
    rate_limits: Family<RateLimitLabels, Counter>,
    store_up: Gauge,
    store_errors: Counter,
    cache: Family<RateLimitLabels, Counter>,
    aggregate_calls: Family<CallLabels, Counter>,
    aggregate_duration: HistogramFamily<CallRouteLabels>,
    cache_stored_bytes: Counter,
    cache_bytes: Gauge,
    cache_entries: Gauge,
    cache_evictions: Counter,
    config_info: Family<ConfigLabels, Gauge>,
    routes: Mutex<HashMap<Arc<str>, Arc<RouteStats>>>,
    targets: Mutex<HashMap<TargetKey, Arc<TargetStats>>>,
    config_hash: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gatehouse_http_requests",
            "Requests answered, by route, method and status class",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "gatehouse_http_request_duration_seconds",
            "Time from request head to the end of the response body, by route",
            request_duration.clone(),
        );
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "gatehouse_http_request_body_bytes",
            "Request body bytes received from clients, by route",
            request_bytes.clone(),
        );
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "gatehouse_http_response_body_bytes",
            "Response body bytes sent to clients, by route",
            response_bytes.clone(),
        );
        let upstream_duration: HistogramFamily<TargetLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "gatehouse_upstream_request_duration_seconds",
            "Time from sending a request to a target until its response head, by upstream and target",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<TargetErrorLabels, Counter>::default();
        registry.register(
            "gatehouse_upstream_errors",
            "Failed upstream requests, by upstream, target and kind (connect, timeout, failed)",
            upstream_errors.clone(),
        );
        let ejections = Family::<TargetLabels, Counter>::default();
        registry.register(
            "gatehouse_upstream_ejections",
            "Targets ejected by passive health checking, by upstream and target",
            ejections.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "gatehouse_upstream_retries",
            "Requests sent again to another target, by upstream and reason (connect, timeout, reset, status)",
            retries.clone(),
        );
        let budget_exhausted = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "gatehouse_upstream_retry_budget_exhausted",
            "Retries not made because the upstream's retry budget was spent",
            budget_exhausted.clone(),
        );
        let overloaded = Family::<LimitLabels, Counter>::default();
        registry.register(
            "gatehouse_upstream_overloaded",
            "Requests refused with 503 by an upstream's circuit-breaking limits, by limit (max_in_flight, max_connections)",
            overloaded.clone(),
        );
        let target_healthy = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "gatehouse_upstream_target_healthy",
            "1 when a target takes traffic, 0 when it is ejected (passive health) or failing its active checks",
            target_healthy.clone(),
        );
        let connections_active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "gatehouse_connections_active",
            "Client connections open now, by listener",
            connections_active.clone(),
        );
        let connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "gatehouse_connections_accepted",
            "Client connections accepted, by listener",
            connections.clone(),
        );
        let worker_connections = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "gatehouse_worker_connections_accepted",
            "Client connections accepted, by per-core worker (scheduler: per_core): how evenly the kernel spreads them",
            worker_connections.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gatehouse_downstream_rejected",
            "Client connections or requests refused before routing, by reason (max_connections_per_ip, parse_error, head_too_large, head_timeout, ambiguous_framing, ...)",
            rejected.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "gatehouse_config_reloads",
            "Config reloads attempted, by result (success, failure)",
            reloads.clone(),
        );
        // Both series exist from the start, so a rate() over them is defined.
        let _ = reloads.get_or_create(&ResultLabels { result: "success" });
        let _ = reloads.get_or_create(&ResultLabels { result: "failure" });
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "gatehouse_auth",
            "Authentication decisions, by route, method (basic, api_key, jwt, mtls, none) and result (success, failure, anonymous, forbidden, locked_out)",
            auth.clone(),
        );
        let rate_limits = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "gatehouse_rate_limit",
            "Requests counted by a rate limit, by route and result (allowed, limited, unavailable: refused with 503 by a fail_closed limit while the shared store could not decide)",
            rate_limits.clone(),
        );
        let store_up = Gauge::default();
        store_up.set(1);
        registry.register(
            "gatehouse_store_up",
            "1 while the shared store (memory, or Redis) answers; 0 from a failed Redis call until the next one that succeeds",
            store_up.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "gatehouse_store_errors",
            "Redis store calls that failed, timed out or were skipped while Redis was down (each one fell back: local rate limits, or 503 where fail_closed)",
            store_errors.clone(),
        );
        let cache = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "gatehouse_cache",
            "Response-cache lookups, by route and result (hit, stale, collapsed, miss, revalidated, stale_if_error, bypass)",
            cache.clone(),
        );
        let aggregate_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "gatehouse_aggregate_calls",
            "Calls made by aggregate routes, by route, call and result (ok, timeout, upstream_error, bad_status, not_json, too_large, dependency_failed, bad_value, deadline)",
            aggregate_calls.clone(),
        );
        let aggregate_duration: HistogramFamily<CallRouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "gatehouse_aggregate_call_duration_seconds",
            "Time an aggregate route's call took, by route and call",
            aggregate_duration.clone(),
        );
        let cache_stored_bytes = Counter::default();
        registry.register(
            "gatehouse_cache_stored_bytes",
            "Bytes of answers written to the cache (memory or Redis)",
            cache_stored_bytes.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "gatehouse_cache_bytes",
            "Bytes held by the in-memory response cache",
            cache_bytes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "gatehouse_cache_entries",
            "Items held by the in-memory response cache",
            cache_entries.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "gatehouse_cache_evictions",
            "Items the in-memory response cache evicted to stay within store.memory.cache_size",
            cache_evictions.clone(),
        );
        let config_info = Family::<ConfigLabels, Gauge>::default();
        registry.register(
            "gatehouse_config_info",
            "The loaded config, identified by the hash of its file (value is always 1)",
            config_info.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "gatehouse_build_info",
            "The running version (value is always 1)",
            build,
        );
        Metrics {
            registry,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            upstream_duration,
            upstream_errors,
            ejections,
            retries,
            budget_exhausted,
            overloaded,
            target_healthy,
            connections_active,
            connections,
            worker_connections,
            rejected,
            reloads,
            auth,
            rate_limits,
            store_up,
            store_errors,
            cache,
            aggregate_calls,
            aggregate_duration,
            cache_stored_bytes,
            cache_bytes,
            cache_entries,
            cache_evictions,
            config_info,
            routes: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            config_hash: Mutex::new(None),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Handles for one route, shared by every config that has a route of that name.
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(name.clone())
            .or_insert_with(|| {
                let labels = RouteLabels {
                    route: Name(name.clone()),
                };
                Arc::new(RouteStats {
                    name: Name(name.clone()),
                    requests: Default::default(),
                    duration: self.request_duration.get_or_create_owned(&labels),
                    request_bytes: self.request_bytes.get_or_create_owned(&labels),
                    response_bytes: self.response_bytes.get_or_create_owned(&labels),
                    live: LiveStats::default(),
                })
            })
            .clone()
    }

    /// Handles for one target of one upstream.
    pub fn target(&self, upstream: &Arc<str>, target: &Arc<str>) -> Arc<TargetStats> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets
            .entry((upstream.clone(), target.clone()))
            .or_insert_with(|| {
                let labels = TargetLabels {
                    upstream: Name(upstream.clone()),
                    target: Name(target.clone()),
                };
                let err = |kind| {
                    self.upstream_errors
                        .get_or_create_owned(&TargetErrorLabels {
                            upstream: Name(upstream.clone()),
                            target: Name(target.clone()),
                            kind,
                        })
                };
                Arc::new(TargetStats {
                    duration: self.upstream_duration.get_or_create_owned(&labels),
                    connect_errors: err("connect"),
                    timeouts: err("timeout"),
                    failures: err("failed"),
                    ejections: self.ejections.get_or_create_owned(&labels),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Counts one finished request. `route` is None when no route matched.
    pub fn request(
        &self,
        route: Option<&RouteStats>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let (m, c) = (method_index(method), class_index(status));
        match route {
            // The route's counter for this method and class, created on first use and then
            // reached without a label lookup.
            Some(r) => r.requests[m][c]
                .get_or_init(|| {
                    self.requests.get_or_create_owned(&RequestLabels {
                        route: r.name.clone(),
                        method: METHODS[m],
                        status_class: CLASSES[c],
                    })
                })
                .inc(),
            None => self
                .requests
                .get_or_create(&RequestLabels {
                    route: Name(Arc::from("")),
                    method: METHODS[m],
                    status_class: CLASSES[c],
                })
                .inc(),
        };
        if let Some(r) = route {
            r.duration.observe(elapsed.as_secs_f64());
            r.request_bytes.inc_by(bytes_in);
            r.response_bytes.inc_by(bytes_out);
            r.live.record(status, elapsed);
        }
    }

    pub fn retry(&self, upstream: &Arc<str>, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                upstream: Name(upstream.clone()),
                reason,
            })
            .inc();
    }

    /// Sets a target's health gauge (done for every target just before each scrape).
    pub fn target_health(&self, upstream: &Arc<str>, target: &Arc<str>, healthy: bool) {
        self.target_healthy
            .get_or_create(&TargetLabels {
                upstream: Name(upstream.clone()),
                target: Name(target.clone()),
            })
            .set(i64::from(healthy));
    }

    /// One rate-limit decision on `route` (empty when no route matched).
    pub fn rate_limit(&self, route: Option<&Arc<str>>, allowed: bool) {
        self.rate_limits
            .get_or_create(&RateLimitLabels {
                route: Name(route.cloned().unwrap_or_else(|| Arc::from(""))),
                result: if allowed { "allowed" } else { "limited" },
            })
            .inc();
    }

    /// A rate-limit request refused with 503 because the shared store could not decide and
    /// the limit is `fail_closed`.
    pub fn rate_limit_unavailable(&self, route: Option<&Arc<str>>) {
        self.rate_limits
            .get_or_create(&RateLimitLabels {
                route: Name(route.cloned().unwrap_or_else(|| Arc::from(""))),
                result: "unavailable",
            })
            .inc();
    }

    /// One response-cache lookup on `route`.
    pub fn cache(&self, route: Option<&Arc<str>>, result: &'static str) {
        self.cache
            .get_or_create(&RateLimitLabels {
                route: Name(route.cloned().unwrap_or_else(|| Arc::from(""))),
                result,
            })
            .inc();
    }

    /// The store's up gauge (set just before each scrape, from the running store).
    pub fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// The counter a Redis store counts its failed calls in (one for the process, whatever
    /// store each config makes).
    pub fn store_errors(&self) -> Counter {
        self.store_errors.clone()
    }

    /// One call of an aggregate route, and how long it took.
    pub fn aggregate_call(
        &self,
        route: &Arc<str>,
        call: &Arc<str>,
        result: &'static str,
        took: std::time::Duration,
    ) {
        self.aggregate_calls
            .get_or_create(&CallLabels {
                route: Name(route.clone()),
                call: Name(call.clone()),
                result,
            })
            .inc();
        self.aggregate_duration
            .get_or_create(&CallRouteLabels {
                route: Name(route.clone()),
                call: Name(call.clone()),
            })
            .observe(took.as_secs_f64());
    }

    /// An answer of `bytes` written to the cache.
    pub fn cache_stored(&self, bytes: usize) {
        self.cache_stored_bytes.inc_by(bytes as u64);
    }

    /// The in-memory cache's size, item count and total evictions (set before each scrape).
    pub fn cache_memory(&self, bytes: u64, entries: u64, evictions: u64) {
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        let seen = self.cache_evictions.get();
        if evictions > seen {
            self.cache_evictions.inc_by(evictions - seen);
        }
    }

    /// One authentication decision on `route` (empty when no route matched).
    pub fn auth(&self, route: Option<&Arc<str>>, method: &'static str, result: &'static str) {
        self.auth
            .get_or_create(&AuthLabels {
                route: Name(route.cloned().unwrap_or_else(|| Arc::from(""))),
                method,
                result,
            })
            .inc();
    }

    /// A client connection or request refused before routing.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn overloaded(&self, upstream: &Arc<str>, limit: &'static str) {
        self.overloaded
            .get_or_create(&LimitLabels {
                upstream: Name(upstream.clone()),
                limit,
            })
            .inc();
    }

    pub fn retry_budget_exhausted(&self, upstream: &Arc<str>) {
        self.budget_exhausted
            .get_or_create(&UpstreamLabels {
                upstream: Name(upstream.clone()),
            })
            .inc();
    }

    /// The connection series of one accept loop (`listener`; `worker` 1..=N with
    /// `scheduler: per_core`, else 0), looked up once for all its connections.
    pub fn accept_series(&self, listener: &str, worker: u16) -> AcceptSeries {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        AcceptSeries {
            accepted: self.connections.get_or_create_owned(&labels),
            active: self.connections_active.get_or_create_owned(&labels),
            worker: (worker > 0).then(|| {
                self.worker_connections
                    .get_or_create_owned(&WorkerLabels { worker })
            }),
        }
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Marks `hash` as the loaded config: the new series first, then the old one goes, so a
    /// scrape never sees none.
    pub fn config_loaded(&self, hash: &str) {
        let mut current = self.config_hash.lock().unwrap_or_else(|e| e.into_inner());
        self.config_info
            .get_or_create(&ConfigLabels {
                hash: hash.to_owned(),
            })
            .set(1);
        if let Some(old) = current.replace(hash.to_owned())
            && old != hash
        {
            self.config_info.remove(&ConfigLabels { hash: old });
        }
    }

    /// Drops the series of routes and targets that the live config no longer has, so the
    /// exposition does not grow with every target address ever configured.
    pub fn retain(&self, routes: &[Arc<str>], targets: &[(Arc<str>, Arc<str>)]) {
        let mut r = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|name, stats| {
            let keep = routes.contains(name);
            if !keep {
                let labels = RouteLabels {
                    route: Name(name.clone()),
                };
                self.request_duration.remove(&labels);
                self.request_bytes.remove(&labels);
                self.response_bytes.remove(&labels);
                for (m, row) in stats.requests.iter().enumerate() {
                    for (c, slot) in row.iter().enumerate() {
                        if slot.get().is_some() {
                            self.requests.remove(&RequestLabels {
                                route: Name(name.clone()),
                                method: METHODS[m],
                                status_class: CLASSES[c],
                            });
                        }
                    }
                }
            }
            keep
        });
        drop(r);
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|key, _| {
            let keep = targets.contains(key);
            if !keep {
                let (u, a) = (Name(key.0.clone()), Name(key.1.clone()));
                let labels = TargetLabels {
                    upstream: u.clone(),
                    target: a.clone(),
                };
                self.upstream_duration.remove(&labels);
                self.ejections.remove(&labels);
                self.target_healthy.remove(&labels);
                for kind in ["connect", "timeout", "failed"] {
                    self.upstream_errors.remove(&TargetErrorLabels {
                        upstream: u.clone(),
                        target: a.clone(),
                        kind,
                    });
                }
            }
            keep
        });
    }

    /// Per-route live numbers for the dashboard and the admin API.
    pub fn route_snapshot(&self, name: &str) -> Option<LiveSnapshot> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(name).map(|r| r.live.snapshot())
    }
}

/// A route's metric handles.
pub struct RouteStats {
    name: Name,
    requests: [[std::sync::OnceLock<Counter>; CLASSES.len()]; METHODS.len()],
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    pub live: LiveStats,
}

/// A target's metric handles, and live counters for the admin API and the dashboard.
pub struct TargetStats {
    duration: Histogram,
    connect_errors: Counter,
    timeouts: Counter,
    failures: Counter,
    ejections: Counter,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// What one upstream exchange ended as, for [`TargetStats::record`].
pub enum UpstreamOutcome {
    Response,
    ConnectError,
    Timeout,
    Failed,
}

impl TargetStats {
    pub fn ejected(&self) {
        self.ejections.inc();
    }

    pub fn record(&self, outcome: UpstreamOutcome, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            UpstreamOutcome::Response => self.duration.observe(elapsed.as_secs_f64()),
            UpstreamOutcome::ConnectError => {
                self.connect_errors.inc();
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            UpstreamOutcome::Timeout => {
                self.timeouts.inc();
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            UpstreamOutcome::Failed => {
                self.failures.inc();
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Counters the dashboard reads: totals (rates are computed by the reader from two snapshots)
/// and a latency histogram in the same buckets as Prometheus, for percentiles.
#[derive(Default)]
pub struct LiveStats {
    requests: AtomicU64,
    client_errors: AtomicU64,
    errors: AtomicU64,
    duration_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSnapshot {
    pub requests: u64,
    /// Responses with status 4xx (refused requests: no route, auth, limits, bad requests).
    pub client_errors: u64,
    /// Responses with status 5xx.
    pub errors: u64,
    pub duration_seconds_sum: f64,
    /// Upper bounds in seconds (the last is +Inf, written as null) and counts per bucket.
    pub buckets: Vec<(Option<f64>, u64)>,
}

impl LiveStats {
    fn record(&self, status: StatusCode, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_client_error() {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
        } else if status.is_server_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            duration_seconds_sum: self.duration_us.load(Ordering::Relaxed) as f64 / 1e6,
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, c)| (BUCKETS.get(i).copied(), c.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn class_index(s: StatusCode) -> usize {
    match s.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_conventional_names_and_bounded_labels() {
        let m = Metrics::new();
        let r = m.route(&Arc::from("users"));
        m.request(
            Some(&r),
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(3),
            10,
            20,
        );
        m.request(
            None,
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
            0,
            0,
        );
        let t = m.target(&Arc::from("u"), &Arc::from("127.0.0.1:1"));
        t.record(UpstreamOutcome::ConnectError, Duration::ZERO);
        m.reload(true);
        m.config_loaded("abc");
        m.config_loaded("def");
        let text = m.encode();
        for want in [
            "gatehouse_http_requests_total{route=\"users\",method=\"GET\",status_class=\"2xx\"} 1",
            "gatehouse_http_requests_total{route=\"\",method=\"OTHER\",status_class=\"4xx\"} 1",
            "gatehouse_http_request_duration_seconds_bucket{le=\"0.005\",route=\"users\"} 1",
            "gatehouse_http_response_body_bytes_total{route=\"users\"} 20",
            "gatehouse_upstream_errors_total{upstream=\"u\",target=\"127.0.0.1:1\",kind=\"connect\"} 1",
            "gatehouse_config_reloads_total{result=\"success\"} 1",
            "gatehouse_config_reloads_total{result=\"failure\"} 0",
            "gatehouse_config_info{hash=\"def\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
        assert!(
            !text.contains("hash=\"abc\""),
            "the previous config's hash must go"
        );
        let snap = m.route_snapshot("users").unwrap();
        assert_eq!(snap.requests, 1);
    }
}

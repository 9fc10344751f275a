//! The config file as plain data: serde structs that mirror the YAML, nothing else.
//! `compile` turns a [`Config`] into a `Runtime`; every semantic check lives there.
//! Unknown keys are refused everywhere (`deny_unknown_fields`): a typo must not pass silently.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, DurationStr, FilePath, OrderedMap};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to accept client traffic: `"127.0.0.1:8080"` or a list of listeners.
    pub listen: ListenConfig,
    /// Named groups of targets that routes forward to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Named, reusable policy sets; a route applies them with `use:`.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicySetConfig>,
    /// Policies applied to every route, before the route's own.
    #[serde(default)]
    pub global: Option<GlobalConfig>,
    /// Requests are matched against routes; the most specific match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// One line per request: `off`, or `{ format: text|json, path: stdout|stderr|FILE }`.
    #[serde(default)]
    pub access_log: Option<AccessLogSetting>,
    /// Runtime worker threads. Default: the CPUs this process may run on.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How the workers share the connections: `work_stealing` (default: one runtime whose
    /// threads steal each other's tasks) or `per_core` (one single-threaded runtime per
    /// worker, each accepting on its own `SO_REUSEPORT` socket of every listener).
    #[serde(default)]
    pub scheduler: Option<Scheduler>,
    /// Limits and timeouts on the client side.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin API, metrics and dashboard, on a listener of their own. Absent = off.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where rate-limit counters live. Absent: in this process's memory. `{ redis: { url } }`:
    /// in Redis, shared by every gateway instance that names it.
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// Who may call: identities with groups and credentials, for `auth` policies.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Not a key: what error messages about this config must hide (filled by `parse_str`).
    #[serde(skip)]
    #[schemars(skip)]
    pub redactions: super::Redactions,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9901`.
    #[serde(default)]
    pub addr: Option<String>,
    /// Bearer token required on every admin request. Required when `addr` is not loopback.
    #[serde(default)]
    pub token: Option<String>,
}

/// `listen: "addr"` or `listen: [ "addr", { addr: ... } ]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ListenConfig {
    One(String),
    Many(Vec<ListenerEntry>),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ListenerEntry {
    Addr(String),
    Full(ListenerConfig),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `host:port`, e.g. `0.0.0.0:8080` or `[::1]:8080`.
    pub addr: String,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// Answer every request with a redirect to `https://` (308), except ACME HTTP-01
    /// challenges (`/.well-known/acme-challenge/`), which are routed as usual. `true`, or
    /// `{ port: 8443, status: 301 }`.
    #[serde(default)]
    pub redirect_https: Option<RedirectHttpsSetting>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RedirectHttpsSetting {
    On(bool),
    Config(RedirectHttpsConfig),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttpsConfig {
    /// The HTTPS port to send clients to. Default 443 (left out of the URL).
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302, 307 or 308 (default).
    #[serde(default)]
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificate and key pairs (PEM). Each serves the names in its certificate's subject
    /// alternative names (wildcards too); the first also serves clients that send no name or
    /// an unknown one.
    pub certificates: Vec<CertificateConfig>,
    /// Oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Ask clients for a certificate, verified against a CA bundle (mutual TLS).
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// Send `Strict-Transport-Security` on every response from this listener.
    #[serde(default)]
    pub hsts: Option<HstsConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: FilePath,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: FilePath,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: FilePath,
    /// Refuse the handshake without a valid client certificate (default `true`). `false`
    /// asks for one and verifies it when given.
    #[serde(default)]
    pub required: Option<bool>,
    /// Forward the verified client certificate's identity upstream in this header
    /// (`Subject="CN=alice,O=Example";DNS="alice.example.com";URI="spiffe://..."`). A copy the
    /// client sent is always removed first.
    #[serde(default)]
    pub forward_header: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// `max-age`, in seconds, as HSTS spells it. Default 31536000 (one year).
    #[serde(default)]
    pub max_age: Option<u64>,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

/// Client-side limits and timeouts.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Time a client has to send a complete request head, counted from the connection's
    /// accept (first request) or from the first byte of a later head. Default `10s`.
    #[serde(default)]
    pub request_header_timeout: Option<DurationStr>,
    /// How long a client connection may sit idle: an HTTP/1.1 keep-alive connection between
    /// requests, an HTTP/2 connection with no open stream (pings do not count). Default `60s`.
    #[serde(default)]
    pub idle_timeout: Option<DurationStr>,
    /// Longest pause in a request body: a client that sends nothing of its body for this long
    /// gets 408 and its connection is closed. Default `60s`.
    #[serde(default)]
    pub request_body_timeout: Option<DurationStr>,
    /// Longest a client may go without accepting any bytes of its response: the connection is
    /// then closed. Default `60s`.
    #[serde(default)]
    pub send_timeout: Option<DurationStr>,
    /// How long an upgraded connection (WebSocket) may carry no bytes in either direction
    /// before both sides are closed. Default `10m`.
    #[serde(default)]
    pub upgrade_idle_timeout: Option<DurationStr>,
    /// Largest request head (request line + headers) accepted; larger gets 431. Default `64KiB`.
    #[serde(default)]
    pub max_header_size: Option<ByteSize>,
    /// Largest request body for every route unless a route sets its own; larger gets 413.
    /// Default: no limit (bodies stream through).
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
    /// Client connections open at once, over all listeners. Default 10000.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Clients (IPs or CIDR blocks, e.g. `10.0.0.0/8`) whose forwarding fields are believed:
    /// from them `Forwarded`, `X-Real-IP`, `X-Forwarded-Proto`/`-Host`/`-Port`/`-Prefix` are
    /// kept; from anyone else they are replaced or dropped. Default: none.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
    /// Forward request fields whose names contain `_` (dropped by default, as nginx does, since
    /// CGI/WSGI backends read `X_Forwarded_Proto` as `X-Forwarded-Proto`). Default `false`.
    #[serde(default)]
    pub allow_underscores_in_headers: Option<bool>,
    /// `standard` (default): dot segments resolved, doubled slashes merged, escapes kept.
    /// `strict`: also refuse (400) encoded slashes and backslashes, `..;` path parameters,
    /// encoded NUL and invalid or overlong UTF-8 in escapes.
    #[serde(default)]
    pub path_normalization: Option<PathNormalization>,
    /// Client connections open at once from one IP address; more are closed at accept.
    /// Default 1000 (raise it behind a load balancer or a large NAT).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Default `30s`.
    #[serde(default)]
    pub shutdown_timeout: Option<DurationStr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum AccessLogSetting {
    /// `off` / `false` disables the access log; `on` / `true` is the default text format.
    Switch(Switch),
    Config(AccessLogConfig),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Switch {
    Bool(bool),
    Word(OnOff),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `stdout` (default), `stderr`, or a file path (appended to).
    #[serde(default)]
    pub path: Option<FilePath>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PathNormalization {
    #[default]
    Standard,
    Strict,
}

/// See [`Config::scheduler`].
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    #[default]
    WorkStealing,
    PerCore,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A named group of targets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `"http://host:port"`, `"https://host:port"`, `"h2c://host:port"` or `{ url, weight }`.
    /// All targets of one upstream use the same scheme.
    pub targets: Vec<TargetConfig>,
    /// Load-balancing algorithm. Default `round_robin` (smooth weighted).
    #[serde(default)]
    pub balance: BalanceConfig,
    /// The key `balance: hash` hashes: `client_ip` (default), `path`, `header:NAME`,
    /// `cookie:NAME`.
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub timeouts: UpstreamTimeoutsConfig,
    /// Forward the client's Host header (true, default) or the target's host:port (false).
    #[serde(default)]
    pub preserve_host: Option<bool>,
    /// Rewrite a `Location` or a `Set-Cookie` `Domain` that names a target's own address into
    /// the address the client used (nginx's default `proxy_redirect`). Default `true`.
    #[serde(default)]
    pub rewrite_redirects: Option<bool>,
    /// Health checking. Passive (outlier) detection is on by default.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Retries on another target. By default only connection failures are retried (once).
    #[serde(default)]
    pub retries: Option<RetriesConfig>,
    /// Circuit breaking: beyond these, requests get 503 with `Retry-After` at once.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// How often targets given by host name are resolved again. Default `30s`.
    #[serde(default)]
    pub dns_refresh: Option<DurationStr>,
    /// The HTTP version spoken to the targets: `http1` (default for `http://` and `https://`
    /// targets) or `h2` (HTTP/2, over TLS with ALPN for `https://`). `h2c://` targets (HTTP/2
    /// with prior knowledge, cleartext) imply `h2`.
    #[serde(default)]
    pub protocol: Option<UpstreamProtocol>,
    /// HTTP/2 only: requests in flight on one connection before another connection to the
    /// same target is opened (the target's own `SETTINGS_MAX_CONCURRENT_STREAMS` also counts).
    /// Default 100.
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// TLS to `https://` targets: trusted CAs, a client certificate, the name to verify.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

/// `http1` or `h2`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    H2,
}

/// TLS settings of an upstream whose targets are `https://`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates that may sign the targets' certificates. Replaces the
    /// system's trust store (read with rustls-native-certs), which is the default.
    #[serde(default)]
    pub ca: Option<FilePath>,
    /// PEM certificate chain the gateway presents to the targets (mutual TLS). Needs
    /// `client_key`.
    #[serde(default)]
    pub client_cert: Option<FilePath>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<FilePath>,
    /// The name sent as SNI and verified in the target's certificate. Default: the host of
    /// the target's URL (an IP address is verified against the certificate's IP addresses).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate from the targets: no chain or name check (the handshake is
    /// still authenticated by the target's key). For tests only; `gatehouse check` warns.
    /// Default `false`.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open to the upstream's targets at once. Default: unlimited.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Requests that may wait for a connection when `max_connections` are open. Default 100.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Requests in flight to the upstream at once. Default: unlimited.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub passive: Option<PassiveHealthConfig>,
    /// Periodic HTTP checks. Off unless configured.
    #[serde(default)]
    pub active: Option<ActiveHealthConfig>,
    /// Ramp a target's share up over this long after it comes back (from 10%). Default: off.
    #[serde(default)]
    pub slow_start: Option<DurationStr>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthConfig {
    /// Path to GET, e.g. `/healthz`. Needed unless `grpc` is set.
    #[serde(default)]
    pub path: Option<String>,
    /// Check with the gRPC health-checking protocol (`grpc.health.v1.Health/Check`) instead of
    /// a GET: healthy when the target answers SERVING for `service` (default `""`, the server
    /// as a whole). HTTP/2 upstreams only.
    #[serde(default)]
    pub grpc: Option<GrpcHealthConfig>,
    /// Default `5s`.
    #[serde(default)]
    pub interval: Option<DurationStr>,
    /// Default `2s`.
    #[serde(default)]
    pub timeout: Option<DurationStr>,
    /// Passed checks in a row that bring a target back. Default 2.
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Failed checks in a row that take a target out. Default 3.
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that count as healthy, e.g. `200-399` (default) or `200`.
    #[serde(default)]
    pub expected_status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthConfig {
    /// The service name to ask about; `""` (default) asks about the server.
    #[serde(default)]
    pub service: Option<String>,
}

/// Outlier detection from live traffic.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    /// Connection errors, timeouts or 5xx in a row that eject a target. Default 5; 0 turns
    /// passive health off.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// First ejection's length; each further one doubles. Default `30s`.
    #[serde(default)]
    pub base_ejection: Option<DurationStr>,
    /// Longest ejection. Default `5m`.
    #[serde(default)]
    pub max_ejection: Option<DurationStr>,
    /// Never eject more than this share of the targets. Default 50.
    #[serde(default)]
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetriesConfig {
    /// Tries in all, the first included. Default 2.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// What is retried: `connect_failure` (always, whatever this says), `timeout`, `reset`,
    /// and statuses such as `502`, `503`, `504`. Default `[connect_failure]`.
    #[serde(default)]
    pub on: Vec<RetryOnConfig>,
    /// Retries allowed as a share of requests, e.g. `20%`. Default `20%`.
    #[serde(default)]
    pub budget: Option<String>,
    /// Retries always allowed per second, whatever the budget, so low traffic can retry.
    /// Default 10.
    #[serde(default)]
    pub min_per_second: Option<u32>,
    /// Exponential backoff with full jitter between tries. Default `{ base: 25ms, max: 250ms }`.
    #[serde(default)]
    pub backoff: Option<BackoffConfig>,
    /// Largest request body kept for replay; a larger or streamed body is never resent.
    /// Default `64KiB`.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
}

/// `connect_failure`, `timeout`, `reset`, `5xx`, or a status code.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryOnConfig {
    Status(u16),
    Word(String),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default)]
    pub base: Option<DurationStr>,
    #[serde(default)]
    pub max: Option<DurationStr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum TargetConfig {
    Url(String),
    Weighted(WeightedTargetConfig),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedTargetConfig {
    pub url: String,
    /// Relative share of requests, 0..=1000 (0 = receives none). Default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalanceConfig {
    #[default]
    RoundRobin,
    LeastRequest,
    Ewma,
    Hash,
    Random,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTimeoutsConfig {
    /// TCP connect to a target. Default `5s`.
    #[serde(default)]
    pub connect: Option<DurationStr>,
    /// From sending the request to receiving the response head. Default `30s`.
    #[serde(default)]
    pub response: Option<DurationStr>,
    /// How long an unused pooled connection is kept. Default `60s`.
    #[serde(default)]
    pub idle: Option<DurationStr>,
    /// Longest pause in a response body once its head has arrived. Default `300s`.
    #[serde(default)]
    pub read: Option<DurationStr>,
}

/// Policy kinds. The same fields appear inline on a route, in `policies.<name>` and in `global`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySetConfig {
    #[serde(default)]
    pub headers: Option<HeadersPolicyConfig>,
    /// Authentication and access by consumer, group or claim.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// IP allow and deny lists.
    #[serde(default)]
    pub ip_rules: Option<IpRulesConfig>,
    /// Cross-origin resource sharing.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Delegate the decision to an external HTTP service.
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Requests per key and period; beyond it, 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Response cache (RFC 9111), in the store.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Named policies applied to every route, in order.
    #[serde(default, rename = "use")]
    pub uses: Vec<String>,
    #[serde(default)]
    pub headers: Option<HeadersPolicyConfig>,
    /// Authentication and access by consumer, group or claim.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// IP allow and deny lists.
    #[serde(default)]
    pub ip_rules: Option<IpRulesConfig>,
    /// Cross-origin resource sharing.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Delegate the decision to an external HTTP service.
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Requests per key and period; beyond it, 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

impl GlobalConfig {
    /// The policy kinds written inline under `global:`.
    pub fn inline_policies(&self) -> PolicySetConfig {
        PolicySetConfig {
            headers: self.headers.clone(),
            auth: self.auth.clone(),
            ip_rules: self.ip_rules.clone(),
            cors: self.cors.clone(),
            forward_auth: self.forward_auth.clone(),
            rate_limit: self.rate_limit.clone(),
            cache: None,
        }
    }
}

/// Header changes: `request` before forwarding, `response` before answering the client.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersPolicyConfig {
    #[serde(default)]
    pub request: Option<HeaderOpsConfig>,
    #[serde(default)]
    pub response: Option<HeaderOpsConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Add a value, keeping any existing ones.
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name; defaults to one derived from the match (e.g. `GET api.example.com/users`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Name of the upstream to forward to. A route has exactly one of `upstream`, `respond`
    /// and `redirect`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Answer with one JSON document composed from several upstream calls (named; they run
    /// concurrently unless one uses another's answer).
    #[serde(default)]
    pub aggregate: Option<OrderedMap<AggregateCallConfig>>,
    /// The whole request's deadline, for `aggregate` routes. Default `10s`.
    #[serde(default)]
    pub timeout: Option<DurationStr>,
    /// Remove the matched `path_prefix` from the forwarded path.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the forwarded path; `{param}` takes a value captured by `match.path`.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Named policies applied to this route, in order, before its inline ones.
    #[serde(default, rename = "use")]
    pub uses: Vec<String>,
    /// Largest request body for this route; larger gets 413.
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
    /// Allow retries (on status or timeout) for methods that are not idempotent (POST,
    /// PATCH). Connection failures are retried for every method regardless.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Inline `headers` policy.
    #[serde(default)]
    pub headers: Option<HeadersPolicyConfig>,
    /// Authentication and access by consumer, group or claim.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// IP allow and deny lists.
    #[serde(default)]
    pub ip_rules: Option<IpRulesConfig>,
    /// Cross-origin resource sharing.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Delegate the decision to an external HTTP service.
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Requests per key and period; beyond it, 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Response cache (RFC 9111), in the store.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
}

impl RouteConfig {
    /// The policy kinds written inline on the route.
    pub fn inline_policies(&self) -> PolicySetConfig {
        PolicySetConfig {
            headers: self.headers.clone(),
            auth: self.auth.clone(),
            ip_rules: self.ip_rules.clone(),
            cors: self.cors.clone(),
            forward_auth: self.forward_auth.clone(),
            rate_limit: self.rate_limit.clone(),
            cache: self.cache.clone(),
        }
    }
}

/// One call of an `aggregate` route: `{ upstream: users, path: "/users/{id}" }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateCallConfig {
    /// The upstream called (its balancing, health, retries and timeouts apply).
    pub upstream: String,
    /// Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query, with `{param}`, `{query.NAME}`, `{header.NAME}`, `{consumer.id}`,
    /// `{consumer.claims.NAME}` and `{CALL.field}` holes (values are encoded).
    pub path: String,
    /// Headers set on the call; values may hold the same holes.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Client request headers copied onto the call (e.g. `[authorization, accept-language]`).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Longest wait for this call's answer. Default: the upstream's own timeouts.
    #[serde(default)]
    pub timeout: Option<DurationStr>,
    /// When a required call fails the request fails (502/504); an optional one is left out
    /// and named under `_errors`. Default true.
    #[serde(default)]
    pub required: Option<bool>,
    /// A JSON pointer to the part of the answer to keep, e.g. `/data`.
    #[serde(default)]
    pub pointer: Option<String>,
    /// Keep only these fields.
    #[serde(default)]
    pub select: Vec<String>,
    /// Drop these fields.
    #[serde(default)]
    pub omit: Vec<String>,
    /// Rename fields: `{ from: to }`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Put the answer's fields at the root of the document instead of under the call's name
    /// (the first call listed wins a clash).
    #[serde(default)]
    pub merge: bool,
    /// Largest answer body accepted. Default `1MiB`.
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
    /// Keep this call's answers in the store (memory, or the shared Redis) and reuse them.
    #[serde(default)]
    pub cache: Option<AggregateCacheConfig>,
    /// For an optional call: the value put in its place when it fails (it is still named
    /// under `_errors`). Default: the call is left out.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
}

/// `cache: { ttl: 30s }` on an aggregate call.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateCacheConfig {
    /// Freshness when the answer states none (`s-maxage`, `max-age`). Answers marked
    /// `no-store` or `private` are never kept.
    pub ttl: DurationStr,
}

/// `respond: { status: 200, body: "pong", headers: { content-type: text/plain } }`
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// Status code, 200-599. Default 200.
    #[serde(default)]
    pub status: Option<u16>,
    /// Body, sent as it is. Default empty.
    #[serde(default)]
    pub body: Option<String>,
    /// Response headers. `content-type` defaults to `text/plain; charset=utf-8` when there is
    /// a body.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `redirect: { to: "https://example.com/{*rest}", status: 308 }`
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Where to: an absolute URL (`https://example.com/...`) or a path (`/new/...`), with
    /// `{param}` holes filled from `match.path`. The client's query is appended unless `to`
    /// has one of its own.
    pub to: String,
    /// 301, 302, 303, 307 or 308. Default 302.
    #[serde(default)]
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Path prefix, matched on whole segments: `/users` matches `/users` and `/users/7`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path, or a template with `{param}` segments and an optional final `{*rest}`.
    #[serde(default)]
    pub path: Option<String>,
    /// Host names, exact or `*.example.com` (any depth of subdomain). Absent = any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Methods, e.g. `[GET, POST]`. Absent = any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One consumer: an identity, its groups, and the credentials that prove it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique; sent upstream as the consumer id.
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicCredentialConfig>,
    /// API keys, stored as `sha256:<64 hex digits>` (`gatehouse hash-password --api-key`).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// A verified mutual-TLS client certificate identifies this consumer when it matches.
    #[serde(default)]
    pub client_cert: Option<ClientCertMatchConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialConfig {
    pub username: String,
    /// An argon2id PHC string (`$argon2id$v=19$...`) or a bcrypt hash (`$2b$`, `$2y$`), as
    /// `gatehouse hash-password` prints. Never the password itself.
    pub password_hash: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// `sha256:<64 hex digits>` of the key.
    pub hash: String,
}

/// Which client certificate is this consumer: every field given must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertMatchConfig {
    /// The subject's common name.
    #[serde(default)]
    pub cn: Option<String>,
    /// A DNS subject alternative name.
    #[serde(default)]
    pub dns: Option<String>,
    /// A URI subject alternative name (e.g. a SPIFFE id).
    #[serde(default)]
    pub uri: Option<String>,
}

/// `auth:` — who may pass.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted credentials, any of: `basic`, `api_key`, `jwt`, `mtls`.
    pub methods: Vec<String>,
    /// Let requests without credentials through (as no consumer). Wrong credentials are
    /// still refused. Default `false`.
    #[serde(default)]
    pub anonymous: bool,
    /// Only these consumers may pass (by id). Default: any authenticated caller.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Only members of one of these groups may pass (a JWT's groups claim counts).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub basic: Option<BasicAuthConfig>,
    #[serde(default)]
    pub api_key: Option<ApiKeyAuthConfig>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Headers that tell the upstream who called. Client-sent copies are always removed.
    #[serde(default)]
    pub identity_headers: Option<IdentityHeadersConfig>,
    /// Forward the credential (Authorization, the API key) to the upstream. Default `false`:
    /// it is removed.
    #[serde(default)]
    pub keep_credentials: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The realm in the `WWW-Authenticate` challenge. Default `gatehouse`.
    #[serde(default)]
    pub realm: Option<String>,
    /// More users from an htpasswd file (bcrypt `$2y$` and argon2 entries), re-read when it
    /// changes. Each user is a consumer with that id.
    #[serde(default)]
    pub htpasswd: Option<FilePath>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuthConfig {
    /// Header carrying the key. Default `x-api-key`.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter carrying the key (also accepted when set).
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HMAC secret (HS256/384/512).
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM public key file (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key: Option<FilePath>,
    /// Where to fetch the key set (JWKS); refreshed periodically and on an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again. Default `10m`.
    #[serde(default)]
    pub jwks_refresh: Option<DurationStr>,
    /// Accepted algorithms. Default: those of the key kind given (HS256 for a secret, RS256
    /// and ES256 for keys).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (one must match).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`. Default `60s`.
    #[serde(default)]
    pub leeway: Option<DurationStr>,
    /// Claims that must be present with these values (a string, or one of a list).
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    /// Scopes that must all be in the `scope` (space-separated) or `scp` claim.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The claim naming the consumer. Default `sub`.
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// The claim listing the caller's groups. Default `groups`.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Claims sent upstream as headers: `{ email: x-user-email }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersConfig {
    /// Default `x-consumer-id`.
    #[serde(default)]
    pub consumer_id: Option<String>,
    /// Comma-separated groups. Default `x-consumer-groups`.
    #[serde(default)]
    pub groups: Option<String>,
}

/// `ip_rules:` — by client address (see `server.trusted_proxies` for who says what it is).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRulesConfig {
    /// Only these addresses or CIDR blocks may pass (empty: any, unless denied).
    #[serde(default)]
    pub allow: Vec<String>,
    /// These may not, even when allowed.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `cors:` — answers preflights itself; adds the CORS headers to every answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), patterns (`https://*.example.com`), or `*`.
    pub origins: Vec<String>,
    /// Default: GET, HEAD, POST.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for. Default: whatever it asks for.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and credentials (never with `*` origins).
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight.
    #[serde(default)]
    pub max_age: Option<DurationStr>,
}

/// `forward_auth:` — ask another service (Traefik ForwardAuth, nginx `auth_request`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// `http://` or `https://` URL of the decision service.
    pub url: String,
    /// Request headers sent to it. Default: authorization, cookie.
    #[serde(default)]
    pub request_headers: Vec<String>,
    /// Headers of its 2xx answer copied onto the upstream request.
    #[serde(default)]
    pub response_headers: Vec<String>,
    /// Default `2s`; a slow or failing service means 503 (fail closed).
    #[serde(default)]
    pub timeout: Option<DurationStr>,
    /// Cache allow decisions this long, keyed by the forwarded headers. Default: off.
    #[serde(default)]
    pub cache: Option<DurationStr>,
}

/// `rate_limit: { key: client_ip, limit: 100/s, burst: 20 }`
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// What is counted: `client_ip` (default), `consumer`, `header:NAME`, or a list of these
    /// (counted together, e.g. `[consumer, header:x-tenant]`).
    #[serde(default)]
    pub key: Option<RateKeyConfig>,
    /// `N/s`, `N/min`, `N/h` (or `N/sec`, `N/minute`, `N/hour`).
    pub limit: String,
    /// Requests allowed at once above the steady rate. Default: 0 (a request every 1/N).
    #[serde(default)]
    pub burst: Option<u32>,
    /// When the shared store (Redis) cannot decide: `false` (default) counts the request in
    /// this instance's local limits instead; `true` refuses it with 503.
    #[serde(default)]
    pub fail_closed: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RateKeyConfig {
    One(String),
    Many(Vec<String>),
}

/// `cache: { ttl: 60s }`: the route's answers are kept in the store and served from it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness for answers that state none (no `Cache-Control: max-age`/`s-maxage`, no
    /// `Expires`). Default `60s`.
    #[serde(default)]
    pub ttl: Option<DurationStr>,
    /// Use `ttl` even when the upstream states a freshness (`no-store`, `private` and
    /// `Set-Cookie` still keep an answer out of the cache). Default false.
    #[serde(default)]
    pub force_ttl: bool,
    /// What tells two requests apart: any of `method`, `host`, `path`, `query` (sorted),
    /// `header:NAME`, `consumer`. Default `[host, path, query]`.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Statuses that may be stored. Default: RFC 9110's heuristically cacheable ones, 200 203
    /// 204 300 301 308 404 405 410 414 501.
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    /// Serve a stale answer this long past its freshness while one request refreshes it in
    /// the background, when the upstream does not say (`stale-while-revalidate=N`). Default 0.
    #[serde(default)]
    pub stale_while_revalidate: Option<DurationStr>,
    /// Serve a stale answer this long past its freshness when the upstream fails (5xx, no
    /// answer), when the upstream does not say (`stale-if-error=N`). Default 0.
    #[serde(default)]
    pub stale_if_error: Option<DurationStr>,
    /// Answers larger than this are passed on but not stored. Default `1MiB`.
    #[serde(default)]
    pub max_object_size: Option<ByteSize>,
    /// Store answers to requests carrying `Authorization` (put `consumer` or
    /// `header:authorization` in the key). Default false: such requests bypass the cache.
    #[serde(default)]
    pub allow_authorization: bool,
    /// Concurrent misses for one key wait this long for the first one's answer (one upstream
    /// request for all of them, across instances with the Redis store). Default `5s`; `0s`
    /// turns coalescing off.
    #[serde(default)]
    pub coalesce_timeout: Option<DurationStr>,
}

/// `store: { redis: { url: "redis://127.0.0.1:6379/0", timeout: 50ms } }`, or
/// `store: { redis: { cluster: ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"] } }`
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub redis: Option<RedisStoreConfig>,
    /// The memory store (used when there is no `redis:`).
    #[serde(default)]
    pub memory: Option<MemoryStoreConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryStoreConfig {
    /// The response cache's total size (bodies, headers and keys); the least useful answers
    /// are evicted past it (TinyLFU). Default `64MiB`.
    #[serde(default)]
    pub cache_size: Option<ByteSize>,
}

/// One Redis node (`url`) or a Redis Cluster (`cluster`); exactly one of the two.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://...` for TLS.
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster: the URLs of some of its nodes (`redis://` or `rediss://`, all alike);
    /// the rest are found from them.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// Longest wait for one Redis call; past it, the local fallback decides. Default `50ms`.
    #[serde(default)]
    pub timeout: Option<DurationStr>,
    /// For `rediss://`: a CA to trust instead of the system's, and a client certificate.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
    /// Connections to Redis (each multiplexed: many calls at once), used in turn. 1-64,
    /// default 1.
    #[serde(default)]
    pub pool: Option<u32>,
}

/// `tls: { ca: certs/redis-ca.pem }`, and `cert` + `key` when Redis asks for a client
/// certificate (`tls-auth-clients`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM CA certificates that sign the Redis server's certificate, trusted instead of the
    /// system's store.
    #[serde(default)]
    pub ca: Option<FilePath>,
    /// PEM client certificate (chain), with `key`.
    #[serde(default)]
    pub cert: Option<FilePath>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<FilePath>,
}

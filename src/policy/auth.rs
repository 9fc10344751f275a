//! `auth`: who may pass. Finds the caller by the first accepted method whose credential the
//! request carries (basic, API key, JWT, client certificate), then checks the route's
//! consumers and groups. Sets the consumer in the request context (rate limits and logs read
//! it), tells the upstream who called in identity headers (client-sent copies always removed),
//! and strips the credential unless the route keeps it.
//!
//! Passwords are verified on the blocking pool, a few at a time, and a success is remembered
//! for a minute under a keyed hash of the credential, so the hot path costs one hash. Unknown
//! users are checked against a decoy hash of the scheme and cost most of the policy's users
//! have, so they take as long as known ones. Failed attempts
//! are counted per client address: too many lock that address out for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{HeaderName, HeaderValue, Request, header};

use super::consumers::{Consumers, PasswordHash, decoy_hash};
use super::htpasswd::Htpasswd;
use super::{Flow, Phase, Policy, PolicyCx, RequestCtx, Step};
use crate::body::Body;
use crate::config::ConfigError;
use crate::config::model::{AuthConfig, PolicySetConfig};
use crate::context::Consumer;
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;

/// Failed attempts from one address within [`FAIL_WINDOW`] that lock it out.
const MAX_FAILURES: u32 = 10;
const FAIL_WINDOW: Duration = Duration::from_secs(60);
const LOCKOUT: Duration = Duration::from_secs(60);
/// How long a verified password is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Entries kept in the verified-password cache and the failure table, at most.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Basic,
    ApiKey,
    Jwt,
    Mtls,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Basic => "basic",
            Method::ApiKey => "api_key",
            Method::Jwt => "jwt",
            Method::Mtls => "mtls",
        }
    }
}

pub struct AuthPolicy {
    methods: Vec<Method>,
    anonymous: bool,
    consumers: Arc<Consumers>,
    allow_consumers: Vec<String>,
    allow_groups: Vec<String>,
    realm: String,
    /// The typical hash of the users this policy checks (see [`AuthPolicy::decoy`]).
    decoy_model: Option<PasswordHash>,
    htpasswd: Option<Arc<Htpasswd>>,
    key_header: HeaderName,
    key_query: Option<String>,
    jwt: Option<super::jwt::Jwt>,
    id_header: HeaderName,
    groups_header: HeaderName,
    keep_credentials: bool,
    challenges: Vec<HeaderValue>,
    metrics: Arc<Metrics>,
}

/// The `auth` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Policy>> {
    let a = set.auth.as_ref()?;
    let p = format!("{path}.auth");
    AuthPolicy::compile(a, cx, &p, errors).map(|a| Arc::new(a) as Arc<dyn Policy>)
}

impl AuthPolicy {
    fn compile(
        a: &AuthConfig,
        cx: &PolicyCx<'_>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<AuthPolicy> {
        let before = errors.len();
        let mut methods = Vec::new();
        for (i, m) in a.methods.iter().enumerate() {
            let m = match m.as_str() {
                "basic" => Method::Basic,
                "api_key" => Method::ApiKey,
                "jwt" => Method::Jwt,
                "mtls" => Method::Mtls,
                other => {
                    errors.push(ConfigError::new(
                        format!("{path}.methods[{i}]"),
                        format!("unknown method {other:?} (expected basic, api_key, jwt or mtls)"),
                    ));
                    continue;
                }
            };
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        if a.methods.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.methods"),
                "list at least one of basic, api_key, jwt, mtls",
            ));
        }
        if methods.contains(&Method::Jwt) != a.jwt.is_some() {
            errors.push(ConfigError::new(
                format!("{path}.jwt"),
                if a.jwt.is_some() {
                    "is set, but `methods` does not list jwt"
                } else {
                    "method jwt needs a `jwt:` block (secret, public_key or jwks_url)"
                },
            ));
        }
        for (i, id) in a.consumers.iter().enumerate() {
            if cx.consumers.get(id).is_none() {
                errors.push(ConfigError::new(
                    format!("{path}.consumers[{i}]"),
                    format!("no consumer with id {id:?}"),
                ));
            }
        }
        let htpasswd = a
            .basic
            .as_ref()
            .and_then(|b| b.htpasswd.as_ref())
            .and_then(|f| match Htpasswd::load(&f.0) {
                Ok(h) => Some(Arc::new(h)),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{path}.basic.htpasswd"), e));
                    None
                }
            });
        let header =
            |k: &str, v: Option<&String>, d: &'static str, errors: &mut Vec<ConfigError>| match v {
                None => HeaderName::from_static(d),
                Some(h) => HeaderName::from_bytes(h.as_bytes()).unwrap_or_else(|_| {
                    errors.push(ConfigError::new(
                        format!("{path}.{k}"),
                        format!("invalid header name {h:?}"),
                    ));
                    HeaderName::from_static(d)
                }),
            };
        let key_header = header(
            "api_key.header",
            a.api_key.as_ref().and_then(|k| k.header.as_ref()),
            "x-api-key",
            errors,
        );
        let ids = a.identity_headers.as_ref();
        let id_header = header(
            "identity_headers.consumer_id",
            ids.and_then(|i| i.consumer_id.as_ref()),
            "x-consumer-id",
            errors,
        );
        let groups_header = header(
            "identity_headers.groups",
            ids.and_then(|i| i.groups.as_ref()),
            "x-consumer-groups",
            errors,
        );
        let jwt = match &a.jwt {
            Some(j) => super::jwt::Jwt::compile(j, cx, &format!("{path}.jwt"), errors),
            None => None,
        };
        if errors.len() > before {
            return None;
        }
        let realm = a
            .basic
            .as_ref()
            .and_then(|b| b.realm.clone())
            .unwrap_or_else(|| "gatehouse".to_owned());
        let realm = realm.replace(['"', '\\'], "");
        let challenges = methods
            .iter()
            .filter_map(|m| {
                let c = match m {
                    Method::Basic => format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
                    Method::Jwt => format!("Bearer realm=\"{realm}\""),
                    Method::ApiKey => format!("ApiKey realm=\"{realm}\", header=\"{key_header}\""),
                    Method::Mtls => return None,
                };
                HeaderValue::from_str(&c).ok()
            })
            .collect();
        Some(AuthPolicy {
            methods,
            anonymous: a.anonymous,
            consumers: cx.consumers.clone(),
            allow_consumers: a.consumers.clone(),
            allow_groups: a.groups.clone(),
            realm,
            decoy_model: super::consumers::typical(
                cx.consumers
                    .password_hashes()
                    .chain(htpasswd.iter().flat_map(|h| h.hashes())),
            ),
            htpasswd,
            key_header,
            key_query: a.api_key.as_ref().and_then(|k| k.query.clone()),
            jwt,
            id_header,
            groups_header,
            keep_credentials: a.keep_credentials,
            challenges,
            metrics: cx.metrics.clone(),
        })
    }

    fn unauthorized(&self, why: &'static str) -> GatewayError {
        GatewayError::Unauthorized {
            challenges: self.challenges.clone(),
            why,
        }
    }

    /// The challenges for a bearer token that was presented and refused.
    fn invalid_token(&self, why: &'static str) -> GatewayError {
        let bearer = HeaderValue::from_str(&format!(
            "Bearer realm=\"{}\", error=\"invalid_token\"",
            self.realm
        ));
        let challenges = self
            .challenges
            .iter()
            .map(|c| match &bearer {
                Ok(b) if c.as_bytes().starts_with(b"Bearer ") => b.clone(),
                _ => c.clone(),
            })
            .collect();
        GatewayError::Unauthorized { challenges, why }
    }

    /// The request's credential for `m`, if it carries one.
    fn credential(&self, m: Method, req: &Request<Body>, cx: &RequestCtx) -> Option<Credential> {
        match m {
            Method::Basic => Some(match basic_credentials(authorization(req, "basic")?) {
                Some((u, p)) => Credential::Basic(u, p),
                None => Credential::Malformed,
            }),
            Method::Jwt => {
                authorization(req, "bearer").map(|t| Credential::Bearer(t.trim().to_owned()))
            }
            Method::ApiKey => {
                if let Some(v) = req.headers().get(&self.key_header) {
                    return Some(Credential::ApiKey(v.as_bytes().to_vec()));
                }
                let q = self.key_query.as_deref()?;
                query_param(req.uri().query()?, q).map(|v| Credential::ApiKey(v.into_bytes()))
            }
            // A verified certificate that names no consumer is not this method's credential:
            // other methods may still identify the caller.
            Method::Mtls => cx
                .client_cert
                .as_ref()
                .and_then(|c| self.consumers.by_cert(c))
                .map(|c| Credential::Known(c.clone())),
        }
    }

    /// The first accepted method whose credential the request carries, read out of the
    /// request (so nothing borrowed from it is held while a password is checked).
    fn find_credential(
        &self,
        req: &Request<Body>,
        cx: &RequestCtx,
    ) -> Option<(Method, Credential)> {
        for &m in &self.methods {
            if let Some(c) = self.credential(m, req, cx) {
                return Some((m, c));
            }
        }
        None
    }

    async fn authenticate(
        &self,
        cred: Credential,
    ) -> Result<(Arc<Consumer>, Vec<(HeaderName, HeaderValue)>), &'static str> {
        match cred {
            Credential::Malformed => Err("malformed credentials"),
            Credential::Basic(user, pass) => {
                self.basic(&user, &pass).await.map(|c| (c, Vec::new()))
            }
            Credential::ApiKey(key) => self
                .consumers
                .api_key(&key)
                .cloned()
                .map(|c| (c, Vec::new()))
                .ok_or("unknown API key"),
            Credential::Bearer(token) => self.bearer(&token).await,
            Credential::Known(c) => Ok((c, Vec::new())),
        }
    }

    async fn bearer(
        &self,
        token: &str,
    ) -> Result<(Arc<Consumer>, Vec<(HeaderName, HeaderValue)>), &'static str> {
        let Some(jwt) = &self.jwt else {
            return Err("no JWT settings");
        };
        let claims = jwt.verify(token).await.map_err(|e| jwt_why(&e))?;
        let forwarded = jwt.forward_headers(&claims);
        let mut consumer = jwt.consumer(claims).ok_or("the token names no consumer")?;
        // A consumer configured under the same id adds its groups.
        if let Some(known) = self.consumers.get(&consumer.id) {
            for g in &known.groups {
                if !consumer.groups.contains(g) {
                    consumer.groups.push(g.clone());
                }
            }
        }
        Ok((Arc::new(consumer), forwarded))
    }

    async fn basic(&self, user: &str, pass: &str) -> Result<Arc<Consumer>, &'static str> {
        let found: Option<(Arc<Consumer>, PasswordHash)> = self
            .consumers
            .basic(user)
            .cloned()
            .or_else(|| self.htpasswd.as_ref().and_then(|h| h.user(user)));
        // Keyed by the stored hash too: the same username and password never count for
        // another user table (another route's htpasswd), nor after the password changed.
        let key = found
            .as_ref()
            .map(|(_, h)| verified_key(user, pass, h.stored()));
        if let (Some((c, _)), Some(key)) = (&found, &key)
            && verified().lookup(key, &c.id)
        {
            return Ok(c.clone());
        }
        let (hash, known) = match &found {
            Some((_, h)) => (h.clone(), true),
            None => (self.decoy().await, false),
        };
        let password = pass.as_bytes().to_vec();
        let ok = verify_blocking(hash, password).await.ok_or(BUSY)?;
        match (found, key) {
            (Some((c, _)), Some(key)) if ok && known => {
                verified().insert(key, c.id.clone());
                Ok(c)
            }
            _ => Err("wrong username or password"),
        }
    }

    /// What an unknown username is checked against: a hash of the shape most of this policy's
    /// users have (made once per shape, on the blocking pool, one at a time), so that the time
    /// taken does not tell an unknown name from a known one.
    async fn decoy(&self) -> PasswordHash {
        let Some(model) = &self.decoy_model else {
            return decoy_hash().clone();
        };
        super::consumers::decoy_of(model).await
    }

    fn allowed(&self, c: &Consumer) -> bool {
        (self.allow_consumers.is_empty() || self.allow_consumers.iter().any(|id| **id == *c.id))
            && (self.allow_groups.is_empty()
                || c.groups
                    .iter()
                    .any(|g| self.allow_groups.iter().any(|a| **a == **g)))
    }

    /// `without_key`: the request's URI without the query key (if it had one).
    fn strip_credentials(
        &self,
        m: Method,
        req: &mut Request<Body>,
        without_key: Option<http::Uri>,
    ) {
        if self.keep_credentials {
            return;
        }
        match m {
            Method::Basic | Method::Jwt => {
                req.headers_mut().remove(header::AUTHORIZATION);
            }
            Method::ApiKey => {
                req.headers_mut().remove(&self.key_header);
                if let Some(new) = without_key {
                    *req.uri_mut() = new;
                }
            }
            Method::Mtls => {}
        }
    }

    async fn run(
        &self,
        req: &mut Request<Body>,
        cx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        // Only the gateway says who called.
        req.headers_mut().remove(&self.id_header);
        req.headers_mut().remove(&self.groups_header);
        if let Some(j) = &self.jwt {
            for h in j.forwarded_header_names() {
                req.headers_mut().remove(h);
            }
        }
        // A key in the query never reaches the upstream, once the request is let through (nor
        // the access log: `Policy::query_secret`).
        let without_key = self
            .key_query
            .as_deref()
            .and_then(|q| without_query_param(req.uri(), q));
        let route = cx.route.clone();
        let ip = cx.client_ip;
        let found = self.find_credential(req, cx);
        // Only guessable secrets (passwords, API keys) are throttled: a locked-out address
        // still gets in with a valid token or client certificate.
        let guessable = |m: Method| matches!(m, Method::Basic | Method::ApiKey);
        if let Some((m, _)) = &found
            && guessable(*m)
            && let Some(retry_after) = failures().locked(ip)
        {
            self.metrics.auth(route.as_ref(), m.name(), "locked_out");
            return Err(GatewayError::LockedOut { retry_after });
        }
        let (method, consumer, extra) = match found {
            Some((m, cred)) => match self.authenticate(cred).await {
                Ok((c, extra)) => (m, c, extra),
                Err(why @ (KEYS_UNAVAILABLE | BUSY)) => {
                    self.metrics.auth(route.as_ref(), m.name(), "unavailable");
                    return Err(GatewayError::AuthUnavailable(why.into()));
                }
                Err(why) => {
                    if guessable(m) {
                        failures().record(ip);
                    }
                    self.metrics.auth(route.as_ref(), m.name(), "failure");
                    tracing::info!(client = %ip, method = m.name(), reason = why, "authentication failed");
                    if m == Method::Jwt {
                        // RFC 6750 3.1: a presented token that failed says so.
                        return Err(self.invalid_token(why));
                    }
                    return Err(self.unauthorized(why));
                }
            },
            None => {
                if self.anonymous && self.allow_consumers.is_empty() && self.allow_groups.is_empty()
                {
                    self.metrics.auth(route.as_ref(), "none", "anonymous");
                    return Ok(Flow::Continue);
                }
                self.metrics.auth(route.as_ref(), "none", "failure");
                return Err(self.unauthorized("no credentials"));
            }
        };
        if !self.allowed(&consumer) {
            self.metrics
                .auth(route.as_ref(), method.name(), "forbidden");
            return Err(GatewayError::Forbidden(
                "consumer not admitted by this route",
            ));
        }
        self.metrics.auth(route.as_ref(), method.name(), "success");
        self.strip_credentials(method, req, without_key);
        if let Ok(v) = HeaderValue::from_str(&consumer.id) {
            req.headers_mut().insert(self.id_header.clone(), v);
        }
        if !consumer.groups.is_empty() {
            let joined = consumer
                .groups
                .iter()
                .map(|g| &**g)
                .collect::<Vec<_>>()
                .join(",");
            if let Ok(v) = HeaderValue::from_str(&joined) {
                req.headers_mut().insert(self.groups_header.clone(), v);
            }
        }
        for (k, v) in extra {
            req.headers_mut().insert(k, v);
        }
        cx.consumer = Some(consumer);
        Ok(Flow::Continue)
    }
}

/// What a failed JWT check says in the log (the token never appears).
fn jwt_why(e: &super::jwt::JwtError) -> &'static str {
    use super::jwt::JwtError as E;
    match e {
        E::Missing => "empty bearer token",
        E::Malformed => "malformed token",
        E::BadSignature => "bad token signature",
        E::Expired => "token expired",
        E::NotYetValid => "token not valid yet",
        E::WrongIssuer => "wrong token issuer",
        E::WrongAudience => "wrong token audience",
        E::AlgorithmNotAllowed => "token algorithm not allowed",
        E::UnknownKey => "unknown token key",
        E::MissingClaim(_) => "a required claim is missing",
        E::MissingScope(_) => "a required scope is missing",
        E::KeysUnavailable => KEYS_UNAVAILABLE,
    }
}

/// The JWKS could not be fetched: not the caller's fault, answered 503.
const KEYS_UNAVAILABLE: &str = "the JWT keys could not be fetched";

enum Credential {
    Basic(String, String),
    ApiKey(Vec<u8>),
    Bearer(String),
    /// Already identified (a client certificate).
    Known(Arc<Consumer>),
    Malformed,
}

impl Policy for AuthPolicy {
    fn query_secret(&self) -> Option<&str> {
        self.key_query.as_deref()
    }

    fn credential_headers(&self) -> Vec<HeaderName> {
        vec![self.key_header.clone()]
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        let mut names = vec![self.id_header.clone(), self.groups_header.clone()];
        if let Some(j) = &self.jwt {
            names.extend(j.forwarded_header_names().cloned());
        }
        names
    }

    fn kind(&self) -> &'static str {
        "auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authentication
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        Step::Wait(Box::pin(self.run(req, cx)))
    }
}

impl std::fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPolicy")
            .field("methods", &self.methods)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// The `Authorization` value after `scheme ` (case-insensitive), if that is its scheme.
fn authorization<'r>(req: &'r Request<Body>, scheme: &str) -> Option<&'r str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, rest) = v.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// The user and password of a `Basic` credential (what follows the scheme): base64 of UTF-8
/// `user:password` (RFC 7617); `None` when it is not.
pub(crate) fn basic_credentials(v: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The first value of `name` in a query string, percent-decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URI without every `name=...` pair of its query; `None` when it has none.
pub(crate) fn without_query_param(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let q = uri.query()?;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
        .collect();
    if kept.len() == q.split('&').count() {
        return None;
    }
    let pq = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    http::Uri::from_parts(parts).ok()
}

/// Why a password could not be checked: every verification slot stayed busy.
const BUSY: &str = "password checks are saturated";

/// Runs a password check on the blocking pool, at most half the cores' worth at a time, so a
/// flood of wrong passwords cannot take every core (or every blocking thread) from the
/// gateway. `None` when no slot frees up within [`VERIFY_WAIT`]: answered 503, not 401.
async fn verify_blocking(hash: PasswordHash, password: Vec<u8>) -> Option<bool> {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new((n / 2).max(1))
    });
    let permit = tokio::time::timeout(VERIFY_WAIT, slots.acquire())
        .await
        .ok()?
        .ok()?;
    // The slot goes with the check, not with the request: a client that hangs up does not
    // free it while the hash still runs (hanging up in a loop would run checks unbounded).
    let ok = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        hash.verify(&password)
    })
    .await
    .unwrap_or(false);
    Some(ok)
}

/// How long a password check waits for a slot.
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// A keyed hash of a credential: the cache key of a verified password. The key is random per
/// process, so the cache holds nothing an attacker could test passwords against.
fn verified_key(user: &str, pass: &str, stored: &str) -> [u8; 32] {
    use sha2::Digest;
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        for b in &mut s {
            *b = fastrand::u8(..);
        }
        s
    });
    let mut h = sha2::Sha256::new();
    h.update(secret);
    for part in [stored.as_bytes(), user.as_bytes(), pass.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[derive(Default)]
struct Verified(Mutex<HashMap<[u8; 32], VerifiedEntry>>);

/// Who a credential verified as, and when.
type VerifiedEntry = (Arc<str>, Instant);

impl Verified {
    fn lookup(&self, key: &[u8; 32], id: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .is_some_and(|(who, at)| **who == *id && at.elapsed() < VERIFIED_TTL)
    }

    fn insert(&self, key: [u8; 32], id: Arc<str>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, at)| at.elapsed() < VERIFIED_TTL);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (id, Instant::now()));
    }
}

fn verified() -> &'static Verified {
    static V: OnceLock<Verified> = OnceLock::new();
    V.get_or_init(Verified::default)
}

/// Failed attempts per client address.
#[derive(Default)]
struct Failures(Mutex<HashMap<IpAddr, FailureEntry>>);

/// Failures in the current window, when the window started, and the end of a lockout.
type FailureEntry = (u32, Instant, Option<Instant>);

impl Failures {
    /// Seconds left of a lockout, if `ip` is locked out.
    fn locked(&self, ip: IpAddr) -> Option<u64> {
        let ip = bucket(ip);
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let until = map.get(&ip)?.2?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }

    fn record(&self, ip: IpAddr) {
        let ip = bucket(ip);
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&ip) {
            map.retain(|_, (_, since, until)| {
                now.duration_since(*since) < FAIL_WINDOW || until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_ENTRIES {
                // Full of live entries: this failure goes uncounted rather than the table
                // growing without bound.
                return;
            }
        }
        let e = map.entry(ip).or_insert((0, now, None));
        if now.duration_since(e.1) >= FAIL_WINDOW {
            *e = (0, now, None);
        }
        e.0 += 1;
        if e.0 >= MAX_FAILURES {
            e.2 = Some(now + LOCKOUT);
            e.0 = 0;
            e.1 = now;
            tracing::warn!(client = %ip, seconds = LOCKOUT.as_secs(), "too many failed authentication attempts: locked out");
        }
    }
}

/// The address failures are counted under: an IPv4 address, or an IPv6 /64 (one client
/// usually holds a whole /64, so counting single addresses would let it rotate freely).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(masked.into())
        }
        v4 => v4,
    }
}

fn failures() -> &'static Failures {
    static F: OnceLock<Failures> = OnceLock::new();
    F.get_or_init(Failures::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failure table holds at most `MAX_ENTRIES` addresses: full of live entries, a new
    /// address's failures go uncounted (never locked out) rather than the table growing; the
    /// verified-credential cache clears itself when full and keeps taking entries.
    #[test]
    fn the_tables_stay_within_their_caps() {
        let f = Failures::default();
        for i in 0..MAX_ENTRIES as u32 {
            f.record(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        let extra: IpAddr = "192.0.2.77".parse().unwrap();
        for _ in 0..MAX_FAILURES + 2 {
            f.record(extra);
        }
        assert_eq!(f.0.lock().unwrap().len(), MAX_ENTRIES);
        assert_eq!(f.locked(extra), None, "counted past the cap");
        // An address already in the table is still counted.
        let known = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000));
        for _ in 0..MAX_FAILURES {
            f.record(known);
        }
        assert!(f.locked(known).is_some());

        let v = Verified::default();
        for i in 0..=MAX_ENTRIES as u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            v.insert(key, Arc::from("alice"));
        }
        assert!(v.0.lock().unwrap().len() <= MAX_ENTRIES);
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&(MAX_ENTRIES as u32).to_le_bytes());
        assert!(v.lookup(&last, "alice"), "the newest entry is kept");
    }

    #[test]
    fn query_keys_are_read_and_removed() {
        assert_eq!(
            query_param("a=1&api_key=k%20y&b=2", "api_key").as_deref(),
            Some("k y")
        );
        let u: http::Uri = "/x?a=1&api_key=secret&b=2".parse().unwrap();
        assert_eq!(without_query_param(&u, "api_key").unwrap(), "/x?a=1&b=2");
        let u: http::Uri = "/x?api_key=secret".parse().unwrap();
        assert_eq!(without_query_param(&u, "api_key").unwrap(), "/x");
        // Nothing to remove: nothing rebuilt (no new URI per request on such routes).
        let u: http::Uri = "/x?a=1&api_keys=2".parse().unwrap();
        assert!(without_query_param(&u, "api_key").is_none());
    }

    #[test]
    fn a_verified_password_counts_only_for_the_hash_it_matched() {
        // The same username and password against another user table (another route's
        // htpasswd) or a changed password is another cache key.
        let a = verified_key("admin", "pw", "$argon2id$v=19$a");
        assert_ne!(a, verified_key("admin", "pw", "$argon2id$v=19$b"));
        assert_eq!(a, verified_key("admin", "pw", "$argon2id$v=19$a"));
        // Length prefixes: the boundary between the parts cannot move.
        assert_ne!(
            verified_key("ad", "minpw", "h"),
            verified_key("admin", "pw", "h")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(bucket(v4), v4);
    }

    #[test]
    fn lockout_after_repeated_failures() {
        let f = Failures::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            f.record(ip);
        }
        assert!(f.locked(ip).is_none());
        f.record(ip);
        assert!(f.locked(ip).is_some_and(|s| s >= 1));
        assert!(f.locked("192.0.2.8".parse().unwrap()).is_none());
    }
}

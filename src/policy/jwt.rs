//! JWT verification, for the `auth` policy: a compact JWS checked against exactly one key
//! source, then its claims.
//!
//! - Key sources: an HMAC `secret` (HS256/384/512), a PEM `public_key` file (RSA: RS*/PS*;
//!   EC P-256: ES256; EC P-384: ES384; Ed25519: EdDSA), or a JWKS at `jwks_url`. The accepted
//!   algorithms must fit the key kind, checked when the config compiles: an HS algorithm next
//!   to a public key (algorithm confusion) and `none` are config errors. A token's header
//!   `alg` must be one of them; keys are never taken from the token (`jwk`, `jku`, `x5u` are
//!   ignored) and a header with `crit` is refused.
//! - Claims: `exp` required, `nbf` when present, `iss` and `aud` when configured (a missing
//!   one is refused then), with `leeway` (default 60 s); `required_claims` (equal, or
//!   contained when the claim is a list), `scopes` (all in `scope` or `scp`). A claim name
//!   with dots (`realm_access.roles`) reaches into nested objects when no top-level claim has
//!   that name.
//! - JWKS: fetched on first use (not when the config compiles), over the gateway's own
//!   connector (HTTP/1.1, TLS with the system roots for `https://`), at most 1 MiB within 5 s.
//!   The cache is a registry resource named by the URL, so it outlives reloads. It is
//!   refreshed in the background once older than `jwks_refresh` (default 10 m; the current
//!   keys serve meanwhile), and when a token names an unknown `kid`, at most once per 10 s. A
//!   failed fetch keeps the last good keys. Symmetric (`oct`) keys in a JWKS are ignored; a
//!   JWK's `alg`, when set, is the only algorithm it verifies.
//! - Errors ([`JwtError`]) are short reasons for the log and `WWW-Authenticate`; they never
//!   hold the token.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::ServerName;
use serde_json::{Map, Value};

use super::PolicyCx;
use crate::config::ConfigError;
use crate::config::model::JwtConfig;
use crate::context::Consumer;
use crate::upstream::connector::Endpoint;
use crate::upstream::transport::{
    DEFAULT_MAX_CONCURRENT_STREAMS, Protocol, TlsClient, Transport, Trust,
};

/// A token's claims.
pub type JwtClaims = Map<String, Value>;

const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
/// At most one JWKS fetch per this long on an unknown `kid` (or a failing background refresh).
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// While no keys were ever fetched, a request may try again this often.
const RETRY_NO_KEYS: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_JWKS_KEYS: usize = 100;
/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 32 * 1024;
/// A token without `kid` is tried against at most this many keys.
const MAX_KEYS_TRIED: usize = 8;

const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const ALG_NAMES: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// Why a token was refused. `Display` is a short reason, safe for the log and for a
/// `WWW-Authenticate` `error_description`: it never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("unknown signing key")]
    UnknownKey,
    /// A claim that is absent, or has not the required value (the claim's name, from the
    /// config or the spec: `exp`, `iss`, `aud`).
    #[error("claim {0} missing or not accepted")]
    MissingClaim(String),
    #[error("scope {0} required")]
    MissingScope(String),
    /// No JWKS could be fetched yet: the gateway's problem, not the client's.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl JwtError {
    /// The RFC 6750 `error` code for the challenge: `insufficient_scope` (403) for a missing
    /// scope, `invalid_token` (401) for a bad token, none for a missing token or for keys
    /// that could not be fetched.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            JwtError::Missing | JwtError::KeysUnavailable => None,
            JwtError::MissingScope(_) => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }
}

/// A compiled `jwt` config.
pub struct Jwt {
    source: Source,
    /// One validation per accepted algorithm, each allowing that algorithm only.
    validations: Vec<(Algorithm, Validation)>,
    required_claims: Vec<(String, String)>,
    scopes: Vec<String>,
    consumer_claim: String,
    groups_claim: String,
    forward: Vec<(String, HeaderName)>,
    /// `jwks_refresh`.
    refresh: Duration,
    /// The unknown-`kid` rate limit (a field so tests can shorten it).
    min_refetch: Duration,
    /// Tokens that verified recently, so a client sending the same token again costs one
    /// hash instead of a signature check.
    verified: TokenCache,
}

/// How long a verified token is remembered, at most (never past its `exp`).
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Tokens remembered at most.
const VERIFIED_MAX: usize = 10_000;

/// Verified tokens by SHA-256 of the compact form, with their claims and how long the entry
/// holds. Only successes are kept: a refused token is checked again each time.
#[derive(Default)]
struct TokenCache(Mutex<std::collections::HashMap<[u8; 32], CachedToken>>);

/// A verified token's claims, until when the entry holds, and the key set it was verified
/// with (`None`: a configured key). A new key set (rotation) makes every entry stale, so a
/// token signed with a removed key is refused at once.
type CachedToken = (Arc<JwtClaims>, Instant, Option<Instant>);

impl TokenCache {
    fn get(&self, key: &[u8; 32], keys: Option<Instant>) -> Option<Arc<JwtClaims>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(_, until, k)| Instant::now() < *until && *k == keys)
            .map(|(c, _, _)| c.clone())
    }

    fn put(&self, key: [u8; 32], claims: Arc<JwtClaims>, keys: Option<Instant>) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let left = Duration::from_secs(exp.saturating_sub(now_unix)).min(VERIFIED_TTL);
        if left.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= VERIFIED_MAX {
            map.retain(|_, (_, until, _)| now < *until);
            if map.len() >= VERIFIED_MAX {
                map.clear();
            }
        }
        map.insert(key, (claims, now + left, keys));
    }
}

enum Source {
    Static(Key),
    Jwks(Arc<JwksCache>),
}

struct Key {
    kid: Option<String>,
    /// What this key may verify: its kind's algorithms (narrowed by a JWK's `alg`, or by the
    /// config's `algorithms` for a configured key).
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// The kind of the configured key, which decides the algorithms that fit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    /// The one ECDSA algorithm of the key's curve (ES256 for P-256, ES384 for P-384).
    Ec(Algorithm),
    Ed,
    Jwks,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Hmac => HMAC_ALGS.contains(&alg),
            KeyKind::Rsa => RSA_ALGS.contains(&alg),
            KeyKind::Ec(a) => a == alg,
            KeyKind::Ed => alg == Algorithm::EdDSA,
            KeyKind::Jwks => !HMAC_ALGS.contains(&alg),
        }
    }

    fn defaults(self) -> Vec<Algorithm> {
        match self {
            KeyKind::Hmac => vec![Algorithm::HS256],
            KeyKind::Rsa => vec![Algorithm::RS256],
            KeyKind::Ec(a) => vec![a],
            KeyKind::Ed => vec![Algorithm::EdDSA],
            KeyKind::Jwks => vec![Algorithm::RS256, Algorithm::ES256],
        }
    }

    /// Why `alg` does not fit, for the config error.
    fn misfit(self, alg: Algorithm) -> String {
        let hmac = HMAC_ALGS.contains(&alg);
        match self {
            KeyKind::Hmac => format!(
                "{alg:?} needs a public key or a JWKS; a `secret` verifies HS256, HS384 and HS512 only"
            ),
            _ if hmac => format!(
                "{alg:?} is an HMAC algorithm: with a public key it would let anyone holding that public key sign tokens (algorithm confusion). HMAC takes a `secret`"
            ),
            KeyKind::Rsa => format!(
                "{alg:?} does not fit the RSA key: use RS256, RS384, RS512, PS256, PS384 or PS512"
            ),
            KeyKind::Ec(a) => format!("{alg:?} does not fit the EC key's curve: use {a:?}"),
            KeyKind::Ed => format!("{alg:?} does not fit the Ed25519 key: use EdDSA"),
            KeyKind::Jwks => format!("{alg:?} is not accepted with a JWKS"),
        }
    }
}

impl Jwt {
    /// Compiles a `jwt` config (`path` is its key path). Pure: reads only the `public_key`
    /// file; a JWKS is claimed from the registry (by URL) but fetched on first use.
    pub fn compile(
        cfg: &JwtConfig,
        cx: &PolicyCx<'_>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Jwt> {
        let before = errors.len();
        let mut warnings = Vec::new();

        let given: Vec<&str> = [
            ("secret", cfg.secret.is_some()),
            ("public_key", cfg.public_key.is_some()),
            ("jwks_url", cfg.jwks_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if given.len() > 1 {
            errors.push(ConfigError::new(
                format!("{path}.{}", given[1]),
                format!(
                    "give one key source, not several ({})",
                    given
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ));
        } else if given.is_empty() {
            errors.push(ConfigError::new(
                path,
                "needs a key source: `secret`, `public_key` or `jwks_url`",
            ));
        }

        // The key (or where it comes from), when exactly one source is given.
        let mut key: Option<(KeyKind, Option<DecodingKey>)> = None;
        let mut jwks: Option<Arc<JwksCache>> = None;
        if given.len() == 1 {
            if let Some(secret) = &cfg.secret {
                if secret.is_empty() {
                    errors.push(ConfigError::new(format!("{path}.secret"), "is empty"));
                } else {
                    if secret.len() < 32 {
                        warnings.push(ConfigError::new(
                            format!("{path}.secret"),
                            "is shorter than 32 bytes: a captured token lets it be guessed offline; use at least 32 random bytes",
                        ));
                    }
                    key = Some((
                        KeyKind::Hmac,
                        Some(DecodingKey::from_secret(secret.as_bytes())),
                    ));
                }
            } else if let Some(file) = &cfg.public_key {
                match load_public_key(file.as_str()) {
                    Ok((kind, k)) => key = Some((kind, Some(k))),
                    Err(e) => errors.push(ConfigError::new(format!("{path}.public_key"), e)),
                }
            } else if let Some(url) = &cfg.jwks_url {
                match JwksTarget::parse(url) {
                    Ok(target) => {
                        if target.plain && !target.loopback {
                            warnings.push(ConfigError::new(
                                format!("{path}.jwks_url"),
                                "is plain http: anyone on the network path can substitute the keys (use https)",
                            ));
                        }
                        let mut claims = cx.claims.lock().unwrap_or_else(|e| e.into_inner());
                        jwks = Some(claims.claim(
                            cx.registry,
                            url,
                            |_: &JwksCache| true,
                            || JwksCache::new(url, target),
                        ));
                        key = Some((KeyKind::Jwks, None));
                    }
                    Err(e) => errors.push(ConfigError::new(format!("{path}.jwks_url"), e)),
                }
            }
        }
        if cfg.jwks_refresh.is_some() && cfg.jwks_url.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.jwks_refresh"),
                "applies only with `jwks_url`",
            ));
        }
        let refresh = cfg.jwks_refresh.map_or(DEFAULT_REFRESH, |d| d.0);
        if refresh.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.jwks_refresh"),
                "must be more than 0",
            ));
        }

        let kind = key.as_ref().map(|(k, _)| *k);
        let mut algs: Vec<Algorithm> = Vec::new();
        for (i, name) in cfg.algorithms.iter().enumerate() {
            let p = format!("{path}.algorithms[{i}]");
            if name.trim().eq_ignore_ascii_case("none") {
                errors.push(ConfigError::new(
                    p,
                    "`none` (unsigned tokens) is never accepted",
                ));
                continue;
            }
            match Algorithm::from_str(name) {
                Err(_) => errors.push(ConfigError::new(
                    p,
                    format!("unknown algorithm {name:?}: one of {ALG_NAMES}"),
                )),
                Ok(a) => match kind {
                    Some(k) if !k.fits(a) => errors.push(ConfigError::new(p, k.misfit(a))),
                    _ if !algs.contains(&a) => algs.push(a),
                    _ => {}
                },
            }
        }
        if cfg.algorithms.is_empty()
            && let Some(k) = kind
        {
            algs = k.defaults();
        }

        if cfg.issuer.as_deref() == Some("") {
            errors.push(ConfigError::new(format!("{path}.issuer"), "is empty"));
        }
        for (i, a) in cfg.audiences.iter().enumerate() {
            if a.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.audiences[{i}]"),
                    "is empty",
                ));
            }
        }
        let leeway = cfg.leeway.map_or(DEFAULT_LEEWAY, |d| d.0);
        for (name, claim) in [
            ("consumer_claim", &cfg.consumer_claim),
            ("groups_claim", &cfg.groups_claim),
        ] {
            if claim.as_deref() == Some("") {
                errors.push(ConfigError::new(format!("{path}.{name}"), "is empty"));
            }
        }
        for (i, s) in cfg.scopes.iter().enumerate() {
            if s.is_empty() || s.contains(char::is_whitespace) {
                errors.push(ConfigError::new(
                    format!("{path}.scopes[{i}]"),
                    format!("{s:?} is not a scope (one word, no spaces)"),
                ));
            }
        }
        let mut forward = Vec::new();
        for (claim, header) in &cfg.forward_claims {
            let p = format!("{path}.forward_claims.{claim}");
            match HeaderName::from_bytes(header.as_bytes()) {
                Err(_) => errors.push(ConfigError::new(
                    p,
                    format!("invalid header name {header:?}"),
                )),
                Ok(h) if is_reserved(&h) => errors.push(ConfigError::new(
                    p,
                    format!("header {header:?} is managed by the gateway and cannot carry a claim"),
                )),
                Ok(h) => forward.push((claim.clone(), h)),
            }
        }

        if !warnings.is_empty() {
            cx.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(warnings);
        }
        if errors.len() > before {
            return None;
        }
        let (kind, decoding) = key?;
        let source = match (jwks, decoding) {
            (Some(cache), _) => Source::Jwks(cache),
            (None, Some(k)) => Source::Static(Key {
                kid: None,
                algs: algs.clone(),
                key: k,
            }),
            (None, None) => return None,
        };
        debug_assert!(algs.iter().all(|a| kind.fits(*a)));

        let validations = algs
            .iter()
            .map(|&a| {
                let mut v = Validation::new(a);
                v.leeway = leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &cfg.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if cfg.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&cfg.audiences);
                    v.validate_aud = true;
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (a, v)
            })
            .collect();

        Some(Jwt {
            source,
            validations,
            required_claims: cfg
                .required_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            scopes: cfg.scopes.clone(),
            consumer_claim: cfg.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
            groups_claim: cfg.groups_claim.clone().unwrap_or_else(|| "groups".into()),
            forward,
            refresh,
            min_refetch: MIN_REFETCH,
            verified: TokenCache::default(),
        })
    }

    /// Verifies a compact JWS (signature, algorithm, time, issuer, audience, required claims,
    /// scopes); returns its claims.
    pub async fn verify(&self, token: &str) -> Result<JwtClaims, JwtError> {
        if token.is_empty() {
            return Err(JwtError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        // The key set in use: a cached verification holds only for the same one.
        let keys = match &self.source {
            Source::Static(_) => None,
            Source::Jwks(cache) => cache.current().map(|set| {
                if set.fetched.elapsed() >= self.refresh {
                    cache.refresh_in_background(self.min_refetch);
                }
                set.fetched
            }),
        };
        if let Some(claims) = self.verified.get(&digest, keys) {
            return Ok((*claims).clone());
        }
        let (alg, kid) = header(token)?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        // `used`: the key set the signature was checked with (a refresh may land meanwhile; the
        // cache entry must name the set that actually verified it).
        let (claims, used) = match &self.source {
            Source::Static(key) => {
                // Never reached with a config that compiled, kept as the last line against
                // algorithm confusion.
                if !key.algs.contains(&alg) || key.key.family() != alg.family() {
                    return Err(JwtError::AlgorithmNotAllowed);
                }
                (try_keys(token, &[key], validation)?, None)
            }
            Source::Jwks(cache) => {
                let (c, fetched) = self.verify_jwks(cache, token, alg, kid, validation).await?;
                (c, Some(fetched))
            }
        };
        self.check_claims(&claims)?;
        self.verified.put(digest, Arc::new(claims.clone()), used);
        Ok(claims)
    }

    async fn verify_jwks(
        &self,
        cache: &Arc<JwksCache>,
        token: &str,
        alg: Algorithm,
        kid: Option<String>,
        validation: &Validation,
    ) -> Result<(JwtClaims, Instant), JwtError> {
        let mut set = match cache.current() {
            Some(set) => {
                if set.fetched.elapsed() >= self.refresh {
                    cache.refresh_in_background(self.min_refetch);
                }
                set
            }
            None => {
                cache
                    .refresh_within(RETRY_NO_KEYS.min(self.min_refetch))
                    .await;
                cache.current().ok_or(JwtError::KeysUnavailable)?
            }
        };
        let mut refetched = false;
        loop {
            match set.candidates(kid.as_deref(), alg) {
                Ok(keys) => return try_keys(token, &keys, validation).map(|c| (c, set.fetched)),
                Err(JwtError::UnknownKey) if !refetched => {
                    refetched = true;
                    cache.refresh_within(self.min_refetch).await;
                    if let Some(s) = cache.current() {
                        set = s;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn check_claims(&self, claims: &JwtClaims) -> Result<(), JwtError> {
        // `iss` is one StringOrURI (RFC 7519 4.1.1); the library would take a list holding
        // the issuer too.
        if claims.get("iss").is_some_and(|v| !v.is_string()) {
            return Err(JwtError::WrongIssuer);
        }
        for (name, want) in &self.required_claims {
            let ok = claim(claims, name).is_some_and(|v| match v {
                Value::Array(items) => items
                    .iter()
                    .any(|i| scalar_text(i).as_deref() == Some(want)),
                v => scalar_text(v).as_deref() == Some(want),
            });
            if !ok {
                return Err(JwtError::MissingClaim(name.clone()));
            }
        }
        if !self.scopes.is_empty() {
            let mut granted: Vec<String> = Vec::new();
            for c in ["scope", "scp"] {
                match claims.get(c) {
                    Some(Value::String(s)) => {
                        granted.extend(s.split_whitespace().map(str::to_owned));
                    }
                    Some(Value::Array(items)) => {
                        granted.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)));
                    }
                    _ => {}
                }
            }
            if let Some(missing) = self.scopes.iter().find(|s| !granted.contains(s)) {
                return Err(JwtError::MissingScope(missing.clone()));
            }
        }
        Ok(())
    }

    /// The consumer the claims name: its id from `consumer_claim` (default `sub`; a string or
    /// a number), its groups from `groups_claim` (default `groups`; a list, or a string
    /// separated by spaces or commas). The claims are kept in it. `None` without an id.
    pub fn consumer(&self, claims: JwtClaims) -> Option<Consumer> {
        let id: Arc<str> = match claim(&claims, &self.consumer_claim)? {
            Value::String(s) if !s.is_empty() => s.as_str().into(),
            Value::Number(n) => n.to_string().into(),
            _ => return None,
        };
        let groups = match claim(&claims, &self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(scalar_text)
                .filter(|g| !g.is_empty())
                .map(Arc::from)
                .collect(),
            Some(Value::String(s)) => s
                .split([' ', ','])
                .filter(|g| !g.is_empty())
                .map(Arc::from)
                .collect(),
            _ => Vec::new(),
        };
        Some(Consumer { id, groups, claims })
    }

    /// The headers `forward_claims` sends upstream: strings as they are, numbers and booleans
    /// as text, lists joined with commas. Absent claims, objects, and values that are not
    /// valid header values (control characters) are skipped.
    pub fn forward_headers(&self, claims: &JwtClaims) -> Vec<(HeaderName, HeaderValue)> {
        self.forward
            .iter()
            .filter_map(|(c, h)| {
                let text = match claim(claims, c)? {
                    Value::Array(items) => items
                        .iter()
                        .filter_map(scalar_text)
                        .collect::<Vec<_>>()
                        .join(","),
                    v => scalar_text(v)?,
                };
                HeaderValue::from_str(&text).ok().map(|v| (h.clone(), v))
            })
            .collect()
    }

    /// The header names `forward_claims` writes, so that client-sent copies can be removed.
    pub fn forwarded_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward.iter().map(|(_, h)| h)
    }
}

/// A claim by name; a name with dots reaches into objects when no top-level claim has it.
fn claim<'a>(claims: &'a JwtClaims, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// A string, number or boolean as text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Headers a claim may not be written to: connection management, framing, routing.
fn is_reserved(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

/// The header's `alg` and `kid`. `none` and unknown algorithms are refused here, before any
/// key is looked at; so is `crit` (extensions this verifier does not implement).
fn header(token: &str) -> Result<(Algorithm, Option<String>), JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let Ok(Value::Object(hdr)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(JwtError::Malformed);
    };
    if hdr.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    let alg = hdr
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?;
    let alg = Algorithm::from_str(alg).map_err(|_| JwtError::AlgorithmNotAllowed)?;
    let kid = match hdr.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok((alg, kid))
}

/// Verifies with each key in turn: the first good signature decides (its claims' checks
/// included); a bad signature tries the next key.
fn try_keys(token: &str, keys: &[&Key], validation: &Validation) -> Result<JwtClaims, JwtError> {
    for k in keys {
        match jsonwebtoken::decode::<JwtClaims>(token, &k.key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match map_error(e.kind()) {
                JwtError::BadSignature => continue,
                other => return Err(other),
            },
        }
    }
    Err(JwtError::BadSignature)
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature
        | K::InvalidEcdsaKey
        | K::InvalidEddsaKey
        | K::InvalidRsaKey(_)
        | K::InvalidKeyFormat
        | K::Provider(_) => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::WrongIssuer,
        K::InvalidAudience => JwtError::WrongAudience,
        K::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::InvalidAlgorithmName
        | K::UnsupportedAlgorithm => JwtError::AlgorithmNotAllowed,
        _ => JwtError::Malformed,
    }
}

/// The key in a PEM public key file, and its kind.
fn load_public_key(file: &str) -> Result<(KeyKind, DecodingKey), String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(format!(
            "{file} holds a private key: give the public key (openssl pkey -in KEY -pubout)"
        ));
    }
    if text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{file} holds a certificate: give its public key (openssl x509 -in CERT -pubkey -noout)"
        ));
    }
    let unusable = |what: &str| format!("{file}: not a usable {what} public key");
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        Jwk::from_decoding_key(&k, None).map_err(|_| unusable("RSA"))?;
        return Ok((KeyKind::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        let alg = match k.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => Algorithm::ES256,
            Ok(97) => Algorithm::ES384,
            _ => {
                return Err(format!(
                    "{file}: an EC key on a curve that is not supported (P-256 and P-384 are)"
                ));
            }
        };
        Jwk::from_decoding_key(&k, None).map_err(|_| unusable("EC"))?;
        return Ok((KeyKind::Ec(alg), k));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        if k.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err(unusable("Ed25519"));
        }
        return Ok((KeyKind::Ed, k));
    }
    Err(format!(
        "{file}: no PEM public key (-----BEGIN PUBLIC KEY-----) of a supported kind (RSA, EC P-256 or P-384, Ed25519)"
    ))
}

/// Where a JWKS is fetched from.
struct JwksTarget {
    endpoint: Endpoint,
    /// The Host header: the URL's authority as written.
    host: HeaderValue,
    /// Origin form: path and query.
    target: Uri,
    plain: bool,
    loopback: bool,
}

impl JwksTarget {
    fn parse(url: &str) -> Result<JwksTarget, String> {
        let uri = Uri::try_from(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        let plain = match uri.scheme_str() {
            Some("https") => false,
            Some("http") => true,
            _ => return Err(format!("{url:?} must be an http:// or https:// URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = authority.port_u16().unwrap_or(if plain { 80 } else { 443 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let (tls, server_name) = if plain {
            (None, None)
        } else {
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|_| format!("{host:?} is not a DNS name or an IP address"))?;
            let client = TlsClient::new(
                Trust::Roots(crate::tls::system_roots()),
                None,
                Protocol::Http1,
                [0; 32],
            )
            .map_err(|e| format!("cannot make a TLS client ({e})"))?;
            (Some(client), Some(name))
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(JwksTarget {
            endpoint: Endpoint {
                authority: format!("{host}:{port}"),
                server_name,
                transport: Arc::new(Transport {
                    protocol: Protocol::Http1,
                    max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
                    tls,
                }),
            },
            host: HeaderValue::from_str(authority.as_str())
                .map_err(|_| format!("{url:?}: invalid host"))?,
            target: Uri::try_from(path).map_err(|e| format!("{url:?}: invalid path ({e})"))?,
            plain,
            loopback,
        })
    }
}

/// The keys of one JWKS URL, shared by every config naming it and kept across reloads (a
/// registry resource). Nothing runs until a token needs the keys.
struct JwksCache {
    url: String,
    target: JwksTarget,
    keys: ArcSwapOption<KeySet>,
    /// When the last fetch began: the rate limit.
    last_attempt: Mutex<Option<Instant>>,
    /// Held during a fetch: one at a time, and requests that need its result wait for it.
    fetching: tokio::sync::Mutex<()>,
}

struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
}

impl KeySet {
    /// The keys that may verify a token with this `kid` and `alg`. `UnknownKey` when none is
    /// named so (a refetch may bring it); `AlgorithmNotAllowed` when the named key is for
    /// another algorithm.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<&Key>, JwtError> {
        let named: Vec<&Key> = match kid {
            Some(id) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(id))
                .collect(),
            None => Vec::new(),
        };
        if !named.is_empty() {
            let fit: Vec<&Key> = named
                .into_iter()
                .filter(|k| k.algs.contains(&alg))
                .collect();
            return if fit.is_empty() {
                Err(JwtError::AlgorithmNotAllowed)
            } else {
                Ok(fit)
            };
        }
        // No `kid`, or keys without one: any key of the algorithm may have signed it.
        let fit: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| (kid.is_none() || k.kid.is_none()) && k.algs.contains(&alg))
            .take(MAX_KEYS_TRIED)
            .collect();
        if fit.is_empty() {
            Err(JwtError::UnknownKey)
        } else {
            Ok(fit)
        }
    }
}

impl JwksCache {
    fn new(url: &str, target: JwksTarget) -> JwksCache {
        JwksCache {
            url: url.to_owned(),
            target,
            keys: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Takes the right to fetch, unless a fetch began less than `min` ago.
    fn try_begin(&self, min: Duration) -> bool {
        let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if t.elapsed() < min => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// Fetches now unless a fetch began less than `min` ago; waits for one in flight either
    /// way, so the caller sees its result.
    async fn refresh_within(&self, min: Duration) {
        let _one = self.fetching.lock().await;
        if self.try_begin(min) {
            self.fetch_and_store().await;
        }
    }

    /// Starts a fetch in the background (rate-limited by `min`); the current keys serve
    /// meanwhile.
    fn refresh_in_background(self: &Arc<Self>, min: Duration) {
        if self.try_begin(min) {
            let me = self.clone();
            tokio::spawn(async move {
                let _one = me.fetching.lock().await;
                me.fetch_and_store().await;
            });
        }
    }

    async fn fetch_and_store(&self) {
        match self.fetch().await {
            Ok(values) => {
                let total = values.len();
                let mut keys = Vec::new();
                for v in values.into_iter().take(MAX_JWKS_KEYS) {
                    match serde_json::from_value::<Jwk>(v) {
                        Ok(jwk) => match key_from_jwk(&jwk) {
                            Ok(k) => keys.push(k),
                            Err(why) => {
                                tracing::debug!(url = %self.url, kid = ?jwk.common.key_id, why, "JWKS key skipped")
                            }
                        },
                        Err(e) => {
                            tracing::debug!(url = %self.url, error = %e, "JWKS key skipped: not a JWK")
                        }
                    }
                }
                tracing::info!(url = %self.url, keys = keys.len(), skipped = total - keys.len(), "JWKS fetched");
                self.keys.store(Some(Arc::new(KeySet {
                    keys,
                    fetched: Instant::now(),
                })));
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the last good keys");
            }
        }
    }

    /// GETs the JWKS (one connection, bounded in time and size); returns its `keys`.
    async fn fetch(&self) -> Result<Vec<Value>, String> {
        let t = &self.target;
        let work = async {
            let (mut send, conn) = t
                .endpoint
                .http1::<Empty<Bytes>>(FETCH_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            // Drives the connection; never ends the select below by itself, so a response
            // whose connection closes right after it is still read whole.
            let conn = async move {
                let _ = conn.await;
                std::future::pending::<()>().await;
            };
            let exchange = async {
                let req = Request::get(t.target.clone())
                    .header(http::header::HOST, t.host.clone())
                    .header(
                        http::header::ACCEPT,
                        "application/jwk-set+json, application/json",
                    )
                    .header(
                        http::header::USER_AGENT,
                        concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
                    )
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("answered {}", resp.status()));
                }
                let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the body (at most 1 MiB): {e}"))?
                    .to_bytes();
                #[derive(serde::Deserialize)]
                struct Set {
                    keys: Vec<Value>,
                }
                serde_json::from_slice::<Set>(&body)
                    .map(|s| s.keys)
                    .map_err(|e| format!("not a JWK set: {e}"))
            };
            tokio::select! {
                r = exchange => r,
                () = conn => Err("connection closed".to_owned()),
            }
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    }
}

/// A JWKS key the verifier may use: a public signing key of a supported kind. Symmetric
/// (`oct`) keys are refused: a JWKS is public.
fn key_from_jwk(jwk: &Jwk) -> Result<Key, &'static str> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("not a signing key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not a verification key (key_ops)");
    }
    let kind: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key (oct) in a JWKS"),
        _ => return Err("unsupported key type"),
    };
    let algs = match jwk.common.key_algorithm {
        None => kind.to_vec(),
        Some(ka) => {
            let a = Algorithm::try_from(ka).map_err(|_| "unsupported alg")?;
            if !kind.contains(&a) {
                return Err("alg does not fit the key");
            }
            vec![a]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "unusable key material")?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
    })
}

#[cfg(test)]
mod tests {
    //! Real keys (HMAC secrets; RSA, EC and Ed25519 pairs made by rcgen on aws-lc-rs), real
    //! signatures (jsonwebtoken::encode), and a real JWKS server on a loopback port.
    use super::*;
    use crate::policy::consumers::Consumers;
    use crate::registry::{Claims, Registry};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    /// What a policy compiles with.
    #[derive(Default)]
    struct Cx {
        registry: Registry,
        claims: Mutex<Claims>,
        warnings: Mutex<Vec<ConfigError>>,
        consumers: Arc<Consumers>,
    }

    impl Cx {
        fn compile(&self, cfg: Value) -> Result<Jwt, Vec<ConfigError>> {
            let cfg: JwtConfig = serde_json::from_value(cfg).unwrap();
            let cx = PolicyCx {
                consumers: &self.consumers,
                registry: &self.registry,
                metrics: &Arc::default(),
                store: &Arc::default(),
                cache: &crate::store::cache::Backend::Memory(Arc::default()),
                claims: &self.claims,
                warnings: &self.warnings,
            };
            let mut errors = Vec::new();
            match Jwt::compile(&cfg, &cx, "auth.jwt", &mut errors) {
                Some(j) if errors.is_empty() => Ok(j),
                Some(_) => panic!("compiled with errors: {errors:?}"),
                None => {
                    assert!(!errors.is_empty(), "refused without an error");
                    Err(errors)
                }
            }
        }

        fn warnings(&self) -> String {
            let w = self.warnings.lock().unwrap();
            w.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    fn compile(cfg: Value) -> Jwt {
        match Cx::default().compile(cfg) {
            Ok(j) => j,
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    /// The config errors, one a line.
    fn refused(cfg: Value) -> String {
        match Cx::default().compile(cfg) {
            Ok(_) => panic!("compiled"),
            Err(e) => e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            claims,
        )
    }

    fn claims() -> Value {
        json!({ "sub": "alice", "iat": now(), "exp": now() + 300 })
    }

    fn with(extra: Value) -> Value {
        let mut c = claims();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    /// A hand-made compact token (for headers no library would write).
    fn raw(header: &Value, claims: &Value, sig: &str) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.{sig}", enc(header), enc(claims))
    }

    struct Pair {
        enc: EncodingKey,
        public_pem: String,
        alg: Algorithm,
    }

    impl Pair {
        fn generate(alg: Algorithm) -> Pair {
            let (sig, enc): (_, fn(&[u8]) -> _) = match alg {
                Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
                Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, EncodingKey::from_ec_pem),
                Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
                Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
                _ => unreachable!(),
            };
            let kp = rcgen::KeyPair::generate_for(sig).unwrap();
            Pair {
                enc: enc(kp.serialize_pem().as_bytes()).unwrap(),
                public_pem: kp.public_key_pem(),
                alg,
            }
        }

        fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            sign(self.alg, &self.enc, kid, claims)
        }

        fn jwk(&self, kid: &str) -> Value {
            let mut jwk = Jwk::from_encoding_key(&self.enc, self.alg).unwrap();
            jwk.common.key_id = Some(kid.into());
            serde_json::to_value(jwk).unwrap()
        }

        fn file(&self) -> String {
            temp_file(&self.public_pem)
        }
    }

    fn temp_file(contents: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "gatehouse-jwt-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn hs256_accepted_with_its_claims() {
        let jwt = compile(json!({ "secret": SECRET }));
        let c = jwt.verify(&hs(&claims())).await.unwrap();
        assert_eq!(c["sub"], "alice");
        // Another secret: a bad signature.
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another secret, just as long as the first one"),
            None,
            &claims(),
        );
        assert_eq!(jwt.verify(&other).await, Err(JwtError::BadSignature));
        // HS384 is not in the (default) list.
        let hs384 = sign(
            Algorithm::HS384,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            &claims(),
        );
        assert_eq!(jwt.verify(&hs384).await, Err(JwtError::AlgorithmNotAllowed));
        let both = compile(json!({ "secret": SECRET, "algorithms": ["HS256", "HS384"] }));
        assert!(both.verify(&hs384).await.is_ok());
    }

    #[tokio::test]
    async fn public_keys_of_each_kind_verify_their_tokens() {
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::EdDSA,
        ] {
            let pair = Pair::generate(alg);
            let jwt = compile(json!({ "public_key": pair.file() }));
            let c = jwt.verify(&pair.sign(None, &claims())).await;
            assert_eq!(c.map(|c| c["sub"].clone()), Ok(json!("alice")), "{alg:?}");
            // The same kind, another key.
            let other = Pair::generate(alg);
            assert_eq!(
                jwt.verify(&other.sign(None, &claims())).await,
                Err(JwtError::BadSignature),
                "{alg:?}"
            );
        }
        // RSA takes PS256 when listed, and only then.
        let rsa = Pair::generate(Algorithm::RS256);
        let ps = sign(Algorithm::PS256, &rsa.enc, None, &claims());
        let file = rsa.file();
        assert_eq!(
            compile(json!({ "public_key": file })).verify(&ps).await,
            Err(JwtError::AlgorithmNotAllowed)
        );
        assert!(
            compile(json!({ "public_key": file, "algorithms": ["RS256", "PS256"] }))
                .verify(&ps)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn time_claims() {
        let jwt = compile(json!({ "secret": SECRET }));
        let t = now();
        assert_eq!(
            jwt.verify(&hs(&with(json!({ "exp": t - 120 })))).await,
            Err(JwtError::Expired)
        );
        assert!(
            jwt.verify(&hs(&with(json!({ "exp": t - 30 }))))
                .await
                .is_ok(),
            "within the default leeway"
        );
        assert_eq!(
            jwt.verify(&hs(&with(json!({ "nbf": t + 300 })))).await,
            Err(JwtError::NotYetValid)
        );
        assert!(
            jwt.verify(&hs(&with(json!({ "nbf": t + 30 }))))
                .await
                .is_ok()
        );
        assert_eq!(
            jwt.verify(&hs(&with(json!({ "exp": null })))).await,
            Err(JwtError::MissingClaim("exp".into()))
        );
        let strict = compile(json!({ "secret": SECRET, "leeway": "1s" }));
        assert_eq!(
            strict.verify(&hs(&with(json!({ "exp": t - 30 })))).await,
            Err(JwtError::Expired)
        );
    }

    #[tokio::test]
    async fn tampering_is_a_bad_signature() {
        let jwt = compile(json!({ "secret": SECRET }));
        let token = hs(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with(json!({ "sub": "mallory" }))).unwrap());
        let payload = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(jwt.verify(&payload).await, Err(JwtError::BadSignature));

        let mut sig: Vec<char> = parts[2].chars().collect();
        let i = sig.len() / 2;
        sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
        let sig: String = sig.into_iter().collect();
        let signature = format!("{}.{}.{sig}", parts[0], parts[1]);
        assert_eq!(jwt.verify(&signature).await, Err(JwtError::BadSignature));

        let es = Pair::generate(Algorithm::ES256);
        let jwt = compile(json!({ "public_key": es.file() }));
        let token = es.sign(None, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let payload = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(jwt.verify(&payload).await, Err(JwtError::BadSignature));
    }

    #[tokio::test]
    async fn unsigned_and_malformed_tokens() {
        let jwt = compile(json!({ "secret": SECRET }));
        for none in ["none", "None", "NONE"] {
            let t = raw(&json!({ "alg": none, "typ": "JWT" }), &claims(), "");
            assert_eq!(jwt.verify(&t).await, Err(JwtError::AlgorithmNotAllowed));
        }
        let t = raw(&json!({ "alg": "HS1024" }), &claims(), "c2ln");
        assert_eq!(jwt.verify(&t).await, Err(JwtError::AlgorithmNotAllowed));
        // A critical extension this verifier does not know.
        let t = raw(
            &json!({ "alg": "HS256", "crit": ["b64"], "b64": false }),
            &claims(),
            "c2ln",
        );
        assert_eq!(jwt.verify(&t).await, Err(JwtError::Malformed));
        let t = raw(&json!({ "alg": "HS256", "kid": 7 }), &claims(), "c2ln");
        assert_eq!(jwt.verify(&t).await, Err(JwtError::Malformed));
        assert_eq!(jwt.verify("").await, Err(JwtError::Missing));
        for bad in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.b.c",
            "e30.e30.",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(jwt.verify(bad).await, Err(JwtError::Malformed), "{bad:.20}");
        }
        // A signed token whose payload is not a JSON object.
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &json!([1, 2]), &key).unwrap();
        assert_eq!(jwt.verify(&t).await, Err(JwtError::Malformed));
    }

    #[tokio::test]
    async fn algorithm_confusion_is_refused() {
        for alg in [Algorithm::RS256, Algorithm::ES256] {
            let pair = Pair::generate(alg);
            let file = pair.file();
            // An HS256 token "signed" with the public key's bytes as the HMAC secret.
            let forged = sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(pair.public_pem.as_bytes()),
                None,
                &claims(),
            );
            let jwt = compile(json!({ "public_key": file }));
            assert_eq!(
                jwt.verify(&forged).await,
                Err(JwtError::AlgorithmNotAllowed)
            );
            // And a config that would allow it does not compile.
            let e = refused(json!({ "public_key": file, "algorithms": ["RS256", "HS256"] }));
            assert!(e.contains("auth.jwt.algorithms[1]"), "{e}");
            assert!(e.contains("algorithm confusion"), "{e}");
        }
    }

    #[tokio::test]
    async fn issuer_and_audience() {
        let jwt = compile(json!({
            "secret": SECRET,
            "issuer": "https://idp.example",
            "audiences": ["api", "web"],
        }));
        let ok = json!({ "iss": "https://idp.example", "aud": "api" });
        assert!(jwt.verify(&hs(&with(ok))).await.is_ok());
        let list = json!({ "iss": "https://idp.example", "aud": ["other", "web"] });
        assert!(jwt.verify(&hs(&with(list))).await.is_ok());
        let cases = [
            (
                json!({ "iss": "https://evil.example", "aud": "api" }),
                JwtError::WrongIssuer,
            ),
            (
                json!({ "iss": "https://idp.example", "aud": "billing" }),
                JwtError::WrongAudience,
            ),
            (
                json!({ "iss": "https://idp.example", "aud": ["billing"] }),
                JwtError::WrongAudience,
            ),
            (
                json!({ "aud": "api" }),
                JwtError::MissingClaim("iss".into()),
            ),
            (
                json!({ "iss": "https://idp.example" }),
                JwtError::MissingClaim("aud".into()),
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(
                jwt.verify(&hs(&with(extra.clone()))).await,
                Err(want),
                "{extra}"
            );
        }
        // Nothing configured: any `aud` and `iss` pass.
        let open = compile(json!({ "secret": SECRET }));
        let any = json!({ "iss": "x", "aud": ["y"] });
        assert!(open.verify(&hs(&with(any))).await.is_ok());
    }

    #[tokio::test]
    async fn required_claims_and_scopes() {
        let jwt = compile(json!({
            "secret": SECRET,
            "required_claims": { "role": "admin", "tenant": "7", "org.tier": "gold" },
            "scopes": ["read", "write"],
        }));
        let good = json!({ "role": "admin", "tenant": 7, "org": { "tier": "gold" }, "scope": "read write extra" });
        assert!(jwt.verify(&hs(&with(good))).await.is_ok());
        let listed = json!({ "role": ["user", "admin"], "tenant": "7", "org.tier": "gold", "scp": ["write", "read"] });
        assert!(jwt.verify(&hs(&with(listed))).await.is_ok());
        let scp_string =
            json!({ "role": "admin", "tenant": "7", "org.tier": "gold", "scp": "write read" });
        assert!(jwt.verify(&hs(&with(scp_string))).await.is_ok());
        let cases = [
            (
                json!({ "role": "user", "tenant": "7", "org.tier": "gold", "scope": "read write" }),
                JwtError::MissingClaim("role".into()),
            ),
            (
                json!({ "role": "admin", "org.tier": "gold", "scope": "read write" }),
                JwtError::MissingClaim("tenant".into()),
            ),
            (
                json!({ "role": "admin", "tenant": "7", "org": { "tier": "silver" }, "scope": "read write" }),
                JwtError::MissingClaim("org.tier".into()),
            ),
            (
                json!({ "role": "admin", "tenant": "7", "org.tier": "gold", "scope": "read" }),
                JwtError::MissingScope("write".into()),
            ),
            (
                json!({ "role": "admin", "tenant": "7", "org.tier": "gold" }),
                JwtError::MissingScope("read".into()),
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(
                jwt.verify(&hs(&with(extra.clone()))).await,
                Err(want),
                "{extra}"
            );
        }
        assert_eq!(
            JwtError::MissingScope("write".into()).bearer_error(),
            Some("insufficient_scope")
        );
        assert_eq!(JwtError::Expired.bearer_error(), Some("invalid_token"));
    }

    #[test]
    fn consumer_and_forwarded_headers() {
        let jwt = compile(json!({
            "secret": SECRET,
            "forward_claims": { "email": "x-user-email", "roles": "x-user-roles", "level": "x-level", "admin": "x-admin", "evil": "x-evil", "org.name": "x-org", "absent": "x-absent" },
        }));
        let c = with(json!({
            "email": "alice@example.com",
            "roles": ["a", "b", 3],
            "level": 4,
            "admin": true,
            "evil": "x\r\nSet-Cookie: y",
            "org": { "name": "Example" },
            "groups": ["ops", "", "dev"],
        }));
        let c = c.as_object().unwrap().clone();
        let mut h: Vec<(String, String)> = jwt
            .forward_headers(&c)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        assert_eq!(
            h,
            [
                ("x-admin", "true"),
                ("x-level", "4"),
                ("x-org", "Example"),
                ("x-user-email", "alice@example.com"),
                ("x-user-roles", "a,b,3"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let mut names: Vec<&str> = jwt.forwarded_header_names().map(|h| h.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "x-absent",
                "x-admin",
                "x-evil",
                "x-level",
                "x-org",
                "x-user-email",
                "x-user-roles"
            ]
        );

        let who = jwt.consumer(c).unwrap();
        assert_eq!(&*who.id, "alice");
        assert_eq!(who.groups, [Arc::from("ops"), Arc::from("dev")]);
        assert_eq!(who.claims["email"], "alice@example.com");

        let custom = compile(
            json!({ "secret": SECRET, "consumer_claim": "client_id", "groups_claim": "realm_access.roles" }),
        );
        let c = json!({ "client_id": 42, "realm_access": { "roles": "a, b c" } });
        let who = custom.consumer(c.as_object().unwrap().clone()).unwrap();
        assert_eq!(&*who.id, "42");
        assert_eq!(who.groups, [Arc::from("a"), Arc::from("b"), Arc::from("c")]);
        let string_groups = json!({ "sub": "bob", "groups": "x,y" });
        let who = jwt
            .consumer(string_groups.as_object().unwrap().clone())
            .unwrap();
        assert_eq!(who.groups, [Arc::from("x"), Arc::from("y")]);
        assert!(
            jwt.consumer(json!({ "sub": "" }).as_object().unwrap().clone())
                .is_none()
        );
        assert!(jwt.consumer(Map::new()).is_none());
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = refused(json!({}));
        assert!(e.starts_with("auth.jwt: needs a key source"), "{e}");
        let e = refused(json!({ "secret": SECRET, "jwks_url": "https://idp.example/jwks" }));
        assert!(e.contains("auth.jwt.jwks_url: give one key source"), "{e}");
        let e = refused(json!({ "public_key": "/nonexistent/key.pem" }));
        assert!(
            e.contains("auth.jwt.public_key: cannot read /nonexistent/key.pem"),
            "{e}"
        );
        let e = refused(json!({ "secret": SECRET, "algorithms": ["none", "HS256", "XS256"] }));
        assert!(e.contains("auth.jwt.algorithms[0]: `none`"), "{e}");
        assert!(
            e.contains("auth.jwt.algorithms[2]: unknown algorithm \"XS256\""),
            "{e}"
        );
        let e = refused(json!({ "secret": SECRET, "algorithms": ["RS256"] }));
        assert!(
            e.contains("auth.jwt.algorithms[0]: RS256 needs a public key"),
            "{e}"
        );
        let e = refused(json!({ "jwks_url": "https://idp.example/jwks", "algorithms": ["HS256"] }));
        assert!(e.contains("auth.jwt.algorithms[0]"), "{e}");
        let e = refused(json!({ "jwks_url": "ftp://idp.example/jwks" }));
        assert!(e.contains("auth.jwt.jwks_url"), "{e}");
        let e = refused(json!({ "secret": SECRET, "jwks_refresh": "5m" }));
        assert!(e.contains("auth.jwt.jwks_refresh: applies only"), "{e}");
        let e = refused(
            json!({ "secret": SECRET, "forward_claims": { "a": "bad header", "b": "host" } }),
        );
        assert!(
            e.contains("auth.jwt.forward_claims.a: invalid header name"),
            "{e}"
        );
        assert!(e.contains("auth.jwt.forward_claims.b"), "{e}");

        let es = Pair::generate(Algorithm::ES256);
        let e = refused(json!({ "public_key": es.file(), "algorithms": ["ES384"] }));
        assert!(e.contains("use ES256"), "{e}");
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = temp_file(&kp.serialize_pem());
        let e = refused(json!({ "public_key": private }));
        assert!(e.contains(&format!("{private} holds a private key")), "{e}");
        let junk = temp_file("not a key");
        let e = refused(json!({ "public_key": junk }));
        assert!(e.contains(&format!("{junk}: no PEM public key")), "{e}");

        // Warnings: a short secret, a plain-http JWKS elsewhere than loopback.
        let cx = Cx::default();
        assert!(cx.compile(json!({ "secret": "short" })).is_ok());
        assert!(
            cx.compile(json!({ "jwks_url": "http://idp.example/jwks" }))
                .is_ok()
        );
        assert!(
            cx.compile(json!({ "jwks_url": "http://127.0.0.1:1/jwks" }))
                .is_ok()
        );
        let w = cx.warnings();
        assert!(
            w.contains("auth.jwt.secret: is shorter than 32 bytes"),
            "{w}"
        );
        assert!(w.contains("auth.jwt.jwks_url: is plain http"), "{w}");
        assert_eq!(w.lines().count(), 2, "{w}");
    }

    /// A JWKS server on a loopback port: serves `body`, counts requests, can be stopped.
    struct JwksServer {
        url: String,
        body: Arc<Mutex<String>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(keys: &[Value]) -> JwksServer {
            use http_body_util::Full;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/.well-known/jwks.json",
                listener.local_addr().unwrap()
            );
            let body = Arc::new(Mutex::new(json!({ "keys": keys }).to_string()));
            let hits = Arc::new(AtomicUsize::new(0));
            let (b, n) = (body.clone(), hits.clone());
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (b, n) = (b.clone(), n.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                assert_eq!(req.uri().path(), "/.well-known/jwks.json");
                                n.fetch_add(1, Ordering::SeqCst);
                                let body = b.lock().unwrap().clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(
                                        http::Response::builder()
                                            .header("content-type", "application/json")
                                            .body(Full::new(Bytes::from(body)))
                                            .unwrap(),
                                    )
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            JwksServer {
                url,
                body,
                hits,
                task,
            }
        }

        fn serve(&self, keys: &[Value]) {
            *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    /// Keys and key URLs a token names for itself (`jwk`, `jku`, `x5u`, `x5c`) are never
    /// used: a token signed by an attacker's key that carries that key, or points at a JWKS
    /// the attacker serves, fails as a bad signature, and the attacker's server is never
    /// asked; the configured key (a file, or the configured JWKS) alone decides.
    #[tokio::test]
    async fn keys_named_in_the_token_header_are_ignored() {
        let ours = Pair::generate(Algorithm::ES256);
        let theirs = Pair::generate(Algorithm::ES256);
        let evil = JwksServer::start(&[theirs.jwk("a")]).await;
        let forged = |kid: Option<&str>| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = kid.map(str::to_owned);
            h.jwk = Some(serde_json::from_value(theirs.jwk("a")).unwrap());
            h.jku = Some(evil.url.clone());
            h.x5u = Some(evil.url.clone());
            jsonwebtoken::encode(&h, &claims(), &theirs.enc).unwrap()
        };
        // A key file.
        let jwt = compile(json!({ "public_key": ours.file(), "algorithms": ["ES256"] }));
        assert_eq!(jwt.verify(&forged(None)).await, Err(JwtError::BadSignature));
        assert_eq!(
            jwt.verify(&forged(Some("a"))).await,
            Err(JwtError::BadSignature)
        );
        // A certificate chain of its own (any certificate: it is never read), signed by the
        // attacker's key.
        let mut h = Header::new(Algorithm::ES256);
        h.x5c = Some(vec!["MIIBAA==".to_owned()]);
        h.jku = Some(evil.url.clone());
        let t = jsonwebtoken::encode(&h, &claims(), &theirs.enc).unwrap();
        assert_eq!(jwt.verify(&t).await, Err(JwtError::BadSignature));
        // The configured JWKS publishes our key as `a`; the token claims `a` and carries its
        // own `a`.
        let good = JwksServer::start(&[ours.jwk("a")]).await;
        let jwt = compile(json!({ "jwks_url": good.url, "algorithms": ["ES256"] }));
        assert_eq!(
            jwt.verify(&forged(Some("a"))).await,
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            jwt.verify(&ours.sign(Some("a"), &claims())).await.unwrap()["sub"],
            "alice"
        );
        assert_eq!(evil.hits(), 0, "the token's own URLs are never fetched");
        evil.stop().await;
        good.stop().await;
    }

    #[tokio::test]
    async fn jwks_rotation_and_the_unknown_kid_rate_limit() {
        let a = Pair::generate(Algorithm::ES256);
        let b = Pair::generate(Algorithm::RS256);
        let server = JwksServer::start(&[a.jwk("a")]).await;
        let cx = Cx::default();
        let mut jwt = cx
            .compile(json!({ "jwks_url": server.url, "algorithms": ["ES256", "RS256"] }))
            .unwrap();
        let window = Duration::from_millis(1500);
        jwt.min_refetch = window;
        assert_eq!(server.hits(), 0, "compiling fetches nothing");

        let token_a = a.sign(Some("a"), &claims());
        assert_eq!(jwt.verify(&token_a).await.unwrap()["sub"], "alice");
        assert_eq!(server.hits(), 1);
        assert!(jwt.verify(&token_a).await.is_ok());
        assert_eq!(server.hits(), 1, "cached");

        // Unknown kids within the window: refused, no fetch.
        for i in 0..20 {
            let t = a.sign(Some(&format!("x{i}")), &claims());
            assert_eq!(jwt.verify(&t).await, Err(JwtError::UnknownKey));
        }
        assert_eq!(server.hits(), 1, "rate-limited");

        // Rotation: the IdP now publishes B only.
        server.serve(&[b.jwk("b")]);
        let token_b = b.sign(Some("b"), &claims());
        tokio::time::sleep(window + Duration::from_millis(100)).await;
        assert_eq!(jwt.verify(&token_b).await.unwrap()["sub"], "alice");
        assert_eq!(server.hits(), 2, "one refetch for the new kid");
        assert_eq!(jwt.verify(&token_a).await, Err(JwtError::UnknownKey));
        assert_eq!(server.hits(), 2);

        // Many unknown kids at once, after the window: exactly one fetch, and all wait for it.
        tokio::time::sleep(window + Duration::from_millis(100)).await;
        let jwt = Arc::new(jwt);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (jwt, t) = (jwt.clone(), b.sign(Some(&format!("y{i}")), &claims()));
            set.spawn(async move { jwt.verify(&t).await });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.unwrap(), Err(JwtError::UnknownKey));
        }
        assert_eq!(server.hits(), 3);
        assert!(jwt.verify(&token_b).await.is_ok());

        // The cache belongs to the URL and survives a reload.
        {
            let mut live = cx.claims.lock().unwrap();
            cx.registry.adopt(&live);
            *live = Claims::default();
        }
        let reloaded = cx
            .compile(json!({ "jwks_url": server.url, "algorithms": ["RS256"] }))
            .unwrap();
        assert!(reloaded.verify(&token_b).await.is_ok());
        assert_eq!(server.hits(), 3, "the reloaded config uses the cached keys");
        server.stop().await;
    }

    #[tokio::test]
    async fn jwks_background_refresh_and_last_good_keys() {
        let a = Pair::generate(Algorithm::ES256);
        let b = Pair::generate(Algorithm::ES256);
        let server = JwksServer::start(&[a.jwk("a")]).await;
        let mut jwt = compile(json!({ "jwks_url": server.url, "jwks_refresh": "1s" }));
        jwt.min_refetch = Duration::from_millis(200);
        let token_a = a.sign(Some("a"), &claims());
        let token_b = b.sign(Some("b"), &claims());
        assert!(jwt.verify(&token_a).await.is_ok());
        assert_eq!(server.hits(), 1);

        // Past `jwks_refresh`: the current keys answer and a refresh runs behind.
        server.serve(&[a.jwk("a"), b.jwk("b")]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(jwt.verify(&token_a).await.is_ok());
        wait_for(|| server.hits() == 2).await;
        let keys = match &jwt.source {
            Source::Jwks(c) => c.current().unwrap(),
            Source::Static(_) => unreachable!(),
        };
        assert_eq!(keys.keys.len(), 2, "refreshed in the background");
        assert!(jwt.verify(&token_b).await.is_ok());
        assert_eq!(server.hits(), 2);

        // The IdP goes away: the last good keys still verify.
        server.stop().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(jwt.verify(&token_a).await.is_ok(), "stale keys serve");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(jwt.verify(&token_b).await.is_ok());
        let unknown = b.sign(Some("c"), &claims());
        assert_eq!(jwt.verify(&unknown).await, Err(JwtError::UnknownKey));
        assert!(
            jwt.verify(&token_a).await.is_ok(),
            "a failed refetch keeps the keys"
        );
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..100 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("condition not met within 2 s");
    }

    #[tokio::test]
    async fn jwks_key_rules() {
        let rsa = Pair::generate(Algorithm::RS256);
        let ec = Pair::generate(Algorithm::ES256);
        // `rsa` published for RS256 only; an `oct` key (never used from a JWKS); a key for
        // encryption; `ec` without kid.
        let mut ec_nokid = ec.jwk("unused");
        ec_nokid.as_object_mut().unwrap().remove("kid");
        let mut enc = rsa.jwk("enc");
        enc["use"] = json!("enc");
        let server = JwksServer::start(&[
            rsa.jwk("r"),
            json!({ "kty": "oct", "kid": "h", "k": URL_SAFE_NO_PAD.encode(SECRET) }),
            enc,
            ec_nokid,
            json!({ "kty": "EC", "crv": "secp256k1", "kid": "k", "x": "AA", "y": "AA" }),
        ])
        .await;
        let jwt =
            compile(json!({ "jwks_url": server.url, "algorithms": ["RS256", "PS256", "ES256"] }));
        assert!(jwt.verify(&rsa.sign(Some("r"), &claims())).await.is_ok());
        // The JWK says RS256: a PS256 token with its kid is refused.
        let ps = sign(Algorithm::PS256, &rsa.enc, Some("r"), &claims());
        assert_eq!(jwt.verify(&ps).await, Err(JwtError::AlgorithmNotAllowed));
        // No kid: the key without one is tried.
        assert!(jwt.verify(&ec.sign(None, &claims())).await.is_ok());
        // The encryption key is not a signing key.
        let t = rsa.sign(Some("enc"), &claims());
        assert_eq!(
            jwt.verify(&t).await,
            Err(JwtError::UnknownKey),
            "skipped; the kid-less key is for ES256"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn jwks_over_the_size_cap_is_not_taken() {
        let a = Pair::generate(Algorithm::ES256);
        let padding = json!({ "kty": "oct", "k": "A".repeat(MAX_JWKS_BYTES) });
        let server = JwksServer::start(&[a.jwk("a"), padding]).await;
        let jwt = compile(json!({ "jwks_url": server.url }));
        let t = a.sign(Some("a"), &claims());
        assert_eq!(jwt.verify(&t).await, Err(JwtError::KeysUnavailable));
        assert_eq!(server.hits(), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn jwks_unreachable_from_the_start() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        drop(listener);
        let jwt = compile(json!({ "jwks_url": url }));
        let a = Pair::generate(Algorithm::ES256);
        let t = a.sign(Some("a"), &claims());
        assert_eq!(jwt.verify(&t).await, Err(JwtError::KeysUnavailable));
        assert_eq!(JwtError::KeysUnavailable.bearer_error(), None);
    }
}

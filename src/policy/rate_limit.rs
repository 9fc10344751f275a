//! `rate_limit`: requests per key and period, GCRA in the store (memory today). Keyed by client
//! IP (as resolved through `server.trusted_proxies`), consumer (set by `auth`, which runs in an
//! earlier phase), a header, or several of these together. A limited request gets 429 with
//! `Retry-After`; every answer on the route carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers, the widely deployed form). A
//! request that lacks a key part (no consumer, no such header) is counted by its address.
//! When the shared store (Redis) cannot decide, the request is counted in this instance's
//! local limits (fail open, the default), or refused with 503 (`fail_closed: true`).

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response};

use super::{Flow, Phase, Policy, PolicyCx, RequestCtx, Step};
use crate::body::Body;
use crate::config::ConfigError;
use crate::config::model::{PolicySetConfig, RateKeyConfig, RateLimitConfig};
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;
use crate::store::{Decision, Rate, Store, Unavailable};

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    ClientIp,
    Consumer,
    Header(HeaderName),
}

pub struct RateLimitPolicy {
    parts: Vec<KeyPart>,
    rate: Rate,
    /// Distinguishes this policy's keys from another's in the shared store.
    id: String,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    limit_header: HeaderValue,
    /// Refuse (503) rather than decide locally when the shared store cannot decide.
    fail_closed: bool,
}

/// The `rate_limit` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Policy>> {
    let c = set.rate_limit.as_ref()?;
    let p = format!("{path}.rate_limit");
    RateLimitPolicy::compile(c, cx, &p, errors).map(|r| Arc::new(r) as Arc<dyn Policy>)
}

/// `100/s`, `1000/min`, `5000/h`.
pub fn parse_limit(s: &str) -> Result<(u32, std::time::Duration), String> {
    let bad = || format!("{s:?}: expected N/s, N/min or N/h (e.g. \"100/s\")");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{s:?}: the limit must be at least 1"));
    }
    let secs = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        _ => return Err(bad()),
    };
    Ok((n, std::time::Duration::from_secs(secs)))
}

impl RateLimitPolicy {
    fn compile(
        c: &RateLimitConfig,
        cx: &PolicyCx<'_>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<RateLimitPolicy> {
        let before = errors.len();
        let specs: Vec<String> = match &c.key {
            None => vec!["client_ip".into()],
            Some(RateKeyConfig::One(k)) => vec![k.clone()],
            Some(RateKeyConfig::Many(ks)) => ks.clone(),
        };
        if specs.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.key"),
                "list at least one key",
            ));
        }
        let mut parts = Vec::new();
        for (i, k) in specs.iter().enumerate() {
            let kp = if matches!(c.key, Some(RateKeyConfig::Many(_))) {
                format!("{path}.key[{i}]")
            } else {
                format!("{path}.key")
            };
            match k.as_str() {
                "client_ip" => parts.push(KeyPart::ClientIp),
                "consumer" => parts.push(KeyPart::Consumer),
                other => match other.strip_prefix("header:") {
                    Some(h) => match HeaderName::from_bytes(h.trim().as_bytes()) {
                        Ok(n) => parts.push(KeyPart::Header(n)),
                        Err(_) => {
                            errors.push(ConfigError::new(kp, format!("invalid header name {h:?}")))
                        }
                    },
                    None => errors.push(ConfigError::new(
                        kp,
                        format!(
                            "unknown key {other:?} (expected client_ip, consumer or header:NAME)"
                        ),
                    )),
                },
            }
        }
        let (limit, period) = match parse_limit(&c.limit) {
            Ok(x) => x,
            Err(e) => {
                errors.push(ConfigError::new(format!("{path}.limit"), e));
                (1, std::time::Duration::from_secs(1))
            }
        };
        if errors.len() > before {
            return None;
        }
        let rate = Rate {
            limit,
            period,
            burst: c.burst.unwrap_or(0),
        };
        let store = cx.store.clone();
        // A short digest of what makes the policy: its keys in Redis stay small, and two
        // policies never share one.
        let id = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(format!("{path}|{}|{:?}|{:?}", c.limit, rate, parts));
            d[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        Some(RateLimitPolicy {
            id,
            parts,
            rate,
            store,
            metrics: cx.metrics.clone(),
            limit_header: HeaderValue::from(limit),
            fail_closed: c.fail_closed.unwrap_or(false),
        })
    }

    /// The request's key. A part the request lacks (no consumer, no such header) is
    /// counted by client address instead, as Kong does: leaving it out would let anonymous
    /// requests, or ones that omit the header, through uncounted.
    fn key(&self, req: &Request<Body>, cx: &RequestCtx) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.id.len() + 48);
        k.extend_from_slice(self.id.as_bytes());
        // The address's octets (4 or 16 bytes): no text formatting per request.
        let ip = || match cx.client_ip.to_canonical() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        for p in &self.parts {
            // A tag per part and per fallback, so "consumer x" never shares a key with
            // "address x"; values are length-prefixed.
            match p {
                KeyPart::ClientIp => {
                    k.extend_from_slice(b"\0ip=");
                    k.extend_from_slice(&ip());
                }
                KeyPart::Consumer => match cx.consumer.as_ref() {
                    Some(c) => {
                        k.extend_from_slice(b"\0consumer=");
                        k.extend_from_slice(&(c.id.len() as u32).to_le_bytes());
                        k.extend_from_slice(c.id.as_bytes());
                    }
                    None => {
                        k.extend_from_slice(b"\0consumer-missing,ip=");
                        k.extend_from_slice(&ip());
                    }
                },
                KeyPart::Header(h) => match req.headers().get(h) {
                    Some(v) => {
                        k.extend_from_slice(b"\0header=");
                        k.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        k.extend_from_slice(v.as_bytes());
                    }
                    None => {
                        k.extend_from_slice(b"\0header-missing,ip=");
                        k.extend_from_slice(&ip());
                    }
                },
            }
        }
        k
    }
}

impl RateLimitPolicy {
    fn decide(&self, d: Decision, cx: &mut RequestCtx) -> Result<Flow, GatewayError> {
        cx.put(d);
        self.metrics.rate_limit(cx.route.as_ref(), d.allowed);
        if d.allowed {
            return Ok(Flow::Continue);
        }
        let secs = d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0);
        Err(GatewayError::RateLimited {
            retry_after: secs.max(1),
        })
    }
}

impl Policy for RateLimitPolicy {
    fn kind(&self) -> &'static str {
        "rate_limit"
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        let key = self.key(req, cx);
        // Memory answers at once (no allocation for a future); Redis is waited for.
        match self.store.rate_limit_now(&key, self.rate) {
            Some(d) => Step::Done(self.decide(d, cx)),
            None => Step::Wait(Box::pin(async move {
                let d = match self.store.rate_limit(&key, self.rate).await {
                    Ok(d) => d,
                    Err(Unavailable) if self.fail_closed => {
                        self.metrics.rate_limit_unavailable(cx.route.as_ref());
                        return Err(GatewayError::RateLimitUnavailable);
                    }
                    Err(Unavailable) => self.store.rate_limit_local(&key, self.rate),
                };
                self.decide(d, cx)
            })),
        }
    }

    fn on_response<'a>(
        &'a self,
        resp: &'a mut Response<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, ()> {
        if let Some(d) = cx.get::<Decision>().copied() {
            let h = resp.headers_mut();
            h.insert(LIMIT.clone(), self.limit_header.clone());
            h.insert(REMAINING.clone(), HeaderValue::from(d.remaining));
            let reset = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
            h.insert(RESET.clone(), HeaderValue::from(reset));
        }
        Step::Done(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(
            parse_limit("100/s").unwrap(),
            (100, std::time::Duration::from_secs(1))
        );
        assert_eq!(
            parse_limit("5/min").unwrap().1,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            parse_limit("1 / h").unwrap().1,
            std::time::Duration::from_secs(3600)
        );
        for bad in ["100", "0/s", "x/s", "10/day", "-1/s"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }
}

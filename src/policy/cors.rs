//! `cors` policy (phase access, first in it): answers CORS preflights itself and adds the CORS
//! headers to every answer of the route, including the gateway's own errors and other
//! policies' denials. It runs before the other access policies (see
//! [`Policy::first_in_phase`]) so that a 403 from `ip_rules` still tells the browser's page
//! what happened.
//!
//! The `Origin` a request came with is matched against the configured origins at request time
//! and carried to the response in this policy's slot; an origin that does not match is never
//! written back. The gateway owns CORS on a route that has this policy: the upstream's own
//! `Access-Control-Allow-*` / `-Expose-Headers` are removed, so a browser never sees two
//! answers.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) never reaches the
//! upstream: 204 with the allow headers when the origin, method and headers are allowed, else
//! 403 `forbidden` with no `Access-Control-Allow-*` header (the browser fails the preflight
//! either way; the 403 shows in the access log and metrics instead of a mystery 204).
//! Actual requests from an origin that is not allowed are forwarded without CORS headers: the
//! browser keeps the answer from the page, as it would without a gateway (Kong, Envoy).

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::{Flow, Phase, Policy, PolicyCx, RequestCtx, Step};
use crate::body::Body;
use crate::config::ConfigError;
use crate::config::model::{CorsConfig, PolicySetConfig};
use crate::error::GatewayError;

/// The `cors` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    _cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Policy>> {
    let cfg = set.cors.as_ref()?;
    let p = Cors::compile(cfg, &format!("{path}.cors"), errors)?;
    Some(Arc::new(p))
}

/// Methods a preflight may ask for when `methods` is left out: the CORS-safelisted ones.
const DEFAULT_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];

/// `https://*.example.com`: any origin of this scheme whose host is one or more labels
/// followed by `suffix` (which keeps a port, when the pattern has one).
#[derive(Debug)]
struct OriginPattern {
    /// `https://`
    prefix: String,
    /// `.example.com` or `.example.com:8443`
    suffix: String,
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix(&self.prefix) else {
            return false;
        };
        let Some(labels) = rest.strip_suffix(&self.suffix) else {
            return false;
        };
        !labels.is_empty()
            && labels
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    }
}

#[derive(Debug)]
pub struct Cors {
    /// `origins: ["*"]`.
    any: bool,
    /// Lower-cased.
    exact: Vec<String>,
    patterns: Vec<OriginPattern>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Lower-cased; `None`: echo what the preflight asks for.
    headers: Option<Vec<HeaderName>>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// What the request hook saw, for the response hook.
enum Seen {
    /// A preflight this policy answered: the answer is complete.
    Preflight,
    /// An actual request from an allowed origin: the value for `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
}

impl Cors {
    pub fn compile(cfg: &CorsConfig, path: &str, errors: &mut Vec<ConfigError>) -> Option<Cors> {
        let before = errors.len();
        let mut any = false;
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        if cfg.origins.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.origins"),
                "needs at least one origin (`https://app.example.com`, `https://*.example.com` or `*`)",
            ));
        }
        for (i, o) in cfg.origins.iter().enumerate() {
            let at = format!("{path}.origins[{i}]");
            match parse_origin(o) {
                Ok(Parsed::Any) if cfg.origins.len() > 1 => errors.push(ConfigError::new(
                    at,
                    "`*` allows every origin: list it alone",
                )),
                Ok(Parsed::Any) => any = true,
                Ok(Parsed::Exact(e)) => exact.push(e),
                Ok(Parsed::Pattern(p)) => patterns.push(p),
                Err(e) => errors.push(ConfigError::new(at, e)),
            }
        }
        if any && cfg.credentials {
            errors.push(ConfigError::new(
                format!("{path}.credentials"),
                "cannot be true with origin `*`: browsers refuse credentials for a wildcard origin, and reflecting any origin with credentials would let every site act as the user; list the origins",
            ));
        }

        let mut methods = Vec::new();
        for (i, m) in cfg.methods.iter().enumerate() {
            match Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                Ok(m) if !methods.contains(&m) => methods.push(m),
                Ok(_) => {}
                Err(_) => errors.push(ConfigError::new(
                    format!("{path}.methods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                )),
            }
        }
        if cfg.methods.is_empty() {
            methods = DEFAULT_METHODS.to_vec();
        }
        let headers = if cfg.headers.is_empty() {
            None
        } else {
            Some(header_names(
                &cfg.headers,
                &format!("{path}.headers"),
                errors,
            ))
        };
        let expose = header_names(
            &cfg.expose_headers,
            &format!("{path}.expose_headers"),
            errors,
        );
        if errors.len() > before {
            return None;
        }
        let join = |names: &mut dyn Iterator<Item = &str>| {
            HeaderValue::from_str(&names.collect::<Vec<_>>().join(", ")).ok()
        };
        Some(Cors {
            any,
            exact,
            patterns,
            allow_methods: join(&mut methods.iter().map(Method::as_str))?,
            methods,
            allow_headers: headers
                .as_ref()
                .and_then(|h| join(&mut h.iter().map(HeaderName::as_str))),
            headers,
            expose_headers: (!expose.is_empty())
                .then(|| join(&mut expose.iter().map(HeaderName::as_str)))
                .flatten(),
            credentials: cfg.credentials,
            max_age: cfg.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.any {
            // Never with credentials (a config error): the answer does not depend on Origin.
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        let lower = origin.to_str().ok()?.to_ascii_lowercase();
        let ok = self.exact.contains(&lower) || self.patterns.iter().any(|p| p.matches(&lower));
        ok.then(|| origin.clone())
    }

    /// The answer to a preflight from an allowed origin (`allow`), or why it is refused.
    fn preflight(
        &self,
        allow: HeaderValue,
        req: &Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let h = req.headers();
        let method = h
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.is_some_and(|m| self.methods.contains(&m)) {
            return Err(GatewayError::Forbidden(
                "CORS preflight for a method the route does not allow",
            ));
        }
        let asked = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let (Some(allowed), Some(asked)) = (&self.headers, asked) {
            let all_allowed = asked.to_str().is_ok_and(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .all(|n| allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(n)))
            });
            if !all_allowed {
                return Err(GatewayError::Forbidden(
                    "CORS preflight for request headers the route does not allow",
                ));
            }
        }
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        match (&self.allow_headers, asked) {
            (Some(list), _) => {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, list.clone());
            }
            (None, Some(asked)) if !asked.is_empty() => {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            (None, _) => {}
        }
        if let Some(age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(resp)
    }
}

enum Parsed {
    Any,
    Exact(String),
    Pattern(OriginPattern),
}

/// `*`, `scheme://host[:port]`, or `scheme://*.host[:port]`; anything else is refused, so a
/// typo (a trailing slash, a path) cannot silently match nothing, nor a loose pattern match
/// too much.
fn parse_origin(o: &str) -> Result<Parsed, String> {
    if o == "*" {
        return Ok(Parsed::Any);
    }
    if o.eq_ignore_ascii_case("null") {
        return Err("`null` cannot be allowed: sandboxed frames and local files all send it, so any page could use it".into());
    }
    let lower = o.to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return Err(format!(
            "{o:?} is not an origin: write `scheme://host[:port]`, e.g. `https://app.example.com`"
        ));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!("{o:?}: invalid scheme"));
    }
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{o:?} is not an origin: an origin is `scheme://host[:port]`, with no path (not even a trailing `/`)"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None), // bare IPv6
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("{o:?}: invalid port"));
    }
    if !host.contains('*') {
        return Ok(Parsed::Exact(lower));
    }
    match host.strip_prefix("*.") {
        Some(rest)
            if !rest.is_empty()
                && !rest.contains('*')
                && rest.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }) =>
        {
            let mut suffix = format!(".{rest}");
            if let Some(p) = port {
                suffix.push(':');
                suffix.push_str(p);
            }
            Ok(Parsed::Pattern(OriginPattern {
                prefix: format!("{scheme}://"),
                suffix,
            }))
        }
        _ => Err(format!(
            "{o:?}: the only wildcard forms are `*` alone and a leading `*.` label, as in `https://*.example.com` (which matches one or more labels before example.com)"
        )),
    }
}

fn header_names(names: &[String], path: &str, errors: &mut Vec<ConfigError>) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match HeaderName::from_bytes(n.trim().as_bytes()) {
            // A valid token, but a wildcard that browsers ignore with credentials: list names.
            Ok(h) if h.as_str().contains('*') => errors.push(ConfigError::new(
                format!("{path}[{i}]"),
                "`*` is not supported: list the header names",
            )),
            Ok(h) if !out.contains(&h) => out.push(h),
            Ok(_) => {}
            Err(_) => errors.push(ConfigError::new(
                format!("{path}[{i}]"),
                format!("{n:?} is not a header name (`*` is not supported: list the names)"),
            )),
        }
    }
    out
}

/// Whether `Vary` already lists `Origin` (or is `*`).
fn varies_on_origin(h: &http::HeaderMap) -> bool {
    h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    })
}

impl Policy for Cors {
    fn kind(&self) -> &'static str {
        "cors"
    }

    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn first_in_phase(&self) -> bool {
        true
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        let origin = req.headers().get(header::ORIGIN);
        let allow = self.allow_origin(origin);
        let preflight = req.method() == Method::OPTIONS
            && origin.is_some()
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let Some(allow) = allow else {
                return Step::Done(Err(GatewayError::Forbidden(
                    "CORS preflight from an origin the route does not allow",
                )));
            };
            return Step::Done(self.preflight(allow, req).map(|resp| {
                cx.put(Seen::Preflight);
                Flow::Respond(Box::new(resp))
            }));
        }
        if let Some(allow) = allow {
            cx.put(Seen::Allowed(allow));
        }
        Step::Done(Ok(Flow::Continue))
    }

    fn on_response<'a>(
        &'a self,
        resp: &'a mut Response<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, ()> {
        let seen = cx.take::<Seen>();
        if matches!(seen, Some(Seen::Preflight)) {
            return Step::Done(Ok(()));
        }
        let h = resp.headers_mut();
        for n in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            h.remove(n);
        }
        // With `*` the answer is the same for every origin; otherwise it depends on Origin,
        // and a shared cache must not hand one origin's answer to another.
        if !self.any && !varies_on_origin(h) {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(Seen::Allowed(allow)) = seen {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            if self.credentials {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(expose) = &self.expose_headers {
                h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        Step::Done(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Result<Cors, Vec<ConfigError>> {
        let cfg = CorsConfig {
            origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            credentials,
            ..CorsConfig::default()
        };
        let mut errors = Vec::new();
        Cors::compile(&cfg, "routes[0].cors", &mut errors).ok_or(errors)
    }

    fn allows(c: &Cors, origin: &str) -> bool {
        c.allow_origin(Some(&HeaderValue::from_str(origin).unwrap()))
            .is_some()
    }

    #[test]
    fn exact_and_pattern_origins() {
        let c = cors(
            &[
                "https://app.example.com",
                "https://*.example.org",
                "http://*.local.test:8080",
            ],
            true,
        )
        .unwrap();
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://a.example.org",
            "https://a.b-c.example.org",
            "http://x.local.test:8080",
        ] {
            assert!(allows(&c, ok), "{ok}");
        }
        for bad in [
            "https://app.example.com.evil.com",
            "http://app.example.com",
            "https://example.org",
            "https://.example.org",
            "https://evilexample.org",
            "https://a.example.org:444",
            "https://a..example.org",
            "https://user@a.example.org",
            "https://a.example.org.evil.com",
            "http://x.local.test",
            "null",
        ] {
            assert!(!allows(&c, bad), "{bad}");
        }
        assert!(allows(
            &cors(&["*"], false).unwrap(),
            "https://anything.test"
        ));
    }

    #[test]
    fn config_errors() {
        let paths = |origins: &[&str], credentials: bool| -> Vec<String> {
            cors(origins, credentials)
                .map(|_| Vec::new())
                .unwrap_or_else(|e| e.into_iter().map(|e| e.path).collect())
        };
        assert_eq!(paths(&["*"], true), ["routes[0].cors.credentials"]);
        for bad in [
            "https://app.example.com/",
            "app.example.com",
            "https://*",
            "https://a.*.example.com",
            "https://foo*.example.com",
            "*.example.com",
            "https://*example.com",
            "null",
            "https://a.example.com/path",
        ] {
            assert_eq!(
                paths(&["https://ok.example.com", bad], false),
                ["routes[0].cors.origins[1]"],
                "{bad}"
            );
        }
        assert_eq!(paths(&[], false), ["routes[0].cors.origins"]);
        assert_eq!(
            paths(&["*", "https://a.com"], false),
            ["routes[0].cors.origins[0]"]
        );
        let mut errors = Vec::new();
        let cfg = CorsConfig {
            origins: vec!["https://a.com".into()],
            methods: vec!["GET".into(), "BAD METHOD".into()],
            headers: vec!["x-ok".into(), "bad header".into()],
            expose_headers: vec!["*".into()],
            ..CorsConfig::default()
        };
        assert!(Cors::compile(&cfg, "p", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["p.methods[1]", "p.headers[1]", "p.expose_headers[0]"]
        );
    }

    #[test]
    fn vary_is_not_duplicated() {
        let mut h = http::HeaderMap::new();
        assert!(!varies_on_origin(&h));
        h.append(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, origin"),
        );
        assert!(varies_on_origin(&h));
    }
}

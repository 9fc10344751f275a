//! `headers` policy: set / append / remove request headers before forwarding and response
//! headers before answering. Header names and values are parsed at compile time.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};

use super::{Flow, Phase, Policy, RequestCtx, Step};
use crate::body::Body;
use crate::config::ConfigError;
use crate::config::model::{HeaderOpsConfig, HeadersPolicyConfig, PolicySetConfig};

/// The `headers` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    _cx: &super::PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<std::sync::Arc<dyn Policy>> {
    let cfg = set.headers.as_ref()?;
    let p = HeadersPolicy::compile(cfg, &format!("{path}.headers"), errors)?;
    Some(std::sync::Arc::new(p))
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    append: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn compile(cfg: &HeaderOpsConfig, path: &str, errors: &mut Vec<ConfigError>) -> HeaderOps {
        let mut ops = HeaderOps::default();
        let pair = |k: &str,
                    v: &str,
                    p: String,
                    errors: &mut Vec<ConfigError>|
         -> Option<(HeaderName, HeaderValue)> {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| {
                    errors.push(ConfigError::new(
                        p.clone(),
                        format!("invalid header name {k:?}"),
                    ))
                })
                .ok()?;
            if is_managed(&name) {
                errors.push(ConfigError::new(
                    p.clone(),
                    format!("header {k:?} is managed by the gateway (hop-by-hop or framing) and cannot be changed"),
                ));
                return None;
            }
            let value = HeaderValue::from_str(v)
                .map_err(|_| {
                    errors.push(ConfigError::new(
                        p,
                        format!("invalid value for header {k:?}"),
                    ))
                })
                .ok()?;
            Some((name, value))
        };
        for (k, v) in &cfg.set {
            ops.set
                .extend(pair(k, v, format!("{path}.set.{k}"), errors));
        }
        for (k, v) in &cfg.append {
            ops.append
                .extend(pair(k, v, format!("{path}.append.{k}"), errors));
        }
        for (i, k) in cfg.remove.iter().enumerate() {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => errors.push(ConfigError::new(
                    format!("{path}.remove[{i}]"),
                    format!("invalid header name {k:?}"),
                )),
            }
        }
        ops
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.append {
            h.append(n.clone(), v.clone());
        }
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }
}

/// Headers whose meaning is the connection's, not the application's.
pub(super) fn is_managed(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

pub struct HeadersPolicy {
    request: HeaderOps,
    response: HeaderOps,
}

impl HeadersPolicy {
    pub fn compile(
        cfg: &HeadersPolicyConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<HeadersPolicy> {
        let request = cfg
            .request
            .as_ref()
            .map(|c| HeaderOps::compile(c, &format!("{path}.request"), errors))
            .unwrap_or_default();
        let response = cfg
            .response
            .as_ref()
            .map(|c| HeaderOps::compile(c, &format!("{path}.response"), errors))
            .unwrap_or_default();
        if request.is_empty() && response.is_empty() {
            return None;
        }
        Some(HeadersPolicy { request, response })
    }
}

impl Policy for HeadersPolicy {
    fn kind(&self) -> &'static str {
        "headers"
    }

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        _cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        self.request.apply(req.headers_mut());
        Step::Done(Ok(Flow::Continue))
    }

    fn on_response<'a>(
        &'a self,
        resp: &'a mut Response<Body>,
        _cx: &'a mut RequestCtx,
    ) -> Step<'a, ()> {
        self.response.apply(resp.headers_mut());
        Step::Done(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_in_order_remove_set_append() {
        let mut cfg = HeaderOpsConfig::default();
        cfg.set.insert("x-a".into(), "1".into());
        cfg.append.insert("x-b".into(), "2".into());
        cfg.remove.push("x-c".into());
        let mut errors = Vec::new();
        let ops = HeaderOps::compile(&cfg, "p", &mut errors);
        assert!(errors.is_empty());
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("0"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        ops.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(h.get("x-c").is_none());
    }

    #[test]
    fn refuses_bad_and_managed_headers() {
        let mut cfg = HeaderOpsConfig::default();
        cfg.set.insert("bad header".into(), "1".into());
        cfg.set.insert("connection".into(), "close".into());
        cfg.append.insert("x-ok".into(), "bad\nvalue".into());
        let mut errors = Vec::new();
        HeaderOps::compile(&cfg, "routes[0].headers.request", &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.path == "routes[0].headers.request.set.connection")
        );
    }
}

//! One route: its matcher, its action, its derived name.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use crate::config::ConfigError;
use crate::config::model::*;
use crate::router::{HostPattern, Matcher, PathPattern};
use crate::upstream::Upstream;

/// A route's action: exactly one of `upstream` (already resolved, when it exists), `respond`,
/// `redirect` and `aggregate` (already compiled, when it is valid).
pub(super) fn compile_action(
    r: &crate::config::model::RouteConfig,
    upstream: Option<Arc<Upstream>>,
    aggregate: Option<crate::aggregate::Aggregate>,
    params: &[&str],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::runtime::Action> {
    use crate::runtime::{Action, Redirect, Respond};
    let given = usize::from(r.upstream.is_some())
        + usize::from(r.respond.is_some())
        + usize::from(r.redirect.is_some())
        + usize::from(r.aggregate.is_some());
    if given != 1 {
        let name = r
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        errors.push(ConfigError::new(
            path.to_owned(),
            format!(
                "route{name} needs exactly one of `upstream`, `respond`, `redirect` and `aggregate` (it has {})",
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
    if r.aggregate.is_some() {
        return aggregate.map(|a| Action::Aggregate(Arc::new(a)));
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

pub(super) fn derive_name(m: &Matcher) -> String {
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

pub(super) fn compile_matcher(
    m: &MatchConfig,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Matcher> {
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

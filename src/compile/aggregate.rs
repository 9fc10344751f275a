//! `aggregate:` on a route: its calls, their templates, the dependency graph (a cycle or an
//! unknown reference is a config error naming the key), and their shaping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::aggregate::compose::Shape;
use crate::aggregate::template::{Names, Place, Template};
use crate::aggregate::{Aggregate, CallPlan};
use crate::config::ConfigError;
use crate::config::model::{AggregateCallConfig, RouteConfig};
use crate::config::units::OrderedMap;
use crate::upstream::Upstream;

const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

pub(super) fn compile_aggregate(
    r: &RouteConfig,
    calls: &OrderedMap<AggregateCallConfig>,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    known_upstreams: &[&str],
    params: &[&str],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Aggregate> {
    let before = errors.len();
    let at = |name: &str, key: &str| format!("{path}.aggregate.{name}.{key}");
    if calls.0.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.aggregate"),
            "list at least one call",
        ));
        return None;
    }
    let names: Vec<&str> = calls.0.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _) in &calls.0 {
        let reserved = ["query", "header", "consumer", "_errors"];
        if reserved.contains(&name.as_str()) || params.contains(&name.as_str()) {
            errors.push(ConfigError::new(
                format!("{path}.aggregate.{name}"),
                format!(
                    "{name:?} cannot name a call: it is {}",
                    if params.contains(&name.as_str()) {
                        "a path param of the route"
                    } else {
                        "reserved"
                    }
                ),
            ));
        }
        if name.is_empty() || name.contains(['.', '{', '}']) {
            errors.push(ConfigError::new(
                format!("{path}.aggregate.{name}"),
                "a call name must be non-empty, without `.`, `{` or `}`",
            ));
        }
    }
    let tnames = Names {
        params,
        calls: &names,
    };
    let mut plans = Vec::new();
    // A call left out (its upstream did not compile, reported elsewhere) would shift the
    // indices the templates hold: then the route is not compiled at all.
    let mut incomplete = false;
    for (name, c) in &calls.0 {
        let upstream = match upstreams.get(&c.upstream) {
            Some(u) => Some(u.clone()),
            None => {
                if !known_upstreams.contains(&c.upstream.as_str()) {
                    errors.push(ConfigError::new(
                        at(name, "upstream"),
                        format!(
                            "no upstream named {:?} (known: {})",
                            c.upstream,
                            known_upstreams.join(", ")
                        ),
                    ));
                }
                None
            }
        };
        let method = match c.method.as_deref().map(str::to_ascii_uppercase) {
            None => Method::GET,
            Some(m) => match Method::from_bytes(m.as_bytes()) {
                Ok(me) if m.bytes().all(|b| b.is_ascii_uppercase()) => me,
                _ => {
                    errors.push(ConfigError::new(
                        at(name, "method"),
                        format!("{m:?} is not an HTTP method"),
                    ));
                    Method::GET
                }
            },
        };
        if !c.path.starts_with('/') {
            errors.push(ConfigError::new(
                at(name, "path"),
                format!("{:?} must start with `/`", c.path),
            ));
        }
        if c.path.contains('#') {
            errors.push(ConfigError::new(at(name, "path"), "must not contain `#`"));
        }
        let (p, q) = match c.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (c.path.as_str(), None),
        };
        let parse = |t: &str, place: Place, key: &str, errors: &mut Vec<ConfigError>| {
            match Template::parse(t, place, &tnames) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(ConfigError::new(at(name, key), e));
                    None
                }
            }
        };
        let path_t = parse(p, Place::Path, "path", errors);
        let query_t = q.and_then(|q| parse(q, Place::Query, "path", errors));
        let mut headers = Vec::new();
        for (k, v) in &c.headers {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(h) => {
                    if let Some(t) = parse(v, Place::Header, &format!("headers.{k}"), errors) {
                        headers.push((h, t));
                    }
                }
                Err(_) => errors.push(ConfigError::new(
                    at(name, &format!("headers.{k}")),
                    format!("{k:?} is not a header name"),
                )),
            }
        }
        let mut forward = Vec::new();
        for (i, h) in c.forward_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => forward.push(h),
                Err(_) => errors.push(ConfigError::new(
                    at(name, &format!("forward_headers[{i}]")),
                    format!("{h:?} is not a header name"),
                )),
            }
        }
        if let Some(p) = &c.pointer
            && !p.is_empty()
            && !p.starts_with('/')
        {
            errors.push(ConfigError::new(
                at(name, "pointer"),
                format!("{p:?} is not a JSON pointer (they start with `/`, e.g. `/data/items`)"),
            ));
        }
        if c.cache.as_ref().is_some_and(|k| k.ttl.0.as_secs() == 0) {
            errors.push(ConfigError::new(
                at(name, "cache.ttl"),
                "must be at least 1s",
            ));
        }
        if c.default.is_some() && c.required != Some(false) {
            errors.push(ConfigError::new(
                at(name, "default"),
                "only an optional call (`required: false`) can have a default",
            ));
        }
        if c.timeout.is_some_and(|t| t.0.is_zero()) {
            errors.push(ConfigError::new(at(name, "timeout"), "must be more than 0"));
        }
        let max_body = c.max_body_size.map_or(DEFAULT_MAX_BODY, |s| s.0);
        if max_body == 0 {
            errors.push(ConfigError::new(
                at(name, "max_body_size"),
                "must be more than 0",
            ));
        }
        if c.cache.is_some() && method != Method::GET && method != Method::HEAD {
            errors.push(ConfigError::new(
                at(name, "cache"),
                "only a GET call can be cached (another method's side effects would be skipped)",
            ));
        }
        // Every value a hole can take is encoded; check the text around them now, not as a
        // 502 on every request.
        if let Some(t) = &path_t {
            let mut sample = t.render(&mut |_| Some("x".to_owned())).unwrap_or_default();
            if let Some(q) = &query_t {
                sample.push('?');
                sample.push_str(&q.render(&mut |_| Some("x".to_owned())).unwrap_or_default());
            }
            if http::uri::PathAndQuery::try_from(sample.as_str()).is_err() {
                errors.push(ConfigError::new(
                    at(name, "path"),
                    format!(
                        "{:?} is not a valid URI path and query (spaces and other special characters must be percent-encoded)",
                        c.path
                    ),
                ));
            }
        }
        let (Some(upstream), Some(path_t)) = (upstream, path_t) else {
            incomplete = true;
            continue;
        };
        let mut deps: Vec<usize> = path_t.deps().collect();
        if let Some(q) = &query_t {
            deps.extend(q.deps());
        }
        for (_, t) in &headers {
            deps.extend(t.deps());
        }
        deps.sort_unstable();
        deps.dedup();
        plans.push(CallPlan {
            name: name.as_str().into(),
            upstream,
            method,
            source: c.path.clone(),
            path: path_t,
            query: query_t,
            headers,
            forward,
            timeout: c.timeout.map(|t| t.0),
            required: c.required.unwrap_or(true),
            deps,
            shape: Shape {
                pointer: c.pointer.clone().filter(|p| !p.is_empty()),
                select: c.select.clone(),
                omit: c.omit.clone(),
                rename: c
                    .rename
                    .iter()
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect(),
            },
            merge: c.merge,
            max_body,
            cache_ttl: c.cache.as_ref().map(|k| k.ttl.0.as_secs()),
            default: c.default.clone(),
        });
    }
    if errors.len() > before || incomplete {
        return None;
    }
    if let Some(cycle) = find_cycle(&plans) {
        errors.push(ConfigError::new(
            format!("{path}.aggregate"),
            format!(
                "the calls depend on each other in a cycle: {}",
                cycle
                    .iter()
                    .map(|i| &*plans[*i].name)
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        ));
        return None;
    }
    let deadline = r.timeout.map_or(DEFAULT_DEADLINE, |t| t.0);
    if deadline.is_zero() {
        errors.push(ConfigError::new(
            format!("{path}.timeout"),
            "must be more than 0",
        ));
        return None;
    }
    Some(Aggregate {
        calls: plans,
        deadline,
    })
}

/// A dependency cycle, as the calls along it (first repeated at the end), if there is one.
fn find_cycle(plans: &[CallPlan]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    fn visit(i: usize, plans: &[CallPlan], state: &mut [u8], stack: &mut Vec<usize>) -> bool {
        state[i] = 1;
        stack.push(i);
        for &d in &plans[i].deps {
            if state[d] == 1 {
                stack.push(d);
                return true;
            }
            if state[d] == 0 && visit(d, plans, state, stack) {
                return true;
            }
        }
        stack.pop();
        state[i] = 2;
        false
    }
    let mut state = vec![0u8; plans.len()];
    for i in 0..plans.len() {
        let mut stack = Vec::new();
        if state[i] == 0 && visit(i, plans, &mut state, &mut stack) {
            let last = *stack.last()?;
            let from = stack.iter().position(|x| *x == last)?;
            return Some(stack[from..].to_vec());
        }
    }
    None
}

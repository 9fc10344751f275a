//! The route table: finds the most specific route for a request, whatever the config order.
//! Runs first in `gateway::handle`, on the normalised path.
//!
//! Each route is expanded into one entry per host pattern; entries are sorted once, at compile
//! time, from most to least specific, so lookup is "first entry that matches". Specificity:
//! host (exact > longer wildcard > shorter wildcard > any), then path (exact > template >
//! longer prefix > shorter), then methods given > any, then more header conditions, then config
//! order.

pub mod path;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub use path::{PathPattern, RewriteTemplate, normalize, normalize_ext};

/// A host condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    /// `api.example.com` (lower-case, no port)
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any subdomain, not the apex.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> Result<HostPattern, String> {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h == "*" {
            return Ok(HostPattern::Any);
        }
        let check = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(rest) = h.strip_prefix("*.") {
            if !check(rest) {
                return Err(format!(
                    "invalid wildcard host {h:?} (expected `*.example.com`)"
                ));
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if h.contains(':') {
            return Err(format!(
                "host {h:?} must not include a port (hosts match regardless of port)"
            ));
        }
        if !check(&h) {
            return Err(format!("invalid host {h:?}"));
        }
        Ok(HostPattern::Exact(h))
    }

    pub(crate) fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(e) => host == Some(e.as_str()),
            HostPattern::Suffix(s) => {
                host.is_some_and(|h| h.len() > s.len() && h.ends_with(s.as_str()))
            }
        }
    }

    pub(crate) fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(e) => (2, e.len()),
            HostPattern::Suffix(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
        }
    }

    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) => true,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Suffix(a), HostPattern::Exact(b)) => {
                b.len() > a.len() && b.ends_with(a.as_str())
            }
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => b.ends_with(a.as_str()),
            _ => false,
        }
    }

    pub fn display(&self) -> String {
        match self {
            HostPattern::Any => "*".to_owned(),
            HostPattern::Exact(e) => e.clone(),
            HostPattern::Suffix(s) => format!("*{s}"),
        }
    }
}

/// Everything a route requires of a request.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub hosts: Vec<HostPattern>,
    pub path: PathPattern,
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    pub(crate) fn matches_rest(
        &self,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        params: &mut Vec<(String, String)>,
    ) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self
                .headers
                .iter()
                .all(|(n, v)| headers.get_all(n).iter().any(|x| x == v))
            && self.path.matches(path, params)
    }
}

struct Entry<R> {
    host: HostPattern,
    route: Arc<R>,
    /// Index of the route in the config, for messages and as the last tie-break.
    index: usize,
}

/// A route found for a request, with the params its path template captured.
pub struct Found<'a, R> {
    pub route: &'a Arc<R>,
    pub params: Vec<(String, String)>,
}

/// Routes that can never match, for `gatehouse check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub index: usize,
    pub by: usize,
}

pub trait Routable {
    fn matcher(&self) -> &Matcher;
}

pub struct Router<R> {
    entries: Vec<Entry<R>>,
    /// Entries (positions in `entries`, ascending) whose path needs this first segment
    /// (`/users/{id}` and `path_prefix: /users` under `users`)...
    by_segment: std::collections::HashMap<Box<str>, Vec<u32>>,
    /// ...and those that take any (`path_prefix: /`, `/{id}`, `/{*rest}`).
    any_segment: Vec<u32>,
}

/// The first segment a path pattern requires (`None`: any).
fn first_segment(p: &PathPattern) -> Option<&str> {
    match p {
        PathPattern::Exact(p) => Some(first_of(p)),
        PathPattern::Prefix(p) if p == "/" => None,
        PathPattern::Prefix(p) => Some(first_of(p)),
        PathPattern::Template(segs) => match segs.first() {
            Some(path::Segment::Literal(l)) => Some(l.as_str()),
            _ => None,
        },
    }
}

/// A normalised path's first segment: `users` for `/users/7`, `` for `/`.
fn first_of(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

impl<R: Routable> Router<R> {
    /// Builds the table; `routes` are in config order.
    pub fn new(routes: Vec<Arc<R>>) -> Self {
        let mut entries = Vec::new();
        for (index, route) in routes.into_iter().enumerate() {
            let hosts = if route.matcher().hosts.is_empty() {
                vec![HostPattern::Any]
            } else {
                route.matcher().hosts.clone()
            };
            for host in hosts {
                entries.push(Entry {
                    host,
                    route: route.clone(),
                    index,
                });
            }
        }
        entries.sort_by(|a, b| {
            let ka = sort_key(&a.host, a.route.matcher());
            let kb = sort_key(&b.host, b.route.matcher());
            kb.cmp(&ka).then(a.index.cmp(&b.index))
        });
        let mut by_segment: std::collections::HashMap<Box<str>, Vec<u32>> =
            std::collections::HashMap::new();
        let mut any_segment = Vec::new();
        for (pos, e) in entries.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            match first_segment(&e.route.matcher().path) {
                Some(seg) => by_segment.entry(seg.into()).or_default().push(pos),
                None => any_segment.push(pos),
            }
        }
        Router {
            entries,
            by_segment,
            any_segment,
        }
    }

    /// `host` is lower-case without port; `path` is normalised.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Found<'_, R>> {
        // Only the entries that could match this path's first segment, in the same order a
        // scan of all of them would try them: the first that matches is the same one.
        let mut params = Vec::new();
        let named = self
            .by_segment
            .get(first_of(path))
            .map_or(&[][..], Vec::as_slice);
        let (mut i, mut j) = (0, 0);
        loop {
            let pos = match (named.get(i), self.any_segment.get(j)) {
                (Some(a), Some(b)) if a < b => {
                    i += 1;
                    *a
                }
                (_, Some(b)) => {
                    j += 1;
                    *b
                }
                (Some(a), None) => {
                    i += 1;
                    *a
                }
                (None, None) => return None,
            };
            let e = self.entries.get(pos as usize)?;
            if e.host.matches(host)
                && e.route
                    .matcher()
                    .matches_rest(path, method, headers, &mut params)
            {
                return Some(Found {
                    route: &e.route,
                    params,
                });
            }
        }
    }

    /// Routes none of whose entries can ever be reached: an earlier (more specific or equal)
    /// entry matches every request they would.
    ///
    /// Near-linear: comparing every entry with every earlier one took minutes for tens of
    /// thousands of routes. Instead, each entry looks up only the earlier entries that could
    /// cover it, in an index keyed by host pattern and path pattern: the host patterns that
    /// cover its host (itself, its wildcard parents, any), the prefixes of its path, and the
    /// templates its path fits. Within one key, groups by header conditions (looked up by
    /// subset) and method sets. Every candidate is confirmed with the exact `covers`, and the
    /// earliest confirmed one is reported, as a plain scan would.
    pub fn shadowed(&self) -> Vec<Shadowed> {
        let mut index = ShadowIndex::default();
        let mut alive: std::collections::BTreeMap<usize, (bool, usize)> =
            std::collections::BTreeMap::new();
        for (pos, e) in self.entries.iter().enumerate() {
            let by = index
                .candidates(&e.host, e.route.matcher())
                .into_iter()
                .filter(|&p| {
                    let a = &self.entries[p];
                    a.index != e.index
                        && a.host.covers(&e.host)
                        && covers(a.route.matcher(), e.route.matcher())
                })
                .min()
                .map(|p| self.entries[p].index);
            let slot = alive.entry(e.index).or_insert((false, usize::MAX));
            match by {
                None => slot.0 = true,
                Some(a) => slot.1 = a,
            }
            index.insert(pos, e.index, &e.host, e.route.matcher());
        }
        alive
            .into_iter()
            .filter(|(_, (live, _))| !live)
            .map(|(index, (_, by))| Shadowed { index, by })
            .collect()
    }
}

/// How a path pattern is filed in the [`ShadowIndex`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PathKey {
    Exact(String),
    Prefix(String),
    Template(Vec<SegKey>),
}

/// A template segment without its parameter name: `/users/{id}` and `/users/{uid}` match alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SegKey {
    Literal(String),
    Param,
    CatchAll,
}

fn seg_keys(segs: &[path::Segment]) -> Vec<SegKey> {
    segs.iter()
        .map(|s| match s {
            path::Segment::Literal(l) => SegKey::Literal(l.clone()),
            path::Segment::Param(_) => SegKey::Param,
            path::Segment::CatchAll(_) => SegKey::CatchAll,
        })
        .collect()
}

type HeaderKey = Vec<(String, Vec<u8>)>;

/// Entries filed under one (host, path, headers): per distinct method set, the positions and
/// route indices of the first two entries with different routes.
type MethodGroups = Vec<(Vec<Method>, Vec<(usize, usize)>)>;

fn header_key(headers: &[(HeaderName, HeaderValue)]) -> HeaderKey {
    let mut k: HeaderKey = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    k.sort();
    k.dedup();
    k
}

/// Header condition sets at most this large are looked up by enumerating their subsets;
/// larger ones scan the groups of their key.
const MAX_SUBSET_HEADERS: usize = 5;

/// Earlier entries, filed for [`Router::shadowed`]: (host, path) -> header set -> method set
/// -> the first two entry positions with different route indices (one may be the very route
/// being checked, which cannot shadow itself).
#[derive(Default)]
struct ShadowIndex {
    by_key: std::collections::HashMap<
        (HostPattern, PathKey),
        std::collections::HashMap<HeaderKey, MethodGroups>,
    >,
    /// Every prefix of every template filed, to prune the search for templates that fit.
    template_prefixes: std::collections::HashSet<Vec<SegKey>>,
}

impl ShadowIndex {
    fn insert(&mut self, pos: usize, index: usize, host: &HostPattern, m: &Matcher) {
        let key = match &m.path {
            PathPattern::Exact(p) => PathKey::Exact(p.clone()),
            PathPattern::Prefix(p) => PathKey::Prefix(p.clone()),
            PathPattern::Template(segs) => {
                let k = seg_keys(segs);
                for i in 0..=k.len() {
                    self.template_prefixes.insert(k[..i].to_vec());
                }
                PathKey::Template(k)
            }
        };
        let mut methods: Vec<Method> = m.methods.clone();
        methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        methods.dedup();
        let groups = self
            .by_key
            .entry((host.clone(), key))
            .or_default()
            .entry(header_key(&m.headers))
            .or_default();
        match groups.iter_mut().find(|(ms, _)| *ms == methods) {
            Some((_, firsts)) => {
                if firsts.len() < 2 && firsts.iter().all(|&(_, i)| i != index) {
                    firsts.push((pos, index));
                }
            }
            None => groups.push((methods, vec![(pos, index)])),
        }
    }

    /// Positions of filed entries that may cover an entry with this host and matcher (a
    /// superset of those that do; the caller confirms).
    fn candidates(&self, host: &HostPattern, m: &Matcher) -> Vec<usize> {
        if self.by_key.is_empty() {
            return Vec::new();
        }
        let hosts = covering_hosts(host);
        let paths = self.covering_paths(&m.path);
        let wanted = header_key(&m.headers);
        let mut out = Vec::new();
        for h in &hosts {
            for p in &paths {
                let Some(by_headers) = self.by_key.get(&(h.clone(), p.clone())) else {
                    continue;
                };
                let mut take = |groups: &MethodGroups| {
                    for (methods, firsts) in groups {
                        let ok = methods.is_empty()
                            || (!m.methods.is_empty()
                                && m.methods.iter().all(|x| methods.contains(x)));
                        if ok {
                            out.extend(firsts.iter().map(|&(p, _)| p));
                        }
                    }
                };
                if wanted.len() <= MAX_SUBSET_HEADERS {
                    for mask in 0u32..(1 << wanted.len()) {
                        let subset: HeaderKey = wanted
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask & (1 << i) != 0)
                            .map(|(_, h)| h.clone())
                            .collect();
                        if let Some(groups) = by_headers.get(&subset) {
                            take(groups);
                        }
                    }
                } else {
                    for (hs, groups) in by_headers {
                        if hs.iter().all(|h| wanted.contains(h)) {
                            take(groups);
                        }
                    }
                }
            }
        }
        out
    }

    /// The path keys whose patterns may cover `p`.
    fn covering_paths(&self, p: &PathPattern) -> Vec<PathKey> {
        let mut out = Vec::new();
        let (literal, segs): (String, Vec<SegKey>) = match p {
            PathPattern::Exact(x) => {
                out.push(PathKey::Exact(x.clone()));
                let segs = x
                    .strip_prefix('/')
                    .unwrap_or(x)
                    .split('/')
                    .map(|s| SegKey::Literal(s.to_owned()))
                    .collect();
                (x.clone(), segs)
            }
            PathPattern::Prefix(x) => (x.clone(), Vec::new()),
            PathPattern::Template(t) => {
                let mut lit = String::new();
                for s in t {
                    match s {
                        path::Segment::Literal(l) => {
                            lit.push('/');
                            lit.push_str(l);
                        }
                        _ => break,
                    }
                }
                (lit, seg_keys(t))
            }
        };
        // Prefixes: `/`, the whole literal part, and each of its segment boundaries.
        out.push(PathKey::Prefix("/".to_owned()));
        if !literal.is_empty() {
            out.push(PathKey::Prefix(literal.clone()));
            for (i, b) in literal.bytes().enumerate() {
                if b == b'/' && i > 0 {
                    out.push(PathKey::Prefix(literal[..i].to_owned()));
                }
            }
        }
        // Templates: walk the filed template prefixes, following each segment as a literal,
        // a parameter, or a final catch-all.
        if !segs.is_empty() && !self.template_prefixes.is_empty() {
            let exact = matches!(p, PathPattern::Exact(_));
            let mut cur = Vec::new();
            self.fitting_templates(&segs, exact, &mut cur, &mut out);
        }
        out
    }

    fn fitting_templates(
        &self,
        segs: &[SegKey],
        exact: bool,
        cur: &mut Vec<SegKey>,
        out: &mut Vec<PathKey>,
    ) {
        if !self.template_prefixes.contains(cur) {
            return;
        }
        let depth = cur.len();
        let Some(seg) = segs.get(depth) else {
            out.push(PathKey::Template(cur.clone()));
            return;
        };
        // A catch-all here takes the rest: anywhere for an exact path, and (templates being
        // compared position by position) only in the last position for a template.
        if exact || depth + 1 == segs.len() {
            let mut t = cur.clone();
            t.push(SegKey::CatchAll);
            out.push(PathKey::Template(t));
        }
        let mut next: Vec<SegKey> = Vec::with_capacity(2);
        match seg {
            SegKey::Literal(l) => {
                next.push(SegKey::Literal(l.clone()));
                if !l.is_empty() {
                    next.push(SegKey::Param);
                }
            }
            SegKey::Param => next.push(SegKey::Param),
            SegKey::CatchAll => {}
        }
        for n in next {
            cur.push(n);
            self.fitting_templates(segs, exact, cur, out);
            cur.pop();
        }
    }
}

/// The host patterns that cover `h`: any, itself, and for `a.b.example.com` the wildcards
/// `*.b.example.com`, `*.example.com`, `*.com`.
fn covering_hosts(h: &HostPattern) -> Vec<HostPattern> {
    let mut out = vec![HostPattern::Any];
    let name = match h {
        HostPattern::Any => return out,
        HostPattern::Exact(e) => {
            out.push(h.clone());
            e.as_str()
        }
        HostPattern::Suffix(s) => s.as_str(),
    };
    for (i, b) in name.bytes().enumerate() {
        if b == b'.' {
            out.push(HostPattern::Suffix(name[i..].to_owned()));
        }
    }
    out
}

fn sort_key(host: &HostPattern, m: &Matcher) -> ((u8, usize), (u8, usize, usize), bool, usize) {
    (
        host.rank(),
        m.path.rank(),
        !m.methods.is_empty(),
        m.headers.len(),
    )
}

/// `a` matches every request `b` matches (hosts checked by the caller).
fn covers(a: &Matcher, b: &Matcher) -> bool {
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|h| b.headers.contains(h));
    methods && headers && a.path.covers(&b.path)
}

/// The host a request is for: the URI authority (HTTP/2, or an HTTP/1.1 absolute-form target,
/// where RFC 9112 3.2.2 says Host is ignored), else the Host header; lower-cased, without port
/// or trailing dot. The gateway forwards the same value it routes by.
pub fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
) -> Option<std::borrow::Cow<'a, str>> {
    match uri.authority() {
        Some(a) => Some(host_key(a.as_str())),
        None => Some(host_key(headers.get(http::header::HOST)?.to_str().ok()?)),
    }
}

/// `API.Example.com:8080` -> `api.example.com`: the form routes compare hosts in.
pub fn host_key(host_and_port: &str) -> std::borrow::Cow<'_, str> {
    let raw = strip_port(host_and_port);
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(raw.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        // [v6]:port
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R {
        name: &'static str,
        m: Matcher,
    }
    impl Routable for R {
        fn matcher(&self) -> &Matcher {
            &self.m
        }
    }

    fn route(
        name: &'static str,
        hosts: &[&str],
        path: &str,
        methods: &[&str],
        headers: &[(&str, &str)],
    ) -> Arc<R> {
        let path = if let Some(p) = path.strip_prefix("=") {
            PathPattern::parse_path(p).unwrap()
        } else {
            PathPattern::parse_prefix(path).unwrap()
        };
        Arc::new(R {
            name,
            m: Matcher {
                hosts: hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).unwrap())
                    .collect(),
                path,
                methods: methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                    .collect(),
                headers: headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            HeaderName::from_bytes(n.as_bytes()).unwrap(),
                            HeaderValue::from_str(v).unwrap(),
                        )
                    })
                    .collect(),
            },
        })
    }

    fn find(
        r: &Router<R>,
        host: &str,
        path: &str,
        method: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'static str> {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        r.find(
            if host.is_empty() { None } else { Some(host) },
            &normalize(path),
            &m,
            &h,
        )
        .map(|f| f.route.name)
    }

    #[test]
    fn most_specific_wins_regardless_of_order() {
        let routes = vec![
            route("root", &[], "/", &[], &[]),
            route("users", &[], "/users", &[], &[]),
            route("users-me", &[], "=/users/me", &[], &[]),
            route("user-id", &[], "=/users/{id}", &[], &[]),
            route("users-post", &[], "/users", &["POST"], &[]),
            route("api-host", &["api.example.com"], "/", &[], &[]),
            route("wild", &["*.example.com"], "/", &[], &[]),
            route("v2", &[], "/users", &[], &[("x-api-version", "2")]),
        ];
        let r = Router::new(routes);
        let table = [
            ("", "/x", "GET", vec![], Some("root")),
            ("", "/users", "GET", vec![], Some("users")),
            ("", "/usersx", "GET", vec![], Some("root")),
            ("", "/users/7/orders", "GET", vec![], Some("users")),
            ("", "/users/me", "GET", vec![], Some("users-me")),
            ("", "/users/7", "GET", vec![], Some("user-id")),
            ("", "/users", "POST", vec![], Some("users-post")),
            (
                "",
                "/users",
                "GET",
                vec![("x-api-version", "2")],
                Some("v2"),
            ),
            (
                "",
                "/users",
                "GET",
                vec![("x-api-version", "3")],
                Some("users"),
            ),
            (
                "api.example.com",
                "/users/me",
                "GET",
                vec![],
                Some("api-host"),
            ),
            ("other.example.com", "/users", "GET", vec![], Some("wild")),
            ("example.com", "/users", "GET", vec![], Some("users")),
            (
                "",
                "/public/%2e%2e/users/me",
                "GET",
                vec![],
                Some("users-me"),
            ),
        ];
        for (host, path, method, headers, want) in table {
            assert_eq!(
                find(&r, host, path, method, &headers),
                want,
                "{method} {host}{path}"
            );
        }
    }

    #[test]
    fn catch_all_templates_rank_as_prefixes() {
        let r = Router::new(vec![
            route("rest", &[], "=/admin/{*rest}", &[], &[]),
            route("users", &[], "/admin/users", &[], &[]),
            route("admin", &[], "/admin", &[], &[]),
        ]);
        assert_eq!(find(&r, "", "/admin/users/1", "GET", &[]), Some("users"));
        assert_eq!(find(&r, "", "/admin/x", "GET", &[]), Some("rest"));
        assert_eq!(find(&r, "", "/admin", "GET", &[]), Some("admin"));
    }

    #[test]
    fn no_route() {
        let r = Router::new(vec![route(
            "users",
            &["api.example.com"],
            "/users",
            &["GET"],
            &[],
        )]);
        assert_eq!(find(&r, "api.example.com", "/orders", "GET", &[]), None);
        assert_eq!(find(&r, "x.example.com", "/users", "GET", &[]), None);
        assert_eq!(find(&r, "api.example.com", "/users", "DELETE", &[]), None);
    }

    #[test]
    fn detects_shadowed_routes() {
        let r = Router::new(vec![
            route("a", &[], "/users", &[], &[]),
            route("b", &[], "/users", &[], &[]),
            route("c", &[], "/users", &["GET"], &[]),
            route("d", &["*.example.com"], "/", &[], &[]),
            route("e", &["api.example.com"], "/", &[], &[]),
            route("f", &["*.example.com"], "/x", &[], &[]),
        ]);
        let sh = r.shadowed();
        assert_eq!(sh, vec![Shadowed { index: 1, by: 0 }]);
        let r2 = Router::new(vec![
            route("any", &[], "/", &[], &[]),
            route("sub", &[], "=/a/{x}", &["GET"], &[]),
        ]);
        assert!(r2.shadowed().is_empty());
        let r3 = Router::new(vec![
            route("t", &[], "=/a/{x}", &[], &[]),
            route("t2", &[], "=/a/{y}", &[], &[]),
        ]);
        assert_eq!(r3.shadowed(), vec![Shadowed { index: 1, by: 0 }]);
        // A GET-only twin is more specific, so it shadows nothing and is not shadowed.
        let r4 = Router::new(vec![
            route("t", &[], "=/a/{x}", &[], &[]),
            route("t2", &[], "=/a/{y}", &["GET"], &[]),
        ]);
        assert!(r4.shadowed().is_empty());
    }

    /// The old pairwise scan, kept as the reference the index must agree with.
    fn shadowed_pairwise(r: &Router<R>) -> Vec<Shadowed> {
        let mut alive: std::collections::BTreeMap<usize, (bool, usize)> =
            std::collections::BTreeMap::new();
        for (i, e) in r.entries.iter().enumerate() {
            let by = r.entries[..i].iter().find(|a| {
                a.index != e.index
                    && a.host.covers(&e.host)
                    && covers(a.route.matcher(), e.route.matcher())
            });
            let slot = alive.entry(e.index).or_insert((false, usize::MAX));
            match by {
                None => slot.0 = true,
                Some(a) => slot.1 = a.index,
            }
        }
        alive
            .into_iter()
            .filter(|(_, (live, _))| !live)
            .map(|(index, (_, by))| Shadowed { index, by })
            .collect()
    }

    #[test]
    fn shadow_index_agrees_with_the_pairwise_scan() {
        let hosts: &[&[&str]] = &[
            &[],
            &["api.example.com"],
            &["*.example.com"],
            &["a.b.example.com", "x.org"],
            &["*.b.example.com"],
        ];
        let paths = [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "=/a",
            "=/a/b",
            "=/a/",
            "=/a/{x}",
            "=/a/{x}/c",
            "=/{x}/b",
            "=/a/{*rest}",
            "=/{*rest}",
            "=/{x}/{y}",
            "=/a/b/c",
        ];
        let methods: &[&[&str]] = &[&[], &["GET"], &["GET", "POST"], &["POST"]];
        let headers: &[&[(&str, &str)]] = &[
            &[],
            &[("x-v", "1")],
            &[("x-v", "2")],
            &[("x-v", "1"), ("x-t", "a")],
        ];
        let mut rng = fastrand::Rng::with_seed(8);
        for round in 0..300 {
            let n = rng.usize(1..14);
            let routes: Vec<Arc<R>> = (0..n)
                .map(|_| {
                    route(
                        "r",
                        hosts[rng.usize(..hosts.len())],
                        paths[rng.usize(..paths.len())],
                        methods[rng.usize(..methods.len())],
                        headers[rng.usize(..headers.len())],
                    )
                })
                .collect();
            let r = Router::new(routes);
            assert_eq!(r.shadowed(), shadowed_pairwise(&r), "round {round}");
        }
    }

    #[test]
    fn shadow_check_is_fast_for_many_routes() {
        let routes: Vec<Arc<R>> = (0..34_000)
            .map(|i| {
                let p: &'static str = Box::leak(format!("/r{i}").into_boxed_str());
                route("r", &[], p, &[], &[])
            })
            .chain(std::iter::once(route("dup", &[], "/r7", &[], &[])))
            .collect();
        let r = Router::new(routes);
        let t = std::time::Instant::now();
        assert_eq!(
            r.shadowed(),
            vec![Shadowed {
                index: 34_000,
                by: 7
            }]
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            HostPattern::parse("API.Example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a:80").is_err());
        let uri: http::Uri = "/x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::HOST,
            HeaderValue::from_static("API.example.com:8080"),
        );
        assert_eq!(request_host(&uri, &h).as_deref(), Some("api.example.com"));
        h.insert(http::header::HOST, HeaderValue::from_static("[::1]:8080"));
        assert_eq!(request_host(&uri, &h).as_deref(), Some("[::1]"));
    }

    /// The first-segment index finds exactly what a scan of every entry in order finds, over
    /// every kind of pattern and a spread of paths, hosts and methods.
    #[test]
    fn the_index_finds_what_a_full_scan_finds() {
        let names: &[&'static str] = &[
            "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13",
            "r14", "r15",
        ];
        let specs: &[(&[&str], &str, &[&str])] = &[
            (&[], "/", &[]),
            (&[], "/users", &[]),
            (&[], "=/users/me", &[]),
            (&[], "=/users/{id}", &[]),
            (&[], "=/{tenant}/users", &[]),
            (&[], "=/{*rest}", &["POST"]),
            (&[], "=/files/{*path}", &[]),
            (&["api.example.com"], "/", &[]),
            (&["*.example.com"], "/users", &[]),
            (&[], "/api/v1", &[]),
            (&[], "/api", &["GET"]),
            (&[], "=/", &[]),
            (&[], "=/api/{v}/items", &[]),
            (&["api.example.com"], "=/users/{id}", &["DELETE"]),
            (&[], "/static", &[]),
            (&[], "=/{a}/{b}", &[]),
        ];
        let routes: Vec<Arc<R>> = specs
            .iter()
            .zip(names)
            .map(|((hosts, path, methods), name)| route(name, hosts, path, methods, &[]))
            .collect();
        let r = Router::new(routes);
        let paths = [
            "/",
            "/users",
            "/users/",
            "/users/me",
            "/users/7",
            "/users/7/x",
            "/acme/users",
            "/api",
            "/api/v1",
            "/api/v1/x",
            "/api/v2/items",
            "/apix",
            "/files/a/b",
            "/static/x",
            "/x",
            "/x/y",
            "/x/y/z",
            "/%41",
        ];
        for host in ["", "api.example.com", "a.example.com", "other.org"] {
            for method in ["GET", "POST", "DELETE"] {
                for path in paths {
                    let m = Method::from_bytes(method.as_bytes()).unwrap();
                    let h = HeaderMap::new();
                    let host = if host.is_empty() { None } else { Some(host) };
                    let mut params = Vec::new();
                    let scan = r
                        .entries
                        .iter()
                        .find(|e| {
                            params.clear();
                            e.host.matches(host)
                                && e.route.matcher().matches_rest(path, &m, &h, &mut params)
                        })
                        .map(|e| e.route.name);
                    let indexed = r.find(host, path, &m, &h);
                    assert_eq!(
                        indexed.as_ref().map(|f| f.route.name),
                        scan,
                        "{method} {host:?} {path}"
                    );
                    if let Some(f) = indexed {
                        assert_eq!(f.params, params, "{method} {host:?} {path}");
                    }
                }
            }
        }
    }
}

//! Path handling for routing: normalisation (so `/%2e%2e/admin` is seen as `/admin`), path
//! patterns (exact, prefix, `{param}` templates) and the rewrite templates built from them.
//! Runs before route lookup; the forwarded path stays the client's bytes unless a rewrite applies.

use std::borrow::Cow;

/// Normalises a request path for matching: percent-decodes unreserved characters
/// (RFC 3986 2.3), upper-cases the hex of the escapes it keeps (so `%2f` and `%2F` match
/// alike), merges repeated slashes, and resolves `.` and `..` segments (RFC 3986 5.2.4). `%2F`
/// stays encoded: it is data, not a separator. Returns the input unchanged (borrowed) in the
/// common case.
pub fn normalize(path: &str) -> Cow<'_, str> {
    normalize_ext(path).0
}

/// Like [`normalize`], and also says whether the segment structure changed (dot segments
/// resolved or slashes merged). When it did, the gateway forwards the normalised path, so the
/// upstream sees the resource the route was chosen for.
pub fn normalize_ext(path: &str) -> (Cow<'_, str>, bool) {
    let needs_decode = path.contains('%');
    let needs_structure = has_structure_issues(path);
    if !needs_decode && !needs_structure {
        return (Cow::Borrowed(path), false);
    }
    let decoded: Cow<'_, str> = if needs_decode {
        Cow::Owned(decode_unreserved(path))
    } else {
        Cow::Borrowed(path)
    };
    if has_structure_issues(&decoded) {
        // `/a/..%2fb` looked structural but is not: only a real change is "restructured", so
        // the client's bytes go upstream unless a segment was really resolved or merged.
        let resolved = remove_dot_segments(&decoded);
        let changed = resolved != decoded;
        (Cow::Owned(resolved), changed)
    } else {
        (Cow::Owned(decoded.into_owned()), false)
    }
}

/// What `server.path_normalization: strict` refuses in a raw request path, if anything:
/// encoded slashes and backslashes (which some backends decode into separators), an encoded
/// NUL, escapes that decode to invalid or overlong UTF-8 (`%C0%AE` is an overlong `.`), and a
/// `;` path parameter on a segment that is `.` or `..` (`/..;/admin`, which some Java servers
/// resolve as `..`).
pub fn strict_violation(path: &str) -> Option<&'static str> {
    let b = path.as_bytes();
    if !b.iter().any(|c| matches!(c, b'%' | b';' | b'\\')) {
        return None;
    }
    if b.contains(&b'\\') {
        return Some("a backslash in the path");
    }
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            match h * 16 + l {
                b'/' => return Some("an encoded slash in the path"),
                b'\\' => return Some("an encoded backslash in the path"),
                0 => return Some("an encoded NUL in the path"),
                c => decoded.push(c),
            }
            i += 3;
            continue;
        }
        decoded.push(b[i]);
        i += 1;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Some("escapes in the path decode to invalid or overlong UTF-8");
    }
    for seg in decoded.split(|&c| c == b'/') {
        if let Some(semi) = seg.iter().position(|&c| c == b';') {
            let name = &seg[..semi];
            if name == b"." || name == b".." {
                return Some("a path parameter on a dot segment");
            }
        }
    }
    None
}

fn has_structure_issues(p: &str) -> bool {
    p.contains("/.") || p.starts_with('.') || p.contains("//")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        if b == b'%' {
            // Not an escape (`%zz`, a `%` at the end): kept as the data it is, `%25`. Left bare,
            // it could combine with what the decoding above produces into a new escape
            // (`%4%44` -> `%4D`), and a second decoding (the upstream's) would read another
            // path than the one routed (found by the `path` fuzz target).
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Request targets are ASCII (hyper rejects others), but stay correct for any UTF-8.
        let ch_len = utf8_len(b);
        out.push_str(&path[i..(i + ch_len).min(path.len())]);
        i += ch_len;
    }
    out
}

fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// RFC 3986 5.2.4 on a path starting with `/`, merging empty segments (`/a//b` is `/a/b`, as
/// nginx's `merge_slashes` does) and keeping a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::new();
    let n = segs.len();
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == n;
        match *seg {
            "" | "." => trailing = last,
            ".." => {
                out.pop();
                trailing = last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    s
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

/// How a route matches paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `path: /users/me`
    Exact(String),
    /// `path: /users/{id}`: params match one non-empty segment, a final `{*rest}` the rest.
    Template(Vec<Segment>),
    /// `path_prefix: /users` (stored without a trailing slash; `/` matches everything).
    Prefix(String),
}

impl PathPattern {
    pub fn parse_path(p: &str) -> Result<PathPattern, String> {
        if !p.starts_with('/') {
            return Err(format!("path {p:?} must start with `/`"));
        }
        if p.contains('?') || p.contains('#') {
            return Err(format!("path {p:?} must not contain `?` or `#`"));
        }
        let norm = normalize(p);
        if norm != p {
            return Err(format!(
                "path {p:?} is not normalised (write it as {norm:?})"
            ));
        }
        if !p.contains('{') && !p.contains('}') {
            return Ok(PathPattern::Exact(p.to_owned()));
        }
        let raw: Vec<&str> = p[1..].split('/').collect();
        let mut segs = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                if let Some(name) = inner.strip_prefix('*') {
                    if i + 1 != raw.len() {
                        return Err(format!("`{{*{name}}}` must be the last segment of {p:?}"));
                    }
                    check_param_name(name, p)?;
                    segs.push(Segment::CatchAll(name.to_owned()));
                } else {
                    check_param_name(inner, p)?;
                    segs.push(Segment::Param(inner.to_owned()));
                }
            } else if s.contains('{') || s.contains('}') {
                return Err(format!(
                    "segment {s:?} of {p:?}: a parameter must be a whole segment like `{{id}}`"
                ));
            } else {
                segs.push(Segment::Literal((*s).to_owned()));
            }
        }
        let mut names: Vec<&str> = segs
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) | Segment::CatchAll(n) => Some(n.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("parameter `{{{}}}` appears twice in {p:?}", w[0]));
        }
        Ok(PathPattern::Template(segs))
    }

    pub fn parse_prefix(p: &str) -> Result<PathPattern, String> {
        if !p.starts_with('/') {
            return Err(format!("path_prefix {p:?} must start with `/`"));
        }
        if p.contains('{') || p.contains('}') || p.contains('?') || p.contains('#') {
            return Err(format!(
                "path_prefix {p:?} must be a plain path (use `path:` for `{{param}}` templates)"
            ));
        }
        let norm = normalize(p);
        if norm != p {
            return Err(format!(
                "path_prefix {p:?} is not normalised (write it as {norm:?})"
            ));
        }
        let trimmed = p.trim_end_matches('/');
        Ok(PathPattern::Prefix(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }

    /// Matches a normalised path; on success, pushes captured params.
    pub fn matches(&self, path: &str, params: &mut Vec<(String, String)>) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => prefix_match(p, path),
            PathPattern::Template(segs) => {
                let start = params.len();
                let ok = template_match(segs, path, params);
                if !ok {
                    params.truncate(start);
                }
                ok
            }
        }
    }

    /// Sort key: larger is more specific. Exact > template > prefix. A template ending in
    /// `{*rest}` is a prefix in disguise: it ranks among prefixes by the length of its literal
    /// part, just above the plain prefix of the same length (it needs at least one more segment).
    pub fn rank(&self) -> (u8, usize, usize) {
        match self {
            PathPattern::Exact(p) => (3, p.len(), 0),
            PathPattern::Template(segs) => {
                if segs.iter().any(|s| matches!(s, Segment::CatchAll(_))) {
                    (1, literal_prefix(segs).len(), segs.len())
                } else {
                    let literals = segs
                        .iter()
                        .filter(|s| matches!(s, Segment::Literal(_)))
                        .count();
                    (2, literals, segs.len())
                }
            }
            PathPattern::Prefix(p) => (1, if p == "/" { 0 } else { p.len() }, 0),
        }
    }

    /// True when every path this pattern matches is also matched by `self`.
    pub fn covers(&self, other: &PathPattern) -> bool {
        match (self, other) {
            (PathPattern::Prefix(a), PathPattern::Prefix(b)) => prefix_match(a, b),
            (PathPattern::Prefix(a), PathPattern::Exact(b)) => prefix_match(a, b),
            (PathPattern::Prefix(a), PathPattern::Template(segs)) => {
                // The template's leading literal segments form a prefix of every path it matches.
                let lit = literal_prefix(segs);
                if lit.is_empty() {
                    a == "/"
                } else {
                    prefix_match(a, &lit)
                }
            }
            (PathPattern::Exact(a), PathPattern::Exact(b)) => a == b,
            (PathPattern::Template(segs), PathPattern::Exact(b)) => {
                template_match(segs, b, &mut Vec::new())
            }
            (PathPattern::Template(a), PathPattern::Template(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| match (x, y) {
                        (Segment::Literal(l), Segment::Literal(m)) => l == m,
                        (Segment::Param(_), Segment::Literal(_) | Segment::Param(_)) => true,
                        (Segment::CatchAll(_), _) => true,
                        _ => false,
                    })
            }
            _ => false,
        }
    }

    /// The text form, as written in the config.
    pub fn display(&self) -> String {
        match self {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p.clone(),
            PathPattern::Template(segs) => {
                let mut s = String::new();
                for seg in segs {
                    s.push('/');
                    match seg {
                        Segment::Literal(l) => s.push_str(l),
                        Segment::Param(n) => {
                            s.push('{');
                            s.push_str(n);
                            s.push('}');
                        }
                        Segment::CatchAll(n) => {
                            s.push_str("{*");
                            s.push_str(n);
                            s.push('}');
                        }
                    }
                }
                s
            }
        }
    }

    pub fn param_names(&self) -> Vec<&str> {
        match self {
            PathPattern::Template(segs) => segs
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) | Segment::CatchAll(n) => Some(n.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `/a/b` for `/a/b/{x}/c`: the literal segments before the first parameter.
fn literal_prefix(segs: &[Segment]) -> String {
    let mut lit = String::new();
    for s in segs {
        match s {
            Segment::Literal(l) => {
                lit.push('/');
                lit.push_str(l);
            }
            _ => break,
        }
    }
    lit
}

fn check_param_name(name: &str, p: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "invalid parameter name {name:?} in {p:?} (letters, digits and `_`)"
        ));
    }
    Ok(())
}

/// Whole-segment prefix match: `/users` matches `/users`, `/users/`, `/users/7`; not `/usersx`.
pub fn prefix_match(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn template_match(segs: &[Segment], path: &str, params: &mut Vec<(String, String)>) -> bool {
    let Some(mut rest) = path.strip_prefix('/') else {
        return false;
    };
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let (cur, next) = match rest.find('/') {
            Some(j) => (&rest[..j], Some(&rest[j + 1..])),
            None => (rest, None),
        };
        match seg {
            Segment::Literal(l) => {
                if cur != l {
                    return false;
                }
            }
            Segment::Param(name) => {
                if cur.is_empty() {
                    return false;
                }
                params.push((name.clone(), cur.to_owned()));
            }
            Segment::CatchAll(name) => {
                params.push((name.clone(), rest.to_owned()));
                return true;
            }
        }
        match (next, last) {
            (None, true) => return true,
            (Some(n), false) => rest = n,
            _ => return false,
        }
    }
    false
}

/// A rewrite target such as `/v2/users/{id}`: literal text with `{param}` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteTemplate {
    parts: Vec<RewritePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RewritePart {
    Text(String),
    Param(String),
}

impl RewriteTemplate {
    /// Parses and checks that every `{param}` is one the route's path captures.
    pub fn parse(t: &str, available: &[&str]) -> Result<RewriteTemplate, String> {
        if !t.starts_with('/') {
            return Err(format!("rewrite {t:?} must start with `/`"));
        }
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(i) = rest.find('{') {
            if i > 0 {
                parts.push(RewritePart::Text(rest[..i].to_owned()));
            }
            let end = rest[i..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in rewrite {t:?}"))?
                + i;
            let name = rest[i + 1..end].trim_start_matches('*');
            if !available.contains(&name) {
                return Err(if available.is_empty() {
                    format!(
                        "rewrite uses `{{{name}}}` but the route's match has no `path` template capturing it"
                    )
                } else {
                    format!(
                        "rewrite uses `{{{name}}}`, which match.path does not capture (it captures: {})",
                        available.join(", ")
                    )
                });
            }
            parts.push(RewritePart::Param(name.to_owned()));
            rest = &rest[end + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray `}}` in rewrite {t:?}"));
        }
        if !rest.is_empty() {
            parts.push(RewritePart::Text(rest.to_owned()));
        }
        if t.contains('#') {
            return Err(format!("rewrite {t:?} must not contain `#`"));
        }
        let tpl = RewriteTemplate { parts };
        // Every value a param can take is a valid path segment; check the text around them.
        let sample: Vec<(String, String)> = available
            .iter()
            .map(|n| ((*n).to_owned(), "x".to_owned()))
            .collect();
        let rendered = tpl.render(&sample).unwrap_or_default();
        if http::uri::PathAndQuery::try_from(rendered.as_str()).is_err() {
            return Err(format!(
                "rewrite {t:?} is not a valid URI path (spaces and other special characters must be percent-encoded)"
            ));
        }
        Ok(tpl)
    }

    /// Fills in the params. Refuses a value holding an encoded slash or backslash: an upstream
    /// that decodes it would see a different path (`..%2Fadmin`) than the route was chosen for.
    pub fn render(&self, params: &[(String, String)]) -> Result<String, &'static str> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                RewritePart::Text(t) => s.push_str(t),
                RewritePart::Param(n) => {
                    if let Some((_, v)) = params.iter().find(|(k, _)| k == n) {
                        if v.contains("%2F") || v.contains("%5C") || v.contains('\\') {
                            return Err("encoded slash or backslash in a path parameter");
                        }
                        s.push_str(v);
                    }
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_paths() {
        for ok in [
            "/",
            "/a/b",
            "/a%20b",
            "/caf%C3%A9",
            "/a;v=1/b",
            "/a/..b",
            "/%2e%2e%2fx".replace("%2f", "x").as_str(),
        ] {
            assert_eq!(strict_violation(ok), None, "{ok}");
        }
        for bad in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a%00",
            "/%C0%AE%C0%AE/x",
            "/%E0%80%AE",
            "/%FF",
            "/..;/admin",
            "/a/.;x/b",
            "/%2e%2e;/admin",
        ] {
            assert!(strict_violation(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn normalises() {
        let cases = [
            ("/users/7", "/users/7"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/%7Euser", "/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%41", "/aA"),
            ("/..", "/"),
            ("/a//b", "/a/b"),
            ("//admin", "/admin"),
            ("/a//../b", "/b"),
            ("/a/b/", "/a/b/"),
            ("/a/./", "/a/"),
            ("/%", "/%25"),
            ("/%zz", "/%25zz"),
            ("/a%2", "/a%252"),
            ("/s/%4%44", "/s/%254D"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
            // Stable: what is routed reads the same when decoded again.
            assert_eq!(normalize(&normalize(input)), want, "{input} twice");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_match("/users", "/users"));
        assert!(prefix_match("/users", "/users/7"));
        assert!(prefix_match("/users", "/users/"));
        assert!(!prefix_match("/users", "/usersx"));
        assert!(!prefix_match("/users", "/user"));
        assert!(prefix_match("/", "/anything"));
    }

    #[test]
    fn templates() {
        let p = PathPattern::parse_path("/users/{id}/orders/{oid}").unwrap();
        let mut params = Vec::new();
        assert!(p.matches("/users/7/orders/9", &mut params));
        assert_eq!(
            params,
            vec![("id".into(), "7".into()), ("oid".into(), "9".into())]
        );
        params.clear();
        assert!(!p.matches("/users/7/orders", &mut params));
        assert!(!p.matches("/users//orders/9", &mut params));
        assert!(!p.matches("/users/7/orders/9/x", &mut params));
        assert!(params.is_empty());
        let c = PathPattern::parse_path("/files/{*rest}").unwrap();
        assert!(c.matches("/files/a/b/c", &mut params));
        assert_eq!(params, vec![("rest".into(), "a/b/c".into())]);
        assert!(PathPattern::parse_path("/a/{*x}/b").is_err());
        assert!(PathPattern::parse_path("/a/x{y}").is_err());
        assert!(PathPattern::parse_path("/a/{x}/{x}").is_err());
        assert!(PathPattern::parse_path("a").is_err());
        assert!(PathPattern::parse_path("/a/../b").is_err());
    }

    #[test]
    fn coverage() {
        let pre = |s| PathPattern::parse_prefix(s).unwrap();
        let path = |s| PathPattern::parse_path(s).unwrap();
        assert!(pre("/").covers(&pre("/users")));
        assert!(pre("/users").covers(&path("/users/{id}")));
        assert!(!pre("/users").covers(&pre("/")));
        assert!(path("/users/{id}").covers(&path("/users/me")));
        assert!(!path("/users/me").covers(&path("/users/{id}")));
        assert!(path("/users/{id}").covers(&path("/users/{x}")));
        assert!(!pre("/users").covers(&path("/{x}/users")));
    }

    #[test]
    fn rewrites() {
        let t = RewriteTemplate::parse("/v2/users/{id}", &["id"]).unwrap();
        assert_eq!(
            t.render(&[("id".into(), "7".into())]).unwrap(),
            "/v2/users/7"
        );
        assert!(t.render(&[("id".into(), "..%2Fadmin".into())]).is_err());
        assert!(RewriteTemplate::parse("/a b/{id}", &["id"]).is_err());
        assert!(RewriteTemplate::parse("/a#x", &[]).is_err());
        assert!(RewriteTemplate::parse("/orders?user={id}", &["id"]).is_ok());
        assert!(RewriteTemplate::parse("/v2/{nope}", &["id"]).is_err());
        assert!(RewriteTemplate::parse("v2", &[]).is_err());
    }
}

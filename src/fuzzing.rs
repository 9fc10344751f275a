//! Entry points for the fuzz targets under `fuzz/` (one function per target): each feeds
//! arbitrary bytes to one parser of hostile input. The property every target checks is that
//! nothing panics, loops forever or grows without bound; where a parser's answer has an
//! invariant, the function asserts it. Not part of the public API.

use bytes::BytesMut;

/// A config file: parse, then compile what parses.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| None;
    if let Ok(cfg) = crate::config::parse_str(text, &env) {
        let state = crate::state::State::default();
        let _ = crate::compile::compile(&cfg, &state);
    }
}

/// A client's HTTP/1.1 request head(s): parsed as the server's codec reads a connection, head
/// after head, as long as each parses whole.
pub fn h1_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        let before = buf.len();
        match crate::server::h1::parse_for_fuzzing(&mut buf, 16 * 1024) {
            Some(true) => assert!(buf.len() < before, "a head was parsed from no bytes"),
            Some(false) | None => return,
        }
    }
}

/// An upstream's response head, then its chunked body.
pub fn h1_response(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b) % 4);
    let method = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::POST,
        http::Method::CONNECT,
    ][split]
        .clone();
    let mut buf = BytesMut::from(data.get(1..).unwrap_or_default());
    let _ = crate::upstream::http1::parse_head(&mut buf, &method);
}

/// A chunked body, fed in pieces of the sizes the first byte picks: decoding never panics, never
/// returns more data than it was given, and ends at most once.
pub fn chunked(data: &[u8]) {
    use crate::upstream::http1::{Chunked, Decoded, decode_chunked};
    let step = data.first().map_or(1, |b| usize::from(*b).max(1));
    let rest = data.get(1..).unwrap_or_default();
    let mut state = Chunked::new();
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut out = 0usize;
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match decode_chunked(&mut state, &mut buf) {
                Ok(Decoded::Data(d)) => {
                    out += d.len();
                    assert!(out <= fed, "decoded more than was given");
                }
                Ok(Decoded::More) => break,
                Ok(Decoded::Trailers(_) | Decoded::End) | Err(_) => return,
            }
        }
    }
}

/// A request path: normalisation never panics, is stable (normalising its own output changes
/// nothing, so the route chosen and the path forwarded agree), and leaves no `.` or `..`
/// segment in a path that starts with `/`; the strict-mode check never panics.
pub fn path(data: &[u8]) {
    // What the router normalises is a URI's path: no query, no fragment.
    let Ok(p) = std::str::from_utf8(data) else {
        return;
    };
    if p.contains(['?', '#']) {
        return;
    }
    let _ = crate::router::path::strict_violation(p);
    let (once, _) = crate::router::path::normalize_ext(p);
    let twice = crate::router::path::normalize(&once);
    assert_eq!(once, twice, "normalising {p:?} twice gave a different path");
    if once.starts_with('/') {
        assert!(
            !once.split('/').any(|s| s == "." || s == ".."),
            "a dot segment survived: {p:?} -> {once:?}"
        );
    }
}

/// Small grammars of hostile text: `Cache-Control` values (one per line), a rate-limit spec, a
/// host pattern, an htpasswd file and stored password hashes.
pub fn small_grammars(data: &[u8]) {
    let values: Vec<http::HeaderValue> = data
        .split(|b| *b == b'\n')
        .filter_map(|l| http::HeaderValue::from_bytes(l).ok())
        .collect();
    let _ = crate::store::cache::CacheControl::parse(values.iter());
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::policy::rate_limit::parse_limit(text);
    let _ = crate::router::HostPattern::parse(text);
    let _ = crate::policy::htpasswd::Htpasswd::parse(text);
    for line in text.lines().take(16) {
        let _ = crate::policy::consumers::PasswordHash::parse(line);
        let _ = crate::policy::auth::basic_credentials(line);
        api_key_in_query(line);
    }
}

/// A query string carrying `api_key`: the URI logged and forwarded without it has no
/// `api_key` left for the same lookup to find.
fn api_key_in_query(query: &str) {
    use crate::policy::auth::{query_param, without_query_param};
    let Ok(uri) = format!("/p?{query}").parse::<http::Uri>() else {
        return;
    };
    let Some(q) = uri.query() else {
        return;
    };
    if query_param(q, "api_key").is_none() {
        return;
    }
    let cleaned = without_query_param(&uri, "api_key")
        .unwrap_or_else(|| panic!("{uri}: the key was found but not removed"));
    assert!(
        cleaned
            .query()
            .and_then(|q| query_param(q, "api_key"))
            .is_none(),
        "{uri} -> {cleaned}"
    );
    assert_eq!(cleaned.path(), uri.path());
}

/// An aggregation template and a value a client controls: a template either fails to parse
/// or renders so that the value cannot change the request's shape. In a path it adds or removes
/// no segment (no traversal, whatever normalisation the upstream applies) and no query; in a
/// query it adds no parameter; in a header no line break.
pub fn aggregate_template(data: &[u8]) {
    use crate::aggregate::template::{Names, Place, Template};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let place = [Place::Path, Place::Query, Place::Header][usize::from(which % 3)];
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (Ok(text), Ok(value)) = (
        std::str::from_utf8(&rest[..split]),
        std::str::from_utf8(rest.get(split + 1..).unwrap_or_default()),
    ) else {
        return;
    };
    let names = Names {
        params: &["id"],
        calls: &["user"],
    };
    let Ok(t) = Template::parse(text, place, &names) else {
        return;
    };
    let (Ok(hostile), Ok(benign)) = (
        t.render(&mut |_| Some(value.to_owned())),
        t.render(&mut |_| Some("x".to_owned())),
    ) else {
        return;
    };
    // The characters that shape a call in each place: a value must add none of them. (The
    // template's own text is the config author's; only the value is hostile.)
    let shaping: &[char] = match place {
        Place::Path => &['?', '#'],
        Place::Query => &['&', '#', '='],
        Place::Header => &['\r', '\n', '\0'],
    };
    for &c in shaping {
        assert_eq!(
            hostile.matches(c).count(),
            benign.matches(c).count(),
            "{text:?} with {value:?}: {hostile:?}"
        );
    }
    if place == Place::Path {
        let segments = |s: &str| {
            let p = s.split(['?', '#']).next().unwrap_or("");
            crate::router::path::normalize(&format!("/{p}"))
                .split('/')
                .count()
        };
        assert_eq!(
            segments(&hostile),
            segments(&benign),
            "{text:?} with {value:?}: {hostile:?}"
        );
    }
}

/// Route matching on a compiled table, against the rule the table promises: of every route
/// (and host pattern) that matches, the most specific wins (host, then path, then methods
/// given, then more header conditions, then config order); the captured params are that
/// route's; and a route `shadowed()` reports as unreachable is never the one found.
///
/// One line per route, `R <e|p> <path> <hosts|-> <methods|-> <header=value|->` (`e`: `path:`,
/// exact or template; `p`: `path_prefix:`), then one per request, `Q <host|-> <path> <method>
/// <header=value|->`.
pub fn route_match(data: &[u8]) {
    use crate::router::{HostPattern, Matcher, PathPattern, Routable, Router};
    use std::cmp::Reverse;
    use std::sync::Arc;

    struct Route {
        m: Matcher,
        index: usize,
    }
    impl Routable for Route {
        fn matcher(&self) -> &Matcher {
            &self.m
        }
    }
    fn header(f: Option<&str>) -> Option<(http::HeaderName, http::HeaderValue)> {
        let (n, v) = f?.split_once('=')?;
        Some((
            http::HeaderName::from_bytes(n.as_bytes()).ok()?,
            http::HeaderValue::from_str(v).ok()?,
        ))
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut routes = Vec::new();
    let mut requests = Vec::new();
    for line in text.lines().take(64) {
        let mut f = line.split(' ');
        match f.next() {
            Some("R") => {
                let kind = f.next().unwrap_or("p");
                let p = f.next().unwrap_or("/");
                let Ok(path) = (if kind == "e" {
                    PathPattern::parse_path(p)
                } else {
                    PathPattern::parse_prefix(p)
                }) else {
                    continue;
                };
                let hosts: Vec<HostPattern> = match f.next() {
                    None | Some("-") => Vec::new(),
                    Some(h) => h
                        .split(',')
                        .filter_map(|h| HostPattern::parse(h).ok())
                        .collect(),
                };
                let methods: Vec<http::Method> = match f.next() {
                    None | Some("-") => Vec::new(),
                    Some(m) => m
                        .split(',')
                        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                };
                let headers = header(f.next()).into_iter().collect();
                let index = routes.len();
                routes.push(Arc::new(Route {
                    m: Matcher {
                        hosts,
                        path,
                        methods,
                        headers,
                    },
                    index,
                }));
            }
            Some("Q") => requests.push((f.next(), f.next(), f.next(), header(f.next()))),
            _ => {}
        }
    }
    let router = Router::new(routes.clone());
    let shadowed: Vec<usize> = router.shadowed().iter().map(|s| s.index).collect();
    for (host, path, method, hdr) in requests {
        let host = host
            .filter(|h| *h != "-")
            .map(|h| crate::router::host_key(h).into_owned());
        let Some(path) = path.filter(|p| p.starts_with('/') && !p.contains(['?', '#'])) else {
            continue;
        };
        let path = crate::router::normalize(path);
        let Ok(method) = http::Method::from_bytes(method.unwrap_or("GET").as_bytes()) else {
            continue;
        };
        let mut headers = http::HeaderMap::new();
        if let Some((n, v)) = hdr {
            headers.insert(n, v);
        }
        // The rule, by brute force over every route and host pattern.
        let any = [HostPattern::Any];
        let expected = routes
            .iter()
            .flat_map(|r| {
                let hosts = if r.m.hosts.is_empty() {
                    &any[..]
                } else {
                    &r.m.hosts[..]
                };
                hosts.iter().map(move |h| (r, h))
            })
            .filter(|(r, h)| {
                h.matches(host.as_deref())
                    && r.m.matches_rest(&path, &method, &headers, &mut Vec::new())
            })
            .max_by_key(|(r, h)| {
                (
                    h.rank(),
                    r.m.path.rank(),
                    !r.m.methods.is_empty(),
                    r.m.headers.len(),
                    Reverse(r.index),
                )
            })
            .map(|(r, _)| r);
        let found = router.find(host.as_deref(), &path, &method, &headers);
        assert_eq!(
            found.as_ref().map(|f| f.route.index),
            expected.map(|r| r.index),
            "{method} {host:?} {path:?}"
        );
        if let (Some(f), Some(r)) = (found, expected) {
            let mut params = Vec::new();
            assert!(r.m.path.matches(&path, &mut params));
            assert_eq!(f.params, params, "{path:?}");
            assert!(
                !shadowed.contains(&r.index),
                "route {} is reported shadowed but is found for {method} {host:?} {path:?}",
                r.index
            );
        }
    }
}

/// A response's `Vary` and the request headers a variant is keyed by: the names parse without
/// panicking, each once and never `*`; and two requests get the same variant key exactly when
/// they send the same values (the trimmed elements of each listed header's comma-separated
/// values, or both lack it).
///
/// The input: `Vary` values one per line, NUL, request A's headers (`name: value` lines), NUL,
/// request B's.
pub fn vary(data: &[u8]) {
    use crate::policy::cache::{variant_key, vary_names};
    let mut parts = data.splitn(3, |b| *b == 0);
    let (vary, a, b) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let values: Vec<http::HeaderValue> = vary
        .split(|b| *b == b'\n')
        .filter_map(|l| http::HeaderValue::from_bytes(l).ok())
        .collect();
    let _ = crate::store::cache::CacheControl::parse(values.iter());
    let Ok(names) = vary_names(&values) else {
        return;
    };
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n), "{n} listed twice");
        assert_ne!(n.as_str(), "*");
    }
    let headers = |raw: &[u8]| {
        let mut h = http::HeaderMap::new();
        for line in raw.split(|b| *b == b'\n') {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) {
                h.append(n, v);
            }
        }
        h
    };
    let (a, b) = (headers(a), headers(b));
    let elements = |h: &http::HeaderMap, n: &http::HeaderName| -> Option<Vec<Vec<u8>>> {
        let mut values = h.get_all(n).iter().peekable();
        values.peek()?;
        Some(
            values
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(|e| e.trim_ascii().to_vec())
                .collect(),
        )
    };
    let same = names.iter().all(|n| elements(&a, n) == elements(&b, n));
    let (ka, kb) = (
        variant_key(b"GET\0host\0/p", &names, 7, &a),
        variant_key(b"GET\0host\0/p", &names, 7, &b),
    );
    assert_eq!(ka == kb, same, "{names:?}: {a:?} / {b:?}");
}

/// JWT headers and claims. The first byte picks: odd, the rest is a token as a client sends
/// it, which must never verify (the fuzzer does not know the secret); even, the rest is a
/// header and a claims set (JSON, split at the first NUL) that the fuzz target signs with the
/// secret, so that the header and claim checks run on every shape of JSON: a token that
/// verifies has alg HS256, an `exp` not past, an `nbf` not ahead, the issuer, the audience,
/// the required claim and the scope the config asks for. Returns whether the token verified.
pub fn jwt(data: &[u8]) -> bool {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::Value;
    use std::sync::OnceLock;

    const SECRET: &str = "fuzzing secret, long enough for HS256 keys";
    struct Fixture {
        rt: tokio::runtime::Runtime,
        forged: crate::policy::jwt::Jwt,
        signed: crate::policy::jwt::Jwt,
    }
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let fx = FIXTURE.get_or_init(|| {
        let compile = || {
            let cfg: crate::config::model::JwtConfig = serde_json::from_value(serde_json::json!({
                "secret": SECRET,
                "issuer": "https://issuer.example",
                "audiences": ["api"],
                "required_claims": { "tenant": "acme" },
                "scopes": ["read"],
                "forward_claims": { "sub": "x-user", "groups": "x-groups", "tenant": "x-tenant" },
            }))
            .expect("the fixture's config");
            let cx = crate::policy::PolicyCx {
                consumers: &Default::default(),
                registry: &Default::default(),
                metrics: &Default::default(),
                store: &Default::default(),
                cache: &crate::store::cache::Backend::Memory(Default::default()),
                claims: &Default::default(),
                warnings: &Default::default(),
            };
            let mut errors = Vec::new();
            let jwt = crate::policy::jwt::Jwt::compile(&cfg, &cx, "auth.jwt", &mut errors);
            assert!(errors.is_empty(), "{errors:?}");
            jwt.expect("the fixture compiles")
        };
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            forged: compile(),
            signed: compile(),
        }
    });
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    if mode % 2 == 1 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return false;
        };
        let got = fx.rt.block_on(fx.forged.verify(token));
        assert!(
            got.is_err(),
            "a token not signed with the secret verified: {token:?}"
        );
        return false;
    }
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (head, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(head),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(sig) = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    ) else {
        return false;
    };
    let token = format!("{signing_input}.{sig}");
    let Ok(got) = fx.rt.block_on(fx.signed.verify(&token)) else {
        return false;
    };
    let head: Value = serde_json::from_slice(head).expect("a verified token's header is JSON");
    assert_eq!(head.get("alg"), Some(&Value::from("HS256")), "{head}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let number = |name: &str| got.get(name).and_then(Value::as_f64);
    // The default leeway is 60 s; one more for the clock moving during the check.
    let exp = number("exp").expect("a verified token has exp");
    assert!(exp >= now - 61.0, "expired token verified: {got:?}");
    if let Some(nbf) = number("nbf") {
        assert!(nbf <= now + 61.0, "token not yet valid verified: {got:?}");
    }
    assert_eq!(got.get("iss"), Some(&Value::from("https://issuer.example")));
    let aud_ok = match got.get("aud") {
        Some(Value::String(s)) => s == "api",
        Some(Value::Array(a)) => a.iter().any(|v| v == "api"),
        _ => false,
    };
    assert!(aud_ok, "audience: {got:?}");
    let scope_ok = ["scope", "scp"].iter().any(|c| match got.get(*c) {
        Some(Value::String(s)) => s.split_whitespace().any(|s| s == "read"),
        Some(Value::Array(a)) => a.iter().any(|v| v == "read"),
        _ => false,
    });
    assert!(scope_ok, "scope: {got:?}");
    let tenant_ok = match got.get("tenant") {
        Some(Value::String(s)) => s == "acme",
        Some(Value::Array(a)) => a.iter().any(|v| v == "acme"),
        _ => false,
    };
    assert!(tenant_ok, "required claim: {got:?}");
    for (_, value) in fx.signed.forward_headers(&got) {
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|b| b.is_ascii_control() && *b != b'\t')
        );
    }
    let _ = fx.signed.consumer(got);
    true
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed seed (and every input a fuzz run found, kept as `regression-*`) runs
    /// through its target's checks with the tests, not only when fuzzing.
    #[test]
    fn every_seed_passes_its_target() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 11] = [
            ("config", super::config),
            ("h1_request", super::h1_request),
            ("h1_response", super::h1_response),
            ("chunked", super::chunked),
            ("path", super::path),
            ("small_grammars", super::small_grammars),
            ("aggregate_template", super::aggregate_template),
            ("route_match", super::route_match),
            ("vary", super::vary),
            ("jwt", |d| {
                super::jwt(d);
            }),
            ("request_path", super::request_path),
        ];
        let mut ran = 0;
        for (name, target) in targets {
            let dir = corpus.join(name);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                target(&data);
                ran += 1;
            }
        }
        assert!(ran >= 30, "only {ran} seeds");
        // What the upstream found in the last requests it was sent.
        std::thread::sleep(std::time::Duration::from_millis(100));
        super::e2e::check_upstream();
    }

    /// The JWT seeds named `valid*` verify (so the claim checks after verification run).
    #[test]
    fn the_valid_jwt_seeds_verify() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jwt");
        for name in ["valid", "valid_arrays"] {
            let data = std::fs::read(dir.join(name)).unwrap();
            assert!(super::jwt(&data), "{name} did not verify");
        }
        // An `iss` list holding the issuer is not the issuer (RFC 7519 4.1.1); the library
        // takes it, and this target's check would have failed on it (found in review).
        for name in ["alg_none", "regression-array-iss"] {
            let data = std::fs::read(dir.join(name)).unwrap();
            assert!(!super::jwt(&data), "{name} verified");
        }
    }
}

/// The request path end to end: raw bytes from a client, on a real TCP connection, into a
/// gateway running in this process, in front of an upstream running in this process (hyper's
/// server, which refuses what it cannot parse). The gateway answers or closes within a bound,
/// whatever the bytes; what it sends back is HTTP/1.1 (or HTTP/2, to a client that opened
/// with the preface); it never answers 500; and what reaches the upstream is a request hyper
/// parses, in origin form, with one `Host`, no hop-by-hop header, and no dot segment in its
/// path, even percent-encoded.
///
/// The gateway's config routes by template (with a rewrite), by prefix (with `strip_prefix`
/// and header policies), caches one route, rate-limits one, aggregates two calls on one and
/// answers one itself, and writes a JSON access log (to `/dev/null`); see `E2E_CONFIG`.
pub fn request_path(data: &[u8]) {
    use std::io::{Read, Write};
    let e2e = e2e::fixture();
    let mut conn = e2e::connect(e2e.gateway);
    // The client may be cut off before it has written everything (a refused head): fine.
    let _ = conn.write_all(data);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = std::time::Instant::now() + e2e::ANSWER_WITHIN;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            // The SIGPIPE handler's signal may land on this thread.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "the gateway neither answered nor closed within {:?} ({e}); it sent {} bytes",
                e2e::ANSWER_WITHIN,
                got.len()
            ),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway kept the connection open past {:?}",
            e2e::ANSWER_WITHIN
        );
    }
    e2e::check_upstream();
    // (Empty lines before a request line are skipped, RFC 9112 2.2, so before the preface too.)
    let skip = data
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let opening = &data[skip..];
    if got.is_empty() || opening.starts_with(b"PRI * HTTP/2.0") {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&got) {
        Ok(_) => {
            assert_eq!(
                resp.version,
                Some(1),
                "not an HTTP/1.1 answer: {:?}",
                e2e::show(&got)
            );
            assert_ne!(resp.code, Some(500), "500: {:?}", e2e::show(&got));
        }
        Err(e) => panic!("the answer does not parse ({e}): {:?}", e2e::show(&got)),
    }
}

mod e2e {
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    /// How long a client may wait for the whole answer and the close: the config's head and
    /// idle timeouts are 2 s, upstream answers are immediate.
    pub const ANSWER_WITHIN: Duration = Duration::from_secs(8);

    pub struct Fixture {
        pub gateway: std::net::SocketAddr,
        _rt: tokio::runtime::Runtime,
        _control: std::sync::Arc<crate::control::Control>,
    }

    /// What the upstream found wrong in a request it was sent.
    static VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn violation(v: String) {
        VIOLATIONS.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }

    pub fn check_upstream() {
        let v = std::mem::take(&mut *VIOLATIONS.lock().unwrap_or_else(|e| e.into_inner()));
        assert!(v.is_empty(), "the upstream was sent: {v:?}");
    }

    pub fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(&b[..b.len().min(2048)]).into_owned()
    }

    /// A connection to the gateway that closes with a reset once read: a fuzz run opens
    /// millions, and TIME_WAIT would use up the ephemeral ports.
    pub fn connect(addr: std::net::SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the gateway does not accept connections: {e}"));
        let s = socket2::Socket::from(s);
        let _ = s.set_linger(Some(Duration::ZERO));
        let _ = s.set_read_timeout(Some(ANSWER_WITHIN));
        s.into()
    }

    const E2E_CONFIG: &str = r#"
listen: "127.0.0.1:0"
access_log: { format: json, path: /dev/null }
server:
  request_header_timeout: 2s
  idle_timeout: 2s
  max_header_size: 16KiB
  max_body_size: 64KiB
upstreams:
  app:
    targets: ["http://UPSTREAM"]
    timeouts: { connect: 1s, response: 3s }
routes:
  - name: item
    match: { path: "/items/{id}", methods: [GET, HEAD] }
    upstream: app
    rewrite: "/v1/items/{id}"
    cache: { ttl: 30s }
    headers: { request: { set: { x-route: item } } }
  - name: api
    match: { path_prefix: /api }
    upstream: app
    strip_prefix: true
    rate_limit: { key: client_ip, limit: 1000000/s, burst: 1000 }
    headers:
      request: { set: { x-route: api }, remove: [x-secret] }
      response: { remove: [server] }
  - name: files
    match: { path: "/files/{*rest}" }
    upstream: app
    headers: { request: { set: { x-route: files } } }
  - name: agg
    match: { path: "/agg/{id}", methods: [GET] }
    timeout: 3s
    aggregate:
      a: { upstream: app, path: "/a/{id}" }
      b: { upstream: app, path: "/b?id={id}&q={query.q}", required: false }
  - name: ping
    match: { path: /ping }
    respond: { status: 200, body: pong }
  - name: rest
    match: { path_prefix: / }
    upstream: app
    headers: { request: { set: { x-route: rest } } }
"#;

    pub fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(start)
    }

    fn start() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (gateway, control) = rt.block_on(async {
            // A fuzz target has no Rust `main` to ignore SIGPIPE: a write to a connection the
            // peer reset would end the process. A handler (never read) keeps it alive.
            let pipe = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
                .expect("a SIGPIPE handler");
            std::mem::forget(pipe);
            let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("an upstream port");
            let up_addr = upstream.local_addr().expect("its address");
            tokio::spawn(serve_upstream(upstream));
            let text = E2E_CONFIG.replace("UPSTREAM", &up_addr.to_string());
            let cfg = crate::config::parse_str(&text, &|_| None).expect("the fixture's config");
            let state = std::sync::Arc::new(crate::state::State::default());
            let runtime = crate::compile::compile(&cfg, &state).expect("it compiles");
            let control = crate::start(runtime, text, None, state)
                .await
                .expect("the gateway starts");
            let gateway = *control
                .proxy_addrs()
                .await
                .first()
                .expect("the gateway listens");
            (gateway, control)
        });
        Fixture {
            gateway,
            _rt: rt,
            _control: control,
        }
    }

    async fn serve_upstream(listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
                let io = hyper_util::rt::TokioIo::new(Recorded {
                    inner: stream,
                    seen: seen.clone(),
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .max_headers(4096)
                    .serve_connection(io, hyper::service::service_fn(answer))
                    .with_upgrades()
                    .await;
                if let Err(e) = served
                    && (e.is_parse() || e.is_parse_too_large())
                {
                    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    violation(format!(
                        "a request hyper cannot parse: {e}; the last bytes read: {:?}",
                        String::from_utf8_lossy(&seen)
                    ));
                }
            });
        }
    }

    /// The upstream's side of a connection, keeping the last bytes it read (for the report).
    struct Recorded {
        inner: tokio::net::TcpStream,
        seen: std::sync::Arc<Mutex<Vec<u8>>>,
    }

    impl tokio::io::AsyncRead for Recorded {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.extend_from_slice(&buf.filled()[before..]);
            let over = seen.len().saturating_sub(4096);
            seen.drain(..over);
            polled
        }
    }

    impl tokio::io::AsyncWrite for Recorded {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    async fn answer(
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        check_request(&parts);
        let len = body.collect().await.map_or(0, |b| b.to_bytes().len());
        let text = format!(r#"{{"path":{:?},"body":{len}}}"#, parts.uri.path());
        let resp = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CACHE_CONTROL, "max-age=5")
            .body(http_body_util::Full::new(bytes::Bytes::from(text)));
        Ok(resp.unwrap_or_default())
    }

    fn check_request(p: &http::request::Parts) {
        let mut bad = Vec::new();
        let path = p.uri.path();
        if p.uri.scheme().is_some() || p.uri.authority().is_some() || !path.starts_with('/') {
            bad.push(format!("a target not in origin form: {}", p.uri));
        }
        let hosts = p.headers.get_all(http::header::HOST).iter().count();
        if hosts != 1 {
            bad.push(format!("{hosts} Host headers"));
        }
        for h in ["keep-alive", "proxy-connection", "trailer"] {
            if p.headers.contains_key(h) {
                bad.push(format!("the header {h}"));
            }
        }
        // Every proxied route sets `x-route` (replacing a client's); the `api` route removes
        // `x-secret`. (An aggregation's calls carry neither.)
        let route: Vec<_> = p.headers.get_all("x-route").iter().collect();
        if route.len() > 1 {
            bad.push(format!("x-route {route:?}"));
        }
        if route.first().is_some_and(|r| *r == "api") && p.headers.contains_key("x-secret") {
            bad.push("x-secret on the api route".into());
        }
        for te in p.headers.get_all(http::header::TE) {
            if te.as_bytes() != b"trailers" {
                bad.push(format!("TE: {te:?}"));
            }
        }
        // An upgrade (WebSocket) goes upstream with its `Upgrade` and `Connection: upgrade`;
        // no other header a `Connection` names does.
        let upgrade = p.headers.contains_key(http::header::UPGRADE);
        let mut says_upgrade = false;
        for v in p.headers.get_all(http::header::CONNECTION) {
            for token in v.to_str().unwrap_or("?").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("upgrade") && upgrade {
                    says_upgrade = true;
                } else if !token.eq_ignore_ascii_case("close")
                    && !token.eq_ignore_ascii_case("keep-alive")
                {
                    bad.push(format!("Connection: {token}"));
                }
            }
        }
        if upgrade && !says_upgrade {
            bad.push("Upgrade without Connection: upgrade".into());
        }
        let decoded = |s: &str| s.replace("%2e", ".").replace("%2E", ".");
        if path
            .split('/')
            .skip(1)
            .any(|s| matches!(decoded(s).as_str(), "." | ".."))
        {
            bad.push(format!("a dot segment in {path:?}"));
        }
        if !bad.is_empty() {
            violation(format!("{} {}: {}", p.method, p.uri, bad.join("; ")));
        }
    }
}

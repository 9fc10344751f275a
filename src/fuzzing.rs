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
    }
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

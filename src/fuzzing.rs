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

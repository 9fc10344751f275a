//! The gateway's own HTTP/1.1 client codec, for requests to upstreams: the request head is
//! written from the request's parts into a buffer the connection keeps, the response head is
//! parsed with `httparse` from the connection's read buffer, and the body is framed by
//! Content-Length, chunked coding or the connection's close (RFC 9112 6).
//!
//! It replaces hyper's client connection on the proxy path: no dispatch channel between the
//! request and the connection, no second task, and buffers that stay with the pooled
//! connection instead of a fresh read buffer per response. hyper still speaks HTTP/2 and runs
//! the health checks. The codec is strict where two readings of a message could differ: a
//! response with both Content-Length and Transfer-Encoding, a transfer coding other than
//! `chunked`, or Content-Length values that disagree is refused (see [`framing`]).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

/// Most fields a response head may carry (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Largest response head read before the response is refused.
pub const MAX_HEAD: usize = 128 * 1024;
/// Largest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// Nothing follows the head.
    None,
    Length(u64),
    Chunked,
}

/// Writes the request head (`METHOD /path HTTP/1.1`, the fields, the framing field the body
/// needs) into `out`, and says how the body follows. The rules are hyper's: a body already
/// ended sends nothing; a Content-Length the request carries is kept; else a known size is
/// sent as Content-Length, and an unknown one chunked (GET, HEAD and CONNECT: no body).
pub fn encode_head<B: http_body::Body>(req: &Request<B>, out: &mut Vec<u8>) -> ReqFraming {
    let method = req.method();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    // `path()` is `/` for an empty path (an absolute form such as `http://h?x=1`), except in
    // an origin-form `Uri` made from such a target's path: `http://h#f` leaves a
    // `PathAndQuery` that shows `/` but holds nothing, and the `Uri` built from it has the
    // path `` (found by fuzzing; an empty request target is unparseable upstream).
    let path = req.uri().path();
    out.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    if let Some(q) = req.uri().query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let body = req.body();
    let h = req.headers();
    let declared = content_length(h);
    let framing = if body.is_end_stream() {
        ReqFraming::None
    } else if let Some(n) = declared {
        ReqFraming::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        ReqFraming::Length(n)
    } else if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        ReqFraming::None
    } else {
        ReqFraming::Chunked
    };
    for (name, value) in h {
        // The framing fields are the codec's: written below from `framing`.
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH
                && (declared.is_none() || framing == ReqFraming::Chunked))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::Length(n) if declared.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// One valid Content-Length (all values the same decimal number), if the message has one.
/// Shared by both codecs.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let n = decimal(v.as_bytes())?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// A Content-Length value: one or more ASCII digits, within 64 bits.
pub fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The chunk-size line of one chunk of `len` bytes (`len` > 0).
pub fn chunk_header(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// The last chunk and the trailer section.
pub fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let mut out = Vec::with_capacity(5);
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        for (name, value) in t {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespFraming {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: RespFraming,
    /// The connection may carry another request after this response's body.
    pub keep_alive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head from the upstream: {0}")]
    Parse(httparse::Error),
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("{0}")]
    Framing(&'static str),
}

/// Parses a response head at the start of `buf`. `Ok(None)`: more bytes are needed. On
/// success the head's bytes are taken out of `buf`. Interim (1xx) responses other than 101 are
/// returned too; the caller skips them.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Parse(e)),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| HeadError::Framing("invalid status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    // The head is copied once into a buffer of its own size, which the field values share
    // (one allocation, not one per field); `buf` keeps its allocation for the next response.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let (mut close, mut keep) = (false, false);
    for f in resp.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| HeadError::Framing("invalid field name in the upstream's response"))?;
        let at = (f.value.as_ptr() as usize).saturating_sub(base);
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + f.value.len()))
            .map_err(|_| HeadError::Framing("invalid field value in the upstream's response"))?;
        if name == header::CONNECTION {
            for t in f.value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    buf.advance(len);
    let mut keep_alive = if version == Version::HTTP_11 {
        !close
    } else {
        keep && !close
    };
    let framing = if status.is_informational()
        || *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        RespFraming::Empty
    } else {
        match framing(&mut headers).map_err(HeadError::Framing)? {
            Some(Found::Chunked) => RespFraming::Chunked,
            Some(Found::Length(n)) => RespFraming::Length(n),
            None => {
                keep_alive = false;
                RespFraming::Close
            }
        }
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

pub enum Found {
    Chunked,
    Length(u64),
}

/// Reads a response's framing fields, refusing those whose body length could be read two ways
/// (RFC 9112 6.3): both Content-Length and Transfer-Encoding, a transfer coding other than
/// `chunked` (its bytes would reach the client without the coding that gives them meaning), or
/// Content-Length lines that disagree or are not a number. Identical repeated Content-Length
/// values are folded into one. Used for HTTP/2 answers as well.
pub fn framing(h: &mut HeaderMap) -> Result<Option<Found>, &'static str> {
    let mut te = h.get_all(header::TRANSFER_ENCODING).iter();
    let has_te = match te.next() {
        Some(v) if te.next().is_none() && v.as_bytes().eq_ignore_ascii_case(b"chunked") => true,
        Some(_) => return Err("upstream response has a transfer coding other than chunked"),
        None => false,
    };
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = cl.next() else {
        return Ok(has_te.then_some(Found::Chunked));
    };
    if has_te {
        return Err("upstream response has both Content-Length and Transfer-Encoding");
    }
    let n = decimal(first.as_bytes()).ok_or("upstream response has an invalid Content-Length")?;
    let mut repeated = false;
    for v in cl {
        if v != first {
            return Err("upstream response has conflicting Content-Length values");
        }
        repeated = true;
    }
    if repeated {
        let one = first.clone();
        h.insert(header::CONTENT_LENGTH, one);
    }
    Ok(Some(Found::Length(n)))
}

/// Where a chunked body's decoder is, and how many extension bytes it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    at: At,
    /// Chunk-extension bytes over the whole body (capped at [`MAX_EXTENSIONS`]).
    ext: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left, then CRLF.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    Done,
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            at: At::Size,
            ext: 0,
        }
    }
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

/// Chunk-extension bytes allowed over one body (hyper's limit): extensions carry nothing the
/// gateway uses, and without a cap a body of a few data bytes could take megabytes of them.
const MAX_EXTENSIONS: usize = 16 * 1024;

/// What the chunked decoder found in the buffer.
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section (the body has ended).
    Trailers(HeaderMap),
    /// The body has ended, with no trailers.
    End,
    /// More bytes are needed.
    More,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body from the upstream: {0}")]
pub struct ChunkError(&'static str);

/// Body bytes out of `buf`: small pieces are copied (the connection keeps its buffer whole for
/// the next response), large ones split off without a copy.
pub fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= 4096 {
        let b = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        b
    } else {
        buf.split_to(n).freeze()
    }
}

/// Decodes what `buf` holds of a chunked body (RFC 9112 7.1), strictly: hex sizes without
/// sign or whitespace, CRLF line ends, a CRLF after each chunk's data.
pub fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
    loop {
        match state.at {
            At::Done => return Ok(Decoded::End),
            At::Size => {
                let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                    return Ok(Decoded::More);
                };
                let line = &buf[..end];
                let digits = line
                    .iter()
                    .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                    .unwrap_or(line.len());
                let hex = &line[..digits];
                if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(ChunkError("invalid chunk size"));
                }
                let rest = &line[digits..];
                if !rest.is_empty() {
                    // `*(BWS ";" BWS name [BWS "=" BWS value])`: no CR (a front end that
                    // ends lines at a bare CR would frame the body differently), no controls.
                    if rest.trim_ascii_start().first() != Some(&b';')
                        || rest
                            .iter()
                            .any(|b| (b.is_ascii_control() && *b != b'\t') || *b == 0x7f)
                    {
                        return Err(ChunkError("invalid chunk extension"));
                    }
                    state.ext += rest.len();
                    if state.ext > MAX_EXTENSIONS {
                        return Err(ChunkError("too many chunk-extension bytes"));
                    }
                }
                let size = hex.iter().fold(0u64, |n, b| {
                    n * 16 + u64::from((*b as char).to_digit(16).unwrap_or(0))
                });
                buf.advance(end + 2);
                state.at = if size == 0 {
                    At::Trailers
                } else {
                    At::Data(size)
                };
            }
            At::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = take(buf, n);
                let left = left - n as u64;
                state.at = if left == 0 {
                    At::DataEnd
                } else {
                    At::Data(left)
                };
                return Ok(Decoded::Data(data));
            }
            At::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ChunkError("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                state.at = At::Size;
            }
            At::Trailers => {
                if buf.len() < 2 {
                    if buf.first() == Some(&b'\n') {
                        return Err(ChunkError("bare LF after the last chunk"));
                    }
                    return Ok(Decoded::More);
                }
                if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    state.at = At::Done;
                    return Ok(Decoded::End);
                }
                // A trailer section: header fields up to the empty line, CRLF line ends only
                // (with a bare LF, where the section ends would depend on the reader).
                let Some(end) = find(buf, b"\r\n\r\n", MAX_TRAILERS)? else {
                    if has_bare_lf(buf) {
                        return Err(ChunkError("bare LF in the trailer section"));
                    }
                    return Ok(Decoded::More);
                };
                let section = &buf[..end + 4];
                if has_bare_lf(section) {
                    return Err(ChunkError("bare LF in the trailer section"));
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = httparse::parse_headers(section, &mut fields)
                    .map_err(|_| ChunkError("invalid trailer section"))?;
                let httparse::Status::Complete((used, fields)) = parsed else {
                    return Err(ChunkError("invalid trailer section"));
                };
                if used != section.len() {
                    return Err(ChunkError("invalid trailer section"));
                }
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields {
                    let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) else {
                        return Err(ChunkError("invalid trailer field"));
                    };
                    trailers.append(n, v);
                }
                buf.advance(end + 4);
                state.at = At::Done;
                return Ok(Decoded::Trailers(trailers));
            }
        }
    }
}

/// An LF not preceded by CR.
fn has_bare_lf(b: &[u8]) -> bool {
    b.iter()
        .enumerate()
        .any(|(i, c)| *c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

/// The position of the first CRLF in `buf`; an error if there is none within `max` bytes, or
/// a bare LF comes first.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, ChunkError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(0) => Err(ChunkError("bare LF")),
        Some(i) if buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(ChunkError("bare LF")),
        None if buf.len() > max => Err(ChunkError("line too long")),
        None => Ok(None),
    }
}

fn find(buf: &[u8], needle: &[u8], max: usize) -> Result<Option<usize>, ChunkError> {
    match buf.windows(needle.len()).position(|w| w == needle) {
        Some(i) => Ok(Some(i)),
        None if buf.len() > max => Err(ChunkError("trailer section too large")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// Appends `data` to `out` as one chunk.
    fn put_chunk(out: &mut BytesMut, data: &[u8]) {
        out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.put_slice(data);
        out.put_slice(b"\r\n");
    }

    /// A body of unknown size.
    struct Unsized;

    impl http_body::Body for Unsized {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(None)
        }
    }

    fn head(raw: &str, method: Method) -> Result<Option<Head>, HeadError> {
        parse_head(&mut BytesMut::from(raw.as_bytes()), &method)
    }

    #[test]
    fn request_heads_follow_the_bodys_framing() {
        let mut out = Vec::new();
        let req = Request::get("/a?b=1")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        assert_eq!(encode_head(&req, &mut out), ReqFraming::None);
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n");

        out.clear();
        let req = Request::post("/p")
            .header("host", "x")
            .header("transfer-encoding", "gzip")
            .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
            .expect("request");
        assert_eq!(encode_head(&req, &mut out), ReqFraming::Length(5));
        assert_eq!(
            out,
            b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n".as_slice()
        );

        out.clear();
        let req = Request::put("/p")
            .header("content-length", "x")
            .body(Unsized)
            .expect("request");
        assert_eq!(encode_head(&req, &mut out), ReqFraming::Chunked);
        assert_eq!(
            out,
            b"PUT /p HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".as_slice()
        );
    }

    #[test]
    fn response_framing_is_read_one_way_only() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::GET)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.framing, RespFraming::Length(5));
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.framing, RespFraming::Empty);
        let h = head("HTTP/1.0 200 OK\r\n\r\n", Method::GET)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.framing, RespFraming::Close);
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        )
        .expect("ok")
        .expect("complete");
        assert!(!h.keep_alive);
        assert_eq!(h.headers.get_all("content-length").iter().count(), 1);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        ] {
            assert!(head(bad, Method::GET).is_err(), "{bad:?}");
        }
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn chunked_bodies_decode_strictly() {
        let mut buf = BytesMut::new();
        put_chunk(&mut buf, b"hello");
        buf.extend_from_slice(b"3;ext=1\r\n wo\r\n0\r\nx-t: 1\r\n\r\nNEXT");
        let mut st = Chunked::new();
        let mut body = Vec::new();
        let mut trailers = None;
        loop {
            match decode_chunked(&mut st, &mut buf).expect("valid") {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => {
                    trailers = Some(t);
                    break;
                }
                Decoded::End => break,
                Decoded::More => panic!("complete input"),
            }
        }
        assert_eq!(body, b"hello wo");
        assert_eq!(trailers.expect("trailers").get("x-t").expect("x-t"), "1");
        assert_eq!(&buf[..], b"NEXT");

        for bad in [
            "5\nhello\r\n",
            "-5\r\n",
            "5\r\nhelloXX",
            "zz\r\n",
            "5 x\r\n",
        ] {
            let mut buf = BytesMut::from(bad.as_bytes());
            let mut st = Chunked::new();
            let mut failed = false;
            for _ in 0..4 {
                match decode_chunked(&mut st, &mut buf) {
                    Err(_) => {
                        failed = true;
                        break;
                    }
                    Ok(Decoded::More) => break,
                    Ok(_) => {}
                }
            }
            assert!(failed, "{bad:?}");
        }
    }
}

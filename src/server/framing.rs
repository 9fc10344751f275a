//! A second, independent reading of HTTP/1.1 request framing on each client connection, to
//! refuse requests that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper handles such a request as RFC 9112 6.3 allows (Transfer-Encoding wins, the
//! Content-Length header is dropped, the connection closes afterwards), which leaves no trace in
//! the parsed request. A gateway must not forward a message that two parsers could frame
//! differently, so this wrapper watches the bytes hyper reads, finds each request head (skipping
//! bodies by their framing), and records the ordinal of the first ambiguous request. The
//! connection's service compares it with its own request count and answers 400.
//!
//! The same reader times request heads (see [`Watched`]).
//!
//! The scanner never changes the bytes. It follows heads ended by CRLF or by bare LF (which
//! hyper accepts, RFC 9112 2.2), and keeps watching after a CONNECT or an `Upgrade:` request,
//! which the gateway refuses or which an upstream may decline: only a `101 Switching Protocols`
//! actually sent (reported by the service through [`FramingWatch::upgraded`]) ends HTTP on the
//! connection. If it meets something it cannot follow (h2c, a head hyper will refuse anyway),
//! it stops watching that connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const MAX_HEADERS: usize = 128;

/// Shared between the connection's reader (scanner) and its service.
#[derive(Default)]
pub struct FramingWatch {
    /// 1-based ordinal of the first request with both Content-Length and Transfer-Encoding,
    /// or a Content-Length that could be read two ways.
    ambiguous_at: AtomicU64,
    /// Requests the service has seen.
    served: AtomicU64,
    /// The connection switched protocols (a 101 was sent): its bytes are no longer HTTP.
    upgraded: std::sync::atomic::AtomicBool,
}

impl FramingWatch {
    /// Called once per request by the service; true if this request must be refused.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.ambiguous_at.load(Ordering::Acquire) == n
    }

    /// Called by the service when it answers `101 Switching Protocols`.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }
}

enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Chunked body: reading a chunk-size line.
    ChunkSize {
        size: u64,
        digits: bool,
        in_ext: bool,
    },
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkCrlf(u8),
    /// After the last chunk: trailer lines until an empty one. `line_len` of the current line.
    Trailers {
        line_len: usize,
    },
    /// Not watching any more.
    Off,
}

pub struct Scanner {
    state: State,
    /// The connection speaks HTTP/2 (its preface was seen).
    h2: bool,
    head: Vec<u8>,
    max_head: usize,
    requests: u64,
    watch: Arc<FramingWatch>,
}

impl Scanner {
    pub fn new(watch: Arc<FramingWatch>, max_head: usize) -> Scanner {
        Scanner {
            state: State::Head,
            h2: false,
            head: Vec::new(),
            max_head,
            requests: 0,
            watch,
        }
    }

    /// Feeds bytes just read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head => {
                    // Skip the empty lines RFC 9112 2.2 lets a client send between requests.
                    if self.head.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let before = self.head.len();
                    let search_from = before.saturating_sub(3);
                    self.head.extend_from_slice(data);
                    match find_head_end(&self.head[search_from..]) {
                        Some(end) => {
                            let head_len = search_from + end;
                            let consumed = head_len - before;
                            self.on_head(head_len);
                            data = &data[consumed..];
                            self.head.clear();
                        }
                        None => {
                            if self.head.len() > self.max_head {
                                self.state = State::Off;
                            }
                            return;
                        }
                    }
                }
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize {
                    size,
                    digits,
                    in_ext,
                } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' => {
                            if !*digits {
                                self.state = State::Off;
                            } else if *size == 0 {
                                self.state = State::Trailers { line_len: 0 };
                            } else {
                                self.state = State::ChunkData(*size);
                            }
                        }
                        _ if *in_ext => {}
                        b';' | b' ' | b'\t' => *in_ext = true,
                        b'\r' => {}
                        _ => match (b as char).to_digit(16) {
                            Some(d) if *size < (1 << 56) => {
                                *size = *size * 16 + u64::from(d);
                                *digits = true;
                            }
                            _ => self.state = State::Off,
                        },
                    }
                }
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::ChunkCrlf(0);
                    }
                }
                State::ChunkCrlf(seen) => {
                    let b = data[0];
                    data = &data[1..];
                    match (b, *seen) {
                        (b'\r', 0) => *seen = 1,
                        (b'\n', _) => {
                            self.state = State::ChunkSize {
                                size: 0,
                                digits: false,
                                in_ext: false,
                            }
                        }
                        _ => self.state = State::Off,
                    }
                }
                State::Trailers { line_len } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' if *line_len == 0 => self.state = State::Head,
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
            }
        }
    }

    /// A request head is awaited (the first on this connection) or partly received.
    fn in_head(&self) -> bool {
        matches!(self.state, State::Head) && (self.requests == 0 || !self.head.is_empty())
    }

    fn on_head(&mut self, len: usize) {
        if self.head.starts_with(b"PRI * HTTP/2.0") {
            self.h2 = true;
            self.state = State::Off;
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.head[..len]) {
            Ok(httparse::Status::Complete(_)) => {}
            // hyper will refuse what httparse refuses; stop watching.
            _ => {
                self.state = State::Off;
                return;
            }
        }
        self.requests += 1;
        let mut cl: Option<u64> = None;
        // A length read two ways: lines or list elements that disagree, or not a number.
        let mut cl_bad = false;
        let mut te = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                // As hyper reads it: a comma list of equal numbers is that number.
                for part in h.value.split(|&b| b == b',') {
                    let n = std::str::from_utf8(part)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    match (n, cl) {
                        (Some(n), None) => cl = Some(n),
                        (Some(n), Some(c)) if n == c => {}
                        _ => cl_bad = true,
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            }
        }
        if cl_bad || (te && cl.is_some()) {
            // hyper closes the connection after this request: nothing after it matters.
            let _ = self.watch.ambiguous_at.compare_exchange(
                0,
                self.requests,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.state = State::Off;
        } else if te {
            self.state = State::ChunkSize {
                size: 0,
                digits: false,
                in_ext: false,
            };
        } else if let Some(n) = cl.filter(|n| *n > 0) {
            self.state = State::Body(n);
        } else {
            self.state = State::Head;
        }
    }
}

/// The end of a head: an empty line, with CRLF or bare LF line ends (`\n\n`, `\n\r\n`).
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = b[i..].iter().position(|&c| c == b'\n') {
        let at = i + nl;
        match (b.get(at + 1), b.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => i = at + 1,
        }
    }
    None
}

/// The client stream with the scanner reading along. It also enforces the request-head
/// timeout, which hyper cannot tell apart from keep-alive idleness: the clock starts when the
/// connection is accepted (for its first request) or when the first byte of a later request
/// head arrives, and stops when the head is complete. A client that is still sending a head
/// when it runs out gets a read error, and hyper closes the connection.
///
/// It also times writes: a client that accepts no byte of its response for `send_timeout`
/// gets a write error and the connection closes (`server.send_timeout`). Bytes read from an
/// HTTP/1 client count as activity for the idle timeout (see `server::conn`); over HTTP/2 they
/// do not, since pings and settings are not use.
pub struct Watched<S> {
    inner: S,
    scanner: Scanner,
    header_timeout: Duration,
    /// Armed while a head is awaited or in progress; `None` once the first head is done and
    /// no other has started.
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
    send_timeout: Duration,
    /// Armed while a write waits for the client to take bytes.
    send_deadline: Option<Pin<Box<Sleep>>>,
    send_blocked: bool,
    activity: Arc<crate::server::conn::Activity>,
}

impl<S> Watched<S> {
    pub fn new(
        inner: S,
        scanner: Scanner,
        header_timeout: Duration,
        send_timeout: Duration,
        activity: Arc<crate::server::conn::Activity>,
    ) -> Self {
        Watched {
            inner,
            scanner,
            header_timeout,
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
            armed: true,
            send_timeout,
            send_deadline: None,
            send_blocked: false,
            activity,
        }
    }

    /// Gives the first request head `d` instead of the full timeout (what a TLS handshake left
    /// of it).
    pub fn first_head_within(mut self, d: Duration) -> Self {
        self.deadline = Some(Box::pin(tokio::time::sleep(d)));
        self
    }

    /// Arms or disarms the head clock after a read; true if it ran out.
    fn head_clock(&mut self, cx: &mut Context<'_>) -> bool {
        let in_head = self.scanner.in_head();
        if !in_head {
            self.armed = false;
            return false;
        }
        if !self.armed {
            let at = tokio::time::Instant::now() + self.header_timeout;
            match &mut self.deadline {
                Some(d) => d.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        match &mut self.deadline {
            Some(d) => d.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// After a write attempt: `blocked` if it could not proceed. Returns the error to give
    /// hyper once the client has taken nothing for `send_timeout`.
    fn send_clock(&mut self, cx: &mut Context<'_>, blocked: bool) -> Option<io::Error> {
        if !blocked {
            self.send_blocked = false;
            return None;
        }
        if !self.send_blocked {
            self.send_blocked = true;
            let at = tokio::time::Instant::now() + self.send_timeout;
            match &mut self.send_deadline {
                Some(d) => d.as_mut().reset(at),
                None => self.send_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let expired = self
            .send_deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        expired.then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "client accepted no response bytes within send_timeout",
            )
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.scanner.h2 && buf.filled().len() > before {
            this.activity.touch();
        }
        if !matches!(this.scanner.state, State::Off)
            && this.scanner.watch.upgraded.load(Ordering::Acquire)
        {
            this.scanner.state = State::Off;
        }
        if matches!(this.scanner.state, State::Off) {
            return r;
        }
        if let Poll::Ready(Ok(())) = r {
            this.scanner.feed(&buf.filled()[before..]);
        }
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            // End of stream: nothing to time.
            return r;
        }
        if this.head_clock(cx) {
            // A client that sent part of a head (slowloris) is told apart from one that sent
            // nothing at all (a preconnect, a load balancer's TCP check): only the first is
            // logged as a refused request.
            let msg = if this.scanner.head.is_empty() {
                "no request sent within request_header_timeout"
            } else {
                "request head incomplete within request_header_timeout"
            };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, msg)));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        match this.send_clock(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        match this.send_clock(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        match this.send_clock(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (u64, u64) {
        let w = Arc::new(FramingWatch::default());
        let mut s = Scanner::new(w.clone(), 64 * 1024);
        for c in chunks {
            s.feed(c);
        }
        (s.requests, w.ambiguous_at.load(Ordering::Relaxed))
    }

    #[test]
    fn follows_keep_alive_requests_and_bodies() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /last HTTP/1.1\r\n\r\n";
        assert_eq!(scan(&[stream]), (4, 0));
        // The same bytes split at every position give the same answer.
        for i in 1..stream.len() {
            assert_eq!(scan(&[&stream[..i], &stream[i..]]), (4, 0), "split at {i}");
        }
    }

    #[test]
    fn flags_the_ambiguous_request_by_ordinal() {
        let stream = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG";
        assert_eq!(scan(&[stream]), (2, 2));
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(scan(&[te_first]), (1, 1));
    }

    #[test]
    fn body_text_that_looks_like_headers_is_not_a_head() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 66\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(&[stream]), (2, 0));
    }

    #[test]
    fn reads_content_length_lists_as_hyper_does() {
        // `5, 5` is 5: the body is skipped, and the smuggle after it is still seen.
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\na\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[stream]), (2, 2));
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"]),
            (1, 1)
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"]),
            (1, 1)
        );
    }

    #[test]
    fn follows_bare_lf_heads() {
        let stream = b"GET /1 HTTP/1.1\nHost: x\n\nPOST /2 HTTP/1.1\nContent-Length: 3\n\r\nabcPOST /3 HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n\n";
        for i in 1..stream.len() {
            assert_eq!(scan(&[&stream[..i], &stream[i..]]), (3, 3), "split at {i}");
        }
    }

    #[test]
    fn keeps_watching_after_connect_and_upgrade_requests() {
        let stream = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nGET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[stream]), (3, 3));
    }

    #[test]
    fn stops_on_h2c_and_garbage() {
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), (0, 0));
        assert_eq!(scan(&[b"\x00\x01garbage\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]), (0, 0));
    }
}

//! The gateway's own HTTP/1.1 server side: request heads parsed once, strictly, with
//! `httparse`; bodies read by Content-Length or chunked coding; responses written with one
//! vectored write for the head and the first body bytes; keep-alive, pipelining,
//! `Expect: 100-continue`, WebSocket upgrades and the connection's timers. hyper serves HTTP/2
//! (prior knowledge, found here by its preface, or ALPN `h2`).
//!
//! Why not hyper here: it builds a second copy of every head for its own dispatch, keeps an
//! 8 KiB read buffer and an 8 KiB write buffer for the life of each connection, and needed a
//! second reader ([`super::framing`]) to see requests whose framing could be read two ways.
//! Here an idle keep-alive connection holds no buffer at all: one is taken from a per-thread
//! pool when bytes arrive and given back when the connection goes quiet.
//!
//! Refused outright (400, then the connection closes): a malformed request line or field, a
//! Transfer-Encoding other than a single `chunked` (or any in HTTP/1.0), Content-Length values
//! that are not one decimal number, a malformed chunked body. A head larger than
//! `server.max_header_size` (or with more than 100 fields) gets 431. A request with both
//! Content-Length and Transfer-Encoding is answered 400 by the gateway (with its request id),
//! and the connection closes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::body::{BoxError, ClientBody};
use crate::context::{ConnInfo, PendingUpgrade, Prefixed, Upgraded};
use crate::gateway::{self, Gateway};
use crate::observe::access_log::LoggedBody;
use crate::upstream::http1::{
    Chunked, Decoded, chunk_header, content_length, decimal, decode_chunked, last_chunk, take,
};

use super::conn::Activity;

/// A client connection's stream: plain TCP (which can say when it is readable, so an idle
/// connection reads into no buffer) or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would find bytes (or the end). Streams that cannot tell say ready.
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ClientIo for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {}

/// A request body's two ends: the body the gateway reads and the connection's pump.
fn body_channel(state: PumpState, expect_continue: bool) -> (Option<Pump>, ClientBody) {
    let shared = Arc::new(Mutex::new(BodyShared {
        slot: None,
        done: false,
        wanted: false,
        waker: None,
        conn_waker: None,
    }));
    let left = match state {
        PumpState::Length(n) => Some(n),
        _ => None,
    };
    let body = RequestBody {
        shared: shared.clone(),
        left,
        ended: false,
    };
    let pump = Pump {
        shared,
        state,
        continue_owed: expect_continue,
        continue_sent: 0,
    };
    (Some(pump), ClientBody::H1(Box::pin(body)))
}

/// Size of a pooled read buffer, and of each read into it.
const BUF: usize = 8 * 1024;
/// Largest read while a body of known size streams in.
const MAX_READ: usize = 64 * 1024;
/// Most fields a request head may carry (hyper's default); more gets 431.
const MAX_HEADERS: usize = 100;
/// Bytes of following (pipelined) requests read ahead while one is handled.
const READ_AHEAD: usize = 64 * 1024;
/// Body bytes queued for the client before the body is asked for more.
const MAX_QUEUED: usize = 64 * 1024;
/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a closing connection keeps reading (and dropping) what the client still sends,
/// so the kernel does not answer it with a reset that destroys the last response.
const LINGER: Duration = Duration::from_secs(2);

/// The connection's limits, from `server:` at accept time.
pub struct Settings {
    pub max_head: usize,
    pub head_timeout: Duration,
    /// What is left of `head_timeout` for the first request (after a TLS handshake).
    pub first_head: Duration,
    pub send_timeout: Duration,
}

/// How a connection served here ended.
pub enum End<S> {
    Closed,
    /// It opened with the HTTP/2 preface: hyper takes it, with the bytes read so far.
    H2 {
        io: S,
        read: Bytes,
    },
}

/// How a request body is framed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head, parsed and checked.
struct Head {
    req: Request<()>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    /// Both Content-Length and Transfer-Encoding: answered 400 by the gateway.
    ambiguous: bool,
    upgrade: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
}

/// Why a head was refused.
#[derive(Debug)]
enum Refused {
    TooLarge,
    Malformed,
}

/// Serves HTTP/1.1 on `io` until the connection ends.
pub async fn serve<S: ClientIo>(
    io: S,
    gw: &Arc<Gateway>,
    info: &Arc<ConnInfo>,
    s: &Settings,
    activity: &Arc<Activity>,
) -> End<S> {
    let mut c = Conn {
        io,
        rbuf: None,
        head_timer: None,
        send_timer: None,
        send_timeout: s.send_timeout,
        activity: activity.clone(),
        requests: 0,
        half_closed: false,
    };
    loop {
        let budget = if c.requests == 0 {
            s.first_head
        } else {
            s.head_timeout
        };
        let head = match c.read_head(s.max_head, budget).await {
            Ok(Got::Head(h)) => h,
            Ok(Got::Eof) => return End::Closed,
            Ok(Got::H2) => {
                let read = c.rbuf.take().map(BytesMut::freeze).unwrap_or_default();
                return End::H2 { io: c.io, read };
            }
            Err(ReadError::Refused(r)) => {
                let (status, reason) = match r {
                    Refused::TooLarge => (
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "head_too_large",
                    ),
                    Refused::Malformed => (StatusCode::BAD_REQUEST, "parse_error"),
                };
                super::report_rejected(gw, info.client_addr, Some(status), reason);
                c.refuse(status).await;
                return End::Closed;
            }
            Err(ReadError::Timeout { had_bytes }) => {
                // A partial head is logged as nginx logs it (408, though the client is sent
                // nothing); a client that sent nothing is only counted.
                let (status, reason) = if had_bytes {
                    (Some(StatusCode::REQUEST_TIMEOUT), "head_timeout")
                } else {
                    (None, "no_request")
                };
                super::report_rejected(gw, info.client_addr, status, reason);
                return End::Closed;
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!(client = %info.client_addr, error = %e, "client connection ended with an error");
                return End::Closed;
            }
        };
        c.requests += 1;
        // Boxed (one allocation per request): an idle connection's task then holds none of a
        // request's state, only what waiting for the next head needs.
        match Box::pin(c.exchange(head, gw, info)).await {
            Next::KeepAlive => {}
            Next::Close => {
                c.linger().await;
                return End::Closed;
            }
            Next::CloseNow => {
                // A FIN (and a TLS close_notify) after the response, without the drain.
                let _ = tokio::time::timeout(c.send_timeout, c.io.shutdown()).await;
                return End::Closed;
            }
            Next::Gone => return End::Closed,
            Next::Upgrade(tx) => {
                let read = c.rbuf.take().map(BytesMut::freeze).unwrap_or_default();
                let _ = tx.send(Box::new(Prefixed::new(read, c.io)));
                return End::Closed;
            }
        }
    }
}

// A head is made once per request and moved once: boxing it would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Got {
    Head(Head),
    Eof,
    H2,
}

enum ReadError {
    Refused(Refused),
    Timeout { had_bytes: bool },
    Io(io::Error),
}

/// What to do after a response.
enum Next {
    KeepAlive,
    /// Close after lingering (the client may still be sending).
    Close,
    /// Close at once: the client asked to, and everything it sent was read.
    CloseNow,
    /// Already closed.
    Gone,
    /// A 101 went out: the stream goes to the splice.
    Upgrade(tokio::sync::oneshot::Sender<Upgraded>),
}

struct Conn<S> {
    io: S,
    /// `None` while the connection is idle with nothing buffered.
    rbuf: Option<BytesMut>,
    head_timer: Option<Pin<Box<Sleep>>>,
    send_timer: Option<Pin<Box<Sleep>>>,
    send_timeout: Duration,
    activity: Arc<Activity>,
    requests: u64,
    /// The client sent its end after pipelined requests: those are answered, then it closes.
    half_closed: bool,
}

/// The request body as the gateway reads it: filled by the connection (same task) when asked.
struct BodyShared {
    /// A frame (or error) waiting to be taken.
    slot: Option<Result<Frame<Bytes>, BoxError>>,
    /// The body has ended (after `slot` is taken).
    done: bool,
    /// The reader is waiting for the next frame.
    wanted: bool,
    /// The reader's task.
    waker: Option<Waker>,
    /// The connection's task, woken when the reader asks for more: the reader may run in
    /// another task (an HTTP/2 upstream's connection sends the body from its own).
    conn_waker: Option<Waker>,
}

struct RequestBody {
    shared: Arc<Mutex<BodyShared>>,
    /// Content-Length bytes not yet handed over (`None`: chunked).
    left: Option<u64>,
    ended: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(&'static str);

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut sh = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(item) = sh.slot.take() {
            if let (Ok(f), Some(left)) = (&item, this.left.as_mut())
                && let Some(d) = f.data_ref()
            {
                *left = left.saturating_sub(d.len() as u64);
            }
            // The connection marks the last frame (the last Content-Length bytes, trailers,
            // an error) as it delivers it.
            this.ended = sh.done;
            return Poll::Ready(Some(item));
        }
        if sh.done {
            this.ended = true;
            return Poll::Ready(None);
        }
        sh.wanted = true;
        match &sh.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => sh.waker = Some(cx.waker().clone()),
        }
        if let Some(w) = sh.conn_waker.take()
            && !w.will_wake(cx.waker())
        {
            w.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The connection's side of a request body.
struct Pump {
    shared: Arc<Mutex<BodyShared>>,
    state: PumpState,
    /// `Expect: 100-continue` not yet answered.
    continue_owed: bool,
    /// Bytes of `100 Continue` written so far.
    continue_sent: usize,
}

#[derive(PartialEq, Eq)]
enum PumpState {
    Length(u64),
    Chunked(Chunked),
    Done,
    /// Malformed or cut off: the connection cannot be read on.
    Broken,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Pump {
    /// Hands the reader its next frame (`None`: only the end) and wakes it; `done`: nothing
    /// follows.
    fn deliver(&self, item: Option<Result<Frame<Bytes>, BoxError>>, done: bool) {
        let mut sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        sh.slot = item;
        sh.done = done;
        sh.wanted = false;
        if let Some(w) = sh.waker.take() {
            w.wake();
        }
    }
}

impl<S: ClientIo> Conn<S> {
    /// Waits for the next request head. An idle connection holds no buffer; the head timer
    /// runs from the accept for the first request, and from the first byte for later ones.
    async fn read_head(&mut self, max_head: usize, budget: Duration) -> Result<Got, ReadError> {
        let first = self.requests == 0;
        let mut armed = false;
        let mut padded = false;
        let mut noted = false;
        if first {
            self.arm_head_timer(budget);
            armed = true;
        }
        poll_fn(|cx| {
            loop {
                if let Some(buf) = self.rbuf.as_mut() {
                    // Empty lines before a request are allowed (RFC 9112 2.2).
                    let skip = buf
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    buf.advance(skip);
                    // They start the head's clock like any other byte: a client feeding
                    // only empty lines is timed out as a slow head.
                    padded |= skip > 0;
                    // A first request that is (so far) the HTTP/2 preface waits for all of it.
                    let n = buf.len().min(H2_PREFACE.len());
                    let h2 = first && !buf.is_empty() && buf[..n] == H2_PREFACE[..n];
                    if h2 && n == H2_PREFACE.len() {
                        return Poll::Ready(Ok(Got::H2));
                    }
                    if !h2
                        && !buf.is_empty()
                        && let Some(h) = parse(buf, max_head).map_err(ReadError::Refused)?
                    {
                        return Poll::Ready(Ok(Got::Head(h)));
                    }
                }
                let has_bytes = self.rbuf.as_ref().is_some_and(|b| !b.is_empty()) || padded;
                if !has_bytes && self.activity.winding_down() {
                    return Poll::Ready(Ok(Got::Eof));
                }
                if has_bytes && !armed {
                    self.arm_head_timer(budget);
                    armed = true;
                }
                // A later head's first byte (not padding: a CRLF after a body is not a head
                // on its way) starts its clock for `Connections::reclaim_one`.
                if !first && !noted && self.rbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                    self.activity.head_started();
                    noted = true;
                }
                let read = if self.rbuf.is_none() {
                    match self.io.poll_readable(cx) {
                        Poll::Ready(Ok(())) => self.read_more(cx, BUF),
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                } else {
                    self.read_more(cx, BUF)
                };
                match read {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(if has_bytes {
                            Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))
                        } else {
                            Ok(Got::Eof)
                        });
                    }
                    Poll::Ready(Ok(_)) => {
                        self.activity.touch();
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Io(e))),
                    Poll::Pending => {
                        self.release_idle_buffer();
                        if armed
                            && let Some(t) = self.head_timer.as_mut()
                            && t.as_mut().poll(cx).is_ready()
                        {
                            return Poll::Ready(Err(ReadError::Timeout {
                                had_bytes: has_bytes,
                            }));
                        }
                        return Poll::Pending;
                    }
                }
            }
        })
        .await
    }

    fn arm_head_timer(&mut self, d: Duration) {
        let at = tokio::time::Instant::now() + d;
        match self.head_timer.as_mut() {
            Some(t) => t.as_mut().reset(at),
            None => self.head_timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// An idle connection gives its empty buffer back to the pool.
    fn release_idle_buffer(&mut self) {
        if self.rbuf.as_ref().is_some_and(BytesMut::is_empty)
            && let Some(b) = self.rbuf.take()
        {
            crate::bufpool::put_read(b);
        }
    }

    /// Reads once into the read buffer (taking one from the pool if there is none).
    fn read_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        use tokio::io::AsyncReadExt;
        let buf = self.rbuf.get_or_insert_with(crate::bufpool::read_buf);
        buf.reserve(want);
        let mut read = std::pin::pin!(self.io.read_buf(buf));
        read.as_mut().poll(cx)
    }

    /// Writes a bare refusal and closes.
    async fn refuse(&mut self, status: StatusCode) {
        let mut out = Vec::with_capacity(160);
        status_line(&mut out, status);
        out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
        put_date(&mut out);
        out.extend_from_slice(b"\r\n");
        let _ = tokio::time::timeout(self.send_timeout, self.io.write_all(&out)).await;
        self.linger().await;
    }

    /// Closes the writing side, then reads and drops what the client still sends for a
    /// moment, so the last response is not destroyed by a reset.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(self.send_timeout, self.io.shutdown()).await;
        let drain = async {
            // On the heap: an array here would make every connection's task 4 KiB larger.
            let mut sink = vec![0u8; 4096];
            let mut total = 0usize;
            loop {
                match tokio::io::AsyncReadExt::read(&mut self.io, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n;
                        if total > 1 << 20 {
                            break;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// One request: hands it to the gateway, feeds it the body as it asks, writes the response.
    async fn exchange(&mut self, head: Head, gw: &Arc<Gateway>, info: &Arc<ConnInfo>) -> Next {
        let in_flight = self.activity.start();
        let Head {
            req,
            framing,
            mut keep_alive,
            expect_continue,
            ambiguous,
            upgrade,
            trailers,
        } = head;
        let method = req.method().clone();
        let version = req.version();
        // The client itself ends the connection after this request (`Connection: close`, or
        // HTTP/1.0 without keep-alive): it sends nothing more.
        let client_closes = !keep_alive && !ambiguous;
        let (mut pump, body) = match framing {
            _ if ambiguous => (None, ClientBody::Empty),
            Framing::None | Framing::Length(0) => (None, ClientBody::Empty),
            Framing::Length(n) => body_channel(PumpState::Length(n), expect_continue),
            Framing::Chunked => body_channel(PumpState::Chunked(Chunked::new()), expect_continue),
        };
        if ambiguous {
            keep_alive = false;
        }
        let mut req = req.map(|()| body);
        let mut upgrade_to = None;
        if upgrade {
            let (tx, rx) = tokio::sync::oneshot::channel();
            req.extensions_mut().insert(PendingUpgrade::new(rx));
            upgrade_to = Some(tx);
        }
        let resp = {
            let mut handled = std::pin::pin!(gateway::handle(gw, req, info, ambiguous));
            poll_fn(|cx| {
                if let Poll::Ready(r) = handled.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if let Some(p) = pump.as_mut() {
                    self.poll_pump(cx, p);
                }
                if self.poll_client_gone(cx, &pump) {
                    // The request is dropped: it is logged as the client's close (499).
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        let Some(resp) = resp else {
            tracing::debug!(client = %info.client_addr, "client closed the connection before the response");
            return Next::Gone;
        };
        // A body the gateway did not read whole leaves the connection unreadable.
        if pump.as_ref().is_some_and(|p| p.state != PumpState::Done) {
            keep_alive = false;
        }
        if self.activity.winding_down() {
            keep_alive = false;
        }
        let (parts, body) = resp.into_parts();
        if parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        let written = self
            .write_response(
                parts,
                body,
                &method,
                version,
                &mut keep_alive,
                trailers,
                &mut pump,
            )
            .await;
        drop(in_flight);
        if let Err(e) = written {
            if e.kind() == io::ErrorKind::TimedOut {
                gw.metrics.rejected("send_timeout");
            }
            tracing::debug!(client = %info.client_addr, error = %e, "response not delivered");
            return Next::Gone;
        }
        if switching {
            return match upgrade_to {
                Some(tx) => Next::Upgrade(tx),
                None => Next::Close,
            };
        }
        if keep_alive {
            return Next::KeepAlive;
        }
        // Lingering is for a client that may still be sending (a body not read whole, bytes
        // past the request, a close it did not ask for): its data arriving after the close
        // would reset the connection and destroy the response. A client that asked to close
        // and whose request was read whole is closed at once, as nginx does; the drain cost
        // a wake-up, a timer and a read per connection.
        let read_whole = pump.as_ref().is_none_or(|p| p.state == PumpState::Done)
            && self.rbuf.as_ref().is_none_or(|b| b.is_empty());
        if client_closes && read_whole {
            Next::CloseNow
        } else {
            Next::Close
        }
    }

    /// Feeds the request body: when the gateway waits for a frame, decodes the next one from
    /// the buffer (reading more if needed) and wakes it.
    fn poll_pump(&mut self, cx: &mut Context<'_>, p: &mut Pump) {
        loop {
            if matches!(p.state, PumpState::Done | PumpState::Broken) {
                return;
            }
            {
                let mut sh = p.shared.lock().unwrap_or_else(|e| e.into_inner());
                // Whatever happens below, the reader's next ask wakes this task.
                match &sh.conn_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => sh.conn_waker = Some(cx.waker().clone()),
                }
                if !sh.wanted || sh.slot.is_some() {
                    return;
                }
            }
            if p.continue_owed {
                // Only if the client has not started sending anyway.
                if p.continue_sent == 0 && self.rbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                    p.continue_owed = false;
                } else {
                    match Pin::new(&mut self.io).poll_write(cx, &CONTINUE[p.continue_sent..]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            p.continue_sent += n;
                            if p.continue_sent == CONTINUE.len() {
                                p.continue_owed = false;
                            }
                            continue;
                        }
                        Poll::Ready(_) => {
                            self.pump_fail(p, "the client connection failed");
                            return;
                        }
                        Poll::Pending => return,
                    }
                }
            }
            let buf = self.rbuf.get_or_insert_with(crate::bufpool::read_buf);
            let item = match &mut p.state {
                PumpState::Length(left) if !buf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let data = take(buf, n);
                    *left -= n as u64;
                    let last = *left == 0;
                    if last {
                        p.state = PumpState::Done;
                    }
                    Some((Ok(Frame::data(data)), last))
                }
                PumpState::Length(_) => None,
                PumpState::Chunked(st) => match decode_chunked(st, buf) {
                    Ok(Decoded::Data(d)) => Some((Ok(Frame::data(d)), false)),
                    Ok(Decoded::Trailers(t)) => {
                        p.state = PumpState::Done;
                        Some((Ok(Frame::trailers(t)), true))
                    }
                    Ok(Decoded::End) => {
                        p.state = PumpState::Done;
                        p.deliver(None, true);
                        return;
                    }
                    Ok(Decoded::More) => None,
                    Err(_) => {
                        self.pump_fail(p, "malformed chunked request body");
                        return;
                    }
                },
                PumpState::Done | PumpState::Broken => return,
            };
            if let Some((item, last)) = item {
                p.deliver(Some(item), last);
                return;
            }
            let want = match p.state {
                PumpState::Length(left) => usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .clamp(BUF, MAX_READ),
                _ => BUF,
            };
            match self.read_more(cx, want) {
                Poll::Ready(Ok(0)) => {
                    self.pump_fail(
                        p,
                        "the client closed the connection before the end of the request body",
                    );
                    return;
                }
                Poll::Ready(Ok(_)) => self.activity.touch(),
                Poll::Ready(Err(_)) => {
                    self.pump_fail(p, "reading the request body failed");
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    fn pump_fail(&mut self, p: &mut Pump, why: &'static str) {
        p.state = PumpState::Broken;
        p.deliver(Some(Err(Box::new(BodyError(why)))), true);
    }

    /// Writes the response head and body. The head and the first body bytes go out in one
    /// write when the body has them at once.
    #[allow(clippy::too_many_arguments)]
    async fn write_response(
        &mut self,
        parts: http::response::Parts,
        body: LoggedBody,
        method: &Method,
        version: Version,
        keep_alive: &mut bool,
        trailers_ok: bool,
        pump: &mut Option<Pump>,
    ) -> io::Result<()> {
        // Once the final response goes out, a `100 Continue` would land inside it: a client
        // still waiting for one sends its body anyway or not at all (then the connection
        // closes after the response, its body unread).
        if let Some(p) = pump.as_mut() {
            p.continue_owed = false;
        }
        let status = parts.status;
        let bodiless = method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = content_length(&parts.headers);
        let framing = if bodiless {
            Out::None
        } else if let Some(n) = declared {
            Out::Length(n)
        } else if let Some(n) = body.size_hint().exact() {
            Out::Length(n)
        } else if version == Version::HTTP_11 {
            Out::Chunked
        } else {
            *keep_alive = false;
            Out::Close
        };
        let mut head = crate::bufpool::write_buf();
        status_line(&mut head, status);
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        for (name, value) in &parts.headers {
            if name == header::TRANSFER_ENCODING
                || (name == header::CONNECTION && !switching)
                || (name == header::CONTENT_LENGTH
                    && (declared.is_none()
                        || status.is_informational()
                        || status == StatusCode::NO_CONTENT))
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match framing {
            Out::Length(n) if declared.is_none() => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(n.to_string().as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            Out::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            _ => {}
        }
        if !switching {
            if !*keep_alive {
                head.extend_from_slice(b"connection: close\r\n");
            } else if version == Version::HTTP_10 {
                head.extend_from_slice(b"connection: keep-alive\r\n");
            }
        }
        if !parts.headers.contains_key(header::DATE) {
            put_date(&mut head);
        }
        head.extend_from_slice(b"\r\n");

        let mut w = Writing {
            head,
            head_sent: 0,
            queue: VecDeque::new(),
            queued: 0,
            framing,
            body_done: false,
            trailers_ok,
        };
        // The body is dropped as soon as it has ended, before its last bytes are written: its
        // access-log line is then recorded before the client can send its next request.
        let mut body = Some(body);
        if matches!(framing, Out::None) || body.as_ref().is_some_and(|b| b.is_end_stream()) {
            w.finish(None);
            body = None;
        }
        let r = poll_fn(|cx| {
            loop {
                let mut progress = false;
                if let Some(b) = body.as_mut().filter(|_| w.queued < MAX_QUEUED) {
                    match Pin::new(&mut *b).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            progress = true;
                            let end = b.is_end_stream();
                            if let Err(e) = w.take_frame(frame, end) {
                                return Poll::Ready(Err(e));
                            }
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(io::Error::other(e)));
                        }
                        Poll::Ready(None) => {
                            progress = true;
                            if let Out::Length(n) = w.framing
                                && n != 0
                            {
                                return Poll::Ready(Err(io::Error::other(
                                    "response body shorter than its Content-Length",
                                )));
                            }
                            w.finish(None);
                        }
                        Poll::Pending => {}
                    }
                }
                if w.body_done {
                    body = None;
                }
                if let Some(p) = pump.as_mut() {
                    self.poll_pump(cx, p);
                }
                if !switching && self.poll_client_gone(cx, pump) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the client closed the connection during the response",
                    )));
                }
                if w.pending_bytes() {
                    match self.poll_write_out(cx, &mut w) {
                        Poll::Ready(Ok(())) => progress = true,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
                if w.body_done && !w.pending_bytes() {
                    return match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(r) => Poll::Ready(r),
                        Poll::Pending => self.send_clock(cx),
                    };
                }
                if !progress {
                    return if w.pending_bytes() {
                        self.send_clock(cx)
                    } else {
                        Poll::Pending
                    };
                }
            }
        })
        .await;
        crate::bufpool::put_write(std::mem::take(&mut w.head));
        r
    }

    /// While no request body is being read: reads ahead (a pipelined request, up to
    /// [`READ_AHEAD`] bytes) and notices the client leaving. True if it left.
    ///
    /// A client that pipelined requests and then closed its sending side (`shutdown(SHUT_WR)`)
    /// is half-closed, not gone: its buffered requests are all answered, then the connection
    /// closes. A close with nothing buffered is the client leaving (the request is dropped and
    /// logged as 499), as nginx and hyper treat it.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>, pump: &Option<Pump>) -> bool {
        if self.half_closed || pump.as_ref().is_some_and(|p| p.state != PumpState::Done) {
            return false;
        }
        loop {
            if self.rbuf.as_ref().is_some_and(|b| b.len() >= READ_AHEAD) {
                return false;
            }
            match self.read_more(cx, BUF) {
                Poll::Ready(Ok(0)) => {
                    if self.rbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                        self.half_closed = true;
                        return false;
                    }
                    return true;
                }
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
    }

    /// Writes what is queued, as far as the client takes it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, w: &mut Writing) -> Poll<io::Result<()>> {
        while w.pending_bytes() {
            let mut slices = [IoSlice::new(&[]); 8];
            let mut k = 0;
            if w.head_sent < w.head.len() {
                slices[0] = IoSlice::new(&w.head[w.head_sent..]);
                k = 1;
            }
            for b in w.queue.iter() {
                if k == slices.len() {
                    break;
                }
                slices[k] = IoSlice::new(b);
                k += 1;
            }
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.send_timer = None;
            self.activity.wrote();
            w.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// A write is blocked: fails once the client has taken nothing for `send_timeout`.
    fn send_clock(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timeout = self.send_timeout;
        let t = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(t.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client accepted no response bytes within send_timeout",
        )))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// A response being written.
struct Writing {
    head: Vec<u8>,
    head_sent: usize,
    queue: VecDeque<Bytes>,
    queued: usize,
    framing: Out,
    body_done: bool,
    trailers_ok: bool,
}

impl Writing {
    fn pending_bytes(&self) -> bool {
        self.head_sent < self.head.len() || !self.queue.is_empty()
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.queue.push_back(b);
    }

    fn advance(&mut self, mut n: usize) {
        if self.head_sent < self.head.len() {
            let h = (self.head.len() - self.head_sent).min(n);
            self.head_sent += h;
            n -= h;
        }
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.queued -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                self.queued -= n;
                n = 0;
            }
        }
    }

    /// Queues a frame of the body; `end`: the body said it has ended with this frame.
    fn take_frame(&mut self, frame: Frame<Bytes>, end: bool) -> io::Result<()> {
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return Ok(());
                }
                match &mut self.framing {
                    Out::Length(left) => {
                        let n = data.len() as u64;
                        if n > *left {
                            return Err(io::Error::other(
                                "response body longer than its Content-Length",
                            ));
                        }
                        *left -= n;
                        self.push(data);
                    }
                    Out::Chunked => {
                        self.push(chunk_header(data.len()));
                        self.push(data);
                        self.push(Bytes::from_static(b"\r\n"));
                    }
                    Out::Close => self.push(data),
                    Out::None => {}
                }
                if end {
                    if let Out::Length(n) = self.framing
                        && n != 0
                    {
                        return Err(io::Error::other(
                            "response body shorter than its Content-Length",
                        ));
                    }
                    self.finish(None);
                }
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok();
                self.finish(trailers.as_ref());
            }
        }
        Ok(())
    }

    /// The body has ended: the last chunk (with trailers the client accepts).
    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        if self.body_done {
            return;
        }
        if matches!(self.framing, Out::Chunked) {
            let t = trailers.filter(|_| self.trailers_ok);
            self.push(last_chunk(t));
        }
        self.body_done = true;
    }
}

/// `HTTP/1.1 200 OK\r\n`.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: ...\r\n`, formatted once a second per thread.
fn put_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            d.0 = secs;
            d.1 = format!("date: {}\r\n", httpdate::fmt_http_date(now)).into_bytes();
        }
        out.extend_from_slice(&d.1);
    });
}

/// Where `part` (a slice of `buf`) starts in `buf`.
fn offset(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}

/// [`parse`] for `crate::fuzzing`: `Some(true)` a head was parsed (and taken from `buf`),
/// `Some(false)` refused, `None` incomplete.
pub(crate) fn parse_for_fuzzing(buf: &mut BytesMut, max_head: usize) -> Option<bool> {
    match parse(buf, max_head) {
        Ok(Some(_)) => Some(true),
        Ok(None) => None,
        Err(_) => Some(false),
    }
}

/// Parses a request head at the start of `buf` (`Ok(None)`: incomplete). The head's bytes
/// are copied out once into a buffer of their own size, which the URI and field values
/// share; `buf` keeps its allocation for the next read.
fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, Refused> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_head {
                Err(Refused::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        Err(_) => return Err(Refused::Malformed),
    };
    if len > max_head {
        return Err(Refused::TooLarge);
    }
    let method =
        Method::from_bytes(r.method.unwrap_or("").as_bytes()).map_err(|_| Refused::Malformed)?;
    let path = r.path.unwrap_or("");
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = Bytes::copy_from_slice(&buf[..len]);
    let at = offset(buf, path.as_bytes());
    let uri =
        Uri::from_maybe_shared(head.slice(at..at + path.len())).map_err(|_| Refused::Malformed)?;
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let (mut close, mut keep, mut upgrade_token) = (false, false, false);
    let (mut expect_continue, mut trailers) = (false, false);
    let mut cl: Option<u64> = None;
    let mut te_fields = 0;
    let mut te_chunked = false;
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Refused::Malformed)?;
        let at = offset(buf, f.value);
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + f.value.len()))
            .map_err(|_| Refused::Malformed)?;
        if name == header::CONTENT_LENGTH {
            let n = decimal(f.value).ok_or(Refused::Malformed)?;
            match cl {
                Some(prev) if prev != n => return Err(Refused::Malformed),
                // Equal repeats fold into one.
                Some(_) => continue,
                None => cl = Some(n),
            }
        } else if name == header::TRANSFER_ENCODING {
            te_fields += 1;
            te_chunked = f.value.eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            for t in f.value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep |= t.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::EXPECT {
            expect_continue = f.value.eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers |= f
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        headers.append(name, value);
    }
    buf.advance(len);
    let framing = if te_fields > 0 {
        // Only `chunked`, once, and never in HTTP/1.0 (RFC 9112 6.1).
        if te_fields > 1 || !te_chunked || version == Version::HTTP_10 {
            return Err(Refused::Malformed);
        }
        Framing::Chunked
    } else {
        match cl {
            Some(n) => Framing::Length(n),
            None => Framing::None,
        }
    };
    let ambiguous = te_fields > 0 && cl.is_some();
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep && !close,
    };
    let upgrade =
        version == Version::HTTP_11 && upgrade_token && headers.contains_key(header::UPGRADE);
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Head {
        req,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
        ambiguous,
        upgrade,
        trailers,
    }))
}

//! HTTP/1.1 keep-alive connections to one target, driven inside the request's own task.
//!
//! A request checks out an idle connection (or opens one), writes its head and body with the
//! gateway's own codec ([`crate::upstream::http1`]), and reads the response head and then the
//! body (see [`UpstreamBody`]) from the connection's own buffer, in the request's task. So no
//! second task, no channel and no task switch sit between the client side and the upstream
//! side (Pingora's model), and the buffers stay with the connection. When the body ends cleanly, the connection
//! goes back to the pool; when it does not (the client left mid-body, an error), it is closed.
//!
//! Idle connections are not polled. A connection the upstream closed is found when it is next
//! checked out (one poll sees the EOF) and dropped. A background sweep closes connections idle
//! for longer than `timeouts.idle`.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::{Got, TargetPool};
use crate::body::Body;
use crate::context::Prefixed;
use crate::error::{BoxError, GatewayError};
use crate::upstream::http1::{self, Chunked, Decoded, ReqFraming, RespFraming};
use crate::upstream::transport::Stream;

/// Idle connections kept per target, at most: enough for bursts, bounded for file descriptors.
const MAX_IDLE_PER_TARGET: usize = 1024;

/// A request body this small, already in memory, is written together with the head.
const INLINE_BODY: usize = 16 * 1024;
/// Interim (1xx) responses taken before one final response: more is a broken or hostile
/// upstream (502).
const MAX_INTERIM: u32 = 32;

/// Bytes asked of the socket per read while a head or a body of unknown size is read; a body
/// of known size is read in pieces of up to [`MAX_READ`].
const READ_CHUNK: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// An HTTP/1.1 connection to a target, with the buffers it keeps between requests.
pub struct PooledConn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
    /// See [`PooledConn::whole_written`].
    whole_written: bool,
    /// The core whose runtime opened the connection, and whose reactor it is registered with
    /// (`scheduler: per_core`; 0 otherwise): see [`crate::context::core`].
    core: u16,
    /// How the current response's body is framed (set by [`PooledConn::send`]).
    framing: RespFraming,
    /// The connection may carry another request once the current response has ended.
    keep_alive: bool,
    /// The rest of a request body still being written while its response streams.
    writing: Option<Box<Writer>>,
    /// The connection's slot under the upstream's `limits.max_connections`, held while it is open.
    _slot: Option<OwnedSemaphorePermit>,
    /// Taken from the idle pool (it has carried a request before): the upstream may have
    /// closed it just as it was taken.
    pub reused: bool,
}

/// Why [`PooledConn::send`] produced no response.
pub enum SendError {
    /// Not a byte of the request was written: it comes back, and may go to another connection.
    NotWritten(Box<Request<Body>>, BoxError),
    /// The request was written and the connection closed before a byte of an answer: on a
    /// reused connection, the upstream's idle close raced the request.
    Incomplete(BoxError),
    /// Anything else: the request may have been processed.
    Failed(BoxError),
}

/// The state of writing one request.
struct Writer {
    /// Bytes of the head (and inline body) written.
    head_sent: usize,
    framing: ReqFraming,
    /// The body still to be read and written.
    body: Option<Body>,
    /// Pieces taken from the body (with their chunk framing) not yet written.
    queue: VecDeque<Bytes>,
    /// Body bytes taken so far, checked against a Content-Length.
    taken: u64,
    done: bool,
    /// Interim (1xx) responses read so far.
    interim: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(&'static str);

impl PooledConn {
    fn new(io: Stream, slot: Option<OwnedSemaphorePermit>) -> PooledConn {
        PooledConn {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            whole_written: false,
            core: crate::context::core(),
            framing: RespFraming::Empty,
            keep_alive: false,
            writing: None,
            _slot: slot,
            reused: false,
        }
    }

    /// Writes `req` and reads until the final response head (interim 1xx answers other than
    /// 101 are skipped). The body is read afterwards through [`UpstreamBody`]. A response that
    /// arrives before the request body was written whole ends the writing, and the connection
    /// is not reused.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<()>, SendError> {
        if self.wbuf.capacity() == 0 {
            self.wbuf = crate::bufpool::write_buf();
        }
        self.wbuf.clear();
        let framing = http1::encode_head(&req, &mut self.wbuf);
        let inline = match (framing, req.body()) {
            (ReqFraming::Length(n), Body::Full(Some(b)))
                if b.len() as u64 == n && b.len() <= INLINE_BODY =>
            {
                self.wbuf.extend_from_slice(b);
                true
            }
            _ => false,
        };
        let method = req.method().clone();
        // The first write decides whether the request can come back untouched.
        let first = poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, &self.wbuf)).await;
        let head_sent = match first {
            Ok(0) => {
                let e = Box::new(std::io::Error::from(std::io::ErrorKind::WriteZero));
                return Err(SendError::NotWritten(Box::new(req), e));
            }
            Ok(n) => n,
            Err(e) => return Err(SendError::NotWritten(Box::new(req), Box::new(e))),
        };
        let body = match framing {
            ReqFraming::None => None,
            _ if inline => None,
            _ => Some(req.into_body()),
        };
        self.whole_written = body.is_none() || matches!(framing, ReqFraming::Length(0));
        self.finish_send(head_sent, framing, body, &method).await
    }

    /// Whether the last request [`send`](Self::send) wrote was in its write buffer whole (no
    /// body to stream after the head), so that [`resend`](Self::resend) can write it again.
    pub fn whole_written(&self) -> bool {
        self.whole_written
    }

    /// The bytes of the last request written, taken out of the connection (for
    /// [`resend`](Self::resend) on another one, when it was [written whole](Self::whole_written)).
    pub fn take_written(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wbuf)
    }

    /// Writes `request` (what [`take_written`](Self::take_written) gave of a connection that
    /// wrote a request whole and got no answer) on this connection, byte for byte: nothing of
    /// the request was kept or is rebuilt.
    pub async fn resend(
        &mut self,
        request: Vec<u8>,
        method: &Method,
    ) -> Result<Response<()>, SendError> {
        crate::bufpool::put_write(std::mem::replace(&mut self.wbuf, request));
        let first = poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, &self.wbuf)).await;
        let head_sent = match first {
            Ok(0) => {
                return Err(SendError::Failed(Box::new(Msg(
                    "the upstream took no bytes",
                ))));
            }
            Ok(n) => n,
            Err(e) => return Err(SendError::Failed(Box::new(e))),
        };
        self.whole_written = true;
        self.finish_send(head_sent, ReqFraming::None, None, method)
            .await
    }

    /// The rest of a send once the first bytes of the write buffer are out: the rest of the
    /// head and the body, and the answer's head.
    async fn finish_send(
        &mut self,
        head_sent: usize,
        framing: ReqFraming,
        body: Option<Body>,
        method: &Method,
    ) -> Result<Response<()>, SendError> {
        let mut w = Writer {
            head_sent,
            framing,
            body,
            queue: VecDeque::new(),
            taken: 0,
            done: false,
            interim: 0,
        };
        let mut answered = false;
        let head = poll_fn(|cx| self.poll_exchange(cx, &mut w, method, &mut answered)).await?;
        self.framing = head.framing;
        self.keep_alive = head.keep_alive;
        // An answer that came before the request body was written whole: a success goes on
        // taking the body as the response streams (full-duplex: an echo, a transcoder); an
        // error stops it (RFC 9112 9.3), and the connection closes after the response.
        self.writing = None;
        if !w.done {
            if head.status.as_u16() < 400 {
                self.writing = Some(Box::new(w));
            } else {
                self.keep_alive = false;
            }
        }
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// Writes what it can of the request and reads what it can of the answer.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut Writer,
        method: &Method,
        answered: &mut bool,
    ) -> Poll<Result<http1::Head, SendError>> {
        let mut failed = None;
        if !w.done {
            match self.poll_write_request(cx, w) {
                Poll::Ready(Ok(())) => w.done = true,
                Poll::Ready(Err(e)) => failed = Some(e),
                Poll::Pending => {}
            }
        }
        let read = self.poll_head(cx, method, answered, &mut w.interim);
        match (read, failed) {
            (Poll::Ready(r), _) => Poll::Ready(r),
            // The request could not be written whole and no answer is there yet.
            (Poll::Pending, Some(e)) => Poll::Ready(Err(SendError::Failed(e))),
            (Poll::Pending, None) => Poll::Pending,
        }
    }

    fn poll_write_request(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut Writer,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            if w.head_sent < self.wbuf.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[w.head_sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(Box::new(std::io::Error::from(
                        std::io::ErrorKind::WriteZero,
                    ))));
                }
                w.head_sent += n;
                continue;
            }
            if !w.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let mut k = 0;
                for b in w.queue.iter().take(slices.len()) {
                    slices[k] = IoSlice::new(b);
                    k += 1;
                }
                let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?;
                if n == 0 {
                    return Poll::Ready(Err(Box::new(std::io::Error::from(
                        std::io::ErrorKind::WriteZero,
                    ))));
                }
                while n > 0 {
                    let Some(front) = w.queue.front_mut() else {
                        break;
                    };
                    if n >= front.len() {
                        n -= front.len();
                        w.queue.pop_front();
                    } else {
                        front.advance(n);
                        n = 0;
                    }
                }
                continue;
            }
            let Some(body) = w.body.as_mut() else {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            };
            let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
            // hyper's rule, which the client body relies on: a body that says it has ended is
            // not polled again.
            let ended = frame.is_none() || body.is_end_stream();
            let mut trailers = None;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        w.taken += data.len() as u64;
                        match w.framing {
                            ReqFraming::Length(n) if w.taken > n => {
                                return Poll::Ready(Err(Box::new(Msg(
                                    "request body longer than its Content-Length",
                                ))));
                            }
                            ReqFraming::Chunked => {
                                w.queue.push_back(http1::chunk_header(data.len()));
                                w.queue.push_back(data);
                                w.queue.push_back(Bytes::from_static(b"\r\n"));
                            }
                            _ => w.queue.push_back(data),
                        }
                    }
                    Ok(_) => {}
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {}
            }
            if ended || trailers.is_some() {
                w.body = None;
                match w.framing {
                    ReqFraming::Length(n) if w.taken != n => {
                        return Poll::Ready(Err(Box::new(Msg(
                            "request body shorter than its Content-Length",
                        ))));
                    }
                    // Trailers are not sent on: hyper sent only those the request declared
                    // in `Trailer` (hop-by-hop, removed), and a trailer may carry fields
                    // (Host, framing, X-Forwarded-For) no policy has seen.
                    ReqFraming::Chunked => w.queue.push_back(http1::last_chunk(None)),
                    _ => {}
                }
            }
        }
    }

    /// Reads until a final response head is complete.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        answered: &mut bool,
        interim: &mut u32,
    ) -> Poll<Result<http1::Head, SendError>> {
        loop {
            if !self.buf.is_empty() {
                *answered = true;
                match http1::parse_head(&mut self.buf, method) {
                    Ok(Some(head)) => {
                        if head.status.is_informational()
                            && head.status != http::StatusCode::SWITCHING_PROTOCOLS
                        {
                            // A few are normal (100, 102, 103); an endless run of them is an
                            // upstream that never answers, and would keep this loop busy.
                            *interim += 1;
                            if *interim > MAX_INTERIM {
                                return Poll::Ready(Err(SendError::Failed(Box::new(Msg(
                                    "the upstream sent more than 32 interim (1xx) responses",
                                )))));
                            }
                            continue;
                        }
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(SendError::Failed(Box::new(e)))),
                }
            }
            match ready!(poll_read_more(&mut self.io, &mut self.buf, READ_CHUNK, cx)) {
                Ok(0) if !*answered => {
                    return Poll::Ready(Err(SendError::Incomplete(Box::new(Msg(
                        "the upstream closed the connection before answering",
                    )))));
                }
                Ok(0) => {
                    return Poll::Ready(Err(SendError::Failed(Box::new(Msg(
                        "the upstream closed the connection in the middle of a response head",
                    )))));
                }
                Ok(_) => {}
                Err(e)
                    if !*answered
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Poll::Ready(Err(SendError::Incomplete(Box::new(e))));
                }
                Err(e) => return Poll::Ready(Err(SendError::Failed(Box::new(e)))),
            }
        }
    }

    /// After a `101 Switching Protocols`: the connection's stream, with the bytes already read
    /// past the head in front of it.
    pub fn into_upgraded(self) -> Prefixed<Stream> {
        Prefixed::new(self.buf.freeze(), self.io)
    }

    /// Polls once without a real waker: true if the upstream closed the connection or sent
    /// bytes nobody asked for.
    fn is_dead(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut one = [0u8; 1];
        let mut rb = ReadBuf::new(&mut one);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }
}

/// Reads once into the spare capacity of `buf` (reserving `want` bytes first).
fn poll_read_more(
    io: &mut Stream,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    use tokio::io::AsyncReadExt;
    if buf.capacity() == 0 {
        *buf = crate::bufpool::read_buf();
    }
    buf.reserve(want);
    let mut read = std::pin::pin!(io.read_buf(buf));
    read.as_mut().poll(cx)
}

pub(super) struct Idle {
    conn: PooledConn,
    since: Instant,
}

/// How far back in an idle list a core looks for a connection of its own before it takes
/// another core's (which works, but its readiness events arrive through the other core).
const SAME_CORE_LOOKBACK: usize = 64;

impl TargetPool {
    /// A live idle connection (most recently used first), or a new one, under the upstream's
    /// connection cap (see [`TargetPool::acquire`]).
    pub async fn checkout(&self) -> Result<PooledConn, GatewayError> {
        match self.acquire(|| self.take_idle()).await? {
            Got::Existing(conn) => Ok(conn),
            Got::Slot(slot) => self.connect_with(slot).await,
        }
    }

    fn take_idle(&self) -> Option<PooledConn> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let core = crate::context::core();
                let from = idle.len().saturating_sub(SAME_CORE_LOOKBACK);
                match idle[from..].iter().rposition(|i| i.conn.core == core) {
                    Some(at) => Some(idle.remove(from + at)),
                    None => idle.pop(),
                }
            };
            let Idle {
                mut conn, since, ..
            } = candidate?;
            if since.elapsed() < self.idle_timeout && !conn.is_dead() {
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// A new connection, never a pooled one (taking a slot under the cap, if there is one).
    pub async fn connect(&self) -> Result<PooledConn, GatewayError> {
        let slot = self.slot_now()?;
        self.connect_with(slot).await
    }

    async fn connect_with(
        &self,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<PooledConn, GatewayError> {
        let io = self
            .endpoint
            .connect(self.connect_timeout)
            .await
            .map_err(GatewayError::UpstreamConnect)?;
        Ok(PooledConn::new(io.into_inner(), slot))
    }

    /// Returns a connection whose last response ended cleanly.
    fn put(&self, mut conn: PooledConn) {
        conn.reused = false;
        // An idle connection holds no buffer (see `crate::bufpool`).
        crate::bufpool::put_read(std::mem::take(&mut conn.buf));
        crate::bufpool::put_write(std::mem::take(&mut conn.wbuf));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        drop(idle);
        self.notify_returned();
    }

    /// Closes idle connections that expired or that the upstream closed.
    pub(super) fn sweep_h1(&self) {
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, drop): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.since.elapsed() < self.idle_timeout);
            *idle = keep;
            drop
        };
        // Closed outside the lock.
        drop(expired);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|i| !i.conn.is_dead());
    }
}

/// A response body from an upstream, read from its connection as it is polled (no task of
/// its own). At a clean end a keep-alive connection returns to its pool.
pub struct UpstreamBody {
    conn: Option<PooledConn>,
    pool: Arc<TargetPool>,
    state: State,
    /// `timeouts.read`: the longest the body may pause.
    pause: super::PauseLimit,
    /// The request counts as in flight to its target until its response body is done.
    _in_flight: crate::upstream::state::InFlight,
}

enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

impl UpstreamBody {
    pub fn new(
        conn: PooledConn,
        pool: Arc<TargetPool>,
        in_flight: crate::upstream::state::InFlight,
        read_timeout: std::time::Duration,
    ) -> Self {
        let state = match conn.framing {
            RespFraming::Empty | RespFraming::Length(0) => State::Done,
            RespFraming::Length(n) => State::Length(n),
            RespFraming::Chunked => State::Chunked(Chunked::new()),
            RespFraming::Close => State::Close,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            pool,
            state,
            pause: super::PauseLimit::new(read_timeout),
            _in_flight: in_flight,
        };
        if matches!(body.state, State::Done) {
            body.release();
        }
        body
    }

    /// The body has ended: the connection goes back to the pool if it can carry another
    /// request (keep-alive, and no bytes beyond this response).
    fn release(&mut self) {
        self.state = State::Done;
        if let Some(c) = self.conn.take()
            && c.keep_alive
            && c.writing.is_none()
            && c.buf.is_empty()
        {
            self.pool.put(c);
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(Msg(why)))))
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(mut w) = conn.writing.take() {
                match conn.poll_write_request(cx, &mut w) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        // The request body failed (the client's, most likely): the answer to
                        // it cannot be trusted to complete.
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => conn.writing = Some(w),
                }
            }
            let want = match &mut this.state {
                State::Done => {
                    this.release();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = http1::take(&mut conn.buf, n);
                        *left -= n as u64;
                        if *left == 0 {
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .clamp(READ_CHUNK, MAX_READ)
                }
                State::Chunked(st) => {
                    match http1::decode_chunked(st, &mut conn.buf) {
                        Ok(Decoded::Data(d)) => {
                            return Poll::Ready(Some(Ok(Frame::data(d))));
                        }
                        Ok(Decoded::Trailers(t)) => {
                            this.release();
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        Ok(Decoded::End) => {
                            this.release();
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::More) => {}
                        Err(e) => {
                            this.state = State::Done;
                            this.conn = None;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                    READ_CHUNK
                }
                State::Close => {
                    if !conn.buf.is_empty() {
                        let n = conn.buf.len();
                        let data = http1::take(&mut conn.buf, n);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    READ_CHUNK
                }
            };
            let read = match poll_read_more(&mut conn.io, &mut conn.buf, want, cx) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    // The body paused: an upstream that stops mid-body cannot hold the client
                    // forever.
                    if this.pause.expired(cx) {
                        return this.fail(
                            "the upstream paused the response body for longer than timeouts.read",
                        );
                    }
                    return Poll::Pending;
                }
            };
            match read {
                Ok(0) => {
                    if matches!(this.state, State::Close) {
                        // The end of a close-delimited body: the connection is not reused.
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(
                        "the upstream closed the connection before the end of the response body",
                    );
                }
                Ok(_) => this.pause.moved(),
                Err(e) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            State::Chunked(_) | State::Close => SizeHint::default(),
        }
    }
}

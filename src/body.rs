//! The body type of the request path. An enum rather than a boxed trait object, so the common
//! cases (a streamed hyper body, a small buffer) cost no allocation. Bodies stream frame by frame
//! between client and upstream; the only one collected whole is a small request body kept for a
//! configured retry (`gateway::Replay`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// The error type of every body (the same type as `error::BoxError`; named here so the body
/// type depends on nothing else in the crate).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body streamed from elsewhere: an upstream's response, which drives its pooled connection.
pub type Streamed = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError> + Send>>;

/// A client's request body as the connection hands it over: none, read by the gateway's own
/// HTTP/1.1 server, or by hyper (HTTP/2).
pub enum ClientBody {
    Empty,
    H1(Streamed),
    Hyper(Incoming),
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => b.as_mut().poll_frame(cx),
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// Per-request counters shared by the request body and the access log.
#[derive(Debug, Default)]
pub struct Tally {
    pub bytes_in: AtomicU64,
    /// Set when the client sent more than the route's `max_body_size` (a chunked body cannot be
    /// refused before it is read).
    pub body_too_large: AtomicBool,
    /// Set when reading the client's body failed (malformed, or it went away mid-upload).
    pub client_body_error: AtomicBool,
    /// Set when the client paused its body for longer than `server.request_body_timeout`.
    pub client_body_timeout: AtomicBool,
    /// The body is waiting for the client's next bytes (not for the upstream to take them).
    pub awaiting_client: AtomicBool,
    /// Notified once the whole body has been read (so, handed to the upstream connection).
    pub body_done: tokio::sync::Notify,
}

#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyTimeout(pub std::time::Duration);

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body, counted, capped at `limit` bytes, and timed: a pause longer
    /// than `idle` ends it with [`BodyTimeout`].
    Request {
        inner: ClientBody,
        limit: u64,
        seen: u64,
        tally: Arc<Tally>,
        idle: std::time::Duration,
        /// Bytes arrived since the timer was last armed: re-arm it at the next wait. So the
        /// deadline is `idle` after the first wait following the last bytes, with no clock
        /// read per frame.
        moved: bool,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// A response streamed from a pooled upstream connection, which it drives.
    Upstream(Streamed),
}

impl Body {
    pub fn empty() -> Body {
        Body::Empty
    }

    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Full(Some(b.into()))
    }

    pub fn request(
        inner: ClientBody,
        limit: Option<u64>,
        idle: std::time::Duration,
        tally: Arc<Tally>,
    ) -> Body {
        Body::Request {
            inner,
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            tally,
            idle,
            moved: false,
            timer: None,
        }
    }

    /// The request's tally if this is a client body still to be read: the upstream response
    /// timeout starts only once it has been sent whole.
    pub fn pending_client_body(&self) -> Option<&Arc<Tally>> {
        match self {
            Body::Request { inner, tally, .. } if !http_body::Body::is_end_stream(inner) => {
                Some(tally)
            }
            _ => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(data) => Poll::Ready(
                data.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Request {
                inner,
                limit,
                seen,
                tally,
                idle,
                moved,
                timer,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    tally.awaiting_client.store(false, Ordering::Relaxed);
                    *moved = true;
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        *seen += n;
                        tally.bytes_in.fetch_add(n, Ordering::Relaxed);
                        if *seen > *limit {
                            tally.body_too_large.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                        }
                    }
                    // hyper stops polling once the body says it has ended (the last byte of a
                    // Content-Length body, or trailers), so `None` may never be asked for.
                    if frame.is_trailers() || http_body::Body::is_end_stream(&*inner) {
                        tally.body_done.notify_one();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    tally.client_body_error.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    tally.awaiting_client.store(false, Ordering::Relaxed);
                    tally.body_done.notify_one();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    tally.awaiting_client.store(true, Ordering::Relaxed);
                    let t = match timer {
                        Some(t) if *moved => {
                            t.as_mut().reset(tokio::time::Instant::now() + *idle);
                            t
                        }
                        Some(t) => t,
                        None => timer.insert(Box::pin(tokio::time::sleep(*idle))),
                    };
                    *moved = false;
                    if t.as_mut().poll(cx).is_ready() {
                        tally.client_body_timeout.store(true, Ordering::Relaxed);
                        tally.client_body_error.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout(*idle)))));
                    }
                    Poll::Pending
                }
            },
            Body::Upstream(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(d) => d.as_ref().is_none_or(|b| b.is_empty()),
            Body::Request { inner, .. } => inner.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Request { inner, .. } => inner.size_hint(),
            Body::Upstream(b) => b.size_hint(),
        }
    }
}

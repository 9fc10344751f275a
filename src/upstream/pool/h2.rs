//! HTTP/2 connections to one target, multiplexed: each is driven by a task of its own and
//! shared by every request that finds a stream free on it.
//!
//! A request takes a stream on the first connection with fewer than `max_concurrent_streams`
//! requests in flight and under the target's own `SETTINGS_MAX_CONCURRENT_STREAMS` (as hyper
//! reports it once the target's SETTINGS have arrived); when none has room, one new connection
//! is opened at a time per target, and requests that need one meanwhile wait for it instead
//! of each opening their own. The stream counts until the response body ends ([`H2Body`]).
//!
//! A connection leaves the pool once it is closed, once its dispatcher has stopped (after a
//! GOAWAY, a failed ping, an error), or once a stream on it was refused unprocessed; idle ones
//! are closed after `timeouts.idle`, or to make room at the upstream's connection cap.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use tokio::sync::OwnedSemaphorePermit;

use super::{ConnLimit, Got, TargetPool};
use crate::body::Body;
use crate::error::{BoxError, GatewayError};
use crate::upstream::connector::Io;

type Dispatch = http2::Connection<Io, Body, TokioExecutor>;

/// The HTTP/2 connections of one target.
#[derive(Default)]
pub(super) struct Conns {
    list: Mutex<Vec<Arc<H2Conn>>>,
    /// Held while a connection is opened, with the last failed attempt (when, why): requests
    /// that waited for an attempt that failed fail with it rather than each trying again.
    opening: tokio::sync::Mutex<Option<(Instant, String)>>,
}

/// One HTTP/2 connection to a target.
pub struct H2Conn {
    send: http2::SendRequest<Body>,
    /// hyper's dispatcher for the connection, driven by the connection's task; `None` once it
    /// has ended (so requests still queued to it come back unsent). Read here for the target's
    /// stream limit.
    dispatch: Arc<Mutex<Option<Dispatch>>>,
    /// Requests in flight on the connection (until their response bodies end).
    streams: AtomicUsize,
    max_streams: usize,
    /// A stream was refused unprocessed (GOAWAY): no new request goes to this connection.
    retired: AtomicBool,
    idle_since: Mutex<Instant>,
    limit: Option<Arc<ConnLimit>>,
    /// The connection's slot under `limits.max_connections`. Freed when the connection leaves
    /// the pool with no stream left, which closes it (as an HTTP/1.1 connection's is freed
    /// when it is dropped).
    _slot: Option<OwnedSemaphorePermit>,
}

impl H2Conn {
    fn usable(&self) -> bool {
        !self.retired.load(Ordering::Acquire)
            && !self.send.is_closed()
            && self.dispatch.lock().is_ok_and(|d| d.is_some())
    }

    fn has_room(&self) -> bool {
        let server = self
            .dispatch
            .lock()
            .ok()
            .and_then(|d| d.as_ref().map(Dispatch::current_max_send_streams))
            .unwrap_or(0);
        self.streams.load(Ordering::Acquire) < self.max_streams.min(server)
    }

    fn is_idle(&self) -> bool {
        self.streams.load(Ordering::Acquire) == 0
    }

    /// A stream on this connection; the caller holds the pool's list lock.
    fn stream(self: &Arc<Self>) -> H2Stream {
        self.streams.fetch_add(1, Ordering::AcqRel);
        H2Stream {
            send: self.send.clone(),
            conn: self.clone(),
        }
    }
}

/// A request's stream on a shared connection: counted on the connection until dropped.
pub struct H2Stream {
    send: http2::SendRequest<Body>,
    conn: Arc<H2Conn>,
}

impl H2Stream {
    /// Sends `req` (its target already in HTTP/2 form). If the connection had stopped taking
    /// requests before this one went out, the request comes back in the error.
    pub async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        self.send.try_send_request(req).await
    }

    /// The target refused a stream on this connection without processing it (GOAWAY or
    /// REFUSED_STREAM): no new request is sent on it.
    pub fn retire(&self) {
        self.conn.retired.store(true, Ordering::Release);
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut t) = self.conn.idle_since.lock()
        {
            *t = Instant::now();
        }
        if let Some(l) = &self.conn.limit {
            l.returned.notify_one();
        }
    }
}

impl Conns {
    /// A stream on a connection with room, dropping the connections that can take no more.
    fn pick(&self) -> Option<H2Stream> {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|c| c.usable());
        list.iter().find(|c| c.has_room()).map(H2Conn::stream)
    }

    pub(super) fn evict_idle(&self) -> bool {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        match list.iter().position(|c| c.is_idle()) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn sweep(&self, idle_timeout: Duration) {
        let gone: Vec<Arc<H2Conn>> = {
            let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, gone) = std::mem::take(&mut *list).into_iter().partition(|c| {
                c.usable()
                    && !(c.is_idle()
                        && c.idle_since
                            .lock()
                            .is_ok_and(|t| t.elapsed() >= idle_timeout))
            });
            *list = keep;
            gone
        };
        // Closed outside the lock (a connection still carrying a stream closes after it).
        drop(gone);
    }

    pub(super) fn idle_count(&self) -> usize {
        self.list
            .lock()
            .map_or(0, |l| l.iter().filter(|c| c.is_idle()).count())
    }
}

impl TargetPool {
    /// A stream on a shared connection with room, or on a new connection (one opened at a
    /// time per target; under the upstream's connection cap, see [`TargetPool::acquire`]).
    pub async fn checkout_h2(&self) -> Result<H2Stream, GatewayError> {
        if let Some(s) = self.h2.pick() {
            return Ok(s);
        }
        let waited_from = Instant::now();
        let mut opening = self.h2.opening.lock().await;
        if let Some(s) = self.h2.pick() {
            return Ok(s);
        }
        if let Some((at, why)) = opening.as_ref()
            && *at >= waited_from
        {
            return Err(GatewayError::UpstreamConnect(why.clone().into()));
        }
        let slot = match self.acquire(|| self.h2.pick()).await? {
            Got::Existing(s) => return Ok(s),
            Got::Slot(slot) => slot,
        };
        match self.open_h2(slot).await {
            Ok(conn) => {
                *opening = None;
                let stream = conn.stream();
                self.h2
                    .list
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
                Ok(stream)
            }
            Err(e) => {
                *opening = Some((Instant::now(), e.to_string()));
                Err(GatewayError::UpstreamConnect(e))
            }
        }
    }

    /// Connects, and drives the connection's dispatcher in a task of its own.
    async fn open_h2(&self, slot: Option<OwnedSemaphorePermit>) -> Result<Arc<H2Conn>, BoxError> {
        let (send, dispatch) = self.endpoint.http2::<Body>(self.connect_timeout).await?;
        let dispatch = Arc::new(Mutex::new(Some(dispatch)));
        let driven = dispatch.clone();
        let authority = self.endpoint.authority.clone();
        tokio::spawn(async move {
            let ended = poll_fn(|cx| {
                let mut d = driven.lock().unwrap_or_else(|e| e.into_inner());
                let Some(conn) = d.as_mut() else {
                    return Poll::Ready(Ok(()));
                };
                let r = Pin::new(conn).poll(cx);
                if r.is_ready() {
                    // Dropped at once: requests queued to it come back unsent.
                    *d = None;
                }
                r
            })
            .await;
            match ended {
                Ok(()) => {
                    tracing::debug!(target = %authority, "HTTP/2 connection to target closed")
                }
                Err(e) => {
                    tracing::debug!(target = %authority, error = %e, "HTTP/2 connection to target failed")
                }
            }
        });
        Ok(Arc::new(H2Conn {
            send,
            dispatch,
            streams: AtomicUsize::new(0),
            max_streams: self.endpoint.transport.max_concurrent_streams,
            retired: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            limit: self.limit.clone(),
            _slot: slot,
        }))
    }
}

/// A response body from an HTTP/2 target; its stream counts on the connection until the body
/// ends or is dropped.
pub struct H2Body {
    incoming: Incoming,
    _stream: H2Stream,
    /// `timeouts.read`: the longest the body may pause (as for HTTP/1.1 bodies).
    pause: super::PauseLimit,
    /// The request counts as in flight to its target until its response body is done.
    _in_flight: crate::upstream::state::InFlight,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream paused the response body for longer than timeouts.read")]
struct Paused;

impl H2Body {
    pub fn new(
        incoming: Incoming,
        stream: H2Stream,
        in_flight: crate::upstream::state::InFlight,
        read_timeout: Duration,
    ) -> Self {
        H2Body {
            incoming,
            _stream: stream,
            pause: super::PauseLimit::new(read_timeout),
            _in_flight: in_flight,
        }
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(f) => {
                this.pause.moved();
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            // The stream paused: a target that stops mid-body cannot hold the client (and the
            // stream) forever. The stream is reset as it drops.
            Poll::Pending if this.pause.expired(cx) => Poll::Ready(Some(Err(Box::new(Paused)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

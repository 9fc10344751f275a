//! HTTP/1.1 keep-alive connections to one target, driven inside the request's own task.
//!
//! A request checks out an idle connection (or opens one), sends on it, and polls the
//! connection itself while it waits for the response head and while the response body streams
//! (see [`UpstreamBody`]). So no second task and no task switch sit between the client side
//! and the upstream side, which Pingora does as well. When the body ends cleanly, the connection
//! goes back to the pool; when it does not (the client left mid-body, an error), it is closed.
//!
//! Idle connections are not polled. A connection the upstream closed is found when it is next
//! checked out (one poll sees the EOF) and dropped. A background sweep closes connections idle
//! for longer than `timeouts.idle`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::sync::OwnedSemaphorePermit;

use super::{Got, TargetPool};
use crate::body::Body;
use crate::error::{BoxError, GatewayError};

/// hyper's upgradeable connection type cannot be named; it is boxed once per connection.
type Conn = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Idle connections kept per target, at most: enough for bursts, bounded for file descriptors.
const MAX_IDLE_PER_TARGET: usize = 1024;

/// An HTTP/1.1 connection to a target: the handle to send on and the connection state machine.
pub struct PooledConn {
    send: http1::SendRequest<Body>,
    conn: Conn,
    /// The connection future has completed (closed, failed, or handed over for an upgrade):
    /// it must not be polled again.
    finished: bool,
    /// The connection's slot under the upstream's `limits.max_connections`, held while it is open.
    _slot: Option<OwnedSemaphorePermit>,
    /// Taken from the idle pool (it has carried a request before): the upstream may have
    /// closed it just as it was taken.
    pub reused: bool,
}

impl PooledConn {
    /// Sends `req` and drives the connection until the response head arrives. If the request
    /// was never written (the connection turned out not to be ready), it comes back in the error
    /// and may be sent on another connection.
    pub async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut response = std::pin::pin!(self.send.try_send_request(req));
        let conn = &mut self.conn;
        let conn_done = &mut self.finished;
        poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !*conn_done {
                match conn.as_mut().poll(cx) {
                    Poll::Pending => {}
                    // The connection ended, failed, or completed an upgrade (after a 101 hyper
                    // finishes the connection in the poll that delivers the head); the response
                    // future now resolves.
                    Poll::Ready(_) => {
                        *conn_done = true;
                        return response.as_mut().poll(cx);
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Hands the connection to a task of its own: after a `101 Switching Protocols` the
    /// connection must be driven to release the upgraded stream (unless that already happened).
    pub fn spawn(self) {
        if self.finished {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = self.conn.await {
                tracing::debug!(error = %e, "upgraded upstream connection ended with an error");
            }
        });
    }

    /// Polls once without a real waker: true if the connection is gone or cannot take a request.
    fn is_dead(&mut self) -> bool {
        if self.finished {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.conn.as_mut().poll(&mut cx) {
            Poll::Ready(_) => true,
            Poll::Pending => !self.send.is_ready(),
        }
    }
}

pub(super) struct Idle {
    conn: PooledConn,
    since: Instant,
}

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
                idle.pop()
            };
            let Idle { mut conn, since } = candidate?;
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
        let (send, conn) = self
            .endpoint
            .http1(self.connect_timeout)
            .await
            .map_err(GatewayError::UpstreamConnect)?;
        Ok(PooledConn {
            send,
            conn: Box::pin(conn.with_upgrades()),
            finished: false,
            _slot: slot,
            reused: false,
        })
    }

    /// Returns a connection whose last response ended cleanly.
    fn put(&self, mut conn: PooledConn) {
        if conn.is_dead() {
            return;
        }
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

/// A response body from an upstream. Polling it also drives the upstream connection, so the
/// bytes move without a task of their own. At a clean end the connection returns to its pool.
pub struct UpstreamBody {
    incoming: Incoming,
    conn: Option<PooledConn>,
    pool: Arc<TargetPool>,
    ended: bool,
    /// The request counts as in flight to its target until its response body is done.
    _in_flight: crate::upstream::state::InFlight,
}

impl UpstreamBody {
    pub fn new(
        incoming: Incoming,
        conn: PooledConn,
        pool: Arc<TargetPool>,
        in_flight: crate::upstream::state::InFlight,
    ) -> Self {
        UpstreamBody {
            incoming,
            conn: Some(conn),
            pool,
            ended: false,
            _in_flight: in_flight,
        }
    }

    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.put(c);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing left (HEAD, 204, 304, or fully read) leaves a reusable
        // connection; one dropped mid-way does not, and the connection closes with it.
        if self.ended || self.incoming.is_end_stream() {
            self.release();
        }
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
        let mut frame = Pin::new(&mut this.incoming).poll_frame(cx);
        if frame.is_pending()
            && let Some(c) = this.conn.as_mut().filter(|c| !c.finished)
        {
            match c.conn.as_mut().poll(cx) {
                Poll::Pending => {}
                // Closed by the upstream after this response (e.g. `Connection: close`): the
                // body still drains from what was read; the connection is not reused.
                Poll::Ready(Ok(())) => this.conn = None,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            // The connection may have produced data for the body just now.
            frame = Pin::new(&mut this.incoming).poll_frame(cx);
        }
        if let Poll::Ready(None) = frame {
            this.ended = true;
            this.release();
        }
        frame.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

//! Keep-alive connections to one target, driven inside the request's own task.
//!
//! A request checks out an idle HTTP/1.1 connection (or opens one), sends on it, and polls the
//! connection itself while it waits for the response head and while the response body streams
//! (see [`UpstreamBody`]). So no second task and no task switch sit between the client side
//! and the upstream side, which Pingora does as well. When the body ends cleanly, the connection
//! goes back to the pool; when it does not (the client left mid-body, an error), it is closed.
//!
//! Idle connections are not polled. A connection the upstream closed is found when it is next
//! checked out (one poll sees the EOF) and dropped. A background sweep closes connections idle
//! for longer than `timeouts.idle`.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
use crate::error::{BoxError, GatewayError};

/// hyper's upgradeable connection type cannot be named; it is boxed once per connection.
type Conn = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Idle connections kept per target, at most: enough for bursts, bounded for file descriptors.
const MAX_IDLE_PER_TARGET: usize = 1024;
/// How often idle connections are checked for expiry and closure by the upstream.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

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

struct Idle {
    conn: PooledConn,
    since: Instant,
}

/// The pool of one target.
pub struct TargetPool {
    authority: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// The upstream's connection cap, shared by its targets.
    limit: Option<Arc<ConnLimit>>,
}

/// `limits.max_connections` and `limits.max_pending` of one upstream.
pub struct ConnLimit {
    slots: Arc<Semaphore>,
    max_pending: usize,
    pending: AtomicUsize,
    /// The upstream's targets, to close an idle connection of one when another needs its slot.
    pools: Mutex<Vec<std::sync::Weak<TargetPool>>>,
    /// Notified when a connection goes back to an idle list: a waiting request can take it,
    /// or close it to free its slot.
    returned: tokio::sync::Notify,
}

impl ConnLimit {
    fn new(max_connections: usize, max_pending: usize) -> Self {
        ConnLimit {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_pending,
            pending: AtomicUsize::new(0),
            pools: Mutex::new(Vec::new()),
            returned: tokio::sync::Notify::new(),
        }
    }

    /// Closes one idle connection of any target of the upstream, freeing its slot.
    fn evict_idle(&self) -> bool {
        let pools: Vec<Arc<TargetPool>> = self
            .pools
            .lock()
            .map(|p| p.iter().filter_map(std::sync::Weak::upgrade).collect())
            .unwrap_or_default();
        for p in pools {
            let victim = p
                .idle
                .lock()
                .ok()
                .and_then(|mut i| (!i.is_empty()).then(|| i.remove(0)));
            if victim.is_some() {
                return true;
            }
        }
        false
    }
}

impl TargetPool {
    fn new(
        authority: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        limit: Option<Arc<ConnLimit>>,
    ) -> Self {
        TargetPool {
            authority,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// A live idle connection (most recently used first), or a new one. At the upstream's
    /// connection cap, waits (up to the connect timeout) for a slot or an idle connection if
    /// fewer than `max_pending` requests already wait; otherwise answers `Overloaded` at once.
    pub async fn checkout(&self) -> Result<PooledConn, GatewayError> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut waiting: Option<PendingGuard<'_>> = None;
        loop {
            if let Some(conn) = self.take_idle() {
                return Ok(conn);
            }
            let Some(limit) = &self.limit else {
                return self.connect_with(None).await;
            };
            if let Ok(slot) = limit.slots.clone().try_acquire_owned() {
                return self.connect_with(Some(slot)).await;
            }
            // Another target's idle connection is worth less than this request.
            if limit.evict_idle() {
                continue;
            }
            if waiting.is_none() {
                if limit.pending.fetch_add(1, Ordering::AcqRel) >= limit.max_pending {
                    limit.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(GatewayError::Overloaded { retry_after: 1 });
                }
                waiting = Some(PendingGuard(&limit.pending));
            }
            if Instant::now() >= deadline {
                return Err(GatewayError::Overloaded { retry_after: 1 });
            }
            // Wake for a freed slot or a connection returned to an idle list (no polling).
            tokio::select! {
                slot = limit.slots.clone().acquire_owned() => {
                    if let Ok(slot) = slot {
                        return self.connect_with(Some(slot)).await;
                    }
                }
                _ = limit.returned.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
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
        let slot = match &self.limit {
            None => None,
            Some(l) => Some(
                l.slots
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| GatewayError::Overloaded { retry_after: 1 })?,
            ),
        };
        self.connect_with(slot).await
    }

    async fn connect_with(
        &self,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<PooledConn, GatewayError> {
        let (send, conn) = super::connector::http1(self.authority.as_str(), self.connect_timeout)
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
        if let Some(l) = &self.limit {
            l.returned.notify_one();
        }
    }

    /// Closes idle connections that expired or that the upstream closed.
    fn sweep(&self) {
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

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

/// The pools of one upstream, by target authority. Reused across recompiles while the
/// upstream's connect and idle timeouts and connection limits stay the same.
pub struct UpstreamPool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    limits: (Option<usize>, usize),
    limit: Option<Arc<ConnLimit>>,
    targets: Mutex<HashMap<String, Arc<TargetPool>>>,
    /// Requests in flight to the upstream (for `limits.max_in_flight`).
    in_flight: AtomicUsize,
}

/// A request admitted under `limits.max_in_flight`; released when dropped (at the end of the
/// response body).
pub struct UpstreamSlot(Arc<UpstreamPool>);

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request waiting for a connection slot; counted down when it stops waiting.
struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl UpstreamPool {
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_connections: Option<usize>,
        max_pending: usize,
    ) -> Self {
        UpstreamPool {
            connect_timeout,
            idle_timeout,
            limits: (max_connections, max_pending),
            limit: max_connections.map(|m| Arc::new(ConnLimit::new(m, max_pending))),
            targets: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Admits one more request, unless `max` are already in flight.
    pub fn admit(
        self: &Arc<Self>,
        max: Option<usize>,
    ) -> Result<Option<UpstreamSlot>, GatewayError> {
        let Some(max) = max else { return Ok(None) };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::Overloaded { retry_after: 1 });
        }
        Ok(Some(UpstreamSlot(self.clone())))
    }

    pub fn same_settings(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_connections: Option<usize>,
        max_pending: usize,
    ) -> bool {
        self.connect_timeout == connect_timeout
            && self.idle_timeout == idle_timeout
            && self.limits == (max_connections, max_pending)
    }

    /// The pool of one target, created on first use.
    pub fn target(&self, authority: &str) -> Arc<TargetPool> {
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(authority.to_owned())
            .or_insert_with(|| {
                let pool = Arc::new(TargetPool::new(
                    authority.to_owned(),
                    self.connect_timeout,
                    self.idle_timeout,
                    self.limit.clone(),
                ));
                if let Some(l) = &self.limit
                    && let Ok(mut pools) = l.pools.lock()
                {
                    pools.retain(|w| w.strong_count() > 0);
                    pools.push(Arc::downgrade(&pool));
                }
                pool
            })
            .clone()
    }

    /// Drops the pools of targets that are no longer configured.
    pub fn retain(&self, authorities: &[&str]) {
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|k, _| authorities.contains(&k.as_str()));
    }

    pub fn sweep(&self) {
        let pools: Vec<Arc<TargetPool>> = self
            .targets
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        for p in pools {
            p.sweep();
        }
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

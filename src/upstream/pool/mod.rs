//! Connections to the targets of one upstream, kept across requests (and across reloads while
//! the upstream's connection settings stay the same).
//!
//! HTTP/1.1 ([`h1`]): a request checks out an idle keep-alive connection or opens one, and
//! drives it inside its own task. HTTP/2 ([`h2`]): a few multiplexed connections per target,
//! each driven by a task of its own, shared by every request that finds a stream free on one.
//! Both count against the upstream's `limits.max_connections` (connections, not streams), and
//! a request at that cap waits here for a slot (see [`TargetPool::acquire`]).

pub mod h1;
pub mod h2;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use h1::{PooledConn, UpstreamBody};
pub use h2::{H2Body, H2Stream};

use super::connector::Endpoint;
use super::transport::{Protocol, Transport};
use crate::error::GatewayError;

/// How often idle connections are checked for expiry and closure by the upstream.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The connections of one target.
pub struct TargetPool {
    endpoint: Arc<Endpoint>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// HTTP/1.1 connections waiting for a request.
    idle: Mutex<Vec<h1::Idle>>,
    /// HTTP/2 connections, each shared by the requests in flight on it.
    h2: h2::Conns,
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
    /// Notified when a connection goes back to an idle list or an HTTP/2 stream ends: a
    /// waiting request can take it, or close it to free its slot.
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
        pools.iter().any(|p| p.evict_one_idle())
    }
}

/// What [`TargetPool::acquire`] found: a connection (or stream) already open, or a slot to
/// open a new one in (`None` when the upstream has no connection cap).
pub(crate) enum Got<T> {
    Existing(T),
    Slot(Option<OwnedSemaphorePermit>),
}

impl TargetPool {
    fn new(
        endpoint: Endpoint,
        connect_timeout: Duration,
        idle_timeout: Duration,
        limit: Option<Arc<ConnLimit>>,
    ) -> Self {
        TargetPool {
            endpoint: Arc::new(endpoint),
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            h2: h2::Conns::default(),
            limit,
        }
    }

    /// How this target is reached (for the health checker, which uses the same connector).
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    pub fn protocol(&self) -> Protocol {
        self.endpoint.protocol()
    }

    /// Something `take` finds already open, or room for a new connection. At the upstream's
    /// connection cap, closes an idle connection of another target, or waits (up to the
    /// connect timeout) for a slot or for something to `take`, if fewer than `max_pending`
    /// requests already wait; otherwise answers `Overloaded` at once.
    pub(crate) async fn acquire<T>(
        &self,
        mut take: impl FnMut() -> Option<T>,
    ) -> Result<Got<T>, GatewayError> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut waiting: Option<PendingGuard<'_>> = None;
        loop {
            if let Some(found) = take() {
                return Ok(Got::Existing(found));
            }
            let Some(limit) = &self.limit else {
                return Ok(Got::Slot(None));
            };
            if let Ok(slot) = limit.slots.clone().try_acquire_owned() {
                return Ok(Got::Slot(Some(slot)));
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
            // Wake for a freed slot or a connection returned (no polling).
            tokio::select! {
                slot = limit.slots.clone().acquire_owned() => {
                    if let Ok(slot) = slot {
                        return Ok(Got::Slot(Some(slot)));
                    }
                }
                _ = limit.returned.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// A slot for a new connection that must not wait (taken under the cap, if there is one).
    fn slot_now(&self) -> Result<Option<OwnedSemaphorePermit>, GatewayError> {
        match &self.limit {
            None => Ok(None),
            Some(l) => l
                .slots
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| GatewayError::Overloaded { retry_after: 1 }),
        }
    }

    /// Tells a request waiting at the connection cap that something came free.
    fn notify_returned(&self) {
        if let Some(l) = &self.limit {
            l.returned.notify_one();
        }
    }

    /// Closes one connection that carries nothing, to free its slot for another target.
    fn evict_one_idle(&self) -> bool {
        let victim = self
            .idle
            .lock()
            .ok()
            .and_then(|mut i| (!i.is_empty()).then(|| i.remove(0)));
        victim.is_some() || self.h2.evict_idle()
    }

    /// Closes idle connections that expired or that the upstream closed.
    fn sweep(&self) {
        self.sweep_h1();
        self.h2.sweep(self.idle_timeout);
    }

    /// Connections open and carrying no request (for the admin API and the dashboard).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len()) + self.h2.idle_count()
    }
}

/// The pools of one upstream, by target authority. Reused across recompiles while the
/// upstream's connect and idle timeouts, connection limits and transport stay the same.
pub struct UpstreamPool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    limits: (Option<usize>, usize),
    limit: Option<Arc<ConnLimit>>,
    transport: Arc<Transport>,
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

/// The settings an [`UpstreamPool`] is built with.
#[derive(Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: Option<usize>,
    pub max_pending: usize,
    pub transport: Arc<Transport>,
}

impl UpstreamPool {
    pub fn new(s: PoolSettings) -> Self {
        UpstreamPool {
            connect_timeout: s.connect_timeout,
            idle_timeout: s.idle_timeout,
            limits: (s.max_connections, s.max_pending),
            limit: s
                .max_connections
                .map(|m| Arc::new(ConnLimit::new(m, s.max_pending))),
            transport: s.transport,
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

    /// Whether a pool built with `s` would be this one.
    pub fn same_settings(&self, s: &PoolSettings) -> bool {
        self.connect_timeout == s.connect_timeout
            && self.idle_timeout == s.idle_timeout
            && self.limits == (s.max_connections, s.max_pending)
            && self.transport.same_as(&s.transport)
    }

    /// How connections to the upstream's targets are made.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The pool of one target, created on first use (or anew when the name its TLS
    /// connections verify has changed).
    pub fn target(
        &self,
        authority: &str,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    ) -> Arc<TargetPool> {
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = t.get(authority)
            && p.endpoint.server_name == server_name
        {
            return p.clone();
        }
        let pool = Arc::new(TargetPool::new(
            Endpoint {
                authority: authority.to_owned(),
                server_name,
                transport: self.transport.clone(),
            },
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
        t.insert(authority.to_owned(), pool.clone());
        pool
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

/// `timeouts.read` for a response body (HTTP/1.1 or HTTP/2): the longest it may have nothing to
/// give. The timer is armed when a read finds nothing and re-armed only after the body moved on
/// ([`PauseLimit::moved`]), so a body that flows costs no timer work per read.
pub struct PauseLimit {
    limit: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl PauseLimit {
    pub fn new(limit: Duration) -> PauseLimit {
        PauseLimit {
            limit,
            timer: None,
            moved: false,
        }
    }

    /// The body gave something.
    pub fn moved(&mut self) {
        self.moved = true;
    }

    /// The body has nothing now: true once it has had nothing for the limit (else the timer
    /// wakes `cx` then).
    pub fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let deadline = || tokio::time::Instant::now() + self.limit;
        match self.timer.as_mut() {
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline()))),
            Some(t) if self.moved => t.as_mut().reset(deadline()),
            Some(_) => {}
        }
        self.moved = false;
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

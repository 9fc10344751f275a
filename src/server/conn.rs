//! What one client connection holds and how its life is bounded, beside hyper's own limits:
//! its slot under `server.max_connections` and `server.max_connections_per_ip` ([`ConnSlot`]),
//! and its activity ([`Activity`]): requests in flight and the last time it did anything. A
//! connection with nothing in flight and nothing read for `server.idle_timeout` is shut down
//! gracefully ([`serve`]). For HTTP/2 only streams count as activity, so a client that opens no
//! stream but answers pings is still idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::error::BoxError;
use crate::observe::access_log::LoggedBody;

/// Held while a client connection (and any upgraded connection spliced from it) is open.
pub struct ConnSlot {
    _permit: Option<OwnedSemaphorePermit>,
    _per_ip: Option<PerIpGuard>,
}

impl ConnSlot {
    pub fn new(permit: Option<OwnedSemaphorePermit>, per_ip: Option<PerIpGuard>) -> ConnSlot {
        ConnSlot {
            _permit: permit,
            _per_ip: per_ip,
        }
    }
}

/// Open client connections per IP address, shared by every listener.
#[derive(Default)]
pub struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted under its IP; counted down when dropped.
pub struct PerIpGuard {
    registry: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a new connection from `ip`, unless `max` are already open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard {
            registry: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection's activity: requests whose response is not finished, and a counter bumped
/// whenever it does something (reads request bytes over HTTP/1, finishes a response). Bumping
/// reads no clock; the watchdog in [`serve`] notes when the counter last moved.
pub struct Activity {
    in_flight: AtomicUsize,
    epoch: AtomicU64,
    /// A response has been finished on this connection: it is a keep-alive connection now,
    /// not a new one whose first request is on its way.
    served: std::sync::atomic::AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            served: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn touch(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// A request started; the guard ends it when its response body is done or dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }
}

/// Rung by an accept loop holding a new client it has no slot for: one idle connection
/// closes to make room (as nginx reuses keep-alive connections at `worker_connections`).
#[derive(Default)]
pub struct Pressure {
    notify: tokio::sync::Notify,
    /// Connections still to close for this ring: at most one per ring, so a full server does
    /// not drop all its idle keep-alive connections for one newcomer.
    reclaim: AtomicUsize,
}

impl Pressure {
    pub fn ring(&self) {
        self.reclaim.store(1, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn claim(&self) -> bool {
        self.reclaim
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.served.store(true, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body as hyper sends it: the gateway's body, counting as activity until done.
pub struct ActiveBody {
    inner: LoggedBody,
    _in_flight: InFlight,
}

impl ActiveBody {
    pub fn new(inner: LoggedBody, in_flight: InFlight) -> ActiveBody {
        ActiveBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl http_body::Body for ActiveBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Drives `conn` to its end, or drops it (`None`). It is shut down gracefully (in-flight
/// requests finish, then it closes) when nothing has been in flight and nothing has happened
/// on it for `idle` (checked every quarter of `idle`, so it closes within 1.25 × `idle`), when
/// `pressure` rings and it is a quiet keep-alive connection (or one that has done nothing for
/// a second), or when `stop` says the listener is going away. A connection that has not
/// finished `min(idle, 10s)` after being told to wind down is dropped: a client cannot hold
/// its slot by never acknowledging the end.
pub async fn serve<C: std::future::Future>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle: Duration,
    pressure: &Pressure,
    mut stop: watch::Receiver<bool>,
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let grace = idle.min(Duration::from_secs(10));
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut seen = activity.epoch.load(Ordering::Relaxed);
    let mut quiet_since = tokio::time::Instant::now();
    // How long the connection has done nothing, or `None` while a request is in flight.
    let mut quiet = |now: tokio::time::Instant| {
        let e = activity.epoch.load(Ordering::Relaxed);
        if e != seen || activity.in_flight.load(Ordering::Relaxed) > 0 {
            seen = e;
            quiet_since = now;
        }
        (activity.in_flight.load(Ordering::Relaxed) == 0).then(|| now - quiet_since)
    };
    let mut timer = std::pin::pin!(tokio::time::sleep(tick));
    let mut deadline: Option<tokio::time::Instant> = None;
    let wind_down =
        |conn: Pin<&mut C>, deadline: &mut Option<tokio::time::Instant>, grace: Duration| {
            if deadline.is_none() {
                *deadline = Some(tokio::time::Instant::now() + grace);
                graceful_shutdown(conn);
            }
        };
    if *stop.borrow() {
        wind_down(conn.as_mut(), &mut deadline, grace);
    }
    loop {
        tokio::select! {
            out = conn.as_mut() => return Some(out),
            _ = timer.as_mut() => {
                let now = tokio::time::Instant::now();
                // Past the grace, a connection with nothing in flight is dropped; one still
                // finishing requests is bounded by the listener's shutdown deadline instead.
                if deadline.is_some_and(|d| now >= d) && quiet(now).is_some() {
                    return None;
                }
                if quiet(now).is_some_and(|q| q >= idle) {
                    wind_down(conn.as_mut(), &mut deadline, grace);
                }
                // Checked again at the next tick, or at the deadline if that comes first.
                let next = match deadline {
                    Some(d) if d > now => (now + tick).min(d),
                    _ => now + tick,
                };
                timer.as_mut().reset(next);
            }
            _ = pressure.notify.notified(), if deadline.is_none() => {
                let reusable = quiet(tokio::time::Instant::now()).is_some_and(|q| {
                    q >= Duration::from_millis(250)
                        && (activity.served.load(Ordering::Relaxed) || q >= Duration::from_secs(1))
                });
                if reusable && pressure.claim() {
                    // Nothing is in flight: a short grace for the goodbye (HTTP/2's GOAWAY).
                    wind_down(conn.as_mut(), &mut deadline, Duration::from_secs(1));
                    timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
            r = stop.changed(), if deadline.is_none() => {
                if r.is_err() || *stop.borrow() {
                    wind_down(conn.as_mut(), &mut deadline, grace);
                }
            }
        }
    }
}

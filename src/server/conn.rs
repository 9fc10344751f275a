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
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A connection's activity: requests whose response is not finished, and when it last did
/// something (read request bytes over HTTP/1, or finished a response).
pub struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// A response has been finished on this connection: it is a keep-alive connection now,
    /// not a new one whose first request is on its way.
    served: std::sync::atomic::AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(now_ms()),
            served: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A request started; the guard ends it when its response body is done or dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A keep-alive connection between requests, quiet for a moment: one that may close to
    /// make room for a new client.
    fn reusable(&self) -> bool {
        self.served.load(Ordering::Relaxed)
            && self
                .idle_for()
                .is_some_and(|d| d >= Duration::from_millis(250))
    }

    /// How long the connection has been idle, or `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(now_ms().saturating_sub(last)))
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

/// Drives `conn` to its end. It is shut down gracefully (in-flight requests finish, then it
/// closes) when it has been idle for `idle`, when `pressure` rings while nothing is in flight
/// (a new client waits for a slot under `server.max_connections`), or when `stop` says the
/// listener is going away.
pub async fn serve<C: std::future::Future>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle: Duration,
    pressure: &tokio::sync::Notify,
    mut stop: watch::Receiver<bool>,
) -> C::Output {
    let mut conn = std::pin::pin!(conn);
    let mut winding_down = *stop.borrow();
    if winding_down {
        graceful_shutdown(conn.as_mut());
    }
    let mut wait = idle;
    loop {
        tokio::select! {
            out = conn.as_mut() => return out,
            _ = tokio::time::sleep(wait), if !winding_down => {
                match activity.idle_for() {
                    Some(d) if d >= idle => {
                        winding_down = true;
                        graceful_shutdown(conn.as_mut());
                    }
                    Some(d) => wait = idle - d,
                    None => wait = idle,
                }
            }
            // Another client waits for a slot: close now if nothing is in flight.
            _ = pressure.notified(), if !winding_down => {
                if activity.reusable() {
                    winding_down = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
            r = stop.changed(), if !winding_down => {
                if r.is_err() || *stop.borrow() {
                    winding_down = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
        }
    }
}

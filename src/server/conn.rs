//! What one client connection holds and how its life is bounded, beside hyper's own limits:
//! its slot under `server.max_connections` and `server.max_connections_per_ip` ([`ConnSlot`]),
//! and its activity ([`Activity`]): requests in flight and whether it did anything lately. A
//! listener's [`Connections`] supervisor winds down a connection with nothing in flight and
//! nothing read for `server.idle_timeout`, reclaims a quiet one when a new client waits at the
//! cap, and drops one that ignores being wound down. For HTTP/2 only streams count as
//! activity, so a client that opens no stream but answers pings is still idle.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

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

/// A connection's activity, shared by its task, its request handlers and the listener's
/// [`Connections`] supervisor: requests whose response is not finished, a counter bumped
/// whenever it does something (reads request bytes over HTTP/1, finishes a response), and the
/// supervisor's verdict. Bumping reads no clock and takes no lock; the supervisor notes when
/// the counter last moved.
pub struct Activity {
    in_flight: AtomicUsize,
    epoch: AtomicU64,
    /// A response has been finished on this connection: it is a keep-alive connection now,
    /// not a new one whose first request is on its way.
    served: AtomicBool,
    /// `RUN`, `WIND_DOWN` or `DROP`, set by the supervisor; `GONE` once its task ended.
    signal: AtomicU8,
    /// Bumped by every write to the client: a connection still flushing its last response is
    /// not dropped (writes do not count as use for the idle timeout: HTTP/2 pings are writes).
    writes: AtomicU64,
    /// The listener it came in on (`wind_down_all` of a removed listener touches only these).
    listener: usize,
    /// The connection task's waker, so a verdict takes effect at once.
    waker: Mutex<Option<Waker>>,
    /// `server.idle_timeout` at accept time, in ms.
    idle_ms: u64,
    /// When its HTTP side was first polled (ms on the [`now_ms`] clock; 0 before, e.g.
    /// during a TLS handshake).
    driven_ms: AtomicU64,
    /// When it was accepted (ms on the [`now_ms`] clock).
    accepted_ms: u64,
    /// Its TLS handshake is running (under [`handshake`], which sees `LATE` and `DROP`).
    handshaking: AtomicBool,
    /// When the first byte of a later request's head came (0: no head on its way), for
    /// [`Connections::reclaim_one`]: a client that drips its second head is as late as one
    /// that drips its first.
    head_since_ms: AtomicU64,
    // Bookkeeping of the supervisor and of `reclaim_one` (both under the list's lock).
    seen_epoch: AtomicU64,
    quiet_since_ms: AtomicU64,
    seen_writes: AtomicU64,
    silent_since_ms: AtomicU64,
    /// When the connection must be gone if it is quiet; `u64::MAX` until a wind-down
    /// publishes its deadline.
    drop_at_ms: AtomicU64,
}

const RUN: u8 = 0;
const WIND_DOWN: u8 = 1;
const DROP: u8 = 2;
const GONE: u8 = 3;
/// Its request (or TLS handshake) is late (see [`Connections::reclaim_one`]): dropped at its
/// next poll if still nothing is in flight, else wound down like `WIND_DOWN`.
const LATE: u8 = 4;

/// How long a wound-down connection must have been quiet (nothing in flight, nothing
/// written) before it is dropped.
const QUIET_BEFORE_DROP_MS: u64 = 1000;

fn now_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl Activity {
    pub fn new(idle: Duration, listener: usize) -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            served: AtomicBool::new(false),
            signal: AtomicU8::new(RUN),
            writes: AtomicU64::new(0),
            listener,
            waker: Mutex::new(None),
            idle_ms: idle.as_millis() as u64,
            driven_ms: AtomicU64::new(0),
            accepted_ms: now_ms(),
            handshaking: AtomicBool::new(false),
            head_since_ms: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(0),
            quiet_since_ms: AtomicU64::new(now_ms()),
            seen_writes: AtomicU64::new(0),
            silent_since_ms: AtomicU64::new(now_ms()),
            drop_at_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// The supervisor asked the connection to finish what is in flight and close.
    pub fn winding_down(&self) -> bool {
        self.signal.load(Ordering::Acquire) != RUN
    }

    /// The connection's task has ended (see [`serve`]).
    pub fn ended(&self) {
        self.signal.store(GONE, Ordering::Release);
    }

    pub fn touch(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes went out to the client.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// How long (ms) nothing has been written to the client.
    fn silent(&self, now: u64) -> u64 {
        let w = self.writes.load(Ordering::Relaxed);
        if w != self.seen_writes.load(Ordering::Relaxed) {
            self.seen_writes.store(w, Ordering::Relaxed);
            self.silent_since_ms.store(now, Ordering::Relaxed);
        }
        now.saturating_sub(self.silent_since_ms.load(Ordering::Relaxed))
    }

    /// The first byte of a later request's head (not the first request's: its clock is the
    /// accept) came.
    pub fn head_started(&self) {
        self.head_since_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A request started; the guard ends it when its response body is done or dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// How long (ms) the connection has done nothing, or `None` while a request is in
    /// flight. Called with the `Connections` list locked, so one caller at a time.
    fn quiet(&self, now: u64) -> Option<u64> {
        let e = self.epoch.load(Ordering::Relaxed);
        let busy = self.in_flight.load(Ordering::Acquire) > 0;
        if busy || e != self.seen_epoch.load(Ordering::Relaxed) {
            self.seen_epoch.store(e, Ordering::Relaxed);
            self.quiet_since_ms.store(now, Ordering::Relaxed);
        }
        (!busy).then(|| now.saturating_sub(self.quiet_since_ms.load(Ordering::Relaxed)))
    }

    /// Tells the connection to finish what is in flight and close; if it has not closed
    /// `grace_ms` later (with nothing in flight), it is dropped.
    fn wind_down(&self, now: u64, grace_ms: u64) -> bool {
        if self
            .signal
            .compare_exchange(RUN, WIND_DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.drop_at_ms.store(now + grace_ms, Ordering::Release);
        self.wake();
        true
    }

    fn wake(&self) {
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w.wake_by_ref();
        }
    }

    fn register(&self, w: &Waker) {
        if self.driven_ms.load(Ordering::Relaxed) == 0 {
            self.driven_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.register_waker(w);
    }

    fn register_waker(&self, w: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(old) if old.will_wake(w) => {}
            _ => *slot = Some(w.clone()),
        }
    }
}

/// The live connections of every listener, and the supervisor that bounds their lives: a
/// connection with nothing in flight and nothing done for `server.idle_timeout` winds down
/// (checked every 100 ms); one asked to wind down that is still open after a grace, and has
/// been quiet (nothing in flight, nothing written) for a second, is dropped. It runs beside
/// the connections, so their own tasks pay nothing for it but an uncontended waker
/// registration per poll. One for the whole server, like the connection cap it serves.
#[derive(Default)]
pub struct Connections {
    live: Mutex<Vec<std::sync::Weak<Activity>>>,
}

/// How often the supervisor looks at every connection.
const TICK: Duration = Duration::from_millis(100);

impl Connections {
    pub fn add(&self, a: &Arc<Activity>) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(a));
    }

    /// Calls `f` on every connection whose task has not ended, with the list locked (so the
    /// bookkeeping in `Activity` has one writer at a time), until `f` returns false.
    fn each(&self, mut f: impl FnMut(&Activity) -> bool) {
        let mut l = self.live.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|w| {
            w.upgrade()
                .is_some_and(|a| a.signal.load(Ordering::Acquire) != GONE)
        });
        for a in l.iter().filter_map(std::sync::Weak::upgrade) {
            if !f(&a) {
                break;
            }
        }
    }

    /// One pass: idle connections wind down, those past their grace are dropped.
    fn sweep(&self) {
        let now = now_ms();
        self.each(|a| {
            let quiet = a.quiet(now);
            let silent = a.silent(now);
            match a.signal.load(Ordering::Acquire) {
                RUN if quiet.is_some_and(|q| q >= a.idle_ms) => {
                    a.wind_down(now, a.idle_ms.min(10_000));
                }
                WIND_DOWN
                    if now >= a.drop_at_ms.load(Ordering::Acquire)
                        && quiet.is_some_and(|q| q >= QUIET_BEFORE_DROP_MS)
                        && silent >= QUIET_BEFORE_DROP_MS =>
                {
                    a.signal.store(DROP, Ordering::Release);
                    a.wake();
                }
                _ => {}
            }
            true
        });
    }

    /// Supervises until aborted (by the server, once its listeners are gone).
    pub async fn supervise(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Every connection of `listener` winds down (the listener is going away); those still
    /// busy are bounded by the shutdown deadline.
    pub fn wind_down_all(&self, listener: usize) {
        let now = now_ms();
        self.each(|a| {
            if a.listener == listener {
                a.wind_down(now, a.idle_ms.min(10_000));
            }
            true
        });
    }

    /// The shutdown deadline passed: what is still open of `listener` is dropped.
    pub fn drop_all(&self, listener: usize) {
        self.each(|a| {
            if a.listener == listener {
                a.signal.store(DROP, Ordering::Release);
                a.wake();
            }
            true
        });
    }

    /// A new client waits for a slot at `server.max_connections` (over all listeners): one
    /// connection makes room, the oldest first. A connection whose request is late (a whole
    /// first request not sent within a second of its accept, or over HTTP/1.1 a later head
    /// started over a second ago and not finished: a slowloris dripping its head, a client
    /// that connected and sent nothing; or a TLS handshake still running 3 s after the accept) is
    /// dropped at once: it has nothing to finish, and however busy it keeps its socket it
    /// cannot hold a slot that a client with a request is waiting for. Otherwise, as nginx
    /// reuses keep-alive connections at its cap, a keep-alive connection quiet for 250 ms
    /// after a response, or any connection that has done nothing for a second, is asked to
    /// close.
    pub fn reclaim_one(&self) -> Option<Reclaimed> {
        let now = now_ms();
        let mut done = None;
        self.each(|a| {
            if a.signal.load(Ordering::Acquire) != RUN {
                return true;
            }
            let driven = a.driven_ms.load(Ordering::Relaxed);
            if driven == 0 {
                // Not driven yet: in its TLS handshake (which sees the verdict), or a task
                // not yet polled (which would not; the head timeout bounds it). A handshake
                // gets three seconds: TLS 1.2 takes two round trips, so a client 1 s away
                // still gets through.
                let late = a.handshaking.load(Ordering::Acquire)
                    && now.saturating_sub(a.accepted_ms) >= HANDSHAKE_LATE_MS;
                if late && a.mark_late() {
                    done = Some(Reclaimed::Late);
                }
                return done.is_none();
            }
            let quiet = a.quiet(now);
            let served = a.served.load(Ordering::Relaxed);
            let head = a.head_since_ms.load(Ordering::Relaxed);
            let late = quiet.is_some()
                && if served {
                    head != 0 && now.saturating_sub(head) >= 1000
                } else {
                    now.saturating_sub(driven) >= 1000
                };
            if late {
                if a.mark_late() {
                    done = Some(Reclaimed::Late);
                }
                return done.is_none();
            }
            let reusable = quiet.is_some_and(|q| q >= 250 && (served || q >= 1000));
            // Nothing is in flight: a short grace for the goodbye (HTTP/2's GOAWAY).
            if reusable && a.wind_down(now, 1000) {
                done = Some(Reclaimed::Idle);
            }
            done.is_none()
        });
        done
    }
}

/// How long after its accept a TLS handshake still running is late at the cap.
const HANDSHAKE_LATE_MS: u64 = 3000;

/// What [`Connections::reclaim_one`] freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaimed {
    /// A connection whose request (or TLS handshake) was late: dropped.
    Late,
    /// A quiet connection: asked to close.
    Idle,
}

impl Activity {
    /// A late connection turned out to have a request in flight: it winds down instead.
    fn late_to_wind_down(&self) {
        self.drop_at_ms
            .store(now_ms() + QUIET_BEFORE_DROP_MS, Ordering::Release);
        let _ = self
            .signal
            .compare_exchange(LATE, WIND_DOWN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// `LATE`: dropped at its next poll if nothing is in flight by then.
    fn mark_late(&self) -> bool {
        let marked = self
            .signal
            .compare_exchange(RUN, LATE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if marked {
            self.wake();
        }
        marked
    }
}

/// Runs a TLS handshake under the connection's supervisor: `None` if it was dropped (`LATE`
/// at the cap, or `DROP` at the shutdown deadline) before it finished. A wind-down lets it
/// finish (the HTTP side then closes at once unless a request is already on its way).
pub async fn handshake<F: Future>(fut: F, activity: &Activity) -> Option<F::Output> {
    activity.handshaking.store(true, Ordering::Release);
    let mut fut = std::pin::pin!(fut);
    let out = std::future::poll_fn(|cx| {
        activity.register_waker(cx.waker());
        if matches!(activity.signal.load(Ordering::Acquire), LATE | DROP) {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await;
    activity.handshaking.store(false, Ordering::Release);
    out
}

pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.served.store(true, Ordering::Relaxed);
        // Release: whoever sees the request gone also sees `served`.
        self.0.in_flight.fetch_sub(1, Ordering::Release);
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

/// Drives `conn` to its end, following its supervisor's verdict: on `WIND_DOWN` it is shut
/// down gracefully (in-flight requests finish, then it closes), on `DROP` it is dropped
/// (`None`).
pub async fn serve<C: Future>(
    conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
) -> Option<C::Output> {
    let out = drive(conn, graceful_shutdown, activity).await;
    // An upgraded connection lives on in its splice, no longer this task's to end.
    activity.signal.store(GONE, Ordering::Release);
    out
}

/// [`serve`] without marking the connection ended: for a first part of its life (HTTP/1.1
/// served by the gateway's own codec) that may hand over to a second (hyper, for HTTP/2).
///
/// `conn` is pinned by the caller: taken by value, it would sit in this future twice (as the
/// argument and as the pinned local), in every connection's task.
pub async fn drive<C: Future>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
) -> Option<C::Output> {
    let mut shut = false;
    std::future::poll_fn(|cx| {
        activity.register(cx.waker());
        match activity.signal.load(Ordering::Acquire) {
            DROP => return Poll::Ready(None),
            LATE if activity.in_flight.load(Ordering::Acquire) == 0 => return Poll::Ready(None),
            // A request started since the verdict: it is finished first, then the connection
            // closes as a wound-down one does (the supervisor drops it only once quiet).
            LATE => {
                activity.late_to_wind_down();
                if !shut {
                    shut = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
            WIND_DOWN if !shut => {
                shut = true;
                graceful_shutdown(conn.as_mut());
            }
            _ => {}
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await
}

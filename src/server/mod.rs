//! Listeners and connections: bind, accept under a connection cap, serve HTTP/1.1 and h2c
//! (prior knowledge) on the same port with the request-head timeout and size limit, and shut
//! down gracefully (stop accepting, let in-flight requests finish up to a deadline).

pub mod conn;
pub mod cores;
pub mod framing;
pub mod h1;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::gateway::{self, ConnInfo, Gateway};
use crate::runtime::{Runtime, ServerSettings};

/// The running listeners. A reload adds and removes listeners without touching those that
/// stay: [`Server::prepare`] binds what a new config adds (so a failure changes nothing), and
/// [`Server::commit`] starts them and stops what it removed.
pub struct Server {
    gw: Arc<Gateway>,
    permits: Arc<Semaphore>,
    /// Open connections per client IP, over every listener.
    per_ip: Arc<conn::PerIp>,

    cap: usize,
    /// By configured address (`127.0.0.1:0` stays the same key across reloads).
    listeners: Vec<(SocketAddr, Listener)>,
    sweeper: (watch::Sender<bool>, tokio::task::JoinHandle<()>),
    /// Every client connection, over all listeners, and the task that supervises them.
    connections: Arc<conn::Connections>,
    supervisor: tokio::task::JoinHandle<()>,
    /// Numbers the listeners, for the connections to say which one they came in on.
    next_listener: usize,
    /// `scheduler: per_core`: the per-core runtimes, each accepting on its own socket of
    /// every listener. `None`: the accept loops run on the runtime the server was started on.
    cores: Option<cores::Cores>,
}

struct Listener {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    /// One accept loop, or one per core.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Listeners bound for a config that is not yet active: per address, one socket, or one per
/// core.
pub struct Prepared(Vec<(SocketAddr, Vec<std::net::TcpListener>)>);

impl Server {
    /// Binds every listener of the current runtime and starts accepting.
    pub async fn start(gw: Arc<Gateway>) -> std::io::Result<Server> {
        let rt = gw.runtime.load_full();
        let workers = crate::runtime::worker_count(rt.workers);
        let cores = match rt.scheduler {
            crate::runtime::Scheduler::PerCore => Some(cores::Cores::start(workers)?),
            crate::runtime::Scheduler::WorkStealing => None,
        };
        let cap = rt.server.max_connections;
        let (sweep_stop, sweep_rx) = watch::channel(false);
        let sweeper = tokio::spawn(sweep_pools(gw.clone(), sweep_rx));
        let connections = Arc::new(conn::Connections::default());
        let mut server = Server {
            gw,
            permits: Arc::new(Semaphore::new(cap)),
            per_ip: Arc::default(),

            cap,
            listeners: Vec::new(),
            sweeper: (sweep_stop, sweeper),
            connections: connections.clone(),
            supervisor: tokio::spawn(connections.supervise()),
            next_listener: 0,
            cores,
        };
        let prepared = match server.prepare(&rt) {
            Ok(p) => p,
            Err(e) => {
                server.stop();
                return Err(e);
            }
        };
        server.commit(&rt, prepared);
        Ok(server)
    }

    /// Where the listeners of the current config are bound, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, l)| l.local).collect()
    }

    /// Binds the listeners `rt` has and the running config does not.
    pub fn prepare(&self, rt: &Runtime) -> std::io::Result<Prepared> {
        let mut out = Vec::new();
        for addr in rt.listeners.iter().map(|l| &l.addr) {
            if self.listeners.iter().any(|(a, _)| a == addr) {
                continue;
            }
            let bound = match &self.cores {
                Some(c) => cores::bind_each(*addr, c.len()),
                None => bind_std(*addr, false).map(|l| vec![l]),
            };
            let listeners = bound.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            out.push((*addr, listeners));
        }
        Ok(Prepared(out))
    }

    /// After `rt` became the current runtime: starts its new listeners, stops the ones it
    /// dropped (they finish their in-flight requests), and applies its connection cap.
    pub fn commit(&mut self, rt: &Runtime, prepared: Prepared) {
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|(a, _)| rt.listener(*a).is_some());
        for (addr, l) in gone {
            tracing::info!(addr = %addr, "listener removed by reload: no longer accepting");
            let _ = l.stop.send(true);
        }
        self.listeners = keep;
        for (addr, sockets) in prepared.0 {
            let Some(Ok(local)) = sockets.first().map(|l| l.local_addr()) else {
                continue;
            };
            tracing::info!(addr = %local, sockets = sockets.len(), "listening");
            let (stop, stop_rx) = watch::channel(false);
            self.next_listener += 1;
            let mut tasks = Vec::with_capacity(sockets.len());
            for (i, socket) in sockets.into_iter().enumerate() {
                let shared = Shared {
                    permits: self.permits.clone(),
                    per_ip: self.per_ip.clone(),
                    connections: self.connections.clone(),
                    id: self.next_listener,
                };
                let task = accept_on(socket, addr, self.gw.clone(), shared, stop_rx.clone());
                // On its core's runtime, which then runs every connection it accepts.
                tasks.push(match self.cores.as_ref().and_then(|c| c.handle(i)) {
                    Some(core) => core.spawn(task),
                    None => tokio::spawn(task),
                });
            }
            self.listeners.push((addr, Listener { local, stop, tasks }));
        }
        // Config order, so local_addrs()[0] is the first `listen` entry.
        self.listeners.sort_by_key(|(a, _)| {
            rt.listeners
                .iter()
                .position(|x| x.addr == *a)
                .unwrap_or(usize::MAX)
        });
        let cap = rt.server.max_connections;
        if cap > self.cap {
            self.permits.add_permits(cap - self.cap);
        } else if cap < self.cap {
            // Slots in use are not revoked: free ones are forgotten now, and the rest as the
            // connections holding them close.
            let want = self.cap - cap;
            let forgotten = self.permits.forget_permits(want);
            if forgotten < want {
                let permits = self.permits.clone();
                let owed = u32::try_from(want - forgotten).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(owed).await {
                        p.forget();
                    }
                });
            }
        }
        self.cap = cap;
    }

    /// Signals every listener to stop, without waiting (for use in `Drop`).
    pub fn stop(&self) {
        for (_, l) in &self.listeners {
            let _ = l.stop.send(true);
        }
        let _ = self.sweeper.0.send(true);
    }

    /// Stops accepting, waits for in-flight requests up to the shutdown deadline, then returns.
    pub async fn shutdown(self) {
        self.stop();
        let deadline = self.gw.runtime.load().server.shutdown_timeout;
        // Each accept loop enforces the deadline itself; this bound is a backstop.
        let backstop = deadline + Duration::from_secs(1);
        let tasks: Vec<_> = self
            .listeners
            .into_iter()
            .flat_map(|(_, l)| l.tasks)
            .collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(backstop, all).await.is_err() {
            tracing::warn!("listeners did not stop within the shutdown deadline");
        }
        let _ = self.sweeper.1.await;
        self.supervisor.abort();
    }
}

/// Why a connection ended in an error that refused a request before the service saw it: the
/// status hyper answered (if it answered), and a reason for the log and
/// `gatehouse_downstream_rejected_total`. `None` for ordinary ends (the client left).
fn rejection(
    e: &(dyn std::error::Error + 'static),
) -> Option<(Option<http::StatusCode>, &'static str)> {
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_parse_too_large() {
            return Some((
                Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                "head_too_large",
            ));
        }
        if h.is_parse() {
            return Some((Some(http::StatusCode::BAD_REQUEST), "parse_error"));
        }
    }
    // Our own timers surface as I/O errors inside hyper's.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            let msg = io.to_string();
            if msg.contains("request head incomplete") {
                // Logged as nginx logs it; the client was sent nothing.
                return Some((Some(http::StatusCode::REQUEST_TIMEOUT), "head_timeout"));
            }
            if msg.contains("no request sent") {
                return Some((None, "no_request"));
            }
            if msg.contains("send_timeout") {
                return Some((None, "send_timeout"));
            }
        }
        source = s.source();
    }
    None
}

/// A connection refused before the gateway saw a request: counted in
/// `gatehouse_downstream_rejected_total{reason}`, and logged with `status` when there is one
/// (a client that sent nothing at all is not a request to log).
fn report_rejected(
    gw: &Gateway,
    peer: SocketAddr,
    status: Option<http::StatusCode>,
    reason: &'static str,
) {
    gw.metrics.rejected(reason);
    if let (Some(status), Some(log)) = (status, gw.access_log.load().as_deref()) {
        log.rejected(peer, status, reason);
    }
}

/// Closes idle upstream connections that expired or were closed by their upstream, for the
/// upstreams of whatever config is current.
async fn sweep_pools(gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::upstream::pool::SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let rt = gw.runtime.load_full();
        for u in rt.upstreams.values() {
            u.pool.sweep();
        }
    }
}

/// What serving one accepted connection needs from its listener.
struct ConnCtx {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    settings: Arc<ServerSettings>,
    activity: Arc<conn::Activity>,
    /// The `connections_active` gauge, decremented when the connection ends.
    active: prometheus_client::metrics::gauge::Gauge,
    /// Held until the connection ends: the listener's shutdown waits for every clone.
    open: tokio::sync::mpsc::Sender<()>,
}

/// Serves one connection (plain, or TLS after the handshake) until it ends: HTTP/1.1 with the
/// gateway's own codec ([`h1`]), HTTP/2 with hyper (a TLS client that chose `h2`, or a plain one
/// that opens with the HTTP/2 preface). `first_head`: what is left of the request-head timeout
/// for the first request.
async fn serve_stream<S: h1::ClientIo>(
    stream: S,
    info: ConnInfo,
    first_head: Duration,
    ctx: ConnCtx,
    alpn_h2: bool,
) {
    let info = Arc::new(info);
    if alpn_h2 {
        // Boxed, here and below: an HTTP/1.1 connection's task then holds none of hyper's state.
        let io = crate::context::Prefixed::new(bytes::Bytes::new(), stream);
        return Box::pin(serve_hyper(io, info, first_head, ctx)).await;
    }
    let settings = h1::Settings {
        max_head: ctx.settings.max_header_size,
        head_timeout: ctx.settings.request_header_timeout,
        first_head,
        send_timeout: ctx.settings.send_timeout,
    };
    let end = {
        let served = std::pin::pin!(h1::serve(stream, &ctx.gw, &info, &settings, &ctx.activity));
        conn::drive(served, |_| {}, &ctx.activity).await
    };
    match end {
        Some(h1::End::H2 { io, read }) => {
            let left = first_head;
            Box::pin(serve_hyper(
                crate::context::Prefixed::new(read, io),
                info,
                left,
                ctx,
            ))
            .await;
        }
        Some(h1::End::Closed) => {
            ctx.activity.ended();
            ctx.active.dec();
        }
        None => {
            ctx.activity.ended();
            tracing::debug!(client = %ctx.peer, "connection dropped: it did not close when asked");
            ctx.active.dec();
        }
    }
}

/// Serves a connection with hyper (HTTP/2, and HTTP/1.1 should a client switch to it there),
/// under the framing watch and its timers.
async fn serve_hyper<S>(stream: S, info: Arc<ConnInfo>, first_head: Duration, ctx: ConnCtx)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx {
        gw,
        peer,
        settings,
        activity,
        active,
        open,
    } = ctx;
    let builder = connection_builder(&settings);
    let gw_log = gw.clone();
    let watch = Arc::new(framing::FramingWatch::default());
    let stream = framing::Watched::new(
        stream,
        framing::Scanner::new(watch.clone(), settings.max_header_size),
        settings.request_header_timeout,
        settings.send_timeout,
        activity.clone(),
    )
    .first_head_within(first_head);
    let svc_activity = activity.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        let info = info.clone();
        let watch = watch.clone();
        let ambiguous = watch.next_request_is_ambiguous();
        let in_flight = svc_activity.start();
        async move {
            let req = req.map(crate::body::ClientBody::Hyper);
            let resp = gateway::handle(&gw, req, &info, ambiguous).await;
            Ok::<_, Infallible>(resp.map(|b| conn::ActiveBody::new(b, in_flight)))
        }
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    let connection = std::pin::pin!(connection);
    let served = conn::serve(connection, |c| c.graceful_shutdown(), &activity);
    let Some(served) = served.await else {
        tracing::debug!(client = %peer, "connection dropped: it did not close when asked");
        active.dec();
        drop(open);
        return;
    };
    if let Err(e) = served {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
        if let Some((status, reason)) = rejection(&*e) {
            report_rejected(&gw_log, peer, status, reason);
        }
    }
    active.dec();
    drop(open);
}

fn connection_builder(s: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Idleness is bounded by `conn::Connections` and the head by `framing::Watched`; hyper's
        // own timer (from the end of one request to the end of the next head) is a backstop.
        .header_read_timeout(s.idle_timeout + s.request_header_timeout)
        .max_buf_size(s.max_header_size.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Binds with SO_REUSEADDR and a deep backlog, so restarts and bursts behave.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

/// [`bind`], not yet registered with a runtime; with `reuse_port`, SO_REUSEPORT too (one
/// socket per core, see [`cores`]).
pub fn bind_std(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An accept loop on `socket`, registered with the runtime that runs the loop.
async fn accept_on(
    socket: std::net::TcpListener,
    configured: SocketAddr,
    gw: Arc<Gateway>,
    shared: Shared,
    stop: watch::Receiver<bool>,
) {
    match TcpListener::from_std(socket) {
        Ok(listener) => accept_loop(listener, configured, gw, shared, stop).await,
        Err(e) => tracing::error!(addr = %configured, error = %e, "cannot accept on the listener"),
    }
}

/// What every listener shares: the connection caps and the connection supervisor; and which
/// listener this is.
struct Shared {
    permits: Arc<Semaphore>,
    per_ip: Arc<conn::PerIp>,
    connections: Arc<conn::Connections>,
    id: usize,
}

async fn accept_loop(
    listener: TcpListener,
    configured: SocketAddr,
    gw: Arc<Gateway>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let Shared {
        permits,
        per_ip,
        connections,
        id,
    } = shared;
    let local_port = listener.local_addr().map_or(0, |a| a.port());
    // `X-Forwarded-Port` of every connection: shared bytes, made once.
    let port = http::HeaderValue::from(local_port);
    let name = configured.to_string();
    let series = gw.metrics.accept_series(&name, crate::context::core());
    // Every connection task holds a clone of `open`; when all are gone, `closed` yields None.
    let (open, mut closed) = tokio::sync::mpsc::channel::<()>(1);
    'accept: loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Limits, timeouts and TLS of the config current at accept time.
        let rt = gw.runtime.load();
        let settings = rt.server.clone();
        let Some(ip_guard) = per_ip.admit(peer.ip(), settings.max_connections_per_ip) else {
            gw.metrics.rejected("max_connections_per_ip");
            tracing::debug!(client = %peer, "connection refused: server.max_connections_per_ip");
            drop(stream);
            continue;
        };
        // A slot under `server.max_connections`. At the cap this client waits (and those
        // behind it stay in the kernel's backlog) while a connection makes room: one whose
        // request or TLS handshake is late is dropped at once, else an idle one is
        // asked to close, every 100 ms (`Connections::reclaim_one`). Neither slow heads nor
        // clients holding connections between sparse requests can lock others out.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => loop {
                if connections.reclaim_one() == Some(conn::Reclaimed::Late) {
                    gw.metrics.rejected("late_at_capacity");
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => break p,
                        Err(_) => break 'accept,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => break 'accept,
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let slot = conn::ConnSlot::new(Some(permit), Some(ip_guard));
        let trusted = settings
            .trusted_proxies
            .iter()
            .any(|c| c.contains(peer.ip()));
        let this = rt.listener(configured);
        let tls = this.and_then(|l| l.tls.clone());
        let mut info = ConnInfo::new(
            peer,
            if tls.is_some() { "https" } else { "http" },
            Some(Arc::new(slot)),
            port.clone(),
            trusted,
        );
        info.redirect_https = this
            .and_then(|l| l.redirect_https.as_ref())
            .map(|r| (r.port, r.status));
        if let Some(t) = &tls {
            info.hsts = t.hsts.clone();
            info.forward_identity = t.forward_identity.clone();
        }
        let activity = conn::Activity::new(settings.idle_timeout, id);
        connections.add(&activity);
        let ctx = ConnCtx {
            gw: gw.clone(),
            peer,
            settings,
            activity,
            active: series.opened(),
            open: open.clone(),
        };
        drop(rt);
        let task = async move {
            let Some(tls) = tls else {
                let first = ctx.settings.request_header_timeout;
                return serve_stream(stream, info, first, ctx, false).await;
            };
            // Boxed: a plain connection's task then holds none of the handshake's state.
            Box::pin(serve_tls(stream, tls, info, ctx)).await;
        };
        tokio::spawn(task);
    }
    drop(listener);
    drop(open);
    // In-flight requests finish, idle connections close now; the supervisor keeps dropping
    // connections that ignore it until all are gone or the deadline passes.
    connections.wind_down_all(id);
    let shutdown_timeout = gw.runtime.load().server.shutdown_timeout;
    if tokio::time::timeout(shutdown_timeout, closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown deadline reached with requests still in flight");
        connections.drop_all(id);
    }
}

/// The TLS handshake (bounded by the request-head timeout), then the connection.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: Arc<crate::runtime::TlsListener>,
    mut info: ConnInfo,
    ctx: ConnCtx,
) {
    let peer = ctx.peer;
    // The handshake counts against the request-head timeout: together they get
    // `server.request_header_timeout` from the accept.
    let accepted = std::time::Instant::now();
    let budget = ctx.settings.request_header_timeout;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let handshake = conn::handshake(acceptor.accept(stream), &ctx.activity);
    match tokio::time::timeout(budget, handshake).await {
        Ok(None) => {
            // Late at the cap (counted by the accept loop that found it), or the shutdown
            // deadline.
            tracing::debug!(client = %peer, "TLS handshake dropped by the connection supervisor");
            ctx.activity.ended();
            ctx.active.dec();
        }
        Ok(Some(Ok(stream))) => {
            let (_, session) = stream.get_ref();
            info.client_cert = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tls::client_cert(c))
                .map(Arc::new);
            let h2 = session.alpn_protocol() == Some(b"h2");
            let left = budget.saturating_sub(accepted.elapsed());
            serve_stream(stream, info, left, ctx, h2).await;
        }
        Ok(Some(Err(e))) => {
            ctx.gw.metrics.rejected("tls_handshake");
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            ctx.activity.ended();
            ctx.active.dec();
        }
        Err(_) => {
            ctx.gw.metrics.rejected("tls_handshake_timeout");
            tracing::debug!(client = %peer, "TLS handshake timed out");
            ctx.activity.ended();
            ctx.active.dec();
        }
    }
}

//! Listeners and connections: bind, accept under a connection cap, serve HTTP/1.1 and h2c
//! (prior knowledge) on the same port with the request-head timeout and size limit, and shut
//! down gracefully (stop accepting, let in-flight requests finish up to a deadline).

pub mod framing;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::compile::ServerSettings;
use crate::gateway::{self, ConnInfo, Gateway};

/// A running server. [`Server::shutdown`] drains it gracefully; dropping it stops accepting.
pub struct Server {
    pub local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Binds every listener of the current runtime and starts accepting.
    pub async fn start(gw: Arc<Gateway>) -> std::io::Result<Server> {
        let rt = gw.runtime.load_full();
        let settings = rt.server.clone();
        let builder = Arc::new(connection_builder(&settings));
        let permits = Arc::new(Semaphore::new(settings.max_connections));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut local_addrs = Vec::new();
        for addr in &rt.listeners {
            let listener = bind(*addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            let local = listener.local_addr()?;
            local_addrs.push(local);
            tracing::info!(addr = %local, "listening");
            tasks.spawn(accept_loop(
                listener,
                gw.clone(),
                builder.clone(),
                permits.clone(),
                stop_rx.clone(),
                settings.shutdown_timeout,
            ));
        }
        tasks.spawn(sweep_pools(gw.clone(), stop_rx.clone()));
        Ok(Server {
            local_addrs,
            stop,
            tasks,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    /// Signals the accept loops to stop without waiting (for use in `Drop`).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops accepting, waits for in-flight requests up to the shutdown deadline, then returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // Each accept loop enforces the deadline itself; this bound is a backstop.
        let backstop = self.shutdown_timeout + Duration::from_secs(1);
        if tokio::time::timeout(backstop, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            self.tasks.abort_all();
        }
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

fn connection_builder(s: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // hyper's timer runs from the end of one request to the end of the next head: it
        // bounds idleness plus the head. The head alone is timed by `framing::Watched`.
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
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let (max_head, header_timeout) = {
        let rt = gw.runtime.load();
        (rt.server.max_header_size, rt.server.request_header_timeout)
    };
    loop {
        // Take a connection slot first: at the cap, new clients wait in the kernel backlog
        // instead of being accepted and starved.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
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
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo::new(peer, "http", Some(permit)));
        let gw = gw.clone();
        let builder = builder.clone();
        let watch = Arc::new(framing::FramingWatch::default());
        let stream = framing::Watched::new(
            stream,
            framing::Scanner::new(watch.clone(), max_head),
            header_timeout,
        );
        let svc = service_fn(move |req| {
            let gw = gw.clone();
            let info = info.clone();
            let ambiguous = watch.next_request_is_ambiguous();
            async move { Ok::<_, Infallible>(gateway::handle(&gw, req, &info, ambiguous).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        // The connection's slot is released when the connection and every upgraded
        // connection spliced from it (which hold a clone) have ended.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown deadline reached with requests still in flight");
    }
}

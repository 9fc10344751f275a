//! Thread-per-core (`scheduler: per_core`): one thread per worker, each running its own
//! single-threaded runtime, and every listener bound once per core with `SO_REUSEPORT`, so the
//! kernel spreads new connections over the cores and a connection lives on the core that
//! accepted it, with no work stealing and no cross-thread wake-ups. Upstream pools hand a core
//! the connections it opened first ([`crate::context::core`]).
//!
//! The control side (reloads, the admin API, health checks, signals) stays on the runtime the
//! gateway was started on.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The per-core runtimes. Dropping this stops them: their threads cancel what is left (the
/// server has drained its connections by then) and exit.
pub struct Cores {
    cores: Vec<Core>,
}

struct Core {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl Cores {
    /// Starts `n` threads (`gatehouse-core-1` ...), each with its own runtime.
    pub fn start(n: usize) -> std::io::Result<Cores> {
        let mut cores = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let index = u16::try_from(i + 1).unwrap_or(u16::MAX);
            std::thread::Builder::new()
                .name(format!("gatehouse-core-{index}"))
                .spawn(move || {
                    crate::context::set_core(index);
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
            cores.push(Core {
                handle,
                stop: Some(stop),
            });
        }
        Ok(Cores { cores })
    }

    pub fn len(&self) -> usize {
        self.cores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// The runtime of core `i` (0-based).
    pub fn handle(&self, i: usize) -> Option<&Handle> {
        self.cores.get(i).map(|c| &c.handle)
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        for c in &mut self.cores {
            if let Some(stop) = c.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// Binds `n` sockets to `addr` with `SO_REUSEPORT` (and the rest of [`super::bind_std`]'s
/// options). For port 0 the first socket's port is used for the others, so all `n` share one
/// port.
pub fn bind_each(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = super::bind_std(addr, true)?;
    let port = first.local_addr()?.port();
    let mut all = vec![first];
    let mut at = addr;
    at.set_port(port);
    for _ in 1..n {
        all.push(super::bind_std(at, true)?);
    }
    Ok(all)
}

//! WebSockets: after the target answers `101 Switching Protocols` to an HTTP/1.1 upgrade,
//! the client's and the target's connections are joined and bytes are copied both ways until
//! either side closes or both stay quiet for `server.upgrade_idle_timeout`. Started by
//! [`super::exchange`]; an HTTP/2 upstream never gets here (see [`super::send`]).

use std::sync::Arc;

/// Copies bytes both ways between an upgraded client connection and upstream connection until
/// either side closes, or until no byte has moved either way for `idle`. Holds the client
/// connection's slot until then.
pub(super) async fn splice<U>(
    down: crate::context::OnUpgrade,
    up: U,
    _slot: Option<Arc<dyn Send + Sync>>,
    idle: std::time::Duration,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let down = match down.await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade of the client connection failed");
            return;
        }
    };
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut down = Counted::new(down, moved.clone());
    let mut up = Counted::new(up, moved.clone());
    let mut copy = std::pin::pin!(tokio::io::copy_bidirectional(&mut down, &mut up));
    // Checked every quarter of `idle`: closed within 1.25 × `idle` of the last byte.
    let tick = (idle / 4).max(std::time::Duration::from_millis(10));
    let mut seen = 0;
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = copy.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(tick) => {
                let now = moved.load(std::sync::atomic::Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    quiet_since = tokio::time::Instant::now();
                } else if quiet_since.elapsed() >= idle {
                    tracing::debug!(?idle, "upgraded connection idle both ways: closed");
                    return;
                }
            }
        }
    }
}

/// An upgraded stream that counts the bytes read from it (in either direction's copy).
struct Counted<T> {
    inner: T,
    moved: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Counted<T> {
    fn new(inner: T, moved: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Counted { inner, moved }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.moved
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

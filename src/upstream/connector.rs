//! The one way the gateway reaches a target, for the pool and the active health checker
//! alike: a transport (TCP now; TLS comes with the next issue) and a protocol handshake
//! (HTTP/1.1 now; a multiplexed HTTP/2 connection later), and the one place requests are put
//! in origin form.

use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::BoxError;

/// The transport to a target, as the handshake takes it.
pub type Io = TokioIo<TcpStream>;

/// Connects to `authority` (`host:port`) within `timeout` and performs the HTTP/1.1
/// handshake. The connection future must be driven for the sender to make progress.
pub async fn http1<B>(
    authority: &str,
    timeout: Duration,
) -> Result<(http1::SendRequest<B>, http1::Connection<Io, B>), BoxError>
where
    B: http_body::Body + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Box::new(e)),
        Err(_) => return Err(format!("connect to {authority} timed out after {timeout:?}").into()),
    };
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    Ok((send, conn))
}

/// The request target sent to an origin: `/path?query` (RFC 9112 3.2.1), never the absolute
/// form a proxy would take, whatever form the client used. The connection names the target
/// and Host names the site; servers that read the raw target (Python's http.server, nginx's
/// virtual hosts, path ACLs in Node) do not route an absolute form.
pub fn origin_form(path: PathAndQuery) -> Uri {
    Uri::from(path)
}

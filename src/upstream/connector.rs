//! The one way the gateway reaches a target, for the pool and the active health checker
//! alike: a transport (TCP, or TLS over it with the upstream's [`TlsClient`]) and a protocol
//! handshake (HTTP/1.1, or a multiplexed HTTP/2 connection), and the one place the request
//! target is shaped: origin form on HTTP/1.1, `:scheme`/`:authority`/`:path` on HTTP/2.
//!
//! [`TlsClient`]: super::transport::TlsClient

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::transport::{Protocol, Stream, Transport};
use crate::error::BoxError;

/// The transport to a target, as the handshake takes it.
pub type Io = TokioIo<Stream>;

/// How often an HTTP/2 connection to a target is pinged, and how long an answer may take
/// before the connection is closed: a target that vanished (no FIN, no RST) is found within
/// 40 s even while the connection is idle in the pool.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What one HTTP/2 stream from a target may have in flight, unread by its client: the
/// gateway's memory per stalled stream (hyper's default is 2 MB; Envoy's edge guidance is
/// 64 KiB). 256 KiB still carries 256 MB/s per stream at a 1 ms round trip.
const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// The connection-level window of an HTTP/2 connection to a target: room for every stream it
/// may carry (up to 4096), so streams whose clients stopped reading hold only their own
/// windows and the others keep flowing. With hyper's default (5 MB, against 2 MB per stream)
/// three such streams spent it, and every other answer on the connection waited until the
/// stalled clients were cut off. At most 1 GiB (Go's HTTP/2 client gives its connections
/// 1 GiB); what it holds is at most a stream window per stalled stream.
fn h2_connection_window(max_concurrent_streams: usize) -> u32 {
    let streams = u32::try_from(max_concurrent_streams)
        .unwrap_or(u32::MAX)
        .max(1);
    streams.saturating_mul(H2_STREAM_WINDOW).min(1 << 30)
}

/// Where one target's connections go, and how they are made.
pub struct Endpoint {
    /// `host:port` to connect to (an address once a name has been resolved).
    pub authority: String,
    /// With TLS: the name sent as SNI and verified in the certificate (the upstream's
    /// `tls.server_name`, else the host of the target's URL).
    pub server_name: Option<ServerName<'static>>,
    pub transport: Arc<Transport>,
}

impl Endpoint {
    pub fn protocol(&self) -> Protocol {
        self.transport.protocol
    }

    /// Connects within `timeout`: TCP, then the TLS handshake when the upstream uses TLS.
    pub async fn connect(&self, timeout: Duration) -> Result<Io, BoxError> {
        let authority = self.authority.as_str();
        let attempt = async {
            let tcp = match authority.parse::<std::net::SocketAddr>() {
                Ok(addr) => TcpStream::connect(addr).await?,
                // A name not resolved yet (at start or since): looked up once for every
                // connect waiting for it (see `dns::lookup`), each address tried in turn.
                Err(_) => TcpStream::connect(&*super::dns::lookup(authority).await?).await?,
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.transport.tls else {
                return Ok(Stream::Tcp(tcp));
            };
            let Some(name) = self.server_name.clone() else {
                return Err(format!("no TLS server name for {authority}").into());
            };
            let shown = name.to_str().into_owned();
            let stream = tls.connector.connect(name, tcp).await.map_err(|e| {
                format!("TLS handshake with {authority} (server name {shown}) failed: {e}")
            })?;
            // Offered `h2` alone: a server that does not pick it would not read HTTP/2.
            if self.transport.protocol == Protocol::Http2
                && stream.get_ref().1.alpn_protocol() != Some(b"h2")
            {
                return Err(format!(
                    "{authority} (server name {shown}) did not agree to HTTP/2 in the TLS handshake (ALPN h2); use protocol: http1 for it"
                )
                .into());
            }
            Ok::<_, BoxError>(Stream::Tls(Box::new(stream)))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(s)) => Ok(TokioIo::new(s)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("connect to {authority} timed out after {timeout:?}").into()),
        }
    }

    /// Connects and performs the HTTP/1.1 handshake. The connection future must be driven
    /// for the sender to make progress.
    pub async fn http1<B>(
        &self,
        timeout: Duration,
    ) -> Result<(http1::SendRequest<B>, http1::Connection<Io, B>), BoxError>
    where
        B: http_body::Body + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let io = self.connect(timeout).await?;
        Ok(http1::Builder::new().handshake(io).await?)
    }

    /// Connects and performs the HTTP/2 handshake (the preface is sent; the target's SETTINGS
    /// arrive as the connection is driven). Idle connections are pinged, so one that went
    /// away silently is closed rather than handed a request.
    pub async fn http2<B>(
        &self,
        timeout: Duration,
    ) -> Result<
        (
            http2::SendRequest<B>,
            http2::Connection<Io, B, TokioExecutor>,
        ),
        BoxError,
    >
    where
        B: http_body::Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let io = self.connect(timeout).await?;
        Ok(http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(h2_connection_window(
                self.transport.max_concurrent_streams,
            ))
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?)
    }
}

/// The request target sent to an origin: `/path?query` (RFC 9112 3.2.1), never the absolute
/// form a proxy would take, whatever form the client used. The connection names the target
/// and Host names the site; servers that read the raw target (Python's http.server, nginx's
/// virtual hosts, path ACLs in Node) do not route an absolute form.
pub fn origin_form(path: PathAndQuery) -> Uri {
    Uri::from(path)
}

/// The request target on HTTP/2: `:scheme` (`https` over TLS, else `http`), `:authority` (what
/// HTTP/1.1 sends as Host, RFC 9113 8.3.1) and `:path` in origin form.
pub fn h2_target(transport: &Transport, authority: Authority, path: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(transport.scheme());
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

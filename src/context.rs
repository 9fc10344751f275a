//! Per-request facts shared by the layers of the request path: what the gateway knows of the
//! client (its address, the consumer a policy authenticated), what the policies carry from the
//! request to the response, and what forwarding needs of the client side. A low module: the
//! gateway, the policies, `proxy` and `upstream::send` import it; it imports none of them.

use std::any::Any;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

/// Who a request is from, once an authentication policy has said so.
#[derive(Debug, Clone, Default)]
pub struct Consumer {
    pub id: Arc<str>,
    pub groups: Vec<Arc<str>>,
    /// What the credential said about the consumer (JWT claims; empty for keys and passwords).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The verified client certificate of a mutual-TLS connection: who the client is, for
/// authentication policies and for the upstream.
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    /// RFC 4514 form, e.g. `CN=alice,O=Example`.
    pub subject: String,
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

impl ClientCert {
    /// The value forwarded upstream, in the shape of Envoy's `x-forwarded-client-cert`:
    /// `Subject="CN=alice,O=Example";DNS="alice.example.com";URI="spiffe://example/alice"`.
    pub fn forward_value(&self) -> Option<HeaderValue> {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut v = format!("Subject=\"{}\"", quote(&self.subject));
        // Every value quoted, so a name holding `;` or `,` cannot add fields.
        for (field, values) in [
            ("DNS", &self.dns),
            ("URI", &self.uris),
            ("Email", &self.emails),
        ] {
            for x in values {
                v.push_str(&format!(";{field}=\"{}\"", quote(x)));
            }
        }
        HeaderValue::from_str(&v).ok()
    }
}

/// The context one request carries through its policies, from the request phases to the
/// response phases.
pub struct RequestCtx {
    pub request_id: HeaderValue,
    /// The route's name; `None` when no route matched (the global policies still run).
    pub route: Option<Arc<str>>,
    /// Values captured by `match.path`, in pattern order.
    pub params: Vec<(String, String)>,
    /// The peer of the client connection.
    pub peer: SocketAddr,
    /// The client's address: the peer, or, when the peer is one of `server.trusted_proxies`,
    /// the nearest untrusted address in `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// Set by an authentication policy; read by authorization, rate limits, logs.
    pub consumer: Option<Arc<Consumer>>,
    /// The client's verified certificate, on a mutual-TLS listener.
    pub client_cert: Option<Arc<ClientCert>>,
    /// A gRPC call: the gateway's own errors are gRPC statuses, not JSON.
    pub grpc: bool,
    /// The client connection's scheme, `http` or `https` (for `X-Forwarded-Proto`).
    pub proto: &'static str,
    slots: Vec<(usize, Box<dyn Any + Send>)>,
    /// The position, in the chain, of the policy being called: its slot key.
    current: usize,
}

impl RequestCtx {
    pub fn new(request_id: HeaderValue, peer: SocketAddr, client_ip: IpAddr) -> RequestCtx {
        RequestCtx {
            request_id,
            route: None,
            params: Vec::new(),
            peer,
            client_ip,
            consumer: None,
            client_cert: None,
            grpc: false,
            proto: "http",
            slots: Vec::new(),
            current: 0,
        }
    }

    /// Set by the chain runner before each call, so each policy sees only its own slot.
    pub fn enter(&mut self, position: usize) {
        self.current = position;
    }

    /// Keeps `value` for the calling policy's response phase (a cache key, remaining quota).
    pub fn put<T: Any + Send>(&mut self, value: T) {
        let at = self.current;
        match self.slots.iter_mut().find(|(p, _)| *p == at) {
            Some(slot) => slot.1 = Box::new(value),
            None => self.slots.push((at, Box::new(value))),
        }
    }

    /// The calling policy's slot, if it put a `T` there.
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        self.slots
            .iter()
            .find(|(p, _)| *p == self.current)
            .and_then(|(_, v)| v.downcast_ref())
    }

    /// A context for the same request carried on in the background (a cache refresh): the
    /// same facts, and only the calling policy's slot, moved out of this one.
    pub fn fork(&mut self) -> RequestCtx {
        let at = self.current;
        let mut slots = Vec::new();
        if let Some(i) = self.slots.iter().position(|(p, _)| *p == at) {
            slots.push(self.slots.swap_remove(i));
        }
        RequestCtx {
            request_id: self.request_id.clone(),
            route: self.route.clone(),
            params: self.params.clone(),
            peer: self.peer,
            client_ip: self.client_ip,
            consumer: self.consumer.clone(),
            client_cert: self.client_cert.clone(),
            grpc: self.grpc,
            proto: self.proto,
            slots,
            current: at,
        }
    }

    /// Takes the calling policy's `T` out of its slot.
    pub fn take<T: Any + Send>(&mut self) -> Option<T> {
        let i = self
            .slots
            .iter()
            .position(|(p, v)| *p == self.current && v.is::<T>())?;
        self.slots.swap_remove(i).1.downcast().ok().map(|b| *b)
    }
}

/// A WebSocket upgrade the client asked for, taken from the request before its hop-by-hop
/// headers are removed.
pub struct Upgrade {
    pub proto: HeaderValue,
    pub on: OnUpgrade,
}

/// A client connection after `101 Switching Protocols`: its stream, with any bytes already
/// read past the request in front.
pub type Upgraded = Box<dyn UpgradedIo>;

pub trait UpgradedIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> UpgradedIo for T {}

/// Where the client's connection arrives once the 101 has been written. The connection puts
/// it in the extensions of a request that asks for an upgrade (as [`PendingUpgrade`]).
pub type OnUpgrade = tokio::sync::oneshot::Receiver<Upgraded>;

/// In a request's extensions: the connection can hand itself over after a 101. (Extensions
/// must be `Clone`; the receiver is taken once.)
#[derive(Clone)]
pub struct PendingUpgrade(std::sync::Arc<std::sync::Mutex<Option<OnUpgrade>>>);

impl PendingUpgrade {
    pub fn new(on: OnUpgrade) -> Self {
        PendingUpgrade(std::sync::Arc::new(std::sync::Mutex::new(Some(on))))
    }

    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// Facts about the client side that forwarding needs.
pub struct Downstream<'a> {
    /// The client's IP, formatted for `X-Forwarded-For`.
    pub forwarded_for: &'a HeaderValue,
    pub proto: &'static str,
    /// The host the request was routed by, as the client wrote it (URI authority or Host).
    pub host: Option<&'a HeaderValue>,
    /// Held by an upgraded connection for as long as it lives, so WebSockets count against
    /// `server.max_connections` too.
    pub conn_slot: Option<Arc<dyn Send + Sync>>,
    /// `server.upgrade_idle_timeout`: an upgraded connection idle both ways this long closes.
    pub upgrade_idle: std::time::Duration,
    /// The port the client connected to, for `X-Forwarded-Port`.
    pub port: &'a HeaderValue,
    /// The client is one of `server.trusted_proxies`: its forwarding fields are kept.
    pub trusted: bool,
    /// The prefix `strip_prefix` removed, for `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
    /// The client sent exactly `TE: trailers` (removed as hop-by-hop): an HTTP/2 upstream
    /// gets it again, as gRPC servers require it.
    pub te_trailers: bool,
}

/// Facts about the client connection.
#[derive(Clone)]
pub struct ConnInfo {
    pub client_addr: SocketAddr,
    pub proto: &'static str,
    /// The connection's slot under `server.max_connections` and `max_connections_per_ip`;
    /// an upgraded connection keeps it.
    pub slot: Option<Arc<dyn Send + Sync>>,
    /// The client IP as an `X-Forwarded-For` element, formatted once per connection.
    pub forwarded_for: HeaderValue,
    /// The local port the client connected to, formatted for `X-Forwarded-Port`.
    pub port: HeaderValue,
    /// The client is one of `server.trusted_proxies`.
    pub trusted: bool,
    /// The verified client certificate (mutual TLS).
    pub client_cert: Option<Arc<ClientCert>>,
    /// The header the client certificate's identity goes upstream in; a client's copy of it
    /// is removed whether or not there is a certificate.
    pub forward_identity: Option<http::HeaderName>,
    /// `Strict-Transport-Security` for every response on this connection.
    pub hsts: Option<HeaderValue>,
    /// A plain listener that sends clients to HTTPS: the port (`None` = 443) and status.
    pub redirect_https: Option<(Option<u16>, http::StatusCode)>,
}

impl ConnInfo {
    pub fn new(
        client_addr: SocketAddr,
        proto: &'static str,
        slot: Option<Arc<dyn Send + Sync>>,
        port: HeaderValue,
        trusted: bool,
    ) -> Self {
        ConnInfo {
            port,
            trusted,
            client_addr,
            proto,
            slot,
            forwarded_for: ip_value(client_addr),
            client_cert: None,
            forward_identity: None,
            hsts: None,
            redirect_https: None,
        }
    }
}

pub fn ip_value(addr: SocketAddr) -> HeaderValue {
    let ip = addr.ip().to_canonical();
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A stream with bytes already read from it in front: a client's after an upgrade (or handed to
/// hyper after the HTTP/2 preface), an upstream's after its 101.
pub struct Prefixed<S> {
    read: bytes::Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub fn new(read: bytes::Bytes, io: S) -> Self {
        Prefixed { read, io }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            bytes::Buf::advance(&mut this.read, n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

thread_local! {
    static CORE: Cell<u16> = const { Cell::new(0) };
}

/// The core (1..=N) whose runtime this thread runs with `scheduler: per_core`; 0 on any other
/// thread. Upstream pools hand a core the connections it opened (registered with its own
/// reactor) first.
pub fn core() -> u16 {
    CORE.with(Cell::get)
}

/// Marks this thread as core `i`'s (see [`core`]).
pub fn set_core(i: u16) {
    CORE.with(|c| c.set(i));
}

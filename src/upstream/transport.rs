//! How an upstream's connections are made, decided once per upstream when a config compiles:
//! the HTTP version, and for `https://` targets the TLS client (trusted roots, client
//! certificate, ALPN). [`super::connector`] uses it for every connection, pooled or health
//! check; the pool is kept across a reload only while its transport stays the same.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP version spoken to the targets of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2: over TLS with ALPN `h2`, or cleartext with prior knowledge (`h2c://`).
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "h2",
        }
    }
}

/// Documented default of `max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 100;

/// The connection recipe of one upstream.
pub struct Transport {
    pub protocol: Protocol,
    /// HTTP/2: streams in flight on one connection before the pool opens another.
    pub max_concurrent_streams: usize,
    /// Set for `https://` targets.
    pub tls: Option<TlsClient>,
}

impl Transport {
    /// Cleartext HTTP/1.1: what an upstream of `http://` targets with no `protocol` gets.
    pub fn plain_http1() -> Transport {
        Transport {
            protocol: Protocol::Http1,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            tls: None,
        }
    }

    /// Whether connections made by `other` are the same as this one's (so a pool built for
    /// one may serve the other): same protocol, stream limit, and TLS inputs.
    pub fn same_as(&self, other: &Transport) -> bool {
        self.protocol == other.protocol
            && self.max_concurrent_streams == other.max_concurrent_streams
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.fingerprint == b.fingerprint,
                _ => false,
            }
    }

    /// The scheme of the URIs sent on HTTP/2 (`:scheme`).
    pub fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }
}

/// Where an upstream's certificates are checked against.
pub enum Trust {
    /// The system's store, or a CA file that replaces it.
    Roots(Arc<RootCertStore>),
    /// `insecure_skip_verify: true`: any certificate and name.
    Anything,
}

/// A TLS client for one upstream: the rustls config (shared by every connection) and what it
/// was built from, so a reload with the same inputs keeps the pool.
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    /// A digest of the inputs (CA, client certificate and key, name, verification switch).
    pub fingerprint: [u8; 32],
}

impl TlsClient {
    /// Builds the client config: aws-lc-rs (the gateway's one provider), TLS 1.2 and 1.3,
    /// `alpn` offered (`h2` for HTTP/2 upstreams, `http/1.1` otherwise), an optional client
    /// certificate. Errors are the rustls reason, for a config error to carry.
    pub fn new(
        trust: Trust,
        client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        protocol: Protocol,
        fingerprint: [u8; 32],
    ) -> Result<TlsClient, ClientAuthError> {
        let provider = crate::tls::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientAuthError(e.to_string()))?;
        let builder = match trust {
            Trust::Roots(roots) => builder.with_root_certificates(roots),
            Trust::Anything => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        };
        let mut config = match client_auth {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientAuthError(e.to_string()))?,
        };
        config.alpn_protocols = match protocol {
            Protocol::Http2 => vec![b"h2".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            fingerprint,
        })
    }
}

/// The client certificate and key could not be used together (or the provider refused them).
#[derive(Debug)]
pub struct ClientAuthError(pub String);

impl fmt::Display for ClientAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `insecure_skip_verify`: any chain and any name pass, but the handshake signatures are still
/// checked with the provider, so the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to a target: plain TCP or TLS over it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

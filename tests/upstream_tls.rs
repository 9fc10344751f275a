//! HTTPS and HTTP/2 upstreams: TLS with a private CA (SNI, origin form on the wire), the system
//! roots refusing it, `insecure_skip_verify`, mutual TLS, h2c multiplexing, h2 over TLS (ALPN),
//! GOAWAY and REFUSED_STREAM, health checks over TLS + h2, and the config checks. Every
//! certificate is made here with rcgen; every server is in-process on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- certificates and files

/// A private CA made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (server) or a client certificate: (cert PEM, key PEM).
    fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A temp directory for PEM files and configs, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "gatehouse-upstream-tls-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- TLS servers

/// What a TLS server saw of each ClientHello.
#[derive(Debug, Clone)]
struct Hello {
    sni: Option<String>,
    alpn: Vec<String>,
}

/// Serves one certificate and records every ClientHello (SNI, ALPN offered).
#[derive(Debug)]
struct Recorder {
    key: Arc<CertifiedKey>,
    hellos: Arc<Mutex<Vec<Hello>>>,
}

impl ResolvesServerCert for Recorder {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.hellos.lock().unwrap().push(Hello {
            sni: hello.server_name().map(str::to_owned),
            alpn: hello
                .alpn()
                .map(|a| a.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                .unwrap_or_default(),
        });
        Some(self.key.clone())
    }
}

/// A server config for `(cert, key)` offering `alpn`, requiring a client certificate from
/// `client_ca` when given; ClientHellos go to `hellos`.
fn server_tls(
    leaf: &(String, String),
    alpn: &[&str],
    client_ca: Option<&Ca>,
    hellos: Arc<Mutex<Vec<Hello>>>,
) -> Arc<ServerConfig> {
    let provider = gatehouse::tls::provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).unwrap();
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let resolver = Recorder {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        hellos,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// An HTTP/1.1 server over TLS that records the exact request heads it receives (decrypted)
/// and answers each with `200 ok`.
struct RawTls {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RawTls {
    async fn start(tls: Arc<ServerConfig>) -> RawTls {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, heads) = (acceptor.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = read_head(&mut s, &mut buf).await else {
                            return;
                        };
                        let head: Vec<u8> = buf.drain(..end).collect();
                        heads
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawTls { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawTls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until `buf` holds a whole head; its length (with the blank line), or `None` at EOF.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What an HTTP/2 test server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    version: Version,
    headers: HeaderMap,
    body_len: usize,
}

/// A hyper HTTP/2 server (cleartext, or behind TLS) that counts the connections it accepts,
/// records each request, answers `200 ok` after `delay`, and shuts every open connection down
/// gracefully (GOAWAY) when `goaway()` is called.
struct H2Upstream {
    addr: std::net::SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    goaway: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl H2Upstream {
    async fn start(tls: Option<Arc<ServerConfig>>, delay: Duration) -> H2Upstream {
        Self::start_limited(tls, delay, None).await
    }

    /// With `max_streams`, the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    async fn start_limited(
        tls: Option<Arc<ServerConfig>>,
        delay: Duration,
        max_streams: Option<u32>,
    ) -> H2Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (goaway, _) = tokio::sync::watch::channel(0u64);
        let (c, s, g) = (conns.clone(), seen.clone(), goaway.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (seen, shutdown, acceptor) = (s.clone(), g.subscribe(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_h2(tcp, seen, delay, max_streams, shutdown).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve_h2(tls, seen, delay, max_streams, shutdown).await;
                            }
                        }
                    }
                });
            }
        });
        H2Upstream {
            addr,
            conns,
            seen,
            goaway,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Every open connection starts a graceful shutdown (GOAWAY, then close when idle).
    fn goaway(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_h2<I>(
    io: I,
    seen: Arc<Mutex<Vec<Seen>>>,
    delay: Duration,
    max_streams: Option<u32>,
    mut shutdown: tokio::sync::watch::Receiver<u64>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            seen.lock().unwrap().push(Seen {
                uri: parts.uri.to_string(),
                version: parts.version,
                headers: parts.headers,
                body_len: body.len(),
            });
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(full("ok")))
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(max_streams)
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                if changed.is_err() {
                    let _ = conn.await;
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- helpers

fn gateway_yaml(upstreams: &str, routes: &str) -> String {
    format!("listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n{upstreams}\nroutes:\n{routes}")
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> TestResponse {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

/// Waits (at most 5 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway error: the status, the code, and a request id equal to the X-Request-Id header.
fn assert_gateway_error(r: &TestResponse, status: u16, codes: &[&str]) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    assert!(
        codes.contains(&j["error"].as_str().unwrap_or("")),
        "error code {} is not one of {codes:?}",
        j["error"]
    );
    let id = j["request_id"].as_str().unwrap();
    assert!(!id.is_empty());
    assert_eq!(r.header("x-request-id"), Some(id));
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn https_upstream_with_a_private_ca_gets_sni_and_an_origin_form_request() {
    let ca = Ca::new("internal CA");
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let leaf = ca.leaf(&["api.internal", "localhost"], false);
    let up = RawTls::start(server_tls(&leaf, &["http/1.1"], None, hellos.clone())).await;
    let dir = Dir::new();
    let ca_file = dir.file("ca.pem", &ca.pem);
    let port = up.addr.port();
    let yaml = gateway_yaml(
        &format!(
            "  named:\n    targets: [\"https://127.0.0.1:{port}\"]\n    tls: {{ ca: {ca_file}, server_name: api.internal }}\n    health: {{ active: {{ path: /healthz, interval: 100ms, timeout: 100ms }} }}\n  by_host:\n    targets: [\"https://localhost:{port}\"]\n    tls: {{ ca: {ca_file} }}\n"
        ),
        "  - match: { path_prefix: /named }\n    upstream: named\n  - match: { path_prefix: /host }\n    upstream: by_host\n",
    );
    let gw = TestGateway::start(&yaml).await;

    let r = get(&gw.url("/named/x?q=1")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ok");
    let head = up
        .heads()
        .into_iter()
        .find(|h| h.contains("/named/"))
        .unwrap();
    assert!(head.starts_with("GET /named/x?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("\r\nhost: {}\r\n", gw.addr)),
        "the client's Host: {head}"
    );
    let seen = hellos.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|h| h.sni.as_deref() == Some("api.internal") && h.alpn == ["http/1.1"]),
        "{seen:?}"
    );

    // With no `server_name`, the target's host is the name sent and verified.
    let before = hellos.lock().unwrap().len();
    let r = get(&gw.url("/host/y")).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = hellos.lock().unwrap()[before..].to_vec();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|h| h.sni.as_deref() == Some("localhost")),
        "{seen:?}"
    );

    // Active health checks go over TLS too, with the configured name.
    eventually("a health check over TLS", || {
        up.heads()
            .iter()
            .any(|h| h.starts_with("GET /healthz HTTP/1.1\r\n"))
    })
    .await;
    let after = hellos.lock().unwrap().clone();
    assert!(
        after
            .iter()
            .all(|h| h.sni.as_deref() != Some("127.0.0.1") && h.sni.is_some()),
        "{after:?}"
    );
}

#[tokio::test]
async fn system_roots_refuse_a_private_ca_and_insecure_skip_verify_accepts_it_with_a_warning() {
    let ca = Ca::new("private CA");
    let leaf = ca.leaf(&["api.internal"], false);
    let up = RawTls::start(server_tls(&leaf, &["http/1.1"], None, Arc::default())).await;
    let dir = Dir::new();
    let target = format!("https://127.0.0.1:{}", up.addr.port());

    // The real binary, so its log can be read: the reason must be plain.
    let strict = dir.file(
        "strict.yaml",
        &gateway_yaml(
            &format!(
                "  u:\n    targets: [\"{target}\"]\n    tls: {{ server_name: api.internal }}\n"
            ),
            "  - match: { path_prefix: / }\n    upstream: u\n",
        ),
    );
    let gw = GatewayProcess::start(std::path::Path::new(&strict));
    let r = get(&gw.url("/x")).await;
    assert_gateway_error(&r, 502, &["upstream_connect_failed"]);
    let lines = gw.stderr_lines.clone();
    eventually("the TLS failure in the log", || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("TLS handshake") && l.contains("UnknownIssuer"))
    })
    .await;
    assert!(up.heads().is_empty(), "nothing reached the target");
    drop(gw);

    let insecure = dir.file(
        "insecure.yaml",
        &gateway_yaml(
            &format!(
                "  u:\n    targets: [\"{target}\"]\n    tls: {{ insecure_skip_verify: true }}\n"
            ),
            "  - match: { path_prefix: / }\n    upstream: u\n",
        ),
    );
    let out = std::process::Command::new(bin())
        .args(["check", "--config", &insecure])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning") && text.contains("upstreams.u.tls.insecure_skip_verify"),
        "{text}"
    );
    let gw = TestGateway::start(&std::fs::read_to_string(&insecure).unwrap()).await;
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.heads().len(), 1);
}

#[tokio::test]
async fn mutual_tls_to_the_upstream() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let up = RawTls::start(server_tls(
        &server_ca.leaf(&["api.internal"], false),
        &["http/1.1"],
        Some(&client_ca),
        Arc::default(),
    ))
    .await;
    let dir = Dir::new();
    let ca = dir.file("ca.pem", &server_ca.pem);
    let (cert, key) = client_ca.leaf(&["gateway"], true);
    let (cert, key) = (dir.file("gw.pem", &cert), dir.file("gw.key", &key));
    // A client certificate from a CA the upstream does not trust.
    let (other_cert, other_key) = server_ca.leaf(&["gateway"], true);
    let (other_cert, other_key) = (
        dir.file("o.pem", &other_cert),
        dir.file("o.key", &other_key),
    );
    let target = format!("https://127.0.0.1:{}", up.addr.port());
    let yaml = gateway_yaml(
        &format!(
            "  with:\n    targets: [\"{target}\"]\n    tls: {{ ca: {ca}, server_name: api.internal, client_cert: {cert}, client_key: {key} }}\n  without:\n    targets: [\"{target}\"]\n    tls: {{ ca: {ca}, server_name: api.internal }}\n  untrusted:\n    targets: [\"{target}\"]\n    tls: {{ ca: {ca}, server_name: api.internal, client_cert: {other_cert}, client_key: {other_key} }}\n"
        ),
        "  - match: { path_prefix: /with }\n    upstream: with\n  - match: { path_prefix: /without }\n    upstream: without\n  - match: { path_prefix: /untrusted }\n    upstream: untrusted\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let r = get(&gw.url("/with/a")).await;
    assert_eq!(r.status, StatusCode::OK);
    // TLS 1.3: the server refuses a missing or unknown client certificate after the client's
    // side of the handshake is done, so the gateway sees it as the exchange failing.
    for path in ["/without/a", "/untrusted/a"] {
        let r = get(&gw.url(path)).await;
        assert_gateway_error(&r, 502, &["upstream_failed", "upstream_connect_failed"]);
    }
    assert_eq!(
        up.heads().len(),
        1,
        "only the request with the client certificate"
    );
}

#[tokio::test]
async fn h2c_upstream_carries_concurrent_requests_on_one_connection() {
    let up = H2Upstream::start(None, Duration::from_millis(200)).await;
    let yaml = gateway_yaml(
        &format!("  u:\n    targets: [\"h2c://{}\"]\n", up.addr),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let url = gw.url("/items?page=2");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = url.clone();
        calls.spawn(async move { get(&url).await.status });
    }
    let statuses: Vec<StatusCode> = calls.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        up.connections(),
        1,
        "20 requests multiplexed on one connection"
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 20);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2);
        // `:scheme`, `:authority` (the client's Host) and `:path` in origin form; no Host field.
        assert_eq!(s.uri, format!("http://{}/items?page=2", gw.addr));
        assert!(!s.headers.contains_key("host"), "{:?}", s.headers);
        assert!(!s.headers.contains_key("te"));
    }

    // HTTP/2 clients too; `TE: trailers` (what gRPC clients send) goes through on HTTP/2.
    let r = send(
        &h2c_client(),
        Request::get(gw.url("/h2")).body(full("")).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_with(&gw.url("/te"), &[("te", "trailers")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let te = up
        .seen()
        .into_iter()
        .find(|s| s.uri.ends_with("/te"))
        .unwrap();
    assert_eq!(te.headers.get("te").unwrap(), "trailers");
    // A request body streams onto the HTTP/2 stream.
    let r = send(
        &client(),
        Request::post(gw.url("/post"))
            .body(full("hello world"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let post = up
        .seen()
        .into_iter()
        .find(|s| s.uri.ends_with("/post"))
        .unwrap();
    assert_eq!(post.body_len, 11);
    assert_eq!(post.headers.get("content-length").unwrap(), "11");
    assert_eq!(up.connections(), 1);

    // A WebSocket upgrade cannot go to an HTTP/2 upstream: 502, and the target sees nothing.
    let before = up.seen().len();
    let got = raw::exchange(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let resp = got.response();
    assert_eq!(resp.status, 502);
    assert_eq!(resp.json()["error"], "upstream_failed");
    assert_eq!(up.seen().len(), before);
}

#[tokio::test]
async fn h2_over_tls_is_negotiated_with_alpn_and_health_checked() {
    let ca = Ca::new("internal CA");
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let tls = server_tls(
        &ca.leaf(&["api.internal"], false),
        &["h2"],
        None,
        hellos.clone(),
    );
    let up = H2Upstream::start(Some(tls), Duration::ZERO).await;
    let dir = Dir::new();
    let ca_file = dir.file("ca.pem", &ca.pem);
    let yaml = gateway_yaml(
        &format!(
            "  u:\n    targets: [\"https://{}\"]\n    protocol: h2\n    max_concurrent_streams: 10\n    tls: {{ ca: {ca_file}, server_name: api.internal }}\n    health: {{ active: {{ path: /healthz, interval: 100ms, timeout: 100ms }} }}\n",
            up.addr
        ),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    );
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..3 {
        let r = get(&gw.url("/secure")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let seen = up.seen();
    let req = seen.iter().find(|s| s.uri.ends_with("/secure")).unwrap();
    assert_eq!(req.version, Version::HTTP_2);
    assert_eq!(req.uri, format!("https://{}/secure", gw.addr));
    assert!(
        hellos
            .lock()
            .unwrap()
            .iter()
            .all(|h| h.alpn == ["h2"] && h.sni.as_deref() == Some("api.internal"))
    );
    eventually("a health check over TLS + h2", || {
        up.seen().iter().any(|s| {
            s.uri.ends_with("/healthz")
                && s.version == Version::HTTP_2
                && s.headers
                    .get("user-agent")
                    .is_some_and(|v| v == "gatehouse-health-check")
        })
    })
    .await;
}

#[tokio::test]
async fn an_upstream_goaway_fails_no_request() {
    let up = H2Upstream::start(None, Duration::from_millis(30)).await;
    let yaml = gateway_yaml(
        &format!("  u:\n    targets: [\"h2c://{}\"]\n", up.addr),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url("/first")).await.status, StatusCode::OK);
    assert_eq!(up.connections(), 1);

    // Between requests: the connection is shut down gracefully; the next ones use a new one.
    up.goaway();
    for i in 0..5 {
        let r = get(&gw.url(&format!("/after/{i}"))).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert!(up.connections() >= 2);

    // While requests are in flight, and with more arriving as the GOAWAY lands.
    let url = gw.url("/busy");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let url = url.clone();
        calls.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            get(&url).await.status
        });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    up.goaway();
    tokio::time::sleep(Duration::from_millis(30)).await;
    up.goaway();
    let statuses: Vec<StatusCode> = calls.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(get(&gw.url("/last")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn stream_limits_open_more_connections_and_max_connections_still_counts_connections() {
    let concurrent = |url: String, n: u64, stagger: Duration| async move {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..n {
            let url = url.clone();
            calls.spawn(async move {
                tokio::time::sleep(stagger * i as u32).await;
                get(&url).await.status
            });
        }
        calls.join_all().await
    };

    // The gateway's own limit: 6 requests at once, 2 streams per connection.
    let up = H2Upstream::start(None, Duration::from_millis(300)).await;
    let gw = TestGateway::start(&gateway_yaml(
        &format!(
            "  u:
    targets: [\"h2c://{}\"]\n    max_concurrent_streams: 2\n",
            up.addr
        ),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    ))
    .await;
    let statuses = concurrent(gw.url("/a"), 6, Duration::ZERO).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(up.connections(), 3);

    // The target's SETTINGS_MAX_CONCURRENT_STREAMS (1) wins over the default 100, once the
    // connection has read it (requests 50 ms apart).
    let up = H2Upstream::start_limited(None, Duration::from_millis(500), Some(1)).await;
    let gw = TestGateway::start(&gateway_yaml(
        &format!("  u:\n    targets: [\"h2c://{}\"]\n", up.addr),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    ))
    .await;
    assert_eq!(get(&gw.url("/warm")).await.status, StatusCode::OK);
    let started = std::time::Instant::now();
    let statuses = concurrent(gw.url("/b"), 4, Duration::from_millis(50)).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(up.connections(), 4, "one stream per connection");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "served side by side, not queued: {:?}",
        started.elapsed()
    );

    // `limits.max_connections` counts connections: with one connection of 2 streams, 4
    // requests at once share it, two of them waiting for a stream to end.
    let up = H2Upstream::start(None, Duration::from_millis(200)).await;
    let gw = TestGateway::start(&gateway_yaml(
        &format!(
            "  u:\n    targets: [\"h2c://{}\"]\n    max_concurrent_streams: 2\n    limits: {{ max_connections: 1 }}\n",
            up.addr
        ),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    ))
    .await;
    let statuses = concurrent(gw.url("/c"), 4, Duration::ZERO).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(up.connections(), 1);

    // At the cap, an idle HTTP/2 connection to one target is closed to make room for another.
    let (a, b) = (
        H2Upstream::start(None, Duration::ZERO).await,
        H2Upstream::start(None, Duration::ZERO).await,
    );
    let gw = TestGateway::start(&gateway_yaml(
        &format!(
            "  u:\n    targets: [\"h2c://{}\", \"h2c://{}\"]\n    limits: {{ max_connections: 1 }}\n",
            a.addr, b.addr
        ),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    ))
    .await;
    let started = std::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/d")).await.status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for a slot"
    );
    assert_eq!((a.connections(), b.connections()), (2, 2));
}

/// An h2c server (the `h2` crate, to control frames) that resets the first stream of every
/// even-numbered connection with `reason` (every stream, with `always`) and answers every
/// other request with the length of its body. Counts connections and streams.
async fn resetting_h2c(
    reason: h2::Reason,
    always: bool,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let streams = Arc::new(AtomicUsize::new(0));
    let (c, st) = (conns.clone(), streams.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                let mut first = n.is_multiple_of(2);
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    st.fetch_add(1, Ordering::SeqCst);
                    if std::mem::take(&mut first) || always {
                        respond.send_reset(reason);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut len = 0;
                        while let Some(Ok(d)) = body.data().await {
                            len += d.len();
                            let _ = body.flow_control().release_capacity(d.len());
                        }
                        let Ok(mut out) = respond.send_response(Response::new(()), false) else {
                            return;
                        };
                        let _ = out.send_data(Bytes::from(len.to_string()), true);
                    });
                }
            });
        }
    });
    (addr, conns, streams, task)
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_on_a_new_connection() {
    let (addr, conns, _, task) = resetting_h2c(h2::Reason::REFUSED_STREAM, false).await;
    // Two upstreams on the same server: two pools, so each meets a refusing connection first.
    let yaml = gateway_yaml(
        &format!(
            "  put:\n    targets: [\"h2c://{addr}\"]\n    retries: {{ \"on\": [reset] }}\n  get:\n    targets: [\"h2c://{addr}\"]\n"
        ),
        "  - match: { path_prefix: /put }\n    upstream: put\n  - match: { path_prefix: /get }\n    upstream: get\n",
    );
    let gw = TestGateway::start(&yaml).await;
    // A body kept for replay is sent again whole.
    let r = send(
        &client(),
        Request::put(gw.url("/put"))
            .header("content-length", "5")
            .body(full("hello"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(&r.body[..], b"5");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // A body-less request, whatever the retry settings.
    let r = get(&gw.url("/get")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(conns.load(Ordering::SeqCst), 4);
    task.abort();
}

#[test]
fn config_errors_name_their_keys() {
    let dir = Dir::new();
    let ca = Ca::new("CA");
    let good_ca = dir.file("ca.pem", &ca.pem);
    let (cert, key) = ca.leaf(&["gw"], true);
    let cert = dir.file("gw.pem", &cert);
    let key = dir.file("gw.key", &key);
    let junk = dir.file("junk.pem", "not a certificate\n");
    let missing = dir.0.join("missing.pem").display().to_string();
    let errors = |upstream: &str| -> Vec<String> {
        let yaml = gateway_yaml(
            &format!("  u:\n{upstream}"),
            "  - match: { path_prefix: / }\n    upstream: u\n",
        );
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).unwrap();
        match gatehouse::compile::compile(&cfg, &gatehouse::State::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    };
    let one = |upstream: &str, key_path: &str, words: &[&str]| {
        let e = errors(upstream);
        assert!(
            e.iter()
                .any(|e| e.starts_with(key_path) && words.iter().all(|w| e.contains(w))),
            "expected {key_path} {words:?} in {e:?}"
        );
    };
    one(
        "    targets: [\"https://a:1\", \"http://b:1\"]\n",
        "upstreams.u.targets[1]",
        &["one scheme", "https://"],
    );
    one(
        "    targets: [\"http://a:1\"]\n    tls: { server_name: a }\n",
        "upstreams.u.tls",
        &["https://"],
    );
    one(
        &format!("    targets: [\"https://a:1\"]\n    tls: {{ ca: {junk} }}\n"),
        "upstreams.u.tls.ca",
        &[&junk, "PEM"],
    );
    one(
        &format!("    targets: [\"https://a:1\"]\n    tls: {{ ca: {missing} }}\n"),
        "upstreams.u.tls.ca",
        &[&missing],
    );
    one(
        &format!("    targets: [\"https://a:1\"]\n    tls: {{ client_cert: {cert} }}\n"),
        "upstreams.u.tls.client_key",
        &["both or neither"],
    );
    one(
        &format!(
            "    targets: [\"https://a:1\"]\n    tls: {{ client_cert: {cert}, client_key: {junk} }}\n"
        ),
        "upstreams.u.tls.client_key",
        &[&junk],
    );
    let (_, other_key) = ca.leaf(&["other"], true);
    let other_key = dir.file("other.key", &other_key);
    one(
        &format!(
            "    targets: [\"https://a:1\"]\n    tls: {{ client_cert: {cert}, client_key: {other_key} }}\n"
        ),
        "upstreams.u.tls.client_key",
        &[&other_key, &cert, "cannot be used together"],
    );
    one(
        &format!(
            "    targets: [\"https://a:1\"]\n    tls: {{ ca: {good_ca}, insecure_skip_verify: true }}\n"
        ),
        "upstreams.u.tls.ca",
        &["insecure_skip_verify"],
    );
    one(
        "    targets: [\"https://a:1\"]\n    tls: { server_name: \"not a name\" }\n",
        "upstreams.u.tls.server_name",
        &["not a name"],
    );
    one(
        "    targets: [\"h2c://a:1\"]\n    protocol: http1\n",
        "upstreams.u.protocol",
        &["h2c://"],
    );
    one(
        "    targets: [\"http://a:1\"]\n    max_concurrent_streams: 10\n",
        "upstreams.u.max_concurrent_streams",
        &["HTTP/2"],
    );
    one(
        "    targets: [\"h2c://a:1\"]\n    max_concurrent_streams: 0\n",
        "upstreams.u.max_concurrent_streams",
        &["at least 1"],
    );
    one(
        "    targets: [\"ftp://a:1\"]\n",
        "upstreams.u.targets[0]",
        &["unsupported scheme"],
    );
    // Unknown keys under `tls` are refused like everywhere else.
    let yaml = gateway_yaml(
        "  u:\n    targets: [\"https://a:1\"]\n    tls: { verify: false }\n",
        "  - match: { path_prefix: / }\n    upstream: u\n",
    );
    let e = gatehouse::config::parse_str(&yaml, &|_| None).unwrap_err();
    assert!(
        e.iter().any(|e| e.to_string().contains("upstreams.u.tls")),
        "{e:?}"
    );

    // Valid combinations compile, and their files are registered as file paths (the admin
    // API cannot add or change them).
    for ok in [
        format!(
            "    targets: [\"https://a\"]\n    tls: {{ ca: {good_ca}, client_cert: {cert}, client_key: {key} }}\n"
        ),
        "    targets: [\"https://a\"]\n    protocol: h2\n    max_concurrent_streams: 5\n"
            .to_owned(),
        "    targets: [\"h2c://a:1\", \"h2c://b:1\"]\n".to_owned(),
        "    targets: [\"http://a:1\"]\n    protocol: h2\n".to_owned(),
    ] {
        assert_eq!(errors(&ok), Vec::<String>::new(), "{ok}");
    }
    let yaml = gateway_yaml(
        &format!(
            "  u:\n    targets: [\"https://a\"]\n    tls: {{ ca: {good_ca}, client_cert: {cert}, client_key: {key} }}\n"
        ),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    );
    let cfg = gatehouse::config::parse_str(&yaml, &|_| None).unwrap();
    let paths = cfg.file_paths();
    for (k, v) in [
        ("upstreams.u.tls.ca", &good_ca),
        ("upstreams.u.tls.client_cert", &cert),
        ("upstreams.u.tls.client_key", &key),
    ] {
        assert!(
            paths.iter().any(|(pk, pv)| pk == k && pv == v),
            "{k} missing from {paths:?}"
        );
    }
}

#[test]
fn a_reload_keeps_the_pool_while_the_tls_inputs_stay_the_same() {
    let dir = Dir::new();
    let ca = dir.file("ca.pem", &Ca::new("first").pem);
    let state = gatehouse::State::default();
    let load = |tls: &str| {
        let yaml = gateway_yaml(
            &format!("  u:\n    targets: [\"https://10.0.0.5:8443\"]\n    tls: {tls}\n"),
            "  - match: { path_prefix: / }\n    upstream: u\n",
        );
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).unwrap();
        let rt = gatehouse::compile::compile(&cfg, &state).unwrap();
        state.adopt(&rt);
        rt.upstreams["u"].pool.clone()
    };
    let tls = format!("{{ ca: {ca}, server_name: api.internal }}");
    let first = load(&tls);
    assert!(Arc::ptr_eq(&first, &load(&tls)), "same inputs: same pool");
    // Another CA in the same file: connections made with the old trust are not kept.
    std::fs::write(&ca, Ca::new("second").pem).unwrap();
    let second = load(&tls);
    assert!(!Arc::ptr_eq(&first, &second));
    let renamed = load(&format!("{{ ca: {ca}, server_name: other.internal }}"));
    assert!(!Arc::ptr_eq(&second, &renamed));
}

#[tokio::test]
async fn a_stream_reset_after_processing_is_not_sent_again() {
    // INTERNAL_ERROR says nothing about whether the target acted on the request: it must not
    // be duplicated, whatever the method.
    let (addr, _, streams, task) = resetting_h2c(h2::Reason::INTERNAL_ERROR, true).await;
    let gw = TestGateway::start(&gateway_yaml(
        &format!("  u:\n    targets: [\"h2c://{addr}\"]\n"),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    ))
    .await;
    let r = get(&gw.url("/once")).await;
    assert_gateway_error(&r, 502, &["upstream_failed"]);
    assert_eq!(streams.load(Ordering::SeqCst), 1);
    let r = send(
        &client(),
        Request::post(gw.url("/once"))
            .header("content-length", "2")
            .body(full("hi"))
            .unwrap(),
    )
    .await;
    assert_gateway_error(&r, 502, &["upstream_failed"]);
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    task.abort();
}

/// Clients that stop reading big answers from an HTTP/2 target do not stall the other streams
/// on its connection. Before, the connection's flow-control window was hyper's default (5 MB)
/// against 2 MB per stream: three readers that stopped held it all, and every other answer on
/// that connection waited until the stalled clients were cut off (`send_timeout`, 60 s, for
/// these HTTP/1.1 clients). Now the connection's window covers every stream it may carry
/// (`max_concurrent_streams` × 256 KiB): what a stalled stream holds is its own window, and
/// the others flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_do_not_stall_the_other_streams_of_an_h2_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // `/big`: 16 MiB in 64 KiB frames; anything else: `ok`.
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/big" {
                        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                        let frames = (0..256).map(move |_| {
                            Ok::<_, Infallible>(hyper::body::Frame::data(chunk.clone()))
                        });
                        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
                    } else {
                        http_body_util::Full::new(Bytes::from_static(b"ok")).boxed()
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let gw = TestGateway::start(&gateway_yaml(
        &format!("  u:\n    targets: [\"h2c://{addr}\"]\n"),
        "  - match: { path_prefix: / }\n    upstream: u\n",
    ))
    .await;
    // Four clients ask for 16 MiB each and read nothing (with a small receive buffer, little of
    // it waits in their kernels).
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(gw.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Their streams fill their windows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = tokio::time::timeout(Duration::from_secs(5), get(&gw.url("/small")))
        .await
        .expect("an answer on the same connection is not held up by the stalled streams");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "every stream on one connection"
    );
    drop(stalled);
    server.abort();
}

/// An HTTP/2 target written as raw frames, answering every request with `block` (an HPACK
/// header block, sent as one HEADERS frame) and then `data` (one DATA frame ending the
/// stream; none if empty, when the HEADERS frame ends it).
async fn raw_h2c(block: Vec<u8>, data: Vec<u8>) -> (std::net::SocketAddr, JoinHandle<()>) {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let (block, data) = (block.clone(), data.clone());
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if tcp.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Our SETTINGS (none), and the acknowledgement of the client's.
                let mut hello = frame(0x4, 0, 0, &[]);
                hello.extend(frame(0x4, 0x1, 0, &[]));
                if tcp.write_all(&hello).await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    while buf.len() >= 9 {
                        let len = (usize::from(buf[0]) << 16)
                            | (usize::from(buf[1]) << 8)
                            | usize::from(buf[2]);
                        if buf.len() < 9 + len {
                            break;
                        }
                        let (kind, flags) = (buf[3], buf[4]);
                        let stream =
                            u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                        buf.drain(..9 + len);
                        // A request's HEADERS (with END_HEADERS): the scripted answer.
                        if kind == 0x1 && flags & 0x4 != 0 {
                            let end = if data.is_empty() { 0x1 } else { 0 };
                            let mut out = frame(0x1, 0x4 | end, stream, &block);
                            if !data.is_empty() {
                                out.extend(frame(0x0, 0x1, stream, &data));
                            }
                            if tcp.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Malformed answers from an HTTP/2 target (RFC 9113 8.1.1) are never relayed: a `:status`
/// that is not three digits, a connection-specific field, an upper-case field name, or no
/// `:status` at all get the client a JSON 502 with its request id; a body longer than its
/// `content-length` is never passed on (here, with the DATA in the same packet as the
/// HEADERS, the client's connection is closed with nothing sent). The raw target first
/// proves it can answer well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_answers_are_never_relayed() {
    // HPACK: 0x88 is `:status: 200`; 0x08 a literal `:status` of the value that follows;
    // 0x00 a literal with a new name.
    fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
        b
    }
    let status = |v: &str| {
        let mut b = vec![0x08, v.len() as u8];
        b.extend_from_slice(v.as_bytes());
        b
    };
    let good = [vec![0x88], literal("x-ok", "1")].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a :status of letters", status("abc")),
        ("a four-digit :status", status("2000")),
        (
            "a connection-specific field",
            [vec![0x88], literal("connection", "close")].concat(),
        ),
        (
            "an upper-case field name",
            [vec![0x88], literal("X-Bad", "1")].concat(),
        ),
        ("no :status", literal("x-ok", "1")),
    ];
    // One request through a gateway in front of a raw target answering `block` and `data`.
    async fn through(block: Vec<u8>, data: Vec<u8>) -> raw::Got {
        let (addr, task) = raw_h2c(block, data).await;
        let gw = TestGateway::start(&gateway_yaml(
            &format!("  u:\n    targets: [\"h2c://{addr}\"]\n    retries: {{ attempts: 1 }}\n"),
            "  - match: { path_prefix: / }\n    upstream: u\n",
        ))
        .await;
        let got = raw::exchange(gw.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        task.abort();
        got
    }
    let r = through(good, b"fine".to_vec()).await.response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "fine"),
        "the raw target answers"
    );
    assert_eq!(r.header("x-ok"), Some("1"));

    for (what, block) in cases {
        let r = through(block, Vec::new()).await.response();
        assert_eq!(r.status, 502, "{what}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("upstream"),
            "{what}: {}",
            r.text()
        );
        assert_eq!(
            r.json()["request_id"].as_str(),
            r.header("x-request-id"),
            "{what}"
        );
        assert_eq!(r.header("x-bad"), None, "{what}");
    }

    // `content-length: 5` and ten bytes of DATA: the client never gets the ten.
    let got = through(
        [vec![0x88], literal("content-length", "5")].concat(),
        b"0123456789".to_vec(),
    )
    .await;
    match got {
        raw::Got::Response(r) => {
            assert_ne!(r.text(), "0123456789", "the over-long body was relayed");
            assert!(
                r.status == 502 || r.text().len() <= 5,
                "{} {}",
                r.status,
                r.text()
            );
        }
        raw::Got::Closed(bytes) => {
            let seen = String::from_utf8_lossy(&bytes).into_owned();
            assert!(
                !seen.contains("0123456789"),
                "the over-long body was relayed: {seen}"
            );
        }
        other => panic!("{other:?}"),
    }
}

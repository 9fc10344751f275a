//! TLS termination, tried with real clients: a rustls client that reports the certificate it
//! was sent, and curl. Certificates are made in the test (rcgen) and written as PEM files.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pki::{self, Ca, Dir, Leaf};
use common::{TestGateway, TestUpstream};

/// One TLS listener serving `certs` (paths of cert/key pairs), then `extra` YAML (listener
/// keys), routes to `upstream`.
fn tls_config(certs: &[(String, String)], listener_extra: &str, upstream: &str) -> String {
    let certs: Vec<String> = certs
        .iter()
        .map(|(c, k)| format!("        - {{ cert: \"{c}\", key: \"{k}\" }}"))
        .collect();
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls:\n      certificates:\n{}\n{listener_extra}access_log: off\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        certs.join("\n")
    )
}

fn write_pair(dir: &Dir, name: &str, leaf: &Leaf) -> (String, String) {
    (
        dir.write(&format!("{name}.pem"), &leaf.cert_pem),
        dir.write(&format!("{name}.key"), &leaf.key_pem),
    )
}

fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_negotiates_the_protocol() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let api = ca.server(&["api.example.com"]);
    let wild = ca.server(&["*.example.org"]);
    let first = ca.server(&["default.example.net"]);
    let yaml = tls_config(
        &[
            write_pair(&dir, "first", &first),
            write_pair(&dir, "api", &api),
            write_pair(&dir, "wild", &wild),
        ],
        "",
        &up.url(),
    );
    let gw = TestGateway::start(&yaml).await;
    for (sni, want) in [
        ("api.example.com", &api),
        ("x.example.org", &wild),
        ("unknown.example.com", &first),
        // An IP address sends no SNI: the default certificate.
        ("127.0.0.1", &first),
    ] {
        // Which certificate the server chose; the client does not verify it here (the
        // default one does not name an unknown host).
        let (leaf, _) = pki::handshake(gw.addr, sni, pki::insecure_config())
            .await
            .expect("handshake");
        assert_eq!(leaf, want.der, "certificate for SNI {sni}");
    }
    // And verified, for a name it covers.
    pki::handshake(gw.addr, "x.example.org", pki::client_config(&ca.der, None))
        .await
        .expect("the wildcard certificate verifies");

    // curl, a real client: HTTP/2 over ALPN when it asks, HTTP/1.1 when it does not.
    let port = gw.addr.port();
    let ca_path = dir.write("ca.pem", &ca.pem);
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/hello");
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out, err) = curl(&[
            flag,
            "--resolve",
            &resolve,
            "--cacert",
            &ca_path,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &url,
        ]);
        assert!(ok, "curl {flag}: {err}");
        assert_eq!(out, format!("200 {want}"), "curl {flag}");
    }
    // The upstream hears that the client came over HTTPS.
    let (ok, out, err) = curl(&["--resolve", &resolve, "--cacert", &ca_path, &url]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("echo json");
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(v["path"], "/hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_is_verified_and_its_identity_forwarded() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let other = Ca::new("another CA");
    let dir = Dir::new();
    let server = ca.server(&["api.example.com"]);
    let pair = write_pair(&dir, "server", &server);
    let clients_pem = dir.write("clients.pem", &clients.pem);
    let extra = format!(
        "      client_auth: {{ ca: \"{clients_pem}\", required: true, forward_header: x-client-cert }}\n"
    );
    let gw = TestGateway::start(&tls_config(&[pair], &extra, &up.url())).await;

    let alice = clients.client("alice", "alice.example.com");
    let mallory = other.client("mallory", "mallory.example.com");
    let dir2 = Dir::new();
    let (alice_cert, alice_key) = write_pair(&dir2, "alice", &alice);
    let (mal_cert, mal_key) = write_pair(&dir2, "mallory", &mallory);
    let ca_path = dir2.write("ca.pem", &ca.pem);
    let port = gw.addr.port();
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/");

    // No certificate, or one from another CA: refused in the handshake.
    let (ok, _, err) = curl(&["--resolve", &resolve, "--cacert", &ca_path, &url]);
    assert!(!ok, "no client certificate must be refused: {err}");
    let (ok, _, err) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
        "--cert",
        &mal_cert,
        "--key",
        &mal_key,
        &url,
    ]);
    assert!(!ok, "a certificate from another CA must be refused: {err}");

    // Alice: verified, and the upstream hears who she is; her own copy of the header is gone.
    let (ok, out, err) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
        "--cert",
        &alice_cert,
        "--key",
        &alice_key,
        "-H",
        "x-client-cert: Subject=\"CN=admin\"",
        &url,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("echo json");
    let fwd = v["headers"]["x-client-cert"].as_array().expect("forwarded");
    assert_eq!(fwd.len(), 1, "{fwd:?}");
    let fwd = fwd[0].as_str().unwrap_or_default();
    assert!(fwd.contains("CN=alice"), "{fwd}");
    assert!(fwd.contains("DNS=\"alice.example.com\""), "{fwd}");
    assert!(!fwd.contains("admin"), "{fwd}");

    // The gateway kept serving through the refused handshakes.
    let (leaf, _) = pki::handshake(
        gw.addr,
        "api.example.com",
        pki::client_config(&ca.der, Some(&alice)),
    )
    .await
    .expect("handshake with a client certificate");
    assert_eq!(leaf, server.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_client_certificate_may_be_left_out() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "server", &ca.server(&["api.example.com"]));
    let clients_pem = dir.write("clients.pem", &clients.pem);
    let extra = format!(
        "      client_auth: {{ ca: \"{clients_pem}\", required: false, forward_header: x-client-cert }}\n"
    );
    let gw = TestGateway::start(&tls_config(&[pair], &extra, &up.url())).await;
    let ca_path = dir.write("ca.pem", &ca.pem);
    let port = gw.addr.port();
    let (ok, out, err) = curl(&[
        "--resolve",
        &format!("api.example.com:{port}:127.0.0.1"),
        "--cacert",
        &ca_path,
        "-H",
        "x-client-cert: Subject=\"CN=admin\"",
        &format!("https://api.example.com:{port}/"),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("echo json");
    assert!(
        v["headers"].get("x-client-cert").is_none(),
        "a client's own identity header is removed: {v}"
    );
}

/// Waits (at most 15 s) until handshakes for `api.example.com` get `want`'s certificate.
async fn wait_for_leaf(addr: std::net::SocketAddr, ca: &Ca, want: &Leaf) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (leaf, _) = pki::handshake(addr, "api.example.com", pki::client_config(&ca.der, None))
            .await
            .expect("handshake");
        if leaf == want.der {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// cert-manager and certbot rewrite the files in place. New connections get the new
/// certificate within a few seconds; no request fails meanwhile, and a connection opened
/// before the swap keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_replaced_under_traffic() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let old = ca.server(&["api.example.com"]);
    let new = ca.server(&["api.example.com"]);
    let pair = write_pair(&dir, "api", &old);
    let gw = TestGateway::start(&tls_config(&[pair], "", &up.url())).await;

    let (leaf, before) = pki::handshake(
        gw.addr,
        "api.example.com",
        pki::client_config(&ca.der, None),
    )
    .await
    .expect("handshake");
    assert_eq!(leaf, old.der);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed, ca) = (stop.clone(), ok.clone(), failed.clone(), ca.der.clone());
        let addr = gw.addr;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = match pki::handshake(addr, "api.example.com", pki::client_config(&ca, None))
                    .await
                {
                    Ok((_, tls)) => pki::get_over(tls, "api.example.com", "/").await,
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // In place, key first then certificate: between the two writes the pair does not match,
    // and a reload that catches that is refused while the old pair keeps serving.
    dir.write("api.key", &new.key_pem);
    dir.write("api.pem", &new.cert_pem);
    wait_for_leaf(gw.addr, &ca, &new).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic task");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the swap"
    );
    assert!(ok.load(Ordering::Relaxed) > 5);
    // The connection opened before the swap still serves.
    let (status, _) = pki::get_over(before, "api.example.com", "/")
        .await
        .expect("old connection");
    assert_eq!(status, 200);
}

/// A certificate deleted, then replaced by garbage, while clients keep connecting: every
/// reload that catches it is refused, the certificate in memory keeps serving every handshake
/// and request, and the status says why the reload failed. Good files back: the new
/// certificate is served within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_deleted_or_broken_keep_the_old_certificate() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let old = ca.server(&["api.example.com"]);
    let new = ca.server(&["api.example.com"]);
    let pair = write_pair(&dir, "api", &old);
    let gw = TestGateway::start(&tls_config(
        &[pair],
        "admin: { addr: \"127.0.0.1:0\" }\n",
        &up.url(),
    ))
    .await;
    let serves = |want: rustls::pki_types::CertificateDer<'static>| {
        let (addr, ca) = (gw.addr, ca.der.clone());
        async move {
            let (leaf, tls) =
                pki::handshake(addr, "api.example.com", pki::client_config(&ca, None))
                    .await
                    .expect("handshake");
            assert!(leaf == want, "another certificate was served");
            let (status, _) = pki::get_over(tls, "api.example.com", "/")
                .await
                .expect("request");
            assert_eq!(status, 200);
        }
    };
    let failed_reloads = || async {
        let st = common::get(&gw.admin_url("/status")).await.json();
        (st["last_reload"]["ok"] == false).then_some(st)
    };

    // Deleted: the watcher notices (it polls every second), the reload fails, the old
    // certificate serves.
    std::fs::remove_file(dir.path("api.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        serves(old.der.clone()).await;
        if let Some(st) = failed_reloads().await {
            break st;
        }
        assert!(Instant::now() < deadline, "the deletion was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        st["last_reload"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("api.pem")),
        "{st}"
    );
    // Garbage in its place: refused too; the old one still serves.
    dir.write("api.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    for _ in 0..15 {
        serves(old.der.clone()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed_reloads().await.is_some());
    // The new pair: served within seconds.
    dir.write("api.key", &new.key_pem);
    dir.write("api.pem", &new.cert_pem);
    wait_for_leaf(gw.addr, &ca, &new).await;
    serves(new.der.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_config_errors_naming_the_file() {
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let good = ca.server(&["api.example.com"]);
    let other = ca.server(&["api.example.com"]);
    let expired = ca.expired_server(&["old.example.com"]);
    let cert = dir.write("good.pem", &good.cert_pem);
    let wrong_key = dir.write("other.key", &other.key_pem);
    let exp_cert = dir.write("expired.pem", &expired.cert_pem);
    let exp_key = dir.write("expired.key", &expired.key_pem);
    let garbage = dir.write("garbage.pem", "not a certificate");
    let missing = dir.path("missing.pem");
    for (pair, key, want) in [
        (
            (cert.clone(), wrong_key.clone()),
            "listen[0].tls.certificates[0]",
            "does not belong",
        ),
        (
            (exp_cert.clone(), exp_key.clone()),
            "listen[0].tls.certificates[0].cert",
            "expired",
        ),
        (
            (garbage.clone(), wrong_key.clone()),
            "listen[0].tls.certificates[0].cert",
            "garbage.pem",
        ),
        (
            (missing.clone(), wrong_key.clone()),
            "listen[0].tls.certificates[0].cert",
            "missing.pem",
        ),
    ] {
        let yaml = tls_config(&[pair], "", "http://127.0.0.1:1");
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
        let errors = match gatehouse::compile::compile(&cfg, &gatehouse::State::default()) {
            Ok(_) => panic!("{want}: compiled"),
            Err(e) => e,
        };
        assert!(
            errors
                .iter()
                .any(|e| e.path == key && e.to_string().contains(want)),
            "{want}: {errors:?}"
        );
    }
    let yaml = tls_config(
        &[(cert.clone(), wrong_key.clone())],
        "      min_version: \"1.1\"\n",
        "http://127.0.0.1:1",
    );
    let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
    let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
        .err()
        .expect("refused");
    assert!(
        errors.iter().any(|e| e.path == "listen[0].tls.min_version"),
        "{errors:?}"
    );
}

/// A running gateway whose certificate file goes bad keeps serving the old certificate, and
/// reports the failed reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_file_keeps_the_old_one_serving() {
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let good = ca.server(&["api.example.com"]);
    let pair = write_pair(&dir, "api", &good);
    let gw = TestGateway::start(&tls_config(&[pair], "", "http://127.0.0.1:1")).await;
    dir.write("api.pem", "-----BEGIN CERTIFICATE-----\ntruncated");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if gw.control.last_reload().is_some_and(|r| !r.ok) {
            break;
        }
        assert!(Instant::now() < deadline, "no failed reload was recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = gw.control.last_reload().expect("reload");
    assert!(
        r.errors.iter().any(|e| e.contains("api.pem")),
        "the error names the file: {:?}",
        r.errors
    );
    let (leaf, _) = pki::handshake(
        gw.addr,
        "api.example.com",
        pki::client_config(&ca.der, None),
    )
    .await
    .expect("still serving");
    assert_eq!(leaf, good.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https_and_tls_sends_hsts() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "api", &ca.server(&["api.example.com"]));
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls:\n      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n      hsts: {{ max_age: 600, include_subdomains: true }}\n  - addr: \"127.0.0.2:0\"\n    redirect_https: true\n  - addr: \"127.0.0.3:0\"\n    redirect_https: {{ port: 8443, status: 301 }}\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        pair.0,
        pair.1,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let addrs = gw.control.proxy_addrs().await;
    use common::raw::RawClient;
    let mut c = RawClient::connect(addrs[1]).await;
    c.send("GET /a/b?c=d HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://api.example.com/a/b?c=d")
    );
    let mut c = RawClient::connect(addrs[2]).await;
    c.send("GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").await;
    let r = c.response().await.response();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://[::1]:8443/x"));
    // ACME HTTP-01 challenges are routed, not redirected.
    let mut c = RawClient::connect(addrs[1]).await;
    c.send("GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("u"));
    // The exemption is judged on the normalised path: dot segments (plain or escaped) that
    // climb out of the challenge directory are redirected like any other path.
    for sneaky in [
        "/.well-known/acme-challenge/../../admin",
        "/.well-known/acme-challenge/%2e%2e/%2E%2E/admin",
        "/.well-known/acme-challenge/./../../admin",
    ] {
        let mut c = RawClient::connect(addrs[1]).await;
        c.send(format!(
            "GET {sneaky} HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
        ))
        .await;
        let r = c.response().await.response();
        assert_eq!(r.status, 308, "{sneaky} was not redirected");
        assert_eq!(
            r.header("x-upstream"),
            None,
            "{sneaky} reached the upstream"
        );
    }

    let port = gw.addr.port();
    let ca_path = dir.write("ca.pem", &ca.pem);
    let (ok, out, err) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--resolve",
        &format!("api.example.com:{port}:127.0.0.1"),
        "--cacert",
        &ca_path,
        &format!("https://api.example.com:{port}/"),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=600; includesubdomains"),
        "{out}"
    );
}

/// A client that connects and never finishes the handshake is closed within
/// `server.request_header_timeout`, and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_off_by_the_head_timeout() {
    use tokio::io::AsyncReadExt;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "api", &ca.server(&["api.example.com"]));
    let yaml = tls_config(
        &[pair],
        "server:\n  request_header_timeout: 1s\nadmin: { addr: \"127.0.0.1:0\" }\n",
        "http://127.0.0.1:1",
    );
    let gw = TestGateway::start(&yaml).await;
    let mut idle = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The connection no longer counts as open (it leaked in the gauge before).
    let mut open = String::new();
    for _ in 0..50 {
        let m = String::from_utf8_lossy(&common::get(&gw.admin_url("/metrics")).await.body)
            .into_owned();
        open = m
            .lines()
            .filter(|l| l.starts_with("gatehouse_connections_active"))
            .collect::<Vec<_>>()
            .join("\n");
        if open.lines().all(|l| l.ends_with(" 0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !open.is_empty() && open.lines().all(|l| l.ends_with(" 0")),
        "{open}"
    );
    let (_, _) = pki::handshake(
        gw.addr,
        "api.example.com",
        pki::client_config(&ca.der, None),
    )
    .await
    .expect("still serving");
}

/// At `server.max_connections`, connections stuck in their TLS handshake (here: connected,
/// sending nothing) make room for a waiting client 3 s after their accept (time for TLS 1.2's
/// two round trips from far away), not after `request_header_timeout` (30 s here): the
/// handshake sees the supervisor's verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_stall_at_the_cap_make_room() {
    use tokio::io::AsyncReadExt;
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "api", &ca.server(&["api.example.com"]));
    let yaml = tls_config(
        &[pair],
        "server:\n  max_connections: 3\n  request_header_timeout: 30s\nadmin: { addr: \"127.0.0.1:0\" }\n",
        &up.url(),
    );
    let gw = TestGateway::start(&yaml).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(
            tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(8), async {
        let (_, tls) = pki::handshake(
            gw.addr,
            "api.example.com",
            pki::client_config(&ca.der, None),
        )
        .await
        .map_err(|e| e.to_string())?;
        pki::get_over(tls, "api.example.com", "/").await
    })
    .await
    .expect("a waiting client served while handshakes stall")
    .expect("the request");
    assert_eq!(got.0, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "waited {waited:?}"
    );
    // The oldest stalled handshake was dropped to make room.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(2), stalled[0].read(&mut buf))
        .await
        .expect("the oldest stalled connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let late = gw
        .metric("gatehouse_downstream_rejected_total{reason=\"late_at_capacity\"}")
        .await;
    assert!(late >= 1.0, "{late} counted late at the cap");
}

/// A returning client resumes its session (a TLS 1.3 ticket) instead of a full handshake, also
/// after a reload: the ticket keys outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_a_reload() {
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "api", &ca.server(&["api.example.com"]));
    let yaml = tls_config(&[pair], "", "http://127.0.0.1:1");
    let gw = TestGateway::start(&yaml).await;
    // One client config, so one session store, for every connection.
    let cfg = pki::client_config(&ca.der, None);
    let kind = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.handshake_kind()
    };
    let connect = || async {
        let (_, tls) = pki::handshake(gw.addr, "api.example.com", cfg.clone())
            .await
            .expect("handshake");
        // The ticket arrives after the handshake: read the answer to a request.
        let k = kind(&tls);
        let _ = pki::get_over(tls, "api.example.com", "/").await;
        k
    };
    assert_eq!(connect().await, Some(rustls::HandshakeKind::Full));
    assert_eq!(connect().await, Some(rustls::HandshakeKind::Resumed));
    gw.control.reapply_current("test").await.expect("reload");
    assert_eq!(
        connect().await,
        Some(rustls::HandshakeKind::Resumed),
        "the ticket keys survive the reload"
    );
}

/// A verified client certificate identifies a consumer (`auth.methods: [mtls]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_identifies_a_consumer() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "server", &ca.server(&["api.example.com"]));
    let clients_pem = dir.write("clients.pem", &clients.pem);
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls:\n      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n      client_auth: {{ ca: \"{clients_pem}\", required: false }}\naccess_log: off\nconsumers:\n  - {{ id: svc-billing, groups: [services], client_cert: {{ cn: billing }} }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    auth: {{ methods: [mtls], groups: [services] }}\n",
        pair.0,
        pair.1,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let billing = clients.client("billing", "billing.internal");
    let other = clients.client("reports", "reports.internal");
    let dir2 = Dir::new();
    let (bc, bk) = write_pair(&dir2, "billing", &billing);
    let (oc, ok_) = write_pair(&dir2, "other", &other);
    let ca_path = dir2.write("ca.pem", &ca.pem);
    let port = gw.addr.port();
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/");
    let (ok, out, err) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
        "--cert",
        &bc,
        "--key",
        &bk,
        &url,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("echo json");
    assert_eq!(
        v["headers"]["x-consumer-id"],
        serde_json::json!(["svc-billing"])
    );
    // A valid certificate that names no consumer, and no certificate at all: 401.
    for extra in [vec!["--cert", oc.as_str(), "--key", ok_.as_str()], vec![]] {
        let mut args = vec![
            "--resolve",
            resolve.as_str(),
            "--cacert",
            ca_path.as_str(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        args.extend(extra);
        args.push(url.as_str());
        let (ok, code, err) = curl(&args);
        assert!(ok, "{err}");
        assert_eq!(code, "401");
    }
}

/// The identity header of a mutual-TLS listener cannot be forged through another listener:
/// routes are shared, so every listener removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_header_cannot_be_forged_on_another_listener() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "server", &ca.server(&["api.example.com"]));
    let clients_pem = dir.write("clients.pem", &clients.pem);
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls:\n      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n      client_auth: {{ ca: \"{clients_pem}\", forward_header: x-client-cert }}\n  - addr: \"127.0.0.2:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        pair.0,
        pair.1,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let plain = gw.control.proxy_addrs().await[1];
    let mut c = common::raw::RawClient::connect(plain).await;
    c.send("GET / HTTP/1.1\r\nHost: x\r\nX-Client-Cert: Subject=\"CN=admin\"\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-client-cert").is_none(),
        "forged identity reached the upstream: {}",
        r.text()
    );
}

/// `min_version: "1.3"` refuses a client that speaks only TLS 1.2, in the handshake, and
/// serves a TLS 1.3 one; the default ("1.2") serves the TLS 1.2 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let up = TestUpstream::echo("u").await;
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    let pair = write_pair(&dir, "api", &ca.server(&["api.example.com"]));
    let only_1_2 = || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    };
    let strict = TestGateway::start(&tls_config(
        std::slice::from_ref(&pair),
        "      min_version: \"1.3\"\n",
        &up.url(),
    ))
    .await;
    let refused = pki::handshake(strict.addr, "api.example.com", only_1_2()).await;
    assert!(refused.is_err(), "a TLS 1.2 client was served");
    let (_, tls) = pki::handshake(
        strict.addr,
        "api.example.com",
        pki::client_config(&ca.der, None),
    )
    .await
    .expect("a TLS 1.3 client is served");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        pki::get_over(tls, "api.example.com", "/").await.unwrap().0,
        200
    );
    let default = TestGateway::start(&tls_config(&[pair], "", &up.url())).await;
    let (_, tls) = pki::handshake(default.addr, "api.example.com", only_1_2())
        .await
        .expect("the default serves TLS 1.2");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        pki::get_over(tls, "api.example.com", "/").await.unwrap().0,
        200
    );
}

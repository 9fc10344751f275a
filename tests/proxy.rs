//! Proxying end to end: routing, balancing, failures, headers, paths, h2c, streaming, upgrades.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_specific_route_wins_and_unmatched_gets_json_404() {
    let a = TestUpstream::echo("a").await;
    let b = TestUpstream::echo("b").await;
    let c = TestUpstream::echo("c").await;
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
access_log: off
upstreams:
  a: {{ targets: ["{a}"] }}
  b: {{ targets: ["{b}"] }}
  c: {{ targets: ["{c}"] }}
routes:
  - {{ name: catch-all, match: {{ path_prefix: /api }}, upstream: a }}
  - {{ name: user, match: {{ path: "/api/users/{{id}}" }}, upstream: b }}
  - {{ name: me, match: {{ path: /api/users/me }}, upstream: c }}
  - {{ name: host, match: {{ hosts: ["*.example.com"], path_prefix: /api }}, upstream: c }}
"#,
        a = a.url(),
        b = b.url(),
        c = c.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let cases = [
        ("/api/x", "a"),
        ("/api/users/7", "b"),
        ("/api/users/me", "c"),
        ("/api/users/7/orders", "a"),
        ("/api/%75sers/7", "b"),
    ];
    for (path, want) in cases {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json()["name"], want, "{path}");
    }
    // Host routing: a wildcard host beats any host.
    let req = Request::get(gw.url("/api/users/7"))
        .header("host", "shop.example.com")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.json()["name"], "c");

    // Segment boundaries and no route: JSON 404 with the request id.
    for path in ["/apix", "/", "/other"] {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let j = r.json();
        assert_eq!(j["error"], "no_route");
        assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_exactly() {
    let ups = [
        TestUpstream::echo("a").await,
        TestUpstream::echo("b").await,
        TestUpstream::echo("c").await,
    ];
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
access_log: off
upstreams:
  u:
    targets:
      - "{}"
      - {{ url: "{}", weight: 2 }}
      - {{ url: "{}", weight: 1 }}
routes:
  - {{ match: {{ path_prefix: / }}, upstream: u }}
"#,
        ups[0].url(),
        ups[1].url(),
        ups[2].url()
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    for _ in 0..400 {
        let r = send(&c, get_req(&gw.url("/")).body(full("")).unwrap()).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        [ups[0].hits(), ups[1].hits(), ups[2].hits()],
        [100, 200, 100]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_gets_502_and_rotation_continues() {
    let live = TestUpstream::echo("live").await;
    // A port with nothing listening: bind, note the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Without retries and passive health, a refused connection is the client's 502 and the
    // rotation goes on (the defaults retry it on the other target: see tests/balancing.rs).
    let yaml = simple_config(&[live.url(), format!("http://{dead}")]).replace(
        "    targets:",
        "    retries: { attempts: 1 }\n    health: { passive: { consecutive_failures: 0 } }\n    targets:",
    );
    let gw = TestGateway::start(&yaml).await;
    let mut ok = 0;
    let mut bad = 0;
    for _ in 0..10 {
        let r = get(&gw.url("/x")).await;
        match r.status.as_u16() {
            200 => ok += 1,
            502 => {
                bad += 1;
                let j = r.json();
                assert_eq!(j["error"], "upstream_connect_failed");
                assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
                assert_no_target(&r, dead);
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, bad), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504_and_reset_gets_502() {
    let slow = TestUpstream::delayed(Duration::from_secs(3), "late").await;
    // An upstream that accepts and closes without answering.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((mut s, _)) = rude.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        }
    });
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
access_log: off
upstreams:
  slow: {{ targets: ["{}"], timeouts: {{ response: 300ms }} }}
  rude: {{ targets: ["http://{}"] }}
routes:
  - {{ match: {{ path_prefix: /slow }}, upstream: slow }}
  - {{ match: {{ path_prefix: /rude }}, upstream: rude }}
"#,
        slow.url(),
        rude_addr
    );
    let gw = TestGateway::start(&yaml).await;
    let t = Instant::now();
    let r = get(&gw.url("/slow")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_no_target(&r, slow.addr);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    let r = get(&gw.url("/rude")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "upstream_failed");
    assert!(r.json()["request_id"].is_string());
    assert_no_target(&r, rude_addr);
}

/// The gateway's error answers do not tell clients where its targets are: neither the
/// address nor the port is in the body or a header.
fn assert_no_target(r: &TestResponse, target: std::net::SocketAddr) {
    let port = format!(":{}", target.port());
    let mut seen = vec![String::from_utf8_lossy(&r.body).into_owned()];
    seen.extend(
        r.headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))),
    );
    for s in &seen {
        assert!(
            !s.contains(&target.to_string()) && !s.contains(&port),
            "the answer names the target {target}: {s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_hop_by_hop_and_request_id() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let req = Request::get(gw.url("/h?q=1"))
        .header("host", "api.example.com:8443")
        .header("connection", "x-secret")
        .header("x-secret", "s")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-app", "kept")
        .body(full(""))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(j["path"], "/h?q=1");
    assert_eq!(
        h["host"][0], "api.example.com:8443",
        "Host is preserved by default"
    );
    assert!(
        h.get("x-secret").is_none(),
        "header named in Connection is removed"
    );
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h["x-app"][0], "kept");
    assert_eq!(h["x-forwarded-for"][0], "10.1.1.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "api.example.com:8443");
    let rid = r
        .header("x-request-id")
        .expect("x-request-id returned")
        .to_owned();
    assert_eq!(rid.len(), 32);
    assert_eq!(
        h["x-request-id"][0],
        rid.as_str(),
        "the same id goes upstream"
    );

    // A client's own request id is kept.
    let req = Request::get(gw.url("/"))
        .header("x-request-id", "abc-123")
        .body(full(""))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.json()["headers"]["x-request-id"][0], "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_can_be_the_targets() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{}\"], preserve_host: false }}\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: u }}\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let req = Request::get(gw.url("/"))
        .header("host", "api.example.com")
        .body(full(""))
        .unwrap();
    let j = send(&client(), req).await.json();
    assert_eq!(j["headers"]["host"][0], up.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrite_and_raw_path() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
access_log: off
upstreams:
  u: {{ targets: ["{}"] }}
routes:
  - {{ match: {{ path_prefix: /api }}, upstream: u, strip_prefix: true }}
  - {{ match: {{ path: "/users/{{id}}/orders/{{oid}}" }}, upstream: u, rewrite: "/v2/orders/{{oid}}?user={{id}}" }}
  - {{ match: {{ path_prefix: /raw }}, upstream: u }}
"#,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(
        get(&gw.url("/api/users/7?x=1")).await.json()["path"],
        "/users/7?x=1"
    );
    assert_eq!(get(&gw.url("/api")).await.json()["path"], "/");
    assert_eq!(
        get(&gw.url("/users/7/orders/9")).await.json()["path"],
        "/v2/orders/9?user=7"
    );
    // Without a rewrite the client's bytes go upstream unchanged.
    assert_eq!(
        get(&gw.url("/raw/%7Euser/a%2Fb")).await.json()["path"],
        "/raw/%7Euser/a%2Fb"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_escape_a_route() {
    let (gw, _public, _admin) = public_and_admin(
        r#"  - { match: { path_prefix: /public }, upstream: public }
  - { match: { path_prefix: /admin }, upstream: admin }
"#,
    )
    .await;
    // The router sees /admin, so the admin route (with its policies) handles it, not /public.
    for p in [
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/x",
        "/public/./../admin",
    ] {
        let r = get(&gw.url(p)).await;
        assert_eq!(r.json()["name"], "admin", "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_policy_global_named_and_inline() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
access_log: off
upstreams:
  u: {{ targets: ["{}"] }}
policies:
  tag:
    headers:
      request: {{ set: {{ x-tag: named }}, append: {{ x-list: named }} }}
global:
  headers:
    request: {{ set: {{ x-global: "1" }}, remove: [x-drop] }}
    response: {{ set: {{ x-powered-by: gatehouse }} }}
routes:
  - match: {{ path_prefix: / }}
    upstream: u
    use: [tag]
    headers:
      request: {{ append: {{ x-list: inline }} }}
      response: {{ remove: [x-upstream], append: {{ x-route: r1 }} }}
"#,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let req = Request::get(gw.url("/"))
        .header("x-drop", "1")
        .header("x-list", "client")
        .body(full(""))
        .unwrap();
    let r = send(&client(), req).await;
    let h = r.json()["headers"].clone();
    assert_eq!(h["x-global"][0], "1");
    assert!(h.get("x-drop").is_none());
    assert_eq!(h["x-tag"][0], "named");
    assert_eq!(
        h["x-list"],
        serde_json::json!(["client", "named", "inline"])
    );
    assert_eq!(r.header("x-powered-by"), Some("gatehouse"));
    assert_eq!(r.header("x-route"), Some("r1"));
    assert!(r.header("x-upstream").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_clients_are_proxied_over_http1() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let c = h2c_client();
    let req = Request::post(gw.url("/h2?x=1"))
        .body(full("hello"))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/h2?x=1");
    assert_eq!(j["body_len"], 5);
    assert_eq!(
        j["headers"]["host"][0],
        gw.addr.to_string(),
        "HTTP/2 authority becomes Host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_as_sent() {
    // The upstream sends one event, waits, sends another: the client must see the first
    // before the second exists.
    let up = TestUpstream::start(Arc::new(|_req| {
        Box::pin(async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
                    .await;
                tokio::time::sleep(Duration::from_millis(700)).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp
        })
    }))
    .await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let t = Instant::now();
    let resp = client()
        .request(Request::get(gw.url("/events")).body(full("")).unwrap())
        .await
        .unwrap();
    let mut body: Incoming = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"data: one\n\n")
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "first event was held back: {:?}",
        t.elapsed()
    );
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        second.into_data().unwrap(),
        Bytes::from_static(b"data: two\n\n")
    );
    assert!(t.elapsed() >= Duration::from_millis(600));
}

/// A `Stream` over an mpsc receiver, without pulling in tokio-stream.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send {
    struct S<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for S<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    S(rx)
}

/// An upstream that accepts WebSocket upgrades, then echoes bytes in upper case.
async fn upgrading_upstream() -> TestUpstream {
    TestUpstream::start(Arc::new(|mut req: Request<Incoming>| {
        Box::pin(async move {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut io = hyper_util::rt::TokioIo::new(up);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let upper: Vec<u8> = buf[..n].to_ascii_uppercase();
                        if io.write_all(&upper).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("connection", http::HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("websocket"));
            resp.headers_mut().insert(
                "sec-websocket-accept",
                http::HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            );
            resp
        })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let up = upgrading_upstream().await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The client's first frame rides in the same write as the upgrade request: the gateway has
    // read it with the head, and must hand it on after the 101.
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly",
    )
    .await
    .unwrap();
    let head = read_until(&mut s, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept"), "{head}");
    let mut early = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut early))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&early, b"EARLY");
    for msg in [&b"hello"[..], b"again"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.to_ascii_uppercase());
    }
}

pub async fn read_until(s: &mut tokio::net::TcpStream, end: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.ends_with(end) {
        assert!(
            Instant::now() < deadline,
            "timed out reading: {:?}",
            String::from_utf8_lossy(&out)
        );
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(1)) => out.push(b[0]),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_spoof_forwarded_proto_host_or_strip_policy_headers() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    headers: {{ request: {{ set: {{ x-tag: gateway }} }} }}\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let req = Request::get(gw.url("/"))
        .header("host", "api.example.com")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("connection", "x-tag")
        .body(full(""))
        .unwrap();
    let h = send(&client(), req).await.json()["headers"].clone();
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!(["api.example.com"])
    );
    assert_eq!(
        h["x-tag"],
        serde_json::json!(["gateway"]),
        "Connection: x-tag must not remove a policy's header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_routes_and_forwards_one_host() {
    let (gw, _public, admin) = public_and_admin(
        r#"  - { match: { hosts: [public.example.com] }, upstream: public }
  - { match: { hosts: [admin.example.com] }, upstream: admin }
"#,
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET http://public.example.com/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["name"], "public");
    assert_eq!(
        j["headers"]["host"],
        serde_json::json!(["public.example.com"])
    );
    // Two Host headers: refused.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: public.example.com\r\nHost: admin.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(admin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_paths_are_what_the_upstream_sees() {
    let (gw, _public, _admin) = public_and_admin(
        r#"  - { match: { path_prefix: / }, upstream: public }
  - { match: { path_prefix: /admin }, upstream: admin }
  - { match: { path: "/files/{name}" }, upstream: public, rewrite: "/store/{name}" }
"#,
    )
    .await;
    // Dot segments and doubled slashes are resolved, and the resolved path is forwarded.
    let r = get(&gw.url("/public/%2e%2e/admin/x?q=1")).await.json();
    assert_eq!(
        (r["name"].as_str(), r["path"].as_str()),
        (Some("admin"), Some("/admin/x?q=1"))
    );
    let r = get(&gw.url("//admin")).await.json();
    assert_eq!(
        (r["name"].as_str(), r["path"].as_str()),
        (Some("admin"), Some("/admin"))
    );
    // An encoded slash inside a rewritten param could be decoded upstream: refused.
    let r = get(&gw.url("/files/..%2Fadmin")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&gw.url("/files/report.pdf")).await.json()["path"],
        "/store/report.pdf"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_forwarded() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let req = Request::get(gw.url("/"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(full(""))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert!(
        h.get("upgrade").is_none() && h.get("http2-settings").is_none(),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_connection_slot() {
    let up = TestUpstream::start(Arc::new(|mut req: Request<Incoming>| {
        Box::pin(async move {
            if !req.headers().contains_key("upgrade") {
                return Response::new(full("plain"));
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut io = hyper_util::rt::TokioIo::new(up);
                    let mut buf = [0u8; 16];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("connection", http::HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("websocket"));
            resp
        })
    }))
    .await;
    let yaml = simple_config(&[up.url()]).replace(
        "access_log: off\n",
        "access_log: off\nserver: { max_connections: 1 }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let mut ws = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    ws.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut ws, b"\r\n\r\n").await;
    assert!(head.starts_with(b"HTTP/1.1 101"));
    ws.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // While the WebSocket lives, the only slot is taken.
    let mut other = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_millis(400), other.read_exact(&mut b))
            .await
            .is_err()
    );
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut b))
        .await
        .expect("served once the WebSocket closed")
        .unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
}

/// An upstream that answers with keep-alive, then closes each connection 100 ms later, as
/// servers with short keep-alive timeouts do.
async fn closes_idle_connections_upstream()
-> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = read_until(&mut s, b"\r\n\r\n").await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(s);
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_the_upstream_are_not_reused() {
    let (addr, conns) = closes_idle_connections_upstream().await;
    let gw = TestGateway::start(&simple_config(&[format!("http://{addr}")])).await;
    for i in 0..5 {
        let r = get(&gw.url("/")).await;
        assert_eq!(
            r.status,
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(&r.body[..], b"ok");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "each request needed a fresh connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(
            send(&c, get_req(&gw.url("/")).body(full("")).unwrap())
                .await
                .status,
            200
        );
    }
    let rt = gw.gw.runtime.load();
    let pool = &rt.upstreams["u"].targets[0].pool;
    assert_eq!(
        pool.idle_count(),
        1,
        "one sequential client needs one upstream connection"
    );
}

/// Routes that answer themselves: a fixed `respond`, and a `redirect` with the path's params
/// and the client's query. Response-phase policies run on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_and_redirect_routes_answer_without_an_upstream() {
    use common::raw::{RawClient, RawUpstream};
    let up = RawUpstream::ok().await;
    let yaml = format!(
        r#"listen: "127.0.0.1:0"
access_log: off
upstreams:
  u: {{ targets: ["{}"] }}
routes:
  - name: ping
    match: {{ path: /ping }}
    respond: {{ status: 200, body: "pong", headers: {{ cache-control: no-store }} }}
    headers: {{ response: {{ set: {{ x-policy: ran }} }} }}
  - name: moved
    match: {{ path: "/old/{{*rest}}" }}
    redirect: {{ to: "https://new.example.com/v2/{{rest}}", status: 308 }}
    headers: {{ response: {{ set: {{ x-policy: ran }} }} }}
  - name: login
    match: {{ path: /signin }}
    redirect: {{ to: "/login?from=signin" }}
  - name: teapot
    match: {{ path: /teapot }}
    respond: {{ status: 418 }}
  - match: {{ path_prefix: / }}
    upstream: u
"#,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response().await.response();
    assert_eq!((r.status, r.text().as_str()), (200, "pong"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-policy"), Some("ran"));
    assert!(r.header("x-request-id").is_some());

    c.send("GET /old/a/b%20c?x=1&y=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/v2/a/b%20c?x=1&y=2")
    );
    assert_eq!(r.header("x-policy"), Some("ran"));

    c.send("GET /signin?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response().await.response();
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/login?from=signin"));

    c.send("HEAD /teapot HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c
        .response_within(true, Duration::from_secs(5))
        .await
        .response();
    assert_eq!(r.status, 418);
    assert_eq!(up.requests().len(), 0, "nothing reached the upstream");

    // The other routes still forward.
    c.send("GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status(), Some(200));
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn a_route_needs_exactly_one_action() {
    use gatehouse::compile::compile;
    use gatehouse::config::parse_str;
    for (routes, want) in [
        (
            "  - name: none\n    match: { path: /a }\n",
            "route \"none\" needs exactly one of `upstream`, `respond`, `redirect` and `aggregate` (it has none)",
        ),
        (
            "  - name: two\n    match: { path: /a }\n    upstream: u\n    respond: { body: x }\n",
            "route \"two\" needs exactly one of `upstream`, `respond`, `redirect` and `aggregate` (it has 2)",
        ),
        (
            "  - match: { path: /a }\n    redirect: { to: /b, status: 200 }\n",
            "200 is not a redirect status",
        ),
        (
            "  - match: { path: /a }\n    respond: { status: 99 }\n",
            "99 is not a final status",
        ),
        (
            "  - match: { path_prefix: /a }\n    respond: { body: x }\n    strip_prefix: true\n",
            "only applies to a route that forwards",
        ),
    ] {
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\nupstreams:\n  u: {{ targets: [\"http://127.0.0.1:9\"] }}\nroutes:\n{routes}"
        );
        let cfg = parse_str(&yaml, &|_| None).unwrap();
        let errs = match compile(&cfg, &gatehouse::State::default()) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e,
        };
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains(want) && e.path.starts_with("routes[0]")),
            "{want:?} not in {errs:?}"
        );
    }
}

/// A route's response-phase policies run on every answer the route gives: the gateway's own
/// 502 when the upstream is down, and a 400 for a request the route refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_policies_run_on_the_gateways_own_errors() {
    use common::raw::RawClient;
    let yaml = r#"listen: "127.0.0.1:0"
access_log: off
upstreams:
  down: { targets: ["http://127.0.0.1:1"] }
routes:
  - name: broken
    match: { path_prefix: /broken }
    upstream: down
    headers: { response: { set: { x-policy: ran, access-control-allow-origin: "*" } } }
  - name: moved
    match: { path: "/old/{id}" }
    redirect: { to: "/new/{id}" }
    headers: { response: { set: { x-policy: ran } } }
"#;
    let gw = TestGateway::start(yaml).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /broken HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response().await.response();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_connect_failed");
    assert_eq!(r.header("x-policy"), Some("ran"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // An encoded slash in a redirect's param is refused (400) by the route: policies still run.
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /old/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response().await.response();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("x-policy"), Some("ran"));
}

/// Requests that match no route still go through the global policies: their response hooks
/// run on the 404 (so CORS and security headers are on it too), and a route's own policies do
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_policies_run_on_the_404() {
    use common::raw::RawClient;
    let yaml = r#"listen: "127.0.0.1:0"
access_log: off
policies:
  security: { headers: { response: { set: { x-frame-options: DENY } } } }
global:
  use: [security]
  headers: { response: { set: { x-global: "yes" } } }
routes:
  - match: { path_prefix: /api }
    respond: { status: 200, body: "api" }
    headers: { response: { set: { x-route: "yes" } } }
"#;
    let gw = TestGateway::start(yaml).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    assert_eq!(r.header("x-global"), Some("yes"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-route"), None);
    // The same connection serves a routed request next, with every layer's headers.
    c.send("GET /api HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response().await.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "api");
    assert_eq!(r.header("x-global"), Some("yes"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-route"), Some("yes"));
}

/// An upgrade request runs its route's policies before any upstream sees it: `ip_rules` refuse
/// it with 403 and `auth` with 401, nothing reaches the upstream; with the key it is upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_refuse_an_upgrade_before_the_upstream_sees_it() {
    let up = upgrading_upstream().await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nconsumers:\n  - id: svc\n    api_keys: [{{ hash: \"{}\" }}]\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: /denied }}\n    upstream: u\n    ip_rules: {{ deny: [127.0.0.1] }}\n  - match: {{ path_prefix: /keyed }}\n    upstream: u\n    auth: {{ methods: [api_key] }}\n",
        gatehouse::policy::consumers::key_digest(b"ws-key-1"),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let upgrade = |path: &str, extra: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    let r = common::raw::exchange(gw.addr, upgrade("/denied/ws", ""))
        .await
        .response();
    assert_eq!(r.status, 403, "{}", r.text());
    let r = common::raw::exchange(gw.addr, upgrade("/keyed/ws", ""))
        .await
        .response();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = common::raw::exchange(gw.addr, upgrade("/keyed/ws", "X-Api-Key: wrong\r\n"))
        .await
        .response();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(up.hits(), 0, "a refused upgrade reached the upstream");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(upgrade("/keyed/ws", "X-Api-Key: ws-key-1\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HI");
    assert_eq!(up.hits(), 1);
}

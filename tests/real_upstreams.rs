//! Forwarding in front of servers users deploy: nginx and Python's `http.server`, started on
//! ephemeral loopback ports. These servers read the raw request target and Host, so a request
//! that hyper would forgive (absolute form, a wrong Host) shows up here as a wrong answer.
//! Responses are read by a raw-socket client, so the bytes the client gets are what is checked.
#![allow(clippy::unwrap_used)]

mod common;

use common::TestGateway;
use common::raw::{Got, RawClient, RawResponse};
use common::servers::{Nginx, Python, TempDir};

fn one_route(upstream: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n"
    )
}

/// Sends one request on `c` and reads its response; panics with what came instead.
async fn ask(c: &mut RawClient, req: &str) -> RawResponse {
    c.send(req).await;
    let head = req.starts_with("HEAD ");
    match c
        .response_within(head, std::time::Duration::from_secs(10))
        .await
    {
        Got::Response(r) => r,
        other => panic!("no response to {req:?}: {other:?}"),
    }
}

/// One HTTP/2 (prior knowledge) request to the gateway at `addr` for `uri`, whose authority
/// becomes `:authority`; the response body.
async fn h2_get(addr: std::net::SocketAddr, uri: &str) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri).body(common::full("")).unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        resp.into_body().collect(),
    )
    .await
    .unwrap()
    .unwrap()
    .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn fields(body: &str) -> std::collections::HashMap<&str, &str> {
    body.lines().filter_map(|l| l.split_once('=')).collect()
}

/// The new user's first try: two `python3 -m http.server` behind `/a/` and `/b/`.
#[tokio::test]
async fn python_file_servers_behind_two_prefixes_serve_their_files() {
    let (da, db) = (TempDir::new("py-a"), TempDir::new("py-b"));
    std::fs::write(da.0.join("hello.txt"), "hello from a\n").unwrap();
    std::fs::write(db.0.join("hello.txt"), "hello from b\n").unwrap();
    let (a, b) = (Python::file_server(&da.0), Python::file_server(&db.0));
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  a: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: /a }}\n    upstream: a\n    strip_prefix: true\n  - match: {{ path_prefix: /b }}\n    upstream: b\n    strip_prefix: true\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // One keep-alive client connection across several requests: http.server answers in
    // HTTP/1.0 and closes each of its connections; the client's connection stays HTTP/1.1.
    let mut c = RawClient::connect(gw.addr).await;
    for _ in 0..3 {
        for (prefix, want) in [("a", "hello from a\n"), ("b", "hello from b\n")] {
            let r = ask(
                &mut c,
                &format!("GET /{prefix}/hello.txt HTTP/1.1\r\nHost: files.test\r\n\r\n"),
            )
            .await;
            assert_eq!(r.status, 200, "{prefix}: {}", r.text());
            assert_eq!(
                r.minor, 1,
                "the client gets HTTP/1.1, not the upstream's 1.0"
            );
            assert_eq!(r.text(), want);
            assert_eq!(r.header("connection"), None, "{:?}", r.headers);
        }
    }
    let missing = ask(
        &mut c,
        "GET /a/nope.txt HTTP/1.1\r\nHost: files.test\r\n\r\n",
    )
    .await;
    assert_eq!(missing.status, 404);
    // A directory listing with a query string and an escaped name.
    std::fs::write(da.0.join("with space.txt"), "spaced\n").unwrap();
    let spaced = ask(
        &mut c,
        "GET /a/with%20space.txt?v=1 HTTP/1.1\r\nHost: files.test\r\n\r\n",
    )
    .await;
    assert_eq!((spaced.status, spaced.text().as_str()), (200, "spaced\n"));
}

/// nginx picks the virtual host from Host; with an absolute-form target it would use the
/// target's host (the upstream's own address) and answer from the default server.
#[tokio::test]
async fn nginx_virtual_hosts_see_the_clients_host() {
    let nginx = Nginx::start();
    let gw = TestGateway::start(&one_route(&nginx.url())).await;
    let mut c = RawClient::connect(gw.addr).await;
    for (host, status, body) in [
        ("a.test", 200, "hello from a\n"),
        ("b.test", 200, "hello from b\n"),
        ("a.test:8080", 200, "hello from a\n"),
        ("unknown.test", 421, "no such site\n"),
    ] {
        let r = ask(
            &mut c,
            &format!("GET /hello.txt HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (status, body),
            "Host: {host}"
        );
    }
    // Absolute form from the client: its authority names the site, and nginx gets origin form.
    let r = ask(
        &mut c,
        "GET http://b.test/hello.txt HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.text(), "hello from b\n");
}

#[tokio::test]
async fn nginx_sees_origin_form_and_the_forwarding_fields() {
    let nginx = Nginx::start();
    let gw = TestGateway::start(&one_route(&nginx.url())).await;
    let mut c = RawClient::connect(gw.addr).await;
    let r = ask(
        &mut c,
        "GET /echo?x=%2F&y=1 HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let body = r.text();
    let f = fields(&body);
    assert_eq!(f["line"], "GET /echo?x=%2F&y=1 HTTP/1.1", "{body}");
    assert_eq!(f["host"], "a.test");
    assert_eq!(f["http_host"], "a.test");
    assert_eq!(f["xff"], "203.0.113.9, 127.0.0.1");
    assert_eq!(f["via"], "1.1 gatehouse");
    assert_eq!(
        f["connection"], "",
        "the client's Connection is not forwarded"
    );
    // An HTTP/2 client reaches nginx as HTTP/1.1, in origin form, with Host from :authority.
    let body = h2_get(gw.addr, "http://a.test/echo").await;
    let f = fields(&body);
    assert_eq!(f["line"], "GET /echo HTTP/1.1", "{body}");
    assert_eq!(f["host"], "a.test");
    assert_eq!(f["via"], "2 gatehouse");
}

#[tokio::test]
async fn nginx_receives_bodies_by_length_and_chunked() {
    let nginx = Nginx::start();
    let gw = TestGateway::start(&one_route(&nginx.url())).await;
    let mut c = RawClient::connect(gw.addr).await;
    let big = "x".repeat(100_000);
    let r = ask(
        &mut c,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        ),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "received=100000\n"));
    let r = ask(
        &mut c,
        "POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "received=11\n"));
    // A malformed chunked body gets 400 from the gateway; nginx never logs a bad request.
    let mut bad = RawClient::connect(gw.addr).await;
    let r = ask(
        &mut bad,
        "POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-1\r\nxx\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Give nginx time to read whatever reached it before looking at what it made of it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !nginx.error_log().contains("client sent invalid"),
        "{}",
        nginx.error_log()
    );
}

#[tokio::test]
async fn nginx_head_204_and_304_have_no_body_and_keep_the_connection() {
    let nginx = Nginx::start();
    let gw = TestGateway::start(&one_route(&nginx.url())).await;
    let mut c = RawClient::connect(gw.addr).await;
    let get = ask(&mut c, "GET /hello.txt HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let modified = get.header("last-modified").unwrap().to_owned();
    let etag = get.header("etag").unwrap().to_owned();

    let head = ask(&mut c, "HEAD /hello.txt HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("13"));
    assert!(head.body.is_empty());

    let none = ask(&mut c, "GET /status/204 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(none.status, 204);
    assert!(none.body.is_empty());

    let not_modified = ask(
        &mut c,
        &format!("GET /hello.txt HTTP/1.1\r\nHost: a.test\r\nIf-None-Match: {etag}\r\n\r\n"),
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    let since = ask(
        &mut c,
        &format!(
            "GET /hello.txt HTTP/1.1\r\nHost: a.test\r\nIf-Modified-Since: {modified}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(since.status, 304);
    // The connection stayed in step through every body-less answer.
    let last = ask(&mut c, "GET /hello.txt HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    assert_eq!(last.text(), "hello from b\n");
}

#[tokio::test]
async fn python_sees_origin_form_fields_and_bodies() {
    let py = Python::scripted();
    let gw = TestGateway::start(&one_route(&py.url())).await;
    let mut c = RawClient::connect(gw.addr).await;
    let r = ask(
        &mut c,
        "GET /echo/a%2Fb?q=%20 HTTP/1.1\r\nHost: svc.test\r\nConnection: x-drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["request_line"], "GET /echo/a%2Fb?q=%20 HTTP/1.1");
    let names: Vec<String> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(names.contains(&"x-keep".to_owned()), "{names:?}");
    for gone in ["x-drop", "connection"] {
        assert!(
            !names.contains(&gone.to_owned()),
            "{gone} forwarded: {names:?}"
        );
    }
    let host: Vec<&str> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("host"))
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(host, ["svc.test"]);

    let chunked = ask(
        &mut c,
        "POST /echo HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(chunked.json()["body"], "wikipedia");
    let sized = ask(
        &mut c,
        "PUT /echo HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(sized.json()["body"], "abc");
    assert_eq!(sized.json()["request_line"], "PUT /echo HTTP/1.1");
}

/// Misbehaving answers from a Python upstream: each is contained to its own request.
#[tokio::test]
async fn dubious_answers_from_python_are_contained() {
    let py = Python::scripted();
    let gw = TestGateway::start(&one_route(&py.url())).await;
    let mut c = RawClient::connect(gw.addr).await;
    for (name, status, body) in [
        ("cl-te", 502, None),
        ("conflicting-cl", 502, None),
        ("invalid-cl", 502, None),
        ("gzip-te", 502, None),
        ("garbage", 502, None),
        ("nul-header", 502, None),
        ("early-close", 502, None),
        ("duplicate-cl", 200, Some("hello")),
        ("http10", 200, Some("hello from 1.0")),
        ("hop-by-hop", 200, Some("hello")),
    ] {
        let r = ask(
            &mut c,
            &format!("GET /dubious/{name} HTTP/1.1\r\nHost: svc.test\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert_eq!(r.minor, 1, "{name}");
        match body {
            Some(b) => assert_eq!(r.text(), b, "{name}"),
            None => {
                let j = r.json();
                assert_eq!(j["error"], "upstream_failed", "{name}: {j}");
                assert!(j["request_id"].as_str().is_some_and(|s| !s.is_empty()));
            }
        }
        assert!(r.count("content-length") <= 1, "{name}: {:?}", r.headers);
        assert!(
            !(r.header("content-length").is_some() && r.header("transfer-encoding").is_some()),
            "{name}: {:?}",
            r.headers
        );
        for gone in ["x-internal", "keep-alive", "connection"] {
            assert_eq!(r.header(gone), None, "{name}: {gone} {:?}", r.headers);
        }
        // The next request on the same client connection is served normally.
        let next = ask(&mut c, "GET /plain HTTP/1.1\r\nHost: svc.test\r\n\r\n").await;
        assert_eq!(
            (next.status, next.text().as_str()),
            (200, "python"),
            "after {name}"
        );
    }
    // A body cut short by the upstream ends the client's response early (it cannot be
    // completed honestly), and the gateway keeps serving.
    c.send("GET /dubious/short-body HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert!(matches!(c.response().await, Got::Closed(_)));
    let mut again = RawClient::connect(gw.addr).await;
    let next = ask(&mut again, "GET /plain HTTP/1.1\r\nHost: svc.test\r\n\r\n").await;
    assert_eq!(next.text(), "python");
}

/// `strip_prefix` tells the service what it removed, as Traefik and Kong do.
#[tokio::test]
async fn a_stripped_prefix_is_sent_as_x_forwarded_prefix() {
    let py = Python::scripted();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: /svc }}\n    upstream: u\n    strip_prefix: true\n",
        py.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = RawClient::connect(gw.addr).await;
    let r = ask(
        &mut c,
        "GET /svc/echo?x=1 HTTP/1.1\r\nHost: svc.test\r\nX-Forwarded-Prefix: /evil\r\n\r\n",
    )
    .await;
    let j = r.json();
    assert_eq!(j["request_line"], "GET /echo?x=1 HTTP/1.1");
    let prefix: Vec<&str> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            h[0].as_str()
                .unwrap()
                .eq_ignore_ascii_case("x-forwarded-prefix")
        })
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(prefix, ["/svc"]);
    // A redirect to the service's own address comes back under the client's host and the
    // prefix the client used; so does its cookie's domain.
    let r = ask(
        &mut c,
        "GET /svc/redirect HTTP/1.1\r\nHost: svc.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://svc.test/svc/login?from=1")
    );
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=1; Domain=svc.test; Path=/")
    );
}

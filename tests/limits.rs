//! Limits and malformed input: smuggling attempts get 400 and never reach an upstream; oversize
//! heads get 431 and bodies 413; a slowloris client is cut off while others are served; the
//! connection cap holds. After each, the gateway keeps serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a fresh connection and returns everything read until the server closes
/// or 3 s pass.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let attacks: &[&[u8]] = &[
        // CL.TE
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        // TE.CL with the headers in the other order
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        // duplicate, differing Content-Length
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        // obfuscated Transfer-Encoding
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        // Transfer-Encoding on HTTP/1.0
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // bad Content-Length
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x4\r\n\r\nabcd",
        // line folding
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        // a bare LF inside a header line
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n",
    ];
    for a in attacks {
        let resp = raw(gw.addr, a).await;
        let status = status_of(&resp);
        assert_eq!(
            status,
            400,
            "attack {:?} got {resp:?}",
            String::from_utf8_lossy(a)
        );
    }
    assert_eq!(up.hits(), 0, "an ambiguous request reached the upstream");
    // Still serving.
    assert_eq!(get(&gw.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431() {
    let up = TestUpstream::echo("u").await;
    let yaml = simple_config(&[up.url()]).replace(
        "access_log: off\n",
        "access_log: off\nserver: { max_header_size: 16KiB }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let big = "a".repeat(20 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    // Just under the limit is fine.
    let ok = "a".repeat(8 * 1024);
    let r = send(
        &client(),
        Request::get(gw.url("/"))
            .header("x-ok", ok)
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
access_log: off
server: {{ max_body_size: 1MiB }}
upstreams:
  u: {{ targets: ["{}"] }}
routes:
  - {{ match: {{ path_prefix: /small }}, upstream: u, max_body_size: 1KiB }}
  - {{ match: {{ path_prefix: / }}, upstream: u }}
"#,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // Declared too large: refused before anything is forwarded.
    let r = send(
        &client(),
        Request::post(gw.url("/small"))
            .body(full(vec![b'x'; 2048]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(up.hits(), 0);
    // Chunked (no length): cut off when the limit is crossed.
    let chunked = b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n";
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(chunked).await.unwrap();
    s.write_all(&[b'y'; 1024]).await.unwrap();
    s.write_all(b"\r\n400\r\n").await.unwrap();
    s.write_all(&[b'y'; 1024]).await.unwrap();
    s.write_all(b"\r\n0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 413, "{out}");
    // The server-wide default applies to other routes; within it, bodies pass.
    let r = send(
        &client(),
        Request::post(gw.url("/big"))
            .body(full(vec![b'x'; 2 * 1024 * 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = send(
        &client(),
        Request::post(gw.url("/big"))
            .body(full(vec![b'x'; 512 * 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 512 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_others_are_served() {
    let up = TestUpstream::echo("u").await;
    let yaml = simple_config(&[up.url()]).replace(
        "access_log: off\n",
        "access_log: off\nserver: { request_header_timeout: 500ms }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr;
    // The slow client trickles one header byte every 100 ms and never finishes.
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let start = Instant::now();
        for _ in 0..60 {
            if s.write_all(b"a").await.is_err() {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                if n == 0 || buf[..n].starts_with(b"HTTP/1.1 408") {
                    return start.elapsed();
                }
                if n > 0 {
                    return start.elapsed();
                }
            }
        }
        start.elapsed()
    });
    // Meanwhile a normal client is served.
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/")).await.status, 200);
    }
    let cut_after = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert!(
        cut_after < Duration::from_secs(3),
        "slow client held the connection for {cut_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_and_frees() {
    let up = TestUpstream::delayed(Duration::from_millis(1500), "slow").await;
    let yaml = simple_config(&[up.url()]).replace(
        "access_log: off\n",
        "access_log: off\nserver: { max_connections: 2 }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two connections with requests in flight take both slots.
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(req).await.unwrap();
    }
    // A third waits in the backlog and is not served while both are busy...
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(req).await.unwrap();
    let mut buf = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_millis(800), c.read_exact(&mut buf))
            .await
            .is_err(),
        "third connection was served while both slots were busy"
    );
    // ...until the busy ones finish: then an idle keep-alive connection makes room (as
    // nginx reuses keep-alive connections at its cap), and the waiting client is served.
    for s in [&mut a, &mut b] {
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("served once a keep-alive connection went idle")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let mut closed = 0;
    for s in [&mut a, &mut b] {
        if until_closed(s, Duration::from_secs(1)).await.is_some() {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection made room");
}

/// At the cap, a keep-alive client that sent one quick request and now drips its second head
/// (a line every 200 ms, so it is never quiet) is as late as one dripping its first: a client
/// waiting for a slot is served within a second or two, not after `request_header_timeout`
/// (30 s here); the dripping connections are dropped, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_head_dripped_at_the_cap_makes_room() {
    let up = TestUpstream::echo("u").await;
    let yaml = simple_config(&[up.url()]).replace(
        "access_log: off\n",
        "access_log: off\nadmin: { addr: \"127.0.0.1:0\" }\nserver: { max_connections: 2, request_header_timeout: 30s }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut dripping = Vec::new();
    for _ in 0..2 {
        let mut c = common::raw::RawClient::connect(gw.addr).await;
        c.send(req).await;
        match c.response().await {
            common::raw::Got::Response(r) => assert_eq!(r.status, 200),
            other => panic!("the first request: {other:?}"),
        }
        c.send(b"GET /second HTTP/1.1\r\n").await;
        dripping.push(c);
    }
    // Both slots are taken by connections whose second head trickles in.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drips: Vec<_> = dripping
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Bounded: 100 lines at most (20 s), or until the gateway closes it.
                for _ in 0..100 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return false;
                    }
                    c.send(b"X-Drip: 1\r\n").await;
                    // Closed (with nothing sent): it no longer holds its slot.
                    if c.closed_within(Duration::from_millis(200)).await {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(req).await.unwrap();
    let mut buf = [0u8; 12];
    let served = tokio::time::timeout(Duration::from_secs(8), c.read_exact(&mut buf)).await;
    let waited = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut cut = 0;
    for d in drips {
        if d.await.unwrap_or(false) {
            cut += 1;
        }
    }
    served
        .expect("a waiting client served while second heads trickle in")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    assert!(cut >= 1, "no dripping connection was dropped");
    let late = gw
        .metric("gatehouse_downstream_rejected_total{reason=\"late_at_capacity\"}")
        .await;
    assert!(late >= 1.0, "{late} counted late at the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_and_request_head_have_separate_timeouts() {
    let up = TestUpstream::echo("u").await;
    let yaml = simple_config(&[up.url()]).replace(
        "access_log: off\n",
        "access_log: off\nserver: { request_header_timeout: 300ms, idle_timeout: 1500ms }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 12];
    s.write_all(req).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    drain(&mut s).await;
    // Idle for longer than the head timeout but less than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(req).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf, b"HTTP/1.1 200",
        "the keep-alive connection was closed too early"
    );
    drain(&mut s).await;
    // Idle beyond the idle timeout: closed by the gateway.
    let start = Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest))
        .await
        .expect("idle connection not closed");
    assert!(n.is_ok());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );

    // A client that connects and sends nothing is cut off after the head timeout.
    let mut quiet = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), quiet.read_to_end(&mut out))
        .await
        .expect("silent client not cut off")
        .ok();
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "silent client held {:?}",
        start.elapsed()
    );
}

/// Reads whatever is immediately available after a response's first bytes.
async fn drain(s: &mut TcpStream) {
    let mut junk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut junk)).await;
}

/// Ten clients that declare 100 bytes of body and send 1 are timed by the request-body
/// timeout (408, connection closed), not by the upstream's response timeout (which used to
/// answer 504 and eject a healthy target). A client's malformed body is not the target's fault
/// either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_broken_client_bodies_are_the_clients_fault() {
    use common::raw::{Got, RawClient, RawUpstream};
    let up = RawUpstream::ok().await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nserver: {{ request_body_timeout: 2s }}\nupstreams:\n  u:\n    targets: [\"{}\"]\n    timeouts: {{ response: 1s }}\n    health: {{ passive: {{ consecutive_failures: 2 }} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let started = Instant::now();
    let slow: Vec<_> = (0..10)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await;
                c.send(format!(
                    "POST /slow/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\na"
                ))
                .await;
                let got = c.response_within(false, Duration::from_secs(10)).await;
                let closed = c.closed_within(Duration::from_secs(2)).await;
                (got, closed)
            })
        })
        .collect();
    for s in slow {
        let (got, closed) = s.await.unwrap();
        match got {
            Got::Response(r) => {
                assert_eq!(r.status, 408, "{}", r.text());
                assert_eq!(r.json()["error"], "request_body_timeout");
            }
            other => panic!("want 408, got {other:?}"),
        }
        assert!(closed, "the connection of a timed-out body is closed");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "408 only after the body timeout: {took:?}"
    );

    // Ten malformed chunked bodies: 400 each, and none counts against the target either.
    for _ in 0..10 {
        let mut c = RawClient::connect(gw.addr).await;
        c.send(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .await;
        assert_eq!(c.response().await.status(), Some(400));
    }
    let rt = gw.gw.runtime.load();
    let target = &rt.upstreams["u"].targets[0];
    assert!(
        !target.live.is_ejected(std::time::Instant::now()),
        "a healthy target was ejected for its clients' faults"
    );
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status(), Some(200));
}

fn limits_config(upstream: &str, server: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nserver: {{ {server} }}\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n"
    )
}

/// Reads until the peer closes (bounded); how long it took and how many bytes came.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<(Duration, usize)> {
    let start = Instant::now();
    let mut n = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at((start + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((start.elapsed(), n)),
            Ok(Ok(k)) => n += k,
        }
    }
}

/// The keep-alive idle timeout is `idle_timeout` itself, not `idle_timeout` plus the head
/// timeout; an HTTP/2 connection that opens no stream is idle even while it answers pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_idle_timeout_exactly() {
    let up = TestUpstream::echo("u").await;
    let yaml = limits_config(&up.url(), "idle_timeout: 1s, request_header_timeout: 4s");
    let gw = TestGateway::start(&yaml).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    drain(&mut s).await;
    let (waited, _) = until_closed(&mut s, Duration::from_secs(8))
        .await
        .expect("not closed");
    assert!(
        waited < Duration::from_millis(2200),
        "idle HTTP/1.1 connection closed after {waited:?}, want about 1 s"
    );

    // HTTP/2: preface and settings, then only pings (answered), no stream.
    let mut h2 = TcpStream::connect(gw.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let start = Instant::now();
    let pinger = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 4096];
        loop {
            // A PING from the client keeps the transport busy but opens no stream.
            if h2
                .write_all(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping")
                .await
                .is_err()
            {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), h2.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            // Answer the gateway's pings; a GOAWAY means it is closing the connection.
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..9 + len).collect();
                match (frame[3], frame[4]) {
                    (0x7, _) => return,
                    (0x6, 0) => {
                        let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                        ack.extend_from_slice(&frame[9..]);
                        let _ = h2.write_all(&ack).await;
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(6), pinger)
        .await
        .expect("an HTTP/2 connection with no stream stayed open");
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
}

/// Once the whole body has been sent, the upstream's response timeout runs from that moment:
/// a Content-Length body (whose end hyper sees without asking for more) gets its 504 after
/// `timeouts.response`, not twice that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_runs_once_the_body_is_sent() {
    use common::raw::{RawClient, RawUpstream, Reply, Then};
    let up = RawUpstream::always(Reply::raw("").then(Then::Hold)).await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u:\n    targets: [\"{}\"]\n    timeouts: {{ response: 2s }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    for body in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    ] {
        let started = Instant::now();
        let mut c = RawClient::connect(gw.addr).await;
        c.send(body).await;
        assert_eq!(c.response().await.status(), Some(504));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
            "504 after {took:?}, want about 2 s (not 4)"
        );
    }
}

/// A client that reads nothing of a large response is cut off after `send_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_cut_off_by_send_timeout() {
    const SIZE: usize = 64 * 1024 * 1024;
    let up = TestUpstream::start(std::sync::Arc::new(|_req| {
        Box::pin(async move { http::Response::new(full(vec![b'z'; SIZE])) })
    }))
    .await;
    let yaml = limits_config(&up.url(), "send_timeout: 1s");
    let gw = TestGateway::start(&yaml).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for a while; the gateway gives up on the write after about a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, n) = until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the stalled connection was not closed");
    assert!(
        n < SIZE,
        "the whole response arrived ({n} bytes): nothing was cut off"
    );
    // And the gateway still serves.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

/// A WebSocket with no bytes either way for `upgrade_idle_timeout` is closed; one with
/// traffic stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_are_closed_after_upgrade_idle_timeout() {
    use common::raw::{RawUpstream, Reply, Then};
    let up = RawUpstream::always(
        Reply::raw("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .then(Then::Hold),
    )
    .await;
    let yaml = limits_config(&up.url(), "upgrade_idle_timeout: 1s");
    let gw = TestGateway::start(&yaml).await;
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let open = |busy: bool| async move {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(upgrade).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
        drain(&mut s).await;
        let start = Instant::now();
        if busy {
            // A byte every 300 ms for 2.5 s: never idle, never closed.
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                s.write_all(b"\x81\x00").await.unwrap();
            }
            let mut b = [0u8; 1];
            let still_open = tokio::time::timeout(Duration::from_millis(100), s.read(&mut b))
                .await
                .is_err();
            assert!(still_open, "a busy WebSocket was closed");
        } else {
            let (waited, _) = until_closed(&mut s, Duration::from_secs(6))
                .await
                .expect("an idle WebSocket stayed open");
            assert!(
                waited < Duration::from_millis(2500),
                "closed after {waited:?}"
            );
        }
        start.elapsed()
    };
    let (idle, busy) = tokio::join!(open(false), open(true));
    assert!(busy > idle);
}

/// At most `max_connections_per_ip` connections from one address; others are refused at
/// accept and counted, and a freed slot is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped() {
    let up = TestUpstream::echo("u").await;
    let yaml = limits_config(&up.url(), "max_connections_per_ip: 3");
    let gw = TestGateway::start(&yaml).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        drain(&mut s).await;
        held.push(s);
    }
    let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, n) = until_closed(&mut fourth, Duration::from_secs(3))
        .await
        .expect("the fourth connection was not refused");
    assert_eq!(n, 0, "the fourth connection got an answer");
    let metrics = gw.gw.metrics.encode();
    assert!(
        metrics
            .contains("gatehouse_downstream_rejected_total{reason=\"max_connections_per_ip\"} 1"),
        "{metrics}"
    );
    drop(held.pop());
    // The slot is freed when the gateway sees the close: try until it has (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_head(gw.addr, Duration::from_secs(1))
        .await
        .as_deref()
        != Some(b"HTTP/1.1 200".as_slice())
    {
        assert!(Instant::now() < deadline, "a freed slot was not reusable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `GET /` on a new connection: the first 12 bytes of the answer (`HTTP/1.1 200`), or
/// `None` if the connection closed or nothing came within `wait`.
async fn status_head(addr: std::net::SocketAddr, wait: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut head = [0u8; 12];
    match tokio::time::timeout(wait, s.read_exact(&mut head)).await {
        Ok(Ok(_)) => Some(head.to_vec()),
        _ => None,
    }
}

/// Requests refused before routing leave a trace: an access-log line with the status and the
/// reason, and `gatehouse_downstream_rejected_total{reason}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_before_routing_are_logged_and_counted() {
    let up = TestUpstream::echo("u").await;
    let dir = TempConfig::new("");
    let log = dir.dir.join("access.log");
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: {{ format: json, path: \"{}\" }}\nserver: {{ request_header_timeout: 500ms }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        log.display(),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    for (bytes, want) in [
        (big.as_bytes(), 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".as_slice(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice(), 400),
    ] {
        assert_eq!(status_of(&raw(gw.addr, bytes).await), want);
    }
    // A client that sends nothing at all (a preconnect, a TCP health check): counted as
    // `no_request` when the head timeout ends it, but not a request to log.
    let silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // A head that never ends: cut off by the head timeout, with no answer.
    let _ = raw(gw.addr, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 4 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen: Vec<(u64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for want in [
        (431, "head_too_large"),
        (400, "parse_error"),
        (400, "bad_request"),
        (408, "head_timeout"),
    ] {
        assert!(
            seen.iter()
                .any(|(s, e)| (*s, e.as_str()) == (want.0, want.1)),
            "no log line for {want:?} in {seen:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "both Content-Length and Transfer-Encoding"),
        "the smuggling line does not say why: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l["error"] == "no_request"),
        "a connection that sent nothing was logged: {lines:?}"
    );
    // The gateway closes the silent connection at its head timeout (bounded wait).
    let mut silent = silent;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection was not closed: {closed:?}"
    );
    let m = gw.gw.metrics.encode();
    for reason in [
        "head_too_large",
        "parse_error",
        "ambiguous_framing",
        "head_timeout",
        "no_request",
    ] {
        assert!(
            m.contains(&format!(
                "gatehouse_downstream_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted:\n{m}"
        );
    }
}

/// HTTP/2 connections that open no stream and answer pings do not hold the connection cap:
/// a waiting client gets a slot once one of them has been quiet for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_http2_connections_make_room_at_the_cap() {
    let up = TestUpstream::echo("u").await;
    let yaml = limits_config(&up.url(), "max_connections: 2");
    let gw = TestGateway::start(&yaml).await;
    let mut quiet = Vec::new();
    for _ in 0..2 {
        let mut h2 = TcpStream::connect(gw.addr).await.unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        quiet.push(h2);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut head))
        .await
        .expect("the waiting client never got a slot")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
}

/// The connection cap spans every listener, and so does making room at it: idle keep-alive
/// connections on one listener make room for a client waiting on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_made_at_the_cap_across_listeners() {
    let up = TestUpstream::echo("u").await;
    let yaml = limits_config(&up.url(), "max_connections: 2").replace(
        "listen: \"127.0.0.1:0\"",
        "listen: [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
    );
    let gw = TestGateway::start(&yaml).await;
    let addrs = gw.control.proxy_addrs().await;
    assert_eq!(addrs.len(), 2);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addrs[0]).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        drain(&mut s).await;
        held.push(s);
    }
    let started = Instant::now();
    let mut other = TcpStream::connect(addrs[1]).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut head))
        .await
        .expect("the client on the second listener never got a slot")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
}

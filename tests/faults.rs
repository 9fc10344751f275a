//! Fault injection (issue 15): upstreams and a process environment that misbehave on purpose.
//! Each fault must end in a clean answer or a clean cut, bounded in time, and the gateway must
//! go on serving. Every wait is bounded; everything listens on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::raw::{Got, RawClient, RawUpstream, Reply, Then};
use common::{GatewayProcess, TempConfig, TestGateway, TestUpstream};

fn config(target: &str, timeouts: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u:\n    targets: [\"{target}\"]\n    timeouts: {{ connect: 2s{timeouts} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n"
    )
}

/// An upstream that sends a response head and the start of a chunked body, then nothing more
/// while keeping the connection open. Without a limit the client would wait forever: after
/// `timeouts.read` of silence the gateway cuts the response off (the client sees the
/// connection end without the body's last chunk), and serves the next request.
#[tokio::test]
async fn a_body_that_stops_mid_way_is_cut_off_after_timeouts_read() {
    let up = RawUpstream::start(Arc::new(|i, _| match i {
        0 => Reply::raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .then(Then::Hold),
        _ => Reply::ok(),
    }))
    .await;
    let gw = TestGateway::start(&config(&up.url(), ", read: 300ms")).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /stalls HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    // The head and the first chunk arrive, then the connection ends: the body is incomplete.
    let got = c.response_within(false, Duration::from_secs(10)).await;
    match &got {
        Got::Closed(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("hello"), "{text}");
            assert!(
                !text.ends_with("0\r\n\r\n"),
                "the body was not ended: {text}"
            );
        }
        other => panic!("expected the response cut off, got {other:?}"),
    }
    let mut next = RawClient::connect(gw.addr).await;
    next.send("GET /next HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    assert!(
        matches!(next.response().await, Got::Response(r) if r.status == 200),
        "the gateway serves the next request"
    );
}

/// An upstream that answers `100 Continue` a thousand times and never a final status: the
/// gateway stops reading interim answers after 32 and answers 502 at once (not after the
/// response timeout), and keeps serving.
#[tokio::test]
async fn an_endless_run_of_interim_responses_gets_a_502() {
    let up = RawUpstream::start(Arc::new(|i, _| match i {
        0 => Reply::raw("HTTP/1.1 100 Continue\r\n\r\n".repeat(1_000)).then(Then::Hold),
        _ => Reply::ok(),
    }))
    .await;
    let gw = TestGateway::start(&config(&up.url(), ", response: 30s")).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /interim HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    let got = c.response_within(false, Duration::from_secs(10)).await;
    match &got {
        Got::Response(r) => {
            assert_eq!(r.status, 502, "{}", r.text());
            assert!(
                r.text().contains("request_id"),
                "a JSON error: {}",
                r.text()
            );
        }
        other => panic!("expected a 502 long before the 30 s response timeout, got {other:?}"),
    }
    assert_eq!(
        common::get(&format!("http://{}/next", gw.addr))
            .await
            .status,
        200
    );
}

/// The process runs out of file descriptors (`ulimit -n 64`, then more clients than that): the
/// accept loop must back off and recover, not stop. Once the clients leave, a new one is
/// served by the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_recovers_from_file_descriptor_exhaustion() {
    let up = TestUpstream::echo("u").await;
    let cfg = TempConfig::new(&common::simple_config(&[up.url()]));
    let mut gw = GatewayProcess::start_with_fd_limit(&cfg.path, 64);
    let addr = gw.addr;
    // More idle clients than the process has descriptors: the kernel completes their
    // handshakes (the listen backlog), the gateway's accept runs into EMFILE.
    let mut clients = Vec::new();
    for _ in 0..120 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
        {
            clients.push(s);
        }
    }
    assert!(
        clients.len() >= 100,
        "only {} clients connected",
        clients.len()
    );
    let mut saw_emfile = false;
    for _ in 0..100 {
        let lines = gw.stderr_lines.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("accept failed")) {
            saw_emfile = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_emfile, "the gateway never ran out of descriptors");
    drop(clients);
    // Recovered: a new client is served (the backlog drains first; bounded wait).
    let mut ok = false;
    for _ in 0..50 {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            common::raw::exchange(addr, "GET /after HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
        )
        .await;
        if matches!(r, Ok(Got::Response(ref r)) if r.status == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "not served after the clients left; log: {:?}",
        gw.stderr_lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(gw.child.try_wait().unwrap().is_none(), "the gateway exited");
}

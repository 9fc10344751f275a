//! HTTP/2 floods against the gateway's h2c listener, written as raw frames (no HTTP/2 library
//! on the client side would send them): rapid reset (CVE-2023-44487) and a CONTINUATION flood
//! (CVE-2024-27316 and friends). Each must end with the flooding connection refused or closed
//! after bounded work, and the gateway must go on serving other clients. Every wait is bounded;
//! everything listens on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestGateway, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET / HTTP/2` to `gw.test` in HPACK: `:method GET`, `:scheme http`, `:path /` from the
/// static table, `:authority` as a literal with an indexed name.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x41, 7];
    b.extend_from_slice(b"gw.test");
    b
}

/// One HPACK literal field (`x-a: aaaa...`, 16,000 bytes of value, never indexed by name):
/// a valid piece of a header block, 16,008 bytes, for one CONTINUATION frame.
fn big_field() -> Vec<u8> {
    let mut b = vec![0x00, 3];
    b.extend_from_slice(b"x-a");
    // 16,000 as an HPACK integer with a 7-bit prefix: 127, then 15,873 in 7-bit groups.
    b.extend_from_slice(&[0x7f, 0x81, 0x7c]);
    b.extend(std::iter::repeat_n(b'a', 16_000));
    b
}

/// What the server sent on a connection: the GOAWAY's error code (if one came), and whether
/// the connection was closed, read until `wait` passes.
async fn server_frames(
    mut read: tokio::net::tcp::OwnedReadHalf,
    wait: Duration,
) -> (Option<u32>, bool) {
    let (frames, closed) = frames_until(&mut read, wait, |_| false).await;
    let goaway = frames
        .iter()
        .filter(|f| f.kind == GOAWAY && f.payload.len() >= 8)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
        .next_back();
    (goaway, closed)
}

async fn h2c_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// One plain HTTP/1.1 request on a new connection: the gateway still serves.
async fn still_serves(addr: SocketAddr) {
    let r = common::get(&format!("http://{addr}/after")).await;
    assert_eq!(r.status, 200, "the gateway stopped serving");
}

/// The flood was refused as a flood (h2 answers ENHANCE_YOUR_CALM), not because the test's
/// frames were malformed.
fn assert_not_malformed(goaway: Option<u32>) {
    const PROTOCOL_ERROR: u32 = 0x1;
    const FRAME_SIZE_ERROR: u32 = 0x6;
    const COMPRESSION_ERROR: u32 = 0x9;
    assert!(
        !matches!(
            goaway,
            Some(PROTOCOL_ERROR | FRAME_SIZE_ERROR | COMPRESSION_ERROR)
        ),
        "refused as malformed (GOAWAY {goaway:?}): the test's frames are wrong"
    );
}

/// The raw frames these tests write are a valid request: one HEADERS frame gets a 200
/// (`:status 200` is HPACK static entry 8, `0x88`) and reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_frames_make_a_valid_request() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&gateway_config(&up.url())).await;
    let mut s = h2c_connection(gw.addr).await;
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let status = loop {
        let mut at = 0;
        let mut found = None;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            if buf.len() < at + 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]);
            if buf[at + 3] == HEADERS && stream == 1 && len > 0 {
                found = Some(buf[at + 9]);
            }
            at += 9 + len;
        }
        if let Some(first) = found {
            break first;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("no response HEADERS: {other:?}, read {buf:?}"),
        }
    };
    assert_eq!(status, 0x88, "the response's first field is :status 200");
    assert_eq!(up.hits(), 1);
}

fn gateway_config(upstream: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n"
    )
}

/// Rapid reset: 10,000 streams, each opened and reset at once. The gateway must stop the
/// connection (a GOAWAY, or a close) long before it has forwarded them all: the attack's harm
/// is the work each reset stream causes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&gateway_config(&up.url())).await;
    let (read, mut write) = h2c_connection(gw.addr).await.into_split();
    let reader = tokio::spawn(server_frames(read, Duration::from_secs(10)));
    let block = get_block();
    let mut sent = 0u32;
    'flood: for batch in 0..100u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let id = 2 * (batch * 100 + i) + 1;
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        }
        match tokio::time::timeout(Duration::from_secs(5), write.write_all(&bytes)).await {
            Ok(Ok(())) => sent += 100,
            // Refused or stalled: the gateway stopped reading this connection.
            _ => break 'flood,
        }
    }
    let (goaway, closed) = reader.await.unwrap();
    assert!(
        goaway.is_some() || closed,
        "{sent} streams opened and reset, and the connection goes on (no GOAWAY, no close)"
    );
    assert_not_malformed(goaway);
    let forwarded = up.hits();
    assert!(
        forwarded < 1_000,
        "{forwarded} of {sent} reset streams were forwarded upstream"
    );
    still_serves(gw.addr).await;
}

/// CONTINUATION flood: one request whose header block never ends, 16 KB per CONTINUATION
/// frame, up to 16 MB. The gateway must refuse it after about `server.max_header_size`, not
/// buffer it all (nor wait forever for the END_HEADERS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&gateway_config(&up.url())).await;
    let (read, mut write) = h2c_connection(gw.addr).await.into_split();
    let reader = tokio::spawn(server_frames(read, Duration::from_secs(10)));
    write
        .write_all(&frame(HEADERS, END_STREAM, 1, &get_block()))
        .await
        .unwrap();
    let piece = frame(CONTINUATION, 0, 1, &big_field());
    let mut sent = 0usize;
    for _ in 0..1_000 {
        match tokio::time::timeout(Duration::from_secs(5), write.write_all(&piece)).await {
            Ok(Ok(())) => sent += piece.len(),
            _ => break,
        }
    }
    let (goaway, closed) = reader.await.unwrap();
    assert!(
        goaway.is_some() || closed,
        "{sent} bytes of one header block taken with no GOAWAY and no close"
    );
    assert_not_malformed(goaway);
    assert_eq!(up.hits(), 0, "the endless request was forwarded");
    still_serves(gw.addr).await;
}

/// This process's resident memory (the gateway runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// PING and SETTINGS floods (CVE-2019-9512, CVE-2019-9515): frames that each ask for an answer,
/// sent without ever reading one. The gateway must not queue an answer per frame: its memory
/// stays bounded, and other clients are served meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_stay_bounded() {
    const PING: u8 = 0x6;
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&gateway_config(&up.url())).await;
    for (name, one) in [
        ("PING", frame(PING, 0, 0, &[7u8; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
    ] {
        let before = rss_kib();
        let mut s = h2c_connection(gw.addr).await;
        let batch: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 10_000)
            .collect();
        let mut sent = 0usize;
        // 500,000 frames: an answer queued per frame would hold well over 16 MiB.
        for _ in 0..50 {
            match tokio::time::timeout(Duration::from_secs(3), s.write_all(&batch)).await {
                Ok(Ok(())) => sent += 10_000,
                // The gateway stopped reading (its answers are not read) or closed: fine.
                _ => break,
            }
        }
        still_serves(gw.addr).await;
        let grown = rss_kib().saturating_sub(before);
        assert!(
            grown < 16 * 1024,
            "{name} flood of {sent} frames: RSS grew by {grown} KiB"
        );
        drop(s);
    }
    still_serves(gw.addr).await;
}

/// One frame as the server sent it: type, flags, stream, payload.
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The frames the server sends on `read` until `done` holds for them or `wait` passes, and
/// whether the server closed the connection meanwhile.
async fn frames_until(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    wait: Duration,
    done: impl Fn(&[Frame]) -> bool,
) -> (Vec<Frame>, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let (mut buf, mut frames) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            frames.push(Frame {
                kind: buf[3],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            });
            buf.drain(..9 + len);
        }
        if done(&frames) {
            return (frames, false);
        }
        match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
            Err(_) => return (frames, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// More streams at once than the gateway allows (hyper's 200): the excess is refused
/// (RST_STREAM with REFUSED_STREAM, which a client may send again), never forwarded, and the
/// streams within the limit are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_refused_not_forwarded() {
    const RST_REFUSED_STREAM: u32 = 0x7;
    let up = TestUpstream::delayed(Duration::from_millis(1500), "slow").await;
    let gw = TestGateway::start(&gateway_config(&up.url())).await;
    let (mut read, mut write) = h2c_connection(gw.addr).await.into_split();
    let block = get_block();
    let mut bytes = Vec::new();
    for i in 0..300u32 {
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    write.write_all(&bytes).await.unwrap();
    let refused = |f: &Frame| {
        f.kind == RST_STREAM
            && f.payload.len() == 4
            && u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
                == RST_REFUSED_STREAM
    };
    // Within the upstream's delay: the refusals, and at most the limit forwarded.
    let (early, _) = frames_until(&mut read, Duration::from_secs(1), |fs| {
        fs.iter().filter(|f| refused(f)).count() >= 100
    })
    .await;
    let n_refused = early.iter().filter(|f| refused(f)).count();
    let forwarded = up.hits();
    assert!(n_refused >= 100, "{n_refused} streams refused of 300");
    assert!(forwarded <= 200, "{forwarded} streams forwarded at once");
    assert!(
        !early.iter().any(|f| f.kind == GOAWAY),
        "the connection itself was refused"
    );
    // The streams within the limit are answered once the upstream is.
    let answered = |fs: &[Frame]| fs.iter().filter(|f| f.kind == HEADERS).count();
    let (late, _) = frames_until(&mut read, Duration::from_secs(8), |fs| {
        answered(fs) + answered(&early) >= 300 - n_refused
    })
    .await;
    assert_eq!(
        answered(&early) + answered(&late),
        300 - n_refused,
        "every stream not refused is answered"
    );
    assert_eq!(up.hits(), 300 - n_refused);
    still_serves(gw.addr).await;
}

/// One header block over `server.max_header_size` (64 KiB) that does end (HEADERS, then five
/// 16 KB CONTINUATION frames, the last with END_HEADERS): that stream is refused and never
/// forwarded, and the connection stays usable for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_block_is_refused_and_the_connection_goes_on() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&gateway_config(&up.url())).await;
    let (mut read, mut write) = h2c_connection(gw.addr).await.into_split();
    let mut bytes = frame(HEADERS, END_STREAM, 1, &get_block());
    for i in 0..5 {
        let flags = if i == 4 { END_HEADERS } else { 0 };
        bytes.extend(frame(CONTINUATION, flags, 1, &big_field()));
    }
    write.write_all(&bytes).await.unwrap();
    let (about_1, _) = frames_until(&mut read, Duration::from_secs(5), |fs| {
        fs.iter().any(|f| {
            f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM) || f.kind == GOAWAY
        })
    })
    .await;
    assert!(
        about_1
            .iter()
            .any(|f| f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM)),
        "no answer to the oversized block"
    );
    assert!(
        !about_1.iter().any(|f| f.kind == GOAWAY),
        "the connection was closed"
    );
    // An answer to stream 1 is not a 200 (HPACK static entry 8, `0x88`).
    if let Some(h) = about_1.iter().find(|f| f.stream == 1 && f.kind == HEADERS) {
        assert_ne!(
            h.payload.first(),
            Some(&0x88),
            "the oversized request got a 200"
        );
    }
    assert_eq!(up.hits(), 0, "the oversized request was forwarded");
    write
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 3, &get_block()))
        .await
        .unwrap();
    let (next, _) = frames_until(&mut read, Duration::from_secs(5), |fs| {
        fs.iter().any(|f| f.stream == 3 && f.kind == HEADERS)
    })
    .await;
    let h = next
        .iter()
        .find(|f| f.stream == 3 && f.kind == HEADERS)
        .expect("the next request on the connection is answered");
    assert_eq!(
        h.payload.first(),
        Some(&0x88),
        "the next request gets a 200"
    );
    assert_eq!(up.hits(), 1);
}

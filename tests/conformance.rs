//! Conformance: what a raw client gets and the exact bytes a raw (non-hyper) upstream receives,
//! case by case, from RFC 9110, 9112 and 9113. Every case starts its own gateway and upstream;
//! each table runs its cases concurrently and reports every failure, not only the first.
//! `docs/conformance.md` summarises these tables.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestGateway;
use common::raw::{Got, RawClient, RawUpstream, Reply, Then, exchange};

/// The upstream's answer to the follow-up request that checks a connection is still usable.
const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: gw.test\r\n\r\n";

/// What the upstream must have received.
#[derive(Clone)]
enum Up {
    /// Not a byte.
    Nothing,
    /// No complete request (a request cut off mid-body is allowed, and nothing after it).
    NoComplete,
    /// Exactly one request: this request line, the base headers changed by `set` (a line
    /// `name: value` replaces or adds that header, `name:` alone removes it) and this body
    /// (de-chunked when the request is chunked).
    Req {
        line: &'static str,
        set: Vec<&'static str>,
        body: &'static [u8],
    },
    /// Requests with these request lines, in order.
    Lines(Vec<&'static str>),
}

/// What must happen to the client's connection after the response.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum After {
    /// It serves another request.
    Usable,
    /// The gateway closes it.
    Closed,
    /// Either (not part of the behaviour under test).
    Any,
}

#[derive(Clone)]
struct Case {
    name: &'static str,
    send: Vec<u8>,
    /// The upstream's answer to the first request it receives (later ones get `200 ok`).
    reply: Reply,
    head: bool,
    /// The client's status; 0 = no complete response (the connection closed first).
    status: u16,
    /// Response headers: `name: value` must be present with that value, `name:` absent.
    resp: Vec<&'static str>,
    body: Option<&'static [u8]>,
    up: Up,
    after: After,
    /// Responses expected on the connection in order (pipelining), if more than one.
    more: Vec<u16>,
    /// The client shuts its writing side after sending.
    client_closes: bool,
    /// Extra `server:` settings for this case's gateway.
    server: &'static str,
}

/// `status` for a case whose response does not matter (the client left).
const ANY: u16 = 1;

fn case(name: &'static str, send: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        send: send.as_ref().to_vec(),
        reply: Reply::ok(),
        head: false,
        status: 200,
        resp: Vec::new(),
        body: None,
        up: Up::Req {
            line: "GET / HTTP/1.1",
            set: Vec::new(),
            body: b"",
        },
        after: After::Usable,
        more: Vec::new(),
        client_closes: false,
        server: "",
    }
}

impl Case {
    /// Refused by the gateway with `status`, nothing forwarded.
    fn refused(mut self, status: u16) -> Case {
        self.status = status;
        self.up = Up::Nothing;
        self.after = if status == 400 {
            After::Closed
        } else {
            After::Usable
        };
        self
    }
    /// Refused with 400 as malformed, with at most a well-formed beginning forwarded (a
    /// body found malformed while it streams).
    fn malformed(self) -> Case {
        self.refused(400).up_is(Up::NoComplete)
    }
    fn status(mut self, s: u16) -> Case {
        self.status = s;
        self
    }
    fn up(mut self, line: &'static str, set: &[&'static str], body: &'static [u8]) -> Case {
        self.up = Up::Req {
            line,
            set: set.to_vec(),
            body,
        };
        self
    }
    fn up_is(mut self, up: Up) -> Case {
        self.up = up;
        self
    }
    fn reply(mut self, r: Reply) -> Case {
        self.reply = r;
        self
    }
    fn raw_reply(self, r: &str) -> Case {
        self.reply(Reply::raw(r))
    }
    fn resp(mut self, h: &[&'static str]) -> Case {
        self.resp = h.to_vec();
        self
    }
    fn body(mut self, b: &'static [u8]) -> Case {
        self.body = Some(b);
        self
    }
    fn after(mut self, a: After) -> Case {
        self.after = a;
        self
    }
    fn head(mut self) -> Case {
        self.head = true;
        self
    }
    fn server(mut self, settings: &'static str) -> Case {
        self.server = settings;
        self
    }
    fn client_closes(mut self) -> Case {
        self.client_closes = true;
        self
    }
    fn more(mut self, statuses: &[u16]) -> Case {
        self.more = statuses.to_vec();
        self
    }
}

fn config(upstream: &str, server: &str) -> String {
    format!(
        r#"listen: "127.0.0.1:0"
access_log: off
server: {{ max_header_size: 16384{server} }}
upstreams:
  u:
    targets: ["{upstream}"]
    timeouts: {{ connect: 2s, response: 2s }}
  nowhere:
    targets: ["http://127.0.0.1:1"]
routes:
  - name: scoped
    match: {{ hosts: [scoped.test], path_prefix: /public }}
    upstream: u
  - name: scoped-rest
    match: {{ hosts: [scoped.test], path_prefix: / }}
    upstream: nowhere
  - name: all
    match: {{ path_prefix: / }}
    upstream: u
"#
    )
}

/// The base headers every forwarded request carries, for a client that sent `Host: gw.test`.
const BASE: &[&str] = &[
    "host: gw.test",
    "traceparent: *",
    "via: 1.1 gatehouse",
    "x-forwarded-for: 127.0.0.1",
    "x-forwarded-host: gw.test",
    "x-forwarded-port: GW",
    "x-forwarded-proto: http",
    "x-real-ip: 127.0.0.1",
    "x-request-id: *",
];

/// A received request in a comparable form: the request line, its header lines sorted (with
/// the ports and random ids replaced), and the body (de-chunked if chunked).
fn render(req: &[u8], up_port: u16, gw_port: u16) -> (String, Vec<String>, Vec<u8>) {
    let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&req[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap().to_owned();
    let mut chunked = false;
    let mut headers: Vec<String> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            let v = v.trim_start();
            if n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked" {
                chunked = true;
            }
            let v = match n {
                "x-request-id" if v.len() == 32 => "*".to_owned(),
                "traceparent" => "*".to_owned(),
                "x-forwarded-port" if v == gw_port.to_string() => "GW".to_owned(),
                _ => v.replace(&up_port.to_string(), "UP"),
            };
            format!("{n}: {v}")
        })
        .collect();
    headers.sort();
    let body = if chunked {
        common::raw::dechunk(&req[end..])
    } else {
        req[end..].to_vec()
    };
    (line, headers, body)
}

fn expected_headers(set: &[&str]) -> Vec<String> {
    let mut h: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
    let base_names: Vec<&str> = BASE.iter().map(|b| b.split_once(':').unwrap().0).collect();
    for s in set {
        let (n, v) = s.split_once(':').unwrap();
        // `name: value` replaces a base header of that name (or adds a line); `name:` removes.
        if base_names.contains(&n) {
            h.retain(|x| x.split_once(':').unwrap().0 != n);
        }
        if !v.is_empty() {
            h.push(s.to_string());
        }
    }
    h.sort();
    h
}

/// Runs one case; returns what went wrong, if anything.
async fn run(c: Case) -> Vec<String> {
    let mut errs = Vec::new();
    let reply = c.reply.clone();
    let upstream = RawUpstream::start(Arc::new(
        move |i, _| {
            if i == 0 { reply.clone() } else { Reply::ok() }
        },
    ))
    .await;
    let gw = TestGateway::start(&config(&upstream.url(), c.server)).await;
    let mut client = RawClient::connect(gw.addr).await;
    client.send(&c.send).await;
    if c.client_closes {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut client.stream).await;
    }
    let got = client.response_within(c.head, Duration::from_secs(5)).await;
    match (&got, c.status) {
        (Got::Response(r), s) if r.status == s => {
            for h in &c.resp {
                let (n, v) = h.split_once(':').unwrap();
                let v = v.trim();
                match (r.header(n), v.is_empty()) {
                    (None, true) => {}
                    (Some(have), false) if have == v => {}
                    (have, _) => {
                        errs.push(format!("response header {n}: want {v:?}, have {have:?}"))
                    }
                }
            }
            if let Some(b) = c.body
                && r.body != b
            {
                errs.push(format!(
                    "response body {:?}, want {:?}",
                    String::from_utf8_lossy(&r.body),
                    String::from_utf8_lossy(b)
                ));
            }
            // HTTP/1.1, or 1.0 to a 1.0 client (hyper's choice, which RFC 9110 6.2 allows).
            if r.minor != 1 && !c.send.windows(9).any(|w| w == b"HTTP/1.0\r") {
                errs.push(format!("status line HTTP/1.{}, want HTTP/1.1", r.minor));
            }
            if r.status >= 400 && r.header("content-type") == Some("application/json") {
                let j = r.json();
                if j["request_id"].as_str().is_none_or(str::is_empty) {
                    errs.push(format!("error body without request_id: {j}"));
                }
            }
        }
        (Got::Closed(_), 0) | (_, ANY) => {}
        (other, s) => errs.push(format!("client: want status {s}, got {}", describe(other))),
    }
    for want in &c.more {
        match client.response_within(c.head, Duration::from_secs(5)).await {
            Got::Response(r) if r.status == *want => {}
            other => errs.push(format!("pipelined: want {want}, got {}", describe(&other))),
        }
    }
    match c.after {
        After::Usable => {
            client.send(NEXT).await;
            match client.response_within(false, Duration::from_secs(5)).await {
                Got::Response(r) if r.status == 200 => {}
                other => errs.push(format!(
                    "connection not usable afterwards: {}",
                    describe(&other)
                )),
            }
        }
        After::Closed => {
            if !client.closed_within(Duration::from_secs(3)).await {
                errs.push("connection not closed afterwards".into());
            }
        }
        After::Any => {}
    }
    // Whatever happened, the gateway keeps serving.
    match exchange(gw.addr, NEXT).await {
        Got::Response(r) if r.status == 200 => {}
        other => errs.push(format!(
            "a new connection is not served afterwards: {}",
            describe(&other)
        )),
    }
    check_upstream(&c.up, &upstream, gw.addr.port(), &mut errs);
    errs
}

/// Checks what the upstream received for the case itself (follow-ups are `GET /next`).
fn check_upstream(up: &Up, upstream: &RawUpstream, gw_port: u16, errs: &mut Vec<String>) {
    let reqs: Vec<Vec<u8>> = upstream
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with(b"GET /next "))
        .collect();
    let port = upstream.addr.port();
    match up {
        Up::Nothing => {
            if !reqs.is_empty() || !upstream.leftovers().is_empty() {
                errs.push(format!(
                    "upstream received {:?} + {:?}, want nothing",
                    reqs.iter()
                        .map(|r| String::from_utf8_lossy(r))
                        .collect::<Vec<_>>(),
                    upstream
                        .leftovers()
                        .iter()
                        .map(|r| String::from_utf8_lossy(r))
                        .collect::<Vec<_>>()
                ));
            }
        }
        Up::NoComplete => {
            if !reqs.is_empty() {
                errs.push(format!(
                    "upstream received a complete request {:?}, want none",
                    String::from_utf8_lossy(&reqs[0])
                ));
            }
            // What did arrive is the start of a well-formed request, never malformed bytes.
            for l in upstream.leftovers() {
                if let common::raw::Framing::Invalid(why) = common::raw::request_len(&l) {
                    errs.push(format!(
                        "upstream received malformed bytes ({why}): {:?}",
                        String::from_utf8_lossy(&l)
                    ));
                }
            }
        }
        Up::Req { line, set, body } => {
            if reqs.len() != 1 {
                errs.push(format!(
                    "upstream received {} requests, want 1: {:?}",
                    reqs.len(),
                    reqs.iter()
                        .map(|r| String::from_utf8_lossy(r))
                        .collect::<Vec<_>>()
                ));
            } else {
                let (l, h, b) = render(&reqs[0], port, gw_port);
                if l != *line {
                    errs.push(format!("upstream request line {l:?}, want {line:?}"));
                }
                let want = expected_headers(set);
                if h != want {
                    errs.push(format!(
                        "upstream headers\n      have {h:?}\n      want {want:?}"
                    ));
                }
                if b != *body {
                    errs.push(format!(
                        "upstream body {:?}, want {:?}",
                        String::from_utf8_lossy(&b),
                        String::from_utf8_lossy(body)
                    ));
                }
            }
        }
        Up::Lines(lines) => {
            let have: Vec<String> = reqs.iter().map(|r| render(r, port, gw_port).0).collect();
            if have != *lines {
                errs.push(format!("upstream request lines {have:?}, want {lines:?}"));
            }
        }
    }
}

fn describe(g: &Got) -> String {
    match g {
        Got::Response(r) => format!(
            "{} {:?} {:?}",
            r.status,
            r.headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&r.body)
        ),
        Got::Closed(b) => format!("closed after {:?}", String::from_utf8_lossy(b)),
        Got::TimedOut(b) => format!("no response in time, had {:?}", String::from_utf8_lossy(b)),
        Got::Garbage(b, e) => format!("garbage ({e}): {:?}", String::from_utf8_lossy(b)),
    }
}

/// Runs a table concurrently and fails with every case that went wrong.
async fn table(cases: Vec<Case>) {
    let n = cases.len();
    let runs: Vec<_> = cases
        .into_iter()
        .map(|c| {
            let name = c.name;
            tokio::spawn(async move { (name, run(c).await) })
        })
        .collect();
    let mut failures = Vec::new();
    for r in runs {
        let (name, errs) = r.await.unwrap();
        if !errs.is_empty() {
            failures.push(format!("- {name}:\n    {}", errs.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Request-target forms (RFC 9112 3.2)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_target_forms() {
    table(vec![
        case(
            "origin form is forwarded as sent",
            "GET /a/b?x=1&y HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET /a/b?x=1&y HTTP/1.1", &[], b""),
        case(
            "absolute form goes upstream in origin form",
            "GET http://gw.test/a?x=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET /a?x=1 HTTP/1.1", &[], b""),
        case(
            "absolute form: its authority wins over Host (RFC 9112 3.2.2)",
            "GET http://other.test/a HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up(
            "GET /a HTTP/1.1",
            &["host: other.test", "x-forwarded-host: other.test"],
            b"",
        ),
        case(
            "absolute form with an empty path goes upstream as /",
            "GET http://gw.test HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &[], b""),
        case(
            "absolute form with a fragment and no path goes upstream as /",
            "GET http://gw.test#f HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &[], b""),
        case(
            "absolute form with a query and no path",
            "GET http://gw.test?x=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET /?x=1 HTTP/1.1", &[], b""),
        case(
            "absolute form https: scheme is accepted",
            "GET https://gw.test/s HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET /s HTTP/1.1", &[], b""),
        case(
            "absolute form with another scheme is refused",
            "GET ftp://gw.test/a HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "absolute form with userinfo is refused (RFC 9110 4.2.4)",
            "GET http://user:pw@gw.test/a HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "asterisk form is not routed",
            "OPTIONS * HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "authority form outside CONNECT is refused",
            "GET gw.test:80 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "CONNECT gets 501 and the connection stays usable",
            "CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n",
        )
        .refused(501),
        case(
            "CONNECT with a body-less origin form target",
            "CONNECT / HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(501),
        case(
            "a request line with two spaces is refused",
            "GET  / HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "a fragment in the target is not forwarded",
            "GET /a#frag HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET /a HTTP/1.1", &[], b""),
        case(
            "an extension method is forwarded as written",
            "PURGE /a HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("PURGE /a HTTP/1.1", &[], b""),
        case(
            "HTTP/1.0 without Host is served",
            "GET /old HTTP/1.0\r\n\r\n",
        )
        .up(
            "GET /old HTTP/1.1",
            &[
                "host: 127.0.0.1:UP",
                "via: 1.0 gatehouse",
                "x-forwarded-host:",
            ],
            b"",
        )
        .after(After::Closed),
        case(
            "HTTP/1.0 with keep-alive stays open",
            "GET /old HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n",
        )
        .up("GET /old HTTP/1.1", &["via: 1.0 gatehouse"], b"")
        .resp(&["connection: keep-alive"]),
        case(
            "an unknown major version is refused",
            "GET / HTTP/3.0\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "a malformed version is refused",
            "GET / HTTP/1.x\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Host (RFC 9112 3.2, RFC 9110 7.2)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host() {
    table(vec![
        case("HTTP/1.1 without Host is refused", "GET / HTTP/1.1\r\n\r\n").refused(400),
        case(
            "absolute form without Host is refused",
            "GET http://gw.test/ HTTP/1.1\r\n\r\n",
        )
        .refused(400),
        case(
            "two Host headers are refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nHost: other.test\r\n\r\n",
        )
        .refused(400),
        case(
            "two identical Host headers are refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "Host with a space is refused",
            "GET / HTTP/1.1\r\nHost: gw test\r\n\r\n",
        )
        .refused(400),
        case(
            "Host with a slash is refused",
            "GET / HTTP/1.1\r\nHost: gw.test/evil\r\n\r\n",
        )
        .refused(400),
        case(
            "Host with userinfo is refused",
            "GET / HTTP/1.1\r\nHost: user@gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "Host with a non-numeric port is refused",
            "GET / HTTP/1.1\r\nHost: gw.test:abc\r\n\r\n",
        )
        .refused(400),
        case(
            "Host with a comma list is refused",
            "GET / HTTP/1.1\r\nHost: gw.test, other.test\r\n\r\n",
        )
        .refused(400),
        case(
            "Host keeps its port",
            "GET / HTTP/1.1\r\nHost: gw.test:8080\r\n\r\n",
        )
        .up(
            "GET / HTTP/1.1",
            &["host: gw.test:8080", "x-forwarded-host: gw.test:8080"],
            b"",
        ),
        case(
            "Host as an IPv6 literal",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        )
        .up(
            "GET / HTTP/1.1",
            &["host: [::1]:8080", "x-forwarded-host: [::1]:8080"],
            b"",
        ),
        case(
            "an unclosed IPv6 literal is refused",
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        )
        .refused(400),
        case(
            "Host case is kept, routing ignores it",
            "GET /public/a HTTP/1.1\r\nHost: SCOPED.Test\r\n\r\n",
        )
        .up(
            "GET /public/a HTTP/1.1",
            &["host: SCOPED.Test", "x-forwarded-host: SCOPED.Test"],
            b"",
        ),
        case(
            "an empty Host is no host",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        )
        .up(
            "GET / HTTP/1.1",
            &["host: 127.0.0.1:UP", "x-forwarded-host:"],
            b"",
        ),
        case(
            "whitespace around Host is not part of it",
            "GET / HTTP/1.1\r\nHost: \t gw.test \t\r\n\r\n",
        ),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Message body length: Content-Length and Transfer-Encoding (RFC 9112 6)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_transfer_encoding() {
    table(vec![
        case("Content-Length body is forwarded whole", "POST /p HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello")
            .up("POST /p HTTP/1.1", &["content-length: 5"], b"hello"),
        case("Content-Length and Transfer-Encoding together are refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("Transfer-Encoding then Content-Length is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n").refused(400),
        case("chunked with Content-Length: 0 is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("chunked twice in one line is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("chunked in two lines is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("xchunked is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n").refused(400),
        case("gzip, chunked is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("chunked, identity is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n").refused(400),
        case("identity alone is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: identity\r\n\r\n").refused(400),
        case("a space before the colon is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("a vertical tab before chunked is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n").refused(400),
        case("Transfer-Encoding in HTTP/1.0 is refused", "POST / HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").refused(400),
        case("Chunked in any case is chunked", "POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: ChUnKeD\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .up("POST / HTTP/1.1", &["transfer-encoding: chunked"], b"abc"),
        case("two different Content-Lengths are refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").refused(400),
        case("two equal Content-Lengths are folded into one", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
            .up("POST / HTTP/1.1", &["content-length: 5"], b"hello"),
        case("a Content-Length list is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5, 5\r\n\r\nhello").refused(400),
        case("Content-Length +5 is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: +5\r\n\r\nhello").refused(400),
        case("Content-Length -1 is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: -1\r\n\r\n").refused(400),
        case("Content-Length 0x5 is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0x5\r\n\r\nhello").refused(400),
        case("Content-Length past 64 bits is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 99999999999999999999\r\n\r\n").refused(400),
        case("an empty Content-Length is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length:\r\n\r\n").refused(400),
        case("Content-Length with inner space is refused", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1 0\r\n\r\nhello").refused(400),
        case("Content-Length with surrounding whitespace is a number", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length:  5 \r\n\r\nhello")
            .up("POST / HTTP/1.1", &["content-length: 5"], b"hello"),
        case("Content-Length with leading zeros is forwarded", "POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 005\r\n\r\nhello")
            .up("POST / HTTP/1.1", &["content-length: 005"], b"hello"),
        case("a body-less GET sends no body", "GET / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\n\r\n")
            .up("GET / HTTP/1.1", &["content-length: 0"], b""),
        case("an underscore header is not Transfer-Encoding, and is dropped", "GET / HTTP/1.1\r\nHost: gw.test\r\nTransfer_Encoding: chunked\r\n\r\n"),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Chunked transfer coding (RFC 9112 7.1)

const CHUNKED: &str = "POST /c HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n";

fn chunked(name: &'static str, body: &str) -> Case {
    case(name, format!("{CHUNKED}{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies() {
    const TE: &[&str] = &["transfer-encoding: chunked"];
    table(vec![
        chunked(
            "a chunked body is forwarded chunked",
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .up("POST /c HTTP/1.1", TE, b"hello world"),
        chunked(
            "chunk extensions are dropped",
            "5;name=value;x=\"q\"\r\nhello\r\n0;end\r\n\r\n",
        )
        .up("POST /c HTTP/1.1", TE, b"hello"),
        chunked("upper-case hex sizes", "A\r\n0123456789\r\n0\r\n\r\n").up(
            "POST /c HTTP/1.1",
            TE,
            b"0123456789",
        ),
        chunked("leading zeros in a size", "0005\r\nhello\r\n000\r\n\r\n").up(
            "POST /c HTTP/1.1",
            TE,
            b"hello",
        ),
        chunked("an empty chunked body", "0\r\n\r\n").up("POST /c HTTP/1.1", TE, b""),
        chunked(
            "many one-byte chunks",
            "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n1\r\nd\r\n0\r\n\r\n",
        )
        .up("POST /c HTTP/1.1", TE, b"abcd"),
        chunked(
            "trailer fields are accepted",
            "5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n",
        )
        .up("POST /c HTTP/1.1", TE, b"hello"),
        chunked(
            "a chunk size that overflows 64 bits gets 400",
            "10000000000000000\r\nhello\r\n0\r\n\r\n",
        )
        .malformed(),
        chunked(
            "a huge chunk size gets 400",
            "FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        )
        .malformed(),
        chunked("a negative chunk size gets 400", "-5\r\nhello\r\n0\r\n\r\n").malformed(),
        chunked("a 0x chunk size gets 400", "0x5\r\nhello\r\n0\r\n\r\n").malformed(),
        chunked("an empty chunk size gets 400", "\r\nhello\r\n0\r\n\r\n").malformed(),
        chunked(
            "a missing CRLF after chunk data gets 400",
            "5\r\nhelloXX0\r\n\r\n",
        )
        .malformed(),
        chunked(
            "chunk data longer than its size gets 400",
            "3\r\nhello\r\n0\r\n\r\n",
        )
        .malformed(),
        chunked("a bare LF after the size gets 400", "5\nhello\r\n0\r\n\r\n").malformed(),
        chunked("a bare LF after the data gets 400", "5\r\nhello\n0\r\n\r\n").malformed(),
        chunked("a bare CR after the size gets 400", "5\rhello\r\n0\r\n\r\n").malformed(),
        chunked(
            "an LF inside a chunk extension gets 400",
            "5;a=b\nc\r\nhello\r\n0\r\n\r\n",
        )
        .malformed(),
        chunked(
            "a second chunk that is malformed gets 400",
            "5\r\nhello\r\nZ\r\nworld\r\n0\r\n\r\n",
        )
        .malformed(),
        chunked(
            "a body cut off by the client reaches no upstream whole",
            "5\r\nhel",
        )
        .client_closes()
        .status(ANY)
        .up_is(Up::NoComplete)
        .after(After::Any),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Field syntax: bare CR/LF/NUL, obs-fold, invalid names (RFC 9112 2.2, 5; RFC 9110 5.5)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_syntax() {
    table(vec![
        case(
            "a bare CR in a field value is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n",
        )
        .refused(400),
        case(
            "a NUL in a field value is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\0b\r\n\r\n",
        )
        .refused(400),
        case(
            "a NUL in the request line is refused",
            "GET /a\0b HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "DEL in a field value is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x7fb\r\n\r\n",
        )
        .refused(400),
        case(
            "obs-fold is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\r\n b\r\n\r\n",
        )
        .refused(400),
        case(
            "whitespace before the first field is refused",
            "GET / HTTP/1.1\r\n Host: gw.test\r\n\r\n",
        )
        .refused(400),
        case(
            "a space before a colon is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A : b\r\n\r\n",
        )
        .refused(400),
        case(
            "a field name with @ is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX@A: b\r\n\r\n",
        )
        .refused(400),
        case(
            "an empty field name is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\n: b\r\n\r\n",
        )
        .refused(400),
        case(
            "a line without a colon is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nXA\r\n\r\n",
        )
        .refused(400),
        case(
            "a non-ASCII field name is refused",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-\u{e9}: b\r\n\r\n",
        )
        .refused(400),
        case(
            "bare LF line ends are accepted (RFC 9112 2.2)",
            "GET /lf HTTP/1.1\nHost: gw.test\nX-A: b\n\n",
        )
        .up("GET /lf HTTP/1.1", &["x-a: b"], b""),
        case(
            "bare CR line ends are refused",
            "GET / HTTP/1.1\rHost: gw.test\r\r",
        )
        .refused(400),
        case(
            "empty lines before the request line are skipped",
            "\r\n\r\nGET /e HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .up("GET /e HTTP/1.1", &[], b""),
        case(
            "obs-text in a value is forwarded byte for byte",
            b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: caf\xe9 \xff\r\n\r\n".as_slice(),
        )
        .up("GET / HTTP/1.1", &["x-a: caf\u{fffd} \u{fffd}"], b""),
        case(
            "a tab inside a value is kept",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\tb\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &["x-a: a\tb"], b""),
        case(
            "whitespace around a value is not part of it",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: \t v \t\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &["x-a: v"], b""),
        case(
            "field names go upstream in lower case, values as sent",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-MiXeD: VaLuE\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &["x-mixed: VaLuE"], b""),
        case(
            "an empty value is forwarded",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-Empty:\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &["x-empty: "], b""),
        case(
            "repeated fields keep every line",
            "GET / HTTP/1.1\r\nHost: gw.test\r\nX-R: 1\r\nX-R: 2\r\n\r\n",
        )
        .up("GET / HTTP/1.1", &["x-r: 1", "x-r: 2"], b""),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Over-long request lines and header sections (RFC 9112 3, RFC 6585 5)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_heads() {
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        "a".repeat(20_000)
    );
    let long_value = format!(
        "GET / HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
        "v".repeat(20_000)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: gw.test\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: gw.test\r\nX-Fits: {}\r\n\r\n",
        "v".repeat(8000)
    );
    let fits_value: &'static str =
        Box::leak(format!("x-fits: {}", "v".repeat(8000)).into_boxed_str());
    table(vec![
        case("an over-long request line gets 431 or 414", long_path)
            .refused(431)
            .after(After::Closed),
        case("an over-long field value gets 431", long_value)
            .refused(431)
            .after(After::Closed),
        case("too many fields get 431", many)
            .refused(431)
            .after(After::Closed),
        case("a large head under the limit is forwarded", fits).up(
            "GET / HTTP/1.1",
            &[fits_value],
            b"",
        ),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop fields, both directions (RFC 9110 7.6.1)

fn get_with(name: &'static str, headers: &str) -> Case {
    case(
        name,
        format!("GET / HTTP/1.1\r\nHost: gw.test\r\n{headers}\r\n"),
    )
}

fn answered_with(name: &'static str, headers: &str) -> Case {
    case(name, "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n").raw_reply(&format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{headers}\r\nok"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields() {
    table(vec![
        get_with("Connection: close is not forwarded and closes the client side", "Connection: close\r\n")
            .after(After::Closed),
        get_with("Connection: keep-alive is not forwarded", "Connection: keep-alive\r\n"),
        get_with("a field named in Connection is removed", "Connection: X-Secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n")
            .up("GET / HTTP/1.1", &["x-kept: 2"], b""),
        get_with("every field named in Connection, whatever the case and spacing", "Connection: X-A ,  x-b,X-C\r\nX-A: 1\r\nx-B: 2\r\nX-c: 3\r\nX-D: 4\r\n")
            .up("GET / HTTP/1.1", &["x-d: 4"], b""),
        get_with("fields named in several Connection lines", "Connection: x-a\r\nConnection: x-b\r\nX-A: 1\r\nX-B: 2\r\n"),
        get_with("an end-to-end field named in Connection is removed", "Connection: authorization, cookie\r\nAuthorization: Bearer t\r\nCookie: c=1\r\n"),
        get_with("Connection naming Host does not remove the forwarded Host", "Connection: host\r\n"),
        get_with("Connection naming X-Forwarded-For does not remove the gateway's", "Connection: x-forwarded-for, x-request-id\r\nX-Forwarded-For: 10.9.9.9\r\n")
            .up("GET / HTTP/1.1", &[], b""),
        get_with("Keep-Alive is removed", "Keep-Alive: timeout=5\r\n"),
        get_with("Proxy-Connection is removed", "Proxy-Connection: keep-alive\r\n"),
        get_with("TE is removed", "TE: trailers, gzip\r\n"),
        get_with("Upgrade to h2c is removed and not performed", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
        get_with("Upgrade without Connection: upgrade is removed", "Upgrade: websocket\r\n"),
        get_with("Proxy-Authorization is not forwarded", "Proxy-Authorization: Basic dTpw\r\n"),
        answered_with("a response field named in Connection is removed", "Connection: X-Internal\r\nX-Internal: secret\r\nX-Public: 1\r\n")
            .resp(&["x-internal:", "x-public: 1", "connection:"]),
        answered_with("response Keep-Alive is removed", "Keep-Alive: timeout=5, max=100\r\n")
            .resp(&["keep-alive:"]),
        answered_with("response Proxy-Connection is removed", "Proxy-Connection: keep-alive\r\n")
            .resp(&["proxy-connection:"]),
        answered_with("response Upgrade on a 200 is removed", "Upgrade: h2c\r\n").resp(&["upgrade:"]),
        answered_with("an upstream Connection: close does not close the client", "Connection: close\r\n")
            .resp(&["connection:"]),
        answered_with("response TE-like Trailer declaration is removed", "Trailer: X-Sum\r\n")
            .resp(&["trailer:"]),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Via and X-Forwarded-* (RFC 9110 7.6.3; the de facto X-Forwarded-* fields)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_and_forwarded_fields() {
    table(vec![
        get_with("Via names this hop", ""),
        get_with(
            "an earlier Via is kept and this hop appended",
            "Via: 1.0 fred, 1.1 p.example.net\r\n",
        )
        .up(
            "GET / HTTP/1.1",
            &["via: 1.0 fred, 1.1 p.example.net, 1.1 gatehouse"],
            b"",
        ),
        get_with(
            "several Via lines are combined in order",
            "Via: 1.0 a\r\nVia: 1.1 b\r\n",
        )
        .up("GET / HTTP/1.1", &["via: 1.0 a, 1.1 b, 1.1 gatehouse"], b""),
        get_with(
            "X-Forwarded-For is appended to",
            "X-Forwarded-For: 203.0.113.7\r\n",
        )
        .up(
            "GET / HTTP/1.1",
            &["x-forwarded-for: 203.0.113.7, 127.0.0.1"],
            b"",
        ),
        get_with(
            "several X-Forwarded-For lines are combined, not cut to the first",
            "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1, 10.0.0.1\r\n",
        )
        .up(
            "GET / HTTP/1.1",
            &["x-forwarded-for: 203.0.113.7, 198.51.100.1, 10.0.0.1, 127.0.0.1"],
            b"",
        ),
        get_with(
            "X-Forwarded-Proto from a client is replaced",
            "X-Forwarded-Proto: https\r\n",
        ),
        get_with(
            "X-Forwarded-Host from a client is replaced",
            "X-Forwarded-Host: evil.test\r\n",
        ),
        get_with("a sane X-Request-Id is kept", "X-Request-Id: abc-123\r\n")
            .up("GET / HTTP/1.1", &["x-request-id: abc-123"], b"")
            .resp(&["x-request-id: abc-123"]),
        get_with(
            "an X-Request-Id with spaces is replaced",
            "X-Request-Id: a b\r\n",
        ),
        get_with(
            "an over-long X-Request-Id is replaced",
            &format!("X-Request-Id: {}\r\n", "r".repeat(200)),
        ),
        get_with(
            "Expect is answered by the gateway, not forwarded",
            "Expect: 100-continue\r\n",
        ),
        get_with("Forwarded from an untrusted client is dropped", "Forwarded: for=203.0.113.9;host=evil.test;proto=https\r\n"),
        get_with("X-Real-IP from an untrusted client is replaced", "X-Real-IP: 203.0.113.9\r\n"),
        get_with("X-Forwarded-Port from an untrusted client is replaced", "X-Forwarded-Port: 443\r\n"),
        get_with("X-Forwarded-Prefix from an untrusted client is dropped", "X-Forwarded-Prefix: /evil\r\n"),
        get_with("underscored fields are dropped by default", "X_Forwarded_Proto: https\r\nX_Custom: 1\r\nX-Kept: 1\r\n")
            .up("GET / HTTP/1.1", &["x-kept: 1"], b""),
        get_with("underscored fields are forwarded when allowed", "X_Custom: 1\r\n")
            .server(", allow_underscores_in_headers: true")
            .up("GET / HTTP/1.1", &["x_custom: 1"], b""),
        get_with("a trusted proxy's forwarding fields are kept", "Forwarded: for=203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: api.example.com\r\nX-Forwarded-Port: 443\r\nX-Forwarded-For: 203.0.113.9\r\n")
            .server(", trusted_proxies: [127.0.0.0/8]")
            .up("GET / HTTP/1.1", &["forwarded: for=203.0.113.9", "x-real-ip: 203.0.113.9", "x-forwarded-proto: https", "x-forwarded-host: api.example.com", "x-forwarded-port: 443", "x-forwarded-for: 203.0.113.9, 127.0.0.1"], b""),
        get_with("a proxy outside trusted_proxies is not trusted", "X-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n")
            .server(", trusted_proxies: [10.0.0.0/8]"),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Responses without a body: HEAD, 1xx, 204, 304 (RFC 9110 6.4.1, 9112 6.3)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_without_body() {
    table(vec![
        case("HEAD: Content-Length kept, no body", "HEAD / HTTP/1.1\r\nHost: gw.test\r\n\r\n").head()
            .raw_reply("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .up("HEAD / HTTP/1.1", &[], b"").resp(&["content-length: 100"]).body(b""),
        case("HEAD: a chunked answer has no body", "HEAD / HTTP/1.1\r\nHost: gw.test\r\n\r\n").head()
            .raw_reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .up("HEAD / HTTP/1.1", &[], b"").body(b""),
        case("204 has no body", "DELETE /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .raw_reply("HTTP/1.1 204 No Content\r\n\r\n").status(204)
            .up("DELETE /x HTTP/1.1", &[], b"").body(b""),
        case("304 keeps its validators and has no body", "GET / HTTP/1.1\r\nHost: gw.test\r\nIf-None-Match: \"v1\"\r\n\r\n")
            .raw_reply("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 100\r\n\r\n").status(304)
            .up("GET / HTTP/1.1", &["if-none-match: \"v1\""], b"").resp(&["etag: \"v1\""]).body(b""),
        case("an interim 100 from the upstream is absorbed", "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .raw_reply("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").body(b"ok"),
        case("103 Early Hints then the answer", "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .raw_reply("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").body(b"ok"),
        case("a 204 with body bytes: the bytes are dropped with the connection", "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .raw_reply("HTTP/1.1 204 No Content\r\n\r\nGARBAGE").status(204).body(b""),
        case("a HEAD answer with body bytes: the bytes are dropped", "HEAD / HTTP/1.1\r\nHost: gw.test\r\n\r\n").head()
            .raw_reply("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nGARBAGE").up("HEAD / HTTP/1.1", &[], b""),
        case("a body delimited by close is re-framed for the client", "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .reply(Reply::raw("HTTP/1.1 200 OK\r\n\r\nuntil close").then(Then::Close)).body(b"until close"),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Pipelining, persistence and Expect (RFC 9112 9.3, RFC 9110 10.1.1)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_and_persistence() {
    table(vec![
        case("two pipelined requests are answered in order", "GET /1 HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .more(&[200]).up_is(Up::Lines(vec!["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"])),
        case("a slow first answer keeps the order", "GET /1 HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .reply(Reply::raw("HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nslow").split(10, Duration::from_millis(300)))
            .status(201).body(b"slow").more(&[200, 200])
            .up_is(Up::Lines(vec!["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /3 HTTP/1.1"])),
        case("a pipelined body and the request after it", "POST /1 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .more(&[200]).up_is(Up::Lines(vec!["POST /1 HTTP/1.1", "GET /2 HTTP/1.1"])),
        case("nothing after a refused request is processed", "GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .refused(400),
        case("CL+TE after a refused CONNECT is still refused", "CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\nPOST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .refused(501).more(&[400]).after(After::Closed),
        case("CL+TE after an Upgrade: h2c request is still refused", "GET / HTTP/1.1\r\nHost: gw.test\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nPOST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .more(&[400]).after(After::Closed).up_is(Up::Lines(vec!["GET / HTTP/1.1"])),
        case("CL+TE after a WebSocket upgrade the upstream declined is still refused", "GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nPOST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .raw_reply("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").status(403)
            .more(&[400]).after(After::Closed).up_is(Up::Lines(vec!["GET /ws HTTP/1.1"])),
        case("a bare-LF client is served across requests", "GET /1 HTTP/1.1\nHost: gw.test\n\nGET /2 HTTP/1.1\nHost: gw.test\n\n")
            .more(&[200]).up_is(Up::Lines(vec!["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"])),
        case("Expect: 100-continue with the body sent at once", "POST /e HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")
            .up("POST /e HTTP/1.1", &["content-length: 2"], b"hi"),
        case("Expect: 100-continue on a request without body", "GET / HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n\r\n"),
    ])
    .await;
}

/// Bare-LF heads are followed to their end: a client that uses them is not cut off by the
/// request-head timeout between its requests (the framing reader used to wait for CRLF CRLF).
#[tokio::test]
async fn a_bare_lf_client_is_not_cut_off_between_requests() {
    let up = RawUpstream::ok().await;
    let yaml = config(&up.url(), ", request_header_timeout: 1s");
    let gw = TestGateway::start(&yaml).await;
    let mut c = RawClient::connect(gw.addr).await;
    for i in 0..3 {
        c.send(format!("GET /{i} HTTP/1.1\nHost: gw.test\n\n"))
            .await;
        assert_eq!(c.response().await.status(), Some(200), "request {i}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(up.requests().len(), 3);
}

/// A client that waits for `100 Continue` before sending its body gets it, then the answer.
#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let up = RawUpstream::ok().await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send(
        "POST /e HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    let mut got = vec![0u8; 25];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut got),
    )
    .await
    .expect("100 Continue within 5 s")
    .unwrap();
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send("hello").await;
    let r = c.response().await.response();
    assert_eq!(r.status, 200);
    let reqs = up.wait_requests(1).await;
    let (line, headers, body) = render(&reqs[0], up.addr.port(), gw.addr.port());
    assert_eq!(line, "POST /e HTTP/1.1");
    assert!(
        !headers.iter().any(|h| h.starts_with("expect")),
        "{headers:?}"
    );
    assert_eq!(body, b"hello");
}

// ---------------------------------------------------------------------------------------------
// Percent-encoding and dot segments (RFC 3986 2.1, 5.2.4; RFC 9110 4.2.3)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoding_and_dot_segments() {
    fn path(name: &'static str, p: &'static str) -> Case {
        case(name, format!("GET {p} HTTP/1.1\r\nHost: gw.test\r\n\r\n"))
    }
    fn scoped(name: &'static str, p: &'static str) -> Case {
        case(
            name,
            format!("GET {p} HTTP/1.1\r\nHost: scoped.test\r\n\r\n"),
        )
    }
    const SCOPED: &[&str] = &["host: scoped.test", "x-forwarded-host: scoped.test"];
    table(vec![
        path("%7e stays %7e", "/a/%7e/b").up("GET /a/%7e/b HTTP/1.1", &[], b""),
        path("%7E keeps its case", "/a/%7E").up("GET /a/%7E HTTP/1.1", &[], b""),
        path("an encoded slash stays encoded", "/a%2Fb").up("GET /a%2Fb HTTP/1.1", &[], b""),
        path("%25 stays %25", "/100%25").up("GET /100%25 HTTP/1.1", &[], b""),
        path("an encoded space stays encoded", "/a%20b").up("GET /a%20b HTTP/1.1", &[], b""),
        path(
            "the query is forwarded byte for byte",
            "/q?a=%26&b=%2B+c&&d",
        )
        .up("GET /q?a=%26&b=%2B+c&&d HTTP/1.1", &[], b""),
        path("sub-delims in the path are kept", "/a;v=1,2/$x!'()*").up(
            "GET /a;v=1,2/$x!'()* HTTP/1.1",
            &[],
            b"",
        ),
        path(
            "raw UTF-8 in the target is forwarded byte for byte",
            "/caf\u{e9}",
        )
        .up("GET /caf\u{e9} HTTP/1.1", &[], b""),
        path("a raw space cannot be in the target", "/a b").refused(400),
        scoped("../ cannot leave a route", "/public/../admin").refused(502),
        scoped("%2e%2e cannot leave a route", "/public/%2e%2e/admin").refused(502),
        scoped("%2E%2E cannot leave a route", "/public/%2E%2E/admin").refused(502),
        scoped(
            ".. beyond the root stays at the root",
            "/public/../../admin",
        )
        .refused(502),
        scoped("the resolved path is what goes upstream", "/public/a/../b").up(
            "GET /public/b HTTP/1.1",
            SCOPED,
            b"",
        ),
        scoped("./ segments are removed", "/public/./x").up("GET /public/x HTTP/1.1", SCOPED, b""),
        scoped("doubled slashes are merged", "/public//x").up(
            "GET /public/x HTTP/1.1",
            SCOPED,
            b"",
        ),
        scoped("..%2f is not a separator", "/public/..%2fadmin").up(
            "GET /public/..%2fadmin HTTP/1.1",
            SCOPED,
            b"",
        ),
        scoped("a prefix matches whole segments only", "/publicity").refused(502),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Redirects and cookies that name the target's own address (nginx's default proxy_redirect)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_naming_the_target() {
    table(vec![
        answered_with("a Location naming the target becomes the client's host", "Location: http://{SELF}/login?next=%2Fa\r\n")
            .resp(&["location: http://gw.test/login?next=%2Fa"]),
        answered_with("a relative Location is left alone", "Location: /login\r\n").resp(&["location: /login"]),
        answered_with("a Location naming another host is left alone", "Location: http://elsewhere.test/x\r\n")
            .resp(&["location: http://elsewhere.test/x"]),
        answered_with("a cookie Domain naming the target becomes the client's host", "Set-Cookie: sid=1; Domain=127.0.0.1; Path=/\r\nSet-Cookie: other=2; Domain=example.com\r\n")
            .resp(&["set-cookie: sid=1; Domain=gw.test; Path=/"]),
        // A Host with sub-delims is a valid Host, but never written into a cookie or a URL:
        // `gw.test;Domain=evil.test` must not add a cookie attribute.
        case("a Host with sub-delims is not written into a cookie or a Location", "GET / HTTP/1.1\r\nHost: gw.test;Domain=evil.test\r\n\r\n")
            .raw_reply("HTTP/1.1 302 Found\r\nLocation: http://{SELF}/x\r\nSet-Cookie: sid=1; Domain=127.0.0.1\r\nContent-Length: 0\r\n\r\n")
            .status(302)
            .up("GET / HTTP/1.1", &["host: gw.test;Domain=evil.test", "x-forwarded-host: gw.test;Domain=evil.test"], b"")
            .resp(&["set-cookie: sid=1; Domain=127.0.0.1"]),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// server.path_normalization: strict (Envoy's REJECT_REQUEST for escaped slashes and more)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_path_normalization() {
    fn strict(name: &'static str, p: &'static str) -> Case {
        case(name, format!("GET {p} HTTP/1.1\r\nHost: gw.test\r\n\r\n"))
            .server(", path_normalization: strict")
    }
    fn standard(name: &'static str, p: &'static str) -> Case {
        case(name, format!("GET {p} HTTP/1.1\r\nHost: gw.test\r\n\r\n"))
    }
    table(vec![
        strict("an encoded slash is refused", "/a%2Fb").refused(400),
        strict("a lower-case encoded slash is refused", "/a%2fb").refused(400),
        strict("an encoded backslash is refused", "/a%5Cb").refused(400),
        strict("an encoded NUL is refused", "/a%00b").refused(400),
        strict(
            "an overlong UTF-8 dot-dot is refused",
            "/%C0%AE%C0%AE/admin",
        )
        .refused(400),
        strict("escapes that are not UTF-8 are refused", "/a%FFb").refused(400),
        strict("..; is refused", "/public/..;/admin").refused(400),
        strict("%2e%2e; is refused", "/public/%2e%2e;/admin").refused(400),
        strict("ordinary escapes pass", "/caf%C3%A9/a%20b").up(
            "GET /caf%C3%A9/a%20b HTTP/1.1",
            &[],
            b"",
        ),
        strict("path parameters on ordinary segments pass", "/a;v=1/b").up(
            "GET /a;v=1/b HTTP/1.1",
            &[],
            b"",
        ),
        standard(
            "standard mode forwards an encoded slash as it came",
            "/a%2Fb",
        )
        .up("GET /a%2Fb HTTP/1.1", &[], b""),
        standard("standard mode forwards ..; as it came", "/public/..;/admin").up(
            "GET /public/..;/admin HTTP/1.1",
            &[],
            b"",
        ),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Upstream misbehaviour (RFC 9112 6.3; RFC 9110 15.6.3)

fn answered(name: &'static str, reply: Reply) -> Case {
    case(name, "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n").reply(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_misbehaviour() {
    let r = Reply::raw;
    table(vec![
        answered("a garbage status line gets 502", r("HTTP/1.1 OK 200\r\n\r\n")).status(502),
        answered("not HTTP at all gets 502", r("SSH-2.0-OpenSSH_9.6\r\n")).status(502),
        answered("an HTTP/1.0 answer goes out as HTTP/1.1 on a kept connection", r("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")).body(b"ok"),
        answered("an HTTP/1.0 answer delimited by close", r("HTTP/1.0 200 OK\r\n\r\nold").then(Then::Close)).body(b"old"),
        answered("an unknown status code is passed on", r("HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n")).status(599),
        answered("equal repeated Content-Lengths are folded into one", r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"))
            .body(b"ok"),
        answered("conflicting Content-Lengths get 502", r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk")).status(502),
        answered("Content-Length with Transfer-Encoding gets 502", r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")).status(502),
        answered("a transfer coding other than chunked gets 502", r("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx")).status(502),
        answered("an invalid Content-Length gets 502", r("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok")).status(502),
        answered("a negative Content-Length gets 502", r("HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok")).status(502),
        answered("a NUL in a response field gets 502", r("HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok")).status(502),
        answered("obs-fold in a response gets 502", r("HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok")).status(502),
        answered("a space before a colon in a response gets 502", r("HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 2\r\n\r\nok")).status(502),
        answered("bare LF line ends in a response are accepted", r("HTTP/1.1 200 OK\nContent-Length: 2\n\nok")).body(b"ok"),
        answered("an early close before the head gets 502", r("").then(Then::Close)).status(502),
        answered("a reset before the head gets 502", r("").then(Then::Reset)).status(502),
        answered("a close inside the head gets 502", r("HTTP/1.1 200 OK\r\nContent-Le").then(Then::Close)).status(502),
        answered("a reset mid-body cuts the client's response off", r("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial").then(Then::Reset)).status(0).after(After::Closed),
        answered("a close mid-body cuts the client's response off", r("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial").then(Then::Close)).status(0).after(After::Closed),
        answered("a close mid-chunked-body cuts the client's response off", r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n").then(Then::Close)).status(0).after(After::Closed),
        answered("a malformed chunk in a response cuts the client's response off", r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nbad\r\n0\r\n\r\n")).status(0).after(After::Closed),
        answered("bytes past Content-Length are not the next response", r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")).body(b"ok"),
        answered("interim 100 and 103 answers are skipped", r("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).body(b"ok"),
        answered("a chunked answer with extensions and trailers is decoded", r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nok\r\n1\r\n!\r\n0\r\nX-Sum: 3\r\n\r\n")).body(b"ok!"),
        answered("a chunk size with a bare LF cuts the client's response off", r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n")).status(0).after(After::Closed),
        answered("a chunk not followed by CRLF cuts the client's response off", r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n")).status(0).after(After::Closed),
        answered("a 101 nobody asked for gets 502", r("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")).status(502),
        answered("an over-long response head gets 502", Reply::raw(format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok", "b".repeat(500_000)))).status(502),
        answered("no answer gets 504", r("").then(Then::Hold)).status(504),
        answered("a head split in time is read whole", r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").split(9, Duration::from_millis(100))).body(b"ok"),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 clients, forwarded as HTTP/1.1 (RFC 9113 8.1-8.3). The frames are written by hand
// (HPACK literals without Huffman coding), so a malformed request is sent as it is.

mod h2raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// A header block of literal fields without indexing, new names, no Huffman coding.
    pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            out.push(0);
            int(&mut out, 0, 7, n.len());
            out.extend_from_slice(n);
            int(&mut out, 0, 7, v.len());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    pub enum Got {
        Status(u16),
        Reset(u32),
        GoAway(u32),
        Closed,
        TimedOut,
    }

    /// The `:status` at the start of a response header block (static-table index, or a literal
    /// with a `:status` name and a plain or Huffman-coded three-digit value).
    fn status(block: &[u8]) -> Option<u16> {
        let b = *block.first()?;
        if b & 0x80 != 0 {
            return [200, 204, 206, 304, 400, 404, 500]
                .get(usize::from(b & 0x7f).checked_sub(8)?)
                .copied();
        }
        let (len_at, huff) = (1, block.get(1)? & 0x80 != 0);
        let len = usize::from(block.get(len_at)? & 0x7f);
        let raw = block.get(len_at + 1..len_at + 1 + len)?;
        let digits: String = if huff {
            // HPACK Huffman codes of the digits: 0-2 in 5 bits, 3-9 in 6.
            let mut bits = raw
                .iter()
                .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1));
            let mut out = String::new();
            while out.len() < 3 {
                let mut code = 0u32;
                let mut n = 0;
                loop {
                    code = code << 1 | u32::from(bits.next()?);
                    n += 1;
                    if n == 5 && code < 3 {
                        out.push(char::from(b'0' + code as u8));
                        break;
                    }
                    if n == 6 && (0b011001..=0b011111).contains(&code) {
                        out.push(char::from(b'3' + (code - 0b011001) as u8));
                        break;
                    }
                    if n > 6 {
                        return None;
                    }
                }
            }
            out
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        digits.parse().ok()
    }

    pub struct Conn {
        pub stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        pub async fn open(addr: std::net::SocketAddr) -> Conn {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut hello = PREFACE.to_vec();
            hello.extend(frame(0x4, 0, 0, &[]));
            stream.write_all(&hello).await.unwrap();
            Conn {
                stream,
                buf: Vec::new(),
            }
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            let _ = self.stream.write_all(bytes).await;
        }

        /// Reads frames until stream `id` gets its response head, a reset, or the connection
        /// ends; reads the rest of the response body (to END_STREAM) before returning.
        pub async fn outcome(&mut self, id: u32) -> Got {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut got: Option<Got> = None;
            loop {
                while self.buf.len() >= 9 {
                    let len = (usize::from(self.buf[0]) << 16)
                        | (usize::from(self.buf[1]) << 8)
                        | usize::from(self.buf[2]);
                    if self.buf.len() < 9 + len {
                        break;
                    }
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let (kind, flags) = (f[3], f[4]);
                    let sid = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    let payload = &f[9..];
                    match kind {
                        // SETTINGS (not an ACK): acknowledge.
                        0x4 if flags & 1 == 0 => self.send(&frame(0x4, 1, 0, &[])).await,
                        // HEADERS of our stream (the first is the response head).
                        0x1 if sid == id && got.is_none() => {
                            got = Some(status(payload).map_or(Got::Status(0), Got::Status));
                            if flags & END_STREAM != 0 {
                                return got.unwrap();
                            }
                        }
                        0x0 | 0x1 if sid == id && flags & END_STREAM != 0 => {
                            return got.unwrap_or(Got::Status(0));
                        }
                        0x3 if sid == id => {
                            let code = u32::from_be_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]);
                            return got.unwrap_or(Got::Reset(code));
                        }
                        0x7 => {
                            let code = u32::from_be_bytes([
                                payload[4], payload[5], payload[6], payload[7],
                            ]);
                            let last = u32::from_be_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]) & 0x7fff_ffff;
                            if last < id || got.is_none() {
                                return got.unwrap_or(Got::GoAway(code));
                            }
                        }
                        _ => {}
                    }
                }
                let mut chunk = [0u8; 16384];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                    Err(_) => return got.unwrap_or(Got::TimedOut),
                    Ok(Ok(0)) | Ok(Err(_)) => return got.unwrap_or(Got::Closed),
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

/// A request as HTTP/2 frames on stream `id`: HEADERS (ending the stream unless `data`), then
/// DATA frames ending it.
fn h2_request(id: u32, fields: &[(&str, &str)], data: &[&str]) -> Vec<u8> {
    let fields: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let flags = h2raw::END_HEADERS
        | if data.is_empty() {
            h2raw::END_STREAM
        } else {
            0
        };
    let mut out = h2raw::frame(0x1, flags, id, &h2raw::block(&fields));
    for (i, d) in data.iter().enumerate() {
        let end = if i + 1 == data.len() {
            h2raw::END_STREAM
        } else {
            0
        };
        out.extend(h2raw::frame(0x0, end, id, d.as_bytes()));
    }
    out
}

const H2_GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "gw.test"),
    (":path", "/h2"),
];

fn h2_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut f = H2_GET.to_vec();
    f.extend_from_slice(extra);
    f
}

struct H2Case {
    name: &'static str,
    frames: Vec<u8>,
    /// `Status(s)`, or `Reset(1)` for "refused as malformed": a PROTOCOL_ERROR reset, a GOAWAY,
    /// or a 400 all count as that.
    want: h2raw::Got,
    up: Up,
}

fn h2_case(name: &'static str, fields: &[(&'static str, &'static str)], data: &[&str]) -> H2Case {
    H2Case {
        name,
        frames: h2_request(1, fields, data),
        want: h2raw::Got::Reset(1),
        up: Up::Nothing,
    }
}

impl H2Case {
    fn ok(mut self, line: &'static str, set: &[&'static str], body: &'static [u8]) -> H2Case {
        self.want = h2raw::Got::Status(200);
        self.up = Up::Req {
            line,
            set: set.to_vec(),
            body,
        };
        self
    }
    fn status(mut self, s: u16) -> H2Case {
        self.want = h2raw::Got::Status(s);
        self
    }
    fn up_is(mut self, up: Up) -> H2Case {
        self.up = up;
        self
    }
}

async fn run_h2(c: H2Case) -> Vec<String> {
    use h2raw::Got;
    let mut errs = Vec::new();
    let upstream = RawUpstream::ok().await;
    let gw = TestGateway::start(&config(&upstream.url(), "")).await;
    let mut conn = h2raw::Conn::open(gw.addr).await;
    conn.send(&c.frames).await;
    let got = conn.outcome(1).await;
    let malformed = |g: Got| matches!(g, Got::Reset(1) | Got::GoAway(1) | Got::Status(400));
    let ok = match c.want {
        Got::Reset(1) => malformed(got),
        want => got == want,
    };
    if !ok {
        errs.push(format!("client: want {:?}, got {got:?}", c.want));
    }
    // A stream error leaves the connection serving other streams.
    if !matches!(got, Got::GoAway(_) | Got::Closed) {
        conn.send(&h2_request(
            3,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/next"),
            ],
            &[],
        ))
        .await;
        let next = conn.outcome(3).await;
        if next != Got::Status(200) {
            errs.push(format!(
                "the connection does not serve the next stream: {next:?}"
            ));
        }
    }
    check_upstream(&c.up, &upstream, gw.addr.port(), &mut errs);
    errs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_downgrade() {
    const VIA2: &[&str] = &["via: 2 gatehouse"];
    let cases = vec![
        h2_case(
            "a valid HTTP/2 request goes upstream as HTTP/1.1",
            H2_GET,
            &[],
        )
        .ok("GET /h2 HTTP/1.1", VIA2, b""),
        h2_case(
            "an HTTP/2 body goes upstream with its length",
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/p"),
                ("content-length", "5"),
            ],
            &["hel", "lo"],
        )
        .ok(
            "POST /p HTTP/1.1",
            &["via: 2 gatehouse", "content-length: 5"],
            b"hello",
        ),
        h2_case(
            "an HTTP/2 body without a length goes upstream chunked",
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/p"),
            ],
            &["hel", "lo"],
        )
        .ok(
            "POST /p HTTP/1.1",
            &["via: 2 gatehouse", "transfer-encoding: chunked"],
            b"hello",
        ),
        h2_case("Host is taken from :authority", &h2_with(&[]), &[]).ok(
            "GET /h2 HTTP/1.1",
            VIA2,
            b"",
        ),
        h2_case(
            "TE: trailers is allowed and not forwarded",
            &h2_with(&[("te", "trailers")]),
            &[],
        )
        .ok("GET /h2 HTTP/1.1", VIA2, b""),
        h2_case(
            "connection is malformed in HTTP/2",
            &h2_with(&[("connection", "keep-alive")]),
            &[],
        ),
        h2_case(
            "keep-alive is malformed in HTTP/2",
            &h2_with(&[("keep-alive", "timeout=5")]),
            &[],
        ),
        h2_case(
            "proxy-connection is malformed in HTTP/2",
            &h2_with(&[("proxy-connection", "keep-alive")]),
            &[],
        ),
        h2_case(
            "transfer-encoding is malformed in HTTP/2",
            &h2_with(&[("transfer-encoding", "chunked")]),
            &[],
        ),
        h2_case(
            "upgrade is malformed in HTTP/2",
            &h2_with(&[("upgrade", "h2c")]),
            &[],
        ),
        h2_case(
            "TE other than trailers is malformed",
            &h2_with(&[("te", "gzip")]),
            &[],
        ),
        h2_case(
            "a Content-Length above the DATA sent is malformed",
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/p"),
                ("content-length", "10"),
            ],
            &["hello"],
        )
        .up_is(Up::NoComplete),
        h2_case(
            "a Content-Length below the DATA sent is malformed",
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/p"),
                ("content-length", "2"),
            ],
            &["hello"],
        )
        .up_is(Up::NoComplete),
        h2_case(
            "a CR in a value is malformed",
            &h2_with(&[("x-a", "a\rb")]),
            &[],
        ),
        h2_case(
            "an LF in a value is malformed",
            &h2_with(&[("x-a", "a\nb")]),
            &[],
        ),
        h2_case(
            "a CRLF-injected field is malformed",
            &h2_with(&[("x-a", "a\r\nx-injected: 1")]),
            &[],
        ),
        h2_case(
            "a NUL in a value is malformed",
            &h2_with(&[("x-a", "a\0b")]),
            &[],
        ),
        h2_case(
            "an upper-case field name is malformed",
            &h2_with(&[("X-Upper", "1")]),
            &[],
        ),
        h2_case(
            "a :path without a leading slash is refused",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "h2"),
            ],
            &[],
        ),
        h2_case(
            "an empty :path is malformed",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", ""),
            ],
            &[],
        ),
        h2_case(
            "a :path with a space is malformed",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/a b"),
            ],
            &[],
        ),
        h2_case(
            "a missing :method is malformed",
            &[
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/"),
            ],
            &[],
        ),
        h2_case(
            "a missing :path is malformed",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "gw.test"),
            ],
            &[],
        ),
        h2_case(
            "a pseudo-header after a field is malformed",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                ("x-a", "1"),
                (":authority", "gw.test"),
                (":path", "/"),
            ],
            &[],
        ),
        h2_case(
            "an unknown pseudo-header is malformed",
            &h2_with(&[(":foo", "bar")]),
            &[],
        ),
        h2_case(
            ":authority with userinfo is refused",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "u@gw.test"),
                (":path", "/"),
            ],
            &[],
        ),
        h2_case(
            "a Host that disagrees with :authority is refused",
            &h2_with(&[("host", "other.test")]),
            &[],
        ),
        h2_case(
            "CONNECT over HTTP/2 gets 501",
            &[(":method", "CONNECT"), (":authority", "gw.test:443")],
            &[],
        )
        .status(501),
    ];
    let n = cases.len();
    let runs: Vec<_> = cases
        .into_iter()
        .map(|c| {
            let name = c.name;
            tokio::spawn(async move { (name, run_h2(c).await) })
        })
        .collect();
    let mut failures = Vec::new();
    for r in runs {
        let (name, errs) = r.await.unwrap();
        if !errs.is_empty() {
            failures.push(format!("- {name}:\n    {}", errs.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An upstream that closes a kept-alive connection just as the next request arrives (its
/// idle timeout racing ours): a body-less GET is sent again on a fresh connection, because
/// the upstream closed without answering; a POST is not (it may have been processed).
#[tokio::test]
async fn a_keep_alive_race_is_retried_for_idempotent_requests_only() {
    let up = RawUpstream::start(Arc::new(|i, _| match i {
        // The second request, on the reused connection: closed unanswered.
        1 | 4 => Reply::raw("").then(Then::Close),
        _ => Reply::ok(),
    }))
    .await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    let mut c = RawClient::connect(gw.addr).await;
    for _ in 0..2 {
        c.send("GET /a HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
        assert_eq!(c.response().await.status(), Some(200));
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3, "the GET was sent again once");
    assert_eq!(
        String::from_utf8_lossy(&reqs[2]),
        String::from_utf8_lossy(&reqs[1]),
        "sent again byte for byte"
    );
    assert!(reqs[2].starts_with(b"GET /a HTTP/1.1\r\n"));
    c.send("POST /p HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(c.response().await.status(), Some(200));
    c.send("POST /p HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(
        c.response().await.status(),
        Some(502),
        "a POST is never sent twice"
    );
    assert_eq!(up.requests().len(), 5);
}

/// Active health checks go through the same connector as requests: origin form, the target's
/// Host, and the configured path and query byte for byte.
#[tokio::test]
async fn health_checks_go_out_in_origin_form() {
    let up = RawUpstream::ok().await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u:\n    targets: [\"{}\"]\n    health: {{ active: {{ path: \"/healthz?deep=1\", interval: 1s, timeout: 500ms }} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        up.url()
    );
    let _gw = TestGateway::start(&yaml).await;
    let reqs = up.wait_requests(1).await;
    assert!(!reqs.is_empty(), "no health check arrived");
    let text = String::from_utf8_lossy(&reqs[0]).into_owned();
    assert!(
        text.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("\r\nhost: {}\r\n", up.addr)),
        "{text}"
    );
}

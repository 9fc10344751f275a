//! Raw-socket peers for testing the wire, not the library: an upstream that is not hyper
//! ([`RawUpstream`]: it records the exact bytes it received and answers with scripted bytes,
//! misbehaving ones included) and a client that writes exact bytes and reads exactly what comes
//! back ([`RawClient`]). Both frame HTTP/1.1 messages strictly by hand (httparse for the head),
//! so a message hyper would forgive is visible here as the bytes it really was.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How much of a buffer the first message takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    Complete(usize),
    Incomplete,
    Invalid(String),
}

fn head_end(buf: &[u8]) -> Option<usize> {
    // CRLF CRLF, or bare LF line ends (which RFC 9112 2.2 lets a recipient accept).
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Strictly framed chunked body starting at `buf[0]`: its length including trailers.
fn chunked_len(buf: &[u8]) -> Framing {
    let mut pos = 0;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return Framing::Incomplete;
        };
        let line = &buf[pos..pos + nl];
        let Some(line) = line.strip_suffix(b"\r") else {
            return Framing::Invalid("chunk-size line not ended by CRLF".into());
        };
        let size_hex = line.split(|&b| b == b';').next().unwrap_or(b"");
        if size_hex.is_empty() || size_hex.len() > 15 || !size_hex.iter().all(u8::is_ascii_hexdigit)
        {
            return Framing::Invalid(format!(
                "bad chunk size {:?}",
                String::from_utf8_lossy(size_hex)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_hex).unwrap(), 16).unwrap();
        pos += nl + 1;
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
                    return Framing::Incomplete;
                };
                let empty = nl == 1 && buf[pos] == b'\r';
                if nl == 0 {
                    return Framing::Invalid("bare LF in trailer section".into());
                }
                pos += nl + 1;
                if empty {
                    return Framing::Complete(pos);
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Framing::Incomplete;
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Framing::Invalid("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

/// Decodes a complete, valid chunked body into its data.
pub fn dechunk(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
        let Ok(size) = usize::from_str_radix(std::str::from_utf8(hex).unwrap_or("x"), 16) else {
            break;
        };
        pos += nl + 1;
        if size == 0 || pos + size > buf.len() {
            break;
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
    out
}

struct Head {
    len: usize,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The body's framing after the head: chunked, a length, or none given.
    fn body(&self) -> Result<Option<BodyLen>, String> {
        let te = self.get_all("transfer-encoding");
        let cl = self.get_all("content-length");
        if !te.is_empty() {
            if !cl.is_empty() {
                return Err("both Content-Length and Transfer-Encoding".into());
            }
            if te.len() != 1 || !te[0].eq_ignore_ascii_case(b"chunked") {
                return Err("transfer coding other than chunked".into());
            }
            return Ok(Some(BodyLen::Chunked));
        }
        match cl.as_slice() {
            [] => Ok(None),
            [one] if !one.is_empty() && one.iter().all(u8::is_ascii_digit) => {
                let n = std::str::from_utf8(one)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or("Content-Length too large")?;
                Ok(Some(BodyLen::Exactly(n)))
            }
            _ => Err("invalid or repeated Content-Length".into()),
        }
    }
}

enum BodyLen {
    Chunked,
    Exactly(usize),
}

fn to_headers(h: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

fn parse_request_head(buf: &[u8]) -> Result<Option<(Head, String)>, String> {
    let Some(end) = head_end(buf) else {
        return Ok(None);
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) => {
            let method = req.method.unwrap_or("").to_owned();
            Ok(Some((
                Head {
                    len: n,
                    headers: to_headers(req.headers),
                },
                method,
            )))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("request head: {e}")),
    }
}

/// The first request in `buf`, framed strictly.
pub fn request_len(buf: &[u8]) -> Framing {
    let (head, _) = match parse_request_head(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return Framing::Incomplete,
        Err(e) => return Framing::Invalid(e),
    };
    match head.body() {
        Err(e) => Framing::Invalid(e),
        Ok(None) => Framing::Complete(head.len),
        Ok(Some(BodyLen::Exactly(n))) if buf.len() >= head.len + n => {
            Framing::Complete(head.len + n)
        }
        Ok(Some(BodyLen::Exactly(_))) => Framing::Incomplete,
        Ok(Some(BodyLen::Chunked)) => match chunked_len(&buf[head.len..]) {
            Framing::Complete(n) => Framing::Complete(head.len + n),
            other => other,
        },
    }
}

/// What a [`RawUpstream`] does after writing a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keep the connection for the next request.
    KeepOpen,
    /// Close it (FIN).
    Close,
    /// Reset it (RST: linger 0).
    Reset,
    /// Write nothing more and never answer again on this connection (but keep reading).
    Hold,
}

/// The bytes one request is answered with.
#[derive(Debug, Clone)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub then: Then,
    /// Written in pieces with this pause between them (to split heads and bodies in time).
    pub split_at: Vec<usize>,
    pub pause: Duration,
}

impl Reply {
    pub fn raw(bytes: impl AsRef<[u8]>) -> Reply {
        Reply {
            bytes: bytes.as_ref().to_vec(),
            then: Then::KeepOpen,
            split_at: Vec::new(),
            pause: Duration::ZERO,
        }
    }

    /// `200 OK` with a `Content-Length` body `ok`. In any reply, `{SELF}` is replaced by the
    /// upstream's own `ip:port`.
    pub fn ok() -> Reply {
        Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
    }

    pub fn then(mut self, then: Then) -> Reply {
        self.then = then;
        self
    }

    pub fn split(mut self, at: usize, pause: Duration) -> Reply {
        self.split_at.push(at);
        self.pause = pause;
        self
    }
}

pub type Script = Arc<dyn Fn(usize, &[u8]) -> Reply + Send + Sync>;

#[derive(Default)]
struct Log {
    /// Every complete request, byte for byte, in arrival order across connections.
    requests: Vec<Vec<u8>>,
    /// Bytes that formed no complete request, per connection that ended with some.
    leftovers: Vec<Vec<u8>>,
    /// Bytes of a request not yet complete, per open connection.
    partial: std::collections::HashMap<usize, Vec<u8>>,
    connections: usize,
}

/// An upstream written on a bare socket: frames each request strictly, records its bytes,
/// answers with what the script returns for it.
pub struct RawUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Answers every request with [`Reply::ok`].
    pub async fn ok() -> RawUpstream {
        Self::start(Arc::new(|_, _| Reply::ok())).await
    }

    /// Answers every request with the same bytes.
    pub async fn always(reply: Reply) -> RawUpstream {
        Self::start(Arc::new(move |_, _| reply.clone())).await
    }

    pub async fn start(script: Script) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let l2 = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = {
                    let mut l = l2.lock().unwrap();
                    l.connections += 1;
                    l.connections
                };
                conns.spawn(serve_raw(stream, script.clone(), l2.clone(), addr, id));
            }
        });
        RawUpstream { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Bytes that arrived but formed no complete request (a request cut off mid-body).
    /// Bytes that arrived but formed no complete request (yet): those of closed connections
    /// and those waiting on open ones.
    pub fn leftovers(&self) -> Vec<Vec<u8>> {
        let l = self.log.lock().unwrap();
        l.leftovers
            .iter()
            .chain(l.partial.values())
            .cloned()
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    /// Waits (at most 5 s) until `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.requests();
            if r.len() >= n || tokio::time::Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw(
    mut stream: TcpStream,
    script: Script,
    log: Arc<Mutex<Log>>,
    me: SocketAddr,
    id: usize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut holding = false;
    loop {
        // Answer every complete request already buffered, in order.
        while !holding {
            match request_len(&buf) {
                Framing::Complete(n) => {
                    let req: Vec<u8> = buf.drain(..n).collect();
                    let index = {
                        let mut l = log.lock().unwrap();
                        l.requests.push(req.clone());
                        l.requests.len() - 1
                    };
                    let mut reply = script(index, &req);
                    // `{SELF}` in a reply stands for this upstream's own address.
                    let me = me.to_string();
                    while let Some(at) = reply.bytes.windows(6).position(|w| w == b"{SELF}") {
                        reply.bytes.splice(at..at + 6, me.bytes());
                    }
                    if write_reply(&mut stream, &reply).await.is_err() {
                        return;
                    }
                    match reply.then {
                        Then::KeepOpen => {}
                        Then::Hold => holding = true,
                        Then::Close => {
                            let _ = stream.shutdown().await;
                            finish(&log, buf, id);
                            return;
                        }
                        Then::Reset => {
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            drop(stream);
                            finish(&log, buf, id);
                            return;
                        }
                    }
                }
                Framing::Incomplete => break,
                Framing::Invalid(_) => {
                    // Not a request this upstream can frame: keep the bytes, close.
                    finish(&log, buf, id);
                    return;
                }
            }
        }
        // What is buffered now is an incomplete request (or nothing): visible to the test.
        {
            let mut l = log.lock().unwrap();
            if buf.is_empty() {
                l.partial.remove(&id);
            } else {
                l.partial.insert(id, buf.clone());
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                finish(&log, buf, id);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn finish(log: &Mutex<Log>, rest: Vec<u8>, id: usize) {
    let mut l = log.lock().unwrap();
    l.partial.remove(&id);
    if !rest.is_empty() {
        l.leftovers.push(rest);
    }
}

async fn write_reply(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let mut from = 0;
    for &at in &reply.split_at {
        stream.write_all(&reply.bytes[from..at]).await?;
        stream.flush().await?;
        tokio::time::sleep(reply.pause).await;
        from = at;
    }
    stream.write_all(&reply.bytes[from..]).await?;
    stream.flush().await
}

/// A response as a client read it off the socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Every byte of this response, including interim 1xx responses before it.
    pub raw: Vec<u8>,
    /// The status line's version: `HTTP/1.x` minor digit.
    pub minor: u8,
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body as the client sees it (de-chunked).
    pub body: Vec<u8>,
    /// Statuses of the interim (1xx) responses that came first.
    pub interim: Vec<u16>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One response from the front of `buf`. `eof`: the peer closed, so a body delimited by the
/// close is complete. Returns the response and the bytes it took.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> Result<Option<(RawResponse, usize)>, String> {
    let mut pos = 0;
    let mut interim = Vec::new();
    loop {
        let Some(end) = head_end(&buf[pos..]) else {
            return Ok(None);
        };
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&buf[pos..pos + end]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("response head: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let minor = resp.version.unwrap_or(9);
        let head = Head {
            len: n,
            headers: to_headers(resp.headers),
        };
        let body_at = pos + head.len;
        if (100..200).contains(&status) && status != 101 {
            interim.push(status);
            pos = body_at;
            continue;
        }
        let no_body = head_request
            || status == 101
            || status == 204
            || status == 304
            || (100..200).contains(&status);
        let (body, used) = if no_body {
            (Vec::new(), body_at)
        } else {
            match head.body()? {
                Some(BodyLen::Exactly(len)) => {
                    if buf.len() < body_at + len {
                        return Ok(None);
                    }
                    (buf[body_at..body_at + len].to_vec(), body_at + len)
                }
                Some(BodyLen::Chunked) => match chunked_len(&buf[body_at..]) {
                    Framing::Complete(len) => {
                        (dechunk(&buf[body_at..body_at + len]), body_at + len)
                    }
                    Framing::Incomplete => return Ok(None),
                    Framing::Invalid(e) => return Err(e),
                },
                None if eof => (buf[body_at..].to_vec(), buf.len()),
                None => return Ok(None),
            }
        };
        return Ok(Some((
            RawResponse {
                raw: buf[..used].to_vec(),
                minor,
                status,
                headers: head.headers,
                body,
                interim,
            },
            used,
        )));
    }
}

/// What a raw client got back for one request.
#[derive(Debug)]
pub enum Got {
    Response(RawResponse),
    /// The connection closed (or was reset) before a whole response arrived; the bytes that did.
    Closed(Vec<u8>),
    /// Nothing complete within the wait; the bytes that did arrive.
    TimedOut(Vec<u8>),
    /// Bytes that do not parse as a response.
    Garbage(Vec<u8>, String),
}

impl Got {
    pub fn response(self) -> RawResponse {
        match self {
            Got::Response(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Got::Response(r) => Some(r.status),
            _ => None,
        }
    }
}

/// A client on a bare socket: writes exact bytes, reads responses framed by hand.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::try_connect(addr).await.expect("connect")
    }

    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        // A gateway that already answered and closed may refuse the rest: that is for the
        // reads to report.
        let _ = self.stream.write_all(bytes.as_ref()).await;
    }

    /// Reads the next response (waiting at most `wait`).
    pub async fn response_within(&mut self, head_request: bool, wait: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match parse_response(&self.buf, head_request, self.eof) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Got::Response(r);
                }
                Ok(None) if self.eof => return Got::Closed(std::mem::take(&mut self.buf)),
                Ok(None) => {}
                Err(e) => return Got::Garbage(std::mem::take(&mut self.buf), e),
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Got::TimedOut(self.buf.clone()),
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn response(&mut self) -> Got {
        self.response_within(false, Duration::from_secs(10)).await
    }

    /// True if the peer closes the connection within `wait` (bytes read meanwhile are kept).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 4096];
        while !self.eof {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }
}

/// One request on a new connection; its response (or what happened instead).
pub async fn exchange(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> Got {
    let mut c = RawClient::connect(addr).await;
    c.send(bytes).await;
    c.response().await
}

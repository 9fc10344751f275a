//! The access log: one line per request, text or JSON, written when the response body ends (so
//! duration and byte counts are the real ones, also for streams). Lines go through a bounded
//! channel to a dedicated writer thread, so the runtime never blocks on stdout or a file; if
//! the writer falls behind, lines are dropped and counted rather than slowing requests.
//!
//! Every field a client can influence (method, path, host, request id, route and target
//! names) is escaped so that a line is inert wherever it ends up: in a terminal (control and
//! bidi characters such as U+202E and U+009B), in a file a shell reads (`$(...)`, backticks,
//! quotes, `;`, `|`), in a log viewer. Text lines use `\xHH` / `\u{HHHH}`; JSON lines use
//! JSON's own `\uHHHH`, so a JSON parser still reads the exact value.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use http::{Method, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};

use crate::body::{Body, Tally};
use crate::config::model::{AccessLogConfig, LogFormat};
use crate::config::units::FilePath;
use crate::error::BoxError;
use crate::observe::metrics::{Metrics, RouteStats};

/// Where lines go. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
}

enum Msg {
    Line(String),
    /// Write out everything queued before this, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

impl AccessLog {
    /// Starts the writer thread. `path`: `stdout` (default), `stderr`, or a file appended to.
    pub fn start(cfg: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let out: Box<dyn std::io::Write + Send> = match cfg.path.as_ref().map(FilePath::as_str) {
            None | Some("stdout") | Some("-") => Box::new(std::io::stdout()),
            Some("stderr") => Box::new(std::io::stderr()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<Msg>(16 * 1024);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLog {
            tx,
            format: cfg.format,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    fn send(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!("access log writer is behind; dropping lines");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A line for a request refused before the gateway saw it whole (a head hyper could not
    /// parse, one too large, one that never finished): no method, path or request id is
    /// known, only the client, the status it was sent and why.
    pub fn rejected(&self, client: SocketAddr, status: StatusCode, reason: &'static str) {
        let record = Record {
            start: Instant::now(),
            time: SystemTime::now(),
            client,
            method: Method::from_bytes(b"-").unwrap_or(Method::GET),
            path: None,
            version: Version::HTTP_11,
            host: None,
            route: None,
            target: None,
            status,
            error: Some(reason),
            reason: None,
            request_id: HeaderValue::from_static("-"),
            trace: None,
            calls: None,
            tally: Arc::default(),
        };
        self.send(record.line(self.format, 0));
    }

    /// Blocks until every line sent so far is written (bounded by `timeout`). Called at
    /// shutdown, off the runtime, so no line of a finished request is lost on exit.
    pub fn flush(&self, timeout: std::time::Duration) {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

fn writer(rx: Receiver<Msg>, out: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let write = |msg: Msg, out: &mut std::io::BufWriter<_>| match msg {
        Msg::Line(line) => {
            let _ = out.write_all(line.as_bytes());
        }
        Msg::Flush(ack) => {
            let _ = out.flush();
            let _ = ack.send(());
        }
    };
    while let Ok(msg) = rx.recv() {
        write(msg, &mut out);
        // Drain what is queued, then flush once: one syscall per burst, not per line.
        while let Ok(msg) = rx.try_recv() {
            write(msg, &mut out);
        }
        let _ = out.flush();
        // Then let lines gather before looking again: a sender wakes this thread only when it
        // waits in `recv`, so under load the requests cost a queue push, not a thread wake-up
        // each (a profile showed the wake-ups costing more than the proxying). Idle, it waits
        // in `recv` and costs nothing; a line is written at most BATCH after its request.
        std::thread::sleep(BATCH);
    }
    let _ = out.flush();
}

/// How long the writer lets lines gather between writes.
const BATCH: std::time::Duration = std::time::Duration::from_millis(10);

/// Everything needed to account for one request when it ends: its metrics always, its
/// access-log line when the log is on.
pub struct Outcome {
    metrics: Arc<Metrics>,
    route: Option<Arc<RouteStats>>,
    method: Method,
    start: Instant,
    tally: Arc<Tally>,
    status: StatusCode,
    log: Option<(AccessLog, Box<Record>)>,
    /// Held until the request is accounted (its slot under `limits.max_in_flight`).
    held: Option<Box<dyn Send + Sync>>,
}

impl Outcome {
    fn finish(mut self, bytes_out: u64, incomplete: Option<&'static str>) {
        let bytes_in = self.tally.bytes_in.load(Ordering::Relaxed);
        self.metrics.request(
            self.route.as_deref(),
            &self.method,
            self.status,
            self.start.elapsed(),
            bytes_in,
            bytes_out,
        );
        if let Some((log, mut rec)) = self.log.take() {
            rec.status = self.status;
            if let Some(e) = incomplete
                && rec.error.is_none()
            {
                rec.error = Some(e);
            }
            log.send(rec.line(log.format, bytes_out));
        }
    }
}

/// The outcome of a request still being handled. If the handler is dropped before a response
/// exists (the client went away while the upstream was slow), it is accounted anyway, with
/// status 499 and `error=client_closed`, so exactly the slow requests do not vanish from the
/// log and the metrics.
pub struct Pending(Option<Outcome>);

impl Pending {
    pub fn new(
        metrics: &Arc<Metrics>,
        method: &Method,
        start: Instant,
        tally: &Arc<Tally>,
        log: Option<&AccessLog>,
        record: impl FnOnce() -> Record,
    ) -> Self {
        Pending(Some(Outcome {
            metrics: metrics.clone(),
            route: None,
            method: method.clone(),
            start,
            tally: tally.clone(),
            status: StatusCode::OK,
            log: log.map(|l| (l.clone(), Box::new(record()))),
            held: None,
        }))
    }

    /// The access-log record, when the log is on.
    /// Accounts nothing: for a request the gateway carries on in the background after the
    /// client's answer was accounted.
    pub fn detached() -> Pending {
        Pending(None)
    }

    pub fn record(&mut self) -> Option<&mut Record> {
        self.0
            .as_mut()
            .and_then(|o| o.log.as_mut())
            .map(|(_, r)| r.as_mut())
    }

    /// Keeps `slot` (a guard: its drop releases something) until the request ends.
    pub fn hold<T: Send + Sync + 'static>(&mut self, slot: Option<T>) {
        if let (Some(o), Some(slot)) = (self.0.as_mut(), slot) {
            o.held = Some(Box::new(slot));
        }
    }

    pub fn set_route(&mut self, route: &Arc<RouteStats>) {
        if let Some(o) = self.0.as_mut() {
            o.route = Some(route.clone());
        }
    }

    /// The response head exists: hand the outcome to the response body.
    pub fn respond(mut self, status: StatusCode) -> Option<Outcome> {
        let mut taken = self.0.take();
        if let Some(o) = taken.as_mut() {
            o.status = status;
        }
        taken
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut o) = self.0.take() {
            o.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            o.finish(0, Some("client_closed"));
        }
    }
}

/// What one access-log line says.
pub struct Record {
    pub start: Instant,
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: Method,
    /// The target's path and query as the client sent it (`None`: not known).
    pub path: Option<http::uri::PathAndQuery>,
    pub version: Version,
    /// The host as the client wrote it; logged in the form routes match on.
    pub host: Option<HeaderValue>,
    pub route: Option<Arc<str>>,
    pub target: Option<http::uri::Authority>,
    pub status: StatusCode,
    pub error: Option<&'static str>,
    /// Why a request was refused (`bad_request`, `not_implemented`): which rule it broke.
    pub reason: Option<&'static str>,
    pub request_id: HeaderValue,
    /// The W3C trace id (32 hex digits), when the request was forwarded.
    pub trace: Option<[u8; 32]>,
    /// An aggregate route's calls: `user:ok:12ms,orders:timeout:300ms`.
    pub calls: Option<String>,
    pub tally: Arc<Tally>,
}

impl Record {
    /// Held as the request had them (shared bytes, no copy per request); turned into text
    /// only here, when the line is written.
    fn fields(
        &self,
    ) -> (
        &str,
        std::borrow::Cow<'_, str>,
        &str,
        std::borrow::Cow<'_, str>,
    ) {
        let path = self.path.as_ref().map_or("-", |p| p.as_str());
        let host = match self.host.as_ref().map(|h| h.to_str()) {
            Some(Ok(h)) => crate::router::host_key(h),
            Some(Err(_)) => std::borrow::Cow::Borrowed("-"),
            None => std::borrow::Cow::Borrowed(""),
        };
        let target = self.target.as_ref().map_or("-", |t| t.as_str());
        let rid = String::from_utf8_lossy(self.request_id.as_bytes());
        (path, host, target, rid)
    }

    fn line(&self, format: LogFormat, bytes_out: u64) -> String {
        let (path, host, target, rid) = self.fields();
        let dur = self.start.elapsed().as_secs_f64() * 1000.0;
        let bytes_in = self.tally.bytes_in.load(Ordering::Relaxed);
        let ts = rfc3339_bytes(self.time);
        let ts = std::str::from_utf8(&ts).unwrap_or("-");
        let client = client_str(self.client);
        let client = client.as_str();
        match format {
            LogFormat::Json => {
                // Serialized straight from borrowed fields, in this order: a `json!` value
                // built a map of owned keys and strings first (about 40 allocations a line; the
                // JSON log cost more than the proxying in `MODE=full`).
                let line = JsonLine {
                    time: ts,
                    client,
                    method: self.method.as_str(),
                    path,
                    protocol: version_str(self.version),
                    host: &host,
                    route: self.route.as_deref(),
                    upstream_target: self.target.as_ref().map(|_| target),
                    status: self.status.as_u16(),
                    error: self.error,
                    reason: self.reason,
                    duration_ms: (dur * 1000.0).round() / 1000.0,
                    bytes_in,
                    bytes_out,
                    request_id: &rid,
                    trace_id: self
                        .trace
                        .as_ref()
                        .and_then(|t| std::str::from_utf8(t).ok()),
                    calls: self.calls.as_deref(),
                };
                let mut buf = Vec::with_capacity(384);
                let _ = serde_json::to_writer(&mut buf, &line);
                let json = String::from_utf8(buf).unwrap_or_default();
                let mut s = escape_json_line(json);
                s.push('\n');
                s
            }
            LogFormat::Text => {
                let mut s = String::with_capacity(192);
                let _ = write!(
                    s,
                    "{ts} {client} \"{method} {path} {proto}\" {status} route={route} target={target} duration_ms={dur:.3} bytes_in={bytes_in} bytes_out={bytes_out} request_id={rid}",
                    method = Escaped(self.method.as_str()),
                    path = Escaped(path),
                    proto = version_str(self.version),
                    status = self.status.as_u16(),
                    route = Escaped(self.route.as_deref().unwrap_or("-")),
                    target = Escaped(target),
                    rid = Escaped(&rid),
                );
                if let Some(t) = self
                    .trace
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok())
                {
                    let _ = write!(s, " trace_id={}", Escaped(t));
                }
                if let Some(e) = self.error {
                    let _ = write!(s, " error={e}");
                }
                if let Some(c) = &self.calls {
                    let _ = write!(s, " calls={}", Escaped(c));
                }
                if let Some(r) = self.reason {
                    let _ = write!(s, " reason={}", Escaped(r));
                }
                s.push('\n');
                s
            }
        }
    }
}

/// One JSON access-log line; the field order is the documented one.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: &'a str,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    host: &'a str,
    route: Option<&'a str>,
    upstream_target: Option<&'a str>,
    status: u16,
    error: Option<&'a str>,
    reason: Option<&'a str>,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    calls: Option<&'a str>,
}

/// Characters never written raw into a log line: controls (C0, DEL, C1 such as U+009B, the
/// 8-bit CSI), what a shell treats specially even inside double quotes or between words, and
/// invisible or direction-changing format characters (U+202E and friends, "Trojan Source").
fn must_escape(c: char) -> bool {
    if c.is_ascii() {
        return ASCII_ESCAPE[c as usize];
    }
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// [`must_escape`] for the ASCII characters, looked up: every byte of every line is checked.
static ASCII_ESCAPE: [bool; 128] = {
    let mut t = [false; 128];
    let mut b = 0;
    while b < 128 {
        t[b] = b < 0x20
            || b == 0x7f
            || matches!(
                b as u8,
                b' ' | b'$'
                    | b'`'
                    | b'\\'
                    | b'"'
                    | b'\''
                    | b';'
                    | b'&'
                    | b'|'
                    | b'<'
                    | b'>'
                    | b'('
                    | b')'
                    | b'!'
            );
        b += 1;
    }
    t
};

/// The byte offset of the first character of `s` that [`must_escape`] (and `keep` does not
/// keep). ASCII bytes are looked up in a table; only a non-ASCII character is decoded.
fn first_escape(s: &str, keep: impl Fn(u8) -> bool) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            if ASCII_ESCAPE[b as usize] && !keep(b) {
                return Some(i);
            }
            i += 1;
        } else {
            let c = s[i..].chars().next()?;
            if must_escape(c) {
                return Some(i);
            }
            i += c.len_utf8();
        }
    }
    None
}

/// A field of a text line: `$` becomes `\x24`, U+202E becomes `\u{202e}`. A backslash is
/// escaped too, so every backslash in a line starts an escape.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = first_escape(rest, |_| false) {
            f.write_str(&rest[..i])?;
            let Some(c) = rest[i..].chars().next() else {
                break;
            };
            if c.is_ascii() {
                write!(f, "\\x{:02x}", c as u32)?;
            } else {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A JSON line (compact, as serde_json writes it) with every [`must_escape`] character inside
/// its strings written as `\uHHHH`. serde_json has already escaped quotes, backslashes and
/// C0 controls; the others cannot occur outside a string in compact JSON, so replacing them
/// anywhere in the line is safe.
fn escape_json_line(line: String) -> String {
    // Most lines have nothing to escape: kept as they are, no second copy. Quotes and
    // backslashes are serde_json's own escapes.
    let Some(first) = first_escape(&line, |b| b == b'"' || b == b'\\') else {
        return line;
    };
    let mut out = String::with_capacity(line.len() + 16);
    out.push_str(&line[..first]);
    for c in line[first..].chars() {
        if must_escape(c) && c != '"' && c != '\\' {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// RFC 3339 UTC with milliseconds, without a date crate, in a stack buffer (every access-log
/// line has one): `2026-11-26T20:00:00.123Z`.
fn rfc3339_bytes(t: SystemTime) -> [u8; 24] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, h);
    put(14, 2, m);
    put(17, 2, s);
    put(20, 3, u64::from(d.subsec_millis()));
    out
}

/// A short string built on the stack: the client's address in a log line.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl StackStr {
    fn new() -> Self {
        StackStr {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("-")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `ip:port` (`[v6]:port`), as `SocketAddr`'s `Display` writes it, without an allocation.
fn client_str(addr: SocketAddr) -> StackStr {
    let mut out = StackStr::new();
    let _ = write!(out, "{addr}");
    out
}

/// The response body on its way to the client: counts bytes and accounts the request (metrics,
/// access-log line) when the body ends or is dropped (client gone), exactly once.
pub struct LoggedBody {
    inner: Body,
    bytes: u64,
    outcome: Option<Outcome>,
}

impl LoggedBody {
    pub fn new(inner: Body, outcome: Option<Outcome>) -> Self {
        LoggedBody {
            inner,
            bytes: 0,
            outcome,
        }
    }

    /// `complete`: the body reached its end. Otherwise it failed or the client left mid-body,
    /// and the line says so.
    fn finish(&mut self, complete: bool) {
        if let Some(o) = self.outcome.take() {
            o.finish(self.bytes, (!complete).then_some("response_incomplete"));
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn escapes_fields() {
        let evil = "/a$(id)`x`;b|c\u{202E}d\u{9B}e\x1bf\\g h\"i'";
        let text = Escaped(evil).to_string();
        assert_eq!(
            text,
            "/a\\x24\\x28id\\x29\\x60x\\x60\\x3bb\\x7cc\\u{202e}d\\u{9b}e\\x1bf\\x5cg\\x20h\\x22i\\x27"
        );
        assert_eq!(Escaped("/users/7?x=1").to_string(), "/users/7?x=1");
        let json = escape_json_line(serde_json::json!({ "path": evil }).to_string());
        for bad in ['$', '`', '(', '\u{202E}', '\u{9B}', '\x1b', ' ', '\''] {
            assert!(!json.contains(bad), "{bad:?} in {json}");
        }
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["path"], evil);
        // Outside the BMP: a surrogate pair.
        let tag = escape_json_line(serde_json::json!({ "p": "\u{E0041}" }).to_string());
        assert_eq!(tag, "{\"p\":\"\\udb40\\udc41\"}");
    }

    #[test]
    fn escapes_exactly_the_listed_ascii() {
        for b in 0u8..128 {
            let c = b as char;
            let listed = b < 0x20 || b == 0x7f || " $`\\\"';&|<>()!".contains(c);
            let text = Escaped(&c.to_string()).to_string();
            assert_eq!(text != c.to_string(), listed, "{b:#x}: {text}");
            let json = escape_json_line(serde_json::json!({ "p": c.to_string() }).to_string());
            let back: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back["p"], c.to_string(), "{json}");
            if listed && c != '"' && c != '\\' {
                assert!(!json.contains(c), "{b:#x}: {json}");
            }
        }
        // Non-ASCII: only the listed invisible, control and direction characters.
        assert_eq!(Escaped("é中\u{202E}").to_string(), "é中\\u{202e}");
        assert_eq!(first_escape("aé\u{200B}", |_| false), Some(3));
    }

    #[test]
    fn client_and_time_without_allocating_match_display() {
        for a in ["10.1.2.3:8080", "[2001:db8::1]:443", "[fe80::1%7]:80"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(client_str(addr).as_str(), addr.to_string());
        }
        let t = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
        assert_eq!(rfc3339(t), "9999-12-31T23:59:59.999Z");
    }

    fn rfc3339(t: SystemTime) -> String {
        String::from_utf8_lossy(&rfc3339_bytes(t)).into_owned()
    }

    #[test]
    fn formats_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_723_200_123);
        assert_eq!(rfc3339(t), "2026-11-26T20:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}

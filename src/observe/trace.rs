//! W3C Trace Context: every request forwarded upstream carries a `traceparent`. A valid one from
//! the client keeps its trace id and flags, with the gateway as the new parent span; a missing
//! or malformed one is replaced by a new trace. The trace id goes into the access log.

use http::HeaderValue;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

pub struct TraceContext {
    /// The `traceparent` to send upstream: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    pub header: HeaderValue,
    /// The client's trace was continued (else a new one was started).
    pub continued: bool,
}

impl TraceContext {
    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        self.header
            .to_str()
            .ok()
            .and_then(|s| s.get(3..35))
            .unwrap_or("")
    }
}

/// The context for one request, from the client's `traceparent` if it is valid. Built in a
/// stack buffer: this runs for every forwarded request.
pub fn continue_or_start(incoming: Option<&HeaderValue>) -> TraceContext {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let continued = match incoming.and_then(|v| parse(v.as_bytes())) {
        Some((trace, flags)) => {
            buf[3..35].copy_from_slice(trace);
            buf[53..55].copy_from_slice(flags);
            true
        }
        None => {
            write_hex(&mut buf[3..35], fastrand::u128(1..));
            false
        }
    };
    write_hex(&mut buf[36..52], u128::from(fastrand::u64(1..)));
    let header = HeaderValue::from_bytes(&buf).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    });
    TraceContext { header, continued }
}

/// Fills `out` with the low `out.len()` hex digits of `n`.
fn write_hex(out: &mut [u8], mut n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// `version-traceid-parentid-flags`, per W3C Trace Context level 1 (version 00; later versions
/// are read by their first four fields, as the spec asks).
fn parse(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let lower_hex = |x: &str, n: usize| {
        x.len() == n
            && x.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace.as_bytes(), flags.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = continue_or_start(Some(&v));
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let h = t.header.to_str().unwrap();
        assert!(h.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(h.ends_with("-01"));
        assert_ne!(
            &h[36..52],
            "00f067aa0ba902b7",
            "the gateway is the new parent"
        );
    }

    #[test]
    fn replaces_invalid_or_missing() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let t = continue_or_start(Some(&HeaderValue::from_static(bad)));
            assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(t.header.len(), 55);
        }
        let t = continue_or_start(None);
        assert_eq!(t.trace_id().len(), 32);
        assert!(parse(t.header.as_bytes()).is_some());
    }
}

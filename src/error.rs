//! The one error type of the request path, mapped to a status and a JSON body in exactly one
//! place ([`GatewayError::status`] and [`GatewayError::into_response`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the client sent no request body bytes for {0:?}")]
    ClientTimeout(Duration),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("upstream {upstream} has no target that can take traffic")]
    NoTarget { upstream: String },
    #[error("could not connect to upstream")]
    UpstreamConnect(#[source] BoxError),
    #[error("upstream connection failed")]
    UpstreamFailed(#[source] BoxError),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream is at its configured limit; retry later")]
    Overloaded { retry_after: u64 },
    /// An access policy refused the request (an IP rule, a CORS preflight it does not allow).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The service a `forward_auth` policy asks could not be reached or did not answer in
    /// time: the request is refused (fail closed).
    #[error("the authentication service is unavailable")]
    AuthUnavailable(#[source] BoxError),
    #[error("internal error: {0}")]
    Internal(String),
    /// No credential, or a wrong one: 401 with a `WWW-Authenticate` challenge per accepted
    /// method. `why` goes to the log, never to the client.
    #[error("authentication failed: {why}")]
    Unauthorized {
        challenges: Vec<HeaderValue>,
        why: &'static str,
    },
    /// Too many failed authentication attempts from this client address.
    #[error("too many failed authentication attempts")]
    LockedOut { retry_after: u64 },
    /// Over a `rate_limit`.
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    /// A `fail_closed` rate limit whose shared store (Redis) could not decide.
    #[error("the rate-limit store is unavailable")]
    RateLimitUnavailable,
    /// A required call of an `aggregate` route failed (`status`: 400 when the client's own
    /// value could not be put in the call, 504 for a timeout, else 502).
    #[error("aggregate call {call:?} failed ({kind}): {message}")]
    AggregateCall {
        call: String,
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a failed try may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the upstream: another target cannot duplicate the request.
    NotSent,
    /// The target did not answer in time: retried when the upstream retries on timeouts.
    OnTimeout,
    /// The exchange broke off: retried when the upstream retries on resets.
    OnReset,
    Never,
}

/// Whose fault an error was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was malformed, too large, too slow, or matched nothing.
    Client,
    /// The upstream could not be reached, failed, was too slow, or is at its limits.
    Upstream,
    /// A bug in the gateway.
    Internal,
}

impl GatewayError {
    /// Exactly one status per variant; no wildcard arm, so a new variant must choose one.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            GatewayError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::AggregateCall { status, .. } => *status,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::LockedOut { .. } | GatewayError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// Stable snake_case code: the JSON `error` field, log field and (later) metric label.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::NotImplemented(_) => "not_implemented",
            GatewayError::ClientTimeout(_) => "request_body_timeout",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NoTarget { .. } => "no_healthy_target",
            GatewayError::UpstreamConnect(_) => "upstream_connect_failed",
            GatewayError::UpstreamFailed(_) => "upstream_failed",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::Overloaded { .. } => "upstream_overloaded",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::AuthUnavailable(_) => "auth_unavailable",
            GatewayError::RateLimitUnavailable => "rate_limit_unavailable",
            GatewayError::AggregateCall { .. } => "aggregate_call_failed",
            GatewayError::Internal(_) => "internal_error",
            GatewayError::Unauthorized { .. } => "unauthorized",
            GatewayError::LockedOut { .. } => "too_many_failed_attempts",
            GatewayError::RateLimited { .. } => "rate_limited",
        }
    }

    /// The rule a refused request broke, for the access log (never the client-facing text of
    /// other errors, which may carry internal detail).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            GatewayError::BadRequest(why)
            | GatewayError::NotImplemented(why)
            | GatewayError::Forbidden(why)
            | GatewayError::Unauthorized { why, .. } => Some(why),
            _ => None,
        }
    }

    /// Whether another try, on another target, could do better: what `upstream::send` keys its
    /// retries on.
    pub fn retry(&self) -> Retry {
        match self {
            GatewayError::UpstreamConnect(_) => Retry::NotSent,
            GatewayError::UpstreamTimeout(_) => Retry::OnTimeout,
            // An HTTP/2 stream the target refused unprocessed is as safe as one never sent.
            GatewayError::UpstreamFailed(e) if is_unprocessed(e.as_ref()) => Retry::NotSent,
            GatewayError::UpstreamFailed(_) => Retry::OnReset,
            // At the upstream's own limit, or out of targets: no other target would do better.
            GatewayError::Overloaded { .. } | GatewayError::NoTarget { .. } => Retry::Never,
            GatewayError::NoRoute
            | GatewayError::BadRequest(_)
            | GatewayError::NotImplemented(_)
            | GatewayError::ClientTimeout(_)
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::Internal(_)
            | GatewayError::Unauthorized { .. }
            | GatewayError::LockedOut { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::Forbidden(_)
            | GatewayError::AuthUnavailable(_)
            | GatewayError::AggregateCall { .. }
            | GatewayError::RateLimitUnavailable => Retry::Never,
        }
    }

    /// Whether one request's error is worth a log line. The client's mistakes are not (they
    /// are in the access log and the rejection counter), nor is the upstream being slow, full
    /// or out of targets (counted in the metrics; under load, one line each would flood the
    /// log); a failed connection, a broken exchange and the gateway's own bugs are.
    pub fn logged(&self) -> bool {
        match self.fault() {
            Fault::Client => false,
            Fault::Internal => true,
            Fault::Upstream => matches!(
                self,
                GatewayError::UpstreamConnect(_)
                    | GatewayError::UpstreamFailed(_)
                    | GatewayError::AuthUnavailable(_)
            ),
        }
    }

    /// A request refused as malformed or unsupported, counted with the parser's rejections.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_) | GatewayError::NotImplemented(_)
        )
    }

    /// Whose fault it was: what retries, logging and connection handling key on, in one place.
    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::NoRoute
            | GatewayError::BadRequest(_)
            | GatewayError::NotImplemented(_)
            | GatewayError::ClientTimeout(_)
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::Unauthorized { .. }
            | GatewayError::LockedOut { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::Forbidden(_) => Fault::Client,
            GatewayError::AggregateCall { status, .. } if status.is_client_error() => Fault::Client,
            GatewayError::AggregateCall { .. } => Fault::Upstream,
            GatewayError::NoTarget { .. }
            | GatewayError::AuthUnavailable(_)
            | GatewayError::RateLimitUnavailable
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamFailed(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::Overloaded { .. } => Fault::Upstream,
            GatewayError::Internal(_) => Fault::Internal,
        }
    }

    /// After this error, the rest of the client's connection cannot be trusted (its framing
    /// was broken, or its body is still arriving): close it.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_) | GatewayError::ClientTimeout(_)
        )
    }

    /// The client-facing message: what happened, never internal detail (upstream names,
    /// addresses, configured values; those go to the log).
    pub(crate) fn public_message(&self) -> String {
        match self {
            GatewayError::BadRequest(why) => format!("bad request: {why}"),
            GatewayError::NotImplemented(why) => format!("not implemented: {why}"),
            GatewayError::Internal(_) => "internal error".to_owned(),
            GatewayError::NoTarget { .. } => {
                "no healthy upstream target can take this request".to_owned()
            }
            GatewayError::UpstreamTimeout(_) => "the upstream did not answer in time".to_owned(),
            GatewayError::ClientTimeout(_) => "the request body stopped arriving".to_owned(),
            GatewayError::BodyTooLarge { .. } => "the request body is too large".to_owned(),
            GatewayError::NoRoute => "no route matches this request".to_owned(),
            GatewayError::UpstreamConnect(_) => "could not connect to the upstream".to_owned(),
            GatewayError::UpstreamFailed(_) => "the upstream connection failed".to_owned(),
            GatewayError::Overloaded { .. } => {
                "the upstream is at its configured limit; retry later".to_owned()
            }
            GatewayError::Unauthorized { .. } => "authentication required".to_owned(),
            GatewayError::LockedOut { .. } => {
                "too many failed authentication attempts; retry later".to_owned()
            }
            GatewayError::RateLimited { .. } => "too many requests; retry later".to_owned(),
            // Which rule refused is for the log: telling the client helps it probe the rules.
            GatewayError::Forbidden(_) => "access to this resource is forbidden".to_owned(),
            GatewayError::AuthUnavailable(_) => {
                "the authentication service is unavailable; retry later".to_owned()
            }
            GatewayError::RateLimitUnavailable => {
                "the rate limit cannot be checked right now; retry later".to_owned()
            }
            // Which call, and why, is the point of the answer; upstream names and addresses
            // are not in it (the kinds and messages of `aggregate::CallError` hold none).
            GatewayError::AggregateCall {
                call,
                kind,
                message,
                ..
            } => format!("call {call:?} failed ({kind}): {message}"),
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<Body> {
        if let GatewayError::AggregateCall { call, .. } = &self {
            // Machines read which call failed from its own field.
            let body = serde_json::json!({
                "error": self.code(),
                "call": call,
                "message": self.public_message(),
                "request_id": request_id,
            });
            let mut resp = Response::new(Body::full(Bytes::from(body.to_string())));
            *resp.status_mut() = self.status();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return resp;
        }
        let mut resp = json_error(
            self.status(),
            self.code(),
            &self.public_message(),
            request_id,
        );
        self.add_headers(resp.headers_mut());
        resp
    }

    /// The headers an error's answer carries in every shape (JSON or gRPC).
    fn add_headers(self, h: &mut http::HeaderMap) {
        match self {
            GatewayError::Overloaded { retry_after }
            | GatewayError::LockedOut { retry_after }
            | GatewayError::RateLimited { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            // A down store is tried again every `timeout` (at least 100 ms, see
            // `store::redis`): a second is a fair first wait.
            GatewayError::RateLimitUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::Unauthorized { challenges, .. } => {
                for c in challenges {
                    h.append(header::WWW_AUTHENTICATE, c);
                }
            }
            _ => {}
        }
    }
}

impl GatewayError {
    /// The gRPC status code (grpc/doc/statuscodes.md) of this error, for gRPC clients.
    pub fn grpc_code(&self) -> u16 {
        match self {
            GatewayError::NoRoute | GatewayError::NotImplemented(_) => 12, // UNIMPLEMENTED
            GatewayError::BadRequest(_) => 3,                              // INVALID_ARGUMENT
            GatewayError::ClientTimeout(_) => 1,                           // CANCELLED
            GatewayError::BodyTooLarge { .. } => 8,                        // RESOURCE_EXHAUSTED
            GatewayError::UpstreamTimeout(_) => 4,                         // DEADLINE_EXCEEDED
            GatewayError::Forbidden(_) => 7,                               // PERMISSION_DENIED
            GatewayError::NoTarget { .. }
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamFailed(_)
            | GatewayError::Overloaded { .. }
            | GatewayError::AuthUnavailable(_)
            | GatewayError::AggregateCall { .. }
            | GatewayError::RateLimitUnavailable => 14, // UNAVAILABLE
            GatewayError::Internal(_) => 13,                               // INTERNAL
            GatewayError::Unauthorized { .. } => 16,                       // UNAUTHENTICATED
            GatewayError::LockedOut { .. } | GatewayError::RateLimited { .. } => 8, // RESOURCE_EXHAUSTED
        }
    }

    /// The error as a gRPC client expects it: HTTP 200, `content-type: application/grpc`, and
    /// `grpc-status` / `grpc-message` in a trailers-only response (headers that end the
    /// stream). A JSON body would surface in the client as a protocol error instead.
    pub fn into_grpc_response(self, request_id: &str) -> Response<Body> {
        let message = format!("{} (request id {request_id})", self.public_message());
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(self.grpc_code()));
        if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
            h.insert("grpc-message", v);
        }
        self.add_headers(h);
        resp
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...; not
/// gRPC-Web, whose errors travel in the body).
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && (v.len() == 16 || matches!(v[16], b'+' | b';'))
    })
}

/// Whether `e` (or an error it wraps) says an HTTP/2 target did not process the request, so
/// sending it again cannot duplicate it (RFC 9113 8.7): the stream was reset with
/// REFUSED_STREAM, or a graceful GOAWAY (NO_ERROR) arrived whose last stream id is below it.
/// A GOAWAY with an error code is not enough: the streams it covers failed the same way.
pub fn is_unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(err) = at {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && match h2.reason() {
                    Some(h2::Reason::REFUSED_STREAM) => true,
                    Some(h2::Reason::NO_ERROR) => h2.is_go_away(),
                    _ => false,
                };
        }
        at = err.source();
    }
    false
}

/// `{"error": code, "message": ..., "request_id": ...}`; used for every error the gateway makes.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    let mut resp = Response::new(Body::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = GatewayError::UpstreamTimeout(Duration::from_secs(1)).into_grpc_response("r1");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        let m = r.headers()["grpc-message"].to_str().unwrap();
        assert!(m.contains("request id r1"), "{m}");
        assert_eq!(grpc_percent_encode("a%b\u{e9}"), "a%25b%C3%A9");
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/json"));
    }

    #[test]
    fn each_variant_has_its_status() {
        let io = || -> BoxError { Box::new(std::io::Error::other("x")) };
        let table: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::NoRoute, 404, "no_route"),
            (GatewayError::BadRequest("x"), 400, "bad_request"),
            (GatewayError::NotImplemented("x"), 501, "not_implemented"),
            (
                GatewayError::ClientTimeout(Duration::from_secs(1)),
                408,
                "request_body_timeout",
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "body_too_large",
            ),
            (
                GatewayError::NoTarget {
                    upstream: "u".into(),
                },
                503,
                "no_healthy_target",
            ),
            (
                GatewayError::UpstreamConnect(io()),
                502,
                "upstream_connect_failed",
            ),
            (GatewayError::UpstreamFailed(io()), 502, "upstream_failed"),
            (
                GatewayError::UpstreamTimeout(Duration::from_secs(1)),
                504,
                "upstream_timeout",
            ),
            (
                GatewayError::Overloaded { retry_after: 1 },
                503,
                "upstream_overloaded",
            ),
            (GatewayError::Forbidden("ip_rules"), 403, "forbidden"),
            (GatewayError::AuthUnavailable(io()), 503, "auth_unavailable"),
            (
                GatewayError::RateLimitUnavailable,
                503,
                "rate_limit_unavailable",
            ),
            (
                GatewayError::Internal("secret detail".into()),
                500,
                "internal_error",
            ),
        ];
        for (err, status, code) in table {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code);
            // Client faults are 4xx (and 501: it asked for what a reverse proxy does not do).
            assert_eq!(
                err.fault() == Fault::Client,
                status < 500 || status == 501,
                "{err:?} is {:?}",
                err.fault()
            );
            let msg = err.public_message();
            for secret in ["secret detail", "u ", "1s", "1 bytes", " 1 "] {
                assert!(!msg.contains(secret), "{err:?} tells the client {msg:?}");
            }
            let resp = err.into_response("rid");
            assert_eq!(resp.status().as_u16(), status);
        }
    }

    #[test]
    fn internal_detail_is_not_leaked() {
        assert_eq!(
            GatewayError::Internal("secret".into()).public_message(),
            "internal error"
        );
    }
}

//! Active health checks: an HTTP GET to each target of an upstream with `health.active`, at an
//! interval (with ±10% jitter, so checks of many gateways do not align), on a connection of its
//! own (never a pooled one, so a check measures a fresh connect too), made by the same
//! connector as the pool's: TLS and HTTP/2 when the upstream uses them. A target that fails
//! `unhealthy_threshold` checks in a row gets no traffic until it passes `healthy_threshold` in
//! a row. Checker tasks are kept per (upstream, target, settings) across reloads: a reload that
//! keeps a target keeps its checker and its state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use tokio::task::JoinHandle;

use super::Upstream;
use super::connector::Endpoint;
use super::state::TargetLive;
use super::transport::Protocol;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePolicy {
    pub path: String,
    /// Check with the gRPC health protocol, about this service (`""`: the server), at
    /// `path` = `/grpc.health.v1.Health/Check`.
    pub grpc_service: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive range of statuses that count as healthy.
    pub expected: (u16, u16),
}

type Key = (Arc<str>, String);

/// The running checker tasks.
#[derive(Default)]
pub struct HealthCheckers {
    tasks: Mutex<HashMap<Key, Checker>>,
}

/// A running checker and what it was started with.
struct Checker {
    policy: ActivePolicy,
    /// How the target is reached: a checker started for other TLS or protocol settings is
    /// replaced.
    endpoint: Arc<Endpoint>,
    task: JoinHandle<()>,
}

/// What one target's checker needs.
struct Wanted {
    policy: ActivePolicy,
    live: Arc<TargetLive>,
    host: HeaderValue,
    endpoint: Arc<Endpoint>,
}

impl HealthCheckers {
    /// Makes the running checkers match the upstreams of the live config.
    pub fn reconcile<'a>(&self, upstreams: impl Iterator<Item = &'a Upstream>) {
        let mut want: HashMap<Key, Wanted> = HashMap::new();
        for u in upstreams {
            let Some(policy) = &u.active else {
                // Checks turned off: a target they had taken out comes back.
                for t in &u.targets {
                    t.live.reset_active();
                }
                continue;
            };
            for t in &u.targets {
                want.insert(
                    (u.name.clone(), t.authority.to_string()),
                    Wanted {
                        policy: policy.clone(),
                        live: t.live.clone(),
                        host: t.host_header.clone(),
                        endpoint: t.pool.endpoint().clone(),
                    },
                );
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|key, c| {
            let keep = want
                .get(key)
                .is_some_and(|w| w.policy == c.policy && Arc::ptr_eq(&w.endpoint, &c.endpoint));
            if !keep {
                c.task.abort();
            }
            keep
        });
        for (key, w) in want {
            if tasks.contains_key(&key) {
                continue;
            }
            if tokio::runtime::Handle::try_current().is_err() {
                return;
            }
            let task = tokio::spawn(check_loop(
                key.0.clone(),
                w.policy.clone(),
                w.live,
                w.host,
                w.endpoint.clone(),
            ));
            tasks.insert(
                key,
                Checker {
                    policy: w.policy,
                    endpoint: w.endpoint,
                    task,
                },
            );
        }
    }
}

impl HealthCheckers {
    pub fn stop_all(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, c) in tasks.drain() {
                c.task.abort();
            }
        }
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for c in tasks.values() {
                c.task.abort();
            }
        }
    }
}

async fn check_loop(
    upstream: Arc<str>,
    policy: ActivePolicy,
    live: Arc<TargetLive>,
    host: HeaderValue,
    endpoint: Arc<Endpoint>,
) {
    let authority = endpoint.authority.as_str();
    loop {
        let jitter = policy.interval.as_secs_f64() * (0.9 + 0.2 * fastrand::f64());
        tokio::time::sleep(Duration::from_secs_f64(jitter)).await;
        let result = probe(&endpoint, &host, &policy).await;
        let ok = result.is_ok();
        if let Some(healthy) =
            live.record_probe(ok, policy.healthy_threshold, policy.unhealthy_threshold)
        {
            if healthy {
                tracing::info!(upstream = %upstream, target = %authority, "target healthy again: back in rotation");
            } else {
                tracing::warn!(upstream = %upstream, target = %authority, reason = %result.err().unwrap_or_default(), "target failed its health checks: out of rotation");
            }
        }
    }
}

/// A `grpc.health.v1.HealthCheckRequest { service }`, framed: a 5-byte gRPC message prefix,
/// then field 1 (a string) in protobuf.
fn grpc_check_request(service: &str) -> Bytes {
    let s = service.as_bytes();
    let mut msg = Vec::with_capacity(s.len() + 6);
    if !s.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        let mut n = s.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(s);
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

/// Reads a gRPC health answer whole: healthy (reported as HTTP 200) when `grpc-status` is 0
/// and the `HealthCheckResponse` says SERVING (field 1 = 1).
async fn grpc_verdict(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<http::StatusCode, String> {
    use http_body_util::BodyExt;
    if resp.status() != http::StatusCode::OK {
        return Ok(resp.status());
    }
    let (parts, body) = resp.into_parts();
    let collected = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("reading the gRPC answer: {e}"))?;
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_owned();
    if grpc_status != "0" {
        return Err(format!("grpc-status {grpc_status}"));
    }
    // One message: 5-byte prefix, then `status` (field 1, varint): 08 01 = SERVING.
    let msg = bytes.get(5..).unwrap_or_default();
    match msg {
        [0x08, 0x01, ..] => Ok(http::StatusCode::OK),
        [0x08, s, ..] => Err(format!("gRPC health status {s} (not SERVING)")),
        _ => Err("gRPC health status UNKNOWN".to_owned()),
    }
}

/// One check: connect, `GET path`, and an expected status, all within `timeout`.
async fn probe(endpoint: &Endpoint, host: &HeaderValue, p: &ActivePolicy) -> Result<(), String> {
    let attempt = async {
        let path = http::uri::PathAndQuery::try_from(p.path.as_str()).map_err(|e| e.to_string())?;
        let req = match &p.grpc_service {
            None => Request::get(super::connector::origin_form(path.clone()))
                .header(http::header::USER_AGENT, "gatehouse-health-check")
                .body(Full::new(Bytes::new())),
            Some(service) => Request::post(super::connector::origin_form(path.clone()))
                .header(http::header::USER_AGENT, "gatehouse-health-check")
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
                .body(Full::new(grpc_check_request(service))),
        }
        .map_err(|e| e.to_string())?;
        // The same connector as the pool's (bounded here by the check's own timeout).
        let resp = match endpoint.protocol() {
            Protocol::Http1 => {
                let (mut send, conn) = endpoint
                    .http1(p.timeout)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let driver = tokio::spawn(conn);
                let mut req = req;
                req.headers_mut().insert(http::header::HOST, host.clone());
                req.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                let resp = send.send_request(req).await;
                let resp = match (&p.grpc_service, resp) {
                    (Some(_), Ok(r)) => grpc_verdict(r).await,
                    (None, r) => r.map(|r| r.status()).map_err(|e| format!("request: {e}")),
                    (_, Err(e)) => Err(format!("request: {e}")),
                };
                driver.abort();
                resp?
            }
            Protocol::Http2 => {
                let (mut send, conn) = endpoint
                    .http2(p.timeout)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let driver = tokio::spawn(conn);
                let authority = http::uri::Authority::try_from(host.as_bytes())
                    .map_err(|e| format!("host {host:?}: {e}"))?;
                let (mut parts, body) = req.into_parts();
                parts.uri = super::connector::h2_target(&endpoint.transport, authority, path);
                parts.version = http::Version::HTTP_2;
                let resp = send.send_request(Request::from_parts(parts, body)).await;
                let resp = match (&p.grpc_service, resp) {
                    (Some(_), Ok(r)) => grpc_verdict(r).await,
                    (None, r) => r.map(|r| r.status()).map_err(|e| format!("request: {e}")),
                    (_, Err(e)) => Err(format!("request: {e}")),
                };
                driver.abort();
                resp?
            }
        };
        let status = resp.as_u16();
        if (p.expected.0..=p.expected.1).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(p.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", p.timeout)))
}

//! Active health checks: an HTTP GET to each target of an upstream with `health.active`, at an
//! interval (with ±10% jitter, so checks of many gateways do not align), on a connection of its
//! own (never a pooled one, so a check measures a fresh connect too). A target that fails
//! `unhealthy_threshold` checks in a row gets no traffic until it passes `healthy_threshold` in
//! a row. Checker tasks are kept per (upstream, target, settings) across reloads: a reload that
//! keeps a target keeps its checker and its state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Empty;
use tokio::task::JoinHandle;

use super::Upstream;
use super::state::TargetLive;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePolicy {
    pub path: String,
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
    tasks: Mutex<HashMap<Key, (ActivePolicy, JoinHandle<()>)>>,
}

impl HealthCheckers {
    /// Makes the running checkers match the upstreams of the live config.
    pub fn reconcile<'a>(&self, upstreams: impl Iterator<Item = &'a Upstream>) {
        let mut want: HashMap<Key, (ActivePolicy, Arc<TargetLive>, HeaderValue)> = HashMap::new();
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
                    (policy.clone(), t.live.clone(), t.host_header.clone()),
                );
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|key, (policy, handle)| {
            let keep = want.get(key).is_some_and(|(p, _, _)| p == policy);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (policy, live, host)) in want {
            if tasks.contains_key(&key) {
                continue;
            }
            if tokio::runtime::Handle::try_current().is_err() {
                return;
            }
            let handle = tokio::spawn(check_loop(
                key.0.clone(),
                key.1.clone(),
                policy.clone(),
                live,
                host,
            ));
            tasks.insert(key, (policy, handle));
        }
    }
}

impl HealthCheckers {
    pub fn stop_all(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, (_, h)) in tasks.drain() {
                h.abort();
            }
        }
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for (_, h) in tasks.values() {
                h.abort();
            }
        }
    }
}

async fn check_loop(
    upstream: Arc<str>,
    authority: String,
    policy: ActivePolicy,
    live: Arc<TargetLive>,
    host: HeaderValue,
) {
    loop {
        let jitter = policy.interval.as_secs_f64() * (0.9 + 0.2 * fastrand::f64());
        tokio::time::sleep(Duration::from_secs_f64(jitter)).await;
        let result = probe(&authority, &host, &policy).await;
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

/// One check: connect, `GET path`, and an expected status, all within `timeout`.
async fn probe(authority: &str, host: &HeaderValue, p: &ActivePolicy) -> Result<(), String> {
    let attempt = async {
        // The same connector as the pool's (bounded here by the check's own timeout).
        let (mut send, conn) = super::connector::http1::<Empty<Bytes>>(authority, p.timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let driver = tokio::spawn(conn);
        let path = http::uri::PathAndQuery::try_from(p.path.as_str()).map_err(|e| e.to_string())?;
        let req = Request::get(super::connector::origin_form(path))
            .header(http::header::HOST, host.clone())
            .header(http::header::USER_AGENT, "gatehouse-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"));
        driver.abort();
        let status = resp?.status().as_u16();
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

//! The admin API, on a listener of its own: status, routes, upstreams, the config (read,
//! validate, apply), reload, Prometheus metrics and the dashboard. Every request needs
//! `Authorization: Bearer <admin.token>` when a token is configured (always, when the admin
//! listener is not on loopback). Without a token the API is read-only: only GET is served.
//! A config applied here may not add or change a filesystem path (see `control`).
//! Described in `docs/admin-api.yaml` (OpenAPI 3).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::control::{ApplyError, Control};
use crate::router::{HostPattern, PathPattern};
use crate::runtime::PathAction;

/// Largest config body accepted by validate/apply; larger gets 413. A config this size (some
/// 80 000 routes) compiles in well under a second, off the runtime workers.
pub const MAX_CONFIG_BODY: usize = 4 * 1024 * 1024;
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

type Resp = Response<Full<Bytes>>;

/// Admin connections open at once; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 64;

/// Accepts admin connections until `stop` fires or the control plane is gone; then closes the
/// connections it accepted (within 2 s), so a listener removed by a reload serves no one.
pub async fn serve(listener: TcpListener, control: Weak<Control>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let control = control.clone();
        let svc = service_fn(move |req| {
            let control = control.clone();
            async move {
                Ok::<_, Infallible>(match control.upgrade() {
                    Some(c) => handle(&c, req).await,
                    None => json_resp(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "shutting down"}),
                    ),
                })
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

async fn handle(c: &Arc<Control>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    // The dashboard page itself holds no data (it fetches /stats with the token), so it is
    // served without one.
    if req.method() == Method::GET && (path.is_empty() || path == "/dashboard") {
        return html(DASHBOARD_HTML);
    }
    if let Err(why) = browser_safe(c, &req) {
        return json_resp(
            StatusCode::FORBIDDEN,
            &json!({"error": "forbidden", "message": why}),
        );
    }
    if !authorized(c, &req) {
        let mut r = json_resp(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "unauthorized", "message": "a valid `Authorization: Bearer <admin token>` header is required"}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    // Without a token, anyone who can reach the port (any local user, on loopback) is
    // "authorized": such an API only reads. Changing the config, reloading and validating
    // (which costs CPU) need a token.
    if !matches!(*req.method(), Method::GET | Method::HEAD) && !has_token(c) {
        return json_resp(
            StatusCode::FORBIDDEN,
            &json!({"error": "read_only", "message": "the admin API is read-only without a token: set `admin.token` to change the config through it"}),
        );
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/status") => json_resp(StatusCode::OK, &status(c)),
        (Method::GET, "/routes") => json_resp(StatusCode::OK, &routes(c)),
        (Method::GET, "/upstreams") => json_resp(StatusCode::OK, &upstreams(c)),
        (Method::GET, "/stats") => json_resp(
            StatusCode::OK,
            &json!({ "status": status(c), "routes": routes(c), "upstreams": upstreams(c) }),
        ),
        (Method::GET, "/config") => json_resp(StatusCode::OK, &config(c)),
        (Method::POST, "/config/validate") => match body_text(req).await {
            Err(r) => r,
            Ok(text) => match c.validate(text).await {
                Ok(warnings) => json_resp(
                    StatusCode::OK,
                    &json!({ "valid": true, "warnings": warnings }),
                ),
                Err(errs) => json_resp(
                    StatusCode::BAD_REQUEST,
                    &json!({ "valid": false, "errors": errs.iter().map(ToString::to_string).collect::<Vec<_>>() }),
                ),
            },
        },
        (Method::PUT, "/config") => match body_text(req).await {
            Err(r) => r,
            Ok(text) => match c.apply_from_admin(text).await {
                Ok(()) => json_resp(
                    StatusCode::OK,
                    &json!({ "applied": true, "hash": c.config_hash() }),
                ),
                Err(e) => apply_error(&e),
            },
        },
        (Method::POST, "/cache/purge") => match body_text(req).await {
            Err(r) => r,
            Ok(text) => purge(c, &text).await,
        },
        (Method::POST, "/reload") => match c.reload_file("admin").await {
            Ok(changed) => json_resp(
                StatusCode::OK,
                &json!({ "reloaded": changed, "hash": c.config_hash() }),
            ),
            Err(e) => apply_error(&e),
        },
        (Method::GET, "/metrics") => {
            let rt = c.gw.runtime.load();
            c.gw.metrics.store_up(rt.store.status().up);
            let now = std::time::Instant::now();
            for u in rt.upstreams.values() {
                for t in &u.targets {
                    let healthy = !t.live.is_down() && !t.live.is_ejected(now);
                    c.gw.metrics
                        .target_health(&u.name, &Arc::from(t.authority.as_str()), healthy);
                }
            }
            if let crate::store::cache::Backend::Memory(m) = &rt.cache {
                c.gw.metrics.cache_memory(
                    m.size(),
                    m.entries(),
                    m.evictions.load(Ordering::Relaxed),
                );
            }
            let mut r = Response::new(Full::new(Bytes::from(c.gw.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (
            _,
            "/status" | "/routes" | "/upstreams" | "/stats" | "/config" | "/config/validate"
            | "/reload" | "/metrics" | "/dashboard" | "/cache/purge",
        ) => json_resp(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed"}),
        ),
        _ => json_resp(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "message": "see docs/admin-api.yaml"}),
        ),
    }
}

/// `POST /cache/purge` with `{"key": "..."}` (the answer stored under the key a route's
/// `cache.key` makes, e.g. `example.com/items?a=1`, with its Vary variants) or
/// `{"prefix": "..."}` (every key that starts with it; `""` empties the cache), on every
/// route or, with `"route": "name"`, on one.
async fn purge(c: &Control, text: &str) -> Resp {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Purge {
        key: Option<String>,
        prefix: Option<String>,
        route: Option<String>,
    }
    let bad = |m: String| {
        json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad_request", "message": m}),
        )
    };
    let p: Purge = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            return bad(format!(
                "expected {{\"key\": \"...\"}} or {{\"prefix\": \"...\"}}: {e}"
            ));
        }
    };
    let cache = c.gw.runtime.load().cache.clone();
    let route = p.route.as_deref();
    let result = match (&p.key, &p.prefix) {
        (Some(k), None) => cache.purge(route, k.as_bytes(), true).await,
        (None, Some(p)) => cache.purge(route, p.as_bytes(), false).await,
        _ => return bad("give exactly one of `key` and `prefix`".into()),
    };
    match result {
        Ok(n) => json_resp(StatusCode::OK, &json!({ "purged": n })),
        Err(_) => json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "store_unavailable", "message": "the cache store did not answer"}),
        ),
    }
}

/// Whether the request may use the admin API: the admin API must still be configured (a
/// connection accepted before it was turned off gets nothing), and the bearer token must match
/// when one is set.
fn authorized<B>(c: &Control, req: &Request<B>) -> bool {
    let rt = c.gw.runtime.load();
    let Some(admin) = rt.admin.as_ref() else {
        return false;
    };
    let Some(token) = admin.token.as_deref() else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn has_token(c: &Control) -> bool {
    c.gw.runtime
        .load()
        .admin
        .as_ref()
        .is_some_and(|a| a.token.is_some())
}

/// Refuses what a web page could send on a user's behalf: a request with an `Origin` other
/// than the admin API's own (a cross-site `fetch`), and, when there is no token, a `Host` that
/// is not an IP address or `localhost` (DNS rebinding).
fn browser_safe<B>(c: &Control, req: &Request<B>) -> Result<(), &'static str> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err("cross-origin requests are refused");
        }
    }
    if !has_token(c) {
        let name = crate::router::host_key(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if !(name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()) {
            return Err(
                "without an admin token, the admin API must be addressed by IP address or localhost",
            );
        }
    }
    Ok(())
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

async fn body_text(req: Request<Incoming>) -> Result<String, Resp> {
    // A YAML media type is required: an HTML form cannot send one, so a page cannot post a
    // config without a CORS preflight (which this API never grants).
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !matches!(
        ctype.as_str(),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/json"
    ) {
        return Err(json_resp(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &json!({"error": "unsupported_media_type", "message": "send the config with `Content-Type: application/yaml`"}),
        ));
    }
    let too_large = || {
        json_resp(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": "payload_too_large", "message": format!("a config sent to the admin API may be at most {MAX_CONFIG_BODY} bytes")}),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CONFIG_BODY as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(req.into_body(), MAX_CONFIG_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad_request", "message": format!("cannot read the body: {e}")}),
            ));
        }
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad_request", "message": "the body must be UTF-8 YAML"}),
        )
    })
}

fn apply_error(e: &ApplyError) -> Resp {
    let (status, code) = match e {
        ApplyError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
        ApplyError::Failed(_) => (StatusCode::CONFLICT, "not_applied"),
        ApplyError::Refused(_) => (StatusCode::FORBIDDEN, "path_change_refused"),
    };
    json_resp(
        status,
        &json!({ "applied": false, "error": code, "errors": e.messages() }),
    )
}

fn status(c: &Control) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": c.started.elapsed().as_secs(),
        "config_hash": c.config_hash(),
        "config_file": c.config_path.as_ref().map(|p| p.display().to_string()),
        "last_reload": c.last_reload(),
        "store": store(c),
    })
}

/// The shared store: `kind` (memory, redis, redis_cluster), `up`, `errors` (calls that fell
/// back since this store was made), `last_error`, `since` (Unix seconds: when `up` last
/// changed, or the store was made).
fn store(c: &Control) -> Value {
    let st = c.gw.runtime.load().store.status();
    json!({
        "kind": st.kind,
        "up": st.up,
        "errors": st.errors,
        "last_error": st.last_error,
        "since": st.since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn routes(c: &Control) -> Value {
    let rt = c.gw.runtime.load();
    let routes: Vec<Value> = rt
        .routes
        .iter()
        .map(|r| {
            let m = &r.matcher;
            let (kind, path) = match &m.path {
                PathPattern::Prefix(p) => ("path_prefix", p.clone()),
                p => ("path", p.display()),
            };
            json!({
                "name": &*r.name,
                "index": r.index,
                "match": {
                    kind: path,
                    "hosts": m.hosts.iter().map(HostPattern::display).collect::<Vec<_>>(),
                    "methods": m.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                    // Header conditions can be shared secrets: names only.
                    "headers": m.headers.iter().map(|(k, _)| (k.as_str().to_owned(), "<redacted>")).collect::<std::collections::BTreeMap<_, _>>(),
                },
                "upstream": r.action.upstream().map(|u| &*u.name),
                "action": r.action.kind(),
                "calls": match &r.action {
                    crate::runtime::Action::Aggregate(a) => Some(crate::aggregate::describe(a)),
                    _ => None,
                },
                "path_action": match &r.path_action {
                    PathAction::Keep => "keep",
                    PathAction::StripPrefix(_) => "strip_prefix",
                    PathAction::Rewrite(_) => "rewrite",
                },
                "policies": r.chain.iter().map(|b| json!({"kind": b.policy.kind(), "phase": b.policy.phase().name(), "from": &*b.source})).collect::<Vec<_>>(),
                "stats": c.gw.metrics.route_snapshot(&r.name),
            })
        })
        .collect();
    json!(routes)
}

fn upstreams(c: &Control) -> Value {
    let rt = c.gw.runtime.load();
    let now = std::time::Instant::now();
    let ups: Vec<Value> = rt
        .upstreams
        .values()
        .map(|u| {
            json!({
                "name": &*u.name,
                "balance": u.balancer.name(),
                "timeouts": {
                    "connect_ms": u.timeouts.connect.as_millis() as u64,
                    "response_ms": u.timeouts.response.as_millis() as u64,
                    "idle_ms": u.timeouts.idle.as_millis() as u64,
                },
                "preserve_host": u.preserve_host,
                "active_health_check": u.active.as_ref().map(|a| json!({"path": redact_query(&a.path), "interval_ms": a.interval.as_millis() as u64})),
                "retry_attempts": u.retry.attempts,
                "targets": u.targets.iter().map(|t| {
                    let live = &t.live;
                    json!({
                        "url": t.url,
                        "address": t.authority.as_str(),
                        "weight": t.weight,
                        // drained: weight 0; unhealthy: failing active checks; ejected: passive
                        // health took it out for a while; healthy: takes traffic.
                        "state": if t.weight == 0 { "drained" } else if live.is_down() { "unhealthy" } else if live.is_ejected(now) { "ejected" } else { "healthy" },
                        "ejected_for_ms": live.ejected_until(now).map(|u| u.saturating_duration_since(now).as_millis() as u64),
                        "in_flight": live.in_flight(),
                        "latency_ewma_ms": live.ewma(now).map(|s| (s * 1e6).round() / 1e3),
                        "idle_connections": t.pool.idle_count(),
                        "requests": t.stats.get().map_or(0, |s| s.requests.load(Ordering::Relaxed)),
                        "errors": t.stats.get().map_or(0, |s| s.errors.load(Ordering::Relaxed)),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!(ups)
}

/// The config as written (so `${ENV}` references stay references), with literal secrets
/// redacted.
fn config(c: &Control) -> Value {
    let text = c.config_text();
    let mut v: Value = serde_saphyr::from_str(&text).unwrap_or(Value::Null);
    redact(&mut v);
    json!({ "hash": c.config_hash(), "config": v })
}

/// Hides literal secrets: values of keys that name one (`token`, `secret`, `password…`, `…key`),
/// and every header value (`headers.request.set`, `match.headers`: the usual homes of upstream
/// credentials and shared-secret gates). `${ENV}` references are shown as they are.
fn redact(v: &mut Value) {
    redact_in(v, false);
    // A health-check path may carry a credential in its query (`/healthz?token=...`).
    if let Some(ups) = v.get_mut("upstreams").and_then(Value::as_object_mut) {
        for u in ups.values_mut() {
            if let Some(p) = u.pointer_mut("/health/active/path")
                && let Some(s) = p.as_str()
            {
                *p = Value::String(redact_query(s));
            }
        }
    }
}

/// `/healthz?token=abc&x=1` -> `/healthz?token=<redacted>&x=<redacted>`: the names stay,
/// every value is hidden (`${ENV}` references excepted).
fn redact_query(path: &str) -> String {
    let Some((p, q)) = path.split_once('?') else {
        return path.to_owned();
    };
    let params: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !(v.is_empty() || v.starts_with("${") && v.ends_with('}')) => {
                format!("{k}=<redacted>")
            }
            Some((k, v)) => format!("{k}={v}"),
            None => kv.to_owned(),
        })
        .collect();
    format!("{p}?{}", params.join("&"))
}

fn redact_in(v: &mut Value, all: bool) {
    match v {
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let secret = all || crate::config::is_secret_key(k);
                let headers = crate::config::is_header_map_key(k);
                match item {
                    Value::Object(_) | Value::Array(_) => redact_in(item, secret || headers),
                    Value::String(s) if secret && s.starts_with("${") && s.ends_with('}') => {}
                    _ if secret => *item = Value::String("<redacted>".into()),
                    Value::String(s) => redact_userinfo(s),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                match item {
                    Value::Object(_) | Value::Array(_) => redact_in(item, all),
                    Value::String(s) if all && s.starts_with("${") && s.ends_with('}') => {}
                    _ if all => *item = Value::String("<redacted>".into()),
                    Value::String(s) => redact_userinfo(s),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// A URL's password, whatever key holds the URL (`store.redis.url`, `auth.jwt.jwks_url`,
/// targets): `redis://user:pw@host/0` -> `redis://user:<redacted>@host/0`. A userinfo without a
/// `:` may be a token on its own and is hidden whole.
fn redact_userinfo(s: &mut String) {
    let Some(scheme_end) = s.find("://") else {
        return;
    };
    let start = scheme_end + 3;
    let authority_end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    let Some(at) = s[start..authority_end].rfind('@').map(|i| start + i) else {
        return;
    };
    let hidden_from = s[start..at].find(':').map_or(start, |i| start + i + 1);
    if hidden_from < at {
        s.replace_range(hidden_from..at, "<redacted>");
    }
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(s: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(s.as_bytes())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls_under_any_key() {
        let mut v = json!({
            "store": {"redis": {"url": "redis://app:s3cret@10.0.0.7:6379/0",
                                "cluster": ["rediss://:pw@a:7000", "redis://b:7001"]}},
            "auth": {"jwks_url": "https://tok3n@idp.example/jwks?x=a@b"},
            "other": "not a url: a:b@c"
        });
        redact(&mut v);
        assert_eq!(
            v["store"]["redis"]["url"],
            "redis://app:<redacted>@10.0.0.7:6379/0"
        );
        assert_eq!(
            v["store"]["redis"]["cluster"][0],
            "rediss://:<redacted>@a:7000"
        );
        assert_eq!(v["store"]["redis"]["cluster"][1], "redis://b:7001");
        assert_eq!(
            v["auth"]["jwks_url"],
            "https://<redacted>@idp.example/jwks?x=a@b"
        );
        assert_eq!(v["other"], "not a url: a:b@c");
        let text = v.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("tok3n"),
            "{text}"
        );
    }

    #[test]
    fn redacts_literal_secrets_but_not_references() {
        let mut v = json!({
            "admin": {"token": "abcdefabcdefabcdef", "addr": "x"},
            "c": [{"password_hash": "$argon", "api_key": 12345}],
            "j": {"secret": "${JWT}"},
            "routes": [{"match": {"path": "/a", "headers": {"x-gate": "s3cret"}},
                        "headers": {"request": {"set": {"authorization": "Bearer sk_live", "x-tag": "1"}, "remove": ["cookie"]}}}],
        });
        redact(&mut v);
        assert_eq!(v["admin"]["token"], "<redacted>");
        assert_eq!(v["admin"]["addr"], "x");
        assert_eq!(v["c"][0]["password_hash"], "<redacted>");
        assert_eq!(v["c"][0]["api_key"], "<redacted>");
        assert_eq!(v["j"]["secret"], "${JWT}");
        assert_eq!(v["routes"][0]["match"]["path"], "/a");
        assert_eq!(v["routes"][0]["match"]["headers"]["x-gate"], "<redacted>");
        assert_eq!(
            v["routes"][0]["headers"]["request"]["set"]["authorization"],
            "<redacted>"
        );
        assert_eq!(
            v["routes"][0]["headers"]["request"]["set"]["x-tag"],
            "<redacted>"
        );
        assert!(!v.to_string().contains("sk_live") && !v.to_string().contains("s3cret"));
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}

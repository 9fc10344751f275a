//! Listeners, the admin listener, and `server:` (client-side limits and timeouts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;
use crate::config::model::*;
use crate::registry::Claims;
use crate::runtime::{AdminSettings, Cidr, ListenerSettings, RedirectHttps, ServerSettings};
use crate::state::State;

pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's `client_body_timeout` and `send_timeout`.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Long enough for WebSocket clients that ping every minute or so.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
/// hyper's read buffer cannot be smaller than this.
const MIN_HEADER_SIZE: u64 = 8 * 1024;

pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";

pub(super) fn compile_listeners(
    l: &ListenConfig,
    state: &State,
    claims: &mut Claims,
    errors: &mut Vec<ConfigError>,
) -> Vec<ListenerSettings> {
    let entries: Vec<(String, &str, Option<&ListenerConfig>)> = match l {
        ListenConfig::One(s) => vec![("listen".into(), s.as_str(), None)],
        ListenConfig::Many(v) => v
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                ListenerEntry::Addr(s) => (format!("listen[{i}]"), s.as_str(), None),
                ListenerEntry::Full(f) => (format!("listen[{i}]"), f.addr.as_str(), Some(f)),
            })
            .collect(),
    };
    if entries.is_empty() {
        errors.push(ConfigError::new(
            "listen",
            "at least one listener is needed",
        ));
    }
    let mut out: Vec<ListenerSettings> = Vec::new();
    for (path, s, full) in entries {
        let addr_path = if full.is_some() {
            format!("{path}.addr")
        } else {
            path.clone()
        };
        let addr = match parse_listen_addr(s) {
            Ok(a) => a,
            Err(e) => {
                errors.push(ConfigError::new(addr_path, e));
                continue;
            }
        };
        if out.iter().any(|l| l.addr == addr) {
            errors.push(ConfigError::new(
                addr_path,
                format!("address {addr} is listed twice"),
            ));
            continue;
        }
        let tls = full.and_then(|f| f.tls.as_ref()).and_then(|t| {
            super::tls::compile_tls(t, addr, &format!("{path}.tls"), state, claims, errors)
        });
        let redirect_https = match full.and_then(|f| f.redirect_https.as_ref()) {
            None | Some(RedirectHttpsSetting::On(false)) => None,
            Some(RedirectHttpsSetting::On(true)) => Some(RedirectHttps {
                port: None,
                status: http::StatusCode::PERMANENT_REDIRECT,
            }),
            Some(RedirectHttpsSetting::Config(c)) => {
                let status = match c.status.unwrap_or(308) {
                    s @ (301 | 302 | 307 | 308) => http::StatusCode::from_u16(s)
                        .unwrap_or(http::StatusCode::PERMANENT_REDIRECT),
                    other => {
                        errors.push(ConfigError::new(
                            format!("{path}.redirect_https.status"),
                            format!("must be 301, 302, 307 or 308, got {other}"),
                        ));
                        http::StatusCode::PERMANENT_REDIRECT
                    }
                };
                Some(RedirectHttps {
                    port: c.port.filter(|p| *p != 443),
                    status,
                })
            }
        };
        if redirect_https.is_some() && full.is_some_and(|f| f.tls.is_some()) {
            errors.push(ConfigError::new(
                format!("{path}.redirect_https"),
                "a TLS listener already serves HTTPS; redirect from a plain one",
            ));
        }
        out.push(ListenerSettings {
            addr,
            tls: tls.map(Arc::new),
            redirect_https,
        });
    }
    out
}

/// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all interfaces), `localhost:8080`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(format!(
        "invalid listen address {s:?} (expected IP:PORT such as \"127.0.0.1:8080\" or \"[::]:8080\")"
    ))
}

pub(super) fn compile_admin(
    a: &AdminConfig,
    listeners: &[ListenerSettings],
    errors: &mut Vec<ConfigError>,
) -> Option<AdminSettings> {
    let addr = match parse_listen_addr(a.addr.as_deref().unwrap_or(DEFAULT_ADMIN_ADDR)) {
        Ok(addr) => addr,
        Err(e) => {
            errors.push(ConfigError::new("admin.addr", e));
            return None;
        }
    };
    if listeners.iter().any(|l| l.addr == addr) && addr.port() != 0 {
        errors.push(ConfigError::new(
            "admin.addr",
            format!("{addr} is also a proxy listener; the admin API needs its own"),
        ));
    }
    let token = a.token.clone().filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        errors.push(ConfigError::new(
            "admin.token",
            format!("required when the admin API listens beyond loopback ({addr})"),
        ));
    }
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        errors.push(ConfigError::new(
            "admin.token",
            "must be at least 16 characters",
        ));
    }
    Some(AdminSettings { addr, token })
}

pub(super) fn compile_server(s: &ServerConfig, errors: &mut Vec<ConfigError>) -> ServerSettings {
    let max_header_size = s.max_header_size.map_or(DEFAULT_MAX_HEADER_SIZE, |b| b.0);
    if !(MIN_HEADER_SIZE..=16 * 1024 * 1024).contains(&max_header_size) {
        errors.push(ConfigError::new(
            "server.max_header_size",
            "must be between 8KiB and 16MiB",
        ));
    }
    let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        errors.push(ConfigError::new(
            "server.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let request_header_timeout = s
        .request_header_timeout
        .map_or(DEFAULT_REQUEST_HEADER_TIMEOUT, |d| d.0);
    if request_header_timeout.is_zero() {
        errors.push(ConfigError::new(
            "server.request_header_timeout",
            "must be more than 0",
        ));
    }
    let idle_timeout = s.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0);
    if idle_timeout.is_zero() {
        errors.push(ConfigError::new(
            "server.idle_timeout",
            "must be more than 0",
        ));
    }
    let max_connections_per_ip = s
        .max_connections_per_ip
        .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP);
    if max_connections_per_ip == 0 {
        errors.push(ConfigError::new(
            "server.max_connections_per_ip",
            "must be at least 1",
        ));
    }
    let mut positive = |key: &str, v: Option<crate::config::units::DurationStr>, default| {
        let d = v.map_or(default, |d| d.0);
        if d.is_zero() {
            errors.push(ConfigError::new(
                format!("server.{key}"),
                "must be more than 0",
            ));
        }
        d
    };
    let request_body_timeout = positive(
        "request_body_timeout",
        s.request_body_timeout,
        DEFAULT_REQUEST_BODY_TIMEOUT,
    );
    let send_timeout = positive("send_timeout", s.send_timeout, DEFAULT_SEND_TIMEOUT);
    let upgrade_idle_timeout = positive(
        "upgrade_idle_timeout",
        s.upgrade_idle_timeout,
        DEFAULT_UPGRADE_IDLE_TIMEOUT,
    );
    let mut trusted_proxies = Vec::new();
    for (i, t) in s.trusted_proxies.iter().flatten().enumerate() {
        match Cidr::parse(t) {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => errors.push(ConfigError::new(format!("server.trusted_proxies[{i}]"), e)),
        }
    }
    ServerSettings {
        trusted_proxies,
        allow_underscores_in_headers: s.allow_underscores_in_headers.unwrap_or(false),
        strict_paths: s.path_normalization == Some(crate::config::model::PathNormalization::Strict),
        request_header_timeout,
        idle_timeout,
        max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
        max_body_size: s.max_body_size.map(|b| b.0),
        max_connections,
        max_connections_per_ip,
        shutdown_timeout: s.shutdown_timeout.map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
        request_body_timeout,
        send_timeout,
        upgrade_idle_timeout,
    }
}

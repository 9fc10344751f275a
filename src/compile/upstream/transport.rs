//! An upstream's transport: the scheme its targets share, `protocol`,
//! `max_concurrent_streams` and `tls`, checked together and turned into one
//! [`Transport`] (its rustls client config built here, once per upstream, from PEM files read
//! with [`crate::tls`]).

use std::sync::Arc;

use http::uri::Scheme;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::config::model::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig};
use crate::upstream::transport::{
    DEFAULT_MAX_CONCURRENT_STREAMS, Protocol, TlsClient, Transport, Trust,
};

/// The scheme of an `h2c://` target (HTTP/2 with prior knowledge, cleartext).
pub const H2C: &str = "h2c";

/// The transport of upstream `path` whose targets use `scheme` (`None` when no target
/// parsed: only the keys that do not depend on it are checked).
pub(super) fn compile_transport(
    u: &UpstreamConfig,
    path: &str,
    scheme: Option<&Scheme>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<Arc<Transport>> {
    let before = errors.len();
    let https = scheme == Some(&Scheme::HTTPS);
    let h2c = scheme.is_some_and(|s| s.as_str() == H2C);
    let protocol = match (u.protocol, h2c) {
        (Some(UpstreamProtocol::Http1), true) => {
            errors.push(ConfigError::new(
                format!("{path}.protocol"),
                "h2c:// targets speak HTTP/2 (prior knowledge): leave `protocol` out or set it to h2",
            ));
            Protocol::Http2
        }
        (Some(UpstreamProtocol::H2), _) | (None, true) => Protocol::Http2,
        (Some(UpstreamProtocol::Http1), false) | (None, false) => Protocol::Http1,
    };
    let max_concurrent_streams = match (u.max_concurrent_streams, protocol) {
        (None, _) => DEFAULT_MAX_CONCURRENT_STREAMS,
        (Some(_), Protocol::Http1) => {
            errors.push(ConfigError::new(
                format!("{path}.max_concurrent_streams"),
                "only applies to HTTP/2 upstreams (`protocol: h2` or h2c:// targets)",
            ));
            DEFAULT_MAX_CONCURRENT_STREAMS
        }
        (Some(0), _) => {
            errors.push(ConfigError::new(
                format!("{path}.max_concurrent_streams"),
                "must be at least 1",
            ));
            DEFAULT_MAX_CONCURRENT_STREAMS
        }
        (Some(n), _) => n as usize,
    };
    let tls = match (&u.tls, https) {
        (Some(_), false) if scheme.is_some() => {
            errors.push(ConfigError::new(
                format!("{path}.tls"),
                format!(
                    "only applies to https:// targets (this upstream's are {}://)",
                    scheme.map_or("", Scheme::as_str)
                ),
            ));
            None
        }
        (Some(_), false) | (None, false) => None,
        (tls, true) => {
            let default = UpstreamTlsConfig::default();
            compile_tls(
                tls.as_ref().unwrap_or(&default),
                &format!("{path}.tls"),
                protocol,
                errors,
                warnings,
            )
        }
    };
    (errors.len() == before).then(|| {
        Arc::new(Transport {
            protocol,
            max_concurrent_streams,
            tls,
        })
    })
}

fn compile_tls(
    t: &UpstreamTlsConfig,
    path: &str,
    protocol: Protocol,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<TlsClient> {
    let before = errors.len();
    // What the client is built from, so a reload with the same inputs keeps the pool.
    let mut inputs = Sha256::new();
    inputs.update(protocol.as_str());
    let insecure = t.insecure_skip_verify.unwrap_or(false);
    let trust = match (&t.ca, insecure) {
        (Some(_), true) => {
            errors.push(ConfigError::new(
                format!("{path}.ca"),
                "has no effect with `insecure_skip_verify: true`: use one or the other",
            ));
            None
        }
        (None, true) => {
            warnings.push(ConfigError::new(
                format!("{path}.insecure_skip_verify"),
                "is true: the targets' certificates and names are not verified, so anyone on the network path can impersonate them (give their CA in `ca` instead)",
            ));
            inputs.update(b"\0insecure");
            Some(Trust::Anything)
        }
        (Some(ca), false) => {
            let file = ca.as_str();
            match ca_roots(file) {
                Ok((roots, der)) => {
                    inputs.update(b"\0ca");
                    for c in der {
                        inputs.update(c);
                    }
                    Some(Trust::Roots(Arc::new(roots)))
                }
                Err(e) => {
                    errors.push(ConfigError::new(format!("{path}.ca"), e));
                    None
                }
            }
        }
        (None, false) => {
            let roots = crate::tls::system_roots();
            if roots.is_empty() {
                warnings.push(ConfigError::new(
                    path,
                    "the system trust store has no CA certificates: connections to these targets will fail verification (give their CA in `ca`)",
                ));
            }
            inputs.update(b"\0system");
            Some(Trust::Roots(roots))
        }
    };
    let client_auth = match (&t.client_cert, &t.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(ConfigError::new(
                format!("{path}.client_key"),
                "is needed with `client_cert` (mutual TLS takes both or neither)",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                format!("{path}.client_cert"),
                "is needed with `client_key` (mutual TLS takes both or neither)",
            ));
            None
        }
        (Some(cert), Some(key)) => {
            let chain = crate::tls::load_certs(cert.as_str())
                .map_err(|e| errors.push(ConfigError::new(format!("{path}.client_cert"), e)))
                .ok();
            let key = crate::tls::load_key(key.as_str())
                .map_err(|e| errors.push(ConfigError::new(format!("{path}.client_key"), e)))
                .ok();
            chain.zip(key).map(|(chain, key)| {
                inputs.update(b"\0client");
                for c in &chain {
                    inputs.update(c);
                }
                inputs.update(key.secret_der());
                (chain, key)
            })
        }
    };
    if let Some(name) = &t.server_name {
        if ServerName::try_from(name.as_str()).is_err() {
            errors.push(ConfigError::new(
                format!("{path}.server_name"),
                format!("{name:?} is not a DNS name or an IP address"),
            ));
        }
        inputs.update(b"\0name");
        inputs.update(name);
    }
    let trust = trust?;
    if errors.len() > before {
        return None;
    }
    match TlsClient::new(trust, client_auth, protocol, inputs.finalize().into()) {
        Ok(client) => Some(client),
        Err(e) => {
            let files = match (&t.client_cert, &t.client_key) {
                (Some(c), Some(k)) => format!("{} and {}: ", k.as_str(), c.as_str()),
                _ => String::new(),
            };
            errors.push(ConfigError::new(
                format!("{path}.client_key"),
                format!("{files}the key and certificate cannot be used together ({e})"),
            ));
            None
        }
    }
}

/// The name an `https://` target's connections verify: the upstream's `tls.server_name`, else
/// the host of the target's URL (`host` as written, brackets and all for IPv6).
pub(super) fn server_name(
    tls: Option<&UpstreamTlsConfig>,
    host: &str,
) -> Option<ServerName<'static>> {
    let name = tls
        .and_then(|t| t.server_name.as_deref())
        .unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']'));
    ServerName::try_from(name.to_owned()).ok()
}

/// The CA certificates of a PEM file as a root store, with their DER (for the fingerprint).
fn ca_roots(file: &str) -> Result<(RootCertStore, Vec<Vec<u8>>), String> {
    let certs = crate::tls::load_certs(file)?;
    let der = certs.iter().map(|c| c.to_vec()).collect();
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{file}: not a usable CA certificate ({e})"))?;
    }
    Ok((roots, der))
}

//! A listener's `tls:`: certificates (read and checked now, so a bad file is a config error
//! and the running certificates keep serving), versions, client verification, HSTS. Session
//! ticket keys are claimed from the registry, so a reload does not invalidate the tickets
//! clients hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::ConfigError;
use crate::config::model::ListenerTlsConfig;
use crate::registry::Claims;
use crate::runtime::TlsListener;
use crate::server::tls::{SniResolver, cert_names};
use crate::state::State;

/// Session-ticket keys of one listener, kept across reloads (they rotate themselves).
pub struct TicketKeys(pub Arc<dyn ProducesTickets>);
/// TLS 1.2 session-id resumption cache of one listener, kept across reloads.
pub struct SessionCache(pub Arc<dyn StoresServerSessions>);

pub(super) fn compile_tls(
    t: &ListenerTlsConfig,
    addr: SocketAddr,
    path: &str,
    state: &State,
    claims: &mut Claims,
    errors: &mut Vec<ConfigError>,
) -> Option<TlsListener> {
    let before = errors.len();
    let provider = crate::tls::provider();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if t.certificates.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.certificates"),
            "needs at least one { cert, key } pair",
        ));
    }
    let mut resolver: Option<SniResolver> = None;
    for (i, c) in t.certificates.iter().enumerate() {
        let cpath = format!("{path}.certificates[{i}]");
        let certs = match crate::tls::load_certs(&c.cert.0) {
            Ok(certs) => certs,
            Err(e) => {
                errors.push(ConfigError::new(format!("{cpath}.cert"), e));
                continue;
            }
        };
        let key = match crate::tls::load_key(&c.key.0) {
            Ok(k) => k,
            Err(e) => {
                errors.push(ConfigError::new(format!("{cpath}.key"), e));
                continue;
            }
        };
        let names = match cert_names(&certs[0]) {
            Ok(n) => n,
            Err(e) => {
                errors.push(ConfigError::new(
                    format!("{cpath}.cert"),
                    format!("{}: {e}", c.cert.0),
                ));
                continue;
            }
        };
        if names.not_after < now {
            errors.push(ConfigError::new(
                format!("{cpath}.cert"),
                format!(
                    "{}: the certificate expired ({})",
                    c.cert.0,
                    date(names.not_after)
                ),
            ));
            continue;
        }
        if names.not_before > now {
            errors.push(ConfigError::new(
                format!("{cpath}.cert"),
                format!(
                    "{}: the certificate is not valid yet (from {})",
                    c.cert.0,
                    date(names.not_before)
                ),
            ));
            continue;
        }
        let signer = match provider.key_provider.load_private_key(key) {
            Ok(s) => s,
            Err(e) => {
                errors.push(ConfigError::new(
                    format!("{cpath}.key"),
                    format!("{}: unusable private key ({e})", c.key.0),
                ));
                continue;
            }
        };
        let ck = CertifiedKey::new(certs, signer);
        if let Err(e) = ck.keys_match() {
            errors.push(ConfigError::new(
                cpath.clone(),
                format!(
                    "the key in {} does not belong to the certificate in {} ({e})",
                    c.key.0, c.cert.0
                ),
            ));
            continue;
        }
        let ck = Arc::new(ck);
        let r = resolver.get_or_insert_with(|| SniResolver::new(ck.clone()));
        let mut served = names.dns.clone();
        if served.is_empty() {
            served.extend(names.common_name.clone());
        }
        for n in &served {
            r.add(n, &ck);
        }
    }

    let versions: &[&'static rustls::SupportedProtocolVersion] =
        match t.min_version.as_deref().unwrap_or("1.2") {
            "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
            "1.3" => &[&rustls::version::TLS13],
            other => {
                errors.push(ConfigError::new(
                    format!("{path}.min_version"),
                    format!("must be \"1.2\" or \"1.3\", got {other:?}"),
                ));
                &[]
            }
        };

    let verifier = match &t.client_auth {
        None => None,
        Some(ca) => match crate::tls::load_roots(&ca.ca.0) {
            Ok(roots) => {
                let b =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let b = if ca.required.unwrap_or(true) {
                    b
                } else {
                    b.allow_unauthenticated()
                };
                match b.build() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            format!("{path}.client_auth.ca"),
                            format!("{}: {e}", ca.ca.0),
                        ));
                        None
                    }
                }
            }
            Err(e) => {
                errors.push(ConfigError::new(format!("{path}.client_auth.ca"), e));
                None
            }
        },
    };
    let forward_identity = match t
        .client_auth
        .as_ref()
        .and_then(|c| c.forward_header.as_ref())
    {
        None => None,
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(ConfigError::new(
                    format!("{path}.client_auth.forward_header"),
                    format!("invalid header name {h:?}"),
                ));
                None
            }
        },
    };
    let hsts = t.hsts.as_ref().map(|h| {
        let mut v = format!("max-age={}", h.max_age.unwrap_or(31_536_000));
        if h.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if h.preload {
            v.push_str("; preload");
        }
        http::HeaderValue::from_str(&v).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    });
    if errors.len() > before {
        return None;
    }
    let resolver = resolver?;

    let builder = match rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
    {
        Ok(b) => b,
        Err(e) => {
            errors.push(ConfigError::new(path.to_owned(), e.to_string()));
            return None;
        }
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = addr.to_string();
    let tickets = claims.claim(
        &state.registry,
        &name,
        |_: &TicketKeys| true,
        || {
            TicketKeys(match rustls::crypto::aws_lc_rs::Ticketer::new() {
                Ok(t) => t,
                // No randomness for ticket keys: resumption by session id only.
                Err(_) => Arc::new(NoTickets),
            })
        },
    );
    config.ticketer = tickets.0.clone();
    let sessions = claims.claim(
        &state.registry,
        &name,
        |_: &SessionCache| true,
        || SessionCache(rustls::server::ServerSessionMemoryCache::new(4096)),
    );
    config.session_storage = sessions.0.clone();
    Some(TlsListener {
        config: Arc::new(config),
        forward_identity,
        hsts,
    })
}

#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// `2026-11-30` for a Unix time.
fn date(secs: i64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(1_796_000_000), "2026-11-30");
        assert_eq!(super::date(951_782_400), "2000-02-29");
    }
}

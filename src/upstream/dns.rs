//! Targets given by host name: every address the name resolves to becomes a target of its own
//! (balanced, health-checked and pooled separately). Names are resolved off the runtime (the
//! system resolver blocks), at start and then every `dns_refresh` of the upstream; when an
//! upstream's addresses change, the control plane recompiles the running config, so targets
//! come and go like any reload and the ones that stay keep their pools and health.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

/// Resolved addresses by `host:port`.
#[derive(Default)]
pub struct DnsCache {
    entries: Mutex<HashMap<String, BTreeSet<SocketAddr>>>,
}

impl DnsCache {
    /// The addresses `host:port` resolved to last time, if it has been resolved.
    pub fn get(&self, authority: &str) -> Option<Vec<SocketAddr>> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(authority).map(|s| s.iter().copied().collect()))
    }

    /// Resolves every name (blocking: call it on the blocking pool). Returns true if any
    /// name's set of addresses changed. A name that fails to resolve keeps its last addresses,
    /// so a resolver hiccup does not take targets away.
    pub fn refresh(&self, authorities: &[String]) -> bool {
        let mut changed = false;
        for a in authorities {
            let resolved: BTreeSet<SocketAddr> = match std::net::ToSocketAddrs::to_socket_addrs(
                a.as_str(),
            ) {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    tracing::warn!(target = %a, error = %e, "cannot resolve target; keeping its last addresses");
                    continue;
                }
            };
            if resolved.is_empty() {
                continue;
            }
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.get(a) != Some(&resolved) {
                tracing::info!(target = %a, addresses = ?resolved, "target resolved");
                entries.insert(a.clone(), resolved);
                changed = true;
            }
        }
        changed
    }
}

/// True for `host:port` whose host is a name, not an IP address.
pub fn is_name(authority: &http::uri::Authority) -> bool {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_localhost_and_reports_changes_once() {
        let c = DnsCache::default();
        let names = vec!["localhost:8080".to_owned()];
        assert!(c.refresh(&names));
        assert!(!c.refresh(&names), "same addresses: no change");
        let addrs = c.get("localhost:8080").unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.ip().is_loopback() && a.port() == 8080)
        );
        assert!(is_name(&"localhost:1".parse().unwrap()));
        assert!(!is_name(&"127.0.0.1:1".parse().unwrap()));
        assert!(!is_name(&"[::1]:1".parse().unwrap()));
    }

    /// A resolver failure (here a name under `.invalid`, which never resolves) keeps the
    /// addresses the name had: a DNS outage does not take a working upstream's targets away.
    #[test]
    fn a_failed_resolution_keeps_the_last_addresses() {
        let c = DnsCache::default();
        let name = "users.invalid:8080".to_owned();
        let before: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        c.entries
            .lock()
            .unwrap()
            .insert(name.clone(), BTreeSet::from([before]));
        assert!(!c.refresh(std::slice::from_ref(&name)), "nothing changed");
        assert_eq!(c.get(&name), Some(vec![before]));
        // A name that never resolved has no addresses (it is resolved when connecting).
        assert!(!c.refresh(&["never.invalid:80".to_owned()]));
        assert_eq!(c.get("never.invalid:80"), None);
    }
}

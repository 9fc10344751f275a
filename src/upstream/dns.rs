//! Targets given by host name: every address the name resolves to becomes a target of its own
//! (balanced, health-checked and pooled separately). Names are resolved off the runtime (the
//! system resolver blocks), at start and then every `dns_refresh` of the upstream; when an
//! upstream's addresses change, the control plane recompiles the running config, so targets
//! come and go like any reload and the ones that stay keep their pools and health.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

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

type Answer = Result<Arc<[SocketAddr]>, Arc<str>>;
/// A lookup's answer, and when it came (`None` while it runs).
type Lookup = watch::Receiver<Option<(Instant, Answer)>>;

/// Lookups of names not resolved yet, by `host:port` (from the config: targets, JWKS and
/// `forward_auth` URLs): running, or answered less than [`LOOKUP_KEPT`] ago.
fn lookups() -> &'static Mutex<HashMap<String, Lookup>> {
    static LOOKUPS: OnceLock<Mutex<HashMap<String, Lookup>>> = OnceLock::new();
    LOOKUPS.get_or_init(Default::default)
}

/// How long a lookup's answer (addresses or failure) serves later connects, from when it came.
const LOOKUP_KEPT: Duration = Duration::from_secs(1);

/// The names whose lookups started, in order (for the tests).
#[cfg(test)]
static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Resolves `host:port` when connecting to a target whose name has not resolved yet (at start
/// or since). The system resolver blocks, and a blocked lookup cannot be cancelled: one lookup
/// per name runs at a time on the blocking pool, every connect to that name waits for it
/// (each within its own connect timeout), and its answer, addresses or failure, serves the
/// connects of the next second too. A resolver that hangs then holds one blocking thread per
/// name, not one per request.
pub async fn lookup(authority: &str) -> std::io::Result<Arc<[SocketAddr]>> {
    let mut pending = {
        let mut all = lookups().lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, l| match &*l.borrow() {
            Some((at, _)) => at.elapsed() < LOOKUP_KEPT,
            // Running, unless its task was dropped unfinished (its runtime shut down).
            None => l.has_changed().is_ok(),
        });
        all.entry(authority.to_owned())
            .or_insert_with(|| start_lookup(authority.to_owned()))
            .clone()
    };
    let answer = match pending.wait_for(Option::is_some).await {
        Ok(got) => got.as_ref().map(|(_, a)| a.clone()),
        Err(_) => None,
    };
    match answer {
        Some(Ok(addrs)) => Ok(addrs),
        Some(Err(e)) => Err(std::io::Error::other(format!(
            "cannot resolve {authority}: {e}"
        ))),
        None => Err(std::io::Error::other(format!(
            "cannot resolve {authority}: the lookup was abandoned"
        ))),
    }
}

fn start_lookup(authority: String) -> Lookup {
    #[cfg(test)]
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(authority.clone());
    let (answer, lookup) = watch::channel(None);
    // Runs to its end even if every connect waiting for it gives up first.
    tokio::task::spawn_blocking(move || {
        let got = match std::net::ToSocketAddrs::to_socket_addrs(authority.as_str()) {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Err(Arc::from("no address"))
                } else {
                    Ok(Arc::from(addrs))
                }
            }
            Err(e) => Err(Arc::from(e.to_string())),
        };
        answer.send_replace(Some((Instant::now(), got)));
    });
    lookup
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

    /// Connects to a name that does not resolve share one lookup: fifty at once start one,
    /// and the failure answers the connects of the next second without another (however long
    /// the lookup took: the second runs from its answer); after that a new lookup runs. A name
    /// that resolves gives its addresses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_of_a_name_share_one() {
        let name = "shared-lookup.invalid:80";
        let started = || {
            STARTED
                .lock()
                .unwrap()
                .iter()
                .filter(|n| *n == name)
                .count()
        };
        let waits: Vec<_> = (0..50)
            .map(|_| tokio::spawn(async move { lookup(name).await }))
            .collect();
        for w in waits {
            let e = w
                .await
                .unwrap()
                .expect_err("an .invalid name does not resolve");
            assert!(
                e.to_string()
                    .contains("cannot resolve shared-lookup.invalid:80"),
                "{e}"
            );
        }
        assert!(lookup(name).await.is_err());
        assert_eq!(started(), 1, "one lookup for 51 connects");
        tokio::time::sleep(LOOKUP_KEPT + Duration::from_millis(100)).await;
        assert!(lookup(name).await.is_err());
        assert_eq!(started(), 2, "a new lookup after a second");
        let local = lookup("localhost:8080").await.expect("localhost resolves");
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080)
        );
    }
}

//! `ip_rules` policy (phase access): admits or refuses a request by the client's address,
//! `cx.client_ip` (the peer, or the nearest untrusted `X-Forwarded-For` address when the peer
//! is one of `server.trusted_proxies`). Deny wins; a non-empty allow list admits only its
//! matches. A refusal is a 403 [`GatewayError::Forbidden`]. The lists are parsed into
//! [`Cidr`]s at compile time; a request only compares integers.

use std::sync::Arc;

use http::Request;

use super::{Flow, Phase, Policy, PolicyCx, RequestCtx, Step};
use crate::body::Body;
use crate::cidr::Cidr;
use crate::config::ConfigError;
use crate::config::model::{IpRulesConfig, PolicySetConfig};
use crate::error::GatewayError;

/// The `ip_rules` key of a policy set, for [`super::KINDS`].
pub fn compile(
    set: &PolicySetConfig,
    cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Policy>> {
    let cfg = set.ip_rules.as_ref()?;
    let path = format!("{path}.ip_rules");
    let p = IpRules::compile(cfg, &path, errors)?;
    if p.allow.is_empty() && p.deny.is_empty() {
        if let Ok(mut w) = cx.warnings.lock() {
            w.push(ConfigError::new(
                path,
                "has neither `allow` nor `deny`: it lets every client through",
            ));
        }
        return None;
    }
    Some(Arc::new(p))
}

#[derive(Debug)]
pub struct IpRules {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpRules {
    /// `None` when an address or block does not parse (each one is reported with its path,
    /// e.g. `routes[0].ip_rules.allow[1]`).
    pub fn compile(
        cfg: &IpRulesConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<IpRules> {
        let before = errors.len();
        let mut list = |items: &[String], key: &str| -> Vec<Cidr> {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    Cidr::parse(s)
                        .map_err(|e| errors.push(ConfigError::new(format!("{path}.{key}[{i}]"), e)))
                        .ok()
                })
                .collect()
        };
        let allow = list(&cfg.allow, "allow");
        let deny = list(&cfg.deny, "deny");
        (errors.len() == before).then_some(IpRules { allow, deny })
    }

    /// Whether `ip` may pass: not denied, and allowed when there is an allow list.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

impl Policy for IpRules {
    fn kind(&self) -> &'static str {
        "ip_rules"
    }

    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn on_request<'a>(
        &'a self,
        _req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow> {
        Step::Done(if self.admits(cx.client_ip) {
            Ok(Flow::Continue)
        } else {
            Err(GatewayError::Forbidden(
                "client address refused by ip_rules",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> Result<IpRules, Vec<ConfigError>> {
        let cfg = IpRulesConfig {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut errors = Vec::new();
        IpRules::compile(&cfg, "routes[0].ip_rules", &mut errors).ok_or(errors)
    }

    #[test]
    fn deny_wins_and_allow_lists_admit_only_matches() {
        let r = rules(&["10.0.0.0/8", "2001:db8::/32"], &["10.0.0.66"]).unwrap();
        let ok = |s: &str| r.admits(s.parse().unwrap());
        assert!(ok("10.1.2.3"));
        assert!(
            ok("::ffff:10.1.2.3"),
            "IPv4-mapped addresses compare as IPv4"
        );
        assert!(ok("2001:db8::1"));
        assert!(!ok("10.0.0.66"), "deny wins over allow");
        assert!(!ok("192.168.0.1"), "not in the allow list");
        let deny_only = rules(&[], &["192.168.0.0/16"]).unwrap();
        assert!(deny_only.admits("8.8.8.8".parse().unwrap()));
        assert!(!deny_only.admits("192.168.4.4".parse().unwrap()));
    }

    #[test]
    fn bad_blocks_are_config_errors_with_their_path() {
        let errors = rules(&["10.0.0.0/8", "10.0.0.0/33"], &["nope"]).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["routes[0].ip_rules.allow[1]", "routes[0].ip_rules.deny[0]"]
        );
    }
}

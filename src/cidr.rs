//! Address blocks (`10.0.0.0/8`, `2001:db8::/32`, one address): parsed once when a config
//! compiles, compared per request as integers. A low module: `server.trusted_proxies` (through
//! the runtime) and the `ip_rules` policy both use it, and it imports nothing of the crate.

/// An address block, `10.0.0.0/8` or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 block `10.0.0.0/8`: clients are compared in
        // their canonical form.
        match net.to_canonical() {
            v4 @ std::net::IpAddr::V4(_) if net.is_ipv6() && bits >= 96 => Ok(Cidr {
                net: v4,
                bits: bits - 96,
            }),
            _ => Ok(Cidr { net, bits }),
        }
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

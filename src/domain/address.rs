//! Which destinations deliveries may reach: the special ranges (private, loopback,
//! link-local and cloud metadata, documentation, multicast, …) are refused unless allowed.
//! A pure decision on an address; the delivery client applies it to every resolved address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::Host;

/// A destination address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{address} is a {range} address; deliveries there are refused (allow with HOOKRELAY_ALLOW_PRIVATE_TARGETS=true or HOOKRELAY_ALLOWED_TARGET_CIDRS)"
)]
pub struct BlockedAddress {
    /// The refused address.
    pub address: IpAddr,
    /// Which special range it is in.
    pub range: &'static str,
}

/// The special range an IPv4 address belongs to, if any.
fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "CGNAT (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local or cloud-metadata (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol (192.0.0.0/24)",
        (192, 0, 2) => "documentation (192.0.2.0/24)",
        (192, 88, 99) => "6to4 relay (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (198, 51, 100) => "documentation (198.51.100.0/24)",
        (203, 0, 113) => "documentation (203.0.113.0/24)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

/// The special range an IPv6 address belongs to, if any.
fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (::/96)",
        // RFC 2765 (SIIT): an IPv4 address a translator reaches on our behalf.
        [0, 0, 0, 0, 0xffff, 0, _, _] => "IPv4-translated (::ffff:0:0/96)",
        // 64:ff9b::/96 (RFC 6052) and the local-use 64:ff9b:1::/48 (RFC 8215).
        [0x64, 0xff9b, ..] => "NAT64 (64:ff9b::/32)",
        [0x100, 0, 0, 0, ..] => "discard (100::/64)",
        [0x2001, 0x0db8, ..] => "documentation (2001:db8::/32)",
        [0x2001, s, ..] if s < 0x200 => "IETF protocol (2001::/23)",
        [0x2002, ..] => "6to4 (2002::/16)",
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique-local or cloud-metadata (fc00::/7)",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [s, ..] if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [s, ..] if s & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ => return None,
    })
}

/// Which destinations are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Allow every address (`HOOKRELAY_ALLOW_PRIVATE_TARGETS=true`).
    pub allow_private: bool,
    /// Allow these ranges even though they are special (`HOOKRELAY_ALLOWED_TARGET_CIDRS`).
    pub allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Checks one address.
    pub fn check(&self, address: IpAddr) -> Result<(), BlockedAddress> {
        let address = address.to_canonical();
        if self.allow_private || self.allowed.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        let range = match address {
            IpAddr::V4(v4) => special_v4(v4),
            IpAddr::V6(v6) => special_v6(v6),
        };
        match range {
            Some(range) => Err(BlockedAddress { address, range }),
            None => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), BlockedAddress> {
        match url.host() {
            Some(Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            // `localhost` resolves to loopback; refuse it without asking the resolver.
            Some(Host::Domain(name))
                if name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost") =>
            {
                self.check(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(address: &str) -> bool {
        let ip: IpAddr = address.parse().unwrap_or_else(|e| panic!("{address}: {e}"));
        AddressPolicy::default().check(ip).is_err()
    }

    #[test]
    fn every_special_range_is_refused_and_public_addresses_pass() {
        let blocked = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:0:8.8.8.8",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "2002:7f00:1::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ];
        for address in blocked {
            assert!(refused(address), "{address} should be refused");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
        ];
        for address in public {
            assert!(!refused(address), "{address} should pass");
        }
    }

    #[test]
    fn allowances_open_exactly_what_they_name() {
        let policy = AddressPolicy {
            allow_private: false,
            allowed: vec!["127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))],
        };
        assert!(
            policy
                .check("127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")))
                .is_ok()
        );
        assert!(
            policy
                .check("::ffff:127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")))
                .is_ok()
        );
        assert!(
            policy
                .check("10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")))
                .is_err()
        );
        let everything = AddressPolicy {
            allow_private: true,
            allowed: vec![],
        };
        assert!(
            everything
                .check("169.254.169.254".parse().unwrap_or_else(|e| panic!("{e}")))
                .is_ok()
        );
    }

    #[test]
    fn ip_literal_urls_in_every_spelling_are_refused() {
        let policy = AddressPolicy::default();
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:0:127.0.0.1]/",
            "http://[::ffff:0:a00:1]:8080/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://0/",
        ] {
            let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(
                policy.check_url(&parsed).is_err(),
                "{url} should be refused"
            );
        }
        let public = url::Url::parse("https://hooks.zapier.com/hooks/catch/1/a/")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.check_url(&public).is_ok());
    }
}

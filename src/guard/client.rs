//! Who is calling: the peer address, or the client behind a trusted reverse proxy.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::ForwardedHeader;

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// Who is calling, as far as can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The client's address.
    Address(IpAddr),
    /// Behind trusted proxies, but the entry a proxy wrote for the client is not an address
    /// (`unknown`, an obfuscated name, garbage); `via` is the proxy that passed it on. Nothing
    /// to the left of such an entry can be believed: the client may have written it.
    Unidentified {
        /// The nearest trusted proxy that forwarded the request.
        via: IpAddr,
    },
}

impl Client {
    /// The address, when known.
    pub fn address(self) -> Option<IpAddr> {
        match self {
            Self::Address(ip) => Some(ip),
            Self::Unidentified { .. } => None,
        }
    }
}

/// One entry a proxy wrote: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, optionally quoted; `None` for anything else.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The entries of the proxies' header, nearest proxy last, each parsed or `None`. Only that
/// one header is read: a proxy passes other forwarding headers through unchanged, so they are
/// the client's words.
fn forwarded_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let mut chain = Vec::new();
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else {
            chain.push(None);
            continue;
        };
        for element in value.split(',') {
            chain.push(match header {
                ForwardedHeader::XForwardedFor => parse_entry(element),
                // RFC 7239: `for=…;proto=…;by=…`, one element per proxy.
                ForwardedHeader::Forwarded => element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| parse_entry(value)),
            });
        }
    }
    chain
}

/// The client. Forwarding headers count only when the peer is a trusted proxy; then the chain
/// is walked from the right over trusted proxies, and the first entry that is not a trusted
/// proxy is the client, or, if it does not parse, the client is [`Client::Unidentified`]. So
/// a client cannot choose its own address by writing the header itself, nor by making a
/// proxy's entry unreadable.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    header: ForwardedHeader,
) -> Client {
    let mut nearest = peer.to_canonical();
    if !trusted(nearest, proxies) {
        return Client::Address(nearest);
    }
    for entry in forwarded_chain(headers, header).into_iter().rev() {
        match entry.map(|ip| ip.to_canonical()) {
            Some(ip) if trusted(ip, proxies) => nearest = ip,
            Some(ip) => return Client::Address(ip),
            None => return Client::Unidentified { via: nearest },
        }
    }
    Client::Address(nearest)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn known(s: &str) -> Client {
        Client::Address(ip(s))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        map
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let forged = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        assert_eq!(
            client_ip(
                ip("203.0.113.9"),
                &forged,
                &[],
                ForwardedHeader::XForwardedFor
            ),
            known("203.0.113.9")
        );
        let proxies: Vec<IpNet> = vec!["10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(
            client_ip(
                ip("203.0.113.9"),
                &forged,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            known("203.0.113.9")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_nearest_untrusted_address_is_the_client() {
        let proxies: Vec<IpNet> = vec!["10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))];
        // The client prepended a forged address; the proxy appended the real one.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.9.0.2")]);
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &chain,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            known("198.51.100.7")
        );
        let forwarded = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.9.0.3",
        )]);
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &forwarded,
                &proxies,
                ForwardedHeader::Forwarded
            ),
            known("2001:db8::7")
        );
        let with_port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &with_port,
                &proxies,
                ForwardedHeader::Forwarded
            ),
            known("192.0.2.60")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &HeaderMap::new(),
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            known("10.9.0.1")
        );
        // A client's own Forwarded header, passed through by an X-Forwarded-For proxy, is ignored.
        let smuggled = headers(&[
            ("forwarded", "for=10.1.2.3"),
            ("x-forwarded-for", "203.0.113.50"),
        ]);
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &smuggled,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            known("203.0.113.50")
        );
        // IPv4-mapped peers count as their IPv4 address.
        assert_eq!(
            client_ip(
                ip("::ffff:10.9.0.1"),
                &chain,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            known("198.51.100.7")
        );
    }

    #[test]
    fn every_spelling_of_a_proxy_entry_is_read_and_an_unreadable_one_stops_the_walk() {
        let proxies: Vec<IpNet> = vec!["10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))];
        let peer = ip("10.9.0.1");
        let unidentified = Client::Unidentified { via: peer };
        // The client wrote `1.1.1.1`; the proxy's own entry follows it.
        let xff = [
            ("1.1.1.1, 198.51.100.1", known("198.51.100.1")),
            ("1.1.1.1, 198.51.100.1:4711", known("198.51.100.1")),
            ("1.1.1.1, 2001:db8::1", known("2001:db8::1")),
            ("1.1.1.1, [2001:db8::1]", known("2001:db8::1")),
            ("1.1.1.1, [2001:db8::1]:4711", known("2001:db8::1")),
            ("1.1.1.1, \"198.51.100.1\"", known("198.51.100.1")),
            ("1.1.1.1, ::ffff:198.51.100.1", known("198.51.100.1")),
            ("1.1.1.1, unknown", unidentified),
            ("1.1.1.1, _hidden", unidentified),
            ("1.1.1.1, 198.51.100.1:notaport", unidentified),
            ("1.1.1.1, ", unidentified),
            // Through two trusted proxies: the walk passes the second and stops at the first.
            (
                "1.1.1.1, unknown, 10.9.0.7",
                Client::Unidentified {
                    via: ip("10.9.0.7"),
                },
            ),
            ("1.1.1.1, 198.51.100.1, 10.9.0.7", known("198.51.100.1")),
        ];
        for (value, expected) in xff {
            let got = client_ip(
                peer,
                &headers(&[("x-forwarded-for", value)]),
                &proxies,
                ForwardedHeader::XForwardedFor,
            );
            assert_eq!(got, expected, "X-Forwarded-For: {value}");
        }
        let forwarded = [
            ("for=1.1.1.1, for=198.51.100.1", known("198.51.100.1")),
            (
                "for=1.1.1.1, for=\"198.51.100.1:4711\"",
                known("198.51.100.1"),
            ),
            (
                "for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https",
                known("2001:db8::1"),
            ),
            (
                "for=1.1.1.1, proto=https;For=198.51.100.1",
                known("198.51.100.1"),
            ),
            ("for=1.1.1.1, for=unknown", unidentified),
            ("for=1.1.1.1, for=_gazonk", unidentified),
            ("for=1.1.1.1, proto=https", unidentified),
        ];
        for (value, expected) in forwarded {
            let got = client_ip(
                peer,
                &headers(&[("forwarded", value)]),
                &proxies,
                ForwardedHeader::Forwarded,
            );
            assert_eq!(got, expected, "Forwarded: {value}");
        }
    }
}

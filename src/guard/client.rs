//! Who is calling: the peer address, or the client behind a trusted reverse proxy.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::ForwardedHeader;

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// Addresses listed by the proxies' header, nearest proxy last. Only that one header is read:
/// a proxy passes other forwarding headers through unchanged, so they are the client's words.
fn forwarded_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<IpAddr> {
    let mut chain = Vec::new();
    if header == ForwardedHeader::XForwardedFor {
        for value in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            chain.extend(
                value
                    .split(',')
                    .filter_map(|part| part.trim().parse::<IpAddr>().ok()),
            );
        }
        return chain;
    }
    for value in headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((name, raw)) = pair.trim().split_once('=') else {
                    continue;
                };
                if !name.trim().eq_ignore_ascii_case("for") {
                    continue;
                }
                let raw = raw.trim().trim_matches('"');
                // `[2001:db8::1]:4711`, `192.0.2.1:4711`, `192.0.2.1`, or an obfuscated name (ignored).
                let host = match raw.strip_prefix('[') {
                    Some(rest) => rest.split(']').next().unwrap_or(""),
                    None => raw
                        .rsplit_once(':')
                        .filter(|(h, _)| !h.contains(':'))
                        .map_or(raw, |(h, _)| h),
                };
                if let Ok(ip) = host.parse() {
                    chain.push(ip);
                }
            }
        }
    }
    chain
}

/// The client's address. Forwarding headers count only when the peer is a trusted proxy, and
/// then the client is the nearest address in the chain that is not itself a trusted proxy;
/// so a client cannot choose its own address by sending the header itself.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer, proxies) {
        return peer;
    }
    forwarded_chain(headers, header)
        .into_iter()
        .rev()
        .map(|ip| ip.to_canonical())
        .find(|ip| !trusted(*ip, proxies))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
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
            ip("203.0.113.9")
        );
        let proxies: Vec<IpNet> = vec!["10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(
            client_ip(
                ip("203.0.113.9"),
                &forged,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            ip("203.0.113.9")
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
            ip("198.51.100.7")
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
            ip("2001:db8::7")
        );
        let with_port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &with_port,
                &proxies,
                ForwardedHeader::Forwarded
            ),
            ip("192.0.2.60")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(
                ip("10.9.0.1"),
                &HeaderMap::new(),
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            ip("10.9.0.1")
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
            ip("203.0.113.50")
        );
        // IPv4-mapped peers count as their IPv4 address.
        assert_eq!(
            client_ip(
                ip("::ffff:10.9.0.1"),
                &chain,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            ip("198.51.100.7")
        );
    }
}

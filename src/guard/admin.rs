//! Who may manage hookrelay: the admin token, or, without one, clients on this host. Shared by
//! the management API (bearer token) and the dashboard (a session cookie after logging in).

use std::net::SocketAddr;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;

/// Headers a proxy sets: their presence means the request did not come from this host.
pub const PROXY_HEADERS: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "via",
];

/// Why management was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// No admin token is configured and the listener or proxies make every client remote.
    #[error(
        "management needs HOOKRELAY_ADMIN_TOKEN when HOOKRELAY_TRUSTED_PROXIES is set or the listener is not on loopback"
    )]
    ClosedWithoutToken,
    /// No admin token is configured and this client is not on this host.
    #[error("management answers only loopback clients while HOOKRELAY_ADMIN_TOKEN is unset")]
    NotLoopback,
    /// No admin token is configured and the request names another host: a page elsewhere
    /// whose name was pointed at 127.0.0.1 (DNS rebinding) is not a client on this host.
    #[error(
        "management answers only requests for localhost or a loopback address while HOOKRELAY_ADMIN_TOKEN is unset"
    )]
    ForeignHost,
}

/// Whether a `Host` value names this host: `localhost` or a loopback address, any port.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(name, _)| name),
        None => host
            .rsplit_once(':')
            .filter(|(name, port)| !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether management may answer at all without an admin token: only on a loopback listener
/// with no trusted proxies, where a loopback peer is someone on this host.
pub fn open_without_token(config: &Config) -> bool {
    config.server.listen.ip().to_canonical().is_loopback()
        && config.ingest.trusted_proxies.is_empty()
}

/// Without an admin token: whether this request comes from this host. Behind a proxy on the same
/// host every request comes from loopback, so a proxy header refuses it.
pub fn local_without_token(
    config: &Config,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), AdminRefusal> {
    if !open_without_token(config) {
        return Err(AdminRefusal::ClosedWithoutToken);
    }
    if !peer.ip().to_canonical().is_loopback()
        || PROXY_HEADERS.iter().any(|name| headers.contains_key(*name))
    {
        return Err(AdminRefusal::NotLoopback);
    }
    let host = headers
        .get(axum::http::header::HOST)
        .map(|value| value.to_str().unwrap_or(""));
    match host {
        Some(host) if !is_loopback_host(host) => Err(AdminRefusal::ForeignHost),
        _ => Ok(()),
    }
}

/// Whether `presented` is the admin token, in constant time whatever the lengths (digests
/// are compared, not the tokens).
pub fn token_matches(expected: &str, presented: &str) -> bool {
    let expected = Sha256::digest(expected.as_bytes());
    let given = Sha256::digest(presented.trim().as_bytes());
    bool::from(expected.ct_eq(&given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_this_host_are_loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1",
            "127.0.0.1:8000",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8000",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "10.0.0.5:8000",
            "[2001:db8::1]:80",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn only_the_exact_token_matches() {
        assert!(token_matches("s3cret-token", "s3cret-token"));
        assert!(
            token_matches("s3cret-token", " s3cret-token "),
            "surrounding space is not part of it"
        );
        for wrong in ["", "s3cret-toke", "s3cret-token2", "S3CRET-TOKEN"] {
            assert!(!token_matches("s3cret-token", wrong), "{wrong:?}");
        }
    }
}

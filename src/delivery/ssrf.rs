//! Outbound address policy: deliveries never reach loopback, private, link-local, CGNAT,
//! multicast, documentation, unspecified or cloud-metadata addresses unless allowed.
//!
//! Host names are checked on the addresses they resolve to, at connect time (the HTTP client
//! connects only to what [`GuardedResolver`] returns, so a DNS answer cannot change between
//! check and connect). IP-literal URLs never reach a resolver, so [`AddressPolicy::check_url`]
//! checks them before sending. IPv4-mapped IPv6 addresses are checked as the IPv4 they carry.

use std::{net::SocketAddr, sync::Arc};

use crate::domain::AddressPolicy;

/// A DNS resolver for the delivery client that refuses a name if any address it resolves to
/// is refused (a mixed answer is a classic DNS-rebinding trick).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                policy.check(address.ip())?;
            }
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BlockedAddress;

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused_at_resolution() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver::new(Arc::new(AddressPolicy::default()));
        let name: reqwest::dns::Name = "localhost".parse().unwrap_or_else(|_| panic!("name"));
        let refused = resolver
            .resolve(name)
            .await
            .err()
            .unwrap_or_else(|| panic!("localhost resolved"));
        assert!(
            refused.downcast_ref::<BlockedAddress>().is_some(),
            "{refused}"
        );
        let open = GuardedResolver::new(Arc::new(AddressPolicy {
            allow_private: true,
            allowed: vec![],
        }));
        let name: reqwest::dns::Name = "localhost".parse().unwrap_or_else(|_| panic!("name"));
        assert!(open.resolve(name).await.is_ok());
    }
}

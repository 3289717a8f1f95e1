//! Destination URLs.

use std::fmt;

use url::Url;

/// A destination URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("not a valid URL: {0}")]
    Malformed(String),
    /// Only http and https can receive webhooks.
    #[error("the scheme must be http or https, not `{0}`")]
    Scheme(String),
    /// `https://user:pass@host/`: credentials would leak into logs and proxies.
    #[error("the URL must not contain a user name or password; use endpoint headers instead")]
    Credentials,
    /// No host to connect to.
    #[error("the URL has no host")]
    NoHost,
}

/// An absolute http(s) URL without embedded credentials.
///
/// A catch-hook URL is itself a credential (anyone who knows it can post to the Zap), so its
/// `Display` form shows only scheme, host and port; [`EndpointUrl::as_str`] gives the full URL.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointUrl(Url);

impl EndpointUrl {
    /// Parses and checks a destination URL.
    pub fn parse(value: &str) -> Result<Self, UrlError> {
        let url = Url::parse(value.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(UrlError::Scheme(other.to_owned())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost);
        }
        Ok(Self(url))
    }

    /// The full URL, for sending.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// Whether the URL uses TLS.
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// `scheme://host:port` only: safe to log and print.
    pub fn redacted(&self) -> String {
        redacted(&self.0)
    }

    /// Where a redirect from this URL points, told without its path or query (a redirect is
    /// often to the catch-hook URL itself): what an operator needs to fix the endpoint, such
    /// as "the same URL over https" or "with a trailing slash".
    pub fn describe_redirect(&self, location: &str) -> String {
        let Ok(target) = self.0.join(location.trim()) else {
            return "an unreadable Location".to_owned();
        };
        let same_origin = target.host_str() == self.0.host_str()
            && target.port_or_known_default() == self.0.port_or_known_default();
        let same_scheme = target.scheme() == self.0.scheme();
        let same_rest = target.path() == self.0.path() && target.query() == self.0.query();
        let slash_only = target.query() == self.0.query()
            && target.path().trim_end_matches('/') == self.0.path().trim_end_matches('/');
        if same_rest && !same_scheme && target.host_str() == self.0.host_str() {
            let scheme = target.scheme();
            match target.port() {
                port if port == self.0.port() => format!("the same URL over {scheme}"),
                Some(port) => format!("the same path over {scheme} on port {port}"),
                None => format!("the same path over {scheme} on its default port"),
            }
        } else if same_origin && same_scheme && same_rest {
            "the same URL".to_owned()
        } else if same_origin && same_scheme && slash_only {
            if target.path().ends_with('/') {
                "the same URL with a trailing slash".to_owned()
            } else {
                "the same URL without its trailing slash".to_owned()
            }
        } else if same_origin && same_scheme {
            "another path on the same host".to_owned()
        } else {
            redacted(&target)
        }
    }
}

/// `scheme://host:port/…` of `url`.
fn redacted(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_is_described_without_the_path_it_points_to() {
        let url = EndpointUrl::parse("http://hooks.zapier.com/hooks/catch/123/abc?k=secret")
            .unwrap_or_else(|e| panic!("{e}"));
        let cases = [
            (
                "https://hooks.zapier.com/hooks/catch/123/abc?k=secret",
                "the same URL over https",
            ),
            (
                "http://hooks.zapier.com/hooks/catch/123/abc/?k=secret",
                "the same URL with a trailing slash",
            ),
            ("/hooks/catch/999/xyz", "another path on the same host"),
            (
                "https://evil.example:8443/x/abc",
                "https://evil.example:8443/…",
            ),
            (
                "https://hooks.zapier.com:8443/hooks/catch/123/abc?k=secret",
                "the same path over https on port 8443",
            ),
            ("http://[::1", "an unreadable Location"),
        ];
        for (location, told) in cases {
            let described = url.describe_redirect(location);
            assert_eq!(described, told, "{location}");
            assert!(!described.contains("abc") && !described.contains("secret"));
        }
        let slashed =
            EndpointUrl::parse("https://h.example/hook/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            slashed.describe_redirect("https://h.example/hook"),
            "the same URL without its trailing slash"
        );
        assert_eq!(slashed.describe_redirect("/hook/"), "the same URL");
    }

    #[test]
    fn http_and_https_urls_are_accepted_and_print_without_their_path() {
        let url = EndpointUrl::parse("https://hooks.zapier.com/hooks/catch/123/abc/")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(url.is_https());
        assert_eq!(url.to_string(), "https://hooks.zapier.com/…");
        assert!(!format!("{url:?}").contains("abc"));
        assert!(EndpointUrl::parse("http://127.0.0.1:9000/hook").is_ok());
    }

    #[test]
    fn unusable_urls_are_refused_with_a_reason() {
        assert!(matches!(
            EndpointUrl::parse("not a url"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            EndpointUrl::parse("ftp://x/"),
            Err(UrlError::Scheme(_))
        ));
        assert_eq!(
            EndpointUrl::parse("https://user:pw@example.com/"),
            Err(UrlError::Credentials)
        );
        assert!(EndpointUrl::parse("file:///etc/passwd").is_err());
    }
}

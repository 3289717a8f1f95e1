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
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port() {
            Some(port) => format!("{}://{host}:{port}/…", self.0.scheme()),
            None => format!("{}://{host}/…", self.0.scheme()),
        }
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

//! Secrets: wrapped so that `Debug` and `Display` can never print them.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

/// A value that must never be printed: admin tokens, DSNs. `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself: call only where it is used, never to print it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A signing secret was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret was empty.
    #[error("the secret is empty")]
    Empty,
    /// A `whsec_` secret whose remainder is not valid base64.
    #[error(
        "a secret starting with `whsec_` must continue with base64 (as Standard Webhooks secrets do)"
    )]
    BadBase64,
}

/// The key used to sign deliveries (HMAC).
///
/// Two forms are accepted:
/// - `whsec_<base64>` (Standard Webhooks): the key is the base64-decoded remainder;
/// - any other string: the key is the string's UTF-8 bytes, exactly as given (this is what the
///   guide's Python `hmac.new(secret.encode(), …)` did, so existing verifiers keep working).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    /// Parses a secret in either accepted form.
    pub fn parse(value: &str) -> Result<Self, SecretError> {
        let key = match value.strip_prefix("whsec_") {
            Some(encoded) => BASE64
                .decode(encoded.trim())
                .map_err(|_| SecretError::BadBase64)?,
            None => value.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { key })
    }

    /// The HMAC key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// A short, stable name for the secret that reveals nothing of it: the first 8 bytes of
    /// its key's SHA-256, in hex. Tells secrets apart in records and reports.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.key())[..8])
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningSecret([redacted, {} bytes])", self.key.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_secrets_are_base64_decoded_and_plain_strings_used_as_bytes() {
        let standard = SigningSecret::parse("whsec_aGVsbG8=").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(standard.key(), b"hello");
        let plain = SigningSecret::parse("my-secret").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.key(), b"my-secret");
        assert_eq!(SigningSecret::parse(""), Err(SecretError::Empty));
        assert_eq!(SigningSecret::parse("whsec_"), Err(SecretError::Empty));
        assert_eq!(
            SigningSecret::parse("whsec_***"),
            Err(SecretError::BadBase64)
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secret = SigningSecret::parse("super-secret-value").unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{secret:?}").contains("super"));
        let token = Redacted::new("admin-token-value".to_owned());
        assert_eq!(format!("{token:?}"), "[redacted]");
    }
}

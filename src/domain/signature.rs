//! The signature scheme settings a delivery is signed with.

use std::{fmt, str::FromStr};

/// The hash behind the guide's signature header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureAlgorithm {
    /// HMAC-SHA256 (default).
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl SignatureAlgorithm {
    /// The name used in `WEBHOOK_SIGNATURE_ALGORITHM` and as the header value prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SignatureAlgorithm {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other => Err(format!("unsupported algorithm `{other}`")),
        }
    }
}

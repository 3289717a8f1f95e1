//! Signing what hookrelay delivers: the secret and the guide's signature header.

use std::time::Duration;

use super::Reader;
use crate::domain::{SignatureAlgorithm, SigningSecret};

/// How deliveries are signed. The guide's header and algorithm also name the scheme ingest
/// clients may sign with.
#[derive(Debug, Clone)]
pub struct SigningSettings {
    /// `WEBHOOK_SECRET`: signs deliveries. Unset: deliveries are sent unsigned.
    pub secret: Option<SigningSecret>,
    /// `WEBHOOK_SIGNATURE_HEADER` (default `X-Webhook-Signature`): header carrying the guide's
    /// hex signature.
    pub header: String,
    /// `WEBHOOK_SIGNATURE_ALGORITHM` (default `sha256`; or `sha512`): hash of that header.
    pub algorithm: SignatureAlgorithm,
    /// `HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS` (default 24): how long a rotated-out endpoint
    /// secret keeps signing beside the new one.
    pub rotation_overlap: Duration,
}

impl SigningSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
        let secret =
            r.raw("WEBHOOK_SECRET")
                .and_then(|raw| match SigningSecret::parse(raw.trim()) {
                    Ok(secret) => {
                        if secret.key().len() < 32 {
                            r.warn(
                                "WEBHOOK_SECRET",
                                format!("is only {} bytes long", secret.key().len()),
                                "use at least 32 random bytes, e.g. `openssl rand -hex 32`",
                            );
                        }
                        Some(secret)
                    }
                    Err(e) => {
                        r.error(
                            "WEBHOOK_SECRET",
                            e.to_string(),
                            "use `openssl rand -hex 32` or a whsec_<base64> secret",
                        );
                        None
                    }
                });
        let header = r.raw("WEBHOOK_SIGNATURE_HEADER").map_or_else(
            || "X-Webhook-Signature".to_owned(),
            |raw| raw.trim().to_owned(),
        );
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            r.error(
                "WEBHOOK_SIGNATURE_HEADER",
                format!("`{header}` is not a valid HTTP header name"),
                "use letters, digits and `-`, e.g. X-Webhook-Signature",
            );
        }
        let algorithm = r.parsed(
            "WEBHOOK_SIGNATURE_ALGORITHM",
            SignatureAlgorithm::Sha256,
            "sha256 or sha512",
        );
        let rotation_overlap = r.hours(
            "HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS",
            24.0,
            0.0,
            24.0 * 365.0,
        );
        if secret.is_none() && !r.problems.iter().any(|p| p.variable == "WEBHOOK_SECRET") {
            r.warn(
                "WEBHOOK_SECRET",
                "is not set: deliveries are sent unsigned, so receivers cannot tell them from forgeries",
                "set it, e.g. WEBHOOK_SECRET=$(openssl rand -hex 32)",
            );
        }
        Self {
            secret,
            header,
            algorithm,
            rotation_overlap,
        }
    }
}

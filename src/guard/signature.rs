//! Signed ingest: a request must carry a valid signature made with one of the ingest secrets,
//! in either the guide's scheme or Standard Webhooks'.

use axum::http::HeaderMap;

use crate::{
    domain::{SignatureAlgorithm, SigningSecret},
    signing::{self, VerifyError},
    store::InboundMessage,
};

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature in either scheme.
    #[error(
        "the request is not signed: send {0} (hex HMAC of the body) or Standard Webhooks headers"
    )]
    Missing(String),
    /// A signature that no ingest secret produced.
    #[error("the signature does not match the body with any ingest secret")]
    Invalid,
    /// Standard Webhooks headers present but incomplete or malformed.
    #[error("malformed Standard Webhooks headers: {0}")]
    Malformed(&'static str),
    /// Only the guide's body-only scheme was sent while `HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE`
    /// is false.
    #[error(
        "{0} (a signature of the body alone, which a captured request can replay) is not accepted: sign with Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)"
    )]
    BodySchemeRefused(String),
    /// The guide's signature header is present but holds no hex HMAC.
    #[error(
        "malformed {0} header: expected sha256=<hex HMAC of the body> (or the algorithm set by WEBHOOK_SIGNATURE_ALGORITHM)"
    )]
    MalformedLegacy(String),
    /// The timestamp is too old or too far in the future.
    #[error("webhook-timestamp is {0} s away from now, beyond the {1} s tolerance")]
    Expired(i64, i64),
}

impl SignatureError {
    /// A stable code for the API body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_signature",
            Self::Invalid => "invalid_signature",
            Self::Malformed(_) | Self::MalformedLegacy(_) => "malformed_signature",
            Self::BodySchemeRefused(_) => "unsupported_signature_scheme",
            Self::Expired(..) => "signature_expired",
        }
    }
}

/// A verified request: which secret signed it and, for Standard Webhooks, the message id the
/// store must accept only once (in the transaction that stores the events, so a replay is
/// refused after a restart and by every instance on the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// 1-based index of the ingest secret that matched.
    pub key: usize,
    /// The Standard Webhooks `webhook-id`, scoped to the secret that signed it, until it can
    /// no longer be replayed; `None` for the guide's scheme.
    pub message: Option<InboundMessage>,
}

/// Verifies ingest signatures.
#[derive(Debug)]
pub struct Verifier {
    secrets: Vec<SigningSecret>,
    header: String,
    algorithm: SignatureAlgorithm,
    tolerance_ms: i64,
    accept_body_scheme: bool,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Verifier {
    /// A verifier; with no secrets every request passes unsigned.
    pub fn new(
        secrets: Vec<SigningSecret>,
        header: String,
        algorithm: SignatureAlgorithm,
        tolerance_ms: i64,
        accept_body_scheme: bool,
    ) -> Self {
        Self {
            secrets,
            header,
            algorithm,
            tolerance_ms,
            accept_body_scheme,
        }
    }

    /// Whether signatures are required.
    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks the request; on success returns which secret signed it, the client's identity
    /// for rate limiting. `Ok(None)` when no secret is configured.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Verified>, SignatureError> {
        if self.secrets.is_empty() {
            return Ok(None);
        }
        if let Some(signature) = header(headers, "webhook-signature") {
            let id = header(headers, "webhook-id")
                .ok_or(SignatureError::Malformed("webhook-id is missing"))?;
            let timestamp: i64 = header(headers, "webhook-timestamp")
                .ok_or(SignatureError::Malformed("webhook-timestamp is missing"))?
                .trim()
                .parse()
                .map_err(|_| {
                    SignatureError::Malformed("webhook-timestamp is not a number of seconds")
                })?;
            if id.is_empty() || id.len() > 256 {
                return Err(SignatureError::Malformed(
                    "webhook-id must be 1-256 characters",
                ));
            }
            let skew_s = (now_ms.div_euclid(1000)).saturating_sub(timestamp);
            if skew_s.saturating_abs().saturating_mul(1000) > self.tolerance_ms {
                return Err(SignatureError::Expired(skew_s, self.tolerance_ms / 1000));
            }
            let candidates = signing::standard_candidates(signature).map_err(|e| match e {
                VerifyError::TooMany => {
                    SignatureError::Malformed("webhook-signature holds more than 8 signatures")
                }
                VerifyError::Missing | VerifyError::Mismatch => {
                    SignatureError::Malformed("webhook-signature holds no v1,<base64> signature")
                }
            })?;
            // One HMAC per secret, whatever the header holds.
            let matched = self
                .secrets
                .iter()
                .position(|secret| {
                    signing::matches_standard(secret, id, timestamp, body, &candidates)
                })
                .ok_or(SignatureError::Invalid)?;
            // The id as sent, whichever secret matched: scoped by secret, a request signed with
            // two secrets during a rotation could be replayed with one signature removed.
            // Kept until a timestamp accepted now is out of tolerance whichever way it leaned.
            return Ok(Some(Verified {
                key: matched + 1,
                message: Some(InboundMessage {
                    id: id.to_owned(),
                    expires_at_ms: now_ms + self.tolerance_ms * 2,
                }),
            }));
        }
        let Some(signature) = header(headers, &self.header) else {
            return Err(SignatureError::Missing(self.header.clone()));
        };
        if !self.accept_body_scheme {
            return Err(SignatureError::BodySchemeRefused(self.header.clone()));
        }
        let mut saw_wellformed = false;
        for (n, secret) in self.secrets.iter().enumerate() {
            match signing::verify_legacy(secret, self.algorithm, body, signature) {
                Ok(()) => {
                    return Ok(Some(Verified {
                        key: n + 1,
                        message: None,
                    }));
                }
                Err(VerifyError::Mismatch) => saw_wellformed = true,
                // Not hex: no secret can match; no HMAC is computed for it.
                Err(VerifyError::Missing | VerifyError::TooMany) => break,
            }
        }
        if saw_wellformed {
            Err(SignatureError::Invalid)
        } else {
            Err(SignatureError::MalformedLegacy(self.header.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn key(
        result: Result<Option<Verified>, SignatureError>,
    ) -> Result<Option<usize>, SignatureError> {
        result.map(|verified| verified.map(|v| v.key))
    }

    fn verifier() -> Verifier {
        let secrets = ["ingest-secret-one", "ingest-secret-two"]
            .iter()
            .map(|s| SigningSecret::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        Verifier::new(
            secrets,
            "X-Webhook-Signature".into(),
            SignatureAlgorithm::Sha256,
            300_000,
            true,
        )
    }

    fn standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let secret = SigningSecret::parse(secret).unwrap_or_else(|e| panic!("{e}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-id",
            HeaderValue::from_str(id).unwrap_or_else(|e| panic!("{e}")),
        );
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        let signature = signing::standard_signature(&secret, id, timestamp, body);
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&signature).unwrap_or_else(|e| panic!("{e}")),
        );
        headers
    }

    #[test]
    fn either_secret_verifies_in_both_schemes() {
        let verifier = verifier();
        let body = br#"{"a":1}"#;
        let ts = NOW / 1000;
        assert_eq!(
            key(verifier.verify(&standard("ingest-secret-one", "m1", ts, body), body, NOW)),
            Ok(Some(1))
        );
        assert_eq!(
            key(verifier.verify(&standard("ingest-secret-two", "m2", ts, body), body, NOW)),
            Ok(Some(2))
        );
        let secret = SigningSecret::parse("ingest-secret-two").unwrap_or_else(|e| panic!("{e}"));
        let legacy = signing::legacy_signature(&secret, SignatureAlgorithm::Sha256, body);
        for value in [
            legacy.clone(),
            legacy.trim_start_matches("sha256=").to_owned(),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-webhook-signature",
                HeaderValue::from_str(&value).unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(key(verifier.verify(&headers, body, NOW)), Ok(Some(2)));
        }
    }

    #[test]
    fn every_bad_signature_is_refused_with_its_reason() {
        let verifier = verifier();
        let body = br#"{"a":1}"#;
        let ts = NOW / 1000;
        assert!(matches!(
            key(verifier.verify(&HeaderMap::new(), body, NOW)),
            Err(SignatureError::Missing(_))
        ));
        assert_eq!(
            key(verifier.verify(&standard("wrong-secret", "m1", ts, body), body, NOW)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key(verifier.verify(
                &standard("ingest-secret-one", "m1", ts, body),
                b"tampered",
                NOW
            )),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key(verifier.verify(
                &standard("ingest-secret-one", "old", ts - 301, body),
                body,
                NOW
            )),
            Err(SignatureError::Expired(301, 300))
        );
        assert!(matches!(
            key(verifier.verify(
                &standard("ingest-secret-one", "future", ts + 301, body),
                body,
                NOW
            )),
            Err(SignatureError::Expired(..))
        ));
        let first = standard("ingest-secret-one", "once", ts, body);
        let mut no_id = first.clone();
        no_id.remove("webhook-id");
        assert!(matches!(
            key(verifier.verify(&no_id, body, NOW)),
            Err(SignatureError::Malformed(_))
        ));
        let mut legacy = HeaderMap::new();
        legacy.insert(
            "x-webhook-signature",
            HeaderValue::from_static("sha256=deadbeef"),
        );
        assert_eq!(
            key(verifier.verify(&legacy, body, NOW)),
            Err(SignatureError::Invalid)
        );
        legacy.insert("x-webhook-signature", HeaderValue::from_static("not-hex"));
        let malformed = key(verifier.verify(&legacy, body, NOW));
        assert_eq!(
            malformed,
            Err(SignatureError::MalformedLegacy(
                "X-Webhook-Signature".into()
            ))
        );
        assert!(
            malformed
                .err()
                .is_some_and(|e| e.to_string().contains("X-Webhook-Signature")
                    && !e.to_string().contains("Standard Webhooks")),
            "the error names the scheme that failed"
        );
    }

    #[test]
    fn an_invalid_request_never_burns_an_id_for_the_genuine_one() {
        let verifier = verifier();
        let body = br#"{"a":1}"#;
        let ts = NOW / 1000;
        let forged = standard("wrong-secret", "shared-id", ts, body);
        assert_eq!(
            key(verifier.verify(&forged, body, NOW)),
            Err(SignatureError::Invalid)
        );
        let genuine = standard("ingest-secret-one", "shared-id", ts, body);
        assert_eq!(key(verifier.verify(&genuine, body, NOW)), Ok(Some(1)));
    }

    #[test]
    fn a_header_stuffed_with_candidates_is_refused_before_any_hmac() {
        let verifier = verifier();
        let body = vec![b'x'; 1 << 20];
        let ts = NOW / 1000;
        let mut headers = standard("ingest-secret-one", "stuffed", ts, &body);
        let stuffed = "v1, ".repeat(3_900);
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&stuffed).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(
            key(verifier.verify(&headers, &body, NOW)),
            Err(SignatureError::Malformed(
                "webhook-signature holds more than 8 signatures"
            ))
        );
        // Up to the cap, the genuine signature is found among decoys.
        let genuine = standard("ingest-secret-two", "decoys", ts, &body);
        let signature = genuine
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let decoys = format!("{}{signature}", "v1,AAAA ".repeat(7));
        let mut headers = genuine.clone();
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&decoys).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(key(verifier.verify(&headers, &body, NOW)), Ok(Some(2)));
    }

    #[test]
    fn the_body_only_scheme_can_be_refused() {
        let secrets =
            vec![SigningSecret::parse("ingest-secret-one").unwrap_or_else(|e| panic!("{e}"))];
        let strict = Verifier::new(
            secrets.clone(),
            "X-Webhook-Signature".into(),
            SignatureAlgorithm::Sha256,
            300_000,
            false,
        );
        let body = br#"{"a":1}"#;
        let legacy = signing::legacy_signature(&secrets[0], SignatureAlgorithm::Sha256, body);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-webhook-signature",
            HeaderValue::from_str(&legacy).unwrap_or_else(|e| panic!("{e}")),
        );
        let refused = key(strict.verify(&headers, body, NOW));
        assert_eq!(
            refused,
            Err(SignatureError::BodySchemeRefused(
                "X-Webhook-Signature".into()
            ))
        );
        assert_eq!(
            refused.err().map(|e| e.code()),
            Some("unsupported_signature_scheme")
        );
        // Standard Webhooks still passes.
        let standard = standard("ingest-secret-one", "m1", NOW / 1000, body);
        assert_eq!(key(strict.verify(&standard, body, NOW)), Ok(Some(1)));
    }

    #[test]
    fn a_verified_id_is_the_senders_whichever_secret_signed_and_kept_past_the_tolerance() {
        let verifier = verifier();
        let body = br#"{"a":1}"#;
        let ts = NOW / 1000;
        let message = |secret: &str| {
            verifier
                .verify(&standard(secret, "msg_same", ts, body), body, NOW)
                .ok()
                .flatten()
                .and_then(|v| v.message)
                .unwrap_or_else(|| panic!("no message id"))
        };
        let one = message("ingest-secret-one");
        let two = message("ingest-secret-two");
        // Dropping one of a rotation's two signatures must not make a replay a new message.
        assert_eq!((one.id.as_str(), two.id.as_str()), ("msg_same", "msg_same"));
        assert_eq!(one.expires_at_ms, NOW + 600_000);
        // The guide's scheme has no id to record.
        let secret = SigningSecret::parse("ingest-secret-one").unwrap_or_else(|e| panic!("{e}"));
        let mut legacy = HeaderMap::new();
        legacy.insert(
            "x-webhook-signature",
            HeaderValue::from_str(&signing::legacy_signature(
                &secret,
                SignatureAlgorithm::Sha256,
                body,
            ))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let verified = verifier.verify(&legacy, body, NOW).ok().flatten();
        assert_eq!(verified.map(|v| v.message), Some(None));
    }

    #[test]
    fn without_secrets_everything_passes() {
        let open = Verifier::new(
            Vec::new(),
            "X-Webhook-Signature".into(),
            SignatureAlgorithm::Sha256,
            300_000,
            true,
        );
        assert_eq!(key(open.verify(&HeaderMap::new(), b"{}", NOW)), Ok(None));
    }
}

//! Webhook signatures, outbound (we sign deliveries) and inbound (the `sink` and ingest verify).
//!
//! Two schemes are produced on every signed delivery:
//! - [Standard Webhooks](https://www.standardwebhooks.com/): `webhook-id`, `webhook-timestamp`
//!   and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`;
//! - the guide's header (`X-Webhook-Signature` by default): `sha256=<hex HMAC of the body>`,
//!   or `sha512=…` with `WEBHOOK_SIGNATURE_ALGORITHM=sha512`.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::domain::{SignatureAlgorithm, SigningSecret};

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha512(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The Standard Webhooks signature value: `v1,<base64>`.
pub fn standard_signature(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac_sha256(
        secret.key(),
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{}", BASE64.encode(mac))
}

/// The guide's signature value: `sha256=<hex>` (or `sha512=…`).
pub fn legacy_signature(
    secret: &SigningSecret,
    algorithm: SignatureAlgorithm,
    body: &[u8],
) -> String {
    let mac = match algorithm {
        SignatureAlgorithm::Sha256 => hmac_sha256(secret.key(), &[body]),
        SignatureAlgorithm::Sha512 => hmac_sha512(secret.key(), body),
    };
    format!("{}={}", algorithm.name(), hex::encode(mac))
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No signature of a supported version was present.
    #[error("no signature in a supported format")]
    Missing,
    /// A signature was present but did not match.
    #[error("signature does not match")]
    Mismatch,
    /// More signatures than [`MAX_SIGNATURES`]: refused before any HMAC is computed.
    #[error("more than {MAX_SIGNATURES} signatures in one header")]
    TooMany,
}

/// Most signatures one `webhook-signature` header may carry: a rotation needs two, and a
/// header stuffed with thousands must not cost anything to refuse.
pub const MAX_SIGNATURES: usize = 8;

/// The `v1` signatures of a `webhook-signature` header, decoded. Entries of other versions
/// and undecodable ones are skipped; more than [`MAX_SIGNATURES`] entries in all is an error.
pub fn standard_candidates(header: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let mut entries = 0;
    let mut candidates = Vec::new();
    for entry in header.split_whitespace() {
        entries += 1;
        if entries > MAX_SIGNATURES {
            return Err(VerifyError::TooMany);
        }
        if let Some(signature) = entry
            .strip_prefix("v1,")
            .and_then(|encoded| BASE64.decode(encoded).ok())
        {
            candidates.push(signature);
        }
    }
    if candidates.is_empty() {
        return Err(VerifyError::Missing);
    }
    Ok(candidates)
}

/// Whether the Standard Webhooks HMAC of `msg_id.timestamp.body` under `secret` is one of
/// `candidates`: one HMAC, then a constant-time comparison with each candidate.
pub fn matches_standard(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    candidates: &[Vec<u8>],
) -> bool {
    let timestamp = timestamp.to_string();
    let expected = hmac_sha256(
        secret.key(),
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    // Every candidate is compared, matched or not, so the time taken does not say which.
    candidates.iter().fold(false, |found, candidate| {
        found | bool::from(expected.as_slice().ct_eq(candidate.as_slice()))
    })
}

/// Verifies a `webhook-signature` header value, which may carry several space-separated
/// signatures (secret rotation); any one matching is enough. One HMAC whatever the header
/// holds; the comparisons are constant-time.
pub fn verify_standard(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> Result<(), VerifyError> {
    let candidates = standard_candidates(header)?;
    if matches_standard(secret, msg_id, timestamp, body, &candidates) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Verifies the guide's header: hex HMAC of the body, with or without the `sha256=` prefix.
pub fn verify_legacy(
    secret: &SigningSecret,
    algorithm: SignatureAlgorithm,
    body: &[u8],
    header: &str,
) -> Result<(), VerifyError> {
    let header = header.trim();
    let hex_part = header
        .strip_prefix(algorithm.name())
        .and_then(|rest| rest.strip_prefix('='))
        .unwrap_or(header);
    let signature = hex::decode(hex_part).map_err(|_| VerifyError::Missing)?;
    let verified = match algorithm {
        SignatureAlgorithm::Sha256 => {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.key())
                .expect("HMAC takes any key length");
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        }
        SignatureAlgorithm::Sha512 => {
            let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(secret.key())
                .expect("HMAC takes any key length");
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        }
    };
    if verified {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str) -> SigningSecret {
        SigningSecret::parse(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn standard_webhooks_published_vector_is_reproduced() {
        let secret = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signature = standard_signature(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn standard_signature_verifies_and_tampering_is_detected() {
        let key = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"a":1}"#;
        let good = standard_signature(&key, "evt_1", 100, body);
        assert_eq!(verify_standard(&key, "evt_1", 100, body, &good), Ok(()));
        // Rotation: an unknown signature beside the good one still verifies.
        let both = format!("v1,AAAA {good}");
        assert_eq!(verify_standard(&key, "evt_1", 100, body, &both), Ok(()));
        for (id, ts, body) in [
            ("evt_2", 100, &body[..]),
            ("evt_1", 101, &body[..]),
            ("evt_1", 100, b"{}"),
        ] {
            assert_eq!(
                verify_standard(&key, id, ts, body, &good),
                Err(VerifyError::Mismatch)
            );
        }
        assert_eq!(
            verify_standard(&secret("other"), "evt_1", 100, body, &good),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_standard(&key, "evt_1", 100, body, "v2,xyz"),
            Err(VerifyError::Missing)
        );
    }

    #[test]
    fn legacy_signature_matches_python_hmac_and_verifies_with_or_without_prefix() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"The quick brown fox jumps over the lazy dog",hashlib.sha256).hexdigest())'
        let key = secret("key");
        let body = b"The quick brown fox jumps over the lazy dog";
        let signature = legacy_signature(&key, SignatureAlgorithm::Sha256, body);
        assert_eq!(
            signature,
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(
            verify_legacy(&key, SignatureAlgorithm::Sha256, body, &signature),
            Ok(())
        );
        let bare = signature.trim_start_matches("sha256=");
        assert_eq!(
            verify_legacy(&key, SignatureAlgorithm::Sha256, body, bare),
            Ok(())
        );
        assert_eq!(
            verify_legacy(&key, SignatureAlgorithm::Sha256, b"tampered", &signature),
            Err(VerifyError::Mismatch)
        );
        let sha512 = legacy_signature(&key, SignatureAlgorithm::Sha512, body);
        assert!(sha512.starts_with(
            "sha512=b42af09057bac1e2d41708e48a902e09b5ff7f12ab428a4fe86653c73dd248fb"
        ));
        assert_eq!(
            verify_legacy(&key, SignatureAlgorithm::Sha512, body, &sha512),
            Ok(())
        );
    }

    #[test]
    fn candidates_are_capped_and_decoded_once() {
        assert_eq!(
            standard_candidates(&"v1, ".repeat(MAX_SIGNATURES + 1)),
            Err(VerifyError::TooMany)
        );
        assert_eq!(
            standard_candidates("v2,abc v1,!!!"),
            Err(VerifyError::Missing)
        );
        assert_eq!(
            standard_candidates("v1,AAAA v2,x v1,AQ=="),
            Ok(vec![vec![0, 0, 0], vec![1]])
        );
    }
}

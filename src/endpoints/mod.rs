//! Endpoints: where events go. Each has its own URL, event-type filter, signing secret (with a
//! rotation overlap), extra headers, timeout, retry budget, rate limit and circuit breaker.
//! `ep_default` mirrors `ZAPIER_WEBHOOK_URL` and is kept in sync from the configuration.

mod spec;

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

pub use self::spec::{EndpointChanges, EndpointSpec};
pub use crate::domain::{
    CircuitState, Endpoint, EndpointHealth, EndpointView, EventFilter, InvalidEndpoint, RateLimit,
};
use crate::domain::{EndpointId, SigningSecret, invalid_endpoint as invalid};

/// An endpoint operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EndpointError {
    /// The settings are invalid; nothing changed.
    #[error("invalid endpoint: {0}")]
    Invalid(#[from] InvalidEndpoint),
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(EndpointId),
    /// The change is to `ep_default`, which follows the configuration: change the variable.
    #[error("{0}")]
    ManagedByConfig(&'static str),
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A fresh `whsec_` secret: 32 random bytes.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", BASE64.encode(bytes))
}

/// Headers an endpoint may not set, because hookrelay sets them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "transfer-encoding",
    "connection",
];

/// Checks extra headers: valid names and values, none that hookrelay sets itself.
pub fn validate_headers(
    headers: &BTreeMap<String, String>,
    signature_header: &str,
) -> Result<(), InvalidEndpoint> {
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                "headers",
                format!(
                    "`{}` is not a valid header name (letters, digits and `-`, no spaces)",
                    first_word(name)
                ),
            ));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(invalid(
                "headers",
                format!("the value of `{name}` is not a valid header value"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower == signature_header.to_ascii_lowercase()
        {
            return Err(invalid(
                "headers",
                format!("`{name}` is set by hookrelay and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

/// Parses `Name: value` into a header pair.
pub fn parse_header(raw: &str) -> Result<(String, String), InvalidEndpoint> {
    let (name, value) = raw.split_once(':').ok_or_else(|| {
        invalid(
            "headers",
            format!("`{}` has no `:`: write `Name: value`", first_word(raw)),
        )
    })?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// The start of a header the user wrote, for an error: its leading header-name characters
/// only, since the rest is often a credential (`Authorization Bearer sk_…` or
/// `X-Api-Key=sk_…` with the `:` forgotten) and errors are logged and reported.
pub(crate) fn first_word(raw: &str) -> String {
    let raw = raw.trim();
    let name: String = raw
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    if name.len() < raw.len() {
        format!("{name} …")
    } else {
        name
    }
}

/// Checks a secret given by the user.
pub fn validate_secret(secret: &str) -> Result<(), InvalidEndpoint> {
    SigningSecret::parse(secret)
        .map(|_| ())
        .map_err(|e| invalid("secret", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EndpointUrl;

    fn filter(patterns: &[&str]) -> EventFilter {
        EventFilter::parse(patterns.iter().map(|p| (*p).to_owned()).collect())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn filters_match_exact_types_prefixes_and_everything() {
        let table: &[(&[&str], &str, bool)] = &[
            (&[], "usage.tracked", true),
            (&["*"], "anything.at.all", true),
            (&["usage.tracked"], "usage.tracked", true),
            (&["usage.tracked"], "usage.tracked.v2", false),
            (&["alert.*"], "alert.fired", true),
            (&["alert.*"], "alert.resolved", true),
            (&["alert.*"], "alerts.fired", false),
            (&["alert.*"], "usage.tracked", false),
            (&["usage.tracked", "alert.*"], "alert.fired", true),
        ];
        for (patterns, event_type, expected) in table {
            assert_eq!(
                filter(patterns).matches(event_type),
                *expected,
                "{patterns:?} vs {event_type}"
            );
        }
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in ["", "alert.", ".*", "a b", "alert.**", "*.fired"] {
            assert!(EventFilter::parse(vec![bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_secrets_are_standard_webhooks_secrets() {
        let secret = generate_secret();
        let parsed = SigningSecret::parse(&secret).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.key().len(), 32);
        assert_ne!(generate_secret(), secret);
    }

    #[test]
    fn a_malformed_header_is_named_without_what_follows_its_first_word() {
        let refused = parse_header("Authorization Bearer sk_live_1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("`Authorization …` has no `:`"),
            "{refused}"
        );
        assert!(!refused.contains("sk_live"), "{refused}");
        let refused = parse_header("X-Api-Key=sk_live_3")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("`X-Api-Key …` has no `:`"), "{refused}");
        let (name, value) = parse_header("Authorization Bearer sk_live_2: x").expect("split");
        let headers = BTreeMap::from([(name, value)]);
        let refused = validate_headers(&headers, "X-Webhook-Signature")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("`Authorization …` is not a valid header name"),
            "{refused}"
        );
        assert!(!refused.contains("sk_live"), "{refused}");
    }

    #[test]
    fn reserved_or_malformed_headers_are_refused() {
        let ok: BTreeMap<_, _> = [("Authorization".to_owned(), "Bearer x".to_owned())].into();
        assert!(validate_headers(&ok, "X-Webhook-Signature").is_ok());
        for name in [
            "Content-Type",
            "webhook-signature",
            "X-Webhook-Signature",
            "bad name",
        ] {
            let headers: BTreeMap<_, _> = [(name.to_owned(), "v".to_owned())].into();
            assert!(
                validate_headers(&headers, "X-Webhook-Signature").is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn rotation_signs_with_both_secrets_only_during_the_overlap() {
        let endpoint = Endpoint {
            id: EndpointId::default_endpoint(),
            url: EndpointUrl::parse("https://example.com/").unwrap_or_else(|e| panic!("{e}")),
            description: String::new(),
            filter: EventFilter::default(),
            secret: Some("new-secret".into()),
            previous_secret: Some("old-secret".into()),
            previous_secret_until_ms: Some(1_000),
            headers: BTreeMap::new(),
            timeout: None,
            max_retries: None,
            rate_limit: None,
            circuit_threshold: None,
            enabled: true,
            disabled_reason: None,
            managed_by_config: false,
            health: EndpointHealth::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert_eq!(endpoint.signing_secrets(999).len(), 2);
        assert_eq!(endpoint.signing_secrets(1_000).len(), 1);
        assert_eq!(endpoint.signing_secrets(1_000)[0].key(), b"new-secret");
    }
}

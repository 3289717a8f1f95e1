//! The events hookrelay accepts, as typed values that cannot hold invalid data once parsed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an incoming event was refused. `field` names the offending field so a client can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct InvalidEvent {
    /// The field at fault, as the client spelled it (`session_id`, `events[2].model_name`, …).
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl InvalidEvent {
    pub(crate) fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// Prefixes the field with its position in an array, for batch requests.
    pub(crate) fn at_index(mut self, index: usize) -> Self {
        self.field = format!("[{index}].{}", self.field);
        self
    }
}

const MAX_ID_LEN: usize = 256;
const MAX_USER_AGENT_LEN: usize = 1024;

/// One LLM call the gateway made: the guide's `track_usage` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageEvent {
    /// The gateway's session this call belongs to: 1–256 characters, not all blank, no control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$",
        example = "session_123"
    )]
    pub session_id: String,
    /// The prompt. Only a summary leaves hookrelay by default (see `HOOKRELAY_QUERY_MODE`).
    #[schema(example = "Why does this code throw an error?")]
    pub query: String,
    /// The model that answered: 1–256 characters, not all blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$",
        example = "gpt-4o-mini"
    )]
    pub model_name: String,
    /// How long the model took to answer, in milliseconds. A whole number; `1000.0` is
    /// accepted as `1000`, as JSON Schema counts it an integer.
    #[serde(deserialize_with = "whole_number")]
    #[schema(example = 1000, maximum = 9_007_199_254_740_991_u64)]
    pub response_time_ms: u64,
    /// Estimated tokens used by the call (a whole number, as `response_time_ms`).
    #[serde(deserialize_with = "whole_number")]
    #[schema(example = 100, maximum = 9_007_199_254_740_991_u64)]
    pub estimated_tokens: u64,
    /// Whether the call succeeded.
    pub success: bool,
    /// The gateway client's user agent, if known (at most 1024 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub user_agent: Option<String>,
}

fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    super::number::whole(deserializer)
}

impl UsageEvent {
    /// Checks what the type system cannot: lengths and non-empty identifiers.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        check_text("session_id", &self.session_id, MAX_ID_LEN)?;
        check_text("model_name", &self.model_name, MAX_ID_LEN)?;
        for (field, value) in [
            ("response_time_ms", self.response_time_ms),
            ("estimated_tokens", self.estimated_tokens),
        ] {
            if value > super::number::MAX_EXACT {
                return Err(InvalidEvent::new(
                    field,
                    format!(
                        "must be at most {} (2^53 - 1, the largest whole number every JSON reader keeps exactly)",
                        super::number::MAX_EXACT
                    ),
                ));
            }
        }
        if let Some(agent) = &self.user_agent
            && agent.chars().count() > MAX_USER_AGENT_LEN
        {
            return Err(InvalidEvent::new(
                "user_agent",
                format!("must be at most {MAX_USER_AGENT_LEN} characters"),
            ));
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), InvalidEvent> {
    if value.trim().is_empty() {
        return Err(InvalidEvent::new(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(InvalidEvent::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidEvent::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An event type such as `usage.tracked` or `alert.fired`: dot-separated words of letters,
/// digits, `_` and `-`, at most 128 characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    /// The type of every usage event.
    pub const USAGE_TRACKED: &'static str = "usage.tracked";

    /// The type of usage events.
    pub fn usage_tracked() -> Self {
        Self(Self::USAGE_TRACKED.to_owned())
    }

    /// Parses a client-supplied event type.
    pub fn parse(value: &str) -> Result<Self, InvalidEvent> {
        let valid = !value.is_empty()
            && value.len() <= 128
            && value.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidEvent::new(
                "type",
                "must be dot-separated words of letters, digits, `_` or `-` (at most 128 characters), e.g. `usage.tracked`",
            ))
        }
    }

    pub(crate) fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's idempotency key: 1–255 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a key from the `Idempotency-Key` header or the `idempotency_key` field.
    pub fn parse(value: &str) -> Result<Self, InvalidEvent> {
        if !value.is_empty() && value.len() <= 255 && value.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidEvent::new(
                "idempotency_key",
                "must be 1-255 visible ASCII characters",
            ))
        }
    }

    /// The key for item `index` of a batch sent under this key, so that a retried batch is
    /// recognised item by item. The space cannot occur in a client's key, so no single key
    /// can collide with a batch item's.
    pub fn for_item(&self, index: usize) -> Self {
        Self(format!("{} #{index}", self.0))
    }

    /// The key as stored: scoped by event type, so a usage event and an alert sent with the
    /// same key are different events.
    pub fn scoped(&self, event_type: &EventType) -> String {
        format!("{} {}", event_type.as_str(), self.0)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Any event, as accepted by `POST /api/v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenericEvent {
    /// What happened, e.g. `alert.fired`.
    pub event_type: EventType,
    /// The event's JSON data, delivered as the payload's `data` field.
    pub data: serde_json::Value,
    /// Optional key for duplicate detection.
    pub idempotency_key: Option<IdempotencyKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> UsageEvent {
        UsageEvent {
            session_id: "session_123".into(),
            query: "Test query".into(),
            model_name: "gpt-4o-mini".into(),
            response_time_ms: 1000,
            estimated_tokens: 100,
            success: true,
            user_agent: None,
        }
    }

    #[test]
    fn counts_may_be_written_as_whole_floats_but_not_as_fractions_or_negatives() {
        let parse = |tokens: &str| {
            serde_json::from_str::<UsageEvent>(&format!(
                r#"{{"session_id":"s","query":"q","model_name":"m","response_time_ms":1000.0,"estimated_tokens":{tokens},"success":true}}"#
            ))
            .map(|event| (event.response_time_ms, event.estimated_tokens))
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse("100"), Ok((1000, 100)));
        assert_eq!(parse("100.0"), Ok((1000, 100)));
        assert_eq!(parse("1e3"), Ok((1000, 1000)));
        for refused in ["100.5", "-1", "-1.0", "1e300", "\"100\"", "null"] {
            let error = parse(refused).expect_err(refused);
            assert!(
                error.contains("a whole number, 0 or more"),
                "{refused}: {error}"
            );
        }
    }

    #[test]
    fn a_complete_usage_event_is_valid() {
        assert_eq!(usage().validate(), Ok(()));
    }

    #[test]
    fn blank_or_oversized_identifiers_are_refused_with_the_field_named() {
        let mut event = usage();
        event.session_id = "  ".into();
        assert_eq!(
            event.validate().map_err(|e| e.field),
            Err("session_id".into())
        );

        let mut event = usage();
        event.model_name = "m".repeat(257);
        assert_eq!(
            event.validate().map_err(|e| e.field),
            Err("model_name".into())
        );

        let mut event = usage();
        event.session_id = "a\nb".into();
        assert!(event.validate().is_err());
    }

    #[test]
    fn event_types_are_dot_separated_words() {
        for good in ["usage.tracked", "alert.fired", "a", "x-y_z.1"] {
            assert!(EventType::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "a..b", "a.", "with space", "é", &"a".repeat(129)] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        for bad in ["", "has space", "tab\t", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        let key = IdempotencyKey::parse("batch").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.for_item(2).as_str(), "batch #2");
        assert_ne!(
            key.for_item(0).as_str(),
            IdempotencyKey::parse("batch#0")
                .map(|k| k.0)
                .unwrap_or_default()
        );
        let usage = EventType::usage_tracked();
        let alert = EventType::parse("alert.fired").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(key.scoped(&usage), key.scoped(&alert));
    }
}

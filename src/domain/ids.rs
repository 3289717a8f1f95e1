//! Prefixed identifiers (`evt_…`, `dlv_…`, `ep_…`).
//!
//! New ids are UUIDv7, so they sort by creation time, which keeps B-tree inserts append-only and
//! makes "newest first" listings cheap.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An id string did not have the expected prefix or shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{value}` is not a valid {kind} id (expected `{prefix}_` followed by letters, digits or `_`)"
)]
pub struct IdError {
    kind: &'static str,
    prefix: &'static str,
    value: String,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, Uuid::now_v7().simple()))
            }

            /// Parses an id received from outside (CLI argument, URL path).
            pub fn parse(value: &str) -> Result<Self, IdError> {
                let valid = value
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| {
                        !rest.is_empty()
                            && rest.len() <= 64
                            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                if valid {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: value.chars().take(80).collect() })
                }
            }

            /// Wraps an id read back from our own database, which only ever holds valid ids.
            pub(crate) fn from_trusted(value: String) -> Self {
                Self(value)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[A-Za-z0-9_]{1,64}$")))
                    .description(Some(concat!("A", " ", $kind, " id: `", $prefix, "_` and up to 64 letters, digits or `_`.")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

prefixed_id!(
    /// Identifies one ingested event. It is also the `webhook-id` of every delivery of the event,
    /// so a receiver sees the same id on every attempt and can drop repeats.
    EventId,
    "evt",
    "event"
);
prefixed_id!(
    /// Identifies one delivery: one event to one endpoint, with its own retry budget.
    DeliveryId,
    "dlv",
    "delivery"
);
prefixed_id!(
    /// Identifies a destination endpoint.
    EndpointId,
    "ep",
    "endpoint"
);

impl EndpointId {
    /// The endpoint configured by `ZAPIER_WEBHOOK_URL`.
    pub fn default_endpoint() -> Self {
        Self("ep_default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_sort_by_creation() {
        let first = EventId::generate();
        let second = EventId::generate();
        assert_eq!(EventId::parse(first.as_str()), Ok(first.clone()));
        assert!(first < second);
        assert!(first.as_str().starts_with("evt_"));
    }

    #[test]
    fn ids_with_wrong_prefix_or_characters_are_refused() {
        for bad in [
            "", "evt_", "dlv_0189", "evt_a-b", "evt_a b", "evt", "EVT_abc",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(DeliveryId::parse("evt_0189").is_err());
        assert!(EndpointId::parse("ep_default").is_ok());
    }
}

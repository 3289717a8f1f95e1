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
                Self(format!("{}_{}", $prefix, NOW.v7(now_ms()).simple()))
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

impl DeliveryId {
    /// A fresh id whose UUIDv7 timestamp is `at_ms`, the moment its event was accepted (the
    /// delivery's `created_at`), rather than the moment the id is made. So a delivery's id sorts
    /// by, and its first 12 hex digits spell, its `created_at` on every clock (a test's manual
    /// clock included): a time range is a range of the primary key. Ids made one after another
    /// for the same millisecond sort in the order they were made; when makes for different
    /// milliseconds interleave, the order within a millisecond is arbitrary (paging is still
    /// exact: ids are unique and totally ordered).
    pub fn generate_at(at_ms: i64) -> Self {
        let ms = u64::try_from(at_ms).unwrap_or(0);
        Self(format!("{}_{}", Self::PREFIX, AT.v7(ms).simple()))
    }
}

/// The system clock, unix ms, for ids made now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A UUIDv7 sequence: a counter reseeded at random for each new millisecond and counting up
/// within one (the layout of RFC 9562's method 1, as the `uuid` crate's own context), drawing
/// its random bits from the thread's generator: the `uuid` crate asks the kernel (`getrandom`)
/// for every id, one system call per event and per delivery. Delivery ids keep the time they
/// are given (the crate's context keeps the latest one seen, which would stamp an event
/// accepted earlier with a later time).
struct Sequence {
    /// The last millisecond used and its counter.
    last: std::sync::Mutex<(u64, u64)>,
    /// Whether a time earlier than the last one is read as the last one, so that ids never
    /// sort before those made earlier if the system clock steps back (as the crate does).
    keeps_latest: bool,
}

/// The sequence behind `generate` (every kind, the system clock).
static NOW: Sequence = Sequence {
    last: std::sync::Mutex::new((0, 0)),
    keeps_latest: true,
};

/// The sequence behind [`DeliveryId::generate_at`] (times given by the caller, kept as given).
static AT: Sequence = Sequence {
    last: std::sync::Mutex::new((0, 0)),
    keeps_latest: false,
};

/// The counter's width: 42 bits (the 12 bits of `rand_a` and the top 30 of `rand_b`), seeded
/// below 2^41 so it cannot wrap within a millisecond.
const COUNTER_BITS: u32 = 42;

impl Sequence {
    /// The next UUIDv7 for `ms`: timestamp, counter, then 32 random bits.
    fn v7(&self, ms: u64) -> Uuid {
        let (ms, counter) = {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ms = if self.keeps_latest {
                ms.max(last.0)
            } else {
                ms
            };
            *last = if last.0 == ms {
                (ms, last.1 + 1)
            } else {
                (ms, rand::random::<u64>() >> (64 - COUNTER_BITS + 1))
            };
            *last
        };
        pack(ms, counter, rand::random())
    }
}

/// A UUIDv7 of `ms`, the 42-bit `counter` and 32 `random` bits, in that order of significance.
fn pack(ms: u64, counter: u64, random: u32) -> Uuid {
    let rand_a = (counter >> 30) & 0xfff;
    let rand_b = ((counter & 0x3fff_ffff) << 32) | u64::from(random);
    let mut bytes = [0u8; 10];
    bytes[0] = (rand_a >> 8) as u8;
    bytes[1] = rand_a as u8;
    bytes[2..].copy_from_slice(&rand_b.to_be_bytes());
    // Sets the version and variant bits, over the top of `bytes[0]` and `bytes[2]`, where the
    // counter leaves zeros.
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid()
}

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
    fn a_delivery_id_spells_its_time_and_sorts_within_a_millisecond() {
        let at = 1_800_000_000_123_i64;
        let ids: Vec<DeliveryId> = (0..50).map(|_| DeliveryId::generate_at(at)).collect();
        for id in &ids {
            assert_eq!(&id.as_str()[4..16], format!("{at:012x}"), "{id}");
            assert_eq!(DeliveryId::parse(id.as_str()), Ok(id.clone()));
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // An earlier time after a later one keeps its own timestamp.
        let earlier = DeliveryId::generate_at(at - 5_000);
        assert_eq!(&earlier.as_str()[4..16], format!("{:012x}", at - 5_000));
        assert!(earlier < ids[0]);
    }

    #[test]
    fn packed_ids_are_version_7_and_sort_by_time_then_counter() {
        let ms = 1_800_000_000_123;
        let id = pack(ms, 5, u32::MAX);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (seconds, nanos) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
        assert_eq!(seconds * 1000 + u64::from(nanos / 1_000_000), ms);
        // The counter carries from `rand_b` into `rand_a`, and the random bits rank last.
        let below = pack(ms, (1 << 30) - 1, u32::MAX);
        let above = pack(ms, 1 << 30, 0);
        assert!(below < above, "{below} {above}");
        let top = pack(ms, (1 << COUNTER_BITS) - 1, u32::MAX);
        assert!(top < pack(ms + 1, 0, 0));
        assert!(pack(ms, 6, 0) > id);
    }

    #[test]
    fn ids_made_now_keep_sorting_if_the_clock_steps_back() {
        let sequence = Sequence {
            last: std::sync::Mutex::new((0, 0)),
            keeps_latest: true,
        };
        let ms = 1_800_000_000_123;
        let first = sequence.v7(ms);
        let after_a_step_back = sequence.v7(ms - 1_000);
        assert!(first < after_a_step_back);
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

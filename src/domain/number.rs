//! Whole numbers in JSON bodies. JSON has one number type, and JSON Schema counts `1000.0` as
//! an integer, so a gateway that measures milliseconds in floating point and sends `1000.0`
//! sends a valid count. serde's integers refuse it; these accept it and refuse fractions.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

/// 2^53 - 1: the largest whole number every JSON reader (JavaScript's included) keeps exactly.
pub const MAX_EXACT: u64 = 9_007_199_254_740_991;

/// A whole number of 0 or more, written `1000` or `1000.0`.
pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
    Whole::deserialize(deserializer).and_then(|Whole(value)| {
        T::try_from(value).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Unsigned(value), &"a smaller number")
        })
    })
}

/// [`whole`] for an optional field: `null` is `None`.
pub fn optional_whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<Whole>::deserialize(deserializer)?
        .map(|Whole(value)| {
            T::try_from(value).map_err(|_| {
                de::Error::invalid_value(de::Unexpected::Unsigned(value), &"a smaller number")
            })
        })
        .transpose()
}

struct Whole(u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WholeVisitor).map(Whole)
    }
}

struct WholeVisitor;

impl de::Visitor<'_> for WholeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number, 0 or more")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
        // Beyond 2^53 a float no longer holds every whole number exactly.
        if value.fract() == 0.0 && (0.0..=MAX_EXACT as f64).contains(&value) {
            Ok(value as u64)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(value), &self))
        }
    }
}

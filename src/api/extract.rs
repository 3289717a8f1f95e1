//! Request bodies: JSON only, within the size limit, with errors that name the field.

use axum::{
    body::Bytes,
    extract::{FromRequestParts, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{ApiError, ErrorCode};

/// Checks the content type and that the body arrived whole and within the limit.
pub fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json"
        && !(essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "expected Content-Type: application/json, got {}",
                if content_type.is_empty() {
                    "none"
                } else {
                    content_type
                }
            ),
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                "the body exceeds the size limit (HOOKRELAY_MAX_BODY_BYTES)",
            )
        } else {
            ApiError::bad_request(ErrorCode::UnreadableBody, rejection.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            ErrorCode::EmptyBody,
            "the body is empty",
        ));
    }
    Ok(body)
}

/// A query string, parsed like axum's `Query` but with the parameter at fault named in the
/// error, in plain words (`days: must be a whole number, 0 or more (got the string "abc")`).
/// A page size within `max`: a larger one is refused, as the OpenAPI document states, rather
/// than quietly cut.
pub fn page_limit(limit: usize, max: usize) -> Result<usize, ApiError> {
    if limit > max {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("limit: must be at most {max} (got {limit})"),
        ));
    }
    Ok(limit)
}

pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(QueryParams)
            .map_err(|error| {
                let (path, message) =
                    in_plain_words(&error.path().to_string(), &error.inner().to_string());
                let detail = if path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                };
                ApiError::bad_request(ErrorCode::InvalidQuery, detail)
            })
    }
}

/// A struct read from a JSON object only. serde's derived structs also accept an array of
/// their fields in order (`[null, null]` is a valid `EndpointChanges`), a form no client
/// means and the API does not document; this refuses it.
#[repr(transparent)]
pub struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(deserializer)).map(Object)
    }
}

/// Passes a struct request on as a map request, so a JSON array is refused.
struct MapOnly<D>(D);

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Deserializes with the path of the offending field in the error.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: serde_json::Error| {
        ApiError::bad_request(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    };
    // The common case, a valid body, without tracking the path: that allocates a string for
    // every field name read (7 allocations for a usage event). Only a refused body is read
    // again, for the path its error names.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let (path, message) = in_plain_words(&path, &inner.to_string());
                let field = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidField,
                    format!("{field}{message}"),
                )
            }
            _ => malformed(inner),
        }
    })?;
    deserializer.end().map_err(malformed)?;
    Ok(value)
}

/// serde's message for a field, said for people (`response_time_ms: must be 0 or more (got
/// -1)`, not `invalid value: integer `-1`, expected u64 at line 1 column 78`). A missing field
/// is named in the path. Messages of our own types' checks pass through.
fn in_plain_words(path: &str, message: &str) -> (String, String) {
    let message = message
        .rsplit_once(" at line ")
        .map_or(message, |(text, _)| text);
    let quoted = |text: &str| text.split('`').nth(1).map(str::to_owned);
    if let Some(field) = message.strip_prefix("missing field ").and_then(quoted) {
        let path = if path == "." {
            field
        } else {
            format!("{path}.{field}")
        };
        return (path, "is required".to_owned());
    }
    if let Some(field) = message.strip_prefix("unknown field ").and_then(quoted) {
        let path = if path == "." {
            field
        } else {
            format!("{path}.{field}")
        };
        return (path, "is not a field of this object".to_owned());
    }
    let expectation = |expected: &str| match expected.trim() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        other if other.starts_with("struct ") => "an object".to_owned(),
        other => other.to_owned(),
    };
    let found = |found: &str| {
        let found = found.trim();
        match found.split_once(' ') {
            Some(("string", value)) => format!("the string {value}"),
            // `integer `-1``, `floating point `1.5``: the value is the quoted part.
            Some((_, value)) => value.split('`').nth(1).unwrap_or(value).to_owned(),
            None if found == "sequence" => "an array".to_owned(),
            None if found == "map" => "an object".to_owned(),
            None => found.to_owned(),
        }
    };
    if let Some((what, expected)) = message
        .strip_prefix("invalid value: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let expected = expectation(expected);
        let message = if expected == "a whole number, 0 or more" {
            format!("must be 0 or more (got {})", found(what))
        } else {
            format!("must be {expected} (got {})", found(what))
        };
        return (path.to_owned(), message);
    }
    if let Some((what, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return (
            path.to_owned(),
            format!("must be {} (got {})", expectation(expected), found(what)),
        );
    }
    (path.to_owned(), message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::in_plain_words;

    #[test]
    fn serdes_messages_are_said_for_people() {
        let cases = [
            (
                "response_time_ms",
                "invalid value: integer `-1`, expected u64 at line 1 column 78",
                ("response_time_ms", "must be 0 or more (got -1)"),
            ),
            (
                "estimated_tokens",
                "invalid type: string \"many\", expected u64 at line 1 column 9",
                (
                    "estimated_tokens",
                    "must be a whole number, 0 or more (got the string \"many\")",
                ),
            ),
            (
                "success",
                "invalid type: integer `1`, expected a boolean at line 1 column 3",
                ("success", "must be true or false (got 1)"),
            ),
            (
                ".",
                "missing field `model_name` at line 1 column 80",
                ("model_name", "is required"),
            ),
            ("[2]", "missing field `query`", ("[2].query", "is required")),
            (
                "data",
                "invalid type: sequence, expected struct UsageEvent",
                ("data", "must be an object (got an array)"),
            ),
            (
                "session_id",
                "must not be empty",
                ("session_id", "must not be empty"),
            ),
        ];
        for (path, message, (want_path, want)) in cases {
            let (got_path, got) = in_plain_words(path, message);
            assert_eq!(
                (got_path.as_str(), got.as_str()),
                (want_path, want),
                "{message}"
            );
        }
    }
}

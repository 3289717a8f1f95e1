//! The JSON that leaves hookrelay. Usage events keep the shape the original gateway sent, so
//! existing Zaps keep working; the payload is serialized once, at ingest, and signed as stored.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    config::QueryMode,
    domain::{EventId, EventType, UsageEvent, rfc3339},
};

/// Characters of the prompt kept in `query.summary` by default.
pub const SUMMARY_CHARS: usize = 50;

/// The keyword class of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Reviewing or improving existing code.
    CodeReview,
    /// Finding and fixing faults.
    Debugging,
    /// System and software design.
    Architecture,
    /// Anything else.
    General,
}

/// Keyword lists, checked in this order; the first class with a matching word wins. Phrases
/// match as consecutive whole words, so "debugger" is not "debug" and "prefix" is not "fix".
const KEYWORDS: &[(Category, &[&str])] = &[
    (
        Category::CodeReview,
        &[
            "review",
            "code review",
            "refactor",
            "refactoring",
            "lint",
            "readability",
            "best practices",
            "clean up",
            "pull request",
        ],
    ),
    (
        Category::Debugging,
        &[
            "debug",
            "debugging",
            "bug",
            "bugs",
            "error",
            "errors",
            "exception",
            "traceback",
            "stack trace",
            "crash",
            "crashes",
            "fix",
            "broken",
            "failing",
            "segfault",
            "panic",
        ],
    ),
    (
        Category::Architecture,
        &[
            "architecture",
            "design",
            "system design",
            "scalability",
            "scale",
            "microservice",
            "microservices",
            "pattern",
            "patterns",
            "infrastructure",
            "database schema",
        ],
    ),
];

/// A class's keyword phrases, each split into its words.
type Phrases = Vec<(Category, Vec<Vec<&'static str>>)>;

/// [`KEYWORDS`] with each phrase split into its words, once.
static PHRASES: std::sync::LazyLock<Phrases> = std::sync::LazyLock::new(|| {
    KEYWORDS
        .iter()
        .map(|(category, keywords)| {
            let phrases = keywords.iter().map(|k| k.split(' ').collect()).collect();
            (*category, phrases)
        })
        .collect()
});

/// Classifies a prompt by whole-word keywords.
pub fn categorize(query: &str) -> Category {
    let lowered = query.to_lowercase();
    let words: Vec<&str> = lowered
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    // This runs for every usage event: the phrases are split once (splitting them per call
    // was 40% of what ingest cost outside the database).
    for (category, phrases) in PHRASES.iter() {
        for phrase in phrases {
            if words
                .windows(phrase.len())
                .any(|window| window == phrase.as_slice())
            {
                return *category;
            }
        }
    }
    Category::General
}

/// 1 to 3, from the prompt's length and the model's response time:
/// over 200 characters or 3 s is 3; over 100 characters or 1 s is 2; else 1.
pub fn estimate_complexity(query: &str, response_time_ms: u64) -> u8 {
    let chars = query.chars().count();
    if chars > 200 || response_time_ms > 3000 {
        3
    } else if chars > 100 || response_time_ms > 1000 {
        2
    } else {
        1
    }
}

fn summarize(query: &str, mode: QueryMode) -> Option<String> {
    match mode {
        QueryMode::Summary => {
            let mut summary: String = query.chars().take(SUMMARY_CHARS).collect();
            if query.chars().nth(SUMMARY_CHARS).is_some() {
                summary.push_str("...");
            }
            Some(summary)
        }
        QueryMode::Full => Some(query.to_owned()),
        QueryMode::Hash => Some(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(query.as_bytes()))
        )),
        QueryMode::Omit => None,
    }
}

#[derive(Serialize)]
struct QueryPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    category: Category,
    estimated_complexity: u8,
}

#[derive(Serialize)]
struct ResponsePart<'a> {
    model_used: &'a str,
    response_time_ms: u64,
    estimated_tokens: u64,
    success: bool,
}

#[derive(Serialize)]
struct UsagePayload<'a> {
    event_id: &'a EventId,
    event_type: &'a str,
    timestamp: String,
    session_id: &'a str,
    query: QueryPart,
    response: ResponsePart<'a>,
    user_agent: Option<&'a str>,
}

/// The body delivered for a usage event.
pub fn usage_payload(
    id: &EventId,
    created_at_ms: i64,
    event: &UsageEvent,
    mode: QueryMode,
) -> Vec<u8> {
    let payload = UsagePayload {
        event_id: id,
        event_type: EventType::USAGE_TRACKED,
        timestamp: rfc3339(created_at_ms),
        session_id: &event.session_id,
        query: QueryPart {
            summary: summarize(&event.query, mode),
            category: categorize(&event.query),
            estimated_complexity: estimate_complexity(&event.query, event.response_time_ms),
        },
        response: ResponsePart {
            model_used: &event.model_name,
            response_time_ms: event.response_time_ms,
            estimated_tokens: event.estimated_tokens,
            success: event.success,
        },
        user_agent: event.user_agent.as_deref(),
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

#[derive(Serialize)]
struct GenericPayload<'a> {
    event_id: &'a EventId,
    event_type: &'a EventType,
    timestamp: String,
    data: &'a serde_json::Value,
}

/// The body delivered for any other event: `{event_id, event_type, timestamp, data}`.
pub fn generic_payload(
    id: &EventId,
    created_at_ms: i64,
    event_type: &EventType,
    data: &serde_json::Value,
) -> Vec<u8> {
    let payload = GenericPayload {
        event_id: id,
        event_type,
        timestamp: rfc3339(created_at_ms),
        data,
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn categories_match_whole_words_only() {
        let table = [
            ("Please review my pull request", Category::CodeReview),
            ("Can you refactor this function?", Category::CodeReview),
            ("Why do I get this error?", Category::Debugging),
            ("Stack trace attached, it crashes", Category::Debugging),
            (
                "How should I design the system for scale",
                Category::Architecture,
            ),
            ("Microservices or a monolith?", Category::Architecture),
            ("What is the capital of France?", Category::General),
            // Substrings are not words.
            ("Add a prefix to every line", Category::General),
            ("The debugger window is blue", Category::General),
            ("Terrorism statistics", Category::General),
            ("Write a haiku about designers", Category::General),
        ];
        for (query, expected) in table {
            assert_eq!(categorize(query), expected, "{query}");
        }
    }

    #[test]
    fn complexity_grows_with_length_and_response_time() {
        let table = [
            ("short", 100, 1),
            (&"x".repeat(100)[..], 1000, 1),
            (&"x".repeat(101)[..], 0, 2),
            ("short", 1001, 2),
            (&"x".repeat(200)[..], 0, 2),
            (&"x".repeat(201)[..], 0, 3),
            ("short", 3001, 3),
        ];
        for (query, ms, expected) in table {
            assert_eq!(
                estimate_complexity(query, ms),
                expected,
                "{} chars, {ms} ms",
                query.len()
            );
        }
    }

    fn usage(query: &str) -> UsageEvent {
        UsageEvent {
            session_id: "session_123".into(),
            query: query.into(),
            model_name: "gpt-4o-mini".into(),
            response_time_ms: 1500,
            estimated_tokens: 100,
            success: true,
            user_agent: Some("gateway/1.0".into()),
        }
    }

    #[test]
    fn usage_payload_keeps_the_original_gateway_shape() {
        let id = EventId::parse("evt_0193").unwrap_or_else(|e| panic!("{e}"));
        let query = "Why does my Rust code panic when I unwrap a None value in production?";
        let body = usage_payload(&id, 1_700_000_000_123, &usage(query), QueryMode::Summary);
        let value: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            value,
            json!({
                "event_id": "evt_0193",
                "event_type": "usage.tracked",
                "timestamp": "2023-11-14T22:13:20.123Z",
                "session_id": "session_123",
                "query": {
                    "summary": "Why does my Rust code panic when I unwrap a None v...",
                    "category": "debugging",
                    "estimated_complexity": 2
                },
                "response": {
                    "model_used": "gpt-4o-mini",
                    "response_time_ms": 1500,
                    "estimated_tokens": 100,
                    "success": true
                },
                "user_agent": "gateway/1.0"
            })
        );
    }

    #[test]
    fn query_modes_control_what_leaves() {
        let id = EventId::parse("evt_1").unwrap_or_else(|e| panic!("{e}"));
        let event = usage("secret plan: é".repeat(10).as_str());
        let summary = |mode| {
            let body = usage_payload(&id, 0, &event, mode);
            serde_json::from_slice::<Value>(&body).unwrap_or_else(|e| panic!("{e}"))["query"]["summary"].clone()
        };
        assert_eq!(summary(QueryMode::Full), json!(event.query));
        assert_eq!(summary(QueryMode::Omit), Value::Null);
        let hashed = summary(QueryMode::Hash);
        assert!(
            hashed
                .as_str()
                .is_some_and(|h| h.starts_with("sha256:") && h.len() == 71)
        );
        let short = summary(QueryMode::Summary);
        assert_eq!(
            short.as_str().map(|s| s.chars().count()),
            Some(SUMMARY_CHARS + 3)
        );
        // A prompt of exactly 50 characters is not marked as cut.
        let exact = usage(&"a".repeat(50));
        let body = usage_payload(&id, 0, &exact, QueryMode::Summary);
        let value: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["query"]["summary"], json!("a".repeat(50)));
    }
}

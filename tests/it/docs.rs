//! What README promises, checked against what hookrelay does.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, TestReceiver};

const README: &str = include_str!("../../README.md");

/// The first ```json block after `heading`.
fn json_after(heading: &str) -> Value {
    let section = README
        .split_once(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}`"))
        .1;
    let block = section
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no json block after `{heading}`"))
        .0;
    // The example elides the id and time with `…`: make it parse.
    let block = block.replace("\"evt_…\"", "\"evt\"");
    serde_json::from_str(&block).unwrap_or_else(|e| panic!("README's example: {e}\n{block}"))
}

#[tokio::test]
async fn the_delivered_payload_is_the_one_readme_shows() {
    let example = json_after("## What is delivered");
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    // The event the example describes.
    let event = serde_json::json!({
        "session_id": example["session_id"],
        "query": example["query"]["summary"],
        "model_name": example["response"]["model_used"],
        "response_time_ms": example["response"]["response_time_ms"],
        "estimated_tokens": example["response"]["estimated_tokens"],
        "success": example["response"]["success"],
    });
    let response = app
        .http
        .post(app.url("/api/webhook/usage"))
        .json(&event)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    let delivered = receiver.wait_for(1, Duration::from_secs(10)).await[0].json();
    for field in [
        "event_type",
        "session_id",
        "query",
        "response",
        "user_agent",
    ] {
        assert_eq!(delivered[field], example[field], "README's `{field}`");
    }
}

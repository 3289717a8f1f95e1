//! The API as a contract: the OpenAPI document the server serves is the committed
//! `openapi.json`, it names every route the server answers, and the inputs schemathesis found
//! the server answering outside the document are answered as documented.

use serde_json::{Value, json};

use crate::helpers::{TestApp, usage_event};

const COMMITTED: &str = include_str!("../../openapi.json");
const BLESS: &str = "HOOKRELAY_BLESS_OPENAPI";

async fn served_document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "served as JSON"
    );
    response.json().await.expect("JSON document")
}

/// The default configuration's document; what clients are generated from.
async fn default_app() -> TestApp {
    TestApp::spawn("http://127.0.0.1:9/hook", &[]).await
}

#[tokio::test]
async fn the_served_document_is_the_committed_openapi_json() {
    let app = default_app().await;
    let served = served_document(&app).await;
    let committed: Value = serde_json::from_str(COMMITTED).expect("openapi.json is JSON");
    if served != committed {
        if std::env::var_os(BLESS).is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
            let text = serde_json::to_string_pretty(&served).expect("serialize") + "\n";
            std::fs::write(path, text).expect("write openapi.json");
            return;
        }
        panic!(
            "openapi.json differs from the document the server serves; review the change, then \
             run `{BLESS}=1 cargo test --test it openapi` to update it and regenerate the clients \
             (clients/typescript: npm run generate)"
        );
    }
    assert_eq!(served["openapi"], "3.1.0");
}

#[test]
fn routes_are_registered_only_with_their_documentation() {
    // `routes!(handler)` registers a handler and its `#[utoipa::path]` together; a plain
    // `.route(…)` would answer requests the document does not mention.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    for entry in std::fs::read_dir(dir).expect("src/api") {
        let path = entry.expect("entry").path();
        let source = std::fs::read_to_string(&path).expect("read");
        assert!(
            !source.contains(".route(\"") && !source.contains(".route_service("),
            "{} registers a route without its documentation: use routes!(handler)",
            path.display()
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_answered_by_a_route() {
    let app = default_app().await;
    let document = served_document(&app).await;
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "only {} paths", paths.len());
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "dlv_0")
            .replace("/endpoints/dlv_0", "/endpoints/ep_0");
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| r.keys().any(|status| status.starts_with('2'))),
                "{method} {path} documents no success"
            );
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = app
                .http
                .request(method.clone(), app.url(&concrete))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["detail"] != "no such route",
                "{method} {concrete}: {status} {body}"
            );
            assert!(
                operation["responses"].get(status.to_string()).is_some(),
                "{method} {concrete} answered {status}, which its documentation does not list: {body}"
            );
        }
    }
    assert!(operations >= 25, "only {operations} operations");
}

#[tokio::test]
async fn error_codes_in_the_document_are_the_ones_answered() {
    let app = default_app().await;
    let document = served_document(&app).await;
    let codes = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .clone();
    let answered = app.post_raw("/api/webhook/usage", "{").await;
    let body: Value = answered.json().await.expect("error body");
    assert!(codes.contains(&body["code"]), "{body} not among {codes:?}");
    let unknown = app
        .http
        .get(app.url("/nowhere"))
        .send()
        .await
        .expect("request");
    let body: Value = unknown.json().await.expect("error body");
    assert!(codes.contains(&body["code"]), "{body} not among {codes:?}");
    // A known path with a method it does not take: 405 with a JSON body and `Allow`.
    let wrong_method = app
        .http
        .delete(app.url("/api/webhook/usage"))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_method.status(), 405);
    let allow = wrong_method.headers().get("allow").cloned();
    let body: Value = wrong_method.json().await.expect("error body");
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    assert!(codes.contains(&body["code"]), "{body} not among {codes:?}");
    assert!(
        allow.is_some_and(|allow| allow.to_str().is_ok_and(|a| a.contains("POST"))),
        "Allow names POST"
    );
}

// What schemathesis found (each was answered outside the document before the fix).

#[tokio::test]
async fn a_body_object_sent_as_an_array_of_its_fields_is_refused() {
    let app = default_app().await;
    // serde's derived structs accept `[field, field, …]`: `[null, null]` was a valid change.
    let created = app
        .post_json(
            "/api/v1/endpoints",
            &json!({"url": "http://127.0.0.1:9/other"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("json");
    let id = created["endpoint"]["id"].as_str().expect("id");
    let patched = app
        .http
        .patch(app.url(&format!("/api/v1/endpoints/{id}")))
        .header("content-type", "application/json")
        .body("[null, null]")
        .send()
        .await
        .expect("request");
    assert_eq!(patched.status(), 422);
    let body: Value = patched.json().await.expect("json");
    assert_eq!(body["code"], "invalid_field");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("object")),
        "{body}"
    );

    let fields_in_order = json!([["session_123", "q", "gpt-4o-mini", 1000, 100, true]]);
    let batch = app.post_json("/api/webhook/usage", &fields_in_order).await;
    assert_eq!(batch.status(), 422);
    let body: Value = batch.json().await.expect("json");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("[0]")),
        "{body}"
    );
    assert_eq!(
        app.relay.counts().await.expect("counts").pending,
        0,
        "nothing stored"
    );
}

#[tokio::test]
async fn a_count_written_as_a_whole_float_is_accepted_and_a_fraction_is_not() {
    let app = default_app().await;
    let mut event = usage_event("floats");
    event["response_time_ms"] = json!(1234.0);
    event["estimated_tokens"] = json!(1e2);
    let accepted = app.post_json("/api/webhook/usage", &event).await;
    assert_eq!(accepted.status(), 202);
    let stats: Value = app
        .http
        .get(app.url("/api/v1/sessions/floats"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["estimated_tokens"], 100, "{stats}");
    assert_eq!(stats["total_response_time_ms"], 1234, "{stats}");

    event["response_time_ms"] = json!(1234.5);
    let refused = app.post_json("/api/webhook/usage", &event).await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        body["detail"], "response_time_ms: must be a whole number, 0 or more (got 1234.5)",
        "{body}"
    );

    event["response_time_ms"] = json!(9_007_199_254_740_992_u64);
    let too_large = app.post_json("/api/webhook/usage", &event).await;
    assert_eq!(
        too_large.status(),
        422,
        "beyond 2^53 - 1, the document's maximum"
    );
}

#[tokio::test]
async fn a_page_larger_than_documented_is_refused_not_cut() {
    let app = default_app().await;
    for (path, max) in [
        ("/api/v1/dlq", 10_000),
        ("/api/v1/sessions", 1000),
        ("/api/v1/alerts", 1000),
    ] {
        let at_max = app
            .http
            .get(app.url(&format!("{path}?limit={max}")))
            .send()
            .await
            .expect("request");
        assert_eq!(at_max.status(), 200, "{path}");
        let over = app
            .http
            .get(app.url(&format!("{path}?limit={}", max + 1)))
            .send()
            .await
            .expect("request");
        assert_eq!(over.status(), 400, "{path}");
        let body: Value = over.json().await.expect("json");
        assert_eq!(body["code"], "invalid_query");
    }
}

#[tokio::test]
async fn changing_what_the_configuration_owns_is_a_conflict() {
    let app = default_app().await;
    let rotated = app
        .post_json("/api/v1/endpoints/ep_default/rotate-secret", &json!({}))
        .await;
    assert_eq!(rotated.status(), 409);
    let body: Value = rotated.json().await.expect("json");
    assert_eq!(body["code"], "managed_by_config");
    let moved = app
        .http
        .patch(app.url("/api/v1/endpoints/ep_default"))
        .json(&json!({"url": "http://127.0.0.1:9/elsewhere"}))
        .send()
        .await
        .expect("request");
    assert_eq!(moved.status(), 409);
    // Settings the configuration does not own can still change.
    let described = app
        .http
        .patch(app.url("/api/v1/endpoints/ep_default"))
        .json(&json!({"description": "Zapier"}))
        .send()
        .await
        .expect("request");
    assert_eq!(described.status(), 200);
}

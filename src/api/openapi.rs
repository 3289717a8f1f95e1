//! The OpenAPI 3.1 document: each handler's `#[utoipa::path]` describes its own request and
//! answers, and the routers add what their middleware answers (authentication, the ingest guard,
//! load shedding) to exactly the operations that middleware wraps, so the document says what the
//! server does rather than what someone remembered to write down.

use axum::{
    Extension,
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self, ContentBuilder, HeaderBuilder, ObjectBuilder, RefOr, ResponseBuilder,
        path::Operation,
        schema::Type,
        security::{
            ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
        },
    },
};

use super::ErrorBody;

/// The document's fixed parts; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay",
        description = "Durable, signed webhook delivery for LLM gateway usage events. Every error \
            answer is `{\"code\", \"detail\"}`; `code` is one of `ErrorCode` and is what clients \
            branch on.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "Posting events (the gateway's side)"),
        (name = "dlq", description = "The dead-letter queue"),
        (name = "endpoints", description = "Where events are delivered"),
        (name = "sessions", description = "Sessions and analytics"),
        (name = "monitoring", description = "Health, readiness, alerts, metrics"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Names of the security schemes.
pub const ADMIN: &str = "admin_token";
/// Standard Webhooks signing of ingest requests (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
pub const STANDARD_WEBHOOKS: &str = "standard_webhooks";
/// The guide's body signature (`X-Webhook-Signature`).
pub const BODY_SIGNATURE: &str = "body_signature";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some(
            "`Authorization: Bearer $HOOKRELAY_ADMIN_TOKEN`. Without a token configured, \
             management routes answer loopback clients only."
                .into(),
        );
        components.add_security_scheme(ADMIN, SecurityScheme::Http(admin));
        components.add_security_scheme(
            STANDARD_WEBHOOKS,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "Standard Webhooks, required when HOOKRELAY_INGEST_SECRET is set: `webhook-id` \
                 (unique per request; a reused one is refused), `webhook-timestamp` (unix seconds, \
                 within HOOKRELAY_SIGNATURE_TOLERANCE_SECONDS) and `webhook-signature: v1,<base64 \
                 HMAC-SHA256 of \"{id}.{timestamp}.{body}\">` (up to 8, space-separated).",
            ))),
        );
        components.add_security_scheme(
            BODY_SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Webhook-Signature",
                "The guide's scheme: `sha256=<hex HMAC of the raw body>` (header and hash set by \
                 WEBHOOK_SIGNATURE_HEADER and WEBHOOK_SIGNATURE_ALGORITHM). Replayable: refuse it \
                 with HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE=false.",
            ))),
        );
    }
}

/// An error answer: the `ApiError` body, naming the codes this status carries here, and the
/// headers that come with it.
pub fn error_response(description: &str, headers: &[(&str, &str)]) -> RefOr<openapi::Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(openapi::Ref::from_schema_name("ApiError")))
            .build(),
    );
    for (name, what) in headers {
        response = response.header(
            *name,
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .description(Some(*what))
                .build(),
        );
    }
    response.build().into()
}

/// Every operation in `openapi`.
fn operations(openapi: &mut openapi::OpenApi) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .filter_map(Option::as_mut)
    })
}

/// Adds responses to every operation that does not describe that status itself.
pub fn add_responses(
    openapi: &mut openapi::OpenApi,
    responses: &[(&str, RefOr<openapi::Response>)],
) {
    for operation in operations(openapi) {
        for (status, response) in responses {
            operation
                .responses
                .responses
                .entry((*status).to_owned())
                .or_insert_with(|| response.clone());
        }
    }
}

/// Sets who may call every operation in `openapi`: any one of `requirements`.
pub fn secure(openapi: &mut openapi::OpenApi, requirements: &[SecurityRequirement]) {
    for operation in operations(openapi) {
        operation.security = Some(requirements.to_vec());
    }
}

/// `Retry-After` on an answer that asks the client to come back.
pub const RETRY_AFTER: (&str, &str) = ("Retry-After", "Seconds to wait before retrying");

/// What every route can answer, whatever its handler does: the request-level limits.
pub fn shared_responses() -> Vec<(&'static str, RefOr<openapi::Response>)> {
    vec![
        (
            "408",
            error_response(
                "`request_timeout`: the request took longer than HOOKRELAY_REQUEST_TIMEOUT_SECONDS",
                &[],
            ),
        ),
        (
            "503",
            error_response(
                "`overloaded`: too many connections or requests in progress; \
                 `storage_unavailable`: the database failed and nothing was stored",
                &[RETRY_AFTER],
            ),
        ),
    ]
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn serve_document(Extension(document): Extension<Bytes>) -> Response {
    ([(CONTENT_TYPE, "application/json")], document).into_response()
}

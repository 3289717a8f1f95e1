//! The operator dashboard at `/dashboard`: server-rendered pages (maud) that answer "is it
//! working, and if not, where?" and act on the answer (enable an endpoint, replay a dead
//! letter) without the CLI.
//!
//! Access follows the management API's rule: with `HOOKRELAY_ADMIN_TOKEN`, a login form
//! exchanges the token for a signed, http-only, SameSite=Strict session cookie; without one,
//! clients on this host only. Every action is a POST carrying the session's CSRF token, and a
//! POST whose `Origin` is another site is refused before that.

mod chart;
mod endpoints;
mod events;
mod forms;
mod layout;
mod overview;
mod session;
mod sessions;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::html;

use self::{
    forms::Form,
    layout::{Chrome, Section},
    session::{Keys, Kind, Session},
};
use crate::{
    endpoints::EndpointError,
    guard::admin::{self, AdminRefusal},
    relay::Relay,
    store::StoreError,
};

/// What the dashboard keeps beside the relay.
struct Dashboard {
    keys: Keys,
}

/// The dashboard's routes, for the API router to merge.
pub fn router(relay: &Relay) -> Router<Relay> {
    let admin_token = relay
        .config()
        .server
        .admin_token
        .as_ref()
        .map(|t| t.expose().as_str());
    let dashboard = Arc::new(Dashboard {
        keys: Keys::new(admin_token),
    });
    let pages = Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/endpoints", get(endpoints::page))
        .route("/dashboard/endpoints/{id}/{action}", post(endpoints::act))
        .route("/dashboard/events", get(events::search))
        .route("/dashboard/deliveries/{id}", get(events::delivery))
        .route("/dashboard/dlq", get(events::dead_letters))
        .route("/dashboard/dlq/{action}", post(events::act_on_dead_letters))
        .route("/dashboard/sessions", get(sessions::page))
        .route_layer(middleware::from_fn_with_state(relay.clone(), access));
    Router::new()
        .route("/dashboard/login", get(login_form).post(login))
        .merge(pages)
        .layer(middleware::map_response(protective_headers))
        .layer(Extension(dashboard))
}

/// Who is looking, for handlers: the session and its CSRF token.
#[derive(Clone)]
pub(crate) struct Viewer {
    session: Session,
    csrf: String,
}

impl Viewer {
    fn chrome<'a>(
        &'a self,
        title: &'a str,
        section: Section,
        notice: Option<&'a str>,
    ) -> Chrome<'a> {
        Chrome {
            title,
            section,
            csrf: &self.csrf,
            logged_in: self.session.kind == Kind::Token,
            notice,
        }
    }

    /// Refuses a form without this session's CSRF token.
    fn check(&self, dashboard: &Dashboard, form: &Form) -> Result<(), Refusal> {
        let token = form.get("csrf").unwrap_or_default();
        if dashboard.keys.csrf_matches(&self.session, token) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "This form is missing its security token or it has expired. Go back, reload the page and try again.",
            ))
        }
    }
}

/// An answer other than the page: shown as a short page with the status.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = html! {
            p.error role="alert" { (self.message) }
            p { a href="/dashboard" { "Back to the dashboard" } }
        };
        (self.status, layout::bare(title, body)).into_response()
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "storage error while drawing the dashboard");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The event store is unavailable right now; nothing was changed. Try again shortly.",
        )
    }
}

impl From<EndpointError> for Refusal {
    fn from(error: EndpointError) -> Self {
        match error {
            EndpointError::Store(store) => store.into(),
            EndpointError::NotFound(id) => {
                Self::new(StatusCode::NOT_FOUND, format!("No endpoint {id}."))
            }
            EndpointError::Invalid(invalid) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, invalid.to_string())
            }
            EndpointError::ManagedByConfig(detail) => Self::new(StatusCode::CONFLICT, detail),
        }
    }
}

/// Whether cookies must be `Secure`: everywhere but plain HTTP to this host (browsers keep
/// secure cookies only over HTTPS, and on loopback there is no network to protect against).
fn secure_cookies(headers: &HeaderMap) -> bool {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    let loopback = name == "localhost"
        || name
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    forwarded_https || !loopback
}

/// `host[:port]` as a browser compares origins: lowercase, without the scheme's default port.
fn authority(scheme: &str, host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    host.strip_suffix(default)
        .map(str::to_owned)
        .unwrap_or(host)
}

/// A POST from another site (its `Origin` names another host, or the browser says
/// cross-site) is refused whatever it carries. Behind a trusted proxy the host the browser
/// used is in `X-Forwarded-Host` (and its scheme in `X-Forwarded-Proto`).
fn cross_site(method: &Method, headers: &HeaderMap, via_trusted_proxy: bool) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return false;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|site| site == "cross-site") {
        return true;
    }
    let Some(origin) = text("origin") else {
        // No Origin (an older browser, a script): the CSRF token decides.
        return false;
    };
    let (origin_scheme, origin_host) = origin.split_once("://").unwrap_or(("", origin));
    let forwarded = via_trusted_proxy
        .then(|| text("x-forwarded-host"))
        .flatten();
    let host = forwarded.or_else(|| text("host")).unwrap_or("");
    let scheme = via_trusted_proxy
        .then(|| text("x-forwarded-proto"))
        .flatten()
        .unwrap_or(origin_scheme);
    authority(origin_scheme, origin_host) != authority(scheme, host.split(',').next().unwrap_or(""))
}

/// Whether the TCP peer is one of `HOOKRELAY_TRUSTED_PROXIES`.
fn from_trusted_proxy(relay: &Relay, peer: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    relay
        .config()
        .ingest
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ip))
}

/// Lets a request in with a session (making one for a local client when no token is set),
/// or sends it to the login form.
async fn access(
    State(relay): State<Relay>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    if cross_site(
        request.method(),
        request.headers(),
        from_trusted_proxy(&relay, peer),
    ) {
        return Refusal::new(
            StatusCode::FORBIDDEN,
            "Actions from other sites are refused.",
        )
        .into_response();
    }
    let now_ms = relay.clock().now_ms();
    let existing = session::cookie_values(request.headers())
        .find_map(|value| dashboard.keys.check(value, now_ms));
    let mut issued = None;
    let session = match (&relay.config().server.admin_token, existing) {
        (Some(_), Some(session)) if session.kind == Kind::Token => session,
        (Some(_), _) => {
            if request.method() == Method::GET {
                let next_page = request
                    .uri()
                    .path_and_query()
                    .map_or("/dashboard", |p| p.as_str());
                let target = format!(
                    "/dashboard/login?next={}",
                    form_urlencoded::byte_serialize(next_page.as_bytes()).collect::<String>()
                );
                return Redirect::to(&target).into_response();
            }
            return Refusal::new(
                StatusCode::FORBIDDEN,
                "Your session has ended: log in again.",
            )
            .into_response();
        }
        (None, existing) => {
            if let Err(refusal) =
                admin::local_without_token(relay.config(), peer, request.headers())
            {
                return local_refusal(refusal).into_response();
            }
            match existing {
                Some(session) if session.kind == Kind::Local => session,
                _ => {
                    let (session, cookie) = dashboard.keys.issue(Kind::Local, now_ms);
                    issued = Some(cookie);
                    session
                }
            }
        }
    };
    let csrf = dashboard.keys.csrf(&session);
    let secure = secure_cookies(request.headers());
    request.extensions_mut().insert(Viewer { session, csrf });
    let mut response = next.run(request).await;
    if let Some(cookie) = issued
        && let Ok(value) = HeaderValue::from_str(&session::set_cookie(Some(&cookie), secure))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn local_refusal(refusal: AdminRefusal) -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        format!("{refusal}. Set HOOKRELAY_ADMIN_TOKEN to log in to the dashboard from elsewhere."),
    )
}

/// On every dashboard answer, the login form and refusals included: pages show data and
/// secrets shown once, so no cache keeps them; no other site may frame them; and they load
/// nothing from anywhere (styles are inline, there is no script).
async fn protective_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

/// Where to go after logging in: a dashboard page, never another site (and nothing a
/// `Location` header cannot carry).
fn after_login(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with("/dashboard") && path.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            path
        }
        _ => "/dashboard",
    }
}

async fn login_form(
    State(relay): State<Relay>,
    request_headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let query = Form::parse(query.unwrap_or_default().as_bytes());
    if relay.config().server.admin_token.is_none() {
        return Redirect::to("/dashboard").into_response();
    }
    let insecure = secure_cookies(&request_headers)
        && !request_headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    login_page(after_login(query.get("next")), None, insecure).into_response()
}

fn login_page(next: &str, error: Option<&str>, insecure: bool) -> (StatusCode, maud::Markup) {
    // A form login: 403, not 401 (which promises a WWW-Authenticate challenge).
    let status = if error.is_some() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    let body = html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        @if insecure {
            p.notice role="note" { "This page is not served over HTTPS: the session cookie is marked Secure, so the browser keeps it only over HTTPS (or on this host). Put hookrelay behind an HTTPS proxy that sets X-Forwarded-Proto." }
        }
        form method="post" action="/dashboard/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "Admin token (HOOKRELAY_ADMIN_TOKEN)" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            p { button.primary type="submit" { "Log in" } }
        }
    };
    (status, layout::bare("Log in", body))
}

async fn login(
    State(relay): State<Relay>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if cross_site(&Method::POST, &headers, from_trusted_proxy(&relay, peer)) {
        return Refusal::new(
            StatusCode::FORBIDDEN,
            "Logging in from another site is refused.",
        )
        .into_response();
    }
    let Some(token) = relay.config().server.admin_token.as_ref() else {
        return Redirect::to("/dashboard").into_response();
    };
    let form = Form::parse(&body);
    let next = after_login(form.get("next")).to_owned();
    if !admin::token_matches(token.expose(), form.get("token").unwrap_or_default()) {
        tracing::warn!("dashboard login with a wrong admin token");
        return login_page(&next, Some("That is not the admin token."), false).into_response();
    }
    let (_, cookie) = dashboard.keys.issue(Kind::Token, relay.clock().now_ms());
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(
        Some(&cookie),
        secure_cookies(&headers),
    )) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn logout(
    Extension(dashboard): Extension<Arc<Dashboard>>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    viewer.check(&dashboard, &Form::parse(&body))?;
    let mut response = Redirect::to("/dashboard/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(None, secure_cookies(&headers))) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn cookies_are_secure_except_over_plain_http_to_this_host() {
        assert!(!secure_cookies(&headers(&[("host", "127.0.0.1:8000")])));
        assert!(!secure_cookies(&headers(&[("host", "localhost:8000")])));
        assert!(!secure_cookies(&headers(&[("host", "[::1]:8000")])));
        assert!(secure_cookies(&headers(&[("host", "hooks.example.com")])));
        assert!(secure_cookies(&headers(&[("host", "10.0.0.5:8000")])));
        assert!(secure_cookies(&headers(&[
            ("host", "127.0.0.1:8000"),
            ("x-forwarded-proto", "https")
        ])));
    }

    #[test]
    fn posts_from_other_sites_are_told_apart() {
        let same = headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "http://127.0.0.1:8000"),
        ]);
        assert!(!cross_site(&Method::POST, &same, false));
        let other = headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "https://evil.example"),
        ]);
        assert!(cross_site(&Method::POST, &other, false));
        assert!(
            !cross_site(&Method::GET, &other, false),
            "reading is not acting"
        );
        let fetch = headers(&[("host", "127.0.0.1:8000"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&Method::POST, &fetch, false));
        let no_origin = headers(&[("host", "127.0.0.1:8000")]);
        assert!(
            !cross_site(&Method::POST, &no_origin, false),
            "no Origin: the CSRF token decides"
        );
        // Case and default ports do not make another origin.
        let spelled = headers(&[
            ("host", "Hooks.Example.com:443"),
            ("origin", "https://hooks.example.com"),
        ]);
        assert!(!cross_site(&Method::POST, &spelled, false));
        // Behind a trusted proxy that rewrites Host, the forwarded host is the browser's.
        let proxied = headers(&[
            ("host", "127.0.0.1:8000"),
            ("x-forwarded-host", "hooks.example.com"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://hooks.example.com"),
        ]);
        assert!(!cross_site(&Method::POST, &proxied, true));
        assert!(
            cross_site(&Method::POST, &proxied, false),
            "forwarded headers count only from a trusted proxy"
        );
    }

    #[test]
    fn after_login_goes_only_to_dashboard_pages() {
        assert_eq!(
            after_login(Some("/dashboard/dlq?status=dead")),
            "/dashboard/dlq?status=dead"
        );
        for elsewhere in [
            Some("https://evil.example"),
            Some("//evil.example"),
            Some("/api/v1/dlq"),
            Some("/dashboard/é"),
            Some("/dashboard\r\nset-cookie: x=y"),
            None,
        ] {
            assert_eq!(after_login(elsewhere), "/dashboard", "{elsewhere:?}");
        }
    }
}

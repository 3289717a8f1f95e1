//! Dashboard sessions: a signed cookie, nothing stored on the server, so every instance on a
//! shared database accepts it and a restart keeps people logged in. The signing key derives
//! from the admin token, so changing the token logs everyone out; without a token (loopback
//! only) it is random per process. Each session carries a nonce from which its CSRF token is
//! derived: a form from another site cannot know it.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "hookrelay_session";

/// How long a session lasts after logging in.
pub const LIFETIME_MS: i64 = 8 * 60 * 60 * 1000;

/// How the holder got in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Logged in with the admin token.
    Token,
    /// No admin token is configured; a client on this host.
    Local,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Self::Token => "t",
            Self::Local => "l",
        }
    }
}

/// A valid session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// How the holder got in.
    pub kind: Kind,
    /// When it stops being accepted, unix ms.
    pub expires_ms: i64,
    nonce: String,
}

/// Signs and checks session cookies and CSRF tokens.
pub struct Keys {
    key: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

impl Keys {
    /// Keys derived from the admin token, or random ones when there is none.
    pub fn new(admin_token: Option<&str>) -> Self {
        let key = match admin_token {
            Some(token) => {
                let mut mac = mac(token.as_bytes());
                mac.update(b"hookrelay dashboard sessions v1");
                mac.finalize().into_bytes().into()
            }
            None => rand::random(),
        };
        Self { key }
    }

    fn sign(&self, text: &str) -> String {
        let mut mac = mac(&self.key);
        mac.update(text.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A new session's cookie value.
    pub fn issue(&self, kind: Kind, now_ms: i64) -> (Session, String) {
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
        let session = Session {
            kind,
            expires_ms: now_ms + LIFETIME_MS,
            nonce,
        };
        let payload = format!(
            "v1.{}.{}.{}",
            session.kind.tag(),
            session.expires_ms,
            session.nonce
        );
        let value = format!("{payload}.{}", self.sign(&payload));
        (session, value)
    }

    /// The session a cookie value holds, if it is ours, intact and not expired.
    pub fn check(&self, value: &str, now_ms: i64) -> Option<Session> {
        let (payload, signature) = value.rsplit_once('.')?;
        if !bool::from(self.sign(payload).as_bytes().ct_eq(signature.as_bytes())) {
            return None;
        }
        let mut parts = payload.split('.');
        let (Some("v1"), Some(tag), Some(expires), Some(nonce), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let kind = match tag {
            "t" => Kind::Token,
            "l" => Kind::Local,
            _ => return None,
        };
        let expires_ms = expires.parse().ok()?;
        (now_ms < expires_ms).then(|| Session {
            kind,
            expires_ms,
            nonce: nonce.to_owned(),
        })
    }

    /// The CSRF token every form of this session carries.
    pub fn csrf(&self, session: &Session) -> String {
        self.sign(&format!("csrf.{}", session.nonce))
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        bool::from(self.csrf(session).as_bytes().ct_eq(token.as_bytes()))
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The `Set-Cookie` value for a session (or, with `None`, one that deletes it).
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(value) => format!(
            "{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME_MS / 1000
        ),
        None => format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Every value of the session cookie among a request's `Cookie` headers: a cookie planted
/// under the same name (from a sibling subdomain, say) must not hide the real one.
pub fn cookie_values(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn an_issued_session_is_accepted_until_it_expires() {
        let keys = Keys::new(Some("admin-token-0123456789abcdef0123456789"));
        let (session, cookie) = keys.issue(Kind::Token, NOW);
        assert_eq!(keys.check(&cookie, NOW + 1), Some(session.clone()));
        assert_eq!(keys.check(&cookie, NOW + LIFETIME_MS - 1), Some(session));
        assert_eq!(keys.check(&cookie, NOW + LIFETIME_MS), None);
    }

    #[test]
    fn a_tampered_or_foreign_cookie_is_refused() {
        let keys = Keys::new(Some("admin-token-0123456789abcdef0123456789"));
        let (_, cookie) = keys.issue(Kind::Local, NOW);
        // Promoting a loopback session to a token one, or extending it, breaks the signature.
        let promoted = cookie.replacen("v1.l.", "v1.t.", 1);
        assert_eq!(keys.check(&promoted, NOW), None);
        let expires = (NOW + LIFETIME_MS).to_string();
        let extended = cookie.replacen(&expires, &(NOW + 10 * LIFETIME_MS).to_string(), 1);
        assert_eq!(keys.check(&extended, NOW), None);
        // Another token's keys (a rotated admin token) refuse it.
        let rotated = Keys::new(Some("another-admin-token-0123456789abcdef"));
        assert_eq!(rotated.check(&cookie, NOW), None);
        for garbage in ["", ".", "v1.t.1.x", "v1.t.notanumber.nonce.sig"] {
            assert_eq!(keys.check(garbage, NOW), None, "{garbage:?}");
        }
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session() {
        let keys = Keys::new(None);
        let (first, _) = keys.issue(Kind::Local, NOW);
        let (second, _) = keys.issue(Kind::Local, NOW);
        let token = keys.csrf(&first);
        assert!(keys.csrf_matches(&first, &token));
        assert!(!keys.csrf_matches(&second, &token));
        assert!(!keys.csrf_matches(&first, ""));
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_static(
                "a=1; hookrelay_session=planted; b=2; hookrelay_session=abc.def",
            ),
        );
        assert_eq!(
            cookie_values(&headers).collect::<Vec<_>>(),
            ["planted", "abc.def"]
        );
        assert!(set_cookie(Some("x"), true).contains("HttpOnly; SameSite=Strict"));
        assert!(set_cookie(Some("x"), true).ends_with("; Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}

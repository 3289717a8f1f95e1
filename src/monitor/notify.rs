//! Sends alert transitions to `HOOKRELAY_ALERT_WEBHOOK_URL`: Slack's incoming-webhook format
//! for a Slack URL, plain JSON otherwise. One message carries every transition of an
//! evaluation, so a burst of alerts is one notification.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::{
    delivery::HttpSender,
    domain::{Alert, AlertLevel, EndpointUrl},
};

/// What changed in one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Alerts that fired.
    pub fired: Vec<Alert>,
    /// Alerts that resolved.
    pub resolved: Vec<Alert>,
}

impl Changes {
    /// Whether there is anything to say.
    pub fn is_empty(&self) -> bool {
        self.fired.is_empty() && self.resolved.is_empty()
    }
}

fn is_slack(url: &EndpointUrl) -> bool {
    url.url()
        .host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case("hooks.slack.com"))
}

fn icon(level: AlertLevel) -> &'static str {
    match level {
        AlertLevel::Critical => ":red_circle:",
        AlertLevel::Warning => ":warning:",
    }
}

/// The message body for `url`.
pub fn payload(url: &EndpointUrl, changes: &Changes) -> Value {
    if is_slack(url) {
        let mut lines = Vec::new();
        for alert in &changes.fired {
            lines.push(format!(
                "{} *{}* {}",
                icon(alert.level),
                alert.level.as_str().to_uppercase(),
                alert.message
            ));
        }
        for alert in &changes.resolved {
            lines.push(format!(":white_check_mark: *RESOLVED* {}", alert.message));
        }
        json!({ "text": format!("hookrelay alerts\n{}", lines.join("\n")) })
    } else {
        json!({
            "source": "hookrelay",
            "fired": changes.fired,
            "resolved": changes.resolved,
        })
    }
}

/// Sends the changes; errors are described without the URL (which is a credential).
pub async fn send(sender: &HttpSender, url: &EndpointUrl, changes: &Changes) -> Result<(), String> {
    let body = serde_json::to_vec(&payload(url, changes)).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let response = sender
        .post(url, headers, Bytes::from(body), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    if response.status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "the alert webhook answered HTTP {}",
            response.status
        ))
    }
}

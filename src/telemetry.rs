//! Logging set-up: human-readable lines on stderr, filtered by `RUST_LOG` when set, else by
//! `LOG_LEVEL` (the guide's variable).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, early in `main`.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| {
            let level = std::env::var("LOG_LEVEL")
                .unwrap_or_else(|_| "info".into())
                .to_ascii_lowercase();
            let level = if level == "warning" {
                "warn".to_owned()
            } else {
                level
            };
            EnvFilter::try_new(format!("hookrelay={level},tower_http=warn,warn"))
                .unwrap_or_else(|_| EnvFilter::new("hookrelay=info,warn"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

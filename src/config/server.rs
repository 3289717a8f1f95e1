//! The HTTP server: where it listens, what it runs, who may manage it, and the limits that
//! keep one client from taking it over.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use super::Reader;
use crate::domain::Redacted;

/// How `serve` serves.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `HOOKRELAY_LISTEN` (default `127.0.0.1:8000`): address the HTTP API listens on.
    pub listen: SocketAddr,
    /// `HOOKRELAY_ROLE` (default `all`): what `serve` runs: `all`, `api` or `worker`.
    pub role: Role,
    /// `HOOKRELAY_ADMIN_TOKEN`: bearer token for `/api/v1/…` management routes. Unset: those
    /// routes answer only to loopback clients, and only on a loopback listener with no
    /// `HOOKRELAY_TRUSTED_PROXIES`; otherwise they are closed.
    pub admin_token: Option<Redacted<String>>,
    /// `HOOKRELAY_ALLOW_NO_ADMIN_TOKEN` (default false): let `serve` start on a non-loopback
    /// address, or behind trusted proxies, without `HOOKRELAY_ADMIN_TOKEN` (management routes
    /// are then closed).
    pub allow_no_admin_token: bool,
    /// `HOOKRELAY_METRICS_REQUIRE_TOKEN` (default false): `/metrics` needs the admin token.
    pub metrics_require_token: bool,
    /// `HOOKRELAY_MAX_BODY_BYTES` (default 1 MiB): largest request body accepted.
    pub max_body_bytes: usize,
    /// `HOOKRELAY_MAX_HEADER_BYTES` (default 16384): largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// `HOOKRELAY_HEADER_TIMEOUT_SECONDS` (default 10): time a client has to send its request
    /// head; slower clients (slowloris) are disconnected.
    pub header_timeout: Duration,
    /// `HOOKRELAY_REQUEST_TIMEOUT_SECONDS` (default 30): time to read a request and answer it (408 beyond).
    pub request_timeout: Duration,
    /// `HOOKRELAY_MAX_CONNECTIONS` (default 1024): open client connections at once; beyond, new
    /// connections get 503 and are closed.
    pub max_connections: usize,
    /// `HOOKRELAY_MAX_CONNECTIONS_PER_ADDRESS` (default 256): open connections at once from
    /// one client address, so one client cannot hold every connection slot.
    pub max_connections_per_address: usize,
    /// `HOOKRELAY_MAX_CONCURRENT_REQUESTS` (default 512): requests handled at once; beyond,
    /// 503 with `Retry-After` instead of queueing.
    pub max_concurrent_requests: usize,
    /// `HOOKRELAY_SHUTDOWN_GRACE_SECONDS` (default 10): how long shutdown waits for in-flight
    /// deliveries before releasing them back to the queue.
    pub shutdown_grace: Duration,
    /// `HOOKRELAY_WORKER_THREADS` (default: automatic, see [`crate::Config::runtime_workers`]):
    /// threads running the HTTP API and the delivery worker.
    pub worker_threads: Option<usize>,
}

impl ServerSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
        let listen = r.parsed(
            "HOOKRELAY_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8000)),
            "an address:port such as 127.0.0.1:8000 or [::]:8000",
        );
        let admin_token = r.secret("HOOKRELAY_ADMIN_TOKEN");
        if let Some(token) = &admin_token
            && token.expose().len() < 32
        {
            r.warn(
                "HOOKRELAY_ADMIN_TOKEN",
                format!("is only {} characters long", token.expose().len()),
                "use at least 32 random characters, e.g. `openssl rand -hex 32`",
            );
        }
        if admin_token.is_none() && !listen.ip().is_loopback() {
            r.warn(
                "HOOKRELAY_ADMIN_TOKEN",
                format!("is not set while listening on the non-loopback address {listen}: management routes are closed"),
                "set HOOKRELAY_ADMIN_TOKEN to manage hookrelay remotely",
            );
        }
        let max_body_bytes = r.number("HOOKRELAY_MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20) as usize;
        let shutdown_grace = r.seconds("HOOKRELAY_SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 3600.0);
        let role = r.parsed("HOOKRELAY_ROLE", Role::All, "all, api or worker");
        let allow_no_admin_token = r.bool("HOOKRELAY_ALLOW_NO_ADMIN_TOKEN", false);
        let max_header_bytes =
            r.number("HOOKRELAY_MAX_HEADER_BYTES", 16_384, 1024, 1 << 20) as usize;
        let header_timeout = r.seconds("HOOKRELAY_HEADER_TIMEOUT_SECONDS", 10.0, 0.1, 600.0);
        let request_timeout = r.seconds("HOOKRELAY_REQUEST_TIMEOUT_SECONDS", 30.0, 0.1, 3600.0);
        let max_connections = r.number("HOOKRELAY_MAX_CONNECTIONS", 1024, 1, 1_000_000) as usize;
        let max_connections_per_address =
            r.number("HOOKRELAY_MAX_CONNECTIONS_PER_ADDRESS", 256, 1, 1_000_000) as usize;
        let max_concurrent_requests =
            r.number("HOOKRELAY_MAX_CONCURRENT_REQUESTS", 512, 1, 1_000_000) as usize;
        let metrics_require_token = r.bool("HOOKRELAY_METRICS_REQUIRE_TOKEN", false);
        let worker_threads = r
            .raw("HOOKRELAY_WORKER_THREADS")
            .is_some()
            .then(|| r.number("HOOKRELAY_WORKER_THREADS", 1, 1, 1024) as usize);
        if metrics_require_token && admin_token.is_none() {
            r.warn(
                "HOOKRELAY_METRICS_REQUIRE_TOKEN",
                "is true but HOOKRELAY_ADMIN_TOKEN is unset: /metrics answers loopback clients only",
                "set HOOKRELAY_ADMIN_TOKEN for Prometheus to scrape with",
            );
        }
        Self {
            listen,
            role,
            admin_token,
            allow_no_admin_token,
            metrics_require_token,
            max_body_bytes,
            max_header_bytes,
            header_timeout,
            request_timeout,
            max_connections,
            max_connections_per_address,
            max_concurrent_requests,
            shutdown_grace,
            worker_threads,
        }
    }
}

/// What a serving process runs (`HOOKRELAY_ROLE` or `serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// The HTTP API and the delivery worker (the default).
    #[default]
    All,
    /// The HTTP API only: events are accepted and stored; other instances deliver them.
    Api,
    /// The delivery worker only: no HTTP listener.
    Worker,
}

impl Role {
    /// Whether this role serves the HTTP API.
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    /// Whether this role runs the delivery worker.
    pub fn delivers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    /// `all`, `api` or `worker`, as `--role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Role::All),
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            other => Err(format!("`{other}` is not a role (all, api or worker)")),
        }
    }
}

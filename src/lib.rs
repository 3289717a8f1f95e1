//! hookrelay: durable, signed webhook delivery for LLM gateway usage events.
//!
//! # The life of an event
//!
//! 1. **Ingest** ([`ingest`]): an event arrives through [`Relay::track_usage`] or
//!    `POST /api/webhook/usage` ([`api`]), is validated into a typed value ([`domain`]),
//!    checked against its idempotency key, and written with one delivery per endpoint in one
//!    transaction ([`store`]). Concurrent writes share a commit (group commit). Only then is it
//!    acknowledged.
//! 2. **Claim** ([`delivery`]): the worker claims due deliveries with a lease, so a crashed
//!    worker's claims fall due again. Ingest wakes the worker, so an idle system delivers at once.
//! 3. **Send**: each attempt is signed ([`signing`]: Standard Webhooks and the guide's header)
//!    and POSTed with a timeout, no redirects, pooled connections, bounded concurrency.
//! 4. **Record**: every attempt is logged; 2xx ends the delivery, retryable failures are
//!    rescheduled by a pure retry policy, the rest (and exhausted retries) go to the
//!    dead-letter queue, from which they can be replayed or purged.
//!
//! Delivery is at least once; every attempt of an event carries the same `webhook-id`.
//!
//! # Layers
//!
//! A module uses only modules of the layers below it (checked by `tests/it/architecture.rs`;
//! `docs/ARCHITECTURE.md` follows an event through the files):
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | 11 | [`cli`] | the `hookrelay` commands; each calls library functions |
//! | 10 | [`app`] | `serve`: the listener, the worker, the monitor and shutdown |
//! | 9 | [`api`] | the HTTP routes, [`api::ApiError`], the guard middleware, the OpenAPI document |
//! | 8 | [`dashboard`] | the operator dashboard's pages, sessions and charts |
//! | 7 | [`relay`] | [`Relay`], the facade to embed |
//! | 6 | [`monitor`] | windowed figures, alert rules, the health verdict, alert notifications |
//! | 5 | [`delivery`] | the worker (claim → prepare → send → decide → record), HTTP client, retry policy, circuit breaker, endpoint probe |
//! | 4 | [`ingest`], [`endpoints`], [`guard`], [`sink`] | fan-out and payloads; endpoint specs; inbound checks as typed rejections; the local test receiver |
//! | 3 | [`store`] | the [`store::Store`] trait, SQLite and PostgreSQL; all SQL |
//! | 2 | [`config`] | the validated [`Config`], by section, and `config check` |
//! | 1 | [`clock`], [`metrics`], [`signing`], [`telemetry`] | time; Prometheus; HMAC signatures; logs and Sentry |
//! | 0 | [`domain`] | ids, events, the endpoint model, alert and stats values, address policy, GCRA, time formatting |

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod domain;
pub mod endpoints;
pub mod guard;
pub mod ingest;
pub mod metrics;
pub mod monitor;
pub mod relay;
pub mod signing;
pub mod sink;
pub mod store;
pub mod telemetry;

pub use crate::{config::Config, relay::Relay};

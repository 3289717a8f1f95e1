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
//! # Modules
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the validated [`Config`] and `config check` |
//! | [`domain`] | ids, events, URLs, secrets |
//! | [`store`] | the [`store::Store`] trait, SQLite, migrations; all SQL |
//! | [`ingest`] | validation, payload shape, fan-out |
//! | [`delivery`] | the worker, HTTP client, retry policy, endpoint probe |
//! | [`signing`] | signatures out and in |
//! | [`api`] | the HTTP routes and their errors |
//! | [`relay`] | [`Relay`], the facade to embed |
//! | [`cli`] | the `hookrelay` commands |
//! | [`sink`] | the local test receiver |

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
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

//! Typed values shared by every part of hookrelay, the bottom layer: it imports nothing else
//! of the crate. Parse at the boundary; after that, the rest
//! of the code cannot hold an invalid id, event or secret.

mod address;
mod alert;
mod endpoint;
mod event;
mod gate;
mod ids;
pub(crate) mod number;
mod secret;
mod signature;
mod stats;
mod throttle;
mod time;
mod url;
mod usage;

pub use address::{AddressPolicy, BlockedAddress};
pub use alert::{Alert, AlertLevel, Condition};
pub(crate) use endpoint::invalid as invalid_endpoint;
pub use endpoint::{
    CircuitState, Endpoint, EndpointHealth, EndpointView, EventFilter, InvalidEndpoint, RateLimit,
};
pub use event::{EventType, GenericEvent, IdempotencyKey, InvalidEvent, UsageEvent};
pub use gate::{Ask, Gate, GateLimits, Grant, RECHECK_MS, grant};
pub use ids::{DeliveryId, EndpointId, EventId, IdError};
pub use secret::{Redacted, SecretError, SigningSecret};
pub use signature::SignatureAlgorithm;
pub use stats::{BUCKETS_MS, WindowStats, WindowTotals, bucket, percentile};
pub use throttle::Throttle;
pub use time::rfc3339;
pub use url::{EndpointUrl, UrlError};
pub use usage::{
    Analytics, CleanupReport, DayUsage, ModelUsage, QueriesSummary, SessionStats, SessionsSummary,
    UsageFacts, WebhookCounts, WebhooksSummary,
};

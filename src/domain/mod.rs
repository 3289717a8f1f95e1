//! Typed values shared by every part of hookrelay. Parse at the boundary; after that, the rest
//! of the code cannot hold an invalid id, event or secret.

mod event;
mod ids;
mod secret;
mod url;

pub use event::{EventType, GenericEvent, IdempotencyKey, InvalidEvent, UsageEvent};
pub use ids::{DeliveryId, EndpointId, EventId, IdError};
pub use secret::{Redacted, SecretError, SigningSecret};
pub use url::{EndpointUrl, UrlError};

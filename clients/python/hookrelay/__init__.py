"""hookrelay client: send usage events to hookrelay (signed, idempotent, retried within
bounds, typed errors) and verify its deliveries on the receiving side.

>>> from hookrelay import HookrelayClient
>>> with HookrelayClient.from_env() as relay:                       # doctest: +SKIP
...     relay.track_usage(session_id="s1", query="Why?", model_name="gpt-4o-mini",
...                       response_time_ms=812, estimated_tokens=95, success=True)
"""

from ._version import __version__
from .client import DEFAULT_URL, AsyncHookrelayClient, HookrelayClient
from .compat import ProductionWebhook, get_production_webhook
from .errors import (
    ConnectionFailed,
    Forbidden,
    HookrelayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WebhookVerificationError,
)
from .models import Accepted, BatchAccepted, UsageEvent
from .signing import sign, sign_headers, verify_signature
from .verify import verify_webhook

__all__ = [
    "__version__",
    "DEFAULT_URL",
    "HookrelayClient",
    "AsyncHookrelayClient",
    "ProductionWebhook",
    "get_production_webhook",
    "HookrelayError",
    "InvalidRequest",
    "NotFound",
    "Unauthorized",
    "Forbidden",
    "RateLimited",
    "Unavailable",
    "ConnectionFailed",
    "ServerError",
    "WebhookVerificationError",
    "UsageEvent",
    "Accepted",
    "BatchAccepted",
    "sign",
    "sign_headers",
    "verify_signature",
    "verify_webhook",
]

"""A drop-in for GPT-Bridge's ``src.production_webhook_integration``.

Change the import and nothing else::

    # from src.production_webhook_integration import get_production_webhook
    from hookrelay import get_production_webhook

    webhook = get_production_webhook()
    await webhook.track_usage(session_id="session_123", query="Test query",
                              model_name="gpt-4o-mini", response_time_ms=1000,
                              estimated_tokens=100, success=True)
    health = webhook.get_health_status()
    metrics = webhook.get_metrics()
    stats = webhook.get_session_stats("session_123")
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

from .client import JSON, AsyncHookrelayClient, HookrelayClient, _from_env
from .errors import HookrelayError
from .models import Accepted

__all__ = ["ProductionWebhook", "get_production_webhook"]

log = logging.getLogger("hookrelay")


class ProductionWebhook:
    """The guide's webhook object, backed by hookrelay.

    ``track_usage`` is a coroutine, as in the original; ``get_health_status``,
    ``get_metrics`` and ``get_session_stats`` are blocking calls to hookrelay's admin API, as
    the originals were blocking reads of local files.

    With ``raise_errors=False`` (the default, for a gateway whose answer must not fail because
    its telemetry did), a ``track_usage`` that hookrelay refuses, or cannot be reached for,
    after the bounded retries is logged on the ``hookrelay`` logger (WARNING, with the error
    code, never a secret) and returns ``None``; with ``raise_errors=True`` the typed
    :class:`~hookrelay.errors.HookrelayError` is raised. The admin methods always raise.
    """

    def __init__(self, *, raise_errors: bool = False, **options: Any) -> None:
        self._options = options
        self.raise_errors = raise_errors
        self.client = HookrelayClient(**options)
        # An httpx.AsyncClient belongs to the loop it first ran on; a gateway that runs
        # several loops (or asyncio.run per call) gets one client per loop.
        self._async: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncHookrelayClient]" = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProductionWebhook({self.client!r}, raise_errors={self.raise_errors})"

    def _async_client(self) -> AsyncHookrelayClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                client = AsyncHookrelayClient(**self._options)
                self._async[loop] = client
            return client

    async def track_usage(
        self,
        session_id: str,
        query: str,
        model_name: str,
        response_time_ms: int,
        estimated_tokens: int,
        success: bool,
        user_agent: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Optional[Accepted]:
        """Records one LLM call; returns the :class:`Accepted` answer (``None`` when it
        failed and ``raise_errors`` is off)."""
        client = self._async_client()
        try:
            return await client.track_usage(
                session_id=session_id,
                query=query,
                model_name=model_name,
                response_time_ms=response_time_ms,
                estimated_tokens=estimated_tokens,
                success=success,
                user_agent=user_agent,
                idempotency_key=idempotency_key,
            )
        except HookrelayError as error:
            if self.raise_errors:
                raise
            log.warning(
                "hookrelay did not take a usage event (session %r): %s", session_id, error
            )
            return None

    def get_health_status(self) -> JSON:
        """The status report (``GET /api/v1/health``): ``health`` (``status``, reasons),
        ``metrics`` (``success_rate_1hour``…), ``alerts`` (``alert_counts``,
        ``active_alerts``), ``windows``, ``queue``, ``endpoints``."""
        return self.client.health()

    def get_metrics(self) -> JSON:
        """``total_sent``, ``success_rate``, ``success_rate_1hour``, ``avg_response_time_ms``,
        ``p95_response_time_ms``; rates and times are ``None`` before any delivery attempt."""
        return self.client.metrics()

    def get_session_stats(self, session_id: str) -> Optional[JSON]:
        """The session's aggregate (``queries``, ``successes``, ``failures``,
        ``avg_response_time_ms``, ``estimated_tokens``, ``models``, ``webhooks``), or ``None``
        for a session hookrelay has no record of."""
        return self.client.session_stats(session_id)

    def get_analytics_summary(self, days: int = 7) -> JSON:
        """``GET /api/v1/analytics?days=N``: ``sessions.total``, ``sessions.total_queries``,
        ``webhooks.success_rate``… (the original's ``session_manager.get_analytics_summary``)."""
        return self.client.analytics(days)

    def close(self) -> None:
        """Closes the blocking client (the per-loop async clients close with their loops)."""
        self.client.close()


_instances: Dict[Tuple[Any, ...], ProductionWebhook] = {}
_instances_lock = threading.Lock()


def get_production_webhook(*, raise_errors: bool = False, **overrides: Any) -> ProductionWebhook:
    """The process's webhook object, configured from ``HOOKRELAY_URL`` (default
    ``http://127.0.0.1:8000``), ``HOOKRELAY_INGEST_SECRET`` and ``HOOKRELAY_ADMIN_TOKEN``;
    keyword arguments (those of :class:`HookrelayClient`) win. The same object is returned
    while the configuration is the same."""
    options = _from_env(overrides)
    key = (raise_errors,) + tuple(sorted((k, repr(v)) for k, v in options.items()))
    with _instances_lock:
        instance = _instances.get(key)
        if instance is None:
            instance = ProductionWebhook(raise_errors=raise_errors, **options)
            _instances[key] = instance
        return instance

"""GPT-Bridge's call sites, unchanged but for the import."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from conftest import Server
from hookrelay import Unauthorized, verify_webhook


def test_the_guides_call_site_with_only_the_import_changed(
    server: Server, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKRELAY_URL", server.url)
    monkeypatch.setenv("HOOKRELAY_INGEST_SECRET", server.ingest_secret)
    monkeypatch.setenv("HOOKRELAY_ADMIN_TOKEN", server.admin_token)
    session_123 = f"session_123-{unique}"

    # --- the guide's "API Reference", with `src.production_webhook_integration` replaced ---
    from hookrelay import get_production_webhook

    # Get webhook instance
    webhook = get_production_webhook()

    async def gateway() -> Any:
        # Track usage
        return await webhook.track_usage(
            session_id=session_123,
            query="Test query",
            model_name="gpt-4o-mini",
            response_time_ms=1000,
            estimated_tokens=100,
            success=True,
        )

    accepted = asyncio.run(gateway())
    # Get health status
    health = webhook.get_health_status()
    # Get metrics
    metrics = webhook.get_metrics()
    # Get session stats
    stats = webhook.get_session_stats(session_123)
    # ------------------------------------------------------------------------------------

    assert get_production_webhook() is webhook
    assert accepted is not None and accepted.id.startswith("evt_")
    [delivery] = server.receiver.wait_for(
        lambda d: json.loads(d.body).get("event_id") == accepted.id
    )
    event = verify_webhook(server.webhook_secret, delivery.headers, delivery.body)
    assert event["session_id"] == session_123
    assert event["response"]["model_used"] == "gpt-4o-mini"

    # The guide's dashboard reads these keys.
    assert health["health"]["status"] in ("healthy", "degraded", "unhealthy")
    assert "success_rate_1hour" in health["metrics"]
    assert isinstance(health["alerts"]["alert_counts"]["total"], int)
    assert isinstance(health["alerts"]["active_alerts"], list)
    assert isinstance(metrics["total_sent"], int)
    assert {"success_rate", "avg_response_time_ms"} <= set(metrics)
    assert stats is not None
    assert stats["session_id"] == session_123
    assert stats["queries"] == 1 and stats["successes"] == 1
    assert stats["estimated_tokens"] == 100
    assert webhook.get_session_stats(f"{session_123}-never") is None

    # A second event loop (asyncio.run again) works with the same object.
    again = asyncio.run(gateway())
    assert again is not None and again.id != accepted.id


def test_compat_logs_instead_of_failing_the_gateway_unless_asked(
    server: Server, unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOOKRELAY_URL", server.url)
    monkeypatch.setenv("HOOKRELAY_INGEST_SECRET", "the-wrong-secret")
    monkeypatch.delenv("HOOKRELAY_ADMIN_TOKEN", raising=False)
    from hookrelay import get_production_webhook

    quiet = get_production_webhook()
    with caplog.at_level(logging.WARNING, logger="hookrelay"):
        result = asyncio.run(quiet.track_usage(unique, "q", "gpt-4o-mini", 1, 1, True))
    assert result is None
    assert "invalid_signature" in caplog.text
    assert "the-wrong-secret" not in caplog.text + repr(quiet)

    loud = get_production_webhook(raise_errors=True)
    assert loud is not quiet
    with pytest.raises(Unauthorized) as error:
        asyncio.run(loud.track_usage(unique, "q", "gpt-4o-mini", 1, 1, True))
    assert error.value.code == "invalid_signature"

"""The clients against a real hookrelay: events are accepted, ARRIVE at the receiver, and
their signatures verify with verify_webhook."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Dict

import pytest

from conftest import Delivery, Server
from hookrelay import (
    AsyncHookrelayClient,
    HookrelayClient,
    InvalidRequest,
    RateLimited,
    Unauthorized,
    UsageEvent,
    WebhookVerificationError,
    verify_webhook,
)


def payload(d: Delivery) -> Dict[str, Any]:
    value = json.loads(d.body)
    assert isinstance(value, dict)
    return value


def for_event(event_id: str):  # type: ignore[no-untyped-def]
    return lambda d: payload(d).get("event_id") == event_id


def test_track_usage_arrives_signed_and_verifies(server: Server, unique: str) -> None:
    with server.client() as relay:
        accepted = relay.track_usage(
            session_id=unique,
            query="Why does this code throw an error?",
            model_name="gpt-4o-mini",
            response_time_ms=1000,
            estimated_tokens=100,
            success=True,
            user_agent="pytest",
        )
    assert accepted.id.startswith("evt_")
    assert accepted.duplicate is False
    assert accepted.attempts == 1
    [delivery] = server.receiver.wait_for(for_event(accepted.id))

    event = verify_webhook(server.webhook_secret, delivery.headers, delivery.body)
    assert event["event_type"] == "usage.tracked"
    assert event["session_id"] == unique
    assert event["query"]["summary"] == "Why does this code throw an error?"
    assert event["response"] == {
        "model_used": "gpt-4o-mini",
        "response_time_ms": 1000,
        "estimated_tokens": 100,
        "success": True,
    }
    assert event["user_agent"] == "pytest"
    assert delivery.headers["webhook-id"] == accepted.id

    # The same delivery with its body, secret or time altered is refused.
    with pytest.raises(WebhookVerificationError) as altered:
        verify_webhook(server.webhook_secret, delivery.headers, delivery.body.replace(b"1000", b"1001"))
    assert altered.value.code == "invalid_signature"
    with pytest.raises(WebhookVerificationError) as wrong:
        verify_webhook(server.ingest_secret, delivery.headers, delivery.body)
    assert wrong.value.code == "invalid_signature"
    sent_at = int(delivery.headers["webhook-timestamp"])
    with pytest.raises(WebhookVerificationError) as stale:
        verify_webhook(server.webhook_secret, delivery.headers, delivery.body, now=sent_at + 301)
    assert stale.value.code == "signature_expired"
    # A wider tolerance accepts the same delivery later.
    verify_webhook(server.webhook_secret, delivery.headers, delivery.body, tolerance=600, now=sent_at + 301)
    # The guide's header is there too and verifies as a fallback.
    no_standard = {k: v for k, v in delivery.headers.items() if not k.startswith("webhook-")}
    verify_webhook(server.webhook_secret, no_standard, delivery.body, accept_body_signature=True)


def test_async_track_usage_arrives(server: Server, unique: str) -> None:
    async def main() -> Any:
        async with AsyncHookrelayClient(
            server.url, ingest_secret=server.ingest_secret, admin_token=server.admin_token
        ) as relay:
            accepted = await relay.track_usage(
                session_id=unique,
                query="Review this architecture",
                model_name="gpt-4o",
                response_time_ms=2500,
                estimated_tokens=700,
                success=False,
            )
            stats = await relay.session_stats(unique)
            return accepted, stats

    accepted, stats = asyncio.run(main())
    assert accepted.id.startswith("evt_") and not accepted.duplicate
    [delivery] = server.receiver.wait_for(for_event(accepted.id))
    event = verify_webhook(server.webhook_secret, delivery.headers, delivery.body)
    assert event["session_id"] == unique
    assert event["response"]["success"] is False
    assert event["user_agent"] is None
    assert stats is not None and stats["queries"] == 1 and stats["failures"] == 1


def test_batch_is_stored_and_every_item_arrives(server: Server, unique: str) -> None:
    events = [
        UsageEvent(unique, f"question {i}", "gpt-4o-mini", 100 + i, 10 + i, True)
        for i in range(2)
    ] + [
        {
            "session_id": unique,
            "query": "question 2",
            "model_name": "claude",
            "response_time_ms": 300,
            "estimated_tokens": 30,
            "success": False,
        }
    ]
    with server.client() as relay:
        batch = relay.track_usage_batch(events, idempotency_key=f"{unique}-batch")
        again = relay.track_usage_batch(events, idempotency_key=f"{unique}-batch")
        stats = relay.session_stats(unique)
    assert len(batch.ids) == 3 and len(set(batch.ids)) == 3
    assert [e.id for e in batch.events] == batch.ids
    assert not batch.duplicate
    assert again.ids == batch.ids and again.duplicate
    arrived = server.receiver.wait_for(lambda d: payload(d).get("session_id") == unique, count=3)
    assert sorted(payload(d)["event_id"] for d in arrived) == sorted(batch.ids)
    for d in arrived:
        verify_webhook(server.webhook_secret, d.headers, d.body)
    assert stats is not None and stats["queries"] == 3


def test_same_idempotency_key_is_one_event_and_one_delivery(server: Server, unique: str) -> None:
    key = f"{unique}-key"
    with server.client() as relay:
        first = relay.track_usage(unique, "q", "gpt-4o-mini", 10, 1, True, idempotency_key=key)
        second = relay.track_usage(unique, "q", "gpt-4o-mini", 10, 1, True, idempotency_key=key)
        assert first.idempotency_key == key
        assert (first.duplicate, second.duplicate) == (False, True)
        assert second.id == first.id
        # The same key with a different event is refused, not answered with the first.
        with pytest.raises(InvalidRequest) as reused:
            relay.track_usage(unique, "other", "gpt-4o-mini", 10, 1, True, idempotency_key=key)
        assert reused.value.status == 422 and reused.value.code == "idempotency_key_reused"
        assert reused.value.attempts == 1
        # A later event in the same session is the marker: once it arrived, so had the first.
        marker = relay.track_usage(unique, "marker", "gpt-4o-mini", 10, 1, True)
        server.receiver.wait_for(for_event(marker.id))
        server.receiver.wait_for(for_event(first.id))
        stats = relay.session_stats(unique)
    assert len(server.receiver.matching(for_event(first.id))) == 1
    assert stats is not None and stats["queries"] == 2


def test_send_event_arrives(server: Server, unique: str) -> None:
    data = {"rule": "success_rate", "value": 0.75, "id": unique}
    with server.client() as relay:
        accepted = relay.send_event("alert.fired", data, idempotency_key=f"{unique}-alert")
        again = relay.send_event("alert.fired", data, idempotency_key=f"{unique}-alert")
    assert again.duplicate and again.id == accepted.id
    [delivery] = server.receiver.wait_for(for_event(accepted.id))
    event = verify_webhook(server.webhook_secret, delivery.headers, delivery.body)
    assert event["event_type"] == "alert.fired"
    assert event["data"] == data


def test_invalid_event_is_invalid_request_naming_the_field(server: Server, unique: str) -> None:
    with server.client() as relay:
        with pytest.raises(InvalidRequest) as error:
            relay.track_usage(unique, "q", "gpt-4o-mini", -1, 1, True)
    assert error.value.status == 422
    assert error.value.code == "invalid_field"
    assert "response_time_ms" in error.value.detail
    assert error.value.attempts == 1


def test_wrong_or_missing_ingest_secret_is_unauthorized(server: Server, unique: str) -> None:
    with server.client(ingest_secret="not-the-secret") as relay:
        with pytest.raises(Unauthorized) as wrong:
            relay.track_usage(unique, "q", "gpt-4o-mini", 1, 1, True)
    assert (wrong.value.status, wrong.value.code) == (401, "invalid_signature")
    assert wrong.value.attempts == 1  # a 401 is never retried
    with server.client(ingest_secret=None) as relay:
        with pytest.raises(Unauthorized) as missing:
            relay.track_usage(unique, "q", "gpt-4o-mini", 1, 1, True)
    assert missing.value.code == "missing_signature"
    # A rotation list holding the right secret is accepted.
    with server.client(ingest_secret=f"old-secret,{server.ingest_secret}") as relay:
        assert relay.track_usage(unique, "q", "gpt-4o-mini", 1, 1, True).id.startswith("evt_")


def test_admin_calls_need_the_token(server: Server, unique: str) -> None:
    with server.client(admin_token="wrong") as relay:
        with pytest.raises(Unauthorized) as error:
            relay.health()
    assert error.value.status == 401
    with server.client() as relay:
        report = relay.health()
        assert report["health"]["status"] in ("healthy", "degraded", "unhealthy")
        assert "total_sent" in relay.metrics()
        assert relay.session_stats(f"{unique}/no such session") is None
        assert "sessions" in relay.analytics(days=1)


def test_rate_limited_call_is_retried_within_the_bound(limited_server: Server, unique: str) -> None:
    srv = limited_server
    with srv.client() as relay:
        relay.track_usage(unique, "first", "gpt-4o-mini", 1, 1, True)
    with srv.client(max_retries=0) as relay:
        with pytest.raises(RateLimited) as limited:
            relay.track_usage(unique, "second", "gpt-4o-mini", 1, 1, True)
    assert limited.value.status == 429 and limited.value.code == "rate_limited"
    assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 2
    assert limited.value.attempts == 1
    # A bound too short for the server's Retry-After gives up at once rather than wait.
    started = time.monotonic()
    with srv.client(max_retries=3, max_retry_wait=0.2) as relay:
        with pytest.raises(RateLimited):
            relay.track_usage(unique, "second", "gpt-4o-mini", 1, 1, True)
    assert time.monotonic() - started < 1.0
    # Within the bound, the client waits as told and the retry is accepted.
    started = time.monotonic()
    with srv.client(max_retries=3, max_retry_wait=10) as relay:
        accepted = relay.track_usage(unique, "second", "gpt-4o-mini", 1, 1, True)
    assert accepted.attempts >= 2, accepted
    print("rate-limited call took", accepted.attempts, "attempts")
    assert time.monotonic() - started < 10
    srv.receiver.wait_for(for_event(accepted.id))

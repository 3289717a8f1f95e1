"""The retry policy and the clients' request loop, against a scripted transport (statuses
the real server produces only under faults: 503, 507, dropped connections)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import httpx
import pytest

from hookrelay import (
    AsyncHookrelayClient,
    ConnectionFailed,
    HookrelayClient,
    InvalidRequest,
    RateLimited,
    ServerError,
    Unavailable,
    verify_signature,
)
from hookrelay._retry import RetryPolicy, parse_retry_after

SECRET = "ingest-secret-for-tests"
ACCEPTED = (202, {"id": "evt_1", "duplicate": False}, {})

Step = Tuple[int, Any, Dict[str, str]]


class Script:
    """Answers requests with the given steps in order (an Exception step is raised) and
    records every request."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.requests: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        status, body, headers = step
        return httpx.Response(status, json=body, headers=headers)


def err(status: int, code: str, retry_after: Optional[str] = None) -> Step:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return (status, {"code": code, "detail": f"{code} detail"}, headers)


def client(script: Script, **options: Any) -> Tuple[HookrelayClient, List[float]]:
    slept: List[float] = []
    c = HookrelayClient(
        "http://hookrelay.test", ingest_secret=SECRET, transport=httpx.MockTransport(script), **options
    )
    c._sleep = slept.append
    return c, slept


def track(c: HookrelayClient, **kw: Any) -> Any:
    return c.track_usage("s", "q", "m", 1, 2, True, **kw)


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 5, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(5, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


def test_backoff_grows_with_jitter_and_the_bounds_hold() -> None:
    policy = RetryPolicy(max_retries=3, max_retry_wait=30, backoff_base=0.5, backoff_max=8)
    assert [policy.backoff(n, lambda: 0.0) for n in (1, 2, 3, 6)] == [0.25, 0.5, 1.0, 4.0]
    assert [policy.backoff(n, lambda: 1.0) for n in (1, 2, 3, 6)] == [0.5, 1.0, 2.0, 8.0]
    assert policy.next_delay(1, 2.0, 0.0) == 2.0
    assert policy.next_delay(4, 2.0, 0.0) is None  # beyond max_retries
    assert policy.next_delay(2, 2.0, 29.0) is None  # beyond max_retry_wait
    assert RetryPolicy(max_retries=0).next_delay(1, 0.0, 0.0) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


def test_retries_sign_afresh_and_keep_the_idempotency_key() -> None:
    script = Script(
        err(503, "overloaded", "1"),
        httpx.ConnectError("refused"),
        err(507, "storage_full", "2"),
        err(429, "rate_limited", "1"),
        ACCEPTED,
    )
    c, slept = client(script, max_retries=4)
    accepted = track(c)
    assert accepted.id == "evt_1" and accepted.attempts == 5
    keys = {r.headers["idempotency-key"] for r in script.requests}
    assert keys == {accepted.idempotency_key}
    ids = [r.headers["webhook-id"] for r in script.requests]
    assert len(set(ids)) == 5, "every attempt needs a new webhook-id"
    for r in script.requests:
        assert verify_signature(
            SECRET, r.headers["webhook-id"], int(r.headers["webhook-timestamp"]), r.content, r.headers["webhook-signature"]
        )
        assert json.loads(r.content)["estimated_tokens"] == 2
    # Retry-After as told; the connection error (2nd retry) backs off 0.5..1 s.
    assert slept[0] == 1.0 and 0.5 <= slept[1] <= 1.0 and slept[2:] == [2.0, 1.0]


@pytest.mark.parametrize(
    "status,code,error",
    [
        (400, "malformed_json", InvalidRequest),
        (413, "body_too_large", InvalidRequest),
        (422, "invalid_field", InvalidRequest),
        (500, "internal", ServerError),
    ],
)
def test_other_errors_are_not_retried(status: int, code: str, error: type) -> None:
    script = Script(err(status, code, "1"), ACCEPTED)
    c, slept = client(script)
    with pytest.raises(error) as raised:
        track(c)
    assert raised.value.code == code and raised.value.status == status
    assert len(script.requests) == 1 and slept == []


def test_408_is_retried() -> None:
    script = Script(err(408, "request_timeout"), ACCEPTED)
    c, slept = client(script)
    assert track(c).attempts == 2 and len(slept) == 1


def test_retries_stop_at_max_retries_with_the_last_error() -> None:
    script = Script(*[err(503, "storage_unavailable", "1")] * 4)
    c, slept = client(script, max_retries=3)
    with pytest.raises(Unavailable) as raised:
        track(c)
    assert raised.value.code == "storage_unavailable" and raised.value.retry_after == 1.0
    assert raised.value.attempts == 4 and slept == [1.0, 1.0, 1.0]


def test_retries_stop_at_max_retry_wait() -> None:
    script = Script(err(429, "rate_limited", "20"), err(429, "rate_limited", "20"), ACCEPTED)
    c, slept = client(script, max_retries=5, max_retry_wait=30)
    with pytest.raises(RateLimited) as raised:
        track(c)
    assert slept == [20.0] and raised.value.attempts == 2 and raised.value.retry_after == 20.0


def test_connection_errors_surface_as_connection_failed() -> None:
    script = Script(*[httpx.ConnectError("refused")] * 2)
    c, _ = client(script, max_retries=1)
    with pytest.raises(ConnectionFailed) as raised:
        track(c)
    assert raised.value.status is None and raised.value.code == "connection_error"
    assert isinstance(raised.value, Unavailable)


def test_unsigned_client_sends_no_signature_and_a_generated_key() -> None:
    script = Script(ACCEPTED, ACCEPTED)
    c = HookrelayClient("http://hookrelay.test", transport=httpx.MockTransport(script))
    a = track(c)
    b = track(c)
    assert "webhook-signature" not in script.requests[0].headers
    assert a.idempotency_key != b.idempotency_key
    assert script.requests[0].headers["content-type"] == "application/json"


def test_arguments_are_type_checked_before_sending() -> None:
    script = Script()
    c, _ = client(script)
    with pytest.raises(TypeError):
        c.track_usage("s", "q", "m", "1000", 2, True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c.track_usage("s", "q", "m", 1, 2, "yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c.track_usage_batch({"session_id": "s"})  # type: ignore[arg-type]
    assert script.requests == []


def test_repr_and_errors_never_show_secrets() -> None:
    script = Script(err(401, "invalid_signature"))
    c = HookrelayClient(
        "http://hookrelay.test", ingest_secret=SECRET, admin_token="admin-token-xyz",
        transport=httpx.MockTransport(script),
    )
    text = repr(c)
    assert SECRET not in text and "admin-token-xyz" not in text and "signed=True" in text
    with pytest.raises(Exception) as raised:
        track(c)
    assert SECRET not in str(raised.value) + repr(raised.value)


def test_async_client_retries_the_same_way() -> None:
    script = Script(err(503, "overloaded", "1"), ACCEPTED)
    slept: List[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> Any:
        async with AsyncHookrelayClient(
            "http://hookrelay.test", ingest_secret=SECRET, transport=httpx.MockTransport(script)
        ) as c:
            c._sleep = fake_sleep
            return await c.track_usage("s", "q", "m", 1, 2, True, idempotency_key="k-1")

    accepted = asyncio.run(main())
    assert accepted.attempts == 2 and slept == [1.0]
    assert [r.headers["idempotency-key"] for r in script.requests] == ["k-1", "k-1"]
    assert script.requests[0].headers["webhook-id"] != script.requests[1].headers["webhook-id"]

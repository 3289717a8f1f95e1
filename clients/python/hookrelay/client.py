"""The clients: :class:`HookrelayClient` (blocking) and :class:`AsyncHookrelayClient` (asyncio).

Both send the same requests:

- every ingest request is signed with the ingest secret(s) when configured (Standard Webhooks:
  a fresh ``webhook-id`` and ``webhook-timestamp`` on every attempt, since hookrelay accepts an
  id only once);
- every ingest request carries an ``Idempotency-Key`` (the caller's, or a generated uuid4), the
  same on every retry of one call, so a retry after a lost answer is answered with the original
  event (``duplicate=True``) instead of storing it twice;
- 408, 429, 502, 503, 507 and connection errors are retried, waiting what ``Retry-After`` says
  (seconds or an HTTP date) or else an exponential backoff with jitter, at most ``max_retries``
  times and at most ``max_retry_wait`` seconds of waiting in all; no other 4xx is retried;
- every refusal is raised as a typed :class:`~hookrelay.errors.HookrelayError`.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import quote

import httpx

from ._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from ._version import __version__
from .errors import (
    ConnectionFailed,
    HookrelayError,
    NotFound,
    ServerError,
    error_for_status,
)
from .models import Accepted, BatchAccepted, EventLike, UsageEvent
from .signing import new_message_id, secret_key, sign

__all__ = ["HookrelayClient", "AsyncHookrelayClient", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8000"
USAGE_PATH = "/api/webhook/usage"
EVENTS_PATH = "/api/v1/events"

JSON = Dict[str, Any]


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def _secrets(value: Union[None, str, bytes, Sequence[Union[str, bytes]]]) -> List[bytes]:
    """The HMAC keys of the ingest secret(s): a comma-separated string (as
    ``HOOKRELAY_INGEST_SECRET`` holds during a rotation), bytes, or a list."""
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value]
    items: List[Union[str, bytes]]
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",")]
    else:
        items = list(value)
    return [secret_key(s) for s in items if s]


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _check_key(key: Optional[str]) -> str:
    if key is None:
        return str(uuid.uuid4())
    if not isinstance(key, str):
        raise TypeError(f"idempotency_key must be a str, not {type(key).__name__}")
    if not key.isascii():
        raise ValueError("idempotency_key must be ASCII (1-255 visible characters)")
    return key


@dataclass(frozen=True)
class _Call:
    """One logical request, which may take several attempts."""

    method: str
    path: str
    body: Optional[bytes] = None
    idempotency_key: Optional[str] = None
    admin: bool = False
    signed: bool = False
    not_found_is_none: bool = False


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any
    headers: httpx.Headers
    attempts: int


class _Core:
    """Everything the two clients share: configuration, request building, answer reading and
    the retry decision. No I/O."""

    def __init__(
        self,
        base_url: Optional[str],
        ingest_secret: Union[None, str, bytes, Sequence[Union[str, bytes]]],
        admin_token: Optional[str],
        timeout: float,
        max_retries: int,
        max_retry_wait: float,
        user_agent: Optional[str],
    ) -> None:
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self._keys = _secrets(ingest_secret)
        self._admin_token = admin_token or None
        self.timeout = timeout
        self.policy = RetryPolicy(max_retries=max_retries, max_retry_wait=max_retry_wait)
        self.user_agent = user_agent or f"hookrelay-client-python/{__version__}"

    @property
    def signed(self) -> bool:
        return bool(self._keys)

    def describe(self, name: str) -> str:
        # Never the secret or the token: only whether they are set.
        return (
            f"{name}(base_url={self.base_url!r}, signed={self.signed}, "
            f"admin_token={'set' if self._admin_token else 'unset'}, "
            f"max_retries={self.policy.max_retries}, max_retry_wait={self.policy.max_retry_wait:g})"
        )

    # -- building requests -------------------------------------------------------------------

    def usage_call(self, event: EventLike, idempotency_key: Optional[str]) -> _Call:
        ev = event if isinstance(event, UsageEvent) else UsageEvent.from_mapping(event)
        return _Call(
            "POST", USAGE_PATH, _encode(ev.to_dict()), _check_key(idempotency_key), signed=True
        )

    def batch_call(self, events: Iterable[EventLike], idempotency_key: Optional[str]) -> _Call:
        if isinstance(events, (UsageEvent, Mapping)):
            raise TypeError("track_usage_batch takes a list of events; use track_usage for one")
        items = [e if isinstance(e, UsageEvent) else UsageEvent.from_mapping(e) for e in events]
        return _Call(
            "POST",
            USAGE_PATH,
            _encode([e.to_dict() for e in items]),
            _check_key(idempotency_key),
            signed=True,
        )

    def event_call(self, type: str, data: Any, idempotency_key: Optional[str]) -> _Call:
        if not isinstance(type, str):
            raise TypeError(f"type must be a str, not {type.__class__.__name__}")
        # The key goes in the header only (the body's `idempotency_key` field is the same
        # thing; sending both invites a conflict).
        return _Call(
            "POST",
            EVENTS_PATH,
            _encode({"type": type, "data": data}),
            _check_key(idempotency_key),
            signed=True,
        )

    def admin_call(self, path: str, not_found_is_none: bool = False) -> _Call:
        return _Call("GET", path, admin=True, not_found_is_none=not_found_is_none)

    @staticmethod
    def session_path(session_id: str) -> str:
        if not isinstance(session_id, str):
            raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
        return "/api/v1/sessions/" + quote(session_id, safe="")

    def url(self, call: _Call) -> str:
        return self.base_url + call.path

    def headers(self, call: _Call) -> Dict[str, str]:
        """The headers of one attempt: signed afresh every time."""
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        if call.signed and self._keys and call.body is not None:
            msg_id = new_message_id()
            timestamp = int(time.time())
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = " ".join(
                sign(key, msg_id, timestamp, call.body) for key in self._keys
            )
        if call.admin and self._admin_token:
            headers["Authorization"] = f"Bearer {self._admin_token}"
        return headers

    # -- reading answers ---------------------------------------------------------------------

    @staticmethod
    def read(
        response: httpx.Response, attempts: int
    ) -> Tuple[Optional[_Answer], Optional[HookrelayError]]:
        """A success, or the typed error of a refusal."""
        status = response.status_code
        try:
            body: Any = response.json() if response.content else None
        except ValueError:
            body = None
        if 200 <= status < 300:
            return _Answer(status, body, response.headers, attempts), None
        code: Optional[str] = None
        detail = ""
        if isinstance(body, dict):
            if isinstance(body.get("code"), str):
                code = body["code"]
            if isinstance(body.get("detail"), str):
                detail = body["detail"]
        if not detail:
            detail = response.text[:200].strip() or response.reason_phrase or f"HTTP {status}"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return None, error_for_status(status, code, detail, retry_after, attempts)

    @staticmethod
    def transport_error(exc: httpx.TransportError, attempts: int) -> HookrelayError:
        return ConnectionFailed(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            code="connection_error",
            attempts=attempts,
        )

    def retry_delay(self, error: HookrelayError, retry: int, waited: float) -> Optional[float]:
        """How long to wait before retry number ``retry``, or ``None`` to raise ``error``."""
        retryable = isinstance(error, ConnectionFailed) or error.status in RETRYABLE_STATUSES
        if not retryable:
            return None
        return self.policy.next_delay(retry, error.retry_after, waited)

    # -- parsing successes -------------------------------------------------------------------

    @staticmethod
    def _unexpected(answer: _Answer, what: str) -> HookrelayError:
        return ServerError(
            f"unexpected answer to {what}: {str(answer.body)[:200]}",
            status=answer.status,
            code="unexpected_response",
            attempts=answer.attempts,
        )

    def accepted(self, answer: _Answer, call: _Call) -> Accepted:
        body = answer.body
        if not (isinstance(body, dict) and isinstance(body.get("id"), str)):
            raise self._unexpected(answer, call.path)
        return Accepted(
            id=body["id"],
            duplicate=bool(body.get("duplicate", False)),
            idempotency_key=call.idempotency_key or "",
            attempts=answer.attempts,
        )

    def batch_accepted(self, answer: _Answer, call: _Call) -> BatchAccepted:
        body = answer.body
        if not (
            isinstance(body, dict)
            and isinstance(body.get("ids"), list)
            and isinstance(body.get("events"), list)
        ):
            raise self._unexpected(answer, call.path)
        key = call.idempotency_key or ""
        events = [
            Accepted(
                id=str(item.get("id")),
                duplicate=bool(item.get("duplicate", False)),
                idempotency_key=f"{key} #{i}",
                attempts=answer.attempts,
            )
            for i, item in enumerate(body["events"])
            if isinstance(item, dict)
        ]
        return BatchAccepted(
            ids=[str(i) for i in body["ids"]],
            events=events,
            idempotency_key=key,
            attempts=answer.attempts,
        )

    def json_object(self, answer: Optional[_Answer], call: _Call) -> Optional[JSON]:
        if answer is None:
            return None
        if not isinstance(answer.body, dict):
            raise self._unexpected(answer, call.path)
        return answer.body


def _from_env(overrides: Dict[str, Any]) -> Dict[str, Any]:
    options: Dict[str, Any] = {
        "base_url": _env("HOOKRELAY_URL") or DEFAULT_URL,
        "ingest_secret": _env("HOOKRELAY_INGEST_SECRET"),
        "admin_token": _env("HOOKRELAY_ADMIN_TOKEN"),
    }
    options.update(overrides)
    return options


class HookrelayClient:
    """A blocking client. Thread-safe (one ``httpx.Client`` underneath); use it as a context
    manager or call :meth:`close`.

    Args:
        base_url: where hookrelay listens (default ``http://127.0.0.1:8000``).
        ingest_secret: ``HOOKRELAY_INGEST_SECRET`` as hookrelay has it (a comma-separated
            rotation list is signed with every secret in it); ``None`` sends unsigned requests.
        admin_token: ``HOOKRELAY_ADMIN_TOKEN``, for :meth:`health`, :meth:`session_stats`…
        timeout: seconds for one attempt (connect, send, answer).
        max_retries: retries after the first attempt (0: never retry).
        max_retry_wait: seconds of waiting between attempts, in all, for one call; a retry that
            would wait longer is not made and the error is raised with its ``retry_after``.
        transport: an ``httpx`` transport (tests use ``httpx.MockTransport``).
        verify: TLS verification, as ``httpx`` takes it (``True``, a CA bundle path, an
            ``ssl.SSLContext``).
        trust_env: whether ``httpx`` reads proxy and CA settings from the environment
            (``HTTPS_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE``…).
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        ingest_secret: Union[None, str, bytes, Sequence[Union[str, bytes]]] = None,
        admin_token: Optional[str] = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        user_agent: Optional[str] = None,
        transport: Optional[httpx.BaseTransport] = None,
        verify: Union[bool, str, ssl.SSLContext] = True,
        trust_env: bool = True,
    ) -> None:
        self._core = _Core(
            base_url, ingest_secret, admin_token, timeout, max_retries, max_retry_wait, user_agent
        )
        self._http = httpx.Client(
            timeout=timeout, transport=transport, verify=verify, trust_env=trust_env
        )
        self._sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_env(cls, **overrides: Any) -> "HookrelayClient":
        """Configured from ``HOOKRELAY_URL`` (default ``http://127.0.0.1:8000``),
        ``HOOKRELAY_INGEST_SECRET`` and ``HOOKRELAY_ADMIN_TOKEN``; keyword arguments win."""
        return cls(**_from_env(overrides))

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HookrelayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: _Call) -> Optional[_Answer]:
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    call.method, self._core.url(call), content=call.body, headers=self._core.headers(call)
                )
            except httpx.UnsupportedProtocol:
                raise
            except httpx.TransportError as exc:
                error = self._core.transport_error(exc, attempt)
            else:
                answer, failure = self._core.read(response, attempt)
                if answer is not None:
                    return answer
                assert failure is not None
                if call.not_found_is_none and isinstance(failure, NotFound):
                    return None
                error = failure
            delay = self._core.retry_delay(error, attempt, waited)
            if delay is None:
                raise error
            self._sleep(delay)
            waited += delay

    def track_usage(
        self,
        session_id: str,
        query: str,
        model_name: str,
        response_time_ms: int,
        estimated_tokens: int,
        success: bool,
        user_agent: Optional[str] = None,
        *,
        idempotency_key: Optional[str] = None,
    ) -> Accepted:
        """Records one LLM call; returns once hookrelay has it on disk."""
        event = UsageEvent(
            session_id, query, model_name, response_time_ms, estimated_tokens, success, user_agent
        )
        call = self._core.usage_call(event, idempotency_key)
        answer = self._send(call)
        assert answer is not None
        return self._core.accepted(answer, call)

    def track_usage_batch(
        self, events: Iterable[EventLike], *, idempotency_key: Optional[str] = None
    ) -> BatchAccepted:
        """Records up to 1000 LLM calls in one request, all or nothing. Items are
        :class:`UsageEvent` or dicts with the guide's names."""
        call = self._core.batch_call(events, idempotency_key)
        answer = self._send(call)
        assert answer is not None
        return self._core.batch_accepted(answer, call)

    def send_event(
        self, type: str, data: Any, idempotency_key: Optional[str] = None
    ) -> Accepted:
        """Records any event (``alert.fired``…), delivered as ``{event_id, event_type,
        timestamp, data}``."""
        call = self._core.event_call(type, data, idempotency_key)
        answer = self._send(call)
        assert answer is not None
        return self._core.accepted(answer, call)

    def health(self) -> JSON:
        """``GET /api/v1/health`` (admin): the status report, with the guide's ``health``,
        ``metrics`` and ``alerts`` blocks and more (``windows``, ``queue``, ``endpoints``)."""
        call = self._core.admin_call("/api/v1/health")
        result = self._core.json_object(self._send(call), call)
        assert result is not None
        return result

    def metrics(self) -> JSON:
        """The report's ``metrics`` block: ``total_sent``, ``success_rate``,
        ``success_rate_1hour``, ``avg_response_time_ms``, ``p95_response_time_ms`` (rates and
        times are ``None`` before any delivery attempt)."""
        metrics = self.health().get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    def session_stats(self, session_id: str) -> Optional[JSON]:
        """``GET /api/v1/sessions/{id}`` (admin), or ``None`` for a session hookrelay has no
        record of."""
        call = self._core.admin_call(self._core.session_path(session_id), not_found_is_none=True)
        return self._core.json_object(self._send(call), call)

    def analytics(self, days: int = 7) -> JSON:
        """``GET /api/v1/analytics?days=N`` (admin)."""
        call = self._core.admin_call(f"/api/v1/analytics?days={int(days)}")
        result = self._core.json_object(self._send(call), call)
        assert result is not None
        return result


class AsyncHookrelayClient:
    """The asyncio client; the same arguments and methods as :class:`HookrelayClient`, as
    coroutines. Use it as an async context manager or ``await client.aclose()``. An instance
    belongs to the event loop it is first used on."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        ingest_secret: Union[None, str, bytes, Sequence[Union[str, bytes]]] = None,
        admin_token: Optional[str] = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        user_agent: Optional[str] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        verify: Union[bool, str, ssl.SSLContext] = True,
        trust_env: bool = True,
    ) -> None:
        self._core = _Core(
            base_url, ingest_secret, admin_token, timeout, max_retries, max_retry_wait, user_agent
        )
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, verify=verify, trust_env=trust_env
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def from_env(cls, **overrides: Any) -> "AsyncHookrelayClient":
        """Configured from ``HOOKRELAY_URL``, ``HOOKRELAY_INGEST_SECRET`` and
        ``HOOKRELAY_ADMIN_TOKEN``; keyword arguments win."""
        return cls(**_from_env(overrides))

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncHookrelayClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Optional[_Answer]:
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    call.method, self._core.url(call), content=call.body, headers=self._core.headers(call)
                )
            except httpx.UnsupportedProtocol:
                raise
            except httpx.TransportError as exc:
                error = self._core.transport_error(exc, attempt)
            else:
                answer, failure = self._core.read(response, attempt)
                if answer is not None:
                    return answer
                assert failure is not None
                if call.not_found_is_none and isinstance(failure, NotFound):
                    return None
                error = failure
            delay = self._core.retry_delay(error, attempt, waited)
            if delay is None:
                raise error
            await self._sleep(delay)
            waited += delay

    async def track_usage(
        self,
        session_id: str,
        query: str,
        model_name: str,
        response_time_ms: int,
        estimated_tokens: int,
        success: bool,
        user_agent: Optional[str] = None,
        *,
        idempotency_key: Optional[str] = None,
    ) -> Accepted:
        """Records one LLM call; returns once hookrelay has it on disk."""
        event = UsageEvent(
            session_id, query, model_name, response_time_ms, estimated_tokens, success, user_agent
        )
        call = self._core.usage_call(event, idempotency_key)
        answer = await self._send(call)
        assert answer is not None
        return self._core.accepted(answer, call)

    async def track_usage_batch(
        self, events: Iterable[EventLike], *, idempotency_key: Optional[str] = None
    ) -> BatchAccepted:
        """Records up to 1000 LLM calls in one request, all or nothing."""
        call = self._core.batch_call(events, idempotency_key)
        answer = await self._send(call)
        assert answer is not None
        return self._core.batch_accepted(answer, call)

    async def send_event(
        self, type: str, data: Any, idempotency_key: Optional[str] = None
    ) -> Accepted:
        """Records any event (``alert.fired``…)."""
        call = self._core.event_call(type, data, idempotency_key)
        answer = await self._send(call)
        assert answer is not None
        return self._core.accepted(answer, call)

    async def health(self) -> JSON:
        """``GET /api/v1/health`` (admin): the status report."""
        call = self._core.admin_call("/api/v1/health")
        result = self._core.json_object(await self._send(call), call)
        assert result is not None
        return result

    async def metrics(self) -> JSON:
        """The report's ``metrics`` block (see :meth:`HookrelayClient.metrics`)."""
        metrics = (await self.health()).get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    async def session_stats(self, session_id: str) -> Optional[JSON]:
        """``GET /api/v1/sessions/{id}`` (admin), or ``None`` for an unknown session."""
        call = self._core.admin_call(self._core.session_path(session_id), not_found_is_none=True)
        return self._core.json_object(await self._send(call), call)

    async def analytics(self, days: int = 7) -> JSON:
        """``GET /api/v1/analytics?days=N`` (admin)."""
        call = self._core.admin_call(f"/api/v1/analytics?days={int(days)}")
        result = self._core.json_object(await self._send(call), call)
        assert result is not None
        return result

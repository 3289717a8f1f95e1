"""Receiver side: verify a delivery from hookrelay before trusting it.

hookrelay signs every delivery (when ``WEBHOOK_SECRET`` is set) with the Standard Webhooks
headers ``webhook-id`` (the event id, the same on every attempt), ``webhook-timestamp`` (unix
seconds of the attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, possibly several space-separated during a secret rotation), plus the
guide's ``X-Webhook-Signature: sha256=<hex HMAC of the body>``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

from .errors import WebhookVerificationError
from .signing import verify_body_signature, verify_signature

__all__ = ["verify_webhook", "HeadersLike"]

HeadersLike = Union[Mapping[str, str], Iterable[Tuple[str, str]]]


def _lower_headers(headers: Any) -> dict[str, str]:
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        out[str(name).lower()] = str(value)
    return out


def _fail(code: str, detail: str) -> WebhookVerificationError:
    return WebhookVerificationError(detail, status=None, code=code)


def verify_webhook(
    secret: Union[str, bytes, Sequence[Union[str, bytes]]],
    headers: HeadersLike,
    body: Union[bytes, str],
    tolerance: float = 300,
    *,
    accept_body_signature: bool = False,
    legacy_header: str = "X-Webhook-Signature",
    now: Optional[float] = None,
) -> Any:
    """Verifies a delivery and returns its JSON payload (parsed).

    Args:
        secret: ``WEBHOOK_SECRET`` as configured on hookrelay (or the endpoint's own secret);
            a list of secrets is accepted too, for a rotation on the receiver's side.
        headers: the request's headers: any mapping (Flask's ``request.headers``, Starlette's
            ``request.headers``, a ``dict``) or an iterable of ``(name, value)`` pairs. Names
            are matched case-insensitively.
        body: the raw request body, exactly as received (bytes; not re-serialised JSON).
        tolerance: seconds ``webhook-timestamp`` may be from now, either way.
        accept_body_signature: when the Standard Webhooks headers are absent, accept the
            guide's body-only header (``legacy_header``) instead. It has no timestamp, so a
            captured delivery could be replayed; off by default.
        now: the current unix time, for tests.

    Raises:
        WebhookVerificationError: with ``code`` ``missing_signature``,
            ``malformed_signature``, ``signature_expired`` or ``invalid_signature`` (or
            ``invalid_payload`` when a verified body is not JSON).
    """
    secrets_: Sequence[Union[str, bytes]] = (
        [secret] if isinstance(secret, (str, bytes)) else list(secret)
    )
    if not secrets_:
        raise ValueError("no secret to verify with")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    h = _lower_headers(headers)
    signature = h.get("webhook-signature")
    if signature is None:
        legacy = h.get(legacy_header.lower())
        if legacy is not None and accept_body_signature:
            if not any(verify_body_signature(s, raw, legacy) for s in secrets_):
                raise _fail("invalid_signature", f"{legacy_header} does not match the body")
            return _payload(raw)
        raise _fail(
            "missing_signature",
            "no webhook-signature header (Standard Webhooks)"
            + (f"; {legacy_header} alone is not accepted" if legacy is not None else ""),
        )
    msg_id = h.get("webhook-id")
    if not msg_id:
        raise _fail("malformed_signature", "webhook-id is missing")
    ts_text = h.get("webhook-timestamp")
    if ts_text is None:
        raise _fail("malformed_signature", "webhook-timestamp is missing")
    try:
        timestamp = int(ts_text.strip())
    except ValueError:
        raise _fail("malformed_signature", "webhook-timestamp is not a number of seconds") from None
    if not any(entry.startswith("v1,") and len(entry) > 3 for entry in signature.split()):
        raise _fail("malformed_signature", "webhook-signature holds no v1,<base64> signature")
    current = time.time() if now is None else now
    skew = current - timestamp
    if abs(skew) > tolerance:
        raise _fail(
            "signature_expired",
            f"webhook-timestamp is {skew:.0f} s away from now, beyond the {tolerance:g} s tolerance",
        )
    if not any(verify_signature(s, msg_id, timestamp, raw, signature) for s in secrets_):
        raise _fail("invalid_signature", "webhook-signature does not match the body with the secret")
    return _payload(raw)


def _payload(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise _fail("invalid_payload", "the body verified but is not JSON") from None

"""Standard Webhooks signatures (and the guide's body-only HMAC), with the standard library.

The key: a secret of the form ``whsec_<base64>`` is base64-decoded; any other string is used
as its UTF-8 bytes, exactly as hookrelay does (and as ``openssl dgst -hmac "$SECRET"`` does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Dict, Optional, Union

__all__ = [
    "secret_key",
    "new_message_id",
    "sign",
    "sign_headers",
    "verify_signature",
    "body_signature",
    "verify_body_signature",
]

Bytes = Union[bytes, str]


def _bytes(value: Bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def secret_key(secret: Union[str, bytes]) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded, anything else as its bytes."""
    if isinstance(secret, bytes):
        return secret
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "a secret starting with whsec_ must continue with base64"
            ) from None
        if not key:
            raise ValueError("the secret is empty")
        return key
    if not secret:
        raise ValueError("the secret is empty")
    return secret.encode("utf-8")


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 128 random bits. Every request (every retry
    too) needs its own, since hookrelay accepts an id only once."""
    return "msg_" + secrets.token_hex(16)


def _mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = msg_id.encode("utf-8") + b"." + str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: Union[str, bytes], msg_id: str, timestamp: int, body: Bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    mac = _mac(secret_key(secret), msg_id, timestamp, _bytes(body))
    return "v1," + base64.b64encode(mac).decode("ascii")


def sign_headers(
    secret: Union[str, bytes],
    body: Bytes,
    *,
    msg_id: Optional[str] = None,
    timestamp: Optional[int] = None,
) -> Dict[str, str]:
    """The three Standard Webhooks headers for ``body``, with a fresh id and the current time
    unless given."""
    msg_id = msg_id or new_message_id()
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify_signature(
    secret: Union[str, bytes], msg_id: str, timestamp: int, body: Bytes, header: str
) -> bool:
    """Whether one of the space-separated ``v1,<base64>`` entries of a ``webhook-signature``
    header is the HMAC of ``id.timestamp.body``. One HMAC, constant-time comparisons with every
    entry; entries of other versions or undecodable ones are skipped."""
    expected = _mac(secret_key(secret), msg_id, timestamp, _bytes(body))
    found = False
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every entry is compared, so the time taken does not say which one matched.
        found = hmac.compare_digest(expected, candidate) or found
    return found


_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def body_signature(secret: Union[str, bytes], body: Bytes, algorithm: str = "sha256") -> str:
    """The guide's header value (``X-Webhook-Signature``): ``sha256=<hex HMAC of the body>``.
    It carries no timestamp or id, so it cannot be protected against replay: prefer
    Standard Webhooks."""
    digest = _ALGORITHMS[algorithm]
    return f"{algorithm}=" + hmac.new(secret_key(secret), _bytes(body), digest).hexdigest()


def verify_body_signature(secret: Union[str, bytes], body: Bytes, header: str) -> bool:
    """Whether ``header`` (``sha256=<hex>``, ``sha512=<hex>`` or bare hex for sha256) is the
    HMAC of the body; constant-time."""
    algorithm, sep, value = header.strip().partition("=")
    if not sep:
        algorithm, value = "sha256", header.strip()
    digest = _ALGORITHMS.get(algorithm.lower())
    if digest is None:
        return False
    expected = hmac.new(secret_key(secret), _bytes(body), digest).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), value.lower().encode("ascii", "replace"))

"""Typed errors.

Every error the client raises is a :class:`HookrelayError`. Its subclasses are the cases a
caller branches on:

========================  ==========================================================
``InvalidRequest``        400, 404, 405, 413, 415, 422, 431: the request itself is wrong
                          (``code`` says how: ``invalid_field``, ``idempotency_key_reused``…);
                          retrying the same request cannot succeed.
``Unauthorized``          401: a missing, wrong, stale or replayed signature, or a missing
                          or wrong admin token. ``Forbidden`` (403) is a subclass.
``RateLimited``           429 after the retries allowed; ``retry_after`` says when to come back.
``Unavailable``           503 (``overloaded``, ``storage_unavailable``), 507 (``storage_full``),
                          408, 502, 504 after the retries allowed, and ``ConnectionFailed``
                          (no answer at all: refused, reset, timed out).
``ServerError``           500 and any other status.
``WebhookVerificationError``  raised by :func:`hookrelay.verify_webhook` on the receiver side.
========================  ==========================================================
"""

from __future__ import annotations

from typing import Optional

__all__ = [
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
    "error_for_status",
]


class HookrelayError(Exception):
    """An error answered by hookrelay (or no answer at all).

    Attributes:
        status: the HTTP status, ``None`` when no answer arrived.
        code: the stable machine-readable code from the ``{"code", "detail"}`` body
            (``invalid_field``, ``rate_limited``…), or a client-side one
            (``connection_error``, ``unexpected_response``).
        detail: the human-readable detail; names the field or limit at fault.
        retry_after: seconds the server asked to wait (``Retry-After``), if it did.
        attempts: how many requests this call made before giving up.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        retry_after: Optional[float] = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.attempts = attempts

    def __str__(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(str(self.status))
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        text = f"{head}: {self.detail}" if head else self.detail
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g} s)"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"detail={self.detail!r}, retry_after={self.retry_after!r}, attempts={self.attempts!r})"
        )


class InvalidRequest(HookrelayError):
    """The request is wrong (4xx other than 401, 403, 408, 429): retrying it cannot help."""


class NotFound(InvalidRequest):
    """404: no such route or resource."""


class Unauthorized(HookrelayError):
    """401: the signature or the admin token was refused."""


class Forbidden(Unauthorized):
    """403: the address is not allowed, or management is closed to it."""


class RateLimited(HookrelayError):
    """429: over the client's rate limit; ``retry_after`` says when to come back."""


class Unavailable(HookrelayError):
    """hookrelay cannot take the request now (503, 507, 408, 502, 504, or no answer); nothing
    was stored, and the same call (same idempotency key) may be made again later."""


class ConnectionFailed(Unavailable):
    """No answer: the connection was refused, reset or timed out."""


class ServerError(HookrelayError):
    """500 or an unexpected status or body."""


class WebhookVerificationError(HookrelayError):
    """A delivery's signature did not verify (receiver side). ``code`` is one of
    ``missing_signature``, ``malformed_signature``, ``invalid_signature``,
    ``signature_expired``."""


def error_for_status(
    status: int,
    code: Optional[str],
    detail: str,
    retry_after: Optional[float] = None,
    attempts: int = 1,
) -> HookrelayError:
    """The typed error for an HTTP error answer."""
    cls: type[HookrelayError]
    if status == 401:
        cls = Unauthorized
    elif status == 403:
        cls = Forbidden
    elif status == 429:
        cls = RateLimited
    elif status in (408, 502, 503, 504, 507):
        cls = Unavailable
    elif status == 404:
        cls = NotFound
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = ServerError
    return cls(detail, status=status, code=code, retry_after=retry_after, attempts=attempts)

"""Signing and verification against vectors computed independently of this package."""

from __future__ import annotations

import base64
import shutil
import subprocess
from typing import Dict

import pytest

from hookrelay import WebhookVerificationError, sign, sign_headers, verify_signature, verify_webhook
from hookrelay.signing import body_signature, secret_key, verify_body_signature

# The example of the Standard Webhooks reference libraries' test suites.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhooks_reference_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert verify_signature(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE)
    headers = {
        "Webhook-Id": SPEC_ID,
        "Webhook-Timestamp": str(SPEC_TIMESTAMP),
        "Webhook-Signature": SPEC_SIGNATURE,
    }
    assert verify_webhook(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 10) == {
        "test": 2432232314
    }


openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def _openssl_hmac(key: str, data: bytes, binary: bool) -> bytes:
    args = ["openssl", "dgst", "-sha256", "-hmac", key] + (["-binary"] if binary else [])
    out = subprocess.run(args, input=data, capture_output=True, check=True).stdout
    return out if binary else out.decode().split("= ")[-1].strip().encode()


@openssl
def test_plain_secret_matches_openssl_as_the_readme_signs() -> None:
    # The README's curl example: printf '%s' "$MSG_ID.$TS.$BODY" | openssl dgst -sha256 -hmac "$SECRET" -binary | base64
    secret = "a plain secret, used as its bytes"
    body = '{"session_id":"s","query":"ümlaut","model_name":"m","response_time_ms":1,"estimated_tokens":1,"success":true}'
    expected = "v1," + base64.b64encode(
        _openssl_hmac(secret, f"msg_abc.1700000000.{body}".encode(), binary=True)
    ).decode()
    assert sign(secret, "msg_abc", 1700000000, body.encode()) == expected
    assert body_signature(secret, body) == "sha256=" + _openssl_hmac(secret, body.encode(), False).decode()


def test_whsec_secret_is_base64_decoded() -> None:
    assert secret_key("whsec_aGVsbG8=") == b"hello"
    assert secret_key("hello") == b"hello"
    assert sign("whsec_aGVsbG8=", "m", 1, b"x") == sign("hello", "m", 1, b"x")
    with pytest.raises(ValueError):
        secret_key("whsec_***")
    with pytest.raises(ValueError):
        secret_key("")


def test_sign_headers_uses_a_fresh_id_each_time() -> None:
    a = sign_headers("k", b"{}")
    b = sign_headers("k", b"{}")
    assert a["webhook-id"] != b["webhook-id"]
    assert a["webhook-id"].startswith("msg_")
    assert verify_signature("k", a["webhook-id"], int(a["webhook-timestamp"]), b"{}", a["webhook-signature"])


def _headers(secret: str = "s3cret", body: bytes = b'{"a":1}', ts: int = 1_700_000_000) -> Dict[str, str]:
    return sign_headers(secret, body, msg_id="msg_1", timestamp=ts)


NOW = 1_700_000_000


def _code(secret: object, headers: object, body: bytes, **kw: object) -> str:
    with pytest.raises(WebhookVerificationError) as error:
        verify_webhook(secret, headers, body, now=NOW, **kw)  # type: ignore[arg-type]
    assert error.value.code is not None
    return error.value.code


def test_verifier_accepts_any_header_spelling_and_pairs() -> None:
    h = _headers()
    assert verify_webhook("s3cret", h, b'{"a":1}', now=NOW) == {"a": 1}
    assert verify_webhook("s3cret", {k.upper(): v for k, v in h.items()}, '{"a":1}', now=NOW) == {"a": 1}
    assert verify_webhook("s3cret", list(h.items()), b'{"a":1}', now=NOW) == {"a": 1}


def test_verifier_refuses_tampering_wrong_secret_and_stale_or_future_timestamps() -> None:
    h = _headers()
    assert _code("s3cret", h, b'{"a":2}') == "invalid_signature"
    assert _code("other", h, b'{"a":1}') == "invalid_signature"
    assert _code("s3cret", _headers(ts=NOW - 301), b'{"a":1}') == "signature_expired"
    assert _code("s3cret", _headers(ts=NOW + 301), b'{"a":1}') == "signature_expired"
    verify_webhook("s3cret", _headers(ts=NOW - 299), b'{"a":1}', now=NOW)
    assert _code("s3cret", _headers(ts=NOW - 61), b'{"a":1}', tolerance=60) == "signature_expired"
    # The signature binds the id and the timestamp too.
    assert _code("s3cret", {**h, "webhook-id": "msg_2"}, b'{"a":1}') == "invalid_signature"


def test_verifier_reports_missing_and_malformed_headers() -> None:
    h = _headers()
    assert _code("s3cret", {}, b'{"a":1}') == "missing_signature"
    assert _code("s3cret", {k: v for k, v in h.items() if k != "webhook-id"}, b'{"a":1}') == "malformed_signature"
    assert _code("s3cret", {**h, "webhook-timestamp": "soon"}, b'{"a":1}') == "malformed_signature"
    assert _code("s3cret", {**h, "webhook-signature": "v2,abc"}, b'{"a":1}') == "malformed_signature"


def test_verifier_accepts_any_of_several_signatures_and_several_secrets() -> None:
    h = _headers()
    rotated = {**h, "webhook-signature": "v1,AAAA v1,bm90LWJhc2U2NA== " + h["webhook-signature"]}
    assert verify_webhook("s3cret", rotated, b'{"a":1}', now=NOW) == {"a": 1}
    assert verify_webhook(["new", "s3cret"], h, b'{"a":1}', now=NOW) == {"a": 1}


def test_body_only_signature_is_accepted_only_when_asked() -> None:
    body = b'{"a":1}'
    legacy = {"X-Webhook-Signature": body_signature("s3cret", body)}
    assert _code("s3cret", legacy, body) == "missing_signature"
    assert verify_webhook("s3cret", legacy, body, accept_body_signature=True) == {"a": 1}
    assert _code("s3cret", legacy, b'{"a":2}', accept_body_signature=True) == "invalid_signature"
    assert verify_body_signature("s3cret", body, legacy["X-Webhook-Signature"].split("=", 1)[1])
    assert not verify_body_signature("s3cret", body, "md5=00")

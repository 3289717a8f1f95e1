"""Schemathesis hooks for .ci/fuzz-api.

An idempotency key sent again with a different request is refused (422 idempotency_key_reused),
as the IETF Idempotency-Key draft asks, and a header key that differs from the body's
`idempotency_key` is refused (422 conflicting_idempotency_key). The generator draws keys from a
small space and pairs them at random, so valid requests would hit both rules by chance. Each
valid key is made unique here (still valid), and a valid body key follows the header's, so a
refusal the fuzzer sees is about the input it generated. Invalid keys are left as generated.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!-~]{1,255}")
# Hooks may run more than once on a case: a key made unique once is left alone.
UNIQUE = re.compile(r".*-u[0-9a-f]{32}")


def _valid(value):
    return isinstance(value, str) and VALID_KEY.fullmatch(value) is not None


def _unique(key):
    if UNIQUE.fullmatch(key):
        return key
    return f"{key[:200]}-u{uuid.uuid4().hex}"


def _fix_keys(case):
    headers = case.headers or {}
    header_key = headers.get("Idempotency-Key")
    if _valid(header_key):
        header_key = _unique(header_key)
        headers["Idempotency-Key"] = header_key
        case.headers = headers
    body = case.body
    if isinstance(body, dict) and _valid(body.get("idempotency_key")):
        body["idempotency_key"] = header_key if _valid(header_key) else _unique(body["idempotency_key"])
    return case


@schemathesis.hook
def map_case(context, case):
    return _fix_keys(case)


# Some phases adjust a case after mapping it; this runs last, just before the request is built.
@schemathesis.hook
def before_call(context, case, kwargs):
    _fix_keys(case)

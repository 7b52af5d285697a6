"""Tests of rollback.signing against the independent `standardwebhooks` library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from rollback.signing import (
    SignatureError,
    new_secret,
    parse_secret,
    sign,
    signed_headers,
    verify,
)

PROPERTY = settings(max_examples=100, deadline=None)
BODY = b'{"canary_version":"v2","model":"card-fraud","type":"driftgate.rollback"}'


def library_headers(secret: str, msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    """Headers signed by the reference library."""
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


# --------------------------------------------------------------- secrets
def test_parse_secret_prefixed_plain_and_unpadded() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    b64 = base64.b64encode(key).decode()
    assert parse_secret("whsec_" + b64) == key
    assert parse_secret(b64) == key
    assert parse_secret("whsec_" + b64.rstrip("=")) == key


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_***not-base64***", "abc$", "===="])
def test_parse_secret_rejects_without_echoing(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as info:
        parse_secret(bad)
    body = bad.removeprefix("whsec_")
    if len(body) > 2:
        assert body not in str(info.value)


def test_parse_secret_error_never_contains_a_real_looking_secret() -> None:
    secret = "whsec_" + "A" * 31 + "!"  # invalid character at the end
    with pytest.raises(ValueError, match="not valid base64") as info:
        parse_secret(secret)
    assert "A" * 8 not in str(info.value)


def test_parse_secret_rejects_non_str() -> None:
    with pytest.raises(ValueError, match="must be a str"):
        parse_secret(b"whsec_abc")  # type: ignore[arg-type]


def test_new_secret_is_32_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_")
    assert b.startswith("whsec_")
    assert len(parse_secret(a)) == 32
    assert a != b
    Webhook(a)  # the reference library accepts it


# ------------------------------------------------------ interoperability
@PROPERTY
@given(msg_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                      max_size=40),
       body=st.binary(max_size=200).map(lambda b: base64.b64encode(b)),
       key=st.binary(min_size=1, max_size=64))
def test_our_signature_verifies_with_the_library(msg_id: str, body: bytes, key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    ts = int(time.time())
    headers = signed_headers([secret], msg_id, ts, body)
    Webhook(secret).verify(body, headers, json_parse=False)
    assert headers["webhook-signature"] == library_headers(
        secret, msg_id, ts, body)["webhook-signature"]


def test_library_signature_verifies_with_ours() -> None:
    secret = new_secret()
    ts = int(time.time())
    verify([secret], library_headers(secret, "msg_2Zk", ts, BODY), BODY)


def test_headers_are_complete_and_case_insensitive_on_verify() -> None:
    secret = new_secret()
    ts = int(time.time())
    h = signed_headers([secret], "msg_1", ts, BODY)
    assert h["content-type"] == "application/json"
    assert h["webhook-timestamp"] == str(ts)
    verify([secret], {k.title(): v for k, v in h.items()}, BODY)
    # the library parses the body as JSON by default: our body is JSON
    assert Webhook(secret).verify(BODY, h)["model"] == "card-fraud"


# ------------------------------------------------------------ rejections
def test_tampered_body_is_rejected_by_both() -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", int(time.time()), BODY)
    tampered = BODY.replace(b"v2", b"v1")
    with pytest.raises(SignatureError, match="no matching signature"):
        verify([secret], h, tampered)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, h)


def test_tampered_id_is_rejected() -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", int(time.time()), BODY)
    h["webhook-id"] = "msg_2"
    with pytest.raises(SignatureError):
        verify([secret], h, BODY)


def test_wrong_secret_is_rejected_by_both() -> None:
    signer, other = new_secret(), new_secret()
    h = signed_headers([signer], "msg_1", int(time.time()), BODY)
    with pytest.raises(SignatureError, match="no matching signature"):
        verify([other], h, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, h)


@pytest.mark.parametrize("offset", [-301, 301, -3600, 86_400])
def test_timestamp_outside_tolerance_is_rejected_by_both(offset: int) -> None:
    secret = new_secret()
    ts = int(time.time()) + offset
    h = signed_headers([secret], "msg_1", ts, BODY)
    with pytest.raises(SignatureError, match="outside the tolerance"):
        verify([secret], h, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, h)


def test_tolerance_and_injected_now() -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", 1_000_000, BODY)
    verify([secret], h, BODY, now=1_000_300)
    verify([secret], h, BODY, now=999_700)
    verify([secret], h, BODY, tolerance_s=10, now=1_000_010)
    with pytest.raises(SignatureError):
        verify([secret], h, BODY, tolerance_s=10, now=1_000_011)
    with pytest.raises(ValueError, match="tolerance_s"):
        verify([secret], h, BODY, tolerance_s=-1, now=1_000_000)


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_rejected(drop: str) -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", int(time.time()), BODY)
    del h[drop]
    with pytest.raises(SignatureError, match=drop):
        verify([secret], h, BODY)


@pytest.mark.parametrize("ts", ["abc", "1.5e9", "-5", ""])
def test_malformed_timestamp_is_rejected(ts: str) -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", int(time.time()), BODY)
    h["webhook-timestamp"] = ts
    with pytest.raises(SignatureError):
        verify([secret], h, BODY)


@pytest.mark.parametrize("sig", ["garbage", "v1,", "v1,!!!", "v2,AAAA", "v1a,AAAA v1"])
def test_malformed_signatures_are_rejected_not_crashing(sig: str) -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", int(time.time()), BODY)
    h["webhook-signature"] = sig
    with pytest.raises(SignatureError, match="no matching signature"):
        verify([secret], h, BODY)


def test_other_versions_are_skipped_next_to_a_valid_v1() -> None:
    secret = new_secret()
    h = signed_headers([secret], "msg_1", int(time.time()), BODY)
    h["webhook-signature"] = "v1a,c29tZXRoaW5n " + h["webhook-signature"]
    verify([secret], h, BODY)


# -------------------------------------------------------------- rotation
def test_rotation_header_with_two_signatures_verifies_with_either_secret() -> None:
    old, new = new_secret(), new_secret()
    ts = int(time.time())
    h = signed_headers([old, new], "msg_rot", ts, BODY)
    parts = h["webhook-signature"].split(" ")
    assert len(parts) == 2
    assert all(p.startswith("v1,") for p in parts)
    assert parts[0] == sign([old], "msg_rot", ts, BODY)
    assert parts[1] == sign([new], "msg_rot", ts, BODY)
    for secret in (old, new):
        verify([secret], h, BODY)
        Webhook(secret).verify(BODY, h)
    with pytest.raises(SignatureError):
        verify([new_secret()], h, BODY)


def test_receiver_with_several_secrets_accepts_either_sender() -> None:
    old, new = new_secret(), new_secret()
    ts = int(time.time())
    for sender in (old, new):
        verify([old, new], signed_headers([sender], "msg_1", ts, BODY), BODY)


# ------------------------------------------------------------ validation
def test_sign_validates_its_arguments() -> None:
    s = new_secret()
    with pytest.raises(ValueError, match="secrets is empty"):
        sign([], "m", 1, b"")
    with pytest.raises(ValueError, match="not a single str"):
        sign(s, "m", 1, b"")
    with pytest.raises(ValueError, match="msg_id"):
        sign([s], "", 1, b"")
    with pytest.raises(ValueError, match="msg_id"):
        sign([s], "has space", 1, b"")
    with pytest.raises(ValueError, match="timestamp"):
        sign([s], "m", -1, b"")
    with pytest.raises(ValueError, match="timestamp"):
        sign([s], "m", 1.5, b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"secrets\[1\]"):
        sign([s, "whsec_%%%"], "m", 1, b"")
    with pytest.raises(ValueError, match="body must be bytes"):
        sign([s], "m", 1, "text")  # type: ignore[arg-type]

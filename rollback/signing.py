"""Standard Webhooks signing and verification.

Implements the `Standard Webhooks <https://www.standardwebhooks.com>`_ scheme,
interoperable with the ``standardwebhooks`` reference library:

* headers ``webhook-id``, ``webhook-timestamp`` (integer epoch seconds) and
  ``webhook-signature``;
* the signature is ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``;
  several space-separated signatures (one per secret) support key rotation;
* secrets are ``whsec_<base64 key>`` (the prefix is optional).

Secrets never appear in error messages.

Examples
--------
>>> secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> headers = signed_headers([secret], "msg_1", 1_700_000_000, b'{"a":1}')
>>> sorted(headers)
['content-type', 'webhook-id', 'webhook-signature', 'webhook-timestamp']
>>> headers["webhook-signature"].startswith("v1,")
True
>>> verify([secret], headers, b'{"a":1}', now=1_700_000_010)
>>> try:
...     verify([secret], headers, b'{"a":2}', now=1_700_000_010)
... except SignatureError as exc:
...     print(exc)
no matching signature
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

__all__ = ["SECRET_PREFIX", "SignatureError", "new_secret", "parse_secret", "sign",
           "signed_headers", "verify"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
_SIGNATURE_VERSION = "v1"


class SignatureError(ValueError):
    """A webhook failed verification (missing headers, stale timestamp, bad signature)."""


def parse_secret(secret: str) -> bytes:
    """Decode a webhook secret into its HMAC key.

    Parameters
    ----------
    secret : str
        ``"whsec_<base64>"`` or plain base64 (padding optional).

    Returns
    -------
    bytes
        The raw key.

    Raises
    ------
    ValueError
        When the secret is not a string, is empty, is not valid base64 or decodes
        to no bytes. The message never contains the secret itself.

    Examples
    --------
    >>> parse_secret("whsec_c2VjcmV0")
    b'secret'
    >>> parse_secret("c2VjcmV0")
    b'secret'
    >>> try:
    ...     parse_secret("whsec_not base64!")
    ... except ValueError as exc:
    ...     print(exc)
    webhook secret is not valid base64 (17 characters, after the optional 'whsec_' prefix)
    """
    if not isinstance(secret, str):
        raise ValueError(f"webhook secret must be a str, got {type(secret).__name__}")
    body = secret.strip()
    if body.startswith(SECRET_PREFIX):
        body = body[len(SECRET_PREFIX):]
    if not body:
        raise ValueError("webhook secret is empty")
    padded = body + "=" * (-len(body) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"webhook secret is not valid base64 ({len(secret)} characters, after the "
            f"optional {SECRET_PREFIX!r} prefix)") from None
    if not key:
        raise ValueError("webhook secret decodes to an empty key")
    return key


def _keys(secrets: Sequence[str]) -> list[bytes]:
    if isinstance(secrets, str):
        raise ValueError("secrets must be a sequence of secrets, not a single str")
    if len(secrets) == 0:
        raise ValueError("secrets is empty: at least one webhook secret is required")
    keys: list[bytes] = []
    for i, s in enumerate(secrets):
        try:
            keys.append(parse_secret(s))
        except ValueError as exc:
            raise ValueError(f"secrets[{i}]: {exc}") from None
    return keys


def _check_msg_id(msg_id: str) -> None:
    if not isinstance(msg_id, str) or not msg_id:
        raise ValueError(f"msg_id must be a non-empty str, got {msg_id!r}")
    if any(c.isspace() or not c.isprintable() for c in msg_id) or not msg_id.isascii():
        raise ValueError(f"msg_id must be printable ASCII without whitespace, got {msg_id!r}")


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be a non-negative int (epoch seconds), "
                         f"got {timestamp!r}")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, to_sign, hashlib.sha256).digest()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<base64>`` per secret.

    Parameters
    ----------
    secrets : sequence of str
        The signing secrets (several during rotation).
    msg_id : str
        The ``webhook-id``; the same on every retry of a message.
    timestamp : int
        The ``webhook-timestamp`` (epoch seconds) of this attempt.
    body : bytes
        The exact request body.

    Returns
    -------
    str
        Space-separated signatures, in the order of ``secrets``.

    Examples
    --------
    >>> sign(["whsec_c2VjcmV0"], "msg_1", 1700000000, b"{}")
    'v1,A5oIrJxXPB/PkULSoVu0e4khvPiqpF9vljmhkSKg0FI='
    >>> len(sign(["whsec_c2VjcmV0", "whsec_b3RoZXI="], "msg_1", 1700000000, b"{}").split())
    2
    """
    keys = _keys(secrets)
    _check_msg_id(msg_id)
    _check_timestamp(timestamp)
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ValueError(f"body must be bytes, got {type(body).__name__}")
    raw = bytes(body)
    return " ".join(
        f"{_SIGNATURE_VERSION},{base64.b64encode(_digest(k, msg_id, timestamp, raw)).decode()}"
        for k in keys)


def signed_headers(secrets: Sequence[str], msg_id: str, timestamp: int,
                   body: bytes) -> dict[str, str]:
    """All headers of a signed webhook request.

    Returns
    -------
    dict
        ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` and
        ``content-type: application/json``.

    Examples
    --------
    >>> h = signed_headers(["whsec_c2VjcmV0"], "msg_1", 1700000000, b"{}")
    >>> h["webhook-id"], h["webhook-timestamp"], h["content-type"]
    ('msg_1', '1700000000', 'application/json')
    """
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(secrets: Sequence[str], headers: Mapping[str, str], body: bytes,
           tolerance_s: int = 300, now: float | None = None) -> None:
    """Check a received webhook's signature and timestamp.

    Parameters
    ----------
    secrets : sequence of str
        Accepted secrets; a signature made with any of them is accepted.
    headers : mapping
        Request headers (names matched case-insensitively).
    body : bytes
        The exact request body.
    tolerance_s : int
        Maximum distance, in seconds, between ``webhook-timestamp`` and ``now``
        (either direction): replay protection.
    now : float, optional
        The current epoch time; ``time.time()`` when None.

    Raises
    ------
    SignatureError
        On a missing header, a malformed or out-of-tolerance timestamp, or when
        no ``v1`` signature matches (compared in constant time).
    ValueError
        When ``secrets`` or ``tolerance_s`` is invalid (a configuration error).

    Examples
    --------
    >>> h = signed_headers(["whsec_c2VjcmV0"], "msg_1", 1700000000, b"{}")
    >>> verify(["whsec_b3RoZXI=", "whsec_c2VjcmV0"], h, b"{}", now=1700000000)
    >>> try:
    ...     verify(["whsec_c2VjcmV0"], h, b"{}", now=1700000301)
    ... except SignatureError as exc:
    ...     print(exc)
    webhook-timestamp 1700000000 is outside the tolerance of 300 s (now 1700000301)
    """
    keys = _keys(secrets)
    if isinstance(tolerance_s, bool) or not isinstance(tolerance_s, int | float) \
            or not math.isfinite(tolerance_s) or tolerance_s < 0:
        raise ValueError(f"tolerance_s must be a finite number >= 0, got {tolerance_s!r}")
    lowered = {str(k).lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_header = lowered.get("webhook-timestamp")
    sig_header = lowered.get("webhook-signature")
    if not msg_id or not ts_header or not sig_header:
        missing = [name for name, value in (("webhook-id", msg_id),
                                            ("webhook-timestamp", ts_header),
                                            ("webhook-signature", sig_header)) if not value]
        raise SignatureError(f"missing required header(s): {', '.join(missing)}")
    ts_text = ts_header.strip()
    if not ts_text.isascii() or not ts_text.isdigit():
        raise SignatureError(f"webhook-timestamp is not integer epoch seconds: {ts_header!r}")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"webhook-timestamp {timestamp} is outside the tolerance of "
                             f"{tolerance_s} s (now {current:.0f})")
    to_sign = f"{msg_id}.{timestamp}.".encode() + bytes(body)
    expected = [hmac.new(k, to_sign, hashlib.sha256).digest() for k in keys]
    matched = False
    for candidate in sig_header.split():
        version, sep, encoded = candidate.partition(",")
        if not sep or version != _SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        for exp in expected:
            # no short-circuit: every candidate is compared with every key
            matched |= hmac.compare_digest(exp, given)
    if not matched:
        raise SignatureError("no matching signature")


def new_secret() -> str:
    """A fresh random secret: ``"whsec_"`` + base64 of 32 random bytes.

    Examples
    --------
    >>> s = new_secret()
    >>> s.startswith("whsec_"), len(parse_secret(s))
    (True, 32)
    """
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()

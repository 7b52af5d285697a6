"""Signed webhook delivery with retries, backoff, ``Retry-After`` and idempotence.

:class:`WebhookSender` POSTs one JSON body to one endpoint, signed with the
Standard Webhooks scheme (:mod:`rollback.signing`):

* the body is serialised **once** (compact JSON, sorted keys) and the same
  ``webhook-id`` is sent on every attempt, so receivers can deduplicate; the
  signature is recomputed per attempt with that attempt's ``webhook-timestamp``;
* timeouts, connection errors, 5xx and 429 are retried with exponential
  backoff ``initial_backoff_s * 2**(n-1)``, capped at ``max_backoff_s``, with
  ``± jitter`` relative noise; a ``Retry-After`` header (delay-seconds or an
  HTTP-date) on a 429 or 503 is honoured instead, capped at
  ``max_retry_after_s``;
* any other non-2xx status (other 4xx, and 1xx/3xx: redirects are not
  followed) is final: outcome ``rejected``;
* ``410 Gone`` disables the endpoint: that delivery and every later one end
  with outcome ``disabled`` and nothing more is sent;
* an id that was already delivered (the last ``remember_ids`` ids are kept)
  sends nothing and ends with outcome ``duplicate``; concurrent deliveries of
  one id are serialised, so at most one of them sends.

Attempt outcomes are ``delivered``, ``retry`` (another attempt follows),
``failed`` (retryable failure, no attempts left), ``rejected`` and
``disabled``; final outcomes are ``delivered``, ``rejected``, ``disabled``,
``exhausted`` and ``duplicate``.

Examples
--------
>>> import asyncio
>>> async def main() -> DeliveryResult:
...     async with WebhookSender("http://127.0.0.1:9/hook", ["whsec_c2VjcmV0"],
...                              max_attempts=2, initial_backoff_s=0.0) as sender:
...         return await sender.deliver("msg_1", {"type": "driftgate.rollback"})
>>> result = asyncio.run(main())  # nothing listens on port 9
>>> result.outcome, [a.outcome for a in result.attempts], result.delivered
('exhausted', ['retry', 'failed'], False)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from rollback.signing import parse_secret, signed_headers

__all__ = ["ATTEMPT_OUTCOMES", "FINAL_OUTCOMES", "Attempt", "DeliveryResult", "WebhookSender",
           "encode_body", "parse_retry_after"]

log = logging.getLogger("driftgate.delivery")

ATTEMPT_OUTCOMES = ("delivered", "retry", "failed", "rejected", "disabled")
FINAL_OUTCOMES = ("delivered", "rejected", "disabled", "exhausted", "duplicate")

_USER_AGENT = "driftgate-webhooks/1"
_MAX_ERROR_CHARS = 300
_MAX_BODY_SNIPPET = 200


@dataclass
class Attempt:
    """One HTTP attempt of a delivery.

    Attributes
    ----------
    number : int
        1-based attempt number.
    at : float
        Epoch time the attempt started (the injected clock).
    status : int or None
        HTTP status, None when no response arrived (timeout, connection error).
    error : str or None
        What went wrong (None on success).
    duration_s : float
        Time spent on the request.
    next_delay_s : float or None
        The delay before the next attempt; None when no attempt follows.
    outcome : str
        One of :data:`ATTEMPT_OUTCOMES`.
    """

    number: int
    at: float
    status: int | None
    error: str | None
    duration_s: float
    next_delay_s: float | None
    outcome: str


@dataclass
class DeliveryResult:
    """The end of one :meth:`WebhookSender.deliver` call.

    ``delivered`` is True when the receiver has accepted this webhook id: on
    this call (outcome ``delivered``) or an earlier one (outcome ``duplicate``,
    with no attempts).
    """

    webhook_id: str
    url: str
    attempts: list[Attempt] = field(default_factory=list)
    delivered: bool = False
    outcome: str = "exhausted"


def encode_body(payload: Mapping[str, Any] | bytes) -> bytes:
    """The request body: compact JSON with sorted keys (bytes are used as-is).

    Raises
    ------
    ValueError
        When the payload is not JSON-serialisable or holds NaN/infinity.

    Examples
    --------
    >>> encode_body({"b": 1, "a": [1.5, None]})
    b'{"a":[1.5,null],"b":1}'
    >>> encode_body(b'{"raw":true}')
    b'{"raw":true}'
    """
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if not isinstance(payload, Mapping):
        raise ValueError(f"payload must be a mapping or bytes, got {type(payload).__name__}")
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON-serialisable: {exc}") from None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date).

    Returns None when the header is absent or unparseable; a date in the past
    gives 0.

    Examples
    --------
    >>> parse_retry_after("1", now=0.0)
    1.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    >>> parse_retry_after("soon", now=0.0) is None
    True
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.replace(".", "", 1).isdigit():
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def _number(name: str, value: float, *, low: float, high: float = math.inf,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < low or (low_open and value == low) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = "" if math.isinf(high) else f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}{upper}, got {value!r}")
    return float(value)


def _check_webhook_id(webhook_id: str) -> None:
    if not isinstance(webhook_id, str) or not webhook_id:
        raise ValueError(f"webhook_id must be a non-empty str, got {webhook_id!r}")
    if len(webhook_id) > 256 or not webhook_id.isascii() \
            or any(c.isspace() or not c.isprintable() for c in webhook_id):
        raise ValueError("webhook_id must be at most 256 printable ASCII characters without "
                         f"whitespace, got {webhook_id!r}")


class WebhookSender:
    """Delivers signed webhooks to one endpoint.

    Parameters
    ----------
    url : str
        The endpoint (http or https).
    secrets : sequence of str
        Signing secrets (``whsec_...``); each signs, for key rotation.
    max_attempts : int
        Attempts per delivery, including the first.
    initial_backoff_s, max_backoff_s : float
        Backoff before attempt ``n + 1`` is ``initial_backoff_s * 2**(n-1)``,
        capped at ``max_backoff_s``.
    timeout_s : float
        Bound on each attempt (connect + send + response headers and body).
    jitter : float
        Relative random spread of each backoff, in ``[0, 1]``; the jittered
        delay never exceeds ``max_backoff_s``.
    max_retry_after_s : float
        Cap on a server's ``Retry-After``.
    client : httpx.AsyncClient, optional
        A shared client (not closed by :meth:`aclose`); by default the sender
        owns one.
    sleep : async callable
        Waits between attempts (inject a fake in tests).
    clock : callable
        Epoch seconds, for ``webhook-timestamp`` and :attr:`Attempt.at`.
    on_attempt : callable, optional
        ``on_attempt(attempt, webhook_id)`` after each attempt (metrics, audit);
        an exception it raises is logged and does not stop the delivery.
    name : str
        A label for logs and metrics.
    rng : random.Random, optional
        The jitter source (seed one for reproducible delays).
    remember_ids : int
        How many delivered ids are remembered for deduplication.

    Examples
    --------
    >>> sender = WebhookSender("https://router.example/rollback", ["whsec_c2VjcmV0"],
    ...                        jitter=0.0)
    >>> [sender.backoff(n) for n in (1, 2, 3)]
    [0.5, 1.0, 2.0]
    >>> sender.backoff(20)
    60.0
    >>> try:
    ...     WebhookSender("ftp://x", ["whsec_c2VjcmV0"])
    ... except ValueError as exc:
    ...     print(exc)
    url must be an http(s) URL with a host, got 'ftp://x'
    """

    def __init__(
        self,
        url: str,
        secrets: Sequence[str],
        *,
        max_attempts: int = 8,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        timeout_s: float = 5.0,
        jitter: float = 0.2,
        max_retry_after_s: float = 300.0,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        on_attempt: Callable[[Attempt, str], None] | None = None,
        name: str = "webhook",
        rng: random.Random | None = None,
        remember_ids: int = 10_000,
    ) -> None:
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else None
        except (httpx.InvalidURL, TypeError, ValueError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must be an http(s) URL with a host, got {url!r}")
        if isinstance(secrets, str) or len(secrets) == 0:
            raise ValueError("secrets must be a non-empty sequence of webhook secrets")
        for i, s in enumerate(secrets):
            try:
                parse_secret(s)
            except ValueError as exc:
                raise ValueError(f"secrets[{i}]: {exc}") from None
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
                or not 1 <= max_attempts <= 1000:
            raise ValueError(f"max_attempts must be an int in [1, 1000], got {max_attempts!r}")
        if isinstance(remember_ids, bool) or not isinstance(remember_ids, int) \
                or remember_ids < 1:
            raise ValueError(f"remember_ids must be an int >= 1, got {remember_ids!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.url = url
        self.secrets: tuple[str, ...] = tuple(secrets)
        self.max_attempts = max_attempts
        self.initial_backoff_s = _number("initial_backoff_s", initial_backoff_s, low=0.0)
        self.max_backoff_s = _number("max_backoff_s", max_backoff_s, low=0.0)
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(f"max_backoff_s must be >= initial_backoff_s "
                             f"({initial_backoff_s!r}), got {max_backoff_s!r}")
        self.timeout_s = _number("timeout_s", timeout_s, low=0.0, low_open=True)
        self.jitter = _number("jitter", jitter, low=0.0, high=1.0)
        self.max_retry_after_s = _number("max_retry_after_s", max_retry_after_s, low=0.0)
        self.name = name
        self.remember_ids = remember_ids
        self.on_attempt = on_attempt
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter
        self._owns_client = client is None
        self._client = client  # an owned client is created on first use
        self._disabled = False
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------- public
    @property
    def disabled(self) -> bool:
        """True once the endpoint answered ``410 Gone``: nothing more is sent."""
        return self._disabled

    def backoff(self, attempt: int) -> float:
        """The jittered delay after failed attempt number ``attempt`` (1-based)."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
        base = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** min(attempt - 1, 1000))
        if self.jitter:
            base *= 1.0 + self._rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.max_backoff_s, base))

    def was_delivered(self, webhook_id: str) -> bool:
        """Whether ``webhook_id`` is among the remembered delivered ids."""
        return webhook_id in self._delivered

    async def deliver(self, webhook_id: str, payload: Mapping[str, Any] | bytes
                      ) -> DeliveryResult:
        """Deliver ``payload`` under ``webhook_id``, retrying as configured.

        Parameters
        ----------
        webhook_id : str
            The message id (``webhook-id``), stable across retries and calls.
        payload : mapping or bytes
            The JSON document (serialised once) or ready JSON bytes.

        Returns
        -------
        DeliveryResult
            Every attempt and the final outcome.

        Raises
        ------
        ValueError
            When ``webhook_id`` or ``payload`` is invalid.
        """
        _check_webhook_id(webhook_id)
        body = encode_body(payload)
        while (pending := self._inflight.get(webhook_id)) is not None:
            await pending.wait()
        if webhook_id in self._delivered:
            return DeliveryResult(webhook_id, self.url, [], delivered=True, outcome="duplicate")
        if self._disabled:
            return DeliveryResult(webhook_id, self.url, [], delivered=False, outcome="disabled")
        event = asyncio.Event()
        self._inflight[webhook_id] = event
        try:
            return await self._run(webhook_id, body)
        finally:
            del self._inflight[webhook_id]
            event.set()

    async def aclose(self) -> None:
        """Close the HTTP client if the sender owns it."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"WebhookSender(name={self.name!r}, url={self.url!r}, "
                f"max_attempts={self.max_attempts}, disabled={self._disabled})")

    # ------------------------------------------------------------ private
    async def _run(self, webhook_id: str, body: bytes) -> DeliveryResult:
        result = DeliveryResult(webhook_id, self.url, [])
        for number in range(1, self.max_attempts + 1):
            if self._disabled:  # another delivery got 410 while this one waited
                result.outcome = "disabled"
                return result
            at = self._clock()
            status, error, retry_after, duration = await self._post(webhook_id, body, at)
            last = number == self.max_attempts
            delay: float | None = None
            if status is not None and 200 <= status < 300:
                outcome = "delivered"
            elif status == 410:
                outcome = "disabled"
            elif status is None or status == 429 or status >= 500:
                if last:
                    outcome = "failed"
                else:
                    outcome = "retry"
                    delay = (min(retry_after, self.max_retry_after_s)
                             if retry_after is not None else self.backoff(number))
            else:
                outcome = "rejected"
            attempt = Attempt(number=number, at=at, status=status, error=error,
                              duration_s=duration, next_delay_s=delay, outcome=outcome)
            result.attempts.append(attempt)
            if outcome == "delivered":
                self._remember(webhook_id)
            elif outcome == "disabled":
                self._disabled = True
                log.warning("webhook endpoint disabled (410 Gone): %s %s", self.name, self.url)
            self._notify(attempt, webhook_id)
            if outcome != "retry":
                result.outcome = "exhausted" if outcome == "failed" else outcome
                result.delivered = outcome == "delivered"
                return result
            if delay is not None:
                await self._sleep(delay)
        result.outcome = "exhausted"  # pragma: no cover - the loop always returns
        return result

    async def _post(self, webhook_id: str, body: bytes, at: float
                    ) -> tuple[int | None, str | None, float | None, float]:
        """One request: (status, error, retry_after seconds, duration)."""
        headers = signed_headers(self.secrets, webhook_id, math.floor(at), body)
        headers["user-agent"] = _USER_AGENT
        start = time.perf_counter()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                client = self._http()
                request = client.build_request(
                    "POST", self.url, content=body, headers=headers,
                    timeout=httpx.Timeout(self.timeout_s))
                response = await client.send(request, stream=True)
                try:
                    code = response.status_code
                    snippet = b""
                    if not 200 <= code < 300:  # a 2xx is final once its headers arrive
                        async for chunk in response.aiter_raw():
                            snippet += chunk
                            if len(snippet) >= _MAX_BODY_SNIPPET:
                                break
                finally:
                    await response.aclose()
            status = code
            if not 200 <= code < 300:
                text = snippet[:_MAX_BODY_SNIPPET].decode("utf-8", "replace").strip()
                error = f"HTTP {code}" + (f": {text}" if text else "")
                if code in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("retry-after"),
                                                    self._clock())
        except (TimeoutError, httpx.TimeoutException):
            status, error = None, f"timeout after {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            status = None
        except OSError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        duration = time.perf_counter() - start
        if error is not None and len(error) > _MAX_ERROR_CHARS:
            error = error[:_MAX_ERROR_CHARS] + "..."
        return status, error, retry_after, duration

    def warm_up(self) -> None:
        """Create the HTTP client now (loading the CA bundle takes ~150 ms) so the
        first delivery, usually a rollback, does not pay for it."""
        self._http()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=self.timeout_s)
        return self._client

    def _remember(self, webhook_id: str) -> None:
        self._delivered[webhook_id] = None
        self._delivered.move_to_end(webhook_id)
        while len(self._delivered) > self.remember_ids:
            self._delivered.popitem(last=False)

    def _notify(self, attempt: Attempt, webhook_id: str) -> None:
        if self.on_attempt is None:
            return
        try:
            self.on_attempt(attempt, webhook_id)
        except Exception:
            log.exception("on_attempt callback failed for %s (%s)", webhook_id, self.name)

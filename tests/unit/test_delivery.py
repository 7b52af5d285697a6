"""Tests of rollback.delivery against a real local HTTP receiver (aiohttp).

Each test starts an aiohttp server on a free 127.0.0.1 port that answers from
a script (status, headers, delay) and records every request. Delays between
attempts go through an injected recording sleep, so no test waits on backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from monitor.sandbox.ports import free_port
from rollback.delivery import (
    Attempt,
    DeliveryResult,
    WebhookSender,
    encode_body,
    parse_retry_after,
)
from rollback.signing import new_secret

SECRET = new_secret()
PAYLOAD = {"type": "driftgate.rollback", "model": "card-fraud", "canary_version": "v2",
           "evidence": {"value": 0.31, "threshold": 0.25}}
TEST_TIMEOUT_S = 15.0


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: str = ""


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A scripted webhook receiver on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, replies: list[Reply], default: Reply | None = None) -> None:
        self.replies = list(replies)
        self.default = default or Reply(200)
        self.requests: list[Seen] = []
        self.accepted = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body))
        reply = self.replies.pop(0) if self.replies else self.default
        if reply.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), reply.delay_s)
        if 200 <= reply.status < 300:
            self.accepted += 1
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> set[str]:
        return {r.headers["webhook-id"] for r in self.requests}


class RecordingSleep:
    """An injected ``sleep`` that records delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


Start = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[Start]:
    started: list[Receiver] = []

    async def start(replies: list[Reply], default: Reply | None = None) -> Receiver:
        r = await Receiver(replies, default).start()
        started.append(r)
        return r

    yield start
    for r in started:
        await r.stop()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def sender_for(url: str, sleep: RecordingSleep, **kw: object) -> WebhookSender:
    opts: dict[str, object] = {"initial_backoff_s": 0.01, "max_backoff_s": 0.1, "jitter": 0.0,
                               "timeout_s": 2.0, "sleep": sleep}
    opts.update(kw)
    return WebhookSender(url, [SECRET], **opts)  # type: ignore[arg-type]


def library_verifies(seen: Seen, secret: str = SECRET) -> bool:
    Webhook(secret).verify(seen.body, seen.headers, json_parse=False)
    return True


# ------------------------------------------------------------- retries
async def test_503_three_times_then_200(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(503), Reply(503), Reply(503), Reply(200)])
    calls: list[tuple[Attempt, str]] = []
    ticks = iter(range(10_000))
    base = time.time()
    async with sender_for(r.url, sleep, on_attempt=lambda a, wid: calls.append((a, wid)),
                          clock=lambda: base + 7 * next(ticks)) as sender:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            result = await sender.deliver("dec_1", PAYLOAD)
    assert result.outcome == "delivered"
    assert result.delivered
    assert [a.outcome for a in result.attempts] == ["retry", "retry", "retry", "delivered"]
    assert [a.status for a in result.attempts] == [503, 503, 503, 200]
    assert [a.number for a in result.attempts] == [1, 2, 3, 4]
    assert len(r.requests) == 4
    assert r.accepted == 1
    assert r.ids() == {"dec_1"}
    assert all(library_verifies(seen) for seen in r.requests)
    # one body, computed once; a fresh timestamp and signature per attempt
    assert {seen.body for seen in r.requests} == {encode_body(PAYLOAD)}
    stamps = [int(seen.headers["webhook-timestamp"]) for seen in r.requests]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 4
    assert len({seen.headers["webhook-signature"] for seen in r.requests}) == 4
    assert sleep.delays == pytest.approx([0.01, 0.02, 0.04])
    assert [a.next_delay_s for a in result.attempts] == pytest.approx([0.01, 0.02, 0.04, None])
    assert [wid for _, wid in calls] == ["dec_1"] * 4
    assert [a for a, _ in calls] == result.attempts
    assert result.attempts[0].error is not None
    assert "503" in result.attempts[0].error


async def test_real_sleep_between_attempts(receiver: Start) -> None:
    r = await receiver([Reply(500), Reply(502)])
    async with WebhookSender(r.url, [SECRET], initial_backoff_s=0.02, max_backoff_s=0.05,
                             jitter=0.0) as sender:
        t0 = time.perf_counter()
        async with asyncio.timeout(TEST_TIMEOUT_S):
            result = await sender.deliver("dec_real", PAYLOAD)
        elapsed = time.perf_counter() - t0
    assert result.outcome == "delivered"
    assert len(r.requests) == 3
    assert elapsed >= 0.06 * 0.9


async def test_5xx_exhausts_after_max_attempts(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([], default=Reply(500))
    async with sender_for(r.url, sleep, max_attempts=3) as sender:
        result = await sender.deliver("dec_x", PAYLOAD)
    assert result.outcome == "exhausted"
    assert not result.delivered
    assert [a.outcome for a in result.attempts] == ["retry", "retry", "failed"]
    assert result.attempts[-1].next_delay_s is None
    assert len(r.requests) == 3
    assert len(sleep.delays) == 2


# ------------------------------------------------------ non-retryable 4xx
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_4xx_is_rejected_after_one_attempt(receiver: Start, sleep: RecordingSleep,
                                                 status: int) -> None:
    r = await receiver([Reply(status, body="bad signature")])
    async with sender_for(r.url, sleep) as sender:
        result = await sender.deliver("dec_4xx", PAYLOAD)
    assert result.outcome == "rejected"
    assert not result.delivered
    assert len(result.attempts) == 1
    assert result.attempts[0].outcome == "rejected"
    assert result.attempts[0].status == status
    assert result.attempts[0].error == f"HTTP {status}: bad signature"
    assert len(r.requests) == 1
    assert sleep.delays == []
    assert not sender.disabled


async def test_redirect_is_not_followed(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(302, headers={"Location": "http://127.0.0.1:9/elsewhere"})])
    async with sender_for(r.url, sleep) as sender:
        result = await sender.deliver("dec_302", PAYLOAD)
    assert result.outcome == "rejected"
    assert len(r.requests) == 1


# ----------------------------------------------------------------- 410
async def test_410_disables_the_endpoint(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(410)], default=Reply(200))
    async with sender_for(r.url, sleep) as sender:
        first = await sender.deliver("dec_a", PAYLOAD)
        assert first.outcome == "disabled"
        assert not first.delivered
        assert [a.outcome for a in first.attempts] == ["disabled"]
        assert sender.disabled
        second = await sender.deliver("dec_b", PAYLOAD)
    assert second.outcome == "disabled"
    assert second.attempts == []
    assert len(r.requests) == 1
    assert sleep.delays == []


# ------------------------------------------------------------ Retry-After
async def test_429_retry_after_seconds_is_honoured(receiver: Start,
                                                   sleep: RecordingSleep) -> None:
    r = await receiver([Reply(429, headers={"Retry-After": "1"}), Reply(200)])
    async with sender_for(r.url, sleep) as sender:
        result = await sender.deliver("dec_429", PAYLOAD)
    assert result.outcome == "delivered"
    assert sleep.delays == [1.0]
    assert result.attempts[0].next_delay_s == 1.0
    assert result.attempts[0].status == 429
    assert result.attempts[0].outcome == "retry"
    assert len(r.requests) == 2
    assert r.ids() == {"dec_429"}


async def test_503_retry_after_http_date(receiver: Start, sleep: RecordingSleep) -> None:
    now = 1_800_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 7, UTC), usegmt=True)
    r = await receiver([Reply(503, headers={"Retry-After": when}), Reply(204)])
    async with sender_for(r.url, sleep, clock=lambda: now) as sender:
        result = await sender.deliver("dec_503", PAYLOAD)
    assert result.outcome == "delivered"
    assert sleep.delays == [7.0]


async def test_retry_after_is_capped(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(429, headers={"Retry-After": "86400"}), Reply(200)])
    async with sender_for(r.url, sleep, max_retry_after_s=5.0) as sender:
        await sender.deliver("dec_cap", PAYLOAD)
    assert sleep.delays == [5.0]


async def test_unparseable_retry_after_falls_back_to_backoff(receiver: Start,
                                                             sleep: RecordingSleep) -> None:
    r = await receiver([Reply(429, headers={"Retry-After": "later"}), Reply(200)])
    async with sender_for(r.url, sleep) as sender:
        await sender.deliver("dec_bad_ra", PAYLOAD)
    assert sleep.delays == pytest.approx([0.01])


async def test_retry_after_ignored_on_500(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(500, headers={"Retry-After": "30"}), Reply(200)])
    async with sender_for(r.url, sleep) as sender:
        await sender.deliver("dec_500", PAYLOAD)
    assert sleep.delays == pytest.approx([0.01])


def test_parse_retry_after() -> None:
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("", 0.0) is None
    assert parse_retry_after("0", 0.0) == 0.0
    assert parse_retry_after(" 120 ", 0.0) == 120.0
    assert parse_retry_after("-5", 0.0) is None
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 + 100) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 - 3) == 3.0


# ------------------------------------------------------- transport errors
async def test_timeout_is_retried(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(200, delay_s=3.0), Reply(200)])
    async with sender_for(r.url, sleep, timeout_s=0.2) as sender:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            result = await sender.deliver("dec_slow", PAYLOAD)
    first, second = result.attempts
    assert first.status is None
    assert first.outcome == "retry"
    assert first.error is not None
    assert "timeout" in first.error
    assert 0.15 <= first.duration_s < 1.5
    assert second.status == 200
    assert result.outcome == "delivered"
    assert len(r.requests) == 2
    assert r.ids() == {"dec_slow"}


async def test_connection_refused_is_retried_then_exhausted(sleep: RecordingSleep) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    async with sender_for(url, sleep, max_attempts=4) as sender:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            result = await sender.deliver("dec_down", PAYLOAD)
    assert result.outcome == "exhausted"
    assert not result.delivered
    assert [a.outcome for a in result.attempts] == ["retry", "retry", "retry", "failed"]
    assert all(a.status is None and a.error for a in result.attempts)
    assert "Connect" in (result.attempts[0].error or "")
    assert sleep.delays == pytest.approx([0.01, 0.02, 0.04])


# ----------------------------------------------------------- idempotence
async def test_duplicate_id_sends_nothing(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([])
    async with sender_for(r.url, sleep) as sender:
        first = await sender.deliver("dec_once", PAYLOAD)
        again = await sender.deliver("dec_once", PAYLOAD)
        other = await sender.deliver("dec_twice", PAYLOAD)
    assert first.outcome == "delivered"
    assert again.outcome == "duplicate"
    assert again.attempts == []
    assert again.delivered
    assert other.outcome == "delivered"
    assert len(r.requests) == 2
    assert sender.was_delivered("dec_once")


async def test_concurrent_deliveries_of_one_id_send_once(receiver: Start,
                                                         sleep: RecordingSleep) -> None:
    r = await receiver([Reply(200, delay_s=0.2)])
    async with sender_for(r.url, sleep) as sender:
        results = await asyncio.gather(*(sender.deliver("dec_c", PAYLOAD) for _ in range(5)))
    assert sorted(x.outcome for x in results) == ["delivered"] + ["duplicate"] * 4
    assert len(r.requests) == 1


async def test_failed_id_can_be_delivered_later(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([Reply(500), Reply(500)], default=Reply(200))
    async with sender_for(r.url, sleep, max_attempts=2) as sender:
        first = await sender.deliver("dec_retry_later", PAYLOAD)
        second = await sender.deliver("dec_retry_later", PAYLOAD)
    assert (first.outcome, second.outcome) == ("exhausted", "delivered")
    assert r.ids() == {"dec_retry_later"}


async def test_remembered_ids_are_bounded(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([])
    async with sender_for(r.url, sleep, remember_ids=2) as sender:
        for wid in ("a", "b", "c", "a"):
            await sender.deliver(wid, PAYLOAD)
        assert (await sender.deliver("c", PAYLOAD)).outcome == "duplicate"
    assert [seen.headers["webhook-id"] for seen in r.requests] == ["a", "b", "c", "a"]


# --------------------------------------------------------------- bodies
async def test_body_is_compact_sorted_json_and_bytes_pass_through(
        receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([])
    async with sender_for(r.url, sleep) as sender:
        await sender.deliver("d1", {"b": 1, "a": {"y": [1, 2], "x": "é"}})
        await sender.deliver("d2", b'{"raw": true}')
    assert r.requests[0].body == '{"a":{"x":"é","y":[1,2]},"b":1}'.encode()
    assert r.requests[1].body == b'{"raw": true}'
    assert all(seen.headers["content-type"] == "application/json" for seen in r.requests)
    assert json.loads(r.requests[0].body) == {"b": 1, "a": {"y": [1, 2], "x": "é"}}


async def test_invalid_payload_and_id_raise_before_sending(sleep: RecordingSleep) -> None:
    async with sender_for("http://127.0.0.1:9/hook", sleep) as sender:
        with pytest.raises(ValueError, match="JSON"):
            await sender.deliver("d", {"x": float("nan")})
        with pytest.raises(ValueError, match="JSON"):
            await sender.deliver("d", {"x": object()})
        with pytest.raises(ValueError, match="webhook_id"):
            await sender.deliver("", PAYLOAD)
        with pytest.raises(ValueError, match="webhook_id"):
            await sender.deliver("has space", PAYLOAD)


# ------------------------------------------------------------ callbacks
async def test_failing_on_attempt_does_not_stop_delivery(receiver: Start,
                                                         sleep: RecordingSleep) -> None:
    r = await receiver([Reply(503), Reply(200)])

    def boom(attempt: Attempt, webhook_id: str) -> None:
        raise RuntimeError("metrics down")

    async with sender_for(r.url, sleep, on_attempt=boom) as sender:
        result = await sender.deliver("dec_cb", PAYLOAD)
    assert result.outcome == "delivered"
    assert len(r.requests) == 2


async def test_injected_client_is_not_closed(receiver: Start, sleep: RecordingSleep) -> None:
    r = await receiver([])
    async with httpx.AsyncClient() as client:
        sender = sender_for(r.url, sleep, client=client)
        result = await sender.deliver("dec_shared", PAYLOAD)
        await sender.aclose()
        assert not client.is_closed
    assert result.outcome == "delivered"
    assert isinstance(result, DeliveryResult)
    assert result.url == r.url


# --------------------------------------------------------------- backoff
@settings(max_examples=200, deadline=None)
@given(initial=st.floats(0.0, 10.0), cap=st.floats(0.0, 100.0), jitter=st.floats(0.0, 1.0),
       attempt=st.integers(1, 2000), seed=st.integers(0, 2**32))
def test_backoff_is_bounded(initial: float, cap: float, jitter: float, attempt: int,
                            seed: int) -> None:
    cap = max(cap, initial)
    sender = WebhookSender("http://127.0.0.1:9/", [SECRET], initial_backoff_s=initial,
                           max_backoff_s=cap, jitter=jitter, rng=random.Random(seed))
    base = min(cap, initial * 2.0 ** min(attempt - 1, 1000))
    delay = sender.backoff(attempt)
    assert 0.0 <= delay <= cap
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


def test_backoff_exponential_and_seeded_jitter_reproducible() -> None:
    plain = WebhookSender("http://h/", [SECRET], initial_backoff_s=0.5, max_backoff_s=3.0,
                          jitter=0.0)
    assert [plain.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    a = WebhookSender("http://h/", [SECRET], rng=random.Random(7))
    b = WebhookSender("http://h/", [SECRET], rng=random.Random(7))
    assert [a.backoff(n) for n in range(1, 9)] == [b.backoff(n) for n in range(1, 9)]
    assert len({a.backoff(1) for _ in range(20)}) > 1


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"url": "ftp://example.com/"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"secrets": []}, "secrets"),
    ({"secrets": "whsec_c2VjcmV0"}, "secrets"),
    ({"secrets": ["whsec_%%%"]}, r"secrets\[0\]"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 2.5}, "max_attempts"),
    ({"initial_backoff_s": -1.0}, "initial_backoff_s"),
    ({"max_backoff_s": 0.1, "initial_backoff_s": 1.0}, "max_backoff_s"),
    ({"timeout_s": 0.0}, "timeout_s"),
    ({"timeout_s": float("inf")}, "timeout_s"),
    ({"jitter": 1.5}, "jitter"),
    ({"max_retry_after_s": -1.0}, "max_retry_after_s"),
    ({"name": ""}, "name"),
    ({"remember_ids": 0}, "remember_ids"),
])
def test_constructor_validation_names_the_value(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"url": "http://127.0.0.1:9/hook", "secrets": [SECRET]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        WebhookSender(**args)  # type: ignore[arg-type]


def test_secret_never_appears_in_validation_errors() -> None:
    bad = "whsec_" + "Q" * 40 + "%"
    with pytest.raises(ValueError, match="secrets") as info:
        WebhookSender("http://h/", [bad])
    assert "Q" * 10 not in str(info.value)

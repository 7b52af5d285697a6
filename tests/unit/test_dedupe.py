"""monitor.engine.dedupe: the memory of event ids seen, against a plain-set model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine.dedupe import SeenIds, decode_ids, encode_ids, hash_ids

H = 3600.0


def add(seen: SeenIds, ids: list[str], ts: float | list[float], part: int | list[int] = 0
        ) -> list[bool]:
    n = len(ids)
    t = np.full(n, ts, dtype=np.float64) if isinstance(ts, float) else np.array(ts, float)
    p = np.full(n, part, dtype=np.int64) if isinstance(part, int) else np.array(part)
    return seen.check_and_add(hash_ids(ids), p, t).tolist()  # type: ignore[no-any-return]


def test_hash_is_stable_and_takes_any_string() -> None:
    # XXH3-64 of the UTF-8 bytes: the same in every process (stored in Redis)
    assert hex(int(hash_ids(["abc"])[0])) == "0x78af5f94892f3950"
    h = hash_ids(["a", "\ud800", "é", "a" * 256, ""])
    assert h.dtype == np.uint64
    assert len(set(h.tolist())) == 5
    assert hash_ids([]).size == 0


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 60), max_size=40), max_size=12))
def test_copies_match_a_set_model(batches: list[list[int]]) -> None:
    seen = SeenIds(H)
    model: set[int] = set()
    for b in batches:
        want = []
        for x in b:
            want.append(x in model)
            model.add(x)
        assert add(seen, [f"id-{x}" for x in b], 1000.0) == want
    assert len(seen) == len(model)


def test_large_memory_lookups_and_bytes_per_id() -> None:
    seen = SeenIds(H)
    rng = np.random.default_rng(1)
    ids = [f"e{i}" for i in range(300_000)]
    for chunk in range(0, len(ids), 5000):
        assert not any(add(seen, ids[chunk:chunk + 5000], 1000.0 + chunk))
    # every id is found again, in the indexed large run and the small ones
    pick = rng.choice(len(ids), 20_000, replace=False).tolist()
    assert all(add(seen, [ids[i] for i in pick], 2000.0))
    assert not any(add(seen, [f"new{i}" for i in range(5000)], 2000.0))
    assert seen.nbytes / len(seen) <= 16.5


def test_ids_expire_with_event_time() -> None:
    seen = SeenIds(H)
    add(seen, ["old"], 1000.0)
    add(seen, ["recent"], 1000.0 + H)
    seen.expire(1000.0 + H + seen.bucket_seconds * 0.5)  # not a whole horizon past
    assert add(seen, ["old"], 1000.0 + H) == [True]
    gone = seen.expire(1000.0 + 2 * H)  # "old"'s bucket ended a horizon ago
    assert gone
    assert min(gone) <= 1000.0 / seen.bucket_seconds
    assert add(seen, ["old"], 1000.0 + 2 * H) == [False]
    assert add(seen, ["recent"], 1000.0 + 2 * H) == [True]
    # an id older than the horizon on arrival is still remembered for a while
    add(seen, ["ancient"], 0.0)
    assert add(seen, ["ancient"], 0.0) == [True]


def test_the_cap_forgets_the_oldest_first() -> None:
    seen = SeenIds(H, bucket_seconds=10.0, max_ids=1000)
    for k in range(5):
        add(seen, [f"b{k}-{i}" for i in range(300)], 1000.0 + 10.0 * k)
    assert len(seen) <= 1000
    assert seen.evicted == 1500 - len(seen)
    assert add(seen, ["b4-0"], 1100.0) == [True]
    assert add(seen, ["b0-0"], 1100.0) == [False]


def test_partitions_are_handed_over() -> None:
    a, b = SeenIds(H), SeenIds(H)
    a.logging = True
    add(a, ["p0-a", "p0-b", "p1-a"], 1000.0, [0, 0, 1])
    blobs = {p: encode_ids(*hb) for p, hb in a.drain().items()}
    assert sorted(blobs) == [0, 1]
    assert a.drain() == {}
    b.load(0, *decode_ids(blobs[0]))
    assert add(b, ["p0-a", "p0-b", "p1-a"], 1000.0, [0, 0, 1]) == [True, True, False]
    a.drop([0])
    assert add(a, ["p0-a", "p1-a"], 1000.0, [0, 1]) == [False, True]
    hashes, buckets = a.partition_ids(1)
    assert hashes.tolist() == hash_ids(["p1-a"]).tolist()
    assert buckets.size == 1


def test_bad_input_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        decode_ids(b"x" * 17)
    with pytest.raises(ValueError, match="horizon_seconds"):
        SeenIds(0.0)
    with pytest.raises(ValueError, match="partitions must be"):
        add(SeenIds(H), ["x"], 1.0, 70_000)

"""Type stub of the compiled fast path (monitor/_native/fastdecode.c)."""

from typing import Any

YYJSON_VERSION: str

def decode_predictions(
    values: list[bytes],
    keys: tuple[bytes, ...],
    features: tuple[bytes, ...],
    n_numeric: int,
    ts: Any,
    score: Any,
    decision: Any,
    amount: Any,
    numeric: Any,
    /,
) -> tuple[list[str], list[str], list[str], tuple[list[object], ...]] | int: ...

def decode_labels(
    values: list[bytes],
    keys: tuple[bytes, ...],
    label: Any,
    ts: Any,
    amount: Any,
    /,
) -> list[str] | int: ...

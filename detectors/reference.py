"""The reference profile: frozen bins plus the reference counts in those bins.

A profile is fitted once (from a reference data set, or from a champion's first
N events) and then never changes; every window is compared against it. Its
``content_hash`` (SHA-256 of the canonical JSON) goes into every decision and
audit record, so a verdict can be traced to the exact reference it used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.binning import CategoricalBins, NumericBins

__all__ = ["SCORE_FEATURE", "ReferenceProfile"]

SCORE_FEATURE = "score"
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Frozen bins and reference counts for numeric features, categorical
    features and the model score.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> prof = ReferenceProfile.fit(
    ...     numeric={"amount": rng.lognormal(3, 1, 1000)},
    ...     categorical={"mcc": rng.choice(["grocery", "fuel"], 1000).tolist()},
    ...     scores=rng.beta(1, 20, 1000),
    ... )
    >>> prof.n_events, prof.numeric_counts.sum(), prof.score_counts.shape
    (1000, np.int64(1000), (1, 11))
    >>> ReferenceProfile.from_json(prof.to_json()).content_hash == prof.content_hash
    True
    """

    numeric: NumericBins
    categorical: CategoricalBins
    score: NumericBins
    numeric_counts: npt.NDArray[np.int64]
    categorical_counts: npt.NDArray[np.int64]
    score_counts: npt.NDArray[np.int64]
    n_events: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = (
            ("numeric_counts", self.numeric_counts, (len(self.numeric.features),
                                                     self.numeric.n_columns)),
            ("categorical_counts", self.categorical_counts,
             (len(self.categorical.features), self.categorical.n_columns)),
            ("score_counts", self.score_counts, (1, self.score.n_columns)),
        )
        for name, arr, shape in checks:
            a = np.asarray(arr, dtype=np.int64)
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
            if a.size and a.min() < 0:
                raise ValueError(f"{name} must be >= 0, got minimum {a.min()}")
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        if self.n_events < 1:
            raise ValueError(f"n_events must be >= 1, got {self.n_events!r}")
        if self.score.features != (SCORE_FEATURE,):
            raise ValueError(f"score bins must have the single feature {SCORE_FEATURE!r}, "
                             f"got {self.score.features!r}")

    @classmethod
    def fit(
        cls,
        numeric: Mapping[str, npt.ArrayLike],
        categorical: Mapping[str, Sequence[object]],
        scores: npt.ArrayLike,
        n_bins: int = 10,
        top_k: int = 20,
        metadata: Mapping[str, Any] | None = None,
    ) -> ReferenceProfile:
        """Fit bins on reference columns and count the reference in them."""
        score_arr = np.asarray(scores, dtype=np.float64)
        n = score_arr.size
        if n == 0:
            raise ValueError("reference is empty: no scores")
        lengths = {name: np.asarray(v).size for name, v in numeric.items()}
        lengths.update({name: len(v) for name, v in categorical.items()})
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"reference columns must all have {n} values, got {wrong!r}")
        names = list(numeric)
        matrix = (np.column_stack([np.asarray(numeric[k], dtype=np.float64) for k in names])
                  if names else np.empty((n, 0)))
        num_bins = NumericBins.fit(matrix, names, n_bins) if names else NumericBins((), ())
        cat_bins = (CategoricalBins.fit(categorical, top_k) if categorical
                    else CategoricalBins((), ()))
        score_bins = NumericBins.fit(score_arr[:, None], [SCORE_FEATURE], n_bins)
        return cls(
            numeric=num_bins,
            categorical=cat_bins,
            score=score_bins,
            numeric_counts=num_bins.count(matrix),
            categorical_counts=(cat_bins.count(categorical) if categorical
                                else np.zeros((0, cat_bins.n_columns), dtype=np.int64)),
            score_counts=score_bins.count(score_arr[:, None]),
            n_events=int(n),
            metadata=dict(metadata or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (exact floats)."""
        return {
            "format": FORMAT_VERSION,
            "numeric": self.numeric.to_dict(),
            "categorical": self.categorical.to_dict(),
            "score": self.score.to_dict(),
            "numeric_counts": self.numeric_counts.tolist(),
            "categorical_counts": self.categorical_counts.tolist(),
            "score_counts": self.score_counts.tolist(),
            "n_events": self.n_events,
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        """Load from :meth:`to_json` output; ValueError on anything else."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"reference profile is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"reference profile format must be {FORMAT_VERSION}, got "
                f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}"
            )
        try:
            num = NumericBins.from_dict(data["numeric"])
            cat = CategoricalBins.from_dict(data["categorical"])
            return cls(
                numeric=num,
                categorical=cat,
                score=NumericBins.from_dict(data["score"]),
                numeric_counts=np.asarray(data["numeric_counts"], dtype=np.int64).reshape(
                    len(num.features), num.n_columns),
                categorical_counts=np.asarray(data["categorical_counts"],
                                              dtype=np.int64).reshape(
                    len(cat.features), cat.n_columns),
                score_counts=np.asarray(data["score_counts"], dtype=np.int64),
                n_events=int(data["n_events"]),
                metadata=dict(data.get("metadata", {})),
            )
        except KeyError as exc:
            raise ValueError(f"reference profile lacks key {exc}") from exc
        except TypeError as exc:  # e.g. "n_events": null, "metadata": 5
            raise ValueError(f"reference profile has a value of the wrong type: {exc}") from exc

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON, metadata excluded.

        Computed once: the profile is frozen (its arrays are read-only).
        """
        body = self.to_dict()
        body.pop("metadata")
        return hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

"""Reference profiles: loading the configured one, and reading reference data
files (Parquet, CSV, JSONL) to fit one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from detectors import ReferenceProfile
from monitor.config import Settings
from monitor.engine.reservoir import attach_sample

__all__ = ["fit_reference_file", "load_reference", "read_events_frame"]


def load_reference(settings: Settings) -> ReferenceProfile | None:
    """The configured reference profile, or None to fit from champion events."""
    path = settings.reference.path
    if path is None:
        return None
    try:
        return ReferenceProfile.from_json(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"reference.path {str(path)!r}: {exc}") from exc


def read_events_frame(path: Path, settings: Settings) -> pd.DataFrame:
    """A flat frame: event fields plus one column per feature.

    Accepts flat columns or the event shape with a nested features object.
    """
    if not path.is_file():
        raise ValueError(f"reference data {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix == ".csv":
        df = pd.read_csv(path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        df = pd.read_json(path, lines=True)
    else:
        raise ValueError(f"reference data must be .parquet, .csv or .jsonl, got {suffix!r}")
    feat_col = settings.fields.features
    if feat_col in df.columns:
        nested = pd.json_normalize(df[feat_col].tolist())
        # the nested features win over top-level fields of the same name (an
        # event's "amount" field and its "amount" feature)
        top = df.drop(columns=[feat_col, *[c for c in nested.columns if c in df.columns]])
        df = pd.concat([top.reset_index(drop=True), nested], axis=1)
    return df


def fit_reference_file(path: Path, settings: Settings, model: str | None = None,
                       version: str | None = None) -> ReferenceProfile:
    """Fit a :class:`ReferenceProfile` on the rows of a data file."""
    df = read_events_frame(path, settings)
    f = settings.fields
    if model is not None:
        if f.model not in df.columns:
            raise ValueError(f"--model given but the data has no {f.model!r} column")
        df = df[df[f.model] == model]
    if version is not None:
        if f.model_version not in df.columns:
            raise ValueError(f"--version given but the data has no {f.model_version!r} column")
        df = df[df[f.model_version].astype(str) == version]
    if df.empty:
        raise ValueError(f"no reference rows in {str(path)!r} after filtering")
    wanted = [*settings.features.numeric, *settings.features.categorical, f.score]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(f"reference data {str(path)!r} lacks column(s) {missing!r}")
    numeric = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
               for c in settings.features.numeric}
    categorical = {c: [None if pd.isna(v) else str(v) for v in df[c].tolist()]
                   for c in settings.features.categorical}
    scores = pd.to_numeric(df[f.score]).to_numpy(dtype=np.float64)
    profile = ReferenceProfile.fit(
        numeric, categorical, scores,
        n_bins=settings.reference.n_bins, top_k=settings.reference.top_k,
        metadata={"source": path.name, "rows": len(df)},
    )
    # a row sample travels with the profile for Evidently reports
    return attach_sample(profile, numeric, categorical, scores)

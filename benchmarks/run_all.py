"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results.json``.

Each benchmark module exposes ``run(quick: bool = False) -> dict``. Run as
``python -m benchmarks.run_all [--quick]`` (``make bench``). Naming benchmarks
(``python -m benchmarks.run_all bench_ingest``) runs only those and replaces
their entries in the existing ``results.json`` (``updated_at`` records when).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _fmt(x: Any, spec: str = ",.0f", unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "met" if x else "**missed**"
    return f"{x:{spec}}{unit}"


def table(results: dict[str, Any]) -> str:
    """The README's benchmark table from ``results.json`` content."""
    b = results.get("benchmarks", {})
    w, i, lat, s = (b.get("bench_window", {}), b.get("bench_ingest", {}),
                    b.get("bench_latency", {}), b.get("bench_scale", {}))
    h = b.get("bench_http_floods", {})
    h_met = _get(h, "healthz_p99_lt_50ms")
    rows = [
        ("window: binning, 20 features x 5,000-event batches", ">= 20 M values/s",
         _fmt(_get(w, "binning_values_per_s"), ",.3g", " values/s") + " (np.histogram alone: "
         + _fmt(_get(w, "np_histogram_values_per_s"), ",.3g") + ")",
         _fmt(_get(w, "targets", "binning_values_per_s_ge_20M"))),
        ("window: PSI+KL+JS, 20 features x 2 versions, 1 M-event window", "< 1 ms",
         _fmt(_get(w, "eval_psi_kl_js_us_median"), ",.0f", " us median"),
         _fmt(_get(w, "targets", "eval_us_median_lt_1000"))),
        ("window: vs Evidently DataDriftPreset(psi), 100k+100k rows", ">= 1000x",
         _fmt(_get(w, "ratio_evidently_over_window_eval"), ",.0f", "x per evaluation tick; ")
         + _fmt(_get(w, "ratio_evidently_over_driftgate_same_rows"), ",.0f",
                "x re-binning the same raw rows"),
         _fmt(_get(w, "targets", "ratio_window_eval_ge_1000")) + " / "
         + _fmt(_get(w, "targets", "ratio_same_rows_ge_1000"))),
        ("ingest: raw aiokafka getmany (ceiling), 200k x 600 B events", "-",
         _fmt(_get(i, "raw_aiokafka", "events_per_s"), ",.0f", " events/s"), "-"),
        ("ingest: full driftgate path", ">= 0.5x raw",
         _fmt(_get(i, "driftgate_service", "events_per_s"), ",.0f", " events/s (")
         + _fmt(_get(i, "ratio_service_over_raw"), ".2f", "x raw), p50/p99 batch ")
         + _fmt(_get(i, "driftgate_service", "handle_ms_p50"), ".0f", "/")
         + _fmt(_get(i, "driftgate_service", "handle_ms_p99"), ".0f", " ms"),
         _fmt(_get(i, "targets", "service_ge_0.5x_raw"))),
        ("ingest: same path, codec without its compiled fast path (msgspec only)", "-",
         _fmt(_get(i, "driftgate_service_msgspec_only", "events_per_s"), ",.0f",
              " events/s (fast path: ")
         + _fmt(_get(i, "ratio_fast_path_over_msgspec_only"), ".2f", "x)"), "-"),
        ("ingest: same path, dedupe off (one run; (2) counts each id once)", "-",
         _fmt(_get(i, "driftgate_service_dedupe_off", "events_per_s"), ",.0f", " events/s")
         + " (dedupe on / off: "
         + _fmt(_get(i, "ratio_dedupe_on_over_off"), ".2f", "x)"), "-"),
        ("ingest: lz4-compressed input, raw aiokafka and the full path", "-",
         _fmt(_get(i, "lz4", "driftgate_events_per_s"), ",.0f", " vs ")
         + _fmt(_get(i, "lz4", "raw_events_per_s"), ",.0f", " events/s (")
         + _fmt(_get(i, "lz4", "ratio_service_over_raw"), ".2f", "x raw)"), "-"),
        ("ingest: vs a plain Faust agent counting events", ">= 8x Faust",
         _fmt(_get(i, "ratio_service_over_faust"), ".1f", "x (Faust ")
         + _fmt(_get(i, "faust_agent", "events_per_s"), ",.0f", " events/s)"),
         _fmt(_get(i, "targets", "service_ge_8x_faust"))),
        ("http: /healthz p99 during floods (8 reports / 5,000 x 2 MiB bodies / gzip bombs)",
         "< 50 ms each",
         " / ".join(_fmt(_get(h, phase, "healthz", "p99_ms"), ".1f")
                    for phase in ("reports", "oversized", "gzip_bombs")) + " ms",
         _fmt(all(h_met.values()) if isinstance(h_met, dict) else None)),
        ("latency: rule breach to signed webhook at the router, 20 trials", "p99 <= 1 s",
         "p50 " + _fmt(_get(lat, "latency_s", "p50"), ".2f", " s, p99 ")
         + _fmt(_get(lat, "latency_s", "p99"), ".2f", " s, max ")
         + _fmt(_get(lat, "latency_s", "max"), ".2f", " s"),
         _fmt(_get(lat, "target_p99_le_1s"))),
        ("scale: one instance with RedisStore vs in-memory", ">= 0.7x",
         _fmt(_get(s, "ratio_b_over_a"), ".2f", "x (")
         + _fmt(_get(s, "b_redis_1_instance", "records_per_s"), ",.0f", " vs ")
         + _fmt(_get(s, "a_memory_1_instance", "records_per_s"), ",.0f", " records/s); two "
                "instances ") + _fmt(_get(s, "ratio_c_over_a"), ".2f", "x; CPU-time basis ")
         + _fmt(_get(s, "ratio_b_over_a_cpu"), ".2f", "x"),
         _fmt(_get(s, "targets", "b_over_a_ge_0.7"))),
        ("scale: Redis commands / round trips per 1,000 records", "-",
         _fmt(_get(s, "redis_commands_per_1000_records"), ".1f", " / ")
         + _fmt(_get(s, "redis_round_trips_per_1000_records"), ".2f"), "-"),
        ("scale: bytes per pending prediction in Redis", "<= 200 B",
         _fmt(_get(s, "bytes_per_pending_prediction"), ".0f", " B (MEMORY USAGE)"),
         _fmt(_get(s, "targets", "bytes_per_pending_prediction_le_200"))),
    ]
    out = ["| benchmark | target | measured | |", "| --- | --- | --- | --- |"]
    out += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in rows]
    stamp = results.get("generated_at", "")
    updated = "".join(f"; {name} re-run {at}" for name, at in
                      sorted(results.get("updated_at", {}).items()))
    return "\n".join(out) + f"\n\n(`benchmarks/results.json`, {stamp}{updated}.)"


def update_readme(results: dict[str, Any]) -> bool:
    """Replace the table between the README's markers; False if none."""
    if not README.is_file():
        return False
    text = README.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table(results)}\n{END}{tail}")
    return True


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    only = [a for a in argv if not a.startswith("--")]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    known = sorted(p.stem for p in HERE.glob("bench_*.py"))
    unknown = [n for n in only if n not in known]
    if unknown:
        print(f"unknown benchmark(s) {unknown!r}; known: {known!r}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"generated_at": now, "quick": quick, "benchmarks": {}}
    if only:
        results = json.loads((HERE / "results.json").read_text())
        if results.get("quick") != quick:
            print(f"results.json has quick={results.get('quick')!r}; run the same mode",
                  file=sys.stderr)
            return 2
        results.setdefault("updated_at", {}).update(dict.fromkeys(only, now))
    failed = 0
    for name in only or known:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results["benchmarks"][name] = module.run(quick=quick)
        except Exception as exc:  # a failing benchmark is reported, the others still run
            failed += 1
            results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(results["benchmarks"][name]), flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {HERE / 'results.json'}", file=sys.stderr)
    if update_readme(results):
        print(f"updated the benchmark table in {README}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Prometheus exposition: a custom Collector reading engine state at scrape time.

Nothing is copied into prometheus_client metric objects: every scrape reads the
engine's counters and its latest evaluation (recomputed if a batch arrived
since). The one exception is the batch-duration histogram, which is observed
as batches are processed. Metrics go to an injected ``CollectorRegistry``,
never the global one.

Names use the ``driftgate_`` prefix and base units; counters end in ``_total``;
labels are of bounded cardinality (model, version, feature, reason, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor.config import Settings
from monitor.engine import Engine
from monitor.ingest.slots import VersionSlots
from monitor.ingest.sources import SourceStatus

__all__ = ["EngineCollector", "ServiceMetrics", "max_series"]

#: series without a model or version label (reference, invalid events by kind
#: and reason, join, dedupe, histograms, webhooks, HTTP, ...), with room to spare
FIXED_SERIES = 600


def max_series(settings: Settings, partitions: int = 16) -> int:
    """An upper bound on the series one instance exports, from the caps.

    ``F = features + 1`` (the score); ``P`` = the most (model, version) pairs
    holding a slot (:attr:`monitor.ingest.codec.VersionSlots.max_pairs`); ``M`` =
    configured models; ``R`` = rules. Per version: 15 counters and gauges
    (events by kind, late, late labels, window, confusion cells, ADWIN
    detections, mean and width per stream), ``3 F`` divergences against the
    reference and 16 KPI series. Per configured model: 2 roles, ``3 F``
    canary-vs-champion divergences, 6 KPI tests, 6 verdicts, and per rule and
    role version 8 rule series (4 states, value, decisions). Plus 3 per
    predictions partition (lag of both topics, watermark) and
    :data:`FIXED_SERIES`.
    """
    f = len(settings.features.numeric) + len(settings.features.categorical) + 1
    per_version = 15 + 3 * f + 16
    m = len(settings.models)
    per_model = 2 + 3 * f + 6 + 6 + len(settings.rules) * 2 * 8
    return (VersionSlots(settings).max_pairs * per_version + m * per_model
            + 3 * partitions + FIXED_SERIES)

KPI_NAMES = ("catch_rate", "precision", "alert_rate", "amount_weighted_catch_rate")


class EngineCollector(Collector):
    """Reads an :class:`Engine` (and a source's status) at every scrape.

    Parameters
    ----------
    engine : Engine
        The engine to expose.
    status : callable, optional
        Returns the source's :class:`SourceStatus` (partitions, lag).
    extra : callable, optional
        Returns more metric families (e.g. the decision layer's).
    """

    def __init__(
        self,
        engine: Engine,
        status: Callable[[], SourceStatus] | None = None,
        extra: Callable[[], Iterable[Metric]] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.status = status
        self.extra = extra
        self.ready = ready

    def describe(self) -> Iterable[Metric]:
        # Unchecked collector: families vary with the models seen.
        return []

    def _recall_cusum(self) -> Iterator[Metric]:
        """The recall CUSUM per version (detectors.cusum); threshold and
        baseline only once a batch was tested against an in-control rate."""
        mv = ["model", "version"]
        stat = GaugeMetricFamily("driftgate_recall_cusum_statistic",
                                 "Bernoulli CUSUM statistic on the recall stream (caught or "
                                 "not, per labelled fraud); alarms at the threshold.",
                                 labels=mv)
        thr = GaugeMetricFamily("driftgate_recall_cusum_threshold",
                                "Recall CUSUM threshold h (set from the configured in-control "
                                "ARL) for the last in-control catch rate.", labels=mv)
        base = GaugeMetricFamily("driftgate_recall_cusum_baseline",
                                 "In-control catch rate p0 the recall CUSUM last tested against.",
                                 labels=mv)
        det = CounterMetricFamily("driftgate_recall_cusum_detections",
                                  "Recall CUSUM alarms (a catch-rate drop of "
                                  "evaluation.recall_cusum_delta).", labels=mv)
        unmon = CounterMetricFamily("driftgate_recall_cusum_unmonitored_frauds",
                                    "Labelled frauds fed to the recall CUSUM with no in-control "
                                    "catch rate yet (not tested).", labels=mv)
        for (model, version), st in self.engine.versions.items():
            c = st.recall_cusum
            stat.add_metric([model, version], c.statistic)
            p0, _, h = c.last_rates
            if math.isfinite(h):
                thr.add_metric([model, version], h)
                base.add_metric([model, version], p0)
            det.add_metric([model, version], st.recall_cusum_detections)
            unmon.add_metric([model, version], c.n_unmonitored)
        yield from (stat, thr, base, det, unmon)

    def collect(self) -> Iterable[Metric]:
        eng = self.engine
        ev = eng.snapshot()
        mv = ["model", "version"]

        info = InfoMetricFamily("driftgate_reference", "The frozen reference profile in use.",
                                labels=[])
        info.add_metric([], {"hash": ev.reference_hash[:16],
                             "events": str(eng.reference.n_events)})
        yield info

        events = CounterMetricFamily(
            "driftgate_events", "Events consumed and accepted per model, version and kind "
            "(labels count when joined to their prediction).", labels=[*mv, "kind"])
        late = CounterMetricFamily("driftgate_late_events",
                                   "Predictions older than the allowed lateness or the "
                                   "window, kept out of the windows.", labels=mv)
        late_labels = CounterMetricFamily("driftgate_late_labels",
                                          "Joined labels whose prediction's slice had left the "
                                          "KPI window.", labels=mv)
        window = GaugeMetricFamily("driftgate_window_events",
                                   "Predictions in the current drift window.", labels=mv)
        confusion = CounterMetricFamily("driftgate_confusion",
                                        "Joined predictions per confusion cell (cumulative).",
                                        labels=[*mv, "cell"])
        adwin = CounterMetricFamily("driftgate_adwin_detections",
                                    "ADWIN change detections per stream.",
                                    labels=[*mv, "stream"])
        adwin_mean = GaugeMetricFamily("driftgate_adwin_mean",
                                       "ADWIN window mean per stream.", labels=[*mv, "stream"])
        adwin_width = GaugeMetricFamily("driftgate_adwin_width",
                                        "ADWIN window width per stream.",
                                        labels=[*mv, "stream"])
        for (model, version), st in eng.versions.items():
            events.add_metric([model, version, "prediction"], st.predictions_total)
            events.add_metric([model, version, "label"], st.labels_joined_total)
            late.add_metric([model, version], st.late_total)
            late_labels.add_metric([model, version], st.late_labels_total)
            window.add_metric([model, version], st.window_events)
            c = st.confusion_total
            for cell, value in (("tp", c.tp), ("fp", c.fp), ("fn", c.fn), ("tn", c.tn)):
                confusion.add_metric([model, version, cell], value)
            for stream, det, detector in (("error", st.adwin_error_detections, st.adwin_error),
                                          ("score", st.adwin_score_detections, st.adwin_score)):
                adwin.add_metric([model, version, stream], det)
                adwin_mean.add_metric([model, version, stream], detector.mean)
                adwin_width.add_metric([model, version, stream], detector.width)
        yield from (events, late, late_labels, window, confusion, adwin, adwin_mean, adwin_width)
        yield from self._recall_cusum()

        labels_rx = CounterMetricFamily("driftgate_labels_received",
                                        "Valid label events received.")
        labels_rx.add_metric([], eng.labels_total)
        yield labels_rx
        invalid = CounterMetricFamily("driftgate_invalid_events",
                                      "Records rejected (and dead-lettered) per reason.",
                                      labels=["kind", "reason"])
        for (kind, reason), n in sorted(eng.invalid.items()):
            invalid.add_metric([kind, reason], n)
        yield invalid
        dup = CounterMetricFamily("driftgate_duplicate_events",
                                  "Events whose id was already seen within the dedupe horizon "
                                  "(counted once, nothing else).", labels=["kind"])
        for kind in ("prediction", "label"):
            dup.add_metric([kind], eng.duplicates[kind])
        yield dup
        seen = [(kind, s) for kind, s in (("prediction", eng.seen_predictions),
                                          ("label", eng.seen_labels)) if s is not None]
        if seen:  # dedupe on
            ids = GaugeMetricFamily("driftgate_dedupe_ids",
                                    "Event ids in the dedupe memory.", labels=["kind"])
            mem = GaugeMetricFamily("driftgate_dedupe_memory_bytes",
                                    "Bytes held by the dedupe memory of event ids.",
                                    labels=["kind"])
            forgot = CounterMetricFamily("driftgate_dedupe_evictions",
                                         "Event ids forgotten before the dedupe horizon "
                                         "because the memory cap (dedupe.max_ids) was hit.",
                                         labels=["kind"])
            for kind, s in seen:
                ids.add_metric([kind], len(s))
                mem.add_metric([kind], s.nbytes)
                forgot.add_metric([kind], s.evicted)
            yield from (ids, mem, forgot)
        pending = GaugeMetricFamily("driftgate_join_pending",
                                    "Events waiting in the label join buffer.", labels=["kind"])
        pending.add_metric(["prediction"], eng.pending_predictions)
        pending.add_metric(["label"], eng.pending_labels)
        yield pending
        evict = CounterMetricFamily("driftgate_join_evictions",
                                    "Predictions evicted from the join buffer unlabelled.",
                                    labels=["reason"])
        for reason in ("ttl", "capacity", "released"):
            evict.add_metric([reason], eng.evictions[reason])
        yield evict
        unmatched = CounterMetricFamily("driftgate_unmatched_labels",
                                        "Labels that never met their prediction.",
                                        labels=["reason"])
        for reason in ("ttl", "capacity", "no_prediction"):
            unmatched.add_metric([reason], eng.unmatched_labels[reason])
        yield unmatched
        wm = GaugeMetricFamily("driftgate_watermark_timestamp_seconds",
                               "Event-time watermark: the minimum over the predictions "
                               "partitions still holding it (largest event timestamp of each).")
        if math.isfinite(eng.watermark):
            wm.add_metric([], eng.watermark)
        yield wm
        pwm = GaugeMetricFamily("driftgate_partition_watermark_timestamp_seconds",
                                "Largest event timestamp of each predictions partition.",
                                labels=["partition"])
        for part, t in sorted(eng.partition_watermarks.items()):
            if math.isfinite(t):
                pwm.add_metric([str(part)], t)
        yield pwm

        div_labels = [*mv, "feature", "baseline"]
        fams = {
            "psi": GaugeMetricFamily("driftgate_psi", "Population stability index of the "
                                     "window against the baseline.", labels=div_labels),
            "kl": GaugeMetricFamily("driftgate_kl_divergence", "KL(baseline || window) in "
                                    "nats.", labels=div_labels),
            "js": GaugeMetricFamily("driftgate_js_divergence", "Jensen-Shannon divergence in "
                                    "nats.", labels=div_labels),
        }
        kpi = GaugeMetricFamily("driftgate_kpi_ratio", "Fraud KPIs over the KPI window, with "
                                "Wilson interval bounds.", labels=[*mv, "kpi", "bound"])
        kpi_n = GaugeMetricFamily("driftgate_kpi_samples", "Denominator of each KPI over the "
                                  "KPI window.", labels=[*mv, "kpi"])
        for (model, version), ve in ev.versions.items():
            if ve.vs_reference is not None:
                _add_divergences(fams, [model, version], "reference", ve.vs_reference.psi,
                                 ve.vs_reference.kl, ve.vs_reference.js)
            for name in KPI_NAMES:
                p = getattr(ve.kpis, name)
                kpi_n.add_metric([model, version, name], p.trials)
                if math.isnan(p.value):
                    continue
                for bound, value in (("estimate", p.value), ("lower", p.lower),
                                     ("upper", p.upper)):
                    kpi.add_metric([model, version, name, bound], value)
        pvals = GaugeMetricFamily("driftgate_canary_kpi_p_value",
                                  "p-value of the canary-vs-champion KPI test (one-sided "
                                  "'canary lower' for catch rate and precision).",
                                  labels=["model", "version", "kpi"])
        diffs = GaugeMetricFamily("driftgate_canary_kpi_difference_ratio",
                                  "Canary KPI minus champion KPI.",
                                  labels=["model", "version", "kpi"])
        for model, cmp in ev.canaries.items():
            if cmp.divergences is not None:
                _add_divergences(fams, [model, cmp.canary], "champion", cmp.divergences.psi,
                                 cmp.divergences.kl, cmp.divergences.js)
            for name, test in cmp.kpi_tests.items():
                pvals.add_metric([model, cmp.canary, name], float(test["p_value"]))
                diffs.add_metric([model, cmp.canary, name], float(test["difference"]))
        yield from fams.values()
        yield from (kpi, kpi_n, pvals, diffs)

        roles = GaugeMetricFamily("driftgate_version_role", "1 for each version's role "
                                  "(champion, canary).", labels=[*mv, "role"])
        for model, rmap in eng.roles.items():
            for role, version in rmap.items():
                roles.add_metric([model, version, role], 1)
        yield roles

        if self.status is not None:
            src = self.status()
            lag = GaugeMetricFamily("driftgate_consumer_lag", "Records between the committed "
                                    "position and the end of each partition.",
                                    labels=["topic", "partition"])
            for (topic, part), n in sorted(src.lag.items()):
                lag.add_metric([topic, str(part)], n)
            yield lag
            assigned = GaugeMetricFamily("driftgate_assigned_partitions",
                                         "Partitions assigned to this instance.")
            assigned.add_metric([], len(src.assigned))
            yield assigned
            dl = CounterMetricFamily("driftgate_dead_letter_records",
                                     "Records produced to the dead-letter topic.")
            dl.add_metric([], src.dead_lettered)
            yield dl
        if self.ready is not None:
            rd = GaugeMetricFamily("driftgate_ready", "1 when /readyz answers ready.")
            rd.add_metric([], 1.0 if self.ready() else 0.0)
            yield rd
        if self.extra is not None:
            yield from self.extra()


def codec_metrics(fast_batches: int, msgspec_batches: int) -> Iterator[Metric]:
    """Batches decoded per codec path (``Service`` exports them)."""
    fam = CounterMetricFamily(
        "driftgate_decoded_batches",
        "Record batches decoded (predictions and labels counted apart), by codec path: "
        "fast (the compiled yyjson path) or msgspec (fast path off or not built, or a "
        "batch holding a record the fast path left to msgspec).", labels=["path"])
    fam.add_metric(["fast"], fast_batches)
    fam.add_metric(["msgspec"], msgspec_batches)
    yield fam


def skipped_batch_metrics(batches: Mapping[tuple[str, str], int],
                          offsets: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    """Undecodable record batches the source skipped, per (topic, reason)
    (``Service`` exports them; it seeds every known pair with 0)."""
    fam = CounterMetricFamily(
        "driftgate_skipped_batches",
        "Kafka record batches that could not be decoded (unsupported_codec, crc_mismatch, "
        "decompression_failed, corrupt_batch), skipped and dead-lettered.",
        labels=["topic", "reason"])
    n = CounterMetricFamily(
        "driftgate_skipped_offsets",
        "Offsets inside the skipped undecodable record batches.", labels=["topic", "reason"])
    for (topic, reason), count in sorted(batches.items()):
        fam.add_metric([topic, reason], count)
        n.add_metric([topic, reason], offsets.get((topic, reason), 0))
    yield fam
    yield n


def _add_divergences(
    fams: dict[str, GaugeMetricFamily], mv: list[str], baseline: str,
    psi: Mapping[str, float], kl: Mapping[str, float], js: Mapping[str, float],
) -> None:
    for feature, value in psi.items():
        fams["psi"].add_metric([*mv, feature, baseline], value)
        fams["kl"].add_metric([*mv, feature, baseline], kl[feature])
        fams["js"].add_metric([*mv, feature, baseline], js[feature])


class ServiceMetrics:
    """The histogram observed per batch, plus the collector, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.batch_duration = Histogram(
            "driftgate_batch_duration_seconds",
            "Time to decode, apply and store one consumed batch.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0),
            registry=registry,
        )
        self.batch_events = Histogram(
            "driftgate_batch_events", "Records per consumed batch.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
            registry=registry,
        )

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

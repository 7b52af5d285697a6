"""The definitions of driftgate's four Grafana dashboards: Service overview,
Drift, Fraud KPIs and Decisions (``DASHBOARDS``: file name -> builder).

Each function returns the dashboard as a JSON-ready dict, built with the
helpers of ``builder.py``; ``generate.py`` writes them to grafana/dashboards/.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from builder import (
    JM,
    JMV,
    J,
    Row,
    Target,
    color_override,
    dashboard,
    increase,
    quantile,
    query_variable,
    rate,
    stat,
    state_timeline,
    table,
    timeseries,
    value_mapping,
)

PSI_WARN, PSI_ALERT = 0.1, 0.25
P_VALUE_MAX = 0.01
KPIS = (
    ("catch_rate", "Catch rate", "Share of frauds the model declined (recall)."),
    ("precision", "Precision", "Share of declined transactions that were fraud."),
    ("alert_rate", "Alert rate", "Share of transactions declined."),
    ("amount_weighted_catch_rate", "Amount-weighted catch rate",
     "Share of fraud *amount* the model declined."),
)
ROLE_COLORS = {"champion": "blue", "canary": "orange"}


def overview() -> dict[str, Any]:
    health = Row("Health", [
        stat("Targets up", Target(f"sum(up{{{J}}})", "up"),
             description="Scrape targets of the selected jobs that answer /metrics.",
             thresholds=(("red", None), ("green", 1))),
        stat("Ready instances", Target(f"sum(driftgate_ready{{{J}}})", "ready"),
             description="Instances whose /readyz answers 200.",
             thresholds=(("red", None), ("green", 1))),
        stat("Assigned partitions", Target(f"sum(driftgate_assigned_partitions{{{J}}})",
                                           "partitions"),
             thresholds=(("red", None), ("green", 1))),
        stat("Max consumer lag", Target(f"max(driftgate_consumer_lag{{{J}}})", "records"),
             thresholds=(("green", None), ("orange", 10000), ("red", 50000))),
        stat("Predictions / s", Target(
            f'sum(rate(driftgate_events_total{{{JMV}, kind="prediction"}}[$__rate_interval]))',
            "predictions/s"), unit="ops", thresholds=(("blue", None),)),
        stat("Reference profile", Target(f"driftgate_reference_info{{{J}}}",
                                         "{{hash}} ({{events}} events)", instant=True),
             description="Content hash and size of the frozen reference profile.",
             thresholds=(("blue", None),), options={"textMode": "name"}),
    ])
    throughput = Row("Throughput", [
        timeseries("Events / s by model, version and kind", Target(
            rate("driftgate_events_total", JMV, "model, version, kind"),
            "{{model}} {{version}} {{kind}}"), unit="ops",
            description="Accepted predictions, and labels joined to their prediction."),
        timeseries("Labels received / s", Target(
            rate("driftgate_labels_received_total", J, "instance"), "{{instance}}"),
            unit="ops", description="Valid label events, joined or not."),
        timeseries("Predictions in the drift window", Target(
            f"sum by (model, version) (driftgate_window_events{{{JMV}}})",
            "{{model}} {{version}}"),
            description="PSI on small windows is biased upwards; the DriftgateDriftHigh "
                        "alert needs at least 500."),
        timeseries("Event-time watermark delay", Target(
            f"time() - max by (instance) (driftgate_watermark_timestamp_seconds{{{J}}})",
            "{{instance}}"), unit="s",
            description="Wall clock minus the event-time watermark: the minimum over the "
                        "predictions partitions still holding it (largest event timestamp "
                        "of each)."),
        timeseries("Event-time watermark delay by partition", Target(
            f"time() - max by (partition) "
            f"(driftgate_partition_watermark_timestamp_seconds{{{J}}})",
            "partition {{partition}}"), unit="s", w=24,
            description="Wall clock minus the largest event timestamp of each predictions "
                        "partition. The slowest active partition holds the watermark; one "
                        "with no records for windows.idle_partition_seconds stops holding "
                        "it."),
    ])
    kafka = Row("Kafka", [
        timeseries("Consumer lag by partition", Target(
            f"sum by (topic, partition) (driftgate_consumer_lag{{{J}}})",
            "{{topic}}/{{partition}}"),
            thresholds=(("green", None), ("red", 50000)), threshold_style="dashed",
            description="Records between the committed position and the end of each "
                        "partition. DriftgateConsumerLagHigh fires above 50000 for 10m."),
        timeseries("Assigned partitions by instance", Target(
            f"sum by (instance) (driftgate_assigned_partitions{{{J}}})", "{{instance}}")),
        timeseries("Dead-lettered records / s", Target(
            rate("driftgate_dead_letter_records_total", J, "instance"), "{{instance}}"),
            unit="ops"),
        timeseries("Dead-letter ratio (5m)", Target(
            f"instance:driftgate_dead_letter:ratio_rate5m{{{J}}}", "{{instance}}"),
            unit="percentunit", thresholds=(("green", None), ("red", 0.01)),
            threshold_style="dashed",
            description="Share of consumed records dead-lettered (recording rule). "
                        "DriftgateDeadLetterRate fires above 1% for 10m."),
        timeseries("Undecodable batches skipped", Target(
            increase("driftgate_skipped_batches_total", J, "topic, reason"),
            "batches {{topic}}: {{reason}}"), Target(
            increase("driftgate_skipped_offsets_total", J, "topic, reason"),
            "offsets {{topic}}: {{reason}}"), draw="bars", fill=80, decimals=0,
            description="Record batches that could not be decoded (unsupported_codec, "
                        "crc_mismatch, decompression_failed, corrupt_batch), and the offsets "
                        "in them: skipped and dead-lettered, the other partitions go on. "
                        "DriftgateUndecodableBatches fires on any."),
    ])
    quality = Row("Data quality", [
        timeseries("Invalid events / s by reason", Target(
            rate("driftgate_invalid_events_total", J, "kind, reason"), "{{kind}}: {{reason}}"),
            unit="ops", stack=True, draw="bars", fill=80),
        timeseries("Late events / s", Target(
            rate("driftgate_late_events_total", JMV, "model, version"),
            "late predictions {{model}} {{version}}"), Target(
            rate("driftgate_late_labels_total", JMV, "model, version"),
            "late labels {{model}} {{version}}"), unit="ops",
            description="Predictions older than the allowed lateness, and labels whose "
                        "prediction left the KPI window: counted, kept out of windows."),
        timeseries("Future timestamps refused / s", Target(
            rate("driftgate_invalid_events_total", f'{J}, reason="future_timestamp"', "kind"),
            "{{kind}}"), unit="ops", draw="bars", fill=80,
            description="Events stamped more than windows.max_future_skew_seconds ahead of "
                        "the wall clock (a producer's clock is wrong): refused and "
                        "dead-lettered, they never move event time. "
                        "DriftgateFutureTimestamps fires on any."),
        timeseries("Admin API authentication failures", Target(
            increase("driftgate_http_auth_failures_total", J, "route"), "{{route}}"),
            unit="short", draw="bars", fill=80,
            description="Requests to the admin routes refused for a missing, malformed or "
                        "wrong token, per route; sampled into the audit log."),
        timeseries("Duplicate events / s", Target(
            rate("driftgate_duplicate_events_total", J, "kind"), "{{kind}}"), unit="ops",
            description="Events whose id was already seen within the dedupe horizon: "
                        "counted once, nothing else."),
        timeseries("Dedupe memory", Target(
            f"sum by (kind) (driftgate_dedupe_ids{{{J}}})", "ids {{kind}}"), Target(
            f"sum by (kind) (driftgate_dedupe_memory_bytes{{{J}}})", "bytes {{kind}}"),
            overrides=[{"matcher": {"id": "byRegexp", "options": "^bytes .*"},
                        "properties": [{"id": "unit", "value": "bytes"},
                                       {"id": "custom.axisPlacement", "value": "right"}]}],
            description="Event ids remembered for dedupe (left axis) and the bytes they "
                        "hold (right axis, about 16 B per id); capped by dedupe.max_ids."),
        timeseries("Dedupe evictions", Target(
            increase("driftgate_dedupe_evictions_total", J, "kind"), "{{kind}}"),
            draw="bars", fill=80, decimals=0,
            description="Ids forgotten before the dedupe horizon because the memory cap "
                        "(dedupe.max_ids) was hit: older copies may be counted twice. "
                        "DriftgateDedupeMemoryFull fires on any."),
        timeseries("Label join buffer", Target(
            f"sum by (kind) (driftgate_join_pending{{{J}}})", "pending {{kind}}s"),
            description="Events waiting in the label join buffer."),
        timeseries("Join evictions / s", Target(
            rate("driftgate_join_evictions_total", J, "reason"), "evicted: {{reason}}"),
            Target(rate("driftgate_unmatched_labels_total", J, "reason"),
                   "unmatched labels: {{reason}}"), unit="ops"),
    ])
    processing = Row("Processing", [
        timeseries("Batch duration quantiles", *(
            Target(quantile(q, "driftgate_batch_duration_seconds", J), f"p{int(q * 100)}")
            for q in (0.5, 0.9, 0.99)), unit="s",
            description="Decode, apply and store one consumed batch (histogram)."),
        timeseries("Batch size quantiles", *(
            Target(quantile(q, "driftgate_batch_events", J), f"p{int(q * 100)}")
            for q in (0.5, 0.99)), description="Records per consumed batch."),
        timeseries("Batches / s", Target(
            rate("driftgate_batch_duration_seconds_count", J, "instance"), "{{instance}}"),
            unit="ops"),
        timeseries("Decoded batches / s by codec path", Target(
            rate("driftgate_decoded_batches_total", J, "path"), "{{path}}"), unit="ops",
            stack=True, draw="bars", fill=80,
            description="fast: the compiled yyjson path; msgspec: fast path off or not "
                        "built, or a batch holding a record it left to msgspec (bad "
                        "records, RFC 3339 times, CloudEvents headers). Only msgspec "
                        "means the extension is missing: see the start-up log."),
        timeseries("Up and ready", Target(f"sum by (instance) (up{{{J}}})", "up {{instance}}"),
                   Target(f"sum by (instance) (driftgate_ready{{{J}}})",
                          "ready {{instance}}"), min=0, max=1, decimals=0,
                   draw="line"),
    ])
    return dashboard("driftgate-overview", "driftgate / Service overview",
                     "Throughput, Kafka lag, data quality and batch latency of driftgate.",
                     [health, throughput, kafka, quality, processing])


def _psi_thresholds() -> dict[str, Any]:
    return {"thresholds": (("green", None), ("yellow", PSI_WARN), ("red", PSI_ALERT)),
            "threshold_style": "dashed"}


def drift() -> dict[str, Any]:
    feature_var = query_variable(
        "feature", "Feature",
        f'label_values(driftgate_psi{{{JM}, feature!="model_score"}}, feature)')
    score = f'{JMV}, feature="model_score"'
    feats = f'{JMV}, feature=~"$feature", feature!="model_score"'
    score_row = Row("Model score", [
        timeseries("Score PSI vs reference", Target(
            f'max by (model, version) (driftgate_psi{{{score}, baseline="reference"}})',
            "{{model}} {{version}}"), **_psi_thresholds(),
            description="Population stability index of each version's score window "
                        "against the frozen reference. 0.1 moderate, 0.25 major shift "
                        "(DriftgateDriftHigh)."),
        timeseries("Score PSI, canary vs champion", Target(
            f'max by (model, version) (driftgate_psi{{{score}, baseline="champion"}})',
            "{{model}} canary {{version}}"), **_psi_thresholds(),
            description="The canary's score window against the champion's window."),
        timeseries("Score KL divergence", Target(
            f"max by (model, version, baseline) (driftgate_kl_divergence{{{score}}})",
            "{{model}} {{version}} vs {{baseline}}"),
            description="KL(baseline || window) in nats."),
        timeseries("Score Jensen-Shannon divergence", Target(
            f"max by (model, version, baseline) (driftgate_js_divergence{{{score}}})",
            "{{model}} {{version}} vs {{baseline}}"),
            max=0.7, description="In nats, bounded by ln 2."),
    ])
    feature_row = Row("Features vs reference", [
        timeseries("Feature PSI vs reference", Target(
            f'max by (version, feature) (driftgate_psi{{{feats}, baseline="reference"}})',
            "{{version}} {{feature}}"), **_psi_thresholds(), w=24, h=9),
        timeseries("Feature KL divergence vs reference", Target(
            f'max by (version, feature) (driftgate_kl_divergence{{{feats}, '
            f'baseline="reference"}})', "{{version}} {{feature}}")),
        timeseries("Feature JS divergence vs reference", Target(
            f'max by (version, feature) (driftgate_js_divergence{{{feats}, '
            f'baseline="reference"}})', "{{version}} {{feature}}")),
        table("Current divergences", *(
            Target(f"max by (model, version, feature, baseline) ({m}{{{JMV}}})",
                   instant=True, fmt="table") for m in
            ("driftgate_psi", "driftgate_kl_divergence", "driftgate_js_divergence")),
            w=24, h=10,
            transformations=[
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "PSI", "Value #B": "KL", "Value #C": "JS"}}},
                {"id": "sortBy", "options": {"sort": [{"field": "PSI", "desc": True}]}},
            ],
            overrides=[{"matcher": {"id": "byName", "options": "PSI"}, "properties": [
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                    {"color": "green", "value": None}, {"color": "yellow", "value": PSI_WARN},
                    {"color": "red", "value": PSI_ALERT}]}}]}],
            decimals=4),
    ])
    canary_row = Row("Features, canary vs champion", [
        timeseries("Feature PSI, canary vs champion", Target(
            f'max by (version, feature) (driftgate_psi{{{feats}, baseline="champion"}})',
            "canary {{version}} {{feature}}"), **_psi_thresholds()),
        timeseries("Feature JS divergence, canary vs champion", Target(
            f'max by (version, feature) (driftgate_js_divergence{{{feats}, '
            f'baseline="champion"}})', "canary {{version}} {{feature}}")),
    ])
    adwin_row = Row("ADWIN change detection", [
        timeseries("ADWIN detections", Target(
            increase("driftgate_adwin_detections_total", JMV, "model, version, stream"),
            "{{model}} {{version}} {{stream}}"), draw="bars", fill=80, w=8,
            description="Changes detected per stream (error indicator, score)."),
        timeseries("ADWIN window mean", Target(
            f"max by (model, version, stream) (driftgate_adwin_mean{{{JMV}}})",
            "{{model}} {{version}} {{stream}}"), w=8,
            description="Mean of the adaptive window: error rate or mean score."),
        timeseries("ADWIN window width", Target(
            f"max by (model, version, stream) (driftgate_adwin_width{{{JMV}}})",
            "{{model}} {{version}} {{stream}}"), w=8,
            description="Events in the adaptive window; it shrinks after a change."),
    ])
    cusum_row = Row("Recall CUSUM (catch-rate drop)", [
        timeseries("Recall CUSUM statistic and threshold", Target(
            f"max by (model, version) (driftgate_recall_cusum_statistic{{{JMV}}})",
            "{{model}} {{version}} statistic"), Target(
            f"max by (model, version) (driftgate_recall_cusum_threshold{{{JMV}}})",
            "{{model}} {{version}} threshold h"), w=8,
            description="Bernoulli CUSUM of caught/missed per labelled fraud; an alarm "
                        "when the statistic reaches h (set from the in-control ARL)."),
        timeseries("Recall CUSUM detections", Target(
            increase("driftgate_recall_cusum_detections_total", JMV, "model, version"),
            "{{model}} {{version}}"), draw="bars", fill=80, w=8,
            description="Catch-rate drops detected (evaluation.recall_cusum_delta)."),
        timeseries("Recall CUSUM baseline and untested frauds", Target(
            f"max by (model, version) (driftgate_recall_cusum_baseline{{{JMV}}})",
            "{{model}} {{version}} in-control catch rate"), Target(
            increase("driftgate_recall_cusum_unmonitored_frauds_total", JMV,
                     "model, version"), "{{model}} {{version}} untested frauds"), w=8,
            description="p0 the chart tests against (the champion's catch rate or the "
                        "configured one); frauds seen with no p0 yet are not tested."),
    ])
    return dashboard("driftgate-drift", "driftgate / Drift",
                     "PSI, KL and JS divergence per feature and for the model score, "
                     "against the frozen reference and canary vs champion; ADWIN and "
                     "the recall CUSUM.",
                     [score_row, feature_row, canary_row, adwin_row, cusum_row],
                     [feature_var])


def _role_kpi(kpi: str, role: str, bound: str) -> Target:
    expr = (f'max(driftgate_kpi_ratio{{{JM}, kpi="{kpi}", bound="{bound}"}} '
            f'and on (model, version) (driftgate_version_role{{{JM}, role="{role}"}} == 1))')
    return Target(expr, role if bound == "estimate" else f"{role} {bound}")


def _band_overrides() -> list[dict[str, Any]]:
    out = []
    for role, color in ROLE_COLORS.items():
        out.append(color_override(role, color, **{"custom.lineWidth": 2,
                                                  "custom.fillOpacity": 0}))
        out.append(color_override(f"{role} upper", color, **{
            "custom.lineWidth": 0, "custom.fillOpacity": 15,
            "custom.fillBelowTo": f"{role} lower", "custom.hideFrom": {
                "legend": True, "tooltip": False, "viz": False}}))
        out.append(color_override(f"{role} lower", color, **{
            "custom.lineWidth": 0, "custom.fillOpacity": 0, "custom.hideFrom": {
                "legend": True, "tooltip": False, "viz": False}}))
    return out


def kpis() -> dict[str, Any]:
    band_panels = [
        timeseries(f"{title}: champion vs canary", *(
            _role_kpi(kpi, role, bound) for role in ROLE_COLORS
            for bound in ("estimate", "lower", "upper")),
            unit="percentunit", min=0, max=1, overrides=_band_overrides(),
            description=f"{desc} Lines are estimates over the KPI window; the bands are "
                        "Wilson 95% intervals.")
        for kpi, title, desc in KPIS
    ]
    kpi_names = "|".join(k for k, _, _ in KPIS)
    model_row = Row("Model $model", [
        *band_panels,
        timeseries("Canary minus champion", Target(
            f"max by (version, kpi) (driftgate_canary_kpi_difference_ratio{{{JM}}})",
            "canary {{version}} {{kpi}}"), unit="percentunit", w=8,
            description="Negative: the canary does worse."),
        timeseries("Canary-vs-champion p-value", Target(
            f"max by (version, kpi) (driftgate_canary_kpi_p_value{{{JM}}})",
            "canary {{version}} {{kpi}}"), log_scale=True, w=8,
            thresholds=(("red", None), ("green", P_VALUE_MAX)), threshold_style="dashed",
            description="One-sided ('canary lower') test for catch rate and precision. "
                        "DriftgateKpiDrop fires below 0.01 with a lower catch rate."),
        timeseries("KPI samples (denominators)", Target(
            f'max by (version, kpi) (driftgate_kpi_samples{{{JMV}, kpi=~"{kpi_names}"}})',
            "{{version}} {{kpi}}"), w=8,
            description="Labelled frauds (catch rates), alerts (precision) or predictions "
                        "(alert rate) in the KPI window."),
    ], repeat="model")
    version_row = Row("By version", [
        timeseries(f"{title} by version", Target(
            f'max by (model, version) (driftgate_kpi_ratio{{{JMV}, kpi="{kpi}", '
            f'bound="estimate"}})', "{{model}} {{version}}"),
            unit="percentunit", min=0, max=1, w=6)
        for kpi, title, _ in KPIS
    ] + [
        timeseries("Confusion cells / s", Target(
            rate("driftgate_confusion_total", JMV, "model, version, cell"),
            "{{model}} {{version}} {{cell}}"), unit="ops",
            description="Joined predictions by cell (tp, fp, fn, tn)."),
        timeseries("Version roles", Target(
            f"max by (model, version, role) (driftgate_version_role{{{JMV}}})",
            "{{model}} {{version}} {{role}}"), min=0, max=1, decimals=0,
            description="1 while the version holds the role."),
    ])
    return dashboard("driftgate-kpis", "driftgate / Fraud KPIs",
                     "Catch rate, precision, alert rate and amount-weighted catch rate "
                     "with Wilson intervals, champion vs canary, and the canary tests.",
                     [model_row, version_row])


VERDICT_CODES = ((0, "ok", "green"), (1, "alert", "orange"), (2, "rollback", "red"))
RULE_CODES = ((0, "insufficient data", "text"), (1, "ok", "green"),
              (2, "breaching", "orange"), (3, "firing", "red"))


def _coded(metric: str, label: str, by: str, matchers: str,
           codes: Sequence[tuple[int, str, str]]) -> str:
    parts = [f'({metric}{{{matchers}, {label}="{name.replace(" ", "_")}"}} == 1) * {code}'
             for code, name, _ in codes]
    return f"max by ({by}) (" + " or ".join(parts) + ")"


def decisions() -> dict[str, Any]:
    verdict = _coded("driftgate_verdict", "verdict", "model, version", JMV, VERDICT_CODES)
    rule_state = _coded("driftgate_rule_state", "state", "rule, model, version", JMV,
                        RULE_CODES)
    failed = 'outcome=~"rejected|exhausted|disabled"'
    verdict_row = Row("Verdicts", [
        stat("Current verdict", Target(verdict, "{{model}} {{version}}"),
             mappings=[value_mapping(VERDICT_CODES)], w=12,
             thresholds=(("green", None), ("orange", 1), ("red", 2)),
             description="What /v1/verdict answers (Argo Rollouts web metric, Flagger)."),
        stat("Rollbacks in range", Target(
            f'sum(increase(driftgate_decisions_total{{{JMV}, action="rollback"}}[$__range]))',
            "rollbacks"), w=6, decimals=0, thresholds=(("green", None), ("red", 1))),
        stat("Failed webhook deliveries in range", Target(
            f"sum(increase(driftgate_webhook_deliveries_total{{{J}, {failed}}}[$__range]))",
            "failed"), w=6, decimals=0, thresholds=(("green", None), ("red", 1))),
        state_timeline("Verdict over time", Target(verdict, "{{model}} {{version}}"),
                       mappings=[value_mapping(VERDICT_CODES)], w=24, h=6,
                       thresholds=(("green", None), ("orange", 1), ("red", 2))),
    ])
    rules_row = Row("Policy rules", [
        state_timeline("Rule state", Target(rule_state, "{{rule}} ({{model}} {{version}})"),
                       mappings=[value_mapping(RULE_CODES)], w=24, h=9,
                       thresholds=(("text", None), ("green", 1), ("orange", 2), ("red", 3)),
                       description="insufficient data: below the rule's minimum samples; "
                                   "breaching: over threshold, sustain not yet met."),
        timeseries("Rule values", Target(
            f"max by (rule, model, version) (driftgate_rule_value{{{JMV}}})",
            "{{rule}} ({{version}})"), description="What each rule last measured."),
        table("Rules now", Target(
            f"max by (rule, model, version, severity, state) "
            f"(driftgate_rule_state{{{JMV}}} == 1)", instant=True, fmt="table"),
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True}}}]),
    ])
    decisions_row = Row("Decisions", [
        timeseries("Decisions", Target(
            increase("driftgate_decisions_total", JMV, "rule, model, version, action"),
            "{{action}}: {{rule}} ({{model}} {{version}})"), draw="bars", fill=80,
            stack=True, decimals=0),
        timeseries("Rollback decisions (cumulative)", Target(
            f'sum by (model, version, rule) (driftgate_decisions_total{{{JMV}, '
            f'action="rollback"}})', "{{model}} {{version}} {{rule}}"), decimals=0),
    ])
    webhook_row = Row("Webhooks and audit", [
        timeseries("Webhook attempts / s by outcome", Target(
            rate("driftgate_webhook_attempts_total", J, "target, outcome"),
            "{{target}} {{outcome}}"), unit="ops", w=8,
            description="delivered, retry (another attempt follows), failed (retries "
                        "exhausted), rejected (4xx), disabled (410)."),
        timeseries("Finished deliveries by outcome", Target(
            increase("driftgate_webhook_deliveries_total", J, "target, outcome"),
            "{{target}} {{outcome}}"), draw="bars", fill=80, stack=True, decimals=0, w=8,
            description="Final outcomes: delivered, duplicate, rejected, exhausted, "
                        "disabled."),
        timeseries("Audit log records", Target(
            f"sum by (instance) (driftgate_audit_records{{{J}}})", "{{instance}}"), w=8),
    ])
    return dashboard("driftgate-decisions", "driftgate / Decisions",
                     "Policy rule states, decisions and rollbacks, verdicts, webhook "
                     "deliveries and the audit log.",
                     [verdict_row, rules_row, decisions_row, webhook_row])


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "driftgate-overview.json": overview,
    "driftgate-drift.json": drift,
    "driftgate-kpis.json": kpis,
    "driftgate-decisions.json": decisions,
}

"""The decision layer: evaluations -> policy -> webhooks, alerts, audit, topic.

Registered as a tick handler of the :class:`monitor.core.service.Service`. Each
tick it turns the engine's evaluation into neutral views for
:class:`rollback.policy.Policy`; every decision is written to the audit log,
published to the decisions topic and delivered (a rollback webhook to the
model's router URL, a firing Alertmanager-v4 alert to on-call); a rule that
clears sends the resolved alert. Deliveries run in the background, so a slow
receiver never delays evaluation; every attempt's outcome is audited and
counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitor.config import Settings
from monitor.engine import Engine, Evaluation, VersionEvaluation
from rollback.alerts import AlertSpec, alert_payload
from rollback.audit import AuditLog
from rollback.delivery import Attempt, DeliveryResult, WebhookSender
from rollback.policy import Decision, ModelView, Policy, PolicyOutcome, Resolution, VersionView

__all__ = ["AUTH_AUDIT_INTERVAL_S", "DecisionLayer", "VerdictError", "json_safe"]

#: failed authentications are sampled into the audit log at most this often per route
AUTH_AUDIT_INTERVAL_S = 60.0

log = structlog.get_logger("driftgate.decisions")

Publisher = Callable[[str, bytes, bytes], Awaitable[None]]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _clean_doc(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json_safe(obj)
    return out


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _view(ve: VersionEvaluation | None) -> VersionView | None:
    if ve is None:
        return None
    div = None
    if ve.vs_reference is not None:
        div = {"psi": ve.vs_reference.psi, "kl": ve.vs_reference.kl, "js": ve.vs_reference.js}
    return VersionView(
        version=ve.version, window_events=ve.window_events, window_bounds=ve.window_bounds,
        confusion=ve.confusion, kpis=ve.kpis, divergence=div,
        confusion_total=ve.confusion_total,
        adwin_detections={k: int(v["detections"]) for k, v in ve.adwin.items()},
    )


def build_views(engine: Engine, ev: Evaluation) -> list[ModelView]:
    """Neutral policy views of every configured model."""
    views: list[ModelView] = []
    for model, roles in engine.roles.items():
        champ = roles.get("champion")
        canary = roles.get("canary")
        cmp = ev.canaries.get(model)
        vs_champ = None
        if cmp is not None and cmp.divergences is not None:
            vs_champ = {"psi": cmp.divergences.psi, "kl": cmp.divergences.kl,
                        "js": cmp.divergences.js}
        views.append(ModelView(
            model=model,
            champion=_view(ev.versions.get((model, champ))) if champ else None,
            canary=_view(ev.versions.get((model, canary))) if canary else None,
            canary_vs_champion=vs_champ,
        ))
    return views


class VerdictError(LookupError):
    """No verdict: the model or version is unknown (``code`` names which)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class DecisionLayer:
    """Policy evaluation and actions for a running service.

    Parameters
    ----------
    settings : Settings
        Rules, webhook, alerting and audit settings.
    engine : callable
        Returns the current engine (None while the reference is being fitted).
    publish : async callable, optional
        ``(topic, key, value)`` producer for the decisions topic.
    clock : callable
        Wall clock (epoch seconds); a backtest passes its event-time clock.
    audit : AuditLog, optional
        The audit log to write (default: ``settings.audit.path``, on the wall
        clock); a backtest passes a fresh one stamped in event time.
    """

    def __init__(self, settings: Settings, engine: Callable[[], Engine | None],
                 publish: Publisher | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 claim: Callable[[str, str], Awaitable[str]] | None = None,
                 audit: AuditLog | None = None) -> None:
        self.settings = settings
        self._claim = claim
        self._engine = engine
        self._publish = publish
        self.clock = clock
        secrets = settings.webhooks.secret_values()
        # checked before anything is opened: a config error leaves nothing behind
        if not secrets and (any(m.rollback_url for m in settings.models)
                            or settings.alerting.url):
            raise ValueError("webhooks.secrets (or webhooks.secrets_file) is required when a "
                             "rollback_url or alerting.url is configured: webhooks are signed")
        self.policy = Policy(settings.rules)
        self.audit = audit if audit is not None else AuditLog(Path(settings.audit.path),
                                                               fsync=settings.audit.fsync)
        self.config_hash = settings.content_hash()
        self._senders: dict[str, WebhookSender] = {}
        if secrets:
            for m in settings.models:
                if m.rollback_url:
                    self._senders[f"router:{m.name}"] = self._sender(m.rollback_url, secrets,
                                                                     f"router:{m.name}", sleep)
            if settings.alerting.url:
                self._senders["alertmanager"] = self._sender(settings.alerting.url, secrets,
                                                             "alertmanager", sleep)
        for sender in self._senders.values():
            sender.warm_up()
        self.tasks: set[asyncio.Task[Any]] = set()
        self._rollbacks_requested: set[str] = set()
        self.deliveries: list[DeliveryResult] = []
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.decision_counts: Counter[tuple[str, str, str, str]] = Counter()
        self.last_outcome: PolicyOutcome | None = None
        self.last_evaluated_at: float | None = None
        self.enabled = True
        # events of a champion or canary the codec refused (only those: bounded),
        # (model, version) -> reason -> (count, last refused at)
        self.refused: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        # failed admin authentications per route (driftgate_http_auth_failures_total)
        # and the ones not yet sampled into the audit log
        self.auth_failures: Counter[str] = Counter()
        self._auth_pending: dict[str, Counter[str]] = {}
        self._auth_audited_at: dict[str, float] = {}

    def _sender(self, url: str, secrets: list[str], name: str,
                sleep: Callable[[float], Awaitable[None]]) -> WebhookSender:
        wh = self.settings.webhooks
        return WebhookSender(
            url, secrets, max_attempts=wh.max_attempts,
            initial_backoff_s=wh.initial_backoff_seconds, max_backoff_s=wh.max_backoff_seconds,
            timeout_s=wh.timeout_seconds, sleep=sleep, clock=self.clock,
            on_attempt=self._attempt_hook(name), name=name)

    def _attempt_hook(self, target: str) -> Callable[[Attempt, str], None]:
        def hook(attempt: Attempt, webhook_id: str) -> None:
            self._on_attempt(target, webhook_id, attempt)

        return hook

    # ------------------------------------------------------------- the tick
    async def on_tick(self, ev: Evaluation) -> PolicyOutcome | None:
        """Evaluate the rules on ``ev`` and act on what fires or clears."""
        engine = self._engine()
        if engine is None or not self.enabled:
            return None
        now = self.clock()
        ctx = {"config_hash": self.config_hash, "reference_hash": ev.reference_hash,
               "watermark": ev.watermark if math.isfinite(ev.watermark) else None}
        outcome = self.policy.evaluate(build_views(engine, ev), now, ctx)
        self.last_outcome = outcome
        self.last_evaluated_at = now
        for d in outcome.decisions:
            await self._act(d)
        for r in outcome.resolved:
            self._resolve(r)
        return outcome

    async def _act(self, d: Decision) -> None:
        self.decision_counts[(d.rule, d.model, d.version, d.action)] += 1
        record = json_safe(d.as_dict())
        self.audit.append("decision", record)
        log.warning("decision", decision_id=d.decision_id, action=d.action, rule=d.rule,
                    model=d.model, version=d.version, reason=d.reason)
        if d.action == "rollback":
            # rollbacks already requested for this version (not merely decided: the
            # policy activates every decision of a tick before they are acted on)
            earlier = [x for x in self.policy.active.get((d.model, d.version), {})
                       if x != d.decision_id and x in self._rollbacks_requested]
            if not earlier and self._claim is not None:
                # across instances and failovers: one rollback per canary version
                try:
                    owner = await self._claim(f"rollback:{d.model}:{d.version}",
                                              d.decision_id)
                except Exception as exc:  # a missed rollback is worse than a repeat
                    log.error("rollback claim failed; sending anyway", error=str(exc))
                    owner = d.decision_id
                if owner != d.decision_id:
                    earlier = [owner]
            sender = self._senders.get(f"router:{d.model}")
            if earlier:
                # one rollback per canary: the router already has one for this version
                self.audit.append("suppressed", {
                    "decision_id": d.decision_id, "target": f"router:{d.model}",
                    "reason": f"rollback of {d.model} {d.version} already requested by "
                              f"{earlier[0]}"})
            else:
                self._rollbacks_requested.add(d.decision_id)
                if sender is not None:
                    self._spawn(sender, d.decision_id, self._rollback_body(d), d)
        alert = self._senders.get("alertmanager")
        if alert is not None:
            self._spawn(alert, f"{d.decision_id}:firing", self._alert_body(d, None), d)
        if self._publish is not None:
            # off the rollback path: the webhooks above are already on their way
            task = asyncio.create_task(self._publish_decision(d, record),
                                       name=f"publish-{d.decision_id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _publish_decision(self, d: Decision, record: dict[str, Any]) -> None:
        publish = self._publish
        if publish is None:
            return
        try:
            await publish(self.settings.kafka.decisions_topic, d.model.encode(),
                          json.dumps(record, sort_keys=True).encode())
        except Exception as exc:
            log.error("decision not published", decision_id=d.decision_id, error=str(exc))
            self.audit.append("publish", {"decision_id": d.decision_id,
                                          "outcome": "failed", "error": str(exc)})

    def _resolve(self, r: Resolution) -> None:
        self.audit.append("resolved", {"rule": r.rule, "model": r.model, "version": r.version,
                                       "decision_id": r.decision_id, "at": r.at})
        alert = self._senders.get("alertmanager")
        if alert is None or r.decision_id is None:
            return
        d = self.policy.decisions.get(r.decision_id)
        if d is not None:
            self._spawn(alert, f"{d.decision_id}:resolved", self._alert_body(d, r.at), d)

    def _spawn(self, sender: WebhookSender, webhook_id: str, body: dict[str, Any],
               d: Decision) -> None:
        async def run() -> None:
            result = await sender.deliver(webhook_id, body)
            self.deliveries.append(result)
            self.outcomes[(sender.name, result.outcome)] += 1
            self.audit.append("delivery", {
                "decision_id": d.decision_id, "webhook_id": webhook_id, "target": sender.name,
                "url": result.url, "outcome": result.outcome, "delivered": result.delivered,
                "attempts": len(result.attempts)})
            log.info("delivery finished", target=sender.name, webhook_id=webhook_id,
                     outcome=result.outcome, attempts=len(result.attempts))

        task = asyncio.create_task(run(), name=f"deliver-{webhook_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_attempt(self, target: str, webhook_id: str, a: Attempt) -> None:
        self.attempts[(target, a.outcome)] += 1
        self.audit.append("attempt", {"target": target, "webhook_id": webhook_id,
                                      "number": a.number, "at": a.at, "status": a.status,
                                      "error": a.error, "outcome": a.outcome,
                                      "duration_s": a.duration_s,
                                      "next_delay_s": a.next_delay_s})

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for deliveries in flight."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    async def aclose(self) -> None:
        now = self.clock()
        for route in list(self._auth_pending):
            self._flush_auth(route, now)
        for t in list(self.tasks):
            t.cancel()
        for s in self._senders.values():
            await s.aclose()
        self.audit.close()

    # --------------------------------------------------------------- bodies
    def _rollback_body(self, d: Decision) -> dict[str, Any]:
        ev = d.evidence
        return _clean_doc({
            "type": "driftgate.rollback",
            "decision_id": d.decision_id,
            "model": d.model,
            "canary_version": d.version,
            "champion_version": d.champion,
            "reason": d.reason,
            "rule": d.rule,
            "decided_at": _iso(d.at),
            "breach_started_at": _iso(d.breach_started_at),
            "evidence": {"value": ev.get("value"), "threshold": ev.get("threshold"),
                         "comparison": ev.get("comparison"), "p_value": ev.get("p_value"),
                         "samples": ev.get("samples"), "window": ev.get("window"),
                         "config_hash": ev.get("config_hash"),
                         "reference_hash": ev.get("reference_hash")},
        })

    def _alert_body(self, d: Decision, resolved_at: float | None) -> dict[str, Any]:
        severity = "critical" if d.action == "rollback" else "warning"
        spec = AlertSpec(
            labels={"alertname": "DriftgateRuleFiring", "rule": d.rule, "model": d.model,
                    "version": d.version, "severity": severity, "action": d.action},
            annotations={"summary": f"{d.model} {d.version}: {d.rule} ({d.action})",
                         "description": d.reason, "decision_id": d.decision_id,
                         "runbook_url": f"{self.settings.alerting.runbook_base_url}"
                                        "#driftgaterulefiring"},
            starts_at=d.breach_started_at, ends_at=resolved_at,
            generator_url=self.settings.alerting.external_url,
        )
        payload: dict[str, Any] = alert_payload([spec], receiver=self.settings.alerting.receiver,
                             external_url=self.settings.alerting.external_url,
                                               group_labels={"alertname": "DriftgateRuleFiring",
                                                             "model": d.model})
        return payload

    # ------------------------------------------------------------ verdicts
    def note_refused(self, model: str, version: str, reason: str, n: int = 1) -> None:
        """The codec refused ``n`` events of ``model``/``version`` for ``reason``.

        Kept only for a current champion or canary, so junk versions cannot grow
        it; a refused canary is not monitored, and its verdict says so.
        """
        engine = self._engine()
        roles = engine.roles.get(model) if engine is not None else None
        if roles is None or version not in roles.values():
            return
        per = self.refused.setdefault((model, version), {})
        seen, _ = per.get(reason, (0, 0.0))
        per[reason] = (seen + n, self.clock())

    def _refusals(self, model: str, version: str) -> dict[str, int]:
        """Reasons ``version``'s events were refused within the drift window."""
        per = self.refused.get((model, version))
        if not per:
            return {}
        since = self.clock() - self.settings.windows.window_seconds
        return {r: n for r, (n, at) in sorted(per.items()) if at >= since}

    def verdict(self, model: str, version: str | None) -> dict[str, Any]:
        """The verdict on ``version`` (default: the canary, else the champion).

        ``ok | alert | rollback`` from the rules, ``inconclusive`` when the
        version is configured but no rule has enough of its data, ``alert`` (with
        ``unmonitored: true``) when its events are being refused. Raises
        :class:`VerdictError` for an unknown model or a version that is neither
        the champion nor the canary (nothing monitors it: never ``ok``).
        """
        engine = self._engine()
        roles = engine.roles.get(model) if engine else None
        if roles is None:
            roles = next(({"champion": m.champion, **({"canary": m.canary} if m.canary
                                                        else {})}
                          for m in self.settings.models if m.name == model), None)
        if roles is None:
            raise VerdictError("unknown_model", f"model {model!r} is not configured")
        v = version or roles.get("canary") or roles["champion"]
        verdict, active, firing = self.policy.verdict(model, v)
        states = [s for s in self.policy.states.values() if s.model == model and s.version == v]
        role = next((r for r, ver in roles.items() if ver == v), "other")
        if role == "other" and not active:
            known = ", ".join(f"{r} {ver!r}" for r, ver in sorted(roles.items()))
            raise VerdictError("unknown_version",
                               f"version {v!r} of model {model!r} is neither its champion "
                               f"nor its canary ({known}): nothing monitors it")
        refused = self._refusals(model, v)
        st = engine.versions.get((model, v)) if engine is not None else None
        reason: str | None = None
        if refused:
            reason = (f"events of {model} {v} are being refused ("
                      + ", ".join(f"{r}: {n}" for r, n in refused.items())
                      + "): it is not monitored")
            if verdict == "ok":
                verdict = "alert"
        elif verdict == "ok":
            if st is None or st.predictions_total == 0:
                verdict, reason = "inconclusive", f"no accepted events of {model} {v} yet"
            elif not states:
                verdict, reason = "inconclusive", f"no rule applies to {model} {v}"
            elif all(s.status == "insufficient_data" for s in states):
                verdict, reason = ("inconclusive",
                                   f"no rule has enough data on {model} {v} yet")
        return _clean_doc({
            "model": model, "version": v, "role": role, "verdict": verdict,
            "rollback": verdict == "rollback",
            "unmonitored": bool(refused),
            "reason": reason,
            "refused": refused,
            "decisions": [d.as_dict() for d in active],
            "firing_rules": [s.rule for s in firing],
            "rules": [s.as_dict() for s in states],
            "evaluated_at": self.last_evaluated_at,
            "config_hash": self.config_hash,
        })

    # ------------------------------------------------------ failed auth
    def note_auth_failure(self, route: str, reason: str, remote: str | None = None) -> None:
        """Count a failed admin authentication; sample it into the audit log.

        At most one audit record per route per :data:`AUTH_AUDIT_INTERVAL_S`,
        carrying how many failures (per reason) it stands for.
        """
        self.auth_failures[route] += 1
        pending = self._auth_pending.setdefault(route, Counter())
        pending[reason] += 1
        now = self.clock()
        last = self._auth_audited_at.get(route)
        if last is None or now - last >= AUTH_AUDIT_INTERVAL_S:
            self._flush_auth(route, now, remote)

    def _flush_auth(self, route: str, now: float, remote: str | None = None) -> None:
        pending = self._auth_pending.pop(route, None)
        if not pending:
            return
        since = self._auth_audited_at.get(route)
        self._auth_audited_at[route] = now
        self.audit.append("auth_failure", {
            "route": route, "count": sum(pending.values()), "reasons": dict(pending),
            "since": since, "last_remote": remote,
            "sampling": f"at most one record per {AUTH_AUDIT_INTERVAL_S:g} s per route"})

    # -------------------------------------------------------------- metrics
    def metrics(self) -> Iterable[Metric]:
        states = GaugeMetricFamily("driftgate_rule_state", "1 for each rule's current state "
                                   "per model and target version.",
                                   labels=["rule", "model", "version", "severity", "state"])
        values = GaugeMetricFamily("driftgate_rule_value", "The value each rule last "
                                   "measured.", labels=["rule", "model", "version"])
        for s in self.policy.states.values():
            version = s.version or ""
            for state in ("insufficient_data", "ok", "breaching", "firing"):
                states.add_metric([s.rule, s.model, version, s.severity, state],
                                  1.0 if s.status == state else 0.0)
            if s.value is not None and math.isfinite(s.value):
                values.add_metric([s.rule, s.model, version], s.value)
        yield states
        yield values
        dec = CounterMetricFamily("driftgate_decisions", "Decisions taken (rules fired).",
                                  labels=["rule", "model", "version", "action"])
        # every evaluated rule exports its counter from 0, so increase() sees the first
        counts = {(s.rule, s.model, s.version or "", s.severity): 0
                  for s in self.policy.states.values()}
        counts.update(self.decision_counts)
        for (rule, model, version, action), n in sorted(counts.items()):
            dec.add_metric([rule, model, version, action], n)
        yield dec
        att = CounterMetricFamily("driftgate_webhook_attempts", "Webhook delivery attempts "
                                  "per target and outcome.", labels=["target", "outcome"])
        for (target, outcome), n in sorted(self.attempts.items()):
            att.add_metric([target, outcome], n)
        yield att
        dl = CounterMetricFamily("driftgate_webhook_deliveries", "Finished webhook deliveries "
                                 "per target and final outcome.", labels=["target", "outcome"])
        outcomes: dict[tuple[str, str], int] = {
            (t, o): 0 for t in self._senders
            for o in ("delivered", "rejected", "disabled", "exhausted")}
        outcomes.update(self.outcomes)
        for (target, outcome), n in sorted(outcomes.items()):
            dl.add_metric([target, outcome], n)
        yield dl
        verdict = GaugeMetricFamily("driftgate_verdict", "1 for the current verdict of each "
                                    "champion and canary.",
                                    labels=["model", "version", "verdict"])
        engine = self._engine()
        if engine is not None:
            for model, roles in engine.roles.items():
                for version in roles.values():
                    v, _, _ = self.policy.verdict(model, version)
                    for name in ("ok", "alert", "rollback"):
                        verdict.add_metric([model, version, name], 1.0 if v == name else 0.0)
        yield verdict
        auth = CounterMetricFamily("driftgate_http_auth_failures", "Requests to the admin "
                                   "API refused for a missing, malformed or wrong bearer "
                                   "token, per route.", labels=["route"])
        for route, n in sorted(self.auth_failures.items()):
            auth.add_metric([route], n)
        yield auth
        audit = GaugeMetricFamily("driftgate_audit_records", "Records in the audit log.")
        audit.add_metric([], self.audit.seq)
        yield audit

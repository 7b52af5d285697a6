"""The ``driftgate`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from monitor.config import ConfigError, Settings, load_settings

app = typer.Typer(help="driftgate: streaming drift and fraud-KPI monitoring with canary "
                  "rollback.", no_args_is_help=True, add_completion=False)
reference_app = typer.Typer(help="Reference profiles (frozen bins).", no_args_is_help=True)
app.add_typer(reference_app, name="reference")
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(config: ConfigOpt,
        source: Annotated[str | None, typer.Option(help="kafka, faust or replay")] = None
        ) -> None:
    """Run the service (SIGTERM drains, commits and exits 0)."""
    overrides: dict[str, Any] = {"source": source} if source else {}
    settings = _settings(config, **overrides)  # fail fast, before the heavy imports

    from monitor.logs import configure_logging
    from monitor.serve.runner import run_service

    configure_logging(settings.log.format, settings.log.level)
    try:
        asyncio.run(run_service(settings))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def replay(file: Annotated[Path, typer.Argument(help="JSONL or Parquet events.")],
           config: ConfigOpt) -> None:
    """Replay a file of events through the engine; print the evaluation as JSON."""
    from monitor.logs import configure_logging
    from monitor.serve.http import status_document
    from monitor.serve.runner import run_service

    settings = _settings(config, source="replay")
    configure_logging(settings.log.format, "warning")
    from monitor.serve.runner import make_source

    try:
        src = make_source(settings, file)
        service = asyncio.run(run_service(settings, source=src, install_signals=False,
                                          until_exhausted=True, serve_http=False))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    doc = status_document(service)
    doc["invalid"] = ({f"{k}/{r}": n for (k, r), n in service.engine.invalid.items()}
                      if service.engine else {})
    typer.echo(json.dumps(doc, indent=2, default=str))


@app.command()
def backtest(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; must be "
                                      "empty unless --force).")],
    file: Annotated[Path | None, typer.Argument(
        help="One JSONL or Parquet file of predictions and labels.")] = None,
    predictions: Annotated[Path | None, typer.Option(
        help="Predictions file (with --labels, instead of FILE).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels file (with --predictions).")
                      ] = None,
    incidents: Annotated[Path | None, typer.Option(
        help="Known incidents (JSON or JSONL) to score the run against.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the backtest files in a non-empty "
                                        "--out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")
                     ] = False,
) -> None:
    """Backtest the config on a file in event time: timeline, audit log and summary in
    --out (nothing is sent); with --incidents, score detection delay and false alarms."""
    if file is not None and (predictions is not None or labels is not None):
        _fail("give either FILE or --predictions and --labels, not both")
    if file is None and (predictions is None or labels is None):
        _fail("give FILE, or both --predictions and --labels")
    inputs = [file] if file is not None else [predictions, labels]
    paths = [p for p in inputs if p is not None]
    for p in paths:
        if not p.is_file():
            _fail(f"input file {str(p)!r} does not exist")
    settings = _settings(config)

    from monitor.logs import configure_logging
    from monitor.serve.backtest import BacktestOptions, prepare_out, run_backtest
    from monitor.serve.backtest_score import load_incidents

    configure_logging(settings.log.format, "error")
    try:
        prepare_out(out, force)
        known = load_incidents(incidents) if incidents is not None else None
        opts = BacktestOptions(inputs=paths, out=out, incidents=known,
                               progress=None if quiet else _print_progress,
                               config_path=str(config))
        summary = asyncio.run(run_backtest(settings, opts))
    except ValueError as exc:
        _fail(str(exc))
    brief = {k: summary[k] for k in ("out", "events", "event_time", "ticks", "would_send")}
    brief["decisions"] = summary["decisions"]["list"]
    brief["events_per_second"] = summary["performance"]["events_per_second"]
    if summary["incidents"] is not None:
        brief["incidents"] = {k: v for k, v in summary["incidents"].items()
                              if k != "false_alarm_decisions"}
    typer.echo(json.dumps(brief, indent=2, default=str))


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _print_progress(p: dict[str, Any]) -> None:
    rate = p["events_per_second"] or 0.0
    typer.echo(f"backtest: {p['fed']:,}/{p['total']:,} events "
               f"({100.0 * p['fed'] / max(p['total'], 1):.0f} %), "
               f"{p['event_seconds'] / 3600.0:.2f} event-hours, {p['ticks']:,} ticks, "
               f"{p['decisions']} decisions, {rate:,.0f} events/s", err=True)


@reference_app.command("fit")
def reference_fit(
    data: Annotated[Path, typer.Argument(help="Reference data: .parquet, .csv or .jsonl")],
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Profile JSON to write.")],
    model: Annotated[str | None, typer.Option(help="Only rows of this model.")] = None,
    version: Annotated[str | None, typer.Option(help="Only rows of this version.")] = None,
) -> None:
    """Fit frozen reference bins on a data set and write the profile."""
    from monitor.serve.reference_io import fit_reference_file

    # the profile being written is not required to exist yet: fit mode, keeping the
    # file's n_bins and top_k (overrides merge into the section key by key)
    settings = _settings(config, reference={"fit_from_champion_events": 1, "path": None})
    try:
        profile = fit_reference_file(data, settings, model=model, version=version)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out.write_text(profile.to_json())
    typer.echo(json.dumps({"out": str(out), "events": profile.n_events,
                           "hash": profile.content_hash}))


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of traffic (20-600).")] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    rate: Annotated[float, typer.Option(help="Transactions per second.")] = 2000.0,
) -> None:
    """Run the end-to-end demo on embedded defaults (ends in an explained rollback)."""
    from monitor.sandbox.demo import run_demo

    try:
        code = run_demo(duration=duration, seed=seed, rate=rate)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@audit_app.command("verify")
def audit_verify(file: Annotated[Path, typer.Argument(help="Audit log (JSON lines).")]
                 ) -> None:
    """Check the hash chain: exit 0 when intact, 1 naming the first bad line."""
    from rollback.audit import verify_file

    if not file.is_file():
        typer.echo(f"error: {str(file)!r} does not exist", err=True)
        raise typer.Exit(2)
    result = verify_file(file)
    if result.ok:
        typer.echo(f"ok: {result.records} records, head {result.head_hash}")
        return
    typer.echo(f"BROKEN at line {result.first_bad_line}: {result.reason}", err=True)
    raise typer.Exit(1)


@app.command()
def report(
    model: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Model version.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")],
    url: Annotated[str, typer.Option(help="The running service's HTTP address.")] =
        "http://127.0.0.1:8080",
    token: Annotated[str | None, typer.Option(
        envvar="DRIFTGATE_ADMIN_TOKEN",
        help="Admin token, for a service with http.reports_require_token.")] = None,
) -> None:
    """Evidently data-drift report of a version's window sample vs the reference."""
    import httpx

    base = f"{url.rstrip('/')}/v1/reports/{model}/{version}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        summary = httpx.get(base, params={"format": "json"}, headers=headers, timeout=120)
        if summary.status_code != 200:
            try:
                doc = summary.json()
                why = doc.get("detail") or doc.get("error") or summary.text
            except ValueError:
                why = summary.text
            typer.echo(f"error: {why}", err=True)
            raise typer.Exit(1)
        html = httpx.get(base, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    out.write_text(html.text)
    doc = summary.json()
    typer.echo(json.dumps({"out": str(out), "drifted_features": doc["drifted_features"],
                           "current_rows": doc["current_rows"],
                           "reference_rows": doc["reference_rows"]}))


@app.command()
def traffic(
    bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap servers.")],
    rate: Annotated[float, typer.Option(help="Transactions per second.")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds to run (0 = until stopped).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    bug_after: Annotated[float | None, typer.Option(
        help="Seconds until the canary's feature pipeline breaks (none if unset).")] = None,
    canary_share: Annotated[float, typer.Option(help="Canary share when no router.")] = 0.1,
    router_url: Annotated[str | None, typer.Option(
        help="Router stub whose /weights set the canary share (polled every second).")] = None,
    predictions_topic: Annotated[str, typer.Option()] = "predictions",
    labels_topic: Annotated[str, typer.Option()] = "labels",
) -> None:
    """Produce synthetic card traffic (predictions + delayed labels) to Kafka."""
    from monitor.sandbox.traffic_cli import run_traffic

    try:
        asyncio.run(run_traffic(bootstrap, rate, duration, seed, bug_after, canary_share,
                                router_url, predictions_topic, labels_topic))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("router-stub")
def router_stub(
    secret_file: Annotated[Path, typer.Option(help="Webhook secret(s), one per line.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9000,
    model: Annotated[str, typer.Option()] = "card-fraud",
    champion: Annotated[str, typer.Option()] = "v1",
    canary: Annotated[str, typer.Option()] = "v2",
    canary_weight: Annotated[int, typer.Option(min=0, max=100)] = 10,
    unsigned_alerts: Annotated[bool, typer.Option(
        help="Accept unsigned Alertmanager payloads on /alerts.")] = False,
) -> None:
    """Serve the traffic-router stub (verifies signed rollback webhooks)."""
    from monitor.sandbox.router_stub import RouterStub

    if not secret_file.is_file():
        typer.echo(f"error: secret file {str(secret_file)!r} does not exist", err=True)
        raise typer.Exit(2)
    secrets = [s.strip() for s in secret_file.read_text().splitlines() if s.strip()]
    stub = RouterStub(secrets=secrets, host=host, port=port,
                      weights={model: {champion: 100 - canary_weight, canary: canary_weight}},
                      require_signed_alerts=not unsigned_alerts)

    async def serve() -> None:
        await stub.start()
        typer.echo(f"router stub on {stub.url}")
        try:
            await asyncio.Event().wait()
        finally:
            await stub.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    typer.echo(_v("driftgate"))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

"""The `eightbox` command: thin wrappers that build Settings once and call into the boxes."""

from __future__ import annotations

import json

import logging
from contextlib import contextmanager, nullcontext
import signal
import sys
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from eightbox.settings import Settings

# kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API
warnings.filterwarnings("ignore", message="(read|open)_text is deprecated", category=DeprecationWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Eightbox: an end-to-end recommender platform on one machine.")
data_app = typer.Typer(no_args_is_help=True, help="Public data sets.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each prints one JSON line last.")
features_app = typer.Typer(no_args_is_help=True, help="The feature pipeline: Feast, Spark backfills, Flink stream.")
app.add_typer(features_app, name="features")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


def _settings() -> Settings:
    return Settings()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)


@contextmanager
def _one_line_errors():
    """Known operational failures (stack not up, bad input tables, job errors) end in one line."""
    from eightbox.deploy.services import StackError
    from eightbox.features.stream.control import StreamJobError
    from eightbox.features.validate import FeatureValidationError

    try:
        yield
    except (StackError, StreamJobError, FeatureValidationError) as e:
        _fail(str(e))


def _supervisor():
    """The embedded stack, the pusher, serving and the wall-clock loop (archiver, monitoring, controller):
    deploy/pusher_service.py `stack_services`, in start order."""
    from eightbox.deploy.pusher_service import stack_services
    from eightbox.deploy.supervisor import Supervisor

    settings = _settings()
    return Supervisor(settings, stack_services(settings, with_loop=True))


@app.command()
def up(services: list[str] = typer.Argument(None, help="Services to start (default: all).")) -> None:
    """Start the embedded stack and wait until every service is healthy; the whole stack also gets
    its streaming feature job (submitted, or resumed from its newest checkpoint)."""
    from eightbox.features.stream import control
    from eightbox.ingest.topics import ensure_topics

    sup = _supervisor()
    with _one_line_errors():
        sup.up(services or None)
        if "kafka" in (services or sup.services):
            created = ensure_topics(sup.settings)
            if created:
                typer.echo(f"topics created: {', '.join(created)}")
        if not services:
            job_id, done = control.ensure(sup.settings)
            typer.echo(f"feature job {job_id}: {done}")


@app.command()
def down(services: list[str] = typer.Argument(None, help="Services to stop (default: all).")) -> None:
    """Stop the services this stack started (and nothing else)."""
    _supervisor().down(services or None)


@app.command()
def status() -> None:
    """Health, pid, port and resident memory of each embedded service."""
    rows = _supervisor().status()
    w = max(len("service"), *(len(r.name) for r in rows))
    typer.echo(f"{'service':<{w}} {'state':<18} {'pid':>7} {'port':>6} {'rss MiB':>8}")
    for r in rows:
        typer.echo(f"{r.name:<{w}} {r.state:<18} {r.pid or '-':>7} {r.port or '-':>6} {r.rss_mb:>8.0f}")
    typer.echo(f"{'total':<{w}} {'':<18} {'':>7} {'':>6} {sum(r.rss_mb for r in rows):>8.0f}")


@app.command()
def topics() -> None:
    """Create the contract's topics on the configured brokers (idempotent)."""
    from eightbox.ingest.topics import ensure_topics

    created = ensure_topics(_settings())
    typer.echo(f"topics created: {', '.join(created)}" if created else "topics: all present")


@app.command()
def archive(idle_exit: Optional[float] = typer.Option(None, help="Exit after this many idle seconds."),
            heartbeat: Optional[Path] = typer.Option(None, help="File rewritten every few seconds while "
                                                      "running (the supervisor's health check).")) -> None:
    """Run one lake archiver (a consumer-group member) until SIGTERM/SIGINT."""
    from eightbox.ingest.archiver import LakeArchiver
    from eightbox.periodic import beating

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    archiver = LakeArchiver(_settings())
    beats = beating(heartbeat, lambda: {"archived": archiver.archived}) if heartbeat else nullcontext()
    with beats:
        n = archiver.run(stop, idle_exit_s=idle_exit)
    typer.echo(f"archived {n} events")


@app.command()
def simulate(hours: float = typer.Option(24.0, help="Simulated hours of traffic."),
             seed: int = typer.Option(7), quick: bool = typer.Option(False, help="A small world."),
             until_now: bool = typer.Option(False, help="The traffic ends now (default: it starts on the "
                                            "simulator's fixed date), for the wall-clock services of `eightbox up`.")) -> None:
    """Publish simulated marketplace traffic to Kafka through the ingestion gateway."""
    from datetime import timedelta

    from eightbox.ingest.publish import publish_simulation

    start = datetime.now(timezone.utc) - timedelta(hours=hours) if until_now else None
    publish_simulation(_settings(), hours=hours, seed=seed, quick=quick, start=start)


@app.command()
def traffic(hours: float = typer.Option(1.0, help="Wall-clock hours of traffic."),
            sessions_per_hour: float = typer.Option(600.0, help="Visits per hour."),
            seed: int = typer.Option(7), quick: bool = typer.Option(True, help="The small world `simulate --quick` makes."),
            history_hours: float = typer.Option(0.0, help="Continue the world `simulate --until-now --hours H` "
                                                "published (same --seed and size) instead of starting a new one."),
            report_minutes: float = typer.Option(5.0, help="Print what was served this often.")) -> None:
    """Simulated users on the wall clock against the running platform (`eightbox up`): visits ask
    /recommend, their clicks and engagements go back through /events when their time comes."""
    from eightbox.live_traffic import run_live

    try:
        run_live(_settings(), hours=hours, sessions_per_hour=sessions_per_hour, seed=seed, quick=quick,
                 history_hours=history_hours, report_minutes=report_minutes)
    except RuntimeError as e:
        _fail(str(e))


@app.command("dead-letters")
def dead_letters(limit: int = typer.Option(20)) -> None:
    """Show the newest dead-lettered inputs and why they were refused."""
    from eightbox.ingest.inspect import tail_dead_letters

    for rec in tail_dead_letters(_settings(), limit):
        typer.echo(f"{rec['source']:<9} {rec['reason'][:100]}  ({rec['original_size']} bytes)")


@features_app.command("apply")
def features_apply() -> None:
    """Register the Feast repository (entities, feature views, push sources, feature services)."""
    from eightbox.features.store import apply

    apply(_settings())
    typer.echo("feast: repository applied")


@features_app.command("materialize")
def features_materialize(start: datetime = typer.Option(..., help="UTC start, e.g. 2024-01-01"),
                         end: datetime = typer.Option(..., help="UTC end (exclusive)")) -> None:
    """Copy the feature history between two instants from the offline store into Redis."""
    from eightbox.features.store import materialize

    materialize(_settings(), start.replace(tzinfo=timezone.utc), end.replace(tzinfo=timezone.utc))


@features_app.command("push")
def features_push(heartbeat: Optional[Path] = typer.Option(None, help="File rewritten every second while "
                                                                    "the consumer runs (for the supervisor).")) -> None:
    """Push streaming feature updates from Kafka into Feast (online) and the offline history."""
    from eightbox.features.pusher import run_pusher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"pushed {run_pusher(_settings(), stop, heartbeat=heartbeat)} feature rows")


@features_app.command("backfill")
def features_backfill(date_: datetime = typer.Option(..., "--date", help="Day D: values known at the end of D."),
                      until: Optional[datetime] = typer.Option(None, help="Last day of a range (inclusive).")) -> None:
    """Spark backfill of the daily feature tables; rerunning a day replaces only that day."""
    from eightbox.features.backfill import backfill, backfill_days

    settings = _settings()
    with _one_line_errors():
        counts = (backfill_days(settings, date_.date(), until.date()) if until
                  else backfill(settings, date_.date()))
    for table, rows in counts.items():
        typer.echo(f"{table:<22} {rows:>8} rows")


stream_app = typer.Typer(no_args_is_help=True, help="The Flink streaming job on the Flink cluster.")
features_app.add_typer(stream_app, name="stream")


@stream_app.command("start")
def stream_start(restore: Optional[str] = typer.Option(None, help="Checkpoint or savepoint to resume from.")) -> None:
    """Submit the streaming feature job (resumes from `--restore` when given)."""
    from eightbox.features.stream import control

    with _one_line_errors():
        typer.echo(f"stream job running: {control.start(_settings(), restore=restore)}")


@stream_app.command("ensure")
def stream_ensure() -> None:
    """Make sure the streaming feature job runs: the running one, else resumed from its newest
    checkpoint or savepoint, else started. Safe to repeat (Compose's stream-job retries it)."""
    from eightbox.features.stream import control

    with _one_line_errors():
        job_id, how = control.ensure(_settings())
    typer.echo(f"stream job {how}: {job_id}")


@stream_app.command("stop")
def stream_stop(savepoint: bool = typer.Option(True, help="Take a savepoint before stopping.")) -> None:
    """Stop the streaming feature job."""
    from eightbox.features.stream import control

    with _one_line_errors():
        path = control.stop(_settings(), savepoint=savepoint)
    typer.echo(f"stream job stopped{f'; savepoint {path}' if path else ''}")


@stream_app.command("status")
def stream_status() -> None:
    """State and checkpoints of the streaming feature job."""
    from eightbox.features.stream import control

    with _one_line_errors():
        for key, value in control.status(_settings()).items():
            typer.echo(f"{key:<22} {value}")


@bench_app.command("backfill")
def bench_backfill(quick: bool = typer.Option(False, help="Two simulated days instead of four.")) -> None:
    """Events per second through the Spark backfill."""
    from eightbox.features.backfill_bench import run

    run(_settings(), quick=quick)


@bench_app.command("online-features")
def bench_online_features(quick: bool = typer.Option(False, help="Fewer requests.")) -> None:
    """Ranking features for 1 user + 500 items: our pipelined reader vs Feast vs raw Redis."""
    from eightbox.features.bench_online import run

    with _one_line_errors():
        run(_settings(), quick=quick)


@bench_app.command("freshness")
def bench_freshness(quick: bool = typer.Option(False, help="500 events over one minute (under ~2.5 minutes).")) -> None:
    """Gateway → Flink → pusher → Redis: how long until a click is visible online (p50/p99)."""
    from eightbox.features.bench_freshness import run

    with _one_line_errors():
        run(_settings(), quick=quick)


@data_app.command("movielens-100k")
def movielens(dest: Path = typer.Option(None, help="Folder to download into (default: <home>/datasets)."),
              publish: bool = typer.Option(False, help="Also publish its events to Kafka.")) -> None:
    """Download MovieLens-100K from GroupLens (or use the shared copy) and optionally publish it."""
    from eightbox.ingest import movielens as ml

    settings = _settings()
    path = ml.shared_movielens_path() if dest is None else None
    path = path or ml.download_movielens_100k(dest or settings.home / "datasets")
    data = ml.load_movielens_100k(path)
    typer.echo(f"MovieLens-100K at {path}: {len(data.ratings)} ratings, {len(data.users)} users, "
               f"{len(data.items)} items")
    if publish:
        from eightbox.ingest.publish import publish_events

        publish_events(settings, ml.movielens_events(data), label="movielens")


@bench_app.command("ingest")
def bench_ingest(quick: bool = typer.Option(False, help="Under two minutes.")) -> None:
    """Produce → archived Parquet throughput, beside Kafka's own ProducerPerformance."""
    from eightbox.bench.ingest import run

    run(_settings(), quick=quick)


@app.command()
def train(promote: str = typer.Option("if-first", help="never | if-first (no champion yet) | if-gate."),
          epochs: int = typer.Option(8, help="Two-tower epochs.")) -> None:
    """Lake → dataset → two-tower + index → calibrated ranker → evaluation → MLflow registry."""
    from eightbox.training.pipeline import TrainConfig, train as run_training

    with _one_line_errors():
        result = run_training(_settings(), TrainConfig(promote=promote, tower_epochs=epochs))
    verdict = "passed" if result.gate_passed else "refused: " + "; ".join(result.gate_reasons)
    typer.echo(f"registered version {result.version} (run {result.run_id}); gate {verdict}; "
               f"aliases {', '.join(result.aliases) or 'none'}; {result.seconds['total']:.0f} s")


@app.command()
def serve() -> None:
    """Run the serving API in the foreground (uvicorn; `eightbox up serving` runs it supervised)."""
    from eightbox.serving.__main__ import main as serve_main

    serve_main()


@app.command()
def monitor(start: datetime = typer.Option(..., help="Window start, UTC (e.g. 2024-05-01 or 2024-05-01T06:00:00)."),
            end: datetime = typer.Option(..., help="Window end, UTC (exclusive)."),
            report: Optional[Path] = typer.Option(None, help="Also write the HTML report to this file."),
            model: Optional[str] = typer.Option(None, help="Registered model (default: serving_model_name)."),
            scrape: bool = typer.Option(True, help="Scrape the serving /metrics for the system layer.")) -> None:
    """Four-layer monitoring of one window against the champion: lake table, Prometheus textfile, report."""
    from eightbox.monitoring.job import MonitoringError, default_metrics_url, run_monitoring

    settings = _settings()
    try:
        result = run_monitoring(settings, start.replace(tzinfo=timezone.utc), end.replace(tzinfo=timezone.utc),
                                model_name=model, metrics_url=default_metrics_url(settings) if scrape else None)
    except MonitoringError as e:
        _fail(str(e))
    typer.echo(f"{result.model_name} v{result.model_version}: {len(result.checks)} checks, "
               f"{len(result.alerts)} alerts")
    for alert in result.alerts:
        typer.echo(f"  ALERT {alert.alert}")
    if report is not None:
        from eightbox.monitoring.report import write_report

        typer.echo(f"report: {write_report(result, report)}")


@bench_app.command("quality")
def bench_quality(dataset: str = typer.Option("simulator", help="simulator | movielens-100k"),
                  quick: bool = typer.Option(False, help="A smaller world, fewer epochs.")) -> None:
    """Two-tower recall / NDCG beside popularity, random, ItemKNN and the oracle (simulator)."""
    from eightbox.training.quality import run

    with _one_line_errors():
        typer.echo(json.dumps(run(dataset, quick=quick)))


@bench_app.command("ann")
def bench_ann(quick: bool = typer.Option(False, help="100k vectors only.")) -> None:
    """The chosen FAISS index vs exact search: recall@10/100 and queries per second."""
    from eightbox.retrieval.bench_ann import run

    typer.echo(json.dumps(run(quick=quick)))


@bench_app.command("serve")
def bench_serve(quick: bool = typer.Option(False, help="5 s per rate instead of 15 s (same catalog)."),
                catalog: int = typer.Option(100_000, min=1_000, help="Items in the bench's own world (built once, then cached)."),
                url: Optional[str] = typer.Option(None, help="Measure this running API instead of a stack of "
                                                             "the bench's own (e.g. the demo's http://127.0.0.1:18000)."),
                profile: bool = typer.Option(False, help="No load: the funnel in-process under cProfile, on the "
                                                         "bench world (CPU per request, stage times, top functions).")) -> None:
    """Open-loop load at 25–200 RPS on the serving API beside a floor server (same framework, precomputed list)."""
    from eightbox.serving import bench_serve

    with _one_line_errors():
        result = (bench_serve.profile(_settings(), catalog=catalog) if profile
                  else bench_serve.run(_settings(), quick=quick, url=url, catalog=catalog))
    typer.echo(json.dumps(result))


@bench_app.command("train")
def bench_train(quick: bool = typer.Option(False, help="Smaller inputs.")) -> None:
    """Seconds per two-tower epoch and XGBoost ranker training seconds on 1M rows."""
    from eightbox.ranking.bench_train import run as ranker_run
    from eightbox.training.bench_tower import run as tower_run

    typer.echo(json.dumps({"two_tower": tower_run(quick=quick), "ranker": ranker_run(quick=quick)}))


@bench_app.command("loop")
def bench_loop(quick: bool = typer.Option(False, help="The demo's quick profile (4 served days, a smaller world)."),
               seed: int = typer.Option(None, help="Simulate another world (default: the profile's seed).")) -> None:
    """The closed-loop demo; its summary (drift detected, promoted, recovered_ratio, ...) as the last line."""
    from eightbox.demo import run_demo
    from eightbox.loop import summary_line

    with _one_line_errors():
        typer.echo(summary_line(run_demo(_settings(), quick=quick, seed=seed)))


@app.command()
def demo(quick: bool = typer.Option(False, help="4 served days of a smaller world instead of 6 (under 5 minutes)."),
         seed: int = typer.Option(None, help="Simulate another world (default: the profile's seed).")) -> None:
    """Run the closed loop on the embedded stack, one box at a time."""
    from eightbox.demo import run_demo
    from eightbox.deploy.services import StackError

    try:
        run_demo(_settings(), quick=quick, seed=seed)
    except StackError as e:
        _fail(str(e))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""The one place that wires a serving process: `bootstrap(settings) -> (app, resources)`.

It builds, in order: the funnel on the online store, the `ArmRouter` that sends each request to its
experiment arm, one `EventProducer` shared by POST /events, the `ImpressionLogger` and the
`ShadowScorer`, the `Reloader` that follows the registry (champion, challenger and holdback aliases,
experiment tags), readiness checks, and the admin callables (reload, promote, rollback = registry
action, then reload). The returned app's lifespan first loads what the registry names (before the
server accepts requests, as a process without a champion: the lower rungs answer and /readyz says
503 until one loads), then starts the popularity board and the reloader inside the running loop;
at shutdown it stops them, waits for shadow runs in flight, and `close()` flushes the impression log
and the producer.

Building connects to nothing but the Feast registry file; MLflow, Kafka and Redis are first
contacted by the lifespan, a request, a readiness probe or a background task. Importing this module
connects to nothing.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from eightbox.settings import Settings

log = logging.getLogger(__name__)


def funnel_config(settings: Settings):
    """The default funnel budgets, every one multiplied by `settings.serving_budget_scale`."""
    from .stages import FunnelConfig, StageBudget

    base, scale = FunnelConfig(), settings.serving_budget_scale
    stages = {name: StageBudget(b.budget_ms * scale, b.timeout_ms * scale) for name, b in base.stages.items()}
    return replace(base, stages=stages, total_timeout_ms=base.total_timeout_ms * scale,
                   k_max=settings.serving_max_k)


@dataclass
class Resources:
    """What one serving process holds; `start`/`stop` run in its event loop, `close` once at exit."""

    settings: Settings
    funnel: Any  # serving.funnel.Funnel: ``funnel.models`` is the champion (popularity board, static rung)
    router: Any  # serving.arms.ArmRouter: ``router.state`` is the reference a reload swaps
    producer: Any  # ingest.producer.EventProducer
    logger: Any  # serving.impression_log.ImpressionLogger
    shadow: Any  # serving.shadow.ShadowScorer
    reloader: Any  # serving.reloader.Reloader
    redis: Any  # a redis client for the readiness probe
    kafka: Any  # the producer's KafkaProducer, for the readiness probe

    async def start(self) -> None:
        if self.router.state.champion is None:  # load what the registry names before serving
            try:
                await self.reloader.check()
                log.info("serving champion v%s", self.reloader.current)
            except Exception as exc:  # the reloader keeps trying; meanwhile the lower rungs answer
                log.warning("no champion loaded at start (%s: %s); polling every %.0f s", type(exc).__name__,
                            exc, self.settings.serving_reload_interval_s)
        self.funnel.board.start()
        self.reloader.start()

    async def stop(self) -> None:
        await self.reloader.stop()
        await self.funnel.board.stop()
        await self.shadow.drain()

    def close(self) -> None:
        """Hand every queued impression to the producer, then flush and close it."""
        try:
            self.logger.close()
        finally:
            try:
                self.producer.close()
            except Exception:
                log.exception("the event producer did not flush cleanly at shutdown")

    def readiness(self) -> dict[str, Any]:
        """Ready = models loaded, Redis answers a ping, the producer reached a broker."""
        state = self.router.state
        models = state.champion
        checks: dict[str, str] = {}
        if models is not None:  # which user tower encodes requests: "numpy", "torch" (older bundles) or none
            tower = models.versions.get("user_tower") or "none"
            others = ", ".join(f"{arm} v{state.versions[arm]}" for arm in ("challenger", "holdback")
                               if state.versions[arm] is not None)
            checks["models"] = f"ok: champion v{self.reloader.current}, user tower {tower}" + (
                f"; {others}" if others else "")
        else:
            checks["models"] = "no champion loaded" + (f" ({self.reloader.last_error})"
                                                       if self.reloader.last_error else "")
        try:
            self.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        checks["kafka"] = _kafka_check(self.settings, self.kafka)
        return {"ready": all(v.startswith("ok") for v in checks.values()), "checks": checks}

    def static(self, user_id: str, k: int, context: dict, request_id: str) -> dict:
        """The API's last rung when the funnel itself fails: the catalog's static list, else the
        configured one. Reads memory only; cannot fail for a dependency."""
        models = self.funnel.models
        catalog = models.catalog if models is not None else None
        ids = list(dict.fromkeys(catalog.static_items if catalog is not None else self.funnel.config.static_items))
        items = [{"item_id": i, "score": None, "p_click": None, "p_engaged": None, "source": "static",
                  "explored": False} for i in ids[:k]]
        return {"rung": "static", "items": items, "explanation": {
            "stages": [], "model_versions": dict(models.versions) if models else {}, "experiment_arm": "control"}}


def bootstrap(settings: Settings, *, models: Any = None) -> tuple[Any, Resources]:
    """The serving app and what it holds. `models`: a ModelSet to start with as the champion instead
    of loading the registry's at start-up (tests)."""
    import redis

    from eightbox.ingest.producer import EventProducer, kafka_producer
    from eightbox.training import registry

    from .app import ServingDeps, create_app
    from .arms import ArmRouter, ServingState
    from .funnel import build_funnel
    from .stages import MODEL_BREAKERS
    from .impression_log import ImpressionLogger
    from .metrics import breaker_gauges
    from .models import ModelSet
    from .reloader import Reloader
    from .shadow import ShadowScorer

    name = settings.serving_model_name

    def poll() -> dict:
        return registry.serving_registry_state(settings, name)

    def load(arm: str, version: str) -> ModelSet:
        return ModelSet.from_registry(settings, arm, model_name=name, version=version)

    state = ServingState() if models is None else ServingState(
        champion=models, versions={"champion": models.versions.get("model")})
    funnel = build_funnel(settings, state.champion, funnel_config(settings))
    # max_block_ms: a send (or the readiness probe) waits at most this long for broker metadata,
    # rather than kafka-python's 60 s: /events answers 503 within its own ack timeout either way.
    kafka = kafka_producer(settings, client_id="eightbox-serving", max_block_ms=2000)
    producer = EventProducer(settings, producer=kafka, source="serving")
    shadow = ShadowScorer(funnel, producer.publish, settings.serving_shadow_max_in_flight)
    router = ArmRouter(funnel, state, shadow)
    reloader = Reloader(poll, load, router.install, settings.serving_reload_interval_s, state=state)
    logger = ImpressionLogger(producer.publish, settings.serving_impression_sample_share,
                              settings.serving_impression_queue)
    probe = redis.Redis.from_url(settings.redis_address, socket_timeout=0.5, socket_connect_timeout=0.5)
    res = Resources(settings, funnel, router, producer, logger, shadow, reloader, probe, kafka)

    async def reload() -> dict:
        return await reloader.check(force=True)

    async def promote(version: str) -> dict:
        import asyncio

        previous = await asyncio.to_thread(_registry_call, registry.promote, settings, version, model_name=name)
        return {**await reloader.check(), "previous_champion": previous}

    async def rollback() -> dict:
        import asyncio

        restored = await asyncio.to_thread(_registry_call, registry.rollback, settings, model_name=name)
        return {**await reloader.check(), "restored": restored}

    for dependency in ("redis", *MODEL_BREAKERS):  # the champion's breakers, on /metrics from the start
        funnel.breakers[dependency]
    deps = ServingDeps(settings=settings, recommend=router.recommend, publish=producer.publish,
                       log_impressions=logger, readiness=res.readiness, reload=reload, promote=promote,
                       rollback=rollback, static=res.static, close=res.close,
                       stats={"impressions": logger.stats, "reloader": reloader.stats, "shadow": shadow.stats,
                              "experiment": router.stats,
                              "breaker": lambda: breaker_gauges(funnel.breakers.states())})
    app = create_app(deps)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:  # its exit calls deps.close (after our tasks are stopped)
            await res.start()
            try:
                yield state
            finally:
                await res.stop()

    app.router.lifespan_context = lifespan
    app.state.resources = res
    return app, res


def _kafka_check(settings: Settings, producer) -> str:
    """"ok" when a bootstrap broker accepts a connection and the producer has (or, within its
    max_block_ms, gets) the impressions topic's partitions; else why not."""
    import socket

    from eightbox.ingest.schema import TOPICS

    host, _, port = settings.kafka_servers.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5).close()
    except OSError as exc:
        return f"broker unreachable: {type(exc).__name__}"
    try:
        producer.partitions_for(TOPICS["impression_served"].name)
    except Exception as exc:
        return f"no topic metadata: {type(exc).__name__}"
    return "ok"


def _registry_call(fn, *args, **kwargs):
    """A registry action with its refusals mapped onto the admin API's: RegistryError → ValueError
    (409), an unknown version → LookupError (404)."""
    from mlflow.exceptions import MlflowException

    from eightbox.training.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise LookupError(str(exc)) from None
        raise

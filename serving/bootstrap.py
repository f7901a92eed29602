"""The one place that wires a serving process: `bootstrap(settings) -> (app, resources)`.

It builds, in order: the champion's `ModelSet` from the registry (None when there is none yet or
the registry is unreachable: the funnel then answers from its lower rungs and /readyz says 503), the
funnel on the online store, one `EventProducer` shared by POST /events and the `ImpressionLogger`,
the `Reloader` that follows the champion alias, readiness checks, and the admin callables (reload,
promote, rollback = registry action, then reload). The returned app's lifespan starts the
popularity board and the reloader inside the running loop, stops them at shutdown, and then
`close()` flushes the impression log and the producer.

Building connects to nothing but MLflow (for the champion) and the Feast registry file; Kafka and
Redis are first contacted by a request, a readiness probe or a background task. Importing this
module connects to nothing.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from eightbox.settings import Settings

log = logging.getLogger(__name__)


def funnel_config(settings: Settings):
    """The default funnel budgets, every one multiplied by `settings.serving_budget_scale`."""
    from .funnel import FunnelConfig, StageBudget

    base, scale = FunnelConfig(), settings.serving_budget_scale
    stages = {name: StageBudget(b.budget_ms * scale, b.timeout_ms * scale) for name, b in base.stages.items()}
    return replace(base, stages=stages, total_timeout_ms=base.total_timeout_ms * scale,
                   k_max=settings.serving_max_k)


@dataclass
class Resources:
    """What one serving process holds; `start`/`stop` run in its event loop, `close` once at exit."""

    settings: Settings
    funnel: Any  # serving.funnel.Funnel: ``funnel.models`` is the reference a reload swaps
    producer: Any  # ingest.producer.EventProducer
    logger: Any  # serving.impression_log.ImpressionLogger
    reloader: Any  # serving.reloader.Reloader
    redis: Any  # a redis client for the readiness probe
    kafka: Any  # the producer's KafkaProducer, for the readiness probe

    async def start(self) -> None:
        self.funnel.board.start()
        self.reloader.start()

    async def stop(self) -> None:
        await self.reloader.stop()
        await self.funnel.board.stop()

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
        models = self.funnel.models
        checks: dict[str, str] = {}
        if models is not None:  # which user tower encodes requests: "numpy", "torch" (older bundles) or none
            tower = models.versions.get("user_tower") or "none"
            checks["models"] = f"ok: champion v{self.reloader.current}, user tower {tower}"
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


def bootstrap(settings: Settings, *, models: Any = ...) -> tuple[Any, Resources]:
    """The serving app and what it holds. `models`: a ModelSet (or None) to start with instead of
    the registry's champion (tests)."""
    import redis

    from eightbox.ingest.producer import EventProducer, kafka_producer
    from eightbox.training import registry

    from .api_models import answer_from_recommendation
    from .app import ServingDeps, create_app
    from .funnel import build_funnel
    from .impression_log import ImpressionLogger
    from .models import ModelSet
    from .reloader import Reloader

    name = settings.serving_model_name

    def champion() -> str | None:
        return registry.champion_version(settings, name)

    def load(version: str) -> ModelSet:
        # By alias: from_registry reads the version again; if the alias moved in between, the next
        # poll sees a version different from the one recorded and loads again.
        return ModelSet.from_registry(settings, registry.CHAMPION, model_name=name)

    current = None
    if models is ...:
        models = None
        try:
            current = champion()
            if current is not None:
                started = time.perf_counter()
                models = load(current)
                current = models.versions.get("model", current)
                log.info("serving champion %s v%s (loaded in %.1f s)", name, current, time.perf_counter() - started)
            else:
                log.warning("no champion for %s yet: serving the lower rungs until one is promoted", name)
        except Exception as exc:  # the reloader keeps trying; meanwhile the lower rungs answer
            log.warning("could not load the champion of %s at start (%s: %s); will retry every %.0f s",
                        name, type(exc).__name__, exc, settings.serving_reload_interval_s)
            models, current = None, None
    elif models is not None:
        current = models.versions.get("model")

    funnel = build_funnel(settings, models, funnel_config(settings))

    def swap(new: ModelSet) -> None:
        funnel.models = new  # by reference: a request reads funnel.models once, at its start

    reloader = Reloader(champion, load, swap, settings.serving_reload_interval_s, current=current)
    # max_block_ms: a send (or the readiness probe) waits at most this long for broker metadata,
    # rather than kafka-python's 60 s: /events answers 503 within its own ack timeout either way.
    kafka = kafka_producer(settings, client_id="eightbox-serving", max_block_ms=2000)
    producer = EventProducer(settings, producer=kafka, source="serving")
    logger = ImpressionLogger(producer.publish, settings.serving_impression_sample_share,
                              settings.serving_impression_queue)
    probe = redis.Redis.from_url(settings.redis_address, socket_timeout=0.5, socket_connect_timeout=0.5)
    res = Resources(settings, funnel, producer, logger, reloader, probe, kafka)

    async def recommend(user_id: str, k: int, context: dict, request_id: str) -> dict:
        return answer_from_recommendation(await funnel.recommend(user_id, k, context, request_id))

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

    deps = ServingDeps(settings=settings, recommend=recommend, publish=producer.publish, log_impressions=logger,
                       readiness=res.readiness, reload=reload, promote=promote, rollback=rollback,
                       static=res.static, stats={"impressions": logger.stats, "reloader": reloader.stats},
                       close=res.close)
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

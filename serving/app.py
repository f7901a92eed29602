"""The serving API: `create_app(deps)` wires one process's HTTP surface around injected callables.

Nothing here imports the funnel, Kafka or the registry: the process's bootstrap builds them and
passes them in as `ServingDeps` (tests pass fakes). Endpoints:

    POST /recommend          a ranked list with calibrated scores and a per-stage explanation
    POST /events             one client event or a list, validated by the ingest contract, to Kafka
    GET  /healthz, /readyz   alive; ready to serve (503 with the failing checks when not)
    GET  /metrics            Prometheus text
    POST /admin/reload, /admin/promote, /admin/rollback    bearer token of an admin (401/403)

Limits: bodies over `serving_max_body_bytes` get 413 (by Content-Length, or counted as streamed);
`k`, list lengths and string sizes are bounded by the models (422); beyond `serving_max_in_flight`
concurrent requests /recommend and /events answer 429 with Retry-After at once. Bad input always
gets a 4xx JSON `ErrorResponse`, never a 5xx. A `context.request_time` is refused (422) unless the
server trusts it (`serving_trust_request_time`: simulated-time runs), which stamps impressions with
it. When the funnel raises, times out or returns a malformed answer, `deps.static` (if given)
answers as the last rung, "static"; without it, 503.
"""

import asyncio
import hmac
import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from eightbox.ingest.schema import parse_event, to_wire
from eightbox.settings import Settings

from .admission import ConcurrencyLimiter
from .api_models import (ADMIN_ERRORS, BODY_ERRORS, RETRY, SHED, AdminResult, EventsAccepted, Health,
                         PromoteRequest, Readiness, RecommendResponse, error_body, error_response, request_models)
from .metrics import CONTENT_TYPE, ServingMetrics
from .middleware import BodyLimitAndMetrics

log = logging.getLogger(__name__)

Recommend = Callable[[str, int, dict, str], Awaitable[dict]]


@dataclass
class ServingDeps:
    """Everything one API process calls; the bootstrap builds it, tests pass fakes.

    `recommend(user_id, k, context, request_id)` returns a `RecommendResponse` without request_id and
    user_id: {"rung", "items": [{"item_id", "score", "p_click", "p_engaged", "source", "explored",
    "features": {name: float}, "team": arm (interleaved lists only)}], "explanation": {"stages": [...],
    "model_versions", "experiment_arm"}} (`api_models.answer_from_recommendation` builds it from the
    funnel's Recommendation). The app keeps the first k items, numbers positions by list order, logs
    `features` and `team` (never returned) and drops keys the API does not publish. `context` is
    {"surface", "exclude_item_ids", "attributes", "request_time"} (request_time: None unless the
    client sent one and `serving_trust_request_time` is on). `log_impressions(response, features,
    surface, teams=, served_at=)`: teams None unless interleaved, served_at None for "now".
    `static` has the same signature, is synchronous, and must not fail. Admin callables may be sync
    (run in a thread) or async; they return a dict, raise LookupError (→ 404) or ValueError (→ 409).
    """

    settings: Settings
    recommend: Recommend
    publish: Callable[[Any], Any]  # EventProducer.publish: returns a future with .get(timeout), or None
    log_impressions: Callable[..., Any] | None = None  # see the docstring
    readiness: Callable[[], Mapping[str, Any]] = lambda: {"ready": True, "checks": {}}
    reload: Callable[[], Any] | None = None
    promote: Callable[[str], Any] | None = None
    rollback: Callable[[], Any] | None = None
    static: Callable[[str, int, dict, str], dict] | None = None  # the last rung: must not fail
    stats: dict[str, Callable[[], Mapping[str, float]]] = field(default_factory=dict)  # → gauges
    close: Callable[[], None] | None = None  # called once at shutdown (flush producers, stop threads)


class _Unavailable(Exception):
    pass


def create_app(deps: ServingDeps) -> FastAPI:
    s = deps.settings
    models = request_models(s.serving_max_k, s.serving_max_events_per_request)
    RecommendRequest, EventsBody = models.recommend, models.events
    metrics = ServingMetrics()
    limiters = {"/recommend": ConcurrencyLimiter(s.serving_max_in_flight),
                "/events": ConcurrencyLimiter(s.serving_max_in_flight)}
    for path, limiter in limiters.items():
        metrics.add_stats(f"admission_{path.strip('/')}", limiter.stats, f"Concurrency limiter of {path}")
    for prefix, stats in deps.stats.items():
        metrics.add_stats(prefix, stats, f"{prefix} component")
    retry_after = {"Retry-After": str(s.serving_retry_after_s)}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if deps.close is not None:
            await run_in_threadpool(deps.close)

    # The body cap is our middleware's, not FastAPI's `max_body_size`: that one answers a declared
    # oversize Content-Length in plain text, and every error here is an ErrorResponse.
    app = FastAPI(title="Eightbox serving API", version="1", lifespan=lifespan,
                  description="Recommendations through the retrieval → ranking → re-rank funnel, client "
                              "events into Kafka, and the operations endpoints of one serving process.")
    app.state.metrics, app.state.limiters = metrics, limiters

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
                   for e in exc.errors()[:20]]
        message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]) or "invalid request"
        return JSONResponse(error_body("invalid_request", message, details), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                409: "conflict", 429: "overloaded", 503: "unavailable"}.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    def shed(path: str) -> JSONResponse:
        metrics.shed.labels(path).inc()
        return JSONResponse(error_body("overloaded", f"more than {s.serving_max_in_flight} requests in flight; "
                                       f"retry after {s.serving_retry_after_s} s"), 429, headers=retry_after)

    # --- /recommend ---------------------------------------------------------------------------
    Served = tuple[RecommendResponse, list[dict], list[str | None]]

    def shape(raw: Any, user_id: str, k: int, request_id: str) -> Served:
        """The funnel's dict, validated into the public response: at most k items, positions by list
        order, features and teams split off for the log, keys the API does not publish dropped."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("items"), list):
            raise TypeError(f"recommend returned {type(raw).__name__}, not a dict with an items list")
        items, features, teams = [], [], []
        for position, item in enumerate(raw["items"][:k]):
            item = dict(item)
            features.append(item.pop("features", None) or {})
            teams.append(item.pop("team", None))
            items.append({**item, "position": position})
        response = RecommendResponse.model_validate(
            {**raw, "items": items, "request_id": request_id, "user_id": user_id}, extra="ignore")
        return response, features, teams

    async def serve(user_id: str, k: int, context: dict, request_id: str) -> Served:
        started = time.perf_counter()
        try:
            raw = await asyncio.wait_for(deps.recommend(user_id, k, context, request_id), s.serving_request_timeout_s)
            return shape(raw, user_id, k, request_id)
        except (TimeoutError, asyncio.TimeoutError):
            reason, detail = "timeout", f"no answer within {s.serving_request_timeout_s} s"
        except Exception as e:
            log.exception("recommend failed for request %s", request_id)
            reason, detail = "error", type(e).__name__  # the class only: internals stay in the log
        metrics.recommend_errors.labels(reason).inc()
        if deps.static is None:
            raise _Unavailable(f"the funnel failed ({reason}) and no static list is configured")
        failed = {"name": "funnel", "source": None, "candidates_in": 0, "candidates_out": 0,
                  "latency_ms": (time.perf_counter() - started) * 1000, "status": reason, "detail": detail}
        try:
            raw = dict(deps.static(user_id, k, context, request_id))
            explanation = dict(raw.get("explanation") or {})
            explanation["stages"] = [failed, *explanation.get("stages", [])]
            return shape({**raw, "rung": "static", "explanation": explanation}, user_id, k, request_id)
        except Exception as e:
            log.exception("the static rung failed for request %s", request_id)
            raise _Unavailable(f"the funnel failed ({reason}) and so did the static list") from e

    @app.post("/recommend", response_model=RecommendResponse, tags=["serving"],
              responses={**BODY_ERRORS, **SHED,
                         503: error_response("The funnel failed and no static list could answer.", RETRY)})
    async def recommend(body: RecommendRequest) -> Any:  # type: ignore[valid-type]
        """Rank `k` items for `user_id`. The response names the ladder rung that served it and
        reports every funnel stage (source, candidates in and out, latency, status)."""
        if body.context.request_time is not None and not s.serving_trust_request_time:
            return JSONResponse(error_body(
                "invalid_request", "context.request_time is not accepted by this server: it is honoured only "
                "with EIGHTBOX_SERVING_TRUST_REQUEST_TIME on (simulated-time runs); leave it out"), 422)
        limiter = limiters["/recommend"]
        if not limiter.try_acquire():
            return shed("/recommend")
        request_id = "r" + secrets.token_hex(12)
        context = body.context.model_dump()
        try:
            response, features, teams = await serve(body.user_id, body.k, context, request_id)
        except _Unavailable as e:
            return JSONResponse(error_body("unavailable", str(e)), 503, headers=retry_after)
        finally:
            limiter.release()
        ex = response.explanation
        metrics.observe_recommendation(response.rung, ((st.name, st.status, st.latency_ms) for st in ex.stages))
        if deps.log_impressions is not None and response.items:
            try:  # must not block: ImpressionLogger.submit only queues
                deps.log_impressions(response, features, context["surface"],
                                     teams=teams if any(teams) else None, served_at=context["request_time"])
            except Exception:
                log.exception("impression logging failed for request %s", request_id)
        # Validated once by shape(): serialize it directly rather than have FastAPI validate it again.
        return Response(response.model_dump_json(), media_type="application/json")

    # --- /events ------------------------------------------------------------------------------
    def publish_all(events: list) -> list[str]:
        futures = [deps.publish(event) for event in events]
        deadline = time.monotonic() + s.serving_event_ack_timeout_s
        for future in futures:
            if future is not None and hasattr(future, "get"):
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        return [event.event_id for event in events]

    @app.post("/events", response_model=EventsAccepted, status_code=202, tags=["serving"],
              responses={**BODY_ERRORS, **SHED, 503: error_response(
                  "The broker did not acknowledge in time: retry with the same event_ids.", RETRY)})
    async def events(body: EventsBody) -> Any:  # type: ignore[valid-type]
        """Client events (`item_clicked`, `item_engaged`): all are validated before any is sent, by
        the ingest contract, and the answer waits for the broker's acknowledgement (acks=all)."""
        try:  # the gateway's own check, on exactly the bytes that would go on the wire
            parsed = [parse_event(to_wire(event), s.max_event_bytes) for event in body]
        except ValueError as e:
            return JSONResponse(error_body("invalid_request", str(e)), 422)
        limiter = limiters["/events"]
        if not limiter.try_acquire():
            return shed("/events")
        try:
            ids = await run_in_threadpool(publish_all, parsed)
        except Exception as e:
            log.warning("event publish failed: %s", e)
            return JSONResponse(error_body("unavailable", f"events not acknowledged by the broker: {e}"),
                                503, headers=retry_after)
        finally:
            limiter.release()
        for event in parsed:
            metrics.events.labels(event.event_type).inc()
        return EventsAccepted(accepted=len(ids), event_ids=ids)

    # --- operations ---------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is alive and its event loop answers."""
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             responses={503: {"model": Readiness, "description": "Not ready: `checks` says why."}})
    async def readyz() -> Any:
        """Models loaded and dependencies answering: 200, or 503 with the failing checks."""
        try:
            raw = await run_in_threadpool(deps.readiness)
            ready = Readiness(ready=bool(raw.get("ready")),
                              checks={str(k): str(v) for k, v in dict(raw.get("checks") or {}).items()})
        except Exception as e:
            ready = Readiness(ready=False, checks={"readiness": f"check failed: {e}"})
        return ready if ready.ready else JSONResponse(ready.model_dump(), 503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"description": "Prometheus text exposition.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        """Request counts and latency per endpoint, funnel stage latency, rungs, shed requests."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # --- admin --------------------------------------------------------------------------------
    bearer = HTTPBearer(auto_error=False, description="An admin token from EIGHTBOX_SERVING_ADMIN_TOKENS.")
    admin_tokens, user_tokens = s.admin_tokens, s.user_tokens

    def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = credentials.credentials if credentials else ""
        if token and any(hmac.compare_digest(token, t) for t in admin_tokens):
            return
        if token and any(hmac.compare_digest(token, t) for t in user_tokens):
            raise HTTPException(403, "this token may not call admin endpoints")
        raise HTTPException(401, "an admin bearer token is required" if not token else "unknown token",
                            headers={"WWW-Authenticate": "Bearer"})

    async def admin(action: str, fn: Callable | None, *args: Any) -> AdminResult:
        if fn is None:
            raise HTTPException(409, f"{action} is not available in this process")
        try:
            result = await fn(*args) if inspect.iscoroutinefunction(fn) else await run_in_threadpool(fn, *args)
        except LookupError as e:
            raise HTTPException(404, f"{action}: {e}") from None
        except ValueError as e:
            raise HTTPException(409, f"{action} refused: {e}") from None
        except Exception as e:
            log.exception("admin %s failed", action)
            raise HTTPException(503, f"{action} failed: {e}", headers=retry_after) from None
        result = result if isinstance(result, Mapping) else {"value": result}
        return AdminResult(action=action, result=json.loads(json.dumps(dict(result), default=str)))

    guarded = dict(response_model=AdminResult, tags=["admin"], dependencies=[Depends(require_admin)])

    @app.post("/admin/reload", responses=ADMIN_ERRORS, **guarded)
    async def reload() -> AdminResult:
        """Load the registry's current champion (models and index), swapped in without dropping requests."""
        return await admin("reload", deps.reload)

    @app.post("/admin/promote", responses={**ADMIN_ERRORS, **BODY_ERRORS}, **guarded)
    async def promote(body: PromoteRequest) -> AdminResult:
        """Make `version` the champion and serve it."""
        return await admin("promote", deps.promote, body.version)

    @app.post("/admin/rollback", responses=ADMIN_ERRORS, **guarded)
    async def rollback() -> AdminResult:
        """Return to the previous champion."""
        return await admin("rollback", deps.rollback)

    endpoints = frozenset(route.path for route in app.routes if hasattr(route, "path"))
    app.add_middleware(BodyLimitAndMetrics, metrics=metrics, max_body=s.serving_max_body_bytes, endpoints=endpoints)
    return app

"""The serving API's request and response bodies: the HTTP contract, with every size bounded.

Limits that depend on settings (`k` ≤ `serving_max_k`, events per request ≤
`serving_max_events_per_request`) are built into the models by `request_models()`, so the OpenAPI
document states the same limits the server enforces. Client events are the ingest contract's own
models (`ingest.schema`), narrowed to what a client may send: clicks and engagements, never
`impression_served` (the server writes those when it serves).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AliasChoices, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

from eightbox.ingest.schema import ItemClicked, ItemEngaged

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

MAX_CONTEXT_ATTRIBUTES = 16
MAX_EXCLUDED_ITEMS = 200
MAX_RESPONSE_ITEMS = 1000  # a sanity bound on what the funnel may hand back, above any max_k
RUNGS = ("full", "fallback", "popularity", "static")  # the degradation ladder, best first


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- /recommend ------------------------------------------------------------------------------
class RecommendContext(_Strict):
    """Where and how the list will be shown. Passed to the funnel as a plain dict of these keys."""

    surface: Short = Field("home", description="The page or slot the list fills, e.g. home, item_page.")
    exclude_item_ids: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDED_ITEMS,
                                       description="Items the client must not be shown (already on screen).")
    attributes: dict[Short, Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, max_length=MAX_CONTEXT_ATTRIBUTES,
        description="Free client context (locale, device class, ...): at most 16 short strings.")
    request_time: AwareDatetime | None = Field(None, description=(
        "The request's time, with its zone: served impressions (and shadow events) are stamped with it "
        "instead of the server's clock. Only for simulated-time runs (demos, tests): refused with 422 "
        "unless the server sets EIGHTBOX_SERVING_TRUST_REQUEST_TIME."))


class _RecommendRequestBase(_Strict):
    user_id: Id = Field(description="The user to recommend for: 1–128 characters of [A-Za-z0-9_.:@-].")
    context: RecommendContext = Field(default_factory=RecommendContext)


class RecommendedItem(_Strict):
    item_id: str = Field(max_length=128)
    score: Finite | None = Field(description="The calibrated value formula's result the ranker ordered by; "
                                            "null on rungs without the ranker (popularity, static).")
    p_click: Probability | None = Field(None, description="Calibrated P(click); null on rungs without the ranker.")
    p_engaged: Probability | None = Field(None, description="Calibrated P(engage | click); null without the ranker.")
    position: int = Field(ge=0, description="0-based position in this response.")
    source: Short = Field(description="The candidate source that found the item (two_tower, trending, ...).")
    explored: bool = Field(False, description="Placed by the exploration slot rather than by its score.")


class StageReport(_Strict):
    name: Short = Field(description="Funnel stage: retrieval, filter, features, ranking, rerank, ...")
    source: Short | None = Field(None, description="What served the stage (e.g. faiss, redis, cache, static).")
    # The funnel's own report names the counts n_in/n_out; either spelling is read.
    candidates_in: int = Field(ge=0, validation_alias=AliasChoices("candidates_in", "n_in"))
    candidates_out: int = Field(ge=0, validation_alias=AliasChoices("candidates_out", "n_out"))
    filtered: int = Field(0, ge=0, validation_alias=AliasChoices("filtered", "n_filtered"),
                          description="Candidates a filter removed (already engaged, unavailable).")
    deduped: int = Field(0, ge=0, validation_alias=AliasChoices("deduped", "n_deduped"),
                         description="Candidates dropped as duplicates of an earlier source's.")
    latency_ms: Finite = Field(ge=0.0)
    budget_ms: Finite | None = Field(None, ge=0.0, description="The stage's latency budget, when it has one.")
    status: Short = Field(description="ok | timeout | error | skipped | breaker_open.")
    detail: str = Field("", max_length=512, description="Why, when the status is not ok.")


class Explanation(_Strict):
    stages: list[StageReport] = Field(default_factory=list, max_length=64)
    model_versions: dict[Short, Annotated[str, StringConstraints(max_length=128)]] = Field(
        default_factory=dict, max_length=32)
    experiment_arm: Short = Field("control", description=(
        "The experiment arm that served: champion, challenger, holdback or interleaved (control: the "
        "static fallback, outside any experiment)."))


class RecommendResponse(_Strict):
    request_id: Id = Field(description="Quote it in the events this list leads to (clicks, engagements).")
    user_id: Id
    rung: Short = Field(description="Degradation-ladder rung that served: full, fallback, popularity or static.")
    items: list[RecommendedItem] = Field(max_length=MAX_RESPONSE_ITEMS)
    explanation: Explanation


# --- /events ---------------------------------------------------------------------------------
# The ingest models, with `schema_version` pinned so the OpenAPI document says what parse_event
# enforces. Accepted events are re-read with `parse_event` (the same contract as the gateway).
class ItemClickedIn(ItemClicked):
    schema_version: Literal[1] = 1


class ItemEngagedIn(ItemEngaged):
    schema_version: Literal[1] = 1


ClientEvent = Annotated[Union[ItemClickedIn, ItemEngagedIn], Field(discriminator="event_type")]
CLIENT_EVENT_TYPES = frozenset({"item_clicked", "item_engaged"})


class EventsAccepted(_Strict):
    accepted: int = Field(ge=0, description="Events the broker acknowledged (acks=all).")
    event_ids: list[str]


# --- operations ------------------------------------------------------------------------------
class ErrorResponse(_Strict):
    """Every 4xx/5xx body: a machine-readable `error`, a one-line `message`, optional detail."""

    error: str = Field(description="invalid_request, unauthorized, forbidden, too_large, overloaded, ...")
    message: str
    details: list[dict[str, Any]] | None = None


def error_response(description: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An OpenAPI `responses` entry: an ErrorResponse body, with the named headers."""
    spec: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if headers:
        spec["headers"] = {h: {"description": d, "schema": {"type": "string"}} for h, d in headers.items()}
    return spec


RETRY = {"Retry-After": "Seconds to wait before retrying."}
BODY_ERRORS = {400: error_response("The body could not be read as JSON text (e.g. not UTF-8)."),
               413: error_response("Request body too large."),
               422: error_response("Invalid request: the message says which field and why.")}
SHED = {429: error_response("Over the concurrency limit: retry later.", RETRY)}
ADMIN_ERRORS = {401: error_response("Missing or unknown bearer token.", {"WWW-Authenticate": "Bearer"}),
                403: error_response("The token is valid but not an admin's."),
                404: error_response("Unknown model version."), 409: error_response("Refused in the current state."),
                503: error_response("The registry or model store did not answer.", RETRY)}


def error_body(error: str, message: str, details: list | None = None) -> dict[str, Any]:
    """An `ErrorResponse` as a plain dict, for handlers that answer with a JSONResponse."""
    body: dict[str, Any] = {"error": error, "message": message}
    if details is not None:
        body["details"] = details
    return body


class Readiness(_Strict):
    ready: bool
    checks: dict[str, str] = Field(default_factory=dict, description="Per dependency: ok, or why not.")


class Health(_Strict):
    status: Literal["alive"] = "alive"


class PromoteRequest(_Strict):
    version: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class AdminResult(_Strict):
    action: Literal["reload", "promote", "rollback"]
    result: dict[str, Any] = Field(default_factory=dict)


def answer_from_recommendation(rec: Any) -> dict[str, Any]:
    """The dict `ServingDeps.recommend` returns, from the funnel's `Recommendation` (read by
    attribute, so this module does not import the funnel): items are `Candidate`s, stages dataclasses."""
    items = [{"item_id": c.item_id, "score": c.score, "p_click": c.p_click, "p_engaged": c.p_engaged,
              "source": c.source, "explored": c.explored, "features": c.features} for c in rec.items]
    stages = [dataclasses.asdict(st) if dataclasses.is_dataclass(st) else dict(st) for st in rec.stages]
    return {"rung": rec.rung, "items": items, "explanation": {
        "stages": stages, "model_versions": dict(rec.model_versions),
        "experiment_arm": getattr(rec, "experiment_arm", None) or "control"}}


@dataclass(frozen=True)
class RequestModels:
    recommend: type[BaseModel]  # RecommendRequest with k bounded by max_k
    events: Any  # one ClientEvent or a bounded list of them, validated into a list


def request_models(max_k: int, max_events: int) -> RequestModels:
    """The request bodies for one app's limits: `k` in 1..max_k (default min(10, max_k)), and
    /events bodies of one event or a list of 1..max_events."""
    recommend = create_model(
        "RecommendRequest", __base__=_RecommendRequestBase,
        k=(int, Field(min(10, max_k), ge=1, le=max_k, description=f"How many items, 1–{max_k}.")))
    # One event is read as a list of one, so errors name the event by index either way.
    events = Annotated[list[ClientEvent], Field(min_length=1, max_length=max_events),
                       BeforeValidator(lambda v: [v] if isinstance(v, dict) else v,
                                       json_schema_input_type=Union[ClientEvent, list[ClientEvent]])]
    return RequestModels(recommend=recommend, events=events)

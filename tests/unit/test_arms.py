"""Serving per experiment arm (serving/arms.py) and shadow scoring (serving/shadow.py), on a fake funnel
that ranks a fixed list per model version: which models answer which user, what the answer names,
how an interleaved list is drawn, and that shadow work is published off the request and bounded."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timezone

from eightbox.ingest.schema import ShadowScored, parse_event, to_wire
from eightbox.serving.arms import ArmRouter, ServingState
from eightbox.serving.candidates import Candidate
from eightbox.serving.experiments import ExperimentConfig
from eightbox.serving.stages import Recommendation, StageReport
from eightbox.serving.interleaving import team_draft
from eightbox.serving.shadow import ShadowScorer

USERS = [f"u{i}" for i in range(2_000)]
T = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


class Models:
    def __init__(self, version: str, items: list[str], rung: str = "full"):
        self.versions, self.items, self.rung = {"model": version, "ranker": f"r{version}"}, items, rung


class FakeFunnel:
    """Answers with the models' own list, scored by position; records every call."""

    def __init__(self):
        self.models, self.calls, self.gate = None, [], None

    async def recommend(self, user_id, k, context, request_id, *, models=None, arm="champion"):
        models = models or self.models
        self.calls.append((arm, models.versions["model"]))
        if self.gate is not None:
            await self.gate.wait()
        items = tuple(Candidate(i, "two_tower", score=1.0 - n / 100, features={"f": float(n)})
                      for n, i in enumerate(models.items[:k]))
        return Recommendation(request_id, user_id, items, models.rung, (StageReport("rank", "ranker", 3, 3),),
                              dict(models.versions), ("f",), 5.0)

    async def recommend_each(self, arms, user_id, k, context, request_id):
        return {arm: await self.recommend(user_id, k, context, request_id, models=m, arm=arm)
                for arm, m in arms.items()}


CHAMP, CHALL, HOLD = (Models("2", ["a", "b", "c", "d"]), Models("3", ["c", "e", "a", "f"]),
                      Models("1", ["h", "i", "j", "k"]))


def _router(experiment: ExperimentConfig, shadow=None, **arms) -> tuple[ArmRouter, FakeFunnel]:
    funnel = FakeFunnel()
    state = ServingState(champion=CHAMP, experiment=experiment,
                         versions={"champion": "2", "challenger": "3", "holdback": "1"}, **arms)
    return ArmRouter(funnel, state, shadow), funnel


def _serve(router, users, k=4, context=None):
    async def go():
        return [await router.recommend(u, k, context or {}, f"req-{u}") for u in users]
    return asyncio.run(go())


def test_each_user_is_served_by_their_arms_models_and_the_answer_names_arm_and_versions():
    config = ExperimentConfig(challenger_share=0.3, holdback_share=0.2)
    router, _ = _router(config, challenger=CHALL, holdback=HOLD)
    answers = _serve(router, USERS)
    served = Counter(a["explanation"]["experiment_arm"] for a in answers)
    for arm, share in (("champion", 0.5), ("challenger", 0.3), ("holdback", 0.2)):
        assert abs(served[arm] / len(USERS) - share) < 0.04, served
    versions = {"champion": "2", "challenger": "3", "holdback": "1"}
    for user, a in zip(USERS, answers):
        arm = a["explanation"]["experiment_arm"]
        assert arm == config.assign(user).label and a["explanation"]["model_versions"]["model"] == versions[arm]
    assert router.stats()["served_holdback"] == served["holdback"] and router.stats()["challenger_version"] == 3.0


def test_without_a_loaded_challenger_or_holdback_their_users_get_the_champion():
    router, funnel = _router(ExperimentConfig(challenger_share=0.4, holdback_share=0.4, interleave_share=0.5,
                                              shadow_challenger=True))
    answers = _serve(router, USERS[:300])
    assert {a["explanation"]["experiment_arm"] for a in answers} == {"champion"}
    assert set(funnel.calls) == {("champion", "2")}


def test_an_interleaved_request_shows_the_team_draft_of_both_rankings_with_each_items_team():
    router, funnel = _router(ExperimentConfig(interleave_share=1.0), challenger=CHALL)
    (answer,) = _serve(router, ["u1"])
    expected = team_draft(CHAMP.items, CHALL.items, 4, "req-u1")
    assert [i["item_id"] for i in answer["items"]] == expected.ids
    teams = {"A": "champion", "B": "challenger"}
    assert [i["team"] for i in answer["items"]] == [teams[t] for t in expected.teams]
    for item in answer["items"]:  # each item keeps the score and features its own model gave it
        own = CHAMP if item["team"] == "champion" else CHALL
        assert item["features"] == {"f": float(own.items.index(item["item_id"]))}
    ex = answer["explanation"]
    assert ex["experiment_arm"] == "interleaved" and ex["model_versions"]["model"] == "2"
    assert ex["model_versions"]["challenger.model"] == "3"
    assert [s["name"] for s in ex["stages"]] == ["rank", "challenger:rank"]
    assert sorted(funnel.calls) == [("challenger", "3"), ("champion", "2")]


def test_an_interleaved_request_whose_challenger_degraded_is_served_the_champions_list():
    router, _ = _router(ExperimentConfig(interleave_share=1.0), challenger=Models("3", ["x", "y"], rung="static"))
    (answer,) = _serve(router, ["u1"])
    assert answer["explanation"]["experiment_arm"] == "champion"
    assert [i["item_id"] for i in answer["items"]] == CHAMP.items and all("team" not in i for i in answer["items"])


def test_shadowed_requests_publish_what_the_challenger_would_have_shown_after_the_answer():
    published = []
    funnel = FakeFunnel()
    shadow = ShadowScorer(funnel, published.append, max_in_flight=1000, clock=lambda: T)
    router = ArmRouter(funnel, ServingState(champion=CHAMP, challenger=CHALL,
                                            experiment=ExperimentConfig(challenger_share=0.5, shadow_challenger=True),
                                            versions={"champion": "2", "challenger": "3"}), shadow)

    async def go():
        answers = [await router.recommend(u, 3, {}, f"req-{u}") for u in USERS[:200]]
        before = len(published)  # nothing yet: shadow runs start only once the handler yields
        await shadow.drain()
        return answers, before

    answers, before = asyncio.run(go())
    champions = [a for a in answers if a["explanation"]["experiment_arm"] == "champion"]
    assert before == 0 and len(published) == len(champions) > 50
    event = published[0]
    assert isinstance(event, ShadowScored) and event.event_time == T
    assert (event.champion_version, event.challenger_version) == ("2", "3")
    assert event.champion_item_ids == CHAMP.items[:3] and event.challenger_item_ids == CHALL.items[:3]
    assert event.challenger_scores == [1.0, 0.99, 0.98] and event.challenger_latency_ms == 5.0
    assert parse_event(to_wire(event)) == event, "valid on the wire"
    assert shadow.stats()["published"] == len(champions) and shadow.stats()["dropped"] == 0


def test_shadow_runs_beyond_the_bound_are_dropped_and_counted_and_use_a_trusted_request_time():
    published = []
    funnel = FakeFunnel()
    shadow = ShadowScorer(funnel, published.append, max_in_flight=2)
    champion = asyncio.run(funnel.recommend("u1", 3, {}, "r1", models=CHAMP))

    async def go():
        funnel.gate = asyncio.Event()  # the challenger's runs hang until released
        accepted = [shadow.submit(champion, CHALL, 3, {"request_time": T}) for _ in range(5)]
        await asyncio.sleep(0)
        funnel.gate.set()
        await shadow.drain()
        return accepted

    assert asyncio.run(go()) == [True, True, False, False, False]
    stats = shadow.stats()
    assert (stats["submitted"], stats["dropped"], stats["published"], stats["in_flight"]) == (5, 3, 2, 0)
    assert {e.event_time for e in published} == {T}


def test_a_failing_shadow_run_is_counted_and_never_raises():
    class Broken(FakeFunnel):
        async def recommend(self, *a, **kw):
            raise RuntimeError("challenger exploded")

    shadow = ShadowScorer(Broken(), lambda e: None)
    champion = asyncio.run(FakeFunnel().recommend("u1", 3, {}, "r1", models=CHAMP))

    async def go():
        shadow.submit(champion, CHALL, 3, {})
        await shadow.drain()

    asyncio.run(go())
    assert shadow.stats()["failed"] == 1 and shadow.stats()["published"] == 0

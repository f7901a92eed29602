"""Unit tests of the synthetic marketplace (no services; small worlds, a few simulated hours)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import numpy as np
import pytest

from eightbox.ingest.schema import (
    ImpressionServed,
    ItemClicked,
    ItemEngaged,
    ItemPublished,
    UserSignedUp,
    parse_event,
    to_wire,
)
from eightbox.ingest.simulator import (
    Marketplace,
    SimConfig,
    Visit,
    oracle_policy,
    popularity_policy,
    random_policy,
)

SMALL = SimConfig(seed=7, n_users=300, n_items=200, n_creators=30, sessions_per_hour=300.0, new_users_per_hour=10.0)


def run(cfg: SimConfig = SMALL, hours: float = 3.0, policy=None) -> tuple[Marketplace, list]:
    m = Marketplace(cfg)
    events = m.bootstrap_events() + list(m.simulate(hours, policy(m) if policy else None))
    return m, events


def dumps(events) -> list[dict]:
    return [e.model_dump() for e in events]


def ctr_by_position(events, n_positions: int) -> np.ndarray:
    shown = Counter(e.position for e in events if isinstance(e, ImpressionServed))
    clicked = Counter(e.position for e in events if isinstance(e, ItemClicked))
    return np.array([clicked[p] / shown[p] for p in range(n_positions)])


def ctr(events) -> float:
    kinds = Counter(type(e) for e in events)
    return kinds[ItemClicked] / kinds[ImpressionServed]


# --- determinism and the contract ----------------------------------------------------------


def test_same_seed_gives_identical_events():
    _, a = run()
    _, b = run()
    assert len(a) > 1000
    assert dumps(a) == dumps(b)


def test_different_seed_gives_different_events():
    _, a = run()
    _, b = run(SimConfig(**{**SMALL.__dict__, "seed": 8}))
    assert dumps(a) != dumps(b)
    assert not {e.event_id for e in a} & {e.event_id for e in b}


def test_event_ids_are_unique_across_bootstrap_and_successive_spans():
    m, events = run()
    events += list(m.simulate(2.0)) + m.flush_pending()
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)


def test_every_event_validates_against_the_contract_and_round_trips_the_wire():
    _, events = run(hours=1.0)
    for e in events:
        assert parse_event(to_wire(e)) == e
    assert {type(e) for e in events} == {UserSignedUp, ItemPublished, ImpressionServed, ItemClicked, ItemEngaged}


def test_ids_follow_the_documented_formats():
    _, events = run(hours=1.0)
    items = [e for e in events if isinstance(e, ItemPublished)]
    assert all(e.item_id[0] == "i" and len(e.item_id) == 6 for e in items)
    assert all(e.creator_id[0] == "c" and len(e.creator_id) == 5 for e in items)
    assert all(e.user_id[0] == "u" and len(e.user_id) == 6 for e in events if isinstance(e, UserSignedUp))


def test_bootstrap_carries_personal_data_and_informative_content_at_start():
    m = Marketplace(SMALL)
    boot = m.bootstrap_events()
    users = [e for e in boot if isinstance(e, UserSignedUp)]
    items = [e for e in boot if isinstance(e, ItemPublished)]
    assert len(users) == SMALL.n_users and len(items) == SMALL.n_items
    assert all(e.event_time == SMALL.start for e in boot)
    assert all(e.email == f"{e.user_id}@example.com" and e.client.ip and e.client.device_id for e in users)
    assert all(len(e.content_vector) == SMALL.dim and e.title and e.category in e.tags for e in items)
    # Content is informative: items of one category are closer in content space than of two.
    vec = np.array([e.content_vector for e in items])
    cat = np.array([e.category for e in items])
    sim = vec @ vec.T
    same = cat[:, None] == cat[None, :]
    np.fill_diagonal(same, False)
    different = cat[:, None] != cat[None, :]
    assert sim[same].mean() > sim[different].mean() + 0.3


# --- position bias ---------------------------------------------------------------------------


def test_click_probability_is_higher_at_position_zero_than_five():
    m = Marketplace(SMALL)
    for u, i in [("u00000", "i00000"), ("u00010", "i00150"), ("u00299", "i00042")]:
        assert m.click_probability(u, i, 0) > m.click_probability(u, i, 5) > 0.0


def test_click_probability_factorizes_into_examination_and_attractiveness():
    m = Marketplace(SMALL)
    p0, p3 = m.click_probability("u00001", "i00002", 0), m.click_probability("u00001", "i00002", 3)
    assert p3 / p0 == pytest.approx(4.0 ** -SMALL.position_bias)


def test_empirical_click_rate_decreases_with_position():
    # A random policy puts every item equally often at every position: only position bias remains.
    _, events = run(hours=12.0, policy=random_policy)
    rates = ctr_by_position(events, SMALL.slate_size)
    assert rates[0] > rates[1] > rates[5] > rates[9]
    buckets = [rates[0:3].mean(), rates[3:6].mean(), rates[6:10].mean()]
    assert buckets[0] > buckets[1] > buckets[2]


# --- label delay -----------------------------------------------------------------------------


def test_every_engagement_comes_after_its_click_with_delays_of_minutes_to_hours():
    m, events = run(hours=6.0)
    events += m.flush_pending()
    clicks = {(e.request_id, e.item_id): e for e in events if isinstance(e, ItemClicked)}
    engagements = [e for e in events if isinstance(e, ItemEngaged)]
    assert len(engagements) > 100
    delays = []
    for e in engagements:
        click = clicks[(e.request_id, e.item_id)]
        assert e.user_id == click.user_id
        delays.append((e.event_time - click.event_time).total_seconds())
    delays = np.array(delays)
    assert delays.min() >= 60.0  # strictly after, by at least a minute
    assert (delays < 600).mean() > 0.1 and (delays > 3600).mean() > 0.05  # minutes ... hours
    assert {e.kind for e in engagements} == {"watch", "like", "purchase"}
    assert all(0 < e.value <= 1 for e in engagements if e.kind == "watch")


def test_events_due_after_the_horizon_stay_pending_until_the_next_span():
    m = Marketplace(SMALL)
    first = list(m.simulate(2.0))
    horizon = SMALL.start + timedelta(hours=2)
    assert all(e.event_time <= horizon for e in first)
    late = m.flush_pending()
    # Late labels, plus the odd click of a visit in the last seconds of the span.
    assert late and all(isinstance(e, (ItemEngaged, ItemClicked)) and e.event_time > horizon for e in late)
    assert sum(isinstance(e, ItemEngaged) for e in late) > len(late) / 2


# --- drift -----------------------------------------------------------------------------------


def test_oracle_changes_after_drift_at_and_not_without_drift():
    drift_at = SMALL.start + timedelta(hours=2)
    drifting = Marketplace(SimConfig(**{**SMALL.__dict__, "drift_at": drift_at, "drift_strength": 0.8}))
    steady = Marketplace(SMALL)
    before, after = drift_at - timedelta(minutes=1), drift_at + timedelta(minutes=1)
    items = [f"i{i:05d}" for i in range(SMALL.n_items)]
    for u in ("u00000", "u00100", "u00200"):
        p_before = drifting.click_probabilities(u, items, 0, before)
        p_after = drifting.click_probabilities(u, items, 0, after)
        assert np.abs(p_after - p_before).max() > 0.01
        # Before the drift both worlds agree; the steady one never changes.
        np.testing.assert_allclose(p_before, steady.click_probabilities(u, items, 0, before))
        steady_before = steady.click_probabilities(u, items, 0, before)
        np.testing.assert_allclose(steady_before, steady.click_probabilities(u, items, 0, after))
        assert drifting.relevance(u, "i00003", before) != drifting.relevance(u, "i00003", after)


# --- cold start ------------------------------------------------------------------------------


def test_new_users_and_items_arrive_after_start_and_get_served():
    m, events = run(hours=6.0, policy=random_policy)
    new_users = {e.user_id: e.event_time for e in events if isinstance(e, UserSignedUp) and e.event_time > SMALL.start}
    new_items = {e.item_id: e.event_time for e in events if isinstance(e, ItemPublished) and e.event_time > SMALL.start}
    assert len(new_users) > 20 and len(new_items) > 5
    impressions = [e for e in events if isinstance(e, ImpressionServed)]
    served_new_users = {e.user_id for e in impressions if e.user_id in new_users}
    served_new_items = {e.item_id for e in impressions if e.item_id in new_items}
    assert len(served_new_users) > len(new_users) // 2 and served_new_items
    # Nobody is served before signing up, nothing is shown before it is published.
    assert all(e.event_time >= new_users[e.user_id] for e in impressions if e.user_id in new_users)
    assert all(e.event_time >= new_items[e.item_id] for e in impressions if e.item_id in new_items)
    assert m.world.n_users == SMALL.n_users + len(new_users)


# --- popularity, ordering, stepping ----------------------------------------------------------


def test_top_tenth_of_items_gets_a_large_share_of_impressions_under_the_default_policy():
    m, events = run(hours=6.0)
    counts = sorted(Counter(e.item_id for e in events if isinstance(e, ImpressionServed)).values(), reverse=True)
    top = m.world.n_items // 10
    assert sum(counts[:top]) / sum(counts) > 0.4


def test_stream_is_in_non_decreasing_event_time_across_spans():
    m = Marketplace(SMALL)
    events = list(m.simulate(2.0)) + list(m.simulate(2.0)) + m.flush_pending()
    times = [e.event_time for e in events]
    assert all(a <= b for a, b in zip(times, times[1:]))


def test_two_short_spans_equal_one_long_span():
    a = Marketplace(SMALL)
    b = Marketplace(SMALL)
    chunked = list(a.simulate(1.5)) + list(a.simulate(1.5))
    whole = list(b.simulate(3.0))
    assert dumps(chunked) == dumps(whole)


def test_stepping_visits_by_hand_gives_the_same_events_as_simulate():
    auto = Marketplace(SMALL)
    expected = list(auto.simulate(2.0)) + auto.flush_pending()
    m = Marketplace(SMALL)
    policy, got = popularity_policy(m), []
    for entry in m.visits(2.0):
        if isinstance(entry, Visit):
            got += m.respond(entry, policy(entry.user_id, entry.at, m.candidates, SMALL.slate_size))
        else:
            got.append(entry)
    key = lambda e: (e.event_time, e.event_id)  # noqa: E731
    assert dumps(sorted(got, key=key)) == dumps(sorted(expected, key=key))


def test_respond_is_reproducible_and_rejects_bad_slates():
    m = Marketplace(SMALL)
    visit = next(e for e in m.visits(1.0) if isinstance(e, Visit))
    slate = [f"i{i:05d}" for i in range(10)]
    kwargs = dict(surface="search", model_versions={"ranker": "v1"}, features={"f": 1.0})
    first = m.respond(visit, slate, **kwargs)
    assert dumps(first) == dumps(m.respond(visit, slate, **kwargs))
    impressions = [e for e in first if isinstance(e, ImpressionServed)]
    assert [e.position for e in impressions] == list(range(10))
    assert all(e.surface == "search" and e.model_versions == {"ranker": "v1"} for e in impressions)
    assert all(e.features == {"f": 1.0} and e.event_time == visit.at for e in impressions)
    with pytest.raises(ValueError):
        m.respond(visit, ["i00001", "i00001"])
    with pytest.raises(ValueError):
        m.respond(visit, ["i99999"])


def test_oracle_policy_gets_a_higher_click_rate_than_popularity_policy():
    _, by_popularity = run(hours=3.0, policy=popularity_policy)
    _, by_oracle = run(hours=3.0, policy=oracle_policy)
    _, by_chance = run(hours=3.0, policy=random_policy)
    assert ctr(by_oracle) > 1.3 * ctr(by_popularity) > 1.3 * ctr(by_chance)


def test_published_traffic_can_end_now_for_the_wall_clock_services():
    from datetime import datetime, timezone

    from eightbox.ingest.publish import simulation_events

    start = datetime(2026, 11, 25, 18, tzinfo=timezone.utc)
    _, events = simulation_events(2.0, seed=3, quick=True, start=start)
    times = [e.event_time for e in events]
    assert min(times) == start  # the world's bootstrap events carry its start
    _, default = simulation_events(2.0, seed=3, quick=True)
    assert min(e.event_time for e in default) == SimConfig().start


def test_a_replayed_world_goes_on_at_another_visit_rate():
    market = Marketplace(SMALL)
    for _ in market.simulate(hours=1.0):
        pass
    market.set_sessions_per_hour(3000.0)  # ten times SMALL's
    visits = [x for x in market.visits(1.0) if isinstance(x, Visit)]
    assert 2500 < len(visits) < 3500 and len({x.user_id for x in visits}) > 100

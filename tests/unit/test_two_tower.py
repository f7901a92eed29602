from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import torch

from eightbox.ingest import movielens
from eightbox.ingest.schema import ImpressionServed, ItemClicked, ItemEngaged, ItemPublished
from eightbox.ingest.simulator import Marketplace, SimConfig
from eightbox.training.interactions import interactions_from_events, items_from_events, split_at
from eightbox.training.topk_metrics import recall_at_k
from eightbox.training.two_tower import TwoTower, TwoTowerConfig

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
# A marketplace whose logged traffic carries a personal signal: flatter popularity than the
# default (the logging policy samples by popularity, so with the default Zipf exponent most test
# clicks are on the head and popularity is near the oracle), few arrivals, many sessions per user.
SIM = SimConfig(seed=7, n_users=300, n_items=1000, new_users_per_hour=2, new_items_per_hour=1,
                popularity_alpha=0.3, popularity_weight=0.2, sessions_per_hour=1000)
TRAIN_HOURS, TEST_HOURS = 24, 6


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sim():
    """(items, train, test, cut) of one simulated marketplace, split at a global time cut."""
    market = Marketplace(SIM)
    events = market.bootstrap_events() + list(market.simulate(hours=TRAIN_HOURS + TEST_HOURS))
    cut = SIM.start + timedelta(hours=TRAIN_HOURS)
    train, test = split_at(interactions_from_events(events), cut)
    return items_from_events(events), train, test, cut


@pytest.fixture(scope="module")
def sim_model(sim):
    items, train, _, _ = sim
    return TwoTower.fit(train, items, TwoTowerConfig(epochs=5, seed=1))


def _top_unseen(ranked_ids, seen: set, k: int) -> list[str]:
    return [i for i in ranked_ids if i not in seen][:k]


def _recall_vs_popularity(model, catalog, train, users, as_of, relevant, k=100) -> tuple[float, float]:
    """recall@k of the two-tower and of most-clicked-in-train, both excluding what the user already had."""
    seen = train.groupby("user_id")["item_id"].agg(set)
    ids, item_vecs = model.item_embeddings(catalog)
    scores = model.user_embeddings(users, as_of, train) @ item_vecs.T  # (users, items)
    order = np.argsort(-scores, axis=1)[:, : 4 * k]
    tower = [_top_unseen([ids[j] for j in order[r]], seen.get(u, set()), k) for r, u in enumerate(users)]
    popular = train["item_id"].value_counts().index.tolist()
    pop = [_top_unseen(popular, seen.get(u, set()), k) for u in users]
    return recall_at_k(tower, relevant, k), recall_at_k(pop, relevant, k)


def test_interactions_are_clicks_and_engagements_with_weights():
    events = [
        ImpressionServed(event_time=T0, request_id="r", user_id="u1", item_id="i1", position=0, surface="home"),
        ItemClicked(event_time=T0 + timedelta(seconds=5), user_id="u1", item_id="i1"),
        ItemEngaged(event_time=T0 + timedelta(minutes=9), user_id="u1", item_id="i1", kind="like"),
        ItemClicked(event_time=T0 + timedelta(seconds=1), user_id="u2", item_id="i2"),
    ]
    got = interactions_from_events(events)
    assert list(got.columns) == ["user_id", "item_id", "event_time", "kind", "weight"]
    assert list(zip(got["user_id"], got["kind"], got["weight"])) == [
        ("u2", "click", 1.0), ("u1", "click", 1.0), ("u1", "engage", 2.0)]  # time order; no impression
    assert str(got["event_time"].dt.tz) == "UTC"


def test_the_latest_publication_of_an_item_wins_and_absent_content_is_zeros():
    events = [
        ItemPublished(event_time=T0 + timedelta(hours=1), item_id="i1", creator_id="c2", category="news",
                      content_vector=[1.0, 2.0, 3.0]),
        ItemPublished(event_time=T0, item_id="i1", creator_id="c1", category="film", content_vector=[9.0]),
        ItemPublished(event_time=T0, item_id="i2", creator_id="c1", category="film"),
    ]
    items = items_from_events(events).set_index("item_id")
    assert items.loc["i1", "category"] == "news" and items.loc["i1", "published_at"] == T0 + timedelta(hours=1)
    assert items.loc["i1", "content_vector"].tolist() == [1.0, 2.0, 3.0]
    assert items.loc["i2", "content_vector"].dtype == np.float32
    assert items.loc["i2", "content_vector"].tolist() == [0.0, 0.0, 0.0]


def test_lake_rows_give_the_same_frames_as_events():
    market = Marketplace(SimConfig(seed=2, n_users=20, n_items=30))
    events = market.bootstrap_events() + list(market.simulate(hours=2))
    rows = pd.DataFrame([e.model_dump() for e in events])
    pd.testing.assert_frame_equal(interactions_from_events(rows), interactions_from_events(events))
    pd.testing.assert_frame_equal(items_from_events(rows), items_from_events(events))


def test_two_tower_beats_popularity_on_the_simulator(sim, sim_model):
    items, train, test, cut = sim
    seen = train.groupby("user_id")["item_id"].agg(set)
    truth = test.groupby("user_id")["item_id"].agg(set)
    users = [u for u in truth.index if truth[u] - seen.get(u, set())]
    relevant = [truth[u] - seen.get(u, set()) for u in users]
    catalog = items[items["published_at"] < cut]  # what existed when the model was trained
    tower, pop = _recall_vs_popularity(sim_model, catalog, train, users, cut, relevant)
    print(f"simulator recall@100: two-tower {tower:.3f}, popularity {pop:.3f} ({len(users)} users)")
    assert tower > 1.2 * pop


@pytest.mark.skipif(movielens.shared_movielens_path() is None,
                    reason="no shared MovieLens-100K copy at ../shared/data/movielens-100k")
def test_two_tower_beats_popularity_on_movielens_leave_last_out():
    ml = movielens.load_movielens_100k(movielens.shared_movielens_path())
    events = movielens.movielens_events(ml)
    items = items_from_events(events)
    train, test = movielens.temporal_split(interactions_from_events(events))
    seen = train.groupby("user_id")["item_id"].agg(set)
    test = test[[i not in seen.get(u, set()) for u, i in zip(test["user_id"], test["item_id"])]]
    model = TwoTower.fit(train, items, TwoTowerConfig(epochs=5, batch_size=1024, seed=1))
    tower, pop = _recall_vs_popularity(model, items, train, test["user_id"].tolist(), test["event_time"],
                                       [{i} for i in test["item_id"]])
    print(f"MovieLens-100K recall@100: two-tower {tower:.3f}, popularity {pop:.3f} ({len(test)} users)")
    assert tower > 1.2 * pop


def _tiny(sim):
    items, train, _, _ = sim
    return items, train.iloc[:1500]


def test_training_is_deterministic_on_cpu(sim):
    items, train = _tiny(sim)
    config = TwoTowerConfig(dim=8, epochs=2, batch_size=256, seed=3)
    first, second = (TwoTower.fit(train, items, config, device="cpu") for _ in range(2))
    assert first.encoder_version == second.encoder_version
    assert TwoTower.fit(train, items, TwoTowerConfig(dim=8, epochs=2, batch_size=256, seed=4),
                        device="cpu").encoder_version != first.encoder_version


def test_min_steps_adds_epochs_and_validation_keeps_the_best_one(sim, tmp_path):
    items, train = _tiny(sim)  # 1500 rows, batch 500: three steps an epoch
    config = TwoTowerConfig(dim=8, epochs=2, batch_size=500, seed=3)
    planted = iter([0.1, 0.5, 0.2, 0.5, 0.3, 0.1, 0.0])  # epochs 2 and 4 tie best: the later is kept
    seen = {}

    def validate(model):
        seen[len(seen) + 1] = (np.asarray(model.item_embeddings(items)[1]).copy(), model.encoder_version)
        return next(planted)
    model = TwoTower.fit(train, items, config, device="cpu", min_steps=20, validate=validate)
    assert len(seen) == 7 and model.best_epoch == 4  # ceil(20 / 3) epochs
    assert np.array_equal(np.asarray(model.item_embeddings(items)[1]), seen[4][0])
    # The version names the weights kept, not the last ones validated: it survives a save and load.
    assert model.encoder_version == seen[4][1] != seen[7][1]
    assert TwoTower.load(model.save(tmp_path / "m")).encoder_version == model.encoder_version


def test_save_and_load_give_the_same_encoder_and_embeddings(sim, sim_model, tmp_path):
    items, train, _, cut = sim
    loaded = TwoTower.load(sim_model.save(tmp_path / "two_tower"))
    assert loaded.encoder_version == sim_model.encoder_version and len(loaded.encoder_version) == 12
    np.testing.assert_array_equal(loaded.item_embeddings(items)[1], sim_model.item_embeddings(items)[1])
    users = train["user_id"].unique()[:20].tolist()
    np.testing.assert_array_equal(loaded.user_embeddings(users, cut, train), sim_model.user_embeddings(users, cut, train))


def test_outputs_are_unit_vectors_for_known_and_unknown_users_and_items(sim, sim_model):
    items, train, _, cut = sim
    ids, vecs = sim_model.item_embeddings(items)
    users = sim_model.user_embeddings(["u-never-seen", train["user_id"].iloc[0]], cut, train)
    assert ids == items["item_id"].tolist() and vecs.dtype == np.float32 and vecs.shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)


def test_a_cold_item_embeds_through_its_content_category_and_creator(sim, sim_model):
    items, train, _, _ = sim
    known = items[items["item_id"].isin(train["item_id"])].reset_index(drop=True)
    twins = known.assign(item_id="new-" + known["item_id"])  # same features, ids never trained
    _, vecs = sim_model.item_embeddings(known)
    _, twin_vecs = sim_model.item_embeddings(twins)
    own = np.sum(vecs * twin_vecs, axis=1)  # cosine of each item with its own cold twin
    others = (vecs @ twin_vecs.T).mean(axis=1)  # ... and with the other twins
    assert np.mean(own > others) > 0.95
    assert not np.allclose(twin_vecs[0], twin_vecs[1])


def test_a_user_history_never_includes_events_at_or_after_as_of(sim, sim_model):
    _, train, _, _ = sim
    user = train["user_id"].value_counts().index[0]
    rows = train[train["user_id"] == user]
    as_of = rows["event_time"].iloc[len(rows) // 2]
    with_future = sim_model.user_embeddings([user], as_of, train)
    past_only = sim_model.user_embeddings([user], as_of, train[train["event_time"] < as_of])
    later = sim_model.user_embeddings([user], rows["event_time"].iloc[-1] + timedelta(seconds=1), train)
    np.testing.assert_array_equal(with_future, past_only)
    assert not np.allclose(with_future, later)

import shutil
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from eightbox.ingest.simulator import Marketplace, SimConfig
from eightbox.retrieval.ann_index import AnnIndex
from eightbox.serving.models import ModelSet, torch_user_tower
from eightbox.serving.user_encoder import WEIGHTS_FILE, UserEmbeddings, UserEncoder, export_user_tower
from eightbox.training.bundle import ComponentSpec, save_component, write_bundle
from eightbox.training.interactions import interactions_from_events, items_from_events
from eightbox.training.two_tower import TwoTower, TwoTowerConfig

SIM = SimConfig(seed=3, n_users=80, n_items=150, sessions_per_hour=300, new_users_per_hour=2, new_items_per_hour=1)
CONFIG = TwoTowerConfig(dim=8, epochs=2, batch_size=128, n_recent=5, user_buckets=8, seed=2)  # n_recent 5: windows truncate


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world():
    """(items, all interactions, training cut, user features of some training users)."""
    market = Marketplace(SIM)
    events = market.bootstrap_events() + list(market.simulate(hours=4))
    inter, cut = interactions_from_events(events), SIM.start + timedelta(hours=3)
    users = sorted(inter.loc[inter["event_time"] < cut, "user_id"].unique())
    rng = np.random.default_rng(0)
    feats = pd.DataFrame({"user_id": users[::2], "age_days": rng.uniform(0, 400, len(users[::2])),
                          "sessions": rng.poisson(5, len(users[::2])).astype(float)})
    return items_from_events(events), inter, cut, feats


def _fit(world, dense: bool) -> TwoTower:
    items, inter, cut, feats = world
    return TwoTower.fit(inter[inter["event_time"] < cut], items, CONFIG, user_features=feats if dense else None,
                        device="cpu")


@pytest.fixture(scope="module")
def plain(world, tmp_path_factory):
    """(model without dense features, its exported directory)."""
    model = _fit(world, False)
    return model, export_user_tower(model, tmp_path_factory.mktemp("plain"))


def _requests(world):
    """(user ids, as_of per user, interactions): known users with long, empty and unknown-item
    histories, and unknown users with and without history."""
    _, inter, cut, _ = world
    known = inter.loc[inter["event_time"] < cut, "user_id"].value_counts().index.tolist()
    cold = [u for u in inter["user_id"].unique() if u not in set(known)]
    # Two known users also engaged with items the model never saw, inside their last n_recent.
    extra = pd.DataFrame({"user_id": known[:2], "item_id": ["never-seen-1", "never-seen-2"],
                          "event_time": cut - timedelta(seconds=1), "kind": "click", "weight": 1.0})
    extra["event_time"] = extra["event_time"].astype(inter["event_time"].dtype)
    inter = pd.concat([inter, extra], ignore_index=True)
    users = known[:12] + known[-3:] + cold[:3] + ["u-never-seen", "u-never-seen-2"]
    as_of = [cut] * 15 + [cut + timedelta(hours=1)] * 3 + [cut] * 2  # cold users: with their post-cut history
    as_of[12] = SIM.start - timedelta(hours=1)  # a known user before any event: empty history
    return users, as_of, inter


def _newest_first(inter: pd.DataFrame, user: str, as_of) -> list[str]:
    """What user_recent.last_engaged_items would hold at as_of (here undeduplicated and unbounded)."""
    rows = inter.sort_values("event_time", kind="stable")
    rows = rows[(rows["user_id"] == user) & (rows["event_time"] < as_of)]
    return rows["item_id"].astype(str).tolist()[::-1]


@pytest.mark.parametrize("dense", [False, True], ids=["no_dense", "dense"])
def test_numpy_user_tower_matches_torch_for_known_cold_and_empty_histories(world, plain, tmp_path, dense):
    model = _fit(world, True) if dense else plain[0]
    encoder = UserEncoder.load(export_user_tower(model, tmp_path / "tower"))
    users, as_of, inter = _requests(world)
    feats = world[3].copy()
    feats.loc[feats.index[1], "sessions"] = np.nan  # a missing value: the training mean, both sides
    torch_rows = model.user_embeddings(users, as_of, inter, user_features=feats if dense else None)
    by_user = feats.set_index("user_id").to_dict("index")
    recent = [_newest_first(inter, u, t) for u, t in zip(users, as_of)]
    dense_in = [by_user.get(u) for u in users] if dense else None  # None for users without features
    np_rows = encoder.encode_batch(users, recent, dense_in)
    assert {len(r) for r in recent} >= {0} and max(len(r) for r in recent) > CONFIG.n_recent  # truncation and empty
    assert any(i.startswith("never-seen") for r in recent for i in r[: CONFIG.n_recent])
    assert not recent[12] and all(recent[15:18]) and not recent[-1]  # known empty; cold with history; cold empty
    diff = float(np.max(np.abs(np.asarray(np_rows) - np.asarray(torch_rows))))
    print(f"user tower parity ({'dense' if dense else 'no dense'}): max abs diff {diff:.2e} over {len(users)} users")
    assert np_rows.shape == torch_rows.shape and np_rows.dtype == np.float32
    assert diff < 1e-5
    np.testing.assert_allclose(np.linalg.norm(np_rows, axis=1), 1.0, atol=1e-5)
    assert np_rows.encoder_version == encoder.encoder_version == model.encoder_version
    one = encoder.encode(users[0], recent[0], dense_in[0] if dense else None)  # one request: the batch's row
    assert one.shape == (1, CONFIG.dim) and one.encoder_version == model.encoder_version
    np.testing.assert_allclose(one[0], np_rows[0], atol=1e-6)


def test_unknown_users_take_their_hashed_bucket_and_unknown_items_add_nothing(plain):
    model, directory = plain
    encoder, items = UserEncoder.load(directory), model.vocab["items"][:3]
    two_cold = encoder.encode_batch(["cold-a", "cold-b"], [items, items])
    assert not np.allclose(two_cold[0], two_cold[1])  # different buckets, not one shared "unknown" row
    np.testing.assert_array_equal(encoder.encode("cold-a", items), encoder.encode("cold-a", items))
    np.testing.assert_array_equal(encoder.encode("cold-a", ["x1", *items]), encoder.encode("cold-a", items))
    assert not np.array_equal(encoder.encode("cold-a", ["x"] * CONFIG.n_recent + items), encoder.encode("cold-a", items))


def test_the_index_accepts_encoder_output_and_serving_never_imports_torch(world, plain):
    items, *_ = world
    model, directory = plain
    ids, vecs = model.item_embeddings(items)
    index = AnnIndex.build(ids, vecs)
    found, _ = index.search(UserEncoder.load(directory).encode("u-new", ids[:3]), 5)
    assert len(found[0]) == 5
    code = (f"import sys; from eightbox.serving.user_encoder import UserEncoder; "
            f"e = UserEncoder.load({str(directory)!r}); v = e.encode('u1', ['x']); "
            f"assert 'torch' not in sys.modules, 'torch imported'; print(v.encoder_version)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == model.encoder_version


def test_a_tampered_weights_file_is_refused(plain, tmp_path):
    directory = export_user_tower(plain[0], tmp_path / "tower")
    data = bytearray((directory / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (directory / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not the file exported"):
        UserEncoder.load(directory)


def test_a_bundle_with_the_numpy_tower_serves_it_and_one_without_falls_back_to_torch(world, plain, tmp_path):
    model, exported = plain
    user, recent = world[1]["user_id"].iloc[0], world[0]["item_id"].astype(str).tolist()[:3]
    comps = {"two_tower": save_component(tmp_path, "two_tower", model, version=model.encoder_version)}
    shutil.copytree(exported, tmp_path / "user_tower")
    numpy_spec = ComponentSpec(loader="eightbox.serving.user_encoder:UserEncoder.load", path="user_tower",
                               version=model.encoder_version)
    meta = {"encoder_version": model.encoder_version}

    models = ModelSet.from_bundle(write_bundle(tmp_path, name="t", components={**comps, "user_tower": numpy_spec},
                                               metadata=meta))
    assert models.versions["user_tower"] == "numpy" and "user_tower" not in models.problems
    query = models.user_tower(user, recent)
    assert isinstance(query, UserEmbeddings) and query.shape == (1, CONFIG.dim)
    assert query.encoder_version == model.encoder_version
    np.testing.assert_allclose(query, torch_user_tower(model)(user, recent), atol=1e-5)

    older = ModelSet.from_bundle(write_bundle(tmp_path, name="t", components=comps, metadata=meta))
    assert older.versions["user_tower"] == "torch" and "user_tower" not in older.problems

    # An export of another encoder than the bundle's is refused, as an index of another encoder is.
    stranger = ModelSet.from_bundle(write_bundle(tmp_path, name="t", components={**comps, "user_tower": numpy_spec},
                                                 metadata={"encoder_version": "another"}))
    assert stranger.user_tower is None and stranger.versions["user_tower"] == ""
    assert "is not the bundle's another" in stranger.problems["user_tower"]

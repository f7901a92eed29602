"""The model bundle format: a manifest plus component folders, loaded lazily through named loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eightbox.training.bundle import BundleError, ComponentSpec, load_bundle, save_component, write_bundle

from .tiny_ranker import TinyRanker, toy_data

LOADER = "tests.unit.tiny_ranker:TinyRanker.load"


@pytest.fixture
def ranker():
    return TinyRanker.fit(toy_data())


def test_a_saved_bundle_predicts_exactly_what_its_ranker_did(tmp_path, ranker):
    spec = save_component(tmp_path, "ranker", ranker)
    assert spec == ComponentSpec(loader=LOADER, path="ranker", version="1")
    write_bundle(tmp_path, name="toy", components={"ranker": spec}, metadata={"encoder_version": "e1"})

    bundle = load_bundle(tmp_path)
    df = toy_data(50, seed=1)
    assert np.array_equal(bundle.predict(df)["score"].to_numpy(), ranker.predict(df)["score"].to_numpy())
    assert bundle.metadata == {"encoder_version": "e1"} and bundle.name == "toy"


def test_components_load_on_first_use_and_once(tmp_path, ranker):
    write_bundle(tmp_path, name="toy", components={"ranker": save_component(tmp_path, "ranker", ranker)})
    bundle = load_bundle(tmp_path)
    assert bundle._loaded == {}  # reading the manifest loads nothing
    assert bundle.component("ranker") is bundle.component("ranker")


def test_the_manifest_is_plain_json_with_relative_paths(tmp_path, ranker):
    write_bundle(tmp_path, name="toy", components={"ranker": save_component(tmp_path, "ranker", ranker)},
                 created_at="2024-01-02T00:00:00+00:00")
    manifest = json.loads((tmp_path / "bundle.json").read_text())
    assert manifest == {"format": 1, "name": "toy", "created_at": "2024-01-02T00:00:00+00:00", "metadata": {},
                        "components": {"ranker": {"loader": LOADER, "path": "ranker", "version": "1"}}}


def test_a_moved_bundle_still_loads(tmp_path, ranker):
    write_bundle(tmp_path / "a", name="toy", components={"ranker": save_component(tmp_path / "a", "ranker", ranker)})
    (tmp_path / "a").rename(tmp_path / "b")
    assert load_bundle(tmp_path / "b").component("ranker").intercept == ranker.intercept


@pytest.mark.parametrize("spec, message", [
    (ComponentSpec(loader="not a loader", path="ranker"), "module:callable"),
    (ComponentSpec(loader=LOADER, path="../elsewhere"), "inside the bundle"),
    (ComponentSpec(loader=LOADER, path="missing"), "does not exist"),
])
def test_a_bad_component_spec_is_refused_before_anything_is_written(tmp_path, ranker, spec, message):
    save_component(tmp_path, "ranker", ranker)
    with pytest.raises(BundleError, match=message):
        write_bundle(tmp_path, name="toy", components={"ranker": spec})
    assert not (tmp_path / "bundle.json").exists()


def test_asking_for_an_unknown_component_names_the_ones_there_are(tmp_path, ranker):
    write_bundle(tmp_path, name="toy", components={"ranker": save_component(tmp_path, "ranker", ranker)})
    with pytest.raises(BundleError, match="has no component 'index' \\(it has: ranker\\)"):
        load_bundle(tmp_path).component("index")


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path)

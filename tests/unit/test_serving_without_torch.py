"""A serving process on a bundle that carries the NumPy user tower never imports torch: the bundle is
trained here (torch is a training dependency), then a fresh interpreter imports the serving bootstrap,
loads the bundle and answers a request through the funnel offline, and reports `sys.modules`. The
same bundle without the NumPy tower (an older bundle) still serves, through torch: the check can fail."""

from __future__ import annotations

import json
import subprocess
import sys

from eightbox.ingest.simulator import Marketplace, SimConfig
from eightbox.retrieval.ann_index import AnnIndex
from eightbox.serving.user_encoder import export_user_tower
from eightbox.training.bundle import ComponentSpec, save_component, write_bundle
from eightbox.training.covisitation import Covisitation, ItemCatalog
from eightbox.training.interactions import interactions_from_events, items_from_events
from eightbox.training.two_tower import TwoTowerConfig

from .tiny_tower import fit_tower

SIM = SimConfig(seed=4, n_users=60, n_items=120, sessions_per_hour=300)

_CHILD = """
import asyncio, json, sys
from eightbox.serving import bootstrap  # the module that wires a serving process
from eightbox.serving.funnel import Funnel
from eightbox.serving.models import ModelSet
from eightbox.serving.sources import CovisitSource, TwoTowerSource

models = ModelSet.from_dir(sys.argv[1])
funnel = Funnel(models, [TwoTowerSource(50), CovisitSource(50)])
rec = asyncio.run(funnel.recommend(sys.argv[2], 5))
print(json.dumps({"torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "tower": models.versions["user_tower"], "two_tower_loaded": models.two_tower is not None,
                  "items": len(rec.items), "ann": rec.stage("source:two_tower").status}))
"""


def test_a_serving_process_on_a_bundle_with_the_numpy_tower_never_imports_torch(tmp_path):
    events = Marketplace(SIM).bootstrap_events() + list(Marketplace(SIM).simulate(hours=2))
    inter, items = interactions_from_events(events), items_from_events(events)
    tower = fit_tower(inter, items, TwoTowerConfig(dim=8, epochs=1, seed=0))
    ids, vectors = tower.item_embeddings(items)
    export_user_tower(tower, tmp_path / "user_tower")
    version = tower.encoder_version
    comps = {"two_tower": save_component(tmp_path, "two_tower", tower, version=version),
             "index": save_component(tmp_path, "index", AnnIndex.build(ids, vectors, use_gpu=False), version=version),
             "catalog": save_component(tmp_path, "catalog", ItemCatalog.build(items, inter)),
             "covisitation": save_component(tmp_path, "covisitation", Covisitation.fit(inter)),
             "user_tower": ComponentSpec(loader="eightbox.serving.user_encoder:UserEncoder.load", path="user_tower",
                                         version=version)}
    write_bundle(tmp_path, name="no-torch", components=comps, metadata={"encoder_version": version})

    user = str(inter["user_id"].iloc[0])
    seen = _serve_in_a_fresh_process(tmp_path, user)
    assert seen["tower"] == "numpy" and not seen["two_tower_loaded"]
    assert seen["items"] == 5 and seen["ann"] == "ok", seen
    assert seen["torch"] == [], f"serving imported {seen['torch'][:5]}"

    del comps["user_tower"]
    write_bundle(tmp_path, name="older", components=comps, metadata={"encoder_version": version})
    older = _serve_in_a_fresh_process(tmp_path, user)
    assert older["tower"] == "torch" and older["two_tower_loaded"] and older["ann"] == "ok"
    assert "torch" in older["torch"]


def _serve_in_a_fresh_process(bundle_dir, user: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(bundle_dir), user], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])

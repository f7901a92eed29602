"""Scoring-time feature logging through the real serving process, read back from the impressions topic.

What the ranker scored is captured at the ranker boundary, independently of the logger: the served
champion's ranker component is `ranker_capture.RecordingRanker`, the real ranker behind a loader
that appends every matrix `predict` receives (float64 bit patterns) to a file. Each logged
`ImpressionServed.features` must be, bit for bit, a row of the matrix scored for its request (an
absent key where the ranker saw NaN), and re-scoring the logged vector with the bundle's ranker must
give back the served score exactly. With a sample share of 0.5, a request is logged whole or not at all.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eightbox.ingest.schema import TOPICS
from eightbox.ranking.multitask import MultiTaskRanker
from eightbox.ranking.value import value_score
from eightbox.serving.impression_log import sampled
from eightbox.training.bundle import load_bundle, write_bundle

from .ranker_capture import LOADER, RecordingRanker, read_captures
from .test_api_events import read_until
from .test_funnel_real import FEATURES, world  # noqa: F401  (world: features in Redis, a bundle on disk)
from .test_serving_http import _recommend, _register, running, server_settings

SHARE = 0.5
N_REQUESTS = 24
REPO = Path(__file__).resolve().parents[2]  # so the server process can import the recording ranker


def _recording_bundle(bundle_dir: Path, into: Path, capture: Path) -> Path:
    """A copy of the bundle whose ranker component is the real ranker behind `RecordingRanker`."""
    copy = into / "bundle"
    shutil.copytree(bundle_dir, copy)
    shutil.rmtree(copy / "ranker")
    RecordingRanker.save_with(MultiTaskRanker.load(bundle_dir / "ranker"), copy / "ranker", capture)
    bundle = load_bundle(copy)
    components = {**bundle.components, "ranker": replace(bundle.components["ranker"], loader=LOADER)}
    write_bundle(copy, name=bundle.name, components=components, metadata=bundle.metadata)
    return copy


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):  # noqa: F811
    settings, bundle_dir, users = world
    capture = tmp_path_factory.mktemp("capture") / "ranker-inputs.jsonl"
    settings = server_settings(settings, 28040, "logging-test", serving_impression_sample_share=SHARE)
    _register(settings, _recording_bundle(bundle_dir, tmp_path_factory.mktemp("recording"), capture))
    with pytest.MonkeyPatch.context() as env:  # the server process imports the recording ranker from tests/
        env.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
        with running(settings) as client:
            yield settings, client, capture, bundle_dir, users


@pytest.fixture(scope="module")
def served(server):
    """N_REQUESTS answers, the ranker calls recorded while each was served, and the impressions
    read back per request id (until every request the share samples is complete)."""
    settings, client, capture, _, users = server
    answers, windows = [], []
    for i in range(N_REQUESTS):
        before = len(read_captures(capture))
        answers.append(_recommend(client, users[i % len(users)]))
        windows.append(read_captures(capture)[before:])  # predict() returned before the response did
    want = {a["request_id"]: len(a["items"]) for a in answers if sampled(a["request_id"], SHARE)}
    records = read_until(settings, TOPICS["impression_served"].name, lambda rs: all(
        sum(r.get("request_id") == rid for r in rs) >= n for rid, n in want.items()), timeout_s=60)
    logged = {a["request_id"]: sorted((r for r in records if r.get("request_id") == a["request_id"]),
                                      key=lambda r: r["position"]) for a in answers}
    metrics = {s.name: s.value for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples}
    return answers, windows, logged, metrics


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _row_as_logged(columns: list[str], row: list[int]) -> dict[str, bytes]:
    """A captured row (uint64 bit patterns) as the log must carry it: NaN → absent key."""
    values = np.array(row, dtype=np.uint64).view(np.float64)
    return {name: _bits(float(v)) for name, v in zip(columns, values) if not math.isnan(v)}


def test_every_logged_feature_vector_is_bit_for_bit_a_vector_the_ranker_scored(server, served):
    _, _, _, bundle_dir, _ = server
    answers, windows, logged, _ = served
    ranker = MultiTaskRanker.load(bundle_dir / "ranker")  # the real ranker, outside the server
    checked, absent, present = 0, 0, 0
    for answer, window in zip(answers, windows):
        records = logged[answer["request_id"]]
        if answer["rung"] != "full" or not records:
            continue
        n_ranked = next(s for s in answer["explanation"]["stages"] if s["name"] == "rank")["candidates_in"]
        # The call that scored this request (a straggler of an earlier, timed-out request may share the window).
        calls = [c for c in window if len(c["rows"]) == n_ranked]
        assert calls and all(c["columns"] == FEATURES for c in calls), (n_ranked, [len(c["rows"]) for c in window])
        scored = [_row_as_logged(c["columns"], row) for c in calls for row in c["rows"]]
        assert [r["item_id"] for r in records] == [i["item_id"] for i in answer["items"]]
        for record, item in zip(records, answer["items"]):
            vector = {name: _bits(value) for name, value in record["features"].items()}
            assert vector in scored, f"logged {record['item_id']} vector is not a row the ranker scored"
            absent += len(FEATURES) - len(vector)
            present += len(vector)
            # The logged vector, re-scored by the bundle's ranker, gives the served score exactly.
            frame = pd.DataFrame({f: [record["features"].get(f, np.nan)] for f in FEATURES}, dtype=np.float64)
            pred = ranker.predict(frame)
            assert _bits(float(value_score(pred)[0])) == _bits(record["score"]) == _bits(item["score"])
            assert _bits(float(pred["p_click"].iloc[0])) == _bits(item["p_click"])
            checked += 1
    assert checked >= 20, f"only {checked} logged items on the full rung"
    assert absent and present, "both missing (NaN) and present features were compared"


def test_with_share_one_half_a_request_is_logged_whole_or_not_at_all(served):
    answers, _, logged, metrics = served
    whole = [a["request_id"] for a in answers if logged[a["request_id"]]]
    for a in answers:
        records = logged[a["request_id"]]
        assert len(records) in (0, len(a["items"])), f"{a['request_id']}: {len(records)} of {len(a['items'])} logged"
        assert [r["position"] for r in records] in ([], list(range(len(a["items"]))))
        assert bool(records) == sampled(a["request_id"], SHARE), "the sample is a function of the request id"
    assert 0 < len(whole) < len(answers), f"{len(whole)} of {len(answers)} requests logged at share {SHARE}"
    # The server's own counts agree: the rest were never queued, nothing was dropped or failed.
    assert metrics["eightbox_impressions_requests"] == len(answers)
    assert metrics["eightbox_impressions_unsampled"] == len(answers) - len(whole)
    assert metrics["eightbox_impressions_dropped"] == metrics["eightbox_impressions_failed"] == 0

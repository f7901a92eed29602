"""`eightbox bench online-features`: ranking features for 1 user + 500 candidate items, three ways.

Same Redis, same keys, same run, interleaved per request: Feast's `get_online_features(...).to_dict()`,
`OnlineReader.read` (one pipelined HMGET per distinct entity, decoded like Feast), and a raw pipelined
HGETALL of the same Feast keys with no decoding (the floor). The data is synthetic, written in the
feature tables' layout under a temporary home and materialized into the configured Redis under a
project of its own (`<feast_project>_bench`), which is torn down afterwards. Prints one JSON line last:
p50_ms / p99_ms of OnlineReader, feast_* and raw_redis_*, and ratio = OnlineReader p99 / raw p99.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from eightbox.settings import Settings

CANDIDATES = 500
SERVICE = "ranker_v1"


def _synthetic_tables(settings: Settings, n_users: int, n_items: int, n_categories: int, n_creators: int,
                      seed: int = 0) -> dict[str, list[str]]:
    from eightbox.features import specs
    from eightbox.features.repo.definitions import feature_dtype
    from eightbox.features.store import write_offline

    rng = np.random.default_rng(seed)
    ids = {"user_id": [f"u{i:05d}" for i in range(n_users)], "item_id": [f"i{i:06d}" for i in range(n_items)],
           "category": [f"cat{i:02d}" for i in range(n_categories)],
           "creator_id": [f"cr{i:04d}" for i in range(n_creators)]}
    ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for table, keys in specs.TABLE_KEYS.items():
        frame = pd.MultiIndex.from_product([ids[k] for k in keys], names=list(keys)).to_frame(index=False)
        frame[specs.TIMESTAMP] = ts
        for f in specs.table_features(table):
            kind = str(feature_dtype(f))
            if kind == "Float64":
                frame[f] = rng.random(len(frame))
            elif kind == "Int64":
                frame[f] = rng.integers(0, 10_000, len(frame))
            else:
                frame[f] = [list(rng.choice(ids["item_id"], 10)) for _ in range(len(frame))]
        write_offline(settings, table, frame, "bench")
    return ids


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 3)


def run(settings: Settings, quick: bool = False) -> dict:
    import redis

    from eightbox.deploy.services import StackError
    from eightbox.features import store as feature_store
    from eightbox.features.online import OnlineReader

    client = redis.Redis.from_url(settings.redis_address)
    try:
        client.ping()
    except redis.RedisError as e:
        raise StackError(f"Redis not reachable at {settings.redis_address} ({e}): run `eightbox up`") from None

    home = Path(tempfile.mkdtemp(prefix="eightbox-bench-online-"))
    bench = settings.model_copy(update={"home": home, "feast_project": f"{settings.feast_project}_bench"})
    n_items, requests = (2_000, 60) if quick else (10_000, 300)
    store = None
    try:
        print(f"bench online-features: {n_items} items, {CANDIDATES} candidates per request, {requests} requests",
              flush=True)
        ids = _synthetic_tables(bench, n_users=200, n_items=n_items, n_categories=20, n_creators=300)
        store = feature_store.apply(bench)
        t = time.perf_counter()
        feature_store.materialize(bench, datetime(2023, 12, 31, tzinfo=timezone.utc),
                                  datetime(2024, 1, 2, tzinfo=timezone.utc))
        print(f"bench online-features: materialized in {time.perf_counter() - t:.1f} s", flush=True)

        service = store.get_feature_service(SERVICE)
        reader = OnlineReader(bench, SERVICE, store=store, client=client)
        rng = np.random.default_rng(1)
        category_of = dict(zip(ids["item_id"], rng.choice(ids["category"], len(ids["item_id"]))))
        creator_of = dict(zip(ids["item_id"], rng.choice(ids["creator_id"], len(ids["item_id"]))))

        times = {"feast": [], "reader": [], "raw": []}
        mismatches = 0
        for r in range(requests + 5):  # the first 5 warm up (registry cache, connections)
            user = str(rng.choice(ids["user_id"]))
            items = [str(i) for i in rng.choice(ids["item_id"], CANDIDATES, replace=False)]
            cats = [category_of[i] for i in items]
            creators = [creator_of[i] for i in items]
            rows = [{"user_id": user, "item_id": i, "category": c, "creator_id": k}
                    for i, c, k in zip(items, cats, creators)]
            raw_keys = list(dict.fromkeys(
                [reader.redis_key(("user_id",), (user,))]
                + [reader.redis_key(("item_id",), (i,)) for i in items]
                + [reader.redis_key(("category", "user_id"), (c, user)) for c in cats]
                + [reader.redis_key(("creator_id",), (k,)) for k in creators]))

            t0 = time.perf_counter()
            feast = store.get_online_features(features=service, entity_rows=rows).to_dict()
            t1 = time.perf_counter()
            fast = reader.read(user, items, categories=cats, creators=creators)
            t2 = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for key in raw_keys:
                pipe.hgetall(key)
            pipe.execute()
            t3 = time.perf_counter()
            if r < 5:
                continue
            mismatches += fast != feast
            times["feast"].append(t1 - t0)
            times["reader"].append(t2 - t1)
            times["raw"].append(t3 - t2)

        result = {
            "requests": requests, "candidates": CANDIDATES, "features": len(reader.feature_names),
            "redis_keys_per_request": len(raw_keys),
            "p50_ms": _ms(times["reader"], 50), "p99_ms": _ms(times["reader"], 99),
            "feast_p50_ms": _ms(times["feast"], 50), "feast_p99_ms": _ms(times["feast"], 99),
            "raw_redis_p50_ms": _ms(times["raw"], 50), "raw_redis_p99_ms": _ms(times["raw"], 99),
            "mismatches": int(mismatches),
        }
        result["ratio"] = round(result["p99_ms"] / result["raw_redis_p99_ms"], 2)
        result["speedup_vs_feast_p99"] = round(result["feast_p99_ms"] / result["p99_ms"], 1)
        print(json.dumps(result), flush=True)
        return result
    finally:
        if store is not None:
            store.teardown()  # removes this project's keys from Redis
        shutil.rmtree(home, ignore_errors=True)

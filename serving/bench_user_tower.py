"""Request-time user tower: NumPy ``UserEncoder`` against torch, on the same inputs.

A default-config two-tower (dim 32, 20 recent items) is fitted for one epoch on
``training.bench_tower.synthetic`` interactions (quick: 20,000 rows of 5,000 users over 2,000 items;
full: 200,000 rows of 50,000 users over 20,000 items; the weights do not change the cost) and
exported. Requests: 90% known users, 10% unseen; histories of 0-25 items, newest first, 5% of them
unknown to the model. Three paths, each timed call by call (``perf_counter_ns``) after a warm-up:

- ``numpy``: ``UserEncoder.encode`` / ``encode_batch``, what serving would run;
- ``torch_tower`` (torch's default threads) and ``torch_tower_1thread``: the same input preparation
  (``UserEncoder.inputs``), then ``_Towers.users`` under ``torch.inference_mode``: the best a torch
  serving path could do;
- ``torch_api``: ``TwoTower.user_embeddings`` on a per-request interactions frame (built before
  the clock starts), the public training-stack entry point.

Single requests: p50/p99 over ``calls`` calls; batches of 64: over ``batches`` batches. The decision is
the faster of numpy and the better torch_tower at single-request p50 (the serving case); ratios are
torch / numpy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

AS_OF = datetime(2030, 1, 1, tzinfo=timezone.utc)  # after every synthetic event


def _percentiles(fn, args: list, warmup: int) -> dict:
    """p50 / p99 / mean microseconds of ``fn(*a)`` over ``args``, after ``warmup`` untimed calls."""
    for a in args[:warmup]:
        fn(*a)
    times = np.empty(len(args))
    for k, a in enumerate(args):
        t = time.perf_counter_ns()
        fn(*a)
        times[k] = time.perf_counter_ns() - t
    us = times / 1e3
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1),
            "mean_us": round(float(us.mean()), 1), "calls": len(args)}


def _frame(users: list[str], recents: list[list[str]]) -> pd.DataFrame:
    """One interactions frame holding the given histories (newest first) as past events."""
    rows = [(u, i, AS_OF - timedelta(minutes=k + 1)) for u, r in zip(users, recents) for k, i in enumerate(r)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


def run(quick: bool = False, calls: int = 2000, batches: int = 200, seed: int = 0) -> dict:
    import tempfile

    import torch

    from eightbox.serving.user_encoder import UserEncoder, export_user_tower
    from eightbox.training.bench_tower import synthetic
    from eightbox.training.two_tower import TwoTower, TwoTowerConfig

    rows, n_users, n_items = (20_000, 5_000, 2_000) if quick else (200_000, 50_000, 20_000)
    print(f"bench user-tower: {rows:,} interactions, {n_users:,} users, {n_items:,} items; torch {torch.__version__} "
          f"on cpu, {torch.get_num_threads()} threads; numpy {np.__version__}; load {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cpus", flush=True)
    inter, items = synthetic(rows, users=n_users, items=n_items, seed=seed)
    model = TwoTower.fit(inter, items, TwoTowerConfig(epochs=1), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        encoder = UserEncoder.load(export_user_tower(model, tmp))
    print(f"  fitted 1 epoch and exported encoder {encoder.encoder_version}", flush=True)

    rng = np.random.default_rng(seed)
    vocab_users, vocab_items = np.asarray(model.vocab["users"]), np.asarray(model.vocab["items"])

    def request(r: int) -> tuple[str, list[str]]:
        user = str(rng.choice(vocab_users)) if rng.random() < 0.9 else f"new-user-{r}"
        recent = [str(i) if rng.random() > 0.05 else f"new-item-{r}-{k}"
                  for k, i in enumerate(rng.choice(vocab_items, size=int(rng.integers(0, 26))))]
        return user, recent

    singles = [request(r) for r in range(calls)]
    groups = [[request(calls + 64 * b + r) for r in range(64)] for b in range(batches)]

    @torch.inference_mode()
    def torch_tower(users: list[str], recents: list[list[str]]) -> np.ndarray:
        uid, hist, dense = (torch.as_tensor(a) for a in encoder.inputs(users, recents))
        return model.net.users(uid, hist, dense).numpy()

    out: dict = {"rows": rows, "users": n_users, "items": n_items, "torch_threads": torch.get_num_threads(),
                 "load_before": round(os.getloadavg()[0], 2), "single": {}, "batch64": {}}
    got = np.concatenate([encoder.encode_batch(*zip(*g)) for g in groups[:5]])
    want = np.concatenate([torch_tower(*map(list, zip(*g))) for g in groups[:5]])
    out["max_abs_diff"] = float(np.max(np.abs(np.asarray(got) - want)))
    print(f"  parity on {len(got)} requests: max abs diff {out['max_abs_diff']:.2e}", flush=True)

    threads = torch.get_num_threads()
    paths = {  # name: (single call, batch call, torch threads)
        "numpy": (lambda u, r: encoder.encode(u, r), lambda us, rs: encoder.encode_batch(us, rs), threads),
        "torch_tower": (lambda u, r: torch_tower([u], [r]), torch_tower, threads),
        "torch_tower_1thread": (lambda u, r: torch_tower([u], [r]), torch_tower, 1),
        "torch_api": (lambda u, f: model.user_embeddings([u], AS_OF, f),
                      lambda us, f: model.user_embeddings(us, AS_OF, f), threads),
    }
    for name, (one, many, n_threads) in paths.items():
        torch.set_num_threads(n_threads)
        single_args: list[tuple]
        batch_args: list[tuple]
        if name == "torch_api":  # its input is an interactions frame: built here, off the clock
            single_args = [(u, _frame([u], [r])) for u, r in singles]
            batch_args = [(list(us), _frame(list(us), list(rs))) for us, rs in (zip(*g) for g in groups)]
        else:
            single_args = singles
            batch_args = [tuple(map(list, zip(*g))) for g in groups]
        out["single"][name] = _percentiles(one, single_args, warmup=min(200, calls // 10))
        out["batch64"][name] = _percentiles(many, batch_args, warmup=min(20, batches // 10))
        s, b = out["single"][name], out["batch64"][name]
        print(f"  {name:<19} single p50 {s['p50_us']:8.1f} us  p99 {s['p99_us']:8.1f} us | "
              f"batch of 64 p50 {b['p50_us']:9.1f} us  p99 {b['p99_us']:9.1f} us", flush=True)

    torch.set_num_threads(threads)
    for case in ("single", "batch64"):
        base = out[case]["numpy"]["p50_us"]
        out[case]["ratio_p50"] = {k: round(v["p50_us"] / base, 2) for k, v in out[case].items() if k != "numpy"}
    best_torch = min(out["single"][k]["p50_us"] for k in ("torch_tower", "torch_tower_1thread"))
    out["decision"] = "numpy" if out["single"]["numpy"]["p50_us"] <= best_torch else "torch"
    out["load_after"] = round(os.getloadavg()[0], 2)
    print(f"  decision: {out['decision']} serves the user tower (single-request p50, best torch / numpy = "
          f"{best_torch / out['single']['numpy']['p50_us']:.1f}x); load {out['load_after']:.2f}", flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:])))

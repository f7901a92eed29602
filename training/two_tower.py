"""The two-tower retrieval model: users and items in one space, scored by inner product.

User tower: user id embedding (known users; unseen users fall into ``user_buckets`` hashed OOV
rows), the mean embedding of the user's last ``n_recent`` items before the example time, and
optional dense user features. Item tower: item id embedding (unknown items get zeros), a
projection of the content vector, category and creator embeddings. Each tower is a small MLP with
an L2-normalised output; logits are cosine / temperature.

Training uses in-batch negatives with the logQ correction: the logit of item j is lowered by
log q(j), q being j's share of the training interactions (its chance of showing up as an in-batch
negative), so popular items are not over-punished for being sampled often. Ids are dropped (set to
unknown) on a share of the examples so that cold users and cold items embed through their history
and their content. CUDA when available, else CPU; seeded and deterministic on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from eightbox.retrieval.embeddings import Embeddings  # re-exported: callers import it from here too


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 32  # output size of both towers (and of every embedding inside them)
    epochs: int = 10
    batch_size: int = 512  # also the number of in-batch negatives per example (minus one)
    lr: float = 0.005
    temperature: float = 0.05
    n_recent: int = 20  # items in the user's history bag
    seed: int = 0
    user_buckets: int = 64  # hashed rows shared by users not in the vocabulary
    id_dropout: float = 0.3  # share of examples trained with unknown user / item ids (cold start)
    weight_decay: float = 0.0
    logq_correction: bool = True


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    epochs: int
    loss: float  # weighted mean in-batch softmax cross-entropy
    seconds: float  # of this epoch
    valid: float | None = None  # the `validate` score after this epoch


def print_epoch(stats: EpochStats) -> None:
    """A progress callback for ``TwoTower.fit`` that prints one line per epoch."""
    print(f"two-tower epoch {stats.epoch}/{stats.epochs}: loss {stats.loss:.4f}, {stats.seconds:.1f} s", flush=True)


def _index(values: Sequence[str], vocab: dict[str, int]) -> np.ndarray:
    """Vocabulary indices, 0 where unknown."""
    return np.fromiter((vocab.get(v, 0) for v in values), dtype=np.int64, count=len(values))


def _ns(values) -> np.ndarray:
    """Times as int64 nanoseconds since the epoch (UTC)."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


def _mlp(n_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


class _Towers(nn.Module):
    """Both towers; every input id is a vocabulary index, 0 meaning unknown (users: buckets first)."""

    def __init__(self, cfg: TwoTowerConfig, n_users: int, n_items: int, n_categories: int, n_creators: int,
                 content_dim: int, dense_dim: int):
        super().__init__()
        d = cfg.dim
        self.user_id = nn.Embedding(cfg.user_buckets + n_users, d)
        self.dense = nn.Linear(dense_dim, d) if dense_dim else None
        self.user_mlp = _mlp(d * (3 if dense_dim else 2), d)
        self.item_id = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.content = nn.Linear(content_dim, d) if content_dim else None
        self.category = nn.Embedding(n_categories + 1, d, padding_idx=0)
        self.creator = nn.Embedding(n_creators + 1, d, padding_idx=0)
        self.item_mlp = _mlp(d * (4 if content_dim else 3), d)
        # Side features of the vocabulary's items (row 0: unknown), so that a history item embeds
        # through the item tower: its category and content generalise where its id has few examples.
        self.register_buffer("item_content", torch.zeros(n_items + 1, content_dim))
        self.register_buffer("item_category", torch.zeros(n_items + 1, dtype=torch.long))
        self.register_buffer("item_creator", torch.zeros(n_items + 1, dtype=torch.long))
        # Ids start near zero: an id seen a handful of times stays neutral, and its item (or user) is
        # carried by content, category and history instead of by random noise.
        nn.init.normal_(self.user_id.weight, std=0.01)
        nn.init.normal_(self.item_id.weight, std=0.01).data[0] = 0.0

    def items(self, iid: torch.Tensor, content: torch.Tensor, cat: torch.Tensor, creator: torch.Tensor) -> torch.Tensor:
        parts = [self.item_id(iid), self.category(cat), self.creator(creator)]
        if self.content is not None:
            parts.append(self.content(content))
        return F.normalize(self.item_mlp(torch.cat(parts, 1)), dim=1)

    def known_items(self, idx: torch.Tensor, iid: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary items by index; ``iid`` replaces the id input (id dropout)."""
        return self.items(idx if iid is None else iid, self.item_content[idx], self.item_category[idx],
                          self.item_creator[idx])

    def users(self, uid: torch.Tensor, hist: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if hist.is_cuda:  # torch.unique syncs the device (its size is data-dependent); embed every slot
            emb = self.known_items(hist.reshape(-1)).view(*hist.shape, -1) * (hist != 0).unsqueeze(2)
        else:  # each distinct history item once: on a CPU the item tower's cost is per row
            uniq, inv = torch.unique(hist, return_inverse=True)
            emb = (self.known_items(uniq) * (uniq != 0).unsqueeze(1))[inv]  # pads zero
        bag = emb.sum(1) / (hist != 0).sum(1, keepdim=True).clamp(min=1)  # (B, d) mean of (B, n_recent, d)
        parts = [self.user_id(uid), bag]
        if self.dense is not None:
            parts.append(self.dense(dense))
        return F.normalize(self.user_mlp(torch.cat(parts, 1)), dim=1)


class TwoTower:
    """A fitted two-tower model. Build with ``TwoTower.fit`` or ``TwoTower.load``."""

    def __init__(self, config: TwoTowerConfig, vocab: dict, device: str | None = None):
        self.config = config
        self.vocab = vocab  # users, items, categories, creators (id lists), content_dim, dense_columns/mean/std
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._users = {u: i + config.user_buckets for i, u in enumerate(vocab["users"])}
        self._items, self._categories, self._creators = (
            {v: i + 1 for i, v in enumerate(vocab[k])} for k in ("items", "categories", "creators"))
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            self.net = _Towers(config, len(self._users), len(self._items), len(self._categories),
                               len(self._creators), vocab["content_dim"], len(vocab["dense_columns"]))
        self.net.to(self.device)
        self._version: str | None = None
        self.best_epoch: int | None = None  # the epoch kept, when training validated each epoch

    # --- inputs -------------------------------------------------------------------------------------
    def _user_ids(self, user_ids: Sequence[str], known: bool = True) -> np.ndarray:
        """Vocabulary rows of users; hashed buckets for unknown users (for every user if not `known`)."""
        buckets = [zlib.crc32(u.encode()) % self.config.user_buckets for u in user_ids]
        return np.asarray([self._users.get(u, b) if known else b for u, b in zip(user_ids, buckets)], np.int64)

    def _histories(self, user_ids: Sequence[str], as_of: np.ndarray, interactions: pd.DataFrame) -> np.ndarray:
        """(n, n_recent) item indices: each user's latest items strictly before as_of (int64 ns), 0-padded."""
        n_recent = self.config.n_recent
        out = np.zeros((len(user_ids), n_recent), dtype=np.int64)
        queries = pd.Series(list(user_ids)).groupby(list(user_ids)).indices
        inter = interactions.sort_values("event_time", kind="stable")
        times, items = _ns(inter["event_time"]), _index(inter["item_id"].astype(str).tolist(), self._items)
        for uid, rows in inter.groupby("user_id", sort=False).indices.items():
            q = queries.get(uid)
            if q is None:
                continue
            padded = np.concatenate([np.zeros(n_recent, np.int64), items[rows]])
            pos = np.searchsorted(times[rows], as_of[q], side="left")  # the user's rows before each query
            out[q] = padded[pos[:, None] + np.arange(n_recent)]  # = items[pos - n_recent : pos], 0 before the start
        return out

    def _dense(self, user_ids: Sequence[str], user_features: pd.DataFrame | None) -> np.ndarray:
        cols = self.vocab["dense_columns"]
        if not cols or user_features is None:
            return np.zeros((len(user_ids), len(cols)), dtype=np.float32)  # the training mean
        frame = user_features.drop_duplicates("user_id", keep="last").set_index("user_id")
        raw = frame.reindex(list(user_ids))[cols].to_numpy(dtype=np.float64)
        z = (raw - np.asarray(self.vocab["dense_mean"])) / np.asarray(self.vocab["dense_std"])
        return np.nan_to_num(z).astype(np.float32)

    def _item_inputs(self, items: pd.DataFrame) -> tuple[np.ndarray, ...]:
        ids, dim = items["item_id"].astype(str).tolist(), self.vocab["content_dim"]
        content = np.stack(items["content_vector"].to_numpy()).astype(np.float32) if len(items) else np.zeros((0, dim))
        if content.shape[1] != dim:
            raise ValueError(f"content vectors have {content.shape[1]} dims, the model was trained on {dim}")
        return (_index(ids, self._items), content, _index(items["category"].astype(str).tolist(), self._categories),
                _index(items["creator_id"].astype(str).tolist(), self._creators))

    def _tensors(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.as_tensor(np.asarray(a)).to(self.device) for a in arrays]

    # --- training -----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, interactions: pd.DataFrame, items: pd.DataFrame, config: TwoTowerConfig | None = None,
            user_features: pd.DataFrame | None = None,
            progress: Callable[[EpochStats], None] | None = None, device: str | None = None,
            history: pd.DataFrame | None = None, validate: Callable[[TwoTower], float] | None = None,
            min_steps: int = 0) -> TwoTower:
        """Train on ``interactions`` (``interactions_from_events`` columns; every row a positive,
        its history the user's rows strictly before it) with item side features from ``items``
        (``items_from_events``; interacted items missing there get zero content and unknown
        category / creator). ``user_features``: optional user_id + numeric columns, standardised.
        ``history``: the rows user histories are drawn from (default: ``interactions``); pass what
        serving will have at request time (the pipeline passes engagements only, as the streaming
        ``last_engaged_items`` holds), or the bag the tower learns on is not the bag it serves on.
        ``validate``: scores the model after each epoch (higher is better, e.g. recall on a later
        window); the best epoch's weights are the ones kept. ``min_steps``: on a small window an
        epoch is one or two batches, so `epochs` alone would be a handful of optimizer steps; training
        runs more epochs until it has taken this many (with ``validate``, extra epochs cannot overfit
        the result)."""
        cfg = config or TwoTowerConfig()
        inter = interactions.sort_values("event_time", kind="stable").reset_index(drop=True)
        if inter.empty:
            raise ValueError("no interactions to train on")
        seen = items[items["item_id"].isin(set(inter["item_id"]))]
        dense_cols = [] if user_features is None else [c for c in user_features.columns if c != "user_id"]
        dense = user_features[dense_cols].to_numpy(dtype=np.float64) if dense_cols else np.zeros((0, 0))
        vocab = {
            "users": sorted(inter["user_id"].unique()), "items": sorted(inter["item_id"].unique()),
            "categories": sorted(seen["category"].astype(str).unique()),
            "creators": sorted(seen["creator_id"].astype(str).unique()),
            "content_dim": int(len(items["content_vector"].iloc[0])) if len(items) else 0,
            "dense_columns": dense_cols, "dense_mean": dense.mean(0).tolist() if dense_cols else [],
            "dense_std": (dense.std(0) + 1e-6).tolist() if dense_cols else [],
        }
        model = cls(cfg, vocab, device)
        # Two CPU threads accumulating one embedding's gradient may add in either order; the
        # deterministic kernels fix the order (process-wide, so only for the duration of training).
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic or model.device == "cpu")
        try:
            past = inter if history is None else history.sort_values("event_time", kind="stable")
            model._train(inter, items, user_features, progress, past, validate, min_steps)
        finally:
            torch.use_deterministic_algorithms(deterministic)
        return model

    def _train(self, inter: pd.DataFrame, items: pd.DataFrame, user_features: pd.DataFrame | None,
               progress: Callable[[EpochStats], None] | None, past: pd.DataFrame,
               validate: Callable[[TwoTower], float] | None = None, min_steps: int = 0) -> None:
        cfg, n = self.config, len(inter)
        users = inter["user_id"].tolist()
        item = _index(inter["item_id"].tolist(), self._items)
        hist = self._histories(users, _ns(inter["event_time"]), past)
        hist[hist == item[:, None]] = 0  # an engagement after its click must not teach "repeat the last item"
        catalog = pd.DataFrame({"item_id": self.vocab["items"]}).merge(
            items.drop_duplicates("item_id", keep="last"), on="item_id", how="left")
        catalog["content_vector"] = [v if isinstance(v, np.ndarray) else np.zeros(self.vocab["content_dim"], np.float32)
                                     for v in catalog["content_vector"]]
        catalog[["category", "creator_id"]] = catalog[["category", "creator_id"]].fillna("")
        _, content, cat, creator = self._item_inputs(catalog)
        for buffer, values in ((self.net.item_content, content), (self.net.item_category, cat),
                               (self.net.item_creator, creator)):
            buffer[1:] = torch.as_tensor(values).to(buffer.device)
        counts = np.bincount(item, minlength=len(self._items) + 1).astype(np.float64)
        log_q = np.log(np.maximum(counts, 1.0) / n)
        U, B, H, D, I, W, LQ = self._tensors(
            self._user_ids(users), self._user_ids(users, known=False), hist, self._dense(users, user_features),
            item, inter["weight"].to_numpy(np.float32), log_q.astype(np.float32))
        gen = torch.Generator().manual_seed(cfg.seed)
        cuda = self.device.startswith("cuda")
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda or None)
        epochs = max(cfg.epochs, math.ceil(min_steps / math.ceil(n / cfg.batch_size)))
        best: tuple[float, int, dict] | None = None  # (validation score, epoch, weights)
        self.net.train()
        for epoch in range(1, epochs + 1):
            started = time.monotonic()
            # The epoch's shuffle and id-dropout draws are made up front on the CPU generator, in the
            # order a per-batch loop would draw them (same stream, same CPU model), and copied to the
            # device once: per-batch host-to-device copies and .item() syncs starve a GPU.
            perm = torch.randperm(n, generator=gen)
            drops = torch.cat([torch.rand(2, len(b), generator=gen) < cfg.id_dropout
                               for b in perm.split(cfg.batch_size)], 1).to(self.device)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            weight = torch.zeros((), dtype=torch.float64, device=self.device)
            for start, b in zip(range(0, n, cfg.batch_size), perm.to(self.device).split(cfg.batch_size)):
                drop_u, drop_i = drops[:, start:start + len(b)]
                ib, wb = I[b], W[b]
                u = self.net.users(torch.where(drop_u, B[b], U[b]), H[b], D[b])  # (batch, dim)
                v = self.net.known_items(ib, iid=torch.where(drop_i, 0, ib))  # (batch, dim)
                logits = u @ v.T / cfg.temperature
                if cfg.logq_correction:
                    logits = logits - LQ[ib][None, :]
                # the same item twice in a batch is not a negative of itself
                dup = (ib[None, :] == ib[:, None]) & ~torch.eye(len(b), dtype=torch.bool, device=self.device)
                logits = logits.masked_fill(dup, float("-inf"))
                loss_each = F.cross_entropy(logits, torch.arange(len(b), device=self.device), reduction="none")
                loss = (loss_each * wb).sum() / wb.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.detach().double() * wb.sum().double()
                weight += wb.sum().double()
            if validate is not None:
                self.net.eval()
                score = float(validate(self))
                self._version = None  # validation embedded with mid-training weights
                self.net.train()
                if best is None or score >= best[0]:  # a tie keeps the later, more trained epoch
                    best = (score, epoch, {k: v.detach().clone() for k, v in self.net.state_dict().items()})
            if progress:
                progress(EpochStats(epoch, epochs, float(total / weight), time.monotonic() - started,
                                    None if validate is None else score))
        if best is not None:
            self.net.load_state_dict(best[2])
            self.best_epoch, self._version = best[1], None
        self.net.eval()

    # --- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def item_embeddings(self, items: pd.DataFrame, batch_size: int = 8192) -> tuple[list[str], Embeddings]:
        """(item ids, (n, dim) Embeddings) for the rows of ``items`` (``items_from_events`` columns), in
        order. Items unseen in training embed through their content, category and creator."""
        iid, content, cat, creator = self._item_inputs(items)
        out = [self.net.items(*self._tensors(iid[s:s + batch_size], content[s:s + batch_size],
                                             cat[s:s + batch_size], creator[s:s + batch_size])).cpu().numpy()
               for s in range(0, len(iid), batch_size)]
        matrix = np.concatenate(out) if out else np.zeros((0, self.config.dim), np.float32)
        return items["item_id"].astype(str).tolist(), Embeddings(matrix, self.encoder_version)

    @torch.no_grad()
    def user_embeddings(self, user_ids: Sequence[str], as_of: datetime | Sequence[datetime] | pd.Series,
                        interactions: pd.DataFrame, user_features: pd.DataFrame | None = None) -> Embeddings:
        """(n, dim) Embeddings, one row per user id, in order. A user's history is their rows of
        ``interactions`` strictly before ``as_of`` (one time for all, or one per user); users
        unseen in training embed through their hashed bucket, history and dense features."""
        user_ids = [str(u) for u in user_ids]
        if isinstance(as_of, datetime):
            as_of = [as_of] * len(user_ids)
        U, H, D = self._tensors(self._user_ids(user_ids), self._histories(user_ids, _ns(list(as_of)), interactions),
                                self._dense(user_ids, user_features))
        out = [self.net.users(U[s:s + 4096], H[s:s + 4096], D[s:s + 4096]).cpu().numpy()
               for s in range(0, len(user_ids), 4096)]
        return Embeddings(np.concatenate(out) if out else np.zeros((0, self.config.dim)), self.encoder_version)

    # --- identity and persistence --------------------------------------------------------------------
    @property
    def encoder_version(self) -> str:
        """12 hex digits of SHA-256 over config, vocabularies and weights: equal iff same encoder."""
        if self._version is None:
            h = hashlib.sha256(json.dumps([asdict(self.config), self.vocab], sort_keys=True).encode())
            for name, tensor in sorted(self.net.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._version = h.hexdigest()[:12]
        return self._version

    def save(self, directory: Path | str) -> Path:
        """Write ``config.json``, ``vocab.json`` and ``weights.pt`` into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), path / "weights.pt")
        (path / "vocab.json").write_text(json.dumps(self.vocab))
        meta = {"config": asdict(self.config), "encoder_version": self.encoder_version}
        (path / "config.json").write_text(json.dumps(meta, indent=2))  # last: its presence marks a whole save
        return path

    @classmethod
    def load(cls, directory: Path | str, device: str | None = None) -> TwoTower:
        """The model saved in ``directory``; raises ValueError if its weights do not hash to the
        encoder_version recorded at save time."""
        path = Path(directory)
        meta = json.loads((path / "config.json").read_text())
        model = cls(TwoTowerConfig(**meta["config"]), json.loads((path / "vocab.json").read_text()), device)
        model.net.load_state_dict(torch.load(path / "weights.pt", map_location=model.device, weights_only=True))
        model.net.eval()
        if model.encoder_version != meta["encoder_version"]:
            raise ValueError(f"{path}: weights hash to {model.encoder_version}, config says {meta['encoder_version']}")
        return model

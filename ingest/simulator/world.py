"""World: the hidden ground truth of the marketplace (latent vectors, categories, popularity).

Geometry: every category has a random unit centroid. An item's latent vector is its category
centroid plus noise; a user's latent preference is a mix of one or two favourite categories plus
noise; relevance is the cosine of the two (both unit vectors), so in [-1, 1]. The content vector
an item publishes is its latent vector plus more noise: informative, never exact. Popularity is
Zipf: the rank-r item of the initial catalog has popularity r**-alpha (newcomers draw a rank).

Users and items only ever get appended (arrivals), so an index, once given, is stable.
"""

from __future__ import annotations

import numpy as np

from .config import SimConfig


class _Grow:
    """An append-only numpy array with amortized O(1) appends (capacity doubling)."""

    def __init__(self, tail: tuple[int, ...], dtype: type):
        self._a = np.zeros((16, *tail), dtype=dtype)
        self._n = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self._n + len(rows)
        if need > len(self._a):
            bigger = np.zeros((max(need, 2 * len(self._a)), *self._a.shape[1:]), dtype=self._a.dtype)
            bigger[: self._n] = self._a[: self._n]
            self._a = bigger
        self._a[self._n : need] = rows
        self._n = need

    @property
    def view(self) -> np.ndarray:
        return self._a[: self._n]

    def __len__(self) -> int:
        return self._n


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _zipf_weights(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Normalized r**-alpha weights over n things, in random order (rank is not index)."""
    w = np.arange(1, n + 1, dtype=float) ** -alpha
    return rng.permutation(w / w.sum())


class World:
    """Latent state of users, items and creators. `rng` must be used by nothing else, so the
    geometry depends only on the seed and the order of arrivals."""

    def __init__(self, cfg: SimConfig, rng: np.random.Generator):
        self.cfg = cfg
        self._rng = rng
        # The drifted tastes' favourite categories come from a stream of their own (see add_users).
        self._drift_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xD21F7]))
        d = cfg.dim
        self.centroids = _unit(rng.standard_normal((cfg.n_categories, d)))
        # Some categories are bigger than others, for items and for users alike.
        self.category_weights = _zipf_weights(cfg.n_categories, 0.7, rng)
        # Creators specialize in a home category; a few creators publish most items (power law).
        self.creator_home = rng.choice(cfg.n_categories, size=cfg.n_creators, p=self.category_weights)
        self.creator_weights = _zipf_weights(cfg.n_creators, 1.0, rng)

        self.user_vec = _Grow((d,), float)
        self.user_vec_drifted = _Grow((d,), float)  # the taste each user has after drift_at
        self.user_activity = _Grow((), float)  # relative visit rate; heavy users exist
        self.item_vec = _Grow((d,), float)
        self.item_content = _Grow((d,), float)
        self.item_category = _Grow((), np.int64)
        self.item_creator = _Grow((), np.int64)
        self.item_popularity = _Grow((), float)
        self.item_pop_z = _Grow((), float)  # standardized log popularity, used by the click model

        # Log-popularity is standardized with the initial catalog's statistics, so newcomers are
        # on the same scale and the click model's popularity weight keeps its meaning.
        log_pop = -cfg.popularity_alpha * np.log(np.arange(1, cfg.n_items + 1, dtype=float))
        self._log_pop_mean = float(log_pop.mean())
        self._log_pop_sd = float(log_pop.std()) or 1.0

        self.add_users(cfg.n_users)
        self.add_items(cfg.n_items, ranks=rng.permutation(cfg.n_items) + 1.0)

    @property
    def n_users(self) -> int:
        return len(self.user_vec)

    @property
    def n_items(self) -> int:
        return len(self.item_vec)

    def _noise(self, n: int, scale: float) -> np.ndarray:
        # Divide by sqrt(dim) so the noise has norm ~scale whatever the dimension.
        return scale * self._rng.standard_normal((n, self.cfg.dim)) / np.sqrt(self.cfg.dim)

    def _tastes(self, n: int, rng: np.random.Generator, noise: np.ndarray | None = None) -> np.ndarray:
        """n unit taste vectors: a mix of two favourite categories (drawn by size) plus personal noise
        (drawn from `rng` after the favourites unless given)."""
        fav = rng.choice(self.cfg.n_categories, size=(n, 2), p=self.category_weights)
        mix = rng.uniform(0.5, 1.0, size=(n, 1))  # weight of the first favourite category
        base = mix * self.centroids[fav[:, 0]] + (1 - mix) * self.centroids[fav[:, 1]]
        if noise is None:
            noise = self.cfg.user_spread * rng.standard_normal((n, self.cfg.dim)) / np.sqrt(self.cfg.dim)
        return _unit(base + noise)

    def add_users(self, n: int) -> range:
        """Append n users; returns their indices."""
        cfg, rng = self.cfg, self._rng
        first = self.n_users
        vec = self._tastes(n, rng)
        # Drift target: a second taste drawn like the first (usually other favourites), so the drifted
        # population is distributed as before and a policy's CTR after the drift is comparable with its
        # CTR before. Drawn even when drift is off, so configs differing only in drift share the same
        # world. The main stream draws what the first drift model drew (a category, then noise), so
        # every world keeps the geometry and traffic it had; the favourites come from `_drift_rng`.
        rng.integers(0, cfg.n_categories, size=n)
        target = self._tastes(n, self._drift_rng, self._noise(n, cfg.user_spread))
        s = cfg.drift_strength
        drifted = _unit((1 - s) * vec + s * target)
        activity = rng.lognormal(0.0, 1.0, size=n)
        self.user_vec.extend(vec)
        self.user_vec_drifted.extend(drifted)
        self.user_activity.extend(activity)
        return range(first, self.n_users)

    def add_items(self, n: int, ranks: np.ndarray | None = None) -> range:
        """Append n items; `ranks` fixes their Zipf ranks (else drawn uniformly in [1, n_items])."""
        cfg, rng = self.cfg, self._rng
        first = self.n_items
        creator = rng.choice(cfg.n_creators, size=n, p=self.creator_weights)
        own = rng.random(n) < 0.8  # mostly the creator's home category, sometimes another
        elsewhere = rng.choice(cfg.n_categories, size=n, p=self.category_weights)
        category = np.where(own, self.creator_home[creator], elsewhere)
        vec = _unit(self.centroids[category] + self._noise(n, cfg.item_spread))
        content = _unit(vec + self._noise(n, cfg.content_noise))
        if ranks is None:
            ranks = rng.uniform(1.0, float(cfg.n_items), size=n)
        log_pop = -cfg.popularity_alpha * np.log(ranks)
        self.item_vec.extend(vec)
        self.item_content.extend(content)
        self.item_category.extend(category)
        self.item_creator.extend(creator)
        self.item_popularity.extend(np.exp(log_pop))
        self.item_pop_z.extend((log_pop - self._log_pop_mean) / self._log_pop_sd)
        return range(first, self.n_items)

    def relevance(self, user: int, items: np.ndarray, drifted: bool) -> np.ndarray:
        """Cosine of the user's taste (before or after drift) with each item's latent vector."""
        taste = (self.user_vec_drifted if drifted else self.user_vec).view[user]
        return self.item_vec.view[items] @ taste

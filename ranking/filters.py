"""Candidate filters applied before ranking (pure functions: serving calls them, tests pin them)."""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd


def drop_engaged(candidates: Sequence[str] | pd.DataFrame, engaged_item_ids: Iterable[str],
                 item_col: str = "item_id") -> list[str] | pd.DataFrame:
    """Candidates without the items the user already engaged with, in their original order.

    `candidates` is a sequence of item ids (returns a new list) or a DataFrame with an
    `item_col` column (returns a new DataFrame, index kept). The inputs are not modified.
    """
    seen = set(engaged_item_ids)
    if isinstance(candidates, pd.DataFrame):
        return candidates[~candidates[item_col].isin(seen)].copy()
    return [c for c in candidates if c not in seen]

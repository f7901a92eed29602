"""The unit that flows through the serving funnel: one candidate item for one request.

Sources create candidates (retrieval score, source name), the ranker fills the calibrated heads and
the value score, the re-ranker orders them. Shared by every funnel stage so that none of them
re-invents a dict layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Candidate:
    item_id: str
    source: str  # the candidate source that found it first: "two_tower", "trending", "covisit", "fresh", ...
    retrieval_score: float = 0.0  # the source's own score (not comparable across sources)
    creator_id: str | None = None
    category: str | None = None
    embedding: list[float] | None = None  # item-tower vector, for diversity (MMR); None when unknown
    p_click: float | None = None  # calibrated heads, filled by the ranker
    p_engaged: float | None = None
    value: float | None = None
    score: float | None = None  # the value formula's result: what re-ranking orders by
    new_or_uncertain: bool = False  # eligible for the exploration slot (cold item, few impressions)
    sources: list[str] = field(default_factory=list)  # every source that proposed it (after dedupe)
    features: dict[str, float] = field(default_factory=dict)  # the exact vector the ranker scored
    explored: bool = False  # placed by the exploration slot, not by its score

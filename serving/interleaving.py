"""Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008): compare two rankers on one list.

Like picking teams in a schoolyard: in each round a coin decides which team picks first, then each
team adds its highest-ranked item not already in the list. Every shown item belongs to the team that
added it, and a click credits that team. Over many requests, the team that gets more clicks has the
better ranking; it needs far less traffic than an A/B test because both rankers face the same user at
the same moment.

Team "A" is the first list (serving passes the champion), "B" the second (the challenger).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

Team = Literal["A", "B"]


class Interleaving(NamedTuple):
    ids: list[str]  # the list to show, best first
    teams: list[Team]  # teams[i] contributed ids[i]; log it beside the impression at position i


def _a_picks_first(rng_key: str, round_no: int) -> bool:
    # A digest, not random.Random or hash(): the same key gives the same list in every process,
    # so a logged request can be replayed and its team assignment checked.
    return hashlib.blake2b(f"{rng_key}\0{round_no}".encode(), digest_size=1).digest()[0] & 1 == 1


def team_draft(list_a: Sequence[str], list_b: Sequence[str], k: int, rng_key: str) -> Interleaving:
    """Interleave two rankings into at most `k` distinct ids, deterministically for `rng_key`
    (use the request id).

    Each round, a coin from (rng_key, round) picks which team goes first; then each team in turn
    adds its highest-ranked id not yet shown. So after every complete round both teams have added
    the same number of ids, and over the coin flips each team leads half the rounds. When one team
    runs out of unshown ids, the other keeps filling so the response still has `k` items (the list
    is then no longer balanced; in serving both lists are much longer than k, so this is rare).
    Identical input lists give back that list. Duplicates within a list are skipped.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ranked = {"A": list_a, "B": list_b}
    cursor = {"A": 0, "B": 0}  # next index to look at in each list: the scan is linear overall
    ids: list[str] = []
    teams: list[Team] = []
    shown: set[str] = set()

    def pick(team: Team) -> bool:
        ranking = ranked[team]
        i = cursor[team]
        while i < len(ranking) and ranking[i] in shown:
            i += 1  # taken by the other team (or repeated in this list): the next one down
        cursor[team] = i + 1
        if i >= len(ranking):
            return False
        ids.append(ranking[i])
        teams.append(team)
        shown.add(ranking[i])
        return True

    round_no = 0
    while len(ids) < k:
        order: tuple[Team, Team] = ("A", "B") if _a_picks_first(rng_key, round_no) else ("B", "A")
        picked = False
        for team in order:
            if len(ids) == k:
                break
            picked = pick(team) or picked
        if not picked:  # both lists exhausted
            break
        round_no += 1
    return Interleaving(ids, teams)


def credit(teams: Sequence[Team], clicked_positions: Iterable[int]) -> dict[Team, int]:
    """Clicked items per team: each clicked position credits the team that contributed its item.

    Credit is per item, so repeated clicks on one position count once. A position outside the shown
    list raises ValueError: it means clicks were joined to the wrong impression list."""
    counts: dict[Team, int] = {"A": 0, "B": 0}
    for position in set(clicked_positions):
        if not 0 <= position < len(teams):
            raise ValueError(f"clicked position {position} is outside the {len(teams)} shown")
        counts[teams[position]] += 1
    return counts


def winner(counts: dict[Team, int]) -> Team | Literal["tie"]:
    """The request's outcome for aggregation: the team with more credited clicks, else "tie"
    (no clicks, or equal clicks, is a tie; the usual statistic drops ties and tests wins(A) vs wins(B)
    with a sign test)."""
    if counts["A"] == counts["B"]:
        return "tie"
    return "A" if counts["A"] > counts["B"] else "B"

"""Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008).

Interleaving shows ONE merged list made of two rankings and lets each click vote for the
ranking that contributed the clicked document. Both rankings are judged on the same query,
the same user and the same moment, so the between-query variance that drowns an A/B split
cancels out; that is why it needs far fewer queries (see docs/rollout.md for our numbers).

Team draft: like captains picking players, the team with fewer picks so far (a coin flip
on a tie) adds its highest-ranked document that is not in the merged list yet. Under a
user who clicks independently of which team placed a document, each team's expected
clicks are equal when the rankings are equally good, which is what the fairness test in
tests/test_interleaving.py checks.

Team 0 is ``a`` (production), team 1 is ``b`` (candidate) everywhere in the rollout code.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ltr.errors import RolloutError

PRODUCTION = 0
CANDIDATE = 1


def team_draft(
    a: Sequence[str], b: Sequence[str], k: int, rng: random.Random
) -> tuple[list[str], list[int]]:
    """Interleave ``a`` (production) and ``b`` (candidate) into at most ``k`` doc ids.

    Returns ``(docs, teams)``: the merged list, position 1 first, and for every position
    the team that placed it (0 = ``a``, 1 = ``b``). The list has ``min(k, |a ∪ b|)``
    entries and no duplicates; a document both rankings hold is placed once, by whichever
    team picks it first (Radlinski et al.'s rule). When one ranking has no unplaced
    document left, the other keeps picking alone until ``k`` (the paper stops there; we
    fill so the page is as long as production's would be, and those positions credit the
    team that filled them). Duplicate ids inside one ranking count once. ``rng`` makes the
    coin flips reproducible (one ``random.Random`` per request, or seeded in tests).
    """
    if k < 0:
        raise RolloutError(f"k must be >= 0, got {k}")
    lists = (_dedupe(a), _dedupe(b))
    cursor = [0, 0]
    picks = [0, 0]
    placed: set[str] = set()
    docs: list[str] = []
    teams: list[int] = []
    while len(docs) < k:
        for team in (0, 1):  # skip what the other team has already placed
            while cursor[team] < len(lists[team]) and lists[team][cursor[team]] in placed:
                cursor[team] += 1
        left = [cursor[t] < len(lists[t]) for t in (0, 1)]
        if not left[0] and not left[1]:
            break
        if not (left[0] and left[1]):  # one ranking is used up: the other fills alone
            team = 0 if left[0] else 1
        elif picks[0] == picks[1]:  # a new round: the coin says who picks first
            team = rng.randrange(2)
        else:  # the team with fewer picks picks
            team = 0 if picks[0] < picks[1] else 1
        doc = lists[team][cursor[team]]
        cursor[team] += 1
        placed.add(doc)
        docs.append(doc)
        teams.append(team)
        picks[team] += 1
    return docs, teams


def credit(teams: Sequence[int], clicked_positions: Iterable[int]) -> int:
    """Outcome of one interleaved page: +1 candidate wins, -1 production wins, 0 tie.

    ``clicked_positions`` are 0-based indexes into ``teams`` (the list ``team_draft``
    returned); a position clicked twice counts once, so a double click cannot outvote a
    click on the other team. The team with more clicked documents wins; equal counts
    (including no clicks) are a tie, which the gate leaves out of its sign test.
    """
    counts = [0, 0]
    for pos in set(clicked_positions):
        if not 0 <= pos < len(teams):
            raise RolloutError(f"clicked position {pos} is outside the {len(teams)} shown")
        team = teams[pos]
        if team not in (PRODUCTION, CANDIDATE):
            raise RolloutError(f"team must be 0 or 1, got {team!r} at position {pos}")
        counts[team] += 1
    return (counts[CANDIDATE] > counts[PRODUCTION]) - (counts[CANDIDATE] < counts[PRODUCTION])


def _dedupe(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for doc in ranking:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out

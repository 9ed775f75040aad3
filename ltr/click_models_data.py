"""Click-log sessions and their integer encoding, shared by the click models and simulators.

A session is one result page as the user saw it: the query, the documents in shown order
(position 1 first) and a click flag per document. The models never loop over sessions in
Python during fitting: ``encode_sessions`` turns a list of sessions once into padded integer
arrays (query-document pair ids, clicks, a validity mask) that every EM step reuses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from ltr.errors import LTRError, TrainingDataError

Pair = tuple[str, str]  # (query, doc)


class ClickModelError(LTRError, ValueError):
    """A click-model or simulator parameter is invalid (probability outside [0, 1], ...)."""


@dataclass(frozen=True)
class Session:
    """One shown result list with its clicks.

    ``query`` is the key judgments are grouped by (callers holding query ids pass the id);
    ``docs`` are in shown order, position 1 first; ``clicks[i]`` belongs to ``docs[i]``.
    ``ts`` is an optional timestamp (seconds since the epoch) for time-based splits.
    """

    query: str
    docs: tuple[str, ...]
    clicks: tuple[bool, ...]
    ts: float | None = None

    def __post_init__(self) -> None:
        # Normalise lists/numpy bools to the declared tuple types; frozen, hence object.__setattr__.
        docs = tuple(str(d) for d in self.docs)
        clicks = tuple(bool(c) for c in self.clicks)
        if not docs:
            raise TrainingDataError(f"session for query {self.query!r} shows no documents")
        if len(docs) != len(clicks):
            raise TrainingDataError(
                f"session for query {self.query!r}: {len(docs)} docs but {len(clicks)} click flags"
            )
        object.__setattr__(self, "docs", docs)
        object.__setattr__(self, "clicks", clicks)


@dataclass(frozen=True)
class EncodedSessions:
    """Sessions as padded arrays, shape (n_sessions, max_len); padding has mask False.

    ``pair_ids[i, r]`` indexes ``pairs`` (the distinct (query, doc) pairs, first-seen order);
    padded cells hold 0 and must be ignored through ``mask``.
    """

    pair_ids: np.ndarray  # int64 (n, L)
    clicks: np.ndarray  # bool (n, L)
    mask: np.ndarray  # bool (n, L)
    lengths: np.ndarray  # int64 (n,)
    pairs: tuple[Pair, ...]

    @property
    def n_sessions(self) -> int:
        return int(self.pair_ids.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.pair_ids.shape[1])

    def impressions(self) -> np.ndarray:
        """Impressions per pair (aligned with ``pairs``)."""
        return np.bincount(self.pair_ids[self.mask], minlength=len(self.pairs)).astype(np.int64)

    def click_counts(self) -> np.ndarray:
        """Clicks per pair (aligned with ``pairs``)."""
        return np.bincount(
            self.pair_ids[self.mask & self.clicks], minlength=len(self.pairs)
        ).astype(np.int64)


def encode_sessions(sessions: Iterable[Session]) -> EncodedSessions:
    """Encode sessions once into integer arrays; raises TrainingDataError when empty."""
    sess = list(sessions)
    if not sess:
        raise TrainingDataError("no click sessions to fit or score")
    for s in sess:
        if not isinstance(s, Session):
            raise TrainingDataError(f"expected Session objects, got {type(s).__name__}")
    n = len(sess)
    lengths = np.fromiter((len(s.docs) for s in sess), dtype=np.int64, count=n)
    max_len = int(lengths.max())
    # A dict whose missing keys get the next id: one C-level lookup per cell.
    index: defaultdict[Pair, int] = defaultdict()
    index.default_factory = index.__len__
    total = int(lengths.sum())
    flat_ids = np.fromiter(
        (index[(s.query, d)] for s in sess for d in s.docs), dtype=np.int64, count=total
    )
    flat_clicks = np.fromiter(chain.from_iterable(s.clicks for s in sess), dtype=bool, count=total)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    pair_ids = np.zeros((n, max_len), dtype=np.int64)
    clicks = np.zeros((n, max_len), dtype=bool)
    pair_ids[mask] = flat_ids  # row-major fill matches the session/position order above
    clicks[mask] = flat_clicks
    return EncodedSessions(pair_ids, clicks, mask, lengths, tuple(index))


def check_probability(value: float, what: str) -> float:
    """Return ``value`` as float or raise ClickModelError if it is not a probability."""
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ClickModelError(f"{what} must be a probability in [0, 1], got {value!r}")
    return v


def check_probabilities(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    """Vector version of ``check_probability`` (1-D float64 array, non-empty)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ClickModelError(f"{what} is empty")
    bad = ~((arr >= 0.0) & (arr <= 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ClickModelError(f"{what}[{i}] must be a probability in [0, 1], got {arr[i]!r}")
    return arr


def lookup_pairs(pairs: Sequence[Pair], values: Mapping[Pair, float], what: str) -> np.ndarray:
    """Values for ``pairs`` from a (query, doc) mapping; a missing pair is a ClickModelError."""
    out = np.empty(len(pairs), dtype=np.float64)
    for i, p in enumerate(pairs):
        try:
            out[i] = values[p]
        except KeyError:
            raise ClickModelError(f"no {what} given for (query, doc) = {p!r}") from None
    return check_probabilities(out, what) if len(out) else out

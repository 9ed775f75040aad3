"""The text analyzer shared by indexing and querying.

One Analyzer builds the BM25 indexes and analyzes queries; its settings are recorded in
the index manifest so a query is always analyzed exactly like the documents it is matched
against. Tokenization reproduces bm25s.tokenize (scikit-learn's ``\\b\\w\\w+\\b`` on
lowercased text, stopwords removed before stemming, PyStemmer), so our terms equal what
bm25s itself would produce.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from ltr.errors import unknown_name

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
STOPWORD_LISTS = ("en", "")
STEMMERS = ("english", "")
_split = re.compile(TOKEN_PATTERN).findall
_STEM_CACHE_MAX = 1_000_000  # bounds memory on huge vocabularies


def _stopwords(name: str) -> frozenset[str]:
    if name == "":
        return frozenset()
    if name in ("en", "english"):
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    raise unknown_name("stopword list", name, STOPWORD_LISTS)


class Analyzer:
    """Lowercase, split on word characters, drop stopwords, stem (all optional but the split)."""

    def __init__(self, stopwords: str = "en", stemmer: str = "english") -> None:
        self.stopwords_name = stopwords
        self.stemmer_name = stemmer
        self._stop = _stopwords(stopwords)
        if stemmer == "":
            self._stemmer = None
        elif stemmer == "english":
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")
        else:
            raise unknown_name("stemmer", stemmer, STEMMERS)
        self._stem_cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def settings(self) -> dict[str, str]:
        """What the manifest records to rebuild the same analyzer at query time."""
        return {"stopwords": self.stopwords_name, "stemmer": self.stemmer_name}

    def terms(self, text: str) -> tuple[str, ...]:
        """Analyzed terms of ``text`` in order (duplicates kept: they carry term frequency)."""
        tokens = [t for t in _split(text.lower()) if t not in self._stop]
        if self._stemmer is None or not tokens:
            return tuple(tokens)
        cache = self._stem_cache
        out = [cache.get(t) for t in tokens]  # the common case: every token seen before
        if None not in out:
            return tuple(out)  # type: ignore[arg-type]
        missing = sorted({t for t, stem in zip(tokens, out, strict=True) if stem is None})
        with self._lock:  # a PyStemmer object is not thread-safe
            stemmed = self._stemmer.stemWords(missing)
        new = dict(zip(missing, stemmed, strict=True))
        if len(cache) < _STEM_CACHE_MAX:
            cache.update(new)
        return tuple(new[t] if s is None else s for t, s in zip(tokens, out, strict=True))

    def terms_many(self, texts: Sequence[str]) -> list[tuple[str, ...]]:
        """terms() over many texts (the stem cache makes a corpus pass cheap)."""
        return [self.terms(t) for t in texts]

    def __repr__(self) -> str:
        return f"Analyzer(stopwords={self.stopwords_name!r}, stemmer={self.stemmer_name!r})"

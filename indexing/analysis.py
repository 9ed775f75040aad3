"""The text analyzer shared by indexing and querying.

One Analyzer builds the BM25 indexes and analyzes queries; its settings are recorded in
the index manifest so a query is always analyzed exactly like the documents it is matched
against. Tokenization reproduces bm25s.tokenize (scikit-learn's ``\\b\\w\\w+\\b`` on
lowercased text, stopwords removed before stemming, PyStemmer), so our terms equal what
bm25s itself would produce.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltr.errors import unknown_name

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
STOPWORD_LISTS = ("en", "")
STEMMERS = ("english", "")
_split = re.compile(TOKEN_PATTERN).findall
# ASCII text: \w is [A-Za-z0-9_], so lowercasing + splitting on everything else is one
# str.translate and a str.split (twice as fast as the regex); one-character tokens, which
# the pattern never yields, are dropped by the term map.
_ASCII_WORDS = str.maketrans(
    {i: chr(i).lower() if chr(i).isalnum() or chr(i) == "_" else " " for i in range(128)}
)
# The same map as bytes, byte -> byte for the ASCII range (identity above it): what the
# bulk tokenizer of indexing.term_streams applies to a whole buffer of ASCII texts.
ASCII_BYTE_MAP = bytes(
    ord(_ASCII_WORDS[i]) if isinstance(_ASCII_WORDS.get(i), str) else i for i in range(256)
)
STEM_CACHE_MAX = 1_000_000  # distinct tokens remembered: bounds memory on huge vocabularies


def _stopwords(name: str) -> frozenset[str]:
    if name == "":
        return frozenset()
    if name in ("en", "english"):
        return frozenset(_bm25s_stopwords_en())
    raise unknown_name("stopword list", name, STOPWORD_LISTS)


def _bm25s_stopwords_en() -> tuple[str, ...]:
    """bm25s' English list, read from its stopwords module without importing the package
    (``import bm25s`` pulls in scipy and numba: ~1 CPU-s per reindex process)."""
    loaded = sys.modules.get("bm25s.stopwords")
    if loaded is None:
        spec = importlib.util.find_spec("bm25s")  # locates the package, does not import it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("bm25s is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / "stopwords.py"
        mod_spec = importlib.util.spec_from_file_location("_ltrsearch_bm25s_stopwords", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ImportError(f"cannot load {path}")
        loaded = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(loaded)
    return tuple(loaded.STOPWORDS_EN)


class _TermMap(dict[str, str | None]):
    """Lowercased token -> its term (None for a stopword); a miss analyzes and stores it.

    ``map(term_map.__getitem__, tokens)`` then runs in C for every token seen before,
    which is nearly all of them in a corpus pass.
    """

    def __init__(self, stop: frozenset[str], stemmer: Any) -> None:
        super().__init__()
        self.stop = stop
        self.stemmer = stemmer
        self.lock = threading.Lock()  # a PyStemmer object is not thread-safe
        self.empty_stem = False  # a stem "" would be dropped by the filter(None) fast path

    def __missing__(self, token: str) -> str | None:
        if len(token) < 2 or token in self.stop:
            term = None
        elif self.stemmer is None:
            term = token
        else:
            with self.lock:
                term = self.stemmer.stemWord(token)
            if term == "":
                self.empty_stem = True
        if len(self) < STEM_CACHE_MAX:
            self[token] = term
        return term


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
        self._map = _TermMap(self._stop, self._stemmer)
        self._lookup = self._map.__getitem__

    def settings(self) -> dict[str, str]:
        """What the manifest records to rebuild the same analyzer at query time."""
        return {"stopwords": self.stopwords_name, "stemmer": self.stemmer_name}

    def terms(self, text: str) -> tuple[str, ...]:
        """Analyzed terms of ``text`` in order (duplicates kept: they carry term frequency)."""
        tokens = self.tokens(text)
        out = tuple(filter(None, map(self._lookup, tokens)))
        if self._map.empty_stem:  # some token stems to "": keep it, drop only stopwords
            return tuple(t for t in map(self._lookup, tokens) if t is not None)
        return out  # type: ignore[arg-type]

    def term(self, token: str) -> str | None:
        """The term of one lowercased token (None: dropped, a stopword or too short)."""
        return self._lookup(token)

    def tokens(self, text: str) -> list[str]:
        """The lowercased tokens of ``text`` that terms() maps, in order."""
        return text.translate(_ASCII_WORDS).split() if text.isascii() else _split(text.lower())

    def terms_many(self, texts: Sequence[str]) -> list[tuple[str, ...]]:
        """terms() over many texts (the token cache makes a corpus pass cheap)."""
        return [self.terms(t) for t in texts]

    def __repr__(self) -> str:
        return f"Analyzer(stopwords={self.stopwords_name!r}, stemmer={self.stemmer_name!r})"

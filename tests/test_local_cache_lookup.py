"""EmbeddingCache.lookup: repeated keys, misses and damaged rows, by key and by scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing.embedding_cache import EmbeddingCache, text_key


@pytest.mark.parametrize("stored", [40, 4])  # 40: by key (few wanted); 4: a full scan
def test_lookup_repeats_and_misses(tmp_path: Path, stored: int) -> None:
    texts = [f"text {i}" for i in range(stored)]
    vecs = np.arange(stored * 3, dtype=np.float32).reshape(stored, 3)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("m", texts, vecs)
        want = ["text 3", "nope", "text 1", "text 3", "text 1", "also nope", "text 3"]
        pos, got = cache.lookup("m", [text_key(t) for t in want])
        assert pos.tolist()[1] == pos.tolist()[5] == -1
        for i, t in enumerate(want):
            if pos[i] >= 0:
                np.testing.assert_array_equal(got[pos[i]], vecs[texts.index(t)])
        assert pos[0] == pos[3] == pos[6] and pos[2] == pos[4]
        assert got.shape == (2, 3)
        empty_pos, empty = cache.lookup("m", [])
        assert empty_pos.shape == (0,) and empty.shape == (0, 3)
        miss_pos, _ = cache.lookup("unknown-model", [text_key("text 1")])
        assert miss_pos.tolist() == [-1]
        # a damaged row (wrong length) is a miss
        cache._db.execute("UPDATE vectors SET vec = x'00' WHERE key = ?", (text_key("text 1"),))
        pos, got = cache.lookup("m", [text_key("text 1"), text_key("text 3")])
        assert pos.tolist() == [-1, 0] and got.shape == (1, 3)  # the one hit is row 0
        np.testing.assert_array_equal(got[pos[1]], vecs[3])

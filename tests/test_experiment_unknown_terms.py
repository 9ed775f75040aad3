"""scripts/experiment_unknown_terms.py: the vocabulary, the expansions of unknown query terms
with the real MiniLM, the two expansion features on a hand-made set, and bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from indexing.analysis import Analyzer
from indexing.documents import Document
from scripts import experiment_unknown_terms as X
from tests.test_features import make_cs

DOCS = [
    Document("d1", "Kestrel running shoes", "Light running shoes for daily runs."),
    Document("d2", "Altura trail shoes", "Grippy shoes for trail runs."),
    Document("d3", "Harbourline rain jacket", "A waterproof jacket for rainy days."),
    Document("d4", "Peakwear puffer jacket", "An insulated jacket for winter walks."),
]


def test_vocabulary_and_expansion_with_minilm(encoder: Any) -> None:
    an = Analyzer()
    vocab = X.build_vocabulary(DOCS, an, encoder, max_terms=100)
    # df >= 2 and alphabetic only, most frequent first ("jacket" and "shoe" in 2 docs each)
    assert set(vocab.terms) == {"shoe", "run", "jacket"}
    assert vocab.forms[vocab.terms.index("shoe")] == "shoes"  # the most frequent surface form
    assert vocab.vectors.shape == (3, encoder.dim)
    assert vocab.idf["shoe"] == pytest.approx(math.log(1 + (4 - 2 + 0.5) / (2 + 0.5)))
    known = {"kestrel": 2.0}
    exp = X.expansions("kestrel sneakers", known, an, encoder, vocab, k=5, min_cos=0.5)
    assert set(exp) == {"sneaker"}  # the only term the index does not know
    first, cos, _ = exp["sneaker"][0]
    assert first == "shoe" and 0.6 < cos <= 1.0
    assert X.expansions("kestrel", known, an, encoder, vocab, k=5, min_cos=0.5) == {}
    # a high threshold keeps the term and no neighbour
    assert X.expansions("sneakers", {}, an, encoder, vocab, k=5, min_cos=0.99) == {"sneaker": ()}


def test_expansion_features_on_a_hand_made_set() -> None:
    cs = make_cs(query_text="suede sneakers", query_terms=("suede", "sneaker"))
    # "sneaker" -> "heat" (cos 0.8, idf 2.0), "wing" (cos 0.6, idf 1.0)
    X.EXPANSIONS[cs.query_text] = {"sneaker": (("heat", 0.8, 2.0), ("wing", 0.6, 1.0))}
    try:
        # d1 and d3 hold "heat" (d3 "wing" too: the best cosine counts), d2 neither
        np.testing.assert_allclose(X.exp_cov(cs), [0.8, 0.0, 0.8])
        tfs = [{"heat": 2}, {}, {"heat": 1, "wing": 2}]
        lens = np.array([7.0, 3.0, 4.0])
        raw = np.zeros(3)
        for i, tf in enumerate(tfs):
            norm = X.K1 * (1 - X.B + X.B * lens[i] / lens.mean())
            for e, s, w in (("heat", 0.8, 2.0), ("wing", 0.6, 1.0)):
                if tf.get(e):
                    raw[i] += s * w * tf[e] * (X.K1 + 1) / (tf[e] + norm)
        np.testing.assert_allclose(X.exp_bm25(cs), raw / raw.max())
        assert X.exp_bm25(cs)[1] == 0.0
    finally:
        X.EXPANSIONS.clear()
    assert np.isnan(X.exp_cov(cs)).all() and np.isnan(X.exp_bm25(cs)).all()


def test_bad_input_exits_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert X.main(["--dataset", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert "no corpus.jsonl" in capsys.readouterr().err
    (tmp_path / "corpus.jsonl").write_text("")
    args = ["--dataset", str(tmp_path), "--out", str(tmp_path / "r.json"), "--variants", "nope"]
    assert X.main(args) == 2
    assert "unknown variant ['nope']" in capsys.readouterr().err

"""ltr.metrics against ir-measures (pytrec_eval, an outside implementation) on random runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltr import metrics as M
from ltr.errors import UnknownNameError


def random_case(seed: int, n_queries: int = 30) -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(seed)
    qrels: dict[str, dict[str, float]] = {}
    run_scores: dict[str, dict[str, float]] = {}
    rankings: dict[str, list[str]] = {}
    for q in range(n_queries):
        qid = f"q{q}"
        docs = [f"d{i}" for i in range(60)]
        judged = rng.choice(60, size=int(rng.integers(3, 25)), replace=False)
        grades = rng.integers(0, 5, size=judged.size).astype(float)
        grades[0] = max(grades[0], 1.0)  # at least one relevant document per query
        qrels[qid] = {docs[i]: float(g) for i, g in zip(judged, grades, strict=True)}
        retrieved = rng.choice(60, size=int(rng.integers(5, 50)), replace=False)
        scores = rng.random(retrieved.size)  # continuous: no ties
        run_scores[qid] = {docs[i]: float(s) for i, s in zip(retrieved, scores, strict=True)}
        rankings[qid] = M.rank_ids([docs[i] for i in retrieved], scores)
    return qrels, run_scores, rankings


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_metrics_match_ir_measures(seed: int) -> None:
    """Fast outside check (pytrec_eval through ir-measures); exponential gains given."""
    import ir_measures
    from ir_measures import AP, RR, R, nDCG

    qrels, run_scores, rankings = random_case(seed)
    iq = [ir_measures.Qrel(q, d, int(g)) for q, r in qrels.items() for d, g in r.items()]
    ir = [ir_measures.ScoredDoc(q, d, s) for q, r in run_scores.items() for d, s in r.items()]
    exp_gain = nDCG(gains={g: 2**g - 1 for g in range(5)})
    measures = {
        "ndcg@10": exp_gain @ 10,
        "ndcg@5": exp_gain @ 5,
        "mrr@10": RR @ 10,
        "map@100": AP @ 100,
        "recall@20": R @ 20,
    }
    ours = M.evaluate(rankings, qrels, list(measures))
    theirs: dict[object, dict[str, float]] = {m: {} for m in measures.values()}
    for m in ir_measures.iter_calc(list(measures.values()), iq, ir):
        theirs[m.measure][m.query_id] = m.value
    for name, measure in measures.items():
        for qid, v in ours[name].items():
            assert v == pytest.approx(theirs[measure].get(qid, 0.0), abs=1e-9), (name, qid)


def test_hand_computed_values() -> None:
    qrels = {"a": 3.0, "b": 1.0, "c": 0.0, "z": 2.0}  # z never retrieved
    ranking = ["c", "a", "x", "b"]
    dcg = (2**3 - 1) / math.log2(3) + (2**1 - 1) / math.log2(5)
    idcg = (2**3 - 1) + (2**2 - 1) / math.log2(3) + (2**1 - 1) / math.log2(4)
    assert M.ndcg_at_k(ranking, qrels, 10) == pytest.approx(dcg / idcg)
    assert M.mrr_at_k(ranking, qrels, 10) == 0.5
    assert M.mrr_at_k(ranking, qrels, 1) == 0.0
    assert M.recall_at_k(ranking, qrels, 4) == pytest.approx(2 / 3)
    assert M.map_at_k(ranking, qrels, 10) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert M.ndcg_at_k(["a", "z", "b"], qrels, 3) == pytest.approx(1.0)


def test_no_relevant_document_is_nan_and_skipped_by_mean() -> None:
    assert math.isnan(M.ndcg_at_k(["a"], {"a": 0.0}, 10))
    assert math.isnan(M.recall_at_k(["a"], {}, 10))
    assert M.mean({"q1": math.nan, "q2": 0.5}) == 0.5


def test_exclude_closes_up_the_ranking() -> None:
    qrels = {"q": {"src": 0.0, "good": 2.0}}
    run = {"q": ["src", "good"]}
    plain = M.evaluate(run, qrels, ["mrr@10"])["mrr@10"]["q"]
    filt = M.evaluate(run, qrels, ["mrr@10"], exclude={"q": {"src"}})["mrr@10"]["q"]
    assert plain == 0.5 and filt == 1.0


def test_rank_ids_tie_break_and_nan_last() -> None:
    assert M.rank_ids(["a", "b", "c", "d"], [1.0, float("nan"), 1.0, 2.0]) == ["d", "a", "c", "b"]


def test_bad_specs() -> None:
    with pytest.raises(UnknownNameError, match="unknown metric 'dcg'"):
        M.parse_metric("dcg@10")
    with pytest.raises(M.MetricError, match="name@k"):
        M.parse_metric("ndcg")
    with pytest.raises(M.MetricError, match=">= 1"):
        M.ndcg_at_k(["a"], {"a": 1.0}, 0)
    with pytest.raises(M.MetricError, match="shape"):
        M.rank_ids(["a"], [1.0, 2.0])


def test_fusions_and_scale() -> None:
    from ltr.errors import LTRError
    from ltr.fusion import FUSIONS, fit_linear, fusion_score, minmax
    from tests.test_features import make_cs

    cs = make_cs()
    r = fusion_score(cs, "rrf")
    np.testing.assert_allclose(r, [1 / 61 + 1 / 62, 1 / 62, 1 / 61])
    np.testing.assert_allclose(fusion_score(cs, "rrf", {"scale": 20}), 20 * r)
    np.testing.assert_allclose(minmax(np.array([1.0, np.nan, 3.0])), [0.0, 0.0, 1.0])
    lin = fusion_score(cs, "linear", {"weights": {"bm25": 1.0, "dense": 0.0}})
    np.testing.assert_allclose(lin, [1.0, 0.0, 0.0])  # BM25 missing -> 0 after min-max
    with pytest.raises(UnknownNameError, match="unknown fusion 'x'"):
        fusion_score(cs, "x")
    with pytest.raises(LTRError, match="scale"):
        fusion_score(cs, "rrf", {"scale": 0})
    assert set(FUSIONS) == {"rrf", "linear"}
    # d2 (BM25 only) relevant: the grid must put all weight on BM25
    params = fit_linear([(cs, {"d2": 3.0})], steps=4)
    assert params["weights"]["bm25"] == 1.0

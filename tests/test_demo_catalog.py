"""The demo catalog generator: determinism, counts, referential integrity, the judgment rule.

Counts are checked once at the default size (20,000 products, ~2 s); everything else runs
on a small catalog written to disk and read back with the real BEIR loader.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from indexing.analysis import Analyzer
from indexing.demo_catalog import (
    CATEGORIES,
    QUERY_MIX,
    QUERY_TYPES,
    DemoCatalog,
    DemoCatalogError,
    attribute_vocabulary,
    build_demo_catalog,
    grade,
    tokens,
    write_beir,
)
from indexing.loaders import load_beir
from scripts.make_demo_data import main

SMALL = {"n_products": 1200, "n_queries": 160, "seed": 7}
FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "manifest.json")


@pytest.fixture(scope="module")
def default_catalog() -> DemoCatalog:
    return build_demo_catalog()


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(build_demo_catalog(**SMALL), tmp_path_factory.mktemp("demo") / "small")


@pytest.fixture(scope="module")
def small(small_dir: Path) -> dict[str, object]:
    """The small catalog as written: rows by id, query rows, qrels by query."""
    corpus = {r["_id"]: r for r in map(json.loads, (small_dir / "corpus.jsonl").open())}
    queries = [json.loads(line) for line in (small_dir / "queries.jsonl").open()]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    lines = (small_dir / "qrels" / "test.tsv").read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    for line in lines[1:]:
        qid, did, score = line.split("\t")
        qrels[qid][did] = int(score)
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def _damerau1(a: str, b: str) -> bool:
    """True when b is a within one edit (insert, delete, substitute, adjacent swap)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(small_dir: Path, tmp_path: Path) -> None:
    again = write_beir(build_demo_catalog(**SMALL), tmp_path / "again")
    for name in FILES:
        assert (small_dir / name).read_bytes() == (again / name).read_bytes(), name


def test_identical_across_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    """No dependence on set/dict iteration order: two fresh interpreters, same bytes."""
    root = Path(__file__).resolve().parents[1]
    outs = []
    for hashseed in ("1", "2"):
        out = tmp_path / f"h{hashseed}"
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts.make_demo_data",
                "--out",
                str(out),
                "--products",
                "500",
                "--queries",
                "60",
                "--seed",
                "5",
            ],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
        outs.append(out)
    for name in FILES:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_different_seed_differs(small_dir: Path, tmp_path: Path) -> None:
    other = write_beir(build_demo_catalog(**{**SMALL, "seed": 8}), tmp_path / "other")
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (small_dir / name).read_bytes() != (other / name).read_bytes(), name


def test_more_queries_keep_the_same_products() -> None:
    a = build_demo_catalog(n_products=300, n_queries=40, seed=3)
    b = build_demo_catalog(n_products=300, n_queries=80, seed=3)
    assert a.products == b.products


# --------------------------------------------------------------------------- default size


def test_default_size_counts(default_catalog: DemoCatalog) -> None:
    c = default_catalog
    assert len(c.products) >= 20_000
    assert len({p.id for p in c.products}) == len(c.products)
    assert len(c.queries) >= 300
    assert 15 <= len(CATEGORIES) <= 25
    assert {p.category for p in c.products} == set(CATEGORIES)
    assert {q.type for q in c.queries} == set(QUERY_TYPES)
    best: dict[str, float] = defaultdict(float)
    for j in c.judgments:
        best[j.query_id] = max(best[j.query_id], j.grade)
    assert all(best[q.id] >= 2 for q in c.queries)
    # head queries have a few hundred positives at most: grades 2-3 are never capped
    n_pos = Counter(j.query_id for j in c.judgments if j.grade >= 2)
    assert max(n_pos.values()) <= 700


def test_synonyms_are_absent_from_the_analyzed_catalog(default_catalog: DemoCatalog) -> None:
    """After stemming: a synonym query's word matches nothing lexically, in any category."""
    analyzer = Analyzer()
    vocab: dict[str, set[str]] = defaultdict(set)
    for p in default_catalog.products:
        row = p.to_row()
        for key, value in row.items():
            if isinstance(value, str) and key != "_id":
                vocab[p.category].update(analyzer.terms(value))
    everything = set().union(*vocab.values())
    for spec in CATEGORIES.values():
        for word in spec.synonyms:
            terms = set(analyzer.terms(word))
            assert terms, word
            assert not terms & everything, (spec.name, word, terms & everything)
    syn_queries = [q for q in default_catalog.queries if q.type == "synonym"]
    assert len({q.category for q in syn_queries}) >= 5
    for q in syn_queries:
        assert q.synonym is not None and q.synonym in q.text
        assert not set(analyzer.terms(q.synonym)) & vocab[q.category]


# --------------------------------------------------------------------------- files


def test_loads_with_the_beir_loader(small_dir: Path) -> None:
    ds = load_beir(small_dir)
    assert len(ds.corpus) == SMALL["n_products"]
    assert len(ds.queries) == SMALL["n_queries"]
    assert len(ds.judged_queries()) == len(ds.queries)
    doc = ds.corpus[0]
    assert doc.category in CATEGORIES
    assert {"brand", "color", "type", "attributes", "features"} <= set(doc.extra)
    assert {"price", "review_count", "popularity"} <= set(doc.attrs)
    # products without reviews carry no rating at all (NaN downstream, never 0)
    no_reviews = [d for d in ds.corpus if d.attrs["review_count"] == 0]
    assert no_reviews and all("rating" not in d.attrs for d in no_reviews)
    assert all(1.0 <= d.attrs["rating"] <= 5.0 for d in ds.corpus if "rating" in d.attrs)
    assert all(d.attrs["price"] > 0 and 0 < d.attrs["popularity"] < 1 for d in ds.corpus)


def test_qrels_reference_known_ids_with_grades_0_to_3(small: dict) -> None:
    corpus, queries, qrels = small["corpus"], small["queries"], small["qrels"]
    qids = {q["_id"] for q in queries}
    assert set(qrels) == qids
    for qid, docs in qrels.items():
        assert set(docs) <= set(corpus), qid
        assert set(docs.values()) <= {0, 1, 2, 3}
        assert max(docs.values()) >= 2, qid


def test_query_type_mix(small: dict) -> None:
    counts = Counter(q["type"] for q in small["queries"])
    n = len(small["queries"])
    for kind in QUERY_TYPES:
        assert abs(counts[kind] - n * QUERY_MIX[kind]) <= 1, (kind, counts)
    n_cons = defaultdict(list)
    for q in small["queries"]:
        n_cons[q["type"]].append(len(q["constraints"]))
        assert q["text"] == q["text"].lower().strip() and q["text"]
    assert max(n_cons["head"]) == 1
    assert set(n_cons["torso"]) <= {2, 3}
    assert set(n_cons["tail"]) <= {4, 5}
    assert len({q["text"] for q in small["queries"]}) == n


def test_misspelled_queries_differ_from_their_source_by_one_typo(small: dict) -> None:
    miss = [q for q in small["queries"] if q["type"] == "misspelled"]
    assert miss
    for q in miss:
        src, text = q["source"].split(), q["text"].split()
        assert q["text"] != q["source"] and len(src) == len(text)
        changed = [(a, b) for a, b in zip(src, text, strict=True) if a != b]
        assert len(changed) == 1, q
        assert _damerau1(*changed[0]), q


def test_body_and_title_shape(small: dict) -> None:
    for row in small["corpus"].values():
        assert row["title"] and row["brand"] in row["title"]
        assert 40 <= len(row["text"].split()) <= 80, row["_id"]
        assert row["type"] in row["attributes"] and row["color"] in row["attributes"]


# --------------------------------------------------------------------------- judgment rule


def _has(row: dict, attr: str, values: list[str]) -> bool:
    if attr == "feature":
        return bool(set(values) & set(row["features"].split(", ")))
    return row.get(attr) in values


def test_grade3_documents_have_every_query_attribute(small: dict) -> None:
    corpus = small["corpus"]
    checked = 0
    for q in small["queries"]:
        for did, g in small["qrels"][q["_id"]].items():
            row = corpus[did]
            if g == 3:
                assert row["category"] == q["category"]
                for attr, values in q["constraints"].items():
                    assert _has(row, attr, values), (q, did, attr)
                checked += 1
            elif g == 0:
                assert row["category"] != q["category"]
            else:
                assert row["category"] == q["category"]
                if g == 2:  # type matched, at least half of the others, not all
                    others = [a for a in q["constraints"] if a != "type"]
                    hits = sum(_has(row, a, q["constraints"][a]) for a in others)
                    assert math.ceil(len(others) / 2) <= hits < len(others), (q, did)
    assert checked > 0


def test_judgments_follow_the_rule_and_positives_are_complete() -> None:
    """The vectorized judging equals the scalar rule, and no grade >= 2 product is missed."""
    cat = build_demo_catalog(n_products=600, n_queries=80, seed=11, max_grade1=5, n_negatives=4)
    judged: dict[tuple[str, str], float] = {(j.query_id, j.doc_id): j.grade for j in cat.judgments}
    for q in cat.queries:
        for p in cat.products:
            g = grade(q, p)
            key = (q.id, p.id)
            if g is not None and g >= 2:
                assert judged.get(key) == g, (q, p)
            elif key in judged:
                assert judged[key] == (0 if g is None else g), (q, p)
    per_grade = Counter((j.query_id, j.grade) for j in cat.judgments)
    assert all(per_grade[q.id, 1.0] <= 5 for q in cat.queries)
    assert all(per_grade[q.id, 0.0] == 4 for q in cat.queries)


# --------------------------------------------------------------------------- errors, script


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_products": 3},
        {"n_queries": 0},
        {"n_products": True},
        {"max_grade1": -1},
        {"n_products": 20.5},
    ],
)
def test_bad_arguments_raise_a_typed_error(kwargs: dict) -> None:
    with pytest.raises(DemoCatalogError):
        build_demo_catalog(**{"n_products": 200, "n_queries": 20, **kwargs})


def test_too_many_queries_for_a_tiny_catalog_is_a_clear_error() -> None:
    with pytest.raises(DemoCatalogError, match="distinct queries"):
        build_demo_catalog(n_products=20, n_queries=5000)


def test_write_refuses_a_file_as_output(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DemoCatalogError, match="not a directory"):
        write_beir(build_demo_catalog(n_products=100, n_queries=10), f)


def test_script_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--products", "400", "--queries", "50", "--seed", "2"]) == 0
    assert all((out / name).exists() for name in FILES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["products"] == 400 and manifest["queries"] == 50 and manifest["seed"] == 2
    assert "400 products" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "bad"), "--products", "1"]) == 2
    assert "n_products must be >=" in capsys.readouterr().err


def test_attribute_vocabulary_covers_every_attribute_and_describe_counts() -> None:
    cat = build_demo_catalog(n_products=300, n_queries=20, seed=4)
    vocab = set(attribute_vocabulary())
    for p in cat.products:
        for value in (p.category, p.type, p.brand, p.color, p.material, *p.features):
            assert set(tokens(value)) <= vocab, (p.id, value)
    line = cat.describe()
    assert line.startswith("300 products, 20 queries {")
    assert f", {len(cat.judgments)} judgments {{" in line

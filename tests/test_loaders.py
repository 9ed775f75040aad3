"""Loaders: field mapping, BEIR layout, and every malformed-input path in both error modes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from indexing.config import LoaderConfig
from indexing.documents import Document
from indexing.errors import IndexingError, LoaderError
from indexing.loaders import iter_documents, load_beir, load_documents

SKIP = LoaderConfig(on_error="skip")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


# --------------------------------------------------------------------------- happy paths


def test_jsonl_field_mapping(tmp_path: Path) -> None:
    cfg = LoaderConfig(
        id_field="sku",
        title_field="name",
        body_field="desc",
        extra_text_fields=("brand",),
        category_field="cat",
        numeric_fields=("price", "rating"),
    )
    p = _jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "sku": 17,
                "name": "Red shoe",
                "desc": "leather",
                "brand": "Acme",
                "cat": "shoes",
                "price": 49.5,
                "rating": "4",
                "ignored": "x",
            },
            {"sku": "b2", "name": "Blue hat", "price": None, "rating": ""},
        ],
    )
    res = load_documents(p, cfg)
    assert res.skipped == []
    a, b = res.documents
    assert a == Document(
        "17", "Red shoe", "leather", {"brand": "Acme"}, "shoes", {"price": 49.5, "rating": 4.0}
    )
    # Missing numeric values are absent (read as NaN downstream), never 0.
    assert b.id == "b2" and b.attrs == {} and b.extra == {} and b.category is None


def test_csv_field_mapping_quotes_and_blank_lines(tmp_path: Path) -> None:
    cfg = LoaderConfig(extra_text_fields=("brand",), numeric_fields=("price",))
    p = _write(
        tmp_path / "c.csv",
        "id,title,body,brand,price,category\n"
        'a1,"Shoe, red","multi\nline body",Acme,12.5,shoes\n'
        "\n"
        "a2,Hat,,,,\n",
    )
    res = load_documents(p, cfg)
    assert [d.id for d in res.documents] == ["a1", "a2"]
    a1, a2 = res.documents
    assert a1.title == "Shoe, red" and a1.body == "multi\nline body"
    assert a1.extra == {"brand": "Acme"} and a1.attrs == {"price": 12.5} and a1.category == "shoes"
    assert a2.attrs == {} and a2.category is None and a2.body == ""


def test_tsv_and_default_columns_may_be_absent(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.tsv", "id\ttitle\nx\tA title\n")
    (doc,) = load_documents(p, LoaderConfig()).documents
    assert doc == Document("x", "A title")


def test_beir_directory_rows(tmp_path: Path) -> None:
    _jsonl(
        tmp_path / "corpus.jsonl",
        [
            {
                "_id": "d1",
                "title": "T",
                "text": "body text",
                "category": "c1",
                "brand": "Acme",
                "price": 3,
                "score": 1.5,
                "flag": True,
                "metadata": {},
                "tags": None,
            },
            {"_id": "d2", "text": "only text"},
        ],
    )
    res = load_documents(tmp_path, LoaderConfig())
    d1, d2 = res.documents
    assert d1 == Document(
        "d1", "T", "body text", {"brand": "Acme"}, "c1", {"price": 3.0, "score": 1.5}
    )
    assert d2 == Document("d2", "", "only text")


def test_iter_documents_streams(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "c.jsonl", [{"id": str(i)} for i in range(5)])
    it = iter_documents(p, LoaderConfig())
    assert next(it).id == "0"  # a generator: the rest is not read yet
    assert [d.id for d in it] == ["1", "2", "3", "4"]


# --------------------------------------------------------------------------- line errors

DEEP = "[" * 5000 + "]" * 5000  # deeper than json.loads can recurse

LINE_ERRORS = [
    ("bad_json", '{"id": "a"}\n{"id": "b",\n', 2, "invalid JSON"),
    # valid JSON but not Unicode: nothing downstream (BM25, the doc store) can encode it
    ("lone_surrogate", '{"id": "a"}\n{"id": "b", "title": "x \\ud800 y"}\n', 2, "lone surrogate"),
    ("lone_low_surrogate_key", '{"id": "a"}\n{"id": "b", "\\udfff": "x"}\n', 2, "lone surrogate"),
    ("nested_5000_deep", '{"id": "a"}\n{"id": "b", "x": ' + DEEP + "}\n", 2, "nested too deep"),
    ("int_too_long", '{"id": "a"}\n{"id": ' + "7" * 5000 + "}\n", 2, "invalid JSON"),
    (
        "int_beyond_float",
        '{"id": "a", "price": 1}\n{"id": "b", "price": 1' + "0" * 400 + "}\n",
        2,
        "not a finite number",
    ),
    ("not_object", '{"id": "a"}\n[1, 2]\n', 2, "expected a JSON object"),
    ("missing_id", '{"id": "a"}\n{"title": "no id"}\n', 2, "missing id"),
    ("empty_id", '{"id": "a"}\n{"id": "  "}\n', 2, "missing id"),
    (
        "duplicate_id",
        '{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n',
        3,
        "duplicate id 'a' (first on line 1)",
    ),
    (
        "non_numeric",
        '{"id": "a", "price": 1}\n{"id": "b", "price": "cheap"}\n',
        2,
        "field 'price': not a number: 'cheap'",
    ),
    ("bool_numeric", '{"id": "a", "price": 1}\n{"id": "b", "price": true}\n', 2, "got a boolean"),
    (
        "infinite",
        '{"id": "a", "price": 1}\n{"id": "b", "price": "inf"}\n',
        2,
        "not a finite number",
    ),
    (
        "text_object",
        '{"id": "a", "price": 1}\n{"id": "b", "title": {"x": 1}}\n',
        2,
        "field 'title': expected text",
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "line", "reason"), LINE_ERRORS, ids=[e[0] for e in LINE_ERRORS]
)
def test_jsonl_line_errors_fail(
    tmp_path: Path, name: str, text: str, line: int, reason: str
) -> None:
    p = _write(tmp_path / f"{name}.jsonl", text)
    numeric = ("price",) if "price" in text else ()
    with pytest.raises(LoaderError) as ei:
        load_documents(p, LoaderConfig(numeric_fields=numeric))
    err = ei.value
    assert isinstance(err, IndexingError)
    assert err.path == str(p) and err.line == line and reason in err.reason
    assert str(err).startswith(f"{p}:{line}: ")


@pytest.mark.parametrize(
    ("name", "text", "line", "reason"), LINE_ERRORS, ids=[e[0] for e in LINE_ERRORS]
)
def test_jsonl_line_errors_skip(
    tmp_path: Path, name: str, text: str, line: int, reason: str
) -> None:
    p = _write(tmp_path / f"{name}.jsonl", text)
    numeric = ("price",) if "price" in text else ()
    res = load_documents(p, LoaderConfig(numeric_fields=numeric, on_error="skip"))
    assert [e.line for e in res.skipped] == [line]
    assert reason in res.skipped[0].reason
    n_lines = text.count("\n")
    assert len(res.documents) == n_lines - 1  # every other line was kept


def test_invalid_utf8_line(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n{"id": "c"}\n')
    with pytest.raises(LoaderError, match=r":2: not valid UTF-8"):
        load_documents(p, LoaderConfig())
    res = load_documents(p, SKIP)
    assert [d.id for d in res.documents] == ["a", "c"] and res.skipped[0].line == 2


def test_a_surrogate_pair_is_valid_unicode(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.jsonl", '{"id": "a", "title": "smile \\ud83d\\ude00"}\n')
    assert load_documents(p, LoaderConfig()).documents[0].title == "smile \U0001f600"


def test_csv_line_not_utf8_follows_on_error(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"  # line 3 holds an encoded surrogate (ED A0 80), line 4 a 0xFF
    p.write_bytes(b"id,title\na,A\nb,x \xed\xa0\x80 y\nc,\xff\nd,D\n")
    with pytest.raises(LoaderError, match=r"c\.csv:3: not valid UTF-8"):
        load_documents(p, LoaderConfig())
    res = load_documents(p, SKIP)
    assert [d.id for d in res.documents] == ["a", "d"]
    assert [(e.line, e.reason) for e in res.skipped] == [
        (3, "not valid UTF-8"),
        (4, "not valid UTF-8"),
    ]
    p.write_bytes(b"id,t\xffitle\na,A\n")  # a bad header is fatal in both modes
    for cfg in (LoaderConfig(), SKIP):
        with pytest.raises(LoaderError, match=r"c\.csv:1: not valid UTF-8"):
            load_documents(p, cfg)


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,title\na,A\nb,B,extra\nc\nd,D\n")
    with pytest.raises(LoaderError, match=r"c\.csv:3: expected 2 columns, got 3"):
        load_documents(p, LoaderConfig())
    res = load_documents(p, SKIP)
    assert [d.id for d in res.documents] == ["a", "d"]
    assert [(e.line, e.reason) for e in res.skipped] == [
        (3, "expected 2 columns, got 3"),
        (4, "expected 2 columns, got 1"),
    ]


def test_csv_non_numeric_and_duplicate(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,price\na,1\nb,abc\na,2\n")
    cfg = LoaderConfig(numeric_fields=("price",), on_error="skip")
    res = load_documents(p, cfg)
    assert [d.id for d in res.documents] == ["a"]
    assert [e.line for e in res.skipped] == [3, 4]
    assert "not a number: 'abc'" in res.skipped[0].reason
    assert "duplicate id 'a'" in res.skipped[1].reason


def test_csv_broken_quote_is_fatal(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", 'id,title\na,"open quote\n')
    for cfg in (LoaderConfig(), SKIP):
        with pytest.raises(LoaderError, match="bad CSV"):
            load_documents(p, cfg)


# --------------------------------------------------------------------------- file errors


def test_unknown_mapped_csv_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,title,price\na,A,1\n")
    for cfg in (
        LoaderConfig(numeric_fields=("prise",)),
        LoaderConfig(id_field="sku", on_error="skip"),
    ):
        with pytest.raises(LoaderError) as ei:
            load_documents(p, cfg)
        assert ei.value.line == 1 and "not in header" in ei.value.reason


def test_unknown_mapped_jsonl_field(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "price": 1}])
    with pytest.raises(LoaderError, match="'prise' never appear"):
        load_documents(p, LoaderConfig(numeric_fields=("prise",)))
    with pytest.raises(LoaderError, match="'name' never appear"):
        load_documents(p, LoaderConfig(title_field="name", on_error="skip"))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv"])
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_empty_file(tmp_path: Path, name: str, on_error: str) -> None:
    p = _write(tmp_path / name, "")
    with pytest.raises(LoaderError, match="empty file"):
        load_documents(p, LoaderConfig(on_error=on_error))  # type: ignore[arg-type]


def test_header_only_csv_and_blank_jsonl_are_empty(tmp_path: Path) -> None:
    for p in (_write(tmp_path / "h.csv", "id,title\n"), _write(tmp_path / "b.jsonl", "\n  \n")):
        with pytest.raises(LoaderError, match="empty file"):
            load_documents(p, LoaderConfig())


def test_all_lines_skipped_is_reported_not_silent(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.jsonl", "nope\n{}\n")
    res = load_documents(p, SKIP)
    assert res.documents == [] and [e.line for e in res.skipped] == [1, 2]


def test_missing_file_and_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="file not found") as ei:
        load_documents(tmp_path / "nope.jsonl", LoaderConfig())
    assert ei.value.line is None and ei.value.path.endswith("nope.jsonl")
    with pytest.raises(LoaderError, match=r"no corpus\.jsonl"):
        load_documents(tmp_path, LoaderConfig())
    with pytest.raises(LoaderError, match=r"unsupported file type '\.xml'"):
        load_documents(_write(tmp_path / "c.xml", "<x/>"), LoaderConfig())


def test_skip_mode_needs_a_reporter(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "c.jsonl", [{"id": "a"}])
    with pytest.raises(ValueError, match="on_skip"):
        list(iter_documents(p, SKIP))


# --------------------------------------------------------------------------- BEIR


def _beir(root: Path, qrels: str, split: str = "test") -> Path:
    root.mkdir(exist_ok=True)
    _jsonl(root / "corpus.jsonl", [{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}])
    _jsonl(
        root / "queries.jsonl", [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]
    )
    (root / "qrels").mkdir(exist_ok=True)
    _write(root / "qrels" / f"{split}.tsv", qrels)
    return root


def test_beir_qrels_header_optional_and_split(tmp_path: Path) -> None:
    with_header = load_beir(_beir(tmp_path / "a", "query-id\tcorpus-id\tscore\nq1\td1\t2\n"))
    no_header = load_beir(_beir(tmp_path / "b", "q1\td1\t2\nq1\td2\t0\n", split="dev"), split="dev")
    assert [(j.query_id, j.doc_id, j.grade) for j in with_header.qrels] == [("q1", "d1", 2.0)]
    assert len(no_header.qrels) == 2 and len(no_header.corpus) == 2
    assert [q.id for q in no_header.queries] == ["q1", "q2"]
    assert [q.id for q in no_header.judged_queries()] == ["q1"]
    with pytest.raises(LoaderError, match="file not found"):
        load_beir(tmp_path / "b")  # no qrels/test.tsv there


@pytest.mark.parametrize(
    ("qrels", "line", "reason"),
    [
        ("q1\td1\t2\nq1\td2\n", 2, "expected 3 tab-separated columns, got 2"),
        ("q1\td1\t2\nq1\td2\thigh\n", 2, "score is not a number"),
        ("q1\td1\t2\nq9\td2\t1\n", 2, "unknown query id 'q9'"),
        ("q1\td1\t2\nq1\td9\t1\n", 2, "unknown corpus id 'd9'"),
        ("q1\td1\t2\nq1\td1\t1\n", 2, "duplicate judgment"),
    ],
)
def test_beir_qrels_errors(tmp_path: Path, qrels: str, line: int, reason: str) -> None:
    root = _beir(tmp_path, qrels)
    with pytest.raises(LoaderError) as ei:
        load_beir(root)
    assert ei.value.line == line and reason in ei.value.reason
    assert ei.value.path.endswith("test.tsv")
    ds = load_beir(root, on_error="skip")
    assert len(ds.qrels) == 1 and [e.line for e in ds.skipped] == [line]


def test_beir_query_errors(tmp_path: Path) -> None:
    root = _beir(tmp_path, "q1\td1\t1\n")
    _write(
        root / "queries.jsonl",
        '{"_id": "q1", "text": "x"}\n{"_id": "q1", "text": "y"}\n{"text": "z"}\n',
    )
    with pytest.raises(LoaderError, match=r"queries\.jsonl:2: duplicate query id"):
        load_beir(root)
    ds = load_beir(root, on_error="skip")
    assert [q.text for q in ds.queries] == ["x"] and [e.line for e in ds.skipped] == [2, 3]
    _write(root / "queries.jsonl", "")
    with pytest.raises(LoaderError, match="no queries"):
        load_beir(root)


def test_beir_hostile_lines_follow_on_error(tmp_path: Path) -> None:
    """A lone surrogate, nesting 5,000 deep and bytes that are not UTF-8, in the corpus, the
    queries and the qrels of a BEIR directory: a LoaderError naming file and line, or
    skipped and reported."""
    root = _beir(tmp_path, "q1\td1\t1\n")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n'
        '{"_id": "d3", "metadata": ' + DEEP + "}\n"
    )
    with pytest.raises(LoaderError, match=r"corpus\.jsonl:3: invalid JSON: nested too deep"):
        load_beir(root)
    ds = load_beir(root, on_error="skip")
    assert [d.id for d in ds.corpus] == ["d1", "d2"] and [e.line for e in ds.skipped] == [3]
    _write(
        root / "queries.jsonl",
        '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "\\ud800"}\n',
    )
    (root / "qrels" / "test.tsv").write_bytes(b"q1\td1\t1\nq1\td\xed\xa0\x802\t1\n")
    ds = load_beir(root, on_error="skip")
    assert [q.id for q in ds.queries] == ["q1"] and len(ds.qrels) == 1
    assert [(Path(e.path).name, e.line) for e in ds.skipped] == [
        ("corpus.jsonl", 3),
        ("queries.jsonl", 2),
        ("test.tsv", 2),
    ]
    assert "not valid UTF-8" in ds.skipped[-1].reason
    corpus.write_text('{"_id": "d1", "text": "a"}\n')
    with pytest.raises(LoaderError, match=r"queries\.jsonl:2: not valid Unicode"):
        load_beir(root)
    _write(root / "queries.jsonl", '{"_id": "q1", "text": "first"}\n')
    with pytest.raises(LoaderError, match=r"test\.tsv:2: not valid UTF-8"):
        load_beir(root)


def test_cranfield(cranfield_dir: Path) -> None:
    ds = load_beir(cranfield_dir)
    assert (len(ds.corpus), len(ds.queries), len(ds.qrels)) == (1400, 225, 1837)
    assert ds.skipped == []
    grades = {j.grade for j in ds.qrels}
    assert grades <= {0.0, 1.0, 2.0, 3.0, 4.0} and not any(math.isnan(g) for g in grades)
    d1 = ds.corpus[0]
    assert d1.id == "1" and d1.title.startswith("experimental investigation")
    assert d1.body.startswith(d1.title.rstrip(" ."))
    assert ds.queries[0].id == "1" and ds.queries[0].text.startswith("what similarity laws")
    # load_documents on the directory, or on its corpus.jsonl, gives the same corpus.
    assert load_documents(cranfield_dir, LoaderConfig()).documents == ds.corpus
    assert load_documents(cranfield_dir / "corpus.jsonl", LoaderConfig()).documents == ds.corpus

"""Read catalogs (JSONL, CSV, BEIR directories) into Documents, line by line.

Every malformed line becomes a LoaderError naming the file and line (bytes that are not
UTF-8, text that is not valid Unicode such as a lone ``\\ud800`` escape, JSON nested
deeper than the parser allows or with an integer too long to convert included). With
``cfg.on_error == "fail"`` the first one is raised; with ``"skip"`` the line is dropped and
the error is returned in ``LoadResult.skipped`` so nothing is lost silently. Problems that
concern the whole file (missing file, no header, a mapped column the file does not have,
no data at all) are raised in both modes: there is no line to skip.

Mapping rules for ``.jsonl`` / ``.csv`` (see LoaderConfig): ``id_field`` is required on
every row; title, body, ``extra_text_fields`` and ``category_field`` are text; the
``numeric_fields`` become ``Document.attrs`` (floats). A missing or empty numeric value is
left out of ``attrs`` (it reads as NaN downstream, never 0); a value that is not a number
is an error. A field named in the config that the file never has is an error, except the
default ``title`` / ``body`` / ``category`` columns, which a catalog may simply lack.

BEIR corpus rows (a directory with corpus.jsonl, or a file named corpus.jsonl): ``_id``,
``title``, ``text`` (-> body), optional ``category``; other
string keys become ``extra`` text fields and numeric keys (int/float, not bool) become
``attrs``; other values (null, bool, lists, objects such as BEIR's ``metadata``) are ignored.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from indexing.config import LoaderConfig
from indexing.documents import Document
from indexing.errors import LoaderError
from ltr.types import Judgment, Query

__all__ = [
    "BeirDataset",
    "LoadResult",
    "iter_documents",
    "load_beir",
    "load_documents",
]

OnError = Literal["fail", "skip"]
_DEFAULTS = LoaderConfig()


@dataclass(frozen=True)
class LoadResult:
    """The documents read and every line that was skipped (empty with on_error="fail")."""

    documents: list[Document]
    skipped: list[LoaderError] = field(default_factory=list)


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR collection: corpus, queries (file order) and one split's judgments."""

    corpus: list[Document]
    queries: list[Query]
    qrels: list[Judgment]
    skipped: list[LoaderError] = field(default_factory=list)

    def judged_queries(self) -> list[Query]:
        """Queries that have at least one judgment in this split (BEIR evaluates only these)."""
        judged = {j.query_id for j in self.qrels}
        return [q for q in self.queries if q.id in judged]


class _Skip(Exception):
    """A line-level problem; converted to LoaderError with file and line by the caller."""


# --------------------------------------------------------------------------- values


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise _Skip(f"field {name!r}: expected text, got a boolean")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    raise _Skip(f"field {name!r}: expected text, got {type(value).__name__}")


def _number(value: Any, name: str) -> float | None:
    """A finite float, or None when missing (null, "", NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Skip(f"field {name!r}: expected a number, got a boolean")
    if isinstance(value, int | float):
        try:
            x = float(value)
        except OverflowError:  # an integer beyond the float range
            raise _Skip(f"field {name!r}: not a finite number ({len(str(value))} digits)") from None
    elif isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        try:
            x = float(s)
        except ValueError:
            raise _Skip(f"field {name!r}: not a number: {value!r}") from None
    else:
        raise _Skip(f"field {name!r}: expected a number, got {type(value).__name__}")
    if math.isnan(x):
        return None
    if math.isinf(x):
        raise _Skip(f"field {name!r}: not a finite number: {value!r}")
    return x


def _doc_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        if value is None:
            raise _Skip(f"missing id (field {name!r})")
        raise _Skip(f"id field {name!r}: expected a string or integer, got {type(value).__name__}")
    s = str(value).strip()
    if not s:
        raise _Skip(f"missing id (field {name!r} is empty)")
    return s


def _mapped_row(row: Mapping[str, Any], cfg: LoaderConfig) -> Document:
    """One JSONL object or CSV row -> Document, with the configured field mapping."""
    doc_id = _doc_id(row.get(cfg.id_field), cfg.id_field)
    title = _text(row.get(cfg.title_field), cfg.title_field) if cfg.title_field else ""
    body = _text(row.get(cfg.body_field), cfg.body_field) if cfg.body_field else ""
    extra = {}
    for name in cfg.extra_text_fields:
        if row.get(name) is not None:
            extra[name] = _text(row[name], name)
    category = None
    if cfg.category_field:
        category = _text(row.get(cfg.category_field), cfg.category_field) or None
    attrs = {}
    for name in cfg.numeric_fields:
        x = _number(row.get(name), name)
        if x is not None:
            attrs[name] = x
    return Document(doc_id, title, body, extra, category, attrs)


def _beir_row(row: Mapping[str, Any]) -> Document:
    doc_id = _doc_id(row.get("_id"), "_id")
    extra: dict[str, str] = {}
    attrs: dict[str, float] = {}
    category = None
    for key, value in row.items():
        if key in ("_id", "title", "text"):
            continue
        if key == "category":
            category = _text(value, key) or None
        elif isinstance(value, str):
            extra[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            x = _number(value, key)
            if x is not None:
                attrs[key] = x
    return Document(
        doc_id,
        _text(row.get("title"), "title"),
        _text(row.get("text"), "text"),
        extra,
        category,
        attrs,
    )


def _required_fields(cfg: LoaderConfig) -> list[str]:
    """Mapped fields the file must have: all explicit ones (defaults may be absent)."""
    out = [cfg.id_field]
    for name, default in (
        (cfg.title_field, _DEFAULTS.title_field),
        (cfg.body_field, _DEFAULTS.body_field),
        (cfg.category_field, _DEFAULTS.category_field),
    ):
        if name and name != default:
            out.append(name)
    out.extend(cfg.extra_text_fields)
    out.extend(cfg.numeric_fields)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- readers


# a JSON \u escape of a UTF-16 surrogate: the cheap test before the exact one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_json_line(text: str) -> Any:
    """json.loads of one line; _Skip for invalid JSON, nesting too deep, integers too long
    and lone surrogates (valid JSON, but not Unicode: nothing downstream can encode it)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Skip(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise _Skip("invalid JSON: nested too deep") from None
    except ValueError as e:  # e.g. an integer literal over sys.get_int_max_str_digits()
        raise _Skip(f"invalid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Skip(
                f"not valid Unicode: a lone surrogate {e.object[e.start : e.end]!a}"
            ) from None
    return obj


def _check_file(path: Path) -> None:
    if not path.exists():
        raise LoaderError(str(path), None, "file not found")
    if not path.is_file():
        raise LoaderError(str(path), None, "not a regular file")


def _text_lines(path: Path) -> Iterator[tuple[int, str | _Skip]]:
    """(line number, text or _Skip when not UTF-8) for each non-blank line; streams."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield lineno, _Skip(f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if text.strip():
                yield lineno, text


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or _Skip) for each non-blank line; streams the file."""
    for lineno, text in _text_lines(path):
        if isinstance(text, _Skip):
            yield lineno, text
            continue
        try:
            obj = _parse_json_line(text)
        except _Skip as e:
            yield lineno, e
            continue
        if not isinstance(obj, dict):
            yield lineno, _Skip(f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield lineno, obj


def _iter_jsonl(
    path: Path, convert: Callable[[Mapping[str, Any]], Document], required: list[str]
) -> Iterator[tuple[int, Document | _Skip]]:
    seen: set[str] = set()
    any_doc = False
    for lineno, obj in _json_lines(path):
        if isinstance(obj, _Skip):
            yield lineno, obj
            continue
        seen.update(k for k in required if k in obj)
        try:
            doc = convert(obj)
        except _Skip as e:
            yield lineno, e
            continue
        any_doc = True
        yield lineno, doc
    missing = [k for k in required if k not in seen]
    if any_doc and missing:  # without any good row the skipped lines already explain
        raise LoaderError(
            str(path),
            None,
            f"mapped field(s) {', '.join(map(repr, missing))} never appear in the file",
        )


def _iter_csv(path: Path, cfg: LoaderConfig) -> Iterator[tuple[int, Document | _Skip]]:
    # bytes that are not UTF-8 become lone surrogates (surrogateescape), so a bad line is
    # found and skipped by itself instead of ending the read
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=cfg.csv_delimiter, strict=True)
        header = next(reader, None)
        if header is None:
            raise LoaderError(str(path), None, "empty file (no header line)")
        if any(_SURROGATE.search(h) for h in header):
            raise LoaderError(str(path), 1, "not valid UTF-8 (in the header line)")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise LoaderError(str(path), 1, f"duplicate column(s) {', '.join(dupes)}")
        unknown = [k for k in _required_fields(cfg) if k not in header]
        if unknown:
            raise LoaderError(
                str(path),
                1,
                f"mapped column(s) {', '.join(map(repr, unknown))} not in header "
                f"(columns: {', '.join(header)})",
            )
        width = len(header)
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                # The reader cannot resynchronize after a broken quote: fatal in both modes.
                raise LoaderError(str(path), reader.line_num, f"bad CSV: {e}") from None
            lineno = reader.line_num
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            if any(_SURROGATE.search(v) for v in values):
                yield lineno, _Skip("not valid UTF-8")
                continue
            if len(values) != width:
                yield lineno, _Skip(f"expected {width} columns, got {len(values)}")
                continue
            try:
                yield lineno, _mapped_row(dict(zip(header, values, strict=True)), cfg)
            except _Skip as e:
                yield lineno, e


def _rows(path: Path, cfg: LoaderConfig) -> Iterator[tuple[int, Document | _Skip]]:
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if not corpus.is_file():
            raise LoaderError(str(path), None, "directory has no corpus.jsonl (not a BEIR dataset)")
        return _iter_jsonl(corpus, _beir_row, ["_id"])
    _check_file(path)
    suffix = path.suffix.lower()
    if path.name == "corpus.jsonl":  # a BEIR corpus given as a file: BEIR rows, not the mapping
        return _iter_jsonl(path, _beir_row, ["_id"])
    if suffix in (".jsonl", ".ndjson"):
        return _iter_jsonl(path, lambda row: _mapped_row(row, cfg), _required_fields(cfg))
    if suffix in (".csv", ".tsv"):
        if suffix == ".tsv" and cfg.csv_delimiter == ",":
            from dataclasses import replace

            cfg = replace(cfg, csv_delimiter="\t")
        return _iter_csv(path, cfg)
    raise LoaderError(
        str(path), None, f"unsupported file type {suffix!r}; use .jsonl, .csv or a BEIR dir"
    )


def iter_documents(
    path: str | Path,
    cfg: LoaderConfig | None = None,
    on_skip: Callable[[LoaderError], None] | None = None,
) -> Iterator[Document]:
    """Stream Documents from a file or BEIR directory without holding them all in memory.

    Only the set of ids seen is kept (duplicates are errors). Skipped lines go to
    ``on_skip`` (required when cfg.on_error == "skip", so skipping is never silent).
    """
    cfg = cfg or LoaderConfig()
    cfg.validate()
    if cfg.on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {cfg.on_error!r}")
    if cfg.on_error == "skip" and on_skip is None:
        raise ValueError("on_error='skip' needs an on_skip callback to report skipped lines")
    p = Path(path)
    src = p / "corpus.jsonl" if p.is_dir() else p
    first_line: dict[str, int] = {}
    n_rows = 0
    for lineno, item in _rows(p, cfg):
        n_rows += 1
        if isinstance(item, Document):
            prev = first_line.get(item.id)
            if prev is None:
                first_line[item.id] = lineno
                yield item
                continue
            item = _Skip(f"duplicate id {item.id!r} (first on line {prev})")
        err = LoaderError(str(src), lineno, str(item))
        if cfg.on_error == "fail":
            raise err
        if on_skip is not None:  # always set in "skip" mode (checked above)
            on_skip(err)
    if n_rows == 0:
        raise LoaderError(str(src), None, "empty file (no documents)")


def load_documents(path: str | Path, cfg: LoaderConfig | None = None) -> LoadResult:
    """Load a .jsonl / .csv catalog or a BEIR directory (one with corpus.jsonl)."""
    skipped: list[LoaderError] = []
    docs = list(iter_documents(path, cfg, skipped.append))
    return LoadResult(docs, skipped)


# --------------------------------------------------------------------------- BEIR


def _load_queries(path: Path, on_error: OnError, skipped: list[LoaderError]) -> list[Query]:
    _check_file(path)
    out: list[Query] = []
    seen: dict[str, int] = {}
    n = 0
    for lineno, obj in _json_lines(path):
        n += 1
        try:
            if isinstance(obj, _Skip):
                raise obj
            qid = _doc_id(obj.get("_id"), "_id")
            if qid in seen:
                raise _Skip(f"duplicate query id {qid!r} (first on line {seen[qid]})")
            text = _text(obj.get("text"), "text")
            if not text.strip():
                raise _Skip(f"query {qid!r} has no text")
        except _Skip as e:
            err = LoaderError(str(path), lineno, str(e))
            if on_error == "fail":
                raise err from None
            skipped.append(err)
            continue
        seen[qid] = lineno
        out.append(Query(qid, text))
    if n == 0:
        raise LoaderError(str(path), None, "empty file (no queries)")
    return out


def _load_qrels(
    path: Path,
    query_ids: set[str],
    doc_ids: set[str],
    on_error: OnError,
    skipped: list[LoaderError],
) -> list[Judgment]:
    """query-id <TAB> corpus-id <TAB> score; the header line is optional."""
    _check_file(path)
    out: list[Judgment] = []
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in _text_lines(path):
        try:
            if isinstance(line, _Skip):
                raise line
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) != 3:
                raise _Skip(f"expected 3 tab-separated columns, got {len(cols)}")
            qid, did, raw = (c.strip() for c in cols)
            try:
                grade = float(raw)
            except ValueError:
                if lineno == 1 and not out:
                    continue  # header line
                raise _Skip(f"score is not a number: {raw!r}") from None
            if not math.isfinite(grade):
                raise _Skip(f"score is not finite: {raw!r}")
            if qid not in query_ids:
                raise _Skip(f"unknown query id {qid!r}")
            if did not in doc_ids:
                raise _Skip(f"unknown corpus id {did!r}")
            if (qid, did) in seen:
                raise _Skip(f"duplicate judgment ({qid}, {did}) (first on line {seen[qid, did]})")
        except _Skip as e:
            err = LoaderError(str(path), lineno, str(e))
            if on_error == "fail":
                raise err from None
            skipped.append(err)
            continue
        seen[qid, did] = lineno
        out.append(Judgment(qid, did, grade))
    if not out and not skipped:
        raise LoaderError(str(path), None, "empty file (no judgments)")
    return out


def load_beir(dir: str | Path, split: str = "test", on_error: OnError = "fail") -> BeirDataset:
    """Load corpus.jsonl, queries.jsonl and qrels/<split>.tsv of a BEIR directory.

    Judgments must name a known query and document (else a LoaderError). Queries are kept
    in file order, all of them; ``BeirDataset.judged_queries()`` gives the evaluated subset.
    """
    root = Path(dir)
    if not root.is_dir():
        raise LoaderError(str(root), None, "not a directory (expected a BEIR dataset)")
    skipped: list[LoaderError] = []
    corpus = list(iter_documents(root, LoaderConfig(on_error=on_error), skipped.append))
    queries = _load_queries(root / "queries.jsonl", on_error, skipped)
    qrels = _load_qrels(
        root / "qrels" / f"{split}.tsv",
        {q.id for q in queries},
        {d.id for d in corpus},
        on_error,
        skipped,
    )
    return BeirDataset(corpus, queries, qrels, skipped)

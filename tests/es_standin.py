"""A small in-process stand-in for Elasticsearch 9, served by aiohttp on 127.0.0.1.

Elasticsearch cannot be installed on the build machines, so the index-management logic
(versioned indices, alias swap, rollback, retention, validation failures, bulk retries)
and the backend's response parsing are exercised through the REAL AsyncElasticsearch
client against this server. It implements only the endpoints indexing.elastic uses, with
Elasticsearch 9's URL layout, response shapes and error bodies, and the product header the
client checks. It is NOT Elasticsearch: text analysis is indexing.analysis.Analyzer (not
Lucene's analyzers), BM25 is the Lucene formula computed exactly (no lossy length norm),
kNN is exact, and only the query DSL the backend emits is understood (anything else is a
400, so a body the backend starts sending without support here fails loudly).

``faults`` injects failures: ``bulk_429`` {id: times to reject}, ``bulk_400`` {ids},
``drop_ids`` {ids acknowledged but not stored}, ``knn_reverse`` (kNN returns the worst
first), ``aliases_500``, ``aliases_applied_then_500`` (the swap happens, the answer is
a 500), ``match_empty``, ``delay_s`` (every answer waits); ``requests`` records (method,
path, query, body) of every call and ``auth`` each Authorization header.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
from collections import Counter
from typing import Any

import numpy as np
from aiohttp import web

from indexing.analysis import Analyzer

PRODUCT_HEADERS = {
    "X-Elastic-Product": "Elasticsearch",
    "Content-Type": "application/vnd.elasticsearch+json;compatible-with=9",
}


class StandinError(Exception):
    def __init__(self, status: int, err_type: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.err_type, self.reason = status, err_type, reason


def _reply(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(obj), headers=PRODUCT_HEADERS)


def _error(status: int, err_type: str, reason: str) -> web.Response:
    err = {"root_cause": [{"type": err_type, "reason": reason}], "type": err_type, "reason": reason}
    return _reply({"error": err, "status": status}, status)


def _get(src: dict[str, Any], path: str) -> Any:
    cur: Any = src
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class Index:
    def __init__(self, name: str, settings: dict[str, Any], mappings: dict[str, Any]) -> None:
        self.name, self.settings, self.mappings = name, settings, mappings
        self.docs: dict[str, dict[str, Any]] = {}  # insertion order = Lucene doc order here
        sim = (settings.get("similarity") or {}).get("default") or {}
        self.k1, self.b = float(sim.get("k1", 1.2)), float(sim.get("b", 0.75))
        self.analyzer = Analyzer()
        self._terms: dict[str, dict[str, list[str]]] = {}

    # --- analysis --------------------------------------------------------------------
    def text_paths(self) -> list[str]:
        props = self.mappings.get("properties", {})
        paths = [p for p in ("title", "body") if p in props]
        paths += [f"extra.{f}" for f in sorted(props.get("extra", {}).get("properties", {}))]
        return paths

    def field_terms(self, doc_id: str, path: str) -> list[str]:
        cache = self._terms.setdefault(doc_id, {})
        if path not in cache:
            src = self.docs[doc_id]
            if path == "all_text":  # copy_to: every text field's values, in field order
                cache[path] = [t for p in self.text_paths() for t in self.field_terms(doc_id, p)]
            else:
                v = _get(src, path)
                cache[path] = list(self.analyzer.terms(v)) if isinstance(v, str) else []
        return cache[path]

    def field_stats(self, path: str) -> tuple[int, float]:
        """doc_count (documents with the field) and average field length."""
        lengths = [len(self.field_terms(d, path)) for d in self.docs]
        lengths = [n for n in lengths if n > 0]
        return len(lengths), (sum(lengths) / len(lengths) if lengths else 0.0)

    def doc_freq(self, path: str, term: str) -> int:
        return sum(term in self.field_terms(d, path) for d in self.docs)

    # --- queries ---------------------------------------------------------------------
    def bm25(self, path: str, text: str) -> dict[str, float]:
        terms = self.analyzer.terms(text)
        n, avgdl = self.field_stats(path)
        out: dict[str, float] = {}
        if not terms or n == 0:
            return out
        idf = {
            t: math.log(1 + (n - df + 0.5) / (df + 0.5))
            for t in set(terms)
            if (df := self.doc_freq(path, t)) > 0
        }
        for d in self.docs:
            ft = self.field_terms(d, path)
            if not ft:
                continue
            tf = Counter(ft)
            norm = self.k1 * (1 - self.b + self.b * len(ft) / avgdl)
            s = sum(idf[t] * tf[t] / (tf[t] + norm) for t in terms if tf.get(t))
            if s > 0:
                out[d] = s
        return out

    def run(self, q: dict[str, Any], named: dict[str, dict[str, float]]) -> dict[str, float]:
        """Matching doc id -> score of query ``q``; named scores collected into ``named``."""
        if len(q) != 1:
            raise StandinError(400, "parsing_exception", f"query must have one key: {q}")
        ((kind, spec),) = q.items()
        if kind == "match":
            ((path, params),) = spec.items()
            unknown = set(params) - {"query", "_name"}
            if unknown:
                raise StandinError(400, "parsing_exception", f"match: unsupported {unknown}")
            scores = self.bm25(path, str(params["query"]))
            if "_name" in params:
                for d, s in scores.items():
                    named.setdefault(d, {})[params["_name"]] = s
            return scores
        if kind == "bool":
            unknown = set(spec) - {"must", "should", "filter"}
            if unknown:
                raise StandinError(400, "parsing_exception", f"bool: unsupported {unknown}")
            must = [self.run(c, named) for c in spec.get("must", [])]
            should = [self.run(c, named) for c in spec.get("should", [])]
            filt = [self.run(c, {}) for c in spec.get("filter", [])]
            ids = set(self.docs)
            for m in must + filt:
                ids &= set(m)
            if should and not must and not filt:
                ids &= set().union(*should)
            return {d: sum(m.get(d, 0.0) for m in must + should) for d in ids}
        if kind == "ids":
            return {d: 1.0 for d in spec["values"] if d in self.docs}
        if kind == "term":
            ((path, value),) = spec.items()
            return {d: 1.0 for d, src in self.docs.items() if _get(src, path) == value}
        if kind == "exists":
            return {d: 1.0 for d, src in self.docs.items() if _get(src, spec["field"]) is not None}
        if kind == "range":
            ((path, b),) = spec.items()
            if set(b) - {"gte", "lte"}:
                raise StandinError(400, "parsing_exception", f"range: unsupported {b}")
            out = {}
            for d, src in self.docs.items():
                v = _get(src, path)
                if isinstance(v, int | float) and b.get("gte", -math.inf) <= v <= b.get(
                    "lte", math.inf
                ):
                    out[d] = 1.0
            return out
        if kind == "script_score":
            script = spec["script"]
            want = "cosineSimilarity(params.query_vector, 'embedding') + 1.0"
            if script["source"] != want:
                raise StandinError(400, "script_exception", "only the cosine script is known")
            qv = np.asarray(script["params"]["query_vector"], dtype=np.float64)
            base = self.run(spec["query"], {})
            return {d: self.cos(d, qv) + 1.0 for d in base}
        raise StandinError(400, "parsing_exception", f"unknown query [{kind}]")

    def cos(self, doc_id: str, qv: np.ndarray) -> float:
        v = np.asarray(self.docs[doc_id]["embedding"], dtype=np.float64)
        return float(v @ qv / (np.linalg.norm(v) * np.linalg.norm(qv)))


class Standin:
    """The server's state; ``start()`` returns the base URL for AsyncElasticsearch."""

    def __init__(self) -> None:
        self.indices: dict[str, Index] = {}
        self.aliases: dict[str, set[str]] = {}
        self.faults: dict[str, Any] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.auth: list[str | None] = []  # the Authorization header of every request
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        self.indices.clear()
        self.aliases.clear()
        self.faults.clear()
        self.requests.clear()
        self.auth.clear()

    # --- helpers -----------------------------------------------------------------------
    def resolve(self, expr: str, *, must_exist: bool = True) -> list[str]:
        out: list[str] = []
        for part in expr.split(","):
            if part in self.aliases:
                out += sorted(self.aliases[part])
            elif "*" in part:
                out += sorted(n for n in self.indices if fnmatch.fnmatchcase(n, part))
            elif part in self.indices:
                out.append(part)
            elif must_exist:
                raise StandinError(404, "index_not_found_exception", f"no such index [{part}]")
        return out

    def one(self, expr: str) -> Index:
        names = self.resolve(expr)
        if len(names) != 1:
            raise StandinError(400, "illegal_argument_exception", f"{expr} resolves to {names}")
        return self.indices[names[0]]

    def aliases_of(self, index: str) -> dict[str, Any]:
        return {a: {} for a, targets in self.aliases.items() if index in targets}

    # --- dispatch ----------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        payload: Any = None
        if raw:
            if "ndjson" in ctype:
                payload = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                payload = json.loads(raw)
        query = dict(request.query)
        self.requests.append((request.method, request.path, query, payload))
        self.auth.append(request.headers.get("Authorization"))
        if self.faults.get("delay_s"):  # a server that does not answer in time
            await asyncio.sleep(float(self.faults["delay_s"]))
        parts = [p for p in request.path.split("/") if p]
        try:
            return self.route(request.method, parts, query, payload)
        except StandinError as e:
            return _error(e.status, e.err_type, e.reason)

    def route(self, method: str, parts: list[str], q: dict[str, str], p: Any) -> web.Response:
        if method == "HEAD" and len(parts) == 1:
            return web.Response(
                status=200 if parts[0] in self.indices else 404, headers=PRODUCT_HEADERS
            )
        if parts == ["_aliases"] and method == "POST":
            return self.update_aliases(p)
        if len(parts) == 2 and parts[0] == "_alias" and method == "GET":
            return self.get_alias_by_name(parts[1])
        if parts == ["_bulk"] and method in ("POST", "PUT"):
            return self.bulk(p)
        if len(parts) == 1 and method == "PUT":
            return self.create(parts[0], p or {})
        if len(parts) == 1 and method == "DELETE":
            for name in self.resolve(parts[0]):
                del self.indices[name]
                for targets in self.aliases.values():
                    targets.discard(name)
            self.aliases = {a: t for a, t in self.aliases.items() if t}
            return _reply({"acknowledged": True})
        if len(parts) == 2:
            target, op = parts
            handlers = {
                "_alias": self.get_alias_by_index,
                "_settings": self.put_settings,
                "_refresh": lambda t, q, p: _reply({"_shards": {"total": 1, "successful": 1}}),
                "_count": self.count,
                "_search": self.search,
                "_mget": self.mget,
                "_mtermvectors": self.mtermvectors,
                "_termvectors": self.termvectors,
                "_analyze": self.analyze,
                "_mapping": self.get_mapping,
            }
            if op in handlers:
                return handlers[op](target, q, p)  # type: ignore[no-untyped-call]
        raise StandinError(400, "unsupported_by_standin", f"{method} /{'/'.join(parts)}")

    # --- index and alias management ----------------------------------------------------
    def create(self, name: str, p: dict[str, Any]) -> web.Response:
        if name in self.indices or name in self.aliases:
            raise StandinError(
                400, "resource_already_exists_exception", f"index [{name}] already exists"
            )
        unknown = set(p) - {"settings", "mappings", "aliases"}
        if unknown:
            raise StandinError(400, "parse_exception", f"unknown key(s) {unknown}")
        self.indices[name] = Index(name, p.get("settings", {}), p.get("mappings", {}))
        return _reply({"acknowledged": True, "shards_acknowledged": True, "index": name})

    def get_alias_by_name(self, name: str) -> web.Response:
        targets = self.aliases.get(name)
        if not targets:
            return _reply({"error": f"alias [{name}] missing", "status": 404}, 404)
        return _reply({t: {"aliases": {name: {}}} for t in sorted(targets)})

    def get_alias_by_index(self, target: str, q: dict[str, str], p: Any) -> web.Response:
        names = self.resolve(target, must_exist=q.get("ignore_unavailable") != "true")
        return _reply({n: {"aliases": self.aliases_of(n)} for n in names})

    def update_aliases(self, p: dict[str, Any]) -> web.Response:
        if self.faults.get("aliases_500"):
            raise StandinError(500, "illegal_state_exception", "injected _aliases failure")
        new = {a: set(t) for a, t in self.aliases.items()}
        for action in p["actions"]:  # all or nothing: applied to a copy first
            ((kind, spec),) = action.items()
            index, alias = spec["index"], spec["alias"]
            if index not in self.indices:
                raise StandinError(404, "index_not_found_exception", f"no such index [{index}]")
            if kind == "add":
                if alias in self.indices:
                    raise StandinError(
                        400, "invalid_alias_name_exception", f"an index exists named [{alias}]"
                    )
                new.setdefault(alias, set()).add(index)
            elif kind == "remove":
                if index not in new.get(alias, set()):
                    if spec.get("must_exist"):
                        raise StandinError(404, "aliases_not_found_exception", f"[{alias}] missing")
                    continue
                new[alias].discard(index)
            else:
                raise StandinError(400, "parsing_exception", f"unknown alias action {kind}")
        self.aliases = {a: t for a, t in new.items() if t}
        if self.faults.get("aliases_applied_then_500"):  # the answer is lost, not the change
            raise StandinError(500, "illegal_state_exception", "injected after applying")
        return _reply({"acknowledged": True, "errors": False})

    def put_settings(self, target: str, q: dict[str, str], p: Any) -> web.Response:
        for name in self.resolve(target):
            self.indices[name].settings.update(p.get("index", p))
        return _reply({"acknowledged": True})

    def get_mapping(self, target: str, q: dict[str, str], p: Any) -> web.Response:
        return _reply({n: {"mappings": self.indices[n].mappings} for n in self.resolve(target)})

    # --- documents ---------------------------------------------------------------------
    def bulk(self, lines: list[dict[str, Any]]) -> web.Response:
        items = []
        errors = False
        for action, src in zip(lines[::2], lines[1::2], strict=True):
            ((op, meta),) = action.items()
            doc_id, index = str(meta["_id"]), meta["_index"]
            result: dict[str, Any] = {"_index": index, "_id": doc_id}
            rejections = self.faults.get("bulk_429", {})
            if rejections.get(doc_id, 0) > 0:
                rejections[doc_id] -= 1
                result |= {
                    "status": 429,
                    "error": {
                        "type": "es_rejected_execution_exception",
                        "reason": "rejected execution (injected)",
                    },
                }
            elif doc_id in self.faults.get("bulk_400", set()):
                result |= {
                    "status": 400,
                    "error": {
                        "type": "document_parsing_exception",
                        "reason": "failed to parse (injected)",
                    },
                }
            elif index not in self.indices:
                result |= {
                    "status": 404,
                    "error": {
                        "type": "index_not_found_exception",
                        "reason": f"no such index [{index}]",
                    },
                }
            else:
                if doc_id not in self.faults.get("drop_ids", set()):
                    self.indices[index].docs[doc_id] = src
                result |= {"status": 201, "result": "created", "_version": 1}
            errors |= result["status"] >= 300
            items.append({op: result})
        return _reply({"took": 1, "errors": errors, "items": items})

    def count(self, target: str, q: dict[str, str], p: Any) -> web.Response:
        return _reply({"count": sum(len(self.indices[n].docs) for n in self.resolve(target))})

    def mget(self, target: str, q: dict[str, str], p: Any) -> web.Response:
        idx = self.one(target)
        includes = [s for s in q.get("_source_includes", "").split(",") if s]
        excludes = [s for s in q.get("_source_excludes", "").split(",") if s]
        docs = []
        for doc_id in p["ids"]:
            src = idx.docs.get(doc_id)
            if src is None:
                docs.append({"_index": idx.name, "_id": doc_id, "found": False})
                continue
            out = {k: v for k, v in src.items() if k not in excludes}
            if includes:
                out = {k: v for k, v in out.items() if k in includes}
            docs.append({"_index": idx.name, "_id": doc_id, "found": True, "_source": out})
        return _reply({"docs": docs})

    # --- search ------------------------------------------------------------------------
    def search(self, target: str, q: dict[str, str], p: dict[str, Any]) -> web.Response:
        idx = self.one(target)
        unknown = set(p) - {"query", "knn", "size", "_source", "track_total_hits"}
        if unknown:
            raise StandinError(400, "parsing_exception", f"search: unsupported {unknown}")
        named: dict[str, dict[str, float]] = {}
        order = {d: i for i, d in enumerate(idx.docs)}
        if "knn" in p:
            knn = p["knn"]
            qv = np.asarray(knn["query_vector"], dtype=np.float64)
            allowed = set(idx.docs)
            for f in knn.get("filter", []):
                allowed &= set(idx.run(f, {}))
            scored = {d: (1.0 + idx.cos(d, qv)) / 2.0 for d in allowed}
            ranked = sorted(scored, key=lambda d: (-scored[d], order[d]))[: knn["k"]]
            if self.faults.get("knn_reverse"):
                ranked = list(reversed(sorted(scored, key=lambda d: (-scored[d], order[d]))))
                ranked = ranked[: knn["k"]]
        elif self.faults.get("match_empty"):  # a broken index: text queries find nothing
            scored, ranked = {}, []
        else:
            scored = idx.run(p.get("query", {"match_all": {}}), named)
            ranked = sorted(scored, key=lambda d: (-scored[d], order[d]))
        ranked = ranked[: int(p.get("size", 10))]
        with_scores = q.get("include_named_queries_score") == "true"
        hits = []
        for d in ranked:
            hit: dict[str, Any] = {"_index": idx.name, "_id": d, "_score": scored[d]}
            if d in named:
                hit["matched_queries"] = named[d] if with_scores else sorted(named[d])
            if p.get("_source", True) is not False:
                hit["_source"] = idx.docs[d]
            hits.append(hit)
        return _reply(
            {
                "took": 1,
                "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"max_score": max(scored.values(), default=None), "hits": hits},
            }
        )

    # --- analysis APIs -----------------------------------------------------------------
    def analyze(self, target: str, q: dict[str, str], p: dict[str, Any]) -> web.Response:
        idx = self.one(target)
        if p.get("field") not in ("all_text", "title", "body"):
            raise StandinError(400, "illegal_argument_exception", "analyze needs a text field")
        terms = idx.analyzer.terms(p.get("text", ""))
        tokens = [{"token": t, "type": "<ALPHANUM>", "position": i} for i, t in enumerate(terms)]
        return _reply({"tokens": tokens})

    def _vectors(self, idx: Index, doc_id: str, paths: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in paths:
            terms = idx.field_terms(doc_id, path)
            if not terms:
                continue
            vec: dict[str, Any] = {}
            for pos, t in enumerate(terms):
                entry = vec.setdefault(t, {"term_freq": 0, "tokens": []})
                entry["term_freq"] += 1
                entry["tokens"].append({"position": pos})
            out[path] = {"terms": vec}
        return out

    def mtermvectors(self, target: str, q: dict[str, str], p: dict[str, Any]) -> web.Response:
        idx = self.one(target)
        paths = [f for f in q.get("fields", "").split(",") if f]
        docs = []
        for doc_id in p["ids"]:
            if doc_id not in idx.docs:
                docs.append({"_index": idx.name, "_id": doc_id, "found": False})
                continue
            docs.append(
                {
                    "_index": idx.name,
                    "_id": doc_id,
                    "_version": 1,
                    "found": True,
                    "took": 0,
                    "term_vectors": self._vectors(idx, doc_id, paths),
                }
            )
        return _reply({"docs": docs})

    def termvectors(self, target: str, q: dict[str, str], p: dict[str, Any]) -> web.Response:
        idx = self.one(target)
        if p.get("per_field_analyzer") != {"all_text": "whitespace"} or "doc" not in p:
            raise StandinError(400, "unsupported_by_standin", "only artificial all_text docs")
        terms = p["doc"]["all_text"].split()
        n, avgdl = idx.field_stats("all_text")
        stats = {}
        for t in dict.fromkeys(terms):
            df = idx.doc_freq("all_text", t)
            stats[t] = {"term_freq": terms.count(t)} | ({"doc_freq": df} if df else {})
        sum_ttf = round(avgdl * n)
        return _reply(
            {
                "_index": idx.name,
                "_version": 0,
                "found": True,
                "took": 0,
                "term_vectors": {
                    "all_text": {
                        "field_statistics": {"doc_count": n, "sum_ttf": sum_ttf},
                        "terms": stats,
                    }
                },
            }
        )

"""GET /openapi.json: a valid OpenAPI 3.1 document that every handler's real responses match.

One real server process (scripts/serve.py over the small index and a promoted model) is
driven through every route, successes and refusals; each response is checked against the
document the same server serves (jsonschema, Draft 2020-12 as OpenAPI 3.1 uses).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ltr.registry import ModelRegistry
from scripts.serverproc import free_port, stop_server, wait_ready
from search import errors as search_errors
from search.config import ApiConfig
from search.openapi import build_spec
from search.openapi_schemas import ERROR_CODES
from tests.api_support import ADMIN, start_test_server


def _refuse(token: str) -> None:
    raise AssertionError(f"{token} is not JSON")


class Contract:
    """The served document, and a check of one real response against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        resource = Resource.from_contents(spec, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource("urn:spec", resource)
        self.checked: set[tuple[str, str, str]] = set()

    def _response(self, method: str, path: str, status: int) -> tuple[dict[str, Any], list[str]]:
        """The documented response and where it lies in the document (a method or path the
        document does not list: its shared 404 / 405 response)."""
        if method.lower() not in self.spec["paths"].get(path, {}):
            assert status in (404, 405), (method, path, status)
            where = ["components", "responses", f"E{status}"]
            return self.spec["components"]["responses"][f"E{status}"], where
        op = self.spec["paths"].get(path, {}).get(method.lower())
        assert op is not None, f"{method} {path} is not in the document"
        where = ["paths", path, method.lower(), "responses", str(status)]
        got = op["responses"].get(str(status))
        assert got is not None, f"{method} {path}: status {status} is not documented"
        if "$ref" in got:
            where = got["$ref"][2:].split("/")
            got = self.spec["components"]["responses"][where[-1]]
        return got, where

    def check(self, method: str, path: str, status: int, ctype: str, body: Any) -> None:
        documented, where = self._response(method, path, status)
        media = ctype.split(";")[0].strip()
        assert media in documented["content"], f"{method} {path} {status}: {media}"
        if media == "application/json":
            parts = [*where, "content", media, "schema"]
            pointer = "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)
            schema = {"$ref": f"urn:spec#/{pointer}"}
            Draft202012Validator(schema, registry=self.registry).validate(body)
        self.checked.add((method.upper(), path, str(status)))


@pytest.fixture(scope="module")
def api(
    small_index: Path, two_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("openapi")
    models = tmp / "models"  # its offline test metric NaN, as training writes when no
    shutil.copytree(two_models_dir, models)  # test query has a relevant document
    reg = ModelRegistry(models)
    manifest = models / str(reg.promoted()) / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "metrics": {**data["metrics"], "test_x": math.nan}}))
    report = tmp / "drift" / "drift-20261206T000000Z"  # one drift report to serve
    report.mkdir(parents=True)
    (report / "features.html").write_text("<html><body>drift</body></html>")
    summary = {"decision": "ok", "drifted": [], "window": {}, "model_version": "v0001"}
    (report / "summary.json").write_text(json.dumps(summary))
    port, log = free_port(), tmp / "serve.log"
    proc = start_test_server(
        small_index,
        tmp / "events.db",
        port,
        log,
        models,
        LTRSEARCH_MONITORING__OUT_DIR=str(tmp / "drift"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, 240)
        yield url
    finally:
        stop_server(proc)


def test_the_document_is_valid_openapi_3_1_and_lists_every_error_code() -> None:
    spec = build_spec(ApiConfig())
    validate(spec)  # openapi-spec-validator: raises on an invalid document
    assert spec["openapi"] == "3.1.0"
    classes = [search_errors.SearchError]
    codes = set()
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    assert codes <= set(ERROR_CODES), codes - set(ERROR_CODES)
    assert len(codes) >= 20


def test_every_route_of_the_app_is_documented_and_nothing_else(
    encoder: Any, small_index: Path
) -> None:
    from search.api import make_app

    app = make_app(ApiConfig(), encoder, index_dir=small_index)
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {
        (m, p) for p, ops in build_spec(ApiConfig()).get("paths", {}).items() for m in ops
    }
    assert routes == documented


async def test_every_handler_answers_as_documented(api: str) -> None:
    async with aiohttp.ClientSession() as s:
        await _every_handler(api, s)


async def _every_handler(api: str, session: aiohttp.ClientSession) -> None:
    async def call(method: str, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with session.request(method, api + path, **kw) as r:
            ctype = r.headers.get("Content-Type", "")
            body = await r.json() if ctype.startswith("application/json") else await r.text()
            return r.status, ctype, body

    st, ctype, spec = await call("GET", "/openapi.json")
    assert st == 200
    validate(spec)
    c = Contract(spec)
    c.check("GET", "/openapi.json", st, ctype, spec)
    assert spec["info"]["version"] == metadata.version("ltrsearch")

    async def expect(method: str, path: str, status: int, path_: str = "", **kw: Any) -> Any:
        """``path``: as documented; the request goes to ``path_`` when it is given."""
        st, ctype, body = await call(method, path_ or path, **kw)
        assert st == status, (method, path, kw, st, body)
        c.check(method, path, st, ctype, body)
        return body

    health = await expect("GET", "/health", 200)
    assert health["version"] == metadata.version("ltrsearch")
    await expect("GET", "/ready", 200)
    model = await expect("GET", "/model", 200)
    assert model["ranking"] == "ltr" and model["metrics"]["test_x"] is None
    async with session.get(api + "/model") as r:  # strict JSON: no NaN token
        json.loads(await r.text(), parse_constant=_refuse)
    page = await expect("GET", "/search", 200, params={"q": "wing flutter", "explain": "true"})
    assert page["hits"] and "contributions" in page["hits"][0]
    for params in ({"q": "wing", "k": "0"}, {"q": "wing", "k": "x"}, {"k": "3"}, {"q": ""}):
        err = await expect("GET", "/search", 400, params=params)
        assert err["error"]["code"] in ("invalid_parameter", "invalid_query", "bad_request")
    await expect("GET", "/search", 400, params={"q": "wing", "nope": "1"})
    body = {"q": "shock wave", "k": 3, "filters": {"year": {"gte": 1950}}, "category": "even"}
    got = await expect("POST", "/search", 200, json=body)
    assert all(h["fields"]["category"] == "even" for h in got["hits"])
    await expect("POST", "/search", 400, json={"q": "wing", "filters": {"nope": {"gte": 1}}})
    await expect(
        "POST", "/search", 400, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    await expect("POST", "/search", 415, data=b"q=wing")
    await expect("POST", "/search", 413, json={"q": "x" * 70_000})
    await expect("GET", "/search", 414, params={"q": "w" * 9000})
    await expect("GET", "/health", 431, headers={"X-Big": "h" * 9000})
    await expect("PUT", "/search", 405)
    await expect("GET", "/nowhere", 404)

    doc = page["hits"][0]["id"]
    await expect(
        "POST",
        "/events",
        202,
        json=[{"type": "click", "request_id": page["request_id"], "doc_id": doc}],
    )
    await expect(
        "POST",
        "/events",
        422,
        json={"events": [{"type": "click", "request_id": "f" * 32, "doc_id": doc}]},
    )
    await expect("POST", "/events", 400, json=[])

    await expect("POST", "/admin/reload", 401)
    await expect("POST", "/admin/reload", 403, headers={"Authorization": "Bearer wrong"})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    await expect("POST", "/admin/reload", 404, json={"version": "v9999"}, headers=auth)
    await expect("POST", "/admin/reload", 400, json={"versions": "x"}, headers=auth)
    reload = await expect("POST", "/admin/reload", 200, headers=auth)
    assert reload["model_version"] == model["model_version"]

    # the workbench's routes and parameters
    await expect("GET", "/search", 200, params={"q": "wing", "debug": "true", "model": "rrf"})
    await expect("GET", "/search", 404, params={"q": "wing", "model": "v9999"})
    card = await expect("GET", "/model/card", 200)
    assert card["serving_version"] == model["model_version"]
    await expect("GET", "/model/card", 404, params={"version": "v9999"})
    listed = (await expect("GET", "/reports", 200))["reports"]
    assert [r["name"] for r in listed] == ["drift-20261206T000000Z"]
    for link in listed[0]["files"].values():  # features.html, summary.json
        await expect("GET", "/reports/{report}/{file}", 200, path_=link)
    assert set(listed[0]["files"]) == {"features.html", "summary.json"}
    await expect("GET", "/reports/{report}/{file}", 404, path_="/reports/nope/report.html")
    for path in ("/", "/ui"):
        await expect("GET", path, 200)
    await expect("GET", "/ui/{name}", 200, path_="/ui/app.js")
    await expect("GET", "/ui/{name}", 404, path_="/ui/nope.js")
    ev = [{"type": "click", "request_id": page["request_id"], "doc_id": doc}]
    got = await expect("POST", "/events", 202, params={"debug": "true"}, json=ev)
    assert got == {"accepted": 0, "debug": True}

    # online experiments (admin): the older version as a shadow candidate, then stopped
    await expect("GET", "/admin/experiments", 401)
    listed = await expect("GET", "/admin/experiments", 200, headers=auth)
    assert listed == {"experiments": []}
    exps = "/admin/experiments"
    await expect("POST", exps, 400, json={"candidate": "v0001", "mode": "nope"}, headers=auth)
    await expect("POST", exps, 404, json={"candidate": "v9999", "mode": "shadow"}, headers=auth)
    older = next(v for v in card["versions"] if v != model["model_version"])
    started = await expect(
        "POST", exps, 201, json={"candidate": older, "mode": "shadow"}, headers=auth
    )
    eid = started["experiment_id"]
    got = await expect("GET", "/search", 200, params={"q": "wing flutter"})
    assert got["experiment"]["experiment_id"] == eid
    one = f"{exps}/{{experiment_id}}"
    await expect("GET", one, 200, path_=f"{exps}/{eid}", headers=auth)
    await expect("GET", one, 404, path_=f"{exps}/nope", headers=auth)
    stopped = await expect("POST", f"{one}/stop", 200, path_=f"{exps}/{eid}/stop", headers=auth)
    assert stopped["status"] == "stopped"
    await expect("POST", f"{one}/stop", 409, path_=f"{exps}/{eid}/stop", headers=auth)
    assert (await expect("GET", "/model", 200))["experiment"]["experiment_id"] == eid

    st, ctype, text = await call("GET", "/metrics")
    c.check("GET", "/metrics", st, ctype, text)
    assert "ltrsearch_http_requests_total" in text

    # every documented operation was seen answering with its success status
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = next(s for s in op["responses"] if s.startswith("2"))
            assert (method.upper(), path, ok) in c.checked, (method, path)

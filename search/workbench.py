"""The relevance workbench: a page served by the API itself, and what it needs beside /search.

The page (search/ui/: plain HTML, CSS and JavaScript, no build step) talks only to the public
API: /search (with ``explain``, ``debug`` and ``model``), /events?debug=true, /model/card and
/reports. Nothing here writes: a debug search or click is validated and then dropped, so a
tuning session never becomes training data; the admin token is never sent to the page.

- ``CompareModels``: registry versions loaded for a side-by-side ranking (``model=v0003``),
  a few kept in memory; a search without ``model`` never touches it.
- ``ReportSource``: the drift-report directory, served read only. Only report directories
  listed in it (named ``prefix``...) and the file names given are served, never through a
  symlink and never outside the directory (the on-disk format is monitoring.report's; the
  entry point passes its names in, search does not import monitoring).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ltr.model import RankModel
from search.errors import NotFoundError
from search.http import json_response
from search.server import STATE, ServerState

UI_DIR = Path(__file__).resolve().parent / "ui"
ASSETS = {  # file -> content type: the only files the page routes serve
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
# the page loads only its own files and calls only this origin; a drift report (Evidently
# HTML with inline scripts) runs sandboxed: an opaque origin that cannot call the API
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
REPORT_CSP = "sandbox allow-scripts"
MAX_REPORTS = 20  # newest report directories listed by /reports
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a report directory: no dots, no separators


@dataclass(frozen=True)
class ReportSource:
    """Where drift reports are (monitoring's ``out_dir``) and what of them may be served."""

    root: Path
    prefix: str  # report directories are named prefix + stamp (monitoring.report)
    files: tuple[str, ...]  # the file names served from one report directory
    summary: str | None = None  # of ``files``: the JSON whose decision /reports shows


class CompareModels:
    """Registry versions loaded for side-by-side rankings: at most ``size``, oldest evicted.

    A version must load and pass Pipeline.check_model like a served one (so an unknown
    version is 404, a corrupt one 422, another featureset 409); it is never promoted.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._models: OrderedDict[str, RankModel] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, state: ServerState, version: str) -> RankModel:
        pipeline = state.pipeline
        serving = pipeline.model if pipeline is not None else None
        if serving is not None and serving.version == version:
            return serving
        if version in self._models:
            self._models.move_to_end(version)
            return self._models[version]
        registry = state.registry
        if registry is None or pipeline is None:
            raise NotFoundError(f"no model directory is configured: no model {version!r}")
        async with self._lock:
            if version not in self._models:
                threads = state.config.model_threads
                model = await asyncio.to_thread(registry.load, version, None, threads)
                pipeline.check_model(model)
                self._models[version] = model
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
        return self._models[version]


@dataclass
class Workbench:
    """What the workbench routes share (an app key beside search.server's state)."""

    reports: ReportSource | None
    models: CompareModels = field(default_factory=CompareModels)
    assets: dict[str, bytes] = field(default_factory=dict)


WORKBENCH = web.AppKey("ltrsearch_workbench", Workbench)


async def ranking_model(request: web.Request, name: str) -> RankModel | None:
    """The model a ``model=`` search ranks by: None for "rrf", else a registry version."""
    if name == "rrf":
        return None
    return await request.app[WORKBENCH].models.get(request.app[STATE], name)


# --------------------------------------------------------------------------------------
# the page


def _asset(request: web.Request, name: str) -> web.Response:
    body = request.app[WORKBENCH].assets[name]
    headers = {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": PAGE_CSP,
        "Referrer-Policy": "no-referrer",
    }
    return web.Response(body=body, content_type=ASSETS[name], charset="utf-8", headers=headers)


async def page(request: web.Request) -> web.Response:
    return _asset(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFoundError(f"no file {name!r} in the workbench")
    return _asset(request, name)


# --------------------------------------------------------------------------------------
# the model card


async def model_card(request: web.Request) -> web.Response:
    """The serving model's card (or ``?version=``'s): manifest, feature importance, and the
    registry's versions for the side-by-side picker. No model: ranking "rrf"."""
    state = request.app[STATE]
    version = request.query.get("version")
    pipeline = state.pipeline
    serving = pipeline.model if pipeline is not None else None
    registry = state.registry
    versions: list[str] = []
    promoted = None
    if registry is not None:
        versions, promoted = await asyncio.to_thread(
            lambda: (registry.list_versions(), registry.promoted())
        )
    body: dict[str, Any] = {
        "serving_version": serving.version if serving is not None else None,
        "promoted_version": promoted,
        "versions": versions,
        "index_version": pipeline.index_version if pipeline is not None else None,
        # the numeric attributes /search's filters take (the page builds its form from them)
        "attributes": list((await pipeline.backend.info()).attr_names) if pipeline else [],
    }
    model = serving
    if version is not None and version not in ("", getattr(serving, "version", None)):
        model = await request.app[WORKBENCH].models.get(state, version)
    if model is None:
        body.update(version=None, ranking="rrf")
        return json_response(body)
    m = model.manifest.to_json()
    for key in ("schema", "model_file", "model_sha256", "extra"):
        m.pop(key, None)
    m["ranking"] = "ltr"
    m["feature_importance"] = model.feature_importance()
    body.update(m)
    return json_response(body)


# --------------------------------------------------------------------------------------
# drift reports, read only


def _report_dirs(src: ReportSource) -> list[str]:
    """Report directory names, newest first (names carry a sortable UTC stamp)."""
    try:
        names = os.listdir(src.root)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.startswith(src.prefix) and _SAFE_NAME.match(n):
            st = os.lstat(src.root / n)
            if stat.S_ISDIR(st.st_mode):  # a symlinked directory is not a report
                out.append(n)
    return sorted(out, reverse=True)


def _regular_file(src: ReportSource, report: str, name: str) -> Path | None:
    """The report file when it is a regular file (not a symlink) inside the root."""
    if name not in src.files or report not in _report_dirs(src):
        return None
    path = src.root / report / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    root = src.root.resolve()
    return path if path.resolve().is_relative_to(root) else None


def _summary(src: ReportSource, report: str) -> dict[str, Any] | None:
    if src.summary is None:
        return None
    path = _regular_file(src, report, src.summary)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = ("decision", "drifted", "window", "model_version", "created_at")
    return {k: data.get(k) for k in keys} if isinstance(data, dict) else None


def _list_reports(src: ReportSource) -> list[dict[str, Any]]:
    out = []
    for report in _report_dirs(src)[:MAX_REPORTS]:
        files = [f for f in src.files if _regular_file(src, report, f) is not None]
        out.append(
            {
                "name": report,
                "files": {f: f"/reports/{report}/{f}" for f in files},
                "summary": _summary(src, report),
            }
        )
    return out


async def get_reports(request: web.Request) -> web.Response:
    """The newest drift reports with links to their files (none configured: [])."""
    src = request.app[WORKBENCH].reports
    listed = [] if src is None else await asyncio.to_thread(_list_reports, src)
    return json_response({"reports": listed})


async def report_file(request: web.Request) -> web.StreamResponse:
    src = request.app[WORKBENCH].reports
    report, name = request.match_info["report"], request.match_info["file"]
    path = None if src is None else await asyncio.to_thread(_regular_file, src, report, name)
    if path is None:
        raise NotFoundError(f"no report file {report}/{name}")
    headers = {
        "Content-Security-Policy": REPORT_CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    ctype = "application/json" if name.endswith(".json") else "text/html"
    body = await asyncio.to_thread(path.read_bytes)
    return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)


def add_routes(app: web.Application, reports: ReportSource | None) -> None:
    """The page, its files, the model card and the reports (all GET, all read only)."""
    assets = {name: (UI_DIR / name).read_bytes() for name in ASSETS}
    app[WORKBENCH] = Workbench(reports=reports, assets=assets)
    app.router.add_get("/", page)
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/{name}", asset)
    app.router.add_get("/model/card", model_card)
    app.router.add_get("/reports", get_reports)
    app.router.add_get("/reports/{report}/{file}", report_file)

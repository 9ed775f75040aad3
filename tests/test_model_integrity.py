"""Corrupt model files: the manifest's checksum, /admin/reload answering 422, and a corrupt
promoted model at start-up replaced by the previous promotion (or RRF), never a crash.

Registry tests use a small real XGBoost model; the API tests a real aiohttp server over the
real local index and the model the suite trains through the serving pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ltr.errors import CorruptModelError
from ltr.registry import ModelRegistry
from ltr.train import TrainedModel, Trainer
from search.api import make_app
from tests.api_support import ADMIN, api_config
from tests.test_api import _json, serve
from tests.test_train import FAST, synthetic

RRF = {"name": "rrf", "params": {}}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _random(p: Path) -> None:
    p.write_bytes(os.urandom(p.stat().st_size))


def _one_byte(p: Path) -> None:  # still parses as a booster: only the checksum tells
    data = bytearray(p.read_bytes())
    data[-20] ^= 0x01
    p.write_bytes(bytes(data))


BOOSTER_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "empty": _empty,
    "random": _random,
    "one_byte_flipped": _one_byte,
}

MANIFEST_DAMAGE: dict[str, Callable[[Path], None]] = {
    "manifest_truncated": _truncate,
    "manifest_not_an_object": lambda p: p.write_text("[1, 2]"),
    "manifest_missing_keys": lambda p: p.write_text('{"version": "v0002"}'),
    "manifest_bad_types": lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "feature_names": 7})
    ),
    "manifest_bad_model_file": lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "model_file": "../../etc/passwd"})
    ),
}


def _damage(version_dir: Path, kind: str) -> None:
    if kind in BOOSTER_DAMAGE:
        BOOSTER_DAMAGE[kind](version_dir / "model.ubj")
    elif kind == "booster_missing":
        (version_dir / "model.ubj").unlink()
    else:
        MANIFEST_DAMAGE[kind](version_dir / "manifest.json")


KINDS = [*BOOSTER_DAMAGE, "booster_missing", *MANIFEST_DAMAGE]


# --------------------------------------------------------------------------------------
# the registry


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return Trainer(FAST).fit(synthetic(n_queries=30, seed=3))


def test_the_manifest_records_the_booster_checksum(tmp_path: Path, trained: TrainedModel) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.save(trained, featureset_id="fs", base_margin=RRF)
    digest = hashlib.sha256((tmp_path / v / "model.ubj").read_bytes()).hexdigest()
    assert reg.manifest(v).model_sha256 == digest
    assert json.loads((tmp_path / v / "manifest.json").read_text())["model_sha256"] == digest
    assert reg.load(v).version == v


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_version_is_a_corrupt_model_error(
    tmp_path: Path, trained: TrainedModel, kind: str
) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.save(trained, featureset_id="fs", base_margin=RRF)
    _damage(tmp_path / v, kind)
    with pytest.raises(CorruptModelError) as ei:
        reg.load(v)
    msg = str(ei.value)
    assert str(tmp_path / v) in msg and "\n" not in msg
    expected = {
        "booster_missing": "missing",
        "manifest_bad_model_file": "model_file must be one of",
    }.get(kind, "unreadable manifest" if kind in MANIFEST_DAMAGE else "checksum mismatch")
    assert expected in msg


def test_a_manifest_without_checksum_loads_with_a_warning(
    tmp_path: Path, trained: TrainedModel, caplog: pytest.LogCaptureFixture
) -> None:
    """Manifests written before checksums: the model loads (refusing it would take down
    every existing registry at the upgrade), with a warning; a booster XGBoost cannot
    parse is still refused."""
    reg = ModelRegistry(tmp_path)
    v = reg.save(trained, featureset_id="fs", base_margin=RRF)
    mpath = tmp_path / v / "manifest.json"
    old = json.loads(mpath.read_text())
    del old["model_sha256"]
    mpath.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="ltr.model"):
        assert reg.load(v).manifest.model_sha256 is None
    assert any("no model_sha256" in r.getMessage() for r in caplog.records)
    _truncate(tmp_path / v / "model.ubj")
    with pytest.raises(CorruptModelError, match="not a loadable booster"):
        reg.load(v)


# --------------------------------------------------------------------------------------
# the API


def _registry_with_candidate(model_dir: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of the suite's registry plus a candidate version: a byte copy of the promoted
    one under the next name (valid, checksum included)."""
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    reg = ModelRegistry(models)
    first = reg.promoted()
    assert first is not None
    cand = f"v{int(first[1:]) + 1:04d}"
    shutil.copytree(models / first, tmp_path / "pristine")
    manifest = json.loads((tmp_path / "pristine" / "manifest.json").read_text())
    (tmp_path / "pristine" / "manifest.json").write_text(json.dumps({**manifest, "version": cand}))
    shutil.copytree(tmp_path / "pristine", models / cand)
    return models, first, cand


def _restore(models: Path, tmp_path: Path, version: str) -> None:
    shutil.rmtree(models / version)
    shutil.copytree(tmp_path / "pristine", models / version)


async def test_reload_to_a_corrupt_version_is_422_counted_and_keeps_serving(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    models, first, cand = _registry_with_candidate(model_dir, tmp_path)
    app = make_app(api_config(), encoder, index_dir=small_index, model_dir=models)
    async with serve(app) as c:
        for kind in KINDS:
            _restore(models, tmp_path, cand)
            _damage(models / cand, kind)
            r = await c.post("/admin/reload", json={"version": cand}, headers=AUTH)
            body = await _json(r)
            assert r.status == 422, (kind, body)
            err = body["error"]
            assert err["code"] == "corrupt_model" and body["request_id"]
            assert cand in err["message"] and f"still serving model {first}" in err["message"]
            assert (await _json(await c.get("/model")))["model_version"] == first
            page = await _json(await c.get("/search", params={"q": "wing flutter"}))
            assert page["model_version"] == first and page["hits"]
        text = await (await c.get("/metrics")).text()
        assert f'ltrsearch_reloads_total{{outcome="corrupt"}} {len(KINDS)}' in text
        ready = await _json(await c.get("/ready"))
        assert ready["ready"] and ready["degraded"] == {}  # a refused reload changes nothing
        _restore(models, tmp_path, cand)  # the same version, undamaged, loads
        r = await c.post("/admin/reload", json={"version": cand}, headers=AUTH)
        assert r.status == 200 and (await _json(r))["model_version"] == cand
        text = await (await c.get("/metrics")).text()
        assert 'ltrsearch_reloads_total{outcome="ok"} 1' in text


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "search.api" and r.levelno >= logging.ERROR]


async def test_a_corrupt_promoted_model_at_startup_serves_the_previous_promotion(
    encoder: Any,
    small_index: Path,
    model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models, first, cand = _registry_with_candidate(model_dir, tmp_path)
    ModelRegistry(models).promote(cand)  # a bad promotion: its booster is truncated
    _damage(models / cand, "truncated")
    app = make_app(api_config(), encoder, index_dir=small_index, model_dir=models)
    with caplog.at_level(logging.INFO, logger="search.api"):
        async with serve(app) as c:
            model = await _json(await c.get("/model"))
            assert model["model_version"] == first and model["ranking"] == "ltr"
            fallback = model["model_fallback"]
            assert fallback["refused"] == cand and fallback["serving"] == first
            assert "checksum mismatch" in fallback["reason"]
            r = await c.get("/ready")
            ready = await _json(r)
            assert r.status == 200 and ready["ready"] and ready["model_version"] == first
            assert ready["model_fallback"] == fallback
            assert set(ready["degraded"]) == {"model"}
            assert f"model {cand} refused" in ready["degraded"]["model"]
            page = await _json(await c.get("/search", params={"q": "wing flutter"}))
            assert page["model_version"] == first
            # one log line, no traceback
            (line,) = _refusals(caplog)
            assert line.exc_info is None and cand in line.getMessage()
            assert f"serving {first}" in line.getMessage()
            # the promotion repaired: a reload serves it and the fallback is over
            _restore(models, tmp_path, cand)
            r = await c.post("/admin/reload", headers=AUTH)
            assert r.status == 200 and (await _json(r))["model_version"] == cand
            ready = await _json(await c.get("/ready"))
            assert ready["degraded"] == {} and ready["model_fallback"] is None
            assert (await _json(await c.get("/model")))["model_fallback"] is None


async def test_a_corrupt_only_promotion_at_startup_serves_rrf(
    encoder: Any,
    small_index: Path,
    model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No earlier promotion to fall back to (a never-promoted version is not a candidate):
    RRF ranking, reported (ready here: api.require_model is off)."""
    models, first, _cand = _registry_with_candidate(model_dir, tmp_path)
    _damage(models / first, "manifest_truncated")
    app = make_app(
        api_config(require_model=False), encoder, index_dir=small_index, model_dir=models
    )
    with caplog.at_level(logging.INFO, logger="search.api"):
        async with serve(app) as c:
            model = await _json(await c.get("/model"))
            assert model["model_version"] is None and model["ranking"] == "rrf"
            assert model["model_fallback"]["refused"] == first
            assert model["model_fallback"]["serving"] is None
            assert "unreadable manifest" in model["model_fallback"]["reason"]
            r = await c.get("/ready")
            ready = await _json(r)
            assert r.status == 200 and "RRF" in ready["degraded"]["model"]
            page = await _json(await c.get("/search", params={"q": "wing flutter"}))
            assert page["model_version"] is None and page["hits"]
            (line,) = _refusals(caplog)
            assert line.exc_info is None

"""Settings: TOML + environment overrides, validated at load with messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.settings import Settings, SettingsError, load_settings


def test_defaults_without_file() -> None:
    s = load_settings(env={})
    assert isinstance(s, Settings)
    assert s.index.backend == "local"
    assert s.embedding.model == ""


def test_toml_and_env_override(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('[index]\nk1 = 1.5\nstopwords = ""\n[loader]\nextra_text_fields = ["brand"]\n')
    s = load_settings(p, env={"LTRSEARCH_INDEX__K1": "0.9", "UNRELATED": "x"})
    assert s.index.k1 == 0.9  # environment wins over the file
    assert s.index.stopwords == ""
    assert s.loader.extra_text_fields == ("brand",)


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(AttributeError):
        s.index.k1 = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[index]\nk9 = 1\n", "index: unknown key(s) k9; valid:"),
        ("[nosuch]\nx = 1\n", "unknown key(s) nosuch"),
        ('[index]\nk1 = "high"\n', "index.k1: expected a number"),
        ('[index]\nbackend = "solr"\n', "index.backend: 'solr' is not one of 'local'"),
        ("[embedding]\ncache = 3\n", "embedding.cache: expected true/false"),
        ("[index]\nkeep_versions = 2.5\n", "index.keep_versions: expected an integer"),
        ("[index\n", "invalid TOML"),
    ],
)
def test_bad_values_are_refused_with_the_key(tmp_path: Path, toml: str, message: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(SettingsError) as err:
        load_settings(p, env={})
    assert message in str(err.value)


def test_bad_env_override_names_the_key() -> None:
    with pytest.raises(SettingsError, match=r"index\.ann_threshold: expected an integer"):
        load_settings(env={"LTRSEARCH_INDEX__ANN_THRESHOLD": "lots"})


def test_missing_file() -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings("/nonexistent/settings.toml", env={})


def test_retrieval_section_is_part_of_settings() -> None:
    s = load_settings(env={"LTRSEARCH_RETRIEVAL__BM25_K": "50"})
    assert s.retrieval.bm25_k == 50

"""``ltrsearch COMMAND``: one command dispatching to the scripts' main(argv) functions."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scripts.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _cli() -> list[str]:
    """The installed entry point when this tree's package is installed, else the module."""
    exe = Path(sys.executable).with_name("ltrsearch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "scripts.cli"]


def test_entry_points_name_the_cli_and_keep_the_old_commands() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ltrsearch"] == "scripts.cli:main"
    for name in ("reindex", "demo", "drift", "serve", "train"):  # still installed, and the
        # subcommand runs the same function
        assert scripts[f"ltrsearch-{name}"] == f"{COMMANDS[name][0]}:main"


def test_help_lists_every_subcommand() -> None:
    got = _run(*_cli(), "--help")
    assert got.returncode == 0, got.stderr
    for name in ("reindex", "train", "serve", "drift", "evaluate", "demo"):
        assert f"\n  {name} " in got.stdout
    assert set(COMMANDS) == {"reindex", "train", "serve", "drift", "evaluate", "demo"}


@pytest.mark.parametrize("command", ["train", "drift"])
def test_a_subcommand_help_is_the_script_help(command: str) -> None:
    got = _run(*_cli(), command, "--help")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("usage: ltrsearch-"), got.stdout[:200]
    assert "--help" in got.stdout


def test_unknown_command_is_one_line_and_exit_2() -> None:
    got = _run(sys.executable, "-m", "scripts.cli", "nope")
    assert got.returncode == 2
    assert got.stderr.strip().splitlines()[-1].startswith("ltrsearch: error: argument COMMAND")
    assert got.stdout == ""


def test_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    got = _run(sys.executable, "-m", "scripts.cli", "--version")
    assert (
        got.returncode == 0 and got.stdout.strip() == f"ltrsearch {metadata.version('ltrsearch')}"
    )

"""search.replay.run_sync: asyncio.run without formatting the result's repr (on Python
3.11 and 3.12 asyncio.run does, through signal.getsignal's enum error message: half a
replay's CPU on the demo catalog)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from search.replay import run_sync


class Counted:
    """A result that counts how often its repr is built."""

    reprs = 0

    def __repr__(self) -> str:
        Counted.reprs += 1
        return "Counted()"


async def make() -> Counted:
    await asyncio.sleep(0)
    return Counted()


def test_run_sync_returns_the_result_without_its_repr() -> None:
    Counted.reprs = 0
    got = run_sync(make())
    assert isinstance(got, Counted)
    assert Counted.reprs == 0


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="3.13's signal.getsignal has no repr")
def test_plain_asyncio_run_builds_the_repr_here() -> None:
    """Why run_sync exists: on this Python, asyncio.run formats the finished task. It does
    so only when SIGINT has Python's default handler (asyncio then installs its own and
    reads it back), so the test sets that handler: another test in the same process may
    have left a different one."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        Counted.reprs = 0
        asyncio.run(make())
        assert Counted.reprs >= 1
        Counted.reprs = 0
        run_sync(make())
        assert Counted.reprs == 0
    finally:
        signal.signal(signal.SIGINT, previous)


def test_run_sync_propagates_errors() -> None:
    async def fail() -> None:
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        run_sync(fail())

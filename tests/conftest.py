"""Shared helpers: run the real `bnlab` executable, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BNLAB = [sys.executable, "-m", "bnlab.cli"]
REPO = Path(__file__).resolve().parents[1]


def run_bnlab(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BNLAB_RUNS", None)
    return subprocess.run(
        [*BNLAB, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, **kw
    )


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs folder that does not exist yet (so tests can check nothing was created)."""
    return tmp_path / "runs"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: with tiny tensors a second thread only adds
    contention on a shared 2-core machine."""
    import torch  # only the tests that ask for it load torch through conftest

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

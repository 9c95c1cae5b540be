"""Build a report in a staging folder, then move it into place.

A failure while building (a plotting error, a full disk) leaves the previous
report untouched rather than half replaced. The staging folder sits next to
the output folder (same filesystem, so the moves are renames) or, if that
parent is not writable, inside it. Only the report's own files are replaced;
anything else a user keeps in the output folder stays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bnlab.errors import BnlabError

T = TypeVar("T")


def publish(out: Path, build: Callable[[Path], T], owned: tuple[str, ...]) -> T:
    """Run `build(staging)`, then move the `owned` names from staging into `out`, in order."""
    try:
        if out.exists() and not out.is_dir():
            raise BnlabError(f"cannot write the report: {out} exists and is not a folder")
        staging = _staging_folder(out)
    except OSError as err:
        raise BnlabError(f"cannot write the report to {out}: {_reason(err)}") from None
    try:
        result = build(staging)
        out.mkdir(parents=True, exist_ok=True)
        for name in owned:
            _replace(staging / name, out / name, staging)
        return result
    except OSError as err:
        raise BnlabError(f"cannot write the report to {out}: {_reason(err)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staging_folder(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError:
        if not out.is_dir():
            raise
        return Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=out))


def _replace(src: Path, dst: Path, staging: Path) -> None:
    if not src.exists():
        return
    if src.is_dir():
        # A folder cannot be renamed over a non-empty one: move the old one aside
        # into staging (deleted with it), then rename the new one in.
        if dst.exists():
            os.replace(dst, staging / f".old-{dst.name}")
        os.replace(src, dst)
    else:
        os.replace(src, dst)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)

"""File helpers shared by the sources: default locations and checksums."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import bnlab
from bnlab.errors import BnlabError


def repo_data_dir() -> Path:
    """The repository's data/ folder (where the bundled dataset lives)."""
    return Path(bnlab.__file__).resolve().parents[1] / "data"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks so a big archive never sits in memory twice."""
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise BnlabError(f"cannot read {path}: {e.strerror or e}") from None
    return digest.hexdigest()


_SHA256_LINE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(.+))?$")


def read_sha256_file(path: Path) -> str | None:
    """The hash in a sha256sum-format file (``<hex>  <name>``); None if the file is absent."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise BnlabError(f"cannot read checksum file {path}: {e}") from None
    match = _SHA256_LINE.match(text.splitlines()[0].strip()) if text else None
    if match is None:
        raise BnlabError(f"checksum file {path} is not in sha256sum format ('<64 hex>  <name>')")
    return match.group(1).lower()

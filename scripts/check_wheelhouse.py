"""Check a wheelhouse the way the GPU machine will use it (run by `make wheelhouse`).

Installs every wheel into a fresh folder with `pip install --no-index --no-deps
--target` (no network, nothing from the index, nothing already installed
counts), then, with only that folder in front of the path, imports hydra,
omegaconf, submitit and both launcher plugins from it and asks Hydra to
discover the two launchers. Also checks one version per package, each wheel
usable by CPython 3.12 on manylinux x86-64.

    python scripts/check_wheelhouse.py wheelhouse
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

MODULES = (
    "hydra",
    "omegaconf",
    "antlr4",
    "submitit",
    "hydra_plugins.hydra_joblib_launcher",
    "hydra_plugins.hydra_submitit_launcher",
)
# Run in a child whose sys.path starts with the target folder.
PROBE = """
import importlib, sys
target = sys.argv[1]
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    where = getattr(module, "__file__", None) or list(module.__path__)[0]
    assert where.startswith(target), f"{name} imported from {where}, not from {target}"
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
names = {p.__name__ for p in Plugins.instance().discover(Launcher)}
assert {"JoblibLauncher", "LocalLauncher", "SlurmLauncher"} <= names, names
print("imported from", target, ":", ", ".join(sys.argv[2:]))
"""
GOOD_TAGS = ("py3-none-any", "cp312-cp312-manylinux", "py3-none-manylinux", "cp312-abi3")


def check(wheelhouse: Path) -> None:
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"check_wheelhouse: no wheels in {wheelhouse}")
    names = [w.name.split("-")[0].lower() for w in wheels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f"check_wheelhouse: more than one version of {', '.join(twice)}")
    for wheel in wheels:
        tags = "-".join(wheel.stem.split("-")[-3:])
        if not tags.startswith(GOOD_TAGS) or "x86_64" not in tags and "any" not in tags:
            raise SystemExit(f"check_wheelhouse: {wheel.name} is not for CPython 3.12 x86-64")
    with tempfile.TemporaryDirectory() as target:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        pip += ["--no-index", "--no-deps", "--target", target, *map(str, wheels)]
        subprocess.run(pip, check=True)
        # -s: no user site; PYTHONPATH puts the target first, ahead of the venv's copies.
        env = {"PYTHONPATH": target, "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-s", "-c", PROBE, target, *MODULES], check=True, env=env)
    print(f"{len(wheels)} wheels in {wheelhouse}: installable with --no-index --no-deps --target")


if __name__ == "__main__":
    check(Path(sys.argv[1] if len(sys.argv) > 1 else "wheelhouse"))

"""The run store: run identity, the run directory, atomic writes.

A run directory holds

    config.yaml     the resolved config (everything, paths and logger included)
    metrics.csv     one row per finished epoch
    summary.json    written once the run ends: status completed | diverged | failed
    checkpoint.pt   the state to resume from (model, optimizer, epoch, metrics so far)
    checkpoint.prev.pt  the one before it, in case checkpoint.pt does not load

Identity is a hash of the *scientific* config only, so the same experiment run
with another output folder, logger, device or thread count is the same run:
re-running a command finds it and either reports it done or resumes it.

Every file is written to a temporary name and renamed into place, so a run
killed at any moment leaves either the old or the new version, never half. A
write the filesystem refuses (a folder turned read-only, a full disk) raises
StoreWriteError, a BnlabError whose one-line message names the file.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnlab.errors import BnlabError, first_line, warn

# Keys that say how or where a run is executed or logged, not what is measured.
NON_SCIENCE_KEYS = (
    "paths",
    "logger",
    "preset_name",
    "experiment_name",
    "data.root",
    "data.download",
    "data.eval_batch_size",
    "train.device",
    "train.precision",
    "train.channels_last",
    "train.compile",
    "train.threads",
)

# Keys added to the schema after runs were stored: at these values they change
# nothing, so they stay out of the identity and earlier runs keep their hash
# (a rerun of an old grid finds its finished runs instead of training them again).
IDENTITY_NEUTRAL = {
    "train.only_bn": False,
    "optim.fixup_scalar_lr": 0.1,
    # Probes only measure (on copies); at their defaults old run ids stay valid.
    "probe.bn_stats": False,
    "probe.activations": False,
    "probe.ics": False,
    "probe.landscape": False,
    "probe.steps": [0, 50, 200],
    "probe.landscape_steps": [0.5, 1.0, 2.0, 4.0],
    "probe.bn_modes": False,
    # None: every epoch on the whole test set, as before the key existed.
    "data.curve_test_size": None,
    # Runs stored before model.revision existed were built by revision 1; validate()
    # accepts only the current revision, so its value (2) is always hashed: what
    # revision 2 builds never shares an id with a revision-1 run.
    "model.revision": 1,
    # 0: no dropout layer, the net every run before the key trained (bnlab.models.resnet).
    "model.dropout": 0.0,
}

# probes.csv, written by bnlab.train.probes in long format (one row per measurement).
PROBE_COLUMNS = ("epoch", "step", "probe", "layer", "metric", "value")
PROBES_FILE = "probes.csv"

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "test_images",  # how many test images test_acc used (data.curve_test_size)
    "lr",
    "time_s",
    "images_per_s",
    "elapsed_s",
)

FINISHED = ("completed", "diverged")


def science_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the keys in NON_SCIENCE_KEYS."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for dotted in NON_SCIENCE_KEYS:
        _pop(plain, dotted)
    for dotted, neutral in IDENTITY_NEUTRAL.items():
        _pop(plain, dotted, only_if=neutral)
    return plain


_ANY = object()


def _pop(tree: dict[str, Any], dotted: str, only_if: Any = _ANY) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p, {})
    if leaf in node and (only_if is _ANY or node[leaf] == only_if):
        del node[leaf]


def run_id(cfg: DictConfig) -> str:
    """12 hex digits of the SHA-256 of the scientific config (canonical JSON)."""
    canonical = json.dumps(science_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_name(cfg: DictConfig) -> str:
    """A readable prefix for humans browsing runs/, then the identity."""
    plain = "" if cfg.model.residual else "plain"
    return f"{cfg.model.arch}{cfg.model.depth}{plain}-{cfg.norm.kind}-{run_id(cfg)}"


# ----------------------------------------------------------------------------- atomic writes


def _file_mode() -> int:
    """What open() would give a new file under the process umask (read once, not set)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


class StoreWriteError(BnlabError):
    """A file bnlab writes could not be written (read-only folder, full disk, ...).

    The message is one line naming the file and the reason. Writes are atomic, so
    what the file held before the failed write is still there, whole.
    """


def _write_error(path: Path, err: OSError) -> StoreWriteError:
    return StoreWriteError(f"cannot write {path}: {err.strerror or first_line(err)}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    Raises StoreWriteError (a BnlabError: one line naming `path`) when the folder
    or disk refuses the write; interrupts (KeyboardInterrupt) pass through as they are.
    """
    try:
        _write_then_rename(path, data)
    except OSError as err:
        raise _write_error(path, err) from err


def _write_then_rename(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only; a runs folder shared with a cluster group
        # or copied elsewhere should get the permissions any other new file gets.
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged run's loss is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def metrics_csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format_cell(row.get(k)) for k in METRIC_COLUMNS})
    return buf.getvalue()


def _format_cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # round-trips exactly (resume equality is checked on these)
    return value


# ----------------------------------------------------------------------------- the store


def git_commit() -> str:
    """The commit of the bnlab checkout that produced a run ("unknown" outside git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def check_writable(root: Path) -> None:
    """Fail early, without creating anything, if run directories can't go under `root`."""
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise BnlabError(f"paths.runs={root}: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise BnlabError(f"paths.runs={root} is not writable: {e.strerror}") from None


class RunBusy(Exception):
    """Another process holds this run's lock (e.g. an overlapping sweep)."""


class UnreadableConfig(Exception):
    """A run folder's config.yaml is missing, does not parse or is not a mapping."""


def read_config_file(path: Path) -> dict[str, Any]:
    """A run's config.yaml as a plain (unresolved) mapping; UnreadableConfig says why not.

    The one definition of a readable config, shared by the store (a run without one is
    not finished: training it again rebuilds it) and the report (it skips such a run).
    """
    try:
        if not path.is_file():
            raise UnreadableConfig("no config.yaml (not a run, or it never started)")
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except UnreadableConfig:
        raise
    except Exception as err:  # OSError, YAML and OmegaConf errors: all mean unreadable
        raise UnreadableConfig(f"unreadable config.yaml ({first_line(err)})") from None
    if not isinstance(tree, dict):
        raise UnreadableConfig("config.yaml is not a mapping")
    return tree


class _InRun:
    """A file of a run folder, by name: `RunDir(p).summary_file == p / "summary.json"`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunDir, owner: type | None = None) -> Path:
        return run.path / self.name


@dataclass
class RunDir:
    path: Path

    config_file = _InRun("config.yaml")
    metrics_file = _InRun("metrics.csv")
    summary_file = _InRun("summary.json")
    checkpoint_file = _InRun("checkpoint.pt")
    previous_checkpoint_file = _InRun("checkpoint.prev.pt")

    def summary(self) -> dict[str, Any] | None:
        """summary.json as a mapping; None when missing, unreadable or not a mapping."""
        try:
            summary = json.loads(self.summary_file.read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def has_config(self) -> bool:
        """Whether config.yaml reads as a mapping (read_config_file)."""
        try:
            read_config_file(self.config_file)
        except UnreadableConfig:
            return False
        return True

    def epochs_done(self) -> int:
        """Rows in metrics.csv: how far an unfinished run got."""
        try:
            with open(self.metrics_file) as f:
                return max(0, sum(1 for _ in f) - 1)
        except OSError:
            return 0

    def state(self) -> str:
        """completed | diverged | failed | partial | new -- for listings (dry runs, tables).

        A summary without a readable config.yaml does not count (see is_finished).
        """
        summary = self.summary()
        if summary is not None and self.has_config():
            return str(summary.get("status", "failed"))
        return "partial" if self.epochs_done() > 0 else "new"

    def is_finished(self) -> bool:
        """Finished (completed or diverged) by its summary.json, with a readable config.yaml.

        Without its config a run's result cannot be placed on any grid (the report skips
        it), so it is not finished either: training it again resumes from its checkpoint
        (or starts over) and writes config.yaml and summary.json anew.
        """
        s = self.summary()
        return s is not None and s.get("status") in FINISHED and self.has_config()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, non-blocking: two processes never train the same run at once."""
        lock_file = self.path / ".lock"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(lock_file, "a+")  # noqa: SIM115 (closed below; the open is what can fail)
        except OSError as err:
            raise _write_error(lock_file, err) from err
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(str(self.path)) from None
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def write_config(self, cfg: DictConfig) -> None:
        atomic_write_text(self.config_file, OmegaConf.to_yaml(cfg, resolve=True))

    def write_metrics(self, rows: Sequence[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_file, metrics_csv_text(rows))

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.summary_file, text)

    def clear_summary(self) -> None:
        try:
            self.summary_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:  # e.g. the folder turned read-only
            raise _write_error(self.summary_file, err) from err

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write `state` as checkpoint.pt, keeping the one it replaces as checkpoint.prev.pt.

        At every instant checkpoint.pt is a complete file: the current one is
        hard-linked to the previous name first (atomic rename over the older
        one), then the new one is renamed over it.
        """
        import torch  # here, not at the top: the report reads stores without torch

        _check_plain(state, "checkpoint")
        buf = io.BytesIO()
        torch.save(state, buf)
        if self.checkpoint_file.exists():
            _keep_as(self.checkpoint_file, self.previous_checkpoint_file)
        atomic_write_bytes(self.checkpoint_file, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads, or None (no checkpoint: start from scratch).

        A checkpoint that does not load (truncated, corrupt) gets one warning
        line on stderr and the previous one is tried; if none loads, the run
        starts from scratch, which a last warning says. A checkpoint that would
        run code when unpickled is refused: BnlabError (run folders travel
        between machines, so their files are untrusted).
        """
        candidates = [
            f for f in (self.checkpoint_file, self.previous_checkpoint_file) if f.exists()
        ]
        for i, path in enumerate(candidates):
            try:
                return load_checkpoint_file(path)
            except CorruptCheckpoint as err:
                then = (
                    f"trying {candidates[i + 1].name}"
                    if i + 1 < len(candidates)
                    else "starting the run from scratch"
                )
                warn(f"{path} does not load ({err}); {then}")
        return None


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """One checkpoint file, unpickled with torch's weights_only loader.

    Only tensors and plain values (dicts, lists, numbers, strings, None) load:
    that is all bnlab writes. Raises CorruptCheckpoint for an unreadable file and
    BnlabError (one line naming the file) for one that asks to run code.
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if m := re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?(\S+)", text, re.IGNORECASE):
            raise BnlabError(
                f"{path}: refusing to load it: unpickling it would call {m.group(1)} "
                "(bnlab checkpoints hold only tensors and plain values)"
            ) from None
        raise CorruptCheckpoint(_gist(text)) from None
    except Exception as err:  # truncated zip, empty file, I/O error: not a checkpoint we can use
        raise CorruptCheckpoint(_gist(str(err)) or type(err).__name__) from None
    if not isinstance(state, dict) or not {"model", "epoch"} <= state.keys():
        raise CorruptCheckpoint("not a bnlab checkpoint")
    return state


def _gist(text: str) -> str:
    # torch's loader messages are paragraphs; their gist is the first non-boilerplate line.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    gist = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the"))]
    return (gist or lines or [""])[0][:200]


def _keep_as(src: Path, dst: Path) -> None:
    """Make `dst` a copy of `src` atomically (a hard link where the filesystem has them)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with contextlib.suppress(OSError):  # best effort: the copy below is what matters
            tmp.unlink()
        try:
            data = src.read_bytes()
        except OSError as err:
            raise _write_error(dst, err) from err
        atomic_write_bytes(dst, data)


_PLAIN = (str, int, float, bool, type(None), bytes)


def _check_plain(value: Any, where: str) -> None:
    """Refuse to write what weights_only loading would refuse to read back (a bug, not input)."""
    import torch

    if isinstance(value, (*_PLAIN, torch.Tensor, torch.dtype, torch.device)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where} has a {type(k).__name__} key (only str or int)")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}: checkpoints hold only tensors and plain values "
        "(they are loaded with weights_only=True)"
    )


class RunStore:
    """All run directories under one root (paths.runs)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def run_dir(self, cfg: DictConfig) -> RunDir:
        return RunDir(self.root / run_name(cfg))

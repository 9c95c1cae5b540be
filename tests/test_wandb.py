"""logger=wandb: one offline wandb run per bnlab run, read back from its .wandb log.

Everything runs with WANDB_MODE=offline and every wandb folder under tmp_path:
no network, nothing written to $HOME. Offline, wandb 0.31 writes neither
files/config.yaml nor files/wandb-summary.json (those come from the sync
"sender"); the only record of what was logged is the run's transaction log
`run-<id>.wandb`, so `read_offline_run` parses it: a LevelDB-style log of
length-prefixed, CRC-checked chunks, each record a `wandb_internal_pb2.Record`.
(0.31 no longer ships the Python `DataStore` reader; wandb-core reads it in Go.)
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bnlab.compose import load_config
from bnlab.errors import BnlabError
from bnlab.sinks import WandbSink, make_sink
from tests.conftest import BNLAB, REPO

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2 as pb  # noqa: E402  (after the importorskip)

# ----------------------------------------------------------------------------- reading .wandb

_BLOCK = 32 * 1024  # the log is written in 32 KiB blocks, chunks never straddle one
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[pb.Record]:
    """Every record of a .wandb transaction log, in write order."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack_from("<4sHB", data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a .wandb log"
    pos, pending = 7, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER.size:  # block tail too short for a header: padding
            pos += left_in_block
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if (crc, length, kind) == (0, 0, 0):  # zero padding up to the next block
            pos += left_in_block
            continue
        start = pos + _CHUNK_HEADER.size
        chunk = data[start : start + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad CRC at {pos}"
        pos = start + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item: Any) -> str:
    # history/summary items name their key either as `key` or as a `nested_key` path
    return item.key or ".".join(item.nested_key)


@dataclass
class OfflineRun:
    folder: Path
    run: Any = None  # the RunRecord: id, name, group, project, tags
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step
    summary: dict[str, Any] = field(default_factory=dict)  # last value per key
    exit_code: int | None = None  # None: the run was never finished


def read_offline_run(folder: Path) -> OfflineRun:
    (log,) = folder.glob("run-*.wandb")
    out = OfflineRun(folder)
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run = record.run
            for item in record.run.config.update:
                out.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            row["_step"] = record.history.step.num
            out.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The offline runs under a bnlab run folder, read once wandb has flushed them.

    `run.finish()` returns before wandb-core has flushed the .wandb file (it buffers
    up to 15 s and closes the stream asynchronously); stopping the service, as
    happens when a process exits, flushes and closes every run.
    """
    wandb.teardown()
    return [read_offline_run(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Offline, silent wandb whose every folder (and $HOME) is under tmp_path."""
    folders = {"HOME": tmp_path / "home"}  # an empty $HOME proves nothing is written there
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
        folders[f"WANDB_{name}"] = tmp_path / f"wandb_{name.lower()}"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",  # no Sentry reports, ever
        **{key: str(path) for key, path in folders.items()},
    }
    for path in folders.values():
        path.mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_API_KEY", "WANDB_SERVICE", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    yield env
    # Stop this process's wandb-core service: the next test starts one under its own
    # tmp folders, and WANDB_SERVICE (set by wandb.setup) is not left for subprocesses.
    wandb.teardown()


def _cfg(tmp_path: Path, *overrides: str) -> Any:
    return load_config(["logger=wandb", f"paths.runs={tmp_path / 'runs'}", *overrides])


def _row(epoch: int) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": 2.0 / epoch,
        "train_acc": 0.2 * epoch,
        "test_loss": 2.5 / epoch,
        "test_acc": 0.1 * epoch + 0.01,
        "lr": 0.1,
        "time_s": 1.0,
        "images_per_s": 100.0,
        "elapsed_s": float(epoch),
    }


SUMMARY: dict[str, Any] = {
    "status": "completed",
    "run_id": "0123456789ab",
    "epochs": 3,
    "diverged_epoch": None,
    "test_acc": 0.31,
    "best_test_acc": 0.31,
    "params": 269_722,
    "dataset": "CIFAR-10 (JPEG q75)",
    "device": "cpu (2 threads)",
    "wall_s": 3.0,
    "bn_eval": {"running_stats_acc": 0.31, "batch_stats_acc": {"32": 0.25}},
}


def _sink(tmp_path: Path, cfg: Any, name: str, run_id: str) -> tuple[WandbSink, Path]:
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    sink = make_sink(cfg, run_dir, run_id)
    assert isinstance(sink, WandbSink)
    return sink, run_dir


# ----------------------------------------------------------------------------- unit


def test_sink_logs_config_history_and_summary_offline(tmp_path, wandb_env):
    cfg = _cfg(tmp_path, "experiment=lr", "logger.tags=[claim1]")
    sink, run_dir = _sink(tmp_path, cfg, "resnet20-bn-0123456789ab", "0123456789ab")
    for epoch in (1, 2, 3):
        sink.log_epoch(_row(epoch))
    sink.finish(SUMMARY)

    (run,) = offline_runs(run_dir)  # inside the run folder: run_dir/wandb/offline-run-*
    assert run.folder.name.endswith("-0123456789ab")
    assert run.run.run_id == "0123456789ab"
    assert run.run.display_name == "resnet20-bn-0123456789ab"
    assert run.run.run_group == "lr"  # logger.group unset: the experiment's name
    assert run.run.project == "bnlab"
    assert list(run.run.tags) == ["claim1"]

    # The resolved config, as plain nested values.
    assert run.config["experiment_name"] == "lr"
    assert run.config["logger"]["kind"] == "wandb"
    assert run.config["model"]["depth"] == cfg.model.depth
    assert run.config["optim"]["lr"] == cfg.optim.lr

    assert [r["epoch"] for r in run.history] == [1, 2, 3]
    assert [r["_step"] for r in run.history] == [1, 2, 3]  # step = epoch
    assert [r["test_acc"] for r in run.history] == [_row(e)["test_acc"] for e in (1, 2, 3)]
    assert set(_row(1)) <= set(run.history[0])

    s = run.summary
    for key in ("status", "test_acc", "best_test_acc", "epochs", "params", "dataset", "wall_s"):
        assert s[key] == SUMMARY[key], key
    assert s["device"] == "cpu (2 threads)"
    assert s["bn_eval.batch_stats_acc.32"] == 0.25  # nested dicts flattened
    assert s["bn_eval.running_stats_acc"] == 0.31
    assert "diverged_epoch" not in s  # None is not a value
    assert run.exit_code == 0

    assert not any(Path(wandb_env["HOME"]).iterdir()), "wandb wrote into $HOME"


def test_logger_group_and_failed_status(tmp_path, wandb_env):
    cfg = _cfg(tmp_path, "logger.group=mine")
    sink, run_dir = _sink(tmp_path, cfg, "r", "aaaaaaaaaaaa")
    sink.log_epoch(_row(1))
    sink.finish({"status": "failed", "error": "RuntimeError: boom", "traceback": "x\n" * 500})
    (run,) = offline_runs(run_dir)
    assert run.run.run_group == "mine"
    assert run.exit_code == 1  # failed -> a failed wandb run
    assert run.summary["error"] == "RuntimeError: boom"
    assert "traceback" not in run.summary  # stays in summary.json


def test_group_defaults_to_adhoc_and_diverged_is_not_a_failure(tmp_path, wandb_env):
    sink, run_dir = _sink(tmp_path, _cfg(tmp_path), "r", "bbbbbbbbbbbb")
    nan_row = _row(1) | {"train_loss": float("nan")}
    sink.log_epoch(nan_row)
    sink.finish({"status": "diverged", "diverged_epoch": 1})
    (run,) = offline_runs(run_dir)
    assert run.run.run_group == "adhoc"
    assert run.exit_code == 0
    assert run.summary["diverged_epoch"] == 1
    assert run.history[0]["train_loss"] != run.history[0]["train_loss"]  # NaN survives


def test_wandb_mode_env_wins_over_logger_mode(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sink, run_dir = _sink(tmp_path, _cfg(tmp_path, "logger.mode=offline"), "r", "cccccccccccc")
    sink.log_epoch(_row(1))
    sink.finish(SUMMARY)
    assert not (run_dir / "wandb").exists()


def test_logger_mode_used_when_wandb_mode_unset(tmp_path, wandb_env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    sink, run_dir = _sink(tmp_path, _cfg(tmp_path, "logger.mode=offline"), "r", "dddddddddddd")
    sink.log_epoch(_row(1))
    sink.finish(SUMMARY)
    (run,) = offline_runs(run_dir)
    assert [r["epoch"] for r in run.history] == [1]


def test_missing_wandb_package_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(BnlabError, match=r"pip install 'bnlab\[wandb\]'"):
        make_sink(_cfg(tmp_path), tmp_path, "eeeeeeeeeeee")


def test_csv_logger_makes_no_wandb_run(tmp_path, wandb_env):
    cfg = load_config([f"paths.runs={tmp_path}"])
    sink = make_sink(cfg, tmp_path, "ffffffffffff")
    sink.log_epoch(_row(1))
    sink.finish(SUMMARY)
    assert not (tmp_path / "wandb").exists()


# ----------------------------------------------------------------------------- multirun


def test_sinks_one_after_another_in_one_process(tmp_path, wandb_env):
    """The basic launcher runs every job of a sweep in the same process."""
    cfg = _cfg(tmp_path, "experiment=lr")
    ids = ["111111111111", "222222222222", "333333333333"]
    dirs = []
    for i, run_id in enumerate(ids):
        sink, run_dir = _sink(tmp_path, cfg, f"run{i}", run_id)
        dirs.append(run_dir)
        for epoch in (1, 2):
            sink.log_epoch(_row(epoch) | {"test_acc": i + epoch / 10})
        if i != 1:  # job 1 "crashes" without finishing: the next job's init closes it
            sink.finish(SUMMARY | {"test_acc": float(i)})

    for i, (run_id, run_dir) in enumerate(zip(ids, dirs, strict=True)):
        (run,) = offline_runs(run_dir)
        assert run.run.run_id == run_id
        assert [r["epoch"] for r in run.history] == [1, 2]
        assert [r["test_acc"] for r in run.history] == [i + 0.1, i + 0.2]
        assert run.exit_code is not None, f"run {i} was left open"
        if i != 1:
            assert run.exit_code == 0
            assert run.summary["test_acc"] == float(i)
            assert run.summary["status"] == "completed"


# ----------------------------------------------------------------------------- failures


def test_wandb_log_failure_warns_once_and_the_run_goes_on(tmp_path, wandb_env, capsys, monkeypatch):
    sink, run_dir = _sink(tmp_path, _cfg(tmp_path), "r", "999999999999")
    sink.log_epoch(_row(1))

    def broken_log(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("wandb-core went away\nsecond line")

    monkeypatch.setattr(sink._run, "log", broken_log)  # this run object only
    for epoch in (2, 3, 4):
        sink.log_epoch(_row(epoch))  # must not raise
    sink.finish(SUMMARY)  # a no-op now; must not raise

    warnings = [line for line in capsys.readouterr().err.splitlines() if "wandb" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("bnlab: warning: wandb logging stopped")
    assert "RuntimeError: wandb-core went away second line" in warnings[0]

    (run,) = offline_runs(run_dir)
    assert [r["epoch"] for r in run.history] == [1]  # what was logged before stays
    assert run.exit_code == 1  # closed as failed when the sink turned itself off

    # wandb itself still works for the next run in this process (a sweep goes on).
    sink2, run_dir2 = _sink(tmp_path, _cfg(tmp_path), "r2", "888888888888")
    sink2.log_epoch(_row(1))
    sink2.finish(SUMMARY)
    (run2,) = offline_runs(run_dir2)
    assert run2.exit_code == 0 and [r["epoch"] for r in run2.history] == [1]


def test_wandb_finish_failure_warns_and_does_not_raise(tmp_path, wandb_env, capsys):
    sink, _ = _sink(tmp_path, _cfg(tmp_path), "r", "777777777777")
    sink.log_epoch(_row(1))

    class BrokenSummary:
        def update(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

    real_run = sink._run
    sink._run = type("RunProxy", (), {"summary": BrokenSummary(), "finish": real_run.finish})()
    sink.finish(SUMMARY)
    sink.finish(SUMMARY)  # already off: silent
    err = capsys.readouterr().err
    assert err.count("bnlab: warning: wandb logging stopped") == 1
    assert "OSError: disk full" in err


def test_wandb_init_failure_is_a_clean_error(tmp_path, wandb_env, monkeypatch):
    def broken_init(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no credentials\nfor online mode")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.raises(BnlabError, match="wandb.init failed: RuntimeError: no credentials for"):
        make_sink(_cfg(tmp_path), tmp_path, "666666666666")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_cli_smoke_run_with_wandb_writes_csv_store_and_offline_run(tmp_path, wandb_env):
    runs = tmp_path / "runs"
    env = {**os.environ, **wandb_env, "PYTHONUNBUFFERED": "1"}
    for key in ("BNLAB_RUNS", "WANDB_SERVICE"):  # a clean child: its own wandb-core
        env.pop(key, None)
    proc = subprocess.run(
        [*BNLAB, "train", "preset=smoke", "logger=wandb", f"paths.runs={runs}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wandb:" not in proc.stdout + proc.stderr  # silent: no banners, no warnings

    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    assert {"config.yaml", "metrics.csv", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"

    (run,) = offline_runs(run_dir)
    assert run.run.run_id == summary["run_id"]
    assert run.run.display_name == run_dir.name
    assert run.run.run_group == "adhoc"
    assert run.config["preset_name"] == "smoke"
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert [r["test_acc"] for r in run.history] == [float(r["test_acc"]) for r in rows]
    assert run.summary["status"] == "completed"
    assert run.summary["test_acc"] == summary["test_acc"]
    assert run.summary["params"] == summary["params"]
    assert run.exit_code == 0
    assert not any(Path(wandb_env["HOME"]).iterdir()), "wandb wrote into $HOME"


@pytest.mark.e2e
def test_sweep_logs_one_wandb_run_per_bnlab_run_grouped_by_experiment(tmp_path, wandb_env):
    runs = tmp_path / "runs"
    env = {**os.environ, **wandb_env, "PYTHONUNBUFFERED": "1"}
    for key in ("BNLAB_RUNS", "WANDB_SERVICE"):
        env.pop(key, None)
    # The inference claim's grid, cut to two seeds of one batch size at smoke scale:
    # two bnlab runs, one after another in the basic launcher's single process. The
    # bn_modes probe (tested in test_bn_modes.py) is switched off: it costs more than
    # the training here and says nothing about wandb.
    proc = subprocess.run(
        [*BNLAB, "sweep", "experiment=inference", "preset=smoke", "train.epochs=1",
         "data.batch_size=128", "train.seed=0,1", "probe.bn_eval_batch_sizes=[100]",
         "probe.bn_modes=false", "logger=wandb", f"paths.runs={runs}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dirs = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        (run,) = offline_runs(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert run.run.run_id == summary["run_id"]
        assert run.run.run_group == "inference"
        assert [r["epoch"] for r in run.history] == [1]
        assert run.exit_code == 0
        assert "bn_eval.batch_stats_acc.100" in run.summary

"""Where metrics go besides the CSV store (always written by the store itself).

`make_sink(cfg, run_dir, run_id)` returns an object with `log_epoch(row)` and
`finish(summary)`. For logger=csv it does nothing; for logger=wandb it mirrors
the run into Weights & Biases (see `WandbSink`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from bnlab.errors import BnlabError, warn


class Sink(Protocol):
    def log_epoch(self, row: dict[str, float]) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class NullSink:
    def log_epoch(self, row: dict[str, float]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


# summary.json keys left out of the wandb summary: the traceback is kilobytes of
# text that belongs in summary.json, not in a table cell of the wandb UI.
_SUMMARY_SKIP = frozenset({"traceback"})


def _flat_scalars(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every str/number/bool leaf; None and lists are dropped.

    wandb's summary is a flat table in the UI, so `bn_eval: {batch_stats_acc: {"32": x}}`
    becomes `bn_eval.batch_stats_acc.32`.
    """
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat_scalars(value, f"{name}.")
        elif isinstance(value, str | int | float | bool):
            yield name, value


class WandbSink:
    """One wandb run per bnlab run, written next to the CSV store.

    - The wandb run id is the bnlab run id and resume="allow", so a resumed or
      requeued bnlab run continues the same wandb run instead of starting another.
      (Offline, each process writes its own `offline-run-<time>-<id>` folder, all
      with that id; step = epoch, so rows from a resume follow on, never repeat.)
    - Files go under `run_dir/wandb/` (e.g. `run_dir/wandb/offline-run-...`), so a
      run folder is self-contained and deleting it deletes its wandb data too.
    - `cfg.logger.mode` (offline by default: no network, `wandb sync` later) is
      passed to wandb unless the WANDB_MODE environment variable is set: an explicit
      `mode=` argument would override the environment, so we leave it to wandb's own
      environment handling (e.g. WANDB_MODE=disabled on a cluster, or =offline in tests).
    - wandb is a mirror, the CSV store is the source of truth: an error while
      logging or finishing prints one warning and turns the sink off, it never
      fails the run. (wandb.init failing, e.g. online without credentials, is a
      BnlabError instead: nothing has been trained yet, and the user asked for wandb.)
    - `run.finish()` returns before wandb-core has flushed `run-<id>.wandb` (it
      buffers up to 15 s); the file is complete once the stream closes, at the
      latest when the process exits.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str) -> None:
        try:
            import wandb  # lazily: only logger=wandb needs it (an optional extra)
        except ImportError:
            raise BnlabError(
                "logger=wandb needs the wandb package: pip install 'bnlab[wandb]'"
            ) from None

        lg = cfg.logger
        config = OmegaConf.to_container(cfg, resolve=True)
        mode = None if os.environ.get("WANDB_MODE") else lg.mode
        settings = wandb.Settings(
            silent=True,  # bnlab prints its own progress; no wandb banners between epochs
            # Don't wrap sys.stdout/stderr to copy the console into output.log: bnlab's
            # progress output (and pytest's capture) must see the real streams.
            console="off",
            # No system monitor: it would probe the hardware at start and sample
            # CPU/memory/disk/network every 15 s for each run -- work per run, and
            # noise next to the epoch metrics.
            x_disable_stats=True,
        )
        try:
            self._run: Any = wandb.init(
                project=lg.project,
                entity=lg.entity,
                group=lg.group or cfg.experiment_name or "adhoc",
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=run_dir,
                config=config,
                tags=list(lg.tags),
                mode=mode,
                # Hydra's basic launcher runs a whole sweep in one process: finish any
                # run still open (e.g. one interrupted by an exception) before the next.
                reinit="finish_previous",
                settings=settings,
            )
        except Exception as err:  # e.g. online without credentials: nothing trained yet
            raise BnlabError(f"logger=wandb: wandb.init failed: {_one_line(err)}") from None

    def log_epoch(self, row: dict[str, float]) -> None:
        if self._run is None:
            return
        try:
            # step=epoch: a resumed run continues at the right step instead of
            # restarting at 0. commit=True writes the row now rather than when the
            # next step arrives, so the final summary is written after the last row.
            self._run.log(dict(row), step=int(row["epoch"]), commit=True)
        except Exception as err:
            self._disable(err)

    def finish(self, summary: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            self._run.summary.update(
                {k: v for k, v in _flat_scalars(summary) if k not in _SUMMARY_SKIP}
            )
            # Exit code 1 marks the wandb run as failed; a diverged run is a result.
            status = summary.get("status")
            self._run.finish(exit_code=0 if status in ("completed", "diverged") else 1)
        except Exception as err:
            self._disable(err)
            return
        self._run = None

    def _disable(self, err: Exception) -> None:
        warn(
            f"wandb logging stopped ({_one_line(err)}); "
            "the run goes on, the CSV store (metrics.csv, summary.json) is complete"
        )
        run, self._run = self._run, None
        # Close the wandb run so it does not stay open in this process (sweeps); if
        # that fails too, wandb is broken and the warning above has said so.
        with contextlib.suppress(Exception):
            run.finish(exit_code=1)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def make_sink(cfg: DictConfig, run_dir: Path, run_id: str) -> Sink:
    if cfg.logger.kind == "wandb":
        return WandbSink(cfg, run_dir, run_id)
    return NullSink()

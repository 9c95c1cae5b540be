"""The front door: `bnlab train|sweep|report`. Thin: parse, call, print.

Hydra overrides pass through untouched (`model.depth=56 norm=none`); any bad
input ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bnlab.errors import BnlabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="bnlab: test the popular claims about Batch Normalization on CIFAR-10 ResNets.",
)


@app.callback()
def _root() -> None:
    """Keeps `train` a sub-command (Typer collapses single-command apps)."""


EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
RESUME_HINT = "interrupted; run the same command again to resume"


def _terminate_as_interrupt() -> None:
    """Make `kill PID` (SIGTERM) stop a sweep the way Ctrl-C does.

    On KeyboardInterrupt joblib kills its worker processes and bnlab prints the resume
    hint; a plain SIGTERM ended the parent alone and left the loky workers training,
    orphaned, writing into the runs folder (seen with hydra/launcher=joblib).
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


class _LateTerm:
    """A SIGTERM that reaches a sweep after its launches (see _note_late_term)."""

    enabled = False  # main() registered _exit_if_terminated_late (not in-process callers)
    received = False
    hint_shown = False  # the sweep already said RESUME_HINT
    exiting = False  # the at-exit check has run


def _note_late_term() -> None:
    """From now on SIGTERM is noted, and the process ends with the resume hint and 130.

    The launches are over: what runs now is the table and Python's shutdown (joblib
    stopping its workers). A KeyboardInterrupt raised there lands in shutdown code,
    which prints it as a 14-line 'Exception ignored' traceback and exits 0.
    """
    if not _LateTerm.enabled:
        return

    def note(signum: int, frame: Any) -> None:
        _LateTerm.received = True
        if _LateTerm.exiting:
            _exit_interrupted()

    signal.signal(signal.SIGTERM, note)


def _exit_if_terminated_late() -> None:
    """At exit, after every other at-exit function (main() registers it first): a late
    SIGTERM sets the exit code now that shutdown has done its work (workers stopped)."""
    _LateTerm.exiting = True
    if _LateTerm.received:
        _exit_interrupted()


def _exit_interrupted() -> None:
    if not _LateTerm.hint_shown:
        print(f"bnlab: error: {RESUME_HINT}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not stop the exit
            stream.flush()
    os._exit(EXIT_INTERRUPTED)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"bnlab: error: {message}", err=True)
    return typer.Exit(code)


def _config_reference() -> str:
    """The groups and keys, for --help, read from conf/ and the schema (no torch import)."""
    from omegaconf import OmegaConf

    from bnlab.compose import config_groups, load_config

    lines = ["\b", "Config groups (pick one: GROUP=OPTION):"]
    for group, options in config_groups().items():
        lines.append(f"  {group:<8} {', '.join(options)}")
    lines += ["", "\b", "Keys and their defaults (KEY=VALUE; norm keys depend on the norm):"]
    try:
        cfg = load_config([])
    except BnlabError as e:  # a broken conf/ should not break --help
        return "\n".join(lines + [f"  (could not compose the config: {e})"])
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    container = OmegaConf.to_container(cfg)
    assert isinstance(container, dict)
    walk(container, "")
    for key, value in flat.items():
        lines.append(f"  {key} = {value}")
    from dataclasses import fields

    from bnlab.config import MODEL_SCHEMAS, ModelConfig
    from bnlab.norm_kinds import NORM_KINDS

    lines += ["", "\b", "Keys of each norm kind (and the model archs it fits):"]
    for kind, entry in NORM_KINDS.items():
        keys = ", ".join(f"norm.{k}" for k in entry.keys)
        lines.append(f"  norm={kind:<12} {keys or '(no keys)'}  [{', '.join(entry.archs)}]")
    lines += ["", "\b", "Keys of each model (model=ARCH; beyond those of model=resnet):"]
    resnet_keys = {f.name for f in fields(ModelConfig)}
    for arch, schema in MODEL_SCHEMAS.items():
        own = [f for f in fields(schema) if f.name not in resnet_keys]
        keys = ", ".join(f"model.{f.name}={f.default}" for f in own)
        defaults = ", ".join(
            f"model.{f.name}={f.default}"
            for f in fields(schema)
            if f.name in ("depth", "width", "init") and arch != "resnet"
        )
        lines.append(f"  model={arch:<12} {', '.join(x for x in (keys, defaults) if x) or '-'}")
    lines += [
        "",
        "\b",
        "Examples:",
        "  bnlab train preset=cpu",
        "  bnlab train model.depth=56 norm=none optim.lr=0.3 data.batch_size=64",
        "  bnlab train model.residual=false model.depth=32",
        "  bnlab train norm=gn data.batch_size=4 train.epochs=5 train.seed=3",
        "  bnlab train model=lstm norm=ln data=fashion_mnist preset=cpu train.threads=1",
    ]
    return "\n".join(lines)


def _wants_help() -> bool:
    return any(a in ("--help", "-h") for a in sys.argv[1:])


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=_config_reference() if _wants_help() else None,
)
def train(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Hydra overrides, e.g. norm=none")
    ] = None,
) -> None:
    """Train one run. Finished runs are reported, interrupted ones resumed."""
    from bnlab.compose import load_config
    from bnlab.config import validate

    try:
        cfg = load_config(overrides or [])
        validate(cfg)  # before importing torch: bad input fails fast
    except BnlabError as e:
        raise _fail(str(e)) from None

    from bnlab.progress import ConsoleReporter
    from bnlab.recipe import RunFailed
    from bnlab.recipe import train as train_run
    from bnlab.store import StoreWriteError

    # `kill PID` (SIGTERM) ends a run as Ctrl-C does: checkpoint kept, exit 130, the hint.
    _terminate_as_interrupt()
    try:
        reporter = ConsoleReporter()
        outcome = train_run(cfg, reporter)
    except StoreWriteError as e:  # e.g. the run folder turned read-only mid-run
        raise _fail(
            f"{e} (files already written are kept: once it is writable, "
            "run the same command again to resume)"
        ) from None
    except BnlabError as e:
        raise _fail(str(e)) from None
    except RunFailed as e:
        raise _fail(
            f"run failed: {e} (details in {e.outcome.run_dir}/summary.json)", EXIT_FAILED
        ) from None
    except KeyboardInterrupt:
        raise _fail(RESUME_HINT, EXIT_INTERRUPTED) from None

    s = outcome.summary or {}
    where = str(outcome.run_dir)
    if outcome.status == "busy":
        raise _fail(f"{where} is being trained by another process", EXIT_FAILED)
    acc = s.get("test_acc")
    acc_text = f"test acc {100 * acc:.2f}%" if acc is not None else "no accuracy"
    if outcome.status == "done":
        typer.echo(f"already done ({s.get('status')}): {acc_text}, {where}")
        return
    resumed = f", resumed at epoch {outcome.resumed_from}" if outcome.resumed_from else ""
    detail = (
        f"diverged at epoch {s.get('diverged_epoch')}"
        if outcome.status == "diverged"
        else f"best {100 * (s.get('best_test_acc') or 0):.2f}%"
    )
    typer.echo(
        f"{outcome.status}: {acc_text} ({detail}) on {s.get('dataset')}, "
        f"{s.get('epochs')} epochs, {s.get('wall_s', 0):.0f}s{resumed} -> {where}"
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def sweep(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Hydra overrides; comma lists sweep, e.g. norm=bn,none optim.lr=0.1,1"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the grid's runs and their state; run nothing.")
    ] = False,
) -> None:
    """Run a grid of runs: experiment=NAME|all, hydra/launcher=joblib|submitit_local|slurm.

    sweep.pack=auto|1|N: runs that differ only in seed, lr, weight decay, ... train
    together as one model (auto: where it pays on the device; 1: each alone).
    sweep.pack_graph=true: each pack's step in one CUDA graph on a GPU.

    Finished runs are skipped, interrupted ones resumed. One failing or
    diverging run never stops the sweep; the exit code is 1 only if a run failed.
    """
    from rich.console import Console

    from bnlab.sweep.grid import expand, split_experiment_all
    from bnlab.sweep.packs import labels, split_pack_graph, split_pack_setting

    sweeps = []
    try:
        overrides, pack_setting = split_pack_setting(overrides or [])
        overrides, pack_graph = split_pack_graph(overrides)
        parts = split_experiment_all(overrides)
        for part in parts:
            if len(parts) > 1:  # composing experiment=all takes minutes: say what it is doing
                typer.echo(f"composing {part[0]} ({len(sweeps) + 1}/{len(parts)})", err=True)
            sweeps.append(expand(part))
    except BnlabError as e:
        raise _fail(str(e)) from None
    if not any(s.jobs for s in sweeps):
        raise _fail("the sweep has no runs")
    untuned = [s for s in sweeps if s.untuned]
    if untuned and not dry_run:  # refused before any run: not after a suite's first hour
        s = untuned[0]
        others = ",".join(_experiment_of(o) for o in sweeps if not o.untuned and o.jobs)
        hint = f"; meanwhile sweep the others: experiment={others}" if others else ""
        raise _fail(f"{_experiment_of(s)} cannot run yet: {s.untuned}{hint}")

    from bnlab.sweep.launch import launch, pack_plan, preflight
    from bnlab.sweep.table import Row, render, rows_for

    if not dry_run:
        try:  # what every run would hit (no CUDA, a broken dataset): once, before any launch
            preflight(sweeps)
        except BnlabError as e:
            raise _fail(str(e)) from None
    _terminate_as_interrupt()
    # Piped output (logs, CI) gets a wide table instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    all_rows: list[Row] = []
    started = time.perf_counter()
    try:
        for s in sweeps:
            outcomes = None
            try:
                units = pack_plan(s, pack_setting)
                if not dry_run:
                    outcomes = launch(s, Path(s.jobs[0].cfg.paths.runs), units, pack_graph)
            except BnlabError as e:  # e.g. a SLURM request the cluster refuses
                raise _fail(str(e)) from None
            in_packs = sum(len(u.nums) for u in units if u.is_pack)
            title = f"{s.experiment or 'sweep'}: {len(s.jobs)} runs, launcher {s.launcher}"
            if in_packs:
                graph = " (sweep.pack_graph=true)" if pack_graph else ""
                title += f", {in_packs} of them in packs{graph}"
            rows = rows_for(s, outcomes, labels(units))
            all_rows += rows
            render(title, s, rows, console)
            if dry_run and "slurm" in s.launcher:
                from bnlab.sweep.launch import sweep_dir
                from bnlab.sweep.slurm import sbatch_script

                folder = sweep_dir(Path(s.jobs[0].cfg.paths.runs), s)
                console.print(f"sbatch script for each job (array of {len(s.jobs)}):")
                typer.echo(sbatch_script(s.launcher_params, folder, "bnlab"))
    except KeyboardInterrupt:
        _LateTerm.hint_shown = True
        raise _fail(RESUME_HINT, EXIT_INTERRUPTED) from None
    finally:
        _note_late_term()
    counts: dict[str, int] = {}
    for row in all_rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    verb = "would run" if dry_run else f"took {time.perf_counter() - started:.0f}s"
    console.print(f"{len(all_rows)} runs ({summary}); {verb}", highlight=False)
    console.print(f"budget: {_budget(sweeps, all_rows).describe()}", highlight=False)
    for s in untuned:
        console.print(f"not ready to run: {_experiment_of(s)}: {s.untuned}", highlight=False)
    if not dry_run and counts.get("failed", 0):
        raise typer.Exit(EXIT_FAILED)


def _experiment_of(s: Any) -> str:
    """The experiment a sweep was composed from, as the command line names it."""
    chosen = [o.partition("=")[2] for o in s.task_overrides if o.startswith("experiment=")]
    return chosen[-1] if chosen else s.experiment or "sweep"


def _budget(sweeps: list[Any], rows: list[Any]) -> Any:
    """The sweeps' size in training images (bnlab.sweep.budget), each run once; "to
    train": the runs not finished now (after a sweep: those that failed). `rows`: the
    table's, one per job in the same order, whose status the store already gave."""
    from bnlab.store import FINISHED, run_name
    from bnlab.sweep.budget import budget

    jobs = [j for s in sweeps for j in s.jobs]
    return budget(
        (run_name(j.cfg), j.cfg, row.status in FINISHED) for j, row in zip(jobs, rows, strict=True)
    )


def _section_help() -> str:
    """The report's sections, read from its registry (only for --help: it imports pandas)."""
    if not _wants_help():
        return "One section only"
    from bnlab.report import SECTIONS

    return f"One section only: {', '.join(SECTIONS)}"


@app.command()
def report(
    runs: Annotated[
        Path | None, typer.Option("--runs", help="Runs folder (default: paths.runs)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where the report goes")] = Path("results"),
    experiment: Annotated[str | None, typer.Option("--experiment", help=_section_help())] = None,
) -> None:
    """Tables, figures and a verdict per claim and mechanism section, from the run store."""
    from bnlab.report import build_report

    if runs is None:
        from bnlab.compose import load_config

        try:
            runs = Path(load_config([]).paths.runs)
        except BnlabError as e:
            raise _fail(str(e)) from None
    try:
        result = build_report(runs, out, experiment)
    except BnlabError as e:
        raise _fail(str(e)) from None
    for warning in result.warnings:
        typer.echo(f"bnlab: warning: {warning}", err=True)
    for claim in result.claims:
        earlier = ", ".join(f"v{v} {verdict}" for v, verdict, _ in claim.superseded)
        typer.echo(
            f"{claim.key:<15} {claim.verdict:<14} {claim.title}"
            + (f" (earlier rules: {earlier})" if earlier else "")
        )
    typer.echo(f"report: {result.report_md} and {result.report_html}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run directory (with checkpoint.pt)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output file (default: RUN/model[-folded].ts)")
    ] = None,
    fold_bn: Annotated[
        bool, typer.Option("--fold-bn", help="Fold each conv+BN pair into one conv")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Export a diverged, failed or unfinished run too (with a warning; "
            "its outputs may all be NaN)",
        ),
    ] = False,
) -> None:
    """Export a trained run as TorchScript for inference (eval mode).

    Only a completed run with finite weights exports unless --force is given.
    """
    from bnlab.export import export_run

    target = out or run / ("model-folded.ts" if fold_bn else "model.ts")
    try:
        path = export_run(run, target, fold=fold_bn, force=force)
    except BnlabError as e:
        raise _fail(str(e)) from None
    typer.echo(f"exported {run} -> {path}")


def main() -> None:
    # Registered before anything else can register one, so it runs last (at-exit
    # functions run in reverse order); only the real process gets it, not in-process
    # callers (tests) whose signal handling it would take over.
    atexit.register(_exit_if_terminated_late)
    _LateTerm.enabled = True
    app()


if __name__ == "__main__":
    main()

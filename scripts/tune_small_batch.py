"""Step 2 of the small-batch grid: write each norm's tuned base lr into
conf/grid/small_batch.yaml, as the batch rule (v4) tunes it, before any small-batch run.

    python scripts/tune_small_batch.py --runs results/cpu/runs --preset cpu          # show
    python scripts/tune_small_batch.py --runs results/cpu/runs --preset cpu --write  # write

The tuning runs are the lr grid's BN runs and batch_tune's GN and LN runs at the
reference batch R (64 at preset=cpu, 128 at preset=gpu). Each norm's base lr is the lr
with the best mean final test accuracy over seeds (a diverged run counting as chance;
ties to the smaller lr): bnlab.report.small_batch.tuned_bases, the rule's own code, so
the grid and the rule that checks it cannot disagree. Nothing is written unless every
norm has at least 3 finished seeds at every lr of its tuning window. The small-batch
points are lr = base x b/R for b = 2..32, and the Ghost BN arms run at BN's base lr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnlab.errors import BnlabError
from bnlab.report.load import load_runs
from bnlab.report.small_batch import NORMS, tuned_bases

GRID = Path(__file__).resolve().parents[1] / "conf" / "grid" / "small_batch.yaml"
SMALL = (2, 4, 8, 16, 32)
GHOSTS = (32, 8, 2)
MIN_SEEDS = 3
REFERENCE = {"cpu": 64, "gpu": 128}
HEADER = """\
# The small-batch claim, step 2 (rule batch v4, bnlab/report/small_batch.py; Wu & He
# 2018): the true batch b = 2, 4, 8, 16, 32 for BN, GN and LN, lr = base x b / R (the
# linear scaling rule; R, the reference batch: 128, 64 at preset=cpu), the same epochs
# (so a small batch also takes R/b times the steps). Each norm's base lr is its tuned
# one: the best mean accuracy at R over its window (BN: the lr grid, lr.yaml; GN, LN:
# batch_tune.yaml). TWO STEPS: the bases below are written by
# scripts/tune_small_batch.py after those runs and before any run of this grid; the
# rule checks every run against the tuned base and leaves out one that is not at it.
# Also the ghost-BN decomposition (the batch_why section): at R, BN (with the bn_modes
# probe) and Ghost BN with statistics over g = 32, 8, 2 samples at BN's tuned lr, seeds
# paired. 3 seeds. 57 runs; at preset=cpu x 10,000 images = 0.57M.
"""


def lr_text(lr: float) -> str:
    """An lr as the yaml holds it: 12 significant digits, so the rule (which accepts
    base x b/R within a relative 1e-6) finds it; :g's 6 digits can miss (0.000195313)."""
    return f"{lr:.12g}"


def union(bases: dict[str, float], reference: int, indent: str) -> list[str]:
    lines = []
    for norm in NORMS:
        for b in SMALL:
            lr = lr_text(bases[norm] * b / reference)
            lines.append(f'{indent}- {{arm: {norm}, data.batch_size: "{b}", optim.lr: "{lr}"}}')
    ghosts = ",".join(f"ghost_bn{g}" for g in GHOSTS)
    lines.append(f'{indent}- {{arm: "bn,{ghosts}", optim.lr: "{lr_text(bases["bn"])}"}}')
    return lines


PROVISIONAL = "PROVISIONAL"  # a note starting so: the bases are placeholders


def untuned(preset: str) -> str:
    """The grid's `untuned` value (bnlab sweep refuses the grid while it is there)."""
    return (
        f"its base lrs are not tuned yet: sweep experiment=lr,batch_tune preset={preset}, "
        f"then python scripts/tune_small_batch.py --runs RUNS --preset {preset} --write"
    )


def grid_text(cpu: dict[str, float], gpu: dict[str, float], notes: dict[str, str]) -> str:
    """The whole grid file: the top level (preset=gpu and full) and the cpu section; a
    preset whose note is PROVISIONAL gets `untuned`, which `bnlab sweep` refuses to run."""
    out = [HEADER.rstrip("\n")]
    out.append(f"# preset=gpu (and full), R = 128: {notes['gpu']}")
    if notes["gpu"].startswith(PROVISIONAL):
        out.append(f'untuned: "{untuned("gpu")}"')
    out.append("union:")
    out += union(gpu, REFERENCE["gpu"], "  ")
    out.append(f"# preset=cpu, R = 64: {notes['cpu']}")
    out.append("cpu:")
    if notes["cpu"].startswith(PROVISIONAL):
        out.append(f'  untuned: "{untuned("cpu")}"')
    out.append("  union:")
    out += union(cpu, REFERENCE["cpu"], "    ")
    return "\n".join(out) + "\n"


def current_bases(text: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Each preset's bases and note as the grid file holds them now."""
    import yaml

    tree = yaml.safe_load(text)
    bases: dict[str, dict[str, float]] = {}
    for preset, products in (("gpu", tree["union"]), ("cpu", tree["cpu"]["union"])):
        found: dict[str, float] = {}
        for p in products:
            if "data.batch_size" in p and p["arm"] in NORMS:
                b = int(p["data.batch_size"])
                found[p["arm"]] = float(p["optim.lr"]) * REFERENCE[preset] / b
        bases[preset] = {k: round(v, 10) for k, v in found.items()}
    notes = {}
    for line in text.splitlines():
        for preset in ("gpu", "cpu"):
            if line.startswith(f"# preset={preset}"):
                notes[preset] = line.split(": ", 1)[1]
    return bases, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--preset", choices=sorted(REFERENCE), required=True)
    ap.add_argument("--write", action="store_true", help="rewrite conf/grid/small_batch.yaml")
    ap.add_argument("--grid", type=Path, default=GRID, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        reference, tunings = tuned_bases(load_runs(args.runs))
        if reference != REFERENCE[args.preset]:
            raise BnlabError(
                f"the runs' reference batch is {reference}, not preset={args.preset}'s "
                f"{REFERENCE[args.preset]}"
            )
        missing = [n for n in NORMS if n not in tunings]
        if missing:
            raise BnlabError(f"no tuning runs at batch {reference} for {', '.join(missing)}")
        for t in tunings.values():
            seeds = t.seeds_per_lr
            short = {lr: n for lr, n in seeds.items() if n < MIN_SEEDS}
            if short:
                raise BnlabError(
                    f"{t.norm}: fewer than {MIN_SEEDS} finished seeds at lr "
                    + ", ".join(f"{lr:g} ({n})" for lr, n in short.items())
                    + ": finish the tuning runs first"
                )
    except BnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for t in tunings.values():
        means = ", ".join(f"{lr:g}: {100 * m:.1f}%" for lr, m in t.means.items())
        print(f"{t.norm}: base lr {t.base_lr:g}  ({means}){'  ' + t.edge if t.edge else ''}")
    if not args.write:
        return 0
    text = args.grid.read_text()
    bases, notes = current_bases(text)
    bases[args.preset] = {n: tunings[n].base_lr for n in NORMS}
    notes[args.preset] = (
        "tuned bases "
        + ", ".join(f"{n} {tunings[n].base_lr:g}" for n in NORMS)
        + f" (scripts/tune_small_batch.py --runs {args.runs})"
    )
    args.grid.write_text(grid_text(bases["cpu"], bases["gpu"], notes))
    print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

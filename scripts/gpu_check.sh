#!/usr/bin/env bash
# The one command to run on a lent GPU machine (no network there): installs bnlab's
# missing packages from wheelhouse/, prints the device, runs the GPU tests, the
# throughput benchmarks, the `experiment=all preset=gpu` sweep and the report, and
# leaves in OUT_DIR what a commit needs, as at most 8 files:
#
#   status.json     each step's exit code, seconds and outcome; the device; whether the
#                   sweep's packs trained as CUDA graphs (pack_graph); what was cut
#   check.log       everything printed (device, pytest, benchmarks, the sweep's table)
#   bench.json      scripts/bench_throughput.py --variants auto (pipelines x precision,
#                   memory format, eager / compile / CUDA graphs), batch 128
#   bench512.json   the same at batch 512, bf16 channels_last (eager, compile, CUDA graphs)
#                   and fp32 channels_last eager
#                   (the bench step also prints a torch.profiler summary of 50 bf16 eager
#                   steps into check.log: kernel launches per step, the GPU's busy share)
#   pack.json       scripts/bench_pack.py: K = 1, 16, 32, 64 ResNet-20s trained as one
#                   module (bnlab.pack), batch 128 and 2 per run, bf16 channels_last,
#                   eager and the whole step in one CUDA graph, against the solo step
#   (scaling.json   with --steps ...,scaling,...: 1, 2, 4, 8 training processes sharing
#                   the GPU; not by default, and not with pack: 8 files at most)
#   runs.tar.gz     the run store without checkpoints (config, metrics, summary, probes)
#   resume.tar.gz   checkpoints of the unfinished runs, at most 15 MiB (the next slot
#                   resumes them; ones that do not fit restart from scratch)
#   report.tar.gz   `bnlab report` over the finished runs (report.md/html, figures, csv)
#
# It stops at --minutes (default 9: a lent GPU runs one command for at most 10 minutes):
# each step gets what is left, the sweep is interrupted cleanly (every run keeps its
# last epoch's checkpoint) and the files are written anyway. The sweep is resumable:
# unpack runs.tar.gz and resume.tar.gz into the runs folder (default runs/gpu), carry
# it, and run again -- finished runs are skipped, unfinished ones resume.
#
#   scripts/gpu_check.sh OUT_DIR                        # everything, 9 minutes
#   scripts/gpu_check.sh --steps sweep,report OUT_DIR   # a later slot: the sweep goes on
#   scripts/gpu_check.sh --smoke OUT_DIR                # the same sequence on CPU, minutes
#
# Options: --smoke (CPU, preset=smoke, tiny benchmarks); --no-install (use $PYTHON's
# own packages, no wheelhouse); --minutes M; --n-jobs N (runs sharing the GPU in the
# sweep, default 4); --runs DIR; --steps LIST (of tests,bench,pack,scaling,sweep,report);
# --print-sweeps (print the sweeps' experiment lists, one a line, and run nothing).
# $PYTHON picks the interpreter (default python3: the device's, with its CUDA torch).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SMOKE=0 INSTALL=1 PRINT=0 MINUTES=9 NJOBS=4 RUNS="" STEPS="tests,bench,pack,sweep,report" OUT=""
RESERVE_S=60    # kept back from the sweep for the report and the files
RESUME_CAP=$((15 * 1024 * 1024))

die() { echo "gpu_check: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --no-install) INSTALL=0 ;;
        --print-sweeps) PRINT=1 ;;
        --minutes) MINUTES="${2:-}"; shift ;;
        --n-jobs) NJOBS="${2:-}"; shift ;;
        --runs) RUNS="${2:-}"; shift ;;
        --steps) STEPS="${2:-}"; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$OUT" ] || die "one OUT_DIR only, got '$OUT' and '$1'"; OUT="$1" ;;
    esac
    shift
done
[ -n "$OUT" ] || die "usage: scripts/gpu_check.sh [--smoke] [--minutes M] ... OUT_DIR"
[[ "$MINUTES" =~ ^[0-9]*[1-9][0-9]*([.][0-9]+)?$|^[0-9]*[.][0-9]*[1-9][0-9]*$ ]] ||
    die "--minutes must be a positive number, got '$MINUTES'"
[[ "$NJOBS" =~ ^[1-9][0-9]*$ ]] || die "--n-jobs must be a positive integer, got '$NJOBS'"
for step in ${STEPS//,/ }; do
    [[ " tests bench pack scaling sweep report " == *" $step "* ]] ||
        die "unknown step '$step' in --steps (tests, bench, pack, scaling, sweep, report)"
done
[[ ",$STEPS," == *",pack,"* && ",$STEPS," == *",scaling,"* ]] &&
    die "--steps: pack or scaling, not both (OUT_DIR holds at most 8 files)"
mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || die "cannot write to OUT_DIR '$OUT'"
[ -z "$(ls -A "$OUT")" ] || die "OUT_DIR '$OUT' is not empty (it receives at most 8 new files)"
OUT="$(cd "$OUT" && pwd)"

LIMIT_S=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ -z "$RUNS" ]; then
    RUNS="$REPO/runs/gpu"
    [ "$SMOKE" = 1 ] && RUNS="$WORK/runs"
fi
mkdir -p "$RUNS" && RUNS="$(cd "$RUNS" && pwd)"
LOG="$OUT/check.log"
STEPLOG="$WORK/steps.tsv"
: >"$STEPLOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

left() { echo $((LIMIT_S - SECONDS)); }
# run_step NAME CAP_S COMMAND...: run under a time limit (SIGINT first, as Ctrl-C; the
# sweep then stops cleanly), record exit code and seconds; never stop the script.
# Returns the command's exit code (1 when skipped), for a step that depends on it.
run_step() {
    local name="$1" cap="$2" budget rc start
    shift 2
    budget=$(( $(left) - RESERVE_S ))
    [ "$name" = report ] && budget=$(left)
    [ "$cap" -gt 0 ] && [ "$cap" -lt "$budget" ] && budget="$cap"
    if [ "$budget" -lt 15 ]; then
        echo "== $name: skipped, $(left) s left"
        printf '%s\t%s\t%s\n' "$name" "skipped" 0 >>"$STEPLOG"
        return 1
    fi
    echo "== $name (at most ${budget} s): $*"
    start=$SECONDS
    timeout --signal=INT --kill-after=30 "$budget" "$@"
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - start)) >>"$STEPLOG"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    return "$rc"
}
wants() { [[ ",$STEPS," == *",$1,"* ]]; }

# ---------------------------------------------------------------- environment
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$INSTALL" = 1 ]; then
    compgen -G "$REPO/wheelhouse/*.whl" >/dev/null ||
        die "no wheels in $REPO/wheelhouse (run 'make wheelhouse' here and carry wheelhouse/)"
    echo "== install: wheelhouse/*.whl -> $WORK/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$WORK/site" "$REPO"/wheelhouse/*.whl ||
        die "pip could not install the wheelhouse"
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi
BNLAB=("$PYTHON" -m bnlab)
cd "$REPO"
if [ "$PRINT" = 0 ]; then  # --print-sweeps needs neither
echo "== device"
command -v nvidia-smi >/dev/null && nvidia-smi -L
"$PYTHON" - <<'EOF' | tee "$WORK/device.json"
import json, platform
from importlib.metadata import PackageNotFoundError, version
import bnlab, hydra, omegaconf, torch
cuda = torch.cuda.is_available()
def have(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
deps = "typer rich pandas matplotlib numpy pillow joblib cloudpickle pyyaml torchvision submitit"
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
    "gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    "hydra": hydra.__version__, "omegaconf": omegaconf.__version__, "hydra_from": hydra.__file__,
    "bnlab_from": bnlab.__file__,
    "packages": {name: have(name) for name in deps.split()},
}))
EOF
[ "${PIPESTATUS[0]}" = 0 ] || die "$PYTHON cannot import torch, hydra, omegaconf and bnlab"
# Decode the bundled CIFAR-10 into data/cache once (a fresh machine has no cache), before
# benchmark or sweep processes would each start decoding it at the same time.
echo "== data"
"$PYTHON" -c "import time; t = time.time()
from bnlab.config import DataConfig
from bnlab.data import load_dataset
d = load_dataset(DataConfig(name='cifar10_jpeg'))
print(f'{d.variant}: {len(d.train_y)} + {len(d.test_y)} images in {time.time() - t:.1f} s')" ||
    die "the bundled dataset does not load (data/cifar10-jpeg.tar.gz travels with the tree)"
fi

# ---------------------------------------------------------------- the steps
if [ "$SMOKE" = 1 ]; then
    BENCH=(--train-size 512 --steps 2 --repeats 1 --workers 0 --variants fp32-cl-eager)
    BENCH512=(--train-size 1024 --steps 1 --repeats 1 --workers 0 --variants fp32-cl-eager)
    PROFILE=(--train-size 512 --steps 2 --top 3)
    SCALING=(--train-size 512 --steps 2 --scaling 1,2)
    PACK=(--ks 1,2 --batches 2 --formats cl --images 16 --steps 2 --repeats 1)
    # Four 1-epoch runs (lr 50 diverges) through the same launcher, then their report.
    SWEEP=(preset=smoke "norm=bn,none" "optim.lr=0.05,50" train.epochs=1)
    NJOBS=2
else
    BENCH=(--variants auto --steps 100 --repeats 3 --workers 8)
    BENCH512=(--variants bf16-cl-eager,bf16-cl-compile,bf16-cl-cuda_graphs,fp32-cl-eager
              --steps 50 --repeats 3 --workers 8)
    PROFILE=(--variants bf16-cl-eager --steps 50)
    SCALING=(--steps 200 --scaling 1,2,4,8)
    # The packed-runs targets (>= 150k img/s at batch 128 over a pack, >= 45k solo as one
    # graph, >= 30k at batch 2): a few seconds a configuration.
    PACK=(--device cuda --precision bf16 --graph --ks 1,16,32,64 --batches 128,2 --formats cl
          --images 100000 --steps 30 --repeats 2)
    # The sequence claims train on Fashion-MNIST (Debian's dataset-fashion-mnist), which a
    # machine without it cannot load: there the suite runs every other claim and says so.
    FMNIST=1
    if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        FMNIST=0
        echo "== no Fashion-MNIST here: the sweep leaves out experiment=sequence"
    fi
    # `experiment=all preset=gpu`, as one or two sweeps (one experiment list a line):
    # while small_batch's gpu grid is untuned (its base lrs come from the lr and
    # batch_tune runs, scripts/tune_small_batch.py), the suite's claims up to batch_tune
    # run first, then the tuning writes the bases, then the rest.
    mapfile -t STAGES < <("$PYTHON" - "$FMNIST" <<'EOF'
import sys
from bnlab.sweep.grid import read_grid, suite
names = suite(["preset=gpu"])
if sys.argv[1] == "0":
    names = [n for n in names if n != "sequence"]
if read_grid("small_batch", "gpu")[1] and "small_batch" in names and "batch_tune" in names:
    cut = max(names.index("batch_tune"), names.index("lr")) + 1
    print(",".join(names[:cut]))
    print(",".join(names[cut:]))
else:
    print(",".join(names))
EOF
    )
    [ ${#STAGES[@]} -gt 0 ] || die "cannot read the gpu suite (conf/grid/_suites.yaml)"
    SWEEP=("experiment=${STAGES[0]}" preset=gpu)
fi
if [ "$PRINT" = 1 ]; then  # --print-sweeps: the sweeps this call would run, one a line
    [ "$SMOKE" = 1 ] && STAGES=("${SWEEP[*]}")
    printf '%s\n' "${STAGES[@]}"
    exit 0
fi
if wants tests; then
    run_step tests 180 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
fi
if wants bench; then
    run_step bench 180 "$PYTHON" scripts/bench_throughput.py "${BENCH[@]}" --out "$OUT/bench.json"
    run_step bench512 120 "$PYTHON" scripts/bench_throughput.py --batch 512 "${BENCH512[@]}" \
        --out "$OUT/bench512.json"
    run_step profile 60 "$PYTHON" scripts/bench_throughput.py --profile "${PROFILE[@]}"
fi
if wants pack; then
    run_step pack 150 "$PYTHON" scripts/bench_pack.py "${PACK[@]}" --out "$OUT/pack.json"
fi
if wants scaling; then
    run_step scaling 120 "$PYTHON" scripts/bench_throughput.py "${SCALING[@]}" \
        --out "$OUT/scaling.json"
fi
PACK_GRAPH=false
if wants sweep; then
    # Each pack's step as one CUDA graph (sweep.pack_graph=true: 49.9 -> 34.5 minutes of
    # sweep planned, scripts/gpu_budget.py) only once this machine has just shown a
    # graphed pack step equal to the eager one; otherwise (a failure, a skip: no CUDA)
    # the packs train eager. The runs are the same either way (train.compile is not
    # part of a run's id), so a later call may differ from an earlier one.
    graph_test=tests/test_gpu.py::test_a_pack_step_in_one_cuda_graph_equals_the_eager_step
    if run_step graph_test 90 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
        --junitxml="$WORK/graph_test.xml" "$graph_test" &&
        grep -q 'skipped="0"' "$WORK/graph_test.xml"  # passed, both cases: not skipped
    then
        PACK_GRAPH=true
    fi
    echo "== the packs' steps as CUDA graphs: $PACK_GRAPH"
    # What every sweep of this call shares (one sweep, or two around the tuning).
    SHARED=("sweep.pack_graph=$PACK_GRAPH" "paths.runs=$RUNS" hydra/launcher=joblib
            "hydra.launcher.n_jobs=$NJOBS")
    run_step sweep 0 "${BNLAB[@]}" sweep "${SWEEP[@]}" "${SHARED[@]}"
    if [ "$SMOKE" = 0 ] && [ "${#STAGES[@]}" = 2 ]; then
        # The small-batch bases from the runs just made (refused, exit 2, while a tuning
        # lr has fewer than 3 finished seeds); the grid is then the tuned one, and the
        # next slot's call tunes again from the same runs (the same bases).
        rest="${STAGES[1]}"
        tune=("$PYTHON" scripts/tune_small_batch.py --runs "$RUNS" --preset gpu --write)
        if ! run_step tune 60 "${tune[@]}"; then
            rest=$(tr , '\n' <<<"$rest" | grep -vx small_batch | paste -sd, -)
            echo "== not tuned: the rest of the suite runs without small_batch"
        fi
        [ -n "$rest" ] && run_step sweep_rest 0 "${BNLAB[@]}" sweep "experiment=$rest" \
            preset=gpu "${SHARED[@]}"
    fi
fi
finished() { grep -qE '"status": "(completed|diverged)"' "$1/summary.json" 2>/dev/null; }
any_finished() {
    local run
    for run in "$RUNS"/*/; do finished "$run" && return 0; done
    return 1
}
if wants report; then
    if any_finished; then
        run_step report 0 "${BNLAB[@]}" report --runs "$RUNS" --out "$WORK/report"
    else  # e.g. the time limit came before the first run finished: nothing to report yet
        echo "== report: skipped, no finished run in $RUNS"
        printf '%s\t%s\t%s\n' report "no runs" 0 >>"$STEPLOG"
    fi
fi

# ---------------------------------------------------------------- the files
if compgen -G "$RUNS/*/config.yaml" >/dev/null; then
    tar -czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude='checkpoint*.pt' --exclude=.lock \
        --exclude='.sweeps' --exclude='wandb' .
fi
resume=() dropped=() size=0
for ckpt in "$RUNS"/*/checkpoint.pt; do
    [ -f "$ckpt" ] || continue
    run="$(dirname "$ckpt")"
    finished "$run" && continue
    bytes=$(stat -c %s "$ckpt")
    if [ $((size + bytes)) -le "$RESUME_CAP" ]; then
        resume+=("$(basename "$run")/checkpoint.pt")
        size=$((size + bytes))
    else
        dropped+=("$(basename "$run")")
    fi
done
[ ${#resume[@]} -gt 0 ] && tar -czf "$OUT/resume.tar.gz" -C "$RUNS" "${resume[@]}"
[ -d "$WORK/report" ] && tar -czf "$OUT/report.tar.gz" -C "$WORK" report

"$PYTHON" - "$STEPLOG" "$WORK/device.json" "$RUNS" "$MINUTES" "$SMOKE" "$PACK_GRAPH" \
    "${dropped[@]}" >"$OUT/status.json" <<'EOF'
import json, sys
from pathlib import Path
steplog, device, runs, minutes, smoke, pack_graph, *dropped = sys.argv[1:]
steps = {}
for line in Path(steplog).read_text().splitlines():
    name, rc, seconds = line.split("\t")
    outcome = {"0": "ok", "124": "time limit", "skipped": "skipped (no time left)",
               "no runs": "skipped (no finished run)"}
    steps[name] = {"exit": rc, "seconds": int(seconds), "outcome": outcome.get(rc, "failed")}
states = {}
for run in Path(runs).iterdir():
    if run.is_dir() and not run.name.startswith("."):
        try:
            state = json.loads((run / "summary.json").read_text()).get("status", "failed")
        except (OSError, ValueError):
            state = "unfinished"
        states[state] = states.get(state, 0) + 1
device = json.loads(Path(device).read_text())
print(json.dumps({
    "smoke": smoke == "1", "minutes": float(minutes), "device": device,
    "steps": steps, "pack_graph": pack_graph == "true", "runs": states,
    "resume_dropped": dropped,
}, indent=2))
EOF
echo "== files in $OUT:"
ls -l "$OUT"
exec >&- 2>&-
wait "$TEE_PID"  # check.log complete before the caller reads it
# Exit 0 when every step that ran finished or hit the time limit; 1 when one failed.
# (stdout and stderr are closed by now: mawk, Debian's awk, exits 2 when it cannot close them.)
awk -F'\t' '$2 !~ /^(0|124|skipped|no runs)$/ { bad = 1 } END { exit bad }' "$STEPLOG" >/dev/null 2>&1

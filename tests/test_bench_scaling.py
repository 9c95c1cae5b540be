"""scripts/bench_throughput.py --scaling: a worker that dies stops the measurement.

On the lent H200, scaling workers crashed at start (a torch 2.11 API change) and the
parent waited out its whole time limit on a queue nobody would fill.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_worker_stops_the_others_and_names_its_exit_code():
    bench = load_script()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    # One worker that would wait a long time (as at a barrier), one that crashes.
    procs = [ctx.Process(target=time.sleep, args=(120,)), ctx.Process(target=os._exit, args=(3,))]
    for p in procs:
        p.start()
    try:
        with pytest.raises(SystemExit, match="exit code 3"):
            bench._collect(procs, out, timeout=120)
        procs[0].join(10)
        assert not procs[0].is_alive(), "the waiting worker was left running"
    finally:
        for p in procs:
            p.kill()

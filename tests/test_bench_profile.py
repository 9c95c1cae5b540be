"""scripts/bench_throughput.py --profile: where a training step's time goes, as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_throughput.py"


@pytest.mark.e2e
def test_profile_names_the_ops_that_take_a_steps_time(tmp_path):
    out = tmp_path / "profile.json"
    args = ["--profile", "--train-size", "256", "--steps", "2", "--top", "3", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["profiled_steps"] == 2 and result["wall_ms_per_step"] > 0
    ops = result["top_cpu_ops"]
    assert 1 <= len(ops) <= 3
    times = [op["self_us_per_step"] for op in ops]
    assert times == sorted(times, reverse=True) and times[0] > 0
    # A ResNet's step on a CPU is dominated by its convolutions (forward or backward).
    assert any("conv" in op["op"] for op in ops), ops
    assert result["device_busy_share"] is None and result["top_device_ops"] == []

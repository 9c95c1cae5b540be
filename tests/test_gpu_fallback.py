"""The GPU switches on a machine without a GPU: clean fallbacks, and the wiring of runs per GPU.

(The GPU itself is exercised by tests/test_gpu.py, `-m gpu`.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bnlab.compose import load_config
from bnlab.sweep import job
from bnlab.train import runtime
from bnlab.train.runtime import compile_model, resolve_runtime, share_gpu


def train_cfg(**kw: object) -> SimpleNamespace:
    base = {"device": "auto", "precision": "auto", "channels_last": True, "compile": False}
    return SimpleNamespace(**(base | {"threads": None} | kw))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))


def example() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def test_cuda_graphs_without_cuda_is_one_warning_and_eager(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = resolve_runtime(train_cfg(compile="cuda_graphs"))
    assert rt.device.type == "cpu" and not rt.compile and not rt.cuda_graphs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnlab: warning: train.compile=cuda_graphs")
    model = tiny()
    assert compile_model(model, rt, example) is model
    assert rt.describe() == "cpu (fp32)"


def test_a_compiler_that_fails_means_eager_with_one_warning(capsys, monkeypatch):
    def broken(model: nn.Module, mode: str | None = None):
        def forward(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler\nsecond line of a long compiler log")

        return forward

    monkeypatch.setattr(torch, "compile", broken)
    rt = resolve_runtime(train_cfg(device="cpu", compile=True))
    model = tiny()
    model(example()[0])  # materialise the lazy layer
    assert compile_model(model, rt, example) is model
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bnlab: warning: torch.compile failed (RuntimeError: no C++ compiler): "
        "running in eager mode"
    ]


def test_the_compile_trial_leaves_no_trace(monkeypatch):
    seen: list[str | None] = []

    def eager_compiler(model: nn.Module, mode: str | None = None) -> nn.Module:
        seen.append(mode)
        return model  # compiles to itself: the trial really trains and evaluates it

    monkeypatch.setattr(torch, "compile", eager_compiler)
    rt = resolve_runtime(train_cfg(device="cpu", compile=True))
    model = tiny()
    model(example()[0])
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    forward = compile_model(model, rt, example)
    assert forward is model and seen == [None]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training  # the mode it came in with


def test_jobs_sharing_a_gpu_each_get_their_memory_share(monkeypatch):
    fractions: list[tuple[float, int]] = []

    def set_fraction(fraction: float, device: object) -> None:
        # As torch 2.11 on an H200 did: torch.device("cuda") without an index is refused
        # ("Expected a torch.device with a specified index or an integer").
        if not isinstance(device, int):
            raise ValueError(f"Expected a torch.device with a specified index, got {device}")
        fractions.append((fraction, device))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    try:
        share_gpu(4)
        rt = resolve_runtime(train_cfg())
        assert rt.device.type == "cuda" and rt.precision == "bf16"
        assert fractions == [(pytest.approx(0.9 / 4), 0)]
        share_gpu(1)  # one job: no limit
        resolve_runtime(train_cfg())
        assert len(fractions) == 1
        share_gpu(4)
        resolve_runtime(train_cfg(device="cpu"))  # a CPU run never touches CUDA
        assert len(fractions) == 1
    finally:
        share_gpu(1)


@pytest.mark.parametrize(
    ("launcher", "cores", "jobs", "threads"),
    [
        ({}, 16, 1, None),  # basic: in the sweep's own process
        ({"n_jobs": 4}, 16, 4, 4),
        ({"n_jobs": 8}, 2, 2, 1),  # capped at the cores
        ({"n_jobs": -1}, 16, 16, 1),  # joblib: one per core
        ({"n_jobs": 1}, 16, 1, None),
        ({"cpus_per_task": 8, "n_jobs": 4}, 16, 1, 8),  # submitit: its own cores
    ],
)
def test_sweep_jobs_split_threads_and_gpu(launcher, cores, jobs, threads):
    assert job.job_share(launcher, cores) == job.JobShare(threads, jobs)


def test_a_sweep_job_declares_its_gpu_share(monkeypatch, tmp_path):
    shares: list[int] = []
    monkeypatch.setattr(runtime, "share_gpu", shares.append)

    def fake_train(cfg, reporter):
        assert cfg.train.threads == 1
        return SimpleNamespace(status="completed", summary={"test_acc": 0.5})

    import bnlab.recipe

    monkeypatch.setattr(bnlab.recipe, "train", fake_train)
    cfg = load_config(["preset=smoke", f"paths.runs={tmp_path}"])
    task = job.SweepTask((3,), (cfg,), str(tmp_path), threads=1, gpu_jobs=2)
    assert job.run_task(task) == ["completed"]
    assert shares == [2]
    assert cfg.train.threads is None  # the sweep's own config is left as it was
    record = (tmp_path / "jobs" / "3.json").read_text()
    assert '"status": "completed"' in record


def test_train_compile_takes_three_values():
    from bnlab.config import validate
    from bnlab.errors import BnlabError

    for value in ("true", "false", "cuda_graphs"):
        validate(load_config([f"train.compile={value}"]))
    for value in ("1", "yes", "reduce-overhead"):
        with pytest.raises(BnlabError, match="train.compile"):
            validate(load_config([f"train.compile={value}"]))


def test_a_cuda_graphed_forward_marks_a_new_step_at_every_call(monkeypatch):
    # CUDA-graph trees need to know where an iteration starts (seen failing on an H200
    # without it); the mark itself needs no GPU, so the wrapper is checked here.
    from bnlab.train.runtime import StepMarked

    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    inner = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    wrapped = StepMarked(inner)
    x = torch.ones(4, 3)
    wrapped.eval()
    assert not inner.training  # eval()/train() reach the compiled model
    assert torch.equal(wrapped(x), inner(x))
    wrapped(x)
    assert len(marks) == 2

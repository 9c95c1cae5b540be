"""core.headline: a section's headline from its measured comparisons (issue 24)."""

from __future__ import annotations

import math

from bnlab.report.core import INCONCLUSIVE, MIXED, NOT_SUPPORTED, SUPPORTED, Verdict, headline
from bnlab.report.intervals import Estimate, difference, verdict_row


def row(verdict: str, effect: float | None = 1.0, blocked: bool = False) -> Verdict:
    low = None if effect is None else effect - 1
    high = None if effect is None else effect + 1
    return Verdict("vs X", verdict, effect=effect, low=low, high=high, blocked=blocked)


def test_agreeing_measured_rows_decide() -> None:
    assert headline([row(SUPPORTED), row(SUPPORTED)]) == SUPPORTED
    assert headline([row(NOT_SUPPORTED)]) == NOT_SUPPORTED


def test_a_measured_undecided_row_beside_a_decided_one_is_mixed() -> None:
    # The old `overall` read this SUPPORTED (the batch section's complaint in issue 24).
    assert headline([row(SUPPORTED), row(INCONCLUSIVE, 0.03)]) == MIXED
    assert headline([row(SUPPORTED), row(NOT_SUPPORTED)]) == MIXED


def test_rows_without_a_measured_effect_do_not_count() -> None:
    never_trains = row(INCONCLUSIVE, None)
    censored = row(INCONCLUSIVE, 2.0, blocked=True)
    assert headline([row(SUPPORTED), never_trains, censored]) == SUPPORTED
    assert headline([never_trains, censored]) == INCONCLUSIVE
    assert headline([]) == INCONCLUSIVE


def test_verdict_row_marks_an_up_front_reason_as_blocking() -> None:
    effect = difference(Estimate((2.9, 3.0, 3.1)), Estimate((0.0, 0.1, -0.1)))
    blocked = verdict_row("vs X", effect, 1.0, "pp", "best lr at the ladder's edge")
    free = verdict_row("vs X", effect, 1.0, "pp")
    assert blocked.blocked and blocked.verdict == INCONCLUSIVE
    assert not free.blocked and free.effect is not None and math.isfinite(free.effect)
    assert headline([blocked]) == INCONCLUSIVE
    assert free.verdict == headline([free]) == SUPPORTED


def test_a_cpu_folder_says_which_claims_are_decided_at_gpu_scale(tmp_path):
    from bnlab.report.load import load_runs
    from bnlab.report.render import CPU_SCALE, header_facts
    from tests.report_synth import make_run

    make_run(tmp_path / "cpu", norm="bn", preset="cpu")
    assert ("Scale", CPU_SCALE) in header_facts(load_runs(tmp_path / "cpu"))
    make_run(tmp_path / "gpu", norm="bn", preset="gpu")
    assert "Scale" not in dict(header_facts(load_runs(tmp_path / "gpu")))

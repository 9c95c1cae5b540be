from types import SimpleNamespace

import pytest

from bnlab.train.schedule import lr_factor


def optim(**kw):
    base = dict(
        schedule="multistep", milestones=[0.5, 0.75], gamma=0.1, warmup_epochs=0.0, peak_at=0.25
    )
    return SimpleNamespace(**(base | kw))


def test_multistep_divides_by_ten_at_half_and_three_quarters():
    o = optim()
    assert [lr_factor(s, 100, 10, o) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_warmup_is_linear_then_hands_over():
    o = optim(schedule="constant", warmup_epochs=1.0)
    assert [lr_factor(s, 100, 4, o) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])


def test_onecycle_peaks_at_peak_at_and_ends_near_zero():
    o = optim(schedule="onecycle", peak_at=0.25)
    factors = [lr_factor(s, 100, 10, o) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert max(factors) == pytest.approx(1.0)
    assert factors.index(max(factors)) == 25
    assert factors[-1] < 0.02


def test_cosine_starts_at_one_and_decays_monotonically():
    o = optim(schedule="cosine")
    factors = [lr_factor(s, 100, 10, o) for s in range(100)]
    assert factors[0] == 1.0
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-1] < 0.01

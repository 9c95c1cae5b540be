import pytest

from bnlab.train.schedule import Schedule, warmup_steps


def schedule(**kw):
    base = dict(kind="multistep", total_steps=100, milestones=(0.5, 0.75), gamma=0.1)
    return Schedule(**(base | kw))


def test_multistep_divides_by_ten_at_half_and_three_quarters():
    s = schedule()
    assert [s.factor(t) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_warmup_is_linear_then_hands_over():
    s = schedule(kind="constant", warmup_steps=warmup_steps(1.0, 4))
    assert [s.factor(t) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])


def test_warmup_epochs_round_to_whole_steps():
    # Python's round: halves go to the even step count.
    assert [warmup_steps(e, 7) for e in (0.0, 0.5, 1.5, 2.5)] == [0, 4, 10, 18]


def test_onecycle_peaks_at_peak_at_and_ends_near_zero():
    s = schedule(kind="onecycle", peak_at=0.25)
    factors = [s.factor(t) for t in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert max(factors) == pytest.approx(1.0)
    assert factors.index(max(factors)) == 25
    assert factors[-1] < 0.02


def test_cosine_starts_at_one_and_decays_monotonically():
    s = schedule(kind="cosine")
    factors = [s.factor(t) for t in range(100)]
    assert factors[0] == 1.0
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-1] < 0.01


def test_an_unknown_kind_fails_when_built():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        schedule(kind="step")

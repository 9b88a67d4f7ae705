"""Means with 95% intervals, by hand."""

import math

import pytest

from lightning_rlhf.stats import mean_interval, rerun_interval, t_quantile_975


def test_interval_by_hand():
    """[1, 2, 3]: mean 2, sample std 1, t_{0.975, 2} = 4.303, half-width 4.303 / sqrt(3)."""
    interval = mean_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(4.303 / math.sqrt(3))
    assert 0.0 in interval and 4.4 in interval and 4.5 not in interval
    assert interval.as_dict()["ci95"] == pytest.approx([2 - 2.4843, 2 + 2.4843], abs=1e-4)


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776 and t_quantile_975(30) == 2.042
    assert t_quantile_975(500) == 1.96
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_one_value_has_no_width_and_none_is_an_error():
    assert mean_interval([0.7]).half_width == 0.0
    with pytest.raises(ValueError):
        mean_interval([])


def test_rerun_interval_by_hand():
    """Six pooled values, a rerun of three: mean ± t_{0.975, 5} · s · sqrt(1/6 + 1/3)."""
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # mean 2.5, s = sqrt(3.5)
    interval = rerun_interval(values, 3)
    assert interval.mean == 2.5 and interval.n == 6
    assert interval.half_width == pytest.approx(2.571 * math.sqrt(3.5) * math.sqrt(0.5))
    # wider than the interval of the pooled mean itself: a rerun's own mean moves too
    assert interval.half_width > mean_interval(values).half_width
    assert rerun_interval([1.0, 2.0, 3.0], 3).half_width == pytest.approx(4.303 * math.sqrt(2 / 3))


def test_rerun_interval_refuses_what_it_cannot_say():
    with pytest.raises(ValueError, match="at least two"):
        rerun_interval([0.7], 3)
    with pytest.raises(ValueError, match="at least one seed"):
        rerun_interval([0.7, 0.8], 0)

"""Intervals (``treesae.stats``)."""
import numpy as np
import pytest

from treesae.stats import interval, mean_difference


def test_mean_difference_needs_two_seeds_per_group():
    d, lo, hi = mean_difference([1.0, 1.2], [0.0, 0.2])
    assert d == pytest.approx(1.0) and lo == pytest.approx(1 - 2 * 0.1414213, rel=1e-5) and hi > d
    assert np.isnan(mean_difference([1.0], [0.0, 0.1])[0])


def test_interval_is_a_percentile_interval_that_drops_lost_replicates():
    boot = np.r_[np.arange(1000.0), [np.nan] * 50]
    lo, hi = interval(boot)
    assert lo == pytest.approx(np.quantile(np.arange(1000.0), 0.025)) and hi == pytest.approx(np.quantile(np.arange(1000.0), 0.975))
    assert all(np.isnan(interval(np.r_[np.arange(9.0), [np.nan] * 100])))  # fewer than 10 replicates: no interval

"""Intervals shared by the analyses and the verdicts: bootstrap percentiles and differences of means."""
from __future__ import annotations

import math

import numpy as np

CI = 0.95


def interval(boot: np.ndarray, ci: float = CI) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates, where a resample lost a group, left out)."""
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if len(b) < 10:
        return float("nan"), float("nan")
    return float(np.quantile(b, (1 - ci) / 2)), float(np.quantile(b, (1 + ci) / 2))


def mean_difference(a, b) -> tuple[float, float, float]:
    """mean(a) - mean(b) and that +- 2 standard errors (NaN when a group has fewer than 2 values)."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan"), float("nan")
    d = float(a.mean() - b.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return d, d - 2 * se, d + 2 * se

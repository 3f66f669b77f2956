"""Which training factor changes the learned features: pairs of SAEs by the factor they differ in, and each
factor's effect on sharing with an SAE-bootstrap interval. Works on stage 04's pairs table and the runs table's
factor columns (``treesae.runs.FACTORS``); no torch.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ..runs import FACTORS
from ..seeds import BOOT_TAG
from ..stats import interval


def differing_factor(meta: pd.DataFrame, a, b, factors=FACTORS):
    """The single factor in which SAEs a and b (index labels of meta) differ, "none", or None when
    they differ in several. Only factors that are columns of meta count."""
    cols = [f for f in factors if f in meta.columns]
    diff = [f for f in cols if not _same(meta.at[a, f], meta.at[b, f])]
    return "none" if not diff else diff[0] if len(diff) == 1 else None


def _same(x, y) -> bool:
    return (pd.isna(x) and pd.isna(y)) if (pd.isna(x) or pd.isna(y)) else x == y


def single_factor_pairs(meta: pd.DataFrame, factors=FACTORS) -> list[tuple]:
    """All unordered pairs of meta's index that differ in exactly one factor (what factor_table needs)."""
    return [(a, b) for a, b in itertools.combinations(meta.index, 2)
            if differing_factor(meta, a, b, factors) not in (None, "none")]


def factor_table(pairs: pd.DataFrame, meta: pd.DataFrame, factors=FACTORS) -> pd.DataFrame:
    """Shared ratio by the one training factor that differs between the two SAEs of a pair.

    pairs: ``compare_saes`` output (columns a, b, dec_shared, enc_shared, ...); meta: one row per SAE,
    indexed by name, with factor columns (corpus, seed, architecture, k, d_sae, b_dec_init, tied_init,
    layer; missing ones are ignored). Pairs differing in several factors are dropped.
    Returns per factor: n_pairs, mean/min/max of dec_shared, mean enc_shared and mean dec_mean_cos,
    sorted by mean dec_shared (ascending: the factor that changes features most first).
    """
    p = pairs.copy()
    p["factor"] = [differing_factor(meta, a, b, factors) for a, b in zip(p.a, p.b)]
    p = p[p.factor.notna() & (p.factor != "none")]
    g = p.groupby("factor")
    out = pd.DataFrame({"n_pairs": g.size(), "dec_shared": g.dec_shared.mean(), "dec_shared_min": g.dec_shared.min(),
                        "dec_shared_max": g.dec_shared.max(), "enc_shared": g.enc_shared.mean(),
                        "dec_mean_cos": g.dec_mean_cos.mean()})
    return out.sort_values("dec_shared").reset_index()


def _sae_bootstrap(pairs: pd.DataFrame, n_boot: int, seed: int) -> np.ndarray:
    """Weights [n_boot, n_pairs] of a bootstrap over SAEs: each replicate draws the SAEs with replacement and a
    pair counts the product of its two SAEs' multiplicities (pairs sharing an SAE are not independent)."""
    names = pd.unique(pd.concat([pairs.a, pairs.b]))
    idx = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng([seed, BOOT_TAG])
    counts = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot).astype(np.float64)
    return counts[:, pairs.a.map(idx).to_numpy()] * counts[:, pairs.b.map(idx).to_numpy()]


def _wmean(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    tot = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (w * v).sum(1) / np.where(tot > 0, tot, 1), np.nan)


def seeds_differ(pairs: pd.DataFrame, meta: pd.DataFrame) -> np.ndarray:
    """Bool per pair (columns a, b: index labels of meta): its two SAEs have different seeds."""
    if "seed" not in meta.columns:
        return np.zeros(len(pairs), dtype=bool)
    return np.array([not _same(meta.at[a, "seed"], meta.at[b, "seed"]) for a, b in zip(pairs.a, pairs.b)], dtype=bool)


def cross_seed_sharing(pairs: pd.DataFrame, meta: pd.DataFrame, run, factors=FACTORS, column: str = "dec_shared",
                       n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean ``column`` over pairs of SAEs that differ only in seed and share every other factor with ``run``
    (an index label of meta), with a bootstrap interval over SAEs: n_pairs, mean, lo, hi."""
    cols = [f for f in factors if f in meta.columns and f != "seed"]
    like = meta.index[[all(_same(meta.at[n, f], meta.at[run, f]) for f in cols) for n in meta.index]]
    p = pairs[pairs.a.isin(like) & pairs.b.isin(like)]
    p = p[seeds_differ(p, meta)]
    if not len(p):
        return dict(n_pairs=0, mean=float("nan"), lo=float("nan"), hi=float("nan"))
    v = p[column].to_numpy(np.float64)
    lo, hi = interval(_wmean(_sae_bootstrap(p, n_boot, seed), v))
    return dict(n_pairs=len(p), mean=float(v.mean()), lo=lo, hi=hi)


def factor_effects(pairs: pd.DataFrame, meta: pd.DataFrame, factors=FACTORS, column: str = "dec_shared",
                   n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How much each factor changes the learned features, from pairs whose two SAEs have different seeds.

    For factor F, among pairs that differ in seed and agree on every factor but F: ``within`` = mean ``column``
    of those at the same level of F, ``between`` = of those at different levels. effect = within - between, the
    sharing lost by changing F beyond what a new seed loses (0: F changes nothing a seed does not). Interval:
    percentile bootstrap over SAEs (``_sae_bootstrap``), the same replicates for every factor, returned as the
    second table ([n_boot, factor]) so that contrasts between factors get intervals too (``interval``).
    Rows: factor, n_within, n_between, within, between, effect, lo, hi, for factors with pairs of both kinds.
    """
    cols = [f for f in factors if f in meta.columns and f != "seed"]
    p = pairs[seeds_differ(pairs, meta)].reset_index(drop=True)
    w = _sae_bootstrap(p, n_boot, seed) if len(p) else np.zeros((n_boot, 0))
    v = p[column].to_numpy(np.float64)
    rows, boot = [], {}
    for f in cols:
        others = [g for g in cols if g != f]
        same_rest = np.array([all(_same(meta.at[a, g], meta.at[b, g]) for g in others) for a, b in zip(p.a, p.b)], bool)
        same_f = np.array([_same(meta.at[a, f], meta.at[b, f]) for a, b in zip(p.a, p.b)], bool)
        win, btw = same_rest & same_f, same_rest & ~same_f
        if not win.any() or not btw.any():
            continue
        boot[f] = _wmean(w * win, v) - _wmean(w * btw, v)
        rows.append(dict(factor=f, n_within=int(win.sum()), n_between=int(btw.sum()), within=float(v[win].mean()),
                         between=float(v[btw].mean()), effect=float(v[win].mean() - v[btw].mean()),
                         **dict(zip(("lo", "hi"), interval(boot[f])))))
    cols_out = ["factor", "n_within", "n_between", "within", "between", "effect", "lo", "hi"]
    return pd.DataFrame(rows, columns=cols_out), pd.DataFrame(boot)


def layer_pairs(meta: pd.DataFrame, factors=FACTORS) -> list[tuple]:
    """Pairs of SAEs at adjacent layers that agree on every other factor (matching along layers).
    Adjacent: consecutive among the layers present in meta (harvested layers are often spaced, e.g.
    3, 9, 15, 21), not necessarily one block apart."""
    rank = {L: i for i, L in enumerate(sorted(set(meta["layer"])))}
    out = []
    for a, b in itertools.combinations(meta.index, 2):
        if differing_factor(meta, a, b, factors) == "layer" and abs(rank[meta.at[a, "layer"]] - rank[meta.at[b, "layer"]]) == 1:
            out.append((a, b) if meta.at[a, "layer"] < meta.at[b, "layer"] else (b, a))
    return out

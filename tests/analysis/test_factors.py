"""Which training factor changes the features (``treesae.analysis.factors``): pairs by factor, effects with intervals."""
import numpy as np
import pandas as pd
import pytest

from treesae.analysis import factors as FX
from treesae.analysis.factors import cross_seed_sharing, factor_effects
from treesae.stats import interval


def test_factor_table():
    meta = pd.DataFrame({"corpus": ["brown", "brown", "py", "brown", "brown"], "seed": [0, 1, 0, 0, 1],
                         "architecture": ["topk"] * 4 + ["relu"], "k": [32] * 5},
                        index=["s0", "s1", "d0", "r0", "x"])
    assert FX.differing_factor(meta, "s0", "s1") == "seed" and FX.differing_factor(meta, "s1", "d0") is None
    assert set(FX.single_factor_pairs(meta)) == {("s0", "s1"), ("s0", "d0"), ("s1", "x"), ("d0", "r0"), ("s1", "r0")}
    pairs = pd.DataFrame({"a": ["s0", "s0", "s1", "s1", "d0"], "b": ["s1", "d0", "x", "d0", "r0"],
                          "dec_shared": [0.6, 0.1, 0.4, 0.0, 0.2], "enc_shared": [0.5, 0.1, 0.3, 0.0, 0.1],
                          "dec_mean_cos": [0.8, 0.4, 0.7, 0.3, 0.5]})
    ft = FX.factor_table(pairs, meta)
    assert list(ft.factor) == ["corpus", "architecture", "seed"]  # ascending shared ratio; s1-d0 dropped
    assert ft.set_index("factor").n_pairs.to_dict() == {"corpus": 2, "architecture": 1, "seed": 1}
    assert ft.set_index("factor").dec_shared["corpus"] == pytest.approx(0.15)
    layered = pd.DataFrame({"layer": [3, 4, 5, 5], "seed": [0, 0, 0, 1]}, index=list("abcd"))
    assert FX.layer_pairs(layered) == [("a", "b"), ("b", "c")]


def _planted_pairs(effects, noise=0.01, seeds=(0, 1, 2), seed=0):
    """All pairs of a 2 x 2 x 2 design (corpus, architecture, layer) x seeds. Shared ratio: 0.6, minus 0.1 when
    the seeds differ, minus the planted effect of each other factor that differs, plus Gaussian noise."""
    import itertools
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame([dict(corpus=d, architecture=a, layer=L, seed=s)
                         for d in ("A", "B") for a in ("topk", "relu") for L in (3, 9) for s in seeds])
    meta.index = [f"r{i}" for i in range(len(meta))]
    rows = []
    for x, y in itertools.combinations(meta.index, 2):
        v = 0.6 - (0.1 if meta.at[x, "seed"] != meta.at[y, "seed"] else 0)
        v -= sum(e for f, e in effects.items() if meta.at[x, f] != meta.at[y, f])
        rows.append(dict(a=x, b=y, dec_shared=v + rng.normal(0, noise)))
    return pd.DataFrame(rows), meta


def test_factor_effects_recover_a_planted_effect_with_an_interval_that_covers_it():
    pairs, meta = _planted_pairs({"corpus": 0.2, "architecture": 0.05, "layer": 0.0})
    t, boot = factor_effects(pairs, meta, factors=("corpus", "seed", "architecture", "layer"))
    t = t.set_index("factor")
    for f, e in {"corpus": 0.2, "architecture": 0.05, "layer": 0.0}.items():
        assert t.at[f, "lo"] <= e <= t.at[f, "hi"], (f, t.loc[f].to_dict())
        assert t.at[f, "effect"] == pytest.approx(e, abs=0.01)
    assert t.at["layer", "lo"] < 0 < t.at["layer", "hi"]  # no effect planted: the interval holds zero
    assert t.at["architecture", "lo"] > 0  # a small effect is still detected
    lo, hi = interval(boot["corpus"] - boot["architecture"])  # the contrast the paper's claim (b) needs
    assert lo > 0.1 and hi < 0.2
    # within-pairs differ in seed only; every pair in them has different seeds
    assert t.at["corpus", "n_within"] > 0 and t.at["corpus", "n_between"] > 0
    # the cross-seed baseline: pairs like r0 differing only in seed (3 seeds: 3 pairs)
    cs = cross_seed_sharing(pairs, meta, "r0", factors=("corpus", "seed", "architecture", "layer"))
    assert cs["n_pairs"] == 3 and cs["lo"] <= 0.5 <= cs["hi"] and cs["mean"] == pytest.approx(0.5, abs=0.02)
    # noise wider than the effect: no interval may exclude zero for a null factor, and the width grows
    wide, _ = factor_effects(*_planted_pairs({"corpus": 0.0}, noise=0.1), factors=("corpus", "seed", "architecture", "layer"))
    wide = wide.set_index("factor")
    assert wide.at["corpus", "lo"] < 0 < wide.at["corpus", "hi"]
    assert wide.at["corpus", "hi"] - wide.at["corpus", "lo"] > 3 * (t.at["corpus", "hi"] - t.at["corpus", "lo"])


def test_factor_effects_need_replicated_seeds():
    pairs, meta = _planted_pairs({"corpus": 0.2}, seeds=(0,))  # one seed: no pair with different seeds
    t, boot = factor_effects(pairs, meta, factors=("corpus", "seed", "architecture", "layer"))
    assert t.empty and boot.empty


def test_factor_effects_of_no_pairs():
    pairs, meta = _planted_pairs({"corpus": 0.2})
    t, boot = factor_effects(pairs.iloc[:0], meta, factors=("corpus", "seed"))
    assert t.empty and boot.empty
    assert cross_seed_sharing(pairs.iloc[:0], meta, "r0", factors=("corpus", "seed"))["n_pairs"] == 0

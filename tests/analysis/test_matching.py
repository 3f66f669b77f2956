import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from treesae.analysis import matching as M


def unit(X):
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def planted_pair(n=500, d=64, shared=0.4, noise=0.02, seed=0, n_b=None):
    """B holds a `shared` fraction of A's rows (plus noise, cos ~0.99) in shuffled order; the rest is random."""
    rng = np.random.default_rng(seed)
    A = unit(rng.standard_normal((n, d)))
    n_b = n_b or n
    k = int(shared * n)
    B = unit(rng.standard_normal((n_b, d)))
    where = rng.permutation(n_b)[:k]
    B[where] = unit(A[:k] + noise * rng.standard_normal((k, d)))
    return A, B, dict(zip(range(k), where))


def test_cosine_matrix():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((5, 7)) * 3, torch.randn(4, 7, dtype=torch.float64)
    C = M.cosine_matrix(A, B)
    Bn = B.numpy()
    want = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (Bn / np.linalg.norm(Bn, axis=1, keepdims=True)).T
    np.testing.assert_allclose(C, want, atol=1e-6)


@pytest.mark.parametrize("shared", [0.0, 0.4, 0.75])
def test_planted_shared_fraction_recovered(shared):
    """Tolerance: the measured shared ratio is within 0.01 of the planted fraction, and every planted pair
    is matched to its partner (random 64-d directions never reach cos 0.7 by chance at n=500)."""
    A, B, truth = planted_pair(shared=shared)
    m = M.match_features(A, B)
    assert list(m.columns) == ["i", "j", "cos"] and len(m) == 500 and (np.diff(m.i) > 0).all()
    assert abs(M.shared_ratio(m.cos) - shared) <= 0.01
    got = dict(zip(m.i, m.j))
    assert all(got[i] == j for i, j in truth.items())
    assert M.shared_ratio(m.cos, threshold=0.999) < shared + 1e-9 and np.isnan(M.shared_ratio([]))


@pytest.mark.parametrize("seed", range(12))
def test_sparse_assignment_equals_scipy(seed):
    """The certified sparse solver reaches scipy's optimum (total weight, and the same pairs when unique),
    on random, tied, rectangular and low-rank (hard for candidate graphs) instances."""
    rng = np.random.default_rng(seed)
    na, nb = int(rng.integers(3, 260)), int(rng.integers(3, 260))
    kind = seed % 4
    if kind == 0:
        C = rng.standard_normal((na, nb))
    elif kind == 1:
        C = np.round(rng.standard_normal((na, nb)), 1)  # many ties
    elif kind == 2:
        C = M.cosine_matrix(*planted_pair(n=na, n_b=max(na, nb), shared=0.3, seed=seed)[:2])
    else:
        C = M.cosine_matrix(rng.standard_normal((na, 4)) + 0.2 * rng.standard_normal((na, 16)) @ np.eye(16, 4),
                            rng.standard_normal((nb, 4)))
    C = C.astype(np.float32)
    for m in (2, 12):
        r, c = M.assign(C, method="sparse", m=m)
        r0, c0 = linear_sum_assignment(C.astype(np.float64), maximize=True)
        assert len(r) == min(C.shape) and len(set(c)) == len(c) and len(set(r)) == len(r)
        assert C[r, c].astype(np.float64).sum() == pytest.approx(C[r0, c0].astype(np.float64).sum(), abs=1e-6)
        if kind == 0:  # continuous random values: the optimum is unique
            assert (dict(zip(r, c)) == dict(zip(r0, c0)))


@pytest.mark.parametrize("kind", ["random", "ties", "low_rank", "tiny"])
def test_dense_and_scipy_methods_reach_the_same_optimum(kind):
    """method="auto" (lapjv on square matrices, scipy otherwise) reaches scipy's optimum."""
    rng = np.random.default_rng(7)
    n = 2 if kind == "tiny" else 300
    C = {"random": lambda: rng.standard_normal((n, n)), "ties": lambda: np.round(rng.standard_normal((n, n)), 1),
         "tiny": lambda: rng.standard_normal((n, n)),
         "low_rank": lambda: np.outer(rng.standard_normal(n), rng.standard_normal(n)) + 0.1 * rng.standard_normal((n, n))}[kind]()
    C = C.astype(np.float32)
    r0, c0 = M.assign(C, "scipy")
    best = C[r0, c0].astype(np.float64).sum()
    for shape in (C, C[: n // 2 or 1]):  # square (lapjv) and rectangular (scipy)
        r, c = M.assign(shape)
        rs, cs = M.assign(shape, "scipy")
        assert sorted(r) == list(range(min(shape.shape))) and len(set(c)) == len(c)
        assert shape[r, c].astype(np.float64).sum() == pytest.approx(shape[rs, cs].astype(np.float64).sum(), abs=1e-6)
    if kind in ("random", "low_rank"):  # continuous values: a unique optimum, so the same pairs
        r, c = M.assign(C)
        assert C[r, c].astype(np.float64).sum() == pytest.approx(best, abs=1e-6) and np.array_equal(c, c0)
    with pytest.raises(ValueError, match="method must be"):
        M.assign(C, "hungarian")


def test_sparse_assignment_medium():
    """A 1,200 x 1,500 instance goes through the sparse path and matches scipy."""
    A, B, _ = planted_pair(n=1200, d=48, shared=0.5, noise=0.3, n_b=1500, seed=5)
    C = M.cosine_matrix(A, B)
    r, c = M.assign(C, "sparse")
    r0, c0 = linear_sum_assignment(C.astype(np.float64), maximize=True)
    assert C[r, c].astype(np.float64).sum() == pytest.approx(C[r0, c0].astype(np.float64).sum(), abs=1e-6)


def test_within_sae_top2():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((300, 16))
    W[5] = W[7] * 2  # a duplicate direction
    t = M.within_sae_top2(W, block=64)
    C = M.cosine_matrix(W, W).astype(np.float64)
    np.fill_diagonal(C, -2)
    np.testing.assert_allclose(t, C.max(1), atol=1e-6)
    assert t[5] == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu", "stacked", "residual", "tree"])
def test_cosine_to_init_is_one_before_training(arch):
    from treesae.runs import Run, build
    extra = {"relu": {"l1_coef_by_k": {4: 1.0}}, "tree": {"n_levels": 2}}
    sae = build(Run(architecture=arch, corpus="x", layer=0, d_sae=64, k=4, seed=3), 16, extra)
    np.testing.assert_allclose(M.cosine_to_init(sae), 1, atol=1e-6)


def test_cosine_to_init():
    from treesae.saes import build
    sae = build("topk", d_in=16, d_sae=64, k=4, seed=3)
    with torch.no_grad():
        sae.W_dec[:10] = -sae.W_dec[:10]
    c = M.cosine_to_init(sae)
    np.testing.assert_allclose(c[:10], -1, atol=1e-6)
    np.testing.assert_allclose(c[10:], 1, atol=1e-6)


def fake_saes():
    A, B, _ = planted_pair(n=300, d=32, shared=0.5, seed=2)
    _, Cm, _ = planted_pair(n=300, d=32, shared=0.2, seed=3)
    rng = np.random.default_rng(4)
    # encoder of "b" keeps the shared latents' directions only 30% of the time (encoder/decoder disagree)
    return {"a": dict(W_dec=A, W_enc=A.T), "b": dict(W_dec=B, W_enc=unit(B + 0.8 * rng.standard_normal(B.shape)).T),
            "c": dict(W_dec=Cm, W_enc=None)}


def test_compare_saes_and_match_pair():
    saes = fake_saes()
    t, f = M.compare_saes(saes, features=True)
    assert list(zip(t.a, t.b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = t.iloc[0]
    assert abs(ab.dec_shared - 0.5) <= 0.01 and ab.enc_shared < ab.dec_shared
    assert 0 <= ab.agree <= 1 and np.isnan(t.iloc[1].enc_shared)  # c has no encoder
    assert set(f.columns) >= {"a", "b", "i", "j_dec", "cos_dec", "j_enc", "cos_enc", "cos_dec_at_enc"}
    fab = f[(f.a == "a") & (f.b == "b")]
    assert M.shared_ratio(fab.cos_dec) == ab.dec_shared
    assert t.top2_a.between(0, 1).all()
    one = M.compare_saes(saes, pairs=[("b", "a")])
    assert len(one) == 1 and one.dec_shared[0] == pytest.approx(ab.dec_shared)


def test_directions_from_modules():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W_enc, self.W_dec = torch.nn.Parameter(torch.randn(8, 20)), torch.nn.Parameter(torch.randn(20, 8))

    class Enc(torch.nn.Module):
        def __init__(self, d_in, w):
            super().__init__()
            self.W_enc = torch.nn.Parameter(torch.randn(d_in, w))

    class Levels(torch.nn.Module):
        def __init__(self, d_ins):
            super().__init__()
            self.W_dec = torch.nn.Parameter(torch.randn(12, 8))
            self.encoders = torch.nn.ModuleList([Enc(d, 6) for d in d_ins])

    f = Flat()
    np.testing.assert_allclose(M.directions(f, "encoder"), f.W_enc.detach().numpy().T)
    assert M.directions(Levels([8, 8]), "encoder").shape == (12, 8)
    assert M.directions(Levels([8, 6]), "encoder") is None  # stacked: level 1 reads codes
    assert M.directions(Levels([8, 6]), "decoder").shape == (12, 8)


def test_factor_table():
    meta = pd.DataFrame({"corpus": ["brown", "brown", "py", "brown", "brown"], "seed": [0, 1, 0, 0, 1],
                         "architecture": ["topk"] * 4 + ["relu"], "k": [32] * 5},
                        index=["s0", "s1", "d0", "r0", "x"])
    assert M.differing_factor(meta, "s0", "s1") == "seed" and M.differing_factor(meta, "s1", "d0") is None
    assert set(M.single_factor_pairs(meta)) == {("s0", "s1"), ("s0", "d0"), ("s1", "x"), ("d0", "r0"), ("s1", "r0")}
    pairs = pd.DataFrame({"a": ["s0", "s0", "s1", "s1", "d0"], "b": ["s1", "d0", "x", "d0", "r0"],
                          "dec_shared": [0.6, 0.1, 0.4, 0.0, 0.2], "enc_shared": [0.5, 0.1, 0.3, 0.0, 0.1],
                          "dec_mean_cos": [0.8, 0.4, 0.7, 0.3, 0.5]})
    ft = M.factor_table(pairs, meta)
    assert list(ft.factor) == ["corpus", "architecture", "seed"]  # ascending shared ratio; s1-d0 dropped
    assert ft.set_index("factor").n_pairs.to_dict() == {"corpus": 2, "architecture": 1, "seed": 1}
    assert ft.set_index("factor").dec_shared["corpus"] == pytest.approx(0.15)
    layered = pd.DataFrame({"layer": [3, 4, 5, 5], "seed": [0, 0, 0, 1]}, index=list("abcd"))
    assert M.layer_pairs(layered) == [("a", "b"), ("b", "c")]


def _emb_saes():
    rng = np.random.default_rng(0)
    return {"a": dict(W_dec=rng.standard_normal((40, 8))), "b": dict(W_dec=rng.standard_normal((30, 8)))}


def test_decoder_embedding_tsne():
    saes = _emb_saes()
    e = M.decoder_embedding(saes, method="tsne", seed=0, max_per_sae=25)
    assert list(e.columns) == ["x", "y", "sae", "feature"] and len(e) == 50
    assert e.groupby("sae").size().to_dict() == {"a": 25, "b": 25}
    pd.testing.assert_frame_equal(e, M.decoder_embedding(saes, method="tsne", seed=0, max_per_sae=25))
    with pytest.raises(ValueError):
        M.decoder_embedding(saes, method="pca")


@pytest.mark.slow
def test_decoder_embedding_umap():
    """One tiny UMAP fit (the first fit in a process spends ~30 s compiling numba code)."""
    u = M.decoder_embedding(_emb_saes(), method="umap", seed=0, max_per_sae=None, n_neighbors=5)
    assert len(u) == 70 and np.isfinite(u[["x", "y"]].to_numpy()).all()


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
    from treesae.analysis.matching import cross_seed_sharing, factor_effects, interval
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
    from treesae.analysis.matching import factor_effects
    pairs, meta = _planted_pairs({"corpus": 0.2}, seeds=(0,))  # one seed: no pair with different seeds
    t, boot = factor_effects(pairs, meta, factors=("corpus", "seed", "architecture", "layer"))
    assert t.empty and boot.empty


def test_factor_effects_of_no_pairs():
    from treesae.analysis.matching import cross_seed_sharing, factor_effects
    pairs, meta = _planted_pairs({"corpus": 0.2})
    t, boot = factor_effects(pairs.iloc[:0], meta, factors=("corpus", "seed"))
    assert t.empty and boot.empty
    assert cross_seed_sharing(pairs.iloc[:0], meta, "r0", factors=("corpus", "seed"))["n_pairs"] == 0

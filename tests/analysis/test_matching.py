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

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from treesae.analysis import hierarchy as H

N, P, B = 20000, 20, 2  # tokens, parents, children per parent
LEVELS = [slice(0, P), slice(P, P + P * B)]
PARENT = np.concatenate([np.full(P, -1), np.repeat(np.arange(P), B)])


def planted(hierarchical=True, seed=0):
    """Codes [N, 60]: parents fire independently (p=0.05..0.15); a child fires on half of its parent's
    tokens (hierarchical) or, shuffled, on as many random tokens (same frequency, no relation)."""
    rng = np.random.default_rng(seed)
    fp = np.linspace(0.05, 0.15, P)
    par = rng.random((N, P)) < fp
    ch = (par[:, PARENT[P:]] & (rng.random((N, P * B)) < 0.5)) if hierarchical else \
        rng.random((N, P * B)) < fp[PARENT[P:]] * 0.5
    act = np.concatenate([par, ch], 1)
    return act * rng.uniform(0.5, 2.0, act.shape).astype(np.float32)


def test_coactivation_counts():
    Z = planted()
    t = H.coactivation(Z, torch.from_numpy(PARENT), LEVELS)
    assert len(t) == P * B and (t.level == 1).all()
    a = Z != 0
    c, p = t.child.to_numpy(), t.parent.to_numpy()
    np.testing.assert_array_equal(t.n_both, (a[:, c] & a[:, p]).sum(0))
    np.testing.assert_allclose(t.p_parent_given_child, 1.0)  # children only fire with their parent
    np.testing.assert_allclose(t.p_child_given_parent, 0.5, atol=0.05)
    assert (t.lift == 1).all() and t.lift_shuffled.abs().max() < 0.15  # shuffled parents: near chance
    assert (t.shuffled_parent != t.parent).mean() > 0.8
    np.testing.assert_allclose(t.rate, t.n_both / N)


@pytest.mark.parametrize("form", ["dense", "torch", "scipy", "torch_sparse"])
def test_hierarchy_score_planted_vs_shuffled(form):
    """Thresholds: planted hierarchy scores > 0.9 (given and inferred parents); the shuffled one scores
    within 0.05 of 0 (chance), both ways."""
    conv = {"dense": lambda z: z, "torch": torch.from_numpy, "scipy": sp.csr_matrix,
            "torch_sparse": lambda z: torch.from_numpy(z).to_sparse()}[form]
    good, bad = conv(planted()), conv(planted(hierarchical=False))
    g, b = H.hierarchy_score(good, LEVELS, PARENT), H.hierarchy_score(bad, LEVELS, PARENT)
    assert g["mode"] == "given" and g["n_children"] == P * B
    assert g["score"] > 0.9 and abs(b["score"]) < 0.05
    gi, bi = H.hierarchy_score(good, LEVELS), H.hierarchy_score(bad, LEVELS)
    assert gi["mode"] == "inferred" and gi["score"] > 0.9 and abs(bi["score"]) < 0.05
    assert bi["raw"] > 0  # the max over candidates is biased upwards: the baseline removes it


def test_infer_parents_recovers_tree_and_flat():
    Z = planted()
    inf = H.infer_parents(Z, LEVELS)
    assert (inf.parent.to_numpy() == PARENT[inf.child]).all() and len(inf) == P * B
    flat = H.infer_parents(Z, [slice(0, P + P * B)])  # one level: more frequent latents are candidates
    kids = flat[flat.child >= P]
    assert (kids.parent.to_numpy() == PARENT[kids.child]).mean() > 0.95
    assert H.hierarchy_score(Z, [slice(0, P + P * B)])["score"] > 0.5


def test_cross_level_decoder_cosine():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((P + P * B, 64))
    W[P:] = W[PARENT[P:]] + 0.5 * rng.standard_normal((P * B, 64))  # children near their parents
    t = H.cross_level_decoder_cosine(torch.from_numpy(W), LEVELS, PARENT)
    assert len(t) == P * B and t.cos.min() > 0.7 and t.cos_shuffled.abs().mean() < 0.3
    inf = H.infer_parents(planted(), LEVELS)
    t2 = H.cross_level_decoder_cosine(W, LEVELS, inf)
    np.testing.assert_allclose(t2.sort_values("child").cos.to_numpy(), t.cos.to_numpy())


def test_level_correlation():
    good, bad = planted(), planted(hierarchical=False)
    g, b = H.level_correlation(good, LEVELS), H.level_correlation(bad, LEVELS)
    assert list(g.level) == [1] and g.n_latents[0] == P * B
    assert g.best_abs_r[0] > 0.5 and g.best_abs_r_shuffled[0] < 0.1
    assert b.best_abs_r[0] < 0.1
    a = good[:, 0] != 0
    r = np.corrcoef(good[:, P], good[:, 0])[0, 1]
    full = H._pearson(H.as_sparse(good[:, P:P + 1]), H.as_sparse(good[:, :1]))
    assert full[0, 0] == pytest.approx(r, abs=1e-6) and a.any()
    assert H.level_correlation(good, [slice(0, 60)]).empty


def test_dead_per_level_and_codes():
    Z = planted()
    Z[:, [3, 30, 31]] = 0
    d = H.dead_per_level(Z, LEVELS)
    assert d.dead.tolist() == [1, 2] and d.width.tolist() == [P, P * B] and (d.n_tokens == N).all()
    np.testing.assert_allclose(d.l0.sum(), (Z != 0).sum(1).mean())

    class S:
        def encode(self, x):
            return torch.relu(x)
    X = np.random.default_rng(0).standard_normal((100, 7))
    C = H.codes(S(), X, batch_size=30)
    np.testing.assert_allclose(C.toarray(), np.maximum(X, 0), rtol=1e-6)


def _tiny_world(hierarchical: bool):
    from treesae import synthetic as S
    cfg = S.WorldConfig(d_in=32, n_features=64, n_roots=3, branching=4, depth=3, target_l0=4.0, min_prob=0.2, seed=0,
                        hierarchical=hierarchical)
    w = S.make_world(cfg)
    X, F = S.sample(w, 16384, 0, split="eval")
    par = np.full(cfg.n_features, -1)
    for p, (_, kids) in S.parents(w.structure).items():
        par[kids] = p
    return X, F, w.feature_dict.feature_vectors, par


def test_probe_test_finds_a_planted_hierarchy_and_not_a_flat_one():
    """The true features as latents: their true parent/child pairs pass Cao et al.'s probe test on the hierarchical
    world (a child's tokens carry its parent's direction) and fail it on the flat one (the same pairs, independent
    features); random parents stay at chance on both; children by masked cosine similarity follow the world."""
    X, F, D, par = _tiny_world(True)
    tree, mcs = H.probe_score(H.probe_pairs(F, X, D, par, min_count=20)), H.probe_score(H.probe_pairs(F, X, D, None, min_count=20))
    Xf, Ff, _, _ = _tiny_world(False)
    flat, flat_mcs = (H.probe_score(H.probe_pairs(Ff, Xf, D, p, min_count=20)) for p in (par, None))
    assert tree["n_pairs"] > 10 and tree["raw"] > 0.3 and tree["baseline"] < 0.1 and tree["child_in_top"] == 1.0
    assert flat["raw"] < 0.05 and flat["n_pairs"] == tree["n_pairs"]
    assert mcs["score"] > 3 * max(flat_mcs["score"], 0.02) and flat_mcs["score"] < 0.1


def test_probe_test_with_the_gated_pairs_is_passed_by_a_random_gate():
    """The negative control the probe test fails: on the flat world, codes with children gated under random parents
    (a child fires only where its parent does) pass it far above chance, because the child's tokens then carry the
    parent's direction; with the gated pairs themselves and, less, with children by masked cosine similarity.
    Hence stage 05 lifts a tree's gate before the test (``encode_ungated``)."""
    X, F, D, par = _tiny_world(False)
    child = np.nonzero(par >= 0)[0]
    roots = np.setdiff1d(np.unique(par[child]), child)  # parents that are nobody's child: the gate does not chain
    rand = par.copy()
    rand[child] = np.random.default_rng(0).choice(roots, len(child))
    G = F.clone()
    G[:, child] = F[:, child] * (F[:, rand[child]] > 0)
    ungated = H.probe_score(H.probe_pairs(F, X, D, rand, min_count=20))
    gated = H.probe_score(H.probe_pairs(G, X, D, rand, min_count=20))
    assert ungated["raw"] < 0.05 and gated["raw"] > 0.2 and gated["n_pairs"] == ungated["n_pairs"] > 5
    mcs_f, mcs_g = (H.probe_score(H.probe_pairs(Z, X, D, None, min_count=20)) for Z in (F, G))
    assert mcs_f["score"] < 0.05 and mcs_g["score"] > mcs_f["score"]
